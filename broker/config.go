package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config is what a Broker is opened with. DefaultConfig gives the values the
// design names; every interval is here so that tests can shorten it.
type Config struct {
	Dir string // data directory: commitlog/, consumequeue/, index/, meta.db

	SyncFlush     bool          // acknowledge only after fsync (group commit)
	FlushInterval time.Duration // async mode: fsync period
	SegmentSize   int64         // commitlog segment size

	MaxMessageBytes  int
	MaxDelay         time.Duration
	DefaultQueues    int
	AutoCreateTopics bool
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

	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
	Now        func() time.Time
}

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
		DedupWindow:        5 * time.Minute,
		Retention:          72 * time.Hour,
		RetentionInterval:  10 * time.Second,
		CheckpointInterval: 5 * time.Second,
		CheckpointBytes:    64 << 20,
		DiskCleanRatio:     0.85,
		DiskFullRatio:      0.90,
		OffsetInterval:     5 * time.Second,
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
	check(c.SegmentSize >= 1<<20, "segment size %d must be at least 1 MiB", c.SegmentSize)
	check(c.MaxMessageBytes > 0 && int64(c.MaxMessageBytes)+(64<<10) <= c.SegmentSize,
		"max message size %d must be positive and fit in a segment of %d bytes", c.MaxMessageBytes, c.SegmentSize)
	check(c.MaxDelay > 0, "max delay %s must be positive", c.MaxDelay)
	check(c.DefaultQueues >= 1 && c.DefaultQueues <= MaxQueues, "default queues %d must be 1-%d", c.DefaultQueues, MaxQueues)
	check(c.DedupWindow > 0, "dedup window %s must be positive", c.DedupWindow)
	check(c.Retention > 0, "retention %s must be positive", c.Retention)
	check(c.RetentionInterval > 0, "retention check interval %s must be positive", c.RetentionInterval)
	check(c.CheckpointInterval > 0, "checkpoint interval %s must be positive", c.CheckpointInterval)
	check(c.OffsetInterval > 0, "offset interval %s must be positive", c.OffsetInterval)
	check(c.CheckpointBytes > 0, "checkpoint bytes %d must be positive", c.CheckpointBytes)
	check(c.DiskCleanRatio > 0 && c.DiskCleanRatio <= c.DiskFullRatio && c.DiskFullRatio <= 1,
		"disk ratios must satisfy 0 < clean (%.2f) <= full (%.2f) <= 1", c.DiskCleanRatio, c.DiskFullRatio)
	return errors.Join(errs...)
}
