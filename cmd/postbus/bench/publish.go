package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// maxBatchBytes keeps a typo from allocating gigabytes: every worker holds
// one batch body of up to batch*size bytes.
const maxBatchBytes = 16 << 20

// config is the parsed command line.
type config struct {
	commonFlags
	count       int64 // 0 = bounded by duration only; duration 0 = by count only
	batch       int
	tag         string
	keys        bool
	contentType string
	baseline    bool
	// transactions prepares each message and commits it (two requests);
	// the run is preceded by a plain one, the ratio reported.
	transactions bool
	txnRun       bool // the transactional run of --transactions (set on its copy of the config)
	warmup       time.Duration
	json         bool
}

const usageHead = `Usage: postbus bench publish [flags]

Publishes messages to a postbus broker over HTTP and reports requests, messages,
errors, msgs/s, MB/s of bodies and per-request latency (p50/p90/p99/max).

Closed loop by default: --conns workers each send as fast as answers come back.
With --rate the load is open loop: requests are due on a fixed schedule and
latency counts from when each was due, so a broker stall is not hidden.
A run stops after --duration or --count messages, whichever comes first; with
--count alone (no --duration) it runs until the count is reached. The topic is
created first (PUT /v1/topics/{topic}) so auto-creation need not be on.
Only loopback targets are allowed unless --allow-remote is given.
Interrupt (Ctrl-C) stops the run and prints what was measured so far.

Flags:
`

const usageTail = `
Examples:
  # 10 s closed loop, 64 connections, 256-byte bodies, against 'postbus dev'
  postbus bench publish

  # publish 10 million messages in batches of 32 with a unique key each,
  # and see whether the rate of the last 10% keeps up with the first 10%
  postbus bench publish --count 10000000 --batch 32 --keys

  # open loop at 5000 msgs/s for a minute, compared with a no-op server
  postbus bench publish --rate 5000 --duration 1m --baseline --json
`

// publishFlags is how bench publish words the flags every tool has.
var publishFlags = toolFlags{
	name:          "bench publish",
	usageHead:     usageHead,
	usageTail:     usageTail,
	topic:         "bench",
	connsHelp:     "concurrent connections, one request in flight on each",
	durationHelp:  "measured run time, after the warm-up (0 with --count: no time bound)",
	rateHelp:      "open loop at this many `messages` per second (0 = closed loop, as fast as possible)",
	sizeHelp:      "message body size in `bytes` (printable ASCII)",
	intervalHelp:  "print a progress line this often: elapsed, msgs/s and p99 of the interval (0 = off)",
	timeoutHelp:   "per-request timeout; a request that takes longer counts as an error",
	brokerPIDHelp: "sample this `pid`'s VmRSS from /proc/<pid>/status every second of the target run and report the maximum",
}

