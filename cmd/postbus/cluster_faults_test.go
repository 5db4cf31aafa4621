//go:build unix

package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The cluster faults of one bus under faults, each with real processes:
// name servers and brokers started from the binary, hung with SIGSTOP,
// killed with SIGKILL.

// faultCluster is a small cluster for one fault's test.
type faultCluster struct {
	t       *testing.T
	ns      []*proc
	brokers map[string]*proc
}

// startFaultCluster starts nameServers name servers (broker expiry 2s,
// or extra[0] "expiry=D") and a broker for each name, heartbeating every
// 300ms, each given extra.
func startFaultCluster(t *testing.T, nameServers int, names []string, extra ...string) *faultCluster {
	t.Helper()
	fc := &faultCluster{t: t, brokers: map[string]*proc{}}
	var addrs []string
	for range nameServers {
		expiry := "2s"
		if len(extra) > 0 && strings.HasPrefix(extra[0], "expiry=") {
			expiry = strings.TrimPrefix(extra[0], "expiry=")
		}
		ns := start(t, "namesrv", "--broker-expiry", expiry, "--scan-interval", "100ms", "--warm-up", "300ms")
		fc.ns = append(fc.ns, ns)
		addrs = append(addrs, ns.url)
	}
	if len(extra) > 0 && strings.HasPrefix(extra[0], "expiry=") {
		extra = extra[1:]
	}
	for _, n := range names {
		args := append([]string{"broker", "--data", t.TempDir(), "--namesrv", strings.Join(addrs, ";"), "--broker-name", n,
			"--heartbeat-interval", "300ms", "--allow-private-webhooks"}, extra...)
		fc.brokers[n] = start(t, args...)
	}
	for i, ns := range fc.ns {
		clEventually(t, fmt.Sprintf("name server %d to list %v", i+1, names), func() (bool, string) {
			a, err := clTry("GET", ns.url+"/v1/cluster", nil, nil)
			if err != nil {
				return false, err.Error()
			}
			for _, n := range names {
				if !strings.Contains(string(a.body), `"`+n+`"`) {
					return false, a.String()
				}
			}
			return true, a.String()
		})
	}
	return fc
}

func (fc *faultCluster) url(name string) string { return fc.brokers[name].url }

// putTopic places topic on the brokers named and waits until every name
// server routes it to them.
func (fc *faultCluster) putTopic(topic string, holders ...string) {
	fc.t.Helper()
	body, _ := json.Marshal(map[string]any{"queues": 2, "brokers": holders})
	via := holders[0]
	if a := clDo(fc.t, "PUT", fc.url(via)+"/v1/topics/"+topic, nil, body); a.status != 201 && a.status != 200 {
		fc.t.Fatalf("PUT /v1/topics/%s: %s", topic, a)
	}
	fc.waitRoute(topic, holders...)
}

// waitRoute waits until every name server routes topic to exactly holders.
func (fc *faultCluster) waitRoute(topic string, holders ...string) {
	fc.t.Helper()
	for i, ns := range fc.ns {
		clEventually(fc.t, fmt.Sprintf("name server %d to route %s to %v", i+1, topic, holders), func() (bool, string) {
			a, err := clTry("GET", ns.url+"/v1/routes/"+strings.ReplaceAll(topic, "%", "%25"), nil, nil)
			if err != nil {
				return false, err.Error()
			}
			var rt struct {
				Brokers []struct {
					Name string `json:"name"`
					Addr string `json:"addr"`
				} `json:"brokers"`
			}
			if err := json.Unmarshal(a.body, &rt); err != nil {
				return false, "decode: " + err.Error()
			}
			if a.status != 200 || len(rt.Brokers) != len(holders) {
				return false, a.String()
			}
			for j, b := range rt.Brokers {
				if b.Name != holders[j] || b.Addr != fc.url(b.Name) {
					return false, a.String()
				}
			}
			return true, a.String()
		})
	}
}

