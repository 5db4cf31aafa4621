package keyindex

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/postbus/postbus/broker/internal/durable"
	"github.com/postbus/postbus/broker/internal/vfs"
)

// Errors callers branch on.
var (
	// ErrCorrupt: a sealed file failed verification at Open (or the files
	// contradict each other). The error names the file; the broker rebuilds
	// the index from the commitlog.
	ErrCorrupt = errors.New("keyindex: corrupt index")
	// ErrClosed: the index has been closed.
	ErrClosed = errors.New("keyindex: closed")
)

// DefaultMemEntries bounds the active table: 262,144 entries are about 6 MiB
// of entries plus the hash map, and seal into a 4 MiB file.
const DefaultMemEntries = 262_144

// maxMemEntries keeps table positions within the int32 chain links.
const maxMemEntries = 1 << 30

// logBufSize is how much of the active log Add buffers before writing.
const logBufSize = 64 << 10

// Config configures an Index. Zero fields take the defaults.
type Config struct {
	Dir        string
	MemEntries int          // entries in the active table before it is sealed; default 262,144
	Logger     *slog.Logger // default slog.Default()
	FS         vfs.FS       // file operations that change the directory; default vfs.OS
}

// DefaultConfig returns the defaults for an index in dir.
func DefaultConfig(dir string) Config { return Config{Dir: dir, MemEntries: DefaultMemEntries} }

// Validate reports a configuration the index cannot run with.
func (c Config) Validate() error {
	switch {
	case c.Dir == "":
		return errors.New("keyindex: config: empty Dir")
	case c.MemEntries < 1 || c.MemEntries > maxMemEntries:
		return fmt.Errorf("keyindex: config: MemEntries %d out of range [1, %d]", c.MemEntries, maxMemEntries)
	}
	return nil
}

// Stats describes the index for metrics.
type Stats struct {
	Entries       int64 // in memory and sealed
	ActiveEntries int64 // in memory (active table and any table being sealed)
	SealedFiles   int
	Bytes         int64 // sealed files plus the active log, buffered bytes included
	Dropped       int64 // Adds ignored because their offset went backwards
	WriteErrors   int64 // failed writes, fsyncs and seals since Open (each repaired by a later Flush or seal, or reported by it)
}

// entry is one active-table entry; prev links to the previous entry with the
// same hash, -1 at the end of the chain.
type entry struct {
	hash uint64
	off  int64
	prev int32
}

// memtable is append-only between seals: lookups walk chains of a snapshot
// of ents without a lock, because positions below a published head are
// never written again.
type memtable struct {
	ents  []entry
	heads map[uint64]int32
}

func newMemtable(capacity int) *memtable {
	return &memtable{ents: make([]entry, 0, capacity), heads: make(map[uint64]int32, capacity)}
}

// add appends an entry; the caller holds Index.mu for writing.
func (t *memtable) add(hash uint64, off int64) {
	prev, ok := t.heads[hash]
	if !ok {
		prev = -1
	}
	t.heads[hash] = int32(len(t.ents))
	t.ents = append(t.ents, entry{hash: hash, off: off, prev: prev})
}

// Index is the key index in one directory.
type Index struct {
	cfg Config
	log *slog.Logger

	mu     sync.RWMutex
	active *memtable     // guarded by mu
	frozen *memtable     // guarded by mu; the table being sealed, else nil
	sealed []*sealedFile // guarded by mu; oldest first; replaced, never changed in place

	closed      atomic.Bool
	logBytes    atomic.Int64 // active log size including the buffer
	dropped     atomic.Int64
	writeErrors atomic.Int64 // failed writes, syncs and seals since Open

	// writeAt and syncFile do the writes and fsyncs of the active log and
	// sealed files; tests replace them to inject ENOSPC and EIO.
	writeAt  func(f *os.File, p []byte, off int64) (int, error)
	syncFile func(f *os.File) error

	// wmu serialises the writer and guards the fields below. The writer is
	// the only one to change mu's fields, so it reads them without mu.
	wmu     sync.Mutex
	logf    *os.File
	logSeq  uint64
	logSize int64 // bytes written to logf
	logBuf  []byte
	lastOff int64
	sealAt  int // active size that triggers a seal
	// err is the write error the index is in, if any. While it is set the
	// active log may lack records or hold torn ones, so Add stops writing
	// it; Flush (and TruncateFrom) repair it by rewriting the log whole
	// from the active table, and a successful seal replaces it. Either
	// clears err: an error lasts as long as its cause, not until a restart.
	err error
}

