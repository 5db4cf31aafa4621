package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Deferred acknowledgement (migration 0017): a push delivery its endpoint
// answered 202 is held by the timer of a retry copy due when the
// subscription's ack_timeout ends, and the token handed to the endpoint
// names that timer by its ack key. The timer is settled (acked, swapped
// for a retry's copy) or fires (the timeout) as any visibility timer does;
// the key only finds it.

// AddDeferredTimer records the timer of a deferred delivery's copy under
// ackKey, and offs (the group's offsets past the delivered message) in the
// same transaction: after a kill of the process either both hold (the
// token settles the copy, and the message is not handed out again from
// its queue) or neither (the token names nothing, and the message goes
// out again from the offset). A timer already recorded for the record (a
// replay) gets the key.
func (s *Store) AddDeferredTimer(ctx context.Context, t Timer, ackKey int64, offs []Offset) error {
	if err := validTimers([]Timer{t}); err != nil {
		return err
	}
	for _, o := range offs {
		if err := o.validate(); err != nil {
			return fmt.Errorf("add deferred timer %d: %w", t.LogOffset, err)
		}
	}
	err := s.write(ctx, func(tx Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO timers (log_offset, deliver_at, owner, ack_key) VALUES (?, ?, ?, ?)
			ON CONFLICT (log_offset) DO UPDATE SET ack_key = excluded.ack_key`, t.LogOffset, t.DeliverAt.UnixMilli(), t.Owner, ackKey)
		if err != nil || len(offs) == 0 {
			return err
		}
		return s.upsertOffsets(ctx, tx, offs)
	})
	if err != nil {
		return fmt.Errorf("add deferred timer %d: %w", t.LogOffset, err)
	}
	return nil
}

// DeferredTimer finds the timer recorded under ackKey, pending or not:
// its log offset and owner. ok is false when there is none (never
// recorded, or purged since it fired).
func (s *Store) DeferredTimer(ctx context.Context, ackKey int64) (off int64, owner string, ok bool, err error) {
	err = s.r.QueryRowContext(ctx, `SELECT log_offset, owner FROM timers WHERE ack_key = ?`, ackKey).Scan(&off, &owner)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return 0, "", false, nil
	case err != nil:
		return 0, "", false, s.note(fmt.Errorf("deferred timer: %w", err))
	}
	return off, owner, true, nil
}

// PendingDeferredOf counts the deferred deliveries of owner (a group's
// retry topic) whose timer is pending: held for an acknowledgement.
func (s *Store) PendingDeferredOf(ctx context.Context, owner string) (int, error) {
	var n int
	err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM timers WHERE owner = ? AND fired = 0 AND ack_key IS NOT NULL`, owner).Scan(&n)
	if err != nil {
		return 0, s.note(fmt.Errorf("pending deferred of %s: %w", owner, err))
	}
	return n, nil
}

// CarryTimers gives each record newOffs[i], a copy of the record olds[i]
// moved ahead of retention, the old one's timer while it is pending: its
// due time, owner and ack key (taken from the old row, which the caller
// then fires). A timer no longer pending is not carried.
func (s *Store) CarryTimers(ctx context.Context, olds, newOffs []int64) error {
	if len(olds) != len(newOffs) {
		return fmt.Errorf("carry timers: %d new offsets for %d timers: %w", len(newOffs), len(olds), ErrInvalid)
	}
	err := s.write(ctx, func(tx Tx) error {
		for i, old := range olds {
			var at int64
			var owner string
			var key sql.NullInt64
			err := tx.QueryRowContext(ctx, `SELECT deliver_at, owner, ack_key FROM timers WHERE log_offset = ? AND fired = 0`, old).Scan(&at, &owner, &key)
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return err
			}
			if key.Valid {
				// The key is unique: the old row lets go of it first.
				if _, err := tx.ExecContext(ctx, `UPDATE timers SET ack_key = NULL WHERE log_offset = ?`, old); err != nil {
					return err
				}
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO timers (log_offset, deliver_at, owner, ack_key) VALUES (?, ?, ?, ?)
				ON CONFLICT (log_offset) DO UPDATE SET deliver_at = excluded.deliver_at, ack_key = excluded.ack_key`, newOffs[i], at, owner, key); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("carry timers: %w", err)
	}
	return nil
}
