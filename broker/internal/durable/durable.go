// Package durable holds the file-system steps that make a change survive a
// crash: an fsync of the directory after entries are created, renamed or
// removed in it, and the temp-file, fsync, rename, directory-fsync dance that
// replaces a small file so that a crash leaves the old content or the new,
// never a mix. Every step goes through a vfs.FS, so that tests can fail or
// crash it.
package durable

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/postbus/postbus/broker/internal/vfs"
)

// SyncDir fsyncs a directory so that entries created, renamed or removed in
// it survive a crash.
func SyncDir(fsys vfs.FS, dir string) error {
	return fsys.SyncDir(dir)
}

// WriteFile replaces path with data atomically and durably.
func WriteFile(fsys vfs.FS, path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := fsys.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, perm)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = fsys.Write(f, data)
	if err == nil {
		err = fsys.Sync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tmp, path)
	}
	if err != nil {
		_ = fsys.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(fsys, filepath.Dir(path))
}
