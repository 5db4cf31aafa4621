package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The write fence: a broker in a cluster takes no change while it may not
// know of a topic deleted in the cluster.
//
// A topic's delete reaches the holders that were down or hung when it was
// made through the exchange of topic tombstones (see exchangeTombstones).
// Until that exchange, such a holder still has its copy of the topic, and
// a publish into it would be acknowledged and then dropped with it (the
// broker keeps a copy that took publishes after the delete rather than
// drop them, see broker.ApplyTopicTombstones, but then the delete is
// undone on that broker). So from its start, after the watchdog saw it
// paused, and when it registers anew with the name servers, a broker
// holds writes back (FenceWrites at the start; RunSync after) until it
// has exchanged tombstones with every broker
// the name servers list, for at most the hop timeout (a broker that does
// not answer in that time is named in an ERROR and the fence opens).
// Reads are never held back.

// fenceWait is how long a write waits for the fence to open before it is
// answered 503 not_ready (with Retry-After).
const fenceWait = 5 * time.Second

// fenceRetry is how often the fenced exchange asks again the brokers that
// did not answer.
const fenceRetry = 250 * time.Millisecond

// Watchdog: a tick later than pauseAfter means the process was paused
// (SIGSTOP, a frozen VM) or starved for that long.
const (
	watchdogTick = 250 * time.Millisecond
	pauseAfter   = 3 * time.Second
)

// writeFence is open (writes pass) or shut (writes wait, then 503).
type writeFence struct {
	mu   sync.Mutex
	open chan struct{} // closed while the fence is open
	why  string        // why it is shut; guarded by mu
}

// newWriteFence is an open fence.
func newWriteFence() *writeFence {
	open := make(chan struct{})
	close(open)
	return &writeFence{open: open}
}

// FenceWrites holds writes back from now until RunSync's first exchange
// of topic deletes with the other brokers is over (for at most the hop
// timeout). postbus broker calls it before it serves; a broker outside
// a cluster has no fence.
func (s *Server) FenceWrites() {
	if s.sync != nil {
		s.sync.fence.shut("starting: exchanging topic deletes with the other brokers")
	}
}

// shut holds writes back from now, for why.
func (f *writeFence) shut(why string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.open:
		f.open = make(chan struct{})
	default:
	}
	f.why = why
}

// lift lets writes pass.
func (f *writeFence) lift() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.open:
	default:
		close(f.open)
	}
}

// state is the channel closed once the fence is open, and why it is shut.
func (f *writeFence) state() (<-chan struct{}, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.open, f.why
}

// shutWhy is why the fence is shut, "" when it is open.
func (f *writeFence) shutWhy() string {
	open, why := f.state()
	select {
	case <-open:
		return ""
	default:
		return why
	}
}

// wait waits up to d (or ctx's end) for the fence to open; it returns why
// it is still shut, "" when it opened.
func (f *writeFence) wait(ctx context.Context, d time.Duration) string {
	open, why := f.state()
	select {
	case <-open:
		return ""
	default:
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-open:
		return ""
	case <-t.C:
	case <-ctx.Done():
	}
	return why
}

// fenceMetrics counts what the fence did.
type fenceMetrics struct {
	shut     prometheus.Gauge
	refused  prometheus.Counter
	unheard  prometheus.Counter
	pauses   prometheus.Counter
	shutDown prometheus.Histogram
}

