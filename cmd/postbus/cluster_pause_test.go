//go:build unix

package main

import (
	"strings"
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
