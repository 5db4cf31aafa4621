package broker

// The torture test: random sequences of publishes, topic changes, clock
// jumps, a full disk, clean restarts with changed flags and power cuts, run
// against a broker whose stores sit on a vfs.Fault, each step checked
// against a plain in-memory model of what the broker acknowledged.
//
//	go test -race -run 'TestTorture$' ./broker/                          # the CI seeds
//	go test -run 'TestTorture$' ./broker/ -torture.seeds=10000           # many more
//	go test -run 'TestTorture$' ./broker/ -torture.seed=1234 -v          # replay one

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/postbus/postbus/broker/consumequeue"
	"github.com/postbus/postbus/broker/internal/vfs"
)

var (
	flagTortureSeeds   = flag.Int("torture.seeds", 0, "run this many seeds, from -torture.first, instead of the CI set")
	flagTortureFirst   = flag.Uint64("torture.first", 1, "first seed of -torture.seeds")
	flagTortureSeed    = flag.Uint64("torture.seed", 0, "run only this seed")
	flagTortureSteps   = flag.Int("torture.steps", 0, "steps per seed (0: the default)")
	flagTortureLog     = flag.Bool("torture.log", false, "show the broker's log")
	flagTortureWithout = flag.String("torture.without", "", "comma-separated op families to leave out: "+strings.Join(tortureFamilies, ","))
)

// tortureFamilies name what can be left out of a run, to look past a known
// fault while its fix is not in: bodies over 1 MiB, topic delete and
// re-create, dedup ids, delays, retention passing, a full disk, clean
// restarts, flag changes at restarts, crashes.
var tortureFamilies = []string{"bigbody", "delete", "recreate", "dedup", "delay", "retention", "diskfull", "restart", "flags", "crash", "ioerror"}

type familySet map[string]bool

func parseFamilies(t *testing.T, list string) familySet {
	out := familySet{}
	for _, f := range strings.Split(list, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if !slices.Contains(tortureFamilies, f) {
			t.Fatalf("unknown torture family %q; known: %v", f, tortureFamilies)
		}
		out[f] = true
	}
	return out
}

// tortureCISeeds is what every `go test` runs: about a minute and a half
// with -race on two busy cores (10 to 20 s a seed).
var tortureCISeeds = []uint64{1, 2, 3, 4, 5, 6}

const tortureDefaultSteps = 30

// publishTimeout: a publish that takes longer has hung.
const publishTimeout = 20 * time.Second

// A tortureOp is one step. Everything random about it derives from seed, so
// that a list of ops replays (and shrinks) on its own.
type tortureOp struct {
	kind  opKind
	topic string
	seed  uint64
}

type opKind int

const (
	opPublish opKind = iota
	opBatch
	opPutTopic
	opDeleteTopic
	opRecreateRace // delete and re-create a topic while publishers run
	opClock        // the clock moves: a little, past delays, or past retention
	opDiskFull     // the disk fills, publishes meet it, then space is freed
	opRestart      // a clean restart, sometimes with other flags
	opCrash        // a power cut at a random write or sync, then a restart
	opIOError      // one write, sync, rename or allocate fails (or a write is cut), then a restart
	opCount
)

var opKindNames = [...]string{"publish", "batch", "put", "delete", "recreate-race", "clock", "disk-full", "restart", "crash", "io-error"}

func (k opKind) String() string { return opKindNames[k] }

func (o tortureOp) String() string { return fmt.Sprintf("%s(%s,%d)", o.kind, o.topic, o.seed) }

// opWeights says how often each op is drawn.
var opWeights = [opCount]int{
	opPublish: 30, opBatch: 12, opPutTopic: 10, opDeleteTopic: 4, opRecreateRace: 4,
	opClock: 8, opDiskFull: 4, opRestart: 6, opCrash: 10, opIOError: 4,
}

// opFamily is the family whose leaving out drops an op kind.
var opFamily = [opCount]string{opDeleteTopic: "delete", opRecreateRace: "recreate", opDiskFull: "diskfull", opRestart: "restart", opCrash: "crash", opIOError: "ioerror"}

var tortureTopics = []string{"t0", "t1", "t2"}

func genOps(seed uint64, steps int, without familySet) []tortureOp {
	rng := rand.New(rand.NewPCG(seed, 1))
	total := 0
	for _, w := range opWeights {
		total += w
	}
	ops := make([]tortureOp, 0, steps+1)
	// Start with a topic, so that most publishes have somewhere to go.
	ops = append(ops, tortureOp{kind: opPutTopic, topic: tortureTopics[0], seed: rng.Uint64()})
	for range steps {
		r := rng.IntN(total)
		k := opKind(0)
		for ; r >= opWeights[k]; k++ {
			r -= opWeights[k]
		}
		if without[opFamily[k]] {
			continue
		}
		ops = append(ops, tortureOp{kind: k, topic: tortureTopics[rng.IntN(len(tortureTopics))], seed: rng.Uint64()})
	}
	return ops
}

func TestTorture(t *testing.T) {
	runTortureSeeds(t, parseFamilies(t, *flagTortureWithout), tortureCISeeds)
}

// TestTortureDelayedMessages runs TestTorture's model on the seeds that
// found faults in delayed messages: due together over what one append
// holds, and stored under a higher message limit (5065; named tests in
// delay_test.go); waiting past the topic's retention (2023, 2060, 2064;
// TestDelayedMessageLongerThanRetention); put back twice after an append
// that failed but reached the disk (TestDelayedMessagePutBackOnce).
// 5043 once showed a message put back just before a power cut missing from
// its queue, with the same symptom as a race in this model that is now
// fixed; it is kept here until that is certain. Some depend on timing: the
// timer loop keeps its own time.
//
// 2060 also put a delayed message on its queue twice when retention moved
// it ahead of its segment as it fell due (TestDelayedMessageMovedWhileDue).
func TestTortureDelayedMessages(t *testing.T) {
	runTortureSeeds(t, parseFamilies(t, *flagTortureWithout), []uint64{2023, 2060, 2064, 5043, 5065})
}

