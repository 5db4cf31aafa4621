package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrDelivery is returned by Push, after the report is printed, when
// deliveries were still missing at the end of the drain or arrived before
// their deliver-at.
var ErrDelivery = errors.New("push deliveries failed the check")

// Limits of `bench push`, beyond those shared with `bench publish`.
const (
	maxSubscriptions = 100
	maxInFlightLimit = 1024 // the broker's MaxMaxInFlight
	maxDelayed       = 10_000_000
	maxWindow        = 24 * time.Hour
	cleanupTimeout   = 10 * time.Second
)

// pushConfig is the parsed command line of `bench push`.
type pushConfig struct {
	commonFlags
	subs        int
	maxInFlight int
	drain       time.Duration
	baseline    bool
	delayed     int64 // 0 = plain publishing
	window      time.Duration
	batch       int           // batch.max_messages of each subscription; 0 = one message a request
	backlog     bool          // publish with the subscriptions paused, then time the delivery of the backlog
	batchWait   time.Duration // its batch.max_wait
	// inFlightSet: --max-in-flight was given; otherwise a batched
	// subscription takes the broker's default (eight times the batch).
	inFlightSet bool
}

const pushUsageHead = `Usage: postbus bench push [flags]

Measures push delivery: starts a webhook sink in this process (127.0.0.1, answers
200 at once), subscribes it to a topic --subscriptions times (fan-out: each its
own group), publishes for --duration, then waits up to --drain for every delivery.
Reports published messages, deliveries expected / received / duplicates /
missing, deliveries/s and publish-to-webhook latency (p50/p90/p99/max).

Every body starts with the time it was published, so latency is measured per
delivery. Closed loop by default (--conns publishers as fast as answers come);
with --rate the publishing is open loop at that many msgs/s.
With --delayed N the tool instead publishes N messages as fast as --conns allow,
each with a Postbus-Deliver-At uniformly random in the next --window, and reports
each delivery's lateness (receipt - deliver-at); an early delivery is a failure.
The broker must allow private webhooks: 'postbus dev' does, a broker needs
--allow-private-webhooks. The subscriptions are deleted at the end.
Only loopback targets are allowed unless --allow-remote is given.

Flags:
`

const pushUsageTail = `
Examples:
  # 10 s closed loop against 'postbus dev', one subscription
  postbus bench push

  # 2000 msgs/s to 4 subscriptions for a minute, against the client's ceiling
  postbus bench push --rate 2000 --subscriptions 4 --duration 1m --baseline

  # the same sink, messages delivered 100 a request
  postbus bench push --batch 100

  # 100000 delayed messages due within 10 minutes; is any delivered early?
  postbus bench push --delayed 100000 --window 10m --broker-pid $(pgrep -n postbus)
`

// pushFlags is how bench push words the flags every tool has.
var pushFlags = toolFlags{
	name:            "bench push",
	usageHead:       pushUsageHead,
	usageTail:       pushUsageTail,
	topic:           "bench-push",
	minSize:         stampLen,
	durationHelp:    "how long to publish (not with --delayed)",
	allowRemoteHelp: "allow a --url whose host is not loopback (the sink still listens on 127.0.0.1)",
}

// parsePushFlags parses args into a pushConfig. On --help it prints the
// usage to out and returns flag.ErrHelp.
func parsePushFlags(args []string, out io.Writer) (*pushConfig, error) {
	c := &pushConfig{}
	fs := c.flagSet(&pushFlags, out)
	fs.IntVar(&c.subs, "subscriptions", 1, "push subscriptions to the sink, each with its own group (fan-out: every message is delivered this many times)")
	fs.IntVar(&c.maxInFlight, "max-in-flight", 32, "max_in_flight of each subscription: deliveries the broker may have open at once")
	fs.DurationVar(&c.drain, "drain", 10*time.Second, "after publishing (or after --window), wait at most this long for the deliveries still due")
	fs.BoolVar(&c.baseline, "baseline", false, "then POST the same bodies straight at the sink, closed loop, for --duration, and print push/baseline deliveries/s")
	fs.Int64Var(&c.delayed, "delayed", 0, "publish `N` messages with a Postbus-Deliver-At each, uniformly random within --window, and report lateness")
	fs.DurationVar(&c.window, "window", 10*time.Minute, "with --delayed: deliver-at times fall within this long after the start")
	fs.IntVar(&c.batch, "batch", 0, "deliver up to `N` messages a request (the subscriptions' batch.max_messages, 1..1000); 0 = one a request")
	fs.BoolVar(&c.backlog, "backlog", false, "publish for --duration with the subscriptions paused, then resume them and report how fast the backlog is delivered (push capacity, not bound by the publishing)")
	fs.DurationVar(&c.batchWait, "batch-wait", 50*time.Millisecond, "with --batch: batch.max_wait, how long a partial batch waits for more (0s..10s)")
	if err := c.parse(fs, args, c.validate); err != nil {
		return nil, err
	}
	return c, nil
}

