package vfs

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func newFault(t *testing.T, seed uint64) (*Fault, string) {
	t.Helper()
	base := t.TempDir()
	root := filepath.Join(base, "data")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := NewFault(filepath.Join(base, "trash"), seed)
	if err != nil {
		t.Fatal(err)
	}
	return f, root
}

func mustOpen(t *testing.T, fsys FS, path string) *os.File {
	t.Helper()
	f, err := fsys.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func mustWrite(t *testing.T, fsys FS, f *os.File, b []byte, off int64) {
	t.Helper()
	if _, err := fsys.WriteAt(f, b, off); err != nil {
		t.Fatal(err)
	}
}

// TestFaultRestoreKeepsSyncedAndOnlyWritten writes random overlapping ranges
// to a file, syncing now and then, and checks over many seeds that Restore
// keeps every byte of the last synced image and that any other byte it
// leaves was written there by an unsynced write (or is zero past the synced
// end): nothing synced is lost and nothing is invented. Across the seeds it
// must also have lost some unsynced write and kept some, or it tests nothing.
func TestFaultRestoreKeepsSyncedAndOnlyWritten(t *testing.T) {
	var lostSome, keptSome bool
	for seed := uint64(1); seed <= 200; seed++ {
		fsys, root := newFault(t, seed)
		path := filepath.Join(root, "f")
		file := mustOpen(t, fsys, path)
		if err := fsys.SyncDir(root); err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(seed, 7))
		var synced []byte           // the image at the last sync
		cur := []byte{}             // the image now
		after := map[int64][]byte{} // values written at each position since the last sync
		for range 1 + rng.IntN(12) {
			off := int64(rng.IntN(300))
			b := make([]byte, 1+rng.IntN(100))
			for i := range b {
				b[i] = byte(1 + rng.IntN(255))
			}
			mustWrite(t, fsys, file, b, off)
			if end := int(off) + len(b); end > len(cur) {
				cur = append(cur, make([]byte, end-len(cur))...)
			}
			copy(cur[off:], b)
			for i := range b {
				after[off+int64(i)] = append(after[off+int64(i)], b[i])
			}
			if rng.IntN(4) == 0 {
				if err := fsys.Sync(file); err != nil {
					t.Fatal(err)
				}
				synced = bytes.Clone(cur)
				clear(after)
			}
		}
		file.Close()
		if err := fsys.Restore(root); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if len(got) < len(synced) || len(got) > len(cur) {
			t.Fatalf("seed %d: restored %d bytes, synced %d, written %d", seed, len(got), len(synced), len(cur))
		}
		for i, c := range got {
			var was byte
			if i < len(synced) {
				was = synced[i]
			}
			if c == was {
				continue
			}
			if !bytes.Contains(after[int64(i)], []byte{c}) {
				t.Fatalf("seed %d: byte %d is %d: neither synced (%d) nor written since", seed, i, c, was)
			}
		}
		if bytes.Equal(got, cur) {
			keptSome = true
		} else {
			lostSome = true
		}
	}
	if !lostSome || !keptSome {
		t.Fatalf("over 200 seeds: lost some unsynced write %v, kept all %v; want both", lostSome, keptSome)
	}
}

