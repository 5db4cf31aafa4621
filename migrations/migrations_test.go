package migrations

import (
	"io/fs"
	"regexp"
	"strconv"
	"testing"
)

var fileName = regexp.MustCompile(`^([0-9]{4})_[a-z0-9_]+\.sql$`)

// TestFileNames keeps the directory loadable: every file well named, versions
// 1..N without gaps or duplicates, none empty.
func TestFileNames(t *testing.T) {
	entries, err := fs.ReadDir(FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 {
		t.Fatal("no migrations embedded")
	}
	for i, e := range entries { // ReadDir sorts by name
		m := fileName.FindStringSubmatch(e.Name())
		if m == nil {
			t.Fatalf("%s: want NNNN_lower_snake.sql", e.Name())
		}
		v, _ := strconv.Atoi(m[1])
		if got, want := v, i+1; got != want {
			t.Errorf("%s: version %d, want %d (no gaps, no duplicates)", e.Name(), got, want)
		}
		b, err := fs.ReadFile(FS, e.Name())
		if err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 {
			t.Errorf("%s: empty", e.Name())
		}
	}
}
