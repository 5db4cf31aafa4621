package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Timer is a delayed record of the log and when it is due.
type Timer struct {
	LogOffset int64
	DeliverAt time.Time
}

// rowChunk bounds the rows one statement carries.
const rowChunk = 256

func placeholders(rows, cols int) string {
	row := "(" + strings.TrimSuffix(strings.Repeat("?,", cols), ",") + ")"
	return strings.TrimSuffix(strings.Repeat(row+",", rows), ",")
}

// AddTimers records delayed records; one already recorded is left as it is
// (dispatch may replay the log after a crash).
func (s *Store) AddTimers(ctx context.Context, ts []Timer) error {
	if len(ts) == 0 {
		return nil
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		for len(ts) > 0 {
			n := min(len(ts), rowChunk)
			args := make([]any, 0, 2*n)
			for _, t := range ts[:n] {
				args = append(args, t.LogOffset, t.DeliverAt.UnixMilli())
			}
			if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO timers (log_offset, deliver_at) VALUES `+placeholders(n, 2), args...); err != nil {
				return fmt.Errorf("add timers: %w", err)
			}
			ts = ts[n:]
		}
		return nil
	})
}

func (s *Store) timers(ctx context.Context, query string, args ...any) ([]Timer, error) {
	rows, err := s.r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("timers: %w", err)
	}
	defer rows.Close()
	var out []Timer
	for rows.Next() {
		var off, at int64
		if err := rows.Scan(&off, &at); err != nil {
			return nil, fmt.Errorf("timers: %w", err)
		}
		out = append(out, Timer{LogOffset: off, DeliverAt: fromMillis(at)})
	}
	return out, rows.Err()
}

// DueTimers returns up to limit unfired timers due at or before now,
// earliest first.
func (s *Store) DueTimers(ctx context.Context, now time.Time, limit int) ([]Timer, error) {
	return s.timers(ctx, `SELECT log_offset, deliver_at FROM timers WHERE fired = 0 AND deliver_at <= ? ORDER BY deliver_at LIMIT ?`, now.UnixMilli(), limit)
}

// NextTimer returns when the earliest unfired timer is due.
func (s *Store) NextTimer(ctx context.Context) (time.Time, bool, error) {
	var at sql.NullInt64
	err := s.r.QueryRowContext(ctx, `SELECT min(deliver_at) FROM timers WHERE fired = 0`).Scan(&at)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("next timer: %w", err)
	}
	if !at.Valid {
		return time.Time{}, false, nil
	}
	return fromMillis(at.Int64), true, nil
}

// PendingTimersBefore returns up to limit unfired timers whose record lies
// below logOff: what must move before the log segments holding them go.
func (s *Store) PendingTimersBefore(ctx context.Context, logOff int64, limit int) ([]Timer, error) {
	return s.timers(ctx, `SELECT log_offset, deliver_at FROM timers WHERE fired = 0 AND log_offset < ? ORDER BY log_offset LIMIT ?`, logOff, limit)
}

// PendingTimers counts unfired timers.
func (s *Store) PendingTimers(ctx context.Context) (int64, error) {
	var n int64
	err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM timers WHERE fired = 0`).Scan(&n)
	return n, err
}

// FireTimers marks timers done.
func (s *Store) FireTimers(ctx context.Context, offsets []int64) error {
	if len(offsets) == 0 {
		return nil
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		for len(offsets) > 0 {
			n := min(len(offsets), rowChunk)
			args := make([]any, n)
			for i, o := range offsets[:n] {
				args[i] = o
			}
			q := `UPDATE timers SET fired = 1 WHERE log_offset IN (` + strings.TrimSuffix(strings.Repeat("?,", n), ",") + `)`
			if _, err := tx.ExecContext(ctx, q, args...); err != nil {
				return fmt.Errorf("fire timers: %w", err)
			}
			offsets = offsets[n:]
		}
		return nil
	})
}

