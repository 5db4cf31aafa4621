package httpapi

import (
	"encoding/json"
	"fmt"
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

// Hostile subscription bodies: every limit at its edge and one past it,
// explicit zeros and negatives (which the defaults used to swallow), a
// duration finer than the millisecond it is stored to, a field given twice
// in another case. Each bad one is a 400 that stores nothing; each good one
// reads back as given.
func TestSubscriptionInputsAtTheLimits(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	tests := []struct {
		name   string
		body   string // the fields beside group, topic and url
		status int
		field  string // of the problem
		check  func(s subscriptionJSON) bool
	}{
		{"max_retries 0", `"max_retries":0`, 201, "", func(s subscriptionJSON) bool { return s.MaxRetries == 0 }},
		{"max_retries 100", `"max_retries":100`, 201, "", func(s subscriptionJSON) bool { return s.MaxRetries == 100 }},
		{"max_retries 101", `"max_retries":101`, 400, "max_retries", nil},
		{"max_retries -1", `"max_retries":-1`, 400, "max_retries", nil},
		{"max_in_flight 1", `"max_in_flight":1`, 201, "", func(s subscriptionJSON) bool { return s.MaxInFlight == 1 }},
		{"max_in_flight 1024", `"max_in_flight":1024`, 201, "", func(s subscriptionJSON) bool { return s.MaxInFlight == 1024 }},
		{"max_in_flight 1025", `"max_in_flight":1025`, 400, "max_in_flight", nil},
		{"max_in_flight 0", `"max_in_flight":0`, 400, "max_in_flight", nil},
		{"timeout 1ms", `"timeout":"1ms"`, 201, "", func(s subscriptionJSON) bool { return s.Timeout == "1ms" }},
		{"timeout 5m", `"timeout":"5m"`, 201, "", func(s subscriptionJSON) bool { return s.Timeout == "5m0s" }},
		{"timeout 5m1ms", `"timeout":"5m0.001s"`, 400, "timeout", nil},
		{"timeout 0s", `"timeout":"0s"`, 400, "timeout", nil},
		{"timeout 999us", `"timeout":"999us"`, 400, "timeout", nil},
		{"timeout 1.5ms", `"timeout":"1.5ms"`, 400, "timeout", nil},
		{"visibility 1s", `"visibility":"1s"`, 201, "", func(s subscriptionJSON) bool { return s.Visibility == "1s" }},
		{"visibility 999ms", `"visibility":"999ms"`, 400, "visibility", nil},
		{"visibility 0s", `"visibility":"0s"`, 400, "visibility", nil},
		{"visibility 12h", `"visibility":"12h"`, 201, "", func(s subscriptionJSON) bool { return s.Visibility == "12h0m0s" }},
		{"visibility 12h1ms", `"visibility":"12h0m0.001s"`, 400, "visibility", nil},
		{"retry delay 1ms", `"retry_delays":["1ms"]`, 201, "", func(s subscriptionJSON) bool { return len(s.RetryDelays) == 1 && s.RetryDelays[0] == "1ms" }},
		{"retry delay 1ns", `"retry_delays":["1ns"]`, 400, "retry_delays", nil},
		{"retry delay 24h", `"retry_delays":["24h"]`, 201, "", nil},
		{"retry delay 24h1ms", `"retry_delays":["24h0m0.001s"]`, 400, "retry_delays", nil},
		{"retry delay 0", `"retry_delays":["0s"]`, 400, "retry_delays", nil},
		{"backoff 1ns", `"backoff":{"min":"1ns","max":"1s"}`, 400, "backoff", nil},
		{"rate 0", `"rate_per_second":0`, 201, "", nil},
		{"rate 1e6", `"rate_per_second":1000000`, 201, "", nil},
		{"rate 1e6+1", `"rate_per_second":1000001`, 400, "rate_per_second", nil},
		{"rate -1", `"rate_per_second":-1`, 400, "rate_per_second", nil},
		{"rate one a day", `"rate_per_second":0.000011575`, 201, "", nil},
		{"rate below one a day", `"rate_per_second":0.000011574`, 400, "rate_per_second", nil},
		{"rate 1e-300", `"rate_per_second":1e-300`, 400, "rate_per_second", nil},
		{"unknown field", `"max_retry":3`, 400, "body", nil},
		{"field twice", `"max_retries":3,"max_retries":4`, 400, "body", nil},
		{"field twice in another case", `"max_retries":3,"MAX_RETRIES":0`, 400, "body", nil},
		{"field in another case", `"Max_Retries":3`, 400, "body", nil},
		{"backoff field in another case", `"backoff":{"MIN":"1s","max":"2s"}`, 400, "body", nil},
		{"batch 1", `"batch":{"max_messages":1}`, 201, "", func(s subscriptionJSON) bool { return s.Batch == batchJSON{1, "0s"} }},
		{"batch 1000 10s", `"batch":{"max_messages":1000,"max_wait":"10s"}`, 201, "", func(s subscriptionJSON) bool {
			return s.Batch == batchJSON{1000, "10s"} && s.MaxInFlight == 1024
		}},
		{"batch 100 default in flight", `"batch":{"max_messages":100,"max_wait":"50ms"}`, 201, "", func(s subscriptionJSON) bool {
			return s.Batch == batchJSON{100, "50ms"} && s.MaxInFlight == 800
		}},
		{"batch 1001", `"batch":{"max_messages":1001}`, 400, "batch.max_messages", nil},
		{"batch 0", `"batch":{"max_messages":0}`, 400, "batch.max_messages", nil},
		{"batch -1", `"batch":{"max_messages":-1}`, 400, "batch.max_messages", nil},
		{"batch without max_messages", `"batch":{"max_wait":"1s"}`, 400, "batch.max_messages", nil},
		{"batch wait 10s1ms", `"batch":{"max_messages":2,"max_wait":"10.001s"}`, 400, "batch.max_wait", nil},
		{"batch wait negative", `"batch":{"max_messages":2,"max_wait":"-1ms"}`, 400, "batch.max_wait", nil},
		{"batch wait 1.5ms", `"batch":{"max_messages":2,"max_wait":"1.5ms"}`, 400, "batch.max_wait", nil},
		{"batch wait not a duration", `"batch":{"max_messages":2,"max_wait":"soon"}`, 400, "batch.max_wait", nil},
		{"batch above max_in_flight", `"batch":{"max_messages":20},"max_in_flight":10`, 400, "batch.max_messages", nil},
		{"batch unknown member", `"batch":{"max_messages":2,"size":3}`, 400, "body", nil},
		{"batch member in another case", `"batch":{"MAX_MESSAGES":2}`, 400, "body", nil},
		{"batch null on create", `"batch":null`, 201, "", func(s subscriptionJSON) bool { return s.Batch == batchJSON{} }},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			group := fmt.Sprintf("g%d", i)
			body := fmt.Sprintf(`{"group":%q,"topic":"orders","url":"http://127.0.0.1:9/hook",%s}`, group, tt.body)
			resp, data := do(t, "POST", srv.URL+"/v1/subscriptions", map[string]string{"Content-Type": "application/json"}, strings.NewReader(body))
			if resp.StatusCode != tt.status {
				t.Fatalf("%s: %d %s, want %d", body, resp.StatusCode, data, tt.status)
			}
			if tt.status != 201 {
				if _, field := problemCode(t, data); !strings.HasPrefix(field, tt.field) {
					t.Fatalf("%s: problem field %q, want %q: %s", body, field, tt.field, data)
				}
				_, list := do(t, "GET", srv.URL+"/v1/subscriptions", nil, nil)
				if strings.Contains(string(list), `"group":"`+group+`"`) {
					t.Fatalf("%s was refused but stored", body)
				}
				return
			}
			var created subscriptionJSON
			if err := json.Unmarshal(data, &created); err != nil {
				t.Fatal(err)
			}
			// What is read back is what was answered: nothing was
			// rounded or replaced on the way to the store.
			_, got := do(t, "GET", srv.URL+"/v1/subscriptions/"+created.ID, nil, nil)
			var stored subscriptionJSON
			if err := json.Unmarshal(got, &stored); err != nil {
				t.Fatal(err)
			}
			created.Secret = ""
			if fmt.Sprint(stored) != fmt.Sprint(created) {
				t.Fatalf("stored %+v, answered %+v", stored, created)
			}
			if tt.check != nil && !tt.check(stored) {
				t.Fatalf("%s stored as %+v", body, stored)
			}
		})
	}
}

