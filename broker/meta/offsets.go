package meta

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Offset is a consumer group's position in one queue of a topic: Next is the
// lowest queue offset the group has not yet finished, where it resumes after
// a restart.
type Offset struct {
	Group, Topic string
	Queue        int
	Next         int64
	// Progress is what a push consumer settled above Next (see
	// migrations/0006_offset_progress.sql), or nil. Stored as given.
	Progress []byte
	// UpdatedAt is set by the store when left zero.
	UpdatedAt time.Time
}

func (o Offset) validate() error {
	if err := validName("group", o.Group); err != nil {
		return err
	}
	if err := validName("topic", o.Topic); err != nil {
		return err
	}
	if o.Queue < 0 || o.Queue >= MaxQueues {
		return fmt.Errorf("offset %s/%s: queue %d outside 0..%d: %w", o.Group, o.Topic, o.Queue, MaxQueues-1, ErrInvalid)
	}
	if o.Next < 0 {
		return fmt.Errorf("offset %s/%s/%d: negative offset %d: %w", o.Group, o.Topic, o.Queue, o.Next, ErrInvalid)
	}
	return nil
}

// offsetChunk is how many rows one INSERT statement carries: 6 parameters a
// row stays far below SQLite's 32766-parameter limit, and one statement per
// chunk costs far less than one per row.
const offsetChunk = 256

const offsetInsertHead = `INSERT INTO consumer_offsets (group_name, topic, queue_id, next_offset, updated_at, progress) VALUES `

// An offset may move backwards (a reset to earliest or to a timestamp), so
// the upsert overwrites rather than keeping the maximum.
const offsetInsertTail = ` ON CONFLICT (group_name, topic, queue_id) DO UPDATE SET next_offset = excluded.next_offset, updated_at = excluded.updated_at, progress = excluded.progress`

func offsetInsert(rows int) string {
	var b strings.Builder
	b.Grow(len(offsetInsertHead) + rows*len("(?,?,?,?,?,?),") + len(offsetInsertTail))
	b.WriteString(offsetInsertHead)
	for i := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?,?,?,?,?,?)")
	}
	b.WriteString(offsetInsertTail)
	return b.String()
}

var offsetInsertFull = offsetInsert(offsetChunk)

// CommitOffsets stores many offsets in one transaction: all of them or, on
// any error, none. A later entry for the same (group, topic, queue) wins over
// an earlier one. Invalid entries fail the whole call with ErrInvalid before
// anything is written.
func (s *Store) CommitOffsets(ctx context.Context, offs []Offset) error {
	return s.commitOffsets(ctx, offs, s.write)
}

// CommitOffsetsUnsynced is CommitOffsets whose commit is not fsynced: it
// survives the process being killed (SQLite's WAL is written before the
// call returns) but not a power cut, which keeps what the last synced
// commit, and every later one (any other write of the store) syncs it too.
// It is for writes made many times a second, where a power cut may fall
// back to the last synced offsets, at least once.
func (s *Store) CommitOffsetsUnsynced(ctx context.Context, offs []Offset) error {
	return s.commitOffsets(ctx, offs, s.writeUnsynced)
}

