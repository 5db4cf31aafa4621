package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"net/http"
	"net/http/httptrace"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrPullCheck is returned by Pull, after the report is printed, when
// messages were still missing at the end of the drain or receipts were left
// unacked; with --idle, when a long poll did not come back empty on time or
// a wake-up publish never reached a poller.
var ErrPullCheck = errors.New("pull check failed")

// Limits of `bench pull`, beyond those shared with the other tools. The
// broker's own limits are repeated here, so a flag it would refuse on every
// request is refused once, before anything is sent.
const (
	maxPullers       = 1000
	maxIdlePolls     = 10000
	maxWakeups       = 1000
	maxPullBatch     = 1000    // the broker's MaxBatchMessages
	maxPullBatchBody = 4 << 20 // the broker's MaxBatchBytes
	maxPullMax       = 256     // the broker's MaxPullMessages
	maxPullWait      = 30 * time.Second
	maxPullVis       = 12 * time.Hour
	// maxPullAnswer bounds one pull answer in memory: 256 messages of a
	// few KiB each are far below it, so only a runaway answer reaches it.
	maxPullAnswer = 64 << 20
	// pullRetryPause keeps a puller whose pulls fail from spinning against
	// a broker that refuses them.
	pullRetryPause = 100 * time.Millisecond
	// idleSlack is how far from --wait an empty long poll may come back and
	// still count as on time.
	idleSlack = time.Second
	// wakeupGap spaces the wake-up publishes: every waiting poller wakes
	// for each one (only one gets the message), and the herd should be
	// back to waiting before the next is timed.
	wakeupGap = 100 * time.Millisecond
	// readyTimeout bounds the wait for every poller to be waiting again
	// before a wake-up publish; a poller that keeps failing is not waited
	// for longer.
	readyTimeout = 5 * time.Second
	// maxWakeMisses ends the wake-up rounds early: a broker that lost this
	// many in a row will not find the rest.
	maxWakeMisses = 2
)

// groupRE is the broker's group name rule; checking it here means the name
// can go into URLs and JSON without escaping.
var groupRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$`)

// pullConfig is the parsed command line of `bench pull`.
type pullConfig struct {
	commonFlags
	group      string // "" = bench-<run>
	pullers    int
	max        int
	wait       time.Duration
	visibility time.Duration // 0 = the subscription's
	batch      int
	drain      time.Duration
	idle       int // 0 = the throughput run
	wakeups    int
}

const pullUsageHead = `Usage: postbus bench pull [flags]

Measures pull consumption: --pullers goroutines long-poll one topic as one
consumer group (POST /v1/groups/{group}/topics/{topic}/pull) and ack every answer
with one request, while a producer publishes for --duration. Reports published,
received (unique, duplicates), acked and missing messages, received and acked
msgs/s, and publish-to-receive latency (p50/p90/p99/max): every body starts with
the time it was published.

The group (bench-<run>, or --group) gets a pull subscription from the latest
message before the run, so what earlier runs left in the topic is not measured;
it is deleted at the end (one that existed already is left alone).

With --idle N the tool instead holds N long polls open on the topic with nothing
to receive, reports how many came back empty within --wait ± 1s and the broker's
RSS before and while they are held (--broker-pid), then publishes --wakeups single
messages and times each from its publish until a waiting poller returns it.
Only loopback targets are allowed unless --allow-remote is given.

Flags:
`

const pullUsageTail = `
Examples:
  # 10 s closed loop against 'postbus dev': 64 publishers, 8 pullers
  postbus bench pull

  # 5000 msgs/s in batches of 50, 16 pullers taking up to 64 messages a pull
  postbus bench pull --rate 5000 --batch 50 --pullers 16 --max 64

  # 1000 idle long polls: memory held, timeouts kept, wake-up latency
  postbus bench pull --idle 1000 --wait 20s --broker-pid $(pgrep -n postbus)
