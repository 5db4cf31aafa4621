package vfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
)

// ErrCrashed is what every changing operation of a Fault returns once it has
// crashed, until Restore.
var ErrCrashed = errors.New("vfs: crashed")

// OpKind names an operation, for injection hooks and crash points.
type OpKind int

const (
	OpCreate   OpKind = iota + 1 // OpenFile that creates or truncates
	OpWrite                      // WriteAt and Write
	OpSync                       // Sync
	OpTruncate                   // Truncate
	OpAllocate                   // Allocate
	OpRename                     // Rename
	OpRemove                     // Remove and RemoveAll
	OpMkdir                      // MkdirAll that creates something
	OpSyncDir                    // SyncDir
)

var opNames = [...]string{OpCreate: "create", OpWrite: "write", OpSync: "sync", OpTruncate: "truncate",
	OpAllocate: "allocate", OpRename: "rename", OpRemove: "remove", OpMkdir: "mkdir", OpSyncDir: "syncdir"}

func (k OpKind) String() string {
	if k > 0 && int(k) < len(opNames) {
		return opNames[k]
	}
	return fmt.Sprintf("op(%d)", int(k))
}

// Op describes an operation about to be done, for an injection hook.
type Op struct {
	Kind OpKind
	Path string // the file or directory; for a rename, the old path
	Off  int64  // writes: where
	Len  int    // writes: how many bytes
}

// ShortWrite, returned by an injection hook for a write, makes the write put
// the first N bytes on disk and then fail with Err.
type ShortWrite struct {
	N   int
	Err error
}

func (e *ShortWrite) Error() string { return fmt.Sprintf("short write of %d bytes: %v", e.N, e.Err) }
func (e *ShortWrite) Unwrap() error { return e.Err }

// Fault is an FS over a real directory tree that can inject faults and
// simulate a power cut. See the package doc. Its zero value is not usable:
// NewFault makes one.
type Fault struct {
	trash string // where removed and replaced files are kept until Restore

	mu         sync.Mutex
	rng        *rand.Rand        // guarded by mu
	nodes      map[uint64]*node  // guarded by mu: unsynced changes by inode
	dirOps     []dirOp           // guarded by mu: entry changes, oldest first
	trashSeq   int               // guarded by mu
	crashed    bool              // guarded by mu
	crashDone  chan struct{}     // guarded by mu: closed once OnCrash's function has returned
	crashAfter int               // guarded by mu: >0: the crash is at the crashAfter-th next change
	full       bool              // guarded by mu
	inject     func(op Op) error // guarded by mu
	onCrash    func()            // guarded by mu
	counts     map[OpKind]int    // guarded by mu: operations done, by kind
}

var _ FS = (*Fault)(nil)

// node holds one file's changes since its last Sync, oldest first.
type node struct {
	pending []fileOp
}

type fileOpKind int

const (
	fileWrite fileOpKind = iota + 1
	fileTruncate
	fileAllocate
)

// fileOp is one change to a file's content or size, with what it replaced,
// so that Restore can undo it.
type fileOp struct {
	kind    fileOpKind
	off     int64  // write: where
	n       int    // write: how many bytes were written
	old     []byte // write: the bytes it overwrote (nil: zeros); truncate: the bytes it cut
	oldSize int64  // the file's size before
}

type dirOpKind int

const (
	dirCreate dirOpKind = iota + 1
	dirRemove
	dirRename
	dirRemoveAll
	dirMkdir
)

// dirOp is one change to a directory's entries, with what Restore needs to
// undo it. It is durable once the directory holding the entry it made is
// synced.
type dirOp struct {
	kind    dirOpKind
	path    string // the entry created, removed or made; a rename's new path
	oldPath string // a rename's old path
	backup  string // where the removed or replaced entry is kept, or ""
	synced  bool
}

