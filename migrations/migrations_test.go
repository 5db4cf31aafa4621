package migrations

import (
	"io/fs"
	"regexp"
	"strconv"
	"testing"
)

var fileName = regexp.MustCompile(`^([0-9]{4})_[a-z0-9_]+\.sql$`)

// TestFileNames keeps the directory loadable: every file well named, versions
// increasing from 1 without duplicates (a number may be skipped while it is
// reserved for a change made elsewhere), none empty.
func TestFileNames(t *testing.T) {
	entries, err := fs.ReadDir(FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 {
		t.Fatal("no migrations embedded")
	}
	prev := 0
	for _, e := range entries { // ReadDir sorts by name
		m := fileName.FindStringSubmatch(e.Name())
		if m == nil {
			t.Fatalf("%s: want NNNN_lower_snake.sql", e.Name())
		}
		v, _ := strconv.Atoi(m[1])
		if v <= prev || (prev == 0 && v != 1) {
			t.Errorf("%s: version %d after %d (versions increase from 1, no duplicates)", e.Name(), v, prev)
		}
		prev = v
		b, err := fs.ReadFile(FS, e.Name())
		if err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 {
			t.Errorf("%s: empty", e.Name())
		}
	}
}
