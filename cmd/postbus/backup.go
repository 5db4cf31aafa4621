package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/postbus/postbus/broker/fsync"
	"github.com/postbus/postbus/broker/meta"
)

// backupFiles are the small files of a data directory that a backup keeps
// besides meta.db and the commitlog: the bus's delivery signing key
// (subscribers pin its public key) and the key that MACs pull receipts.
var backupFiles = []string{"signing.key", "receipt.key"}

// backup copies what cannot be rebuilt from a data directory, while a
// broker may be running on it: meta.db first (VACUUM INTO, a consistent
// snapshot), then the keys, then the commitlog segments oldest first. The
// log is copied after the metadata so that it is never older than it: a
// restored broker then finds every message whose topic meta.db knows, and
// refuses to start (naming them) over topics created during the copy,
// which --rebuild-metadata recreates. Derived state (consumequeue/,
// index/, checkpoint.json) is left out: a broker rebuilds it at start.
func backup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fset := flag.NewFlagSet("postbus backup", flag.ContinueOnError)
	fset.SetOutput(stderr)
	data := fset.String("data", "./data", "the data directory to back up (a broker may be running on it)")
	to := fset.String("to", "", "the directory to write the backup to; must not exist, be empty or hold only a failed backup's .incomplete")
	fset.Usage = func() {
		fmt.Fprint(stderr, "Usage: postbus backup --data DIR --to DIR\n\n"+
			"Copies meta.db (a consistent snapshot), the signing and receipt keys and the commitlog, in that\n"+
			"order, while a broker may be running. Start a broker on the copy to restore it.\n\n"+
			"The copy is written under DIR/.incomplete and moved into DIR when complete. A backup that fails\n"+
			"removes what it wrote; one that was killed leaves DIR/.incomplete: a DIR holding .incomplete is\n"+
			"not a backup. A new backup into a DIR holding only .incomplete removes it first.\n\nFlags:\n")
		fset.PrintDefaults()
	}
	if err := parseFlags(fset, args); err != nil {
		return err
	}
	if *to == "" {
		fmt.Fprintln(stderr, "postbus backup: --to is required")
		return errUsage
	}
	if inside, err := within(*to, *data); err != nil {
		return err
	} else if inside {
		return fmt.Errorf("--to %s is inside --data %s: a backup there would copy itself, and go with the data it is meant to survive; choose a directory outside it", *to, *data)
	}
	start := time.Now()
	entries, err := os.ReadDir(*to)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, e := range entries {
		if e.Name() != incompleteDir {
			return fmt.Errorf("backup directory %s is not empty", *to)
		}
	}
	// Everything is written under --to/.incomplete and moved into --to only
	// once all of it is durable: a backup that fails removes what it wrote,
	// and one killed part way leaves .incomplete, which marks it as no
	// backup (and which the next run into --to removes).
	stage := filepath.Join(*to, incompleteDir)
	if err := os.RemoveAll(stage); err != nil {
		return fmt.Errorf("remove the unfinished backup %s: %w", stage, err)
	}
	if err := os.MkdirAll(filepath.Join(stage, "commitlog"), 0o755); err != nil {
		return err
	}
	copied, total, err := backupInto(ctx, *data, stage)
	if err != nil {
		if rerr := os.RemoveAll(stage); rerr != nil {
			return fmt.Errorf("%w; and removing the unfinished backup %s failed (it is not a backup): %v", err, stage, rerr)
		}
		return err
	}
	if err := publishBackup(stage, *to); err != nil {
		// Part of it may be in --to already: .incomplete stays, marking
		// the whole of --to as no backup.
		return fmt.Errorf("%w; %s is not a backup (%s is left to say so)", err, *to, stage)
	}
	fmt.Fprintf(stdout, "backed up %s to %s: meta.db, %d commitlog segments (%d bytes) in %s\n",
		*data, *to, copied, total, time.Since(start).Round(time.Millisecond))
	return nil
}

// incompleteDir is where, inside --to, a backup is written until it is
// complete.
const incompleteDir = ".incomplete"

