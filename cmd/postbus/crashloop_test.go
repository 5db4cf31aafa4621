package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var (
	flagCrashRounds = flag.Int("crashloop.rounds", 3, "SIGKILL and restart this many times")
	flagCrashSeed   = flag.Uint64("crashloop.seed", 0, "seed (0: from the clock, printed)")
)

// loopMsg is a message the broker answered 201 for.
type loopMsg struct {
	id, topic string
	gen       [2]int // the generations of its topic it may belong to (equal unless it raced a re-create)
	body      []byte
}

// TestCrashLoop runs the real binary under seeded random publishes (single
// and batch, bodies up to 2 MiB), a topic deleted and re-created while they
// run, and SIGKILL at a random moment, in a loop: after every restart each
// 201-acknowledged message of a live topic reads back by id exactly as
// published, and each of a deleted topic is gone.
//
//	go test -run TestCrashLoop ./cmd/postbus/ -crashloop.rounds=50
//	go test -run TestCrashLoop ./cmd/postbus/ -crashloop.seed=N   # replay
func TestCrashLoop(t *testing.T) {
	seed := *flagCrashSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("crash loop seed %d (replay with -crashloop.seed=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 5))
	data := t.TempDir()
	args := []string{"broker", "--data", data, "--flush", "sync", "--segment-size", "8MiB", "--max-message-bytes", "2MiB"}
	gens := map[string]int{"loop": 0, "race": 0}
	createdAt := map[string]string{}
	var acked []loopMsg
	client := &http.Client{Timeout: 30 * time.Second}

	// One start more than kills: the last only checks.
	for round := range *flagCrashRounds + 1 {
		p := start(t, args...)
		for topic, g := range gens {
			switch created := topicCreated(t, client, p.url, topic); {
			case g == 0:
				crashPut(t, client, p.url, topic)
				gens[topic] = 1
			case created == "":
				// Killed between a delete and the re-create.
				crashPut(t, client, p.url, topic)
				gens[topic]++
			case created != createdAt[topic]:
				gens[topic]++ // killed after the re-create, before it was answered
			}
			createdAt[topic] = topicCreated(t, client, p.url, topic)
		}

		// Every acknowledged message of a live generation is there, byte
		// for byte; those of deleted generations are not.
		for _, m := range acked {
			resp, err := client.Get(p.url + "/v1/messages/" + m.id + "/body")
			if err != nil {
				t.Fatalf("seed %d round %d: %v", seed, round, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			g := gens[m.topic]
			switch {
			case m.gen[0] == g && m.gen[1] == g:
				if resp.StatusCode != http.StatusOK || !bytes.Equal(body, m.body) {
					t.Fatalf("seed %d round %d: acknowledged message %s of %s (%d bytes): status %d, %d bytes read back, equal %v",
						seed, round, m.id, m.topic, len(m.body), resp.StatusCode, len(body), bytes.Equal(body, m.body))
				}
			case m.gen[1] < g:
				if resp.StatusCode != http.StatusNotFound {
					t.Fatalf("seed %d round %d: message %s of a deleted %s answers %d, want 404", seed, round, m.id, m.topic, resp.StatusCode)
				}
			case resp.StatusCode == http.StatusOK && !bytes.Equal(body, m.body):
				t.Fatalf("seed %d round %d: message %s of %s read back different", seed, round, m.id, m.topic)
			}
		}
		if round == *flagCrashRounds {
			p.stop(t)
			break
		}

		// Publish until a random number of acknowledgements, racing a
		// delete and re-create of "race", then SIGKILL.
		var mu sync.Mutex
		var clock atomic.Int64
		killAt := 20 + rng.IntN(200)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
		base := len(acked)
		type pending struct {
			m          []loopMsg
			start, end int64
		}
		var racing []pending
		var delStart, putEnd atomic.Int64
		delStart.Store(1 << 62)
		putEnd.Store(1 << 62)
		for w := range 6 {
			wrng := rand.New(rand.NewPCG(rng.Uint64(), uint64(w)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					topic := []string{"loop", "race"}[wrng.IntN(2)]
					n := 1
					if wrng.IntN(3) == 0 {
						n = 2 + wrng.IntN(4)
					}
					bodies := make([][]byte, n)
					for i := range bodies {
						size := 1 + wrng.IntN(2000)
						if wrng.IntN(12) == 0 {
							size = 1<<20 + wrng.IntN(1<<20) // over the old 1 MiB read chunk
						}
						bodies[i] = make([]byte, size)
						for j := range bodies[i] {
							bodies[i][j] = byte(wrng.Uint32())
						}
					}
					mu.Lock()
					g := gens[topic]
					mu.Unlock()
					start := clock.Add(1)
					ids, ok := crashPublish(client, p.url, topic, bodies)
					end := clock.Add(1)
					if !ok {
						continue // refused, killed or racing the delete: not acknowledged
					}
					ms := make([]loopMsg, len(ids))
					for i := range ids {
						ms[i] = loopMsg{id: ids[i], topic: topic, gen: [2]int{g, g}, body: bodies[i]}
					}
					mu.Lock()
					if topic == "race" {
						racing = append(racing, pending{ms, start, end})
					} else {
						acked = append(acked, ms...)
					}
					mu.Unlock()
				}
			}()
		}
		raced := false
		if rng.IntN(2) == 0 {
			raced = true
			wg.Add(1)
			go func() {
				defer wg.Done()
				for count()-base < killAt/2 {
					select {
					case <-stop:
						return
					case <-time.After(5 * time.Millisecond):
					}
				}
				delStart.Store(clock.Add(1))
				req, _ := http.NewRequest(http.MethodDelete, p.url+"/v1/topics/race", nil)
				if resp, err := client.Do(req); err == nil {
					resp.Body.Close()
				}
				crashPut(t, client, p.url, "race")
				putEnd.Store(clock.Add(1))
			}()
		}
		deadline := time.After(60 * time.Second)
	wait:
		for count()-base < killAt {
			select {
			case <-deadline:
				break wait
			case <-time.After(5 * time.Millisecond):
			}
		}
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-p.done
		close(stop)
		wg.Wait()
		// Whether the delete and re-create happened, the next start tells
		// (topicCreated); until then a message that raced it may belong
		// to either generation.
		for _, pd := range racing {
			for _, m := range pd.m {
				switch {
				case !raced || pd.end < delStart.Load():
				case pd.start > putEnd.Load():
					m.gen = [2]int{m.gen[0] + 1, m.gen[0] + 1}
				default:
					m.gen = [2]int{m.gen[0], m.gen[0] + 1}
				}
				acked = append(acked, m)
			}
		}
		t.Logf("round %d: %d acknowledged, SIGKILL after %d more", round, len(acked), len(acked)-base)
	}
}

// topicCreated returns a topic's created_at, or "" when it does not exist.
func topicCreated(tb testing.TB, client *http.Client, url, topic string) string {
	tb.Helper()
	resp, err := client.Get(url + "/v1/topics/" + topic)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return ""
	}
	var v struct {
		CreatedAt string `json:"created_at"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || resp.StatusCode != http.StatusOK || v.CreatedAt == "" {
		tb.Fatalf("GET topic %s: status %d, created_at %q, %v", topic, resp.StatusCode, v.CreatedAt, err)
	}
	return v.CreatedAt
}

func crashPut(tb testing.TB, client *http.Client, url, topic string) {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodPut, url+"/v1/topics/"+topic, strings.NewReader(`{"queues":4}`))
	resp, err := client.Do(req)
	if err != nil {
		return // killed under it
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		tb.Errorf("PUT topic %s: status %d", topic, resp.StatusCode)
	}
}

// crashPublish publishes bodies (one, or a batch) and returns their ids
// when the broker answered 201.
func crashPublish(client *http.Client, url, topic string, bodies [][]byte) ([]string, bool) {
	if len(bodies) == 1 {
		resp, err := client.Post(url+"/v1/topics/"+topic+"/messages", "application/octet-stream", bytes.NewReader(bodies[0]))
		if err != nil {
			return nil, false
		}
		defer resp.Body.Close()
		var res struct {
			MsgID string `json:"msg_id"`
		}
		if resp.StatusCode != http.StatusCreated || json.NewDecoder(resp.Body).Decode(&res) != nil {
			return nil, false
		}
		return []string{res.MsgID}, true
	}
	items := make([]string, len(bodies))
	for i, b := range bodies {
		items[i] = fmt.Sprintf(`{"body_base64":%q}`, base64.StdEncoding.EncodeToString(b))
	}
	resp, err := client.Post(url+"/v1/topics/"+topic+"/messages/batch", "application/json", strings.NewReader("["+strings.Join(items, ",")+"]"))
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	var res []struct {
		MsgID string `json:"msg_id"`
	}
	if resp.StatusCode != http.StatusCreated || json.NewDecoder(resp.Body).Decode(&res) != nil || len(res) != len(bodies) {
		return nil, false
	}
	ids := make([]string, len(res))
	for i, r := range res {
		ids[i] = r.MsgID
	}
	return ids, true
}
