package commitlog

import (
	"bytes"
	"context"
	"os"
	"testing"
)

func FuzzDecodeFrame(f *testing.F) {
	valid := make([]byte, headerSize+5)
	putFrame(valid, frameMagic, []byte("hello"))
	marker := make([]byte, headerSize)
	putFrame(marker, blankMagic, nil)
	f.Add(valid, int64(1000))
	f.Add(valid[:7], int64(1000))
	f.Add(valid[:14], int64(1000))
	f.Add(marker, int64(12))
	f.Add(make([]byte, 40), int64(40))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x50, 0x42, 0x53, 0x31, 0, 0, 0, 0}, int64(1<<40))
	f.Add(valid, int64(11))
	f.Add(valid, int64(-5))

	const maxPayload = MaxFramePayload
	f.Fuzz(func(t *testing.T, b []byte, room int64) {
		kind, payload, size, reason := decodeFrame(b, room)
		switch kind {
		case frameData:
			if size < headerSize || size > len(b) || int64(size) > room || len(payload) != size-headerSize || len(payload) > maxPayload {
				t.Fatalf("data frame: size %d, payload %d, len(b) %d, room %d", size, len(payload), len(b), room)
			}
			// Re-encoding gives back the same bytes: the decoder accepts
			// exactly what the encoder writes.
			again := make([]byte, size)
			putFrame(again, frameMagic, payload)
			if !bytes.Equal(again, b[:size]) {
				t.Fatalf("re-encoded frame differs")
			}
		case frameShort:
			if size <= len(b) || int64(size) > room || size > headerSize+maxPayload {
				t.Fatalf("short frame: size %d, len(b) %d, room %d", size, len(b), room)
			}
		case frameEnd:
			if payload != nil || size != 0 {
				t.Fatalf("end with payload or size")
			}
		case frameBad:
			if reason == "" {
				t.Fatalf("bad frame without a reason")
			}
		default:
			t.Fatalf("unknown kind %d", kind)
		}
	})
}

