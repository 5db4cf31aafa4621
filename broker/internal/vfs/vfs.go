package vfs

import (
	"io"
	"os"
	"syscall"

	"github.com/postbus/postbus/broker/fsync"
)

// FS is the set of file operations that change what is on disk.
type FS interface {
	// OpenFile is os.OpenFile.
	OpenFile(name string, flag int, perm os.FileMode) (*os.File, error)
	// WriteAt is f.WriteAt.
	WriteAt(f *os.File, b []byte, off int64) (int, error)
	// Write is f.Write, at f's current offset.
	Write(f *os.File, b []byte) (int, error)
	// Sync makes f's data, and the metadata needed to read it back, durable
	// (fdatasync). It does not make f's directory entry durable: SyncDir does.
	Sync(f *os.File) error
	// Truncate is f.Truncate.
	Truncate(f *os.File, size int64) error
	// Allocate reserves [0, size) of f (fallocate mode 0), growing it to
	// size if it is shorter.
	Allocate(f *os.File, size int64) error
	// ZeroRange makes [off, off+n) of f read as zeros, keeping it
	// allocated, without changing f's size.
	ZeroRange(f *os.File, off, n int64) error
	// Rename is os.Rename.
	Rename(oldpath, newpath string) error
	// Remove is os.Remove.
	Remove(name string) error
	// RemoveAll is os.RemoveAll.
	RemoveAll(name string) error
	// ReadDir is os.ReadDir.
	ReadDir(name string) ([]os.DirEntry, error)
	// MkdirAll is os.MkdirAll.
	MkdirAll(name string, perm os.FileMode) error
	// SyncDir fsyncs a directory, so that the entries created, renamed or
	// removed in it survive a crash.
	SyncDir(name string) error
}

// OS is the real file system.
var OS FS = osFS{}

type osFS struct{}

var _ FS = osFS{}

func (osFS) OpenFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	return os.OpenFile(name, flag, perm)
}

func (osFS) WriteAt(f *os.File, b []byte, off int64) (int, error) { return f.WriteAt(b, off) }

func (osFS) Write(f *os.File, b []byte) (int, error) { return f.Write(b) }

func (osFS) Sync(f *os.File) error { return datasync(f) }

func (osFS) Truncate(f *os.File, size int64) error { return f.Truncate(size) }

func (osFS) Allocate(f *os.File, size int64) error { return allocate(f, size) }

func (osFS) ZeroRange(f *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	return zeroRange(f, off, n)
}

// writeZerosAt is ZeroRange by writing zeros, for systems and file
// systems without a zeroing fallocate.
func writeZerosAt(f *os.File, off, n int64) error {
	return writeZeros(func(b []byte, off int64) (int, error) { return f.WriteAt(b, off) }, off, n)
}

// zeroChunk is the source of the zeros written by ZeroRange.
var zeroChunk [64 << 10]byte

// writeZeros writes n zeros from off with write, a chunk at a time.
func writeZeros(write func(b []byte, off int64) (int, error), off, n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeroChunk)))
		if _, err := write(zeroChunk[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

func (osFS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }

func (osFS) Remove(name string) error { return os.Remove(name) }

func (osFS) RemoveAll(name string) error { return os.RemoveAll(name) }

func (osFS) ReadDir(name string) ([]os.DirEntry, error) { return os.ReadDir(name) }

func (osFS) MkdirAll(name string, perm os.FileMode) error { return os.MkdirAll(name, perm) }

func (osFS) SyncDir(name string) error { return fsync.Dir(name) }

// Control runs op on f's descriptor, retrying EINTR. Going through
// SyscallConn (not Fd) keeps the descriptor from being closed under op.
// It is for the system calls os.File has no method for (fdatasync,
// fallocate, flock).
func Control(f *os.File, op func(fd int) error) error {
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

// Writer is an io.Writer that writes to f through fsys, for a bufio.Writer
// in front of a file.
func Writer(fsys FS, f *os.File) io.Writer { return writer{fsys, f} }

type writer struct {
	fsys FS
	f    *os.File
}

func (w writer) Write(b []byte) (int, error) { return w.fsys.Write(w.f, b) }

// Lock opens (creating if need be) the file at path through fsys and takes
// an exclusive, non-blocking flock on it: a second process locking the same
// file fails at once. The lock lasts until the file is closed, or the
// process dies, so a crash leaves nothing to clean up.
func Lock(fsys FS, path string) (*os.File, error) {
	f, err := fsys.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := lockFile(f); err != nil {
		_ = f.Close()
		return nil, err
	}
	return f, nil
}
