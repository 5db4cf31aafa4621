package push

// The push half of the delivery model checker (broker/delivery_model_test.go
// is the pull half): seeded random publishes (tags, sharding keys, batches),
// endpoints that answer 200 or 500, hang or close the connection, or
// answer 202 and acknowledge with the ack token a moment later, pauses,
// resumes, PATCHes (ordered, filter, url), secret rotations, deletes and
// re-creates, topic growth, offset resets, redrives and clean restarts,
// against push subscriptions on real loopback HTTP. What reaches the
// endpoints is checked as it comes against a plain model; at the end every
// endpoint answers 200 and every message that matches a subscription's
// filter must reach it (or sit in its group's dead-letter queue, after as
// many attempts as max_retries allows), within a bounded wait.
//
// Time is real here (the endpoints are real sockets): retry delays are tens
// of milliseconds, and every wait is a condition with a deadline. An attempt
// times out after 1s, long enough that a 200 under -race on a busy machine
// is not taken for a timeout (which would rightly deliver it again).
//
//	go test -race -run 'TestPushDeliveryModel$' ./push/
//	go test -run 'TestPushDeliveryModel$' ./push/ -delivery.seeds=200
//	go test -run 'TestPushDeliveryModel$' ./push/ -delivery.seed=7 -v

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
)

var (
	flagPDSeeds   = flag.Int("delivery.seeds", 0, "run this many seeds, from -delivery.first, instead of the CI set")
	flagPDFirst   = flag.Uint64("delivery.first", 1, "first seed of -delivery.seeds")
	flagPDSeed    = flag.Uint64("delivery.seed", 0, "run only this seed")
	flagPDSteps   = flag.Int("delivery.steps", 0, "steps per seed (0: the default)")
	flagPDLog     = flag.Bool("delivery.log", false, "show the broker's and the dispatcher's log")
	flagPDWithout = flag.String("delivery.without", "", "comma-separated op families to leave out: "+strings.Join(pdFamilies, ","))
)

var pdFamilies = []string{"hang", "close", "pause", "patch", "ordered", "url", "rotate", "delete", "grow", "reset", "redrive", "restart", "inflight", "defer"}

const pdDefaultSteps = 40

// pdCI is what every `go test` runs, each seed without the families whose
// faults are still open on this branch (the comment on
// TestPushDeliveryModel names the seeds that find them).
var pdCI = []struct {
	seed    uint64
	without string
}{
	{1, pdOpen}, {2, pdOpen}, {3, pdOpen}, {4, pdOpen},
	// Resets to a time among publishes (the model once took a message's
	// time from when Publish returned, not the broker's).
	{10, pdOpen},
	// Turning ordered (or back) repeated settled deliveries (M5, seed 8);
	// pause, turn ordered, resume repeated them too (seed 5). Seed 5 also
	// repeated, now and then, a delivery answered 200 while its
	// subscription was being deleted, once subscribed again (the deleted
	// subscription's consumer was dropped before its loop's last
	// deliveries settled; see TestPushSettleAfterDeleteIsKept).
	{5, pdOpen}, {8, pdOpen},
	// With every family: an ordered subscription got queue offsets 9-10
	// before 3-4, and messages answered 200 came again after a restart.
	// What a push consumer had to hand out again went out beside the
	// ordered leases, and an ordered consumer kept no progress; see
	// broker's TestOrderedPushHandsBackWhatWasOutFirst. (The model's
	// PATCH also held the endpoints' lock past the loop's grace.)
	{82, ""},
}

// pdOpen are the families still left out of the CI seeds (see
// TestPushDeliveryModel): with them, seed 3 still repeated three settled
// deliveries of p0 once under -race on a machine at load 20 (13:19 UTC,
// after a rotate), and other seeds fail as listed there.
// Before the engine (ce9b42d) "grow,inflight,reset,redrive,restart" were
// open too (faults 2, 10, 7 and 8, 3 and 6 of issue 11).
//
// defer (endpoints answering 202 and acknowledging a moment later) passed
// seeds 1-30 (with and without it, the same) and the CI seeds alone under
// -race, but the whole package under -race failed twice at load, seed 5
// and seed 3 ("again after a 200" at a restart step), not reproduced
// alone: left out of CI until that is understood.
const pdOpen = "ordered,rotate,defer"

type pdKind int

const (
	pPublish pdKind = iota
	pBatch
	pMode // an endpoint starts answering otherwise
	pWait // deliveries run for a while
	pPause
	pResume
	pPatchOrdered
	pPatchFilter
	pPatchURL
	pRotate
	pDelete
	pCreate
	pGrow
	pReset
	pRedrive
	pRestart
	pdCount
)

var pdNames = [...]string{"publish", "batch", "mode", "wait", "pause", "resume", "patch-ordered", "patch-filter", "patch-url",
	"rotate", "delete", "create", "grow", "reset", "redrive", "restart"}

func (k pdKind) String() string { return pdNames[k] }

var pdWeights = [pdCount]int{
	pPublish: 16, pBatch: 8, pMode: 10, pWait: 10, pPause: 3, pResume: 4, pPatchOrdered: 2, pPatchFilter: 2, pPatchURL: 2,
	pRotate: 3, pDelete: 1, pCreate: 2, pGrow: 2, pReset: 2, pRedrive: 3, pRestart: 2,
}

var pdFamily = [pdCount]string{pPause: "pause", pResume: "pause", pPatchOrdered: "ordered", pPatchFilter: "patch", pPatchURL: "url",
	pRotate: "rotate", pDelete: "delete", pCreate: "delete", pGrow: "grow", pReset: "reset", pRedrive: "redrive", pRestart: "restart"}

