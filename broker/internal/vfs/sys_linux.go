package vfs

import (
	"fmt"
	"os"
	"syscall"
)

// datasync is fdatasync: the data and the metadata needed to read it back,
// without the times a full fsync would also write.
func datasync(f *os.File) error {
	return Control(f, func(fd int) error { return syscall.Fdatasync(fd) })
}

// allocate reserves the blocks of [0, size) (fallocate mode 0), so that a
// full disk shows when the segment is created, not in the middle of an
// append.
func allocate(f *os.File, size int64) error {
	return Control(f, func(fd int) error { return syscall.Fallocate(fd, 0, 0, size) })
}

// fallocate modes (linux/falloc.h); package syscall does not name them.
const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

// zeroRange uses FALLOC_FL_ZERO_RANGE, which zeroes and keeps the blocks
// allocated at once; file systems without it get a punched hole
// re-reserved with mode 0, and failing that, written zeros.
func zeroRange(f *os.File, off, n int64) error {
	fallocate := func(mode uint32, off, n int64) error {
		return Control(f, func(fd int) error { return syscall.Fallocate(fd, mode, off, n) })
	}
	if err := fallocate(fallocZeroRange|fallocKeepSize, off, n); err == nil {
		return nil
	}
	if err := fallocate(fallocPunchHole|fallocKeepSize, off, n); err == nil {
		if err := fallocate(0, off, n); err != nil {
			return fmt.Errorf("re-reserve punched range: %w", err)
		}
		return nil
	}
	return writeZerosAt(f, off, n)
}

// lockFile takes an exclusive, non-blocking flock on f.
func lockFile(f *os.File) error {
	return Control(f, func(fd int) error { return syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB) })
}
