package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// DLQRedrive is where the self-healing of a push subscription's dead
// letters stands (migration 0017, table dlq_redrives).
type DLQRedrive struct {
	Subscription string
	State        string    // waiting, probe_failed or redriven
	NextProbe    time.Time // zero: when the oldest dead letter has waited long enough
	Probes       int64
	Redriven     int64
	LastError    string
	UpdatedAt    time.Time
}

// GetDLQRedrive reads a subscription's row; ok is false when it has none
// (no probe yet).
func (s *Store) GetDLQRedrive(ctx context.Context, sub string) (r DLQRedrive, ok bool, err error) {
	var next, updated int64
	err = s.r.QueryRowContext(ctx, `SELECT state, next_probe, probes, redriven, last_error, updated_at FROM dlq_redrives WHERE subscription = ?`, sub).
		Scan(&r.State, &next, &r.Probes, &r.Redriven, &r.LastError, &updated)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return DLQRedrive{Subscription: sub}, false, nil
	case err != nil:
		return DLQRedrive{}, false, s.note(fmt.Errorf("dlq redrive of %s: %w", sub, err))
	}
	r.Subscription = sub
	if next > 0 {
		r.NextProbe = fromMillis(next)
	}
	r.UpdatedAt = fromMillis(updated)
	return r, true, nil
}

// PutDLQRedrive writes a subscription's row whole.
func (s *Store) PutDLQRedrive(ctx context.Context, r DLQRedrive) error {
	var next int64
	if !r.NextProbe.IsZero() {
		next = r.NextProbe.UnixMilli()
	}
	err := s.write(ctx, func(tx Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO dlq_redrives (subscription, state, next_probe, probes, redriven, last_error, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (subscription) DO UPDATE SET state = excluded.state, next_probe = excluded.next_probe, probes = excluded.probes,
				redriven = excluded.redriven, last_error = excluded.last_error, updated_at = excluded.updated_at`,
			r.Subscription, r.State, next, r.Probes, r.Redriven, r.LastError, r.UpdatedAt.UnixMilli())
		return err
	})
	if err != nil {
		return fmt.Errorf("put dlq redrive of %s: %w", r.Subscription, err)
	}
	return nil
}
