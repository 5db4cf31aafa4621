package commitlog

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/postbus/postbus/broker/internal/vfs"
)

const (
	// DefaultSegmentSize is the size of each preallocated segment file.
	DefaultSegmentSize = 128 << 20
	// DefaultMaxPayload is the largest payload Append accepts by default.
	DefaultMaxPayload = 8 << 20
	// DefaultFlushInterval is the async-mode fsync period.
	DefaultFlushInterval = 200 * time.Millisecond

	// minSegmentSize keeps tiny test segments legal while refusing sizes
	// that could not hold a header and a marker.
	minSegmentSize = 4 << 10

	// MaxAppendBytes bounds one Append (its frames, headers included) when
	// SegmentSize is smaller: a batch larger than a segment is stored in a
	// segment of its own, made for it, and this keeps that segment and the
	// buffer it is encoded in from growing without bound. A batch over
	// both is refused with ErrTooLarge.
	MaxAppendBytes = 256 << 20
)

// Config configures a Log. Zero fields other than Dir take their defaults in
// Open.
type Config struct {
	Dir         string // directory holding the segment files; created if missing
	SegmentSize int64  // bytes per new segment file; segments made with another size keep theirs, and a batch larger than it gets a segment of its size
	MaxPayload  int    // largest payload Append accepts, at most MaxFramePayload (it may exceed SegmentSize); reading never looks at it
	// Sync selects group commit: Committed is the fsynced offset and Sync
	// waits for the flusher. When false, Committed is the written offset,
	// Sync returns at once, and the flusher fsyncs every FlushInterval.
	Sync          bool
	FlushInterval time.Duration
	Logger        *slog.Logger
	// FS does every file operation that changes the directory; nil means
	// vfs.OS. Tests set a vfs.Fault to fail, cut or crash them.
	FS vfs.FS

	// io performs the file operations that can fail for reasons outside the
	// program (allocation, writes, fsync). Nil means FS's; tests in this
	// package set it to inject ENOSPC and I/O errors.
	io segmentIO
}

// DefaultConfig returns the defaults for a log in dir: 128 MiB segments,
// 8 MiB max payload, group commit (Sync true), 200ms async flush interval.
func DefaultConfig(dir string) Config {
	return Config{
		Dir:           dir,
		SegmentSize:   DefaultSegmentSize,
		MaxPayload:    DefaultMaxPayload,
		Sync:          true,
		FlushInterval: DefaultFlushInterval,
	}
}

// withDefaults fills the zero fields.
func (c Config) withDefaults() Config {
	if c.SegmentSize == 0 {
		c.SegmentSize = DefaultSegmentSize
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = int(min(DefaultMaxPayload, c.SegmentSize-headerSize))
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.FS == nil {
		c.FS = vfs.OS
	}
	if c.io == nil {
		c.io = fsIO{c.FS}
	}
	return c
}

// Validate reports whether the configuration can be used.
func (c Config) Validate() error {
	switch {
	case c.Dir == "":
		return errors.New("commitlog: config: Dir is empty")
	case c.SegmentSize < minSegmentSize:
		return fmt.Errorf("commitlog: config: SegmentSize %d below %d", c.SegmentSize, minSegmentSize)
	case c.MaxPayload <= 0:
		return fmt.Errorf("commitlog: config: MaxPayload %d not positive", c.MaxPayload)
	case c.MaxPayload > MaxFramePayload:
		return fmt.Errorf("commitlog: config: MaxPayload %d over the format's largest frame payload %d", c.MaxPayload, MaxFramePayload)
	case c.FlushInterval < 0:
		return fmt.Errorf("commitlog: config: FlushInterval %v negative", c.FlushInterval)
	}
	return nil
}