// backupInto copies data's meta.db, keys and commitlog segments into dir,
// in that order, and makes them durable.
func backupInto(ctx context.Context, data, dir string) (segments int, total int64, err error) {
	if err := meta.Backup(ctx, filepath.Join(data, "meta.db"), filepath.Join(dir, "meta.db")); err != nil {
		return 0, 0, err
	}
	for _, name := range backupFiles {
		if _, err := copyFile(filepath.Join(data, name), filepath.Join(dir, name), 0o600); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return 0, 0, fmt.Errorf("copy %s: %w", name, err)
		}
	}
	names, err := segmentNames(filepath.Join(data, "commitlog"))
	if err != nil {
		return 0, 0, err
	}
	for _, name := range names {
		n, err := copyAppendOnly(filepath.Join(data, "commitlog", name), filepath.Join(dir, "commitlog", name))
		if errors.Is(err, fs.ErrNotExist) && segments == 0 {
			continue // dropped by retention since it was listed
		}
		if err != nil {
			return 0, 0, err
		}
		total += n
		segments++
	}
	for _, d := range []string{filepath.Join(dir, "commitlog"), dir} {
		if err := fsync.Dir(d); err != nil {
			return 0, 0, err
		}
	}
	return segments, total, nil
}

// publishBackup moves the complete backup in stage into to, then removes
// stage: until then, stage's presence says the backup is not complete.
func publishBackup(stage, to string) error {
	entries, err := os.ReadDir(stage)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.Rename(filepath.Join(stage, e.Name()), filepath.Join(to, e.Name())); err != nil {
			return fmt.Errorf("move the backup into place: %w", err)
		}
	}
	if err := fsync.Dir(to); err != nil {
		return err
	}
	if err := os.Remove(stage); err != nil {
		return fmt.Errorf("move the backup into place: %w", err)
	}
	return fsync.Dir(to)
}

// segmentNames lists the commitlog's segments, oldest first (names are
// 20-digit zero-padded base offsets). Other files are not log: above all
// a segment being prepared (<base>.next), which is renamed into place or
// deleted at any time and holds nothing but zeros.
func segmentNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list commitlog: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() && isSegmentName(e.Name()) {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

func isSegmentName(name string) bool {
	if len(name) != 20 {
		return false
	}
	for _, c := range []byte(name) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// copyFile copies a small file and fsyncs the copy.
func copyFile(src, dst string, perm os.FileMode) (int64, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return 0, err
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return 0, err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return int64(len(b)), err
}

// copyAppendOnly copies a file that a writer may be appending to in place
// (a preallocated segment: bytes go from zero to their final value once,
// in order). It copies it, then reads the source again and zeroes the
// copy from the first byte that changed in between: a byte read the same
// twice was final (or still unwritten, and then so was everything the
// first pass read after it), so the copy is a prefix of what the writer
// wrote followed by zeros, which recovery reads as the end of the log
// (cutting a frame the prefix ends inside as a torn tail), never frames
// with holes in them.
func copyAppendOnly(src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	buf := make([]byte, 1<<20)
	var size int64
	for {
		n, err := in.ReadAt(buf, size)
		if n > 0 {
			if _, werr := out.WriteAt(buf[:n], size); werr != nil {
				return 0, fmt.Errorf("copy %s: %w", src, werr)
			}
			size += int64(n)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("copy %s: %w", src, err)
		}
	}
	again := make([]byte, len(buf))
	for off := int64(0); off < size; {
		n := int(min(int64(len(buf)), size-off))
		if _, err := io.ReadFull(io.NewSectionReader(out, off, int64(n)), buf[:n]); err != nil {
			return 0, fmt.Errorf("verify copy of %s: %w", src, err)
		}
		if _, err := io.ReadFull(io.NewSectionReader(in, off, int64(n)), again[:n]); err != nil {
			return 0, fmt.Errorf("verify copy of %s: %w", src, err)
		}
		if i := firstDiff(buf[:n], again[:n]); i >= 0 {
			cut := off + int64(i)
			err := out.Truncate(cut)
			if err == nil {
				err = out.Truncate(size)
			}
			if err != nil {
				return 0, fmt.Errorf("copy %s: %w", src, err)
			}
			break
		}
		off += int64(n)
	}
	if err := out.Sync(); err != nil {
		return 0, fmt.Errorf("copy %s: %w", src, err)
	}
	return size, nil
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// within reports whether path is dir or lies below it, comparing absolute,
// cleaned paths (the directories need not exist yet).
func within(path, dir string) (bool, error) {
	p, err := filepath.Abs(path)
	if err != nil {
		return false, err
	}
	d, err := filepath.Abs(dir)
	if err != nil {
		return false, err
	}
	rel, err := filepath.Rel(d, p)
	if err != nil {
		return false, nil
	}
	return rel == "." || (rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))), nil
}
