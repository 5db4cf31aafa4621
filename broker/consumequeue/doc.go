// Package consumequeue owns the per-(topic, queue id) consume queues of a
// broker: dense sequences of fixed-size entries pointing into the commitlog,
// where the queue offset of a message is the index of its entry.
//
// A consume queue is derived data. The broker's dispatch step appends one
// entry per dispatched message; the package never reads the commitlog and
// stores only the offsets it is given. The durability contract follows from
// that: the broker calls Flush (write and fsync everything buffered), then
// records its own dispatch checkpoint; after a crash it calls
// TruncateFrom(checkpoint) and re-dispatches from there. Everything past the
// last Flush may therefore be lost or torn without harm.
//
// # On-disk layout
//
//	<Dir>/
//	  _logmin                        retention floor: logMin (8, BE) | crc32c (4)
//	  <topic>/                       topic name, safe as a directory name
//	    <queue id>/                  decimal queue id
//	      00000000000000000000       entries [0, EntriesPerFile)
//	      00000000000000300000       entries [300000, 600000)
//	      ...                        file name = index of its first entry (20 digits)
//
//	entry (20 bytes, big-endian), at byte (index - file base) * 20:
//	+--------------------------+----------------+--------------------------+
//	| commitlog offset  int64  | size   int32   | tag hash          uint64 |
//	+--------------------------+----------------+--------------------------+
//	 0                          8                12                        20
//
// Files are written with pwrite and grow as entries are appended (they are
// not preallocated). Files are never memory-mapped: mapped pages count in
// the broker's RSS.
//
// # Invariants
//
//   - Within a queue, entry offsets are strictly increasing and a valid entry
//     has Size > 0, so an all-zero entry (what a crash can leave behind an
//     extended file size) is recognisable as garbage.
//   - The files of a queue are contiguous: every file but the last holds
//     exactly next.base - base entries. At Open a short non-last file ends
//     the queue (later files are deleted); a torn partial entry and trailing
//     all-zero entries of the last file are cut off.
//   - The last file of a queue is never deleted by retention, so Max survives
//     a restart even when every entry is dead.
//   - Min is not stored per queue. DropBefore persists the commitlog floor
//     it was given in _logmin (temp file, fsync, rename, dir fsync) before it
//     deletes anything; Open derives each queue's Min as the first entry whose
//     offset is >= that floor (skipping whole dead files, then a binary search
//     in the first live one). The name starts with '_', which no topic can.
//
// # Write errors
//
// No error is kept: an Append whose spill fails is not appended (the broker
// dispatches the record again), and a Flush that fails leaves its buffers,
// files and directories marked dirty for the next Flush to write and fsync,
// so the store works again as soon as the disk does (TestWriteErrorNotSticky).
// A failed fsync is retried on the same file, though, and Linux may report
// the retry a success after dropping the pages it could not write; entries
// lost that way come back only when recovery re-dispatches them.
//
// # Memory
//
// Per queue the store keeps a few counters, the list of file bases and a
// write buffer of at most Config.QueueBuffer entries, released at each Flush;
// in total at most Config.MaxBuffered entries are buffered before they are
// written to the page cache (not fsynced). Open file handles are shared
// through an LRU of Config.MaxOpenFiles handles; a handle in use by a reader
// is never closed under it (the LRU may briefly exceed its cap instead).
//
// # Concurrency
//
// One writer goroutine (Append, Flush, TruncateFrom, DropBefore,
// DeleteTopic; they serialise on a mutex anyway) and any number of readers
// (Read, Bounds, Queues, SearchOffset). Readers never hold a queue lock across
// I/O: they snapshot the queue state, pread, and re-validate against a
// generation counter that the writer bumps whenever on-disk entries may have
// changed, retrying if it did.
package consumequeue
