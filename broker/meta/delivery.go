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
	Owner     string // the topic the record is for, where it is counted (retry topics)
}

// rowChunk bounds the rows one statement carries: at 9 parameters a row
// (attempts) it stays far below SQLite's 32766-parameter limit, and one
// statement per chunk costs far less than one per row.
const rowChunk = 256

// maxAttempts caps what Attempts returns: a message delivered more often than
// that is looping, and its first attempts say why.
const maxAttempts = 1000

// Queries whose plans TestDeliveryQueryPlans checks.
const (
	// Ties on deliver_at go by log offset, the order the records arrived
	// in. The index timers_due (fired, deliver_at) ends in the rowid, which
	// is log_offset, so the ORDER BY needs no sort step.
	dueTimersQuery = `SELECT log_offset, deliver_at FROM timers WHERE fired = 0 AND deliver_at <= ? ORDER BY deliver_at, log_offset LIMIT ?`
	nextTimerQuery = `SELECT min(deliver_at) FROM timers WHERE fired = 0`
	// A range of the primary key, which is already in log_offset order;
	// the fired rows in it are skipped, and PurgeFiredTimers keeps them few.
	// The unary + keeps the planner off timers_due, which would read every
	// pending timer and sort them to return the few below logOff.
	pendingTimersBeforeQuery = `SELECT log_offset, deliver_at FROM timers WHERE +fired = 0 AND log_offset < ? ORDER BY log_offset LIMIT ?`
	attemptsQuery            = `SELECT group_name, subscription, attempt, at, outcome, status, error, latency_us
		FROM attempts WHERE msg_id = ? ORDER BY at, rowid LIMIT ?`
)

func placeholders(rows, cols int) string {
	row := "(" + strings.TrimSuffix(strings.Repeat("?,", cols), ",") + ")"
	return strings.TrimSuffix(strings.Repeat(row+",", rows), ",")
}

// AddTimers records delayed records; one already recorded, fired or not, is
// left as it is (dispatch may replay the log after a crash). A negative
// offset fails the whole call with ErrInvalid.
func (s *Store) AddTimers(ctx context.Context, ts []Timer) error {
	if len(ts) == 0 {
		return nil
	}
	if err := validTimers(ts); err != nil {
		return err
	}
	return s.write(ctx, func(tx Tx) error { return insertTimers(ctx, tx, ts) })
}

func validTimers(ts []Timer) error {
	for _, t := range ts {
		if t.LogOffset < 0 {
			return fmt.Errorf("add timers: negative log offset %d: %w", t.LogOffset, ErrInvalid)
		}
	}
	return nil
}

// insertTimers is AddTimers's work in tx.
func insertTimers(ctx context.Context, tx Tx, ts []Timer) error {
	for len(ts) > 0 {
		n := min(len(ts), rowChunk)
		args := make([]any, 0, 3*n)
		for _, t := range ts[:n] {
			args = append(args, t.LogOffset, t.DeliverAt.UnixMilli(), t.Owner)
		}
		// Not INSERT OR IGNORE: that would drop a row failing a CHECK
		// as silently as a replayed one.
		if _, err := tx.ExecContext(ctx, `INSERT INTO timers (log_offset, deliver_at, owner) VALUES `+placeholders(n, 3)+` ON CONFLICT (log_offset) DO NOTHING`, args...); err != nil {
			return fmt.Errorf("add timers: %w", err)
		}
		ts = ts[n:]
	}
	return nil
}

func (s *Store) timers(ctx context.Context, query string, args ...any) ([]Timer, error) {
	rows, err := s.r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, s.note(fmt.Errorf("timers: %w", err))
	}
	defer rows.Close()
	var out []Timer
	for rows.Next() {
		var off, at int64
		if err := rows.Scan(&off, &at); err != nil {
			return nil, s.note(fmt.Errorf("timers: %w", err))
		}
		out = append(out, Timer{LogOffset: off, DeliverAt: fromMillis(at)})
	}
	if err := rows.Err(); err != nil {
		return nil, s.note(fmt.Errorf("timers: %w", err))
	}
	return out, nil
}

