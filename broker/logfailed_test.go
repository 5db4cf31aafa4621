package broker

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postbus/postbus/broker/commitlog"
	"github.com/postbus/postbus/broker/internal/vfs"
)

// TestCommitlogFailureStopsWrites: after a failed fsync of the commitlog
// (or a failed write whose range could not be zeroed again) the bytes of
// the publish in flight may or may not be on disk. The broker used to stay
// ready and keep the commitlog's "nothing was stored" promise for such a
// publish, and gave its queue offsets back. Now the publish answers
// unavailable with an unknown outcome (wrapping commitlog.ErrFailed), the
// broker refuses every later publish, /readyz and postbus_commitlog_failed
// say so until a restart, and after the restart (clean, or a power cut
// that keeps only what was synced) every record holds its own queue
// offset: the one in doubt is there once, at the offset it was given, or
// not at all, and the next publish follows it.
func TestCommitlogFailureStopsWrites(t *testing.T) {
	// Everything here goes to the first segment (a file's name is the one
	// it was opened with: the first segment was prepared as a .next file,
	// like the one being prepared to follow it).
	segmentFile := func(op vfs.Op) bool {
		return filepath.Base(filepath.Dir(op.Path)) == "commitlog" && strings.HasPrefix(filepath.Base(op.Path), "00000000000000000000")
	}
	tests := []struct {
		name   string
		inject func(armed *atomic.Int32) func(vfs.Op) error
	}{
		{"fsync fails", func(armed *atomic.Int32) func(vfs.Op) error {
			return func(op vfs.Op) error {
				if op.Kind == vfs.OpSync && segmentFile(op) && armed.Add(-1) >= 0 {
					return syscall.EIO
				}
				return nil
			}
		}},
		{"write and its undo fail", func(armed *atomic.Int32) func(vfs.Op) error {
			return func(op vfs.Op) error {
				if op.Kind != vfs.OpWrite || !segmentFile(op) {
					return nil
				}
				switch armed.Add(-1) {
				case 1: // the batch reaches the file, and the write reports EIO
					return &vfs.ShortWrite{N: op.Len, Err: syscall.EIO}
				case 0: // zeroing it again fails
					return syscall.EIO
				}
				return nil
			}
		}},
	}
	for _, tt := range tests {
		for _, crash := range []bool{false, true} {
			name := tt.name + "/clean restart"
			if crash {
				name = tt.name + "/power cut"
			}
			t.Run(name, func(t *testing.T) {
				ctx := context.Background()
				base := t.TempDir()
				fsys, err := vfs.NewFault(filepath.Join(base, "trash"), 1)
				if err != nil {
					t.Fatal(err)
				}
				cfg := testConfig(t, filepath.Join(base, "data"))
				cfg.FS = fsys
				reg := prometheus.NewRegistry()
				cfg.Registerer = reg
				b, err := Open(ctx, cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer func() { b.Close() }()
				if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
					t.Fatal(err)
				}
				first := publish(t, b, "t", msg("before"))[0]

				var armed atomic.Int32
				armed.Store(1)
				if tt.name == "write and its undo fail" {
					armed.Store(2)
				}
				fsys.SetInject(tt.inject(&armed))
				_, err = b.Publish(ctx, "t", []*Message{msg("in doubt")})
				if CodeOf(err) != CodeUnavailable || !errors.Is(err, commitlog.ErrFailed) {
					t.Fatalf("publish meeting the failure: %v, want %s wrapping commitlog.ErrFailed", err, CodeUnavailable)
				}
				fsys.SetInject(nil)
				if err := b.Ready(); err == nil || !errors.Is(err, commitlog.ErrFailed) {
					t.Fatalf("Ready() = %v after the commitlog failed, want its failure", err)
				}
				if v := gatherValue(t, reg, "postbus_commitlog_failed"); v != 1 {
					t.Fatalf("postbus_commitlog_failed = %v, want 1", v)
				}
				// The cause is gone, but nothing after a failed fsync can be
				// trusted: writes stay refused until a restart.
				if _, err := b.Publish(ctx, "t", []*Message{msg("after")}); CodeOf(err) != CodeUnavailable || !errors.Is(err, commitlog.ErrFailed) {
					t.Fatalf("publish after the failure: %v, want %s wrapping commitlog.ErrFailed", err, CodeUnavailable)
				}
				if crash {
					fsys.Crash()
				}
				_ = b.Close() // reports the failure
				if crash {
					if err := fsys.Restore(cfg.Dir); err != nil {
						t.Fatal(err)
					}
				}
				cfg.Registerer = nil
				if b, err = Open(ctx, cfg); err != nil {
					t.Fatalf("reopen: %v", err)
				}
				if err := b.Ready(); err != nil {
					t.Fatalf("not ready after the restart: %v", err)
				}
				next := publish(t, b, "t", msg("next"))[0]
				if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
					t.Fatal(err)
				}
				all, _ := ParseFilter("*")
				got, _, err := b.ReadQueue("t", 0, 0, 10, all)
				if err != nil {
					t.Fatal(err)
				}
				var bodies []string
				for i, m := range got {
					if m.QueueOffset != int64(i) {
						t.Fatalf("queue entry %d has queue offset %d", i, m.QueueOffset)
					}
					bodies = append(bodies, string(m.Body))
				}
				want := []string{"before", "next"}
				if len(got) == 3 {
					want = []string{"before", "in doubt", "next"}
				}
				if strings.Join(bodies, ",") != strings.Join(want, ",") || got[0].ID != first.ID || next.QueueOffset != int64(len(got)-1) {
					t.Fatalf("queue after the restart holds %q, next published at %d; want %q with the next at %d",
						bodies, next.QueueOffset, want, len(want)-1)
				}
				if crash && len(got) != 2 {
					t.Fatalf("a power cut kept the publish whose fsync failed: %q", bodies)
				}
			})
		}
	}
}
