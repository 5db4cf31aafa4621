package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postbus/postbus/migrations"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Errors callers branch on. Returned errors wrap them, so test with errors.Is.
var (
	// ErrNotFound: the topic (or other row) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: CreateTopic found a topic of that name already.
	ErrExists = errors.New("already exists")
	// ErrQueuesShrink: PutTopic asked for fewer queues than the topic has.
	ErrQueuesShrink = errors.New("queue count may only grow")
	// ErrInvalid: an argument is out of range (empty name, queue count
	// outside 1..MaxQueues, negative retention or offset, ...).
	ErrInvalid = errors.New("invalid argument")
	// ErrSchemaTooNew: the database was written by a newer binary.
	ErrSchemaTooNew = errors.New("database schema is newer than this binary")
)

// MaxQueues is the most queues a topic may have (the schema checks it too).
const MaxQueues = 1024

// busyTimeout is how long a connection waits for a lock held by another
// process (or a checkpoint) before failing with SQLITE_BUSY.
const busyTimeout = 5 * time.Second

// Log attribute keys.
const (
	logKeyPath    = "path"
	logKeyVersion = "version"
	logKeyName    = "name"
)

// Store is the SQLite metadata store. It is safe for concurrent use.
type Store struct {
	path string
	log  *slog.Logger
	// now stamps created_at/updated_at when the caller leaves them zero.
	// Set once before the Store is shared; tests replace it.
	now func() time.Time

	w *sql.DB // the one writer connection: SetMaxOpenConns(1), BEGIN IMMEDIATE
	r *sql.DB // read-only pool

	// fresh: this Open found no schema and created it (set once in Open).
	fresh bool

	// corrupt holds the first error that showed the file damaged (note).
	corrupt atomic.Pointer[error]
	// checkLimit: Open runs quick_check on a file of at most this many
	// bytes (negative: any); checked says it did (both set once in Open).
	checkLimit int64
	checked    bool

	// repl, when set (SetReplicator, before the store is shared), takes
	// every write to the replica group; replMu is held from a write's
	// capture to its apply.
	repl   Replicator
	replMu sync.Mutex

	// txnByID is the read of a transaction's row, prepared once on the
	// read pool: it runs for each decision, and parsing it each time cost
	// more than running it.
	txnByIDOnce sync.Once
	txnByID     *sql.Stmt
	txnByIDErr  error

	closeOnce sync.Once
	closeErr  error // set inside closeOnce
}

// Option configures Open.
type Option func(*Store)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(s *Store) {
		if l != nil {
			s.log = l
		}
	}
}

// WithClock sets the clock that stamps created_at and updated_at, so they
// agree with the clock of the broker that stores messages.
func WithClock(now func() time.Time) Option {
	return func(s *Store) {
		if now != nil {
			s.now = now
		}
	}
}

// WithCheckLimit sets the largest database file Open checks with
// quick_check (DefaultCheckLimit; negative: every file). A larger one
// opens unchecked and Checked reports false: the caller runs Check in the
// background, so a large file does not slow every start.
func WithCheckLimit(n int64) Option {
	return func(s *Store) { s.checkLimit = n }
}

// DefaultCheckLimit is the largest file Open checks by default: quick_check
// reads every page, at about 60 MB/s on a loaded 2-core machine, so a
// start spends at most about a second on it.
const DefaultCheckLimit = 64 << 20

// Open creates or opens the database file at path and brings its schema up
// to date with package migrations. The directory must exist.
func Open(ctx context.Context, path string, opts ...Option) (*Store, error) {
	return openWith(ctx, path, migrations.FS, opts...)
}

// openWith is Open with the migration files taken from fsys: the seam tests
// use to inject broken or future migrations.
func openWith(ctx context.Context, path string, fsys fs.FS, opts ...Option) (*Store, error) {
	if path == "" {
		return nil, fmt.Errorf("open metadata store: empty path: %w", ErrInvalid)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open metadata store %s: %w", path, err)
	}
	migs, err := loadMigrations(fsys)
	if err != nil {
		return nil, fmt.Errorf("open metadata store %s: %w", abs, err)
	}

	s := &Store{path: abs, log: slog.Default(), now: time.Now, checkLimit: DefaultCheckLimit}
	for _, o := range opts {
		o(s)
	}

	// Durability is the point of this store, so synchronous=FULL: with WAL,
	// NORMAL may lose the last commits on power loss, and a caller that was
	// told "offset saved" or "topic created" must be able to rely on it.
	s.w, err = sql.Open("sqlite", dsn(abs, url.Values{
		"mode":    {"rwc"},
		"_txlock": {"immediate"},
		"_pragma": {
			fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()),
			"journal_mode(WAL)",
			"synchronous(FULL)",
			"foreign_keys(1)",
		},
	}))
	if err != nil {
		return nil, fmt.Errorf("open metadata store %s: %w", abs, err)
	}
	// One connection, kept for the life of the Store: SQLite allows one
	// writer at a time anyway, and queueing in database/sql is cheaper and
	// fairer than SQLITE_BUSY retries.
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxLifetime(0)
	s.w.SetConnMaxIdleTime(0)

	// The writer connects first so the file exists and is in WAL mode before
	// a read-only connection (which can neither create it nor switch its
	// journal mode) opens it.
	if err := s.w.PingContext(ctx); err != nil {
		s.w.Close()
		return nil, fmt.Errorf("open metadata store %s: %w", abs, markCorrupt(err))
	}
	// A file damaged in its middle opens, and even serves the pages that
	// are whole, while every write that touches a bad page fails: checked
	// here, before anything trusts it, when the file is small enough to
	// keep the start fast (WithCheckLimit); a larger one is checked by
	// Check, in the background.
	if fi, err := os.Stat(abs); s.checkLimit < 0 || err != nil || fi.Size() <= s.checkLimit {
		if err := s.quickCheck(ctx, s.w); err != nil {
			s.w.Close()
			return nil, fmt.Errorf("open metadata store %s: %w", abs, err)
		}
		s.checked = true
	}
	if err := s.migrate(ctx, migs); err != nil {
		s.w.Close()
		return nil, fmt.Errorf("open metadata store %s: %w", abs, markCorrupt(err))
	}

	s.r, err = sql.Open("sqlite", dsn(abs, url.Values{
		"mode": {"ro"},
		"_pragma": {
			fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()),
			"query_only(1)",
		},
	}))
	if err != nil {
		s.w.Close()
		return nil, fmt.Errorf("open metadata store %s: readers: %w", abs, err)
	}
	readers := max(4, runtime.GOMAXPROCS(0))
	s.r.SetMaxOpenConns(readers)
	s.r.SetMaxIdleConns(readers)
	if err := s.r.PingContext(ctx); err != nil {
		s.r.Close()
		s.w.Close()
		return nil, fmt.Errorf("open metadata store %s: readers: %w", abs, markCorrupt(err))
	}
	return s, nil
}