`

// pullFlags is how bench pull words the flags every tool has.
var pullFlags = toolFlags{
	name:          "bench pull",
	usageHead:     pullUsageHead,
	usageTail:     pullUsageTail,
	topic:         "bench-pull",
	minSize:       stampLen,
	topicHelp:     "`topic` to publish to and pull from; created first unless --create=false",
	timeoutHelp:   "per-request timeout of publishes, acks and API calls; a pull may take --wait longer",
	brokerPIDHelp: "sample this `pid`'s VmRSS from /proc/<pid>/status every second and report it",
}

// parsePullFlags parses args into a pullConfig. On --help it prints the
// usage to out and returns flag.ErrHelp.
func parsePullFlags(args []string, out io.Writer) (*pullConfig, error) {
	c := &pullConfig{}
	fs := c.flagSet(&pullFlags, out)
	fs.StringVar(&c.group, "group", "", "consumer `group` to pull as (default bench-<run id>, new each run)")
	fs.IntVar(&c.pullers, "pullers", 8, "goroutines long-polling the topic, each acking what it receives before its next pull")
	fs.IntVar(&c.max, "max", 32, "max messages per pull answer (the broker allows 1..256)")
	fs.DurationVar(&c.wait, "wait", 20*time.Second, "long-poll wait of each pull (0..30s); with --idle, how long each poll is held")
	fs.DurationVar(&c.visibility, "visibility", 30*time.Second, "visibility of pulled messages until acked (0 = the subscription's)")
	fs.IntVar(&c.batch, "batch", 1, "messages per publish: 1 = POST .../messages, >1 = POST .../messages/batch")
	fs.DurationVar(&c.drain, "drain", 10*time.Second, "after publishing, wait at most this long for the messages still to be received")
	fs.IntVar(&c.idle, "idle", 0, "hold `N` long polls open on the topic instead, and report timeouts, broker RSS and wake-up latency")
	fs.IntVar(&c.wakeups, "wakeups", 20, "with --idle: single publishes timed until a waiting poller returns them (0 = none)")
	if err := c.parse(fs, args, c.validate); err != nil {
		return nil, err
	}
	return c, nil
}

// validate checks the flags of bench pull alone; set names the flags given
// on the command line.
func (c *pullConfig) validate(set map[string]bool) error {
	switch {
	case c.pullers < 1 || c.pullers > maxPullers:
		return fmt.Errorf("--pullers %d: must be 1..%d", c.pullers, maxPullers)
	case c.max < 1 || c.max > maxPullMax:
		return fmt.Errorf("--max %d: must be 1..%d", c.max, maxPullMax)
	case c.wait < 0 || c.wait > maxPullWait:
		return fmt.Errorf("--wait %s: must be 0..%s", c.wait, maxPullWait)
	case c.visibility != 0 && (c.visibility < time.Second || c.visibility > maxPullVis):
		return fmt.Errorf("--visibility %s: must be 0 or 1s..%s", c.visibility, maxPullVis)
	case c.duration <= 0:
		return fmt.Errorf("--duration %s: must be > 0: every run must be bounded", c.duration)
	case c.batch < 1 || c.batch > maxPullBatch:
		return fmt.Errorf("--batch %d: must be 1..%d", c.batch, maxPullBatch)
	case c.batch > 1 && int64(c.batch)*int64(c.size) > maxPullBatchBody:
		return fmt.Errorf("--batch %d × --size %d: a batch's bodies would exceed the broker's %d bytes", c.batch, c.size, maxPullBatchBody)
	case c.drain < 0:
		return fmt.Errorf("--drain %s: must be >= 0", c.drain)
	case c.idle < 0 || c.idle > maxIdlePolls:
		return fmt.Errorf("--idle %d: must be 0..%d", c.idle, maxIdlePolls)
	case c.wakeups < 0 || c.wakeups > maxWakeups:
		return fmt.Errorf("--wakeups %d: must be 0..%d", c.wakeups, maxWakeups)
	case c.idle == 0 && set["wakeups"]:
		return errors.New("--wakeups needs --idle")
	case c.idle > 0 && c.wait < 2*idleSlack:
		return fmt.Errorf("--wait %s: with --idle it must be at least %s, to tell on time from early", c.wait, 2*idleSlack)
	case c.group != "" && !groupRE.MatchString(c.group):
		return fmt.Errorf("--group %q: must match %s", c.group, groupRE)
	}
	if c.idle > 0 {
		for _, name := range []string{"pullers", "max", "conns", "duration", "rate", "batch", "drain"} {
			if set[name] {
				return fmt.Errorf("--%s does not apply to --idle, which holds N polls and publishes single messages", name)
			}
		}
	}
	return nil
}

// Pull parses args (flags of "bench pull"; --help prints them and returns
// flag.ErrHelp), measures pull consumption from the broker at --url (or,
// with --idle, idle long polls), prints the report to out and deletes the
// pull subscription it created. Cancelling ctx stops the run; what was
// measured is still reported and the error wraps ctx.Err(). A failed check
// (messages missing, receipts unacked, polls not back on time, wake-ups
// lost) is reported and then returned as ErrPullCheck.
func Pull(ctx context.Context, args []string, out io.Writer) error {
	cfg, err := parsePullFlags(args, out)
	if err != nil {
		return err
	}
	if err := cfg.checkTarget(ctx); err != nil {
		return err
	}
	var interrupted bool
	var verdict string
	if cfg.idle > 0 {
		res, err := runIdle(ctx, cfg, out)
		if err != nil {
			return err
		}
		writeIdleReport(out, cfg, res)
		interrupted, verdict = res.interrupted, res.verdict(cfg)
	} else {
		res, err := runPull(ctx, cfg, out)
		if err != nil {
			return err
		}
		writePullReport(out, cfg, res)
		interrupted, verdict = res.interrupted, res.verdict()
	}
	if interrupted {
		return fmt.Errorf("bench pull interrupted: %w", ctx.Err())
	}
	if verdict != "" {
		return fmt.Errorf("bench pull: %s: %w", verdict, ErrPullCheck)
	}
	return nil
}

// pullEnv is what both modes share: the clients, the names of the run and
// its clock.
type pullEnv struct {
	cfg        *pullConfig
	client     *http.Client // publishes, acks and set-up calls: --timeout
	pullClient *http.Client // long polls: --wait + --timeout, same transport
	clock      *clock
	run        string
	group      string
	pullURL    string
	ackURL     string
	pubURL     string // single or batch publish
	bodies     *bodySource
	subID      string // the subscription to delete at the end; "" if it was there already
}

// setupPull creates the topic and the group's pull subscription. The
// transport holds conns connections. The returned cleanup deletes the
// subscription if it was created here, even after ctx is cancelled.
func setupPull(ctx context.Context, cfg *pullConfig, conns int, out io.Writer) (*pullEnv, func(), error) {
	client := newClient(conns, cfg.timeout)
	run := padRun(newRunID())
	e := &pullEnv{
		cfg:    cfg,
		client: client,
		// A long poll is answered after --wait at the latest; --timeout
		// on top of it is the same slack the other requests get.
		pullClient: &http.Client{Transport: client.Transport, Timeout: cfg.wait + cfg.timeout},
		clock:      newClock(),
		run:        run,
		group:      cfg.group,
		bodies:     newBodySource(cfg.size),
	}
	if e.group == "" {
		e.group = "bench-" + run
	}
	e.pullURL = fmt.Sprintf("%s/v1/groups/%s/topics/%s/pull?max=%d&wait=%s", cfg.url, e.group, cfg.topic, cfg.max, cfg.wait)
	if cfg.visibility > 0 {
		e.pullURL += "&visibility=" + cfg.visibility.String()
	}
	e.ackURL = cfg.url + "/v1/groups/" + e.group + "/ack"
	e.pubURL = cfg.url + "/v1/topics/" + cfg.topic + "/messages"
	if cfg.batch > 1 {
		e.pubURL += "/batch"
	}
	fail := func(err error) (*pullEnv, func(), error) {
		client.CloseIdleConnections()
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("bench pull interrupted: %w", ctx.Err())
		}
		return nil, nil, fmt.Errorf("bench pull: %w", err)
	}
	if cfg.create {
		if err := createTopic(ctx, client, cfg.url, cfg.topic, cfg.queues); err != nil {
			return fail(err)
		}
	}
	id, existed, err := createPullSubscription(ctx, client, cfg.url, e.group, cfg.topic, cfg.visibility)
	if err != nil {
		return fail(err)
	}
	e.subID = id
	if existed {
		fmt.Fprintf(out, "group %s already has a subscription on %s: using it as it stands (not deleted at the end)\n", e.group, cfg.topic)
	}
	cleanup := func() {
		defer client.CloseIdleConnections()
		if e.subID != "" {
			deleteSubscriptions(ctx, client, cfg.url, []string{e.subID}, out)
		}
	}
	return e, cleanup, nil
}

// createPullSubscription creates a pull subscription (no url) of group on
// topic, from the latest message, so a backlog left in the topic by earlier
// runs is not handed to this one. It reports existed when the group has one
// already (409), which is then used as it is.
func createPullSubscription(ctx context.Context, client *http.Client, base, group, topic string, vis time.Duration) (id string, existed bool, err error) {
	fields := map[string]any{"group": group, "topic": topic, "start_from": "latest"}
	if vis > 0 {
		fields["visibility"] = vis.String()
	}
	id, existed, err = postSubscription(ctx, client, base, "create pull subscription "+group, fields)
	if existed {
		return "", true, nil
	}
	return id, false, err
}

// pulledMsg is the part of a pulled message the tool reads.
type pulledMsg struct {
	MsgID    string `json:"msg_id"`
	Receipt  string `json:"receipt"`
	Body     string `json:"body"`
	Encoding string `json:"encoding"`
}

// reqError is a failed request, named for the error table.
type reqError struct{ key, text string }

func (e *reqError) Error() string { return e.text }

// errKey returns the error table key and text of err.
func errKey(err error) (key, text string) {
	var re *reqError
	if errors.As(err, &re) {
		return re.key, re.text
	}
	return "other", err.Error()
}

// pull makes one pull request, reading the answer into buf. at is the clock
// time the answer had been read, before it is decoded: decoding is the
// tool's cost, not the broker's.
func (e *pullEnv) pull(ctx context.Context, buf *bytes.Buffer) (msgs []pulledMsg, at int64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.pullURL, http.NoBody)
	if err != nil {
		return nil, 0, &reqError{"pull request", err.Error()}
	}
	resp, err := e.pullClient.Do(req)
	if err != nil {
		return nil, 0, &reqError{"pull transport: " + transportClass(err), err.Error()}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
		}
		if err != nil {
			return nil, 0, &reqError{"pull transport: " + transportClass(err), "read answer: " + err.Error()}
		}
		key, text := problemKey(resp, b)
		return nil, 0, &reqError{"pull " + key, text}
	}
	buf.Reset()
	n, err := buf.ReadFrom(io.LimitReader(resp.Body, maxPullAnswer+1))
	at = e.clock.now()
	if err != nil {
		return nil, 0, &reqError{"pull transport: " + transportClass(err), "read answer: " + err.Error()}
	}
	if n > maxPullAnswer {
		return nil, 0, &reqError{"pull answer_too_large", fmt.Sprintf("a pull answer over %d bytes", maxPullAnswer)}
	}
	var ans struct {
		Messages []pulledMsg `json:"messages"`
	}
	// A missing or null list is not the broker's answer: an empty one is
	// "messages":[], which decodes to an empty, non-nil slice.
	if err := json.Unmarshal(buf.Bytes(), &ans); err != nil || ans.Messages == nil {
		return nil, 0, &reqError{"pull bad_answer", "not {\"messages\":[...]}: " + truncate(buf.String(), 200)}
	}
	return ans.Messages, at, nil
}

// ack acks receipts in one request and returns how many the broker says it
// acked.
func (e *pullEnv) ack(ctx context.Context, receipts []string) (int64, error) {
	body, err := json.Marshal(struct {
		Receipts []string `json:"receipts"`
	}{receipts})
	if err != nil {
		return 0, &reqError{"ack request", err.Error()}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.ackURL, bytes.NewReader(body))
	if err != nil {
		return 0, &reqError{"ack request", err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, &reqError{"ack transport: " + transportClass(err), err.Error()}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	if err != nil {
		return 0, &reqError{"ack transport: " + transportClass(err), "read answer: " + err.Error()}
	}
	if resp.StatusCode != http.StatusOK {
		key, text := problemKey(resp, b)
		return 0, &reqError{"ack " + key, text}
	}
	// The broker answers each receipt (DESIGN §4): count those acked.
	var ans struct {
		Results []struct {
			Status string `json:"status"`
		} `json:"results"`
	}
	if err := json.Unmarshal(b, &ans); err != nil || len(ans.Results) != len(receipts) {
		return 0, &reqError{"ack bad_answer", "not {\"results\":[…] with one per receipt: " + truncate(string(b), 200)}
	}
	var acked int64
	for _, r := range ans.Results {
		if r.Status == "acked" {
			acked++
		}
	}
	if acked != int64(len(receipts)) {
		return acked, &reqError{"ack short", fmt.Sprintf("%d receipts answered acked %d", len(receipts), acked)}
	}
	return acked, nil
}

// receiptsOf returns the receipts of msgs, appended to dst[:0], and how
// many messages came without one.
func receiptsOf(dst []string, msgs []pulledMsg) ([]string, int) {
	dst = dst[:0]
	missing := 0
	for i := range msgs {
		if msgs[i].Receipt == "" {
			missing++
			continue
		}
		dst = append(dst, msgs[i].Receipt)
	}
	return dst, missing
}

// stampScratch holds the decoded start of a base64 body: the stamp, rounded
// up to whole base64 groups.
const stampScratch = (stampLen + 2) / 3 * 3

// bodyStamp decodes the stamp at the start of a pulled body. The broker
// sends a UTF-8 body as text (ours always are) and anything else as base64.
// The stamp's run aliases scratch.
func bodyStamp(m *pulledMsg, scratch *[stampScratch]byte) (stamp, bool) {
	switch m.Encoding {
	case "utf8", "":
		n := copy(scratch[:], m.Body)
		return parseStamp(scratch[:n])
	case "base64":
		enc := m.Body[:min(len(m.Body), stampScratch/3*4)]
		n, err := base64.StdEncoding.Decode(scratch[:], []byte(enc))
		if err != nil {
			return stamp{}, false
		}
		return parseStamp(scratch[:n])
	}
	return stamp{}, false
}

// pullTally counts what the pullers received of this run's messages.
type pullTally struct {
	run   string
	seed  maphash.Seed
	start int64 // clock ns when publishing started
	// notify gets a value (never blocking) after new first receipts, so
	// the drain waits for the count it needs instead of polling.
	notify chan struct{}
	unique atomic.Int64 // first receipts; moved under mu with the rest

	mu sync.Mutex // guards every field below
	// seen holds a 64-bit hash of each message id received, ~20 bytes a
	// message whatever the id's length (see sinkSub.seen on collisions).
	seen     map[uint64]struct{}
	received int64 // this run's messages, duplicates included
	dups     int64
	foreign  int64 // messages without this run's stamp: earlier runs, other producers
	latency  histogram
	interval histogram // since the last progress line
	lastAt   int64     // clock ns of the last first receipt
}

func newPullTally(run string) *pullTally {
	return &pullTally{run: run, seed: maphash.MakeSeed(), notify: make(chan struct{}, 1), seen: make(map[uint64]struct{})}
}

// record counts the messages of one pull answer read at clock time at.
func (t *pullTally) record(msgs []pulledMsg, at int64) {
	var scratch [stampScratch]byte
	t.mu.Lock()
	defer t.mu.Unlock()
	fresh := false
	for i := range msgs {
		st, ok := bodyStamp(&msgs[i], &scratch)
		if !ok || string(st.run) != t.run {
			t.foreign++
			continue
		}
		t.received++
		h := maphash.String(t.seed, msgs[i].MsgID)
		if _, dup := t.seen[h]; dup {
			t.dups++
			continue
		}
		t.seen[h] = struct{}{}
		lat := time.Duration(at - st.sent)
		t.latency.record(lat)
		t.interval.record(lat)
		t.lastAt = max(t.lastAt, at)
		t.unique.Add(1)
		fresh = true
	}
	if fresh {
		poke(t.notify)
	}
}

// takeInterval moves the interval histogram into h.
func (t *pullTally) takeInterval(h *histogram) {
	h.reset()
	t.mu.Lock()
	h.merge(&t.interval)
	t.interval.reset()
	t.mu.Unlock()
}

// pullCounters are the pullers' request counts.
type pullCounters struct {
	answers   atomic.Int64 // pull answers, empty ones included
	empty     atomic.Int64
	pullFails atomic.Int64
	receipts  atomic.Int64 // messages in pull answers, all of them
	noReceipt atomic.Int64 // messages that came without a receipt
	ackReqs   atomic.Int64
	ackFails  atomic.Int64
	acked     atomic.Int64 // receipts the broker acknowledged acking
	errs      errTable     // pull and ack failures
}

// ackAll acks the receipts of one answer and counts the outcome. An ack cut
// short by cancellation is counted nowhere.
func (c *pullCounters) ackAll(ctx context.Context, e *pullEnv, msgs []pulledMsg, rs *[]string) {
	var missing int
	*rs, missing = receiptsOf(*rs, msgs)
	if missing > 0 {
		c.noReceipt.Add(int64(missing))
		c.errs.add("pull no_receipt", fmt.Sprintf("%d messages of an answer came without a receipt", missing))
	}
	if len(*rs) == 0 {
		return
	}
	n, err := e.ack(ctx, *rs)
	if err != nil && ctx.Err() != nil {
		return
	}
	c.ackReqs.Add(1)
	c.acked.Add(n)
	if err != nil {
		c.ackFails.Add(1)
		c.errs.add(errKey(err))
	}
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// pullPublisher sends the run's messages, singly or in batches, each body
// stamped with its send time so the pullers can time its receipt.
type pullPublisher struct {
	env   *pullEnv
	start time.Time

	next     atomic.Int64 // next request ticket
	requests atomic.Int64
	acked    atomic.Int64 // messages in acknowledged requests
	failed   atomic.Int64 // messages in failed requests
	errs     errTable
}

// publishAll starts --conns workers and waits for them.
func (p *pullPublisher) publishAll(ctx context.Context) {
	var wg sync.WaitGroup
	for range p.env.cfg.conns {
		wg.Go(func() { p.work(ctx) })
	}
	wg.Wait()
}

// work takes tickets until --duration ends or ctx does. In open loop
// request i is due at start + i*batch/rate, as in bench publish.
func (p *pullPublisher) work(ctx context.Context) {
	cfg := p.env.cfg
	batch := int64(cfg.batch)
	pace := pacer{start: p.start, rate: cfg.rate, duration: cfg.duration}
	defer pace.stop()
	for ctx.Err() == nil {
		first := (p.next.Add(1) - 1) * batch
		if _, ok := pace.wait(ctx, first); !ok {
			return
		}
		_, ok, key, text := p.send(ctx, first)
		switch {
		case ok:
			p.acked.Add(batch) // counted even if ctx ended meanwhile: it was stored
		case ctx.Err() != nil:
			return // cut short by cancellation: counted nowhere
		default:
			p.failed.Add(batch)
			p.errs.add(key, text)
		}
		p.requests.Add(1)
	}
}

// send publishes the messages from seq first on, --batch of them, all
// stamped with one send time, which it returns.
func (p *pullPublisher) send(ctx context.Context, first int64) (sent int64, ok bool, key, text string) {
	e := p.env
	cfg := e.cfg
	// A fresh body per request: the transport may still hold the last one.
	var body []byte
	sent = e.clock.now()
	if cfg.batch == 1 {
		body = make([]byte, cfg.size)
		copy(body, e.bodies.at(first))
		putStamp(body, sent, 0, e.run)
	} else {
		// Bodies and stamps need no JSON escaping (see bodyAlphabet).
		body = make([]byte, 0, cfg.batch*(cfg.size+len(`{"body":""},`))+2)
		body = append(body, '[')
		for i := range int64(cfg.batch) {
			if i > 0 {
				body = append(body, ',')
			}
			body = append(body, `{"body":"`...)
			at := len(body)
			body = append(body, e.bodies.at(first+i)...)
			putStamp(body[at:], sent, 0, e.run)
			body = append(body, `"}`...)
		}
		body = append(body, ']')
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.pubURL, bytes.NewReader(body))
	if err != nil {
		return sent, false, "request", err.Error()
	}
	if cfg.batch == 1 {
		req.Header.Set("Content-Type", "application/octet-stream")
	} else {
		req.Header.Set("Content-Type", "application/json")
	}
	// A single message answered 201 is stored, whatever happens to the
	// rest of the answer.
	var buf bytes.Buffer
	ok, key, text = publishOnce(e.client, req, &buf, int64(cfg.batch), cfg.batch > 1, true)
	return sent, ok, key, text
}

