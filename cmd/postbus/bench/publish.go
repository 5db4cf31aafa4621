package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// ErrRemoteTarget is returned when --url names a host that is not loopback
// and --allow-remote was not given.
var ErrRemoteTarget = errors.New("target is not a loopback address")

// Limits that keep a typo from allocating gigabytes: every worker holds one
// batch body of up to batch*size bytes.
const (
	maxSize       = 16 << 20
	maxBatchBytes = 16 << 20
	maxConns      = 10000
	lookupTimeout = 2 * time.Second
)

// topicRE is the broker's topic name rule; checking it here means the name
// can go into URLs and JSON without escaping.
var topicRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,126}$`)

// config is the parsed command line.
type config struct {
	url         string // base URL, no trailing slash
	topic       string
	conns       int
	duration    time.Duration // 0 = bounded by count only
	count       int64         // 0 = bounded by duration only
	size        int
	batch       int
	rate        float64 // messages per second; 0 = closed loop
	tag         string
	keys        bool
	contentType string
	baseline    bool
	warmup      time.Duration
	interval    time.Duration
	json        bool
	allowRemote bool
	create      bool
	queues      int
	timeout     time.Duration
	brokerPID   int // 0 = do not sample the broker's memory
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

// parseFlags parses args into a config. On --help it prints the usage to out
// and returns flag.ErrHelp.
func parseFlags(args []string, out io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("bench publish", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.url, "url", "http://127.0.0.1:8080", "broker base `URL` (http or https)")
	fs.StringVar(&c.topic, "topic", "bench", "`topic` to publish to; created first unless --create=false")
	fs.IntVar(&c.conns, "conns", 64, "concurrent connections, one request in flight on each")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "measured run time, after the warm-up (0 with --count: no time bound)")
	fs.Int64Var(&c.count, "count", 0, "stop after `N` measured messages (0 = no count bound)")
	fs.IntVar(&c.size, "size", 256, "message body size in `bytes` (printable ASCII)")
	fs.IntVar(&c.batch, "batch", 1, "messages per request: 1 = POST .../messages, >1 = POST .../messages/batch")
	fs.Float64Var(&c.rate, "rate", 0, "open loop at this many `messages` per second (0 = closed loop, as fast as possible)")
	fs.StringVar(&c.tag, "tag", "", "`tag` set on every message (Postbus-Tag header, or \"tag\" in a batch)")
	fs.BoolVar(&c.keys, "keys", false, "give every message a unique key (Postbus-Keys header, or \"keys\" in a batch)")
	fs.StringVar(&c.contentType, "content-type", "application/octet-stream", "Content-Type of each message body")
	fs.BoolVar(&c.baseline, "baseline", false, "repeat the run against an in-process no-op HTTP server and print target/baseline")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured warm-up before each run (its messages are extra to --count)")
	fs.DurationVar(&c.interval, "interval", time.Second, "print a progress line this often: elapsed, msgs/s and p99 of the interval (0 = off)")
	fs.BoolVar(&c.json, "json", false, "print the final report as JSON too, after the text")
	fs.BoolVar(&c.allowRemote, "allow-remote", false, "allow a --url whose host is not loopback (think before pointing load at a shared broker)")
	fs.BoolVar(&c.create, "create", true, "create the topic with PUT /v1/topics/{topic} before the run")
	fs.IntVar(&c.queues, "queues", 4, "queues for the topic when it is created")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "per-request timeout; a request that takes longer counts as an error")
	fs.IntVar(&c.brokerPID, "broker-pid", 0, "sample this `pid`'s VmRSS from /proc/<pid>/status every second of the target run and report the maximum")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageHead)
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), usageTail)
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("bench publish: unexpected argument %q", fs.Arg(0))
	}
	durationSet := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "duration" {
			durationSet = true
		}
	})
	if c.count > 0 && !durationSet {
		c.duration = 0
	}
	c.url = strings.TrimRight(c.url, "/")
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("bench publish: %w", err)
	}
	return c, nil
}

func (c *config) validate() error {
	switch {
	case c.count < 0:
		return fmt.Errorf("--count %d: must be >= 0", c.count)
	case c.duration < 0:
		return fmt.Errorf("--duration %s: must be >= 0", c.duration)
	case c.count == 0 && c.duration == 0:
		return errors.New("--duration 0 needs --count: every run must be bounded")
	case c.conns < 1 || c.conns > maxConns:
		return fmt.Errorf("--conns %d: must be 1..%d", c.conns, maxConns)
	case c.size < 0 || c.size > maxSize:
		return fmt.Errorf("--size %d: must be 0..%d", c.size, maxSize)
	case c.batch < 1:
		return fmt.Errorf("--batch %d: must be >= 1", c.batch)
	case int64(c.batch)*int64(c.size+64) > maxBatchBytes:
		return fmt.Errorf("--batch %d × --size %d: a request would exceed %d bytes", c.batch, c.size, maxBatchBytes)
	case c.rate < 0 || c.rate != c.rate:
		return fmt.Errorf("--rate %v: must be >= 0", c.rate)
	case c.warmup < 0:
		return fmt.Errorf("--warmup %s: must be >= 0", c.warmup)
	case c.interval < 0:
		return fmt.Errorf("--interval %s: must be >= 0", c.interval)
	case c.timeout <= 0:
		return fmt.Errorf("--timeout %s: must be > 0", c.timeout)
	case c.queues < 1:
		return fmt.Errorf("--queues %d: must be >= 1", c.queues)
	case c.brokerPID < 0:
		return fmt.Errorf("--broker-pid %d: must be >= 0", c.brokerPID)
	case !topicRE.MatchString(c.topic):
		return fmt.Errorf("--topic %q: must match %s", c.topic, topicRE)
	case strings.ContainsAny(c.tag, "\r\n") || strings.Contains(c.tag, "||"):
		return fmt.Errorf("--tag %q: no line breaks or \"||\"", c.tag)
	case strings.ContainsAny(c.contentType, "\r\n"):
		return fmt.Errorf("--content-type %q: no line breaks", c.contentType)
	}
	u, err := url.Parse(c.url)
	if err != nil {
		return fmt.Errorf("--url: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("--url %q: scheme must be http or https", c.url)
	}
	if u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("--url %q: want scheme://host[:port][/path] only", c.url)
	}
	return nil
}

// checkTarget refuses a URL whose host is not loopback unless allowRemote.
func checkTarget(ctx context.Context, rawURL string, allowRemote bool) error {
	return checkTargetFor(ctx, "bench publish", rawURL, allowRemote)
}

// checkTargetFor is checkTarget for the named tool, which errors start with.
func checkTargetFor(ctx context.Context, tool, rawURL string, allowRemote bool) error {
	if allowRemote {
		return nil
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("check target %q: %w", rawURL, err)
	}
	host := u.Hostname()
	refuse := func(why string) error {
		return fmt.Errorf("%s %s: %s: %w (pass --allow-remote to load it anyway)", tool, rawURL, why, ErrRemoteTarget)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Unmap().IsLoopback() {
			return nil
		}
		return refuse(fmt.Sprintf("%s is not a loopback address", host))
	}
	lower := strings.ToLower(strings.TrimSuffix(host, "."))
	if lower == "localhost" || strings.HasSuffix(lower, ".localhost") {
		return nil // RFC 6761: always loopback
	}
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(lctx, "ip", host)
	if err != nil {
		return refuse(fmt.Sprintf("cannot tell whether %s is loopback: %v", host, err))
	}
	for _, a := range addrs {
		if !a.Unmap().IsLoopback() {
			return refuse(fmt.Sprintf("%s resolves to %s", host, a))
		}
	}
	if len(addrs) == 0 {
		return refuse(fmt.Sprintf("%s resolves to nothing", host))
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
	if err := checkTarget(ctx, cfg.url, cfg.allowRemote); err != nil {
		return err
	}
	client := newClient(cfg)
	defer client.CloseIdleConnections()
	bodies := newBodySource(cfg.size)
	runID := newRunID()

	var sampler *rssSampler
	if cfg.brokerPID > 0 {
		if sampler, err = startRSSSampler(cfg.brokerPID, time.Second); err != nil {
			return fmt.Errorf("bench publish: %w", err)
		}
		defer sampler.Stop()
	}

	fmt.Fprintf(out, "bench publish → %s\n", describe(cfg))
	target, err := runAgainst(ctx, cfg, client, bodies, cfg.url, runID+"-t", out)
	if err != nil {
		return err
	}
	if sampler != nil {
		st := sampler.Stop()
		target.rss = &st
	}
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
