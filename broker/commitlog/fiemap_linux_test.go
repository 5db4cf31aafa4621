package commitlog

import (
	"os"
	"syscall"
	"testing"
	"unsafe"
)

// unwrittenBytes returns how many bytes of the file at path lie in extents
// that the file system marks unwritten (reserved by fallocate, never
// written), after syncing it. ok is false where FIEMAP is not supported.
func unwrittenBytes(tb testing.TB, path string) (n int64, ok bool) {
	tb.Helper()
	const (
		fsIocFiemap     = 0xC020660B // _IOWR('f', 11, struct fiemap)
		fiemapFlagSync  = 0x1
		extentLast      = 0x1
		extentUnwritten = 0x800
		maxExtents      = 32
	)
	type fiemapExtent struct {
		logical, physical, length uint64
		_                         [2]uint64
		flags                     uint32
		_                         [3]uint32
	}
	type fiemap struct {
		start, length                 uint64
		flags, mapped, count, reserve uint32
		extents                       [maxExtents]fiemapExtent
	}
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var start uint64
	for {
		fm := fiemap{start: start, length: ^uint64(0) - start, flags: fiemapFlagSync, count: maxExtents}
		_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&fm)))
		switch {
		case errno == syscall.EOPNOTSUPP || errno == syscall.ENOTTY:
			return 0, false
		case errno != 0:
			tb.Fatalf("FIEMAP %s: %v", path, errno)
		}
		if fm.mapped == 0 {
			return n, true
		}
		for _, e := range fm.extents[:fm.mapped] {
			if e.flags&extentUnwritten != 0 {
				n += int64(e.length)
			}
			if e.flags&extentLast != 0 {
				return n, true
			}
			start = e.logical + e.length
		}
	}
}
