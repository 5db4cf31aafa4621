package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrStale: a subscription change lost to a record already stored, whose
// version wins over the change's (see Wins).
var ErrStale = errors.New("a later change of the subscription is stored")

// Version orders the changes of one subscription across brokers: At is
// the change's time in Unix milliseconds from the minting broker's hybrid
// logical clock, By that broker's name. The zero Version is older than
// any other: rows stored before versions existed.
type Version struct {
	At int64
	By string
}

// IsZero reports whether v is the zero Version.
func (v Version) IsZero() bool { return v.At == 0 && v.By == "" }

// String is At@By, the form brokers exchange in a header.
func (v Version) String() string { return strconv.FormatInt(v.At, 10) + "@" + v.By }

// ParseVersion reads the form String writes.
func ParseVersion(s string) (Version, error) {
	at, by, ok := strings.Cut(s, "@")
	n, err := strconv.ParseInt(at, 10, 64)
	if !ok || err != nil || n <= 0 || strings.ContainsRune(by, '@') {
		return Version{}, fmt.Errorf("version %q: want <unix ms>@<broker name>: %w", s, ErrInvalid)
	}
	return Version{At: n, By: by}, nil
}

// Wins reports whether a record at version a (a tombstone when aDeleted)
// replaces one at version b: the higher At wins; at equal At a tombstone
// wins over a live record; then the greater broker name. A record never
// wins over itself, so applying one twice changes nothing.
func Wins(a Version, aDeleted bool, b Version, bDeleted bool) bool {
	if a.At != b.At {
		return a.At > b.At
	}
	if aDeleted != bDeleted {
		return aDeleted
	}
	return a.By > b.By
}

// Tombstone is a deleted subscription, kept with its delete's version.
type Tombstone struct {
	ID, Group, Topic string
	Version          Version
	DeletedAt        time.Time // by this store's clock
}

func tombstoneOf(ctx context.Context, tx Tx, id string) (Tombstone, bool, error) {
	var t Tombstone
	var at int64
	err := tx.QueryRowContext(ctx, `SELECT id, group_name, topic, version, version_by, deleted_at FROM subscription_tombstones WHERE id = ?`, id).
		Scan(&t.ID, &t.Group, &t.Topic, &t.Version.At, &t.Version.By, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return Tombstone{}, false, nil
	}
	if err != nil {
		return Tombstone{}, false, fmt.Errorf("tombstone of %q: %w", id, err)
	}
	t.DeletedAt = fromMillis(at)
	return t, true, nil
}

// putTombstone stores t unless a tombstone of t.ID wins over it.
func (s *Store) putTombstone(ctx context.Context, tx Tx, t Tombstone) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO subscription_tombstones (id, group_name, topic, version, version_by, deleted_at) VALUES (?,?,?,?,?,?)
		ON CONFLICT (id) DO UPDATE SET group_name = excluded.group_name, topic = excluded.topic, version = excluded.version,
			version_by = excluded.version_by, deleted_at = excluded.deleted_at
		WHERE excluded.version > version OR (excluded.version = version AND excluded.version_by > version_by)`,
		t.ID, t.Group, t.Topic, t.Version.At, t.Version.By, s.stamp(time.Time{}).UnixMilli())
	if err != nil {
		return fmt.Errorf("store tombstone of %q: %w", t.ID, err)
	}
	return nil
}

// removeSubscription deletes a subscription row and its queue blocks.
func removeSubscription(ctx context.Context, tx Tx, id string) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM subscriptions WHERE id = ?`, id); err != nil {
		return fmt.Errorf("delete subscription %q: %w", id, err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM ordered_retries WHERE subscription = ?`, id); err != nil {
		return fmt.Errorf("delete the queue blocks of %q: %w", id, err)
	}
	return nil
}

// DeleteSubscriptionAt deletes a subscription as a change at version v:
// the row and its queue blocks go, and a tombstone at v stays in their
// place, in one transaction. It returns the subscription deleted.
// ErrNotFound when there is none; ErrStale, deleting nothing, when the
// stored one's version wins over the delete's.
func (s *Store) DeleteSubscriptionAt(ctx context.Context, id string, v Version) (Subscription, error) {
	var old Subscription
	err := s.write(ctx, func(tx Tx) error {
		var err error
		old, err = scanSubscription(tx.QueryRowContext(ctx, `SELECT `+subscriptionColumns+` FROM subscriptions WHERE id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if !Wins(v, true, old.Version, false) {
			return fmt.Errorf("subscription is at version %s, after the delete's %s: %w", old.Version, v, ErrStale)
		}
		if err := removeSubscription(ctx, tx, id); err != nil {
			return err
		}
		return s.putTombstone(ctx, tx, Tombstone{ID: id, Group: old.Group, Topic: old.Topic, Version: v})
	})
	if err != nil {
		return Subscription{}, fmt.Errorf("delete subscription %q: %w", id, err)
	}
	return old, nil
}