// pullResult is what a throughput run leaves for the report.
type pullResult struct {
	url, group  string
	interrupted bool
	pubElapsed  time.Duration // publish start to the last publisher's end
	pubRequests int64
	pubAcked    int64 // messages
	pubFailed   int64
	pubErrs     []*errKind
	startNS     int64
	// By the end of publishing: messages received (duplicates included,
	// this run's only) and receipts acked.
	inWindow, ackedInWindow int64
	drainTook               time.Duration

	received, unique, dups, foreign int64
	latency                         histogram
	lastAt                          int64

	answers, empty, pullFails, receipts, noReceipt int64
	ackReqs, ackFails, acked                       int64
	errs                                           []*errKind
	rss                                            *rssStats
}

// missing compares first receipts with acknowledged publishes. extra counts
// receipts of messages whose publish failed on the client's side although
// the broker stored them.
func (r *pullResult) missing() (missing, extra int64) {
	return max(0, r.pubAcked-r.unique), max(0, r.unique-r.pubAcked)
}

// overall is the time from the start of publishing to the last first
// receipt.
func (r *pullResult) overall() time.Duration {
	if r.lastAt == 0 {
		return 0
	}
	return time.Duration(r.lastAt - r.startNS)
}

// stillArriving reports whether first receipts came in the last second of
// the drain: missing messages are then more likely a backlog than a loss.
func (r *pullResult) stillArriving() bool {
	end := r.startNS + int64(r.pubElapsed+r.drainTook)
	return r.lastAt > 0 && end-r.lastAt < int64(time.Second)
}

