//go:build unix

package main

import (
	"encoding/json"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestClusterPausedBrokerKeepsItsPeers: a broker stopped (SIGSTOP) while
// a forward of its was in flight found, once continued, that forward's
// deadline passed, took the other broker for hung and skipped it for 10s:
// publishes through it to that broker's topics answered 503, and its
// subscription sync left that broker out, so a subscription deleted while
// it was stopped went on delivering (TestClusterChaos -chaos.subfaults,
// seed 204: 81 deliveries after the delete). A deadline that fires late
// says this broker was not running; the other one is not marked down.
func TestClusterPausedBrokerKeepsItsPeers(t *testing.T) {
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b"}, "expiry=30s", "--forward-timeout", "1s")
	fc.putTopic("far", "broker-b")
	publishVia(t, fc.url("broker-a"), "far", "warm-up") // a route cached, a connection open

	a, b := fc.brokers["broker-a"], fc.brokers["broker-b"]
	stopProc(t, b)
	answered := make(chan clAnswer, 1)
	go func() {
		// Forwarded to the stopped broker-b, with a 1s deadline.
		a, err := clTry("POST", fc.url("broker-a")+"/v1/topics/far/messages", map[string]string{"Content-Type": "text/plain"}, []byte("in flight"))
		if err != nil {
			a.status = -1
		}
		answered <- a
	}()
	time.Sleep(200 * time.Millisecond) // the forward is sent
	stopProc(t, a)
	time.Sleep(3 * time.Second) // broker-a stopped past its forward's deadline
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // broker-a meets its late deadline before broker-b can answer
	if err := b.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	t.Logf("the publish in flight: %s", <-answered)

	got := clDo(t, "POST", fc.url("broker-a")+"/v1/topics/far/messages", map[string]string{"Content-Type": "text/plain"}, []byte("after"))
	if got.status != 201 {
		t.Errorf("publish through broker-a just after it was continued: %s; want 201 (broker-b is up and was never hung)", got)
	}
	m := clDo(t, "GET", fc.url("broker-a")+"/metrics", nil, nil)
	if strings.Contains(string(m.body), `postbus_cluster_broker_skipped_total{broker="broker-b",reason="timeout"} 1`) {
		t.Errorf("broker-a marked broker-b down for a deadline that passed while broker-a was stopped: %s", grepLines(string(m.body), "skipped_total"))
	}
	if !strings.Contains(string(m.body), "postbus_cluster_late_deadlines_total 1") {
		t.Errorf("broker-a's late deadline is not counted: %s", grepLines(string(m.body), "late_deadlines"))
	}
}

// TestClusterPullDeadlines (issue 19, F8): a pull through a broker that
// does not hold the topic forwards it to the holders with a deadline.
//   - The whole pull takes at most its wait plus one forward timeout: the
//     asks for ready messages, one holder after another, used to come on
//     top of the long poll's full wait (two hung holders and wait=1s:
//     3s, with a 1s forward timeout).
//   - A holder that was hung when the pull reached it, and reads it only
//     after the forwarding broker gave up, pulled anyway: the message got
//     an attempt nobody received (the next pull handed it out as attempt
//     2, or not at all until its visibility passed). It now pulls
//     nothing.
func TestClusterPullDeadlines(t *testing.T) {
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b", "broker-c"}, "expiry=30s", "--forward-timeout", "1s")
	fc.putTopic("trio", "broker-a", "broker-b", "broker-c")
	fc.putTopic("solo", "broker-b")
	pull := func(via, topic, wait string) (clAnswer, time.Duration) {
		t.Helper()
		start := time.Now()
		a, err := clTry("POST", fc.url(via)+"/v1/groups/g/topics/"+topic+"/pull?wait="+wait, nil, nil)
		if err != nil {
			t.Fatalf("pull %s through %s: %v", topic, via, err)
		}
		return a, time.Since(start)
	}
	// Every holder asked once, so the group exists on each.
	if a, _ := pull("broker-a", "trio", "0s"); a.status != 200 {
		t.Fatalf("first pull: %s", a)
	}

	b, c := fc.brokers["broker-b"], fc.brokers["broker-c"]
	stopProc(t, b)
	stopProc(t, c)
	a, took := pull("broker-a", "trio", "1s")
	t.Logf("pull wait=1s, two of three holders hung: %s after %s", a, took.Round(time.Millisecond))
	if limit := 1*time.Second + 1*time.Second + 700*time.Millisecond; took > limit {
		t.Errorf("pull with wait=1s and a 1s forward timeout took %s; want at most the wait plus one forward timeout (%s with slack)", took.Round(time.Millisecond), limit)
	}
	if a.status != 200 {
		t.Errorf("pull with broker-a answering: %s; want 200", a)
	}
	for _, p := range []*proc{b, c} {
		if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	}

	publishVia(t, fc.url("broker-b"), "solo", "pulled-once")
	stopProc(t, b)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if a, _ := pull("broker-a", "solo", "2s"); a.status != 503 {
				t.Errorf("pull of solo with its only holder hung: %s; want 503", a)
			}
		})
	}
	wg.Wait()
	time.Sleep(500 * time.Millisecond) // broker-b stays hung past the forwards' deadlines
	if err := b.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	a, _ = pull("broker-a", "solo", "5s")
	var page struct {
		Messages []struct {
			Body    string `json:"body"`
			Attempt int    `json:"attempt"`
		} `json:"messages"`
	}
	if err := json.Unmarshal(a.body, &page); err != nil {
		t.Fatalf("decode %s: %v", a, err)
	}
	if len(page.Messages) != 1 || page.Messages[0].Attempt != 1 {
		t.Errorf("pull after the hung holder came back: %s; want the message, attempt 1 (the pull it read after the deadline must not count one)", a)
	}
	m := clDo(t, "GET", fc.url("broker-b")+"/metrics", nil, nil)
	if !strings.Contains(string(m.body), "postbus_cluster_expired_forwards_total ") || strings.Contains(string(m.body), "postbus_cluster_expired_forwards_total 0") {
		t.Errorf("broker-b does not count the forward it read after its deadline: %s", grepLines(string(m.body), "expired_forwards"))
	}
}
