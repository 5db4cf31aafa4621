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
	// ErrCorrupt: a frame failed its checks (magic, length or CRC). From
	// ReadAt and Scan it is a *CorruptError saying where the damage is and
	// where reading goes on.
	ErrCorrupt = errors.New("commitlog: corrupt frame")
	// ErrTooLarge: a payload is over Config.MaxPayload, or a batch's frames
	// total more than both SegmentSize and MaxAppendBytes.
	ErrTooLarge = errors.New("commitlog: payload too large")
	// ErrClosed: the Log has been closed.
	ErrClosed = errors.New("commitlog: closed")
	// ErrOutOfRange: the offset is below MinOffset (its segment was dropped),
	// at or past Committed, or not the start of a frame.
	ErrOutOfRange = errors.New("commitlog: offset out of range")
	// ErrFailed: the Log met an error it cannot take back and refuses every
	// later Append and Sync until it is closed and opened again. An fsync
	// failed (the kernel may have dropped the dirty pages, so a retry that
	// succeeds would prove nothing), or a failed write could not be zeroed
	// again. Whatever was written and not yet known durable, the Append
	// that met it included, may or may not be found by the next Open:
	// only its recovery says. A caller must therefore not give out again
	// anything it handed out for such an append (queue offsets).
	ErrFailed = errors.New("commitlog: failed; refusing appends until reopened")
	// ErrEndOfSegment: ReadAt was given the position of an end-of-segment
	// marker (or of the few unused bytes closing a segment) rather than of a
	// frame. The next offset it returns alongside is where reading goes on.
	ErrEndOfSegment = errors.New("commitlog: end of segment")
)

// CorruptError is a damaged span of the log: bytes from Off that are not a
// valid frame (a failed CRC, a bad magic, a length that cannot be, or bytes
// missing under the committed end). ReadAt and Scan return it, and the Log
// remembers it (Quarantined), as it does a range a sealed segment's file
// lacks (found by Open). It is a reason to skip a record, never to stop
// reading: Next is where reading can go on, the next valid frame or the base
// of the next segment (or Committed, when nothing valid follows in the
// active segment). errors.Is(err, ErrCorrupt) is true for it.
type CorruptError struct {
	Off    int64  // global offset where the damaged span starts
	Next   int64  // where reading resumes: the end of the damaged span
	Reason string // the check that failed, e.g. "crc mismatch"
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("commitlog: damaged span [%d, %d): %s", e.Off, e.Next, e.Reason)
}

// Is makes errors.Is(err, ErrCorrupt) true for every *CorruptError.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }
