package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// groupRedrive reads the group's view of its subscriptions' dlq_redrive.
func (r *deferRig) groupRedrive(tb testing.TB, group string) []dlqRedriveJSON {
	tb.Helper()
	resp, data := do(tb, "GET", r.api.URL+"/v1/groups/"+group, nil, nil)
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("group: %d %s", resp.StatusCode, data)
	}
	var g groupJSON
	if err := json.Unmarshal(data, &g); err != nil {
		tb.Fatalf("group %s: %v", data, err)
	}
	return g.DLQRedrive
}

// TestDLQRedriveProbeFailsThenHeals: dead letters of a push subscription
// with dlq_redrive are probed with the oldest once it has waited; a failed
// probe waits again (also across a restart), a delivered one redrives the
// rest, and the group's view and the trace show it.
func TestDLQRedriveProbeFailsThenHeals(t *testing.T) {
	var healthy atomic.Bool
	var mu sync.Mutex
	ok := map[string]int{} // deliveries answered 200, by message id
	hook := newHookSink(t, func(h http.Header, _ int) int {
		if healthy.Load() {
			mu.Lock()
			ok[h.Get("Postbus-Message-Id")]++
			mu.Unlock()
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	})
	r := newDeferRig(t, "", hook)
	id := r.subscribe(t, `{"group":"enc","topic":"jobs","url":"`+hook.URL+`","max_retries":0,"dlq_redrive":{"after":"1s","rate_per_second":50}}`)
	var ids []string
	for i := range 3 {
		ids = append(ids, r.publish(t, fmt.Sprintf("job %d", i)))
	}
	waitDeferred(t, 15*time.Second, "3 dead letters", func() bool {
		g, err := r.b.Group(context.Background(), "enc")
		return err == nil && g.DeadLetters == 3
	})
	waitDeferred(t, 15*time.Second, "a failed probe", func() bool {
		rd := r.groupRedrive(t, "enc")
		return len(rd) == 1 && rd[0].State == "probe_failed" && rd[0].Probes == 1
	})
	rd := r.groupRedrive(t, "enc")[0]
	if rd.Subscription != id || rd.DeadLetters != 3 || rd.NextProbeAt == "" || !strings.Contains(rd.LastError, "503") {
		t.Fatalf("after a failed probe: %+v", rd)
	}
	next, err := time.Parse(time.RFC3339Nano, rd.NextProbeAt)
	if err != nil || time.Until(next) > time.Second {
		t.Fatalf("next probe at %s (%v), want within dlq_redrive.after of now", rd.NextProbeAt, err)
	}
	// The wait survives a restart.
	dir := r.dir
	r.stop()
	r = newDeferRig(t, dir, hook)
	if got := r.groupRedrive(t, "enc"); len(got) != 1 || got[0].State != "probe_failed" || got[0].Probes < 1 || got[0].NextProbeAt == "" {
		t.Fatalf("after a restart: %+v", got)
	}

	healthy.Store(true)
	waitDeferred(t, 20*time.Second, "every message delivered once after healing", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ok) == 3
	})
	mu.Lock()
	for _, id := range ids {
		if ok[id] != 1 {
			t.Fatalf("%s delivered %d times after healing, want once: %v", id, ok[id], ok)
		}
	}
	mu.Unlock()
	rd = r.groupRedrive(t, "enc")[0]
	if rd.State != "idle" || rd.Redriven != 2 || rd.DeadLetters != 0 {
		t.Fatalf("after healing: %+v", rd)
	}
	// The oldest dead letter was probed (a failed probe, then the one
	// that went through); the others were redriven as attempt 1 again.
	waitDeferred(t, 10*time.Second, "the probes and the redrive in the traces", func() bool {
		probed, redriven := 0, 0
		for _, id := range ids {
			switch tr := strings.Join(r.trace(t, id), " "); {
			case strings.HasPrefix(tr, "retry/1 dead/1 retry/2 ") && strings.HasSuffix(tr, " delivered/2"):
				probed++
			case tr == "retry/1 dead/1 delivered/1":
				redriven++
			}
		}
		return probed == 1 && redriven == 2
	})
}

