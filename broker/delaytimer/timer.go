package delaytimer

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/postbus/postbus/broker/meta"
)

// Store holds the timers (the broker's meta.Store).
type Store interface {
	DueTimers(ctx context.Context, now time.Time, limit int) ([]meta.Timer, error)
	NextTimer(ctx context.Context) (time.Time, bool, error)
	PendingTimersBefore(ctx context.Context, logOff int64, limit int) ([]meta.Timer, error)
	FireTimers(ctx context.Context, offsets []int64) error
}

// Host does what needs the commitlog and the topics.
type Host interface {
	// PutBack puts the messages of due timers on their queues, durably.
	// On an error none of the timers is marked fired: they are due again
	// on the next round.
	PutBack(ctx context.Context, due []meta.Timer) error
	// Move stores copies of the waiting messages of pending timers ahead
	// in the log, with their timers, and returns how many it copied (a
	// message it cannot read, or of a topic deleted since, is not). Once
	// it returns, the pending timers are marked fired.
	Move(ctx context.Context, pending []meta.Timer) (int, error)
}

// Defaults of Config.
const (
	DefaultBatch   = 512
	DefaultMaxWait = time.Second
)

// Config says where the timers are and what puts messages back.
type Config struct {
	Store  Store
	Host   Host
	Now    func() time.Time // nil: time.Now
	Logger *slog.Logger     // nil: discard
	// Batch is how many timers one round fires or moves.
	Batch int
	// MaxWait is the longest the loop sleeps between rounds.
	MaxWait time.Duration
}

// Timer runs the timer loop. Its methods are safe for concurrent use.
type Timer struct {
	cfg Config
	// turn is held by whoever fires or moves timers: a channel rather than
	// a mutex so that a waiter can give up when its context ends.
	turn   chan struct{}
	wake   chan struct{} // cap 1: a timer may be due sooner than the loop sleeps
	cancel context.CancelFunc
	done   chan struct{} // closed when the loop has returned
}

// Start starts the timer loop; Close stops it.
func Start(cfg Config) *Timer {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &Timer{
		cfg:    cfg,
		turn:   make(chan struct{}, 1),
		wake:   make(chan struct{}, 1),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	go t.loop(ctx)
	return t
}

// Close stops the loop and waits for it: a round that has taken due
// timers finishes first (its host must still take appends).
// It is idempotent.
func (t *Timer) Close() {
	t.cancel()
	<-t.done
}

// Wake tells the loop that a timer may be due sooner than it sleeps.
func (t *Timer) Wake() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (t *Timer) loop(ctx context.Context) {
	defer close(t.done)
	for {
		n, err := t.FireDue(ctx)
		if err != nil && ctx.Err() == nil {
			t.cfg.Logger.Error("firing timers failed; retrying", slog.Any("err", err))
		}
		if n == t.cfg.Batch && err == nil {
			continue // more are due
		}
		wait := t.cfg.MaxWait
		if err == nil {
			if next, ok, err := t.cfg.Store.NextTimer(ctx); err == nil && ok {
				wait = min(wait, max(next.Sub(t.cfg.Now()), 0))
			}
		}
		sleep := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			sleep.Stop()
			return
		case <-t.wake:
		case <-sleep.C:
		}
		sleep.Stop()
	}
}

// take waits for the turn to fire or move timers.
func (t *Timer) take(ctx context.Context) error {
	select {
	case t.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (t *Timer) give() { <-t.turn }

// FireDue puts the messages of up to Batch due timers back and marks the
// timers fired. It returns how many timers it handled. The loop calls it;
// tests may too.
func (t *Timer) FireDue(ctx context.Context) (int, error) {
	if err := t.take(ctx); err != nil {
		return 0, err
	}
	defer t.give()
	due, err := t.cfg.Store.DueTimers(ctx, t.cfg.Now(), t.cfg.Batch)
	if err != nil || len(due) == 0 {
		return 0, err
	}
	// A round that has timers finishes, even when Close cancels ctx: cut
	// between putting messages back and marking their timers fired, it
	// leaves copies that the next start finds already put back (safe,
	// but an anomaly reported at ERROR after every clean restart).
	round := context.WithoutCancel(ctx)
	if err := t.cfg.Host.PutBack(round, due); err != nil {
		return 0, err
	}
	if err := t.cfg.Store.FireTimers(round, offsets(due)); err != nil {
		return 0, err
	}
	return len(due), nil
}

// Hold runs fn while no timer is being fired or moved: a round in
// progress ends first, and none starts until fn returns. A caller that
// drops timers (an offset reset dropping a group's retries) so knows that
// none of them is being put back meanwhile.
func (t *Timer) Hold(ctx context.Context, fn func() error) error {
	if err := t.take(ctx); err != nil {
		return err
	}
	defer t.give()
	return fn()
}

// MoveBefore moves every message still waiting whose record lies below
// off ahead in the log, so that the segments below off can be deleted.
func (t *Timer) MoveBefore(ctx context.Context, off int64) error {
	if err := t.take(ctx); err != nil {
		return err
	}
	defer t.give()
	for {
		pending, err := t.cfg.Store.PendingTimersBefore(ctx, off, t.cfg.Batch)
		if err != nil || len(pending) == 0 {
			return err
		}
		n, err := t.cfg.Host.Move(ctx, pending)
		if err != nil {
			return fmt.Errorf("move delayed messages: %w", err)
		}
		// The copies' timers are stored: the originals' may go.
		if err := t.cfg.Store.FireTimers(ctx, offsets(pending)); err != nil {
			return err
		}
		t.cfg.Logger.Info("moved delayed messages ahead of retention", slog.Int("messages", n))
	}
}

func offsets(ts []meta.Timer) []int64 {
	offs := make([]int64, len(ts))
	for i, t := range ts {
		offs[i] = t.LogOffset
	}
	return offs
}