// NewFault returns a Fault whose removed files are kept under trash (created
// if missing; it must be on the same file system as the files, and outside
// any directory a store lists). seed drives the crash choices of Restore and
// the tearing of a crashing write.
func NewFault(trash string, seed uint64) (*Fault, error) {
	if err := os.MkdirAll(trash, 0o755); err != nil {
		return nil, fmt.Errorf("vfs: trash: %w", err)
	}
	return &Fault{
		trash:  trash,
		rng:    rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		nodes:  make(map[uint64]*node),
		counts: make(map[OpKind]int),
	}, nil
}

// SetInject installs a hook called before every changing operation; an error
// it returns fails the operation without doing it (a *ShortWrite does part of
// a write). nil removes it.
func (f *Fault) SetInject(hook func(op Op) error) {
	f.mu.Lock()
	f.inject = hook
	f.mu.Unlock()
}

// SetFull makes writes that grow a file, growing truncates and allocations
// fail with ENOSPC (a write keeps the part that fits in the file), or stops it.
func (f *Fault) SetFull(full bool) {
	f.mu.Lock()
	f.full = full
	f.mu.Unlock()
}

// OnCrash sets a function called once, in the goroutine whose operation
// crashed (or Crash's caller), after the crash and before that operation
// returns.
func (f *Fault) OnCrash(fn func()) {
	f.mu.Lock()
	f.onCrash = fn
	f.mu.Unlock()
}

// CrashAfter makes the nth next changing operation (n >= 1) crash: a write
// puts a random prefix of its bytes on disk, any other operation is not done.
// n <= 0 cancels a pending crash point.
func (f *Fault) CrashAfter(n int) {
	f.mu.Lock()
	f.crashAfter = n
	f.mu.Unlock()
}

// Crash crashes now, if not already crashed. It returns once the OnCrash
// function has run, in whichever goroutine crashed first.
func (f *Fault) Crash() {
	f.mu.Lock()
	if f.crashed {
		done := f.crashDone
		f.mu.Unlock()
		<-done
		return
	}
	f.crashed = true
	f.crashDone = make(chan struct{})
	fn, done := f.onCrash, f.crashDone
	f.mu.Unlock()
	if fn != nil {
		fn()
	}
	close(done)
}

// Crashed reports whether the Fault has crashed and not been restored.
func (f *Fault) Crashed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.crashed
}

// Count reports how many operations of kind k were done (or attempted and
// failed by injection) since NewFault.
func (f *Fault) Count(k OpKind) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[k]
}

// begin runs the checks common to every changing operation, with f.mu held:
// a crash already happened, the injection hook, the crash point. It returns
// crashNow when this operation is the crash point: the caller does what a
// crash leaves of it, then calls crash.
func (f *Fault) begin(op Op) (crashNow bool, err error) {
	if f.crashed {
		return false, fmt.Errorf("%s %s: %w", op.Kind, op.Path, ErrCrashed)
	}
	f.counts[op.Kind]++
	if f.crashAfter > 0 {
		f.crashAfter--
		if f.crashAfter == 0 {
			f.crashed = true
			f.crashDone = make(chan struct{})
			return true, nil
		}
	}
	if f.inject != nil {
		if err := f.inject(op); err != nil {
			return false, err
		}
	}
	return false, nil
}

// start begins an operation that is done whole or not at all (all but a
// write), with f.mu held: the checks of begin, and if it is the crash
// point, the crash, which it is then not done in. A nil error means: do it.
func (f *Fault) start(op Op) error {
	crashNow, err := f.begin(op)
	if err != nil || !crashNow {
		return err
	}
	f.mu.Unlock()
	defer f.mu.Lock()
	return f.crash(op)
}

// crash ends an operation that was the crash point; f.mu must not be held.
func (f *Fault) crash(op Op) error {
	f.mu.Lock()
	fn, done := f.onCrash, f.crashDone
	f.mu.Unlock()
	if fn != nil {
		fn()
	}
	close(done)
	return fmt.Errorf("%s %s: %w", op.Kind, op.Path, ErrCrashed)
}

