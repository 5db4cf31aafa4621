package broker

import (
	"context"
	"log/slog"
	"time"
)

// verifyRate bounds how fast the background check reads the sealed
// segments: well under what a disk gives, so that publishes and
// deliveries keep it.
const verifyRate = 64 << 20 // bytes a second

// verifyLoop reads every sealed segment once after the broker opened.
// Open checks only the newest segment (every other was fsynced when it was
// sealed), and a damaged record elsewhere used to be found only when
// something read it: one nobody reads again (consumed, of a quiet topic,
// a delayed message until it is due) was never reported before retention
// deleted it, and /readyz said ready with nothing listed after a disk
// incident. Reading a damaged span quarantines it: ERROR with its offset,
// postbus_commitlog_quarantined_spans, /readyz (commitlog recovery rules).
func (b *Broker) verifyLoop() {
	defer b.wg.Done()
	if !b.meta.Checked() {
		// Too large to check at open without slowing the start: checked
		// now, and a damaged file makes the broker not ready (Ready).
		start := time.Now()
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-b.closing:
				cancel()
			case <-ctx.Done():
			}
		}()
		err := b.meta.Check(ctx)
		cancel()
		if err != nil && !b.isClosing() {
			b.logger.Error("checking the metadata database failed", slog.Any("err", err))
		} else if err == nil {
			b.logger.Info("metadata database checked", slog.Duration("took", time.Since(start).Round(time.Millisecond)))
		}
	}
	segs := b.log.Segments()
	start, read := time.Now(), int64(0)
	for _, s := range segs[:len(segs)-1] {
		if err := b.log.Verify(s); err != nil {
			if b.isClosing() {
				return
			}
			// Retention may have deleted it meanwhile; anything else is
			// a read that failed, not damage: say so and go on.
			if s.Base >= b.log.MinOffset() {
				b.logger.Warn("verifying a sealed segment failed", slog.Int64("segment", s.Base), slog.Any("err", err))
			}
		}
		read += s.End - s.Base
		// Pace: no faster than verifyRate on average.
		wait := time.Until(start.Add(time.Duration(float64(read) / verifyRate * float64(time.Second))))
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-b.closing:
				t.Stop()
				return
			case <-t.C:
			}
		} else if b.isClosing() {
			return
		}
	}
	if len(segs) > 1 {
		b.logger.Info("sealed commitlog segments verified", slog.Int("segments", len(segs)-1),
			slog.Int("quarantined_spans", len(b.log.Quarantined())), slog.Duration("took", time.Since(start).Round(time.Millisecond)))
	}
}
