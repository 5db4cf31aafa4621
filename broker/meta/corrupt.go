package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"modernc.org/sqlite"
)

// ErrCorrupt: the database file is damaged. SQLite answered SQLITE_CORRUPT
// ("database disk image is malformed") or SQLITE_NOTADB, or Open's
// quick_check found a damaged page. Nothing in the file can be trusted to
// be whole: the broker refuses to start on it, and --rebuild-metadata moves
// it aside.
var ErrCorrupt = errors.New("metadata database is damaged")

// SQLite's primary result codes for a damaged file; extended codes keep
// them in their low byte.
const (
	sqliteCorrupt = 11
	sqliteNotADB  = 26
)

// quickCheckRows bounds the problems quick_check lists: one proves the
// damage, a few help whoever looks at the file.
const quickCheckRows = 5

// IsCorrupt reports whether err says the database file is damaged: it
// wraps ErrCorrupt or an SQLite error with code SQLITE_CORRUPT or
// SQLITE_NOTADB.
func IsCorrupt(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrCorrupt) {
		return true
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		c := se.Code() & 0xff
		return c == sqliteCorrupt || c == sqliteNotADB
	}
	return false
}

// corruptError marks an SQLite error as ErrCorrupt while keeping it (and
// its message) in the chain.
type corruptError struct{ err error }

func (e *corruptError) Error() string   { return e.err.Error() }
func (e *corruptError) Unwrap() []error { return []error{e.err, ErrCorrupt} }

// markCorrupt marks err as ErrCorrupt when it says the file is damaged.
func markCorrupt(err error) error {
	if IsCorrupt(err) && !errors.Is(err, ErrCorrupt) {
		return &corruptError{err: err}
	}
	return err
}

// note passes err through, marked as ErrCorrupt when it says the file is
// damaged. The first such error of the store's life is kept (Corrupt) and
// logged at ERROR: from then on the broker reports itself not ready, since
// whatever it stores in this file (a timer, an offset, a topic) may be
// lost.
func (s *Store) note(err error) error {
	if err == nil || !IsCorrupt(err) {
		return err
	}
	err = markCorrupt(err)
	if s.corrupt.CompareAndSwap(nil, &err) {
		s.log.Error("metadata database is damaged: its writes and reads fail; stop the broker and start it once "+
			"with --rebuild-metadata (it moves the file aside and recreates the topics from the commitlog), "+
			"or restore it from a backup", slog.String(logKeyPath, s.path), slog.Any("err", err))
	}
	return err
}

// Corrupt returns the first error that showed the database file damaged
// while the store was open, or nil. It wraps ErrCorrupt.
func (s *Store) Corrupt() error {
	if p := s.corrupt.Load(); p != nil {
		return fmt.Errorf("metadata database %s is damaged: %w", s.path, *p)
	}
	return nil
}

// quickCheck runs SQLite's quick_check: every page of the file is read and
// its b-tree structure checked (not the indexes against their tables, which
// integrity_check adds at several times the cost). A database that fails it
// is ErrCorrupt.
func (s *Store) quickCheck(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, fmt.Sprintf("PRAGMA quick_check(%d)", quickCheckRows))
	if err != nil {
		return markCorrupt(fmt.Errorf("quick_check: %w", err))
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return markCorrupt(fmt.Errorf("quick_check: %w", err))
		}
		if line != "ok" {
			// One problem may span lines; the error stays on one.
			problems = append(problems, strings.Join(strings.Fields(line), " "))
		}
	}
	if err := rows.Err(); err != nil {
		return markCorrupt(fmt.Errorf("quick_check: %w", err))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: quick_check found: %s", ErrCorrupt, strings.Join(problems, "; "))
	}
	return nil
}

// Checked reports whether Open ran quick_check on the file (it was no
// larger than the check limit).
func (s *Store) Checked() bool { return s.checked }

// Check runs quick_check on a read-only connection, beside the writer,
// and notes a damaged file (Corrupt). It reads the whole file: the broker
// runs it in the background when Open did not (Checked).
func (s *Store) Check(ctx context.Context) error {
	return s.note(s.quickCheck(ctx, s.r))
}