// nodeOf returns the tracking of f's inode and its current size; f.mu held.
func (f *Fault) nodeOf(file *os.File) (*node, int64, error) {
	fi, err := file.Stat()
	if err != nil {
		return nil, 0, err
	}
	ino := inode(fi)
	n := f.nodes[ino]
	if n == nil {
		n = &node{}
		f.nodes[ino] = n
	}
	return n, fi.Size(), nil
}

// OpenFile opens like os.OpenFile. A file opened write-only is opened
// read-write, so that what a write overwrites can be read first.
func (f *Fault) OpenFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	changes := flag&(os.O_CREATE|os.O_TRUNC) != 0
	if flag&os.O_WRONLY != 0 {
		flag = flag&^os.O_WRONLY | os.O_RDWR
	}
	if !changes {
		file, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		f.mu.Lock()
		_, _, err = f.nodeOf(file) // known from now on, as durable as it is
		f.mu.Unlock()
		if err != nil {
			file.Close()
			return nil, err
		}
		return file, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	op := Op{Kind: OpCreate, Path: name}
	if err := f.start(op); err != nil {
		return nil, err
	}
	_, statErr := os.Lstat(name)
	existed := statErr == nil
	var old []byte
	if existed && flag&os.O_TRUNC != 0 {
		var err error
		if old, err = os.ReadFile(name); err != nil {
			return nil, err
		}
	}
	file, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	n, _, err := f.nodeOf(file)
	if err != nil {
		file.Close()
		return nil, err
	}
	if !existed {
		// A new inode: what an earlier file of the same number did is moot.
		n.pending = nil
		f.dirOps = append(f.dirOps, dirOp{kind: dirCreate, path: name})
	} else if len(old) > 0 {
		n.pending = append(n.pending, fileOp{kind: fileTruncate, old: old, oldSize: int64(len(old))})
	}
	return file, nil
}

// WriteAt writes like file.WriteAt.
func (f *Fault) WriteAt(file *os.File, b []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writeAt(file, b, off)
}

// Write writes at file's offset, like file.Write.
func (f *Fault) Write(file *os.File, b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	off, err := file.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, err
	}
	n, err := f.writeAt(file, b, off)
	if _, serr := file.Seek(off+int64(n), io.SeekStart); err == nil {
		err = serr
	}
	return n, err
}

func (f *Fault) writeAt(file *os.File, b []byte, off int64) (int, error) {
	op := Op{Kind: OpWrite, Path: file.Name(), Off: off, Len: len(b)}
	crashNow, err := f.begin(op)
	keep := len(b)
	var short *ShortWrite
	switch {
	case crashNow:
		keep = f.rng.IntN(len(b) + 1)
	case errors.As(err, &short):
		keep = min(max(short.N, 0), len(b))
		err = short.Err
	case err != nil:
		return 0, err
	}
	nd, size, serr := f.nodeOf(file)
	if serr != nil {
		return 0, serr
	}
	if f.full && off+int64(keep) > size && !crashNow {
		keep = int(max(0, size-off))
		err = &os.PathError{Op: "write", Path: file.Name(), Err: syscall.ENOSPC}
	}
	if keep > 0 {
		old := make([]byte, keep)
		if off < size {
			if _, rerr := file.ReadAt(old[:min(int64(keep), size-off)], off); rerr != nil && rerr != io.EOF {
				return 0, rerr
			}
		}
		if isZero(old) {
			old = nil
		}
		w, werr := file.WriteAt(b[:keep], off)
		if w > 0 {
			nd.pending = append(nd.pending, fileOp{kind: fileWrite, off: off, n: w, old: old, oldSize: size})
		}
		if werr != nil {
			return w, werr
		}
	}
	if crashNow {
		f.mu.Unlock()
		err = f.crash(op)
		f.mu.Lock()
	}
	return keep, err
}

