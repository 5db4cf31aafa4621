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
		if _, err := l.Scan(0, func(int64, []byte) error { return nil }); err != nil {
			t.Fatalf("Scan: %v", err)
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
