package consumequeue

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/postbus/postbus/broker/internal/durable"
	"github.com/postbus/postbus/broker/internal/vfs"
)

// Errors callers branch on.
var (
	// ErrOutOfOrder: Append at a queue offset other than Max, or with a
	// commitlog offset not above the previous entry's.
	ErrOutOfOrder = errors.New("consumequeue: append out of order")
	// ErrOutOfRange: a read below the queue's Min.
	ErrOutOfRange = errors.New("consumequeue: queue offset out of range")
	// ErrInvalidTopic: a topic name that does not match the topic syntax.
	ErrInvalidTopic = errors.New("consumequeue: invalid topic name")
	// ErrInvalidQueue: a negative or oversized queue id.
	ErrInvalidQueue = errors.New("consumequeue: invalid queue id")
	// ErrInvalidEntry: an entry with Size <= 0 or a negative Offset.
	ErrInvalidEntry = errors.New("consumequeue: invalid entry")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("consumequeue: store closed")
)

// Defaults used for zero Config fields.
const (
	DefaultEntriesPerFile = 300_000
	DefaultMaxOpenFiles   = 256
	DefaultQueueBuffer    = 256
	DefaultMaxBuffered    = 65_536
)

// MaxReadEntries caps the entries one Read returns, whatever the caller asks,
// so a careless limit cannot allocate without bound.
const MaxReadEntries = 65_536

// readAttempts bounds how often a read retries when the writer truncated or
// deleted entries under it.
const readAttempts = 4

// Config configures a Store. Zero fields take the defaults.
type Config struct {
	Dir            string
	EntriesPerFile int64        // entries per file; default 300,000 (6,000,000 bytes)
	MaxOpenFiles   int          // open file handles kept in the LRU; default 256
	QueueBuffer    int          // entries buffered per queue before a write; default 256
	MaxBuffered    int          // entries buffered over all queues before a write; default 65,536
	Logger         *slog.Logger // default slog.Default()
	FS             vfs.FS       // file operations that change the directory; default vfs.OS
}

