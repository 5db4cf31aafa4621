package commitlog

import (
	"errors"
	"fmt"
)

// Sentinel errors callers branch on. Returned errors wrap them with context, so
// test with errors.Is.
var (
	// ErrDiskFull: a new segment could not be preallocated (ENOSPC). Nothing
	// of the Append that met it was written; later appends may succeed once
	// space is freed.
	ErrDiskFull = errors.New("commitlog: disk full")
	// ErrCorrupt: a frame failed its checks (magic, length or CRC). Errors
	// wrapping it are *CorruptError values that say where and why.
	ErrCorrupt = errors.New("commitlog: corrupt frame")
	// ErrTooLarge: a payload is over Config.MaxPayload, or a batch does not
	// fit in one segment.
	ErrTooLarge = errors.New("commitlog: payload too large")
	// ErrClosed: the Log has been closed.
	ErrClosed = errors.New("commitlog: closed")
	// ErrOutOfRange: the offset is below MinOffset (its segment was dropped),
	// at or past Committed, or not the start of a frame.
	ErrOutOfRange = errors.New("commitlog: offset out of range")
	// ErrEndOfSegment: ReadAt was given the position of an end-of-segment
	// marker (or of the few unused bytes closing a segment) rather than of a
	// frame. The next offset it returns alongside is where reading goes on.
	ErrEndOfSegment = errors.New("commitlog: end of segment")
)

// CorruptError describes a frame that failed verification. It matches
// ErrCorrupt under errors.Is.
type CorruptError struct {
	Segment int64  // base offset of the segment holding the frame
	Offset  int64  // global offset of the frame
	Reason  string // what check failed, e.g. "crc mismatch"
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("commitlog: corrupt frame at %d in segment %020d: %s", e.Offset, e.Segment, e.Reason)
}

// Is makes errors.Is(err, ErrCorrupt) true for every *CorruptError.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }
