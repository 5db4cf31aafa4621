package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCopyAppendOnly: a file written in place from its start while it is
// copied (as the newest commitlog segment is) copies as a prefix of its
// final content followed by zeros, never with a hole inside the prefix.
func TestCopyAppendOnly(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		r := rand.New(rand.NewPCG(seed, seed))
		dir := t.TempDir()
		src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
		const size = 4 << 20
		if err := os.WriteFile(src, make([]byte, size), 0o644); err != nil { // preallocated
			t.Fatal(err)
		}
		final := make([]byte, size)
		for i := range final {
			final[i] = byte(1 + r.IntN(255)) // never zero: any hole shows
		}
		f, err := os.OpenFile(src, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := 0; off < size; {
				n := min(1+r.IntN(64<<10), size-off)
				if _, err := f.WriteAt(final[off:off+n], int64(off)); err != nil {
					t.Error(err)
					return
				}
				off += n
			}
		}()
		n, err := copyAppendOnly(src, dst)
		wg.Wait()
		f.Close()
		if err != nil || n != size {
			t.Fatalf("seed %d: copyAppendOnly = %d, %v", seed, n, err)
		}
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		k := bytes.IndexByte(got, 0)
		if k < 0 {
			k = len(got)
		}
		if !bytes.Equal(got[:k], final[:k]) || bytes.Count(got[k:], []byte{0}) != len(got)-k {
			t.Fatalf("seed %d: the copy is not a prefix of the final content followed by zeros (prefix %d bytes)", seed, k)
		}
	}
}

// TestBackupWhileRunning: postbus backup copies a data directory while a
// broker publishes into it; a broker started on the copy serves every
// message acknowledged before the backup began, and nothing else is needed.
func TestBackupWhileRunning(t *testing.T) {
	data := t.TempDir()
	p := start(t, "broker", "--data", data, "--auto-create-topics", "--segment-size", "8MiB", "--max-message-bytes", "64KiB")
	post := func(body string) string {
		resp, err := http.Post(p.url+"/v1/topics/orders/messages", "text/plain", strings.NewReader(body))
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		var res struct {
			MsgID string `json:"msg_id"`
		}
		if json.NewDecoder(resp.Body).Decode(&res) != nil || resp.StatusCode != http.StatusCreated {
			return ""
		}
		return res.MsgID
	}
	var before []string
	for i := range 300 {
		id := post(strings.Repeat("x", 5000) + string(rune('a'+i%26)))
		if id == "" {
			t.Fatal("publish failed")
		}
		before = append(before, id)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // keeps the newest segment changing during the copy
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				post(strings.Repeat("y", 3000))
			}
		}
	}()
	to := filepath.Join(t.TempDir(), "backup")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, postbusBin, "backup", "--data", data, "--to", to).CombinedOutput()
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("postbus backup: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "backed up") {
		t.Errorf("postbus backup said: %s", out)
	}
	for _, skipped := range []string{"consumequeue", "index", "checkpoint.json"} {
		if _, err := os.Stat(filepath.Join(to, skipped)); err == nil {
			t.Errorf("the backup holds %s, which is derived", skipped)
		}
	}

	q := start(t, "broker", "--data", to, "--segment-size", "8MiB", "--max-message-bytes", "64KiB")
	for _, id := range before {
		var m struct {
			Topic string `json:"topic"`
		}
		getJSON(t, q.url+"/v1/messages/"+id, &m)
		if m.Topic != "orders" {
			t.Fatalf("message %s in the restored broker: topic %q", id, m.Topic)
		}
	}
}

// A running broker keeps the next segment prepared as <base>.next, renamed
// into place at any time: a backup copies segments only (listing the .next
// file made it fail when the rename came first). A backup that fails
// leaves nothing in --to, so running it again works; the .incomplete
// directory a killed one leaves is removed by the next.
func TestBackupSkipsNextAndFailsClean(t *testing.T) {
	data := t.TempDir()
	p := start(t, "broker", "--data", data, "--auto-create-topics", "--segment-size", "1MiB")
	resp, err := http.Post(p.url+"/v1/topics/t/messages", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	next := func(dir string) []string {
		m, err := filepath.Glob(filepath.Join(dir, "commitlog", "*.next"))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(next(data)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the broker prepared no .next segment within 30s")
		}
		time.Sleep(10 * time.Millisecond) // polling for a condition, not an assertion
	}
	run := func(to string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return exec.CommandContext(ctx, postbusBin, "backup", "--data", data, "--to", to).CombinedOutput()
	}
	to := filepath.Join(t.TempDir(), "backup")
	if out, err := run(to); err != nil {
		t.Fatalf("postbus backup: %v\n%s", err, out)
	}
	if m := next(to); len(m) != 0 {
		t.Errorf("the backup holds the segment being prepared: %v", m)
	}
	if _, err := os.Stat(filepath.Join(to, ".incomplete")); err == nil {
		t.Error("a complete backup holds .incomplete")
	}
	for _, name := range []string{"meta.db", "signing.key", "receipt.key", "commitlog/00000000000000000000"} {
		if _, err := os.Stat(filepath.Join(to, name)); err != nil {
			t.Errorf("the backup lacks %s: %v", name, err)
		}
	}

	// A key that cannot be read fails the backup after meta.db was copied.
	key := filepath.Join(data, "receipt.key")
	if err := os.Rename(key, key+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(key, 0o700); err != nil {
		t.Fatal(err)
	}
	failed := filepath.Join(t.TempDir(), "failed")
	if out, err := run(failed); err == nil {
		t.Fatalf("postbus backup with receipt.key a directory succeeded:\n%s", out)
	}
	if entries, _ := os.ReadDir(failed); len(entries) != 0 {
		t.Fatalf("a failed backup left %v in --to", entries)
	}
	if err := os.Remove(key); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(key+".moved", key); err != nil {
		t.Fatal(err)
	}
	// What a killed backup leaves.
	if err := os.MkdirAll(filepath.Join(failed, ".incomplete", "commitlog"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(failed, ".incomplete", "meta.db"), []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(failed); err != nil {
		t.Fatalf("postbus backup over a failed one: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(failed, ".incomplete")); err == nil {
		t.Error("the backup over a killed one kept .incomplete")
	}
}

// TestBackupIntoDataRefused: --to inside --data (or equal to it) is
// refused before anything is written: the backup would copy itself and go
// with the data it is meant to survive (hostile pass).
func TestBackupIntoDataRefused(t *testing.T) {
	data := t.TempDir()
	for _, to := range []string{data, filepath.Join(data, "backup"), filepath.Join(data, "a", "..", "b")} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, postbusBin, "backup", "--data", data, "--to", to).CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), "is inside --data") {
			t.Errorf("backup --to %s: %v\n%s\nwant a refusal naming --data", to, err, out)
		}
		if to != data {
			if _, err := os.Stat(to); !os.IsNotExist(err) {
				t.Errorf("backup --to %s created it (%v)", to, err)
			}
		}
	}
	// A sibling whose name starts like the data directory's is outside it.
	if inside, err := within(data+"-backup", data); err != nil || inside {
		t.Errorf("within(%s-backup, %s) = %v, %v; want false", data, data, inside, err)
	}
}
