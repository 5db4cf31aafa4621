package delaytimer

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/postbus/postbus/broker/meta"
)

// memStore is a Store in memory.
type memStore struct {
	mu     sync.Mutex
	timers map[int64]meta.Timer // pending, by log offset
	fired  []int64
}

func newStore(ts ...meta.Timer) *memStore {
	s := &memStore{timers: make(map[int64]meta.Timer)}
	for _, t := range ts {
		s.timers[t.LogOffset] = t
	}
	return s
}

func (s *memStore) add(t meta.Timer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timers[t.LogOffset] = t
}

func (s *memStore) sorted(keep func(meta.Timer) bool, limit int) []meta.Timer {
	var out []meta.Timer
	for _, t := range s.timers {
		if keep(t) {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b meta.Timer) int { return int(a.LogOffset - b.LogOffset) })
	return out[:min(limit, len(out))]
}

func (s *memStore) DueTimers(_ context.Context, now time.Time, limit int) ([]meta.Timer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sorted(func(t meta.Timer) bool { return !t.DeliverAt.After(now) }, limit), nil
}

func (s *memStore) NextTimer(context.Context) (time.Time, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var next time.Time
	for _, t := range s.timers {
		if next.IsZero() || t.DeliverAt.Before(next) {
			next = t.DeliverAt
		}
	}
	return next, !next.IsZero(), nil
}

func (s *memStore) PendingTimersBefore(_ context.Context, off int64, limit int) ([]meta.Timer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sorted(func(t meta.Timer) bool { return t.LogOffset < off }, limit), nil
}

func (s *memStore) FireTimers(ctx context.Context, offs []int64) error {
	if err := ctx.Err(); err != nil {
		return err // as a database write on a cancelled context
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range offs {
		delete(s.timers, o)
		s.fired = append(s.fired, o)
	}
	return nil
}

func (s *memStore) firedOffsets() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.fired)
}

// host records what it was asked; a hook may hold or fail a call.
type host struct {
	mu     sync.Mutex
	events []string // "put 5", "move 3", in call order
	onPut  func(due []meta.Timer) error
	onMove func(pending []meta.Timer) error
	store  *memStore // Move adds the copies' timers here, at offset+1000
}

func (h *host) record(what string, ts []meta.Timer) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, t := range ts {
		h.events = append(h.events, what+" "+itoa(t.LogOffset))
	}
}

func (h *host) seen() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.events)
}

func (h *host) PutBack(_ context.Context, due []meta.Timer) error {
	if h.onPut != nil {
		if err := h.onPut(due); err != nil {
			return err
		}
	}
	h.record("put", due)
	return nil
}

func (h *host) Move(_ context.Context, pending []meta.Timer) (int, error) {
	if h.onMove != nil {
		if err := h.onMove(pending); err != nil {
			return 0, err
		}
	}
	h.record("move", pending)
	for _, t := range pending {
		h.store.add(meta.Timer{LogOffset: t.LogOffset + 1000, DeliverAt: t.DeliverAt})
	}
	return len(pending), nil
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func at(base time.Time, d time.Duration, off int64) meta.Timer {
	return meta.Timer{LogOffset: off, DeliverAt: base.Add(d)}
}

func start(t *testing.T, s *memStore, h *host, batch int) *Timer {
	t.Helper()
	h.store = s
	tm := Start(Config{Store: s, Host: h, Batch: batch, MaxWait: time.Minute})
	t.Cleanup(tm.Close)
	return tm
}

// TestFiresWhenDue: each timer fires at its due time, not before, and is
// marked fired after its message was put back.
func TestFiresWhenDue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		now := time.Now()
		s := newStore(at(now, 2*time.Second, 10), at(now, 5*time.Second, 20))
		h := &host{}
		start(t, s, h, 0)
		synctest.Wait()
		if got := h.seen(); len(got) != 0 {
			t.Fatalf("put back before due: %v", got)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if got, fired := h.seen(), s.firedOffsets(); !slices.Equal(got, []string{"put " + itoa(10)}) || !slices.Equal(fired, []int64{10}) {
			t.Fatalf("at 2s: put back %v, fired %v; want the first only", got, fired)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if fired := s.firedOffsets(); !slices.Equal(fired, []int64{10, 20}) {
			t.Fatalf("at 5s: fired %v, want both", fired)
		}
	})
}

// TestWakeFiresSooner: a timer added while the loop sleeps longer fires
// as soon as Wake is called, and a full batch is followed by the next one
// at once.
func TestWakeFiresSooner(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		now := time.Now()
		s := newStore(at(now, time.Hour, 1))
		h := &host{}
		tm := start(t, s, h, 2)
		synctest.Wait() // asleep for MaxWait
		for off := int64(100); off < 105; off++ {
			s.add(at(now, 0, off))
		}
		tm.Wake()
		synctest.Wait()
		if fired := s.firedOffsets(); len(fired) != 5 {
			t.Fatalf("fired %v after Wake, want the 5 due (in batches of 2)", fired)
		}
		if !time.Now().Equal(now) {
			t.Fatalf("%v passed: the loop slept before firing", time.Since(now))
		}
	})
}

