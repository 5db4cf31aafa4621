package commitlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestOpenOnTornTail damages the tail of the last segment in the ways a crash
// or a bad disk can, reopens, and checks that the good prefix is intact, the
// bad part is gone for good, and the log goes on.
func TestOpenOnTornTail(t *testing.T) {
	tests := []struct {
		name     string
		damage   func(b []byte, last record) // b is the whole last segment file
		keepLast bool                        // whether the last frame survives
		wantWarn bool
	}{
		{
			name: "cut mid-frame",
			damage: func(b []byte, last record) {
				mid := last.off%testSegmentSize + headerSize + int64(len(last.payload))/2
				clear(b[mid : last.off%testSegmentSize+headerSize+int64(len(last.payload))])
			},
			wantWarn: true,
		},
		{
			name: "zeroed last frame",
			damage: func(b []byte, last record) {
				clear(b[last.off%testSegmentSize:])
			},
		},
		{
			name: "flipped payload byte",
			damage: func(b []byte, last record) {
				b[last.off%testSegmentSize+headerSize+3] ^= 0x40
			},
			wantWarn: true,
		},
		{
			name: "garbage length",
			damage: func(b []byte, last record) {
				binary.BigEndian.PutUint32(b[last.off%testSegmentSize:], 0xfffffff0)
			},
			wantWarn: true,
		},
		{
			name: "length past the segment",
			damage: func(b []byte, last record) {
				binary.BigEndian.PutUint32(b[last.off%testSegmentSize:], testSegmentSize-12)
			},
			wantWarn: true,
		},
		{
			name: "bad magic",
			damage: func(b []byte, last record) {
				b[last.off%testSegmentSize+5] ^= 0xff
			},
			wantWarn: true,
		},
		{
			name: "garbage after the last frame",
			damage: func(b []byte, last record) {
				at := last.off%testSegmentSize + headerSize + int64(len(last.payload))
				for i := range int64(300) {
					b[at+i] = byte(i*7 + 1)
				}
			},
			keepLast: true,
			wantWarn: true,
		},
		{
			name: "valid stale frame behind a torn one",
			damage: func(b []byte, last record) {
				// A later frame reached the disk, the one before it did not:
				// the later one must not come back after the next append.
				at := last.off % testSegmentSize
				n := headerSize + int64(len(last.payload))
				stale := bytes.Clone(b[at : at+n])
				clear(b[at : at+n])
				copy(b[at+n+100:], stale)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, logs := testConfig(t, dir)
			l := openLog(t, cfg)
			// Large enough to roll twice: the damaged segment is not the first.
			recs := appendRecords(t, l, 0, 210)
			closeLog(t, l)
			last := recs[len(recs)-1]
			if len(last.payload) < 100 {
				t.Fatalf("last payload is %d bytes: too short to tear", len(last.payload))
			}
			segBase := last.off - last.off%testSegmentSize
			if segBase < 2*testSegmentSize {
				t.Fatalf("last frame in segment %d: want at least the third", segBase)
			}
			if room := testSegmentSize - last.off%testSegmentSize; room < 4*int64(len(last.payload))+400 {
				t.Fatalf("last frame too close to the segment end (%d bytes left) for the damage patterns", room)
			}

			path := segmentPath(dir, segBase)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			tt.damage(b, last)
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}

			want := recs
			if !tt.keepLast {
				want = recs[:len(recs)-1]
			}
			wantEnd := want[len(want)-1].off + headerSize + int64(len(want[len(want)-1].payload))

			l = openLog(t, cfg)
			if got := l.Committed(); got != wantEnd {
				t.Fatalf("Committed after recovery = %d, want %d", got, wantEnd)
			}
			checkRecords(t, l, want)
			// Only recovery's own warning counts: with 64 KiB segments the
			// appends above may also outrun segment preparation, which warns.
			if warned := strings.Contains(logs.String(), "cutting torn tail"); warned != tt.wantWarn {
				t.Fatalf("warned = %v, want %v; log:\n%s", warned, tt.wantWarn, logs.String())
			}
			// The tail is zero on disk, so nothing stale can come back.
			b, err = os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(b)) != testSegmentSize {
				t.Fatalf("segment is %d bytes after recovery", len(b))
			}
			if i := bytes.IndexFunc(b[wantEnd-segBase:], func(r rune) bool { return r != 0 }); i >= 0 {
				t.Fatalf("non-zero byte at %d after the recovered end %d", wantEnd+int64(i), wantEnd)
			}

			// New appends work and survive another reopen.
			more := appendRecords(t, l, len(recs), 60)
			if more[0].off != wantEnd {
				t.Fatalf("first append after recovery at %d, want %d", more[0].off, wantEnd)
			}
			closeLog(t, l)
			l = openLog(t, cfg)
			checkRecords(t, l, append(want, more...))
		})
	}
}