// GET /v1/subscriptions?group=&topic= narrows the list; an empty filter is
// a 400, not "no filter" (a script that built the URL from an empty
// variable would otherwise act on every subscription).
func TestListSubscriptionsFiltered(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	made := map[string]string{} // group/topic -> id
	for _, gt := range [][2]string{{"g1", "orders"}, {"g1", "billing"}, {"g2", "orders"}} {
		resp, data := do(t, "POST", srv.URL+"/v1/subscriptions", nil,
			strings.NewReader(fmt.Sprintf(`{"group":%q,"topic":%q,"url":"http://127.0.0.1:9/hook"}`, gt[0], gt[1])))
		if resp.StatusCode != 201 {
			t.Fatalf("create %v: %d %s", gt, resp.StatusCode, data)
		}
		var sub subscriptionJSON
		if err := json.Unmarshal(data, &sub); err != nil {
			t.Fatal(err)
		}
		made[gt[0]+"/"+gt[1]] = sub.ID
	}
	tests := []struct {
		query string
		want  []string // group/topic of the subscriptions listed
	}{
		{"", []string{"g1/billing", "g1/orders", "g2/orders"}},
		{"?group=g1", []string{"g1/billing", "g1/orders"}},
		{"?topic=orders", []string{"g1/orders", "g2/orders"}},
		{"?group=g2&topic=orders", []string{"g2/orders"}},
		{"?group=g2&topic=billing", nil},
		{"?group=nobody", nil},
	}
	for _, tc := range tests {
		resp, data := do(t, "GET", srv.URL+"/v1/subscriptions"+tc.query, nil, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("list%s: %d %s", tc.query, resp.StatusCode, data)
		}
		var page struct {
			Subscriptions []subscriptionJSON `json:"subscriptions"`
		}
		if err := json.Unmarshal(data, &page); err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, s := range page.Subscriptions {
			got[s.ID] = true
		}
		if len(got) != len(tc.want) {
			t.Errorf("list%s: %d subscriptions, want %v: %s", tc.query, len(got), tc.want, data)
		}
		for _, w := range tc.want {
			if !got[made[w]] {
				t.Errorf("list%s: %s's subscription missing: %s", tc.query, w, data)
			}
		}
	}
	for _, q := range []string{"?group=", "?topic=", "?group=g1&topic="} {
		resp, data := do(t, "GET", srv.URL+"/v1/subscriptions"+q, nil, nil)
		if code, _ := problemCode(t, data); resp.StatusCode != 400 || code != "invalid_parameter" {
			t.Errorf("list%s: %d %s, want 400 invalid_parameter", q, resp.StatusCode, data)
		}
	}
}

