package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"
)

// killLedger is what the pullers of TestSIGKILLPullersNeverRepeatAnAck
// saw, across the broker's restarts.
type killLedger struct {
	mu       sync.Mutex
	acked    map[string]string // msg id → when its ack answered acked
	attempts map[string][]int  // msg id → the attempts it was handed out as
	errs     []string
	// inDoubt are the receipts of acks whose request the kill cut off
	// (receipt → msg id): the broker may have settled them or not, so
	// they are sent again after the restart, as a client would.
	inDoubt map[string]string
}

// retryInDoubt acks again the receipts whose ack got no answer: a settled
// one answers acked (receipts are idempotent across restarts) and counts
// as acked; one that was not settled answers stale and its message comes
// back by itself.
func (l *killLedger) retryInDoubt(c pullClient) {
	c.tb.Helper()
	l.mu.Lock()
	receipts := make([]string, 0, len(l.inDoubt))
	for r := range l.inDoubt {
		receipts = append(receipts, r)
	}
	l.mu.Unlock()
	if len(receipts) == 0 {
		return
	}
	statuses := c.settle("ack", receipts, nil)
	l.mu.Lock()
	defer l.mu.Unlock()
	acked := 0
	for i, st := range statuses {
		if st == "acked" {
			l.acked[l.inDoubt[receipts[i]]] = "ack retried after the kill"
			acked++
		}
		delete(l.inDoubt, receipts[i])
	}
	c.tb.Logf("%d acks cut off by the kill sent again: %d answered acked (settled before the kill)", len(receipts), acked)
}

func (l *killLedger) pulled(m pulledMsg, epoch int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if at, ok := l.acked[m.MsgID]; ok {
		l.errs = append(l.errs, fmt.Sprintf("%s handed out again (epoch %d, attempt %d) after its ack answered acked (%s); attempts before %v",
			m.MsgID, epoch, m.Attempt, at, l.attempts[m.MsgID]))
	}
	for _, a := range l.attempts[m.MsgID] {
		if a == m.Attempt {
			l.errs = append(l.errs, fmt.Sprintf("%s handed out twice as attempt %d (epoch %d; attempts %v)", m.MsgID, a, epoch, l.attempts[m.MsgID]))
		}
	}
	l.attempts[m.MsgID] = append(l.attempts[m.MsgID], m.Attempt)
}

// killPuller pulls, acks, nacks and drops until its broker is gone.
func killPuller(c pullClient, rng *rand.Rand, epoch int, l *killLedger) {
	post := func(path string, body any, out any) bool {
		st, err := c.try(path, body, out)
		return err == nil && st == 200 // an error: killed
	}
	for range 2000 { // bounded: the kill ends it far sooner
		var got struct{ Messages []pulledMsg }
		max := []int{1, 5, 32}[rng.IntN(3)]
		if !post(fmt.Sprintf("/v1/groups/workers/topics/work/pull?max=%d&wait=1s&visibility=2s", max), nil, &got) {
			return
		}
		var acks, nacks []string
		byReceipt := map[string]string{}
		for _, m := range got.Messages {
			l.pulled(m, epoch)
			byReceipt[m.Receipt] = m.MsgID
			switch x := rng.Float64(); {
			case x < 0.6:
				acks = append(acks, m.Receipt)
			case x < 0.8:
				nacks = append(nacks, m.Receipt)
			}
		}
		if len(acks) > 0 {
			var res struct {
				Results []struct{ Receipt, Status string }
			}
			if !post("/v1/groups/workers/ack", map[string]any{"receipts": acks}, &res) {
				l.mu.Lock()
				for _, r := range acks {
					l.inDoubt[r] = byReceipt[r]
				}
				l.mu.Unlock()
				return
			}
			l.mu.Lock()
			for _, r := range res.Results {
				if r.Status == "acked" {
					l.acked[byReceipt[r.Receipt]] = fmt.Sprintf("epoch %d", epoch)
				}
			}
			l.mu.Unlock()
		}
		if len(nacks) > 0 {
			var res struct {
				Results []struct{ Receipt, Status string }
			}
			if !post("/v1/groups/workers/nack", map[string]any{"receipts": nacks, "delay": "1s"}, &res) {
				return
			}
		}
	}
}

