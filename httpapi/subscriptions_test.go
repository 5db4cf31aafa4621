package httpapi

import (
	"encoding/json"
	"strings"
	"testing"
)

// problemCode reads the code and field of a problem+json answer.
func problemCode(tb testing.TB, data []byte) (code, field string) {
	tb.Helper()
	var p struct {
		Code  string `json:"code"`
		Field string `json:"field"`
	}
	if err := json.Unmarshal(data, &p); err != nil {
		tb.Fatalf("not a problem: %s", data)
	}
	return p.Code, p.Field
}

// A webhook URL nothing can dial (port 0, 99999, ...) is refused with a 400
// at create and at PATCH, and nothing is stored; it used to be accepted and
// then failed every attempt into the DLQ (issue 11, fault 13).
func TestUnusableWebhookURLRefused(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	for _, u := range []string{"http://127.0.0.1:0/hook", "http://127.0.0.1:99999/hook", "http://127.0.0.1:65536/", "http://user:pw@127.0.0.1:9/", "http://127.0.0.1:9/#x"} {
		resp, data := do(t, "POST", srv.URL+"/v1/subscriptions", nil,
			strings.NewReader(`{"group":"g","topic":"orders","url":"`+u+`"}`))
		if code, field := problemCode(t, data); resp.StatusCode != 400 || code != "invalid_subscription" || field != "url" {
			t.Fatalf("create with %s: %d %s", u, resp.StatusCode, data)
		}
	}
	resp, data := do(t, "GET", srv.URL+"/v1/subscriptions", nil, nil)
	if resp.StatusCode != 200 || strings.Contains(string(data), `"id"`) {
		t.Fatalf("refused creates stored something: %d %s", resp.StatusCode, data)
	}
	resp, data = do(t, "POST", srv.URL+"/v1/subscriptions", nil,
		strings.NewReader(`{"group":"g","topic":"orders","url":"http://127.0.0.1:9/hook"}`))
	if resp.StatusCode != 201 {
		t.Fatalf("create: %d %s", resp.StatusCode, data)
	}
	var sub subscriptionJSON
	if err := json.Unmarshal(data, &sub); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"http://127.0.0.1:0/hook", "http://127.0.0.1:99999/hook"} {
		resp, data = do(t, "PATCH", srv.URL+"/v1/subscriptions/"+sub.ID, nil, strings.NewReader(`{"url":"`+u+`"}`))
		if code, field := problemCode(t, data); resp.StatusCode != 400 || code != "invalid_subscription" || field != "url" {
			t.Fatalf("PATCH to %s: %d %s", u, resp.StatusCode, data)
		}
	}
	resp, data = do(t, "GET", srv.URL+"/v1/subscriptions/"+sub.ID, nil, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(data), `"url":"http://127.0.0.1:9/hook"`) {
		t.Fatalf("after refused PATCHes: %d %s", resp.StatusCode, data)
	}
}