// DefaultConfig returns the defaults for a store in dir.
func DefaultConfig(dir string) Config {
	return Config{
		Dir:            dir,
		EntriesPerFile: DefaultEntriesPerFile,
		MaxOpenFiles:   DefaultMaxOpenFiles,
		QueueBuffer:    DefaultQueueBuffer,
		MaxBuffered:    DefaultMaxBuffered,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig(c.Dir)
	if c.EntriesPerFile == 0 {
		c.EntriesPerFile = d.EntriesPerFile
	}
	if c.MaxOpenFiles == 0 {
		c.MaxOpenFiles = d.MaxOpenFiles
	}
	if c.QueueBuffer == 0 {
		c.QueueBuffer = d.QueueBuffer
	}
	if c.MaxBuffered == 0 {
		c.MaxBuffered = d.MaxBuffered
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.FS == nil {
		c.FS = vfs.OS
	}
	return c
}

// Validate reports a configuration the store cannot run with.
func (c Config) Validate() error {
	switch {
	case c.Dir == "":
		return errors.New("consumequeue: config: empty Dir")
	case c.EntriesPerFile < 1 || c.EntriesPerFile > 1<<40:
		return fmt.Errorf("consumequeue: config: EntriesPerFile %d out of range", c.EntriesPerFile)
	case c.MaxOpenFiles < 1:
		return fmt.Errorf("consumequeue: config: MaxOpenFiles %d < 1", c.MaxOpenFiles)
	case c.QueueBuffer < 1:
		return fmt.Errorf("consumequeue: config: QueueBuffer %d < 1", c.QueueBuffer)
	case c.MaxBuffered < 1:
		return fmt.Errorf("consumequeue: config: MaxBuffered %d < 1", c.MaxBuffered)
	}
	return nil
}

// Store holds every consume queue under one directory.
type Store struct {
	cfg   Config
	log   *slog.Logger
	files *fileCache

	closed   atomic.Bool
	buffered atomic.Int64 // entries buffered over all queues; written by the writer only

	mu     sync.RWMutex
	queues map[QueueID]*queue // guarded by mu; changed only by the writer

	// wmu serialises the writer operations and guards the fields below.
	wmu        sync.Mutex
	dirty      map[*queue]struct{}  // queues with buffered entries
	dirtyFiles map[fileKey]struct{} // files written since their last fsync
	dirtyDirs  map[string]struct{}  // directories with new entries since their last fsync
	logMin     int64                // retention floor persisted in _logmin
	enc        []byte               // encode buffer for writes
}

// queue is one consume queue. Its mutable fields are guarded by mu and are
// changed only by the writer (holding Store.wmu), which may therefore read
// them without mu.
type queue struct {
	id  QueueID
	dir string

	mu      sync.RWMutex
	files   []int64 // bases of the files, ascending; elements never change in place
	min     int64   // first live entry
	max     int64   // one past the last entry
	written int64   // entries below are in files; [written, max) are in buf
	buf     []Entry // buffered entries [written, max)
	lastOff int64   // commitlog offset of entry max-1; -1 when unknown
	gen     uint64  // bumped whenever entries below written may change on disk
	deleted bool
}

// Stats describes the store for metrics.
type Stats struct {
	Queues          int
	OpenFiles       int
	BufferedEntries int64
}

// Open opens (creating if needed) the store in cfg.Dir and discovers the
// queues already on disk.
func Open(cfg Config) (*Store, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.FS.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("open consume queues: %w", err)
	}
	s := &Store{
		cfg:        cfg,
		log:        cfg.Logger,
		files:      newFileCache(cfg.FS, cfg.MaxOpenFiles),
		queues:     make(map[QueueID]*queue),
		dirty:      make(map[*queue]struct{}),
		dirtyFiles: make(map[fileKey]struct{}),
		dirtyDirs:  make(map[string]struct{}),
	}
	logMin, err := readLogMin(cfg.Dir)
	if err != nil {
		// Derived data: a lost floor only leaves dead entries visible until
		// the broker's next DropBefore.
		s.log.Warn("consume queue retention floor unreadable; using 0", "dir", cfg.Dir, "err", err)
		logMin = 0
	}
	s.logMin = logMin
	if err := s.discover(); err != nil {
		_ = s.files.closeAll()
		return nil, err
	}
	if logMin > 0 {
		for _, q := range s.queues {
			if err := s.advanceMin(q, logMin); err != nil {
				_ = s.files.closeAll()
				return nil, fmt.Errorf("open consume queue %s: %w", q.id, err)
			}
		}
	}
	return s, nil
}

func (s *Store) discover() error {
	topics, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return fmt.Errorf("open consume queues: %w", err)
	}
	for _, t := range topics {
		if !t.IsDir() || !ValidTopic(t.Name()) {
			continue
		}
		topicDir := filepath.Join(s.cfg.Dir, t.Name())
		qdirs, err := os.ReadDir(topicDir)
		if err != nil {
			return fmt.Errorf("open topic %s: %w", t.Name(), err)
		}
		for _, d := range qdirs {
			n, ok := parseQueueDir(d.Name())
			if !d.IsDir() || !ok {
				continue
			}
			id := QueueID{Topic: t.Name(), Queue: n}
			q, err := s.loadQueue(id, filepath.Join(topicDir, d.Name()))
			if err != nil {
				return fmt.Errorf("open consume queue %s: %w", id, err)
			}
			if q != nil {
				s.queues[id] = q
			}
		}
	}
	return nil
}

// loadQueue rebuilds a queue's state from its files, cutting what a crash
// may have left behind. It returns nil for a directory without files.
func (s *Store) loadQueue(id QueueID, dir string) (*queue, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	type file struct {
		base int64
		size int64
	}
	var files []file
	for _, e := range ents {
		base, ok := parseBase(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, err
		}
		files = append(files, file{base, info.Size()})
	}
	if len(files) == 0 {
		return nil, nil
	}
	slices.SortFunc(files, func(a, b file) int { return cmp.Compare(a.base, b.base) })

	// A non-last file shorter than the distance to the next one means the
	// crash hit a write spanning both: the queue ends in the short file.
	for i := 0; i < len(files)-1; i++ {
		if files[i].size/EntrySize >= files[i+1].base-files[i].base {
			continue
		}
		for _, f := range files[i+1:] {
			s.log.Warn("consume queue: removing file after a short one", "queue", id.String(), "file", fileName(f.base))
			if err := s.cfg.FS.Remove(filepath.Join(dir, fileName(f.base))); err != nil {
				return nil, err
			}
		}
		files = files[:i+1]
		break
	}

	q := &queue{id: id, dir: dir, lastOff: -1}
	for _, f := range files {
		q.files = append(q.files, f.base)
	}
	last := files[len(files)-1]
	count, err := trimTail(s.cfg.FS, filepath.Join(dir, fileName(last.base)), last.size)
	if err != nil {
		return nil, err
	}
	if count*EntrySize != last.size {
		s.log.Warn("consume queue: cut torn tail", "queue", id.String(), "file", fileName(last.base),
			"size", last.size, "kept", count*EntrySize)
	}
	q.min = files[0].base
	q.max = last.base + count
	q.written = q.max
	if q.max > q.min {
		var one [1]Entry
		if err := s.readDisk(q, q.files, q.written, q.max-1, q.max, one[:]); err != nil {
			return nil, err
		}
		q.lastOff = one[0].Offset
	}
	return q, nil
}

