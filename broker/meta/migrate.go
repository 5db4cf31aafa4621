package meta

import (
	"context"
	"fmt"
	"io/fs"
	"regexp"
	"strconv"
	"time"
)

// migration is one NNNN_name.sql file.
type migration struct {
	version int
	name    string // file name, recorded in schema_migrations for people
	sql     string
}

var migrationName = regexp.MustCompile(`^([0-9]{4})_[a-z0-9_]+\.sql$`)

// loadMigrations reads every .sql file at the root of fsys and checks that the
// versions increase without duplicates. A number may be missing: it is
// reserved for a file being written elsewhere, which migrate applies when it
// arrives, whatever higher versions the database already has.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var migs []migration
	for _, e := range entries { // sorted by name, hence by version
		if e.IsDir() {
			continue
		}
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("migration %q: name must be NNNN_lower_snake.sql", e.Name())
		}
		v, _ := strconv.Atoi(m[1]) // four digits: cannot fail
		switch {
		case len(migs) == 0 && v != 1:
			return nil, fmt.Errorf("migration %q: version %d, want 1 first", e.Name(), v)
		case len(migs) > 0 && v <= migs[len(migs)-1].version:
			return nil, fmt.Errorf("migration %q: version %d repeats (versions must increase)", e.Name(), v)
		}
		b, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("read migration %q: %w", e.Name(), err)
		}
		migs = append(migs, migration{version: v, name: e.Name(), sql: string(b)})
	}
	if len(migs) == 0 {
		return nil, fmt.Errorf("no migrations found")
	}
	return migs, nil
}

const createSchemaMigrations = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at TEXT    NOT NULL
) STRICT`

// migrate applies the migrations the database lacks, in version order, each
// in its own transaction with the row recording it, and refuses a database
// that records a version migs does not have (written by a newer binary).
// A version below the database's highest is applied too when it is
// missing: its number was reserved while a later file shipped first.
func (s *Store) migrate(ctx context.Context, migs []migration) error {
	if err := s.write(ctx, func(tx Tx) error {
		_, err := tx.ExecContext(ctx, createSchemaMigrations)
		return err
	}); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}

	known := make(map[int]bool, len(migs))
	for _, m := range migs {
		known[m.version] = true
	}
	latest := migs[len(migs)-1].version
	for _, m := range migs {
		applied := false
		err := s.write(ctx, func(tx Tx) error {
			// Read the versions inside the immediate transaction: another
			// process opening the same file at the same time cannot slip
			// in between the check and the apply.
			rows, err := tx.QueryContext(ctx, `SELECT version FROM schema_migrations`)
			if err != nil {
				return fmt.Errorf("read schema versions: %w", err)
			}
			have := map[int]bool{}
			for rows.Next() {
				var v int
				if err := rows.Scan(&v); err != nil {
					rows.Close()
					return fmt.Errorf("read schema versions: %w", err)
				}
				have[v] = true
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return fmt.Errorf("read schema versions: %w", err)
			}
			for v := range have {
				if !known[v] {
					return fmt.Errorf("%w: database has migration %d, this binary knows up to %d without it; refusing to open (upgrade postbus or restore a matching backup)",
						ErrSchemaTooNew, v, latest)
				}
			}
			if have[m.version] {
				return nil
			}
			if len(have) == 0 {
				s.fresh = true
			}
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("apply migration %s: %w", m.name, err)
			}
			if _, err := tx.ExecContext(ctx,
				`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
				m.version, m.name, s.now().UTC().Format(time.RFC3339Nano)); err != nil {
				return fmt.Errorf("record migration %s: %w", m.name, err)
			}
			applied = true
			return nil
		})
		if err != nil {
			return err
		}
		if applied {
			s.log.InfoContext(ctx, "applied schema migration",
				logKeyPath, s.path, logKeyVersion, m.version, logKeyName, m.name)
		}
	}
	return nil
}

// SchemaVersion reports the highest migration version applied to the database.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	if err := s.r.QueryRowContext(ctx,
		`SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}