// TestCloseFinishesARound: Close during a round that is putting messages
// back lets it finish and mark its timers fired. It used to cancel the
// round, so the messages were back on their queues with their timers
// still pending, and every clean restart found them "already put back"
// (an ERROR).
func TestCloseFinishesARound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		now := time.Now()
		s := newStore(at(now, 0, 5), at(now, 0, 6))
		entered, release := make(chan struct{}), make(chan struct{})
		h := &host{onPut: func([]meta.Timer) error {
			close(entered)
			<-release
			return nil
		}}
		tm := start(t, s, h, 0)
		<-entered
		closed := make(chan struct{})
		go func() {
			tm.Close()
			close(closed)
		}()
		synctest.Wait() // Close has cancelled the loop and waits for it
		select {
		case <-closed:
			t.Fatal("Close returned while a round was putting messages back")
		default:
		}
		close(release)
		<-closed
		if got, fired := h.seen(), s.firedOffsets(); !slices.Equal(got, []string{"put 5", "put 6"}) || !slices.Equal(fired, []int64{5, 6}) {
			t.Fatalf("after Close: put back %v, fired %v; want both put back and both fired", got, fired)
		}
	})
}

// TestPutBackErrorKeepsTimers: timers whose put-back failed stay pending
// and fire on a later round.
func TestPutBackErrorKeepsTimers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		now := time.Now()
		s := newStore(at(now, 0, 7))
		fail := true
		h := &host{onPut: func([]meta.Timer) error {
			if fail {
				fail = false
				return errors.New("log refused")
			}
			return nil
		}}
		start(t, s, h, 0)
		synctest.Wait()
		if fired := s.firedOffsets(); len(fired) != 0 {
			t.Fatalf("fired %v although the put-back failed", fired)
		}
		time.Sleep(time.Minute) // MaxWait: the next round
		synctest.Wait()
		if fired := s.firedOffsets(); !slices.Equal(fired, []int64{7}) {
			t.Fatalf("fired %v on the retry, want [7]", fired)
		}
	})
}

// TestMoveAndFireTakeTurns: a move waits for a firing round in progress,
// and a firing round for a move in progress. Run together, a move that
// read a timer about to fire would copy a message already put back, and
// the copy's timer would put it back a second time.
func TestMoveAndFireTakeTurns(t *testing.T) {
	t.Run("move waits for firing", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			now := time.Now()
			s := newStore(at(now, 0, 1), at(now, time.Hour, 2))
			release := make(chan struct{})
			h := &host{onPut: func([]meta.Timer) error { <-release; return nil }}
			tm := start(t, s, h, 0)
			synctest.Wait() // the loop is inside PutBack of timer 1
			moved := make(chan error)
			go func() { moved <- tm.MoveBefore(context.Background(), 100) }()
			synctest.Wait()
			if got := h.seen(); len(got) != 0 {
				t.Fatalf("%v while a put-back was in progress", got)
			}
			close(release)
			if err := <-moved; err != nil {
				t.Fatal(err)
			}
			want := []string{"put " + itoa(1), "move " + itoa(2)}
			if got := h.seen(); !slices.Equal(got, want) {
				t.Fatalf("events %v, want %v: the fired timer must not be moved", got, want)
			}
		})
	})
	t.Run("firing waits for a move", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			now := time.Now()
			s := newStore(at(now, time.Hour, 1))
			release := make(chan struct{})
			h := &host{onMove: func([]meta.Timer) error { <-release; return nil }}
			tm := start(t, s, h, 0)
			synctest.Wait()
			moved := make(chan error)
			go func() { moved <- tm.MoveBefore(context.Background(), 100) }()
			synctest.Wait() // the move is inside Move of timer 1
			time.Sleep(2 * time.Hour)
			fired := make(chan error)
			go func() { _, err := tm.FireDue(context.Background()); fired <- err }()
			synctest.Wait()
			if got := h.seen(); len(got) != 0 {
				t.Fatalf("%v while a move was in progress", got)
			}
			close(release)
			if err := <-moved; err != nil {
				t.Fatal(err)
			}
			if err := <-fired; err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
			want := []string{"move " + itoa(1), "put " + itoa(1001)}
			if got := h.seen(); !slices.Equal(got, want) {
				t.Fatalf("events %v, want %v: only the copy fires", got, want)
			}
		})
	})
}

// TestMoveFailureKeepsTimers: the originals' timers are fired only after
// their copies are stored; a failed move leaves them pending.
func TestMoveFailureKeepsTimers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		now := time.Now()
		s := newStore(at(now, time.Hour, 1), at(now, time.Hour, 2), at(now, time.Hour, 300))
		fail := true
		h := &host{onMove: func([]meta.Timer) error {
			if fail {
				return errors.New("disk full")
			}
			return nil
		}}
		tm := start(t, s, h, 0)
		if err := tm.MoveBefore(context.Background(), 100); err == nil {
			t.Fatal("MoveBefore succeeded although Move failed")
		}
		if fired := s.firedOffsets(); len(fired) != 0 {
			t.Fatalf("fired %v after a failed move", fired)
		}
		fail = false
		if err := tm.MoveBefore(context.Background(), 100); err != nil {
			t.Fatal(err)
		}
		if fired := s.firedOffsets(); !slices.Equal(fired, []int64{1, 2}) {
			t.Fatalf("fired %v, want the two below 100", fired)
		}
	})
}