// TestFaultEntriesNeedDirSync: a file created, renamed or removed without a
// sync of its directory may come back as it was; with one, never.
func TestFaultEntriesNeedDirSync(t *testing.T) {
	for _, dirSync := range []bool{false, true} {
		t.Run(fmt.Sprintf("dirsync=%v", dirSync), func(t *testing.T) {
			outcomes := map[string]bool{}
			for seed := uint64(1); seed <= 64; seed++ {
				fsys, root := newFault(t, seed)
				old := mustOpen(t, fsys, filepath.Join(root, "old"))
				mustWrite(t, fsys, old, []byte("old"), 0)
				gone := mustOpen(t, fsys, filepath.Join(root, "gone"))
				mustWrite(t, fsys, gone, []byte("gone"), 0)
				for _, f := range []*os.File{old, gone} {
					if err := fsys.Sync(f); err != nil {
						t.Fatal(err)
					}
				}
				if err := fsys.SyncDir(root); err != nil {
					t.Fatal(err)
				}
				// Replace old by new through a rename, create extra, remove gone.
				nf := mustOpen(t, fsys, filepath.Join(root, "new.tmp"))
				mustWrite(t, fsys, nf, []byte("new"), 0)
				if err := fsys.Sync(nf); err != nil {
					t.Fatal(err)
				}
				if err := fsys.Rename(filepath.Join(root, "new.tmp"), filepath.Join(root, "old")); err != nil {
					t.Fatal(err)
				}
				extra := mustOpen(t, fsys, filepath.Join(root, "extra"))
				if err := fsys.Sync(extra); err != nil {
					t.Fatal(err)
				}
				if err := fsys.Remove(filepath.Join(root, "gone")); err != nil {
					t.Fatal(err)
				}
				if dirSync {
					if err := fsys.SyncDir(root); err != nil {
						t.Fatal(err)
					}
				}
				for _, f := range []*os.File{old, gone, nf, extra} {
					f.Close()
				}
				if err := fsys.Restore(root); err != nil {
					t.Fatal(err)
				}
				oldBody, err := os.ReadFile(filepath.Join(root, "old"))
				if err != nil {
					t.Fatalf("seed %d: old lost: %v", seed, err)
				}
				_, extraErr := os.Stat(filepath.Join(root, "extra"))
				_, goneErr := os.Stat(filepath.Join(root, "gone"))
				state := fmt.Sprintf("old=%s extra=%v gone=%v", oldBody, extraErr == nil, goneErr == nil)
				if dirSync && state != "old=new extra=true gone=false" {
					t.Fatalf("seed %d: after a dir sync, restored %s", seed, state)
				}
				if string(oldBody) != "old" && string(oldBody) != "new" {
					t.Fatalf("seed %d: old holds %q", seed, oldBody)
				}
				outcomes[state] = true
			}
			if !dirSync && len(outcomes) < 4 {
				t.Fatalf("without a dir sync, 64 seeds restored only %v", outcomes)
			}
		})
	}
}

// TestFaultCrashStopsEverything: the crashing write is torn, the operations
// after it fail with ErrCrashed and change nothing, OnCrash runs once.
func TestFaultCrashStopsEverything(t *testing.T) {
	fsys, root := newFault(t, 3)
	f := mustOpen(t, fsys, filepath.Join(root, "f"))
	crashes := 0
	fsys.OnCrash(func() { crashes++ })
	fsys.CrashAfter(2)
	mustWrite(t, fsys, f, []byte("aaaa"), 0)
	n, err := fsys.WriteAt(f, bytes.Repeat([]byte("b"), 100), 4)
	if !errors.Is(err, ErrCrashed) || n > 100 {
		t.Fatalf("crashing write: %d, %v", n, err)
	}
	if _, err := fsys.WriteAt(f, []byte("c"), 0); !errors.Is(err, ErrCrashed) {
		t.Fatalf("write after crash: %v", err)
	}
	if err := fsys.Sync(f); !errors.Is(err, ErrCrashed) {
		t.Fatalf("sync after crash: %v", err)
	}
	if _, err := fsys.OpenFile(filepath.Join(root, "g"), os.O_CREATE|os.O_RDWR, 0o644); !errors.Is(err, ErrCrashed) {
		t.Fatalf("create after crash: %v", err)
	}
	got, _ := os.ReadFile(filepath.Join(root, "f"))
	if want := append([]byte("aaaa"), bytes.Repeat([]byte("b"), n)...); !bytes.Equal(got, want) {
		t.Fatalf("after the crash the file holds %q, want %q", got, want)
	}
	fsys.Crash()
	if crashes != 1 {
		t.Fatalf("OnCrash ran %d times", crashes)
	}
	f.Close()
	if err := fsys.Restore(root); err != nil {
		t.Fatal(err)
	}
	if fsys.Crashed() {
		t.Fatal("still crashed after Restore")
	}
	f2 := mustOpen(t, fsys, filepath.Join(root, "f"))
	mustWrite(t, fsys, f2, []byte("x"), 0) // usable again
}

