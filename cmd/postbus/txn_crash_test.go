package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// txnPost sends a request to the broker and decodes its JSON answer; ok is
// false when the request failed or answered another status than want.
func txnPost(client *http.Client, method, url string, hdr map[string]string, body string, want int) (map[string]any, bool) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return nil, false
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != want {
		return nil, false
	}
	var out map[string]any
	if json.Unmarshal(data, &out) != nil {
		return nil, false
	}
	return out, true
}

func mustTxn(tb testing.TB, client *http.Client, method, url string, hdr map[string]string, body string, want int) map[string]any {
	tb.Helper()
	out, ok := txnPost(client, method, url, hdr, body, want)
	if !ok {
		tb.Fatalf("%s %s did not answer %d", method, url, want)
	}
	return out
}

// queuedIDs counts each message id on the topic's queues, read by offset.
func queuedIDs(tb testing.TB, url, topic string, queues int) map[string]int {
	tb.Helper()
	out := map[string]int{}
	for q := 0; q < queues; q++ {
		for off := 0; ; {
			var page struct {
				Messages []struct {
					MsgID string `json:"msg_id"`
				} `json:"messages"`
			}
			getJSON(tb, fmt.Sprintf("%s/v1/topics/%s/queues/%d/messages?offset=%d&max=256", url, topic, q, off), &page)
			for _, m := range page.Messages {
				out[m.MsgID]++
			}
			if len(page.Messages) == 0 {
				break
			}
			off += len(page.Messages)
		}
	}
	return out
}

