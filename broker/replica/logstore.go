package replica

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// fileLog is raft's log store and stable store on plain files: raft's
// entries appended to one file, framed and checksummed, with one fdatasync
// for each batch raft stores; the term and vote in a small file replaced
// whole. raft-boltdb spends two fsyncs and a B+tree copy on each batch,
// and a publish waits for a batch on the leader and on a follower, so this
// is most of a replicated publish's cost.
//
// Frame: u32 payload length | u32 CRC-32C of the payload | payload, where
// payload is u64 index | u64 term | u8 type | i64 appended-at (Unix ns) |
// u32 extensions length | extensions | data. A torn or damaged tail (a
// crash during a write that was never acknowledged) is cut at open.
type fileLog struct {
	mu       sync.Mutex
	dir      string
	f        *os.File
	size     int64
	fileBase uint64 // index of the file's first entry (0: empty)
	first    uint64 // first index raft has not deleted (0: empty)
	offs     []int64
	stable   map[string][]byte
	old      []*os.File // replaced by compactions
}

const (
	logFile    = "log.dat"
	stableFile = "stable.json"
	frameHead  = 8
	// compactAt is the dead prefix (entries raft deleted after a snapshot)
	// past which the file is rewritten without it.
	compactAt = 64 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func openFileLog(dir string) (*fileLog, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &fileLog{dir: dir, stable: map[string][]byte{}}
	if data, err := os.ReadFile(filepath.Join(dir, stableFile)); err == nil {
		if err := json.Unmarshal(data, &s.stable); err != nil {
			return nil, fmt.Errorf("raft stable store %s: %w", filepath.Join(dir, stableFile), err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("raft stable store: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, logFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("raft log: %w", err)
	}
	s.f = f
	if err := syncDir(dir); err != nil {
		f.Close()
		return nil, fmt.Errorf("raft log: %w", err)
	}
	if err := s.load(); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// load scans the file, keeping each whole entry's offset, and cuts it after
// the last one.
func (s *fileLog) load() error {
	fi, err := s.f.Stat()
	if err != nil {
		return err
	}
	r := io.NewSectionReader(s.f, 0, fi.Size())
	var off int64
	head := make([]byte, frameHead)
	var prev uint64
	for {
		if _, err := io.ReadFull(r, head); err != nil {
			break
		}
		n := binary.BigEndian.Uint32(head)
		if n < 29 || int64(n) > fi.Size()-off-frameHead {
			break
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(r, payload); err != nil {
			break
		}
		if crc32.Checksum(payload, crcTable) != binary.BigEndian.Uint32(head[4:]) {
			break
		}
		idx := binary.BigEndian.Uint64(payload)
		if prev != 0 && idx != prev+1 {
			break
		}
		if prev == 0 {
			s.fileBase = idx
		}
		prev = idx
		s.offs = append(s.offs, off)
		off += frameHead + int64(n)
	}
	if off < fi.Size() {
		// The tail of a write that never returned: no entry of it was
		// acknowledged to anyone.
		if err := s.f.Truncate(off); err != nil {
			return fmt.Errorf("raft log: cut a torn tail at %d: %w", off, err)
		}
		if err := s.f.Sync(); err != nil {
			return err
		}
	}
	s.size = off
	s.first = s.fileBase
	return nil
}

func (s *fileLog) last() uint64 {
	if len(s.offs) == 0 {
		return 0
	}
	return s.fileBase + uint64(len(s.offs)) - 1
}

func (s *fileLog) FirstIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.offs) == 0 {
		return 0, nil
	}
	return s.first, nil
}

func (s *fileLog) LastIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last(), nil
}

func (s *fileLog) GetLog(index uint64, out *raft.Log) error {
	s.mu.Lock()
	if len(s.offs) == 0 || index < s.first || index > s.last() {
		s.mu.Unlock()
		return raft.ErrLogNotFound
	}
	i := index - s.fileBase
	off := s.offs[i]
	end := s.size
	if int(i)+1 < len(s.offs) {
		end = s.offs[i+1]
	}
	f := s.f
	s.mu.Unlock()
	buf := make([]byte, end-off)
	if _, err := f.ReadAt(buf, off); err != nil {
		return fmt.Errorf("raft log: read entry %d: %w", index, err)
	}
	payload := buf[frameHead:]
	if crc32.Checksum(payload, crcTable) != binary.BigEndian.Uint32(buf[4:]) {
		return fmt.Errorf("raft log: entry %d is damaged", index)
	}
	out.Index = binary.BigEndian.Uint64(payload)
	out.Term = binary.BigEndian.Uint64(payload[8:])
	out.Type = raft.LogType(payload[16])
	out.AppendedAt = time.Unix(0, int64(binary.BigEndian.Uint64(payload[17:])))
	ext := binary.BigEndian.Uint32(payload[25:])
	if uint64(ext) > uint64(len(payload)-29) {
		return fmt.Errorf("raft log: entry %d is damaged", index)
	}
	out.Extensions = nil
	if ext > 0 {
		out.Extensions = payload[29 : 29+ext]
	}
	out.Data = payload[29+ext:]
	if out.Index != index {
		return fmt.Errorf("raft log: entry %d found where %d belongs", out.Index, index)
	}
	return nil
}

func (s *fileLog) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs appends logs with one write and one fdatasync.
func (s *fileLog) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.offs) > 0 && logs[0].Index > s.last()+1 {
		// Raft stores entries after a gap only once a snapshot covers
		// the gap (installed from the leader): what the file holds is
		// older than the snapshot, and goes.
		if err := s.truncate(0, 0); err != nil {
			return err
		}
	}
	want := s.last() + 1
	if len(s.offs) == 0 {
		want = logs[0].Index
	}
	var n int
	for i, l := range logs {
		if l.Index != want+uint64(i) {
			return fmt.Errorf("raft log: store entry %d after %d: not contiguous", l.Index, want+uint64(i)-1)
		}
		n += frameHead + 29 + len(l.Extensions) + len(l.Data)
	}
	buf := make([]byte, 0, n)
	offs := make([]int64, len(logs))
	for i, l := range logs {
		offs[i] = s.size + int64(len(buf))
		at := len(buf)
		buf = append(buf, make([]byte, frameHead)...)
		buf = binary.BigEndian.AppendUint64(buf, l.Index)
		buf = binary.BigEndian.AppendUint64(buf, l.Term)
		buf = append(buf, byte(l.Type))
		buf = binary.BigEndian.AppendUint64(buf, uint64(l.AppendedAt.UnixNano()))
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(l.Extensions)))
		buf = append(buf, l.Extensions...)
		buf = append(buf, l.Data...)
		payload := buf[at+frameHead:]
		binary.BigEndian.PutUint32(buf[at:], uint32(len(payload)))
		binary.BigEndian.PutUint32(buf[at+4:], crc32.Checksum(payload, crcTable))
	}
	if _, err := s.f.WriteAt(buf, s.size); err != nil {
		// Nothing of it counts: cut whatever part reached the file.
		_ = s.f.Truncate(s.size)
		return fmt.Errorf("raft log: write %d entries: %w", len(logs), err)
	}
	if err := fdatasync(s.f); err != nil {
		_ = s.f.Truncate(s.size)
		return fmt.Errorf("raft log: sync %d entries: %w", len(logs), err)
	}
	if len(s.offs) == 0 {
		s.fileBase, s.first = logs[0].Index, logs[0].Index
	}
	s.offs = append(s.offs, offs...)
	s.size += int64(len(buf))
	return nil
}

