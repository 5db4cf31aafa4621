package replica

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"

	"github.com/postbus/postbus/broker/commitlog"
	"github.com/postbus/postbus/broker/meta"
)

// A snapshot is a header, meta.db, and, when it travels to another member,
// the commitlog's segments up to the header's log end:
//
//	"PBSNAP1\n" | u32 header length | header JSON | meta.db bytes |
//	segments (HasSegments only): { u32 name length | name | i64 file size |
//	i64 data length | data }* | u32 0
//
// A member's own snapshots are kept without the segments, which its
// commitlog holds anyway (snapshotStore adds them when one is opened to be
// sent), so a snapshot costs a copy of meta.db, not of the log.
const snapMagic = "PBSNAP1\n"

type snapHeader struct {
	LogEnd int64 `json:"log_end"` // the commitlog's end when the snapshot was taken
	// LogMin is where the log started then: the group's retention cuts
	// (trim entries) before the snapshot are not handed again.
	LogMin      int64       `json:"log_min,omitempty"`
	GroupID     string      `json:"group_id,omitempty"` // the group's id, once its first leader made one
	MetaIndex   uint64      `json:"meta_index"`         // meta.db's applied raft index then
	MetaSize    int64       `json:"meta_size"`
	Leader      *leaderInfo `json:"leader,omitempty"`
	HasSegments bool        `json:"has_segments"`
}

// fsmSnapshot is taken on raft's state machine goroutine (the log synced,
// meta.db copied) and written out on another.
type fsmSnapshot struct {
	n      *Node
	hdr    snapHeader
	metaDB string // a copy of meta.db, removed by Release
}

func (n *Node) snapshot() (raft.FSMSnapshot, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	ctx := context.Background()
	// What raft forgets after this snapshot must be on disk here first.
	if err := n.log.SyncAll(ctx); err != nil {
		return nil, fmt.Errorf("snapshot: sync commitlog: %w", err)
	}
	idx, err := n.meta.AppliedIndex(ctx)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	tmp, err := os.CreateTemp(n.raftDir, "meta-snapshot-*.db")
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	path := tmp.Name()
	_ = tmp.Close()
	_ = os.Remove(path) // Backup wants to create it
	if err := meta.Backup(ctx, n.metaPath, path); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	s := &fsmSnapshot{n: n, metaDB: path, hdr: snapHeader{LogEnd: n.log.End(), LogMin: n.log.MinOffset(), GroupID: n.GroupID(), MetaIndex: idx, MetaSize: fi.Size(), Leader: n.leader.Load()}}
	return s, nil
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	err := s.write(sink)
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) write(w io.Writer) error {
	if err := writeHeader(w, s.hdr); err != nil {
		return err
	}
	f, err := os.Open(s.metaDB)
	if err != nil {
		return err
	}
	defer f.Close()
	if n, err := io.Copy(w, f); err != nil || n != s.hdr.MetaSize {
		return fmt.Errorf("copy meta.db (%d of %d bytes): %w", n, s.hdr.MetaSize, err)
	}
	return nil
}

func (s *fsmSnapshot) Release() { _ = os.Remove(s.metaDB) }

func writeHeader(w io.Writer, h snapHeader) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	buf := append([]byte(snapMagic), binary.BigEndian.AppendUint32(nil, uint32(len(b)))...)
	buf = append(buf, b...)
	_, err = w.Write(buf)
	return err
}

func readHeader(r io.Reader) (snapHeader, error) {
	var h snapHeader
	pre := make([]byte, len(snapMagic)+4)
	if _, err := io.ReadFull(r, pre); err != nil {
		return h, fmt.Errorf("snapshot header: %w", err)
	}
	if string(pre[:len(snapMagic)]) != snapMagic {
		return h, errors.New("snapshot header: not a postbus snapshot")
	}
	b := make([]byte, binary.BigEndian.Uint32(pre[len(snapMagic):]))
	if _, err := io.ReadFull(r, b); err != nil {
		return h, fmt.Errorf("snapshot header: %w", err)
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("snapshot header: %w", err)
	}
	return h, nil
}