// verdict names what failed the check, or "" when nothing did. Receipts
// cut off by an interrupt are not held against the broker.
func (r *pullResult) verdict() string {
	if r.interrupted {
		return ""
	}
	var v []string
	if m, _ := r.missing(); m > 0 {
		v = append(v, fmt.Sprintf("%d of %d messages missing", m, r.pubAcked))
	}
	if u := r.receipts - r.acked; u > 0 {
		v = append(v, fmt.Sprintf("%d of %d receipts not acked", u, r.receipts))
	}
	return strings.Join(v, ", ")
}

// runPull sets up the topic and the subscription, measures and cleans up.
// Only a failure to set up is returned; cancellation shows as
// pullResult.interrupted.
func runPull(ctx context.Context, cfg *pullConfig, out io.Writer) (*pullResult, error) {
	sampler, err := cfg.sampleBroker()
	if err != nil {
		return nil, err
	}
	defer sampler.Stop()
	fmt.Fprintf(out, "bench pull → %s\n", describePull(cfg))
	// Every puller holds one connection (its acks follow its pulls), every
	// publisher one, and set-up calls a spare.
	e, cleanup, err := setupPull(ctx, cfg, cfg.pullers+cfg.conns+1, out)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	fmt.Fprintf(out, "group %s, %d pullers, max %d, wait %s\n", e.group, cfg.pullers, cfg.max, cfg.wait)

	tally := newPullTally(e.run)
	var c pullCounters
	pullCtx, stopPulls := context.WithCancel(ctx)
	defer stopPulls()
	var wg sync.WaitGroup
	for range cfg.pullers {
		wg.Go(func() { pullLoop(pullCtx, ctx, e, tally, &c) })
	}

	p := &pullPublisher{env: e}
	p.start = time.Now()
	tally.start = e.clock.now()
	var draining atomic.Bool
	stopProgress := every(cfg.interval, pullProgress(out, p, tally, &c, &draining))
	p.publishAll(ctx)
	pubElapsed := time.Since(p.start)
	tally.mu.Lock()
	inWindow := tally.received
	tally.mu.Unlock()
	ackedInWindow := c.acked.Load()
	draining.Store(true)

	drainStart := time.Now()
	want := p.acked.Load()
	waitFor(ctx, tally.notify, func() bool { return tally.unique.Load() >= want }, cfg.drain)
	drainTook := time.Since(drainStart)
	// Pulls still waiting are cut off; acks of answers already read go on
	// under ctx, so every receipt handed out is acked.
	stopPulls()
	wg.Wait()
	stopProgress()

	res := &pullResult{
		url: cfg.url, group: e.group, interrupted: ctx.Err() != nil,
		pubElapsed: pubElapsed, pubRequests: p.requests.Load(), pubAcked: want, pubFailed: p.failed.Load(),
		pubErrs: p.errs.list(), startNS: tally.start,
		inWindow: inWindow, ackedInWindow: ackedInWindow, drainTook: drainTook,
		answers: c.answers.Load(), empty: c.empty.Load(), pullFails: c.pullFails.Load(),
		receipts: c.receipts.Load(), noReceipt: c.noReceipt.Load(),
		ackReqs: c.ackReqs.Load(), ackFails: c.ackFails.Load(), acked: c.acked.Load(),
		errs: c.errs.list(),
	}
	tally.mu.Lock()
	res.received, res.unique, res.dups, res.foreign = tally.received, tally.unique.Load(), tally.dups, tally.foreign
	res.latency.merge(&tally.latency)
	res.lastAt = tally.lastAt
	tally.mu.Unlock()
	res.rss = sampler.result()
	return res, nil
}

