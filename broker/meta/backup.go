package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	"github.com/postbus/postbus/broker/internal/durable"
)

// Backup writes a consistent copy of the database at src to dst, which
// must not exist, with SQLite's VACUUM INTO through a read-only connection:
// it may run while a broker has the database open (WAL lets it read the
// last committed state beside the writer). The copy is fsynced, and so is
// its directory, before Backup returns.
func Backup(ctx context.Context, src, dst string) error {
	absSrc, err := filepath.Abs(src)
	if err != nil {
		return fmt.Errorf("back up metadata: %w", err)
	}
	absDst, err := filepath.Abs(dst)
	if err != nil {
		return fmt.Errorf("back up metadata: %w", err)
	}
	if _, err := os.Stat(absSrc); err != nil {
		return fmt.Errorf("back up metadata %s: %w", absSrc, err)
	}
	if _, err := os.Stat(absDst); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("back up metadata to %s: the file exists (or cannot be checked: %v)", absDst, err)
	}
	db, err := sql.Open("sqlite", dsn(absSrc, url.Values{
		"mode":    {"ro"},
		"_pragma": {fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds())},
	}))
	if err != nil {
		return fmt.Errorf("back up metadata %s: %w", absSrc, err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `VACUUM INTO ?`, absDst); err != nil {
		return fmt.Errorf("back up metadata %s: vacuum into %s: %w", absSrc, absDst, err)
	}
	f, err := os.Open(absDst)
	if err != nil {
		return fmt.Errorf("back up metadata: %w", err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = durable.SyncDir(filepath.Dir(absDst))
	}
	if err != nil {
		return fmt.Errorf("back up metadata: sync %s: %w", absDst, err)
	}
	return nil
}
