package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/postbus/postbus/broker/internal/vfs"
	"github.com/prometheus/client_golang/prometheus"
)

// Config is what a Broker is opened with. DefaultConfig gives the values the
// design names; every interval is here so that tests can shorten it.
type Config struct {
	Dir string // data directory: commitlog/, consumequeue/, index/, meta.db

	SyncFlush     bool          // acknowledge only after fsync (group commit)
	FlushInterval time.Duration // async mode: fsync period
	SegmentSize   int64         // commitlog segment size (a larger batch gets a segment of its own)

	MaxMessageBytes  int
	MaxDelay         time.Duration
	DefaultQueues    int
	AutoCreateTopics bool
	// AutoCreateGroups lets a group's first pull on an existing topic
	// create its pull subscription (RocketMQ's autoCreateSubscriptionGroup);
	// off, a group pulls only with a subscription made beforehand.
	AutoCreateGroups bool
	DedupWindow      time.Duration

	Retention          time.Duration // how long the log keeps messages
	RetentionInterval  time.Duration // how often retention and disk use are checked
	CheckpointInterval time.Duration // how often derived indexes are flushed and checkpointed
	CheckpointBytes    int64         // ... or sooner, once this much log has been dispatched since the last
	DiskCleanRatio     float64       // above it, the oldest segments go first
	DiskFullRatio      float64       // above it, publishes are refused with disk_full
	OffsetInterval     time.Duration // how often consumer offsets and the attempt log are persisted

	// RebuildMetadata recreates in meta.db the topics the commitlog holds
	// but the metadata does not know (it is missing, unusable, or older
	// than the log), rebuilding the derived indexes and timers with them.
	// Without it such a broker refuses to start (ErrMetadataLost).
	RebuildMetadata bool

	// TombstoneTTL is how long a deleted subscription's tombstone is kept
	// (from its delete's version), so that a broker that missed the
	// delete loses its copy when it is back. Far longer than any broker
	// expiry: a broker away for longer may bring the subscription back.
	TombstoneTTL time.Duration

	// MetricsTopics is how many topics get a label of their own on the
	// per-topic publish counters; the others are counted as "other"
	// (0: DefaultMetricsTopics).
	MetricsTopics int

	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
	Now        func() time.Time
	// FS does the file operations of the commitlog, the consume queues and
	// the key index that change what is on disk; nil means vfs.OS. Tests
	// set a vfs.Fault to fail them or simulate a power cut.
	FS vfs.FS
	// Replica, when set, makes this broker its replica group's leader for
	// as long as it is open: it is opened on the member's files and its
	// appends and metadata writes go through the group (replicated.go).
	Replica *Replicated

	// Transactional messages (txn.go): how often an undecided transaction
	// is checked again after its first check, how many checks it gets
	// before it is rolled back, how long one check may take, and who
	// sends the checks (nil: none are sent, each counts as failed).
	TxnCheckInterval time.Duration
	TxnCheckMax      int
	TxnCheckTimeout  time.Duration
	TxnChecker       TxnChecker
}

// DefaultTombstoneTTL is how long a deleted subscription's tombstone is
// kept by default: a week, far beyond the name servers' broker expiry.
const DefaultTombstoneTTL = 7 * 24 * time.Hour

// DefaultConfig returns the defaults of DESIGN.md for a broker storing in dir.
func DefaultConfig(dir string) Config {
	return Config{
		Dir:                dir,
		SyncFlush:          true,
		FlushInterval:      200 * time.Millisecond,
		SegmentSize:        128 << 20,
		MaxMessageBytes:    DefaultMaxMessageBytes,
		MaxDelay:           30 * 24 * time.Hour,
		DefaultQueues:      4,
		AutoCreateGroups:   true,
		DedupWindow:        5 * time.Minute,
		Retention:          72 * time.Hour,
		RetentionInterval:  10 * time.Second,
		CheckpointInterval: 5 * time.Second,
		CheckpointBytes:    64 << 20,
		DiskCleanRatio:     0.85,
		DiskFullRatio:      0.90,
		OffsetInterval:     5 * time.Second,
		TombstoneTTL:       DefaultTombstoneTTL,
		TxnCheckInterval:   DefaultTxnCheckInterval,
		TxnCheckMax:        DefaultTxnCheckMax,
		TxnCheckTimeout:    DefaultTxnCheckTimeout,
	}
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.Dir != "", "data directory is empty")
	check(c.FlushInterval > 0, "flush interval %s must be positive", c.FlushInterval)
	if err := CheckSizes(c.SegmentSize, c.MaxMessageBytes); err != nil {
		errs = append(errs, err)
	}
	check(c.MaxDelay > 0, "max delay %s must be positive", c.MaxDelay)
	check(c.DefaultQueues >= 1 && c.DefaultQueues <= MaxQueues, "default queues %d must be 1-%d", c.DefaultQueues, MaxQueues)
	check(c.DedupWindow > 0, "dedup window %s must be positive", c.DedupWindow)
	check(c.Retention > 0, "retention %s must be positive", c.Retention)
	check(c.RetentionInterval > 0, "retention check interval %s must be positive", c.RetentionInterval)
	check(c.CheckpointInterval > 0, "checkpoint interval %s must be positive", c.CheckpointInterval)
	check(c.OffsetInterval > 0, "offset interval %s must be positive", c.OffsetInterval)
	check(c.TombstoneTTL > 0, "subscription tombstone lifetime %s must be positive", c.TombstoneTTL)
	check(c.TxnCheckInterval > 0, "transaction check interval %s must be positive", c.TxnCheckInterval)
	check(c.TxnCheckMax >= 1, "transaction check max %d must be at least 1", c.TxnCheckMax)
	check(c.TxnCheckTimeout > 0, "transaction check timeout %s must be positive", c.TxnCheckTimeout)
	check(c.CheckpointBytes > 0, "checkpoint bytes %d must be positive", c.CheckpointBytes)
	check(c.DiskCleanRatio > 0 && c.DiskCleanRatio <= c.DiskFullRatio && c.DiskFullRatio <= 1,
		"disk ratios must satisfy 0 < clean (%.2f) <= full (%.2f) <= 1", c.DiskCleanRatio, c.DiskFullRatio)
	return errors.Join(errs...)
}

