package meta

import (
	"context"
	"path/filepath"
	"testing"
)

// TestBackupWhileOpen: Backup copies what is committed while another
// connection holds the database open and keeps writing; the copy opens as
// a store of its own, and Backup never overwrites a file.
func TestBackupWhileOpen(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, dbPath(t))
	if _, err := s.CreateTopic(ctx, Topic{Name: "orders", Queues: 3}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTopic(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateTopic(ctx, Topic{Name: "payments", Queues: 2}); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "copy.db")
	if err := Backup(ctx, s.path, dst); err != nil {
		t.Fatalf("Backup: %v", err)
	}
	if _, err := s.CreateTopic(ctx, Topic{Name: "later", Queues: 1}); err != nil {
		t.Fatal(err)
	}
	if err := Backup(ctx, s.path, dst); err == nil {
		t.Fatal("Backup over an existing file: nil error")
	}
	c := openStore(t, dst)
	ts, err := c.Topics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 1 || ts[0].Name != "payments" || ts[0].Queues != 2 {
		t.Fatalf("topics in the copy: %+v, want payments only", ts)
	}
	if del, err := c.DeletedTopics(ctx); err != nil || len(del) != 1 {
		t.Fatalf("deleted topics in the copy: %v, %v", del, err)
	}
	if c.Fresh() {
		t.Fatal("the copy opened as a fresh database")
	}
}