// validate checks the flags of bench push alone; set names the flags given
// on the command line.
func (c *pushConfig) validate(set map[string]bool) error {
	switch {
	case c.subs < 1 || c.subs > maxSubscriptions:
		return fmt.Errorf("--subscriptions %d: must be 1..%d", c.subs, maxSubscriptions)
	case c.maxInFlight < 1 || c.maxInFlight > maxInFlightLimit:
		return fmt.Errorf("--max-in-flight %d: must be 1..%d", c.maxInFlight, maxInFlightLimit)
	case c.batch < 0 || c.batch > 1000:
		return fmt.Errorf("--batch %d: must be 0..1000", c.batch)
	case c.batch > 0 && set["max-in-flight"] && c.maxInFlight < c.batch:
		return fmt.Errorf("--max-in-flight %d is less than --batch %d: max_in_flight counts messages", c.maxInFlight, c.batch)
	case c.backlog && c.delayed > 0:
		return errors.New("--backlog times plain delivery: it does not apply to --delayed")
	case c.batch == 0 && set["batch-wait"]:
		return errors.New("--batch-wait needs --batch")
	case c.batchWait < 0 || c.batchWait > 10*time.Second:
		return fmt.Errorf("--batch-wait %s: must be 0s..10s", c.batchWait)
	case c.drain < 0:
		return fmt.Errorf("--drain %s: must be >= 0", c.drain)
	case c.delayed < 0 || c.delayed > maxDelayed:
		return fmt.Errorf("--delayed %d: must be 0..%d", c.delayed, maxDelayed)
	case c.delayed == 0 && c.duration <= 0:
		return fmt.Errorf("--duration %s: must be > 0: every run must be bounded", c.duration)
	case c.delayed > 0 && (c.window < time.Second || c.window > maxWindow):
		return fmt.Errorf("--window %s: must be 1s..%s", c.window, maxWindow)
	case c.delayed > 0 && (set["rate"] || set["duration"]):
		return errors.New("--delayed publishes its N messages as fast as --conns allow: --rate and --duration do not apply")
	case c.delayed > 0 && c.baseline:
		return errors.New("--baseline measures plain delivery: it does not apply to --delayed")
	case c.delayed == 0 && set["window"]:
		return errors.New("--window needs --delayed")
	}
	c.inFlightSet = set["max-in-flight"]
	if c.batch > 0 && !c.inFlightSet {
		c.maxInFlight = min(maxInFlightLimit, max(32, 8*c.batch)) // the broker's default with a batch
	}
	return nil
}

// Push parses args (flags of "bench push"; --help prints them and returns
// flag.ErrHelp), measures push delivery from the broker at --url to a sink
// in this process, prints the report to out and deletes its subscriptions.
// Cancelling ctx stops the run; what was measured is still reported and the
// error wraps ctx.Err(). Deliveries missing after the drain, or early, are
// reported and then returned as ErrDelivery.
func Push(ctx context.Context, args []string, out io.Writer) error {
	cfg, err := parsePushFlags(args, out)
	if err != nil {
		return err
	}
	if err := cfg.checkTarget(ctx); err != nil {
		return err
	}
	res, err := runPush(ctx, cfg, out)
	if err != nil {
		return err
	}
	writePushReport(out, cfg, res)
	if res.interrupted || (res.base != nil && res.base.interrupted) {
		return fmt.Errorf("bench push interrupted: %w", ctx.Err())
	}
	if v := res.verdict(); v != "" {
		return fmt.Errorf("bench push: %s: %w", v, ErrDelivery)
	}
	return nil
}