// zeros is compared against in chunks: bytes.Equal is far cheaper than a
// loop, which matters under the race detector.
var zeros [64 << 10]byte

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// Sync makes file's changes durable (fdatasync).
func (f *Fault) Sync(file *os.File) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := Op{Kind: OpSync, Path: file.Name()}
	if err := f.start(op); err != nil {
		return err
	}
	if err := OS.Sync(file); err != nil {
		return err
	}
	nd, _, err := f.nodeOf(file)
	if err != nil {
		return err
	}
	nd.pending = nil
	return nil
}

// Truncate changes file's size like file.Truncate.
func (f *Fault) Truncate(file *os.File, size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := Op{Kind: OpTruncate, Path: file.Name(), Off: size}
	if err := f.start(op); err != nil {
		return err
	}
	nd, cur, err := f.nodeOf(file)
	if err != nil {
		return err
	}
	if f.full && size > cur {
		return &os.PathError{Op: "truncate", Path: file.Name(), Err: syscall.ENOSPC}
	}
	var old []byte
	if size < cur {
		old = make([]byte, cur-size)
		if _, err := file.ReadAt(old, size); err != nil && err != io.EOF {
			return err
		}
	}
	if err := file.Truncate(size); err != nil {
		return err
	}
	nd.pending = append(nd.pending, fileOp{kind: fileTruncate, old: old, oldSize: cur})
	return nil
}

// Allocate reserves [0, size) of file, growing it if shorter.
func (f *Fault) Allocate(file *os.File, size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := Op{Kind: OpAllocate, Path: file.Name(), Off: size}
	if err := f.start(op); err != nil {
		return err
	}
	if f.full {
		return &os.PathError{Op: "fallocate", Path: file.Name(), Err: syscall.ENOSPC}
	}
	nd, cur, err := f.nodeOf(file)
	if err != nil {
		return err
	}
	if err := OS.Allocate(file, size); err != nil {
		return err
	}
	nd.pending = append(nd.pending, fileOp{kind: fileAllocate, oldSize: cur})
	return nil
}

// ZeroRange writes zeros over [off, off+n) of file, a write (and a
// possible crash point) per 64 KiB, so that a crash can undo it like any
// unsynced write.
func (f *Fault) ZeroRange(file *os.File, off, n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return writeZeros(func(b []byte, off int64) (int, error) { return f.writeAt(file, b, off) }, off, n)
}

// toTrash keeps the entry at path (a hard link for a file, the tree itself
// for a directory when move is set) in the trash, and returns where.
func (f *Fault) toTrash(path string, move bool) (string, error) {
	f.trashSeq++
	dst := filepath.Join(f.trash, fmt.Sprintf("%06d-%s", f.trashSeq, filepath.Base(path)))
	if move {
		return dst, os.Rename(path, dst)
	}
	return dst, os.Link(path, dst)
}

// Rename renames like os.Rename; a file it replaces is kept for Restore.
func (f *Fault) Rename(oldpath, newpath string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := Op{Kind: OpRename, Path: oldpath}
	if err := f.start(op); err != nil {
		return err
	}
	if _, err := os.Lstat(oldpath); err != nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: err}
	}
	var backup string
	if fi, err := os.Lstat(newpath); err == nil && fi.Mode().IsRegular() {
		if backup, err = f.toTrash(newpath, false); err != nil {
			return err
		}
	}
	if err := os.Rename(oldpath, newpath); err != nil {
		if backup != "" {
			_ = os.Remove(backup)
		}
		return err
	}
	f.dirOps = append(f.dirOps, dirOp{kind: dirRename, path: newpath, oldPath: oldpath, backup: backup})
	return nil
}

