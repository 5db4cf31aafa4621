package broker

// The delivery model checker: seeded random sequences of publishes (single,
// batches, tags for filters, sharding keys, delays), pulls with varying max
// and visibility, acks, nacks with a delay, visibility running out, acks at
// the very deadline, pauses, resumes, PATCHes (ordered, filter), deleting
// and re-creating a subscription, growing the topic's queues, offset resets
// (earliest, latest, a time), dead-letter redrives, clean restarts and power
// cuts (vfs.Fault, as in torture_test.go), run against pull groups of one
// topic. Every answer is checked against a plain in-memory model as it
// comes, and at the end every group is drained: each message that matches a
// group's filter must end acked or in that group's dead-letter queue.
//
// Time is testing/synctest's: the broker's timers (visibility, nack delays,
// delayed messages) run on the bubble's clock, so a visibility of 10s passes
// in no time and at exactly the instant asked for.
//
//	go test -race -run 'TestDeliveryModel$' ./broker/                        # the CI seeds
//	go test -run 'TestDeliveryModel$' ./broker/ -delivery.seeds=2000          # many more
//	go test -run 'TestDeliveryModel$' ./broker/ -delivery.seed=1234 -v        # replay one
//	go test -run 'TestDeliveryModel$' ./broker/ -delivery.seeds=500 -delivery.without=crash,grow

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/postbus/postbus/broker/internal/vfs"
	"github.com/postbus/postbus/broker/meta"
)

var (
	flagDeliverySeeds   = flag.Int("delivery.seeds", 0, "run this many seeds, from -delivery.first, instead of the CI set")
	flagDeliveryFirst   = flag.Uint64("delivery.first", 1, "first seed of -delivery.seeds")
	flagDeliverySeed    = flag.Uint64("delivery.seed", 0, "run only this seed")
	flagDeliverySteps   = flag.Int("delivery.steps", 0, "steps per seed (0: the default)")
	flagDeliveryLog     = flag.Bool("delivery.log", false, "show the broker's log")
	flagDeliveryWithout = flag.String("delivery.without", "", "comma-separated op families to leave out: "+strings.Join(deliveryFamilies, ","))
	flagDeliveryShrink  = flag.Duration("delivery.shrink", 60*time.Second, "how long to look for a shorter failing op list")
)

// deliveryFamilies name what can be left out of a run, to look past a known
// fault while its fix is not in: op families; "trace", the check that a
// message whose visibility ran out shows it in its trace; "crashnack",
// nacks in the burst a power cut interrupts.
var deliveryFamilies = []string{"trace", "stale", "crashnack", "crash", "restart", "grow", "reset", "redrive", "ordered", "patch", "pause", "delete", "deadline", "delay", "nack", "visibility", "txn"}

const deliveryDefaultSteps = 60

// deliveryCI is what every `go test` runs: each seed with the families
// whose faults are still open on this branch left out (see the comment on
// TestDeliveryModel for the seeds that find them).
var deliveryCI = []struct {
	seed    uint64
	without string
}{
	{1, deliveryOpen}, {2, deliveryOpen}, {3, deliveryOpen},
	{4, deliveryOpen}, {5, deliveryOpen}, {6, deliveryOpen},
	{8, deliveryOpen}, {10, deliveryOpen},
	// The seeds below replay the faults they found as found: without the
	// transaction ops (family txn), which came later and would change
	// their op lists; the seeds above run them.
	// A nack after its deadline was accepted while the expired copy also
	// fired (M4); an ordered pull group logged no "expired" (M1).
	{7, deliveryOld}, {9, deliveryOld}, {25, deliveryOld}, {30, deliveryOld},
	// A nacked ordered receipt settled again (M2); PATCH ordered on then
	// off handed out again a message still out (M3).
	{12, deliveryOld}, {1, "trace,stale,txn"},
	// An ordered group turned unordered with a message out, whose filter
	// had changed meanwhile: its retry copy was filtered out of the retry
	// queue, never acked nor dead-lettered.
	{167, deliveryOld},
	// An ordered receipt whose visibility ran out, acked in one request
	// with its message's next receipt, was answered acked, not stale.
	{47, deliveryOld},
	// The checker took an ack that returned while the crash came as
	// durable (77), and a superseded ordered receipt after a restart as
	// surely stale (176); see crash and dRestart.
	{77, deliveryOld}, {176, deliveryOld},
	// An ordered receipt of a group turned unordered, acked after a
	// restart, answered acked while its retry copy brought it back.
	{448, deliveryOld}, {465, deliveryOld},
	// A visibility copy from before an offset reset fired after it: one
	// pull handed the message out as attempt 1 (the replay) and 2.
	{418, deliveryOld},
}

// deliveryOpen are the families whose faults are still open with the
// consumer engine (see TestDeliveryModel for the seeds that find them):
// none; "stale" and "patch" were until M2 and M3 were fixed. Before it (ce9b42d) these were open too: "grow,delete,crashnack,reset,
// redrive" (faults 2, 10, 1, 8 and 3 of issue 11).
const deliveryOpen = ""

// deliveryOld is deliveryOpen for the seeds recorded before the
// transaction ops: they replay without them.
const deliveryOld = deliveryOpen + ",txn"

type dOpKind int

const (
	dPublish dOpKind = iota
	dBatch
	dPull
	dAck
	dAckStale // settle a receipt that was settled already, or superseded
	dNack
	dExpire // time passes: visibilities and nack delays run out
	dAckAtDeadline
	dPause
	dResume
	dPatchOrdered
	dPatchFilter
	dDelete
	dCreate
	dGrow
	dReset
	dRedrive
	dRestart
	dCrash
	dVisibility // change the visibility of receipts out, around their deadlines
	dPrepare    // a transactional message prepared: never handed out until committed
	dCommit     // a transaction committed (or, decided already, answered as it was)
	dRollback   // a transaction rolled back: its message never handed out
	dOpCount
)

var dOpNames = [...]string{"publish", "batch", "pull", "ack", "ack-stale", "nack", "expire", "ack-at-deadline", "pause", "resume",
	"patch-ordered", "patch-filter", "delete", "create", "grow", "reset", "redrive", "restart", "crash", "visibility",
	"prepare", "commit", "rollback"}

func (k dOpKind) String() string { return dOpNames[k] }

var dOpWeights = [dOpCount]int{
	dPublish: 14, dBatch: 6, dPull: 22, dAck: 14, dAckStale: 3, dNack: 6, dExpire: 8, dAckAtDeadline: 3,
	dPause: 2, dResume: 3, dPatchOrdered: 2, dPatchFilter: 2, dDelete: 1, dCreate: 2, dGrow: 2, dReset: 2,
	dRedrive: 3, dRestart: 2, dCrash: 3, dVisibility: 5,
}

// dTxnWeights draw the transaction ops, from a stream of their own (see
// genDeliveryOps).
var dTxnWeights = [...]struct {
	kind   dOpKind
	weight int
}{{dPrepare, 5}, {dCommit, 4}, {dRollback, 2}}

var dOpFamily = [dOpCount]string{
	dNack: "nack", dAckStale: "stale", dAckAtDeadline: "deadline", dPause: "pause", dResume: "pause", dPatchOrdered: "patch", dPatchFilter: "patch",
	dDelete: "delete", dCreate: "delete", dGrow: "grow", dReset: "reset", dRedrive: "redrive", dRestart: "restart", dCrash: "crash",
	dVisibility: "visibility", dPrepare: "txn", dCommit: "txn", dRollback: "txn",
}

type dOp struct {
	kind  dOpKind
	group int
	seed  uint64
}

