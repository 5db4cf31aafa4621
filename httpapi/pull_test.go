package httpapi

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

type pullAnswer struct {
	Messages []pulledJSON `json:"messages"`
}

func TestPullOverHTTP(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	for _, body := range []string{"one", "two", "three"} {
		do(t, "POST", srv.URL+"/v1/topics/jobs/messages", map[string]string{"Postbus-Tag": "t"}, strings.NewReader(body))
	}
	resp, data := do(t, "POST", srv.URL+"/v1/groups/workers/topics/jobs/pull?max=2&wait=1s&visibility=30s", nil, nil)
	var got pullAnswer
	if resp.StatusCode != 200 || json.Unmarshal(data, &got) != nil || len(got.Messages) != 2 {
		t.Fatalf("pull: %d %s", resp.StatusCode, data)
	}
	m := got.Messages[0]
	if m.Receipt == "" || m.Attempt != 1 || m.Topic != "jobs" || m.Tag != "t" || m.Encoding != "utf8" {
		t.Fatalf("pulled %+v", m)
	}
	ack := `{"receipts":["` + got.Messages[0].Receipt + `","` + got.Messages[1].Receipt + `"]}`
	if resp, data := do(t, "POST", srv.URL+"/v1/groups/workers/ack", nil, strings.NewReader(ack)); resp.StatusCode != 200 {
		t.Fatalf("ack: %d %s", resp.StatusCode, data)
	}
	for _, c := range []struct {
		name, path, body string
		status           int
		code             string
	}{
		{"another group's receipt", "/v1/groups/others/ack", ack, 400, "invalid_receipt"},
		{"malformed receipt", "/v1/groups/workers/ack", `{"receipts":["nope"]}`, 400, "invalid_receipt"},
		{"no receipts", "/v1/groups/workers/ack", `{"receipts":[]}`, 400, "invalid_receipt"},
		{"ack body too large", "/v1/groups/workers/ack", `{"receipts":["` + strings.Repeat("a", maxAckRequestBytes) + `"]}`, 413, "request_too_large"},
		{"bad nack delay", "/v1/groups/workers/nack", `{"receipts":["x"],"delay":"later"}`, 400, "invalid_nack"},
		{"max 0", "/v1/groups/workers/topics/jobs/pull?max=0", "", 400, "invalid_parameter"},
		{"max 257", "/v1/groups/workers/topics/jobs/pull?max=257", "", 400, "invalid_parameter"},
		{"wait over 30s", "/v1/groups/workers/topics/jobs/pull?wait=31s", "", 400, "invalid_pull"},
		{"malformed wait", "/v1/groups/workers/topics/jobs/pull?wait=soon", "", 400, "invalid_parameter"},
		{"system topic", "/v1/groups/workers/topics/%25DLQ%25workers/pull", "", 400, "system_topic"},
	} {
		resp, data := do(t, "POST", srv.URL+c.path, nil, strings.NewReader(c.body))
		var p problem
		if err := json.Unmarshal(data, &p); err != nil {
			t.Fatalf("decode: %v", err)
		}
		if resp.StatusCode != c.status || string(p.Code) != c.code {
			t.Errorf("%s: %d %s, want %d %s", c.name, resp.StatusCode, data, c.status, c.code)
		}
	}
	// Nack the third: it comes back as attempt 2.
	_, data = do(t, "POST", srv.URL+"/v1/groups/workers/topics/jobs/pull?max=5", nil, nil)
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if len(got.Messages) != 1 || got.Messages[0].Body != "three" {
		t.Fatalf("third pull: %s", data)
	}
	do(t, "POST", srv.URL+"/v1/groups/workers/nack", nil, strings.NewReader(`{"receipts":["`+got.Messages[0].Receipt+`"]}`))
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, data = do(t, "POST", srv.URL+"/v1/groups/workers/topics/jobs/pull?max=5&wait=1s", nil, nil)
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatalf("decode: %v", err)
		}
		if len(got.Messages) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the nacked message did not come back")
		}
	}
	if got.Messages[0].Attempt != 2 || got.Messages[0].Body != "three" {
		t.Fatalf("after nack: %+v", got.Messages[0])
	}
	// The group shows its position.
	resp, data = do(t, "GET", srv.URL+"/v1/groups/workers", nil, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(data), `"topic":"jobs"`) {
		t.Fatalf("group: %d %s", resp.StatusCode, data)
	}
}

func TestReadQueueByOffset(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	do(t, "PUT", srv.URL+"/v1/topics/log", nil, strings.NewReader(`{"queues":1}`))
	for _, body := range []string{"a", "b", "c"} {
		do(t, "POST", srv.URL+"/v1/topics/log/messages", nil, strings.NewReader(body))
	}
	var got struct {
		Messages   []messageJSON `json:"messages"`
		NextOffset int64         `json:"next_offset"`
	}
	resp, data := do(t, "GET", srv.URL+"/v1/topics/log/queues/0/messages?offset=1&max=10", nil, nil)
	if resp.StatusCode != 200 || json.Unmarshal(data, &got) != nil || len(got.Messages) != 2 || got.Messages[0].Body != "b" || got.NextOffset != 3 {
		t.Fatalf("read from offset 1: %d %s", resp.StatusCode, data)
	}
	// A read at the end waits for the next message.
	done := make(chan string, 1)
	go func() {
		_, data := do(t, "GET", srv.URL+"/v1/topics/log/queues/0/messages?offset=3&wait=5s", nil, nil)
		done <- string(data)
	}()
	time.Sleep(100 * time.Millisecond)
	do(t, "POST", srv.URL+"/v1/topics/log/messages", nil, strings.NewReader("d"))
	select {
	case data := <-done:
		if !strings.Contains(data, `"body":"d"`) {
			t.Fatalf("long read: %s", data)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("the waiting read did not return on publish")
	}
	for _, c := range []struct {
		path   string
		status int
	}{
		{"/v1/topics/log/queues/1/messages", 404}, // queue_not_found
		{"/v1/topics/log/queues/x/messages", 400},
		{"/v1/topics/nope/queues/0/messages", 404},
		{"/v1/topics/log/queues/0/messages?wait=1m", 400},
	} {
		if resp, data := do(t, "GET", srv.URL+c.path, nil, nil); resp.StatusCode != c.status {
			t.Errorf("%s: %d %s, want %d", c.path, resp.StatusCode, data, c.status)
		}
	}
}