// pullLoop is one puller: pull, count, ack the answer, pull again, until
// pullCtx ends. Acks run under ackCtx, so an answer read just before the
// end is still acked.
func pullLoop(pullCtx, ackCtx context.Context, e *pullEnv, tally *pullTally, c *pullCounters) {
	var buf bytes.Buffer
	var rs []string
	for pullCtx.Err() == nil {
		msgs, at, err := e.pull(pullCtx, &buf)
		if err != nil {
			if pullCtx.Err() != nil {
				return // cut off at the end: counted nowhere
			}
			c.pullFails.Add(1)
			c.errs.add(errKey(err))
			pause(pullCtx, pullRetryPause)
			continue
		}
		c.answers.Add(1)
		if len(msgs) == 0 {
			c.empty.Add(1)
			continue
		}
		c.receipts.Add(int64(len(msgs)))
		tally.record(msgs, at)
		c.ackAll(ackCtx, e, msgs, &rs)
	}
}

// pullProgress returns the printer of the progress lines: elapsed time,
// phase, published, received and acked messages per second, the interval's
// p99 latency, and the messages still owed.
func pullProgress(out io.Writer, p *pullPublisher, tally *pullTally, c *pullCounters, draining *atomic.Bool) func(now time.Time) {
	var h histogram
	var prevPub, prevRecv, prevAcked int64
	prevAt := p.start
	return func(now time.Time) {
		tally.takeInterval(&h)
		acked := p.acked.Load()
		pub, recv, ackd := acked+p.failed.Load(), c.receipts.Load(), c.acked.Load()
		phase := "publish"
		if draining.Load() {
			phase = "drain"
		}
		dt := now.Sub(prevAt).Seconds()
		fmt.Fprintf(out, "%8s  %-7s %9.0f published/s %9.0f received/s %9.0f acked/s  p99 %-9s  owed %d\n",
			now.Sub(p.start).Round(10*time.Millisecond), phase,
			float64(pub-prevPub)/dt, float64(recv-prevRecv)/dt, float64(ackd-prevAcked)/dt,
			fmtDur(h.quantile(0.99)), max(0, acked-tally.unique.Load()))
		prevPub, prevRecv, prevAcked, prevAt = pub, recv, ackd, now
	}
}