func (o dOp) String() string { return fmt.Sprintf("%s(g%d,%d)", o.kind, o.group, o.seed) }

const dTopic = "orders"

// eachOp is what a per-receipt request of the model does.
type eachOp uint8

const (
	opAck eachOp = iota
	opNack
	opVisibility
)

// done is what an answer for a receipt that op settled now says.
func (op eachOp) done() ReceiptStatus {
	return [...]ReceiptStatus{opAck: ReceiptAcked, opNack: ReceiptNacked, opVisibility: ReceiptExtended}[op]
}

// The groups: everything, unordered; a tag filter; an ordered group.
var dGroupSpecs = []struct {
	name       string
	filter     string
	ordered    bool
	maxRetries int
}{
	{"g0", "*", false, 2},
	{"g1", "a || b", false, 1},
	{"g2", "*", true, 2},
}

var dTags = []string{"", "a", "b", "c"}

var dFilters = []string{"*", "a || b", "b || c", "c"}

func genDeliveryOps(seed uint64, steps int, without familySet) []dOp {
	rng := rand.New(rand.NewPCG(seed, 11))
	total := 0
	for _, w := range dOpWeights {
		total += w
	}
	ops := make([]dOp, 0, steps)
	for len(ops) < steps {
		r := rng.IntN(total)
		k := dOpKind(0)
		for ; r >= dOpWeights[k]; k++ {
			r -= dOpWeights[k]
		}
		g := rng.IntN(len(dGroupSpecs))
		s := rng.Uint64()
		if without[dOpFamily[k]] || (k == dPatchOrdered && without["ordered"]) {
			continue
		}
		ops = append(ops, dOp{kind: k, group: g, seed: s})
	}
	if without["txn"] {
		return ops
	}
	// Transaction ops go between the others, drawn from their own stream,
	// so that the ops above stay what they were for every seed.
	trng := rand.New(rand.NewPCG(seed, 13))
	tTotal := 0
	for _, w := range dTxnWeights {
		tTotal += w.weight
	}
	out := make([]dOp, 0, len(ops)+len(ops)/3)
	for _, op := range ops {
		for trng.IntN(4) == 0 {
			r := trng.IntN(tTotal)
			i := 0
			for ; r >= dTxnWeights[i].weight; i++ {
				r -= dTxnWeights[i].weight
			}
			out = append(out, dOp{kind: dTxnWeights[i].kind, seed: trng.Uint64()})
		}
		out = append(out, op)
	}
	return out
}

func parseDeliveryFamilies(t *testing.T, list string) familySet {
	out := familySet{}
	for _, f := range strings.Split(list, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if !slices.Contains(deliveryFamilies, f) {
			t.Fatalf("unknown delivery family %q; known: %v", f, deliveryFamilies)
		}
		out[f] = true
	}
	return out
}

// TestDeliveryModel runs the CI seeds (or the flags' seeds) of the delivery
// model checker. Replay any seed with
//
//	go test -run 'TestDeliveryModel$' ./broker/ -delivery.seed=N -delivery.without=F -v
//
// What it found on main (ce9b42d), with the shortened op lists:
//   - seed 7, trace: a message whose visibility ran out is handed out again
//     with no expired outcome in its trace (fault 11); most seeds show it.
//   - seed 33 (-delivery.without=trace): publish, pull, PATCH ordered: the
//     pulled message is never handed out again nor dead-lettered (fault 4).
//   - seeds 14, 25 (-delivery.without=trace,patch): messages on queues
//     added after the group started are never pulled (fault 2).
//   - seed 29 (-delivery.without=trace,patch): a nack cut by a power cut
//     loses its message (fault 1).
//   - seed 1 (-delivery.without=trace,patch): in_flight stays 1 after an
//     ordered group's subscription is deleted (fault 10).
//   - seeds 122, 142 (-delivery.without=trace,stale,patch,grow,delete,crashnack):
//     a reset of an ordered group keeps its block and skips the replay, or
//     hands a later offset out first (faults 8, 3).
//
// Still failing with the consumer engine (as of fe6141b) merged (the
// families left out of the CI seeds above):
//   - trace, seeds 7 and 9: ordered pull groups still log no expired
//     outcome (batch, pull g2, expire, ack g0, pull g2).
//   - stale, seed 12: an ordered group's receipt, nacked, could be acked
//     (or nacked) again: batch, pull g2, nack g2, ack-stale g2. Fixed: the
//     receipt names its lease's end, which a nacked block no longer has.
//   - patch, seed 1: PATCH ordered on then off handed out again, at once, a
//     message that was out: patch-ordered g0, publish, pull g0,
//     patch-ordered g0, pull g0. Fixed: turning unordered converts each
//     block into a retry copy due when the block was.
//   - nack, seeds 25, 30, 48, 65, 145 (-delivery.without=trace,stale,patch):
//     a nack at or after the receipt's deadline is accepted although the
//     visibility copy fires too, so the message comes back twice as the
//     same attempt (batch, pull g0, batch, pull g0, expire, nack g0).
func TestDeliveryModel(t *testing.T) {
	steps := deliveryDefaultSteps
	if *flagDeliverySteps > 0 {
		steps = *flagDeliverySteps
	}
	type run struct {
		seed    uint64
		without familySet
	}
	var runs []run
	flagWithout := parseDeliveryFamilies(t, *flagDeliveryWithout)
	switch {
	case *flagDeliverySeed != 0:
		runs = append(runs, run{*flagDeliverySeed, flagWithout})
	case *flagDeliverySeeds > 0:
		for i := range *flagDeliverySeeds {
			runs = append(runs, run{*flagDeliveryFirst + uint64(i), flagWithout})
		}
	default:
		for _, c := range deliveryCI {
			w := parseDeliveryFamilies(t, c.without)
			for f := range flagWithout {
				w[f] = true
			}
			runs = append(runs, run{c.seed, w})
		}
	}
	failed := 0
	for _, r := range runs {
		ops := genDeliveryOps(r.seed, steps, r.without)
		i, st, err := runDeliveryStats(t, r.seed, ops, r.without)
		if st.crashes > 0 {
			t.Logf("seed %d: %d hand-outs repeated after %d crashes that found %d messages out", r.seed, st.dups, st.crashes, st.dupCap)
		}
		if err == nil {
			continue
		}
		failed++
		short := shrinkDelivery(t, r.seed, ops[:min(i+1, len(ops))], r.without, err)
		t.Errorf("delivery seed %d failed at step %d: %v\nshrunk to %d ops: %v\nreplay: go test -run 'TestDeliveryModel$' ./broker/ -delivery.seed=%d -delivery.without=%s -v",
			r.seed, i, err, len(short), short, r.seed, strings.Join(slices.Sorted(mapKeys(r.without)), ","))
		if *flagDeliverySeeds == 0 || failed >= 20 {
			return
		}
	}
}

func mapKeys(m familySet) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// shrinkDelivery drops ops one at a time while the run still fails (the
// final drain runs after every candidate), within a time budget.
func shrinkDelivery(t *testing.T, seed uint64, ops []dOp, without familySet, failure error) []dOp {
	deadline := time.Now().Add(*flagDeliveryShrink)
	want := failureKind(failure)
	for i := len(ops) - 1; i >= 0 && time.Now().Before(deadline); i-- {
		cand := slices.Delete(slices.Clone(ops), i, i+1)
		if j, err := runDelivery(t, seed, cand, without); err != nil && failureKind(err) == want {
			ops = cand[:min(j+1, len(cand))]
			i = min(i, len(ops))
		}
	}
	return ops
}

