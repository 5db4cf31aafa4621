package consumequeue

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWriteErrorNotSticky guards the consume queues against the key
// index's old fault (issue 10, fault 9): an error writing a queue's files
// must last only as long as its cause. Here the queue's directory cannot
// be created (a file is in the way, as ENOSPC or EIO would stop it); once
// it can, Flush succeeds and every entry appended before, during and after
// survives a reopen.
func TestWriteErrorNotSticky(t *testing.T) {
	for _, tc := range []struct {
		name    string
		perFile int64
		spill   int64 // entries appended while failing: past QueueBuffer, Append spills too
	}{
		{name: "flush fails", perFile: 1000, spill: 10},
		{name: "append spill fails", perFile: 100, spill: DefaultQueueBuffer + 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir, tc.perFile)
			appendN(t, s, "ok", 0, 0, 5)
			blocker := filepath.Join(dir, "t")
			if err := os.WriteFile(blocker, []byte("in the way"), 0o644); err != nil {
				t.Fatal(err)
			}
			var failed int
			next := int64(0)
			for next < tc.spill {
				if err := s.Append("t", 0, next, entryAt(next)); err != nil {
					failed++ // not appended: the same offset is tried again later
					break
				}
				next++
			}
			if err := s.Flush(); err == nil {
				t.Fatal("Flush with the queue directory blocked: nil error")
			}
			if err := s.Flush(); err == nil {
				t.Fatal("second Flush with the queue directory blocked: nil error")
			}
			if err := os.Remove(blocker); err != nil {
				t.Fatal(err)
			}
			appendN(t, s, "t", 0, next, tc.spill+20)
			if err := s.Flush(); err != nil {
				t.Fatalf("Flush once the cause is gone: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = openStore(t, dir, tc.perFile)
			checkRange(t, s, "t", 0, 0, tc.spill+20, 64)
			checkRange(t, s, "ok", 0, 0, 5, 64)
			t.Logf("appends refused while blocked: %d", failed)
		})
	}
}