type pdOp struct {
	kind pdKind
	sub  int
	seed uint64
}

func (o pdOp) String() string { return fmt.Sprintf("%s(s%d,%d)", o.kind, o.sub, o.seed) }

const pdTopic = "events"

var pdSpecs = []struct {
	group      string
	filter     string
	ordered    bool
	maxRetries int
	rate       float64
	batch      int // batch.max_messages; 0: one message a request
}{
	{"p0", "*", false, 2, 0, 0},
	{"p1", "a || b", false, 1, 50, 0}, // rate-limited
	{"p2", "*", true, 2, 0, 0},
	// Batched: their endpoints may also answer 207, failing every other
	// element.
	{"p3", "a || b", false, 2, 0, 3},
	{"p4", "*", true, 2, 0, 4},
}

var pdTags = []string{"", "a", "b", "c"}

// Endpoint behaviours.
const (
	modeOK = iota
	modeFail
	modeHang
	modeClose
	modePartial // a batch's endpoint: 207 naming every other element failed
	// modeDefer answers 202 and acknowledges the delivery with its ack
	// token (done) a moment later, as a worker finishing long work does;
	// the model takes the 202 for the 200 the acknowledgement makes it.
	// A batch carries no token: its 202 is a 2xx like any other.
	modeDefer
)

var modeNames = []string{"200", "500", "hang", "close", "207", "202"}

func genPushOps(seed uint64, steps int, without map[string]bool) []pdOp {
	rng := rand.New(rand.NewPCG(seed, 21))
	total := 0
	for _, w := range pdWeights {
		total += w
	}
	var ops []pdOp
	for len(ops) < steps {
		r := rng.IntN(total)
		k := pdKind(0)
		for ; r >= pdWeights[k]; k++ {
			r -= pdWeights[k]
		}
		op := pdOp{kind: k, sub: rng.IntN(len(pdSpecs)), seed: rng.Uint64()}
		if without[pdFamily[k]] {
			continue
		}
		ops = append(ops, op)
	}
	return ops
}

func parsePDFamilies(t *testing.T, list string) map[string]bool {
	out := map[string]bool{}
	for _, f := range strings.Split(list, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if !slices.Contains(pdFamilies, f) {
			t.Fatalf("unknown family %q; known: %v", f, pdFamilies)
		}
		out[f] = true
	}
	return out
}

// TestPushDeliveryModel runs the push model checker's CI seeds, or the
// flags' seeds. Replay one with
//
//	go test -run 'TestPushDeliveryModel$' ./push/ -delivery.seed=N -delivery.without=F -v
//
// Real sockets and real time make some of these depend on timing. What it
// found on main (ce9b42d):
//   - seeds 1, 6: messages on queues added to the topic are never pushed
//     (fault 2); seed 8: in_flight stays non-zero 3s after a pause (10).
//   - seed 3: a probe after two rotations carries no signature under the
//     oldest secret, still within its overlap (fault 12).
//   - seeds 3, 11 (-delivery.without=grow,inflight,rotate): a reset to
//     earliest is never replayed (fault 7); seeds 10, 12: an ordered
//     subscription delivers past the reset position first (7, 8).
//   - seeds 4, 9 (-delivery.without=grow,inflight,rotate,reset,ordered):
//     redriven dead letters of an ordered subscription never arrive (3).
//   - seed 8 (-delivery.without=grow,inflight,rotate,reset,ordered,redrive),
//     sometimes: a rate-limited subscription stopped by a restart
//     dead-letters a message its endpoint saw once (6).
//
// With the consumer engine as of fe6141b merged:
//   - ordered, seeds 3, 8: turning a subscription ordered (or back and
//     forth) delivers again messages its endpoint already answered 200,
//     several of them, with no restart and no crash.
//   - rotate, seeds 5, 6, 10: fault 12 as above (fix/extras).
//   - seed 10 (-delivery.without=ordered), about half the runs: q0@8 of
//     the ordered subscription "never delivered" after a reset to a time.
//     The model's fault: it dated a message by when Publish returned, so
//     one stored before the reset time (correctly not replayed) was
//     expected. It now takes the broker's stored time; seed 10 passes on
//     the engine before this branch as well.
//   - ordered, seeds 3, 8 and rotate, seeds 5, 6 pass since turning
//     ordered on or off is a change in place (the consumer and what it
//     has out are kept) and a consumer built again takes the progress
//     recorded above its offset (seed 5: pause, turn ordered, resume).
//     With nothing left out, seeds 1-120 on a machine at load 25-30 still
//     failed about one in four, the same seeds as on e957b7b: mostly
//     "again after a 200" with no restart (some surely a 200 slower than
//     the 1s timeout under that load), "in the DLQ after the endpoint
//     answered 200" (seeds 18, 44, 52, 70), ordered deliveries out of
//     order after a PATCH (44, 70) and, once, two messages never
//     delivered after filter changes and resets (seed 26).
//   - earlier engine commits (9722e55) also failed "pause", "restart",
//     "delete" and "close" (messages answered 200 delivered again after a
//     consumer restart, 5 after one restart with max_in_flight 4), "reset"
//     (seeds 7, 12: repeats after a reset to latest; seed 10: a message of
//     an ordered subscription lost after resets) and, sometimes, ordered
//     deliveries out of order after a rotation restarted the consumer
//     (seeds 3, 12); 3b0c030 and fe6141b pass those seeds.
//
// Seeds 101-300 with every family, without -race, on a machine at load
// 15-17 (after seed 82's fix): 7 of 200 failed, none of them again in
// three replays each. Ordered out of order after turning ordered (103,
// 129, 257): likely a retry copy stored before the change, which goes
// out from the retry queue, not ordered against the topic's queues
// (documented), later than the model's one second of grace. Repeats
// after a 200 with no restart (116, 124, 226) and a dead letter after a
// 200 (200, during a reset): steps that hold the endpoints' lock while
// the broker works (publish, reset) can keep a 200 past the delivery's
// 1s timeout or the loop's grace, as PATCH did for seed 82; not shown.
func TestPushDeliveryModel(t *testing.T) {
	steps := pdDefaultSteps
	if *flagPDSteps > 0 {
		steps = *flagPDSteps
	}
	type run struct {
		seed    uint64
		without map[string]bool
	}
	var runs []run
	fw := parsePDFamilies(t, *flagPDWithout)
	switch {
	case *flagPDSeed != 0:
		runs = append(runs, run{*flagPDSeed, fw})
	case *flagPDSeeds > 0:
		for i := range *flagPDSeeds {
			runs = append(runs, run{*flagPDFirst + uint64(i), fw})
		}
	default:
		for _, c := range pdCI {
			w := parsePDFamilies(t, c.without)
			for f := range fw {
				w[f] = true
			}
			runs = append(runs, run{c.seed, w})
		}
	}
	failed := 0
	for _, r := range runs {
		ops := genPushOps(r.seed, steps, r.without)
		i, err := runPushModel(t, r.seed, ops, r.without)
		if err == nil {
			continue
		}
		failed++
		var wl []string
		for f := range r.without {
			wl = append(wl, f)
		}
		sort.Strings(wl)
		t.Errorf("push delivery seed %d failed at step %d: %v\nops: %v\nreplay: go test -run 'TestPushDeliveryModel$' ./push/ -delivery.seed=%d -delivery.without=%s -v",
			r.seed, i, err, ops[:min(i+1, len(ops))], r.seed, strings.Join(wl, ","))
		if *flagPDSeeds == 0 || failed >= 20 {
			return
		}
	}
}

