package broker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestRetentionPastDamagedSegment: a sealed segment whose first page was
// zeroed used to make every retention check fail ("read first record of
// segment ...: no frame") and drop nothing, not even the older segment
// before it, so the disk filled. Now the damage is quarantined, the segment
// is dated by the next readable record, and expired segments go.
func TestRetentionPastDamagedSegment(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	var mu sync.Mutex
	now := time.Now()
	cfg.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	cfg.Retention = time.Hour
	b := openBroker(t, cfg)
	var old []string
	for len(b.log.Segments()) < 4 {
		old = append(old, publish(t, b, "t", &Message{Body: make([]byte, 100<<10)})[0].ID)
	}
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	segs := b.log.Segments()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "commitlog", fmt.Sprintf("%020d", segs[1].Base)), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	b = openBroker(t, cfg)
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	fresh := publish(t, b, "t", msg("fresh"))[0]
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	if err := b.applyRetention(); err != nil {
		t.Fatalf("retention: %v", err)
	}
	if min := b.log.MinOffset(); min < segs[len(segs)-2].End {
		t.Fatalf("log starts at %d after retention, want every expired sealed segment gone (segments were %v)", min, segs)
	}
	if _, err := b.Message(ctx, old[0]); !errors.Is(err, ErrMessageNotFound) {
		t.Fatalf("expired message: err = %v", err)
	}
	if m, err := b.Message(ctx, fresh.ID); err != nil || string(m.Body) != "fresh" {
		t.Fatalf("fresh message: %v", err)
	}
}
