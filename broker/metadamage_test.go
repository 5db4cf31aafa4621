package broker

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postbus/postbus/broker/meta"
	"github.com/prometheus/client_golang/prometheus"
)

// TestMetaDamagedAtRunTime: meta.db damaged while the broker runs (a disk
// going bad under it). The broker used to stay ready while every timer
// write failed, and a delayed publish answered 201 although its timer
// could not be stored, so it was never delivered (S4-5). Now the first
// SQLITE_CORRUPT makes Ready fail with the way out (an ERROR line and
// postbus_meta_damaged say so too), and a delayed publish is refused
// with nothing stored; a plain one is still taken.
func TestMetaDamagedAtRunTime(t *testing.T) {
	const seed = 3
	ctx := context.Background()
	dir := t.TempDir()
	cfg, logs := withLogs(testConfig(t, dir))
	b := openBroker(t, cfg)
	publish(t, b, "orders", msg("before"))
	// Timers far ahead (and past the log's end, so nothing moves them):
	// a file several times SQLite's page cache, so reads after the damage
	// go to the disk.
	timers := make([]meta.Timer, 200000)
	at := time.Now().Add(time.Hour)
	for i := range timers {
		timers[i] = meta.Timer{LogOffset: 1<<40 + int64(i), DeliverAt: at, Owner: "orders"}
	}
	if err := b.meta.AddTimers(ctx, timers); err != nil {
		t.Fatal(err)
	}
	b.Close()
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	b = openBroker(t, cfg)
	if err := b.Ready(); err != nil {
		t.Fatalf("Ready before the damage: %v", err)
	}

	path := filepath.Join(dir, "meta.db")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, fi.Size()-4096) // all but the header page
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := range junk {
		junk[i] = byte(rng.Uint32())
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(junk, 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()

	// Any read of the timers meets the damage (the broker's own loops may
	// meet it first).
	if _, err := b.meta.PendingTimers(ctx); !meta.IsCorrupt(err) {
		t.Fatalf("seed %d: PendingTimers on the damaged file: %v, want SQLITE_CORRUPT", seed, err)
	}
	err = b.Ready()
	if !errors.Is(err, meta.ErrCorrupt) || !strings.Contains(err.Error(), "--rebuild-metadata") {
		t.Fatalf("Ready after the damage: %v, want meta.ErrCorrupt naming --rebuild-metadata", err)
	}
	if v := gatherValue(t, reg, "postbus_meta_damaged"); v != 1 {
		t.Errorf("postbus_meta_damaged = %v, want 1", v)
	}
	if !strings.Contains(logs.String(), "metadata database is damaged") {
		t.Errorf("no ERROR line for the damage:\n%s", logs)
	}

	end := b.log.Committed()
	_, err = b.Publish(ctx, "orders", []*Message{{Body: []byte("later"), DeliverAt: time.Now().Add(time.Minute)}})
	if CodeOf(err) != CodeUnavailable {
		t.Fatalf("delayed publish with meta.db damaged: %v, want %s", err, CodeUnavailable)
	}
	if got := b.log.Committed(); got != end {
		t.Fatalf("the refused delayed publish stored %d bytes", got-end)
	}
	publish(t, b, "orders", msg("plain"))
}