// PATCH changes a batch's members one at a time, null turns batching off,
// and a pull subscription takes no batch.
func TestPatchSubscriptionBatch(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	hdr := map[string]string{"Content-Type": "application/json"}
	resp, data := do(t, "POST", srv.URL+"/v1/subscriptions", hdr, strings.NewReader(`{"group":"g","topic":"orders","url":"http://127.0.0.1:9/hook","max_in_flight":64}`))
	if resp.StatusCode != 201 {
		t.Fatalf("create: %d %s", resp.StatusCode, data)
	}
	var sub subscriptionJSON
	if err := json.Unmarshal(data, &sub); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		body     string
		status   int
		want     batchJSON
		inFlight int // 0: not checked
	}{
		{`{"batch":{"max_wait":"1s"}}`, 400, batchJSON{}, 0},
		{`{"batch":{"max_messages":10}}`, 200, batchJSON{10, "0s"}, 64},
		{`{"batch":{"max_wait":"25ms"}}`, 200, batchJSON{10, "25ms"}, 0},
		{`{"batch":{"max_messages":65}}`, 400, batchJSON{10, "25ms"}, 0},
		{`{"max_in_flight":9}`, 400, batchJSON{10, "25ms"}, 0},
		{`{"batch":{"max_messages":0}}`, 400, batchJSON{10, "25ms"}, 0},
		{`{"max_retries":3}`, 200, batchJSON{10, "25ms"}, 0},
		{`{"batch":null}`, 200, batchJSON{}, 64},
	} {
		resp, data := do(t, "PATCH", srv.URL+"/v1/subscriptions/"+sub.ID, hdr, strings.NewReader(step.body))
		if resp.StatusCode != step.status {
			t.Fatalf("PATCH %s: %d %s, want %d", step.body, resp.StatusCode, data, step.status)
		}
		_, data = do(t, "GET", srv.URL+"/v1/subscriptions/"+sub.ID, nil, nil)
		var got subscriptionJSON
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatal(err)
		}
		if got.Batch != step.want {
			t.Fatalf("after PATCH %s: batch %+v, want %+v", step.body, got.Batch, step.want)
		}
		if step.inFlight != 0 && got.MaxInFlight != step.inFlight {
			t.Fatalf("after PATCH %s: max_in_flight %d, want %d", step.body, got.MaxInFlight, step.inFlight)
		}
	}
	// A max_in_flight left to its default follows the batch setting:
	// turned on by PATCH, off again.
	resp, data = do(t, "POST", srv.URL+"/v1/subscriptions", hdr, strings.NewReader(`{"group":"d","topic":"orders","url":"http://127.0.0.1:9/hook"}`))
	if resp.StatusCode != 201 {
		t.Fatalf("create: %d %s", resp.StatusCode, data)
	}
	if err := json.Unmarshal(data, &sub); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		body     string
		inFlight int
	}{
		{`{"batch":{"max_messages":100}}`, 800},
		{`{"batch":{"max_messages":300}}`, 1024},
		{`{"batch":null}`, 32},
		{`{"batch":{"max_messages":10},"max_in_flight":50}`, 50},
		{`{"batch":null}`, 50},
	} {
		resp, data := do(t, "PATCH", srv.URL+"/v1/subscriptions/"+sub.ID, hdr, strings.NewReader(step.body))
		var got subscriptionJSON
		if resp.StatusCode != 200 || json.Unmarshal(data, &got) != nil || got.MaxInFlight != step.inFlight {
			t.Fatalf("PATCH %s: %d %s, want 200 with max_in_flight %d", step.body, resp.StatusCode, data, step.inFlight)
		}
	}
	resp, data = do(t, "POST", srv.URL+"/v1/subscriptions", hdr, strings.NewReader(`{"group":"p","topic":"orders","batch":{"max_messages":5}}`))
	if resp.StatusCode != 400 {
		t.Fatalf("a pull subscription with a batch: %d %s, want 400", resp.StatusCode, data)
	}
	if _, field := problemCode(t, data); field != "batch" {
		t.Fatalf("problem field %q, want batch: %s", field, data)
	}
}
