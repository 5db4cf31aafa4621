package main

import (
	"bytes"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lostPub is a message the broker answered 201 for, with the queue offset
// it was given.
type lostPub struct {
	id    string
	queue int
	qoff  int64
}

func publishOffset(t *testing.T, client *http.Client, url, topic string, body []byte) lostPub {
	t.Helper()
	resp, err := client.Post(url+"/v1/topics/"+topic+"/messages", "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		MsgID       string `json:"msg_id"`
		QueueID     int    `json:"queue_id"`
		QueueOffset int64  `json:"queue_offset"`
	}
	if resp.StatusCode != http.StatusCreated || json.NewDecoder(resp.Body).Decode(&r) != nil {
		t.Fatalf("publish to %s: status %d", topic, resp.StatusCode)
	}
	return lostPub{r.MsgID, r.QueueID, r.QueueOffset}
}

// segmentsOf lists the commitlog's segment files, oldest first.
func segmentsOf(t *testing.T, data string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(data, "commitlog", "[0-9]*"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^[0-9]{20}$`)
	var segs []string
	for _, n := range names {
		if re.MatchString(filepath.Base(n)) {
			segs = append(segs, n)
		}
	}
	slices.Sort(segs)
	return segs
}

// writtenBytes is the length of a segment without its zero (preallocated) tail.
func writtenBytes(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(bytes.TrimRight(b, "\x00")))
}

// readyDetail returns the /readyz answer's body.
func readyDetail(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func metricValue(t *testing.T, url, name string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// TestSIGKILLThenNewestSegmentCut: messages acknowledged after the last
// checkpoint, then SIGKILL, then the newest segment cut (or removed) while
// the broker is stopped, below what was acknowledged. The loss must be
// reported, and no queue offset an earlier 201 gave may be handed to a new
// message (found by the hostile pass: the offsets acknowledged after the
// checkpoint were reused). The report must survive a later clean restart.
// Variants remove the derived files too: the queue-offset reservations
// still prove the loss and keep the offsets.
func TestSIGKILLThenNewestSegmentCut(t *testing.T) {
	for _, tc := range []struct {
		name   string
		remove []string // besides the cut
		cut    func(t *testing.T, seg string)
	}{
		{"cut to half", nil, cutHalf},
		{"cut to zero", nil, func(t *testing.T, seg string) { truncate(t, seg, 0) }},
		{"removed", nil, func(t *testing.T, seg string) {
			if err := os.Remove(seg); err != nil {
				t.Fatal(err)
			}
		}},
		{"cut, consume queues removed", []string{"consumequeue"}, cutHalf},
		{"cut, checkpoint removed", []string{"checkpoint.json"}, cutHalf},
		{"cut, consume queues, key index and checkpoint removed", []string{"consumequeue", "index", "checkpoint.json"}, cutHalf},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 1))
			data := t.TempDir()
			// No checkpoint but the one at a clean stop: what is published
			// after the restart below is acknowledged after the checkpoint.
			args := []string{"broker", "--data", data, "--flush", "sync", "--segment-size", "1MiB",
				"--max-message-bytes", "64KiB", "--checkpoint-interval", "1h"}
			client := &http.Client{Timeout: 30 * time.Second}
			body := func() []byte {
				b := make([]byte, 2000+rng.IntN(2000))
				for i := range b {
					b[i] = byte(rng.Uint32())
				}
				return b
			}
			p := start(t, args...)
			req, _ := http.NewRequest(http.MethodPut, p.url+"/v1/topics/t", strings.NewReader(`{"queues":2}`))
			if resp, err := client.Do(req); err != nil || resp.StatusCode != http.StatusCreated {
				t.Fatalf("create topic: %v %v", resp, err)
			}
			var acked []lostPub
			for range 300 {
				acked = append(acked, publishOffset(t, client, p.url, "t", body()))
			}
			p.stop(t)
			p = start(t, args...)
			for range 150 {
				acked = append(acked, publishOffset(t, client, p.url, "t", body()))
			}
			if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-p.done
			segs := segmentsOf(t, data)
			if len(segs) < 2 {
				t.Fatalf("want at least two segments, have %v", segs)
			}
			tc.cut(t, segs[len(segs)-1])
			for _, r := range tc.remove {
				if err := os.RemoveAll(filepath.Join(data, r)); err != nil {
					t.Fatal(err)
				}
			}

			p = start(t, args...)
			logs := p.Logs()
			if !strings.Contains(logs, "ends before what was stored") {
				t.Errorf("no ERROR about the lost tail")
			}
			// Which acknowledged messages survived: the highest offset a
			// 201 gave per queue, and the offsets of lost ones.
			maxAcked := map[int]int64{}
			lost := 0
			for _, a := range acked {
				maxAcked[a.queue] = max(maxAcked[a.queue], a.qoff)
				resp, err := client.Get(p.url + "/v1/messages/" + a.id)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusNotFound {
					lost++
				}
			}
			if lost == 0 {
				t.Fatalf("seed %d: the cut lost nothing; the test must cut below what was acknowledged", seed)
			}
			for range 40 {
				n := publishOffset(t, client, p.url, "t", body())
				if n.qoff <= maxAcked[n.queue] {
					t.Fatalf("seed %d: a new message took %d/%d, at or below %d which a 201 gave before the crash (%d acknowledged messages lost)",
						seed, n.queue, n.qoff, maxAcked[n.queue], lost)
				}
			}
			first := readyDetail(t, p.url)
			if !strings.Contains(first, "acknowledged records lost") {
				t.Errorf("/readyz does not list the lost span: %s", first)
			}
			// The report outlives a clean restart.
			p.stop(t)
			p = start(t, args...)
			if got := readyDetail(t, p.url); !strings.Contains(got, "acknowledged records lost") {
				t.Errorf("after a clean restart /readyz no longer lists the lost span: %s (before: %s)", got, first)
			}
			if v := metricValue(t, p.url, "postbus_commitlog_quarantined_spans"); v == "" || v == "0" {
				t.Errorf("after a clean restart postbus_commitlog_quarantined_spans = %q, want at least 1", v)
			}
			p.stop(t)
		})
	}
}

func cutHalf(t *testing.T, seg string) { truncate(t, seg, writtenBytes(t, seg)/2) }

func truncate(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}
