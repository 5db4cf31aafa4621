package commitlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// bigPayload is n bytes drawn from seed, so that a misplaced or torn read
// cannot pass for it: a random 4 KiB block repeated, each copy stamped with
// its index (cheap enough for 64 MiB under the race detector).
func bigPayload(seed uint64, n int) []byte {
	const block = 4 << 10
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	var base [block]byte
	for i := 0; i < block; i += 8 {
		binary.LittleEndian.PutUint64(base[i:], r.Uint64())
	}
	p := make([]byte, n)
	for i := 0; i < n; i += block {
		k := copy(p[i:], base[:])
		if k >= 8 {
			binary.LittleEndian.PutUint64(p[i:], uint64(i/block)^seed)
		}
	}
	return p
}

// copyDir copies the segment files of an open log to a new directory: what a
// process crash leaves on disk, since every append reached the page cache and
// (in sync mode, after Sync) the disk. Close never runs on it.
func copyDir(tb testing.TB, from string) string {
	tb.Helper()
	to := tb.TempDir()
	entries, err := os.ReadDir(from)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range entries {
		if _, ok := parseSegmentName(e.Name()); !ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return to
}

func syncEnd(tb testing.TB, l *Log, end int64) {
	tb.Helper()
	if err := l.Sync(context.Background(), end); err != nil {
		tb.Fatalf("Sync(%d): %v", end, err)
	}
}

// TestLargeFrames: a frame of any size up to the format's maximum is read
// back by ReadAt and Scan, and survives clean and crash restarts, wherever it
// sits: first in the first segment, filling a segment to its very end, or
// first in the newest of several segments. The sizes straddle the scan
// chunk (the frame reader once filled only one chunk, so a frame larger than
// what was left of it read as "runs past the readable end", and recovery cut
// or deleted it), the default message limit and the format's maximum.
func TestLargeFrames(t *testing.T) {
	sizes := []int{
		scanChunk - headerSize - 1, scanChunk - headerSize, scanChunk - headerSize + 1,
		scanChunk + 1, 2*scanChunk - headerSize,
		4<<20 - 1, 4 << 20, 4<<20 + 1, MaxFramePayload,
	}
	placements := []string{"first", "fills segment", "first of newest"}
	for _, n := range sizes {
		for _, place := range placements {
			switch {
			case n == scanChunk-headerSize || n == 4<<20:
				// every placement
			case n == MaxFramePayload:
				if place != "fills segment" {
					continue // the largest segment a test makes; the other placements are the 4 MiB paths
				}
			case place != "first":
				continue // the size matters to the reader; placements are covered above
			}
			t.Run(fmt.Sprintf("payload=%d/%s", n, strings.ReplaceAll(place, " ", "_")), func(t *testing.T) {
				seed := uint64(n)*7 + uint64(len(place))
				t.Logf("seed %d", seed)
				dir := t.TempDir()
				cfg, logs := testConfig(t, dir)
				cfg.MaxPayload = n
				small := []byte("a small record before")
				switch place {
				case "fills segment":
					// A small frame, then the large one ending exactly at
					// the segment's end.
					cfg.SegmentSize = MinSegmentSize(int64(len(small)+n), 2)
				default:
					cfg.SegmentSize = max(MinSegmentSize(int64(n), 1)+4096, minSegmentSize)
				}
				l := openLog(t, cfg)
				var recs []record
				add := func(p []byte) {
					offs, end, err := l.Append([][]byte{p})
					if err != nil {
						t.Fatalf("Append %d bytes: %v", len(p), err)
					}
					syncEnd(t, l, end)
					recs = append(recs, record{off: offs[0], payload: p})
				}
				big := bigPayload(seed, n)
				switch place {
				case "first":
					add(big)
					add(small)
				case "fills segment":
					add(small)
					add(big)
					if end := recs[1].off + headerSize + int64(n); end != cfg.SegmentSize {
						t.Fatalf("large frame ends at %d, want the segment end %d", end, cfg.SegmentSize)
					}
					add(small) // rolls: the large frame ends a sealed segment
				case "first of newest":
					add(small)
					add(bigPayload(seed+1, n)) // fills most of segment 0
					add(big)                   // opens segment 1 with it
					if recs[2].off != cfg.SegmentSize {
						t.Fatalf("large frame at %d, want the start of segment 1 at %d", recs[2].off, cfg.SegmentSize)
					}
				}
				checkRecords(t, l, recs)

				crashDir := copyDir(t, dir)
				closeLog(t, l)
				for _, restart := range []struct{ name, dir string }{{"clean", dir}, {"crash", crashDir}} {
					rcfg, rlogs := testConfig(t, restart.dir)
					rcfg.SegmentSize, rcfg.MaxPayload = cfg.SegmentSize, cfg.MaxPayload
					l := openLog(t, rcfg)
					checkRecords(t, l, recs)
					if n := len(l.Quarantined()); n != 0 {
						t.Fatalf("%s restart: %d spans quarantined", restart.name, n)
					}
					if s := rlogs.String(); strings.Contains(s, "cutting") || strings.Contains(s, "removing") || strings.Contains(s, "level=ERROR") {
						t.Fatalf("%s restart touched the log:\n%s", restart.name, s)
					}
					// Appends go on after the large frame, and survive.
					more := []byte("after restart")
					offs, end, err := l.Append([][]byte{more})
					if err != nil {
						t.Fatalf("%s restart: Append: %v", restart.name, err)
					}
					syncEnd(t, l, end)
					closeLog(t, l)
					l = openLog(t, rcfg)
					checkRecords(t, l, append(recs[:len(recs):len(recs)], record{off: offs[0], payload: more}))
					closeLog(t, l)
				}
				_ = logs
			})
		}
	}
}

// TestReopenWithLowerMaxPayload: MaxPayload bounds appends only. A log
// reopened with a lower one reads every frame written under the higher one,
// cuts nothing, and refuses only new appends over the new limit.
func TestReopenWithLowerMaxPayload(t *testing.T) {
	tests := []struct {
		name          string
		written, then int
	}{
		{"2MiB then 1MiB", 2 << 20, 1 << 20},
		{"4MiB+64KiB then 100KiB", 4<<20 + 64<<10, 100 << 10},
		{"limit-1", 300 << 10, 300<<10 - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, _ := testConfig(t, dir)
			cfg.SegmentSize = 3 * MinSegmentSize(int64(tt.written), 1)
			cfg.MaxPayload = tt.written
			l := openLog(t, cfg)
			var recs []record
			for i, n := range []int{tt.written, 10, tt.written} {
				p := bigPayload(uint64(i), n)
				offs, end, err := l.Append([][]byte{p})
				if err != nil {
					t.Fatal(err)
				}
				syncEnd(t, l, end)
				recs = append(recs, record{off: offs[0], payload: p})
			}
			closeLog(t, l)

			cfg.MaxPayload = tt.then
			l = openLog(t, cfg)
			checkRecords(t, l, recs)
			if _, _, err := l.Append([][]byte{make([]byte, tt.then+1)}); err == nil {
				t.Fatalf("Append of %d bytes over MaxPayload %d succeeded", tt.then+1, tt.then)
			}
			closeLog(t, l)
			l = openLog(t, cfg)
			checkRecords(t, l, recs)
		})
	}
}