// trimTail returns how many whole, non-garbage entries the file holds and
// truncates it to them when it holds more bytes.
func trimTail(fsys vfs.FS, path string, size int64) (int64, error) {
	count := size / EntrySize
	f, err := fsys.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var buf [204 * EntrySize]byte
scan:
	for count > 0 {
		n := min(count, int64(len(buf)/EntrySize))
		b := buf[:n*EntrySize]
		if _, err := f.ReadAt(b, (count-n)*EntrySize); err != nil {
			return 0, err
		}
		for j := n - 1; j >= 0; j-- {
			if !garbage(getEntry(b[j*EntrySize:])) {
				break scan
			}
			count--
		}
	}
	if count*EntrySize != size {
		if err := fsys.Truncate(f, count*EntrySize); err != nil {
			return 0, err
		}
		if err := fsys.Sync(f); err != nil {
			return 0, err
		}
	}
	return count, nil
}

// Close flushes and closes the store. It is idempotent.
func (s *Store) Close() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return nil
	}
	err := s.flushLocked()
	s.closed.Store(true)
	if cerr := s.files.closeAll(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close consume queues: %w", cerr))
	}
	return err
}

func (s *Store) lookup(topic string, queue int) *queue {
	s.mu.RLock()
	q := s.queues[QueueID{topic, queue}]
	s.mu.RUnlock()
	return q
}

// Append adds e at queue offset qoff, which must equal the queue's Max. As an
// exception, an empty queue (Min == Max) accepts any qoff above Max and
// restarts there, which lets the broker rebuild queues from a commitlog whose
// oldest segments are gone. The entry is buffered and visible to readers at
// once; it is durable after the next Flush.
func (s *Store) Append(topic string, queue int, qoff int64, e Entry) error {
	if e.Size <= 0 || e.Offset < 0 {
		return fmt.Errorf("append %s/%d at %d: offset %d size %d: %w", topic, queue, qoff, e.Offset, e.Size, ErrInvalidEntry)
	}
	if qoff < 0 {
		return fmt.Errorf("append %s/%d at %d: %w", topic, queue, qoff, ErrOutOfOrder)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	q := s.lookup(topic, queue)
	if q == nil {
		var err error
		if q, err = s.create(QueueID{topic, queue}); err != nil {
			return fmt.Errorf("append at %d: %w", qoff, err)
		}
	}
	if e.Offset <= q.lastOff {
		return fmt.Errorf("append %s at %d: commitlog offset %d after %d: %w", q.id, qoff, e.Offset, q.lastOff, ErrOutOfOrder)
	}
	if qoff != q.max {
		if q.min != q.max || qoff < q.max {
			return fmt.Errorf("append %s at %d, max %d: %w", q.id, qoff, q.max, ErrOutOfOrder)
		}
		if err := s.rebase(q, qoff); err != nil {
			return fmt.Errorf("append %s at %d: %w", q.id, qoff, err)
		}
	}
	// Make room first, so that an error means the entry was not appended.
	if s.buffered.Load() >= int64(s.cfg.MaxBuffered) {
		if err := s.spillAll(); err != nil {
			return fmt.Errorf("append %s at %d: %w", q.id, qoff, err)
		}
	} else if len(q.buf) >= s.cfg.QueueBuffer {
		if err := s.spill(q, true); err != nil {
			return fmt.Errorf("append %s at %d: %w", q.id, qoff, err)
		}
	}
	q.mu.Lock()
	q.buf = append(q.buf, e)
	q.max++
	q.lastOff = e.Offset
	q.mu.Unlock()
	s.dirty[q] = struct{}{}
	s.buffered.Add(1)
	return nil
}

func (s *Store) create(id QueueID) (*queue, error) {
	if err := checkQueueID(id); err != nil {
		return nil, err
	}
	q := &queue{
		id:      id,
		dir:     filepath.Join(s.cfg.Dir, id.Topic, fmt.Sprint(id.Queue)),
		lastOff: -1,
	}
	s.mu.Lock()
	s.queues[id] = q
	s.mu.Unlock()
	return q, nil
}

// rebase restarts an empty queue at qoff, deleting its dead files so that
// the files stay contiguous.
func (s *Store) rebase(q *queue, qoff int64) error {
	dead := q.files
	s.buffered.Add(-int64(len(q.buf)))
	delete(s.dirty, q)
	q.mu.Lock()
	q.files = nil
	q.buf = q.buf[:0]
	q.min, q.max, q.written = qoff, qoff, qoff
	q.gen++
	q.mu.Unlock()
	return s.removeFiles(q, dead)
}

// removeFiles deletes files of q that are no longer listed in q.files.
func (s *Store) removeFiles(q *queue, bases []int64) error {
	var errs []error
	for _, base := range bases {
		key := fileKey{q, base}
		s.files.evict(key)
		delete(s.dirtyFiles, key)
		if err := s.cfg.FS.Remove(key.path()); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s file %020d: %w", q.id, base, err))
		}
	}
	return errors.Join(errs...)
}

