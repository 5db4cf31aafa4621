//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestReplicaFailoverWithTransactions: transactions prepared, committed
// and rolled back on a replica group's leader keep their states when it is
// SIGKILLed; the new leader answers each decision as before, commits what
// was left prepared, and every committed message is on its queue once.
func TestReplicaFailoverWithTransactions(t *testing.T) {
	g := startReplGroup(t, replOpts{})
	const topic = "orders"
	old, _, err := g.waitLeader(replWait)
	if err != nil {
		t.Fatal(err)
	}
	must := func(method, url string, hdr map[string]string, body string, want int) map[string]any {
		t.Helper()
		deadline := time.Now().Add(replWait)
		for {
			var b []byte
			if body != "" {
				b = []byte(body)
			}
			a, err := clCall(replPubClient, method, url, hdr, b)
			if err == nil && a.status == want {
				var out map[string]any
				if err := json.Unmarshal(a.body, &out); err != nil {
					t.Fatalf("%s %s: %v: %s", method, url, err, a)
				}
				return out
			}
			// A failover in progress answers 503 or nothing: retry, as a
			// producer does. Anything else is an answer.
			if (err == nil && a.status != http.StatusServiceUnavailable) || time.Now().After(deadline) {
				t.Fatalf("%s %s: %s; want %d", method, url, answerOf(a, err), want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	must("PUT", old.url+"/v1/topics/"+topic, nil, `{"queues":2}`, http.StatusCreated)
	must("PUT", old.url+"/v1/producer-groups/shop", nil, `{"check_url":"https://shop.example/check"}`, http.StatusCreated)
	prep := map[string]string{"Postbus-Transaction": "prepare", "Postbus-Producer-Group": "shop", "Postbus-Transaction-Timeout": "1h"}
	var committed, rolledBack, open []string
	for i := range 30 {
		id := must("POST", old.url+"/v1/topics/"+topic+"/messages", prep, fmt.Sprintf(`{"order":%d}`, i), http.StatusCreated)["transaction_id"].(string)
		switch i % 3 {
		case 0:
			must("POST", old.url+"/v1/transactions/"+id+"/commit", nil, "", http.StatusOK)
			committed = append(committed, id)
		case 1:
			must("POST", old.url+"/v1/transactions/"+id+"/rollback", nil, "", http.StatusOK)
			rolledBack = append(rolledBack, id)
		default:
			open = append(open, id) // the last ones answered just before the kill
		}
	}
	g.kill(old)
	leader, took, err := g.waitLeader(replFailoverBound)
	if err != nil || leader == old {
		t.Fatalf("no new leader after the kill of %s: %v", old.id, err)
	}
	t.Logf("new leader %s after %s", leader.id, took.Round(time.Millisecond))
	state := func(id string) string {
		return must("GET", leader.url+"/v1/transactions/"+id, nil, "", http.StatusOK)["state"].(string)
	}
	for _, c := range []struct {
		ids  []string
		want string
	}{{committed, "COMMITTED"}, {rolledBack, "ROLLED_BACK"}, {open, "PREPARED"}} {
		for _, id := range c.ids {
			if got := state(id); got != c.want {
				t.Fatalf("after the failover transaction %s is %s; want %s", id, got, c.want)
			}
		}
	}
	for _, id := range committed {
		must("POST", leader.url+"/v1/transactions/"+id+"/commit", nil, "", http.StatusOK)
		must("POST", leader.url+"/v1/transactions/"+id+"/rollback", nil, "", http.StatusConflict)
	}
	for _, id := range rolledBack {
		must("POST", leader.url+"/v1/transactions/"+id+"/commit", nil, "", http.StatusConflict)
	}
	for _, id := range open {
		must("POST", leader.url+"/v1/transactions/"+id+"/commit", nil, "", http.StatusOK)
		committed = append(committed, id)
	}
	// Each committed message on its queue once, nothing else.
	onQueue := map[string]int{}
	for q := range 2 {
		var page struct {
			Messages []struct {
				MsgID string `json:"msg_id"`
			} `json:"messages"`
		}
		out := must("GET", fmt.Sprintf("%s/v1/topics/%s/queues/%d/messages?offset=0&max=256", leader.url, topic, q), nil, "", http.StatusOK)
		b, err := json.Marshal(out)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &page); err != nil {
			t.Fatal(err)
		}
		for _, m := range page.Messages {
			onQueue[m.MsgID]++
		}
	}
	if len(onQueue) != len(committed) {
		t.Errorf("the queues hold %d messages; %d transactions were committed", len(onQueue), len(committed))
	}
	for _, id := range committed {
		msgID := lastPart(id)
		if onQueue[msgID] != 1 {
			t.Errorf("committed message %s is on its queue %d times; want once", msgID, onQueue[msgID])
		}
	}
}

// lastPart is a transaction id's message id (after its broker's name).
func lastPart(id string) string {
	for i := len(id) - 1; i >= 0; i-- {
		if id[i] == '~' {
			return id[i+1:]
		}
	}
	return id
}