// validLimit rejects a limit below 1, which SQLite would read as "no limit"
// (LIMIT -1) or as "nothing" (LIMIT 0); neither is what a caller meant.
func validLimit(limit int) error {
	if limit < 1 {
		return fmt.Errorf("limit %d < 1: %w", limit, ErrInvalid)
	}
	return nil
}

// DueTimers returns up to limit (at least 1) unfired timers due at or before
// now, earliest first and, among those due at the same millisecond, by log
// offset.
func (s *Store) DueTimers(ctx context.Context, now time.Time, limit int) ([]Timer, error) {
	if err := validLimit(limit); err != nil {
		return nil, fmt.Errorf("due timers: %w", err)
	}
	return s.timers(ctx, dueTimersQuery, now.UnixMilli(), limit)
}

// ClaimDueTimers returns up to limit (at least 1) unfired timers due by
// now, as DueTimers does, and claims them in the same write transaction:
// their due time is set to 0, so from then on SwapTimers and CancelTimers
// find them past their deadline and answer stale. The timer loop and an ack
// (or nack) racing a visibility deadline are so decided by the order of
// their transactions, whatever the clocks say: the one that takes the
// writer first wins, and the other is told. "Now" is read once the writer
// is held. A claimed timer stays unfired until FireTimers, so a crash
// before that fires it again.
func (s *Store) ClaimDueTimers(ctx context.Context, limit int) ([]Timer, error) {
	if err := validLimit(limit); err != nil {
		return nil, fmt.Errorf("claim due timers: %w", err)
	}
	var out []Timer
	err := s.write(ctx, func(tx Tx) error {
		rows, err := tx.QueryContext(ctx, dueTimersQuery, s.now().UnixMilli(), limit)
		if err != nil {
			return err
		}
		for rows.Next() {
			var off, at int64
			if err := rows.Scan(&off, &at); err != nil {
				rows.Close()
				return err
			}
			out = append(out, Timer{LogOffset: off, DeliverAt: fromMillis(at)})
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for claim := out; len(claim) > 0; {
			n := min(len(claim), rowChunk)
			args := make([]any, n)
			for i, t := range claim[:n] {
				args[i] = t.LogOffset
			}
			q := `UPDATE timers SET deliver_at = 0 WHERE deliver_at > 0 AND log_offset IN (` + strings.TrimSuffix(strings.Repeat("?,", n), ",") + `)`
			if _, err := tx.ExecContext(ctx, q, args...); err != nil {
				return err
			}
			claim = claim[n:]
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("claim due timers: %w", err)
	}
	return out, nil
}

// NextTimer returns when the earliest unfired timer is due.
func (s *Store) NextTimer(ctx context.Context) (time.Time, bool, error) {
	var at sql.NullInt64
	err := s.r.QueryRowContext(ctx, nextTimerQuery).Scan(&at)
	if err != nil {
		return time.Time{}, false, s.note(fmt.Errorf("next timer: %w", err))
	}
	if !at.Valid {
		return time.Time{}, false, nil
	}
	return fromMillis(at.Int64), true, nil
}

// PendingTimersBefore returns up to limit (at least 1) unfired timers whose
// record lies below logOff, by log offset: what must move before the log
// segments holding them go.
func (s *Store) PendingTimersBefore(ctx context.Context, logOff int64, limit int) ([]Timer, error) {
	if err := validLimit(limit); err != nil {
		return nil, fmt.Errorf("pending timers: %w", err)
	}
	return s.timers(ctx, pendingTimersBeforeQuery, logOff, limit)
}

// PendingTimersOf counts the unfired timers of records for topic.
func (s *Store) PendingTimersOf(ctx context.Context, topic string) (int64, error) {
	var n int64
	err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM timers WHERE owner = ? AND fired = 0`, topic).Scan(&n)
	if err != nil {
		return 0, s.note(fmt.Errorf("pending timers of %s: %w", topic, err))
	}
	return n, nil
}

// OldestPendingTimerOf returns the lowest log offset of the unfired
// timers of records for topic (the copy stored first), if any.
func (s *Store) OldestPendingTimerOf(ctx context.Context, topic string) (int64, bool, error) {
	var off sql.NullInt64
	// timers_by_owner (owner, fired) ends in the rowid, log_offset: one seek.
	err := s.r.QueryRowContext(ctx, `SELECT min(log_offset) FROM timers WHERE owner = ? AND fired = 0`, topic).Scan(&off)
	if err != nil {
		return 0, false, fmt.Errorf("oldest pending timer of %s: %w", topic, err)
	}
	return off.Int64, off.Valid, nil
}

// DropTimersOf marks every unfired timer of records for topic fired, a
// claimed one too, and returns how many it dropped: an offset reset drops
// the retries (and visibility copies) a group had waiting in its retry
// topic, which belong to the old position. A receipt naming a dropped
// timer is then stale.
func (s *Store) DropTimersOf(ctx context.Context, topic string) (int64, error) {
	var n int64
	err := s.write(ctx, func(tx Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE timers SET fired = 1 WHERE owner = ? AND fired = 0`, topic)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("drop timers of %s: %w", topic, err)
	}
	return n, nil
}

// PendingTimers counts unfired timers.
func (s *Store) PendingTimers(ctx context.Context) (int64, error) {
	var n int64
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM timers WHERE fired = 0`).Scan(&n); err != nil {
		return 0, s.note(fmt.Errorf("count pending timers: %w", err))
	}
	return n, nil
}

// FireTimers marks timers done. Offsets with no timer are ignored; a fired
// timer stays fired even if AddTimers records it again.
func (s *Store) FireTimers(ctx context.Context, offsets []int64) error {
	if len(offsets) == 0 {
		return nil
	}
	return s.write(ctx, func(tx Tx) error {
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
// where dispatch will never replay them; a timer an ack or nack settled is
// kept until SettledMemory after the settle, so that a retry of it is told
// what it did.
func (s *Store) PurgeFiredTimers(ctx context.Context, logOff int64) (int64, error) {
	var n int64
	err := s.write(ctx, func(tx Tx) error {
		cutoff := s.now().Add(-SettledMemory).UnixMilli()
		res, err := tx.ExecContext(ctx, `DELETE FROM timers WHERE fired = 1 AND log_offset < ? AND (settled = 0 OR abs(settled) < ?)`, logOff, cutoff)
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
	return s.write(ctx, func(tx Tx) error {
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

// Attempts returns a message's attempts, oldest first and, within one
// millisecond, in the order they were added; at most the first 1000.
func (s *Store) Attempts(ctx context.Context, msgID string) ([]Attempt, error) {
	rows, err := s.r.QueryContext(ctx, attemptsQuery, msgID, maxAttempts)
	if err != nil {
		return nil, s.note(fmt.Errorf("attempts of %s: %w", msgID, err))
	}
	defer rows.Close()
	var out []Attempt
	for rows.Next() {
		a := Attempt{MsgID: msgID}
		var at, lat int64
		if err := rows.Scan(&a.Group, &a.Subscription, &a.Attempt, &at, &a.Outcome, &a.Status, &a.Error, &lat); err != nil {
			return nil, s.note(fmt.Errorf("attempts of %s: %w", msgID, err))
		}
		a.At, a.Latency = fromMillis(at), time.Duration(lat)*time.Microsecond
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, s.note(fmt.Errorf("attempts of %s: %w", msgID, err))
	}
	return out, nil
}

// PurgeAttempts deletes attempts older than before.
func (s *Store) PurgeAttempts(ctx context.Context, before time.Time) error {
	err := s.write(ctx, func(tx Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM attempts WHERE at < ?`, before.UnixMilli())
		return err
	})
	if err != nil {
		return fmt.Errorf("purge attempts: %w", err)
	}
	return nil
}