// Applied says what ApplySubscription changed.
type Applied struct {
	// Applied is false when the record lost to what was stored (or was
	// that very record): nothing changed.
	Applied bool
	// Before is the live subscription of the record's id that it replaced
	// or deleted; nil when there was none (a create, or a tombstone over
	// a tombstone or nothing).
	Before *Subscription
	// Displaced is the live subscription of the same group and topic
	// under another id that a winning live record replaced; it was
	// deleted and tombstoned at the record's version.
	Displaced *Subscription
}

// ApplySubscription stores another broker's record of a subscription, a
// live one (deleted false: sub as it is there, its times and version
// kept) or a tombstone (deleted true: sub's ID, Group, Topic and Version),
// when it wins over what this store holds for its id (see Wins), in one
// transaction. A live record that wins also wins over a live subscription
// of the same group and topic under another id when its version is
// higher, which it replaces; else it is not applied (Applied false).
func (s *Store) ApplySubscription(ctx context.Context, sub Subscription, deleted bool) (Applied, error) {
	if err := sub.validate(); err != nil {
		return Applied{}, fmt.Errorf("apply subscription: %w", err)
	}
	sub = sub.withDefaults()
	var out Applied
	err := s.write(ctx, func(tx Tx) error {
		out = Applied{}
		cur, err := scanSubscription(tx.QueryRowContext(ctx, `SELECT `+subscriptionColumns+` FROM subscriptions WHERE id = ?`, sub.ID))
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return err
		default:
			if !Wins(sub.Version, deleted, cur.Version, false) {
				return nil
			}
			out.Before = &cur
		}
		t, haveTomb, err := tombstoneOf(ctx, tx, sub.ID)
		if err != nil {
			return err
		}
		if haveTomb && !Wins(sub.Version, deleted, t.Version, true) {
			return nil
		}
		if deleted {
			if out.Before != nil {
				if err := removeSubscription(ctx, tx, sub.ID); err != nil {
					return err
				}
			}
			out.Applied = true
			return s.putTombstone(ctx, tx, Tombstone{ID: sub.ID, Group: sub.Group, Topic: sub.Topic, Version: sub.Version})
		}
		if out.Before != nil && (out.Before.Group != sub.Group || out.Before.Topic != sub.Topic) {
			return fmt.Errorf("subscription %q is of group %q on topic %q here, not %q on %q: %w", sub.ID, out.Before.Group, out.Before.Topic, sub.Group, sub.Topic, ErrInvalid)
		}
		other, err := scanSubscription(tx.QueryRowContext(ctx, `SELECT `+subscriptionColumns+` FROM subscriptions WHERE group_name = ? AND topic = ? AND id <> ?`, sub.Group, sub.Topic, sub.ID))
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return err
		default:
			if !Wins(sub.Version, false, other.Version, false) {
				return nil
			}
			if err := removeSubscription(ctx, tx, other.ID); err != nil {
				return err
			}
			if err := s.putTombstone(ctx, tx, Tombstone{ID: other.ID, Group: other.Group, Topic: other.Topic, Version: sub.Version}); err != nil {
				return err
			}
			out.Displaced = &other
		}
		if haveTomb {
			if _, err := tx.ExecContext(ctx, `DELETE FROM subscription_tombstones WHERE id = ?`, sub.ID); err != nil {
				return err
			}
		}
		created, updated := sub.CreatedAt, sub.UpdatedAt
		if created.IsZero() {
			created = s.stamp(time.Time{})
		}
		if updated.IsZero() {
			updated = created
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO subscriptions (id, group_name, topic, url, filter, ordered, config, secret, state, created_at, updated_at, version, version_by)
			VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)
			ON CONFLICT (id) DO UPDATE SET url = excluded.url, filter = excluded.filter, ordered = excluded.ordered, config = excluded.config,
				secret = excluded.secret, state = excluded.state, created_at = excluded.created_at, updated_at = excluded.updated_at,
				version = excluded.version, version_by = excluded.version_by`,
			sub.ID, sub.Group, sub.Topic, nullable(sub.URL), sub.Filter, boolInt(sub.Ordered), sub.Config, nullable(sub.Secret), sub.State,
			created.UnixMilli(), updated.UnixMilli(), sub.Version.At, sub.Version.By); err != nil {
			return err
		}
		out.Applied = true
		return nil
	})
	if err != nil {
		return Applied{}, fmt.Errorf("apply subscription %q: %w", sub.ID, err)
	}
	return out, nil
}

// SubscriptionTombstone returns the tombstone of id, or ErrNotFound.
func (s *Store) SubscriptionTombstone(ctx context.Context, id string) (Tombstone, error) {
	var t Tombstone
	var at int64
	err := s.r.QueryRowContext(ctx, `SELECT id, group_name, topic, version, version_by, deleted_at FROM subscription_tombstones WHERE id = ?`, id).
		Scan(&t.ID, &t.Group, &t.Topic, &t.Version.At, &t.Version.By, &at)
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return Tombstone{}, fmt.Errorf("tombstone of %q: %w", id, err)
	}
	t.DeletedAt = fromMillis(at)
	return t, nil
}

// SubscriptionTombstones returns every tombstone, by id.
func (s *Store) SubscriptionTombstones(ctx context.Context) ([]Tombstone, error) {
	ts, err := collect(ctx, s.r, func(r *sql.Rows) (Tombstone, error) {
		var t Tombstone
		var at int64
		err := r.Scan(&t.ID, &t.Group, &t.Topic, &t.Version.At, &t.Version.By, &at)
		t.DeletedAt = fromMillis(at)
		return t, err
	}, `SELECT id, group_name, topic, version, version_by, deleted_at FROM subscription_tombstones ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("subscription tombstones: %w", err)
	}
	return ts, nil
}

// PurgeSubscriptionTombstones deletes the tombstones whose version is
// older than before (Unix ms) and returns how many it deleted.
func (s *Store) PurgeSubscriptionTombstones(ctx context.Context, before int64) (int64, error) {
	var n int64
	err := s.write(ctx, func(tx Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM subscription_tombstones WHERE version < ?`, before)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("purge subscription tombstones: %w", err)
	}
	return n, nil
}

// MaxSubscriptionVersion is the highest version At of any subscription or
// tombstone (of a subscription or a topic), for a broker's clock to start
// above.
func (s *Store) MaxSubscriptionVersion(ctx context.Context) (int64, error) {
	var v int64
	err := s.r.QueryRowContext(ctx, `SELECT max(coalesce((SELECT max(version) FROM subscriptions), 0), coalesce((SELECT max(version) FROM subscription_tombstones), 0), coalesce((SELECT max(version) FROM topic_tombstones), 0))`).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("highest subscription version: %w", err)
	}
	return v, nil
}