// FuzzRecoverTail writes arbitrary bytes after three good frames of the last
// segment and reopens: Open must succeed, keep the good frames, and leave a
// log that appends and reads.
func FuzzRecoverTail(f *testing.F) {
	good := make([]byte, headerSize+3)
	putFrame(good, frameMagic, []byte("abc"))
	f.Add([]byte{})
	f.Add(good)
	f.Add(append(bytes.Clone(good), 0xde, 0xad, 0xbe, 0xef))
	f.Add(bytes.Repeat([]byte{0xff}, 64))
	f.Add([]byte{0, 0, 0, 5, 0x50, 0x42, 0x53, 0x31, 1, 2, 3, 4, 'x'})

	f.Fuzz(func(t *testing.T, tail []byte) {
		dir := t.TempDir()
		cfg, _ := testConfig(t, dir)
		cfg.SegmentSize = minSegmentSize
		cfg.MaxPayload = 1024
		l := openLog(t, cfg)
		want := [][]byte{[]byte("one"), []byte("two"), bytes.Repeat([]byte("3"), 100)}
		offs, end, err := l.Append(want)
		if err != nil {
			t.Fatal(err)
		}
		closeLog(t, l)

		fh, err := os.OpenFile(segmentPath(dir, 0), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(tail)) > cfg.SegmentSize-end {
			tail = tail[:cfg.SegmentSize-end]
		}
		if _, err := fh.WriteAt(tail, end); err != nil {
			t.Fatal(err)
		}
		if err := fh.Close(); err != nil {
			t.Fatal(err)
		}

		l = openLog(t, cfg)
		if c := l.Committed(); c < end {
			t.Fatalf("Committed %d below the good end %d", c, end)
		}
		for i, off := range offs {
			got, _, err := l.ReadAt(off, nil)
			if err != nil || !bytes.Equal(got, want[i]) {
				t.Fatalf("ReadAt(%d) = %q, %v", off, got, err)
			}
		}
		// The tail may hold damage followed by a frame that checks (a
		// fuzzed tail can write one): that span is quarantined, not cut,
		// and a scan goes on after it. The good frames come first and
		// whole, and no span reaches below the good end.
		recs, spans := scanSkipping(t, l, 0)
		if len(recs) < len(want) {
			t.Fatalf("Scan delivered %d records, want at least the %d good ones", len(recs), len(want))
		}
		for i := range want {
			if recs[i].off != offs[i] || !bytes.Equal(recs[i].payload, want[i]) {
				t.Fatalf("Scan record %d = %d %q, want %d %q", i, recs[i].off, recs[i].payload, offs[i], want[i])
			}
		}
		for _, sp := range spans {
			if sp.Off < end {
				t.Fatalf("damaged span [%d, %d) below the good end %d", sp.Off, sp.Next, end)
			}
		}
		_, e, err := l.Append([][]byte{[]byte("after")})
		if err != nil {
			t.Fatalf("Append after recovery: %v", err)
		}
		if err := l.Sync(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzRecoverDamage overwrites bytes anywhere in the newest segment's frames
// (not only its tail) and reopens: Open must succeed, reading with skips must
// reach Committed, every frame the damage did not touch must be delivered
// (unless the damage wrote a magic, which could pass for a frame), and the
// log must append and reopen after.
func FuzzRecoverDamage(f *testing.F) {
	f.Add(uint16(0), []byte{0xff})
	f.Add(uint16(20), []byte{0, 0, 0, 0})
	f.Add(uint16(100), bytes.Repeat([]byte{0x5a}, 40))
	f.Add(uint16(16), []byte{0x50, 0x42, 0x53, 0x31})
	f.Add(uint16(300), make([]byte, 200))

	f.Fuzz(func(t *testing.T, at uint16, garbage []byte) {
		dir := t.TempDir()
		cfg, _ := testConfig(t, dir)
		cfg.SegmentSize = minSegmentSize
		cfg.MaxPayload = 1024
		l := openLog(t, cfg)
		var recs []record
		for i := range 8 {
			p := bytes.Repeat([]byte{byte('a' + i)}, 10+i*37)
			offs, end, err := l.Append([][]byte{p})
			if err != nil {
				t.Fatal(err)
			}
			syncEnd(t, l, end)
			recs = append(recs, record{off: offs[0], payload: p})
		}
		closeLog(t, l)
		end := frameEndOf(recs[len(recs)-1])
		from := int64(at) % end
		garbage = garbage[:min(int64(len(garbage)), end-from)]
		damageFile(t, segmentPath(dir, 0), func(b []byte) { copy(b[from:], garbage) })
		damaged, err := os.ReadFile(segmentPath(dir, 0))
		if err != nil {
			t.Fatal(err)
		}

		l = openLog(t, cfg)
		got, _ := scanSkipping(t, l, 0)
		delivered := make(map[int64][]byte)
		for _, r := range got {
			delivered[r.off] = r.payload
		}
		magic := bytes.Contains(garbage, magicPrefix)
		// Zeros over a whole header are the clean end of what was written
		// (doc.go): nothing after them is promised. The header is judged
		// as it is on disk after the damage: zeros written over part of
		// it may complete one whose untouched bytes were zero already (the
		// high bytes of a small length).
		zeroedAt := end
		for _, r := range recs {
			if !bytes.ContainsFunc(damaged[r.off:r.off+headerSize], func(c rune) bool { return c != 0 }) {
				zeroedAt = r.off
				break
			}
		}
		for i, r := range recs {
			if r.off >= zeroedAt {
				break
			}
			touched := from < frameEndOf(r) && r.off < from+int64(len(garbage))
			if touched || magic {
				continue
			}
			if p, ok := delivered[r.off]; !ok || !bytes.Equal(p, r.payload) {
				t.Fatalf("untouched frame %d at %d lost (damage [%d, %d))", i, r.off, from, from+int64(len(garbage)))
			}
		}
		offs, e, err := l.Append([][]byte{[]byte("after")})
		if err != nil {
			t.Fatalf("Append after recovery: %v", err)
		}
		syncEnd(t, l, e)
		closeLog(t, l)
		l = openLog(t, cfg)
		if p, _, err := l.ReadAt(offs[0], nil); err != nil || string(p) != "after" {
			t.Fatalf("ReadAt after reopen: %q, %v", p, err)
		}
	})
}
