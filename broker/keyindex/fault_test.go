package keyindex

import (
	"errors"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
)

// faulty makes x's writes and fsyncs fail while *on is true: a write fails
// after writing half of what it was given (ENOSPC mid-write), an fsync
// fails with EIO.
func faulty(x *Index, writes, syncs *atomic.Bool) {
	x.writeAt = func(f *os.File, p []byte, off int64) (int, error) {
		if writes.Load() {
			n, _ := f.WriteAt(p[:len(p)/2], off)
			return n, syscall.ENOSPC
		}
		return f.WriteAt(p, off)
	}
	x.syncFile = func(f *os.File) error {
		if syncs.Load() {
			return syscall.EIO
		}
		return f.Sync()
	}
}

// TestWriteErrorClearsOnceCauseIsGone: after ENOSPC or EIO the index used
// to keep its first error forever, so every later Flush (every broker
// checkpoint) failed until a restart. Now Flush fails while the cause
// lasts, then rewrites the log and succeeds; everything added, before,
// during and after the error, survives a reopen.
func TestWriteErrorClearsOnceCauseIsGone(t *testing.T) {
	for _, tc := range []struct {
		name         string
		writes, sync bool
		mem          int // small enough that the failing adds also seal
	}{
		{name: "write ENOSPC", writes: true, mem: 1 << 20},
		{name: "fsync EIO", sync: true, mem: 1 << 20},
		{name: "seal fails", sync: true, mem: 300},
		{name: "write and fsync", writes: true, sync: true, mem: 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			x := openIndex(t, dir, tc.mem)
			var writes, syncs atomic.Bool
			faulty(x, &writes, &syncs)
			m := &model{}
			fill(x, m, 0, 100, 7)
			if err := x.Flush(); err != nil {
				t.Fatalf("Flush before the fault: %v", err)
			}

			writes.Store(tc.writes)
			syncs.Store(tc.sync)
			fill(x, m, 100, 1700, 7) // 3400 records > logBufSize: Add writes too
			for i := range 3 {
				if err := x.Flush(); err == nil {
					t.Fatalf("Flush %d during the fault: nil error", i)
				} else if !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EIO) {
					t.Fatalf("Flush %d during the fault: %v, want ENOSPC or EIO", i, err)
				}
			}
			if x.Stats().WriteErrors == 0 {
				t.Fatal("Stats().WriteErrors = 0 during the fault")
			}

			writes.Store(false)
			syncs.Store(false)
			fill(x, m, 1800, 50, 7)
			if err := x.Flush(); err != nil {
				t.Fatalf("Flush once the fault is gone: %v", err)
			}
			fill(x, m, 1850, 50, 7)
			if err := x.Flush(); err != nil {
				t.Fatalf("second Flush once the fault is gone: %v", err)
			}
			hashes := hashesFor(1900, 7)
			checkAll(t, x, m, hashes, 1<<62)
			if err := x.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			y := openIndex(t, dir, tc.mem)
			checkAll(t, y, m, hashes, 1<<62)
		})
	}
}

// TestTruncateFromRepairsWriteError: recovery's TruncateFrom works on an
// index in a write error once the cause is gone, instead of failing.
func TestTruncateFromRepairsWriteError(t *testing.T) {
	dir := t.TempDir()
	x := openIndex(t, dir, 1<<20)
	var writes, syncs atomic.Bool
	faulty(x, &writes, &syncs)
	m := &model{}
	fill(x, m, 0, 100, 5)
	syncs.Store(true)
	if err := x.Flush(); err == nil {
		t.Fatal("Flush with a failing fsync: nil error")
	}
	syncs.Store(false)
	cut := int64(1000 + 100*60)
	if err := x.TruncateFrom(cut); err != nil {
		t.Fatalf("TruncateFrom after the fault: %v", err)
	}
	checkAll(t, x, m, hashesFor(100, 5), cut)
	if err := x.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	checkAll(t, openIndex(t, dir, 1<<20), m, hashesFor(100, 5), cut)
}