// pushResult is what one run leaves for the report.
type pushResult struct {
	url         string
	interrupted bool
	subs        int
	groups      []string
	pubElapsed  time.Duration // publish start to the last publisher's end
	acked       int64
	failed      int64
	dueAlready  int64 // --delayed: already due when published
	errs        []*errKind
	inWindow    int64 // first deliveries by the end of publishing
	drainTook   time.Duration
	startNS     int64 // clock time publishing started
	sink        *sinkTotals
	rss         *rssStats
	base        *baselineResult
	resumeNS    int64 // --backlog: clock ns when the subscriptions were resumed
}

// backlogRate is, with --backlog, the first deliveries a second from the
// resume to the last of them.
func (r *pushResult) backlogRate() float64 {
	if r.resumeNS == 0 || r.sink.lastAt <= r.resumeNS {
		return 0
	}
	return float64(r.sink.unique) / time.Duration(r.sink.lastAt-r.resumeNS).Seconds()
}

// expected is how many first deliveries the acknowledged publishes owe.
func (r *pushResult) expected() int64 { return r.acked * int64(r.subs) }

// missing and extra compare, per subscription, first deliveries with
// acknowledged publishes. extra counts deliveries of messages whose publish
// failed on the client's side although the broker stored them.
func (r *pushResult) missing() (missing, extra int64) {
	for _, s := range r.sink.perSub {
		missing += max(0, r.acked-s.unique)
		extra += max(0, s.unique-r.acked)
	}
	return missing, extra
}

func (r *pushResult) windowRate() float64 {
	if r.pubElapsed <= 0 {
		return 0
	}
	return float64(r.inWindow) / r.pubElapsed.Seconds()
}

// overall is the time from the start of publishing to the last first
// delivery.
func (r *pushResult) overall() time.Duration {
	if r.sink.lastAt == 0 {
		return 0
	}
	return time.Duration(r.sink.lastAt - r.startNS)
}

func (r *pushResult) overallRate() float64 {
	d := r.overall()
	if d <= 0 {
		return 0
	}
	return float64(r.sink.unique) / d.Seconds()
}

// verdict names what failed the check, or "" when nothing did.
func (r *pushResult) verdict() string {
	var v []string
	if m, _ := r.missing(); m > 0 {
		v = append(v, fmt.Sprintf("%d of %d deliveries missing", m, r.expected()))
	}
	if r.sink.early > 0 {
		v = append(v, fmt.Sprintf("%d deliveries before their deliver-at", r.sink.early))
	}
	return strings.Join(v, ", ")
}

// runPush sets up the topic, the sink and the subscriptions, measures, and
// cleans up. Only a failure to set up is returned; cancellation shows as
// pushResult.interrupted.
func runPush(ctx context.Context, cfg *pushConfig, out io.Writer) (res *pushResult, err error) {
	client := newClient(cfg.conns, cfg.timeout)
	defer client.CloseIdleConnections()
	run := padRun(newRunID())
	clk := newClock()
	sampler, err := cfg.sampleBroker()
	if err != nil {
		return nil, err
	}
	defer sampler.Stop()
	fmt.Fprintf(out, "bench push → %s\n", describePush(cfg))
	interrupted := func() *pushResult {
		return &pushResult{url: cfg.url, interrupted: true, subs: cfg.subs, sink: &sinkTotals{}}
	}
	if cfg.create {
		if err := createTopic(ctx, client, cfg.url, cfg.topic, cfg.queues); err != nil {
			if ctx.Err() != nil {
				return interrupted(), nil
			}
			return nil, fmt.Errorf("bench push: %w", err)
		}
	}
	snk, err := startSink(cfg.subs, run, clk)
	if err != nil {
		return nil, fmt.Errorf("bench push: %w", err)
	}
	defer snk.Close()

	var ids, groups []string
	defer func() { deleteSubscriptions(ctx, client, cfg.url, ids, out) }()
	for i := range cfg.subs {
		group := fmt.Sprintf("bench-%s-%d", run, i)
		id, err := createSubscription(ctx, client, cfg, group, snk.hookURL(i))
		if err != nil {
			if ctx.Err() != nil {
				return interrupted(), nil
			}
			return nil, fmt.Errorf("bench push: %w", err)
		}
		ids, groups = append(ids, id), append(groups, group)
	}
	fmt.Fprintf(out, "sink %s, %d subscription(s): %s\n", snk.url, len(ids), strings.Join(groups, " "))
	if cfg.backlog {
		for _, id := range ids {
			if err := subscriptionVerb(ctx, client, cfg.url, id, "pause"); err != nil {
				if ctx.Err() != nil {
					return interrupted(), nil
				}
				return nil, fmt.Errorf("bench push: %w", err)
			}
		}
	}

	res = measure(ctx, cfg, client, snk, clk, run, out, func() error {
		for _, id := range ids {
			if err := subscriptionVerb(ctx, client, cfg.url, id, "resume"); err != nil {
				return err
			}
		}
		return nil
	})
	res.groups = groups
	res.rss = sampler.result()
	if cfg.baseline && !res.interrupted {
		client.CloseIdleConnections()
		res.base = runBaseline(ctx, cfg, client, clk, out)
	}
	return res, nil
}

