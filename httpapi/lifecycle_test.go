package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postbus/postbus/broker"
)

// TestDedupAcrossTopicRecreateOverHTTP: after DELETE and PUT of a topic, a
// publish with a dedup id the deleted topic saw is stored (201), not
// answered as a duplicate of the deleted topic's message (200).
func TestDedupAcrossTopicRecreateOverHTTP(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	pub := func(body string) (int, publishResult) {
		t.Helper()
		resp, data := do(t, "POST", srv.URL+"/v1/topics/orders/messages", map[string]string{"Postbus-Dedup-Id": "d-1"}, strings.NewReader(body))
		var res publishResult
		if err := json.Unmarshal(data, &res); err != nil {
			t.Fatalf("publish: %d %s", resp.StatusCode, data)
		}
		return resp.StatusCode, res
	}
	if status, _ := pub("first"); status != http.StatusCreated {
		t.Fatalf("first publish: %d", status)
	}
	for _, req := range []struct{ method, body string }{{"DELETE", ""}, {"PUT", `{"queues":2}`}} {
		if resp, data := do(t, req.method, srv.URL+"/v1/topics/orders", nil, strings.NewReader(req.body)); resp.StatusCode >= 300 {
			t.Fatalf("%s topic: %d %s", req.method, resp.StatusCode, data)
		}
	}
	status, res := pub("second")
	if status != http.StatusCreated || res.Duplicate {
		t.Fatalf("publish to the re-created topic: %d duplicate=%v, want 201 and a new message", status, res.Duplicate)
	}
	resp, data := do(t, "GET", srv.URL+"/v1/messages/"+res.MsgID+"/body", nil, nil)
	if resp.StatusCode != http.StatusOK || string(data) != "second" {
		t.Fatalf("the new message's body: %d %q", resp.StatusCode, data)
	}
}

// TestDelayedMessageOverHTTP: a waiting delayed message reads back by id
// with the queue offset its publish answered, -1.
func TestDelayedMessageOverHTTP(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	resp, data := do(t, "POST", srv.URL+"/v1/topics/orders/messages", map[string]string{"Postbus-Delay": "1h", "Postbus-Keys": "k"}, strings.NewReader("later"))
	var res publishResult
	if err := json.Unmarshal(data, &res); err != nil || resp.StatusCode != http.StatusCreated || res.QueueOffset != -1 {
		t.Fatalf("delayed publish: %d %s", resp.StatusCode, data)
	}
	resp, data = do(t, "GET", srv.URL+"/v1/messages/"+res.MsgID, nil, nil)
	var got struct {
		QueueOffset *int64 `json:"queue_offset"`
	}
	if err := json.Unmarshal(data, &got); err != nil || resp.StatusCode != http.StatusOK || got.QueueOffset == nil {
		t.Fatalf("delayed message by id: %d %s", resp.StatusCode, data)
	}
	if *got.QueueOffset != -1 {
		t.Errorf("delayed message by id: queue_offset %d, want -1 as its publish answered", *got.QueueOffset)
	}
}

// TestDamagedMessageOverHTTP: a message whose record was damaged on disk
// while the broker was stopped answers 500 message_damaged; every other
// message, and its query by key, reads as before.
func TestDamagedMessageOverHTTP(t *testing.T) {
	ctx := context.Background()
	cfg := broker.DefaultConfig(t.TempDir())
	cfg.AutoCreateTopics = true
	b, err := broker.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, body := range []string{"victim: a body long enough to hold the flipped byte", "survivor"} {
		r, err := b.Publish(ctx, "orders", []*broker.Message{{Body: []byte(body), Keys: []string{"k"}}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r[0].ID)
	}
	victim, err := b.Message(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(cfg.Dir, "commitlog", fmt.Sprintf("%020d", 0)), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	at := victim.LogOffset + 12 + 80 // inside the record, past the frame header
	one := make([]byte, 1)
	if _, err := f.ReadAt(one, at); err != nil {
		t.Fatal(err)
	}
	one[0] ^= 0xff
	if _, err := f.WriteAt(one, at); err != nil {
		t.Fatal(err)
	}
	f.Close()

	b, err = broker.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open with a damaged record: %v", err)
	}
	srv := httptest.NewServer(mustNew(t, Config{Broker: b}))
	t.Cleanup(func() {
		srv.Close()
		b.Close()
	})
	resp, data := do(t, "GET", srv.URL+"/v1/messages/"+ids[0], nil, nil)
	var p problem
	if err := json.Unmarshal(data, &p); err != nil || resp.StatusCode != http.StatusInternalServerError || p.Code != "message_damaged" {
		t.Errorf("the damaged message: %d %s, want 500 message_damaged", resp.StatusCode, data)
	}
	if resp, data := do(t, "GET", srv.URL+"/v1/messages/"+ids[1]+"/body", nil, nil); resp.StatusCode != http.StatusOK || string(data) != "survivor" {
		t.Errorf("the other message: %d %q", resp.StatusCode, data)
	}
	resp, data = do(t, "GET", srv.URL+"/v1/topics/orders/messages?key=k", nil, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(data), ids[1]) || strings.Contains(string(data), ids[0]) {
		t.Errorf("by key: %d %s, want the survivor only", resp.StatusCode, data)
	}
}
