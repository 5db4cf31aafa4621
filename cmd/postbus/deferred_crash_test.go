package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestSIGKILLWithDeferredDeliveries: deliveries answered 202 are held
// across a SIGKILL of the broker: after the restart their tokens still
// acknowledge them (and those are not delivered again), and those left
// unacknowledged come back as the next attempt once their ack_timeout
// passes. A new loop counts the held ones against max_in_flight.
func TestSIGKILLWithDeferredDeliveries(t *testing.T) {
	data := t.TempDir()
	args := []string{"broker", "--data", data, "--auto-create-topics", "--allow-private-webhooks"}
	type delivery struct {
		id, token, attempt string
	}
	var mu sync.Mutex
	var got []delivery
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		d := delivery{r.Header.Get("Postbus-Message-Id"), r.Header.Get("Postbus-Ack-Token"), r.Header.Get("Postbus-Attempt")}
		mu.Lock()
		got = append(got, d)
		mu.Unlock()
		if d.attempt == "1" {
			w.WriteHeader(http.StatusAccepted)
		}
	}))
	defer sink.Close()
	deliveries := func() []delivery {
		mu.Lock()
		defer mu.Unlock()
		return append([]delivery(nil), got...)
	}
	waitCond := func(what string, limit time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(limit)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out after %s waiting for %s; deliveries %v", limit, what, deliveries())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	p := start(t, args...)
	ids := publishN(t, p.url, "work", 10)
	const ackTimeout = 10 * time.Second
	resp, err := http.Post(p.url+"/v1/subscriptions", "application/json", strings.NewReader(fmt.Sprintf(
		`{"group":"g","topic":"work","url":%q,"max_in_flight":10,"start_from":"earliest","ack_timeout":%q}`, sink.URL, ackTimeout)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("create subscription: %d", resp.StatusCode)
	}
	waitCond("10 deliveries answered 202", 30*time.Second, func() bool { return len(deliveries()) == 10 })
	// Held: the group's offsets are past them, and the ten are in flight
	// as their copies' pending timers (the group view counts those).
	waitCond("the deliveries held", 30*time.Second, func() bool {
		var g struct {
			Lag    int64 `json:"lag"`
			Queues []struct {
				Topic    string `json:"topic"`
				InFlight int    `json:"in_flight"`
			} `json:"queues"`
		}
		getJSON(t, p.url+"/v1/groups/g", &g)
		held, out := 0, 0
		for _, q := range g.Queues {
			if strings.HasPrefix(q.Topic, "%RETRY%") {
				held += q.InFlight
			} else {
				out += q.InFlight
			}
		}
		return g.Lag == 0 && held == 10 && out == 0
	})
	killed := time.Now()
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	p = start(t, args...)
	if since := time.Since(killed); since > ackTimeout/2 {
		t.Fatalf("the restart took %s, too close to the ack_timeout %s for the test to hold", since, ackTimeout)
	}

	// Half of them are acknowledged after the restart.
	first := deliveries()
	byID := map[string]delivery{}
	for _, d := range first {
		byID[d.id] = d
	}
	acked := map[string]bool{}
	for _, id := range ids[:5] {
		resp, err := http.Post(p.url+"/v1/acks/"+byID[id].token, "application/json", strings.NewReader(`{"status":"done"}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("ack of %s after the restart: %d %s", id, resp.StatusCode, body)
		}
		acked[id] = true
	}
	// The others come back as attempt 2 once their ack_timeout passed.
	waitCond("the unacknowledged back after their ack_timeout", 30*time.Second, func() bool { return len(deliveries()) >= 15 })
	if since := time.Since(killed); since < ackTimeout-time.Second {
		t.Fatalf("the second attempts came %s after the kill, before the ack_timeout %s", since, ackTimeout)
	}
	seen := map[string]int{}
	for _, d := range deliveries()[10:] {
		if acked[d.id] || d.attempt != "2" {
			t.Fatalf("after the restart: %+v (acknowledged: %v)", d, acked[d.id])
		}
		seen[d.id]++
	}
	for _, id := range ids[5:] {
		if seen[id] != 1 {
			t.Fatalf("%s came back %d times after its ack_timeout, want once", id, seen[id])
		}
	}
	// A token of one that timed out is expired now.
	resp, err = http.Post(p.url+"/v1/acks/"+byID[ids[9]].token, "application/json", strings.NewReader(`{"status":"done"}`))
	if err != nil {
		t.Fatal(err)
	}
	var prob struct {
		Code string `json:"code"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&prob); err != nil {
		t.Fatalf("decode: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGone || prob.Code != "ack_token_expired" {
		t.Fatalf("ack after the timeout: %d %s", resp.StatusCode, prob.Code)
	}
}