func seqName(seq uint64, ext string) string { return fmt.Sprintf("%020d%s", seq, ext) }

func parseSeq(name, ext string) (uint64, bool) {
	s, ok := strings.CutSuffix(name, ext)
	if !ok || len(s) != 20 {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil
}

// Open opens (creating if needed) the index in cfg.Dir: it verifies the
// sealed files and loads their footers and fences, and replays the active
// log, cutting a torn tail.
func Open(cfg Config) (*Index, error) {
	if cfg.MemEntries == 0 {
		cfg.MemEntries = DefaultMemEntries
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.FS == nil {
		cfg.FS = vfs.OS
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.FS.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("open key index: %w", err)
	}
	x := &Index{cfg: cfg, log: cfg.Logger, lastOff: -1, sealAt: cfg.MemEntries,
		writeAt:  cfg.FS.WriteAt,
		syncFile: cfg.FS.Sync,
	}
	if err := x.load(); err != nil {
		// The load error is the answer; the files were only read.
		_ = x.closeFiles()
		return nil, fmt.Errorf("open key index %s: %w", cfg.Dir, err)
	}
	return x, nil
}

func (x *Index) load() error {
	names, err := os.ReadDir(x.cfg.Dir)
	if err != nil {
		return err
	}
	var idxs, logs []uint64
	for _, e := range names {
		name := e.Name()
		if strings.HasSuffix(name, ".tmp") {
			// An unfinished seal or rewrite; its source is still in place.
			if err := x.cfg.FS.Remove(filepath.Join(x.cfg.Dir, name)); err != nil {
				return err
			}
			continue
		}
		if seq, ok := parseSeq(name, ".idx"); ok {
			idxs = append(idxs, seq)
		} else if seq, ok := parseSeq(name, ".log"); ok {
			logs = append(logs, seq)
		}
	}
	slices.Sort(idxs)
	slices.Sort(logs)

	for _, seq := range idxs {
		sf, err := openSealed(filepath.Join(x.cfg.Dir, seqName(seq, ".idx")), seq)
		if err != nil {
			return err
		}
		x.sealed = append(x.sealed, sf)
		if sf.meta.count > 0 {
			x.lastOff = max(x.lastOff, sf.meta.maxOff)
		}
	}
	next := uint64(0)
	if len(idxs) > 0 {
		next = idxs[len(idxs)-1] + 1
	}

	// A log next to its sealed file was sealed before a crash removed it.
	var pending []uint64
	for _, seq := range logs {
		if _, found := slices.BinarySearch(idxs, seq); found {
			if err := x.cfg.FS.Remove(filepath.Join(x.cfg.Dir, seqName(seq, ".log"))); err != nil {
				return err
			}
			continue
		}
		pending = append(pending, seq)
	}
	x.logSeq = next
	if len(pending) > 0 {
		x.logSeq = pending[0]
		if x.logSeq < next {
			return corruptf("log %s is older than sealed file %s", seqName(x.logSeq, ".log"), seqName(next-1, ".idx"))
		}
	}
	for _, seq := range pending[min(1, len(pending)):] {
		path := filepath.Join(x.cfg.Dir, seqName(seq, ".log"))
		info, err := os.Stat(path)
		if err != nil {
			return err
		}
		if info.Size() != 0 {
			return corruptf("logs %s and %s both unsealed", seqName(x.logSeq, ".log"), seqName(seq, ".log"))
		}
		if err := x.cfg.FS.Remove(path); err != nil {
			return err
		}
	}
	return x.replay(len(pending) == 0)
}

// replay opens the active log and loads it into a new active table.
func (x *Index) replay(create bool) error {
	path := filepath.Join(x.cfg.Dir, seqName(x.logSeq, ".log"))
	f, err := x.cfg.FS.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	x.logf = f
	if create {
		if err := durable.SyncDir(x.cfg.FS, x.cfg.Dir); err != nil {
			return err
		}
	}
	info, err := f.Stat()
	if err != nil {
		return err
	}
	t := newMemtable(x.cfg.MemEntries)
	good, err := replayLog(f, func(hash uint64, off int64) {
		t.add(hash, off)
	})
	if err != nil {
		return fmt.Errorf("replay %s: %w", filepath.Base(path), err)
	}
	if good != info.Size() {
		x.log.Warn("key index: cut torn log tail", "file", filepath.Base(path), "size", info.Size(), "kept", good)
		if err := x.cfg.FS.Truncate(f, good); err != nil {
			return err
		}
		if err := x.cfg.FS.Sync(f); err != nil {
			return err
		}
	}
	x.logSize = good
	x.logBytes.Store(good)
	x.active = t
	if n := len(t.ents); n > 0 {
		x.lastOff = max(x.lastOff, t.ents[n-1].off)
	}
	if len(t.ents) >= x.sealAt {
		// A seal that fails (a full disk) leaves the table active and the
		// index in a write error that Flush reports and repairs: not a
		// reason to refuse to open an index whose log is whole.
		x.seal()
	}
	return nil
}

// Close flushes the active log and closes every file. It is idempotent.
func (x *Index) Close() error {
	x.wmu.Lock()
	defer x.wmu.Unlock()
	if x.closed.Load() {
		return nil
	}
	err := x.flushLocked()
	x.closed.Store(true)
	if cerr := x.closeFiles(); cerr != nil && err == nil {
		err = fmt.Errorf("close key index: %w", cerr)
	}
	return err
}

func (x *Index) closeFiles() error {
	var errs []error
	if x.logf != nil {
		errs = append(errs, x.logf.Close())
		x.logf = nil
	}
	x.mu.RLock()
	sealed := x.sealed
	x.mu.RUnlock()
	for _, sf := range sealed {
		errs = append(errs, sf.close())
	}
	return errors.Join(errs...)
}

// fail puts the index in the write error err until a Flush repairs it.
func (x *Index) fail(err error) {
	x.writeErrors.Add(1)
	if x.err == nil {
		x.err = err
		x.log.Error("key index write failed; the next flush rewrites its log", "dir", x.cfg.Dir, "err", err)
	}
}

// repair rewrites the active log whole from the active table, fsyncs it and
// renames it into place, and clears the write error. Whatever the failed
// writes left in the old file (a partial record, pages a failed fsync may
// have dropped from the page cache while reporting success on a retry) is
// thereby replaced, so the error is cleared only once everything Add was
// given is durable. On failure the index stays in its error.
func (x *Index) repair() error {
	name := seqName(x.logSeq, ".log")
	path := filepath.Join(x.cfg.Dir, name)
	tmp := path + ".tmp" // Open removes a leftover one
	buf := make([]byte, 0, len(x.active.ents)*logRecSize)
	for _, e := range x.active.ents {
		buf = appendLogRec(buf, e.hash, e.off)
	}
	f, err := x.cfg.FS.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("rewrite %s: %w", name, err)
	}
	if _, err = x.writeAt(f, buf, 0); err == nil {
		err = x.syncFile(f)
	}
	if err == nil {
		err = x.cfg.FS.Rename(tmp, path)
	}
	if err == nil {
		err = durable.SyncDir(x.cfg.FS, x.cfg.Dir)
	}
	if err != nil {
		_ = f.Close()
		_ = x.cfg.FS.Remove(tmp)
		x.writeErrors.Add(1)
		return fmt.Errorf("rewrite %s: %w", name, err)
	}
	_ = x.logf.Close()
	x.logf, x.logSize = f, int64(len(buf))
	x.logBuf = x.logBuf[:0]
	x.logBytes.Store(x.logSize)
	x.log.Info("key index recovered from its write error: log rewritten", "dir", x.cfg.Dir, "file", name,
		"entries", len(x.active.ents), "was", x.err)
	x.err = nil
	return nil
}

// Add records that logOff holds a message indexed under hash. Offsets must
// not decrease; one that does is dropped (and counted in Stats). Add never
// blocks on I/O longer than a buffered write, except when it seals the
// active table; write errors are reported by Flush.
func (x *Index) Add(hash uint64, logOff int64) {
	x.wmu.Lock()
	defer x.wmu.Unlock()
	if x.closed.Load() {
		return
	}
	if logOff < x.lastOff || logOff < 0 {
		if x.dropped.Add(1) == 1 {
			x.log.Warn("key index: dropped an add with a decreasing offset", "offset", logOff, "last", x.lastOff)
		}
		return
	}
	if x.err == nil {
		// In a write error the log is rewritten from the table anyway.
		x.logBuf = appendLogRec(x.logBuf, hash, logOff)
		x.logBytes.Add(logRecSize)
		if len(x.logBuf) >= logBufSize {
			x.writeLog()
		}
	}
	x.mu.Lock()
	x.active.add(hash, logOff)
	x.mu.Unlock()
	x.lastOff = logOff
	if len(x.active.ents) >= x.sealAt {
		x.seal()
	}
}

// writeLog writes the buffered log records.
func (x *Index) writeLog() {
	if len(x.logBuf) == 0 || x.err != nil {
		return
	}
	n, err := x.writeAt(x.logf, x.logBuf, x.logSize)
	x.logSize += int64(n)
	x.logBuf = x.logBuf[:copy(x.logBuf, x.logBuf[n:])]
	if err != nil {
		x.fail(fmt.Errorf("write %s: %w", seqName(x.logSeq, ".log"), err))
	}
}

// seal turns the active table into a sealed file and starts a new log. On
// failure the table stays active and sealing is retried after another
// MemEntries adds.
func (x *Index) seal() {
	t := x.active
	x.mu.Lock()
	x.frozen = t
	x.active = newMemtable(x.cfg.MemEntries)
	x.mu.Unlock()

	sf, newLog, err := x.sealTable(t, x.logSeq)
	if err != nil {
		x.mu.Lock()
		x.active, x.frozen = t, nil
		x.mu.Unlock()
		x.sealAt = len(t.ents) + x.cfg.MemEntries
		x.fail(fmt.Errorf("seal %s: %w", seqName(x.logSeq, ".idx"), err))
		return
	}
	x.mu.Lock()
	x.sealed = append(x.sealed, sf)
	x.frozen = nil
	x.mu.Unlock()

	old := filepath.Join(x.cfg.Dir, seqName(x.logSeq, ".log"))
	_ = x.logf.Close()
	// Removal need not be durable: Open drops a log whose sealed file exists.
	if err := x.cfg.FS.Remove(old); err != nil {
		x.log.Warn("key index: remove sealed log", "file", filepath.Base(old), "err", err)
	}
	x.logf, x.logSeq, x.logSize = newLog, x.logSeq+1, 0
	x.logBuf = x.logBuf[:0] // records of the sealed table: they are in sf
	x.logBytes.Store(0)
	x.sealAt = x.cfg.MemEntries
	if x.err != nil {
		// Everything the broken log held is in sf, durably; the new log
		// is empty like the new table.
		x.log.Info("key index recovered from its write error: table sealed", "dir", x.cfg.Dir, "was", x.err)
		x.err = nil
	}
}

// sealTable writes t as sealed file seq and creates log seq+1, making both
// durable. On error it leaves neither behind.
func (x *Index) sealTable(t *memtable, seq uint64) (*sealedFile, *os.File, error) {
	recs := make([]rec, len(t.ents))
	for i, e := range t.ents {
		recs[i] = rec{e.hash, e.off}
	}
	sortRecs(recs)
	path := filepath.Join(x.cfg.Dir, seqName(seq, ".idx"))
	if err := writeSealed(x.cfg.FS, path, recs, x.syncFile); err != nil {
		return nil, nil, err
	}
	logPath := filepath.Join(x.cfg.Dir, seqName(seq+1, ".log"))
	sf, logf, err := func() (*sealedFile, *os.File, error) {
		f, err := os.Open(path)
		if err != nil {
			return nil, nil, err
		}
		sf := &sealedFile{seq: seq, path: path, size: int64(len(recs))*recSize + footerSize, meta: metaOf(recs), f: f}
		logf, err := x.cfg.FS.OpenFile(logPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			_ = f.Close()
			return nil, nil, err
		}
		if err := durable.SyncDir(x.cfg.FS, x.cfg.Dir); err != nil {
			_ = f.Close()
			_ = logf.Close()
			_ = x.cfg.FS.Remove(logPath)
			return nil, nil, err
		}
		return sf, logf, nil
	}()
	if err != nil {
		_ = x.cfg.FS.Remove(path)
		return nil, nil, err
	}
	return sf, logf, nil
}

// metaOf builds the in-memory part of a sealed file from its entries.
func metaOf(recs []rec) sealedMeta {
	m := sealedMeta{count: int64(len(recs)), fences: make([]uint64, 0, (len(recs)+blockEntries-1)/blockEntries)}
	for i, r := range recs {
		if i == 0 || r.off < m.minOff {
			m.minOff = r.off
		}
		if i == 0 || r.off > m.maxOff {
			m.maxOff = r.off
		}
		if i%blockEntries == blockEntries-1 || i == len(recs)-1 {
			m.fences = append(m.fences, r.hash)
		}
	}
	return m
}

// Flush writes the buffered log records and fsyncs the active log. After it
// returns nil every Add before it survives a crash. After a write, fsync or
// seal error it rewrites the whole active log instead (see repair), and
// reports the error only while that fails too.
func (x *Index) Flush() error {
	x.wmu.Lock()
	defer x.wmu.Unlock()
	if x.closed.Load() {
		return ErrClosed
	}
	return x.flushLocked()
}

func (x *Index) flushLocked() error {
	if x.err != nil {
		if err := x.repair(); err != nil {
			return fmt.Errorf("flush key index: %w (repair: %v)", x.err, err)
		}
		return nil
	}
	x.writeLog()
	if x.err != nil {
		return fmt.Errorf("flush key index: %w", x.err)
	}
	// A failed fsync is never retried on the same file: the kernel may have
	// dropped the pages it could not write, and a second fsync would then
	// succeed without them. The next Flush rewrites the log instead.
	if err := x.syncFile(x.logf); err != nil {
		x.fail(fmt.Errorf("sync %s: %w", seqName(x.logSeq, ".log"), err))
		return fmt.Errorf("flush key index: %w", x.err)
	}
	return nil
}

// Lookup calls fn with each offset indexed under hash, newest first, until
// fn returns false. Equal offsets in a row are reported once. fn runs without
// any index lock held, so it may read the commitlog.
func (x *Index) Lookup(hash uint64, fn func(logOff int64) bool) error {
	if x.closed.Load() {
		return ErrClosed
	}
	x.mu.RLock()
	activeHead, activeEnts := chain(x.active, hash)
	frozenHead, frozenEnts := chain(x.frozen, hash)
	sealed := x.sealed
	x.mu.RUnlock()

	seen, last := false, int64(0)
	visit := func(off int64) bool {
		if seen && off == last {
			return true
		}
		seen, last = true, off
		return fn(off)
	}
	for i := activeHead; i >= 0; i = activeEnts[i].prev {
		if !visit(activeEnts[i].off) {
			return nil
		}
	}
	for i := frozenHead; i >= 0; i = frozenEnts[i].prev {
		if !visit(frozenEnts[i].off) {
			return nil
		}
	}
	if len(sealed) == 0 {
		return nil
	}
	sc := scratches.Get().(*scratch)
	defer scratches.Put(sc)
	for k := len(sealed) - 1; k >= 0; k-- {
		stop, err := sealed[k].lookup(hash, sc, visit)
		if err != nil {
			return fmt.Errorf("lookup %#x: %w", hash, err)
		}
		if stop {
			return nil
		}
	}
	return nil
}

// chain returns the newest entry for hash in t and a snapshot of its
// entries; the caller holds Index.mu.
func chain(t *memtable, hash uint64) (int32, []entry) {
	if t == nil {
		return -1, nil
	}
	head, ok := t.heads[hash]
	if !ok {
		return -1, nil
	}
	return head, t.ents
}

// Stats reports counters for metrics.
func (x *Index) Stats() Stats {
	x.mu.RLock()
	st := Stats{ActiveEntries: int64(len(x.active.ents)), SealedFiles: len(x.sealed)}
	if x.frozen != nil {
		st.ActiveEntries += int64(len(x.frozen.ents))
	}
	st.Entries = st.ActiveEntries
	for _, sf := range x.sealed {
		st.Entries += sf.meta.count
		st.Bytes += sf.size
	}
	x.mu.RUnlock()
	st.Bytes += x.logBytes.Load()
	st.Dropped = x.dropped.Load()
	st.WriteErrors = x.writeErrors.Load()
	return st
}