func describePull(c *pullConfig) string {
	if c.idle > 0 {
		return fmt.Sprintf("%s topic=%s: %d idle long polls, wait %s, then %d wake-up publishes",
			c.url, c.topic, c.idle, c.wait, c.wakeups)
	}
	mode := fmt.Sprintf("closed loop with %d publishers", c.conns)
	if c.rate > 0 {
		mode = fmt.Sprintf("open loop at %g msgs/s", c.rate)
	}
	return fmt.Sprintf("%s topic=%s pullers=%d max=%d wait=%s visibility=%s size=%d batch=%d, %s for %s, drain %s",
		c.url, c.topic, c.pullers, c.max, c.wait, c.visibility, c.size, c.batch, mode, c.duration, c.drain)
}

// writePullReport prints the human report of a throughput run.
func writePullReport(out io.Writer, cfg *pullConfig, r *pullResult) {
	fmt.Fprintln(out)
	fmt.Fprintf(out, "pull %s group %s%s\n", r.url, r.group, interruptedMark(r.interrupted))
	fmt.Fprintf(out, "  published   %d acknowledged, %d failed, in %d requests, %s (%.1f msgs/s",
		r.pubAcked, r.pubFailed, r.pubRequests, r.pubElapsed.Round(time.Millisecond), rate(r.pubAcked, r.pubElapsed))
	if cfg.rate > 0 {
		fmt.Fprintf(out, "; target %g", cfg.rate)
	}
	fmt.Fprintln(out, ")")
	missing, extra := r.missing()
	fmt.Fprintf(out, "  received    total %d  unique %d  duplicates %d  missing %d\n", r.received, r.unique, r.dups, missing)
	if extra > 0 {
		fmt.Fprintf(out, "              %d more messages than acknowledged publishes (a failed publish was stored anyway)\n", extra)
	}
	if r.foreign > 0 {
		fmt.Fprintf(out, "              also %d messages of other runs or producers (acked, not counted)\n", r.foreign)
	}
	fmt.Fprintf(out, "  acked       %d of %d receipts, in %d ack requests, %d failed\n", r.acked, r.receipts, r.ackReqs, r.ackFails)
	perAnswer := 0.0
	if full := r.answers - r.empty; full > 0 {
		perAnswer = float64(r.receipts) / float64(full)
	}
	fmt.Fprintf(out, "  pulls       answers %d  empty %d  failed %d  (%.1f messages per non-empty answer)\n",
		r.answers, r.empty, r.pullFails, perAnswer)
	fmt.Fprintf(out, "  rate        %.1f received/s and %.1f acked/s over the publish window; %.1f received/s overall (last at +%s)\n",
		rate(r.inWindow, r.pubElapsed), rate(r.ackedInWindow, r.pubElapsed), rate(r.unique, r.overall()),
		r.overall().Round(time.Millisecond))
	fmt.Fprintf(out, "  latency     publish to receive: %s\n", r.latency.summary())
	writeRSS(out, r.rss)
	writeErrs(out, "publish errors", r.pubErrs)
	writeErrs(out, "pull and ack errors", r.errs)
	if r.interrupted {
		return
	}
	if missing == 0 {
		fmt.Fprintf(out, "  drain       every message arrived, %s after publishing ended\n", r.drainTook.Round(time.Millisecond))
	} else {
		fmt.Fprintf(out, "  MISSING     %d of %d messages had not arrived when the drain ended (%s after publishing)\n",
			missing, r.pubAcked, r.drainTook.Round(time.Millisecond))
		if r.stillArriving() {
			fmt.Fprintf(out, "              they were still arriving at the end (%.1f received/s overall): the pullers fell behind the\n"+
				"              publishing; a longer --drain, a lower --rate or more --pullers / --max tells a backlog from a loss\n",
				rate(r.unique, r.overall()))
		}
	}
	if u := r.receipts - r.acked; u > 0 {
		hint := ""
		if len(r.errs) > 0 {
			hint = ": see the errors above"
		}
		fmt.Fprintf(out, "  UNACKED     %d of %d receipts were not acked%s\n", u, r.receipts, hint)
	}
}

// writeErrs prints an error table under title, if it has rows.
func writeErrs(out io.Writer, title string, errs []*errKind) {
	if len(errs) == 0 {
		return
	}
	fmt.Fprintf(out, "  %s (kind: requests, first seen)\n", title)
	for _, e := range errs {
		fmt.Fprintf(out, "    %-32s %d  first: %s\n", e.key, e.requests, e.first)
	}
}

// idleRun is the state of an --idle run shared by its pollers.
type idleRun struct {
	env *pullEnv
	n   int
	// notify gets a value (never blocking) whenever waiting or returned
	// changes, so the coordinator waits on conditions, not on a clock.
	notify    chan struct{}
	waiting   atomic.Int64  // polls written and not yet answered
	returned  atomic.Int64  // first polls answered, or failed
	firstBack chan struct{} // closed when the first of the first polls returns
	firstOnce sync.Once
	// wakes carries this run's messages to the wake-up coordinator; a
	// poller never blocks on it (only stale ones could fill it).
	wakes chan wakeHit
	c     pullCounters

	mu       sync.Mutex // guards every field below
	onTime   int64
	early    int64
	late     int64
	withMsgs int64
	failed   int64
	held     histogram // how long each empty first poll was held
	foreign  int64
}

// wakeHit is one of this run's messages received: its send time (which
// names it) and when its answer was read.
type wakeHit struct{ sent, at int64 }

func (r *idleRun) poke() { poke(r.notify) }

// waitUntil waits until cond holds, d passes or ctx ends, and reports
// whether cond held.
func (r *idleRun) waitUntil(ctx context.Context, cond func() bool, d time.Duration) bool {
	return waitFor(ctx, r.notify, cond, d)
}

