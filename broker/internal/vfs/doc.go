// Package vfs is the file-system seam under the commitlog, the consume queues
// and the key index: the few operations that change what is on disk (create,
// write, sync, truncate, allocate, rename, remove, make and sync directories)
// go through an FS, so that a test can fail, cut or crash any one of them.
//
// Reads do not go through it: a store reads its files with the *os.File the
// FS opened (ReadAt, os.ReadFile), because the disk is the truth either way.
//
// OS is the real file system. Fault is a test file system over a real
// directory: it does every operation for real, remembers what each one
// changed since the last sync that made it durable, and can
//   - fail any operation, or cut a write short, through an injection hook;
//   - answer ENOSPC to writes that grow a file and to allocations (SetFull);
//   - crash at the Nth next operation (CrashAfter) or at once (Crash): the
//     crashing write is torn, and every later operation fails with ErrCrashed,
//     so the dying process changes nothing more on disk;
//   - then Restore the directory to what a power cut could have left: every
//     synced byte, an arbitrary prefix of each file's unsynced changes (the
//     last one possibly torn), and entries created, renamed or removed since
//     their directory's last sync either kept or undone.
//
// Invariant of Fault: what Restore keeps always includes everything a Sync or
// SyncDir returned nil for; nothing it keeps was never written.
package vfs
