package main

import (
	"context"
	"encoding/json"
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