// TestSIGKILLWithTransactions kills the broker with transactions prepared,
// decided, being committed and with a check in flight: after the restart
// each keeps its state, a commit cut by the kill is stored once when sent
// again, and the check is asked again and decides.
func TestSIGKILLWithTransactions(t *testing.T) {
	data := t.TempDir()
	args := []string{"broker", "--data", data, "--auto-create-topics", "--allow-private-webhooks", "--default-queues", "2",
		"--transaction-check-interval", "200ms", "--transaction-check-max", "100", "--transaction-check-timeout", "20s"}

	// The check endpoint holds every check until released, then commits.
	var held atomic.Int64
	release := make(chan struct{})
	var relOnce sync.Once
	defer relOnce.Do(func() { close(release) })
	var checkedMu sync.Mutex
	checked := map[string]int{}
	ep := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var c struct {
			MsgID string `json:"msg_id"`
		}
		if err := json.NewDecoder(r.Body).Decode(&c); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		checkedMu.Lock()
		checked[c.MsgID]++
		checkedMu.Unlock()
		held.Add(1)
		select {
		case <-release:
		case <-r.Context().Done(): // the broker was killed
			return
		}
		fmt.Fprint(w, `{"status":"commit"}`)
	}))
	defer ep.Close()

	p := start(t, args...)
	client := &http.Client{Timeout: 30 * time.Second}
	jsonCT := map[string]string{"Content-Type": "application/json"}
	mustTxn(t, client, "PUT", p.url+"/v1/producer-groups/shop", jsonCT, `{"check_url":"`+ep.URL+`/check"}`, 201)
	prepare := func(timeout string, i int) string {
		out := mustTxn(t, client, "POST", p.url+"/v1/topics/orders/messages", map[string]string{
			"Postbus-Transaction": "prepare", "Postbus-Producer-Group": "shop", "Postbus-Transaction-Timeout": timeout,
		}, fmt.Sprintf("order %d", i), 201)
		return out["transaction_id"].(string)
	}

	// Decided before the kill, left prepared, and committed while it comes.
	var committed, rolledBack, prepared, racing []string
	for i := range 10 {
		committed = append(committed, prepare("1h", i))
		mustTxn(t, client, "POST", p.url+"/v1/transactions/"+committed[i]+"/commit", nil, "", 200)
		rolledBack = append(rolledBack, prepare("1h", 100+i))
		mustTxn(t, client, "POST", p.url+"/v1/transactions/"+rolledBack[i]+"/rollback", nil, "", 200)
		prepared = append(prepared, prepare("1h", 200+i))
	}
	for i := range 200 {
		racing = append(racing, prepare("1h", 300+i))
	}
	// One whose check is in flight at the kill.
	checkedTx := prepare("10ms", 999)
	deadline := time.Now().Add(30 * time.Second)
	for held.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the check never came")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// Commits in flight when the kill comes.
	var acked sync.Map
	var wg sync.WaitGroup
	var next atomic.Int64
	var done atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(len(racing)) {
					return
				}
				if _, ok := txnPost(client, "POST", p.url+"/v1/transactions/"+racing[i]+"/commit", nil, "", 200); !ok {
					return // the broker is gone
				}
				acked.Store(racing[i], true)
				done.Add(1)
			}
		}()
	}
	for done.Load() < 40 {
		if time.Now().After(deadline) {
			t.Fatal("commits did not go through")
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.done
	wg.Wait()
	held.Store(0)
	relOnce.Do(func() { close(release) }) // checks from now on commit

	p = start(t, args...)
	state := func(id string) string {
		return mustTxn(t, client, "GET", p.url+"/v1/transactions/"+id, nil, "", 200)["state"].(string)
	}
	for _, c := range []struct {
		ids  []string
		want string
	}{{committed, "COMMITTED"}, {rolledBack, "ROLLED_BACK"}, {prepared, "PREPARED"}} {
		for _, id := range c.ids {
			if got := state(id); got != c.want {
				t.Fatalf("after the restart transaction %s is %s; want %s", id, got, c.want)
			}
		}
	}
	nAcked := 0
	for _, id := range racing {
		if _, ok := acked.Load(id); ok {
			nAcked++
			if got := state(id); got != "COMMITTED" {
				t.Fatalf("commit of %s was acknowledged, and after the restart it is %s", id, got)
			}
		}
		// The producer sends every commit it did not see answered again.
		mustTxn(t, client, "POST", p.url+"/v1/transactions/"+id+"/commit", nil, "", 200)
	}
	// The check cut by the kill is asked again, and its commit decides.
	deadline = time.Now().Add(30 * time.Second)
	for state(checkedTx) != "COMMITTED" {
		if time.Now().After(deadline) {
			t.Fatalf("the transaction whose check the kill cut is still %s", state(checkedTx))
		}
		time.Sleep(20 * time.Millisecond)
	}
	checkedMu.Lock()
	n := checked[checkedTx]
	checkedMu.Unlock()
	if n < 2 {
		t.Fatalf("the transaction was checked %d times; want again after the restart", n)
	}
	for _, id := range prepared[:5] {
		mustTxn(t, client, "POST", p.url+"/v1/transactions/"+id+"/commit", nil, "", 200)
	}
	for _, id := range prepared[5:] {
		mustTxn(t, client, "POST", p.url+"/v1/transactions/"+id+"/rollback", nil, "", 200)
	}

	// Each committed message is on its queue exactly once; nothing else is.
	want := map[string]bool{checkedTx: true}
	for _, ids := range [][]string{committed, racing, prepared[:5]} {
		for _, id := range ids {
			want[id] = true
		}
	}
	got := queuedIDs(t, p.url, "orders", 2)
	for id, n := range got {
		if !want[id] {
			t.Errorf("message %s is on a queue, but its transaction was not committed", id)
		}
		if n != 1 {
			t.Errorf("message %s is on its queue %d times", id, n)
		}
	}
	for id := range want {
		if got[id] == 0 {
			t.Errorf("committed message %s is on no queue", id)
		}
	}
	replayed := 0
	for _, id := range racing {
		if r := mustTxn(t, client, "GET", p.url+"/v1/transactions/"+id, nil, "", 200)["reason"]; r == "committed; its row marked from the log after a restart" {
			replayed++
		}
	}
	t.Logf("%d of %d racing commits were acknowledged before the kill; %d commits' rows were marked from the log by the replay",
		nAcked, len(racing), replayed)
}

// TestSIGKILLDuringPrepares kills the broker while producers prepare and
// commit as fast as they can. A prepare is answered once its record is
// durable, before meta.db holds its row, and a commit may be decided before
// the row exists: after the restart every answered prepare is a
// transaction (the replay writes the rows the kill cut), every answered
// commit is committed, and each committed message is on its queue once.
func TestSIGKILLDuringPrepares(t *testing.T) {
	data := t.TempDir()
	args := []string{"broker", "--data", data, "--auto-create-topics", "--allow-private-webhooks", "--default-queues", "2"}
	p := start(t, args...)
	client := &http.Client{Timeout: 30 * time.Second}
	mustTxn(t, client, "PUT", p.url+"/v1/producer-groups/shop", map[string]string{"Content-Type": "application/json"},
		`{"check_url":"http://127.0.0.1:9/never-checked"}`, 201)

	// Each worker prepares, then commits two in three; a third stay prepared.
	var mu sync.Mutex
	prepared := map[string]bool{} // answered prepares: true once their commit was answered
	var answered atomic.Int64
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5000; i++ { // bounded; the kill ends it long before
				out, ok := txnPost(client, "POST", p.url+"/v1/topics/orders/messages", map[string]string{
					"Postbus-Transaction": "prepare", "Postbus-Producer-Group": "shop", "Postbus-Transaction-Timeout": "1h",
				}, fmt.Sprintf("order %d-%d", w, i), 201)
				if !ok {
					return // the broker is gone
				}
				id := out["transaction_id"].(string)
				mu.Lock()
				prepared[id] = false
				mu.Unlock()
				answered.Add(1)
				if i%3 == 2 {
					continue
				}
				if _, ok := txnPost(client, "POST", p.url+"/v1/transactions/"+id+"/commit", nil, "", 200); !ok {
					return
				}
				mu.Lock()
				prepared[id] = true
				mu.Unlock()
			}
		}()
	}
	deadline := time.Now().Add(60 * time.Second)
	for answered.Load() < 600 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d prepares answered in a minute", answered.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.done
	wg.Wait()

	p = start(t, args...)
	var committed, open int
	for id, commitAnswered := range prepared {
		out, ok := txnPost(client, "GET", p.url+"/v1/transactions/"+id, nil, "", 200)
		if !ok {
			t.Fatalf("prepare of %s was answered, and after the restart it is no transaction", id)
		}
		switch st := out["state"].(string); {
		case commitAnswered && st != "COMMITTED":
			t.Fatalf("commit of %s was answered, and after the restart it is %s", id, st)
		case st == "ROLLED_BACK":
			t.Fatalf("transaction %s was rolled back by the restart", id)
		}
		// The producer sends the commit again when it saw no answer, and
		// commits what it left prepared.
		mustTxn(t, client, "POST", p.url+"/v1/transactions/"+id+"/commit", nil, "", 200)
		if commitAnswered {
			committed++
		} else {
			open++
		}
	}
	got := queuedIDs(t, p.url, "orders", 2)
	for id := range prepared {
		if got[id] != 1 {
			t.Errorf("committed message %s is on its queue %d times; want once", id, got[id])
		}
	}
	if len(got) != len(prepared) {
		t.Errorf("the queues hold %d messages; %d transactions were committed", len(got), len(prepared))
	}
	t.Logf("%d prepares answered before the kill: %d commits answered, %d committed after the restart", len(prepared), committed, open)
}