// parseFlags parses args into a config. On --help it prints the usage to out
// and returns flag.ErrHelp.
func parseFlags(args []string, out io.Writer) (*config, error) {
	c := &config{}
	fs := c.flagSet(&publishFlags, out)
	fs.Int64Var(&c.count, "count", 0, "stop after `N` measured messages (0 = no count bound)")
	fs.IntVar(&c.batch, "batch", 1, "messages per request: 1 = POST .../messages, >1 = POST .../messages/batch")
	fs.StringVar(&c.tag, "tag", "", "`tag` set on every message (Postbus-Tag header, or \"tag\" in a batch)")
	fs.BoolVar(&c.keys, "keys", false, "give every message a unique key (Postbus-Keys header, or \"keys\" in a batch)")
	fs.StringVar(&c.contentType, "content-type", "application/octet-stream", "Content-Type of each message body")
	fs.BoolVar(&c.baseline, "baseline", false, "repeat the run against an in-process no-op HTTP server and print target/baseline")
	fs.BoolVar(&c.transactions, "transactions", false, "prepare each message (Postbus-Transaction: prepare, producer group bench) and commit it: two requests a message; "+
		"a plain run of the same length comes first, and the report gives transactional/plain msgs/s")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured warm-up before each run (its messages are extra to --count)")
	fs.BoolVar(&c.json, "json", false, "print the final report as JSON too, after the text")
	err := c.parse(fs, args, func(set map[string]bool) error {
		if c.count > 0 && !set["duration"] {
			c.duration = 0 // --count alone: no time bound
		}
		return c.validate()
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// validate checks the flags of bench publish alone.
func (c *config) validate() error {
	switch {
	case c.count < 0:
		return fmt.Errorf("--count %d: must be >= 0", c.count)
	case c.duration < 0:
		return fmt.Errorf("--duration %s: must be >= 0", c.duration)
	case c.count == 0 && c.duration == 0:
		return errors.New("--duration 0 needs --count: every run must be bounded")
	case c.batch < 1:
		return fmt.Errorf("--batch %d: must be >= 1", c.batch)
	case int64(c.batch)*int64(c.size+64) > maxBatchBytes:
		return fmt.Errorf("--batch %d × --size %d: a request would exceed %d bytes", c.batch, c.size, maxBatchBytes)
	case c.warmup < 0:
		return fmt.Errorf("--warmup %s: must be >= 0", c.warmup)
	case strings.ContainsAny(c.tag, "\r\n") || strings.Contains(c.tag, "||"):
		return fmt.Errorf("--tag %q: no line breaks or \"||\"", c.tag)
	case strings.ContainsAny(c.contentType, "\r\n"):
		return fmt.Errorf("--content-type %q: no line breaks", c.contentType)
	case c.transactions && c.batch > 1:
		return fmt.Errorf("--transactions with --batch %d: a batch cannot be transactional", c.batch)
	case c.transactions && c.baseline:
		return errors.New("--transactions with --baseline: the plain run is the transactional run's baseline")
	}
	return nil
}

// Publish parses args (flags of "bench publish"; --help prints them with an
// example and returns flag.ErrHelp), runs the load against --url, then, with
// --baseline, against an in-process no-op server, and prints the report to
// out. Cancelling ctx (SIGINT) stops the run; the report of what was measured
// is still printed and the returned error wraps ctx.Err(). Errors answered by
// the broker are counted in the report, not returned.
func Publish(ctx context.Context, args []string, out io.Writer) error {
	cfg, err := parseFlags(args, out)
	if err != nil {
		return err
	}
	if err := cfg.checkTarget(ctx); err != nil {
		return err
	}
	client := newClient(cfg.conns, cfg.timeout)
	defer client.CloseIdleConnections()
	bodies := newBodySource(cfg.size)
	runID := newRunID()
	sampler, err := cfg.sampleBroker()
	if err != nil {
		return err
	}
	defer sampler.Stop()

	fmt.Fprintf(out, "bench publish → %s\n", describe(cfg))
	if cfg.transactions {
		return publishTransactions(ctx, cfg, client, bodies, runID, sampler, out)
	}
	target, err := runAgainst(ctx, cfg, client, bodies, cfg.url, runID+"-t", out)
	if err != nil {
		return err
	}
	target.rss = sampler.result()
	var base *result
	if cfg.baseline && !target.interrupted {
		client.CloseIdleConnections()
		srv, err := startNoop(cfg.topic)
		if err != nil {
			return fmt.Errorf("bench publish: baseline: %w", err)
		}
		fmt.Fprintf(out, "baseline → no-op handler at %s\n", srv.url)
		base, err = runAgainst(ctx, cfg, client, bodies, srv.url, runID+"-b", out)
		// Close the client's side first: a connection dialled but never
		// used looks active to the server, whose Shutdown would wait for it.
		client.CloseIdleConnections()
		if cerr := srv.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("bench publish: baseline: %w", cerr)
		}
		if err != nil {
			return err
		}
	}
	writeReport(out, cfg, target, base)
	if cfg.json {
		if err := writeJSON(out, cfg, target, base); err != nil {
			return fmt.Errorf("bench publish: write json: %w", err)
		}
	}
	if target.interrupted || (base != nil && base.interrupted) {
		return fmt.Errorf("bench publish interrupted: %w", ctx.Err())
	}
	return nil
}

func describe(c *config) string {
	mode := "closed loop"
	if c.rate > 0 {
		mode = fmt.Sprintf("open loop at %g msgs/s", c.rate)
	}
	var bound []string
	if c.duration > 0 {
		bound = append(bound, "duration "+c.duration.String())
	}
	if c.count > 0 {
		bound = append(bound, fmt.Sprintf("count %d", c.count))
	}
	return fmt.Sprintf("%s topic=%s conns=%d size=%d batch=%d, %s, %s, warmup %s",
		c.url, c.topic, c.conns, c.size, c.batch, mode, strings.Join(bound, " and "), c.warmup)
}

// publishTransactions runs plain publishes, then the same load with each
// message prepared and committed, and reports both and their ratio.
func publishTransactions(ctx context.Context, cfg *config, client *http.Client, bodies *bodySource, runID string, sampler *rssSampler, out io.Writer) error {
	// The group's check_url is never asked: each message is committed
	// right after its prepare, within the default 6s timeout.
	resp, body, err := apiCall(ctx, client, http.MethodPut, cfg.url+"/v1/producer-groups/"+benchProducerGroup, "register producer group",
		[]byte(`{"check_url":"http://127.0.0.1:9/bench-never-checked"}`))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("register producer group: %d %s", resp.StatusCode, truncate(string(body), 300))
	}
	fmt.Fprintln(out, "plain publishes:")
	plain, err := runAgainst(ctx, cfg, client, bodies, cfg.url, runID+"-p", out)
	if err != nil {
		return err
	}
	if plain.interrupted {
		writeRun(out, cfg, "plain", plain)
		return fmt.Errorf("bench publish interrupted: %w", ctx.Err())
	}
	fmt.Fprintln(out, "transactional publishes (prepare, then commit):")
	txn := *cfg
	txn.create, txn.txnRun = false, true
	target, err := runAgainst(ctx, &txn, client, bodies, cfg.url, runID+"-x", out)
	if err != nil {
		return err
	}
	target.rss = sampler.result()
	fmt.Fprintln(out)
	writeRun(out, cfg, "plain", plain)
	fmt.Fprintln(out)
	writeRun(out, cfg, "transactional (latency: prepare and commit together)", target)
	fmt.Fprintln(out)
	fmt.Fprintf(out, "transactional %.0f msgs/s  plain %.0f msgs/s  transactional/plain %s\n",
		target.msgsPerSec(), plain.msgsPerSec(), fmtRatio(target.msgsPerSec(), plain.msgsPerSec()))
	if cfg.json {
		if err := writeJSON(out, cfg, target, plain); err != nil {
			return fmt.Errorf("bench publish: write json: %w", err)
		}
	}
	if target.interrupted {
		return fmt.Errorf("bench publish interrupted: %w", ctx.Err())
	}
	return nil
}

// benchProducerGroup is the producer group of --transactions.
const benchProducerGroup = "bench"