// TestFaultFullAndInject: a full disk refuses growing writes with ENOSPC but
// not writes inside the file; an injected short write puts its prefix.
func TestFaultFullAndInject(t *testing.T) {
	fsys, root := newFault(t, 4)
	f := mustOpen(t, fsys, filepath.Join(root, "f"))
	if err := fsys.Allocate(f, 8); err != nil {
		t.Fatal(err)
	}
	fsys.SetFull(true)
	mustWrite(t, fsys, f, []byte("12345678"), 0)
	n, err := fsys.WriteAt(f, []byte("abcd"), 6)
	if !errors.Is(err, syscall.ENOSPC) || n != 2 {
		t.Fatalf("growing write on a full disk: %d, %v", n, err)
	}
	if err := fsys.Allocate(f, 16); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("allocate on a full disk: %v", err)
	}
	fsys.SetFull(false)
	boom := errors.New("boom")
	fsys.SetInject(func(op Op) error {
		if op.Kind == OpWrite {
			return &ShortWrite{N: 3, Err: boom}
		}
		return nil
	})
	n, err = fsys.WriteAt(f, []byte("zzzzzz"), 8)
	if !errors.Is(err, boom) || n != 3 {
		t.Fatalf("short write: %d, %v", n, err)
	}
	fsys.SetInject(nil)
	got, _ := os.ReadFile(filepath.Join(root, "f"))
	if string(got) != "123456abzzz" {
		t.Fatalf("file holds %q", got)
	}
}

// TestZeroRange: the OS and the Fault both make a range read as zeros
// without changing the file's size; on the Fault a synced zeroing is kept,
// and an unsynced one is, like any write, kept or undone by a crash, chunk
// by chunk, never touching bytes outside its range.
func TestZeroRange(t *testing.T) {
	data := bytes.Repeat([]byte{0xab}, 200<<10)
	for _, tc := range []struct {
		name  string
		sync  bool
		fault bool
	}{
		{name: "os"},
		{name: "fault, synced", fault: true, sync: true},
		{name: "fault, crash before sync", fault: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fault, root := newFault(t, 1)
			var fsys FS = OS
			if tc.fault {
				fsys = fault
			}
			path := filepath.Join(root, "f")
			file := mustOpen(t, fsys, path)
			mustWrite(t, fsys, file, data, 0)
			if err := fsys.Sync(file); err != nil {
				t.Fatal(err)
			}
			if err := fsys.SyncDir(root); err != nil {
				t.Fatal(err)
			}
			const off, n = 1000, 150 << 10 // across 64 KiB chunks
			if err := fsys.ZeroRange(file, off, n); err != nil {
				t.Fatal(err)
			}
			want := bytes.Clone(data)
			clear(want[off : off+n])
			if tc.sync {
				if err := fsys.Sync(file); err != nil {
					t.Fatal(err)
				}
			}
			crashed := tc.fault && !tc.sync
			if crashed {
				file.Close()
				if err := fault.Restore(root); err != nil {
					t.Fatal(err)
				}
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if crashed && len(got) == len(data) && bytes.Equal(got[:off], data[:off]) && bytes.Equal(got[off+n:], data[off+n:]) {
				for _, c := range got[off : off+n] {
					if c != 0 && c != 0xab {
						t.Fatalf("byte %#x after the crash: neither written nor zeroed", c)
					}
				}
				return
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("file after ZeroRange differs from what it should hold (%d bytes, want %d)", len(got), len(want))
			}
		})
	}
}
