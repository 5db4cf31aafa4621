package keyindex

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/postbus/postbus/broker/internal/durable"
)

// TruncateFrom drops every entry whose offset is >= logOff: crash recovery
// removes what lies past the broker's dispatch checkpoint before dispatching
// it again. Sealed files wholly past logOff are deleted, straddling ones are
// rewritten (temp file, fsync, rename), and the active table and log are cut;
// everything is durable when it returns.
func (x *Index) TruncateFrom(logOff int64) error {
	x.wmu.Lock()
	defer x.wmu.Unlock()
	if x.closed.Load() {
		return ErrClosed
	}
	if x.err != nil {
		if err := x.repair(); err != nil {
			return fmt.Errorf("truncate key index from %d: %w (repair: %v)", logOff, x.err, err)
		}
	}
	x.writeLog()
	if x.err != nil {
		return fmt.Errorf("truncate key index from %d: %w", logOff, x.err)
	}

	// Sealed files first: rewrite into place before publishing.
	var keep, gone, replaced []*sealedFile
	var errs []error
	for _, sf := range x.sealed {
		switch {
		case sf.meta.count == 0 || sf.meta.minOff >= logOff:
			gone = append(gone, sf)
		case sf.meta.maxOff < logOff:
			keep = append(keep, sf)
		default:
			nsf, err := x.rewrite(sf, logOff)
			if err != nil {
				errs = append(errs, err)
				keep = append(keep, sf)
				continue
			}
			if nsf == nil {
				gone = append(gone, sf)
				continue
			}
			replaced = append(replaced, sf)
			keep = append(keep, nsf)
		}
	}

	// The active table: entries are in offset order.
	t := x.active
	cut := sort.Search(len(t.ents), func(i int) bool { return t.ents[i].off >= logOff })
	nt := t
	if cut < len(t.ents) {
		nt = newMemtable(x.cfg.MemEntries)
		for _, e := range t.ents[:cut] {
			nt.add(e.hash, e.off)
		}
	}

	x.mu.Lock()
	x.sealed = keep
	x.active = nt
	x.mu.Unlock()

	for _, sf := range replaced {
		_ = sf.close() // its path now holds the rewritten file
	}
	for _, sf := range gone {
		_ = sf.close()
		if err := x.cfg.FS.Remove(sf.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", filepath.Base(sf.path), err))
		}
	}
	if len(gone)+len(replaced) > 0 {
		errs = append(errs, durable.SyncDir(x.cfg.FS, x.cfg.Dir))
	}
	if size := int64(cut) * logRecSize; size < x.logSize {
		err := x.cfg.FS.Truncate(x.logf, size)
		if err == nil {
			err = x.cfg.FS.Sync(x.logf)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("truncate %s: %w", seqName(x.logSeq, ".log"), err))
		} else {
			x.logSize = size
			x.logBytes.Store(size)
		}
	}

	x.lastOff = -1
	for _, sf := range keep {
		if sf.meta.count > 0 {
			x.lastOff = max(x.lastOff, sf.meta.maxOff)
		}
	}
	if n := len(nt.ents); n > 0 {
		x.lastOff = max(x.lastOff, nt.ents[n-1].off)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("truncate key index from %d: %w", logOff, err)
	}
	return nil
}

// rewrite replaces sf's file by one holding only its entries below logOff
// and returns it; it returns nil, writing nothing, when no entry is.
func (x *Index) rewrite(sf *sealedFile, logOff int64) (*sealedFile, error) {
	recs, err := sf.readRecs()
	if err != nil {
		return nil, err
	}
	kept := recs[:0]
	for _, r := range recs {
		if r.off < logOff {
			kept = append(kept, r)
		}
	}
	if len(kept) == 0 {
		return nil, nil
	}
	if err := writeSealed(x.cfg.FS, sf.path, kept, x.syncFile); err != nil {
		return nil, err
	}
	f, err := os.Open(sf.path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", filepath.Base(sf.path), err)
	}
	return &sealedFile{
		seq: sf.seq, path: sf.path, size: int64(len(kept))*recSize + footerSize,
		meta: metaOf(kept), f: f,
	}, nil
}

// DropBefore deletes the sealed files whose entries all lie below logMin,
// the commitlog's new minimum. Entries of the active table are kept until
// their table is sealed and dropped in turn.
func (x *Index) DropBefore(logMin int64) error {
	x.wmu.Lock()
	defer x.wmu.Unlock()
	if x.closed.Load() {
		return ErrClosed
	}
	var keep, gone []*sealedFile
	for _, sf := range x.sealed {
		if sf.meta.count == 0 || sf.meta.maxOff < logMin {
			gone = append(gone, sf)
		} else {
			keep = append(keep, sf)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	x.mu.Lock()
	x.sealed = keep
	x.mu.Unlock()
	var errs []error
	for _, sf := range gone {
		_ = sf.close()
		if err := x.cfg.FS.Remove(sf.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", filepath.Base(sf.path), err))
		}
	}
	errs = append(errs, durable.SyncDir(x.cfg.FS, x.cfg.Dir))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("drop key index before %d: %w", logMin, err)
	}
	return nil
}