// DeleteRange deletes entries min..max: raft deletes a prefix after a
// snapshot and a suffix that conflicts with a new leader's log.
func (s *fileLog) DeleteRange(min, max uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.offs) == 0 || max < s.first || min > s.last() {
		return nil
	}
	if max >= s.last() {
		// A suffix (or everything).
		if min <= s.fileBase {
			return s.truncate(0, 0)
		}
		return s.truncate(min, s.offs[min-s.fileBase])
	}
	if min > s.first {
		return fmt.Errorf("raft log: delete %d..%d in the middle of %d..%d", min, max, s.first, s.last())
	}
	s.first = max + 1
	if dead := s.offs[s.first-s.fileBase]; dead >= compactAt && dead > s.size-dead {
		return s.compact()
	}
	return nil
}

// truncate cuts the file at off, where entry keep begins (0: empty).
func (s *fileLog) truncate(keep uint64, off int64) error {
	if err := s.f.Truncate(off); err != nil {
		return fmt.Errorf("raft log: truncate: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("raft log: truncate: %w", err)
	}
	s.size = off
	if keep == 0 {
		s.offs, s.fileBase, s.first = nil, 0, 0
		return nil
	}
	s.offs = s.offs[:keep-s.fileBase]
	return nil
}

// compact rewrites the file without the entries before first.
func (s *fileLog) compact() error {
	from := s.offs[s.first-s.fileBase]
	tmp := filepath.Join(s.dir, logFile+".tmp")
	nf, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(nf, io.NewSectionReader(s.f, from, s.size-from)); err != nil {
		nf.Close()
		return fmt.Errorf("raft log: compact: %w", err)
	}
	if err := nf.Sync(); err != nil {
		nf.Close()
		return fmt.Errorf("raft log: compact: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, logFile)); err != nil {
		nf.Close()
		return fmt.Errorf("raft log: compact: %w", err)
	}
	if err := syncDir(s.dir); err != nil {
		nf.Close()
		return fmt.Errorf("raft log: compact: %w", err)
	}
	// Readers that took the old file with its offsets still read it; it
	// closes with the store.
	s.old = append(s.old, s.f)
	s.f = nf
	offs := make([]int64, 0, len(s.offs)-int(s.first-s.fileBase))
	for _, o := range s.offs[s.first-s.fileBase:] {
		offs = append(offs, o-from)
	}
	s.offs, s.fileBase, s.size = offs, s.first, s.size-from
	return nil
}

// errKeyNotFound is the error raft expects (by its text) for a key never set.
var errKeyNotFound = errors.New("not found")

func (s *fileLog) Set(key, val []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stable[string(key)] = append([]byte(nil), val...)
	data, err := json.Marshal(s.stable)
	if err != nil {
		return err
	}
	tmp := filepath.Join(s.dir, stableFile+".tmp")
	if err := writeFileFrom(tmp, bytesReader(data), int64(len(data)), int64(len(data))); err != nil {
		return fmt.Errorf("raft stable store: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, stableFile)); err != nil {
		return fmt.Errorf("raft stable store: %w", err)
	}
	return syncDir(s.dir)
}

func (s *fileLog) Get(key []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.stable[string(key)]
	if !ok {
		return nil, errKeyNotFound
	}
	return append([]byte(nil), v...), nil
}

func (s *fileLog) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

func (s *fileLog) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("raft stable store: %q holds %d bytes, want 8", key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func (s *fileLog) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.old {
		_ = f.Close()
	}
	return s.f.Close()
}