// RemoveDeadLetters marks dead letters (by queue offset in the group's
// dead-letter topic) as redriven or purged.
func (s *Store) RemoveDeadLetters(ctx context.Context, group string, offsets []int64) error {
	if len(offsets) == 0 {
		return nil
	}
	return s.write(ctx, func(tx Tx) error { return removeDeadLetters(ctx, tx, group, offsets) })
}

// removeDeadLetters marks a group's dead letters removed, in tx.
func removeDeadLetters(ctx context.Context, tx Tx, group string, offsets []int64) error {
	for len(offsets) > 0 {
		n := min(len(offsets), rowChunk)
		args := make([]any, 0, 2*n)
		for _, o := range offsets[:n] {
			args = append(args, group, o)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO dlq_removed (group_name, queue_offset) VALUES `+placeholders(n, 2)+` ON CONFLICT DO NOTHING`, args...); err != nil {
			return fmt.Errorf("remove dead letters: %w", err)
		}
		offsets = offsets[n:]
	}
	return nil
}

// RemovedDeadLetters returns which queue offsets in [from, to) of the
// group's dead-letter topic were removed.
func (s *Store) RemovedDeadLetters(ctx context.Context, group string, from, to int64) (map[int64]bool, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT queue_offset FROM dlq_removed WHERE group_name = ? AND queue_offset >= ? AND queue_offset < ?`, group, from, to)
	if err != nil {
		return nil, s.note(fmt.Errorf("removed dead letters: %w", err))
	}
	defer rows.Close()
	out := make(map[int64]bool)
	for rows.Next() {
		var o int64
		if err := rows.Scan(&o); err != nil {
			return nil, s.note(fmt.Errorf("removed dead letters: %w", err))
		}
		out[o] = true
	}
	if err := rows.Err(); err != nil {
		return nil, s.note(fmt.Errorf("removed dead letters: %w", err))
	}
	return out, nil
}

// OrderedRetry is an ordered subscription's queue blocked on a failing
// message.
type OrderedRetry struct {
	Subscription string // the subscription's ID: DeleteSubscription clears its blocks
	Queue        int
	QueueOffset  int64
	Attempt      int
	NextAt       time.Time
	// LeaseUntil is the end of visibility the receipt of the pull lease
	// out on the queue names, once its visibility was changed (NextAt
	// then says when the message goes out again); zero while NextAt is
	// that end, and when nothing is out.
	LeaseUntil time.Time
}

// SetOrderedRetry records (or replaces) the block on a queue.
func (s *Store) SetOrderedRetry(ctx context.Context, r OrderedRetry) error {
	err := s.write(ctx, func(tx Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO ordered_retries (subscription, queue_id, queue_offset, attempt, next_at, lease_until) VALUES (?,?,?,?,?,?)
			ON CONFLICT (subscription, queue_id) DO UPDATE SET queue_offset = excluded.queue_offset, attempt = excluded.attempt, next_at = excluded.next_at, lease_until = excluded.lease_until`,
			r.Subscription, r.Queue, r.QueueOffset, r.Attempt, r.NextAt.UnixMilli(), leaseMillis(r.LeaseUntil))
		return err
	})
	if err != nil {
		return fmt.Errorf("set ordered retry %s/%d: %w", r.Subscription, r.Queue, err)
	}
	return nil
}

// leaseMillis stores a lease's end, 0 for none.
func leaseMillis(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// ClearOrderedRetry removes the block on a queue, if there is one.
func (s *Store) ClearOrderedRetry(ctx context.Context, sub string, queue int) error {
	err := s.write(ctx, func(tx Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM ordered_retries WHERE subscription = ? AND queue_id = ?`, sub, queue)
		return err
	})
	if err != nil {
		return fmt.Errorf("clear ordered retry %s/%d: %w", sub, queue, err)
	}
	return nil
}