// PurgeFiredTimers deletes fired timers whose record lies below logOff,
// where dispatch will never replay them.
func (s *Store) PurgeFiredTimers(ctx context.Context, logOff int64) (int64, error) {
	var n int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM timers WHERE fired = 1 AND log_offset < ?`, logOff)
		if err != nil {
			return fmt.Errorf("purge timers: %w", err)
		}
		n, err = res.RowsAffected()
		return err
	})
	return n, err
}

// Attempt is one delivery attempt of a message to a group, or a pull
// consumer's ack or nack of it.
type Attempt struct {
	MsgID, Group, Subscription string
	Attempt                    int
	At                         time.Time
	Outcome                    string // delivered, retry, dead, gone, acked, nacked, expired
	Status                     int
	Error                      string
	Latency                    time.Duration
}

// AddAttempts appends attempts to the log in one transaction.
func (s *Store) AddAttempts(ctx context.Context, as []Attempt) error {
	if len(as) == 0 {
		return nil
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		for len(as) > 0 {
			n := min(len(as), rowChunk)
			args := make([]any, 0, 9*n)
			for _, a := range as[:n] {
				args = append(args, a.MsgID, a.Group, a.Subscription, a.Attempt, a.At.UnixMilli(), a.Outcome, a.Status, a.Error, a.Latency.Microseconds())
			}
			q := `INSERT INTO attempts (msg_id, group_name, subscription, attempt, at, outcome, status, error, latency_us) VALUES ` + placeholders(n, 9)
			if _, err := tx.ExecContext(ctx, q, args...); err != nil {
				return fmt.Errorf("add attempts: %w", err)
			}
			as = as[n:]
		}
		return nil
	})
}

// Attempts returns a message's attempts, oldest first.
func (s *Store) Attempts(ctx context.Context, msgID string) ([]Attempt, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT group_name, subscription, attempt, at, outcome, status, error, latency_us
		FROM attempts WHERE msg_id = ? ORDER BY at, rowid LIMIT 1000`, msgID)
	if err != nil {
		return nil, fmt.Errorf("attempts of %s: %w", msgID, err)
	}
	defer rows.Close()
	var out []Attempt
	for rows.Next() {
		a := Attempt{MsgID: msgID}
		var at, lat int64
		if err := rows.Scan(&a.Group, &a.Subscription, &a.Attempt, &at, &a.Outcome, &a.Status, &a.Error, &lat); err != nil {
			return nil, err
		}
		a.At, a.Latency = fromMillis(at), time.Duration(lat)*time.Microsecond
		out = append(out, a)
	}
	return out, rows.Err()
}

// PurgeAttempts deletes attempts older than before.
func (s *Store) PurgeAttempts(ctx context.Context, before time.Time) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM attempts WHERE at < ?`, before.UnixMilli())
		return err
	})
}

// RemoveDeadLetters marks dead letters (by queue offset in the group's
// dead-letter topic) as redriven or purged.
func (s *Store) RemoveDeadLetters(ctx context.Context, group string, offsets []int64) error {
	if len(offsets) == 0 {
		return nil
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		for len(offsets) > 0 {
			n := min(len(offsets), rowChunk)
			args := make([]any, 0, 2*n)
			for _, o := range offsets[:n] {
				args = append(args, group, o)
			}
			if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO dlq_removed (group_name, queue_offset) VALUES `+placeholders(n, 2), args...); err != nil {
				return fmt.Errorf("remove dead letters: %w", err)
			}
			offsets = offsets[n:]
		}
		return nil
	})
}

// RemovedDeadLetters returns which queue offsets in [from, to) of the
// group's dead-letter topic were removed.
func (s *Store) RemovedDeadLetters(ctx context.Context, group string, from, to int64) (map[int64]bool, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT queue_offset FROM dlq_removed WHERE group_name = ? AND queue_offset >= ? AND queue_offset < ?`, group, from, to)
	if err != nil {
		return nil, fmt.Errorf("removed dead letters: %w", err)
	}
	defer rows.Close()
	out := make(map[int64]bool)
	for rows.Next() {
		var o int64
		if err := rows.Scan(&o); err != nil {
			return nil, err
		}
		out[o] = true
	}
	return out, rows.Err()
}

// OrderedRetry is an ordered subscription's queue blocked on a failing
// message.
type OrderedRetry struct {
	Subscription string
	Queue        int
	QueueOffset  int64
	Attempt      int
	NextAt       time.Time
}

// SetOrderedRetry records (or replaces) the block on a queue.
func (s *Store) SetOrderedRetry(ctx context.Context, r OrderedRetry) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO ordered_retries (subscription, queue_id, queue_offset, attempt, next_at) VALUES (?,?,?,?,?)
			ON CONFLICT (subscription, queue_id) DO UPDATE SET queue_offset = excluded.queue_offset, attempt = excluded.attempt, next_at = excluded.next_at`,
			r.Subscription, r.Queue, r.QueueOffset, r.Attempt, r.NextAt.UnixMilli())
		return err
	})
}

