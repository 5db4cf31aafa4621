package commitlog

import (
	"context"
	"path/filepath"
)

// FramedSize is the bytes a batch of payloads of these lengths takes in
// the log, frames included: what Append adds to the end, when the batch
// fits in the active segment.
func FramedSize(lens ...int) int64 {
	var n int64
	for _, l := range lens {
		n += headerSize + int64(l)
	}
	return n
}

// NextStart is the offset at which Append would write a batch of total
// framed bytes now: the end, or the base of the segment a roll would make.
// A replica group's leader stamps it in each replicated batch, so a member
// that is handed the batch again after a restart can tell whether its log
// already holds it (see broker/replica). Every member rolls at the same
// places because each applies the same appends with the same SegmentSize.
func (l *Log) NextStart(total int64) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pos+total > l.active.size {
		return l.active.base + l.active.size
	}
	return l.active.base + l.pos
}

// SyncAll makes everything written so far durable, in either flush mode:
// a replica fsyncs its log before a snapshot lets raft forget the entries
// that wrote it.
func (l *Log) SyncAll(ctx context.Context) error {
	if l.cfg.Sync {
		return l.Sync(ctx, l.written.Load())
	}
	return l.flush()
}

// Config reports the log's configuration.
func (l *Log) Config() Config { return l.cfg }

// SegmentPath is the file of the segment at base in a log stored in dir.
func SegmentPath(dir string, base int64) string { return filepath.Join(dir, segmentName(base)) }

// Placer predicts where a sequence of appends lands, as Append would place
// them one after the other, without writing: a replica group's leader
// hands out the offsets of batches still on their way through raft.
type Placer struct {
	base, size, pos, segSize int64
}

// Placer starts a prediction from the log as it is now.
func (l *Log) Placer() Placer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Placer{base: l.active.base, size: l.active.size, pos: l.pos, segSize: l.cfg.SegmentSize}
}

// Place returns the offset at which the next batch of total framed bytes
// goes, rolling to a new segment where Append would (see roll).
func (p *Placer) Place(total int64) int64 {
	if p.pos+total > p.size {
		p.base += p.size
		p.size = p.segSize
		if total > p.segSize {
			p.size = oversizedSize(total)
		}
		p.pos = 0
	}
	start := p.base + p.pos
	p.pos += total
	return start
}
