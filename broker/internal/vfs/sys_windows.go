package vfs

import (
	"os"

	"golang.org/x/sys/windows"
)

// datasync is f.Sync (FlushFileBuffers).
func datasync(f *os.File) error { return f.Sync() }

// allocate only grows the file, so a full disk shows at write time.
func allocate(f *os.File, size int64) error { return growTo(f, size) }

func zeroRange(f *os.File, off, n int64) error { return writeZerosAt(f, off, n) }

// lockFile takes an exclusive lock on f's first byte without waiting; like
// flock, it ends when the handle is closed or the process dies.
func lockFile(f *os.File) error {
	return Control(f, func(fd int) error {
		ol := new(windows.Overlapped)
		return windows.LockFileEx(windows.Handle(fd), windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ol)
	})
}