// ClearOrderedRetry removes the block on a queue.
func (s *Store) ClearOrderedRetry(ctx context.Context, sub string, queue int) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM ordered_retries WHERE subscription = ? AND queue_id = ?`, sub, queue)
		return err
	})
}

// OrderedRetries returns the blocks of a subscription, by queue.
func (s *Store) OrderedRetries(ctx context.Context, sub string) (map[int]OrderedRetry, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT queue_id, queue_offset, attempt, next_at FROM ordered_retries WHERE subscription = ?`, sub)
	if err != nil {
		return nil, fmt.Errorf("ordered retries: %w", err)
	}
	defer rows.Close()
	out := make(map[int]OrderedRetry)
	for rows.Next() {
		r := OrderedRetry{Subscription: sub}
		var at int64
		if err := rows.Scan(&r.Queue, &r.QueueOffset, &r.Attempt, &at); err != nil {
			return nil, err
		}
		r.NextAt = fromMillis(at)
		out[r.Queue] = r
	}
	return out, rows.Err()
}

// Subscription is a consumer group's subscription to a topic: push when URL
// is set, pull otherwise. Config holds the delivery settings as JSON, owned
// by the broker.
type Subscription struct {
	ID, Group, Topic     string
	URL                  string
	Filter               string
	Ordered              bool
	Config               string
	Secret               string
	State                string
	CreatedAt, UpdatedAt time.Time
}

const subscriptionColumns = `id, group_name, topic, coalesce(url, ''), filter, ordered, config, coalesce(secret, ''), state, created_at, updated_at`

func scanSubscription(row interface{ Scan(...any) error }) (Subscription, error) {
	var sub Subscription
	var ordered int
	var created, updated int64
	err := row.Scan(&sub.ID, &sub.Group, &sub.Topic, &sub.URL, &sub.Filter, &ordered, &sub.Config, &sub.Secret, &sub.State, &created, &updated)
	sub.Ordered, sub.CreatedAt, sub.UpdatedAt = ordered == 1, fromMillis(created), fromMillis(updated)
	return sub, err
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// CreateSubscription stores a new subscription; ErrExists when the group
// already subscribes to the topic.
func (s *Store) CreateSubscription(ctx context.Context, sub Subscription) (Subscription, error) {
	now := s.stamp(time.Time{})
	sub.CreatedAt, sub.UpdatedAt = now, now
	err := s.write(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM subscriptions WHERE group_name = ? AND topic = ?`, sub.Group, sub.Topic).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("group %q already subscribes to %q: %w", sub.Group, sub.Topic, ErrExists)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO subscriptions (id, group_name, topic, url, filter, ordered, config, secret, state, created_at, updated_at)
			VALUES (?,?,?,?,?,?,?,?,?,?,?)`, sub.ID, sub.Group, sub.Topic, nullable(sub.URL), sub.Filter, boolInt(sub.Ordered),
			sub.Config, nullable(sub.Secret), sub.State, now.UnixMilli(), now.UnixMilli())
		return err
	})
	if err != nil {
		return Subscription{}, fmt.Errorf("create subscription: %w", err)
	}
	return sub, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// UpdateSubscription replaces a subscription's settings and state.
func (s *Store) UpdateSubscription(ctx context.Context, sub Subscription) (Subscription, error) {
	sub.UpdatedAt = s.stamp(time.Time{})
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE subscriptions SET url = ?, filter = ?, ordered = ?, config = ?, secret = ?, state = ?, updated_at = ? WHERE id = ?`,
			nullable(sub.URL), sub.Filter, boolInt(sub.Ordered), sub.Config, nullable(sub.Secret), sub.State, sub.UpdatedAt.UnixMilli(), sub.ID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("subscription %q: %w", sub.ID, ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return Subscription{}, fmt.Errorf("update subscription: %w", err)
	}
	return sub, nil
}

// Subscription returns one subscription by id.
func (s *Store) Subscription(ctx context.Context, id string) (Subscription, error) {
	sub, err := scanSubscription(s.r.QueryRowContext(ctx, `SELECT `+subscriptionColumns+` FROM subscriptions WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Subscription{}, fmt.Errorf("subscription %q: %w", id, ErrNotFound)
	}
	return sub, err
}

// Subscriptions returns every subscription, by group and topic.
func (s *Store) Subscriptions(ctx context.Context) ([]Subscription, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+subscriptionColumns+` FROM subscriptions ORDER BY group_name, topic`)
	if err != nil {
		return nil, fmt.Errorf("subscriptions: %w", err)
	}
	defer rows.Close()
	var out []Subscription
	for rows.Next() {
		sub, err := scanSubscription(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, sub)
	}
	return out, rows.Err()
}

// DeleteSubscription removes a subscription and its queue blocks.
func (s *Store) DeleteSubscription(ctx context.Context, id string) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM subscriptions WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("subscription %q: %w", id, ErrNotFound)
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM ordered_retries WHERE subscription = ?`, id)
		return err
	})
}