// OrderedRetries returns the blocks of a subscription, by queue.
func (s *Store) OrderedRetries(ctx context.Context, sub string) (map[int]OrderedRetry, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT queue_id, queue_offset, attempt, next_at, lease_until FROM ordered_retries WHERE subscription = ?`, sub)
	if err != nil {
		return nil, s.note(fmt.Errorf("ordered retries: %w", err))
	}
	defer rows.Close()
	out := make(map[int]OrderedRetry)
	for rows.Next() {
		r := OrderedRetry{Subscription: sub}
		var at, until int64
		if err := rows.Scan(&r.Queue, &r.QueueOffset, &r.Attempt, &at, &until); err != nil {
			return nil, s.note(fmt.Errorf("ordered retries: %w", err))
		}
		r.NextAt = fromMillis(at)
		if until != 0 {
			r.LeaseUntil = fromMillis(until)
		}
		out[r.Queue] = r
	}
	if err := rows.Err(); err != nil {
		return nil, s.note(fmt.Errorf("ordered retries: %w", err))
	}
	return out, nil
}

// Subscription is a consumer group's subscription to a topic: push when URL
// is set, pull otherwise. Config holds the delivery settings as JSON, owned
// by the broker.
type Subscription struct {
	ID, Group, Topic string
	URL              string // "" (stored as NULL) for pull
	Filter           string // "" means the schema default, "*"
	Ordered          bool
	Config           string // a JSON object; "" means "{}"
	Secret           string // "" (stored as NULL) for pull
	State            string // active, paused or disabled; "" means active
	// CreatedAt and UpdatedAt are set by the store, except by
	// ApplySubscription, which keeps another broker's.
	CreatedAt, UpdatedAt time.Time
	// Version is the last change's (see Version); zero for a row stored
	// before versions existed.
	Version Version
}

// validate rejects names the broker could not address.
func (sub Subscription) validate() error {
	if err := validName("subscription", sub.ID); err != nil {
		return err
	}
	if err := validName("group", sub.Group); err != nil {
		return err
	}
	return validName("topic", sub.Topic)
}

// withDefaults fills the fields left zero with the schema's defaults, which a
// statement naming every column bypasses (and would then fail the CHECKs on
// config and state).
func (sub Subscription) withDefaults() Subscription {
	if sub.Filter == "" {
		sub.Filter = "*"
	}
	if sub.Config == "" {
		sub.Config = "{}"
	}
	if sub.State == "" {
		sub.State = "active"
	}
	return sub
}

const subscriptionColumns = `id, group_name, topic, coalesce(url, ''), filter, ordered, config, coalesce(secret, ''), state, created_at, updated_at, version, version_by`

func scanSubscription(row rowScanner) (Subscription, error) {
	var sub Subscription
	var ordered int
	var created, updated int64
	if err := row.Scan(&sub.ID, &sub.Group, &sub.Topic, &sub.URL, &sub.Filter, &ordered, &sub.Config, &sub.Secret, &sub.State, &created, &updated, &sub.Version.At, &sub.Version.By); err != nil {
		return Subscription{}, err
	}
	sub.Ordered, sub.CreatedAt, sub.UpdatedAt = ordered == 1, fromMillis(created), fromMillis(updated)
	return sub, nil
}

// nullable stores "" as NULL, which subscriptionColumns reads back as "".
func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// CreateSubscription stores a new subscription and returns it as stored. It
// fails with ErrExists when the group already subscribes to the topic or the
// ID is taken, leaving the existing one unchanged, and with ErrStale when
// the ID's tombstone is not older than sub.Version (a later delete); an
// older tombstone is dropped.
func (s *Store) CreateSubscription(ctx context.Context, sub Subscription) (Subscription, error) {
	if err := sub.validate(); err != nil {
		return Subscription{}, fmt.Errorf("create subscription: %w", err)
	}
	sub = sub.withDefaults()
	now := s.stamp(time.Time{})
	sub.CreatedAt, sub.UpdatedAt = now, now
	err := s.write(ctx, func(tx Tx) error {
		if t, ok, err := tombstoneOf(ctx, tx, sub.ID); err != nil {
			return err
		} else if ok {
			if !Wins(sub.Version, false, t.Version, true) {
				return fmt.Errorf("subscription %q was deleted at version %s, not before %s: %w", sub.ID, t.Version, sub.Version, ErrStale)
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM subscription_tombstones WHERE id = ?`, sub.ID); err != nil {
				return err
			}
		}
		// DO NOTHING covers both uniqueness constraints, the primary key
		// and (group_name, topic), in the one statement.
		res, err := tx.ExecContext(ctx, `INSERT INTO subscriptions (id, group_name, topic, url, filter, ordered, config, secret, state, created_at, updated_at, version, version_by)
			VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING`, sub.ID, sub.Group, sub.Topic, nullable(sub.URL), sub.Filter, boolInt(sub.Ordered),
			sub.Config, nullable(sub.Secret), sub.State, now.UnixMilli(), now.UnixMilli(), sub.Version.At, sub.Version.By)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("subscription %q or group %q on topic %q: %w", sub.ID, sub.Group, sub.Topic, ErrExists)
		}
		return nil
	})
	if err != nil {
		return Subscription{}, fmt.Errorf("create subscription: %w", err)
	}
	return sub, nil
}