// measure publishes, then drains, printing progress lines, and returns the
// counts as they stood when the drain ended. With --backlog, resume starts
// the paused subscriptions' deliveries once publishing ended.
func measure(ctx context.Context, cfg *pushConfig, client *http.Client, snk *sink, clk *clock, run string, out io.Writer, resume func() error) *pushResult {
	p := &publisher{
		cfg: cfg, client: client, clock: clk, run: run,
		url:    cfg.url + "/v1/topics/" + cfg.topic + "/messages",
		bodies: newBodySource(cfg.size),
	}
	p.start, p.startNS = time.Now(), clk.now()
	// The broker keeps deliver-at to the millisecond; whole milliseconds
	// keep it from firing a fraction of one early by rounding down.
	p.atBase = (p.startNS/1e6 + 1) * 1e6

	var draining atomic.Bool
	stopProgress := every(cfg.interval, progress(out, cfg, p, snk, &draining))
	p.publishAll(ctx)
	pubElapsed := time.Since(p.start)
	inWindow := snk.unique.Load()
	draining.Store(true)

	drainStart := time.Now()
	var resumeNS int64
	if cfg.backlog {
		resumeNS = clk.now()
		if err := resume(); err != nil {
			p.errs.add("resume", err.Error())
		}
	}
	deadline := drainStart.Add(cfg.drain)
	if cfg.delayed > 0 {
		deadline = later(deadline, p.windowEnd().Add(cfg.drain))
	}
	want := p.acked.Load()
	waitFor(ctx, snk.notify, func() bool { return snk.complete(want) }, time.Until(deadline))
	res := &pushResult{
		url: cfg.url, interrupted: ctx.Err() != nil, subs: cfg.subs,
		pubElapsed: pubElapsed, acked: want, failed: p.failed.Load(), dueAlready: p.dueAlready.Load(),
		errs: p.errs.list(), inWindow: inWindow, drainTook: time.Since(drainStart),
		startNS: p.startNS, sink: snk.totals(), resumeNS: resumeNS,
	}
	stopProgress()
	return res
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// progress returns the printer of the progress lines: elapsed time, phase,
// publishes and first deliveries per second, the p99 latency (or lateness)
// of the interval, and the deliveries still owed.
func progress(out io.Writer, cfg *pushConfig, p *publisher, snk *sink, draining *atomic.Bool) func(now time.Time) {
	label := "p99"
	if cfg.delayed > 0 {
		label = "late p99"
	}
	var h histogram
	prevPub, prevDel, prevAt := int64(0), int64(0), p.start
	return func(now time.Time) {
		snk.takeInterval(&h)
		acked := p.acked.Load()
		pub, del := acked+p.failed.Load(), snk.unique.Load()
		phase := "publish"
		switch {
		case !draining.Load():
		case cfg.delayed > 0 && now.Before(p.windowEnd()):
			phase = "window"
		default:
			phase = "drain"
		}
		dt := now.Sub(prevAt).Seconds()
		fmt.Fprintf(out, "%8s  %-7s %9.0f published/s %9.0f deliveries/s  %s %-9s  owed %d\n",
			now.Sub(p.start).Round(10*time.Millisecond), phase,
			float64(pub-prevPub)/dt, float64(del-prevDel)/dt, label, fmtDur(h.quantile(0.99)),
			max(0, acked*int64(cfg.subs)-del))
		prevPub, prevDel, prevAt = pub, del, now
	}
}

// publisher sends the run's messages, each body stamped with its send time
// (and deliver-at) so the sink can time its deliveries.
type publisher struct {
	cfg     *pushConfig
	client  *http.Client
	clock   *clock
	run     string
	url     string
	bodies  *bodySource
	start   time.Time
	startNS int64
	atBase  int64 // --delayed: the window starts here, clock ns, whole ms

	next       atomic.Int64 // next ticket
	acked      atomic.Int64
	failed     atomic.Int64
	dueAlready atomic.Int64
	errs       errTable
}

// windowEnd is when the last --delayed message is due.
func (p *publisher) windowEnd() time.Time {
	return p.start.Add(time.Duration(p.atBase-p.startNS) + p.cfg.window)
}

// publishAll starts cfg.conns workers and waits for them.
func (p *publisher) publishAll(ctx context.Context) {
	var wg sync.WaitGroup
	for range p.cfg.conns {
		wg.Go(func() { p.work(ctx) })
	}
	wg.Wait()
}

// work takes tickets until the run's bound: --delayed N tickets, the end
// of --duration, or ctx.
func (p *publisher) work(ctx context.Context) {
	cfg := p.cfg
	pace := pacer{start: p.start, rate: cfg.rate, duration: cfg.duration}
	defer pace.stop()
	windowMS := int64(cfg.window / time.Millisecond)
	for ctx.Err() == nil {
		seq := p.next.Add(1) - 1
		var deliverAt int64
		if cfg.delayed > 0 {
			if seq >= cfg.delayed {
				return
			}
			deliverAt = p.atBase + rand.Int64N(windowMS)*int64(time.Millisecond)
		} else if _, ok := pace.wait(ctx, seq); !ok {
			return
		}
		ok, key, text := p.send(ctx, seq, deliverAt)
		switch {
		case ok:
			p.acked.Add(1) // counted even if ctx ended meanwhile: it will be delivered
		case ctx.Err() != nil:
			return // cut short by cancellation: counted nowhere
		default:
			p.failed.Add(1)
			p.errs.add(key, text)
		}
	}
}

// send publishes message seq, stamped now. A 201 (or 200) is success.
func (p *publisher) send(ctx context.Context, seq, deliverAt int64) (ok bool, key, text string) {
	// A fresh body per request: the transport may still hold the last one.
	body := make([]byte, p.cfg.size)
	copy(body, p.bodies.at(seq))
	now := p.clock.now()
	putStamp(body, now, deliverAt, p.run)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return false, "request", err.Error()
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if deliverAt > 0 {
		req.Header.Set("Postbus-Deliver-At", time.Unix(0, deliverAt).UTC().Format(time.RFC3339Nano))
	}
	// Stored once answered 201, whatever happens to the rest of the answer:
	// it will be delivered.
	var buf bytes.Buffer
	ok, key, text = publishOnce(p.client, req, &buf, 1, false, true)
	if ok && deliverAt > 0 && now >= deliverAt {
		p.dueAlready.Add(1)
	}
	return ok, key, text
}

// createSubscription creates a push subscription of group to hook and
// returns its id.
func createSubscription(ctx context.Context, client *http.Client, cfg *pushConfig, group, hook string) (string, error) {
	req := map[string]any{"group": group, "topic": cfg.topic, "url": hook, "max_in_flight": cfg.maxInFlight}
	if cfg.batch > 0 {
		req["batch"] = map[string]any{"max_messages": cfg.batch, "max_wait": cfg.batchWait.String()}
	}
	id, _, err := postSubscription(ctx, client, cfg.url, "create subscription "+group, req)
	return id, err
}

// baselineResult is the client's ceiling: the same client and bodies
// posted straight at a sink, closed loop.
type baselineResult struct {
	url         string
	elapsed     time.Duration
	interrupted bool
	sent        int64
	failed      int64
	sink        *sinkTotals
}

func (b *baselineResult) rate() float64 {
	if b.elapsed <= 0 {
		return 0
	}
	return float64(b.sink.unique) / b.elapsed.Seconds()
}

// runBaseline posts stamped bodies to a fresh sink with cfg.conns workers
// for cfg.duration, each with its own Postbus-Message-Id, so the sink does
// the same work per delivery as in the push run.
func runBaseline(ctx context.Context, cfg *pushConfig, client *http.Client, clk *clock, out io.Writer) *baselineResult {
	run := padRun(newRunID())
	snk, err := startSink(1, run, clk)
	if err != nil {
		fmt.Fprintf(out, "warning: baseline: %v\n", err)
		return &baselineResult{sink: &sinkTotals{}}
	}
	hook := snk.hookURL(0)
	fmt.Fprintf(out, "baseline → %s, closed loop, %d conns, %s\n", hook, cfg.conns, cfg.duration)
	bodies := newBodySource(cfg.size)
	var next, failed atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range cfg.conns {
		wg.Go(func() {
			for ctx.Err() == nil && time.Since(start) < cfg.duration {
				seq := next.Add(1) - 1
				body := make([]byte, cfg.size)
				copy(body, bodies.at(seq))
				putStamp(body, clk.now(), 0, run)
				if !postOnce(ctx, client, hook, body, "base-"+strconv.FormatInt(seq, 10)) && ctx.Err() == nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	res := &baselineResult{url: hook, elapsed: time.Since(start), interrupted: ctx.Err() != nil,
		sent: next.Load(), failed: failed.Load(), sink: snk.totals()}
	// Close the client's side first: a connection dialled but never used
	// looks active to the server, whose Shutdown would wait for it.
	client.CloseIdleConnections()
	if err := snk.Close(); err != nil {
		fmt.Fprintf(out, "warning: baseline: %v\n", err)
	}
	return res
}

// postOnce delivers one body to the sink as the broker would, and reports
// whether it was answered 200.
func postOnce(ctx context.Context, client *http.Client, hook string, body []byte, id string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, hook, bytes.NewReader(body))
	if err != nil {
		return false
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Postbus-Message-Id", id)
	req.Header.Set("Postbus-Attempt", "1")
	req.Header.Set("webhook-id", id)
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body) // drained so the connection is reused
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func describePush(c *pushConfig) string {
	var mode string
	switch {
	case c.delayed > 0:
		mode = fmt.Sprintf("%d delayed messages due within %s, drain %s", c.delayed, c.window, c.drain)
	case c.rate > 0:
		mode = fmt.Sprintf("open loop at %g msgs/s for %s, drain %s", c.rate, c.duration, c.drain)
	default:
		mode = fmt.Sprintf("closed loop for %s, drain %s", c.duration, c.drain)
	}
	batch := ""
	if c.batch > 0 {
		batch = fmt.Sprintf(" batch=%d/%s", c.batch, c.batchWait)
	}
	return fmt.Sprintf("%s topic=%s subscriptions=%d max_in_flight=%d%s conns=%d size=%d, %s",
		c.url, c.topic, c.subs, c.maxInFlight, batch, c.conns, c.size, mode)
}

// writePushReport prints the human report.
func writePushReport(out io.Writer, cfg *pushConfig, r *pushResult) {
	fmt.Fprintln(out)
	s := r.sink
	fmt.Fprintf(out, "push %s%s\n", r.url, interruptedMark(r.interrupted))
	fmt.Fprintf(out, "  published   %d acknowledged, %d failed, in %s (%.1f msgs/s",
		r.acked, r.failed, r.pubElapsed.Round(time.Millisecond), rate(r.acked, r.pubElapsed))
	if cfg.rate > 0 {
		fmt.Fprintf(out, "; target %g", cfg.rate)
	}
	fmt.Fprintln(out, ")")
	missing, extra := r.missing()
	fmt.Fprintf(out, "  deliveries  expected %d (%d × %d subscription(s))  received %d  duplicates %d  missing %d\n",
		r.expected(), r.acked, r.subs, s.received, s.dups, missing)
	if extra > 0 {
		fmt.Fprintf(out, "              %d more first deliveries than acknowledged publishes (a failed publish was stored anyway)\n", extra)
	}
	if cfg.delayed > 0 {
		// Deliveries follow the deliver-at times, not the publishing.
		fmt.Fprintf(out, "  rate        %.1f deliveries/s overall (last at +%s)\n",
			r.overallRate(), r.overall().Round(time.Millisecond))
	} else if r.resumeNS != 0 {
		fmt.Fprintf(out, "  rate        %.1f deliveries/s of the backlog, from the resume to the last (+%s)\n",
			r.backlogRate(), time.Duration(r.sink.lastAt-r.resumeNS).Round(time.Millisecond))
	} else {
		fmt.Fprintf(out, "  rate        %.1f deliveries/s over the publish window, %.1f deliveries/s overall (last at +%s)\n",
			r.windowRate(), r.overallRate(), r.overall().Round(time.Millisecond))
	}
	if cfg.delayed > 0 {
		fmt.Fprintf(out, "  lateness    receipt - deliver-at (or publish, if later): p50 %s  p99 %s  max %s  (%d not early)\n",
			fmtDur(s.lateness.quantile(0.50)), fmtDur(s.lateness.quantile(0.99)), fmtDur(s.lateness.maxValue()), s.lateness.count())
		fmt.Fprintf(out, "  early       %d\n", s.early)
		if r.dueAlready > 0 {
			fmt.Fprintf(out, "  note        %d messages were already due when published: publishing took longer than their place in the window\n", r.dueAlready)
		}
	} else {
		fmt.Fprintf(out, "  latency     publish to webhook: %s\n", s.latency.summary())
	}
	if r.subs > 1 {
		fmt.Fprintln(out, "  per subscription (received, duplicates, missing, p99)")
		for i, st := range s.perSub {
			name := strconv.Itoa(i)
			if i < len(r.groups) {
				name = r.groups[i]
			}
			fmt.Fprintf(out, "    %-24s %d  %d  %d  %s\n", name, st.received, st.dups, max(0, r.acked-st.unique), fmtDur(st.p99))
		}
	}
	writeRSS(out, r.rss)
	if s.foreign > 0 || s.malformed > 0 {
		fmt.Fprintf(out, "  sink        also got %d deliveries of other runs' messages and %d without a message id (not counted)\n", s.foreign, s.malformed)
	}
	if len(r.errs) > 0 {
		fmt.Fprintln(out, "  publish errors (status code: requests, first seen)")
		for _, e := range r.errs {
			fmt.Fprintf(out, "    %-28s %d  first: %s\n", e.key, e.requests, e.first)
		}
	}
	if !r.interrupted {
		if missing == 0 {
			fmt.Fprintf(out, "  drain       every delivery arrived, %s after publishing ended\n", r.drainTook.Round(time.Millisecond))
		} else {
			fmt.Fprintf(out, "  MISSING     %d of %d deliveries had not arrived when the drain ended (%s after publishing)\n",
				missing, r.expected(), r.drainTook.Round(time.Millisecond))
		}
		if s.received == 0 && r.acked > 0 {
			fmt.Fprintln(out, "              no delivery arrived at all: does the broker allow private webhooks? ('postbus dev' does; a broker needs --allow-private-webhooks)")
		}
	}
	if s.early > 0 {
		fmt.Fprintf(out, "  EARLY       %d deliveries arrived before their deliver-at, the earliest by %s: the broker delivered too soon\n",
			s.early, fmtDur(s.maxEarly))
	}
	if b := r.base; b != nil {
		fmt.Fprintln(out)
		fmt.Fprintf(out, "baseline %s (client straight to the sink)%s\n", b.url, interruptedMark(b.interrupted))
		fmt.Fprintf(out, "  deliveries  %d in %s, %d failed  (%.1f deliveries/s)\n",
			b.sink.unique, b.elapsed.Round(time.Millisecond), b.failed, b.rate())
		fmt.Fprintf(out, "  latency     send to sink: p50 %s  p99 %s  max %s\n",
			fmtDur(b.sink.latency.quantile(0.50)), fmtDur(b.sink.latency.quantile(0.99)), fmtDur(b.sink.latency.maxValue()))
		fmt.Fprintln(out)
		fmt.Fprintf(out, "push %.1f deliveries/s overall  baseline %.1f deliveries/s  push/baseline %s\n",
			r.overallRate(), b.rate(), fmtRatio(r.overallRate(), b.rate()))
	}
}

func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}