// TestOpenAfterInterruptedRoll covers crashes between creating a new segment
// and writing to it: the empty newest file is removed and its predecessor,
// whose tail may not have been fsynced, is recovered instead.
func TestOpenAfterInterruptedRoll(t *testing.T) {
	tests := []struct {
		name string
		size int64 // size of the stray newest segment file
	}{
		{"created, not preallocated", 0},
		{"partly preallocated", 4096},
		{"preallocated", testSegmentSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, logs := testConfig(t, dir)
			l := openLog(t, cfg)
			recs := appendRecords(t, l, 0, 100)
			closeLog(t, l)
			last := recs[len(recs)-1]
			stray := last.off - last.off%testSegmentSize + testSegmentSize
			if err := os.WriteFile(segmentPath(dir, stray), make([]byte, tt.size), 0o644); err != nil {
				t.Fatal(err)
			}

			l = openLog(t, cfg)
			if _, err := os.Stat(segmentPath(dir, stray)); !os.IsNotExist(err) {
				t.Fatalf("stray segment still there: %v", err)
			}
			if !strings.Contains(logs.String(), "interrupted roll") {
				t.Fatalf("no warning about the stray segment; log:\n%s", logs.String())
			}
			checkRecords(t, l, recs)
			more := appendRecords(t, l, len(recs), 100) // rolls again
			closeLog(t, l)
			l = openLog(t, cfg)
			checkRecords(t, l, append(recs, more...))
		})
	}
}

// TestOpenOnlySegmentNotPreallocated: a crash while creating the very first
// segment leaves a short file; Open must preallocate it and go on.
func TestOpenOnlySegmentNotPreallocated(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := testConfig(t, dir)
	if err := os.WriteFile(segmentPath(dir, 0), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l := openLog(t, cfg)
	fi, err := os.Stat(segmentPath(dir, 0))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != testSegmentSize {
		t.Fatalf("segment is %d bytes, want %d", fi.Size(), testSegmentSize)
	}
	recs := appendRecords(t, l, 0, 10)
	checkRecordsAfterSync(t, l, recs)
}

// TestOpenQuarantinesMissingBytes: a sealed segment whose file is shorter
// than its place in the log (cut short, a segment file missing after it, or
// a stray empty file past the end) used to make Open refuse to start. Now
// the missing range is quarantined (ERROR with its offsets, Quarantined,
// ReadAt a CorruptError whose Next is the next segment's base), every record
// still on disk reads back, and appends go on.
func TestOpenQuarantinesMissingBytes(t *testing.T) {
	const S = testSegmentSize
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		// lost says which records are gone; spanOff where the span starts
		lost    func(r record) bool
		spanOff func(recs []record) int64
		next    int64 // the span's end: the next segment's base
		noSpan  bool
	}{
		{"missing middle segment", func(t *testing.T, dir string) {
			if err := os.Remove(segmentPath(dir, S)); err != nil {
				t.Fatal(err)
			}
		}, func(r record) bool { return r.off >= S && r.off < 2*S },
			func([]record) int64 { return S }, 2 * S, false},
		{"sealed segment cut in half", func(t *testing.T, dir string) {
			if err := os.Truncate(segmentPath(dir, 0), S/2); err != nil {
				t.Fatal(err)
			}
		}, func(r record) bool { return r.off < S && frameEndOf(r) > S/2 },
			func(recs []record) int64 {
				for _, r := range recs {
					if frameEndOf(r) > S/2 {
						return r.off
					}
				}
				return -1
			}, S, false},
		{"stray empty segment after a gap", func(t *testing.T, dir string) {
			if err := os.WriteFile(segmentPath(dir, 10*S), make([]byte, S), 0o644); err != nil {
				t.Fatal(err)
			}
		}, func(record) bool { return false }, nil, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, logs := testConfig(t, dir)
			l := openLog(t, cfg)
			recs := appendRecords(t, l, 0, 210)
			closeLog(t, l)
			if n := len(l.Segments()); n < 3 {
				t.Fatalf("%d segments, want 3", n)
			}
			tt.setup(t, dir)
			l = openLog(t, cfg)
			var want []record
			for _, r := range recs {
				if !tt.lost(r) {
					want = append(want, r)
				}
			}
			if tt.noSpan {
				checkDamaged(t, l, want, nil)
			} else {
				off := tt.spanOff(recs)
				q := l.Quarantined()
				if len(q) != 1 || q[0].Off != off || q[0].Next != tt.next {
					t.Fatalf("Quarantined() = %v, want [%d, %d)", q, off, tt.next)
				}
				if !strings.Contains(logs.String(), fmt.Sprintf("offset=%d", off)) {
					t.Fatalf("no ERROR naming offset %d; log:\n%s", off, logs.String())
				}
				got, _ := scanSkipping(t, l, l.MinOffset())
				if len(got) != len(want) {
					t.Fatalf("read %d records, want %d", len(got), len(want))
				}
				for i := range want {
					if got[i].off != want[i].off || !bytes.Equal(got[i].payload, want[i].payload) {
						t.Fatalf("record %d at %d, want %d", i, got[i].off, want[i].off)
					}
				}
				if off < S {
					_, _, err := l.ReadAt(off, nil)
					var ce *CorruptError
					if !errors.As(err, &ce) || ce.Off != off || ce.Next != tt.next {
						t.Fatalf("ReadAt(%d): %v, want the span [%d, %d)", off, err, off, tt.next)
					}
				}
			}
			more := appendRecords(t, l, 210, 20)
			checkRecordsAfterSync(t, l, more)
		})
	}
}

func checkRecordsAfterSync(tb testing.TB, l *Log, recs []record) {
	tb.Helper()
	last := recs[len(recs)-1]
	if err := l.Sync(context.Background(), last.off+headerSize+int64(len(last.payload))); err != nil {
		tb.Fatalf("Sync: %v", err)
	}
	checkRecords(tb, l, recs)
}
