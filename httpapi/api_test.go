package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
)

func newTestServer(tb testing.TB, mutate func(*broker.Config)) (*httptest.Server, *broker.Broker) {
	tb.Helper()
	cfg := broker.DefaultConfig(tb.TempDir())
	cfg.SegmentSize = 8 << 20
	cfg.MaxMessageBytes = 1 << 20
	cfg.AutoCreateTopics = true
	if mutate != nil {
		mutate(&cfg)
	}
	b, err := broker.Open(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewServer(mustNew(tb, Config{Broker: b}))
	tb.Cleanup(func() {
		srv.Close()
		b.Close()
	})
	return srv, b
}

func mustNew(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func do(tb testing.TB, method, url string, hdr map[string]string, body io.Reader) (*http.Response, []byte) {
	tb.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		tb.Fatal(err)
	}
	for k, v := range hdr {
		// A value cannot hold a line break, so one separates the values
		// of a header given more than once.
		for i, v := range strings.Split(v, "\n") {
			if i == 0 {
				req.Header.Set(k, v)
			} else {
				req.Header.Add(k, v)
			}
		}
	}
	client := http.DefaultClient
	if req.Header.Get("Expect") == "100-continue" {
		// A body the server may refuse unread: sent only once it asks,
		// so its refusal (and closing) cannot meet a client still
		// writing, which sees a broken pipe instead of the answer.
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.ExpectContinueTimeout = time.Minute
		defer tr.CloseIdleConnections()
		client = &http.Client{Transport: tr}
	}
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp, data
}

func TestPublishQueryOverHTTP(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	resp, data := do(t, "POST", srv.URL+"/v1/topics/orders/messages",
		map[string]string{"Content-Type": "application/json", "Postbus-Tag": "created", "Postbus-Keys": "order-1001", "Postbus-Prop-Region": "eu"},
		strings.NewReader(`{"id":1001}`))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("publish: %d %s", resp.StatusCode, data)
	}
	var res publishResult
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatal(err)
	}
	if res.Status != "SEND_OK" || res.Topic != "orders" || res.MsgID == "" || resp.Header.Get("Location") != "/v1/messages/"+res.MsgID {
		t.Fatalf("result %+v, location %q", res, resp.Header.Get("Location"))
	}

	resp, data = do(t, "GET", srv.URL+"/v1/messages/"+res.MsgID, nil, nil)
	var m messageJSON
	if resp.StatusCode != 200 || json.Unmarshal(data, &m) != nil {
		t.Fatalf("get: %d %s", resp.StatusCode, data)
	}
	if m.Body != `{"id":1001}` || m.Encoding != "utf8" || m.Tag != "created" || m.ContentType != "application/json" ||
		len(m.Keys) != 1 || m.Keys[0] != "order-1001" || m.Properties["Region"] != "eu" {
		t.Fatalf("message = %+v", m)
	}
	resp, data = do(t, "GET", srv.URL+"/v1/messages/"+res.MsgID+"/body", nil, nil)
	if resp.StatusCode != 200 || string(data) != `{"id":1001}` || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("raw body: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), data)
	}

	// A binary body comes back as base64 in JSON, and byte for byte raw.
	bin := []byte{0, 1, 2, 0xff, 0xfe}
	_, data = do(t, "POST", srv.URL+"/v1/topics/orders/messages", nil, bytes.NewReader(bin))
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatalf("decode: %v", err)
	}
	_, data = do(t, "GET", srv.URL+"/v1/messages/"+res.MsgID, nil, nil)
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if m.Encoding != "base64" || m.Body != "AAEC//4=" || m.ContentType != broker.DefaultContentType {
		t.Fatalf("binary message = %+v", m)
	}
	_, data = do(t, "GET", srv.URL+"/v1/messages/"+res.MsgID+"/body", nil, nil)
	if !bytes.Equal(data, bin) {
		t.Fatalf("raw binary body = %x", data)
	}

	resp, data = do(t, "GET", srv.URL+"/v1/topics/orders/messages?key=order-1001", nil, nil)
	var list struct {
		Messages []messageJSON `json:"messages"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(data, &list) != nil || len(list.Messages) != 1 {
		t.Fatalf("by key: %d %s", resp.StatusCode, data)
	}

	// Dedup answers 200 with the first id.
	hdr := map[string]string{"Postbus-Dedup-Id": "once"}
	resp, data = do(t, "POST", srv.URL+"/v1/topics/orders/messages", hdr, strings.NewReader("a"))
	var first, second publishResult
	if err := json.Unmarshal(data, &first); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if resp.StatusCode != 201 {
		t.Fatalf("first dedup publish: %d", resp.StatusCode)
	}
	resp, data = do(t, "POST", srv.URL+"/v1/topics/orders/messages", hdr, strings.NewReader("b"))
	if err := json.Unmarshal(data, &second); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if resp.StatusCode != 200 || !second.Duplicate || second.MsgID != first.MsgID {
		t.Fatalf("repeat dedup publish: %d %s", resp.StatusCode, data)
	}

	// Batch.
	resp, data = do(t, "POST", srv.URL+"/v1/topics/orders/messages/batch", map[string]string{"Content-Type": "application/json"},
		strings.NewReader(`[{"body":"x","tag":"a"},{"body_base64":"AAE=","keys":["k1","k2"]}]`))
	var batch []publishResult
	if resp.StatusCode != 201 || json.Unmarshal(data, &batch) != nil || len(batch) != 2 {
		t.Fatalf("batch: %d %s", resp.StatusCode, data)
	}
}

// TestBadRequests: every bad input gets the right problem, and the store
// does not change.
func TestBadRequests(t *testing.T) {
	srv, b := newTestServer(t, func(c *broker.Config) { c.MaxMessageBytes = 1024 })
	ctx := context.Background()
	if _, err := b.Publish(ctx, "t", []*broker.Message{{Body: []byte("seed")}}); err != nil {
		t.Fatal(err)
	}
	type req struct {
		method, path string
		hdr          map[string]string
		body         string
	}
	bigBatch := "[" + strings.Repeat(`{"body":"a"},`, 1000) + `{"body":"a"}]`
	hugeBatch := `[{"body":"` + strings.Repeat("a", maxBatchRequestBytes) + `"}]`
	tests := []struct {
		name   string
		req    req
		status int
		code   string
	}{
		{"invalid topic", req{"POST", "/v1/topics/bad$topic/messages", nil, "x"}, 400, "invalid_topic"},
		{"system topic", req{"POST", "/v1/topics/%25DLQ%25g/messages", nil, "x"}, 400, "system_topic"},
		{"empty body", req{"POST", "/v1/topics/t/messages", nil, ""}, 400, "empty_body"},
		{"body too large", req{"POST", "/v1/topics/t/messages", nil, strings.Repeat("b", 1025)}, 413, "body_too_large"},
		{"long tag", req{"POST", "/v1/topics/t/messages", map[string]string{"Postbus-Tag": strings.Repeat("t", 128)}, "x"}, 400, "invalid_tag"},
		{"tag with ||", req{"POST", "/v1/topics/t/messages", map[string]string{"Postbus-Tag": "a||b"}, "x"}, 400, "invalid_tag"},
		{"too many keys", req{"POST", "/v1/topics/t/messages", map[string]string{"Postbus-Keys": strings.Repeat("k,", 32) + "k"}, "x"}, 400, "invalid_keys"},
		{"malformed delay", req{"POST", "/v1/topics/t/messages", map[string]string{"Postbus-Delay": "soon"}, "x"}, 400, "invalid_header"},
		{"malformed delay level", req{"POST", "/v1/topics/t/messages", map[string]string{"Postbus-Delay-Level": "0"}, "x"}, 400, "invalid_header"},
		{"signed delay level", req{"POST", "/v1/topics/t/messages", map[string]string{"Postbus-Delay-Level": "+1"}, "x"}, 400, "invalid_header"},
		{"zero-padded delay level", req{"POST", "/v1/topics/t/messages", map[string]string{"Postbus-Delay-Level": "01"}, "x"}, 400, "invalid_header"},
		{"delay level 19", req{"POST", "/v1/topics/t/messages", map[string]string{"Postbus-Delay-Level": "19"}, "x"}, 400, "invalid_header"},
		{"malformed deliver-at", req{"POST", "/v1/topics/t/messages", map[string]string{"Postbus-Deliver-At": "noon"}, "x"}, 400, "invalid_header"},
		{"delay too long", req{"POST", "/v1/topics/t/messages", map[string]string{"Postbus-Delay": "1000h"}, "x"}, 400, "invalid_delay"},
		{"bad property name", req{"POST", "/v1/topics/t/messages", map[string]string{"Postbus-Prop-A_b!": "x"}, "x"}, 400, "invalid_properties"},
		{"batch over 1000", req{"POST", "/v1/topics/t/messages/batch", nil, bigBatch}, 413, "batch_too_large"},
		{"batch over 4 MiB", req{"POST", "/v1/topics/t/messages/batch", nil, hugeBatch}, 413, "batch_too_large"},
		{"malformed batch", req{"POST", "/v1/topics/t/messages/batch", nil, `[{"body":}]`}, 400, "invalid_json"},
		{"batch not json", req{"POST", "/v1/topics/t/messages/batch", map[string]string{"Content-Type": "text/plain"}, `[]`}, 415, "unsupported_media_type"},
		{"two content types", req{"POST", "/v1/topics/t/messages", map[string]string{"Content-Type": "application/json\ntext/plain"}, "x"}, 400, "invalid_header"},
		{"two equal content types", req{"POST", "/v1/topics/t/messages", map[string]string{"Content-Type": "text/plain\ntext/plain"}, "x"}, 400, "invalid_header"},
		{"batch two content types", req{"POST", "/v1/topics/t/messages/batch", map[string]string{"Content-Type": "application/json\napplication/json"}, `[{"body":"a"}]`}, 400, "invalid_header"},
		{"misspelt tag header", req{"POST", "/v1/topics/t/messages", map[string]string{"Postbus-Tagg": "created"}, "x"}, 400, "invalid_header"},
		{"singular keys header", req{"POST", "/v1/topics/t/messages", map[string]string{"Postbus-Key": "k1"}, "x"}, 400, "invalid_header"},
		{"publish query parameter", req{"POST", "/v1/topics/t/messages?tag=created", nil, "x"}, 400, "invalid_parameter"},
		{"batch with a tag header", req{"POST", "/v1/topics/t/messages/batch", map[string]string{"Postbus-Tag": "created"}, `[{"body":"a"}]`}, 400, "invalid_header"},
		{"batch query parameter", req{"POST", "/v1/topics/t/messages/batch?x=1", nil, `[{"body":"a"}]`}, 400, "invalid_parameter"},
		{"batch invalid UTF-8", req{"POST", "/v1/topics/t/messages/batch", nil, "[{\"body\":\"a\xff\xfeb\"}]"}, 400, "invalid_json"},
		{"batch lone surrogate", req{"POST", "/v1/topics/t/messages/batch", nil, `[{"body":"a\ud800b"}]`}, 400, "invalid_json"},
		{"topic queues twice", req{"PUT", "/v1/topics/t", nil, `{"queues":2,"queues":3}`}, 400, "invalid_json"},
		{"batch field twice", req{"POST", "/v1/topics/t/messages/batch", nil, `[{"body":"a","tag":"x","body":"b"}]`}, 400, "invalid_json"},
		{"batch property twice", req{"POST", "/v1/topics/t/messages/batch", nil, `[{"body":"a","properties":{"p":"1","p":"2"}}]`}, 400, "invalid_json"},
		{"batch with a bad message", req{"POST", "/v1/topics/t/messages/batch", nil, `[{"body":"a"},{"body":"b","tag":"x||y"}]`}, 400, "invalid_tag"},
		{"unknown message", req{"GET", "/v1/messages/AAAAAAAAAAAAAAAAAAAAAA", nil, ""}, 404, "message_not_found"},
		{"malformed message id", req{"GET", "/v1/messages/not-an-id", nil, ""}, 400, "invalid_message_id"},
		{"by key without key", req{"GET", "/v1/topics/t/messages", nil, ""}, 400, "invalid_parameter"},
		{"by key bad limit", req{"GET", "/v1/topics/t/messages?key=k&limit=0", nil, ""}, 400, "invalid_parameter"},
		{"by key unknown topic", req{"GET", "/v1/topics/nope/messages?key=k", nil, ""}, 404, "topic_not_found"},
		{"topic bad queues", req{"PUT", "/v1/topics/q", nil, `{"queues":5000}`}, 400, "invalid_queues"},
		{"topic unknown field", req{"PUT", "/v1/topics/q", nil, `{"partitions":3}`}, 400, "invalid_json"},
		{"topic bad retention", req{"PUT", "/v1/topics/q", nil, `{"retention":"forever"}`}, 400, "invalid_retention"},
		{"topic shrink", req{"PUT", "/v1/topics/t", nil, `{"queues":1}`}, 400, "invalid_queues"},
		{"get unknown topic", req{"GET", "/v1/topics/nope", nil, ""}, 404, "topic_not_found"},
		{"delete unknown topic", req{"DELETE", "/v1/topics/nope", nil, ""}, 404, "topic_not_found"},
		{"no route", req{"GET", "/v1/nothing", nil, ""}, 404, "not_found"},
		{"wrong method", req{"PATCH", "/v1/topics/t", nil, ""}, 405, "method_not_allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := b.Topic(ctx, "t")
			resp, data := do(t, tt.req.method, srv.URL+tt.req.path, tt.req.hdr, strings.NewReader(tt.req.body))
			var p problem
			if err := json.Unmarshal(data, &p); err != nil {
				t.Fatalf("%d %q is not a problem: %v", resp.StatusCode, data, err)
			}
			if resp.StatusCode != tt.status || string(p.Code) != tt.code || p.Status != tt.status || p.Detail == "" || strings.HasPrefix(p.Detail, ":") {
				t.Fatalf("got %d %+v, want %d %s", resp.StatusCode, p, tt.status, tt.code)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("content type %q", ct)
			}
			after, _ := b.Topic(ctx, "t")
			if after.Messages != before.Messages || after.Queues[0].MaxOffset != before.Queues[0].MaxOffset {
				t.Errorf("a refused request changed topic t: %d -> %d messages", before.Messages, after.Messages)
			}
		})
	}
	for _, name := range []string{"bad$topic", "q", "nope"} {
		if _, err := b.Topic(ctx, name); err == nil {
			t.Errorf("a refused request created topic %q", name)
		}
	}
}

func TestTopicsOverHTTP(t *testing.T) {
	srv, _ := newTestServer(t, func(c *broker.Config) { c.AutoCreateTopics = false })
	resp, data := do(t, "PUT", srv.URL+"/v1/topics/orders", nil, strings.NewReader(`{"queues":2,"retention":"24h"}`))
	var tj topicJSON
	if resp.StatusCode != 201 || json.Unmarshal(data, &tj) != nil || tj.QueueCount != 2 || len(tj.Queues) != 2 || tj.Retention != "24h0m0s" {
		t.Fatalf("create: %d %s", resp.StatusCode, data)
	}
	resp, data = do(t, "PUT", srv.URL+"/v1/topics/orders", nil, strings.NewReader(`{"queues":3}`))
	if resp.StatusCode != 200 || json.Unmarshal(data, &tj) != nil || tj.QueueCount != 3 {
		t.Fatalf("grow: %d %s", resp.StatusCode, data)
	}
	for i := 0; i < 6; i++ {
		if resp, data := do(t, "POST", srv.URL+"/v1/topics/orders/messages", nil, strings.NewReader(fmt.Sprint("m", i))); resp.StatusCode != 201 {
			t.Fatalf("publish: %d %s", resp.StatusCode, data)
		}
	}
	resp, data = do(t, "GET", srv.URL+"/v1/topics/orders", nil, nil)
	if resp.StatusCode != 200 || json.Unmarshal(data, &tj) != nil || tj.Messages == nil || *tj.Messages != 6 || *tj.Bytes == 0 {
		t.Fatalf("get: %d %s", resp.StatusCode, data)
	}
	for _, q := range tj.Queues {
		if q.MaxOffset != 2 || q.MinOffset != 0 || q.Messages != 2 {
			t.Errorf("queue %+v, want 2 messages in each of 3 queues", q)
		}
	}
	do(t, "PUT", srv.URL+"/v1/topics/alpha", nil, nil)
	do(t, "PUT", srv.URL+"/v1/topics/zeta", nil, nil)
	var list struct {
		Topics     []topicJSON `json:"topics"`
		NextCursor string      `json:"next_cursor"`
	}
	_, data = do(t, "GET", srv.URL+"/v1/topics?limit=2", nil, nil)
	if json.Unmarshal(data, &list) != nil || len(list.Topics) != 2 || list.Topics[0].Name != "alpha" || list.NextCursor != "orders" {
		t.Fatalf("list page 1: %s", data)
	}
	_, data = do(t, "GET", srv.URL+"/v1/topics?limit=2&cursor="+list.NextCursor, nil, nil)
	list.NextCursor = ""
	if json.Unmarshal(data, &list) != nil || len(list.Topics) != 1 || list.Topics[0].Name != "zeta" || list.NextCursor != "" {
		t.Fatalf("list page 2: %s", data)
	}
	if resp, _ := do(t, "DELETE", srv.URL+"/v1/topics/orders", nil, nil); resp.StatusCode != 204 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	if resp, _ := do(t, "POST", srv.URL+"/v1/topics/orders/messages", nil, strings.NewReader("x")); resp.StatusCode != 404 {
		t.Fatalf("publish to deleted topic with auto-create off: %d", resp.StatusCode)
	}
}

func TestOperations(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	for _, path := range []string{"/healthz", "/readyz"} {
		if resp, data := do(t, "GET", srv.URL+path, nil, nil); resp.StatusCode != 200 {
			t.Errorf("%s: %d %s", path, resp.StatusCode, data)
		}
	}
	do(t, "POST", srv.URL+"/v1/topics/m/messages", nil, strings.NewReader("x"))
	resp, data := do(t, "GET", srv.URL+"/metrics", nil, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(data), `postbus_http_requests_total{method="POST",route="/v1/topics/{topic}/messages",status="201"} 1`) {
		t.Errorf("metrics lack the publish count:\n%s", data)
	}
	if resp.Header.Get("X-Request-Id") == "" {
		t.Error("no X-Request-Id")
	}
}

// TestPutTopicKeepsOmittedSettings: a PUT that leaves a setting out keeps
// its current value rather than resetting it.
func TestPutTopicKeepsOmittedSettings(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	do(t, "PUT", srv.URL+"/v1/topics/keep", nil, strings.NewReader(`{"queues":8,"retention":"24h"}`))
	resp, data := do(t, "PUT", srv.URL+"/v1/topics/keep", nil, strings.NewReader(`{"retention":"48h"}`))
	var tj topicJSON
	if resp.StatusCode != 200 || json.Unmarshal(data, &tj) != nil || tj.QueueCount != 8 || tj.Retention != "48h0m0s" {
		t.Fatalf("retention-only PUT: %d %s", resp.StatusCode, data)
	}
	resp, data = do(t, "PUT", srv.URL+"/v1/topics/keep", nil, strings.NewReader(`{"queues":9}`))
	if resp.StatusCode != 200 || json.Unmarshal(data, &tj) != nil || tj.QueueCount != 9 || tj.Retention != "48h0m0s" {
		t.Fatalf("queues-only PUT: %d %s", resp.StatusCode, data)
	}
	resp, data = do(t, "PUT", srv.URL+"/v1/topics/keep", nil, strings.NewReader(`{"retention":"0s"}`))
	var reset topicJSON
	if resp.StatusCode != 200 || json.Unmarshal(data, &reset) != nil || reset.Retention != "" || reset.QueueCount != 9 {
		t.Fatalf("retention 0s should mean the broker default: %d %s", resp.StatusCode, data)
	}
}

// TestCurlDefaultContentType: `curl -d '{...}'` sends
// application/x-www-form-urlencoded; a JSON body sent so is taken, and a
// body of another type is refused.
func TestCurlDefaultContentType(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	if resp, data := do(t, "PUT", srv.URL+"/v1/topics/orders", form, strings.NewReader(`{"queues":2}`)); resp.StatusCode != 201 {
		t.Fatalf("PUT topic with curl's default type: %d %s", resp.StatusCode, data)
	}
	if resp, data := do(t, "POST", srv.URL+"/v1/subscriptions", form, strings.NewReader(`{"group":"billing","topic":"orders","url":"https://billing.example/hooks","filter":"created || paid"}`)); resp.StatusCode != 201 {
		t.Fatalf("create subscription with curl's default type: %d %s", resp.StatusCode, data)
	}
	if resp, data := do(t, "POST", srv.URL+"/v1/topics/orders/messages/batch", form, strings.NewReader(`[{"body":"x"}]`)); resp.StatusCode != 201 {
		t.Fatalf("batch with curl's default type: %d %s", resp.StatusCode, data)
	}
	if resp, _ := do(t, "POST", srv.URL+"/v1/subscriptions", form, strings.NewReader(`group=billing&topic=orders`)); resp.StatusCode != 400 {
		t.Fatalf("a real form body: %d, want 400 invalid_json", resp.StatusCode)
	}
	if resp, _ := do(t, "PUT", srv.URL+"/v1/topics/orders", map[string]string{"Content-Type": "text/plain"}, strings.NewReader(`{"queues":2}`)); resp.StatusCode != 415 {
		t.Fatalf("text/plain: %d, want 415", resp.StatusCode)
	}
}
