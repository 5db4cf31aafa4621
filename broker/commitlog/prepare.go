package commitlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/postbus/postbus/broker/internal/vfs"
)

const (
	// rollWaitShare: a roll waits for a preparation only when at most this
	// share of the segment (1/rollWaitShare) is still to be zeroed. Further
	// behind, the wait would cost more than the slower appends of a
	// fallocated segment.
	rollWaitShare = 8
	// defaultRollWait bounds that wait, which holds the append mutex: past
	// it the roll falls back to fallocate and the preparation goes on for
	// the next roll.
	defaultRollWait = 50 * time.Millisecond
)

// prepared is one background preparation of a segment file (prepareFile). A
// Log runs at most one at a time, started when a segment becomes active so
// that the next roll finds its file ready and only renames it.
type prepared struct {
	path   string        // Dir/<base>.next, base being the segment it was started for
	zeroed atomic.Int64  // bytes of zeros written so far; a roll reads it to judge whether to wait
	done   chan struct{} // closed when the goroutine has exited; f and err are set before

	f   *os.File // the ready file, owned by whoever holds the prepared after done; nil on error
	err error    // why it failed, or errStopped (wrapped) if Close stopped it
}

// startPrepare starts preparing the file for the segment at base, unless a
// preparation is already running (one a roll could not wait for: it will
// serve the next roll instead). Called with mu held.
func (l *Log) startPrepare(base int64) {
	if l.prep != nil {
		return
	}
	p := &prepared{
		path: filepath.Join(l.cfg.Dir, nextName(base)),
		done: make(chan struct{}),
	}
	l.prep = p
	go l.prepare(p)
}

// prepare is the preparation goroutine. Close stops it through l.stop and
// waits for p.done.
func (l *Log) prepare(p *prepared) {
	defer close(p.done)
	f, err := prepareFile(l.cfg.FS, p.path, l.cfg.SegmentSize, l.cfg.io, l.stop, &p.zeroed)
	if err != nil {
		p.err = fmt.Errorf("prepare %s: %w", filepath.Base(p.path), err)
		if !errors.Is(err, errStopped) {
			// Said now, not only at the roll: a full disk is worth
			// knowing about before the segment runs out.
			l.log.Warn("commitlog: preparing the next segment failed; the roll will create it directly",
				logKeyErr, p.err)
		}
		return
	}
	p.f = f
}

// takePrepared hands the roll the prepared file, or nil when the roll must
// create the segment itself: nothing is being prepared (the last attempt
// failed), it failed, or it is too far from done to wait for. Called with mu
// held; a returned file is no longer l.prep.
func (l *Log) takePrepared() *prepared {
	p := l.prep
	if p == nil {
		return nil
	}
	select {
	case <-p.done:
	default:
		if !l.waitPrepared(p) {
			if !l.warnedSlowPrep {
				l.warnedSlowPrep = true
				l.log.Warn("commitlog: next segment not zero-filled in time, rolling to a fallocated one; "+
					"appends into it are slower (is SegmentSize too small for the write rate?)",
					logKeySegment, filepath.Base(p.path), "zeroed", p.zeroed.Load(), "size", l.cfg.SegmentSize)
			}
			return nil
		}
	}
	l.prep = nil
	if p.err != nil {
		return nil // prepare logged it; the direct path reports what still fails
	}
	return p
}

// waitPrepared waits, for at most rollWait, for a preparation that is
// nearly done, and reports whether it finished.
func (l *Log) waitPrepared(p *prepared) bool {
	size := l.cfg.SegmentSize
	if p.zeroed.Load() < size-size/rollWaitShare {
		return false
	}
	if l.testHookRollWait != nil {
		l.testHookRollWait()
	}
	t := time.NewTimer(l.rollWait)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

// stopPrepare waits for the preparation p (whose stop channel has been
// closed) to exit and deletes its file. Close calls it.
func stopPrepare(fsys vfs.FS, p *prepared) {
	<-p.done
	if p.f != nil {
		_ = p.f.Close()
		_ = fsys.Remove(p.path)
	}
}