// routeStatus is a name server's status for topic's route.
func routeStatus(ns *proc, topic string) (int, string) {
	a, err := clTry("GET", ns.url+"/v1/routes/"+strings.ReplaceAll(topic, "%", "%25"), nil, nil)
	if err != nil {
		return 0, err.Error()
	}
	return a.status, a.String()
}

// kill SIGKILLs a broker and waits until it has exited.
func (fc *faultCluster) kill(name string) {
	p := fc.brokers[name]
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// timed sends one request with its own timeout and says how long it took.
func timed(method, url string, hdr map[string]string, body []byte, limit time.Duration) (clAnswer, time.Duration, error) {
	c := &http.Client{Timeout: limit}
	old := clClient
	defer func() { clClient = old }()
	clClient = c
	began := time.Now()
	a, err := clTry(method, url, hdr, body)
	return a, time.Since(began), err
}

// TestClusterHungBrokerIsBounded (fault 5, and 6): a broker that accepts
// connections but never answers (SIGSTOP) used to hold pulls (even with
// wait=1s), merged lists and split batches through the other brokers
// without bound. Every hop now has a deadline (--forward-timeout beyond a
// long poll's wait), a broker that lets it pass is skipped like one that
// refuses connections, and a split batch whose part got no answer says
// that part may or may not have been stored.
func TestClusterHungBrokerIsBounded(t *testing.T) {
	// broker-c holds nothing: it coordinates the pull, so that no earlier
	// request has marked broker-b down on it.
	// The hung broker stays in the routes for the test (expiry 60s), as a
	// broker hung for less than the expiry does.
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b", "broker-c"}, "expiry=60s", "--forward-timeout", "1s")
	fc.putTopic("orders", "broker-a", "broker-b")
	if a := clDo(t, "POST", fc.url("broker-a")+"/v1/subscriptions", nil, []byte(`{"group":"g","topic":"orders","start_from":"earliest"}`)); a.status != 201 {
		t.Fatalf("create subscription: %s", a)
	}
	hung := fc.brokers["broker-b"]
	stopProc(t, hung)

	// A batch whose keys spread over both holders: broker-b's part gets
	// no answer.
	var items []string
	for i := range 16 {
		items = append(items, fmt.Sprintf(`{"body_base64":"eA==","sharding_key":"k%d"}`, i))
	}
	batch := []byte("[" + strings.Join(items, ",") + "]")
	const limit = 8 * time.Second // far above the 1s forward timeout + 1s wait; before: no bound
	cases := []struct {
		name, via, method, path string
		body                    []byte
		check                   func(a clAnswer) string
	}{
		{"pull wait=1s", "broker-c", "POST", "/v1/groups/g/topics/orders/pull?max=8&wait=1s", nil, func(a clAnswer) string {
			if a.status != 200 {
				return "want 200 with broker-a's share, got " + a.String()
			}
			return ""
		}},
		{"merged topic", "broker-c", "GET", "/v1/topics/orders", nil, func(a clAnswer) string {
			var tj struct {
				Brokers []string `json:"brokers"`
			}
			if err := json.Unmarshal(a.body, &tj); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if a.status != 200 || len(tj.Brokers) != 1 || tj.Brokers[0] != "broker-a" {
				return "want 200 with broker-a's queues alone, got " + a.String()
			}
			return ""
		}},
		{"split batch", "broker-a", "POST", "/v1/topics/orders/messages/batch", batch, func(a clAnswer) string {
			code, detail := problemOf(a)
			if a.status != 502 || code != "cluster_partial" {
				return "want 502 cluster_partial, got " + a.String()
			}
			// A part sent to broker-b got no answer: it may have been
			// stored, and calling it "not stored" makes a producer that
			// follows the advice store it twice. Once broker-b is skipped
			// (an earlier case timed out on it), its keyed part is not
			// sent at all, and "not stored" is then the truth.
			sentUnanswered := strings.Contains(detail, "may or may not have been stored messages") && !strings.Contains(detail, "; not stored messages")
			neverSent := strings.Contains(detail, "not stored messages") && strings.Contains(detail, "they were not sent to another holder")
			if !sentUnanswered && !neverSent {
				return "want broker-b's part reported as may or may not have been stored (sent, unanswered) or as not stored and not sent: " + detail
			}
			return ""
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, took, err := timed(c.method, fc.url(c.via)+c.path, nil, c.body, limit)
			if err != nil {
				t.Fatalf("%s %s through %s with broker-b hung: no answer within %s: %v", c.method, c.path, c.via, limit, err)
			}
			t.Logf("%s: %d in %s", c.name, a.status, took.Round(time.Millisecond))
			if msg := c.check(a); msg != "" {
				t.Error(msg)
			}
		})
	}
	// Skipping a broker is never silent: it is counted.
	for _, via := range []string{"broker-a", "broker-c"} {
		m := clDo(t, "GET", fc.url(via)+"/metrics", nil, nil)
		if want := `postbus_cluster_broker_skipped_total{broker="broker-b",reason="timeout"}`; !strings.Contains(string(m.body), want) {
			t.Errorf("%s's /metrics has no %s", via, want)
		}
	}
}

// TestClusterNoAutoCreateWithoutWholeRoute (fault 1): a non-holder with
// --auto-create-topics used to create its own copy of a topic whose only
// holder the name servers had expired, or that no name server could be
// asked about, and store the publish there (201), where no subscription
// of the topic sees it; a forged Postbus-Forwarded-By took the same path.
// It answers 503 broker_unavailable now (404 for the forged header), and
// creates a topic only when every name server said nobody holds it.
func TestClusterNoAutoCreateWithoutWholeRoute(t *testing.T) {
	fc := startFaultCluster(t, 2, []string{"broker-a", "broker-b"}, "--auto-create-topics")
	fc.putTopic("orders", "broker-b")
	heldByA := func(topic string) bool {
		return clDo(t, "GET", fc.url("broker-a")+"/v1/topics/"+topic, map[string]string{"Postbus-Forwarded-By": "test"}, nil).status == 200
	}
	// A forged forward to a non-holder never creates the topic.
	a := clDo(t, "POST", fc.url("broker-a")+"/v1/topics/orders/messages", map[string]string{"Postbus-Forwarded-By": "broker-b", "Content-Type": "text/plain"}, []byte("forged"))
	if code, _ := problemOf(a); a.status != 404 || code != "topic_not_found" || heldByA("orders") {
		t.Errorf("publish with a forged Postbus-Forwarded-By to a non-holder: %s (broker-a holds orders: %v); want 404 topic_not_found and no copy", a, heldByA("orders"))
	}

	// The only holder dies and expires.
	fc.kill("broker-b")
	for i, ns := range fc.ns {
		clEventually(t, fmt.Sprintf("name server %d to say orders' broker is down", i+1), func() (bool, string) {
			st, raw := routeStatus(ns, "orders")
			return st == 503, raw
		})
	}
	// A pull too (attack F3): it would create the topic to pull from it.
	for _, path := range []string{"/v1/topics/orders/messages", "/v1/topics/orders/messages/batch", "/v1/groups/g/topics/orders/pull?wait=1s"} {
		body := []byte("lost?")
		hdr := map[string]string{"Content-Type": "text/plain"}
		switch {
		case strings.HasSuffix(path, "/batch"):
			body, hdr = []byte(`[{"body":"lost?"}]`), nil
		case strings.Contains(path, "/pull"):
			body, hdr = nil, nil
		}
		a := clDo(t, "POST", fc.url("broker-a")+path, hdr, body)
		if code, _ := problemOf(a); a.status != 503 || code != "broker_unavailable" {
			t.Errorf("POST %s through broker-a, orders' only holder expired: %s; want 503 broker_unavailable", path, a)
		}
	}
	if heldByA("orders") {
		t.Errorf("broker-a created its own copy of orders while its holder was down")
	}
	// And so it stays long after the name servers evicted the holder (F5:
	// they forgot the topic after twice the expiry, and broker-a created
	// its own copy, without orders' subscriptions: 201, never pushed).
	// Each publish below is an assertion; the loop is bounded by time.
	for end := time.Now().Add(4 * 2 * time.Second); time.Now().Before(end); {
		a := clDo(t, "POST", fc.url("broker-a")+"/v1/topics/orders/messages", map[string]string{"Content-Type": "text/plain"}, []byte("lost?"))
		if code, _ := problemOf(a); a.status != 503 || code != "broker_unavailable" {
			t.Fatalf("publish through broker-a, orders' only holder down for longer than twice the expiry: %s; want 503 broker_unavailable", a)
		}
		time.Sleep(250 * time.Millisecond) // pacing only
	}
	if heldByA("orders") {
		t.Errorf("broker-a created its own copy of orders while its holder was down")
	}

	// A topic nobody ever held, every name server answering: created.
	if a := clDo(t, "POST", fc.url("broker-a")+"/v1/topics/fresh/messages", map[string]string{"Content-Type": "text/plain"}, []byte("x")); a.status != 201 {
		t.Errorf("publish to a topic no name server knows: %s; want 201 (auto-created)", a)
	}
	// Not a topic's name at all (attack F10): 400, not a 503 to retry.
	for _, name := range []string{strings.Repeat("a", 128), "-bad", ".x", "a%20b"} {
		for _, path := range []string{"/v1/topics/" + name + "/messages", "/v1/groups/g/topics/" + name + "/pull"} {
			a := clDo(t, "POST", fc.url("broker-a")+path, map[string]string{"Content-Type": "text/plain"}, []byte("x"))
			if strings.HasSuffix(path, "/pull") {
				a = clDo(t, "POST", fc.url("broker-a")+path, nil, nil)
			}
			if code, _ := problemOf(a); a.status != 400 || code != "invalid_topic" {
				t.Errorf("POST %s: %s; want 400 invalid_topic", path, a)
			}
		}
	}
	// One name server down: nobody can say the topic is new.
	fc.ns[1].cmd.Process.Signal(syscall.SIGKILL)
	<-fc.ns[1].done
	a = clDo(t, "POST", fc.url("broker-a")+"/v1/topics/unknown/messages", map[string]string{"Content-Type": "text/plain"}, []byte("x"))
	if code, _ := problemOf(a); a.status != 503 || code != "broker_unavailable" || heldByA("unknown") {
		t.Errorf("publish to a topic with a name server down: %s (created: %v); want 503 broker_unavailable, not created", a, heldByA("unknown"))
	}
	a = clDo(t, "POST", fc.url("broker-a")+"/v1/groups/g/topics/unknown/pull", nil, nil)
	if code, _ := problemOf(a); a.status != 503 || code != "broker_unavailable" || heldByA("unknown") {
		t.Errorf("pull of a topic with a name server down: %s (created: %v); want 503 broker_unavailable, not created", a, heldByA("unknown"))
	}
}

// TestClusterReceiptOfExpiredBroker (fault 8): a genuine receipt of a
// broker the name servers have expired was refused as forged (400
// invalid_receipt), so a client dropped it; it is 503 broker_unavailable.
// And (fault 9) a holder's 4xx to a forwarded pull is relayed, not turned
// into 503.
func TestClusterReceiptOfExpiredBroker(t *testing.T) {
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b"}, "--auto-create-groups=false")
	fc.putTopic("orders", "broker-b")
	if a := clDo(t, "POST", fc.url("broker-a")+"/v1/subscriptions", nil, []byte(`{"group":"g","topic":"orders","start_from":"earliest"}`)); a.status != 201 {
		t.Fatalf("create subscription: %s", a)
	}
	// Fault 9: a group broker-b does not know, pulled through broker-a.
	a := clDo(t, "POST", fc.url("broker-a")+"/v1/groups/nobody/topics/orders/pull?max=1", nil, nil)
	if code, _ := problemOf(a); a.status != 404 || code != "subscription_not_found" {
		t.Errorf("pull of an unknown group through a non-holder: %s; want broker-b's 404 subscription_not_found", a)
	}

	if a := clDo(t, "POST", fc.url("broker-a")+"/v1/topics/orders/messages", map[string]string{"Content-Type": "text/plain"}, []byte("m")); a.status != 201 {
		t.Fatalf("publish: %s", a)
	}
	var page struct {
		Messages []clPulled `json:"messages"`
	}
	clEventually(t, "a pull through broker-a to get the message", func() (bool, string) {
		a := clDo(t, "POST", fc.url("broker-a")+"/v1/groups/g/topics/orders/pull?max=1&wait=1s&visibility=60s", nil, nil)
		if err := json.Unmarshal(a.body, &page); err != nil {
			return false, "decode: " + err.Error()
		}
		return a.status == 200 && len(page.Messages) == 1, a.String()
	})
	receipt := page.Messages[0].Receipt
	if !strings.HasPrefix(receipt, "broker-b~") {
		t.Fatalf("receipt %q does not name broker-b", receipt)
	}
	fc.kill("broker-b")
	clEventually(t, "the name server to drop broker-b", func() (bool, string) {
		a, err := clTry("GET", fc.ns[0].url+"/v1/cluster", nil, nil)
		return err == nil && !strings.Contains(string(a.body), "broker-b"), fmt.Sprint(a, err)
	})
	body, _ := json.Marshal(map[string]any{"receipts": []string{receipt}})
	for _, op := range []string{"ack", "nack"} {
		a := clDo(t, "POST", fc.url("broker-a")+"/v1/groups/g/"+op, nil, body)
		if code, _ := problemOf(a); a.status != 503 || code != "broker_unavailable" {
			t.Errorf("%s of broker-b's genuine receipt with broker-b expired: %s; want 503 broker_unavailable", op, a)
		}
	}
	// A receipt that is malformed stays a 400, naming broker-b or not.
	bad, _ := json.Marshal(map[string]any{"receipts": []string{"not-a-receipt"}})
	if a := clDo(t, "POST", fc.url("broker-a")+"/v1/groups/g/ack", nil, bad); a.status != 400 {
		t.Errorf("ack of a malformed receipt: %s; want 400", a)
	}
	// F8: broker-b's receipt under the name of a broker no name server
	// knows, live or gone, was 503 "settle them again once it is back"
	// forever; it is refused as invalid.
	_, inner, _ := strings.Cut(receipt, "~")
	never, _ := json.Marshal(map[string]any{"receipts": []string{"broker-z~" + inner}})
	for _, op := range []string{"ack", "nack"} {
		a := clDo(t, "POST", fc.url("broker-a")+"/v1/groups/g/"+op, nil, never)
		if code, _ := problemOf(a); a.status != 400 || code != "invalid_receipt" {
			t.Errorf("%s of a receipt naming a broker nobody knows: %s; want 400 invalid_receipt", op, a)
		}
	}
}

// TestClusterBrokerNameTaken (fault 7): a second broker started with a
// live broker's --broker-name at another address silently replaced its
// registration, and the live broker's topics left the routes. The name
// server refuses it now (409 broker_name_taken), the refused broker logs
// an error, and its shutdown does not unregister the live one.
func TestClusterBrokerNameTaken(t *testing.T) {
	fc := startFaultCluster(t, 1, []string{"broker-a"})
	fc.putTopic("orders", "broker-a")
	impostor := launchUnready(t, "broker", "--data", t.TempDir(), "--namesrv", fc.ns[0].url, "--broker-name", "broker-a", "--heartbeat-interval", "300ms") // refused: never ready
	clEventually(t, "the second broker to be told its name is taken", func() (bool, string) {
		return strings.Contains(impostor.Logs(), "refuses this broker's name"), "no such log line yet"
	})
	// Several heartbeats later, the route is still the live broker's.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		fc.waitRoute("orders", "broker-a")
		time.Sleep(100 * time.Millisecond)
	}
	impostor.cmd.Process.Signal(syscall.SIGTERM)
	<-impostor.done
	fc.waitRoute("orders", "broker-a")
	a := clDo(t, "GET", fc.ns[0].url+"/v1/cluster", nil, nil)
	if !strings.Contains(string(a.body), fc.url("broker-a")) {
		t.Errorf("after the second broker stopped, the live broker-a is not registered: %s", a)
	}
}

