package keyindex

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

const (
	sealedMagic   = 0x50424b49 // "PBKI"
	sealedVersion = 1
	recSize       = 16  // hash u64 | offset i64
	footerSize    = 40  // see doc.go
	blockEntries  = 256 // entries per fence block: 4 KiB per pread
	blockBytes    = blockEntries * recSize
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// rec is one sealed entry.
type rec struct {
	hash uint64
	off  int64
}

// sortRecs orders recs as a sealed file stores them.
func sortRecs(rs []rec) {
	slices.SortFunc(rs, func(a, b rec) int {
		return cmp.Or(cmp.Compare(a.hash, b.hash), cmp.Compare(b.off, a.off))
	})
}

// sealedMeta is what memory keeps of a sealed file.
type sealedMeta struct {
	count          int64
	minOff, maxOff int64
	fences         []uint64 // hash of the last entry of each block
}

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrCorrupt)
}

// loadSealed verifies a sealed file of size bytes read through r (footer,
// crc, order, offset bounds) and builds its fence index. It never allocates
// more than the file's size implies.
func loadSealed(r io.ReaderAt, size int64) (sealedMeta, error) {
	var m sealedMeta
	if size < footerSize || (size-footerSize)%recSize != 0 {
		return m, corruptf("size %d is not a footer plus whole entries", size)
	}
	var foot [footerSize]byte
	if _, err := r.ReadAt(foot[:], size-footerSize); err != nil {
		return m, fmt.Errorf("read footer: %w", err)
	}
	if binary.BigEndian.Uint32(foot[0:4]) != sealedMagic {
		return m, corruptf("bad magic %#x", binary.BigEndian.Uint32(foot[0:4]))
	}
	if v := binary.BigEndian.Uint32(foot[4:8]); v != sealedVersion {
		return m, corruptf("unknown version %d", v)
	}
	m.count = int64(binary.BigEndian.Uint64(foot[8:16]))
	m.minOff = int64(binary.BigEndian.Uint64(foot[16:24]))
	m.maxOff = int64(binary.BigEndian.Uint64(foot[24:32]))
	if m.count != (size-footerSize)/recSize {
		return m, corruptf("footer count %d, size holds %d", m.count, (size-footerSize)/recSize)
	}

	crc := uint32(0)
	br := bufio.NewReaderSize(io.NewSectionReader(r, 0, size-footerSize), 64<<10)
	m.fences = make([]uint64, 0, (m.count+blockEntries-1)/blockEntries)
	var b [recSize]byte
	var prev rec
	lo, hi := int64(0), int64(0)
	for i := int64(0); i < m.count; i++ {
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return m, fmt.Errorf("read entry %d: %w", i, err)
		}
		crc = crc32.Update(crc, castagnoli, b[:])
		cur := rec{binary.BigEndian.Uint64(b[0:8]), int64(binary.BigEndian.Uint64(b[8:16]))}
		if i > 0 && (cur.hash < prev.hash || cur.hash == prev.hash && cur.off > prev.off) {
			return m, corruptf("entry %d out of order", i)
		}
		if i == 0 || cur.off < lo {
			lo = cur.off
		}
		if i == 0 || cur.off > hi {
			hi = cur.off
		}
		if i%blockEntries == blockEntries-1 || i == m.count-1 {
			m.fences = append(m.fences, cur.hash)
		}
		prev = cur
	}
	crc = crc32.Update(crc, castagnoli, foot[:36])
	if got := binary.BigEndian.Uint32(foot[36:40]); got != crc {
		return m, corruptf("crc %#x, computed %#x", got, crc)
	}
	if m.count > 0 && (lo != m.minOff || hi != m.maxOff) {
		return m, corruptf("footer offsets [%d, %d], entries span [%d, %d]", m.minOff, m.maxOff, lo, hi)
	}
	return m, nil
}

