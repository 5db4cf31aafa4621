// Package commitlog is the append-only log that holds every message of every
// topic of a postbus broker. It knows bytes and offsets only: a record's
// payload is opaque bytes that the broker encodes (topic, queue id, queue
// offset, timestamps, tag, keys...); this package frames, stores, syncs,
// verifies and reads them back.
//
// # What it owns
//
// The directory Config.Dir: its segment files and a LOCK file that an open
// Log holds an exclusive flock on, so two processes never append to the same
// log.
//
// # On disk
//
// The log is a sequence of preallocated segment files named by their
// starting byte offset as 20 zero-padded digits. Offsets are global: segment
// base + position in the segment. A new segment is Config.SegmentSize bytes
// (default 128 MiB; the broker asks for at least 1 MiB, the package only
// for room for a header and a marker); a segment keeps the size it was made with, which is the
// distance to the next segment's base, so SegmentSize may change between
// runs. A batch larger than SegmentSize is not refused: it rolls to an
// oversized segment made for it (its frames, rounded up to 4 KiB pages),
// still one write into one segment; the next append that does not fit in
// what is left rolls back to a segment of SegmentSize.
//
//	Dir/
//	  LOCK
//	  00000000000000000000   bytes [0, S)
//	  00000000000134217728   bytes [S, 2S)      S = SegmentSize
//	  ...
//	  00000000000268435456.next                 the next segment, being prepared
//
// A segment is reserved whole (fallocate mode 0) before it is used, so
// writes inside it never meet ENOSPC: a full disk shows up when a segment is
// made, before any byte of an append is written. It is also zero-filled
// (zeros written over all of it, then fdatasync), because appends into
// blocks that are only reserved ("unwritten extents") cost several times
// more, under the append mutex, and make the log's fdatasync commit extent
// conversions to the journal. To keep that off the append path, as soon as
// a segment becomes active a goroutine prepares the next one as
// <20 digits>.next (reserve, zeros in 64 KiB pwrites, one fdatasync); the
// roll renames it into place. A roll that finds it not ready waits if it is
// nearly done, else falls back to a fallocated-only segment and the
// preparation serves the following roll. An oversized segment is never
// prepared: it is created and reserved whole (fallocate) by its roll, so a
// full disk is ErrDiskFull before any byte of its batch is written, and the
// preparation in flight serves the roll after it, under the base that roll
// gives it (a .next file's name is only a name). Recovery never reads a
// .next file; Open deletes leftovers and Close deletes the pending one.
//
// A segment holds frames back to back from position 0, then either an
// end-of-segment marker or fewer than 12 bytes, then zeros:
//
//	segment:  | frame | frame | ... | frame | marker | 0 0 0 ... 0 |
//
//	frame (big-endian):
//	  0       4       8       12            12+length
//	  +-------+-------+-------+--------------+
//	  |length | magic | crc   |   payload    |
//	  +-------+-------+-------+--------------+
//	  length  u32  payload bytes; at most MaxFramePayload (16 MiB)
//	  magic   u32  0x50425331 ("PBS1"): data frame, format version 1
//	  crc     u32  CRC-32C (Castagnoli) of length, magic and payload
//
//	end-of-segment marker: a frame header with length 0, magic 0x50424C4B
//	("PBLK") and the CRC of its first 8 bytes; readers go on at the next
//	segment's base. When fewer than 12 bytes remain there is no marker: the
//	zeros the segment was made with mean the same.
//
// The CRC covers the length, so a torn length cannot send a reader to a bogus
// next frame. A header of all zeros is the clean end of what was written in
// the newest segment; a sealed one ends with its marker.
//
// MaxFramePayload is a constant of format version 1: a header claiming more
// is damage, whatever the configuration. Config.MaxPayload only bounds what
// Append accepts, so lowering it between runs reinterprets nothing stored.
// The frame reader has no limit of its own below MaxFramePayload: it reads
// as much as a frame's header says, however little of it its chunk holds.
//
// # Recovery rules
//
// Open scans the newest segment only (every other one was fsynced when it was
// sealed), frame by frame, from its start to the end of its file:
//
//   - A frame that fails a check (magic, length, CRC, or running past the
//     file's end) is resynchronised past: the reader looks for the next
//     position, after the bad frame's start, whose magic field holds a magic
//     and whose frame (or end-of-segment marker) passes its CRC. Zeros never
//     pass, so a damaged span is never mistaken for the clean end.
//   - If a valid frame follows, the bad bytes up to it are corruption, not a
//     torn write: every valid frame is kept, before and after, and the span
//     is quarantined. Its bytes stay on disk untouched; readers step over it.
//   - Only a torn tail, after which nothing valid follows, is cut: zeroed to
//     the segment's end and fsynced, and logged at WARN with its offset.
//     What a crash tears was never acknowledged under sync (an fsync covers
//     the whole file, so an fsynced frame has no unsynced frame before it).
//   - A zero header ends the scan: appends are sequential, so nothing written
//     lies beyond it, and a stale frame there must never come back.
//   - A newest segment that holds no valid frame (a crash during a roll, or a
//     torn first append) is removed, and its predecessor recovered instead.
//   - A newest segment shorter than SegmentSize with its frames intact (its
//     preallocated zero tail lost) is extended again; one longer is cut to
//     SegmentSize when nothing valid lies past it, and otherwise keeps its
//     length (it is an oversized segment, or was made with a larger
//     SegmentSize). Each is logged.
//   - A sealed segment whose file is shorter than its place in the log (cut
//     short, or a segment file missing between two others) does not stop
//     Open: the missing range, from the start of the frame the file's end
//     cuts (or the file's end) to the next segment's base, is quarantined
//     at once, and readers go on at that base. This is checked after the
//     newest segment is settled, so a stray file holding no frame past a gap
//     is removed as an interrupted roll, not taken for the newest segment.
//   - In a sealed segment, a header of zeros where a frame or the marker
//     should be (before the marker, or with no marker at all) is damage, not
//     its clean end: the roll that sealed it wrote a marker wherever one
//     fits. Readers quarantine it like any damage, resynchronising to the
//     next valid frame or the next segment. Only the newest segment's zero
//     header is the clean end of what was written.
//
// A damaged record anywhere is quarantined and never a reason to refuse to
// start or to stop reading others. ReadAt and Scan report it as a
// *CorruptError {Off, Next, Reason} (errors.Is ErrCorrupt), Next being the
// next valid frame (found as above, below Committed), the next segment's
// base, or Committed when nothing valid follows in the active segment. The
// Log remembers each span (Quarantined) and logs it once at ERROR with its
// offset. Whatever is derived from the log (indexes, queues) can therefore
// always be rebuilt, around the quarantined spans: a caller that meets one
// records it and goes on at Next.
//
// Resynchronisation trusts CRC-32C: a body that itself holds a whole valid
// frame could be taken for one if damage destroyed the header of the record
// around it. A resync first tries the position right after a bad frame whose
// length is plausible (its payload damaged), so this needs damage to the
// outer header too.
//
// # Invariants
//
//   - A frame never spans segments, and one Append (a batch) lands in one
//     segment with one write. A batch larger than SegmentSize gets an
//     oversized segment of its own; only one over MaxAppendBytes too is
//     refused with ErrTooLarge. MinSegmentSize says what a batch takes on
//     disk.
//   - Append either makes its whole batch visible or none of it: on a failed
//     write the touched range is zeroed again and the tail does not move.
//   - Every segment but the last is fsynced when it is sealed, before any byte
//     reaches its successor. Recovery (in Open) therefore scans only the last
//     segment, by the recovery rules above.
//   - A prepared file takes its segment name only after the segment before
//     it is sealed and fsynced; until then nothing reads it.
//   - Committed never moves backwards, and bytes below it never change until
//     their segment is dropped. In sync mode it is the fsynced offset (so a
//     reader only ever sees durable messages); in async mode, the written one.
//   - Exactly one goroutine fsyncs appends (group commit): waiters whose end
//     an fsync covers are released together.
//   - Readers use pread on an immutable snapshot of the segment list and never
//     take the writer's mutex.
//   - A failed fsync poisons the Log (PostgreSQL's "fsyncgate" lesson: after
//     a failed fsync the kernel may have dropped the dirty pages and marked
//     them clean, so a retry that succeeds proves nothing). So does a failed
//     write whose range cannot be zeroed again. The Log logs it once at
//     ERROR, Failed reports it, and every later Append and Sync returns it,
//     wrapping ErrFailed, until the Log is closed and opened again. The
//     bytes written and not known durable (those of the failing Append or
//     Sync included) may or may not be found by Open: its recovery rules
//     decide, as after a crash. An Append that fails with ErrFailed has
//     therefore an unknown outcome, unlike one that fails otherwise, which
//     left nothing: its caller must not hand out again what it assigned to
//     it (the broker's queue offsets).
package commitlog