// Model.

type pdMsg struct {
	id     string
	tag    string
	queue  int
	qoff   int64
	stored time.Time
}

// psMsg is one message as one subscription sees it.
type psMsg struct {
	expected  bool      // must reach the endpoint (or the DLQ)
	needAfter time.Time // a 200 at or after this counts (a reset asks for it again)
	okAt      time.Time // the last 200
	oks       int       // 200s since needAfter
	attempts  int       // requests that were not answered 200 since needAfter
	dead      bool
	redriven  bool // comes back after the queue moved past it: out of its order
	slack     int  // deliveries in flight at a reset, landing after it
}

type pdSub struct {
	spec              int
	id, group         string
	filter            string
	filters           []string
	ordered           bool
	orderedAt         time.Time
	maxRetries        int
	state             string // active, paused, deleted
	url               int    // which of its two endpoints
	secrets           []string
	secretSince       []time.Time // when each secret became the previous one (zero: current)
	msgs              map[string]*psMsg
	oldIDs            []string
	dupsAllowed, dups int
	// judged are the dead letters (by DLQ offset) syncDLQ has judged
	// already: one written before a reset stays listed, its message
	// replayed and maybe answered 200 since, which is no fault.
	judged map[int64]bool
}

// endpoint is a real HTTP server on 127.0.0.1 whose answer the model sets.
type endpoint struct {
	srv  *httptest.Server
	mode int // guarded by the run's mu
}

type pdRun struct {
	t    *testing.T
	seed uint64
	dir  string
	ctx  context.Context

	b        *broker.Broker
	live     atomic.Pointer[broker.Broker] // b while it runs, for the endpoints' acknowledgements
	acks     sync.WaitGroup                // acknowledgements of deferred deliveries under way
	key      *BusKey
	client   *Client
	stop     context.CancelFunc
	stopped  chan struct{}
	queues   int
	without  map[string]bool
	released chan struct{} // closed to let hanging requests go

	mu         sync.Mutex // guards what the handlers touch: the model and the violations
	subs       []*pdSub
	msgs       map[string]*pdMsg
	ends       [][2]*endpoint // per subscription, its two URLs
	violations []string
	log        []string
	probes     map[string]bool // published at the end: signed with every live secret
}

func (r *pdRun) note(format string, args ...any) {
	r.log = append(r.log, fmt.Sprintf(format, args...))
}

func (r *pdRun) violate(format string, args ...any) {
	r.violations = append(r.violations, fmt.Sprintf(format, args...))
}