var (
	reFailureOp  = regexp.MustCompile(`^(after |drain: )?[a-z-]+\(g\d,\d+\): `)
	reFailureID  = regexp.MustCompile(`[0-9A-Za-z]{22}`)
	reFailureNum = regexp.MustCompile(`[0-9][0-9:.]*`)
)

// failureKind is what a failure says without its ids, numbers and times:
// a shorter op list must fail the same way to replace the longer one.
func failureKind(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	s = reFailureOp.ReplaceAllString(s, "")
	s = reFailureID.ReplaceAllString(s, "ID")
	return reFailureNum.ReplaceAllString(s, "N")
}

// Model.

type gmState int

const (
	gPending gmState = iota // not handed out (or given back): must be handed out
	gOut                    // handed out under receipt, invisible until visibleAt
	gAcked
	gDead
	gExcused // may or may not be handed out (a reset to latest, a filter change)
)

var gmStateNames = [...]string{"pending", "out", "acked", "dead", "excused"}

func (s gmState) String() string { return gmStateNames[s] }

type dMsg struct {
	id        string
	tag       string
	queue     int
	qoff      int64 // -1 until known (delayed messages get theirs when due)
	stored    time.Time
	due       time.Time
	uncertain bool // published as a crash came: stored or not
}

// gMsg is one message as one group sees it.
type gMsg struct {
	state     gmState
	receipt   string
	attempt   int
	visibleAt time.Time // not to be handed out before (delays, visibility, nack delays)
	nacked    bool      // given back by a nack (else its visibility ran out)
	handedAt  time.Time // first hand-out since the group became ordered or was reset
	// dupOK: a crash (or a settle whose outcome is unknown) may hand it out
	// again while out or acked; each such hand-out is counted.
	dupOK bool
	dups  int
	extra int // copies beyond one that crashes, resets and deletes may have made
	// redriven: back from the dead-letter queue after its queue moved
	// past it, so out of its queue's order.
	redriven bool
}

type dReceipt struct {
	msgID    string
	attempt  int
	deadline time.Time
	settled  bool
	lenient  bool // issued before a crash, reset or change: either answer is right
	// How and when it was settled: a retry of the same settle is told so
	// (acked, nacked) within meta.SettledMemory; the other settle is stale.
	nacked    bool
	settledAt time.Time
	ordered   bool // issued while the group was ordered (a block's receipt)
}

type dGroup struct {
	spec       int
	name, id   string
	filter     string
	filters    []string // every filter it had: a message handed out matches one
	ordered    bool
	orderedAt  time.Time // when it became ordered: order is checked from then on
	maxRetries int
	state      string // StateActive, StatePaused, or "deleted"
	msgs       map[string]*gMsg
	receipts   map[string]*dReceipt
	order      []string // receipts in issue order, for drawing
}

// dTxn is one transaction as the model knows it.
type dTxn struct {
	msg   *Message
	state string // TxnStatePrepared, TxnStateCommitted, TxnStateRolledBack
	queue int    // committed: where
	qoff  int64
}

type deliveryRun struct {
	txns    []*dTxn
	t       *testing.T
	seed    uint64
	dir     string
	fs      *vfs.Fault
	cfg     Config
	b       *Broker
	queues  int
	msgs    []*dMsg
	byID    map[string]*dMsg
	groups  []*dGroup
	log     []string
	crashes int
	dups    int // hand-outs beyond the one at-least-once asks for, after crashes
	dupCap  int // messages out at the crashes
	ctx     context.Context
	without familySet
}

func (r *deliveryRun) note(format string, args ...any) {
	r.log = append(r.log, fmt.Sprintf(format, args...))
}

// runDelivery runs ops in a synctest bubble, then the drain, and returns the
// index of the op after which the broker disagreed with the model (len(ops)
// for the drain), and how.
func runDelivery(t *testing.T, seed uint64, ops []dOp, without familySet) (failedAt int, err error) {
	failedAt, _, err = runDeliveryStats(t, seed, ops, without)
	return failedAt, err
}

// deliveryStats is what a run counted: repeats after crashes, and the
// messages out at them.
type deliveryStats struct{ crashes, dups, dupCap int }

func runDeliveryStats(t *testing.T, seed uint64, ops []dOp, without familySet) (failedAt int, st deliveryStats, err error) {
	t.Helper()
	base := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		var r *deliveryRun
		r, failedAt, err = runDeliveryBubble(t, base, seed, ops, without)
		if r != nil {
			st = deliveryStats{r.crashes, r.dups, r.dupCap}
		}
	})
	return failedAt, st, err
}