// writeUnsynced is write with synchronous=NORMAL for this one transaction,
// on the writer connection held throughout, so no other write runs
// unsynced.
func (s *Store) writeUnsynced(ctx context.Context, fn func(Tx) error) (err error) {
	if s.repl != nil {
		// Replicated writes are applied synced on every member.
		return s.write(ctx, fn)
	}
	defer func() { err = s.note(err) }()
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return fmt.Errorf("writer connection: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "PRAGMA synchronous=NORMAL"); err != nil {
		return fmt.Errorf("unsynced write: %w", err)
	}
	defer func() {
		if _, rerr := conn.ExecContext(context.WithoutCancel(ctx), "PRAGMA synchronous=FULL"); rerr != nil {
			// The connection must not stay unsynced for the writes that
			// follow: drop it, and the pool opens a new one (FULL, by DSN).
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
			err = errors.Join(err, fmt.Errorf("restore synchronous=FULL: %w", rerr))
		}
	}()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(plainTx{tx}); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func (s *Store) commitOffsets(ctx context.Context, offs []Offset, write func(context.Context, func(Tx) error) error) error {
	if len(offs) == 0 {
		return nil
	}
	for _, o := range offs {
		if err := o.validate(); err != nil {
			return fmt.Errorf("commit offsets: %w", err)
		}
	}
	if err := write(ctx, func(tx Tx) error { return s.upsertOffsets(ctx, tx, offs) }); err != nil {
		return fmt.Errorf("commit %d offsets: %w", len(offs), err)
	}
	return nil
}

// CommitLease stores the timers of a pull lease's visibility copies and
// the offsets that move past its messages in one transaction, unsynced
// as CommitOffsetsUnsynced: after a kill of the process either both hold
// (the messages are out, and come back by their timers) or neither (the
// copies wait in the log with no timer, and the offsets hand the messages
// out again, as nobody saw them).
func (s *Store) CommitLease(ctx context.Context, ts []Timer, offs []Offset) error {
	if err := validTimers(ts); err != nil {
		return err
	}
	for _, o := range offs {
		if err := o.validate(); err != nil {
			return fmt.Errorf("commit lease: %w", err)
		}
	}
	err := s.writeUnsynced(ctx, func(tx Tx) error {
		if err := insertTimers(ctx, tx, ts); err != nil {
			return err
		}
		if len(offs) == 0 {
			return nil
		}
		return s.upsertOffsets(ctx, tx, offs)
	})
	if err != nil {
		return fmt.Errorf("commit lease of %d messages: %w", len(ts), err)
	}
	return nil
}

// upsertOffsets writes offs in tx.
func (s *Store) upsertOffsets(ctx context.Context, tx Tx, offs []Offset) error {
	now := s.stamp(time.Time{}).UnixMilli()
	args := make([]any, 0, 6*min(len(offs), offsetChunk))
	var full Prepared
	defer func() {
		if full != nil {
			full.Close()
		}
	}()
	for rest := offs; len(rest) > 0; {
		n := min(len(rest), offsetChunk)
		args = args[:0]
		for _, o := range rest[:n] {
			at := now
			if !o.UpdatedAt.IsZero() {
				at = o.UpdatedAt.UnixMilli()
			}
			var progress any // NULL, not an empty blob
			if len(o.Progress) > 0 {
				progress = o.Progress
			}
			args = append(args, o.Group, o.Topic, o.Queue, o.Next, at, progress)
		}
		var err error
		if n == offsetChunk {
			if full == nil {
				if full, err = tx.PrepareContext(ctx, offsetInsertFull); err != nil {
					return err
				}
			}
			_, err = full.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, offsetInsert(n), args...)
		}
		if err != nil {
			return err
		}
		rest = rest[n:]
	}
	return nil
}

const offsetColumns = `group_name, topic, queue_id, next_offset, updated_at, progress`

// Offsets returns the group's offsets ordered by topic and queue; none is not
// an error.
func (s *Store) Offsets(ctx context.Context, group string) ([]Offset, error) {
	offs, err := s.queryOffsets(ctx,
		`SELECT `+offsetColumns+` FROM consumer_offsets WHERE group_name = ? ORDER BY topic, queue_id`, group)
	if err != nil {
		return nil, fmt.Errorf("offsets of group %q: %w", group, err)
	}
	return offs, nil
}

// AllOffsets returns every stored offset ordered by group, topic and queue,
// for loading them all at start-up.
func (s *Store) AllOffsets(ctx context.Context) ([]Offset, error) {
	offs, err := s.queryOffsets(ctx,
		`SELECT `+offsetColumns+` FROM consumer_offsets ORDER BY group_name, topic, queue_id`)
	if err != nil {
		return nil, fmt.Errorf("all offsets: %w", err)
	}
	return offs, nil
}

func (s *Store) queryOffsets(ctx context.Context, query string, args ...any) (_ []Offset, err error) {
	defer func() { err = s.note(err) }()
	rows, err := s.r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var offs []Offset
	for rows.Next() {
		var (
			o  Offset
			at int64
		)
		if err := rows.Scan(&o.Group, &o.Topic, &o.Queue, &o.Next, &at, &o.Progress); err != nil {
			return nil, err
		}
		o.UpdatedAt = fromMillis(at)
		offs = append(offs, o)
	}
	return offs, rows.Err()
}