// dsn builds a file: URI, so SQLite honours mode=ro/rwc, with the path
// escaped so that '?', '#' or '%' in it cannot be read as URI syntax.
func dsn(abs string, q url.Values) string {
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs)}
	// Encode escapes the parentheses of _pragma values; the driver parses
	// the query with url.ParseQuery and so unescapes them again.
	u.RawQuery = q.Encode()
	return u.String()
}

// Fresh reports whether Open created the schema: the file was missing,
// empty, or held no committed schema (a -wal that SQLite could not use is
// ignored, leaving what was checkpointed into the main file). The broker
// uses it to notice metadata that was lost while its commitlog was not.
func (s *Store) Fresh() bool { return s.fresh }

// Close closes the store. It is safe to call more than once; later calls
// return the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		// Readers first: the writer closing last lets SQLite checkpoint the
		// WAL into the database and remove the -wal and -shm files.
		var errs []error
		s.txnByIDOnce.Do(func() {}) // none prepared from now on
		if s.txnByID != nil {
			if err := s.txnByID.Close(); err != nil {
				errs = append(errs, fmt.Errorf("transaction read: %w", err))
			}
		}
		if s.r != nil {
			if err := s.r.Close(); err != nil {
				errs = append(errs, fmt.Errorf("readers: %w", err))
			}
		}
		if err := s.w.Close(); err != nil {
			errs = append(errs, fmt.Errorf("writer: %w", err))
		}
		if err := errors.Join(errs...); err != nil {
			s.closeErr = fmt.Errorf("close metadata store %s: %w", s.path, err)
		}
	})
	return s.closeErr
}

// write runs fn in one immediate transaction on the writer connection and
// commits it, or rolls it back if fn or the commit fails. An error that
// shows the file damaged is noted (Corrupt).
func (s *Store) write(ctx context.Context, fn func(Tx) error) error {
	if s.repl != nil {
		return s.writeReplicated(ctx, fn)
	}
	return s.writeLocal(ctx, fn)
}

// writeLocal is write on this database alone.
func (s *Store) writeLocal(ctx context.Context, fn func(Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.note(fmt.Errorf("begin: %w", err))
	}
	if err := fn(plainTx{tx}); err != nil {
		_ = tx.Rollback() // the error from fn is the one worth reporting
		return s.note(err)
	}
	if err := tx.Commit(); err != nil {
		return s.note(fmt.Errorf("commit: %w", err))
	}
	return nil
}

// stamp returns t, or the store's clock when t is zero, cut to the
// millisecond precision of the schema and in UTC, so a value handed back to a
// caller equals the value read back later.
func (s *Store) stamp(t time.Time) time.Time {
	if t.IsZero() {
		t = s.now()
	}
	return fromMillis(t.UnixMilli())
}

func fromMillis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// validName rejects names the rest of the broker could not address.
func validName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("empty %s name: %w", kind, ErrInvalid)
	}
	if strings.ContainsRune(name, 0) {
		return fmt.Errorf("%s name %q contains NUL: %w", kind, name, ErrInvalid)
	}
	return nil
}

// collect runs a read query and scans every row with scan.
func collect[T any](ctx context.Context, db *sql.DB, scan func(*sql.Rows) (T, error), query string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// deleteWith deletes the row del names by key and, in the same
// transaction, the rows also names by key (what belongs to it). ErrNotFound
// when there was no such row.
func (s *Store) deleteWith(ctx context.Context, del, also, key string) error {
	return s.write(ctx, func(tx Tx) error {
		res, err := tx.ExecContext(ctx, del, key)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			return ErrNotFound
		}
		_, err = tx.ExecContext(ctx, also, key)
		return err
	})
}