func runDeliveryBubble(t *testing.T, base string, seed uint64, ops []dOp, without familySet) (run *deliveryRun, failedAt int, failure error) {
	r := &deliveryRun{t: t, seed: seed, dir: filepath.Join(base, "data"), byID: map[string]*dMsg{}, ctx: context.Background(), without: without}
	var err error
	if r.fs, err = vfs.NewFault(filepath.Join(base, "trash"), seed); err != nil {
		return r, 0, err
	}
	r.cfg = DefaultConfig(r.dir)
	r.cfg.SegmentSize = 1 << 20
	r.cfg.FS = r.fs
	r.cfg.DiskCleanRatio, r.cfg.DiskFullRatio = 1, 1
	r.cfg.CheckpointInterval = 2 * time.Second
	r.cfg.OffsetInterval = time.Second
	r.cfg.RetentionInterval = time.Minute
	r.cfg.Logger = slog.New(slog.DiscardHandler)
	if *flagDeliveryLog {
		r.cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if err := r.open(); err != nil {
		return r, 0, err
	}
	defer func() {
		if r.b != nil {
			r.b.Close()
		}
	}()
	r.queues = 2
	if _, _, err := r.b.PutTopic(r.ctx, dTopic, TopicSettings{Queues: r.queues}); err != nil {
		return r, 0, err
	}
	if _, _, err := r.b.PutProducerGroup(r.ctx, dProducerGroup, "https://shop.example/check", ""); err != nil {
		return r, 0, err
	}
	for i, gs := range dGroupSpecs {
		g := &dGroup{spec: i, name: gs.name, filter: gs.filter, filters: []string{gs.filter}, ordered: gs.ordered,
			maxRetries: gs.maxRetries, state: "deleted", msgs: map[string]*gMsg{}, receipts: map[string]*dReceipt{}}
		r.groups = append(r.groups, g)
		if err := r.create(g); err != nil {
			return r, 0, err
		}
	}
	for i, op := range ops {
		rng := rand.New(rand.NewPCG(op.seed, 12))
		// Every step takes a little time, so stored times tell steps apart.
		time.Sleep(time.Duration(1+rng.IntN(50)) * time.Millisecond)
		if err := r.step(op, rng); err != nil {
			return r, i, r.explain(fmt.Errorf("%v: %w", op, err))
		}
		synctest.Wait()
		if err := r.check(); err != nil {
			return r, i, r.explain(fmt.Errorf("after %v: %w", op, err))
		}
	}
	if err := r.drain(); err != nil {
		return r, len(ops), r.explain(fmt.Errorf("drain: %w", err))
	}
	return r, len(ops), nil
}

func (r *deliveryRun) explain(err error) error {
	if len(r.log) > 0 {
		n := len(r.log)
		return fmt.Errorf("%w\nnotes (last %d): %s", err, min(n, 12), strings.Join(r.log[max(0, n-12):], "; "))
	}
	return err
}

func (r *deliveryRun) open() error {
	b, err := Open(r.ctx, r.cfg)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	r.b = b
	return nil
}

func (r *deliveryRun) create(g *dGroup) error {
	s, err := r.b.CreateSubscription(r.ctx, Subscription{Group: g.name, Topic: dTopic, Filter: g.filter, Ordered: g.ordered,
		MaxRetries: g.maxRetries, Visibility: 5 * time.Second, StartFrom: "earliest"})
	if err != nil {
		return fmt.Errorf("create subscription of %s: %w", g.name, err)
	}
	g.id, g.state = s.ID, StateActive
	if g.ordered && g.orderedAt.IsZero() {
		g.orderedAt = time.Now()
	}
	return nil
}

// Steps.

func (r *deliveryRun) step(op dOp, rng *rand.Rand) error {
	g := r.groups[op.group]
	switch op.kind {
	case dPublish:
		return r.publish(rng, 1)
	case dBatch:
		return r.publish(rng, 2+rng.IntN(5))
	case dPull:
		return r.pull(g, rng)
	case dAck:
		return r.settle(g, rng, true, false)
	case dAckStale:
		return r.settleStale(g, rng)
	case dNack:
		return r.settle(g, rng, false, false)
	case dExpire:
		time.Sleep(time.Duration(1+rng.IntN(12)) * time.Second)
		return nil
	case dAckAtDeadline:
		return r.settle(g, rng, true, true)
	case dVisibility:
		return r.changeVisibility(g, rng)
	case dPause:
		if g.state != StateActive {
			return nil
		}
		if _, err := r.b.SetSubscriptionState(r.ctx, g.id, StatePaused, ""); err != nil {
			return err
		}
		g.state = StatePaused
		r.lenientReceipts(g)
	case dResume:
		if g.state != StatePaused {
			return nil
		}
		if _, err := r.b.SetSubscriptionState(r.ctx, g.id, StateActive, ""); err != nil {
			return err
		}
		g.state = StateActive
	case dPatchOrdered:
		return r.patch(g, func(s *Subscription) { s.Ordered = !s.Ordered })
	case dPatchFilter:
		f := dFilters[rng.IntN(len(dFilters))]
		return r.patch(g, func(s *Subscription) { s.Filter = f })
	case dDelete:
		if g.state == "deleted" {
			return nil
		}
		if err := r.b.DeleteSubscription(r.ctx, g.id); err != nil {
			return err
		}
		g.state = "deleted"
		r.lenientReceipts(g)
		// Its leases may end with it: what was out may come again as soon
		// as it is re-created.
		for _, gm := range g.msgs {
			if gm.state == gOut {
				gm.dupOK = true
				gm.extra++
			}
		}
		return r.checkNoneInFlight(g)
	case dCreate:
		if g.state != "deleted" {
			return nil
		}
		return r.create(g)
	case dGrow:
		if r.queues >= 6 {
			return nil
		}
		n := r.queues + 1 + rng.IntN(2)
		if _, _, err := r.b.PutTopic(r.ctx, dTopic, TopicSettings{Queues: n}); err != nil {
			return err
		}
		r.note("grew %s to %d queues", dTopic, n)
		r.queues = n
	case dReset:
		return r.reset(g, rng)
	case dRedrive:
		return r.redrive(g)
	case dRestart:
		if err := r.b.Close(); err != nil {
			return fmt.Errorf("close: %w", err)
		}
		r.b = nil
		// Which attempt's receipt acked an ordered queue's message is kept
		// in memory only: after a restart a superseded receipt of a
		// message the group moved past may be answered acked (a retried
		// ack, by the position) rather than stale.
		for _, g := range r.groups {
			if !g.ordered {
				continue
			}
			for rc, d := range g.receipts {
				if gm := g.msgs[d.msgID]; gm != nil && gm.receipt != rc {
					d.lenient = true
				}
			}
		}
		return r.open()
	case dCrash:
		return r.crash(rng)
	case dPrepare:
		return r.prepare(rng)
	case dCommit, dRollback:
		return r.decide(rng, op.kind == dCommit)
	}
	return nil
}

// dProducerGroup is the model's producer group. Its transactions time out
// after an hour, past any run: nothing checks them.
const dProducerGroup = "shop"

func (r *deliveryRun) prepare(rng *rand.Rand) error {
	m := r.newMessage(rng, false)
	if _, err := r.b.Prepare(r.ctx, dTopic, m, dProducerGroup, time.Hour); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	r.txns = append(r.txns, &dTxn{msg: m, state: TxnStatePrepared})
	return nil
}

// decide commits or rolls back one of the transactions, whatever its
// state: a repeat answers as before, the opposite decision ErrTxnDecided.
// A commit makes its message the groups' to hand out from now on.
func (r *deliveryRun) decide(rng *rand.Rand, commit bool) error {
	if len(r.txns) == 0 {
		return nil
	}
	tx := r.txns[rng.IntN(len(r.txns))]
	decide, want, name := r.b.Rollback, TxnStateRolledBack, "rollback"
	if commit {
		decide, want, name = r.b.Commit, TxnStateCommitted, "commit"
	}
	got, err := decide(r.ctx, tx.msg.ID)
	if tx.state != TxnStatePrepared && tx.state != want {
		if !errors.Is(err, ErrTxnDecided) {
			return fmt.Errorf("%s of %s, %s: %v, %+v; want ErrTxnDecided", name, tx.msg.ID, tx.state, err, got)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s of %s, %s: %w", name, tx.msg.ID, tx.state, err)
	}
	if got.State != want {
		return fmt.Errorf("%s of %s answered %s", name, tx.msg.ID, got.State)
	}
	if tx.state == want {
		if commit && (got.QueueID != tx.queue || got.QueueOffset != tx.qoff) {
			return fmt.Errorf("commit of %s again answered q%d@%d; first q%d@%d", tx.msg.ID, got.QueueID, got.QueueOffset, tx.queue, tx.qoff)
		}
		return nil
	}
	tx.state = want
	if commit {
		tx.queue, tx.qoff = got.QueueID, got.QueueOffset
		r.record([]*Message{tx.msg}, []Result{{ID: tx.msg.ID, QueueID: got.QueueID, QueueOffset: got.QueueOffset}}, false)
	}
	r.note("%s %s", name, tx.msg.ID)
	return nil
}

func (r *deliveryRun) newMessage(rng *rand.Rand, delays bool) *Message {
	m := &Message{Body: fmt.Appendf(nil, "body-%d", rng.Uint64()), Tag: dTags[rng.IntN(len(dTags))]}
	if rng.IntN(3) == 0 {
		m.ShardingKey = fmt.Sprint("k", rng.IntN(3))
	}
	if delays && rng.IntN(8) == 0 {
		m.Delay = time.Duration(1+rng.IntN(8)) * time.Second
	}
	return m
}

func (r *deliveryRun) publish(rng *rand.Rand, n int) error {
	msgs := make([]*Message, n)
	for i := range msgs {
		msgs[i] = r.newMessage(rng, true)
	}
	res, err := r.b.Publish(r.ctx, dTopic, msgs)
	if err != nil {
		return fmt.Errorf("publish %d: %w", n, err)
	}
	r.record(msgs, res, false)
	return nil
}

// record adds published messages to the model, and to every group whose
// filter they match (a deleted group keeps its offsets: re-created, it
// takes them too).
func (r *deliveryRun) record(msgs []*Message, res []Result, uncertain bool) {
	now := time.Now()
	for i, m := range msgs {
		dm := &dMsg{id: m.ID, tag: m.Tag, queue: m.QueueID, qoff: -1, stored: now, uncertain: uncertain}
		if res != nil {
			dm.id, dm.queue, dm.qoff = res[i].ID, res[i].QueueID, res[i].QueueOffset
		}
		if m.Delay > 0 {
			dm.due, dm.qoff, dm.stored = now.Add(m.Delay), -1, now.Add(m.Delay)
		}
		if dm.id == "" {
			continue
		}
		r.msgs = append(r.msgs, dm)
		r.byID[dm.id] = dm
		for _, g := range r.groups {
			f, _ := ParseFilter(g.filter)
			if !f.Match(dm.tag) {
				continue
			}
			gm := &gMsg{state: gPending, visibleAt: dm.stored}
			if uncertain {
				gm.state = gExcused
			}
			g.msgs[dm.id] = gm
		}
	}
}

func (r *deliveryRun) pull(g *dGroup, rng *rand.Rand) error {
	if g.state == "deleted" {
		return nil
	}
	limit := 1 + rng.IntN(8)
	vis := time.Duration(1+rng.IntN(10)) * time.Second
	got, err := r.b.Pull(r.ctx, g.name, dTopic, limit, 0, vis)
	if g.state == StatePaused {
		if err == nil && len(got) > 0 {
			return fmt.Errorf("pull of paused group %s handed out %d messages", g.name, len(got))
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("pull %s max %d: %w", g.name, limit, err)
	}
	if len(got) > limit {
		return fmt.Errorf("pull %s max %d handed out %d", g.name, limit, len(got))
	}
	return r.handedOut(g, got, vis)
}

// handedOut checks what a pull answered against the model and records it.
func (r *deliveryRun) handedOut(g *dGroup, got []Pulled, vis time.Duration) error {
	now := time.Now()
	// The pull may have dead-lettered what blocked an ordered queue.
	if _, err := r.syncDLQ(g); err != nil {
		return err
	}
	type sighting struct {
		attempt int
		before  gmState // its state before this pull
	}
	seen := map[string]sighting{}
	for _, p := range got {
		dm := r.byID[p.ID]
		if dm == nil {
			return fmt.Errorf("%s handed out %s, which was never published", g.name, p.ID)
		}
		if first, ok := seen[p.ID]; ok {
			// After a crash the original and its visibility copy may both
			// be there: a repeat like any other.
			if gm := g.msgs[p.ID]; gm == nil || !gm.dupOK && first.before != gExcused {
				state := "unknown to the group"
				if gm != nil {
					state = fmt.Sprintf("%s, attempt %d", gm.state, gm.attempt)
				}
				return fmt.Errorf("%s handed out %s twice in one pull (attempts %d and %d; it was %s)", g.name, p.ID, first.attempt, p.Attempt, state)
			}
			r.dups++
			r.note("%s handed out %s twice in one pull (counted: %d)", g.name, p.ID, r.dups)
			g.receipts[p.Receipt] = &dReceipt{msgID: p.ID, attempt: p.Attempt, deadline: now.Add(vis), lenient: true}
			continue
		}
		before := gExcused
		if gm := g.msgs[p.ID]; gm != nil {
			before = gm.state
		}
		seen[p.ID] = sighting{p.Attempt, before}
		if p.Tag != dm.tag {
			return fmt.Errorf("%s handed out %s with tag %q, published with %q", g.name, p.ID, p.Tag, dm.tag)
		}
		if !slices.ContainsFunc(g.filters, func(f string) bool { pf, _ := ParseFilter(f); return pf.Match(dm.tag) }) {
			return fmt.Errorf("%s handed out %s (tag %q), which none of its filters %v matches", g.name, p.ID, dm.tag, g.filters)
		}
		if p.Topic == dTopic {
			if dm.qoff >= 0 && (p.QueueID != dm.queue || p.QueueOffset != dm.qoff) {
				return fmt.Errorf("%s handed out %s at queue %d offset %d, published at %d/%d", g.name, p.ID, p.QueueID, p.QueueOffset, dm.queue, dm.qoff)
			}
			dm.queue, dm.qoff = p.QueueID, p.QueueOffset
		}
		if p.Attempt < 1 || p.Attempt > g.maxRetries+1 {
			return fmt.Errorf("%s handed out %s as attempt %d; max_retries is %d", g.name, p.ID, p.Attempt, g.maxRetries)
		}
		gm := g.msgs[p.ID]
		if gm == nil {
			// Matched a filter the group had before, or published
			// uncertainly: either may come.
			gm = &gMsg{state: gExcused}
			g.msgs[p.ID] = gm
		}
		if err := r.checkHandOut(g, dm, gm, p, now); err != nil {
			return err
		}
		gm.state, gm.receipt, gm.attempt, gm.visibleAt, gm.nacked = gOut, p.Receipt, p.Attempt, now.Add(vis), false
		if gm.handedAt.IsZero() {
			gm.handedAt = now
		}
		g.receipts[p.Receipt] = &dReceipt{msgID: p.ID, attempt: p.Attempt, deadline: now.Add(vis), ordered: g.ordered}
		g.order = append(g.order, p.Receipt)
	}
	return nil
}

func (r *deliveryRun) checkHandOut(g *dGroup, dm *dMsg, gm *gMsg, p Pulled, now time.Time) error {
	where := fmt.Sprintf("%s handed out %s (queue %d offset %d, attempt %d)", g.name, p.ID, dm.queue, dm.qoff, p.Attempt)
	dup := func(why string) error {
		if !gm.dupOK {
			return fmt.Errorf("%s while %s", where, why)
		}
		gm.dups++
		r.dups++
		r.note("%s again while %s (counted: %d)", where, why, r.dups)
		// Each crash (or reset, or delete) that found it out may have
		// left one more copy of it going round: no more than that many
		// receipts of it are live at once.
		live := 1 // this one
		for _, d := range g.receipts {
			if d.msgID == p.ID && !d.settled && now.Before(d.deadline) {
				live++
			}
		}
		if live > 1+gm.extra {
			return fmt.Errorf("%s: out under %d receipts at once, but only %d crashes, resets or deletes found it out", where, live, gm.extra)
		}
		return nil
	}
	switch gm.state {
	case gAcked:
		if err := dup("acked"); err != nil {
			return err
		}
	case gDead:
		if err := dup("in the dead-letter queue (not redriven)"); err != nil {
			return err
		}
	case gOut:
		if now.Before(gm.visibleAt) {
			if err := dup(fmt.Sprintf("still out under attempt %d until %s", gm.attempt, gm.visibleAt.Format("15:04:05.000"))); err != nil {
				return err
			}
		} else if !gm.nacked && !gm.dupOK && p.Attempt > gm.attempt && !r.without["trace"] {
			// Its visibility ran out: the trace says so.
			if err := r.checkTraceExpired(g, p.ID, gm.attempt); err != nil {
				return err
			}
		}
	case gPending:
		if now.Before(gm.visibleAt) && !gm.dupOK {
			return fmt.Errorf("%s before it was due at %s", where, gm.visibleAt.Format("15:04:05.000"))
		}
	}
	// Messages handed out before the group became ordered are out of its
	// order already.
	unordered := func(o *gMsg) bool { return !o.handedAt.IsZero() && o.handedAt.Before(g.orderedAt) }
	if g.ordered && dm.qoff >= 0 && !gm.dupOK && gm.state != gExcused && !gm.redriven && !unordered(gm) {
		// Nothing earlier on its queue is still to be delivered, and
		// nothing else of the queue is out.
		for id, o := range g.msgs {
			om := r.byID[id]
			if id == p.ID || om.queue != dm.queue || om.qoff < 0 || o.dupOK || o.state == gExcused || o.redriven || unordered(o) {
				continue
			}
			switch {
			case om.qoff < dm.qoff && (o.state == gPending || o.state == gOut):
				return fmt.Errorf("%s (ordered) while offset %d of that queue is %s", where, om.qoff, o.state)
			case om.qoff > dm.qoff && o.state == gOut && now.Before(o.visibleAt):
				return fmt.Errorf("%s (ordered) while offset %d of that queue is out", where, om.qoff)
			}
		}
	}
	return nil
}

// checkTraceExpired: a message handed out again because its visibility ran
// out shows the earlier attempt as expired in its trace (openapi.yaml).
func (r *deliveryRun) checkTraceExpired(g *dGroup, id string, attempt int) error {
	tr, err := r.b.MessageTrace(r.ctx, id)
	if err != nil {
		return fmt.Errorf("trace of %s: %w", id, err)
	}
	for _, a := range tr.Attempts {
		if a.Group == g.name && a.Attempt == attempt && a.Outcome == "expired" {
			return nil
		}
	}
	var got []string
	for _, a := range tr.Attempts {
		got = append(got, fmt.Sprintf("%s#%d:%s", a.Group, a.Attempt, a.Outcome))
	}
	return fmt.Errorf("%s handed out %s again after attempt %d's visibility ran out, but its trace %v has no expired outcome for it", g.name, id, attempt, got)
}

// current returns the group's receipts that are the latest of their message
// and not settled.
func (g *dGroup) current() []string {
	var out []string
	for _, rc := range g.order {
		d := g.receipts[rc]
		if gm := g.msgs[d.msgID]; !d.settled && gm != nil && gm.receipt == rc && gm.state == gOut {
			out = append(out, rc)
		}
	}
	return out
}

// settle acks or nacks one or a few of the group's receipts that are out
// (at their deadline, for ackAtDeadline).
func (r *deliveryRun) settle(g *dGroup, rng *rand.Rand, ack, atDeadline bool) error {
	if g.state == "deleted" {
		return nil
	}
	cur := g.current()
	if len(cur) == 0 {
		return nil
	}
	var pick []string
	if atDeadline {
		rc := cur[rng.IntN(len(cur))]
		d := g.receipts[rc]
		if wait := time.Until(d.deadline); wait > 0 {
			time.Sleep(wait)
		}
		pick = []string{rc}
	} else {
		n := 1 + rng.IntN(min(3, len(cur)))
		for _, i := range rng.Perm(len(cur))[:n] {
			pick = append(pick, cur[i])
		}
		// Now and then a settled or superseded receipt rides along (a
		// client retrying a batch): it must not keep the others from
		// being settled.
		if old := g.settledOrSuperseded(); len(old) > 0 && rng.IntN(3) == 0 {
			pick = slices.Insert(pick, rng.IntN(len(pick)+1), old[rng.IntN(len(old))])
		}
	}
	op := map[bool]eachOp{true: opAck, false: opNack}[ack]
	return r.settleEach(g, rng, op, pick, atDeadline)
}

// settledOrSuperseded are the group's receipts, not lenient, that were
// settled already or whose message went out again under a new receipt.
func (g *dGroup) settledOrSuperseded() []string {
	var out []string
	for _, rc := range g.order {
		d := g.receipts[rc]
		if gm := g.msgs[d.msgID]; !d.lenient && (d.settled || gm.receipt != rc) {
			out = append(out, rc)
		}
	}
	return out
}

// wantStatus is what a receipt must be answered by op now ("" when either
// answer is right: a receipt at or past its deadline, lenient, or of a
// group not active).
func (r *deliveryRun) wantStatus(g *dGroup, rc string, op eachOp, now time.Time) ReceiptStatus {
	d := g.receipts[rc]
	gm := g.msgs[d.msgID]
	if d.lenient || g.state != StateActive {
		return ""
	}
	switch {
	case d.settled && !d.nacked && now.Sub(d.settledAt) < meta.SettledMemory-time.Minute:
		if op == opAck {
			return ReceiptAcked // a retried ack
		}
		return ReceiptStale
	case d.settled && d.nacked:
		switch {
		case op == opNack && (!d.ordered || gm.receipt == rc) && now.Sub(d.settledAt) < meta.SettledMemory-time.Minute:
			// A retried nack; an ordered group's only until its message
			// goes out again (the block then is another attempt's).
			return ReceiptNacked
		case op == opNack:
			return ""
		}
		return ReceiptStale
	case d.settled:
		return ""
	case gm.receipt != rc:
		return ReceiptStale // superseded: its message went out again
	case gm.state == gOut && now.Before(d.deadline):
		return op.done()
	}
	return ""
}

// settleEach acks, nacks or changes the visibility of pick, each receipt
// on its own, and checks each answer against the model.
func (r *deliveryRun) settleEach(g *dGroup, rng *rand.Rand, op eachOp, pick []string, atDeadline bool) error {
	now := time.Now()
	want := make([]ReceiptStatus, len(pick))
	must := false
	for i, rc := range pick {
		want[i] = r.wantStatus(g, rc, op, now)
		must = must || want[i] != ""
	}
	var res []ReceiptResult
	var err error
	var delay, vis time.Duration
	switch op {
	case opAck:
		res, err = r.b.AckEach(r.ctx, g.name, pick)
	case opNack:
		delay = time.Duration(rng.IntN(6)) * time.Second
		res, err = r.b.NackEach(r.ctx, g.name, pick, delay)
	default:
		vis = []time.Duration{0, time.Second, 3 * time.Second, 8 * time.Second, 20 * time.Second}[rng.IntN(5)]
		res, err = r.b.ChangeVisibility(r.ctx, g.name, pick, vis)
	}
	what := map[eachOp]string{opAck: "ack", opNack: "nack", opVisibility: "visibility"}[op]
	if err != nil {
		if must {
			return fmt.Errorf("%s of %d receipts of %s (answers due %v) refused whole: %w", what, len(pick), g.name, want, err)
		}
		if CodeOf(err) != CodeInvalidSubscription && CodeOf(err) != CodeSubscriptionNotFound {
			return fmt.Errorf("%s of %d receipts of %s: %w", what, len(pick), g.name, err)
		}
		r.note("%s %s at %s refused: %s", what, g.name, now.Format("15:04:05.000"), CodeOf(err))
		return nil
	}
	if len(res) != len(pick) {
		return fmt.Errorf("%s of %d receipts of %s answered %d results", what, len(pick), g.name, len(res))
	}
	for i, rc := range pick {
		d := g.receipts[rc]
		got := res[i].Status
		if res[i].Receipt != rc {
			return fmt.Errorf("%s of %s: results[%d] names another receipt", what, g.name, i)
		}
		if want[i] != "" && got != want[i] {
			gm := g.msgs[d.msgID]
			return fmt.Errorf("%s of %s's receipt of %s (attempt %d, deadline %s, settled %v nacked %v, current %v): %s, want %s",
				what, g.name, d.msgID, d.attempt, d.deadline.Format("15:04:05.000"), d.settled, d.nacked, gm.receipt == rc, got, want[i])
		}
		if got != op.done() || !res[i].now {
			continue
		}
		gm := g.msgs[d.msgID]
		switch op {
		case opAck:
			d.settled, d.settledAt = true, now
			gm.state = gAcked
		case opNack:
			d.settled, d.settledAt, d.nacked = true, now, true
			gm.visibleAt, gm.nacked = now.Add(delay), true
		default:
			d.deadline, gm.visibleAt = now.Add(vis), now.Add(vis)
			r.note("%s changed the visibility of %s to %s", g.name, d.msgID, vis)
		}
		if atDeadline {
			r.note("%s %s %s at its deadline %s", g.name, what, d.msgID, d.deadline.Format("15:04:05.000"))
		}
	}
	return nil
}

// settleStale settles a receipt that is settled already, or superseded:
// a retry of its settle is told what it did, anything else is stale, and
// nothing changes.
func (r *deliveryRun) settleStale(g *dGroup, rng *rand.Rand) error {
	if g.state != StateActive {
		return nil
	}
	stale := g.settledOrSuperseded()
	if len(stale) == 0 {
		return nil
	}
	op := []eachOp{opAck, opNack, opVisibility}[rng.IntN(3)]
	return r.settleEach(g, rng, op, []string{stale[rng.IntN(len(stale))]}, false)
}

// changeVisibility changes the visibility of one or a few receipts out,
// at or around their deadlines now and then.
func (r *deliveryRun) changeVisibility(g *dGroup, rng *rand.Rand) error {
	if g.state == "deleted" {
		return nil
	}
	cur := g.current()
	if len(cur) == 0 {
		return nil
	}
	var pick []string
	if rng.IntN(3) == 0 {
		rc := cur[rng.IntN(len(cur))]
		// Just before, at or just after its deadline.
		if wait := time.Until(g.receipts[rc].deadline) + time.Duration(rng.IntN(3)-1)*time.Millisecond; wait > 0 {
			time.Sleep(wait)
		}
		pick = []string{rc}
	} else {
		for _, i := range rng.Perm(len(cur))[:1+rng.IntN(min(3, len(cur)))] {
			pick = append(pick, cur[i])
		}
	}
	return r.settleEach(g, rng, opVisibility, pick, false)
}

// lenientReceipts: the group's receipts so far may be taken or refused.
func (r *deliveryRun) lenientReceipts(g *dGroup) {
	for _, d := range g.receipts {
		d.lenient = true
	}
}

func (r *deliveryRun) patch(g *dGroup, change func(*Subscription)) error {
	if g.state == "deleted" {
		return nil
	}
	s, err := r.b.Subscription(r.ctx, g.id)
	if err != nil {
		return err
	}
	change(&s)
	if _, err := r.b.UpdateSubscription(r.ctx, s); err != nil {
		return fmt.Errorf("patch %s: %w", g.name, err)
	}
	r.lenientReceipts(g)
	if s.Ordered != g.ordered {
		g.ordered = s.Ordered
		r.note("%s ordered=%v", g.name, s.Ordered)
		if s.Ordered {
			g.orderedAt = time.Now()
		}
	}
	if s.Filter != g.filter {
		r.note("%s filter %q -> %q", g.name, g.filter, s.Filter)
		g.filter = s.Filter
		g.filters = append(g.filters, s.Filter)
		f, _ := ParseFilter(s.Filter)
		for id, gm := range g.msgs {
			if !f.Match(r.byID[id].tag) && (gm.state == gPending || gm.state == gOut) {
				gm.state = gExcused
			}
		}
	}
	return nil
}

func (r *deliveryRun) reset(g *dGroup, rng *rand.Rand) error {
	if g.state == "deleted" {
		return nil
	}
	to := []string{"earliest", "latest", "time"}[rng.IntN(3)]
	var at time.Time
	if to == "time" {
		if len(r.msgs) == 0 {
			return nil
		}
		at = r.msgs[rng.IntN(len(r.msgs))].stored.Truncate(time.Millisecond)
		to = at.Format(time.RFC3339Nano)
	}
	if err := r.b.ResetOffsets(r.ctx, g.name, dTopic, to); err != nil {
		return fmt.Errorf("reset %s to %s: %w", g.name, to, err)
	}
	r.note("reset %s to %s", g.name, to)
	r.lenientReceipts(g)
	now := time.Now()
	f, _ := ParseFilter(g.filter)
	for id, gm := range g.msgs {
		dm := r.byID[id]
		replay := to == "earliest" || (!at.IsZero() && !dm.stored.Before(at))
		if !dm.due.IsZero() && dm.due.After(now) {
			replay = true // not on its queue yet: still ahead of any reset
		}
		switch {
		case replay && f.Match(dm.tag) && !dm.uncertain:
			if gm.state == gOut || gm.state == gDead || gm.state == gAcked {
				gm.dupOK = true // the old copy may come too
				gm.extra++
			}
			gm.state, gm.attempt, gm.visibleAt, gm.handedAt = gPending, 0, dm.stored, time.Time{}
			if gm.visibleAt.Before(now) {
				gm.visibleAt = now
			}
		case gm.state == gPending || gm.state == gOut:
			gm.state = gExcused
		}
	}
	return nil
}

func (r *deliveryRun) redrive(g *dGroup) error {
	if g.state == "deleted" {
		return nil
	}
	inDLQ, err := r.syncDLQ(g)
	if err != nil {
		return err
	}
	n, err := r.b.Redrive(r.ctx, g.name, nil, true, 1e6)
	if err != nil {
		return fmt.Errorf("redrive %s: %w", g.name, err)
	}
	now := time.Now()
	for _, gm := range g.msgs {
		if gm.state == gDead {
			gm.state, gm.attempt, gm.visibleAt, gm.nacked, gm.handedAt, gm.redriven = gPending, 0, now, true, time.Time{}, true
		}
	}
	if n != inDLQ {
		return fmt.Errorf("redrive of %s redrove %d; its dead-letter queue listed %d", g.name, n, inDLQ)
	}
	if n > 0 {
		r.note("redrove %d of %s", n, g.name)
	}
	return nil
}

// syncDLQ reads the group's dead-letter queue: everything in it is a
// message the group took, out of retries, and is now dead.
func (r *deliveryRun) syncDLQ(g *dGroup) (int, error) {
	dls, err := r.b.DeadLetters(r.ctx, g.name, -1, 10000)
	if err != nil {
		return 0, fmt.Errorf("dead letters of %s: %w", g.name, err)
	}
	return len(dls), r.syncDead(g, dls)
}

func (r *deliveryRun) syncDead(g *dGroup, dls []DeadLetter) error {
	inDLQ := map[string]bool{}
	for _, d := range dls {
		gm := g.msgs[d.ID]
		if inDLQ[d.ID] && (gm == nil || !gm.dupOK) {
			return fmt.Errorf("%s is in the dead-letter queue of %s twice", d.ID, g.name)
		}
		inDLQ[d.ID] = true
		switch {
		case r.byID[d.ID] == nil:
			return fmt.Errorf("dead letter %s of %s was never published", d.ID, g.name)
		case gm == nil:
			return fmt.Errorf("dead letter %s of %s: the group never had it", d.ID, g.name)
		case gm.state == gDead || gm.state == gExcused:
		case gm.state == gAcked && !gm.dupOK:
			return fmt.Errorf("acked message %s is in the dead-letter queue of %s", d.ID, g.name)
		case gm.state == gPending && !gm.dupOK && gm.attempt == 0:
			return fmt.Errorf("message %s is in the dead-letter queue of %s, never handed out", d.ID, g.name)
		case gm.attempt < g.maxRetries+1 && !gm.dupOK && gm.state != gAcked:
			return fmt.Errorf("message %s is in the dead-letter queue of %s after %d attempts; max_retries is %d", d.ID, g.name, gm.attempt, g.maxRetries)
		default:
			if gm.state == gOut && time.Now().Before(gm.visibleAt) && !gm.dupOK {
				return fmt.Errorf("message %s is in the dead-letter queue of %s while out under attempt %d", d.ID, g.name, gm.attempt)
			}
			gm.state = gDead
		}
	}
	for id, gm := range g.msgs {
		if gm.state == gDead && !inDLQ[id] {
			return fmt.Errorf("message %s of %s left the dead-letter queue without a redrive", id, g.name)
		}
	}
	return nil
}

// checkNoneInFlight: a deleted subscription has nothing in flight.
func (r *deliveryRun) checkNoneInFlight(g *dGroup) error {
	gi, err := r.b.Group(r.ctx, g.name)
	if CodeOf(err) == CodeGroupNotFound {
		return nil
	}
	if err != nil {
		return err
	}
	for _, q := range gi.Queues {
		if q.Topic == dTopic && q.InFlight != 0 {
			return fmt.Errorf("group %s shows %d in flight on queue %d after its subscription was deleted", g.name, q.InFlight, q.Queue)
		}
	}
	return nil
}

// crash cuts the power at a random write or sync during a burst of
// publishes, pulls, acks and nacks, with the metadata database as it was at
// that instant, and restarts.
func (r *deliveryRun) crash(rng *rand.Rand) error {
	snap := filepath.Join(filepath.Dir(r.dir), "meta-snapshot.db")
	var snapErr error
	r.fs.OnCrash(func() { snapErr = snapshotMeta(r.dir, snap) })
	r.fs.CrashAfter(1 + rng.IntN(30))
	for range 1 + rng.IntN(8) {
		if r.fs.Crashed() {
			break
		}
		g := r.groups[rng.IntN(len(r.groups))]
		switch rng.IntN(4) {
		case 0:
			msgs := []*Message{r.newMessage(rng, false)}
			res, err := r.b.Publish(r.ctx, dTopic, msgs)
			r.record(msgs, res, err != nil)
		case 1:
			if g.state != StateActive {
				continue
			}
			vis := time.Duration(1+rng.IntN(10)) * time.Second
			got, err := r.b.Pull(r.ctx, g.name, dTopic, 1+rng.IntN(4), 0, vis)
			if err == nil {
				if err := r.handedOut(g, got, vis); err != nil {
					return err
				}
				continue
			}
			// Its visibility copies may have reached the disk though the
			// pull failed: any message the group has not taken may come
			// twice.
			r.note("pull of %s failed in the crash: %v", g.name, err)
			for _, gm := range g.msgs {
				if gm.state == gPending {
					gm.dupOK = true
					gm.extra++
				}
			}
		default:
			cur := g.current()
			if len(cur) == 0 || g.state != StateActive {
				continue
			}
			rc := cur[rng.IntN(len(cur))]
			d := g.receipts[rc]
			gm := g.msgs[d.msgID]
			var err error
			ack := rng.IntN(2) == 0 || r.without["crashnack"]
			if ack {
				err = r.b.Ack(r.ctx, g.name, []string{rc})
			} else {
				err = r.b.Nack(r.ctx, g.name, []string{rc}, 0)
			}
			if err == nil && r.fs.Crashed() {
				// The crash came during the settle (a background write of
				// the log reached the crash point), and the metadata is
				// restored as it was then: what the settle committed after
				// that point is lost, as a power cut loses what was not
				// yet written. Its outcome is unknown, as a failed one's.
				err = errors.New("the crash came during it")
			}
			switch {
			case err == nil && ack:
				d.settled, gm.state = true, gAcked
			case err == nil:
				d.settled, gm.visibleAt, gm.nacked = true, time.Now(), true
			case ack:
				// Taken or not: it may come again, or not.
				d.settled, gm.state, gm.dupOK = true, gExcused, true
				gm.extra++
				r.note("ack of %s failed in the crash: %v", d.msgID, err)
			default:
				// A nack that failed must still give it back.
				d.settled, gm.visibleAt, gm.nacked, gm.dupOK = true, time.Now(), true, true
				gm.extra++
				r.note("nack of %s failed in the crash: %v", d.msgID, err)
			}
		}
	}
	r.fs.Crash()
	r.fs.OnCrash(nil)
	if snapErr != nil {
		return fmt.Errorf("snapshot the metadata at the crash: %w", snapErr)
	}
	r.b.Close()
	r.b = nil
	if err := r.fs.Restore(r.dir); err != nil {
		return err
	}
	if err := restoreMeta(r.dir, snap); err != nil {
		return err
	}
	r.crashes++
	// What was out may come again at once (its offset was not yet
	// flushed), and so may a dead letter whose last copy was read from
	// the retry queue: at least once. An ack flushes the offsets first,
	// so what was acked stays acked.
	out := 0
	for _, g := range r.groups {
		r.lenientReceipts(g)
		for _, gm := range g.msgs {
			if gm.state == gOut || gm.state == gDead || gm.dupOK {
				gm.dupOK = true
				gm.extra++
				out++
			}
		}
	}
	r.dupCap += out
	r.note("crash %d with %d out", r.crashes, out)
	return r.open()
}

// check runs after every step: the dead-letter queues agree with the model.
func (r *deliveryRun) check() error {
	for _, g := range r.groups {
		if _, err := r.syncDLQ(g); err != nil {
			return err
		}
	}
	// Every transaction is as decided (crashes and restarts included).
	for _, tx := range r.txns {
		got, err := r.b.Transaction(r.ctx, tx.msg.ID)
		if err != nil {
			return fmt.Errorf("transaction %s (%s in the model): %w", tx.msg.ID, tx.state, err)
		}
		if got.State != tx.state {
			return fmt.Errorf("transaction %s is %s; the model says %s", tx.msg.ID, got.State, tx.state)
		}
	}
	return nil
}

// drain makes every group active, then pulls and acks until nothing more
// comes for a long while, and checks that every message of every group
// ended acked or dead-lettered.
func (r *deliveryRun) drain() error {
	for _, g := range r.groups {
		switch g.state {
		case "deleted":
			if err := r.create(g); err != nil {
				return err
			}
		case StatePaused:
			if _, err := r.b.SetSubscriptionState(r.ctx, g.id, StateActive, ""); err != nil {
				return err
			}
			g.state = StateActive
		}
	}
	idle := 0
	for round := 0; idle < 3 && round < 400; round++ {
		got := 0
		for _, g := range r.groups {
			ps, err := r.b.Pull(r.ctx, g.name, dTopic, MaxPullMessages, 0, 30*time.Second)
			if err != nil {
				return fmt.Errorf("pull %s: %w", g.name, err)
			}
			if err := r.handedOut(g, ps, 30*time.Second); err != nil {
				return err
			}
			got += len(ps)
			if len(ps) == 0 {
				continue
			}
			var rcs []string
			for _, p := range ps {
				rcs = append(rcs, p.Receipt)
			}
			if err := r.b.Ack(r.ctx, g.name, rcs); err != nil {
				return fmt.Errorf("ack of %d just pulled by %s: %w", len(rcs), g.name, err)
			}
			for _, rc := range rcs {
				d := g.receipts[rc]
				d.settled = true
				g.msgs[d.msgID].state = gAcked
			}
		}
		if got == 0 {
			idle++
			// Past every visibility, nack delay and delay drawn.
			time.Sleep(31 * time.Second)
			synctest.Wait()
		} else {
			idle = 0
		}
	}
	for _, g := range r.groups {
		if _, err := r.syncDLQ(g); err != nil {
			return err
		}
		var lost []string
		for id, gm := range g.msgs {
			if gm.state == gPending || gm.state == gOut {
				dm := r.byID[id]
				lost = append(lost, fmt.Sprintf("%s(q%d@%d tag %q %s attempt %d)", id, dm.queue, dm.qoff, dm.tag, gm.state, gm.attempt))
			}
		}
		if len(lost) > 0 {
			sort.Strings(lost)
			return fmt.Errorf("%d messages of %s never acked nor dead-lettered: %s", len(lost), g.name, strings.Join(lost[:min(len(lost), 8)], ", "))
		}
	}
	return nil
}
