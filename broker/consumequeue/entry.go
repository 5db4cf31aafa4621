package consumequeue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"

	"github.com/postbus/postbus/broker/internal/durable"
	"github.com/postbus/postbus/broker/internal/vfs"
)

// EntrySize is the size of one encoded entry on disk.
const EntrySize = 20

// Entry locates one message of a queue in the commitlog.
type Entry struct {
	Offset  int64  // commitlog offset of the record
	Size    int32  // record size in bytes; always > 0
	TagHash uint64 // hash of the tag; schedule topics keep a delivery time here
}

// QueueID names one consume queue.
type QueueID struct {
	Topic string
	Queue int
}

func (id QueueID) String() string { return id.Topic + "/" + strconv.Itoa(id.Queue) }

func putEntry(b []byte, e Entry) {
	binary.BigEndian.PutUint64(b[0:8], uint64(e.Offset))
	binary.BigEndian.PutUint32(b[8:12], uint32(e.Size))
	binary.BigEndian.PutUint64(b[12:20], e.TagHash)
}

func getEntry(b []byte) Entry {
	return Entry{
		Offset:  int64(binary.BigEndian.Uint64(b[0:8])),
		Size:    int32(binary.BigEndian.Uint32(b[8:12])),
		TagHash: binary.BigEndian.Uint64(b[12:20]),
	}
}

// garbage reports whether e cannot have been appended: a crash can leave
// zero-filled entries behind an extended file size.
func garbage(e Entry) bool { return e.Size <= 0 }

// ValidTopic reports whether name matches ^[%A-Za-z0-9][A-Za-z0-9%._-]{0,254}$,
// which also makes it safe as a directory name.
func ValidTopic(name string) bool {
	if len(name) == 0 || len(name) > 255 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '%':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// maxQueueID bounds queue ids so that they stay small decimal directory names.
const maxQueueID = 1<<31 - 1

func checkQueueID(id QueueID) error {
	if !ValidTopic(id.Topic) {
		return fmt.Errorf("queue %q: %w", id.Topic, ErrInvalidTopic)
	}
	if id.Queue < 0 || id.Queue > maxQueueID {
		return fmt.Errorf("queue %s: %w", id, ErrInvalidQueue)
	}
	return nil
}

// parseBase parses a 20-digit file name.
func parseBase(name string) (int64, bool) {
	if len(name) != 20 {
		return 0, false
	}
	for i := 0; i < len(name); i++ {
		if name[i] < '0' || name[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseInt(name, 10, 64)
	return v, err == nil
}

// parseQueueDir parses a canonical decimal queue id directory name.
func parseQueueDir(name string) (int, bool) {
	v, err := strconv.Atoi(name)
	if err != nil || v < 0 || v > maxQueueID || strconv.Itoa(v) != name {
		return 0, false
	}
	return v, true
}

// logMinFile persists the retention floor. No topic can start with '_'.
const logMinFile = "_logmin"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var errBadLogMin = errors.New("bad retention floor file")

func readLogMin(dir string) (int64, error) {
	b, err := os.ReadFile(filepath.Join(dir, logMinFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", logMinFile, err)
	}
	if len(b) != 12 || crc32.Checksum(b[:8], castagnoli) != binary.BigEndian.Uint32(b[8:]) {
		return 0, fmt.Errorf("read %s: %w", logMinFile, errBadLogMin)
	}
	return int64(binary.BigEndian.Uint64(b[:8])), nil
}

// writeLogMin replaces the floor atomically: temp file, fsync, rename, dir fsync.
func writeLogMin(fsys vfs.FS, dir string, v int64) error {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], uint64(v))
	binary.BigEndian.PutUint32(b[8:], crc32.Checksum(b[:8], castagnoli))
	if err := durable.WriteFile(fsys, filepath.Join(dir, logMinFile), b[:], 0o644); err != nil {
		return fmt.Errorf("write %s: %w", logMinFile, err)
	}
	return nil
}

// RaiseFloor raises the retention floor of the store kept in dir while no
// Store has it open (never lowering it; nothing to do when dir does not
// exist): a replica group's follower applies the leader's retention cut to
// its commitlog, and the consume queues it kept from an earlier lead must
// not then take the segments gone below the floor for lost ones.
func RaiseFloor(dir string, logMin int64) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	cur, err := readLogMin(dir)
	if err != nil && !errors.Is(err, errBadLogMin) {
		return err
	}
	if err == nil && cur >= logMin {
		return nil
	}
	return writeLogMin(vfs.OS, dir, logMin)
}