// poller long-polls until stopCtx ends. Its first poll is the measured one;
// later ones wait for the wake-up publishes.
func (r *idleRun) poller(stopCtx, ackCtx context.Context) {
	var buf bytes.Buffer
	var rs []string
	clk := r.env.clock
	first := true
	for stopCtx.Err() == nil {
		// waiting counts the poll from when its request is written until
		// its answer is in; the state makes each count once, in whichever
		// order the transport's goroutines get there.
		var state atomic.Int32 // 0 sending, 1 written, 2 done
		var wroteAt atomic.Int64
		trace := &httptrace.ClientTrace{WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err != nil {
				return
			}
			wroteAt.Store(clk.now())
			if state.CompareAndSwap(0, 1) {
				r.waiting.Add(1)
				r.poke()
			}
		}}
		sendAt := clk.now()
		msgs, at, err := r.env.pull(httptrace.WithClientTrace(stopCtx, trace), &buf)
		if state.Swap(2) == 1 {
			r.waiting.Add(-1)
			r.poke()
			sendAt = wroteAt.Load()
		}
		if err != nil && stopCtx.Err() != nil {
			return // cut off at the end: counted nowhere
		}
		if first {
			first = false
			if at == 0 {
				at = clk.now()
			}
			r.first(time.Duration(at-sendAt), len(msgs), err)
		}
		if err != nil {
			r.c.pullFails.Add(1)
			r.c.errs.add(errKey(err))
			pause(stopCtx, pullRetryPause)
			continue
		}
		r.c.answers.Add(1)
		if len(msgs) == 0 {
			r.c.empty.Add(1)
			continue
		}
		r.c.receipts.Add(int64(len(msgs)))
		r.received(msgs, at)
		r.c.ackAll(ackCtx, r.env, msgs, &rs)
	}
}

// first classifies a poller's first poll, held for d.
func (r *idleRun) first(d time.Duration, got int, err error) {
	wait := r.env.cfg.wait
	r.mu.Lock()
	switch {
	case err != nil:
		r.failed++
	case got > 0:
		r.withMsgs++
	case d < wait-idleSlack:
		r.early++
	case d > wait+idleSlack:
		r.late++
	default:
		r.onTime++
	}
	if err == nil && got == 0 {
		r.held.record(d)
	}
	r.mu.Unlock()
	r.returned.Add(1)
	r.firstOnce.Do(func() { close(r.firstBack) })
	r.poke()
}

// received hands this run's messages to the wake-up coordinator and counts
// the others.
func (r *idleRun) received(msgs []pulledMsg, at int64) {
	var scratch [stampScratch]byte
	for i := range msgs {
		st, ok := bodyStamp(&msgs[i], &scratch)
		if !ok || string(st.run) != r.env.run {
			r.mu.Lock()
			r.foreign++
			r.mu.Unlock()
			continue
		}
		select {
		case r.wakes <- wakeHit{sent: st.sent, at: at}:
		default:
		}
	}
}

// idleResult is what an --idle run leaves for the report.
type idleResult struct {
	url, group  string
	interrupted bool
	polls       int
	wait        time.Duration

	onTime, early, late, withMsgs, failed int64
	held                                  histogram
	allWaiting                            time.Duration // until every first poll was written; 0 if they never all were

	rssBefore int64
	rss       *rssStats // while the first polls were held

	wakeTried, wakeGot int
	wake               histogram // publish to a poller's answer
	wakePub            histogram // publish to its own answer
	minWaiting         int64     // fewest pollers waiting at a wake-up publish
	foreign            int64

	receipts, acked int64
	errs            []*errKind
}

// verdict names what failed the check, or "" when nothing did.
func (r *idleResult) verdict(cfg *pullConfig) string {
	if r.interrupted {
		return ""
	}
	var v []string
	if n := int64(r.polls) - r.onTime; n > 0 {
		v = append(v, fmt.Sprintf("%d of %d long polls did not come back empty within %s ± %s", n, r.polls, r.wait, idleSlack))
	}
	if r.wakeGot < cfg.wakeups {
		v = append(v, fmt.Sprintf("%d of %d wake-up publishes never reached a poller", cfg.wakeups-r.wakeGot, cfg.wakeups))
	}
	if u := r.receipts - r.acked; u > 0 {
		v = append(v, fmt.Sprintf("%d of %d receipts not acked", u, r.receipts))
	}
	return strings.Join(v, ", ")
}