// segmentPart is one segment as it travels in a snapshot.
type segmentPart struct {
	base     int64
	path     string
	fileSize int64 // the file's size (a segment is preallocated)
	dataLen  int64 // the bytes sent: up to the snapshot's log end
}

func (p segmentPart) framedLen() int64 {
	return 4 + int64(len(filepath.Base(p.path))) + 8 + 8 + p.dataLen
}

// snapshotStore keeps raft's snapshots in a FileSnapshotStore, without the
// segments; Open adds this member's segments to one taken here, for raft
// to send to a member that needs it whole.
type snapshotStore struct {
	*raft.FileSnapshotStore
	n *Node
}

func (s snapshotStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.FileSnapshotStore.Open(id)
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReader(rc)
	h, err := readHeader(br)
	if err != nil {
		rc.Close()
		return nil, nil, fmt.Errorf("open snapshot %s: %w", id, err)
	}
	if h.HasSegments {
		// Received whole from another member: as it is.
		return meta, readCloser{io.MultiReader(headerReader(h), br), rc}, nil
	}
	parts, err := s.n.segmentParts(h.LogEnd)
	if err != nil {
		rc.Close()
		return nil, nil, fmt.Errorf("open snapshot %s: %w", id, err)
	}
	h.HasSegments = true
	hr := headerReader(h)
	size := int64(hr.Len()) + h.MetaSize + 4
	readers := []io.Reader{hr, io.LimitReader(br, h.MetaSize)}
	for _, p := range parts {
		size += p.framedLen()
		readers = append(readers, &segmentReader{p: p})
	}
	readers = append(readers, bytes.NewReader([]byte{0, 0, 0, 0}))
	m := *meta
	m.Size = size
	return &m, readCloser{io.MultiReader(readers...), rc}, nil
}

func headerReader(h snapHeader) *bytes.Reader {
	var b bytes.Buffer
	_ = writeHeader(&b, h) // to memory: cannot fail
	return bytes.NewReader(b.Bytes())
}

type readCloser struct {
	io.Reader
	io.Closer
}

// segmentReader streams one segment part, opening the file when first read.
type segmentReader struct {
	p   segmentPart
	r   io.Reader
	f   *os.File
	err error
}

func (s *segmentReader) Read(b []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.r == nil {
		f, err := os.Open(s.p.path)
		if err != nil {
			s.err = fmt.Errorf("snapshot segment: %w", err)
			return 0, s.err
		}
		s.f = f
		name := filepath.Base(s.p.path)
		head := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
		head = append(head, name...)
		head = binary.BigEndian.AppendUint64(head, uint64(s.p.fileSize))
		head = binary.BigEndian.AppendUint64(head, uint64(s.p.dataLen))
		s.r = io.MultiReader(bytes.NewReader(head), io.LimitReader(f, s.p.dataLen))
	}
	n, err := s.r.Read(b)
	if err == io.EOF {
		_ = s.f.Close()
	}
	return n, err
}

// segmentParts lists this member's segments up to end.
func (n *Node) segmentParts(end int64) ([]segmentPart, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	var parts []segmentPart
	for _, sg := range n.log.Segments() {
		if sg.Base >= end {
			break
		}
		path := commitlog.SegmentPath(n.logDir, sg.Base)
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("segment %d: %w", sg.Base, err)
		}
		data := min(end, sg.End) - sg.Base
		parts = append(parts, segmentPart{base: sg.Base, path: path, fileSize: fi.Size(), dataLen: data})
	}
	return parts, nil
}

