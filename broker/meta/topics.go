package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Topic is a topic's stored configuration.
type Topic struct {
	Name   string
	Queues int // 1..MaxQueues; may only grow
	// Retention is how long the topic's messages are kept; 0 means the
	// broker's default. Stored in whole milliseconds.
	Retention time.Duration
	// CreatedAt and UpdatedAt are set by the store when left zero.
	CreatedAt, UpdatedAt time.Time
	// LogStart is the commitlog offset where this incarnation of the topic
	// begins: records of its name below it belong to a deleted topic of the
	// same name. Set only when the topic is created; -1 for a topic stored
	// before the column existed.
	LogStart int64
}

func (t Topic) validate() error {
	if err := validName("topic", t.Name); err != nil {
		return err
	}
	if t.Queues < 1 || t.Queues > MaxQueues {
		return fmt.Errorf("topic %q: queues %d outside 1..%d: %w", t.Name, t.Queues, MaxQueues, ErrInvalid)
	}
	if t.Retention < 0 {
		return fmt.Errorf("topic %q: negative retention %s: %w", t.Name, t.Retention, ErrInvalid)
	}
	return nil
}

const topicColumns = `name, queues, retention_ms, created_at, updated_at, log_start`

type rowScanner interface{ Scan(dest ...any) error }

func scanTopic(r rowScanner) (Topic, error) {
	var (
		t                 Topic
		retention, cr, up int64
	)
	if err := r.Scan(&t.Name, &t.Queues, &retention, &cr, &up, &t.LogStart); err != nil {
		return Topic{}, err
	}
	t.Retention = time.Duration(retention) * time.Millisecond
	t.CreatedAt, t.UpdatedAt = fromMillis(cr), fromMillis(up)
	return t, nil
}

// CreateTopic stores a new topic and returns it as stored. It fails with
// ErrExists if a topic of that name exists, leaving it unchanged.
func (s *Store) CreateTopic(ctx context.Context, t Topic) (Topic, error) {
	if err := t.validate(); err != nil {
		return Topic{}, fmt.Errorf("create topic: %w", err)
	}
	t.CreatedAt = s.stamp(t.CreatedAt)
	if t.UpdatedAt.IsZero() {
		t.UpdatedAt = t.CreatedAt
	} else {
		t.UpdatedAt = s.stamp(t.UpdatedAt)
	}
	t.Retention = t.Retention.Truncate(time.Millisecond)
	err := s.write(ctx, func(tx Tx) error {
		res, err := tx.ExecContext(ctx,
			`INSERT INTO topics (`+topicColumns+`) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING`,
			t.Name, t.Queues, t.Retention.Milliseconds(), t.CreatedAt.UnixMilli(), t.UpdatedAt.UnixMilli(), t.LogStart)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			return ErrExists
		}
		return nil
	})
	if err != nil {
		return Topic{}, fmt.Errorf("create topic %q: %w", t.Name, err)
	}
	return t, nil
}

// PutTopic creates the topic, or updates its queue count and retention if it
// exists, and returns it as stored and whether it was created. The queue
// count may only grow: asking for fewer fails with ErrQueuesShrink and
// changes nothing. An update keeps CreatedAt; UpdatedAt moves only when
// something changed. t.CreatedAt is used only when the topic is created.
func (s *Store) PutTopic(ctx context.Context, t Topic) (Topic, bool, error) {
	if err := t.validate(); err != nil {
		return Topic{}, false, fmt.Errorf("put topic: %w", err)
	}
	t.Retention = t.Retention.Truncate(time.Millisecond)
	var (
		out     Topic
		created bool
	)
	err := s.write(ctx, func(tx Tx) error {
		cur, err := scanTopic(tx.QueryRowContext(ctx,
			`SELECT `+topicColumns+` FROM topics WHERE name = ?`, t.Name))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			out = t
			out.CreatedAt = s.stamp(t.CreatedAt)
			out.UpdatedAt = out.CreatedAt
			if !t.UpdatedAt.IsZero() {
				out.UpdatedAt = s.stamp(t.UpdatedAt)
			}
			created = true
			_, err := tx.ExecContext(ctx,
				`INSERT INTO topics (`+topicColumns+`) VALUES (?, ?, ?, ?, ?, ?)`,
				out.Name, out.Queues, out.Retention.Milliseconds(), out.CreatedAt.UnixMilli(), out.UpdatedAt.UnixMilli(), out.LogStart)
			return err
		case err != nil:
			return err
		}
		if t.Queues < cur.Queues {
			return fmt.Errorf("queues %d < current %d: %w", t.Queues, cur.Queues, ErrQueuesShrink)
		}
		out = cur
		if t.Queues == cur.Queues && t.Retention == cur.Retention {
			return nil // nothing to change: leave UpdatedAt alone
		}
		out.Queues, out.Retention = t.Queues, t.Retention
		out.UpdatedAt = s.stamp(t.UpdatedAt)
		_, err = tx.ExecContext(ctx,
			`UPDATE topics SET queues = ?, retention_ms = ?, updated_at = ? WHERE name = ?`,
			out.Queues, out.Retention.Milliseconds(), out.UpdatedAt.UnixMilli(), out.Name)
		return err
	})
	if err != nil {
		return Topic{}, false, fmt.Errorf("put topic %q: %w", t.Name, err)
	}
	return out, created, nil
}

