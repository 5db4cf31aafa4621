package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// TopicTombstone is a topic deleted in a cluster, kept with its delete's
// version.
type TopicTombstone struct {
	Name    string
	Version Version
}

// PutTopicTombstone stores a topic's tombstone, keeping the higher version
// when one is stored already. It reports whether it stored t (false: the
// one stored is as high or higher).
func (s *Store) PutTopicTombstone(ctx context.Context, t TopicTombstone) (bool, error) {
	if err := validName("topic", t.Name); err != nil {
		return false, fmt.Errorf("put topic tombstone: %w", err)
	}
	if t.Version.At <= 0 {
		return false, fmt.Errorf("topic tombstone of %q without a version: %w", t.Name, ErrInvalid)
	}
	var stored bool
	err := s.write(ctx, func(tx Tx) error {
		var cur Version
		err := tx.QueryRowContext(ctx, `SELECT version, version_by FROM topic_tombstones WHERE name = ?`, t.Name).Scan(&cur.At, &cur.By)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return err
		case !Wins(t.Version, true, cur, true):
			return nil
		}
		stored = true
		_, err = tx.ExecContext(ctx, `INSERT INTO topic_tombstones (name, version, version_by) VALUES (?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET version = excluded.version, version_by = excluded.version_by`,
			t.Name, t.Version.At, t.Version.By)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("put topic tombstone of %q: %w", t.Name, err)
	}
	return stored, nil
}

// TopicTombstones returns every topic tombstone, by name.
func (s *Store) TopicTombstones(ctx context.Context) ([]TopicTombstone, error) {
	ts, err := collect(ctx, s.r, func(r *sql.Rows) (TopicTombstone, error) {
		var t TopicTombstone
		err := r.Scan(&t.Name, &t.Version.At, &t.Version.By)
		return t, err
	}, `SELECT name, version, version_by FROM topic_tombstones ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("topic tombstones: %w", err)
	}
	return ts, nil
}

// PurgeTopicTombstones deletes the topic tombstones whose version is older
// than before (Unix ms) and returns how many it deleted.
func (s *Store) PurgeTopicTombstones(ctx context.Context, before int64) (int64, error) {
	var n int64
	err := s.write(ctx, func(tx Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM topic_tombstones WHERE version < ?`, before)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("purge topic tombstones: %w", err)
	}
	return n, nil
}