// readBlock appends to offs the offsets stored under hash in block j and
// reports whether the run of hash may continue into block j+1.
func (m *sealedMeta) readBlock(r io.ReaderAt, j int, hash uint64, buf []byte, offs []int64) ([]int64, bool, error) {
	start := int64(j) * blockEntries
	n := min(m.count-start, blockEntries)
	b := buf[:n*recSize]
	if _, err := r.ReadAt(b, start*recSize); err != nil {
		return offs, false, err
	}
	// First entry with hash >= key inside the block.
	lo, hi := int64(0), n
	for lo < hi {
		mid := lo + (hi-lo)/2
		if binary.BigEndian.Uint64(b[mid*recSize:]) < hash {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	for k := lo; k < n; k++ {
		if binary.BigEndian.Uint64(b[k*recSize:]) != hash {
			return offs, false, nil
		}
		offs = append(offs, int64(binary.BigEndian.Uint64(b[k*recSize+8:])))
	}
	return offs, j+1 < len(m.fences), nil
}

// firstBlock returns the first block that can hold hash, or len(fences).
func (m *sealedMeta) firstBlock(hash uint64) int {
	j, _ := slices.BinarySearch(m.fences, hash)
	return j
}

// find calls fn with every offset stored under hash, newest first, until fn
// returns false; it reports whether fn stopped it. read fetches one block's
// offsets into the scratch slice it is given; fn runs outside any lock read
// takes.
func (m *sealedMeta) find(read func(j int, offs []int64) ([]int64, bool, error), hash uint64, scratch []int64, fn func(int64) bool) (bool, error) {
	for j := m.firstBlock(hash); j < len(m.fences); j++ {
		offs, more, err := read(j, scratch[:0])
		if err != nil {
			return false, err
		}
		for _, o := range offs {
			if !fn(o) {
				return true, nil
			}
		}
		if !more {
			break
		}
	}
	return false, nil
}

// sealedFile is an open sealed file shared by lookups.
type sealedFile struct {
	seq  uint64
	path string
	size int64
	meta sealedMeta

	mu sync.RWMutex
	f  *os.File // guarded by mu; nil once closed (dropped or replaced)
}

// scratch is the per-lookup memory for reading blocks, pooled so that a
// lookup does not allocate.
type scratch struct {
	block []byte
	offs  []int64
}

var scratches = sync.Pool{New: func() any {
	return &scratch{block: make([]byte, blockBytes), offs: make([]int64, 0, blockEntries)}
}}

// lookup visits hash's offsets in the file; a file closed under the lookup
// (dropped or replaced) is skipped.
func (s *sealedFile) lookup(hash uint64, sc *scratch, fn func(int64) bool) (bool, error) {
	if len(s.meta.fences) == 0 || s.meta.firstBlock(hash) == len(s.meta.fences) {
		return false, nil
	}
	read := func(j int, offs []int64) ([]int64, bool, error) {
		s.mu.RLock()
		defer s.mu.RUnlock()
		if s.f == nil {
			return offs, false, nil
		}
		offs, more, err := s.meta.readBlock(s.f, j, hash, sc.block, offs)
		if err != nil {
			err = fmt.Errorf("read %s block %d: %w", filepath.Base(s.path), j, err)
		}
		return offs, more, err
	}
	return s.meta.find(read, hash, sc.offs, fn)
}

func (s *sealedFile) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}

// openSealed opens and verifies a sealed file.
func openSealed(path string, seq uint64) (*sealedFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	info, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	m, err := loadSealed(f, info.Size())
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("sealed file %s: %w", filepath.Base(path), err)
	}
	return &sealedFile{seq: seq, path: path, size: info.Size(), meta: m, f: f}, nil
}

// writeSealed writes recs (already in sealed order) as the sealed file path:
// temp file, fsync, rename. The caller fsyncs the directory.
func writeSealed(path string, recs []rec, sync func(*os.File) error) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	err = encodeSealed(f, recs)
	if err == nil {
		err = sync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	return nil
}

func encodeSealed(w io.Writer, recs []rec) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	crc := uint32(0)
	var b [recSize]byte
	lo, hi := int64(0), int64(0)
	for i, r := range recs {
		binary.BigEndian.PutUint64(b[0:8], r.hash)
		binary.BigEndian.PutUint64(b[8:16], uint64(r.off))
		crc = crc32.Update(crc, castagnoli, b[:])
		if _, err := bw.Write(b[:]); err != nil {
			return err
		}
		if i == 0 || r.off < lo {
			lo = r.off
		}
		if i == 0 || r.off > hi {
			hi = r.off
		}
	}
	var foot [footerSize]byte
	binary.BigEndian.PutUint32(foot[0:4], sealedMagic)
	binary.BigEndian.PutUint32(foot[4:8], sealedVersion)
	binary.BigEndian.PutUint64(foot[8:16], uint64(len(recs)))
	binary.BigEndian.PutUint64(foot[16:24], uint64(lo))
	binary.BigEndian.PutUint64(foot[24:32], uint64(hi))
	crc = crc32.Update(crc, castagnoli, foot[:36])
	binary.BigEndian.PutUint32(foot[36:40], crc)
	if _, err := bw.Write(foot[:]); err != nil {
		return err
	}
	return bw.Flush()
}

// readRecs reads every entry of an open sealed file.
func (s *sealedFile) readRecs() ([]rec, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.f == nil {
		return nil, errors.New("sealed file closed")
	}
	br := bufio.NewReaderSize(io.NewSectionReader(s.f, 0, s.meta.count*recSize), 64<<10)
	rs := make([]rec, 0, s.meta.count)
	var b [recSize]byte
	for range s.meta.count {
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return nil, fmt.Errorf("read %s: %w", filepath.Base(s.path), err)
		}
		rs = append(rs, rec{binary.BigEndian.Uint64(b[0:8]), int64(binary.BigEndian.Uint64(b[8:16]))})
	}
	return rs, nil
}
