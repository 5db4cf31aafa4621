package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(tb testing.TB) {
	tb.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		tb.Fatal("postbus did not exit within 20s of SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		tb.Fatalf("exit code %d after SIGTERM:\n%s", code, p.Logs())
	}
}

// TestLostMetaDBRefusedThenRebuilt: the real binary with its meta.db gone
// (and the crash-era -wal with it) used to start ready and answer 404 for
// every stored message. It now exits 1 saying which file is missing and
// what to do; with --rebuild-metadata it starts, says at ERROR what is
// lost, and serves every message again.
func TestLostMetaDBRefusedThenRebuilt(t *testing.T) {
	data := t.TempDir()
	p := start(t, "broker", "--data", data, "--auto-create-topics")
	var ids []string
	for i := range 20 {
		resp, err := http.Post(p.url+"/v1/topics/orders/messages", "text/plain", strings.NewReader("order "+string(rune('a'+i))))
		if err != nil {
			t.Fatal(err)
		}
		var res struct {
			MsgID string `json:"msg_id"`
		}
		err = json.NewDecoder(resp.Body).Decode(&res)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("publish %d: %d, %v", i, resp.StatusCode, err)
		}
		ids = append(ids, res.MsgID)
	}
	p.stop(t)
	for _, suffix := range []string{"", "-wal", "-shm"} {
		os.Remove(filepath.Join(data, "meta.db"+suffix))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, postbusBin, "broker", "--data", data, "--addr", "127.0.0.1:0")
	out, _ := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit code %d without meta.db, want 1; output:\n%s", code, out)
	}
	for _, want := range []string{filepath.Join(data, "meta.db"), "is missing", "--rebuild-metadata"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("refusal does not say %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(data, "meta.db")); err == nil {
		t.Error("the refused start created meta.db")
	}

	p = start(t, "broker", "--data", data, "--rebuild-metadata")
	for _, id := range ids {
		var m struct {
			Body  string `json:"body"`
			Topic string `json:"topic"`
		}
		getJSON(t, p.url+"/v1/messages/"+id, &m)
		if m.Topic != "orders" || !strings.HasPrefix(m.Body, "order ") {
			t.Fatalf("message %s after rebuild: %+v", id, m)
		}
	}
	logs := p.Logs()
	for _, want := range []string{`"level":"ERROR","msg":"rebuild: cannot be recovered from the commitlog"`, `"msg":"metadata rebuilt from the commitlog"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
	p.stop(t)
	p = start(t, "broker", "--data", data)
	getJSON(t, p.url+"/v1/messages/"+ids[0], new(map[string]any))
}

// TestDamagedWALAfterCrashRefused: a SIGKILL leaves the topic's creation
// in meta.db-wal only; with that file damaged SQLite ignores it, and the
// broker used to start ready without the topic, answering 404 and deleting
// its queues. It now exits 1 naming meta.db, and --rebuild-metadata gets
// the messages back.
func TestDamagedWALAfterCrashRefused(t *testing.T) {
	data := t.TempDir()
	p := start(t, "broker", "--data", data)
	req, _ := http.NewRequest(http.MethodPut, p.url+"/v1/topics/orders", strings.NewReader(`{"queues":2}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("PUT topic: %d", resp.StatusCode)
	}
	var ids []string
	for i := range 5 {
		resp, err := http.Post(p.url+"/v1/topics/orders/messages", "text/plain", strings.NewReader("order "+string(rune('a'+i))))
		if err != nil {
			t.Fatal(err)
		}
		var res struct {
			MsgID string `json:"msg_id"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
			t.Fatalf("decode: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("publish: %d", resp.StatusCode)
		}
		ids = append(ids, res.MsgID)
	}
	p.cmd.Process.Kill()
	<-p.done

	wal := filepath.Join(data, "meta.db-wal")
	b, err := os.ReadFile(wal)
	if err != nil || len(b) < 32 {
		t.Fatalf("meta.db-wal after SIGKILL: %d bytes, %v; want the topic's creation in it", len(b), err)
	}
	for i := 16; i < 32; i++ { // salts and header checksum
		b[i] ^= 0xff
	}
	if err := os.WriteFile(wal, b, 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, postbusBin, "broker", "--data", data, "--addr", "127.0.0.1:0")
	out, _ := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit code %d with a damaged meta.db-wal, want 1; output:\n%s", code, out)
	}
	for _, want := range []string{filepath.Join(data, "meta.db"), "--rebuild-metadata"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("refusal does not say %q:\n%s", want, out)
		}
	}

	p = start(t, "broker", "--data", data, "--rebuild-metadata")
	for _, id := range ids {
		var m struct {
			Topic string `json:"topic"`
		}
		getJSON(t, p.url+"/v1/messages/"+id, &m)
		if m.Topic != "orders" {
			t.Fatalf("message %s after rebuild: topic %q", id, m.Topic)
		}
	}
}

// TestDamagedMetaDBRefusedThenRebuilt: meta.db with 8 KiB of garbage at
// its middle after a clean stop (S4-5). The broker used to start ready
// while every timer write failed (delayed publishes answered 201 and were
// never delivered, PUT topic 500), and --rebuild-metadata kept the file and
// exited 1 without a way out. Now the start is refused naming the file and
// --rebuild-metadata; the rebuild moves the file aside
// (meta.db.damaged-<time>), says what it cannot rebuild, and serves every
// message and timer again.
func TestDamagedMetaDBRefusedThenRebuilt(t *testing.T) {
	const seed = 5
	data := t.TempDir()
	p := start(t, "broker", "--data", data, "--auto-create-topics")
	publish := func(p *proc, body string, hdr map[string]string) string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, p.url+"/v1/topics/orders/messages", strings.NewReader(body))
		req.Header.Set("Content-Type", "text/plain")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var res struct {
			MsgID string `json:"msg_id"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&res); err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("publish %q: %d, %v", body, resp.StatusCode, err)
		}
		return res.MsgID
	}
	var ids []string
	for i := range 300 {
		ids = append(ids, publish(p, fmt.Sprintf("order %d %s", i, strings.Repeat("x", 2000)), nil))
	}
	// Timers and consumer offsets, so the file has something to lose.
	var delayed []string
	for i := range 5 {
		delayed = append(delayed, publish(p, fmt.Sprintf("later %d", i), map[string]string{"Postbus-Delay": "3s"}))
	}
	resp, err := http.Post(p.url+"/v1/groups/g/topics/orders/pull?max=10", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	p.stop(t)

	path := filepath.Join(data, "meta.db")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 8<<10)
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := range junk {
		junk[i] = byte(rng.Uint32())
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(junk, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	f.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, postbusBin, "broker", "--data", data, "--addr", "127.0.0.1:0")
	out, _ := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit code %d with a damaged meta.db (seed %d, %d bytes at %d), want 1; output:\n%s", code, seed, len(junk), fi.Size()/2, out)
	}
	for _, want := range []string{path, "is damaged", "--rebuild-metadata"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("refusal does not say %q:\n%s", want, out)
		}
	}

	p = start(t, "broker", "--data", data, "--rebuild-metadata")
	asides, _ := filepath.Glob(filepath.Join(data, "meta.db.damaged-*"))
	if len(asides) == 0 {
		t.Errorf("the damaged meta.db was not moved aside as meta.db.damaged-<time>")
	}
	for _, id := range ids {
		var m struct {
			Topic string `json:"topic"`
		}
		getJSON(t, p.url+"/v1/messages/"+id, &m)
		if m.Topic != "orders" {
			t.Fatalf("message %s after rebuild: topic %q", id, m.Topic)
		}
	}
	logs := p.Logs()
	for _, want := range []string{`"level":"ERROR","msg":"rebuild: cannot be recovered from the commitlog"`, `meta.db.damaged-`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
	// The timers came back: the delayed messages, and a new one, reach
	// their queue (a pull from the start of the topic sees them).
	delayed = append(delayed, publish(p, "after the rebuild", map[string]string{"Postbus-Delay": "1s"}))
	want := make(map[string]bool)
	for _, id := range delayed {
		want[id] = true
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(want) > 0 && time.Now().Before(deadline) {
		resp, err := http.Post(p.url+"/v1/groups/after/topics/orders/pull?max=32&wait=1s", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			Messages []struct {
				MsgID string `json:"msg_id"`
			} `json:"messages"`
		}
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("pull: %d, %v", resp.StatusCode, err)
		}
		for _, m := range got.Messages {
			delete(want, m.MsgID)
		}
	}
	if len(want) > 0 {
		t.Fatalf("%d delayed messages never reached their queue after the rebuild: %v", len(want), want)
	}
	p.stop(t)
	p = start(t, "broker", "--data", data)
	getJSON(t, p.url+"/v1/messages/"+ids[0], new(map[string]any))
}