// UpdateSubscription replaces a subscription's settings and state, and
// returns it as stored: its ID, group, topic and CreatedAt are the stored
// ones whatever sub says, since they cannot change. ErrNotFound when there
// is no subscription sub.ID; ErrStale, with the stored one, when its
// version wins over sub.Version (a later change is already stored).
func (s *Store) UpdateSubscription(ctx context.Context, sub Subscription) (Subscription, error) {
	sub = sub.withDefaults()
	now := s.stamp(time.Time{})
	var out Subscription
	err := s.write(ctx, func(tx Tx) error {
		cur, err := scanSubscription(tx.QueryRowContext(ctx, `SELECT `+subscriptionColumns+` FROM subscriptions WHERE id = ?`, sub.ID))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("subscription %q: %w", sub.ID, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if sub.Version.IsZero() {
			sub.Version = cur.Version // a change that carries none keeps the stored one
		} else if !Wins(sub.Version, false, cur.Version, false) {
			out = cur
			return fmt.Errorf("subscription %q is at version %s, not before %s: %w", sub.ID, cur.Version, sub.Version, ErrStale)
		}
		out, err = scanSubscription(tx.QueryRowContext(ctx, `UPDATE subscriptions
			SET url = ?, filter = ?, ordered = ?, config = ?, secret = ?, state = ?, updated_at = ?, version = ?, version_by = ? WHERE id = ?
			RETURNING `+subscriptionColumns,
			nullable(sub.URL), sub.Filter, boolInt(sub.Ordered), sub.Config, nullable(sub.Secret), sub.State, now.UnixMilli(), sub.Version.At, sub.Version.By, sub.ID))
		return err
	})
	if errors.Is(err, ErrStale) {
		return out, err
	}
	if err != nil {
		return Subscription{}, fmt.Errorf("update subscription: %w", err)
	}
	return out, nil
}

// Subscription returns one subscription by id, or ErrNotFound.
func (s *Store) Subscription(ctx context.Context, id string) (Subscription, error) {
	sub, err := scanSubscription(s.r.QueryRowContext(ctx, `SELECT `+subscriptionColumns+` FROM subscriptions WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return Subscription{}, s.note(fmt.Errorf("subscription %q: %w", id, err))
	}
	return sub, nil
}

// Subscriptions returns every subscription, by group and topic.
func (s *Store) Subscriptions(ctx context.Context) ([]Subscription, error) {
	subs, err := collect(ctx, s.r, func(r *sql.Rows) (Subscription, error) { return scanSubscription(r) },
		`SELECT `+subscriptionColumns+` FROM subscriptions ORDER BY group_name, topic`)
	if err != nil {
		return nil, s.note(fmt.Errorf("subscriptions: %w", err))
	}
	return subs, nil
}

// DeleteSubscription removes a subscription and, in the same transaction,
// its queue blocks. ErrNotFound when there is no such subscription.
func (s *Store) DeleteSubscription(ctx context.Context, id string) error {
	err := s.deleteWith(ctx, `DELETE FROM subscriptions WHERE id = ?`, `DELETE FROM ordered_retries WHERE subscription = ?`, id)
	if err != nil {
		return fmt.Errorf("delete subscription %q: %w", id, err)
	}
	return nil
}

// CancelTimers marks pending timers fired, all or none, in one
// transaction: a pull's ack cancels the timers that would hand its messages
// out again. A timer due by now is past cancelling (its message is being
// handed out again), as is one fired, cancelled or unknown: CancelTimers
// returns the indexes of those, and when there are any, nothing changed.
//
// "Now" is read from the store's clock inside the transaction, after the
// writer is held: a clock read before waiting for the writer could be
// older than the timer loop's, which then fires a timer this call still
// cancels, and the acked message comes back.
func (s *Store) CancelTimers(ctx context.Context, offsets []int64) (stale []int, err error) {
	return s.SwapTimers(ctx, offsets, nil)
}

// ReserveTimers keeps the timer loop off pending timers until at least
// until, all or none: a nack reserves the timers of its receipts before it
// stores their replacements, so the timer loop cannot put a message back
// while its nack is under way, which would bring it back twice. A timer
// fired, claimed, cancelled, unknown or due by now (read once the writer is
// held) cannot be reserved: ReserveTimers returns the indexes of those, and
// when there are any, nothing changed. A reservation is never shorter than
// the timer: a nack that never swaps (a crash, an error) leaves its
// messages to come back at until.
func (s *Store) ReserveTimers(ctx context.Context, offsets []int64, until time.Time) (stale []int, err error) {
	err = s.write(ctx, func(tx Tx) error {
		now := s.now().UnixMilli()
		stmt, err := tx.PrepareContext(ctx, `UPDATE timers SET deliver_at = max(deliver_at, ?) WHERE log_offset = ? AND fired = 0 AND deliver_at > ?`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for i, off := range offsets {
			res, err := stmt.ExecContext(ctx, until.UnixMilli(), off, now)
			if err != nil {
				return fmt.Errorf("reserve timer %d: %w", off, err)
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n != 1 {
				stale = append(stale, i)
			}
		}
		if len(stale) > 0 {
			return errStaleSwap
		}
		return nil
	})
	if errors.Is(err, errStaleSwap) {
		return stale, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reserve timers: %w", err)
	}
	return nil, nil
}

// swapHook, when set (by tests), runs in SwapTimers's transaction once it
// has read its clock: the window in which the timer loop must not decide
// on the same timers.
var swapHook func()

// SwapTimers cancels the pending timers at offsets and keeps the timers at
// replacements, in one transaction: a nack (or a pull nobody waits for)
// first stores the replacement copies, whose timers dispatch adds, and
// then swaps. When any of offsets is stale (see CancelTimers) no timer is
// cancelled, the replacements' timers are marked fired instead (their
// copies must not come out beside the originals) and the stale indexes are
// returned. A crash before the swap leaves both pending: the message comes
// back twice, never not at all.
func (s *Store) SwapTimers(ctx context.Context, offsets, replacements []int64) (stale []int, err error) {
	err = s.write(ctx, func(tx Tx) error {
		now := s.now().UnixMilli()
		if swapHook != nil {
			swapHook()
		}
		stmt, err := tx.PrepareContext(ctx, `UPDATE timers SET fired = 1 WHERE log_offset = ? AND fired = 0 AND deliver_at > ?`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for i, off := range offsets {
			res, err := stmt.ExecContext(ctx, off, now)
			if err != nil {
				return fmt.Errorf("cancel timer %d: %w", off, err)
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n != 1 {
				stale = append(stale, i)
			}
		}
		if len(stale) == 0 {
			return nil
		}
		// Undo the cancellations and drop the replacements instead.
		if err := tx.Rollback(); err != nil {
			return err
		}
		return errStaleSwap
	})
	if errors.Is(err, errStaleSwap) {
		if len(replacements) > 0 {
			if err := s.FireTimers(ctx, replacements); err != nil {
				return stale, fmt.Errorf("drop replacement timers: %w", err)
			}
		}
		return stale, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cancel timers: %w", err)
	}
	return nil, nil
}

var errStaleSwap = errors.New("stale")

// ClearOrderedRetries removes every block of a subscription (an offset
// reset: the blocks belong to the old position).
func (s *Store) ClearOrderedRetries(ctx context.Context, sub string) error {
	err := s.write(ctx, func(tx Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM ordered_retries WHERE subscription = ?`, sub)
		return err
	})
	if err != nil {
		return fmt.Errorf("clear ordered retries of %s: %w", sub, err)
	}
	return nil
}