func newFenceMetrics(reg prometheus.Registerer) *fenceMetrics {
	m := &fenceMetrics{
		shut: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "postbus_cluster_writes_fenced",
			Help: "1 while this broker holds writes back until it has exchanged topic deletes with the other brokers (after its start, a pause, or a new registration).",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_cluster_fenced_writes_refused_total",
			Help: "Writes answered 503 not_ready because the write fence stayed shut for their wait.",
		}),
		unheard: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_cluster_fence_opened_unheard_total",
			Help: "Times the write fence opened at its bound with brokers not heard from (each logged at ERROR with their names).",
		}),
		pauses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_cluster_pauses_total",
			Help: "Times the watchdog found this process paused or starved for more than 3s (each logged at WARN); writes are then fenced until topic deletes are exchanged again.",
		}),
		shutDown: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "postbus_cluster_fence_seconds",
			Help:    "How long the write fence stayed shut each time.",
			Buckets: []float64{.001, .01, .05, .1, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	reg.MustRegister(m.shut, m.refused, m.unheard, m.pauses, m.shutDown)
	return m
}

// fencedExchange exchanges topic tombstones with every broker the name
// servers list, asking again those that do not answer, until all have
// or the hop timeout has passed, then opens the fence. The fence is shut
// while it runs.
func (y *syncer) fencedExchange(ctx context.Context, skipDown bool) {
	c := y.s.cluster
	start := time.Now()
	y.fm.shut.Set(1)
	defer func() {
		y.fm.shut.Set(0)
		y.fm.shutDown.Observe(time.Since(start).Seconds())
		y.fence.lift()
	}()
	for {
		missed := y.exchangeTombstones(ctx, skipDown)
		if len(missed) == 0 || ctx.Err() != nil {
			return
		}
		if time.Since(start) >= c.hop {
			y.fm.unheard.Inc()
			c.logger.Error("writes taken again without having heard these brokers' topic deletes: a topic deleted through them while this broker was away or paused is kept here if it took publishes since (postbus_topic_tombstones_kept_total)",
				slog.String("brokers", strings.Join(missed, ",")), slog.Duration("waited", time.Since(start).Round(time.Millisecond)))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(fenceRetry):
		}
	}
}

// watchdog notices a pause: a tick more than pauseAfter late means the
// process was paused or starved, and another broker may have deleted a
// topic meanwhile without reaching it. It shuts the fence at once (the
// exchange that lifts it may wait behind a round of the sync loop) and
// signals y.paused. A request served after a pause before the watchdog
// has run again sees the stale tick itself (fenceCheck).
func (y *syncer) watchdog(ctx context.Context) {
	t := time.NewTicker(watchdogTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			y.checkPause()
		}
	}
}

// checkPause shuts the fence and signals y.paused when the watchdog's last
// tick is more than pauseAfter old, and records a tick now.
func (y *syncer) checkPause() {
	prev := y.lastTick.Load()
	if prev == 0 {
		return // the sync loop does not run: nothing exchanges, nothing fences
	}
	now := time.Now()
	if !y.lastTick.CompareAndSwap(prev, now.UnixNano()) {
		return // looked at by another at the same moment
	}
	gap := now.Sub(time.Unix(0, prev))
	if gap <= pauseAfter {
		return
	}
	y.fence.shut("paused: exchanging topic deletes with the other brokers again")
	y.fm.pauses.Inc()
	y.s.cluster.logger.Warn("this broker was paused or starved; writes wait until topic deletes are exchanged with the other brokers again",
		slog.Duration("gap", gap.Round(time.Millisecond)))
	select {
	case y.paused <- struct{}{}:
	default:
	}
}

// fenceCheck holds a write back while the write fence is shut (see
// above), then answers 503 not_ready if it is still shut.
func (s *Server) fenceCheck(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.sync == nil || strings.HasPrefix(r.URL.Path, "/v1/internal/") {
			next.ServeHTTP(w, r)
			return
		}
		// Served right after a pause, before the watchdog ran again: the
		// request learns of the pause itself, and waits as a later one.
		s.sync.checkPause()
		if why := s.sync.fence.wait(r.Context(), fenceWait); why != "" {
			s.sync.fm.refused.Inc()
			w.Header().Set("Retry-After", "1")
			writeProblem(w, r, codeNotReady, "", "not ready: "+why+"; nothing was done, retry")
			return
		}
		next.ServeHTTP(w, r)
	})
}