func runTortureSeeds(t *testing.T, without familySet, ciSeeds []uint64) {
	steps := tortureDefaultSteps
	if *flagTortureSteps > 0 {
		steps = *flagTortureSteps
	}
	var seeds []uint64
	switch {
	case *flagTortureSeed != 0:
		seeds = []uint64{*flagTortureSeed}
	case *flagTortureSeeds > 0:
		for i := range *flagTortureSeeds {
			seeds = append(seeds, *flagTortureFirst+uint64(i))
		}
	default:
		seeds = ciSeeds
	}
	for _, seed := range seeds {
		ops := genOps(seed, steps, without)
		if i, err := runTorture(t, seed, ops, without); err != nil {
			short := shrinkTorture(t, seed, ops[:i+1], without)
			t.Errorf("torture seed %d failed at step %d: %v\nops: %v\nshrunk to %d ops: %v\nreplay: go test -run 'TestTorture$' ./broker/ -torture.seed=%d",
				seed, i, err, ops[:i+1], len(short), short, seed)
			if *flagTortureSeeds == 0 {
				return
			}
		}
	}
}

// shrinkTorture looks for a shorter op list that still fails: it drops ops
// one at a time (keeping the first, which makes a topic), within a budget.
func shrinkTorture(t *testing.T, seed uint64, ops []tortureOp, without familySet) []tortureOp {
	deadline := time.Now().Add(90 * time.Second)
	for i := len(ops) - 2; i >= 1 && time.Now().Before(deadline); i-- {
		cand := slices.Delete(slices.Clone(ops), i, i+1)
		if j, err := runTorture(t, seed, cand, without); err != nil {
			ops = cand[:j+1]
			i = min(i, len(ops)-1)
		}
	}
	return ops
}

// Model.

type msgState int

const (
	stAcked     msgState = iota // acknowledged: must be visible while its topic lives
	stUncertain                 // the publish failed in a crash: stored or not, found out at the restart
	stGone                      // refused, rolled back, deleted: must never be visible
)

type mMsg struct {
	id           string
	topic        string
	genLo, genHi int // the topic generations it may belong to (equal unless published across a re-create)
	queue        int
	qoff         int64 // -1 while unknown
	size         int
	sum          [32]byte
	keys         []string
	tag          string
	dedup        string
	born         time.Time
	due          time.Time // zero unless delayed
	state        msgState
	expired      bool // older than its retention: may be gone
	// refired: delayed, and a crash or an injected I/O error came before
	// it was surely put on its queue, so its timer may fire twice (at
	// least once, as deliveries).
	refired bool
}

type mTopic struct {
	gen       int // generation: bumped on every create
	exists    bool
	queues    int
	retention time.Duration
	uncertain bool // a create or delete failed in a crash
}

type tortureClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *tortureClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *tortureClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type tortureRun struct {
	t       *testing.T
	seed    uint64
	dir     string
	fs      *vfs.Fault
	clock   *tortureClock
	cfg     Config
	b       *Broker
	topics  map[string]*mTopic
	msgs    []*mMsg
	byID    map[string]*mMsg
	full    bool
	without familySet
	log     []string // notes for the failure report
}

// runTorture runs ops and returns the index of the op after which the broker
// disagreed with the model, and how.
func runTorture(t *testing.T, seed uint64, ops []tortureOp, without familySet) (int, error) {
	t.Helper()
	base := t.TempDir()
	r := &tortureRun{
		t: t, seed: seed, dir: filepath.Join(base, "data"),
		clock:   &tortureClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		topics:  make(map[string]*mTopic),
		byID:    make(map[string]*mMsg),
		without: without,
	}
	var err error
	if r.fs, err = vfs.NewFault(filepath.Join(base, "trash"), seed); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 2))
	r.cfg = DefaultConfig(r.dir)
	r.cfg.SegmentSize, r.cfg.MaxMessageBytes = drawLimits(rng, without)
	r.cfg.FS = r.fs
	r.cfg.Now = r.clock.Now
	r.cfg.CheckpointInterval = 20 * time.Millisecond
	r.cfg.RetentionInterval = 250 * time.Millisecond
	r.cfg.OffsetInterval = 50 * time.Millisecond
	// The real disk's fill level must not decide anything: the fault FS does.
	r.cfg.DiskCleanRatio, r.cfg.DiskFullRatio = 1, 1
	r.cfg.Logger = slog.New(slog.DiscardHandler)
	if *flagTortureLog {
		r.cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if err := r.open(); err != nil {
		return 0, err
	}
	defer func() {
		if r.b != nil {
			r.b.Close()
		}
	}()
	for i, op := range ops {
		err := r.step(op)
		if err != nil {
			err = fmt.Errorf("%v: %w", op, err)
		} else if err = r.check(false); err != nil {
			err = fmt.Errorf("after %v: %w", op, err)
		}
		if err != nil {
			if len(r.log) > 0 {
				err = fmt.Errorf("%w\nnotes: %s", err, strings.Join(r.log, "; "))
			}
			return i, err
		}
	}
	return len(ops), nil
}

// drawLimits picks a segment size and a max message size the broker
// accepts together (a segment holds the largest batch: MinSegmentSize).
func drawLimits(rng *rand.Rand, without familySet) (int64, int) {
	maxes := []int{64 << 10, 256 << 10, 1 << 20, MaxBatchBytes - 1, MaxBatchBytes}
	m := maxes[rng.IntN(len(maxes))]
	least := MinSegmentSize(m)
	segs := []int64{least, least + 4<<10, least + 3<<20}
	return segs[rng.IntN(len(segs))], m
}

func (r *tortureRun) open() error {
	b, err := Open(context.Background(), r.cfg)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	if err := b.Ready(); err != nil {
		b.Close()
		return fmt.Errorf("opened but not ready: %w", err)
	}
	r.b = b
	return nil
}

func (r *tortureRun) note(format string, args ...any) {
	r.log = append(r.log, fmt.Sprintf(format, args...))
}

// Steps.

func (r *tortureRun) step(op tortureOp) error {
	if err := r.doStep(op); err != nil {
		return err
	}
	if r.b == nil {
		return nil
	}
	return r.waitDue()
}

func (r *tortureRun) doStep(op tortureOp) error {
	rng := rand.New(rand.NewPCG(op.seed, 3))
	r.clock.advance(time.Duration(1+rng.IntN(100)) * time.Millisecond)
	switch op.kind {
	case opPublish:
		return r.publish(rng, op.topic, 1)
	case opBatch:
		return r.publish(rng, op.topic, 2+rng.IntN(12))
	case opPutTopic:
		return r.putTopic(rng, op.topic)
	case opDeleteTopic:
		return r.deleteTopic(op.topic)
	case opRecreateRace:
		return r.recreateRace(rng, op.topic)
	case opClock:
		switch rng.IntN(3) {
		case 0:
			r.clock.advance(time.Second)
		case 1:
			r.clock.advance(31 * time.Second) // past every delay drawn
		default:
			if !r.without["retention"] {
				r.clock.advance(time.Duration(2+rng.IntN(80)) * time.Hour) // past retentions
			}
		}
		r.markExpired()
		return nil
	case opDiskFull:
		return r.diskFull(rng, op.topic)
	case opRestart:
		return r.restart(rng)
	case opCrash:
		return r.crash(rng, op.topic)
	case opIOError:
		return r.ioError(rng, op.topic)
	}
	return nil
}