// TestDeferAndRedriveSettingsValidated: ack_timeout and dlq_redrive at and
// past their limits, on create and PATCH, and read back after a restart.
func TestDeferAndRedriveSettingsValidated(t *testing.T) {
	r := newDeferRig(t, "", newHookSink(t, nil))
	const url = `"url":"http://127.0.0.1:9/h"`
	for i, tc := range []struct {
		body, field string // field: the problem's, "" when created
	}{
		{`"ack_timeout":"1s"`, ""},
		{`"ack_timeout":"12h"`, ""},
		{`"ack_timeout":"999ms"`, "ack_timeout"},
		{`"ack_timeout":"12h0m0.001s"`, "ack_timeout"},
		{`"ack_timeout":"0s"`, "ack_timeout"},
		{`"ack_timeout":"1.5ms"`, "ack_timeout"},
		{`"ack_timeout":"soon"`, "ack_timeout"},
		{`"dlq_redrive":{"after":"1s"}`, ""},
		{`"dlq_redrive":{"after":"168h","rate_per_second":1000000}`, ""},
		{`"dlq_redrive":{"after":"999ms"}`, "dlq_redrive.after"},
		{`"dlq_redrive":{"after":"168h0m0.001s"}`, "dlq_redrive.after"},
		{`"dlq_redrive":{"after":"1m","rate_per_second":0}`, "dlq_redrive.rate_per_second"},
		{`"dlq_redrive":{"after":"1m","rate_per_second":1000001}`, "dlq_redrive.rate_per_second"},
		{`"dlq_redrive":{"after":"1m","rate":5}`, "dlq_redrive"},
		{`"dlq_redrive":{}`, "dlq_redrive.after"},
		{`"dlq_redrive":null`, ""},
	} {
		t.Run(tc.body, func(t *testing.T) {
			resp, data := do(t, "POST", r.api.URL+"/v1/subscriptions", ackJSON,
				strings.NewReader(fmt.Sprintf(`{"group":"g%d","topic":"jobs",%s,%s}`, i, url, tc.body)))
			if tc.field == "" {
				if resp.StatusCode != http.StatusCreated {
					t.Fatalf("%d %s", resp.StatusCode, data)
				}
				return
			}
			var p problem
			if err := json.Unmarshal(data, &p); err != nil || resp.StatusCode != 400 || p.Code != "invalid_subscription" || p.Field != tc.field {
				t.Fatalf("%d %s, want 400 invalid_subscription on %s", resp.StatusCode, data, tc.field)
			}
		})
	}
	// A pull subscription has no endpoint to probe.
	resp, data := do(t, "POST", r.api.URL+"/v1/subscriptions", ackJSON, strings.NewReader(`{"group":"pulls","topic":"jobs","dlq_redrive":{"after":"1m"}}`))
	if resp.StatusCode != 400 || !strings.Contains(string(data), "dlq_redrive") {
		t.Fatalf("pull with dlq_redrive: %d %s", resp.StatusCode, data)
	}
	// Set, changed, removed by PATCH, and kept across a restart.
	id := r.subscribe(t, `{"group":"patched","topic":"jobs",`+url+`,"ack_timeout":"2m","dlq_redrive":{"after":"10m","rate_per_second":5}}`)
	get := func() subscriptionJSON {
		t.Helper()
		resp, data := do(t, "GET", r.api.URL+"/v1/subscriptions/"+id, nil, nil)
		var s subscriptionJSON
		if err := json.Unmarshal(data, &s); err != nil || resp.StatusCode != 200 {
			t.Fatalf("get: %d %s %v", resp.StatusCode, data, err)
		}
		return s
	}
	patch := func(body string) {
		t.Helper()
		if resp, data := do(t, "PATCH", r.api.URL+"/v1/subscriptions/"+id, ackJSON, strings.NewReader(body)); resp.StatusCode != 200 {
			t.Fatalf("patch %s: %d %s", body, resp.StatusCode, data)
		}
	}
	if s := get(); s.AckTimeout != "2m0s" || s.DLQRedrive == nil || s.DLQRedrive.After != "10m0s" || *s.DLQRedrive.RatePerSecond != 5 {
		t.Fatalf("created: %+v", s)
	}
	patch(`{"ack_timeout":"30s","dlq_redrive":{"after":"1h"}}`)
	dir := r.dir
	r.stop()
	r = newDeferRig(t, dir, r.hook)
	if s := get(); s.AckTimeout != "30s" || s.DLQRedrive == nil || s.DLQRedrive.After != "1h0m0s" || *s.DLQRedrive.RatePerSecond != 5 {
		t.Fatalf("patched, after a restart: %+v %+v", s, s.DLQRedrive)
	}
	patch(`{"dlq_redrive":null}`)
	if s := get(); s.DLQRedrive != nil || s.AckTimeout != "30s" {
		t.Fatalf("dlq_redrive removed: %+v", s)
	}
}