// Remove removes like os.Remove; the file is kept for Restore.
func (f *Fault) Remove(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := Op{Kind: OpRemove, Path: name}
	if err := f.start(op); err != nil {
		return err
	}
	fi, err := os.Lstat(name)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		if err := os.Remove(name); err != nil {
			return err
		}
		f.dirOps = append(f.dirOps, dirOp{kind: dirRemoveAll, path: name})
		return nil
	}
	backup, err := f.toTrash(name, false)
	if err != nil {
		return err
	}
	if err := os.Remove(name); err != nil {
		_ = os.Remove(backup)
		return err
	}
	f.dirOps = append(f.dirOps, dirOp{kind: dirRemove, path: name, backup: backup})
	return nil
}

// RemoveAll removes like os.RemoveAll, by moving the tree to the trash.
func (f *Fault) RemoveAll(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := Op{Kind: OpRemove, Path: name}
	if err := f.start(op); err != nil {
		return err
	}
	fi, err := os.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	backup, err := f.toTrash(name, fi.IsDir())
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		if err := os.Remove(name); err != nil {
			return err
		}
		f.dirOps = append(f.dirOps, dirOp{kind: dirRemove, path: name, backup: backup})
		return nil
	}
	f.dirOps = append(f.dirOps, dirOp{kind: dirRemoveAll, path: name, backup: backup})
	return nil
}

// ReadDir lists like os.ReadDir.
func (f *Fault) ReadDir(name string) ([]os.DirEntry, error) { return os.ReadDir(name) }

// MkdirAll makes directories like os.MkdirAll; each one made is an entry of
// its parent, durable once the parent is synced.
func (f *Fault) MkdirAll(name string, perm os.FileMode) error {
	var missing []string
	for p := filepath.Clean(name); ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		}
		missing = append(missing, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	if len(missing) == 0 {
		return os.MkdirAll(name, perm) // fails if name is not a directory
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	op := Op{Kind: OpMkdir, Path: name}
	if err := f.start(op); err != nil {
		return err
	}
	slices.Reverse(missing)
	for _, p := range missing {
		if err := os.Mkdir(p, perm); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		} else if err == nil {
			f.dirOps = append(f.dirOps, dirOp{kind: dirMkdir, path: p})
		}
	}
	return nil
}

// SyncDir fsyncs a directory: every entry change in it becomes durable.
func (f *Fault) SyncDir(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := Op{Kind: OpSyncDir, Path: name}
	if err := f.start(op); err != nil {
		return err
	}
	if err := OS.SyncDir(name); err != nil {
		return err
	}
	dir := filepath.Clean(name)
	for i := range f.dirOps {
		d := &f.dirOps[i]
		if filepath.Dir(d.path) == dir {
			d.synced = true
		}
	}
	return nil
}

// Restore turns the files under root into what a power cut at the crash
// could have left, and makes the Fault usable again with that as its durable
// state. It crashes first if the Fault has not crashed. The processes that
// used it must have stopped using it (closed their files).
func (f *Fault) Restore(root string) error {
	f.Crash()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.undoDirOps(); err != nil {
		return fmt.Errorf("vfs: restore entries: %w", err)
	}
	if err := f.undoFileOps(root); err != nil {
		return fmt.Errorf("vfs: restore contents: %w", err)
	}
	if err := os.RemoveAll(f.trash); err != nil {
		return err
	}
	if err := os.MkdirAll(f.trash, 0o755); err != nil {
		return err
	}
	f.nodes = make(map[uint64]*node)
	f.dirOps = nil
	f.crashed = false
	f.crashAfter = 0
	f.full = false
	return nil
}