// spill writes q's buffered entries to its files (no fsync). keep keeps the
// buffer's memory for a queue that filled it and will soon again; otherwise
// it is released, so that idle queues hold no buffer and the memory of all
// buffers stays within about twice MaxBuffered entries.
func (s *Store) spill(q *queue, keep bool) error {
	n := int64(len(q.buf))
	if n == 0 {
		delete(s.dirty, q)
		return nil
	}
	enc := s.enc[:0]
	for _, e := range q.buf {
		enc = append(enc, make([]byte, EntrySize)...)
		putEntry(enc[len(enc)-EntrySize:], e)
	}
	s.enc = enc
	start := q.written
	for i := start; i < q.max; {
		var base int64
		if len(q.files) > 0 {
			base = q.files[len(q.files)-1]
		}
		if len(q.files) == 0 || i-base >= s.cfg.EntriesPerFile {
			if err := s.addFile(q, i); err != nil {
				return err
			}
			base = i
		}
		end := min(q.max, base+s.cfg.EntriesPerFile)
		key := fileKey{q, base}
		h, err := s.files.acquire(key, true)
		if err != nil {
			return fmt.Errorf("write %s file %020d: %w", q.id, base, err)
		}
		_, err = s.cfg.FS.WriteAt(h.f, enc[(i-start)*EntrySize:(end-start)*EntrySize], (i-base)*EntrySize)
		s.files.release(h)
		if err != nil {
			return fmt.Errorf("write %s file %020d: %w", q.id, base, err)
		}
		s.dirtyFiles[key] = struct{}{}
		i = end
	}
	q.mu.Lock()
	q.written = q.max
	if keep {
		q.buf = q.buf[:0]
	} else {
		q.buf = nil
	}
	q.mu.Unlock()
	s.buffered.Add(-n)
	delete(s.dirty, q)
	return nil
}

// addFile lists a new file starting at base; the write that follows creates it.
func (s *Store) addFile(q *queue, base int64) error {
	if len(q.files) == 0 {
		if err := s.cfg.FS.MkdirAll(q.dir, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", q.id, err)
		}
		// The queue and topic directories may be new too.
		s.dirtyDirs[filepath.Dir(q.dir)] = struct{}{}
		s.dirtyDirs[s.cfg.Dir] = struct{}{}
	}
	s.dirtyDirs[q.dir] = struct{}{}
	q.mu.Lock()
	q.files = append(q.files, base)
	q.mu.Unlock()
	return nil
}

