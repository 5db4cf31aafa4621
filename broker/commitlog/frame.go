package commitlog

import (
	"encoding/binary"
	"hash/crc32"
)

const (
	// headerSize is length u32 | magic u32 | crc32c u32.
	headerSize = 12
	// frameMagic marks a data frame of format version 1 ("PBS1").
	frameMagic uint32 = 0x50425331
	// blankMagic marks the end-of-segment marker: readers go on at the next
	// segment's base. Its length is zero and its CRC covers its first 8 bytes.
	blankMagic uint32 = 0x50424C4B // "PBLK"
)

// FrameHeaderSize is how many bytes a frame takes before its payload: a
// record of n bytes read at offset off ends at off+FrameHeaderSize+n.
const FrameHeaderSize = headerSize

// MaxFramePayload is the largest payload a frame of format version 1 may
// carry. It is a constant of the format, not of the configuration: a reader
// takes a header claiming more for damage, and nothing a Log is configured
// with changes how stored frames are read. Config.MaxPayload, the largest
// payload Append accepts, may be lowered or raised between runs up to it.
const MaxFramePayload = 16 << 20

// MinSegmentSize is the smallest segment that holds frames payloads totalling
// payloadBytes in one Append (one batch lands in one segment): the bytes the
// batch takes on disk. A batch larger than SegmentSize gets a segment this
// large, rounded up to whole pages. Callers that bound what a batch takes as
// stored ask it, so that the log and they agree on the frame overhead.
func MinSegmentSize(payloadBytes int64, frames int) int64 {
	return payloadBytes + int64(frames)*headerSize
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// frameCRC is the CRC-32C of a frame's length and magic fields followed by its
// payload. Covering the length means a torn length is caught by the CRC
// rather than trusted to find the next frame.
func frameCRC(hdr []byte, payload []byte) uint32 {
	c := crc32.Update(0, castagnoli, hdr[:8])
	return crc32.Update(c, castagnoli, payload)
}

// putFrame encodes one frame at the start of dst, which must hold
// headerSize+len(payload) bytes.
func putFrame(dst []byte, magic uint32, payload []byte) {
	binary.BigEndian.PutUint32(dst[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(dst[4:8], magic)
	copy(dst[headerSize:], payload)
	binary.BigEndian.PutUint32(dst[8:12], frameCRC(dst, payload))
}

// frameKind classifies what decodeFrame found.
type frameKind int

const (
	frameData  frameKind = iota // a valid data frame
	frameEnd                    // no more frames in this segment: blank marker, zero header, or under headerSize bytes left
	frameShort                  // b holds only a prefix of a frame that fits in the segment: read size bytes
	frameBad                    // corrupt or torn; the reason says which check failed
)

// decodeFrame parses the frame at the start of b. room is how many bytes the
// segment has from this position to its end (b is a prefix of them, possibly
// all). It never panics and never allocates: payload aliases b. A length
// over MaxFramePayload is damage, whatever the Log's configuration. For
// frameData size is the frame's length on disk; for frameShort it is how many
// bytes from this position are needed to decode further.
//
// A header of all zeros is the clean end of the written part of a segment,
// since preallocation leaves zeros behind the last frame.
func decodeFrame(b []byte, room int64) (kind frameKind, payload []byte, size int, reason string) {
	if room < headerSize {
		return frameEnd, nil, 0, ""
	}
	if len(b) < headerSize {
		return frameShort, nil, headerSize, ""
	}
	length := binary.BigEndian.Uint32(b[0:4])
	magic := binary.BigEndian.Uint32(b[4:8])
	sum := binary.BigEndian.Uint32(b[8:12])
	switch magic {
	case 0:
		if length == 0 && sum == 0 {
			return frameEnd, nil, 0, ""
		}
		return frameBad, nil, 0, "zero magic in a non-zero header"
	case blankMagic:
		if length != 0 || sum != frameCRC(b, nil) {
			return frameBad, nil, 0, "damaged end-of-segment marker"
		}
		return frameEnd, nil, 0, ""
	case frameMagic:
	default:
		return frameBad, nil, 0, "bad magic"
	}
	if length > MaxFramePayload {
		return frameBad, nil, 0, "length over the format's maximum payload"
	}
	size = headerSize + int(length)
	if int64(size) > room {
		return frameBad, nil, 0, "length past end of segment"
	}
	if size > len(b) {
		return frameShort, nil, size, ""
	}
	payload = b[headerSize:size:size]
	if frameCRC(b, payload) != sum {
		return frameBad, nil, 0, "crc mismatch"
	}
	return frameData, payload, size, ""
}