// TestSIGKILLPullersNeverRepeatAnAck runs the real binary as the hostile
// tester's S4-3 script did: two pullers (max 1, 5 or 32, visibility 2s,
// about 60% acked, 20% nacked, the rest left to run out) on a two-queue
// topic, with --offset-interval 1s, while the broker is SIGKILLed every
// few seconds. No message whose ack answered acked is handed out again,
// none is handed out twice as the same attempt, and none is lost. Before
// the fix, a few hundred messages in, acked ones came back both without a
// crash (two pullers handed the same message at once) and after one.
func TestSIGKILLPullersNeverRepeatAnAck(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	data := t.TempDir()
	args := []string{"broker", "--data", data, "--auto-create-topics", "--checkpoint-interval", "1s", "--offset-interval", "1s"}
	p := start(t, args...)
	client := &http.Client{Timeout: 20 * time.Second}
	req, _ := http.NewRequest(http.MethodPut, p.url+"/v1/topics/work", bytes.NewReader([]byte(`{"queues":2}`)))
	if resp, err := client.Do(req); err != nil || resp.StatusCode >= 300 {
		t.Fatalf("create topic: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	const n = 600
	batch := make([]map[string]string, n)
	for i := range batch {
		batch[i] = map[string]string{"body": fmt.Sprint("job ", i)}
	}
	body, _ := json.Marshal(batch)
	resp, err := client.Post(p.url+"/v1/topics/work/messages/batch", "application/json", bytes.NewReader(body))
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("publish: %v %v", resp, err)
	}
	var published []struct {
		MsgID string `json:"msg_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&published); err != nil || len(published) != n {
		t.Fatalf("publish answered %d messages (%v)", len(published), err)
	}
	resp.Body.Close()

	l := &killLedger{acked: map[string]string{}, attempts: map[string][]int{}, inDoubt: map[string]string{}}
	for epoch := range 3 {
		var wg sync.WaitGroup
		for range 2 {
			prng := rand.New(rand.NewPCG(rng.Uint64(), 5))
			wg.Add(1)
			go func() { defer wg.Done(); killPuller(pullClient{url: p.url, client: client}, prng, epoch, l) }()
		}
		time.Sleep(time.Duration(1500+rng.IntN(1500)) * time.Millisecond) // the work the kill interrupts
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		wg.Wait()
		p = start(t, args...)
		l.retryInDoubt(pullClient{tb: t, url: p.url, client: client})
	}
	// Drain: ack whatever comes until nothing does.
	deadline := time.Now().Add(60 * time.Second)
	for idle := 0; idle < 3 && time.Now().Before(deadline); {
		var got struct{ Messages []pulledMsg }
		c := pullClient{tb: t, url: p.url, client: client}
		if st := c.post("/v1/groups/workers/topics/work/pull?max=32&wait=2s&visibility=30s", nil, &got); st != 200 {
			t.Fatalf("drain pull: %d", st)
		}
		if len(got.Messages) == 0 {
			idle++
			continue
		}
		idle = 0
		for _, m := range got.Messages {
			l.pulled(m, -1)
		}
		for i, st := range c.settle("ack", receiptsOf(got.Messages), nil) {
			if st == "acked" {
				l.acked[got.Messages[i].MsgID] = "drain"
			}
		}
	}
	for _, e := range l.errs[:min(len(l.errs), 10)] {
		t.Error(e)
	}
	if len(l.errs) > 10 {
		t.Errorf("and %d more", len(l.errs)-10)
	}
	for _, m := range published {
		if _, ok := l.acked[m.MsgID]; !ok {
			t.Errorf("%s never acked (attempts %v): lost", m.MsgID, l.attempts[m.MsgID])
		}
	}
}