func runPushModel(t *testing.T, seed uint64, ops []pdOp, without map[string]bool) (int, error) {
	r := &pdRun{t: t, seed: seed, dir: t.TempDir(), ctx: context.Background(), msgs: map[string]*pdMsg{}, without: without, probes: map[string]bool{},
		released: make(chan struct{})}
	defer close(r.released)
	for i := range pdSpecs {
		var pair [2]*endpoint
		for j := range pair {
			pair[j] = r.newEndpoint(i)
		}
		r.ends = append(r.ends, pair)
	}
	var err error
	if r.key, err = LoadOrCreateBusKey(filepath.Join(r.dir, "signing.key")); err != nil {
		return 0, err
	}
	if err := r.start(); err != nil {
		return 0, err
	}
	defer r.shutdown()
	r.queues = 2
	if _, _, err := r.b.PutTopic(r.ctx, pdTopic, broker.TopicSettings{Queues: r.queues}); err != nil {
		return 0, err
	}
	for i, sp := range pdSpecs {
		s := &pdSub{spec: i, group: sp.group, filter: sp.filter, filters: []string{sp.filter}, ordered: sp.ordered,
			maxRetries: sp.maxRetries, msgs: map[string]*psMsg{}}
		if sp.ordered {
			s.orderedAt = time.Now()
		}
		r.subs = append(r.subs, s)
		if err := r.create(s); err != nil {
			return 0, err
		}
	}
	for i, op := range ops {
		rng := rand.New(rand.NewPCG(op.seed, 22))
		if err := r.step(op, rng); err != nil {
			return i, r.explain(fmt.Errorf("%v: %w", op, err))
		}
		if err := r.takeViolations(); err != nil {
			return i, r.explain(fmt.Errorf("after %v: %w", op, err))
		}
	}
	if err := r.drain(); err != nil {
		return len(ops), r.explain(fmt.Errorf("drain: %w", err))
	}
	return len(ops), nil
}

func (r *pdRun) explain(err error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := len(r.log); n > 0 {
		return fmt.Errorf("%w\nnotes (last %d): %s", err, min(n, 12), strings.Join(r.log[max(0, n-12):], "; "))
	}
	return err
}

func (r *pdRun) takeViolations() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.violations) == 0 {
		return nil
	}
	return errors.New(strings.Join(r.violations[:min(len(r.violations), 5)], "\n"))
}