var tortureKeys = []string{"k0", "k1", "k2", "k3"}

// drawBody draws a body size around the limits and segment boundaries.
func (r *tortureRun) drawSize(rng *rand.Rand) int {
	size := r.drawSize1(rng)
	if r.without["bigbody"] {
		size = min(size, 512<<10)
	}
	return size
}

func (r *tortureRun) drawSize1(rng *rand.Rand) int {
	max, seg := r.cfg.MaxMessageBytes, int(r.cfg.SegmentSize)
	jitter := rng.IntN(3) - 1
	switch p := rng.IntN(100); {
	case p < 72:
		return 1 + rng.IntN(300)
	case p < 79:
		return max + jitter // the limit, exactly and ±1
	case p < 84:
		return 1<<20 + jitter - rng.IntN(2)*64 // around the old 1 MiB reader chunk
	case p < 89:
		return 64<<10 + jitter
	case p < 92:
		return seg/2 + jitter - 64 // two fill a segment, or just do not
	case p < 94:
		return seg/3 + jitter
	case p < 95:
		return 4<<20 + jitter
	default:
		return 1 + rng.IntN(16<<10)
	}
}

// bodyNoise is where bodies take their bytes from: copying is cheap even
// under the race detector, drawing bytes one by one is not.
var bodyNoise = func() []byte {
	b := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}()

// randomBody returns size bytes: a random head, then runs of bodyNoise
// from random places, so that no two bodies (nor a body and zeros) agree.
func randomBody(rng *rand.Rand, size int) []byte {
	body := make([]byte, size)
	for i := 0; i < size; {
		if i < 16 {
			body[i] = byte(rng.Uint32())
			i++
			continue
		}
		off := rng.IntN(len(bodyNoise) - 4096)
		i += copy(body[i:], bodyNoise[off:off+4096])
	}
	return body
}

func (r *tortureRun) newMessage(rng *rand.Rand) (*Message, []byte) {
	size := max(1, r.drawSize(rng))
	body := randomBody(rng, size)
	m := &Message{Body: body, ContentType: "application/octet-stream"}
	for range rng.IntN(3) {
		if k := tortureKeys[rng.IntN(len(tortureKeys))]; !slices.Contains(m.Keys, k) {
			m.Keys = append(m.Keys, k)
		}
	}
	if rng.IntN(3) == 0 {
		m.Tag = []string{"a", "b"}[rng.IntN(2)]
	}
	if rng.IntN(4) == 0 {
		m.ShardingKey = fmt.Sprint("s", rng.IntN(3))
	}
	if rng.IntN(5) == 0 && !r.without["dedup"] {
		m.DedupID = fmt.Sprint("d", rng.IntN(6))
	}
	if rng.IntN(8) == 0 && !r.without["delay"] {
		m.Delay = time.Duration(1+rng.IntN(20)) * time.Second
	}
	return m, body
}

// expectRefusal says why the broker must refuse msgs, or "" if it must
// take them (save a full disk or a crash).
func (r *tortureRun) expectRefusal(topic string, msgs []*Message) Code {
	total := 0
	for _, m := range msgs {
		if len(m.Body) > r.cfg.MaxMessageBytes {
			return CodeBodyTooLarge
		}
		total += len(m.Body)
	}
	if len(msgs) > 1 && total > MaxBatchBytes {
		return CodeBatchTooLarge
	}
	if tp := r.topics[topic]; tp == nil || !tp.exists {
		return CodeTopicNotFound
	}
	return ""
}

