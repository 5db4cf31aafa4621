package push

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
)

// stopRig is a real broker with a running dispatcher whose grace is long:
// a loop whose endpoint hangs takes that long to stop unless the endpoint
// lets go.
type stopRig struct {
	*rig
	d *Dispatcher
}

func newStopRig(tb testing.TB, grace time.Duration) *stopRig {
	tb.Helper()
	dir := tb.TempDir()
	cfg := broker.DefaultConfig(dir)
	cfg.SegmentSize = 8 << 20
	cfg.MaxMessageBytes = 1 << 20
	cfg.AutoCreateTopics = true
	cfg.OffsetInterval = 50 * time.Millisecond
	b, err := broker.Open(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	key, err := LoadOrCreateBusKey(filepath.Join(dir, "signing.key"))
	if err != nil {
		tb.Fatal(err)
	}
	client := NewClient(ClientConfig{AllowPrivate: true})
	d := NewDispatcher(DispatcherConfig{Broker: b, Client: client, Key: key, Grace: grace})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Run(ctx)
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
		client.Close()
		b.Close()
	})
	return &stopRig{rig: &rig{b: b, key: key}, d: d}
}

// hangingEndpoint holds every request until release is called (at the
// latest when the test ends), and counts the requests it holds.
type hangingEndpoint struct {
	*httptest.Server
	held     atomic.Int64
	released chan struct{}
	once     sync.Once
}

func newHangingEndpoint(tb testing.TB) *hangingEndpoint {
	h := &hangingEndpoint{released: make(chan struct{})}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.held.Add(1)
		<-h.released
		w.WriteHeader(http.StatusOK)
	}))
	// Released before the dispatcher stops (cleanups run last first), so
	// a stop never waits out the long grace at the end of a test.
	tb.Cleanup(h.Close)
	tb.Cleanup(h.release)
	return h
}

func (h *hangingEndpoint) release() { h.once.Do(func() { close(h.released) }) }

// Pausing, deleting or changing subscriptions whose endpoints hang must not
// hold up any other subscription: their loops are stopped in the
// background (issue 11, fault 5). With the stops done one after the other
// under the reconcile lock, the new subscription below waited for every
// hanging loop's grace (an hour here) before it started.
func TestStoppingHangingLoopsDoesNotDelayOthers(t *testing.T) {
	changes := []struct {
		name   string
		change func(t *testing.T, r *stopRig, sub broker.Subscription)
	}{
		{"pause", func(t *testing.T, r *stopRig, sub broker.Subscription) {
			if _, err := r.b.SetSubscriptionState(context.Background(), sub.ID, broker.StatePaused, ""); err != nil {
				t.Fatal(err)
			}
		}},
		{"rotate", func(t *testing.T, r *stopRig, sub broker.Subscription) {
			if _, err := r.b.RotateSecret(context.Background(), sub.ID, ""); err != nil {
				t.Fatal(err)
			}
		}},
		{"delete", func(t *testing.T, r *stopRig, sub broker.Subscription) {
			if err := r.b.DeleteSubscription(context.Background(), sub.ID); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range changes {
		t.Run(tc.name, func(t *testing.T) {
			r := newStopRig(t, time.Hour)
			hang := newHangingEndpoint(t)
			var subs []broker.Subscription
			for i := range 3 {
				subs = append(subs, r.subscribe(t, broker.Subscription{Group: fmt.Sprintf("slow%d", i), Topic: "orders", URL: hang.URL,
					Timeout: broker.MaxTimeout})) // the attempt outlasts the test unless released
			}
			r.publish(t, "orders", &broker.Message{Body: []byte("x")})
			waitUntil(t, 10*time.Second, "every hanging loop holding a delivery", func() bool { return hang.held.Load() >= 3 })
			for _, sub := range subs {
				tc.change(t, r, sub)
			}
			fast := newSink(t, nil)
			r.subscribe(t, broker.Subscription{Group: "fast", Topic: "other", URL: fast.URL, StartFrom: "earliest"})
			r.publish(t, "other", &broker.Message{Body: []byte("y")})
			// Bounded well below the grace: only a loop started while the
			// others stop can deliver in time.
			waitUntil(t, 15*time.Second, "the new subscription's first delivery while the hanging loops stop", func() bool {
				return len(fast.requests()) >= 1
			})
		})
	}
}

// A changed subscription's new loop starts only once its old loop is gone,
// so two loops never deliver one subscription at once, even while the old
// one waits for a hanging endpoint.
func TestReplacementLoopWaitsForTheOldOne(t *testing.T) {
	r := newStopRig(t, time.Hour)
	hang := newHangingEndpoint(t)
	var oldDone atomic.Bool
	var early atomic.Int64
	fast := newSink(t, func(*http.Request, int) int {
		if !oldDone.Load() {
			early.Add(1)
		}
		return 200
	})
	sub := r.subscribe(t, broker.Subscription{Group: "g", Topic: "orders", URL: hang.URL, Timeout: broker.MaxTimeout})
	r.publish(t, "orders", &broker.Message{Body: []byte("1")})
	waitUntil(t, 10*time.Second, "the old loop holding a delivery", func() bool { return hang.held.Load() >= 1 })

	sub.URL = fast.URL
	if _, err := r.b.UpdateSubscription(context.Background(), sub); err != nil {
		t.Fatal(err)
	}
	// The dispatcher has seen the change once the old loop is stopping and
	// the new settings wait for it to be gone.
	waitUntil(t, 10*time.Second, "the change to be reconciled", func() bool {
		r.d.mu.Lock()
		defer r.d.mu.Unlock()
		_, stopping := r.d.stopping[sub.ID]
		w, waiting := r.d.waiting[sub.ID]
		return stopping && waiting && w.URL == fast.URL
	})
	r.d.mu.Lock()
	_, running := r.d.loops[sub.ID]
	r.d.mu.Unlock()
	if running {
		t.Fatal("a loop for the subscription runs while its old loop is still stopping")
	}
	// Published after the old loop stopped reading: only the new one
	// delivers it.
	r.publish(t, "orders", &broker.Message{Body: []byte("2")})
	oldDone.Store(true)
	hang.release()
	waitUntil(t, 10*time.Second, "the new loop delivering after the old one is gone", func() bool {
		return len(fast.requests()) >= 1
	})
	if n := early.Load(); n > 0 {
		t.Fatalf("the new URL got %d requests while the old loop was still running", n)
	}
}

// TestStopIsNoAnomaly: a dispatcher stopped while it loads subscriptions
// (its context cancelled, as at every shutdown) logs no ERROR; it used to
// log "loading subscriptions failed: context canceled" at each stop that
// came during a reconcile.
func TestStopIsNoAnomaly(t *testing.T) {
	logs := &logLines{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	r := newRigWith(t, false, logger)
	d := NewDispatcher(DispatcherConfig{Broker: r.b, Client: NewClient(ClientConfig{AllowPrivate: true}), Key: r.key, Logger: logger})
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // stopped before its first reconcile ends
	if err := d.Run(ctx); err != nil {
		t.Fatalf("run: %v", err)
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "level=ERROR") {
			t.Errorf("a stop logged an anomaly: %s", line)
		}
	}
}
