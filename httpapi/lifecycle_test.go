package httpapi

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
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