// runIdle holds --idle long polls, samples the broker's memory while they
// are held, then times --wakeups publishes to a waiting poller.
func runIdle(ctx context.Context, cfg *pullConfig, out io.Writer) (*idleResult, error) {
	res := &idleResult{url: cfg.url, polls: cfg.idle, wait: cfg.wait, minWaiting: int64(cfg.idle)}
	statusPath := fmt.Sprintf("/proc/%d/status", cfg.brokerPID)
	if cfg.brokerPID > 0 {
		var err error
		if res.rssBefore, err = readVmRSS(statusPath); err != nil {
			return nil, fmt.Errorf("bench pull: --broker-pid %d: %w", cfg.brokerPID, err)
		}
	}
	fmt.Fprintf(out, "bench pull → %s\n", describePull(cfg))
	// Every poll holds a connection; the publisher and set-up calls get
	// spares, so a wake-up publish never queues behind the polls.
	e, cleanup, err := setupPull(ctx, cfg, cfg.idle+2, out)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	res.group = e.group
	fmt.Fprintf(out, "group %s, opening %d long polls\n", e.group, cfg.idle)

	r := &idleRun{
		env: e, n: cfg.idle,
		notify: make(chan struct{}, 1), firstBack: make(chan struct{}), wakes: make(chan wakeHit, 16),
	}
	stopCtx, stopPolls := context.WithCancel(ctx)
	defer stopPolls()
	start := time.Now()
	var wg sync.WaitGroup
	for range cfg.idle {
		wg.Go(func() { r.poller(stopCtx, ctx) })
	}
	var phase atomic.Int64 // 0 holding, then the wake-up round + 1
	stopProgress := every(cfg.interval, idleProgress(out, cfg, r, start, statusPath, &phase))
	n := int64(cfg.idle)

	// Hold: sample the broker from when every poll is written until the
	// first comes back, then wait for all of them.
	allIn := r.waitUntil(ctx, func() bool {
		select {
		case <-r.firstBack:
			return true
		default:
			return r.waiting.Load() >= n
		}
	}, cfg.wait-idleSlack)
	if allIn && r.waiting.Load() >= n {
		res.allWaiting = time.Since(start)
	}
	var sampler *rssSampler
	if cfg.brokerPID > 0 && ctx.Err() == nil {
		if sampler, err = startRSSSampler(cfg.brokerPID, time.Second); err != nil {
			fmt.Fprintf(out, "warning: %v\n", err)
		}
	}
	select {
	case <-r.firstBack:
	case <-ctx.Done():
	}
	if sampler != nil {
		st := sampler.Stop()
		res.rss = &st
	}
	// Each poll ends by its own client timeout at the latest.
	r.waitUntil(ctx, func() bool { return r.returned.Load() >= n }, cfg.wait+cfg.timeout+idleSlack)

	// Wake-ups: with every poller waiting, publish one message and time it
	// until a poller returns it.
	p := &pullPublisher{env: e}
	misses := 0
	var last time.Time
	for i := 0; i < cfg.wakeups && ctx.Err() == nil && misses < maxWakeMisses; i++ {
		phase.Store(int64(i) + 1)
		if d := wakeupGap - time.Since(last); d > 0 {
			pause(ctx, d)
		}
		r.waitUntil(ctx, func() bool { return r.waiting.Load() >= n }, readyTimeout)
		if ctx.Err() != nil {
			break
		}
		res.minWaiting = min(res.minWaiting, r.waiting.Load())
		last = time.Now()
		res.wakeTried++
		sent, ok, key, text := p.send(ctx, int64(i))
		if ok {
			res.wakePub.record(time.Duration(e.clock.now() - sent))
		}
		if !ok {
			if ctx.Err() == nil {
				r.c.errs.add("publish "+key, text)
				misses++
			}
			continue
		}
		if at, got := awaitWake(ctx, r.wakes, sent, cfg.wait+cfg.timeout); got {
			res.wakeGot++
			res.wake.record(time.Duration(at - sent))
			misses = 0
		} else if ctx.Err() == nil {
			misses++
		}
	}

	stopPolls()
	wg.Wait()
	stopProgress()
	res.interrupted = ctx.Err() != nil
	r.mu.Lock()
	res.onTime, res.early, res.late, res.withMsgs, res.failed = r.onTime, r.early, r.late, r.withMsgs, r.failed
	res.held.merge(&r.held)
	res.foreign = r.foreign
	r.mu.Unlock()
	res.receipts, res.acked, res.errs = r.c.receipts.Load(), r.c.acked.Load(), r.c.errs.list()
	return res, nil
}

// awaitWake waits up to d for the message sent at sent to reach a poller
// and returns when its answer was read. Hits of earlier, timed-out rounds
// are skipped.
func awaitWake(ctx context.Context, wakes <-chan wakeHit, sent int64, d time.Duration) (int64, bool) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case h := <-wakes:
			if h.sent == sent {
				return h.at, true
			}
		case <-timer.C:
			return 0, false
		case <-ctx.Done():
			return 0, false
		}
	}
}

// idleProgress returns the printer of the progress lines: the phase, polls
// waiting, first polls returned and the broker's RSS.
func idleProgress(out io.Writer, cfg *pullConfig, r *idleRun, start time.Time, statusPath string, phase *atomic.Int64) func(now time.Time) {
	return func(now time.Time) {
		label := "hold"
		if ph := phase.Load(); ph > 0 {
			label = fmt.Sprintf("wake-up %d/%d", ph, cfg.wakeups)
		}
		rss := ""
		if cfg.brokerPID > 0 {
			if v, err := readVmRSS(statusPath); err == nil {
				rss = "  broker RSS " + fmtBytes(v)
			}
		}
		fmt.Fprintf(out, "%8s  %-14s waiting %d  returned %d/%d%s\n",
			now.Sub(start).Round(10*time.Millisecond), label, r.waiting.Load(), r.returned.Load(), r.n, rss)
	}
}

// writeIdleReport prints the human report of an --idle run.
func writeIdleReport(out io.Writer, cfg *pullConfig, r *idleResult) {
	fmt.Fprintln(out)
	fmt.Fprintf(out, "idle pull %s group %s: %d long polls, wait %s%s\n", r.url, r.group, r.polls, r.wait, interruptedMark(r.interrupted))
	fmt.Fprintf(out, "  returned    on time %d  early %d  late %d  with messages %d  failed %d  of %d (empty within %s ± %s)\n",
		r.onTime, r.early, r.late, r.withMsgs, r.failed, r.polls, r.wait, idleSlack)
	held := "not all written before the first came back"
	if r.allWaiting > 0 {
		held = fmt.Sprintf("all %d written %s after the start", r.polls, fmtDur(r.allWaiting))
	}
	fmt.Fprintf(out, "  held        p50 %s  min %s  max %s  (%s)\n",
		fmtDur(r.held.quantile(0.5)), fmtDur(time.Duration(r.held.min)), fmtDur(r.held.maxValue()), held)
	if r.rss != nil {
		grew := r.rss.max - r.rssBefore
		fmt.Fprintf(out, "  broker      RSS before %s  while held max %s  (%+.1f MiB, %s per poll; pid %d, %d sample(s))\n",
			fmtBytes(r.rssBefore), fmtBytes(r.rss.max), float64(grew)/(1<<20), fmtBytes(max(0, grew)/int64(r.polls)), r.rss.pid, r.rss.samples)
		if r.rss.err != nil {
			fmt.Fprintf(out, "              sampling stopped: %v\n", r.rss.err)
		}
	}
	if cfg.wakeups > 0 {
		fmt.Fprintf(out, "  wake-up     received %d of %d publishes (%d tried): p50 %s  p99 %s  max %s  (publish to a waiting poll's answer; min %d of %d polls waiting)\n",
			r.wakeGot, cfg.wakeups, r.wakeTried, fmtDur(r.wake.quantile(0.5)), fmtDur(r.wake.quantile(0.99)),
			fmtDur(r.wake.maxValue()), r.minWaiting, r.polls)
		fmt.Fprintf(out, "              the publishes themselves were answered in p50 %s  p99 %s\n",
			fmtDur(r.wakePub.quantile(0.5)), fmtDur(r.wakePub.quantile(0.99)))
	}
	if r.foreign > 0 {
		fmt.Fprintf(out, "              also %d messages of other runs or producers (acked, not counted)\n", r.foreign)
	}
	if r.receipts > 0 {
		fmt.Fprintf(out, "  acked       %d of %d receipts\n", r.acked, r.receipts)
	}
	writeErrs(out, "pull, ack and publish errors", r.errs)
}