// TestFrameReaderSizes drives the frame reader alone over frames of every
// size around its chunk, each preceded by a filler that puts the frame's
// header at every position around the chunk's end.
func TestFrameReaderSizes(t *testing.T) {
	for _, n := range []int{0, 1, scanChunk - headerSize - 1, scanChunk - headerSize, scanChunk, scanChunk + 1, 3 * scanChunk} {
		for _, lead := range []int{0, scanChunk - 2*headerSize - 1, scanChunk - headerSize - 5, scanChunk - headerSize, scanChunk - headerSize + 1, scanChunk - 1} {
			// lead is the filler frame's payload: the big frame starts at
			// lead+headerSize.
			filler := bytes.Repeat([]byte{'f'}, lead)
			big := bigPayload(uint64(n+lead), n)
			b := make([]byte, 2*headerSize+lead+n+headerSize)
			putFrame(b, frameMagic, filler)
			putFrame(b[headerSize+lead:], frameMagic, big)
			f, err := os.CreateTemp(t.TempDir(), "seg")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(b); err != nil {
				t.Fatal(err)
			}
			r := frameReader{f: f, size: int64(len(b)), limit: int64(len(b)), buf: make([]byte, scanChunk)}
			for i, want := range [][]byte{filler, big} {
				kind, p, reason, err := r.next()
				if err != nil || kind != frameData || !bytes.Equal(p, want) {
					t.Fatalf("payload=%d lead=%d frame %d: kind %d reason %q err %v (len %d, want %d)", n, lead, i, kind, reason, err, len(p), len(want))
				}
			}
			if kind, _, _, _ := r.next(); kind != frameEnd {
				t.Fatalf("payload=%d lead=%d: after the frames kind %d, want the end", n, lead, kind)
			}
			_ = f.Close()
		}
	}
}

func TestConfigValidateSizes(t *testing.T) {
	tests := []struct {
		name       string
		segment    int64
		maxPayload int
		ok         bool
	}{
		{"payload fills the segment", MinSegmentSize(1<<20, 1), 1 << 20, true},
		// A frame larger than a segment gets a segment of its own.
		{"segment one byte short", MinSegmentSize(1<<20, 1) - 1, 1 << 20, true},
		{"payload larger than the segment", minSegmentSize, MaxFramePayload, true},
		{"format maximum", MinSegmentSize(MaxFramePayload, 1), MaxFramePayload, true},
		{"over the format maximum", MinSegmentSize(MaxFramePayload+1, 1), MaxFramePayload + 1, false},
		{"smallest segment", minSegmentSize, minSegmentSize - headerSize, true},
		{"below the smallest segment", minSegmentSize - 1, 100, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig(t.TempDir())
			cfg.SegmentSize, cfg.MaxPayload = tt.segment, tt.maxPayload
			if err := cfg.Validate(); (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

// TestDecodeFrameLengthLimit: a header claiming MaxFramePayload is a frame
// to read on; one byte more is damage, whatever room the segment has.
func TestDecodeFrameLengthLimit(t *testing.T) {
	for _, tt := range []struct {
		length uint32
		want   frameKind
	}{
		{MaxFramePayload - 1, frameShort},
		{MaxFramePayload, frameShort},
		{MaxFramePayload + 1, frameBad},
		{1<<32 - 1, frameBad},
	} {
		h := make([]byte, headerSize)
		binary.BigEndian.PutUint32(h[0:], tt.length)
		binary.BigEndian.PutUint32(h[4:], frameMagic)
		if kind, _, size, _ := decodeFrame(h, 1<<40); kind != tt.want || (kind == frameShort && size != headerSize+int(tt.length)) {
			t.Errorf("length %d: kind %d size %d, want kind %d", tt.length, kind, size, tt.want)
		}
	}
}
