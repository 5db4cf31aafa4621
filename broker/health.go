package broker

import (
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// checkpointFailLimit is how many checkpoints in a row may fail before the
// broker reports itself unready. One failure is often a passing cause (a
// disk full for a moment); the key index and consume queues retry on the
// next checkpoint and clear their errors once the cause is gone.
const checkpointFailLimit = 3

// checkpointHealth counts failed checkpoints. While they fail the indexes
// are not durable past the last good checkpoint, so the re-dispatch after a
// crash grows and fired timers are not purged: a persistent failure must
// be seen (ERROR logs, postbus_checkpoint_failures_total and
// postbus_checkpoint_failing in /metrics, /readyz).
type checkpointHealth struct {
	mu       sync.Mutex
	failing  int       // consecutive failures; guarded by mu
	since    time.Time // first of them; guarded by mu
	last     error     // latest; guarded by mu
	failures int64     // all failures; guarded by mu
}

// checkpoint flushes the derived indexes and records the point recovery
// re-dispatches from, keeping count of failures.
func (b *Broker) checkpoint() error {
	err := b.writeCheckpoint()
	b.ckpt.mu.Lock()
	defer b.ckpt.mu.Unlock()
	if err != nil {
		if b.ckpt.failing == 0 {
			b.ckpt.since = b.now()
		}
		b.ckpt.failing++
		b.ckpt.failures++
		b.ckpt.last = err
		if b.ckpt.failing == checkpointFailLimit {
			b.logger.Error("checkpoints keep failing: reporting not ready until one succeeds",
				slog.Int("failures", b.ckpt.failing), slog.Time("since", b.ckpt.since), slog.Any("err", err))
		}
		return err
	}
	if b.ckpt.failing > 0 {
		b.logger.Info("checkpoint succeeded again", slog.Int("after_failures", b.ckpt.failing),
			slog.Duration("failing_for", b.now().Sub(b.ckpt.since).Round(time.Millisecond)))
		b.ckpt.failing, b.ckpt.last = 0, nil
	}
	return nil
}

// err is the readiness error of a persistent checkpoint failure, or nil.
func (h *checkpointHealth) err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failing < checkpointFailLimit {
		return nil
	}
	return fmt.Errorf("indexes cannot be checkpointed: %d attempts failed since %s: %w",
		h.failing, h.since.UTC().Format(time.RFC3339), h.last)
}

// counts returns the consecutive and total failures, for /metrics.
func (h *checkpointHealth) counts() (failing int, total int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failing, h.failures
}
