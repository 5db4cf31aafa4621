package commitlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/postbus/postbus/broker/internal/vfs"
)

// segment is one open segment file. Its base and size never change; the
// file is closed only by DropBefore (after setting dropped) or Close.
type segment struct {
	base    int64
	size    int64 // bytes of log it holds: Config.SegmentSize, unless recovered from a run configured otherwise
	path    string
	f       *os.File
	dropped atomic.Bool // set before DropBefore closes f, so a racing read or fsync knows why it failed
}

func segmentName(base int64) string { return fmt.Sprintf("%020d", base) }

// nextSuffix marks a file being prepared to become a segment. Recovery never
// takes such a file for a segment, so a crash mid-preparation leaves nothing
// it could misread; Open removes leftovers.
const nextSuffix = ".next"

// nextName names the file prepared for the segment at base. A roll may give
// it to a later base when an earlier roll could not wait for it.
func nextName(base int64) string { return segmentName(base) + nextSuffix }

// isNextName reports whether name is a file nextName produced.
func isNextName(name string) bool {
	stem, ok := strings.CutSuffix(name, nextSuffix)
	if !ok {
		return false
	}
	_, ok = parseSegmentName(stem)
	return ok
}

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
// tests wrap it to inject faults. Preparing a segment's zeros has its own
// write and sync, so that a fault aimed at appends or at the flusher does not
// land in the preparer instead (it runs concurrently), and the reverse.
type segmentIO interface {
	// allocate reserves [0, size) of f (fallocate mode 0).
	allocate(f *os.File, size int64) error
	// writeAt writes b at off like os.File.WriteAt.
	writeAt(f *os.File, b []byte, off int64) (int, error)
	// datasync flushes f's data and the metadata needed to read it back.
	datasync(f *os.File) error
	// zeroAt writes the zeros b at off of a file being prepared.
	zeroAt(f *os.File, b []byte, off int64) error
	// syncZeroed flushes a prepared file's zeros, once, at the end.
	syncZeroed(f *os.File) error
}

type osIO struct{}

var _ segmentIO = osIO{}

func (osIO) allocate(f *os.File, size int64) error { return vfs.OS.Allocate(f, size) }

func (osIO) writeAt(f *os.File, b []byte, off int64) (int, error) { return f.WriteAt(b, off) }

func (osIO) datasync(f *os.File) error { return vfs.OS.Sync(f) }

func (osIO) zeroAt(f *os.File, b []byte, off int64) error {
	_, err := f.WriteAt(b, off)
	return err
}

func (osIO) syncZeroed(f *os.File) error { return osIO{}.datasync(f) }

// fsIO does the segment operations through a vfs.FS.
type fsIO struct{ fs vfs.FS }

var _ segmentIO = fsIO{}

func (s fsIO) allocate(f *os.File, size int64) error { return s.fs.Allocate(f, size) }

func (s fsIO) writeAt(f *os.File, b []byte, off int64) (int, error) { return s.fs.WriteAt(f, b, off) }

func (s fsIO) datasync(f *os.File) error { return s.fs.Sync(f) }

func (s fsIO) zeroAt(f *os.File, b []byte, off int64) error {
	_, err := s.fs.WriteAt(f, b, off)
	return err
}

func (s fsIO) syncZeroed(f *os.File) error { return s.fs.Sync(f) }

// createSegment creates (or, after a failed earlier attempt, recreates) the
// segment file for base and preallocates it whole, so that no later write
// inside it can meet ENOSPC. On failure the file is removed again; ENOSPC is
// reported as ErrDiskFull. This is the fallback for a roll that finds no
// prepared file: quick, but it leaves unwritten extents, which make every
// append into the segment slower (see prepareFile).
func createSegment(fsys vfs.FS, dir string, base, size int64, sio segmentIO) (*segment, error) {
	path := filepath.Join(dir, segmentName(base))
	f, err := fsys.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return nil, fmt.Errorf("create segment %020d: %w: %w", base, ErrDiskFull, err)
		}
		return nil, fmt.Errorf("create segment %020d: %w", base, err)
	}
	if err := sio.allocate(f, size); err != nil {
		_ = f.Close()
		_ = fsys.Remove(path)
		if errors.Is(err, syscall.ENOSPC) {
			return nil, fmt.Errorf("preallocate segment %020d: %w: %w", base, ErrDiskFull, err)
		}
		return nil, fmt.Errorf("preallocate segment %020d: %w", base, err)
	}
	return &segment{base: base, size: size, path: path, f: f}, nil
}

// prepChunk is how many zeros prepareFile writes per pwrite. Not more: the
// page cache sizes a file's folios by the writes that create them (ext4 with
// large folios, Linux 6.16 on), and every later buffered write walks all the
// blocks of the folio it lands in. Zeros written 1 MiB at a time made each
// 268-byte append ~1.5 µs instead of ~0.8 µs; at 64 KiB small appends cost
// what they did into fallocated blocks, 27 KB ones a third of that, and the
// zeroing itself was no slower (64 MiB in ~30 ms on the machine measured).
const prepChunk = 64 << 10

// zeroBuf is the one source of zeros for every file the package zero-fills.
// Nothing ever writes to it.
var zeroBuf [prepChunk]byte

// errStopped: a preparation was abandoned because the log is closing.
var errStopped = errors.New("commitlog: segment preparation stopped")

// diskFull wraps ENOSPC with ErrDiskFull, which is what callers branch on.
func diskFull(err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("%w: %w", ErrDiskFull, err)
	}
	return err
}

// prepareFile creates path and makes it a segment file ready for appends:
// reserved whole first (so that a full disk shows up here, as ErrDiskFull,
// before any zero is written), then zeros written over all of it and one
// fdatasync at the end. Preallocation alone leaves unwritten extents, and a
// pwrite into those costs several times one into written blocks and makes
// the log's own fdatasync commit an extent conversion to the journal;
// zero-filled blocks cost neither. The zeros go out as plain pwrites of one
// shared buffer, prepChunk at a time, so that they queue behind the log's
// own writes rather than crowd them out, and one fdatasync at the end.
//
// zeroed, when not nil, follows how many bytes have been written. A closed
// stop abandons the work with errStopped. On any error the file is removed.
func prepareFile(fsys vfs.FS, path string, size int64, sio segmentIO, stop <-chan struct{}, zeroed *atomic.Int64) (f *os.File, err error) {
	f, err = fsys.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, diskFull(err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = fsys.Remove(path)
		}
	}()
	if err := sio.allocate(f, size); err != nil {
		return nil, fmt.Errorf("preallocate: %w", diskFull(err))
	}
	for off := int64(0); off < size; {
		select {
		case <-stop:
			return nil, errStopped
		default:
		}
		n := min(size-off, prepChunk)
		if err := sio.zeroAt(f, zeroBuf[:n], off); err != nil {
			return nil, fmt.Errorf("write zeros at %d: %w", off, diskFull(err))
		}
		off += n
		if zeroed != nil {
			zeroed.Store(off)
		}
	}
	if err := sio.syncZeroed(f); err != nil {
		return nil, fmt.Errorf("fsync zeros: %w", err)
	}
	return f, nil
}