// restore brings this member to a snapshot. Raft calls it at start with
// the member's own latest snapshot, which its files already hold (or hold
// more than): then nothing changes, and the entries after the snapshot are
// applied again, each skipped where the files hold it. A member whose files
// are behind the snapshot (its data directory was lost, or it was away
// while the group compacted the entries it lacks) gets the snapshot's
// meta.db and segments in place of its own.
func (n *Node) restore(r io.Reader) error {
	br := bufio.NewReaderSize(r, 1<<20)
	h, err := readHeader(br)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if h.GroupID != "" {
		n.setGroupID(h.GroupID)
	}
	ctx := context.Background()
	idx, err := n.meta.AppliedIndex(ctx)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if idx >= h.MetaIndex && n.log.End() >= h.LogEnd {
		if h.Leader != nil && n.leader.Load() == nil {
			n.leader.Store(h.Leader)
		}
		if h.LogMin > n.log.MinOffset() {
			// A retention cut of the group that this member missed (the
			// entry was compacted into the snapshot).
			if _, err := n.applyTrim(h.LogMin); err != nil {
				n.applyFailed(0, "snapshot", err)
				return fmt.Errorf("restore: %w", err)
			}
		}
		n.logger.Info("raft snapshot: this member's files already hold it", slog.Int64("log_end", n.log.End()),
			slog.Int64("snapshot_log_end", h.LogEnd), slog.Uint64("meta_index", idx), slog.Uint64("snapshot_meta_index", h.MetaIndex))
		return nil
	}
	if !h.HasSegments {
		err := fmt.Errorf("restore: the snapshot (log end %d, meta index %d) is ahead of this member's files (log end %d, meta index %d) and carries no segments: %w",
			h.LogEnd, h.MetaIndex, n.log.End(), idx, errDiverged)
		n.applyFailed(0, "snapshot", err)
		return err
	}
	n.logger.Warn("raft snapshot: replacing this member's commitlog and metadata with the group's",
		slog.Int64("log_end", n.log.End()), slog.Int64("snapshot_log_end", h.LogEnd), slog.Uint64("meta_index", idx), slog.Uint64("snapshot_meta_index", h.MetaIndex))
	if err := n.closeFiles(); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := n.replaceFiles(br, h); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := n.openFiles(ctx); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if h.Leader != nil {
		n.leader.Store(h.Leader)
	}
	n.metrics.restores.Inc()
	return nil
}

// replaceFiles writes the snapshot's meta.db and segments over this
// member's, and removes what is derived from them (the broker rebuilds it
// from the log when this member next leads). Called with the files closed.
func (n *Node) replaceFiles(r io.Reader, h snapHeader) error {
	for _, name := range derivedFiles {
		if err := os.RemoveAll(filepath.Join(n.dir, name)); err != nil {
			return err
		}
	}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(n.metaPath + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := writeFileFrom(n.metaPath, r, h.MetaSize, h.MetaSize); err != nil {
		return fmt.Errorf("meta.db: %w", err)
	}
	if err := os.RemoveAll(n.logDir); err != nil {
		return err
	}
	if err := os.MkdirAll(n.logDir, 0o755); err != nil {
		return err
	}
	for {
		var l [4]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return fmt.Errorf("segment list: %w", err)
		}
		nl := binary.BigEndian.Uint32(l[:])
		if nl == 0 {
			break
		}
		if nl > 64 {
			return fmt.Errorf("segment name of %d bytes: %w", nl, errBadEntry)
		}
		name := make([]byte, nl)
		if _, err := io.ReadFull(r, name); err != nil {
			return err
		}
		if filepath.Base(string(name)) != string(name) {
			return fmt.Errorf("segment name %q: %w", name, errBadEntry)
		}
		var sz [16]byte
		if _, err := io.ReadFull(r, sz[:]); err != nil {
			return err
		}
		fileSize, dataLen := int64(binary.BigEndian.Uint64(sz[:8])), int64(binary.BigEndian.Uint64(sz[8:]))
		if dataLen < 0 || fileSize < dataLen {
			return fmt.Errorf("segment %s: %d bytes of %d: %w", name, dataLen, fileSize, errBadEntry)
		}
		if err := writeFileFrom(filepath.Join(n.logDir, string(name)), r, dataLen, fileSize); err != nil {
			return fmt.Errorf("segment %s: %w", name, err)
		}
	}
	return syncDir(n.logDir)
}

// derivedFiles are the broker's files built from the commitlog and
// meta.db (see package broker), dropped when a snapshot replaces them.
var derivedFiles = []string{"consumequeue", "index", "checkpoint.json", "queuemarks.json", "lostspans.json", "logend"}

// writeFileFrom writes n bytes of r to a new file at path, sized to size
// (a segment keeps its preallocated length), and fsyncs it.
func writeFileFrom(path string, r io.Reader, n, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, r, n); err != nil {
		f.Close()
		return err
	}
	if size > n {
		if err := f.Truncate(size); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
