package replica

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func entries(from, to uint64, term uint64) []*raft.Log {
	var out []*raft.Log
	for i := from; i <= to; i++ {
		out = append(out, &raft.Log{Index: i, Term: term, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("entry %d %s", i, bytes.Repeat([]byte("z"), int(i%13)))),
			AppendedAt: time.Unix(0, int64(i)*1000)})
	}
	return out
}

func checkRange(t *testing.T, s *fileLog, first, last uint64) {
	t.Helper()
	if f, _ := s.FirstIndex(); f != first {
		t.Fatalf("FirstIndex %d, want %d", f, first)
	}
	if l, _ := s.LastIndex(); l != last {
		t.Fatalf("LastIndex %d, want %d", l, last)
	}
	for i := first; i <= last && last > 0; i++ {
		var got raft.Log
		if err := s.GetLog(i, &got); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		want := entries(i, i, got.Term)[0]
		if got.Index != i || !bytes.Equal(got.Data, want.Data) || !got.AppendedAt.Equal(want.AppendedAt) {
			t.Fatalf("GetLog(%d) = %d %q %v", i, got.Index, got.Data, got.AppendedAt)
		}
	}
	var got raft.Log
	if err := s.GetLog(last+1, &got); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("GetLog(%d) past the end: %v", last+1, err)
	}
}

// TestFileLog: raft's log on plain files keeps what it stored across a
// reopen, cuts a torn tail, deletes prefixes and suffixes as raft asks,
// and starts again after a gap (a snapshot installed from the leader).
func TestFileLog(t *testing.T) {
	dir := t.TempDir()
	s, err := openFileLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkRange(t, s, 0, 0)
	if err := s.StoreLogs(entries(1, 10, 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLog(entries(11, 11, 1)[0]); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(entries(13, 14, 1)[:1]); err != nil {
		t.Fatal(err) // a gap: the file starts again at 13
	}
	checkRange(t, s, 13, 13)
	if err := s.StoreLogs(entries(14, 30, 2)); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(entries(30, 30, 2)); err == nil {
		t.Fatal("stored entry 30 twice")
	}
	checkRange(t, s, 13, 30)

	// A suffix conflicting with a new leader's log, then a prefix after a
	// snapshot.
	if err := s.DeleteRange(25, 30); err != nil {
		t.Fatal(err)
	}
	checkRange(t, s, 13, 24)
	if err := s.DeleteRange(13, 17); err != nil {
		t.Fatal(err)
	}
	checkRange(t, s, 18, 24)
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("n2")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get([]byte("never")); err == nil || err.Error() != "not found" {
		t.Fatalf("Get of a key never set: %v, want raft's \"not found\"", err)
	}
	s.Close()

	// A crash in the middle of a write leaves part of a frame.
	f, err := os.OpenFile(filepath.Join(dir, logFile), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{0, 0, 0, 60, 1, 2, 3, 4, 9, 9}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	s, err = openFileLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// After a reopen the prefix raft deleted may be back (it is not
	// written down); raft asks for nothing below its snapshot.
	checkRange(t, s, 13, 24)
	if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 7 {
		t.Fatalf("CurrentTerm %d, %v after reopen", v, err)
	}
	if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "n2" {
		t.Fatalf("LastVoteCand %q, %v after reopen", v, err)
	}
	if err := s.StoreLogs(entries(25, 26, 3)); err != nil {
		t.Fatalf("append after the torn tail was cut: %v", err)
	}
	checkRange(t, s, 13, 26)

	// Compaction rewrites the file without the deleted prefix.
	if err := s.DeleteRange(13, 20); err != nil {
		t.Fatal(err)
	}
	if err := s.compact(); err != nil {
		t.Fatal(err)
	}
	checkRange(t, s, 21, 26)
	if err := s.DeleteRange(21, 26); err != nil {
		t.Fatal(err)
	}
	checkRange(t, s, 0, 0)
}