// MaxBatchStoredBytes bounds one batch as the commitlog stores it: its
// records (bodies, keys, properties, tag and every other field) with their
// frames. Every batch within the API's limits is below it: bodies total at
// most MaxBatchBytes, and the rest of a batch, which comes in the same JSON
// request of at most 7 MiB, adds at most a few hundred bytes a record. It
// does not bound the segment size: a batch larger than a segment is stored
// in a segment of its own (see the commitlog's package doc).
const MaxBatchStoredBytes = 8 << 20

// maxRecordOverhead bounds the bytes a record holds besides its body: a
// message at every limit of Message.validate (32 keys of 256 bytes, 16 KiB
// of properties, a 127-character tag, ...) takes under 27 KiB more than its
// body; the rest is room for the broker's own fields (a dead letter's
// reason).
const maxRecordOverhead = 64 << 10

// maxRecordBytes is the largest record a message whose body is at most
// maxBody bytes encodes to: the commitlog's MaxPayload.
func maxRecordBytes(maxBody int) int64 { return int64(maxBody) + maxRecordOverhead }

// minSegmentSize is the smallest commitlog segment a broker accepts. Any
// segment holds any publish (a batch larger than a segment gets one of its
// own), so this only keeps the log from splitting into so many files that
// each roll's fsync and each open file cost more than they save: 1 MiB,
// what a broker accepted before segments had to hold a whole batch.
const minSegmentSize = 1 << 20

// MinSegmentSize is the smallest commitlog segment a broker accepts with a
// body limit of maxMessageBytes: 1 MiB, whatever the limit, since a batch
// larger than a segment is stored in a segment of its own. It takes the
// limit so that callers sizing segments by it need not change if that
// ever matters again.
func MinSegmentSize(maxMessageBytes int) int64 { return minSegmentSize }

// MaxSegmentSize is the largest segment a broker accepts. A segment and
// the one prepared to follow it are reserved whole on disk, and retention
// and disk cleaning delete whole segments: a mistyped 64GiB would take
// twice that from the disk at start and push it over the watermark that
// deletes acknowledged messages.
const MaxSegmentSize = 1 << 30

// ErrSizes marks a segment size and body limit that cannot work together:
// what CheckSizes returns, so that a command line can name its flags.
var ErrSizes = errors.New("sizes do not fit together")

// CheckSizes reports whether a segment size and a body limit can be used,
// and why not. Any segment of at least MinSegmentSize stores every publish
// that the body limit admits: a batch larger than a segment is stored in a
// segment of its own.
func CheckSizes(segmentSize int64, maxMessageBytes int) error {
	switch {
	case maxMessageBytes <= 0 || maxMessageBytes > MaxBatchBytes:
		return fmt.Errorf("max message bytes %d must be 1 to %d, the most that the bodies of one publish (a batch) may total: %w",
			maxMessageBytes, MaxBatchBytes, ErrSizes)
	case segmentSize < MinSegmentSize(maxMessageBytes):
		return fmt.Errorf("segment size %d is below the smallest, %d: smaller segments would only multiply files and fsyncs: %w",
			segmentSize, MinSegmentSize(maxMessageBytes), ErrSizes)
	case segmentSize > MaxSegmentSize:
		return fmt.Errorf("segment size %d is over the largest, %d: each segment and the next one are reserved whole on disk, and retention deletes whole segments: %w",
			segmentSize, int64(MaxSegmentSize), ErrSizes)
	}
	return nil
}