// publish publishes n messages in one call and records the outcome.
func (r *tortureRun) publish(rng *rand.Rand, topic string, n int) error {
	msgs := make([]*Message, n)
	seen := map[string]bool{}
	for i := range msgs {
		msgs[i], _ = r.newMessage(rng)
		if d := msgs[i].DedupID; d != "" && seen[d] {
			msgs[i].DedupID = "" // a batch repeating a dedup id is a separate question
		}
		seen[msgs[i].DedupID] = true
	}
	if tp := r.topics[topic]; tp != nil && tp.uncertain {
		return nil
	}
	refusal := r.expectRefusal(topic, msgs)
	var total int
	for _, m := range msgs {
		total += len(m.Body)
	}
	if refusal == CodeBodyTooLarge || refusal == CodeBatchTooLarge {
		// Encoded on its own, a refused batch costs memory and time for nothing more.
		if total > 16<<20 {
			return nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	res, err := r.b.Publish(ctx, topic, msgs)
	if ctx.Err() != nil {
		return fmt.Errorf("publish of %d to %s hung: %w", len(msgs), topic, err)
	}
	return r.record(topic, msgs, res, err, refusal, r.genRange(topic))
}

func (r *tortureRun) genRange(topic string) [2]int {
	g := 0
	if tp := r.topics[topic]; tp != nil {
		g = tp.gen
	}
	return [2]int{g, g}
}

// record adds a publish's messages to the model from what it answered.
func (r *tortureRun) record(topic string, msgs []*Message, res []Result, err error, refusal Code, gens [2]int) error {
	now := r.clock.Now()
	state := stAcked
	switch {
	case err != nil && (r.fs.Crashed() || errors.Is(err, errUncertain)):
		state = stUncertain
	case err != nil && refusal != "":
		if got := CodeOf(err); got != refusal {
			return fmt.Errorf("publish of %d (%d bytes first) refused with %v, want %s", len(msgs), len(msgs[0].Body), err, refusal)
		}
		state = stGone
	case err != nil && r.full:
		if CodeOf(err) != CodeDiskFull {
			return fmt.Errorf("publish on a full disk failed with %v, want %s", err, CodeDiskFull)
		}
		state = stGone
	case err != nil:
		return fmt.Errorf("publish of %d to %s (sizes %v) failed: %w", len(msgs), topic, sizes(msgs), err)
	case refusal != "":
		return fmt.Errorf("publish of %d to %s (sizes %v) succeeded, want %s", len(msgs), topic, sizes(msgs), refusal)
	case len(res) != len(msgs):
		return fmt.Errorf("publish of %d answered %d results", len(msgs), len(res))
	}
	for i, m := range msgs {
		mm := &mMsg{
			id: m.ID, topic: topic, genLo: gens[0], genHi: gens[1], queue: m.QueueID, qoff: -1,
			size: len(m.Body), sum: sha256.Sum256(m.Body), keys: m.Keys, tag: m.Tag, dedup: m.DedupID,
			born: now, state: state,
		}
		switch {
		case !m.DeliverAt.IsZero(): // validation folds Delay into it
			mm.due = m.DeliverAt
		case m.Delay > 0:
			mm.due = now.Add(m.Delay)
		}
		if state == stAcked {
			got := res[i]
			if prior := r.dedupPrior(topic, gens, m.DedupID, now); prior != nil || got.Duplicate {
				if err := r.checkDuplicate(m, got, prior); err != nil {
					return err
				}
				if got.Duplicate {
					continue
				}
			}
			mm.id, mm.queue = got.ID, got.QueueID
			if mm.due.IsZero() {
				mm.qoff = got.QueueOffset
			} else if got.QueueOffset != -1 {
				return fmt.Errorf("delayed publish answered queue offset %d, want -1", got.QueueOffset)
			}
		}
		if mm.id == "" {
			continue // refused before it was given an id
		}
		r.msgs = append(r.msgs, mm)
		r.byID[mm.id] = mm
	}
	return nil
}

func sum(xs []int) int {
	t := 0
	for _, x := range xs {
		t += x
	}
	return t
}

func sizes(msgs []*Message) []int {
	s := make([]int, len(msgs))
	for i, m := range msgs {
		s[i] = len(m.Body)
	}
	return s
}

// dedupPrior returns the message a dedup id repeats: the newest one of the
// same topic generation within the window that may be stored.
func (r *tortureRun) dedupPrior(topic string, gens [2]int, id string, now time.Time) *mMsg {
	if id == "" {
		return nil
	}
	for i := len(r.msgs) - 1; i >= 0; i-- {
		m := r.msgs[i]
		if m.topic == topic && m.dedup == id && m.state != stGone && m.genHi >= gens[0] && m.genLo <= gens[1] &&
			now.Sub(m.born) < r.cfg.DedupWindow {
			return m
		}
	}
	return nil
}

// dedupCandidate says whether a dedup answer naming id is right when the
// newest message with the id, prior, has an unknown outcome: the broker
// may not have stored it (a failed append answered "nothing was stored"),
// and then answers with an older one. Any message with the id from prior
// back to the newest acknowledged one, inclusive, may be the answer.
func (r *tortureRun) dedupCandidate(prior *mMsg, id string) bool {
	if prior.state != stUncertain {
		return false
	}
	seen := false
	for i := len(r.msgs) - 1; i >= 0; i-- {
		m := r.msgs[i]
		if m == prior {
			seen = true
			continue
		}
		if !seen || m.topic != prior.topic || m.dedup != prior.dedup || m.state == stGone ||
			m.genHi < prior.genLo || m.genLo > prior.genHi {
			continue
		}
		if m.id == id {
			return true
		}
		if m.state == stAcked {
			return false // the newest certain one: nothing older is the answer
		}
	}
	return false
}

// checkDuplicate: a repeat of an acknowledged message of the same topic
// generation within the window answers that message; a repeat of one that
// may not be stored, or of another generation, may answer either; anything
// else is new.
func (r *tortureRun) checkDuplicate(m *Message, got Result, prior *mMsg) error {
	switch {
	case prior == nil && got.Duplicate:
		return fmt.Errorf("dedup id %q answered duplicate of %s, but no message of this topic generation within the window has it", m.DedupID, got.ID)
	case prior == nil:
		return nil
	case got.Duplicate && got.ID != prior.id && !r.dedupCandidate(prior, got.ID):
		return fmt.Errorf("dedup id %q answered duplicate of %s, want %s", m.DedupID, got.ID, prior.id)
	case !got.Duplicate && prior.state == stAcked && prior.genLo == prior.genHi && !prior.expired:
		return fmt.Errorf("dedup id %q stored anew, want a duplicate of %s", m.DedupID, prior.id)
	}
	return nil
}

func (r *tortureRun) putTopic(rng *rand.Rand, name string) error {
	tp := r.topics[name]
	s := TopicSettings{}
	switch {
	case tp == nil || !tp.exists:
		s.Queues = 1 + rng.IntN(4)
	case rng.IntN(2) == 0:
		s.Queues = tp.queues + 1 + rng.IntN(2)
	default:
		ret := []time.Duration{0, time.Hour}[rng.IntN(2)]
		if r.without["retention"] {
			ret = 0
		}
		s.Retention = &ret
	}
	if tp != nil && tp.uncertain {
		return nil
	}
	got, created, err := r.b.PutTopic(context.Background(), name, s)
	if r.fs.Crashed() {
		// Failed, or done after the power cut (the dead broker's SQLite
		// outlives the instant its snapshot is taken): the restart says.
		r.topicUncertain(name)
		return nil
	}
	if err != nil {
		return fmt.Errorf("put topic %s %+v: %w", name, s, err)
	}
	if tp == nil {
		tp = &mTopic{}
		r.topics[name] = tp
	}
	if created != !tp.exists {
		return fmt.Errorf("put topic %s: created %v, but the model says it existed: %v", name, created, tp.exists)
	}
	if created {
		tp.gen++
		tp.exists = true
		tp.retention = 0
	}
	if s.Retention != nil {
		tp.retention = *s.Retention
	}
	tp.queues = max(tp.queues, s.Queues)
	if created {
		tp.queues = s.Queues
	}
	if got.Queues != tp.queues {
		return fmt.Errorf("put topic %s: %d queues, want %d", name, got.Queues, tp.queues)
	}
	r.markExpired()
	return nil
}

func (r *tortureRun) topicUncertain(name string) {
	tp := r.topics[name]
	if tp == nil {
		tp = &mTopic{}
		r.topics[name] = tp
	}
	tp.uncertain = true
}

func (r *tortureRun) deleteTopic(name string) error {
	tp := r.topics[name]
	if tp == nil || !tp.exists || tp.uncertain {
		return nil
	}
	if err := r.b.DeleteTopic(context.Background(), name); err != nil {
		if r.fs.Crashed() {
			tp.uncertain = true
			return nil
		}
		return fmt.Errorf("delete topic %s: %w", name, err)
	}
	tp.exists = false
	r.forgetTopic(name, tp.gen)
	return nil
}

// forgetTopic makes gone every message that can only belong to generations
// up to gen of topic.
func (r *tortureRun) forgetTopic(name string, gen int) {
	for _, m := range r.msgs {
		if m.topic == name && m.genHi <= gen {
			m.state = stGone
		}
	}
}

// recreateRace deletes and re-creates a topic while publishers publish to
// it. A publish answered before the delete started belongs to the old
// topic; one started after the re-create returned, to the new one; one in
// between to either, or it is refused as topic_not_found.
func (r *tortureRun) recreateRace(rng *rand.Rand, name string) error {
	tp := r.topics[name]
	if tp == nil || !tp.exists || tp.uncertain {
		return nil
	}
	var clock atomic.Int64 // orders events across goroutines
	type pub struct {
		msgs       []*Message
		res        []Result
		err        error
		start, end int64
	}
	const publishers, each = 3, 4
	pubs := make([][]pub, publishers)
	var wg sync.WaitGroup
	for p := range publishers {
		prng := rand.New(rand.NewPCG(rng.Uint64(), 4))
		for range each {
			n := 1 + prng.IntN(3)
			msgs := make([]*Message, n)
			for i := range msgs {
				msgs[i], _ = r.newMessage(prng)
				msgs[i].DedupID, msgs[i].Delay = "", 0
				if len(msgs[i].Body) > r.cfg.MaxMessageBytes {
					msgs[i].Body = msgs[i].Body[:r.cfg.MaxMessageBytes]
				}
			}
			if len(msgs) > 1 && len(sizes(msgs)) > 0 && sum(sizes(msgs)) > MaxBatchBytes {
				msgs = msgs[:1]
			}
			pubs[p] = append(pubs[p], pub{msgs: msgs})
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range pubs[p] {
				pb := &pubs[p][i]
				pb.start = clock.Add(1)
				ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
				pb.res, pb.err = r.b.Publish(ctx, name, pb.msgs)
				if ctx.Err() != nil {
					pb.err = fmt.Errorf("publish hung: %w", pb.err)
				}
				cancel()
				pb.end = clock.Add(1)
			}
		}()
	}
	delStart := clock.Add(1)
	delErr := r.b.DeleteTopic(context.Background(), name)
	queues := 1 + rng.IntN(4)
	_, _, putErr := r.b.PutTopic(context.Background(), name, TopicSettings{Queues: queues})
	putEnd := clock.Add(1)
	wg.Wait()
	if delErr != nil || putErr != nil {
		return fmt.Errorf("delete then put of %s while publishing: %v; %v", name, delErr, putErr)
	}
	old := tp.gen
	tp.gen++
	tp.queues = queues
	tp.retention = 0
	r.forgetTopic(name, old)
	for p := range pubs {
		for _, pb := range pubs[p] {
			gens := [2]int{old, old + 1}
			switch {
			case pb.end < delStart:
				gens = [2]int{old, old}
			case pb.start > putEnd:
				gens = [2]int{old + 1, old + 1}
			}
			refusal := Code("")
			if pb.err != nil && CodeOf(pb.err) == CodeTopicNotFound && gens[1] == old+1 && gens[0] == old {
				refusal = CodeTopicNotFound
			}
			if err := r.record(name, pb.msgs, pb.res, pb.err, refusal, gens); err != nil {
				return err
			}
		}
	}
	// What was answered before the delete belongs to the deleted topic.
	r.forgetTopic(name, old)
	return nil
}

func (r *tortureRun) diskFull(rng *rand.Rand, topic string) error {
	r.fs.SetFull(true)
	r.full = true
	for range 1 + rng.IntN(4) {
		if err := r.publish(rng, topic, 1+rng.IntN(3)); err != nil {
			r.fs.SetFull(false)
			r.full = false
			return err
		}
	}
	r.fs.SetFull(false)
	r.full = false
	return nil
}

func (r *tortureRun) restart(rng *rand.Rand) error {
	if err := r.b.Close(); err != nil {
		r.b = nil
		return fmt.Errorf("close: %w", err)
	}
	r.b = nil
	prev := r.cfg
	change := rng.IntN(4)
	if r.without["flags"] {
		change = 3
	}
	switch change {
	case 0:
		maxes := []int{64 << 10, 256 << 10, 1 << 20, 4 << 20}
		if m := maxes[rng.IntN(len(maxes))]; int64(m)+64<<10 <= r.cfg.SegmentSize {
			r.cfg.MaxMessageBytes = m
			r.note("restart with max message bytes %d", m)
		}
	case 1:
		seg, m := drawLimits(rng, r.without)
		r.cfg.SegmentSize, r.cfg.MaxMessageBytes = seg, m
		r.note("restart with segment size %d, max message bytes %d", seg, m)
	}
	err := r.open()
	if err != nil && prev.SegmentSize != r.cfg.SegmentSize {
		// A changed segment size may be refused, clearly; the old one must work.
		r.note("segment size change refused: %v", err)
		r.cfg = prev
		err = r.open()
	}
	if err != nil {
		return err
	}
	return r.check(true)
}

// crash cuts the power at a random write or sync during a burst of
// publishes (and topic changes), with the metadata database as it was at
// that instant, and restarts.
func (r *tortureRun) crash(rng *rand.Rand, topic string) error {
	snap := filepath.Join(filepath.Dir(r.dir), "meta-snapshot.db")
	var snapErr error
	r.fs.OnCrash(func() { snapErr = snapshotMeta(r.dir, snap) })
	r.fs.CrashAfter(1 + rng.IntN(80))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for p := range 1 + rng.IntN(3) {
		prng := rand.New(rand.NewPCG(rng.Uint64(), uint64(p)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1 + prng.IntN(4) {
				if r.fs.Crashed() {
					return
				}
				n := 1
				if prng.IntN(3) == 0 {
					n = 2 + prng.IntN(5)
				}
				msgs := make([]*Message, n)
				for i := range msgs {
					msgs[i], _ = r.newMessage(prng)
					// Concurrent publishers record their answers in any
					// order, so a dedup id's first publish is unknowable.
					msgs[i].DedupID = ""
				}
				mu.Lock()
				refusal := r.expectRefusal(topic, msgs)
				gens := r.genRange(topic)
				mu.Unlock()
				if refusal != "" {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
				res, err := r.b.Publish(ctx, topic, msgs)
				if ctx.Err() != nil {
					err = fmt.Errorf("publish hung after the crash: %w", err)
					r.fs.SetInject(nil)
				}
				cancel()
				mu.Lock()
				if err := r.record(topic, msgs, res, err, refusal, gens); err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if rng.IntN(3) == 0 && !r.fs.Crashed() {
		if err := r.putTopic(rng, tortureTopics[rng.IntN(len(tortureTopics))]); err != nil {
			return err
		}
	}
	r.fs.Crash()
	r.fs.OnCrash(nil)
	for _, m := range r.msgs {
		if !m.due.IsZero() {
			m.refired = true
		}
	}
	if snapErr != nil {
		return fmt.Errorf("snapshot the metadata at the crash: %w", snapErr)
	}
	// The dead broker's goroutines stop on their own errors; it must let go.
	done := make(chan error, 1)
	go func() { done <- r.b.Close() }()
	select {
	case cerr := <-done:
		_ = cerr // a close after its disk failed reports that failure, expected here
	case <-time.After(60 * time.Second):
		return errors.New("the broker did not close within 60s after its disk failed")
	}
	r.b = nil
	if err := r.fs.Restore(r.dir); err != nil {
		return err
	}
	if err := restoreMeta(r.dir, snap); err != nil {
		return err
	}
	// Sometimes the power fails again during recovery.
	for again := rng.IntN(3) == 0; again; again = false {
		r.fs.OnCrash(func() { snapErr = snapshotMeta(r.dir, snap) })
		r.fs.CrashAfter(1 + rng.IntN(40))
		err := r.open()
		r.fs.CrashAfter(0)
		if !r.fs.Crashed() {
			r.fs.OnCrash(nil)
			if err != nil {
				return err
			}
			break
		}
		r.fs.Crash()
		r.fs.OnCrash(nil)
		r.note("crashed again while opening (open: %v)", err)
		if r.b != nil {
			r.b.Close()
			r.b = nil
		}
		if _, statErr := os.Stat(filepath.Join(r.dir, "meta.db")); statErr == nil && snapErr != nil {
			return fmt.Errorf("snapshot the metadata at the crash during recovery: %w", snapErr)
		}
		if err := r.fs.Restore(r.dir); err != nil {
			return err
		}
		if err := restoreMeta(r.dir, snap); err != nil {
			return err
		}
	}
	if r.b == nil {
		if err := r.open(); err != nil {
			return err
		}
	}
	return r.check(true)
}

// ioError fails one operation among the next few (a write may be cut
// short instead) while publishes run, then restarts. A publish that fails
// meanwhile may or may not be stored (its fsync may be what failed), so it
// is settled at the restart like one caught by a crash; nothing
// acknowledged may be lost.
func (r *tortureRun) ioError(rng *rand.Rand, topic string) error {
	kinds := []vfs.OpKind{vfs.OpWrite, vfs.OpSync, vfs.OpRename, vfs.OpAllocate, vfs.OpCreate, vfs.OpSyncDir}
	kind := kinds[rng.IntN(len(kinds))]
	skip := rng.IntN(20)
	cut := rng.IntN(2) == 0
	var failed atomic.Bool
	r.fs.SetInject(func(op vfs.Op) error {
		if op.Kind != kind || failed.Load() {
			return nil
		}
		if skip > 0 {
			skip--
			return nil
		}
		failed.Store(true)
		if kind == vfs.OpWrite && cut && op.Len > 1 {
			return &vfs.ShortWrite{N: op.Len / 2, Err: syscall.EIO}
		}
		return syscall.EIO
	})
	defer r.fs.SetInject(nil)
	for range 1 + rng.IntN(4) {
		n := 1 + rng.IntN(3)
		msgs := make([]*Message, n)
		for i := range msgs {
			msgs[i], _ = r.newMessage(rng)
		}
		refusal := r.expectRefusal(topic, msgs)
		if refusal != "" {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
		res, err := r.b.Publish(ctx, topic, msgs)
		hung := ctx.Err() != nil
		cancel()
		if hung {
			return fmt.Errorf("publish hung after an I/O error: %w", err)
		}
		if err != nil {
			// Unknown outcome: settle at the restart.
			r.note("publish failed after an injected %s error: %v", kind, err)
			res, err = nil, errUncertain
		}
		if err := r.record(topic, msgs, res, err, "", r.genRange(topic)); err != nil {
			return err
		}
	}
	r.fs.SetInject(nil)
	// An injected error that hits the timer loop's put-back of a due
	// delayed message leaves the message on its queue once: a failed
	// append is zeroed again, and a put-back whose bytes survived a failed
	// fsync is found by the next firing (putBackCopy) or by recovery's
	// survey. Only a power cut may put one back twice.
	if err := r.b.Close(); err != nil {
		r.note("close after an injected %s error: %v", kind, err)
	}
	r.b = nil
	if err := r.open(); err != nil {
		return fmt.Errorf("reopen after an injected %s error: %w", kind, err)
	}
	return r.check(true)
}

// errUncertain marks a publish whose outcome is unknown.
var errUncertain = errors.New("outcome unknown")

// snapshotMeta copies what the metadata database holds, committed, now.
func snapshotMeta(dir, dst string) error {
	_ = os.Remove(dst)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "meta.db")+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.Exec("VACUUM INTO ?", dst)
	return err
}

func restoreMeta(dir, snap string) error {
	for _, s := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(filepath.Join(dir, "meta.db"+s)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	src, err := os.Open(snap)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.Create(filepath.Join(dir, "meta.db"))
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// markExpired marks the messages older than their topic's retention (or
// the broker's): retention may have removed them. A delayed message is
// kept while it waits and put back on its queue as a new record no sooner
// than it falls due: its retention counts from then at the earliest.
func (r *tortureRun) markExpired() {
	now := r.clock.Now()
	for _, m := range r.msgs {
		ret := r.cfg.Retention
		if tp := r.topics[m.topic]; tp != nil && tp.retention > 0 {
			ret = min(ret, tp.retention)
		}
		from := m.born
		if m.due.After(from) {
			from = m.due
		}
		if now.Sub(from) > ret {
			m.expired = true
		}
	}
}

// waitDue waits until every acknowledged delayed message that is due is on
// its queue, and the broker has no due timer left to fire: one firing
// while the checks read would put a message on its queue between the
// read of the queue and the read by id.
func (r *tortureRun) waitDue() error {
	deadline := time.After(30 * time.Second)
	for {
		sig := r.b.Dispatched()
		pending := ""
		due, err := r.b.meta.DueTimers(context.Background(), r.clock.Now(), 1)
		if err != nil {
			return fmt.Errorf("due timers: %w", err)
		}
		if len(due) > 0 {
			pending = fmt.Sprintf("at log offset %d", due[0].LogOffset)
		}
		for _, m := range r.msgs {
			if pending != "" {
				break
			}
			if m.state != stAcked || m.due.IsZero() || m.due.After(r.clock.Now()) || m.expired || !r.live(m) {
				continue
			}
			if _, seen, err := r.findInQueue(m); err != nil {
				return err
			} else if !seen {
				pending = m.id
				break
			}
		}
		if pending == "" {
			return nil
		}
		select {
		case <-sig:
		case <-time.After(100 * time.Millisecond):
			// The timer loop wakes on its own clock; look again.
		case <-deadline:
			return fmt.Errorf("delayed message %s is due but not on its queue after 30s", pending)
		}
	}
}

// live reports whether m's topic generation may be the current one.
func (r *tortureRun) live(m *mMsg) bool {
	tp := r.topics[m.topic]
	return tp != nil && tp.exists && m.genLo <= tp.gen && tp.gen <= m.genHi
}

func (r *tortureRun) findInQueue(m *mMsg) (int64, bool, error) {
	lo, hi := r.b.QueueBounds(m.topic, m.queue)
	all, _ := ParseFilter("*")
	for from := lo; from < hi; {
		got, next, err := r.b.ReadQueue(m.topic, m.queue, from, 256, all)
		if err != nil {
			return 0, false, err
		}
		for _, g := range got {
			if g.ID == m.id {
				return g.QueueOffset, true, nil
			}
		}
		if next <= from {
			break
		}
		from = next
	}
	return 0, false, nil
}

// Checks.

type visibility int

const (
	mustSee visibility = iota
	maySee
	mustNotSee
)

func (r *tortureRun) expect(m *mMsg) visibility {
	switch {
	case m.state == stGone || !r.live(m):
		return mustNotSee
	case m.state == stUncertain || m.expired || m.genLo != m.genHi:
		return maySee
	}
	if tp := r.topics[m.topic]; tp.uncertain {
		return maySee
	}
	return mustSee
}

// check compares the broker with the model: by queue, by id, by key. After
// a restart (resolve), what was uncertain is settled by what the broker
// shows, and must stay so.
func (r *tortureRun) check(resolve bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if resolve {
		if err := r.resolveTopics(ctx); err != nil {
			return err
		}
		// The step's clock tick may have made a delayed message due while
		// the broker was down: the new broker's timer fires it on its own
		// time, as step does after every other op.
		if err := r.waitDue(); err != nil {
			return err
		}
	}
	// Publishes are acknowledged before dispatch puts them on their queues.
	if err := r.b.waitDispatched(ctx, r.b.log.Committed()); err != nil {
		return fmt.Errorf("wait for dispatch to reach the log's end: %w", err)
	}
	inQueue := make(map[string][]int64)
	for _, name := range tortureTopics {
		tp := r.topics[name]
		if tp == nil || !tp.exists {
			continue
		}
		if err := r.checkQueues(name, tp, inQueue); err != nil {
			return err
		}
	}
	now := r.clock.Now()
	for _, m := range r.msgs {
		if err := r.checkByID(ctx, m, inQueue, resolve, now); err != nil {
			return fmt.Errorf("%w [model: %s]", err, m)
		}
	}
	return r.checkKeys(ctx)
}

func (m *mMsg) String() string {
	return fmt.Sprintf("%s %s gen %d-%d queue %d offset %d, %d bytes, state %d, expired %v, due %v, born %v",
		m.id, m.topic, m.genLo, m.genHi, m.queue, m.qoff, m.size, m.state, m.expired, m.due.Format(time.StampMilli), m.born.Format(time.StampMilli))
}

func (r *tortureRun) checkByID(ctx context.Context, m *mMsg, inQueue map[string][]int64, resolve bool, now time.Time) error {
	{
		exp := r.expect(m)
		got, err := r.b.Message(ctx, m.id)
		if err != nil && CodeOf(err) != CodeMessageNotFound {
			return fmt.Errorf("message %s: %w", m.id, err)
		}
		seen := err == nil
		offs, inQ := inQueue[m.id]
		qoff := int64(-1)
		if inQ {
			qoff = offs[0]
		}
		waiting := !m.due.IsZero() && m.due.After(now)
		switch {
		case exp == mustSee && !seen:
			return fmt.Errorf("acknowledged message %s (%s, %d bytes, queue %d offset %d) not found by id", m.id, m.topic, m.size, m.queue, m.qoff)
		case exp == mustNotSee && seen:
			return fmt.Errorf("message %s (%s, state %d) must not be visible but is found by id", m.id, m.topic, m.state)
		case exp == mustNotSee && inQ:
			return fmt.Errorf("message %s (%s, state %d) must not be visible but is in queue %d at %d", m.id, m.topic, m.state, m.queue, qoff)
		case !seen:
			if inQ && !waiting {
				return fmt.Errorf("message %s is in queue %d at %d but not found by id", m.id, m.queue, qoff)
			}
			// Unseen, an uncertain or ambiguous message is not stored
			// and never will be. (One past its retention may show again
			// if the retention grows before its segment goes.)
			if (resolve || m.genLo != m.genHi) && !m.expired {
				m.state = stGone
			}
			return nil
		}
		if err := sameMessage(m, got); err != nil {
			return err
		}
		switch {
		case waiting && got.QueueOffset != -1:
			return fmt.Errorf("delayed message %s, not yet due, answers queue offset %d by id, want -1", m.id, got.QueueOffset)
		case waiting && inQ:
			return fmt.Errorf("delayed message %s, not yet due, is in queue %d at %d", m.id, m.queue, qoff)
		case !waiting && !inQ && m.expired && got.QueueOffset == -1:
			// Due and expired at once: its timer may not have fired yet
			// (waitDue does not wait for what retention may remove).
		case !waiting && !inQ:
			return fmt.Errorf("message %s found by id but not in queue %d (queue offset %d by id)", m.id, m.queue, got.QueueOffset)
		case !waiting && !slices.Contains(offs, got.QueueOffset) && !m.refired:
			return fmt.Errorf("message %s answers queue offset %d by id, but is at %d in its queue", m.id, got.QueueOffset, qoff)
		}
		if resolve && m.state == stUncertain {
			m.state = stAcked
		}
		if resolve && m.genLo != m.genHi {
			g := r.topics[m.topic].gen
			m.genLo, m.genHi = g, g
		}
	}
	return nil
}

func sameMessage(m *mMsg, got *Message) error {
	switch {
	case got.ID != m.id || got.Topic != m.topic:
		return fmt.Errorf("message %s: read back as %s of %s, want %s", m.id, got.ID, got.Topic, m.topic)
	case len(got.Body) != m.size || sha256.Sum256(got.Body) != m.sum:
		return fmt.Errorf("message %s: body of %d bytes read back differs from the %d published", m.id, len(got.Body), m.size)
	case got.Tag != m.tag || !slices.Equal(got.Keys, m.keys):
		return fmt.Errorf("message %s: tag %q keys %v, want %q %v", m.id, got.Tag, got.Keys, m.tag, m.keys)
	case got.QueueID != m.queue:
		return fmt.Errorf("message %s: queue %d, want %d", m.id, got.QueueID, m.queue)
	}
	return nil
}

// resolveTopics settles the topics a crash left uncertain from what the
// broker says after the restart.
func (r *tortureRun) resolveTopics(ctx context.Context) error {
	for name, tp := range r.topics {
		if !tp.uncertain {
			continue
		}
		st, err := r.b.Topic(ctx, name)
		switch {
		case CodeOf(err) == CodeTopicNotFound:
			if tp.exists {
				tp.exists = false
				r.forgetTopic(name, tp.gen)
			}
		case err != nil:
			return fmt.Errorf("topic %s: %w", name, err)
		default:
			if !tp.exists {
				tp.gen++
				tp.exists = true
				tp.retention = 0
			}
			tp.queues = st.Topic.Queues
		}
		tp.uncertain = false
		r.note("topic %s settled after the crash: exists %v, %d queues", name, tp.exists, tp.queues)
	}
	return nil
}

// checkQueues reads every queue of a topic from its start: offsets run on
// without a gap, every entry is a message the model allows there with the
// bytes published, and every message that must be there is, once, at the
// offset it was acknowledged with.
func (r *tortureRun) checkQueues(name string, tp *mTopic, inQueue map[string][]int64) error {
	n, err := r.b.Queues(name)
	if err != nil {
		return fmt.Errorf("queues of %s: %w", name, err)
	}
	if n != tp.queues {
		return fmt.Errorf("topic %s has %d queues, want %d", name, n, tp.queues)
	}
	all, _ := ParseFilter("*")
	for q := range n {
		lo, hi := r.b.QueueBounds(name, q)
		want := lo
		for from := lo; from < hi; {
			got, next, err := r.b.ReadQueue(name, q, from, 256, all)
			if errors.Is(err, consumequeue.ErrOutOfRange) {
				// Retention, which runs on its own ticker, raised the
				// queue's floor past from while this check read: go on
				// from the new floor. Whether what it took had to stay,
				// the loop over the model below says.
				if floor, _ := r.b.QueueBounds(name, q); floor > from {
					from, want = floor, max(want, floor)
					continue
				}
			}
			if err != nil {
				return fmt.Errorf("read %s/%d from %d: %w", name, q, from, err)
			}
			for _, g := range got {
				// Entries past their retention are skipped; whether a
				// skipped one had to be there, the loop over the model
				// below says.
				if g.QueueOffset < want || g.QueueOffset >= hi {
					return fmt.Errorf("queue %s/%d: offset %d follows %d (bounds %d-%d)", name, q, g.QueueOffset, want-1, lo, hi)
				}
				want = g.QueueOffset + 1
				m := r.byID[g.ID]
				switch {
				case m == nil:
					return fmt.Errorf("queue %s/%d offset %d holds %s, which was never published", name, q, g.QueueOffset, g.ID)
				case m.topic != name || m.queue != q:
					return fmt.Errorf("queue %s/%d offset %d holds %s of %s/%d", name, q, g.QueueOffset, g.ID, m.topic, m.queue)
				case m.qoff >= 0 && m.qoff != g.QueueOffset && m.due.IsZero():
					return fmt.Errorf("queue %s/%d: %s at offset %d, acknowledged at %d", name, q, g.ID, g.QueueOffset, m.qoff)
				}
				if _, dup := inQueue[g.ID]; dup && !m.refired {
					return fmt.Errorf("queue %s/%d: %s listed twice", name, q, g.ID)
				}
				if err := sameMessage(m, g); err != nil {
					return fmt.Errorf("queue %s/%d offset %d: %w", name, q, g.QueueOffset, err)
				}
				inQueue[g.ID] = append(inQueue[g.ID], g.QueueOffset)
			}
			if next <= from {
				return fmt.Errorf("queue %s/%d: read from %d made no progress (bounds %d-%d)", name, q, from, lo, hi)
			}
			from = next
		}
	}
	for _, m := range r.msgs {
		if m.topic != name || r.expect(m) != mustSee || (!m.due.IsZero()) {
			continue
		}
		if _, ok := inQueue[m.id]; !ok {
			lo, hi := r.b.QueueBounds(name, m.queue)
			return fmt.Errorf("acknowledged message %s (%d bytes) missing from queue %s/%d (offset %d; bounds %d-%d)", m.id, m.size, name, m.queue, m.qoff, lo, hi)
		}
	}
	return nil
}

// checkKeys lists every key of every live topic: each listed message is one
// the model allows, once, and each that must be listed is.
func (r *tortureRun) checkKeys(ctx context.Context) error {
	for _, name := range tortureTopics {
		tp := r.topics[name]
		if tp == nil || !tp.exists {
			continue
		}
		for _, key := range tortureKeys {
			seen := map[string]bool{}
			for before := int64(0); ; {
				got, next, err := r.b.MessagesByKey(ctx, name, key, before, MaxQueryLimit)
				if err != nil {
					return fmt.Errorf("key %s of %s: %w", key, name, err)
				}
				for _, g := range got {
					m := r.byID[g.ID]
					switch {
					case m == nil:
						return fmt.Errorf("key %s of %s lists %s, never published", key, name, g.ID)
					case seen[g.ID] && !m.refired:
						return fmt.Errorf("key %s of %s lists %s twice", key, name, g.ID)
					case r.expect(m) == mustNotSee:
						return fmt.Errorf("key %s of %s lists %s, which must not be visible (state %d)", key, name, g.ID, m.state)
					case !slices.Contains(m.keys, key):
						return fmt.Errorf("key %s of %s lists %s, which has keys %v", key, name, g.ID, m.keys)
					}
					if err := sameMessage(m, g); err != nil {
						return fmt.Errorf("key %s: %w", key, err)
					}
					seen[g.ID] = true
				}
				if next == 0 {
					break
				}
				before = next
			}
			for _, m := range r.msgs {
				if m.topic == name && slices.Contains(m.keys, key) && r.expect(m) == mustSee && m.due.IsZero() && !seen[m.id] {
					return fmt.Errorf("key %s of %s does not list acknowledged message %s", key, name, m.id)
				}
			}
		}
	}
	return nil
}