// TestClusterSystemTopicRoutes (fault 10): the name server answered 400
// system_topic for %RETRY% and %DLQ% topics, which brokers register.
func TestClusterSystemTopicRoutes(t *testing.T) {
	fc := startFaultCluster(t, 1, []string{"broker-a"})
	fc.putTopic("orders", "broker-a")
	clDo(t, "POST", fc.url("broker-a")+"/v1/topics/orders/messages", map[string]string{"Content-Type": "text/plain"}, []byte("m"))
	// A pull leases with a visibility copy on the group's retry topic.
	clEventually(t, "a pull", func() (bool, string) {
		a := clDo(t, "POST", fc.url("broker-a")+"/v1/groups/g/topics/orders/pull?max=1&wait=1s", nil, nil)
		return a.status == 200 && strings.Contains(string(a.body), "receipt"), a.String()
	})
	fc.waitRoute("%RETRY%g%orders", "broker-a")
	if st, raw := routeStatus(fc.ns[0], "%NOPE"); st != 400 {
		t.Errorf("route of a malformed system topic: %s; want 400", raw)
	}
}

// TestClusterNameServerRestart (the triggers of faults 2 and 3): right
// after a name server restarted (empty, as designed) it routed a topic
// to the brokers that had re-registered only, and listed only those; a
// subscription created then existed on some holders only (the others'
// messages were never delivered), and one deleted then lived on, and
// delivered, on the others. A name server now answers neither during its
// warm-up, and a broker refuses (503) to create, change or delete a
// subscription when it cannot tell every broker concerned; retried after
// the warm-up, the change reaches every holder.
func TestClusterNameServerRestart(t *testing.T) {
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b"})
	fc.putTopic("orders", "broker-a", "broker-b")
	createSub := func(group string) (clAnswer, string) {
		a := clDo(t, "POST", fc.url("broker-a")+"/v1/subscriptions", nil, []byte(`{"group":"`+group+`","topic":"orders","start_from":"earliest"}`))
		var s struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(a.body, &s); err != nil {
			t.Fatalf("decode: %v", err)
		}
		return a, s.ID
	}
	a, old := createSub("early")
	if a.status != 201 {
		t.Fatalf("create subscription: %s", a)
	}
	restart := func() {
		ns := fc.ns[0]
		addr := strings.TrimPrefix(ns.url, "http://")
		ns.cmd.Process.Signal(syscall.SIGKILL)
		<-ns.done
		fc.ns[0] = start(t, "namesrv", "--broker-expiry", "2s", "--scan-interval", "100ms", "--warm-up", "1s", "--addr", addr)
	}
	// holders says which brokers, asked alone, have subscription id.
	holders := func(id string) []string {
		var out []string
		for _, n := range []string{"broker-a", "broker-b"} {
			if clDo(t, "GET", fc.url(n)+"/v1/subscriptions/"+id, map[string]string{"Postbus-Forwarded-By": "test"}, nil).status == 200 {
				out = append(out, n)
			}
		}
		return out
	}
	// retried is a request repeated while it answers 503, as a client does.
	retried := func(what string, do func() clAnswer) clAnswer {
		var last clAnswer
		clEventually(t, what, func() (bool, string) {
			last = do()
			return last.status != 503, last.String()
		})
		return last
	}

	restart()
	var id string
	a = retried("the subscription's create", func() clAnswer { a, id = createSub("late"); return a })
	if a.status != 201 {
		t.Fatalf("create subscription after the name server restarted: %s", a)
	}
	if got := holders(id); len(got) != 2 {
		t.Errorf("a subscription created just after the name server restarted is on %v, want both holders", got)
	}

	restart()
	a = retried("the subscription's delete", func() clAnswer { return clDo(t, "DELETE", fc.url("broker-a")+"/v1/subscriptions/"+old, nil, nil) })
	if a.status != 204 {
		t.Fatalf("delete subscription after the name server restarted: %s", a)
	}
	if got := holders(old); len(got) != 0 {
		t.Errorf("a subscription deleted just after the name server restarted lives on on %v", got)
	}
}