func (s *Store) spillAll() error {
	var errs []error
	for q := range s.dirty {
		if err := s.spill(q, false); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Flush writes every buffered entry and fsyncs every file and directory
// changed since the last Flush. After it returns nil, everything appended
// before survives a crash.
func (s *Store) Flush() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	return s.flushLocked()
}

func (s *Store) flushLocked() error {
	if err := s.spillAll(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	for key := range s.dirtyFiles {
		h, err := s.files.acquire(key, false)
		if err != nil {
			return fmt.Errorf("flush %s file %020d: %w", key.q.id, key.base, err)
		}
		err = s.cfg.FS.Sync(h.f)
		s.files.release(h)
		if err != nil {
			return fmt.Errorf("flush %s file %020d: %w", key.q.id, key.base, err)
		}
		delete(s.dirtyFiles, key)
	}
	for dir := range s.dirtyDirs {
		if err := durable.SyncDir(s.cfg.FS, dir); err != nil {
			return fmt.Errorf("flush: %w", err)
		}
		delete(s.dirtyDirs, dir)
	}
	return nil
}

// Read appends to dst up to limit entries starting at queue offset from. A
// from below Min fails with ErrOutOfRange; a from at or past Max returns no
// entries. At most MaxReadEntries are returned per call.
func (s *Store) Read(topic string, queue int, from int64, limit int, dst []Entry) ([]Entry, error) {
	if s.closed.Load() {
		return dst, ErrClosed
	}
	q := s.lookup(topic, queue)
	if q == nil {
		if from < 0 {
			return dst, fmt.Errorf("read %s/%d at %d: %w", topic, queue, from, ErrOutOfRange)
		}
		return dst, nil
	}
	return s.readQueue(q, from, limit, dst)
}

func (s *Store) readQueue(q *queue, from int64, limit int, dst []Entry) ([]Entry, error) {
	limit = min(limit, MaxReadEntries)
	n0 := len(dst)
	var lastErr error
	for range readAttempts {
		q.mu.RLock()
		lo, hi, written, files, gen := q.min, q.max, q.written, q.files, q.gen
		if q.deleted {
			lo, hi = 0, 0
		}
		if from < lo {
			q.mu.RUnlock()
			return dst, fmt.Errorf("read %s at %d, min %d: %w", q.id, from, lo, ErrOutOfRange)
		}
		if from >= hi || limit <= 0 {
			q.mu.RUnlock()
			return dst, nil
		}
		to := hi
		if int64(limit) < hi-from {
			to = from + int64(limit)
		}
		diskTo := max(from, min(to, written))
		dst = slices.Grow(dst, int(to-from))[:n0+int(to-from)]
		if to > written {
			copy(dst[n0+int(diskTo-from):], q.buf[diskTo-written:to-written])
		}
		q.mu.RUnlock()
		if diskTo == from {
			return dst, nil
		}

		err := s.readDisk(q, files, written, from, diskTo, dst[n0:n0+int(diskTo-from)])
		q.mu.RLock()
		stable := q.gen == gen && !q.deleted && from >= q.min
		q.mu.RUnlock()
		if stable {
			if err != nil {
				return dst[:n0], err
			}
			return dst, nil
		}
		// The writer truncated, dropped or deleted entries under the read:
		// look again.
		dst, lastErr = dst[:n0], err
	}
	if lastErr == nil {
		lastErr = errors.New("queue changing under the read")
	}
	return dst, fmt.Errorf("read %s at %d: %w", q.id, from, lastErr)
}

var readBufs = sync.Pool{New: func() any { b := make([]byte, 204*EntrySize); return &b }}

// readDisk decodes entries [from, to) into out, using the file list files
// and written count of a snapshot of q.
func (s *Store) readDisk(q *queue, files []int64, written, from, to int64, out []Entry) error {
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	buf := *bp
	for i := from; i < to; {
		fi, found := slices.BinarySearch(files, i)
		if !found {
			fi--
		}
		if fi < 0 {
			return fmt.Errorf("read %s at %d: before the first file", q.id, i)
		}
		base := files[fi]
		end := written
		if fi+1 < len(files) {
			end = files[fi+1]
		}
		end = min(end, to)
		h, err := s.files.acquire(fileKey{q, base}, false)
		if err != nil {
			return fmt.Errorf("read %s file %020d: %w", q.id, base, err)
		}
		for i < end {
			n := min(end-i, int64(len(buf)/EntrySize))
			b := buf[:n*EntrySize]
			if _, err := h.f.ReadAt(b, (i-base)*EntrySize); err != nil {
				s.files.release(h)
				return fmt.Errorf("read %s file %020d at %d: %w", q.id, base, i, err)
			}
			for j := range n {
				out[i-from+j] = getEntry(b[j*EntrySize:])
			}
			i += n
		}
		s.files.release(h)
	}
	return nil
}

// Bounds returns [min, max) of the live entries of a queue; 0, 0 when the
// queue is unknown.
func (s *Store) Bounds(topic string, queue int) (min, max int64) {
	q := s.lookup(topic, queue)
	if q == nil {
		return 0, 0
	}
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.deleted {
		return 0, 0
	}
	return q.min, q.max
}

// Queues lists every queue with files or entries, sorted by topic and id.
func (s *Store) Queues() []QueueID {
	s.mu.RLock()
	ids := make([]QueueID, 0, len(s.queues))
	for id := range s.queues {
		ids = append(ids, id)
	}
	s.mu.RUnlock()
	slices.SortFunc(ids, func(a, b QueueID) int {
		return cmp.Or(cmp.Compare(a.Topic, b.Topic), cmp.Compare(a.Queue, b.Queue))
	})
	return ids
}

// Stats reports counters for metrics.
func (s *Store) Stats() Stats {
	s.mu.RLock()
	n := len(s.queues)
	s.mu.RUnlock()
	return Stats{Queues: n, OpenFiles: s.files.open(), BufferedEntries: s.buffered.Load()}
}
