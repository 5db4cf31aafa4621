// Package keyindex maps 64-bit key hashes to commitlog offsets, newest first,
// in bounded memory. The broker indexes each message id and key under a hash
// of its own choosing and verifies every candidate offset by reading the
// record, so hash collisions cost a read, never a wrong answer.
//
// Like the consume queues the index is derived data: the broker calls Flush,
// then records its dispatch checkpoint; after a crash it calls
// TruncateFrom(checkpoint) and re-dispatches. If Open reports ErrCorrupt the
// broker deletes the directory and rebuilds the index from the commitlog.
//
// # Design: a tiny LSM with only level-0 files
//
//	            Add(hash, off)                       Lookup(hash): newest first
//	                 |                                          |
//	                 v                                          v
//	+---------------------------------+   +-------------------------------+
//	| active table (memory)           |   | 1. active table: heads[hash]  |
//	|  ents: [hash off prev] ...      |   |    then the prev chain        |
//	|  heads: hash -> newest ent      |   | 2. table being sealed, if any |
//	+---------------------------------+   | 3. sealed files, newest to    |
//	    |  every Add, buffered            |    oldest: fence search, then |
//	    v                                 |    one pread of <= 4 KiB      |
//	<seq>.log  (Flush: write + fsync)     +-------------------------------+
//	    |
//	    |  table holds MemEntries: SEAL
//	    v
//	<seq>.idx  sorted by (hash asc, offset desc), immutable;
//	           <seq+1>.log becomes the active log
//
// Sealing writes <seq>.idx.tmp, fsyncs it, renames it to <seq>.idx, creates
// <seq+1>.log, fsyncs the directory and only then removes <seq>.log. A
// <seq>.log found next to <seq>.idx at Open is therefore already sealed and
// is removed. Lookups keep reading the table being sealed until the sealed
// file replaces it, so sealing blocks them only for a pointer swap.
//
// # Active log <seq>.log
//
//	record (20 bytes, big-endian), one per Add, in Add order:
//	+------------------+------------------+-------------------------------+
//	| hash      uint64 | offset     int64 | crc32c of the 16 bytes before |
//	+------------------+------------------+-------------------------------+
//
// Replay stops at the first short record, bad crc or decreasing offset (a
// torn or zero-filled tail) and truncates the file there.
//
// # Sealed file <seq>.idx
//
//	+----------------------------------------------------------------------+
//	| entry 0 .. count-1, 16 bytes each: hash uint64 | offset int64         |
//	|   sorted by hash ascending, then offset descending                   |
//	+----------------------------------------------------------------------+
//	| footer, 40 bytes:                                                    |
//	|   magic "PBKI" u32 | version u32 | count u64 | min offset i64 |      |
//	|   max offset i64 | reserved u32 | crc32c u32                         |
//	|   (crc over every entry and the 36 footer bytes before it)           |
//	+----------------------------------------------------------------------+
//
// Open reads each sealed file once to check its crc, order and footer and to
// build its fence index: the hash of the last entry of every block of 256
// entries (4 KiB), 8 bytes per block in memory. A lookup binary-searches the
// fences for the first block whose last hash is >= the key and preads that
// block; only a hash whose run crosses a block boundary costs another pread.
//
// # Invariants
//
//   - Offsets given to Add never decrease (an id and several keys of one
//     message share an offset); a decreasing one is dropped and counted.
//   - Every offset in a sealed file is <= every offset in a newer sealed file
//     or the active table, so visiting the active table, then sealed files
//     newest to oldest, yields offsets newest first.
//   - Memory is bounded by two tables of MemEntries (the active one and, while
//     sealing, the one being sealed) plus 8 bytes per 256 sealed entries.
//   - Retention (DropBefore) removes whole sealed files only: Lookup may
//     still return offsets below the commitlog's minimum, which the broker's
//     verifying read rejects.
//
// # Write errors
//
// A failed write, fsync or seal (ENOSPC, EIO) puts the index in an error:
// Flush reports it, and the broker's checkpoint with it. The error is not
// kept for the life of the process: the next Flush rewrites the active log
// whole from the active table (temp file, fsync, rename, directory fsync)
// and clears it, as does a successful seal, so the index works again once
// the disk does. A failed fsync is never simply retried, since the kernel
// may have dropped the pages it could not write and report success the
// second time. Stats.WriteErrors counts the failures.
//
// # Concurrency
//
// One writer goroutine calls Add, Flush, TruncateFrom and DropBefore; any
// number of goroutines call Lookup and Stats. The active table is append-only
// between seals, so a lookup snapshots the chain head under a read lock and
// walks the chain without it; Lookup never holds a lock while calling fn.
package keyindex
