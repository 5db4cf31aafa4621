package keyindex

import (
	"bufio"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
)

// logRecSize is the size of one active-log record (see doc.go).
const logRecSize = 20

func appendLogRec(b []byte, hash uint64, off int64) []byte {
	n := len(b)
	b = append(b, make([]byte, logRecSize)...)
	r := b[n:]
	binary.BigEndian.PutUint64(r[0:8], hash)
	binary.BigEndian.PutUint64(r[8:16], uint64(off))
	binary.BigEndian.PutUint32(r[16:20], crc32.Checksum(r[:16], castagnoli))
	return b
}

// replayLog calls fn for each good record of an active log and returns the
// length of the good prefix. It stops without error at the first short
// record, bad crc or decreasing offset: what a crash leaves at the tail.
func replayLog(r io.Reader, fn func(hash uint64, off int64)) (int64, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var b [logRecSize]byte
	good := int64(0)
	last := int64(-1)
	for {
		if _, err := io.ReadFull(br, b[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return good, nil
			}
			return good, err
		}
		if crc32.Checksum(b[:16], castagnoli) != binary.BigEndian.Uint32(b[16:20]) {
			return good, nil
		}
		hash := binary.BigEndian.Uint64(b[0:8])
		off := int64(binary.BigEndian.Uint64(b[8:16]))
		if off < last || off < 0 {
			return good, nil
		}
		fn(hash, off)
		last = off
		good += logRecSize
	}
}
