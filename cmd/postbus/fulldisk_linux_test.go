package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
)

// TestFullDisk runs the broker on a small tmpfs: when the disk fills, a
// publish is refused with 507 disk_full, nothing half-written is left, and
// everything acknowledged before is intact.
func TestFullDisk(t *testing.T) {
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=24m"); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	// Room for the first segment, the next one prepared and the metadata,
	// so that the broker starts; the third segment is what does not fit.
	// Watermarks at 100% so the real ENOSPC path is what refuses.
	p := start(t, "broker", "--data", mnt, "--auto-create-topics", "--segment-size", "8MiB", "--max-message-bytes", "256KiB",
		"--disk-clean-ratio", "1", "--disk-full-ratio", "1")

	// One queue, so the refused publish and the later small one share it.
	req, _ := http.NewRequest("PUT", p.url+"/v1/topics/full", strings.NewReader(`{"queues":1}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create topic: %d", resp.StatusCode)
	}
	body := bytes.Repeat([]byte("f"), 64<<10)
	var ids []string
	var refused *http.Response
	var problem struct {
		Code   string `json:"code"`
		Status int    `json:"status"`
	}
	for i := 0; i < 500 && refused == nil; i++ {
		resp, err := http.Post(p.url+"/v1/topics/full/messages", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var res struct {
			MsgID string `json:"msg_id"`
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusCreated:
			if err := json.Unmarshal(raw, &res); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, res.MsgID)
		case http.StatusInsufficientStorage:
			refused = resp
			if err := json.Unmarshal(raw, &problem); err != nil {
				t.Fatalf("507 body is not a problem: %s", raw)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("507 content type %q", ct)
			}
		default:
			t.Fatalf("publish %d: unexpected status %d: %s", i, resp.StatusCode, raw)
		}
	}
	if refused == nil {
		t.Fatal("the disk never filled")
	}
	if problem.Code != "disk_full" || problem.Status != 507 {
		t.Fatalf("problem = %+v, want disk_full 507", problem)
	}
	if len(ids) == 0 {
		t.Fatal("nothing was stored before the disk filled")
	}
	var topic struct {
		Messages int64 `json:"messages"`
		Queues   []struct {
			MaxOffset int64 `json:"max_offset"`
		} `json:"queues"`
	}
	getJSON(t, p.url+"/v1/topics/full", &topic)
	if topic.Messages != int64(len(ids)) {
		t.Fatalf("topic holds %d messages, %d were acknowledged: a refused publish left something behind", topic.Messages, len(ids))
	}
	// The refused append gave its queue offsets back: a small message,
	// which still fits in the last segment, takes the next offset of its
	// queue, with no gap.
	resp, err = http.Post(p.url+"/v1/topics/full/messages", "text/plain", strings.NewReader("small"))
	if err != nil {
		t.Fatal(err)
	}
	var small struct {
		QueueID     int   `json:"queue_id"`
		QueueOffset int64 `json:"queue_offset"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&small); err != nil {
		t.Fatalf("decode: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("a small publish after the refusal: %d", resp.StatusCode)
	}
	if want := topic.Queues[small.QueueID].MaxOffset; small.QueueOffset != want {
		t.Fatalf("small message got queue offset %d in queue %d, want %d: the refused publish kept its offsets", small.QueueOffset, small.QueueID, want)
	}
	for _, id := range ids {
		resp, err := http.Get(p.url + "/v1/messages/" + id + "/body")
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(got, body) {
			t.Fatalf("message %s after the disk filled: status %d, %d bytes", id, resp.StatusCode, len(got))
		}
	}
}