// Topic returns the named topic, or ErrNotFound.
func (s *Store) Topic(ctx context.Context, name string) (Topic, error) {
	t, err := scanTopic(s.r.QueryRowContext(ctx,
		`SELECT `+topicColumns+` FROM topics WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return Topic{}, s.note(fmt.Errorf("get topic %q: %w", name, err))
	}
	return t, nil
}

// Topics returns every topic, ordered by name (byte-wise).
func (s *Store) Topics(ctx context.Context) ([]Topic, error) {
	ts, err := collect(ctx, s.r, func(r *sql.Rows) (Topic, error) { return scanTopic(r) },
		`SELECT `+topicColumns+` FROM topics ORDER BY name`)
	if err != nil {
		return nil, s.note(fmt.Errorf("list topics: %w", err))
	}
	return ts, nil
}

// DeleteTopic deletes the named topic, with the topics named in with
// (its groups' retry topics, which need not exist), and in the same
// transaction every consumer offset kept for them and every subscription
// to name (with its ordered-queue blocks), and records their deletion
// (DeletedTopics). It fails with ErrNotFound if there is no topic name.
// One transaction: a crash part-way through a delete used to leave the
// subscriptions, or the retry topics with their copies, of a deleted
// topic, which a topic created again under the name then delivered.
func (s *Store) DeleteTopic(ctx context.Context, name string, with ...string) error {
	_, err := s.DeleteTopicWith(ctx, TopicDelete{Name: name, RetryTopics: with})
	return err
}

// TxnReasonTopicDeleted is the reason of a transaction rolled back
// because its topic was deleted while it was prepared.
const TxnReasonTopicDeleted = "its topic was deleted"

// TopicDelete is what DeleteTopicWith deletes in one transaction.
type TopicDelete struct {
	Name        string
	RetryTopics []string           // the topic's groups' retry topics (need not exist)
	DeadLetters map[string][]int64 // the topic's dead letters, by group: their DLQ offsets
}

// DeleteTopicWith is DeleteTopic, also marking the topic's dead letters
// removed in the same transaction (a crash after the delete used to leave
// them, and a repeated delete answers 404, so nothing could finish it).
// The topic's prepared transactions are rolled back in it too (their
// messages can never be delivered): txns is how many.
func (s *Store) DeleteTopicWith(ctx context.Context, d TopicDelete) (txns int64, err error) {
	name, with := d.Name, d.RetryTopics
	at := s.stamp(time.Time{}).UnixMilli()
	err = s.write(ctx, func(tx Tx) error {
		for group, offs := range d.DeadLetters {
			if err := removeDeadLetters(ctx, tx, group, offs); err != nil {
				return err
			}
		}
		for i, n := range append([]string{name}, with...) {
			res, err := tx.ExecContext(ctx, `DELETE FROM topics WHERE name = ?`, n)
			if err != nil {
				return err
			}
			if k, err := res.RowsAffected(); err != nil {
				return err
			} else if k == 0 {
				if i == 0 {
					return ErrNotFound
				}
				continue
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM consumer_offsets WHERE topic = ?`, n); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx,
				`INSERT INTO deleted_topics (name, deleted_at) VALUES (?, ?)
				 ON CONFLICT (name) DO UPDATE SET deleted_at = max(deleted_at, excluded.deleted_at)`, n, at); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM ordered_retries WHERE subscription IN (SELECT id FROM subscriptions WHERE topic = ?)`, name); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE transactions SET state = 'rolled_back', decided_at = ?, reason = ? WHERE topic = ? AND state = 'prepared'`,
			at, TxnReasonTopicDeleted, name)
		if err != nil {
			return err
		}
		if txns, err = res.RowsAffected(); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM subscriptions WHERE topic = ?`, name)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("delete topic %q: %w", name, err)
	}
	return txns, nil
}

// DeletedTopics returns when each deleted topic was last deleted, by name.
// A topic created again after its deletion is listed too: its row in
// topics is what says it exists.
func (s *Store) DeletedTopics(ctx context.Context) (map[string]time.Time, error) {
	type row struct {
		name string
		at   int64
	}
	rows, err := collect(ctx, s.r, func(r *sql.Rows) (row, error) {
		var v row
		return v, r.Scan(&v.name, &v.at)
	}, `SELECT name, deleted_at FROM deleted_topics`)
	if err != nil {
		return nil, s.note(fmt.Errorf("list deleted topics: %w", err))
	}
	out := make(map[string]time.Time, len(rows))
	for _, v := range rows {
		out[v.name] = fromMillis(v.at)
	}
	return out, nil
}
