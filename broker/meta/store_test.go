package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/postbus/postbus/migrations"
)

// clock is a settable time source for Store.now.
type clock struct {
	mu sync.Mutex
	t  time.Time // guarded by mu
}

func newClock() *clock { return &clock{t: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func withClock(c *clock) Option { return func(s *Store) { s.now = c.Now } }

func quietOptions(opts ...Option) []Option {
	return append([]Option{WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))}, opts...)
}

// dbPath returns a fresh database path in a per-test directory; the file
// name has a space, '?', '#' and '%' so URI escaping is exercised.
func dbPath(tb testing.TB) string {
	tb.Helper()
	return filepath.Join(tb.TempDir(), "meta ?#%41.db")
}

func openStore(tb testing.TB, path string, opts ...Option) *Store {
	tb.Helper()
	return openStoreFS(tb, path, migrations.FS, opts...)
}

func openStoreFS(tb testing.TB, path string, fsys fs.FS, opts ...Option) *Store {
	tb.Helper()
	s, err := openWith(context.Background(), path, fsys, quietOptions(opts...)...)
	if err != nil {
		tb.Fatalf("open %s: %v", path, err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("close: %v", err)
		}
	})
	return s
}

// rawDB opens the file with no store in between, for inspecting and
// tampering with it.
func rawDB(tb testing.TB, path string) *sql.DB {
	tb.Helper()
	db, err := sql.Open("sqlite", dsn(path, nil))
	if err != nil {
		tb.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	tb.Cleanup(func() { db.Close() })
	return db
}

func latestVersion(tb testing.TB) int {
	tb.Helper()
	migs, err := loadMigrations(migrations.FS)
	if err != nil {
		tb.Fatal(err)
	}
	return migs[len(migs)-1].version
}

type migrationRow struct {
	Version   int
	Name      string
	AppliedAt string
}

func migrationRows(tb testing.TB, db *sql.DB) []migrationRow {
	tb.Helper()
	rows, err := db.Query(`SELECT version, name, applied_at FROM schema_migrations ORDER BY version`)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	var out []migrationRow
	for rows.Next() {
		var r migrationRow
		if err := rows.Scan(&r.Version, &r.Name, &r.AppliedAt); err != nil {
			tb.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}

func tableExists(tb testing.TB, db *sql.DB, name string) bool {
	tb.Helper()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?`, name).Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n == 1
}

func TestOpenAppliesMigrationsOnce(t *testing.T) {
	ctx := context.Background()
	path := dbPath(t)
	clk := newClock()
	want := latestVersion(t)

	s := openStore(t, path, withClock(clk))
	got, err := s.SchemaVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("SchemaVersion = %d, want %d", got, want)
	}
	first := migrationRows(t, s.r)
	migs, _ := loadMigrations(migrations.FS)
	if len(first) != len(migs) {
		t.Fatalf("schema_migrations has %d rows, want %d: %+v", len(first), len(migs), first)
	}
	if first[0].Name != "0001_init.sql" || first[0].AppliedAt != clk.Now().Format(time.RFC3339Nano) {
		t.Errorf("first row = %+v", first[0])
	}
	for _, table := range []string{"topics", "consumer_offsets", "subscriptions"} {
		var strict int
		if err := s.r.QueryRow(`SELECT strict FROM pragma_table_list WHERE name = ?`, table).Scan(&strict); err != nil {
			t.Fatalf("table %s: %v", table, err)
		}
		if strict != 1 {
			t.Errorf("table %s is not STRICT", table)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopening later must apply nothing: the rows, applied_at included, stay.
	clk.Advance(time.Hour)
	s2 := openStore(t, path, withClock(clk))
	if got, err := s2.SchemaVersion(ctx); err != nil || got != want {
		t.Fatalf("after reopen SchemaVersion = %d, %v; want %d", got, err, want)
	}
	if second := migrationRows(t, s2.r); !reflect.DeepEqual(second, first) {
		t.Errorf("after reopen schema_migrations = %+v, want %+v", second, first)
	}
}

// TestOpenUsesPathVerbatim checks that URI escaping keeps the odd characters
// of dbPath: the database must be the file at exactly that path.
func TestOpenUsesPathVerbatim(t *testing.T) {
	path := dbPath(t)
	s := openStore(t, path)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database file: %v", err)
	}
	for _, db := range []*sql.DB{s.w, s.r} {
		var seq int
		var name, file string
		if err := db.QueryRow(`PRAGMA database_list`).Scan(&seq, &name, &file); err != nil {
			t.Fatal(err)
		}
		if file != path {
			t.Errorf("connection opened %q, want %q", file, path)
		}
	}
}

func TestOpenPragmas(t *testing.T) {
	s := openStore(t, dbPath(t))
	tests := []struct {
		db     *sql.DB
		pragma string
		want   string
	}{
		{s.w, "journal_mode", "wal"},
		{s.w, "synchronous", "2"}, // FULL
		{s.w, "foreign_keys", "1"},
		{s.w, "busy_timeout", "5000"},
		{s.r, "journal_mode", "wal"},
		{s.r, "query_only", "1"},
		{s.r, "busy_timeout", "5000"},
	}
	for _, tt := range tests {
		who := "writer"
		if tt.db == s.r {
			who = "reader"
		}
		t.Run(who+"/"+tt.pragma, func(t *testing.T) {
			var got string
			if err := tt.db.QueryRow("PRAGMA " + tt.pragma).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("PRAGMA %s = %q, want %q", tt.pragma, got, tt.want)
			}
		})
	}
	t.Run("reader/rejects writes", func(t *testing.T) {
		_, err := s.r.Exec(`INSERT INTO topics VALUES ('x', 1, 0, 0, 0)`)
		if err == nil {
			t.Fatal("write through the read-only pool succeeded")
		}
	})
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	path := dbPath(t)
	latest := latestVersion(t)
	s := openStore(t, path)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	future := latest + 7
	db := rawDB(t, path)
	if _, err := db.Exec(`INSERT INTO schema_migrations VALUES (?, '9999_future.sql', '2030-01-01T00:00:00Z')`, future); err != nil {
		t.Fatal(err)
	}

	_, err := Open(context.Background(), path, quietOptions()...)
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open = %v, want ErrSchemaTooNew", err)
	}
	for _, want := range []string{fmt.Sprint(future), fmt.Sprint(latest), "refusing"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// Refusing must not touch the database.
	rows := migrationRows(t, db)
	if got := rows[len(rows)-1].Version; got != future {
		t.Errorf("version after refused open = %d, want %d", got, future)
	}
}

// withFiles returns the real migrations plus extra files.
func withFiles(tb testing.TB, extra map[string]string) fstest.MapFS {
	tb.Helper()
	m := fstest.MapFS{}
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range entries {
		b, err := fs.ReadFile(migrations.FS, e.Name())
		if err != nil {
			tb.Fatal(err)
		}
		m[e.Name()] = &fstest.MapFile{Data: b}
	}
	for name, body := range extra {
		m[name] = &fstest.MapFile{Data: []byte(body)}
	}
	return m
}

func TestFailingMigrationRollsBack(t *testing.T) {
	ctx := context.Background()
	path := dbPath(t)
	latest := latestVersion(t)
	next := fmt.Sprintf("%04d_half.sql", latest+1)

	// The first two statements succeed; the third fails. None may remain.
	broken := withFiles(t, map[string]string{next: `
		CREATE TABLE half_applied (x INTEGER) STRICT;
		INSERT INTO topics VALUES ('from-broken-migration', 1, 0, 0, 0);
		CREATE TABLE broken (;`})
	_, err := openWith(ctx, path, broken, quietOptions()...)
	if err == nil {
		t.Fatal("open with a broken migration succeeded")
	}
	if !strings.Contains(err.Error(), next) {
		t.Errorf("error %q does not name the migration %s", err, next)
	}

	db := rawDB(t, path)
	rows := migrationRows(t, db)
	if got := rows[len(rows)-1].Version; got != latest {
		t.Errorf("version after failed migration = %d, want %d", got, latest)
	}
	if tableExists(t, db, "half_applied") {
		t.Error("table half_applied survived the failed migration")
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM topics`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("topics has %d rows after the failed migration, want 0", n)
	}
	db.Close()

	// Once the file is fixed it applies.
	fixed := withFiles(t, map[string]string{next: `CREATE TABLE half_applied (x INTEGER) STRICT;`})
	s := openStoreFS(t, path, fixed)
	if got, err := s.SchemaVersion(ctx); err != nil || got != latest+1 {
		t.Fatalf("SchemaVersion = %d, %v; want %d", got, err, latest+1)
	}
	if !tableExists(t, s.r, "half_applied") {
		t.Error("fixed migration did not create its table")
	}
}

func TestFailingFirstMigrationLeavesEmptyDatabase(t *testing.T) {
	path := dbPath(t)
	broken := fstest.MapFS{"0001_init.sql": {Data: []byte(`CREATE TABLE topics (name TEXT) STRICT; SELECT nope FROM nowhere;`)}}
	if _, err := openWith(context.Background(), path, broken, quietOptions()...); err == nil {
		t.Fatal("open with a broken first migration succeeded")
	}
	db := rawDB(t, path)
	if rows := migrationRows(t, db); len(rows) != 0 {
		t.Errorf("schema_migrations = %+v, want empty", rows)
	}
	if tableExists(t, db, "topics") {
		t.Error("topics table survived the failed migration")
	}
}

func TestLoadMigrations(t *testing.T) {
	file := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	tests := []struct {
		name     string
		fsys     fstest.MapFS
		versions []int // nil: want an error
	}{
		{"one", fstest.MapFS{"0001_a.sql": file("SELECT 1")}, []int{1}},
		{"ordered", fstest.MapFS{"0002_b.sql": file("x"), "0001_a.sql": file("y")}, []int{1, 2}},
		{"dirs ignored", fstest.MapFS{"0001_a.sql": file("x"), "sub/0002_b.sql": file("y")}, []int{1}},
		{"empty", fstest.MapFS{}, nil},
		{"gap", fstest.MapFS{"0001_a.sql": file("x"), "0003_c.sql": file("y")}, []int{1, 3}},
		{"duplicate", fstest.MapFS{"0001_a.sql": file("x"), "0001_b.sql": file("y")}, nil},
		{"starts at 2", fstest.MapFS{"0002_a.sql": file("x")}, nil},
		{"bad name", fstest.MapFS{"0001_a.sql": file("x"), "0002-B.sql": file("y")}, nil},
		{"stray file", fstest.MapFS{"0001_a.sql": file("x"), "README.md": file("y")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			migs, err := loadMigrations(tt.fsys)
			if tt.versions == nil {
				if err == nil {
					t.Fatalf("loadMigrations = %+v, want an error", migs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []int
			for _, m := range migs {
				got = append(got, m.version)
			}
			if !reflect.DeepEqual(got, tt.versions) {
				t.Errorf("versions = %v, want %v", got, tt.versions)
			}
		})
	}
}

// TestMigrationFillsGap: a version number reserved while a later file
// shipped first is applied when its file arrives, below the database's
// highest version.
func TestMigrationFillsGap(t *testing.T) {
	ctx := context.Background()
	path := dbPath(t)
	latest := latestVersion(t)
	late := fmt.Sprintf("%04d_late.sql", latest+1)
	later := fmt.Sprintf("%04d_later.sql", latest+2)
	s, err := openWith(ctx, path, withFiles(t, map[string]string{later: `CREATE TABLE later_t (x INTEGER) STRICT;`}), quietOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = openWith(ctx, path, withFiles(t, map[string]string{late: `CREATE TABLE late_t (x INTEGER) STRICT;`, later: `CREATE TABLE later_t (x INTEGER) STRICT;`}), quietOptions()...)
	if err != nil {
		t.Fatalf("open with the reserved version's file added: %v", err)
	}
	s.Close()
	db := rawDB(t, path)
	if !tableExists(t, db, "late_t") || !tableExists(t, db, "later_t") {
		t.Error("the file filling the gap was not applied")
	}
	rows := migrationRows(t, db)
	if got := rows[len(rows)-2].Version; got != latest+1 {
		t.Errorf("schema_migrations = %+v, want version %d recorded", rows, latest+1)
	}
	// A binary without the later file refuses the database.
	if _, err := openWith(ctx, path, withFiles(t, map[string]string{late: `CREATE TABLE late_t (x INTEGER) STRICT;`}), quietOptions()...); !errors.Is(err, ErrSchemaTooNew) {
		t.Errorf("open by a binary without version %d = %v, want ErrSchemaTooNew", latest+2, err)
	}
}

func TestCloseIdempotent(t *testing.T) {
	s, err := Open(context.Background(), dbPath(t), quietOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := s.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	if _, err := s.Topic(context.Background(), "x"); err == nil {
		t.Error("Topic after Close succeeded")
	}
	if _, err := s.CreateTopic(context.Background(), Topic{Name: "x", Queues: 1}); err == nil {
		t.Error("CreateTopic after Close succeeded")
	}
}

func TestOpenBadPath(t *testing.T) {
	dir := t.TempDir()
	tests := []struct{ name, path string }{
		{"empty", ""},
		{"directory", dir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(context.Background(), tt.path, quietOptions()...)
			if err == nil {
				s.Close()
				t.Fatalf("Open(%q) succeeded", tt.path)
			}
		})
	}
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	path := dbPath(t)
	s := openStore(t, path)
	var topics []Topic
	for _, name := range []string{"orders", "audit", "payments"} {
		tp, err := s.CreateTopic(ctx, Topic{Name: name, Queues: 4, Retention: 72 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		topics = append(topics, tp)
	}
	offs := []Offset{
		{Group: "billing", Topic: "orders", Queue: 0, Next: 10},
		{Group: "billing", Topic: "orders", Queue: 3, Next: 7},
		{Group: "search", Topic: "audit", Queue: 1, Next: 1 << 40},
	}
	if err := s.CommitOffsets(ctx, offs); err != nil {
		t.Fatal(err)
	}
	wantOffs, err := s.AllOffsets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openStore(t, path)
	gotTopics, err := s2.Topics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantTopics := []Topic{topics[1], topics[0], topics[2]} // by name
	if !reflect.DeepEqual(gotTopics, wantTopics) {
		t.Errorf("topics after reopen = %+v\nwant %+v", gotTopics, wantTopics)
	}
	gotOffs, err := s2.AllOffsets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(gotOffs) != len(offs) || !reflect.DeepEqual(gotOffs, wantOffs) {
		t.Errorf("offsets after reopen = %+v\nwant %+v", gotOffs, wantOffs)
	}
}

// TestReadsDoNotWaitForWriter holds the one writer connection inside an open
// transaction and checks that reads still answer, and see only committed
// data. Were reads served by the writer's pool they would block until the
// deadline.
func TestReadsDoNotWaitForWriter(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, dbPath(t))
	if _, err := s.CreateTopic(ctx, Topic{Name: "committed", Queues: 1}); err != nil {
		t.Fatal(err)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`INSERT INTO topics VALUES ('uncommitted', 1, 0, 0, 0, 0)`); err != nil {
		t.Fatal(err)
	}

	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := s.Topic(rctx, "committed"); err != nil {
		t.Fatalf("read while a write is open: %v", err)
	}
	if _, err := s.Topic(rctx, "uncommitted"); !errors.Is(err, ErrNotFound) {
		t.Errorf("uncommitted topic: err = %v, want ErrNotFound", err)
	}
	ts, err := s.Topics(rctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 1 {
		t.Errorf("Topics during open write = %+v, want only the committed one", ts)
	}
}

// TestConcurrentReadersDuringWrites runs readers against a writer that
// commits batches in which every row carries the batch number: a reader must
// never see two batch numbers at once (each batch is one transaction), and
// the numbers it sees must never go backwards.
func TestConcurrentReadersDuringWrites(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, dbPath(t))
	const (
		batches = 40
		rows    = 300 // more than one INSERT chunk
		readers = 4
	)
	batch := func(n int64) []Offset {
		offs := make([]Offset, rows)
		for i := range offs {
			offs[i] = Offset{Group: "g", Topic: fmt.Sprintf("t%02d", i%10), Queue: i / 10, Next: n}
		}
		return offs
	}
	if err := s.CommitOffsets(ctx, batch(0)); err != nil {
		t.Fatal(err)
	}

	done := make(chan struct{})
	errc := make(chan error, readers)
	var wg, started sync.WaitGroup
	reads := make([]int, readers) // reads[r] is written by reader r only
	for r := range readers {
		wg.Add(1)
		started.Add(1)
		go func() {
			defer wg.Done()
			first := true
			defer func() {
				if first { // failed before its first read
					started.Done()
				}
			}()
			var last int64
			for {
				offs, err := s.Offsets(ctx, "g")
				if err != nil {
					errc <- fmt.Errorf("reader %d: %w", r, err)
					return
				}
				if len(offs) != rows {
					errc <- fmt.Errorf("reader %d: %d rows, want %d", r, len(offs), rows)
					return
				}
				seen := offs[0].Next
				for _, o := range offs {
					if o.Next != seen {
						errc <- fmt.Errorf("reader %d: torn batch: saw %d and %d", r, seen, o.Next)
						return
					}
				}
				if seen < last {
					errc <- fmt.Errorf("reader %d: went back from batch %d to %d", r, last, seen)
					return
				}
				last = seen
				if _, err := s.Topics(ctx); err != nil {
					errc <- fmt.Errorf("reader %d: %w", r, err)
					return
				}
				reads[r]++
				if first {
					first = false
					started.Done()
				}
				select {
				case <-done:
					return
				default:
				}
			}
		}()
	}

	// Start writing only once every reader is reading, so the two overlap.
	started.Wait()
	for n := int64(1); n <= batches; n++ {
		if err := s.CommitOffsets(ctx, batch(n)); err != nil {
			t.Fatal(err)
		}
		if n%10 == 0 {
			if _, err := s.CreateTopic(ctx, Topic{Name: fmt.Sprintf("topic-%d", n), Queues: 2}); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(done)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	offs, err := s.Offsets(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range offs {
		if o.Next != batches {
			t.Fatalf("final offset %+v, want Next %d", o, batches)
		}
	}
	t.Logf("reads per reader: %v", reads)
}
