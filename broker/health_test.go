package broker

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func gatherValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		if m.GetCounter() != nil {
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// TestPersistentCheckpointFailureReported: checkpoints that keep failing
// make the broker unready and show in /metrics, and it is ready again as
// soon as one succeeds; publishes go on throughout.
func TestPersistentCheckpointFailureReported(t *testing.T) {
	cfg, logs := withLogs(testConfig(t, t.TempDir()))
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	b := openBroker(t, cfg)
	publish(t, b, "t", msg("before"))
	if err := b.Ready(); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	// A directory where the checkpoint's temp file goes makes every
	// checkpoint fail, as a full or failing disk would.
	blocker := filepath.Join(cfg.Dir, checkpointFile+".tmp")
	if err := os.Mkdir(blocker, 0o755); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "t", msg("during"))
	waitFor(t, 10*time.Second, "the broker to report itself unready", func() bool { return b.Ready() != nil })
	if err := b.Ready(); !strings.Contains(err.Error(), "indexes cannot be checkpointed") {
		t.Fatalf("Ready: %v", err)
	}
	if n := gatherValue(t, reg, "postbus_checkpoint_failing"); n < checkpointFailLimit {
		t.Errorf("postbus_checkpoint_failing = %v, want >= %d", n, checkpointFailLimit)
	}
	if n := gatherValue(t, reg, "postbus_checkpoint_failures_total"); n < checkpointFailLimit {
		t.Errorf("postbus_checkpoint_failures_total = %v, want >= %d", n, checkpointFailLimit)
	}
	if !strings.Contains(logs.String(), `level=ERROR msg="checkpoints keep failing`) {
		t.Errorf("no ERROR line:\n%s", logs)
	}
	publish(t, b, "t", msg("still accepted"))

	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the broker to be ready again", func() bool { return b.Ready() == nil })
	if n := gatherValue(t, reg, "postbus_checkpoint_failing"); n != 0 {
		t.Errorf("postbus_checkpoint_failing = %v once a checkpoint succeeded, want 0", n)
	}
	if !strings.Contains(logs.String(), `msg="checkpoint succeeded again"`) {
		t.Errorf("recovery not logged:\n%s", logs)
	}
}

// TestStartsWhenCheckpointCannotBeWritten: recovery ends with a
// checkpoint; when it cannot be written (a full disk) the broker used to
// refuse to start. It starts, serves, and checkpoints once it can.
func TestStartsWhenCheckpointCannotBeWritten(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	b := openBroker(t, cfg)
	id := publish(t, b, "t", msg("kept"))[0].ID
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(cfg.Dir, checkpointFile)); err != nil {
		t.Fatal(err)
	}
	blocker := filepath.Join(cfg.Dir, checkpointFile+".tmp")
	if err := os.Mkdir(blocker, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, logs := withLogs(cfg)
	b = openBroker(t, cfg)
	if m, err := b.Message(context.Background(), id); err != nil || string(m.Body) != "kept" {
		t.Fatalf("message after a start without checkpoint: %v", err)
	}
	if !strings.Contains(logs.String(), `level=ERROR msg="checkpoint after recovery failed`) {
		t.Errorf("no ERROR line:\n%s", logs)
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a checkpoint", func() bool {
		_, err := os.Stat(filepath.Join(cfg.Dir, checkpointFile))
		return err == nil
	})
}