// TestClusterKeyQueryAfterHungHolder: a query by key through a broker that
// had skipped a holder as down (it let a forward time out) answered 200
// without that holder's messages for the next 10s, though the holder was
// back, and nothing in the answer said it was partial. Every holder is
// asked now, as a merged GET of the topic does.
func TestClusterKeyQueryAfterHungHolder(t *testing.T) {
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b"}, "expiry=60s", "--forward-timeout", "1s")
	fc.putTopic("orders", "broker-a", "broker-b")
	// Unsharded publishes through a holder stay on it.
	for _, via := range []string{"broker-a", "broker-b"} {
		a := clDo(t, "POST", fc.url(via)+"/v1/topics/orders/messages", map[string]string{"Content-Type": "text/plain", "Postbus-Keys": "k"}, []byte("on "+via))
		if a.status != 201 || !strings.Contains(string(a.body), `"broker":"`+via+`"`) {
			t.Fatalf("publish through %s: %s", via, a)
		}
	}
	byKey := func() []string {
		a := clDo(t, "GET", fc.url("broker-a")+"/v1/topics/orders/messages?key=k", nil, nil)
		var page struct {
			Messages []struct {
				Broker string `json:"broker"`
			} `json:"messages"`
		}
		if err := json.Unmarshal(a.body, &page); err != nil {
			t.Fatalf("decode: %v", err)
		}
		var on []string
		for _, m := range page.Messages {
			on = append(on, cmp.Or(m.Broker, "this broker"))
		}
		if a.status != 200 {
			t.Fatalf("query by key through broker-a: %s", a)
		}
		return on
	}
	if on := byKey(); len(on) != 2 {
		t.Fatalf("query by key through broker-a before any fault: messages on %v, want one on each holder", on)
	}
	hung := fc.brokers["broker-b"]
	stopProc(t, hung)
	if on := byKey(); len(on) != 1 { // broker-b lets the forward time out
		t.Errorf("query by key with broker-b hung: messages on %v, want broker-a's alone", on)
	}
	hung.cmd.Process.Signal(syscall.SIGCONT)
	waitReady(t, fc.url("broker-b"))
	if on := byKey(); len(on) != 2 {
		t.Errorf("query by key through broker-a once broker-b is back: messages on %v, want one on each holder", on)
	}
}

// stopProc hangs p with SIGSTOP (SIGCONT at the test's end) and waits
// until it is stopped: kill(2) returns once the signal is sent, and a
// thread of the process may still run for a moment after, long enough to
// answer a request, which would test nothing.
func stopProc(t *testing.T, p *proc) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Signal(syscall.SIGCONT) })
	waitStopped(t, p)
}

// waitStopped waits until /proc shows p stopped. Where /proc is missing,
// it waits until p stops answering /readyz instead.
func waitStopped(t *testing.T, p *proc) {
	t.Helper()
	pid := p.cmd.Process.Pid
	path := fmt.Sprintf("/proc/%d/stat", pid)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		stat, err := os.ReadFile(path)
		if err != nil {
			clEventually(t, "the stopped process to stop answering", func() (bool, string) {
				a, _, err := timed("GET", p.url+"/readyz", nil, nil, 200*time.Millisecond)
				return err != nil, a.String()
			})
			return
		}
		// The state follows the command name, which is in parentheses.
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'T' {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("process %d not stopped 5s after SIGSTOP", pid)
}
