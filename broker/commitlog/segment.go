package commitlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
)

// fallocate modes (linux/falloc.h); package syscall does not name them.
const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

// segment is one open segment file. Its base never changes; the file is
// closed only by DropBefore (after setting dropped) or Close.
type segment struct {
	base    int64
	path    string
	f       *os.File
	dropped atomic.Bool // set before DropBefore closes f, so a racing read or fsync knows why it failed
}

func segmentName(base int64) string { return fmt.Sprintf("%020d", base) }

// parseSegmentName returns the base offset named by a segment file name:
// exactly 20 decimal digits.
func parseSegmentName(name string) (int64, bool) {
	if len(name) != 20 {
		return 0, false
	}
	for i := 0; i < len(name); i++ {
		if name[i] < '0' || name[i] > '9' {
			return 0, false
		}
	}
	base, err := strconv.ParseInt(name, 10, 64)
	return base, err == nil
}

// segmentIO is the seam for the file operations whose failures the log must
// survive: preallocation (ENOSPC), writes and fsync. osIO is the real one;
// tests wrap it to inject faults.
type segmentIO interface {
	// allocate reserves [0, size) of f (fallocate mode 0).
	allocate(f *os.File, size int64) error
	// writeAt writes b at off like os.File.WriteAt.
	writeAt(f *os.File, b []byte, off int64) (int, error)
	// datasync flushes f's data and the metadata needed to read it back.
	datasync(f *os.File) error
}

type osIO struct{}

var _ segmentIO = osIO{}

func (osIO) allocate(f *os.File, size int64) error { return fallocate(f, 0, 0, size) }

func (osIO) writeAt(f *os.File, b []byte, off int64) (int, error) { return f.WriteAt(b, off) }

func (osIO) datasync(f *os.File) error {
	return control(f, func(fd int) error { return syscall.Fdatasync(fd) })
}

// control runs op on f's descriptor, retrying EINTR. Going through
// SyscallConn (not Fd) keeps the descriptor from being closed under op.
func control(f *os.File, op func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	if err := rc.Control(func(fd uintptr) {
		for {
			opErr = op(int(fd))
			if opErr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return opErr
}

func fallocate(f *os.File, mode uint32, off, size int64) error {
	return control(f, func(fd int) error { return syscall.Fallocate(fd, mode, off, size) })
}

// createSegment creates (or, after a failed earlier attempt, recreates) the
// segment file for base and preallocates it whole, so that no later write
// inside it can meet ENOSPC. On failure the file is removed again; ENOSPC is
// reported as ErrDiskFull.
func createSegment(dir string, base, size int64, sio segmentIO) (*segment, error) {
	path := filepath.Join(dir, segmentName(base))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return nil, fmt.Errorf("create segment %020d: %w: %w", base, ErrDiskFull, err)
		}
		return nil, fmt.Errorf("create segment %020d: %w", base, err)
	}
	if err := sio.allocate(f, size); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		if errors.Is(err, syscall.ENOSPC) {
			return nil, fmt.Errorf("preallocate segment %020d: %w: %w", base, ErrDiskFull, err)
		}
		return nil, fmt.Errorf("preallocate segment %020d: %w", base, err)
	}
	return &segment{base: base, path: path, f: f}, nil
}

// zeroRange makes [off, off+n) of f read as zeros while keeping it allocated.
// FALLOC_FL_ZERO_RANGE does both at once; file systems without it get a
// punched hole re-reserved with mode 0, and failing that, written zeros.
func zeroRange(f *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	if err := fallocate(f, fallocZeroRange|fallocKeepSize, off, n); err == nil {
		return nil
	}
	if err := fallocate(f, fallocPunchHole|fallocKeepSize, off, n); err == nil {
		if err := fallocate(f, 0, off, n); err != nil {
			return fmt.Errorf("re-reserve punched range: %w", err)
		}
		return nil
	}
	zeros := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := f.WriteAt(zeros[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}