// undoDirOps undoes, newest first, a random choice of the entry changes not
// yet synced, sparing any a later kept change depends on.
func (f *Fault) undoDirOps() error {
	kept := make(map[string]bool)    // paths a later kept change touched
	keptDir := make(map[string]bool) // directories a later kept change needs
	keep := func(d dirOp) {
		for _, p := range []string{d.path, d.oldPath} {
			if p != "" {
				kept[p] = true
				for q := filepath.Dir(p); q != filepath.Dir(q); q = filepath.Dir(q) {
					keptDir[q] = true
				}
			}
		}
	}
	for i := len(f.dirOps) - 1; i >= 0; i-- {
		d := f.dirOps[i]
		if d.synced || kept[d.path] || (d.oldPath != "" && kept[d.oldPath]) || keptDir[d.path] || f.rng.IntN(2) == 0 {
			keep(d)
			continue
		}
		var err error
		switch d.kind {
		case dirCreate:
			err = os.Remove(d.path)
		case dirRemove:
			err = os.Link(d.backup, d.path)
		case dirRemoveAll:
			if d.backup != "" {
				err = os.Rename(d.backup, d.path)
			} else {
				err = os.Mkdir(d.path, 0o755)
			}
		case dirRename:
			if err = os.Rename(d.path, d.oldPath); err == nil && d.backup != "" {
				err = os.Link(d.backup, d.path)
			}
		case dirMkdir:
			if err = os.Remove(d.path); err != nil {
				// Not empty: files made durable inside it keep it.
				keep(d)
				err = nil
			}
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("undo %d on %s: %w", d.kind, d.path, err)
		}
	}
	return nil
}

// undoFileOps keeps a random prefix of each file's unsynced changes, the
// last kept write possibly torn, and undoes the rest, newest first.
func (f *Fault) undoFileOps(root string) error {
	paths := make(map[uint64]string)
	for _, dir := range []string{root, f.trash} {
		err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return err
			}
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				// A file the Fault does not write (SQLite's -shm, removed
				// when a closing connection lets go) may go between the
				// listing and its stat: it has no pending writes to undo.
				return nil
			}
			if err != nil {
				return err
			}
			paths[inode(fi)] = p
			return nil
		})
		if err != nil {
			return err
		}
	}
	inos := make([]uint64, 0, len(f.nodes))
	for ino := range f.nodes {
		inos = append(inos, ino)
	}
	slices.Sort(inos) // map order would make Restore depend on more than the seed
	for _, ino := range inos {
		nd := f.nodes[ino]
		path, ok := paths[ino]
		if !ok || len(nd.pending) == 0 {
			continue
		}
		keep := f.rng.IntN(len(nd.pending) + 1)
		tear := keep > 0 && nd.pending[keep-1].kind == fileWrite && f.rng.IntN(2) == 0
		if err := undoFile(path, nd.pending, keep, tear, f.rng); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	return nil
}

func undoFile(path string, ops []fileOp, keep int, tear bool, rng *rand.Rand) error {
	file, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer file.Close()
	for i := len(ops) - 1; i >= keep; i-- {
		if err := undoOp(file, ops[i], 0); err != nil {
			return err
		}
	}
	if tear {
		op := ops[keep-1]
		if err := undoOp(file, op, 1+rng.IntN(op.n)); err != nil {
			return err
		}
	}
	return nil
}

// undoOp undoes op on file; for a write, only from its byte from on.
func undoOp(file *os.File, op fileOp, from int) error {
	switch op.kind {
	case fileWrite:
		n := op.n - from
		if n <= 0 {
			return nil
		}
		old := op.old
		if old == nil {
			old = make([]byte, op.n)
		}
		if _, err := file.WriteAt(old[from:op.n], op.off+int64(from)); err != nil {
			return err
		}
		if end := op.off + int64(op.n); end > op.oldSize {
			return file.Truncate(max(op.oldSize, op.off+int64(from)))
		}
	case fileTruncate:
		if err := file.Truncate(op.oldSize); err != nil {
			return err
		}
		if len(op.old) > 0 {
			if _, err := file.WriteAt(op.old, op.oldSize-int64(len(op.old))); err != nil {
				return err
			}
		}
	case fileAllocate:
		fi, err := file.Stat()
		if err != nil {
			return err
		}
		if fi.Size() > op.oldSize {
			return file.Truncate(op.oldSize)
		}
	}
	return nil
}