func (r *pdRun) start() error {
	cfg := broker.DefaultConfig(filepath.Join(r.dir, "data"))
	cfg.SegmentSize = 1 << 20
	cfg.MaxMessageBytes = 64 << 10
	cfg.OffsetInterval = 100 * time.Millisecond
	cfg.CheckpointInterval = time.Second
	cfg.DiskCleanRatio, cfg.DiskFullRatio = 1, 1
	logger := slog.New(slog.DiscardHandler)
	if *flagPDLog {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cfg.Logger = logger
	b, err := broker.Open(r.ctx, cfg)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	r.b = b
	r.live.Store(b)
	r.client = NewClient(ClientConfig{AllowPrivate: true})
	d := NewDispatcher(DispatcherConfig{Broker: b, Client: r.client, Key: r.key, Logger: logger, Grace: 300 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	r.stop, r.stopped = cancel, make(chan struct{})
	go func() {
		defer close(r.stopped)
		d.Run(ctx)
	}()
	return nil
}

func (r *pdRun) shutdown() {
	if r.b == nil {
		return
	}
	r.stop()
	<-r.stopped
	r.acks.Wait()
	r.live.Store(nil)
	r.client.Close()
	r.b.Close()
	r.b = nil
}

func (r *pdRun) newEndpoint(sub int) *endpoint {
	e := &endpoint{}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		mode := e.mode
		partial := r.received(sub, req, body, mode)
		r.mu.Unlock()
		switch mode {
		case modeOK:
			w.WriteHeader(http.StatusOK)
		case modePartial:
			if partial == nil {
				w.WriteHeader(http.StatusInternalServerError) // not a batch
				return
			}
			ans, _ := json.Marshal(map[string][]string{"failed": partial})
			w.WriteHeader(http.StatusMultiStatus)
			w.Write(ans)
		case modeDefer:
			if tok := req.Header.Get(HeaderAckToken); tok != "" {
				r.acks.Add(1)
				go r.ackLater(req.Header.Get("Postbus-Message-Id"), tok)
			}
			w.WriteHeader(http.StatusAccepted) // a 2xx for an ordered subscription's, which has no token
		case modeFail:
			w.WriteHeader(http.StatusInternalServerError)
		case modeHang:
			select {
			case <-req.Context().Done():
			case <-r.released:
			}
			w.WriteHeader(http.StatusServiceUnavailable)
		case modeClose:
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	r.t.Cleanup(e.srv.Close)
	return e
}

// ackLater acknowledges a deferred delivery (done) through the broker
// running now, as POST /v1/acks/{token} does. Its acknowledgement waits for
// the hold; a broker being restarted is tried again for a while. A token
// answered used or expired (an offset reset, a delete) is noted: its
// message then comes again as the model allows for those.
func (r *pdRun) ackLater(id, tok string) {
	defer r.acks.Done()
	deadline := time.Now().Add(3 * time.Second)
	for {
		err := errors.New("no broker running")
		if b := r.live.Load(); b != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			var d broker.DeferredAck
			if d, err = b.Deferred(ctx, tok); err == nil {
				err = b.SettleDeferred(ctx, d, broker.Ack())
			}
			cancel()
		}
		switch code := broker.CodeOf(err); {
		case err == nil:
			return
		case code == broker.CodeAckTokenUsed || code == broker.CodeAckTokenExpired || code == broker.CodeInvalidAckToken || time.Now().After(deadline):
			r.mu.Lock()
			r.note("acknowledging %s (deferred) failed: %v", id, err)
			r.mu.Unlock()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// received checks one request against the model, answered as mode says.
// A batch is checked element by element; with modePartial, it returns the
// ids it answers failed (every other element). Called with r.mu held.
func (r *pdRun) received(idx int, req *http.Request, body []byte, mode int) (failed []string) {
	s := r.subs[idx]
	if req.Header.Get(HeaderBatchSize) == "" {
		if pdSpecs[s.spec].batch > 0 && req.Header.Get(HeaderSubscription) == s.id {
			r.violate("%s, batched, got a request of one message", s.group)
		}
		r.receivedOne(idx, req, body, req.Header.Get("Postbus-Message-Id"), req.Header.Get("Postbus-Attempt"), mode == modeOK || mode == modeDefer, nil)
		return nil
	}
	var els []BatchElement
	if err := json.Unmarshal(body, &els); err != nil {
		r.violate("%s got a batch that is not a JSON array of messages: %v", s.group, err)
		return nil
	}
	if n := pdSpecs[s.spec].batch; len(els) == 0 || len(els) > n || req.Header.Get(HeaderBatchSize) != strconv.Itoa(len(els)) {
		r.violate("%s got a batch of %d messages (%s %q); max_messages is %d", s.group, len(els), HeaderBatchSize, req.Header.Get(HeaderBatchSize), n)
	}
	// before: the elements ahead in this request, sent before any answer;
	// held: an ordered subscription's queues with a failed element here,
	// after which nothing of the queue is taken as delivered.
	before := map[string]bool{}
	held := map[string]bool{}
	for i, e := range els {
		fail := mode == modePartial && i%2 == 1
		if fail {
			failed = append(failed, e.MsgID)
		}
		ok := mode == modeOK || mode == modePartial || mode == modeDefer
		q := fmt.Sprint(e.QueueID, "/", e.Topic)
		if dm := r.msgs[e.MsgID]; dm != nil && (dm.queue != e.QueueID || dm.qoff != e.QueueOffset) {
			q += "/retry"
		}
		if fail || held[q] {
			ok = false
			if s.ordered {
				held[q] = true
			}
		}
		r.receivedOne(idx, req, body, e.MsgID, strconv.Itoa(e.Attempt), ok, before)
		before[e.MsgID] = true
	}
	if mode == modePartial && failed == nil {
		failed = []string{}
	}
	return failed
}

// receivedOne checks one message of a request; ok says whether it counts
// as answered 2xx. before are the messages ahead of it in its batch.
func (r *pdRun) receivedOne(idx int, req *http.Request, body []byte, id, attemptHdr string, ok bool, before map[string]bool) {
	now := time.Now()
	subID := req.Header.Get("Postbus-Subscription")
	s := r.subs[idx]
	if subID != s.id {
		if slices.Contains(s.oldIDs, subID) {
			// The deleted subscription's loop, within its grace.
			r.note("%s got %s from its deleted subscription %s", s.group, id, subID)
			return
		}
		r.violate("endpoint of %s got a request for subscription %q (current %q)", s.group, subID, s.id)
		return
	}
	dm := r.msgs[id]
	if dm == nil {
		r.violate("%s got %s, which was never published", s.group, id)
		return
	}
	if !slices.ContainsFunc(s.filters, func(f string) bool { pf, _ := broker.ParseFilter(f); return pf.Match(dm.tag) }) {
		r.violate("%s got %s (tag %q), which none of its filters %v matches", s.group, id, dm.tag, s.filters)
		return
	}
	// (Postbus-Queue-Id and -Offset name the retry copy's place on a
	// retry: the model's own queue and offset are used below.)
	attempt, _ := strconv.Atoi(attemptHdr)
	if attempt < 1 || attempt > s.maxRetries+1 {
		r.violate("%s got %s as attempt %d; max_retries is %d", s.group, id, attempt, s.maxRetries)
	}
	if err := r.checkSecrets(s, req, body, now, r.probes[id]); err != nil {
		r.violate("%s got %s: %v", s.group, id, err)
	}
	sm := s.msgs[id]
	if sm == nil {
		sm = &psMsg{} // matched a filter it had before: may come
		s.msgs[id] = sm
	}
	if s.ordered && sm.expected && now.After(s.orderedAt) {
		for oid, o := range s.msgs {
			om := r.msgs[oid]
			if oid == id || om.queue != dm.queue || om.qoff >= dm.qoff || !o.expected || o.oks > 0 || o.dead || o.redriven || before[oid] {
				continue
			}
			if o.attempts >= s.maxRetries+1 {
				continue // dead-lettered, the DLQ will say
			}
			r.violate("%s (ordered) got %s (queue %d offset %d) while offset %d of that queue has not been delivered", s.group, id, dm.queue, dm.qoff, om.qoff)
			break
		}
	}
	if !ok {
		sm.attempts++
		return
	}
	if sm.oks > 0 && sm.slack > 0 {
		// A delivery that was in flight across a reset: not a repeat.
		sm.slack--
	} else if sm.oks > 0 {
		s.dups++
		r.note("%s got %s again after a 200 (%d repeats, %d allowed)", s.group, id, s.dups, s.dupsAllowed)
		if s.dups > s.dupsAllowed {
			r.violate("%s got %s again after a 200 at %s: %d repeats, %d allowed by restarts", s.group, id, sm.okAt.Format("15:04:05.000"), s.dups, s.dupsAllowed)
		}
	}
	sm.oks++
	sm.okAt = now
}

// checkSecrets: the v1 signatures verify under one of the subscription's
// secrets (a delivery signed before a rotation may land after it); a probe,
// published when everything else has landed, under every secret still
// within its overlap.
func (r *pdRun) checkSecrets(s *pdSub, req *http.Request, body []byte, now time.Time, probe bool) error {
	if len(s.secrets) == 0 {
		return nil
	}
	if !probe {
		for _, sec := range s.secrets {
			if VerifyStandardWebhook(sec, req.Header, body, time.Hour, now) == nil {
				return nil
			}
		}
		return fmt.Errorf("no valid signature under any of its %d secrets", len(s.secrets))
	}
	var need []string
	{
		for i, sec := range s.secrets {
			if s.secretSince[i].IsZero() || now.Before(s.secretSince[i].Add(broker.SecretOverlap)) {
				need = append(need, sec)
			}
		}
	}
	for _, sec := range need {
		if err := VerifyStandardWebhook(sec, req.Header, body, time.Hour, now); err != nil {
			idx := slices.Index(s.secrets, sec)
			return fmt.Errorf("no valid signature under secret %d of %d (newest first; rotated %d times): %w", idx, len(s.secrets), len(s.secrets)-1, err)
		}
	}
	return nil
}

func (r *pdRun) create(s *pdSub) error {
	sp := pdSpecs[s.spec]
	sub, err := r.b.CreateSubscription(r.ctx, broker.Subscription{Group: s.group, Topic: pdTopic, URL: r.ends[s.spec][s.url].srv.URL,
		Filter: s.filter, Ordered: s.ordered, MaxRetries: s.maxRetries, RetryDelays: []time.Duration{20 * time.Millisecond, 50 * time.Millisecond},
		Timeout: time.Second, MaxInFlight: max(4, sp.batch), RatePerSecond: sp.rate, StartFrom: "earliest",
		Batch: broker.PushBatch{MaxMessages: sp.batch, MaxWait: time.Duration(sp.batch) * 10 * time.Millisecond}})
	if err != nil {
		return fmt.Errorf("create subscription of %s: %w", s.group, err)
	}
	r.mu.Lock()
	s.id, s.state = sub.ID, broker.StateActive
	s.secrets, s.secretSince = []string{sub.Secret}, []time.Time{{}}
	r.mu.Unlock()
	return nil
}

func (r *pdRun) step(op pdOp, rng *rand.Rand) error {
	s := r.subs[op.sub]
	switch op.kind {
	case pPublish:
		return r.publish(rng, 1)
	case pBatch:
		return r.publish(rng, 2+rng.IntN(6))
	case pMode:
		modes := []int{modeOK, modeOK, modeFail}
		if pdSpecs[op.sub].batch > 0 {
			modes = append(modes, modePartial)
		}
		if !r.without["hang"] {
			modes = append(modes, modeHang)
		}
		if !r.without["close"] {
			modes = append(modes, modeClose)
		}
		if !r.without["defer"] {
			modes = append(modes, modeDefer)
		}
		m := modes[rng.IntN(len(modes))]
		r.mu.Lock()
		for _, e := range r.ends[op.sub] {
			e.mode = m
		}
		r.note("%s answers %s", s.group, modeNames[m])
		r.mu.Unlock()
	case pWait:
		time.Sleep(time.Duration(20+rng.IntN(200)) * time.Millisecond)
	case pPause:
		if s.state != broker.StateActive {
			return nil
		}
		if _, err := r.b.SetSubscriptionState(r.ctx, s.id, broker.StatePaused, ""); err != nil {
			return err
		}
		r.mu.Lock()
		s.state = broker.StatePaused
		r.mu.Unlock()
		return r.checkNoneInFlight(s, "paused")
	case pResume:
		if s.state != broker.StatePaused {
			return nil
		}
		if _, err := r.b.SetSubscriptionState(r.ctx, s.id, broker.StateActive, ""); err != nil {
			return err
		}
		r.mu.Lock()
		s.state = broker.StateActive
		r.mu.Unlock()
	case pPatchOrdered:
		return r.patch(s, func(b *broker.Subscription) { b.Ordered = !b.Ordered })
	case pPatchFilter:
		f := []string{"*", "a || b", "b || c", "c"}[rng.IntN(4)]
		return r.patch(s, func(b *broker.Subscription) { b.Filter = f })
	case pPatchURL:
		r.mu.Lock()
		s.url = 1 - s.url
		u := r.ends[s.spec][s.url].srv.URL
		r.mu.Unlock()
		return r.patch(s, func(b *broker.Subscription) { b.URL = u })
	case pRotate:
		if s.state == "deleted" {
			return nil
		}
		sub, err := r.b.RotateSecret(r.ctx, s.id, "")
		if err != nil {
			return fmt.Errorf("rotate %s: %w", s.group, err)
		}
		r.mu.Lock()
		s.secretSince[0] = time.Now()
		s.secrets = append([]string{sub.Secret}, s.secrets...)
		s.secretSince = append([]time.Time{{}}, s.secretSince...)
		r.mu.Unlock()
	case pDelete:
		if s.state == "deleted" {
			return nil
		}
		if err := r.b.DeleteSubscription(r.ctx, s.id); err != nil {
			return err
		}
		r.mu.Lock()
		s.state = "deleted"
		s.oldIDs = append(s.oldIDs, s.id)
		r.mu.Unlock()
		return r.checkNoneInFlight(s, "deleted")
	case pCreate:
		if s.state != "deleted" {
			return nil
		}
		return r.create(s)
	case pGrow:
		if r.queues >= 6 {
			return nil
		}
		n := r.queues + 1 + rng.IntN(2)
		if _, _, err := r.b.PutTopic(r.ctx, pdTopic, broker.TopicSettings{Queues: n}); err != nil {
			return err
		}
		r.queues = n
		r.mu.Lock()
		r.note("grew to %d queues", n)
		r.mu.Unlock()
	case pReset:
		return r.reset(s, rng)
	case pRedrive:
		return r.redrive(s)
	case pRestart:
		r.shutdown()
		r.mu.Lock()
		for _, s := range r.subs {
			s.dupsAllowed += 4 // max_in_flight: what may be out when the loop stops
		}
		r.note("restart")
		r.mu.Unlock()
		return r.start()
	}
	return nil
}

func (r *pdRun) publish(rng *rand.Rand, n int) error {
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = &broker.Message{Body: fmt.Appendf(nil, `{"n":%d}`, rng.Uint64()), ContentType: "application/json", Tag: pdTags[rng.IntN(len(pdTags))]}
		if rng.IntN(3) == 0 {
			msgs[i].ShardingKey = fmt.Sprint("k", rng.IntN(3))
		}
	}
	// The model knows the messages before an endpoint can get them.
	r.mu.Lock()
	defer r.mu.Unlock()
	res, err := r.b.Publish(r.ctx, pdTopic, msgs)
	if err != nil {
		return fmt.Errorf("publish %d: %w", n, err)
	}
	r.recordLocked(msgs, res)
	return nil
}

// recordLocked adds published messages to the model. Called with r.mu held.
// A message's time is the broker's (what a reset to a time compares), not
// when Publish returned: an fsync can take milliseconds, and the next
// message's stored time may fall before a reset time picked from this
// one's return (which stranded no message but failed seed 10 half the
// time).
func (r *pdRun) recordLocked(msgs []*broker.Message, res []broker.Result) {
	now := time.Now()
	for i, m := range msgs {
		stored := now
		if got, err := r.b.Message(r.ctx, res[i].ID); err == nil {
			stored = got.StoredAt
		} else {
			r.t.Logf("stored time of %s unknown (%v); taking %s", res[i].ID, err, now.Format("15:04:05.000"))
		}
		dm := &pdMsg{id: res[i].ID, tag: m.Tag, queue: res[i].QueueID, qoff: res[i].QueueOffset, stored: stored}
		r.msgs[dm.id] = dm
		for _, s := range r.subs {
			f, _ := broker.ParseFilter(s.filter)
			if f.Match(dm.tag) {
				s.msgs[dm.id] = &psMsg{expected: true}
			}
		}
	}
}

func (r *pdRun) patch(s *pdSub, change func(*broker.Subscription)) error {
	if s.state == "deleted" {
		return nil
	}
	sub, err := r.b.Subscription(r.ctx, s.id)
	if err != nil {
		return err
	}
	change(&sub)
	r.mu.Lock()
	if sub.Filter != s.filter {
		r.note("%s filter %q -> %q", s.group, s.filter, sub.Filter)
		s.filters = append(s.filters, sub.Filter)
	}
	if !sub.Ordered && s.ordered {
		s.ordered = false // from now on deliveries may come in any order
		r.note("%s ordered=false", s.group)
	}
	r.mu.Unlock()
	// Not holding r.mu: the change stops the subscription's loop, which
	// lets its deliveries finish within the grace, and the endpoints take
	// r.mu to answer. Held, it kept their 200s past the grace, so the
	// deliveries were cut off and rightly sent again (push model seed 82,
	// "in the DLQ after the endpoint answered 200" once the endpoint
	// failed the resend). A delivery landing meanwhile is judged against
	// the filters so far (s.filters), and as unordered.
	if _, err := r.b.UpdateSubscription(r.ctx, sub); err != nil {
		return fmt.Errorf("patch %s: %w", s.group, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if sub.Ordered != s.ordered {
		s.ordered = sub.Ordered
		s.orderedAt = time.Now().Add(time.Second) // the old loop's deliveries may still land
		r.note("%s ordered=%v", s.group, s.ordered)
	}
	if sub.Filter != s.filter {
		s.filter = sub.Filter
		f, _ := broker.ParseFilter(sub.Filter)
		for id, sm := range s.msgs {
			if !f.Match(r.msgs[id].tag) && sm.oks == 0 {
				sm.expected = false
			}
		}
	}
	return nil
}

func (r *pdRun) reset(s *pdSub, rng *rand.Rand) error {
	if s.state == "deleted" {
		return nil
	}
	to := []string{"earliest", "latest", "time"}[rng.IntN(3)]
	var at time.Time
	r.mu.Lock()
	if to == "time" {
		var ids []string
		for id := range r.msgs {
			ids = append(ids, id)
		}
		if len(ids) == 0 {
			r.mu.Unlock()
			return nil
		}
		sort.Strings(ids)
		at = r.msgs[ids[rng.IntN(len(ids))]].stored.Add(time.Millisecond).Truncate(time.Millisecond)
		to = at.Format(time.RFC3339Nano)
	}
	defer r.mu.Unlock()
	// The dead letters written before the reset are judged against the
	// model before it: after it they stay listed while their messages are
	// replayed (and maybe answered 200).
	if err := r.syncDLQ(s); err != nil {
		return err
	}
	if err := r.b.ResetOffsets(r.ctx, s.group, pdTopic, to); err != nil {
		return fmt.Errorf("reset %s to %s: %w", s.group, to, err)
	}
	now := time.Now()
	r.note("reset %s to %s", s.group, to)
	f, _ := broker.ParseFilter(s.filter)
	for id, sm := range s.msgs {
		dm := r.msgs[id]
		sm.slack = 1
		// Stored within a millisecond of the time: either side.
		near := !at.IsZero() && dm.stored.Sub(at).Abs() < 2*time.Millisecond
		replay := to == "earliest" || (!at.IsZero() && dm.stored.After(at) && !near)
		switch {
		case near:
			// Replayed or not: either is right, and a replay is no repeat.
			sm.expected, sm.oks = false, 0
		case replay && f.Match(dm.tag):
			sm.expected, sm.needAfter, sm.oks, sm.attempts, sm.dead = true, now, 0, 0, false
		case sm.oks == 0 && !sm.dead:
			sm.expected = false
		}
	}
	if s.ordered {
		// A delivery the old position had in flight may still land.
		s.orderedAt = now.Add(time.Second)
	}
	return nil
}

func (r *pdRun) redrive(s *pdSub) error {
	if s.state == "deleted" {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.syncDLQ(s); err != nil {
		return err
	}
	n, err := r.b.Redrive(r.ctx, s.group, nil, true, 1000)
	if err != nil {
		return fmt.Errorf("redrive %s: %w", s.group, err)
	}
	now := time.Now()
	for _, sm := range s.msgs {
		if sm.dead {
			sm.dead, sm.expected, sm.needAfter, sm.oks, sm.attempts, sm.redriven = false, true, now, 0, 0, true
		}
	}
	if n > 0 {
		r.note("redrove %d of %s", n, s.group)
	}
	return nil
}

// syncDLQ marks what the group's DLQ holds dead: each after as many failed
// attempts as max_retries allows, none after a 200. Called with r.mu held.
func (r *pdRun) syncDLQ(s *pdSub) error {
	dls, err := r.b.DeadLetters(r.ctx, s.group, -1, 10000)
	if err != nil {
		return fmt.Errorf("dead letters of %s: %w", s.group, err)
	}
	if s.judged == nil {
		s.judged = map[int64]bool{}
	}
	for _, d := range dls {
		if s.judged[d.DLQOffset] {
			continue
		}
		s.judged[d.DLQOffset] = true
		sm := s.msgs[d.ID]
		switch {
		case r.msgs[d.ID] == nil:
			return fmt.Errorf("dead letter %s of %s was never published", d.ID, s.group)
		case sm == nil:
			return fmt.Errorf("dead letter %s of %s: the subscription never had it", d.ID, s.group)
		case sm.dead:
		case sm.oks > 0:
			return fmt.Errorf("%s is in the DLQ of %s after the endpoint answered 200", d.ID, s.group)
		case sm.attempts < s.maxRetries+1:
			return fmt.Errorf("%s is in the DLQ of %s after %d requests reached the endpoint; max_retries is %d (reason %q)",
				d.ID, s.group, sm.attempts, s.maxRetries, d.Reason)
		default:
			sm.dead = true
		}
	}
	return nil
}

// checkNoneInFlight: a paused or deleted subscription's group shows nothing
// in flight on the topic's queues once its loop has stopped.
func (r *pdRun) checkNoneInFlight(s *pdSub, what string) error {
	if r.without["inflight"] {
		return nil
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		gi, err := r.b.Group(r.ctx, s.group)
		if err != nil {
			return err
		}
		var busy []string
		for _, q := range gi.Queues {
			if q.Topic == pdTopic && q.InFlight != 0 {
				busy = append(busy, fmt.Sprintf("queue %d: %d", q.Queue, q.InFlight))
			}
		}
		if len(busy) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("group %s still shows in flight %v 3s after its subscription was %s", s.group, busy, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// drain: every endpoint answers 200 and every subscription is active; each
// message a subscription must take reaches it or its group's DLQ within a
// bounded wait.
func (r *pdRun) drain() error {
	r.mu.Lock()
	for _, pair := range r.ends {
		for _, e := range pair {
			e.mode = modeOK
		}
	}
	r.mu.Unlock()
	for _, s := range r.subs {
		switch s.state {
		case "deleted":
			if err := r.create(s); err != nil {
				return err
			}
		case broker.StatePaused:
			if _, err := r.b.SetSubscriptionState(r.ctx, s.id, broker.StateActive, ""); err != nil {
				return err
			}
			s.state = broker.StateActive
		}
	}
	if err := r.await(20 * time.Second); err != nil {
		return err
	}
	// Then one probe for each subscription, to see it signed with every
	// secret still within its overlap.
	if !r.without["rotate"] {
		r.mu.Lock()
		var msgs []*broker.Message
		for _, s := range r.subs {
			tag := map[string]string{"*": "", "a || b": "a", "b || c": "b", "c": "c"}[s.filter]
			msgs = append(msgs, &broker.Message{Body: []byte(`{"probe":true}`), Tag: tag})
		}
		res, err := r.b.Publish(r.ctx, pdTopic, msgs)
		if err != nil {
			r.mu.Unlock()
			return fmt.Errorf("publish probes: %w", err)
		}
		r.recordLocked(msgs, res)
		for _, x := range res {
			r.probes[x.ID] = true
		}
		r.mu.Unlock()
		return r.await(10 * time.Second)
	}
	return nil
}

// await waits up to d for every message a subscription must take to reach
// it or its group's DLQ.
func (r *pdRun) await(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		r.mu.Lock()
		var missing []string
		for _, s := range r.subs {
			if err := r.syncDLQ(s); err != nil {
				r.mu.Unlock()
				return err
			}
			for id, sm := range s.msgs {
				if sm.expected && sm.oks == 0 && !sm.dead {
					dm := r.msgs[id]
					missing = append(missing, fmt.Sprintf("%s:%s(q%d@%d tag %q, %d failed attempts)", s.group, id, dm.queue, dm.qoff, dm.tag, sm.attempts))
				}
			}
		}
		r.mu.Unlock()
		if err := r.takeViolations(); err != nil {
			return err
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			sort.Strings(missing)
			return fmt.Errorf("%d messages never reached their subscription nor its DLQ within %s: %s", len(missing), d, strings.Join(missing[:min(len(missing), 8)], ", "))
		}
		time.Sleep(25 * time.Millisecond)
	}
}
