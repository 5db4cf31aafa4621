//go:build unix

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestSIGKILLDuringBatchedPush: a broker killed while a batched push
// subscription streams delivers, after its restart, every published
// message at least once, repeating at most what it had out
// (max_in_flight, which counts messages); an ordered one delivers each
// queue's messages for the first time in queue order.
func TestSIGKILLDuringBatchedPush(t *testing.T) {
	for _, ordered := range []bool{false, true} {
		t.Run(fmt.Sprintf("ordered=%v", ordered), func(t *testing.T) {
			rng := engineSeed(t)
			data := t.TempDir()
			args := []string{"broker", "--data", data, "--auto-create-topics", "--allow-private-webhooks"}
			var mu sync.Mutex
			delivered := map[string]int{}
			seen := map[int]int64{} // ordered: per queue, the highest offset first delivered
			total := 0
			var disorder []string
			sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				var els []struct {
					MsgID       string `json:"msg_id"`
					QueueID     int    `json:"queue_id"`
					QueueOffset int64  `json:"queue_offset"`
				}
				err := json.NewDecoder(r.Body).Decode(&els)
				if errors.Is(err, io.ErrUnexpectedEOF) {
					// The sender was SIGKILLed while it sent the body:
					// no delivery, and nothing settled by it.
					w.WriteHeader(400)
					return
				}
				if err != nil || r.Header.Get("Postbus-Batch-Size") == "" {
					t.Errorf("not a batch: %v", err)
					w.WriteHeader(400)
					return
				}
				mu.Lock()
				for _, e := range els {
					if ordered && delivered[e.MsgID] == 0 {
						if last, ok := seen[e.QueueID]; (ok && e.QueueOffset != last+1) || (!ok && e.QueueOffset != 0) {
							disorder = append(disorder, fmt.Sprintf("queue %d: offset %d first delivered after %d", e.QueueID, e.QueueOffset, last))
						}
						seen[e.QueueID] = max(seen[e.QueueID], e.QueueOffset)
					}
					delivered[e.MsgID]++
					total++
				}
				mu.Unlock()
			}))
			defer sink.Close()
			p := start(t, args...)
			const maxInFlight, batch = 40, 20
			ids := publishN(t, p.url, "work", 1200)
			resp, err := http.Post(p.url+"/v1/subscriptions", "application/json", strings.NewReader(fmt.Sprintf(
				`{"group":"g","topic":"work","url":%q,"max_in_flight":%d,"ordered":%v,"start_from":"earliest","batch":{"max_messages":%d,"max_wait":"5ms"}}`,
				sink.URL, maxInFlight, ordered, batch)))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 201 {
				t.Fatalf("create subscription: %d", resp.StatusCode)
			}
			kill := 100 + rng.IntN(700)
			deadline := time.Now().Add(30 * time.Second)
			for {
				mu.Lock()
				n := total
				mu.Unlock()
				if n >= kill || time.Now().After(deadline) {
					break
				}
				time.Sleep(time.Millisecond)
			}
			p.cmd.Process.Signal(syscall.SIGKILL)
			<-p.done
			mu.Lock()
			before := len(delivered)
			mu.Unlock()
			start(t, args...)
			dups := repeatsOnceAllDelivered(t, &mu, delivered, ids)
			t.Logf("killed after %d deliveries (%d messages); %d delivered again after the restart", kill, before, dups)
			if dups > maxInFlight {
				t.Fatalf("%d deliveries repeated after SIGKILL; max_in_flight is %d", dups, maxInFlight)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(disorder) > 0 {
				t.Fatalf("ordered, first deliveries out of queue order: %v", disorder[:min(5, len(disorder))])
			}
		})
	}
}

// TestBenchPushBatchBacklog runs `postbus bench push --batch --backlog`
// against a real broker: the subscription is paused while the tool
// publishes, resumed after, and every message arrives in batches.
func TestBenchPushBatchBacklog(t *testing.T) {
	p := start(t, "broker", "--data", t.TempDir(), "--auto-create-topics", "--allow-private-webhooks")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, postbusBin, "bench", "push", "--url", p.url, "--batch", "20", "--backlog",
		"--rate", "200", "--duration", "500ms", "--drain", "20s", "--interval", "0", "--conns", "4").CombinedOutput()
	if err != nil {
		t.Fatalf("bench push: %v\n%s", err, out)
	}
	for _, want := range []string{"batch=20/50ms", "missing 0", "deliveries/s of the backlog"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("the report lacks %q:\n%s", want, out)
		}
	}
}
