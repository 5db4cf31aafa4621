//go:build darwin || dragonfly || freebsd || netbsd || openbsd

package vfs

import (
	"os"
	"syscall"
)

// datasync is f.Sync, which on macOS is F_FULLFSYNC: a plain fsync there
// leaves the data in the drive's cache.
func datasync(f *os.File) error { return f.Sync() }

// allocate only grows the file: these systems have no portable fallocate,
// so a full disk shows at write time (the append fails and is refused).
func allocate(f *os.File, size int64) error { return growTo(f, size) }

func zeroRange(f *os.File, off, n int64) error { return writeZerosAt(f, off, n) }

// lockFile takes an exclusive, non-blocking flock on f.
func lockFile(f *os.File) error {
	return Control(f, func(fd int) error { return syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB) })
}
