package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// SettledMemory is how long a visibility timer settled by an ack or a
// nack is remembered after it was settled: a retry of the same ack (or
// nack) within it, its answer lost, is told "acked" (or "nacked") again,
// also after a restart; past it the timer's row may be purged, and the
// receipt is then answered stale.
const SettledMemory = 15 * time.Minute

// TimerState is what one receipt's visibility timer came to in
// SettleTimers, ReserveTimersEach or SetTimersDue.
type TimerState uint8

const (
	TimerDone   TimerState = iota // pending, and now settled (or reserved, or moved) by this call
	TimerAcked                    // acked before: a retried ack
	TimerNacked                   // nacked before: a retried nack
	TimerStale                    // fired, claimed, due, unknown, or settled the other way
)

// settledState reads, in tx, what a timer that could not be settled came
// to before.
func settledState(ctx context.Context, tx Tx, off int64) (TimerState, error) {
	var settled int64
	err := tx.QueryRowContext(ctx, `SELECT settled FROM timers WHERE log_offset = ?`, off).Scan(&settled)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return TimerStale, nil
	case err != nil:
		return 0, err
	case settled > 0:
		return TimerAcked, nil
	case settled < 0:
		return TimerNacked, nil
	}
	return TimerStale, nil
}

// SettleTimers settles pending visibility timers, each on its own, in one
// transaction: offsets[i] is cancelled and, with replacements (a nack, as
// many as offsets, -1 for none), replacements[i] kept in its place. A
// timer due by now (read once the writer is held), claimed, fired or
// unknown is not settled; its replacement, stored already, is marked fired
// instead, so that it never comes out beside the original. ack records
// the settle as an ack, otherwise as a nack, so that a retry of the same
// settle is told what it did (SettledMemory).
//
// An ack does not settle a timer a nack has reserved (ReserveTimersEach):
// that nack won, its retry copy is stored or being stored, and an ack
// taking the timer from under it would leave the copy to bring the
// message back after the ack was answered "acked". The ack is told
// TimerNacked. The nack's own swap (with replacements) settles it.
func (s *Store) SettleTimers(ctx context.Context, offsets, replacements []int64, ack bool) ([]TimerState, error) {
	if replacements != nil && len(replacements) != len(offsets) {
		return nil, fmt.Errorf("settle timers: %d replacements for %d timers: %w", len(replacements), len(offsets), ErrInvalid)
	}
	out := make([]TimerState, len(offsets))
	err := s.write(ctx, func(tx Tx) error {
		now := s.now().UnixMilli()
		if swapHook != nil {
			swapHook()
		}
		mark := now
		if !ack {
			mark = -now
		}
		update := `UPDATE timers SET fired = 1, settled = ? WHERE log_offset = ? AND fired = 0 AND deliver_at > ?`
		if replacements == nil {
			update += ` AND settled = 0` // not reserved by a nack
		}
		stmt, err := tx.PrepareContext(ctx, update)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for i, off := range offsets {
			res, err := stmt.ExecContext(ctx, mark, off, now)
			if err != nil {
				return fmt.Errorf("settle timer %d: %w", off, err)
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 1 {
				out[i] = TimerDone
				continue
			}
			if out[i], err = settledState(ctx, tx, off); err != nil {
				return err
			}
			if replacements != nil && replacements[i] >= 0 {
				if _, err := tx.ExecContext(ctx, `UPDATE timers SET fired = 1 WHERE log_offset = ?`, replacements[i]); err != nil {
					return fmt.Errorf("drop replacement timer %d: %w", replacements[i], err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("settle timers: %w", err)
	}
	return out, nil
}

// ReserveTimersEach is ReserveTimers receipt by receipt: each timer that
// can be is reserved until at least until; for the others it says whether
// they were acked or nacked before, or are stale. A reserved timer is
// marked nacked (settled < 0) while still pending, so that an ack or a
// change of visibility racing the nack that reserved it, or a second
// nack, finds it taken (TimerNacked) rather than settling it under the
// nack: one settle of a receipt wins. A nack cut short (a crash, an
// error) leaves the timer to bring its message back at until, as the
// next attempt, which is what the nack asked for, later.
func (s *Store) ReserveTimersEach(ctx context.Context, offsets []int64, until time.Time) ([]TimerState, error) {
	return s.moveTimersEach(ctx, offsets, "reserve",
		`UPDATE timers SET deliver_at = max(deliver_at, ?1), settled = -?3 WHERE log_offset = ?2 AND fired = 0 AND deliver_at > ?3 AND settled = 0`, until.UnixMilli())
}

// SetTimersDue moves pending timers to at (a change of visibility), each
// on its own: one due by now (read once the writer is held), claimed,
// fired, unknown or reserved by a nack is not moved and answered as
// SettleTimers does. A timer moved to now or before is due at once, for
// the caller to wake the timer loop.
func (s *Store) SetTimersDue(ctx context.Context, offsets []int64, at time.Time) ([]TimerState, error) {
	// Claimed timers are at 0: a due time is never moved to it.
	return s.moveTimersEach(ctx, offsets, "move",
		`UPDATE timers SET deliver_at = ?1 WHERE log_offset = ?2 AND fired = 0 AND deliver_at > ?3 AND settled = 0`, max(at.UnixMilli(), 1))
}

// moveTimersEach runs update (args ?1 the new due time, ?2 a log offset, ?3 now)
// on each pending timer not yet due, in one transaction; a timer it did
// not move is answered by what became of it (settledState).
func (s *Store) moveTimersEach(ctx context.Context, offsets []int64, verb, update string, due int64) ([]TimerState, error) {
	out := make([]TimerState, len(offsets))
	err := s.write(ctx, func(tx Tx) error {
		now := s.now().UnixMilli()
		stmt, err := tx.PrepareContext(ctx, update)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for i, off := range offsets {
			res, err := stmt.ExecContext(ctx, due, off, now)
			if err != nil {
				return fmt.Errorf("%s timer %d: %w", verb, off, err)
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 1 {
				out[i] = TimerDone
			} else if out[i], err = settledState(ctx, tx, off); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s timers: %w", verb, err)
	}
	return out, nil
}
