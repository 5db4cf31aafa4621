//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// keyOn returns a key (prefix plus a number) that the cluster's placement
// hash puts on the holder at index want of holders, each holding queues
// queues: FNV-1a 64 over the whole topic's queues, counted in name order.
func keyOn(prefix string, holders, queues, want int) string {
	for i := 0; ; i++ {
		k := fmt.Sprintf("%s-%d", prefix, i)
		h := fnv.New64a()
		h.Write([]byte(k))
		if int(h.Sum64()%uint64(holders*queues))/queues == want {
			return k
		}
	}
}

// copiesOn counts the messages with key that broker holds itself (asked
// as a forwarded request, so it answers for itself alone).
func (fc *faultCluster) copiesOn(name, topic, key string) int {
	fc.t.Helper()
	a := clDo(fc.t, "GET", fc.url(name)+"/v1/topics/"+topic+"/messages?key="+key, map[string]string{"Postbus-Forwarded-By": "test"}, nil)
	var res struct {
		Messages []json.RawMessage `json:"messages"`
	}
	if err := json.Unmarshal(a.body, &res); a.status != 200 || err != nil {
		fc.t.Fatalf("key %s on %s: %s", key, name, a)
	}
	return len(res.Messages)
}

// TestClusterKeyedRetryStoredOnce (F11): retrying a publish answered
// "may or may not have been stored" exactly as documented (the same
// Postbus-Dedup-Id, with or without a sharding key) used to store it
// twice: the holder that timed out was skipped and the retry went to the
// other holder, which does not know the dedup id. A message with a
// placement key now goes to the holder its key picks or nowhere: while
// that holder is skipped the answer is 503 broker_unavailable, nothing
// stored, and the retry once it is back meets its dedup memory.
func TestClusterKeyedRetryStoredOnce(t *testing.T) {
	// broker-c holds nothing and coordinates every publish; the hung
	// holder stays in the routes (expiry 60s), as one hung for less than
	// the expiry does.
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b", "broker-c"}, "expiry=60s", "--forward-timeout", "1s")
	fc.putTopic("orders", "broker-a", "broker-b")
	hung := fc.brokers["broker-b"]

	type publish struct {
		name string
		key  string // on broker-b; also the message's Postbus-Keys
		path string
		hdr  map[string]string
		body []byte
	}
	dedup := keyOn("dd", 2, 2, 1)
	sharded := keyOn("sk", 2, 2, 1)
	batchKey := keyOn("bd", 2, 2, 1)
	cases := []publish{
		{"dedup id", dedup, "/v1/topics/orders/messages",
			map[string]string{"Content-Type": "text/plain", "Postbus-Dedup-Id": dedup, "Postbus-Keys": dedup}, []byte("one")},
		{"dedup id and sharding key", sharded, "/v1/topics/orders/messages",
			map[string]string{"Content-Type": "text/plain", "Postbus-Dedup-Id": sharded, "Postbus-Sharding-Key": sharded, "Postbus-Keys": sharded}, []byte("two")},
		{"batch with dedup ids", batchKey, "/v1/topics/orders/messages/batch", nil,
			[]byte(fmt.Sprintf(`[{"body_base64":"eA==","dedup_id":%q,"keys":[%q]}]`, batchKey, batchKey))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			stopProc(t, hung)
			resumed := false
			resume := func() {
				if !resumed {
					hung.cmd.Process.Signal(syscall.SIGCONT)
					resumed = true
				}
			}
			defer resume()
			// The first try reaches the hung holder and gets no answer.
			a := clDo(t, "POST", fc.url("broker-c")+c.path, c.hdr, c.body)
			if code, detail := problemOf(a); a.status != 503 || code != "broker_unavailable" || !strings.Contains(detail, "may or may not") {
				t.Fatalf("first try with broker-b hung: %s; want 503 broker_unavailable, may or may not have been stored", a)
			}
			// The retry, as documented, while broker-b is still hung:
			// before the fix it was stored on broker-a (a second copy).
			a = clDo(t, "POST", fc.url("broker-c")+c.path, c.hdr, c.body)
			code, detail := problemOf(a)
			if a.status != 503 || code != "broker_unavailable" || !strings.Contains(detail, "nothing was stored") || !strings.Contains(detail, "broker-b") {
				t.Errorf("retry with broker-b hung: %s; want 503 broker_unavailable naming broker-b, nothing stored", a)
			}
			if n := fc.copiesOn("broker-a", "orders", c.key); n != 0 {
				t.Errorf("broker-a stored %d copies of key %s, which belongs on broker-b", n, c.key)
			}
			resume()
			// Once broker-b is back, the retry meets its dedup memory (200
			// duplicate when the first try was stored after all).
			clEventually(t, "the retry to be stored once broker-b is back", func() (bool, string) {
				a, err := clTry("POST", fc.url("broker-c")+c.path, c.hdr, c.body)
				if err != nil {
					return false, err.Error()
				}
				return (a.status == 201 || a.status == 200) && strings.Contains(string(a.body), `"broker":"broker-b"`), a.String()
			})
			got := map[string]int{}
			for _, b := range []string{"broker-a", "broker-b"} {
				got[b] = fc.copiesOn(b, "orders", c.key)
			}
			if got["broker-a"]+got["broker-b"] != 1 || got["broker-b"] != 1 {
				t.Errorf("copies of key %s after retrying: %v; want exactly one, on broker-b", c.key, got)
			}
		})
	}
	m := clDo(t, "GET", fc.url("broker-c")+"/metrics", nil, nil)
	if want := `postbus_cluster_keyed_publish_refused_total{broker="broker-b"}`; !strings.Contains(string(m.body), want) {
		t.Errorf("broker-c's /metrics has no %s", want)
	}
}

// readyzOf is a broker's /readyz answer.
func readyzOf(p *proc) clAnswer {
	a, err := clTry("GET", p.url+"/readyz", nil, nil)
	if err != nil {
		return clAnswer{body: []byte(err.Error())}
	}
	return a
}

// TestClusterRefusedNameIsOutOfService (F4): a broker the name servers
// refuse (409 broker_name_taken: another live broker holds its name) kept
// serving: /readyz 200, PUT topic 201, publishes 201 that no other broker
// and no subscription of the bus ever saw. It is not ready now and
// refuses changes (503 not_ready naming the cause) until a heartbeat is
// accepted; and the real broker, restarted while an impostor holds its
// name, says so the same way, with an ERROR line.
func TestClusterRefusedNameIsOutOfService(t *testing.T) {
	fc := startFaultCluster(t, 1, nil)
	brokerArgs := func(data string) []string {
		return []string{"broker", "--data", data, "--namesrv", fc.ns[0].url, "--broker-name", "broker-a", "--heartbeat-interval", "300ms"}
	}
	dataA := t.TempDir()
	real := start(t, brokerArgs(dataA)...)
	fc.brokers["broker-a"] = real
	fc.putTopic("orders", "broker-a")
	if a := clDo(t, "POST", real.url+"/v1/topics/orders/messages", map[string]string{"Content-Type": "text/plain"}, []byte("m")); a.status != 201 {
		t.Fatalf("publish: %s", a)
	}

	// refused checks that p is out of service for the refusal, and says why.
	refused := func(who string, p *proc) {
		t.Helper()
		clEventually(t, who+" to be not ready for its refused name", func() (bool, string) {
			a := readyzOf(p)
			code, detail := problemOf(a)
			return a.status == 503 && code == "not_ready" && strings.Contains(detail, "refuse this broker's name"), a.String()
		})
		for _, c := range []struct{ method, path, ctype, body string }{
			{"PUT", "/v1/topics/IMP", "application/json", `{"queues":1}`},
			{"POST", "/v1/topics/orders/messages", "text/plain", "x"},
			{"POST", "/v1/topics/IMP/messages", "text/plain", "x"},
			{"POST", "/v1/subscriptions", "application/json", `{"group":"g","topic":"orders"}`},
		} {
			a := clDo(t, c.method, p.url+c.path, map[string]string{"Content-Type": c.ctype}, []byte(c.body))
			if code, detail := problemOf(a); a.status != 503 || code != "not_ready" || !strings.Contains(detail, "broker-a") {
				t.Errorf("%s: %s %s: %s; want 503 not_ready naming the refused name", who, c.method, c.path, a)
			}
		}
		if !strings.Contains(p.Logs(), `"level":"ERROR","msg":"name server refuses this broker's name`) {
			t.Errorf("%s logged no ERROR for its refused name", who)
		}
		m := clDo(t, "GET", p.url+"/metrics", nil, nil)
		if !strings.Contains(string(m.body), "postbus_cluster_name_refused 1") {
			t.Errorf("%s's /metrics has no postbus_cluster_name_refused 1", who)
		}
	}

	// An impostor started while broker-a lives.
	impostor := launchUnready(t, brokerArgs(t.TempDir())...)
	refused("the impostor", impostor)
	if st, raw := routeStatus(fc.ns[0], "IMP"); st != 404 {
		t.Errorf("route of IMP after the impostor's refused PUT: %s", raw)
	}

	// The reverse: broker-a dies, the impostor takes the name after the
	// expiry, and broker-a restarted on its data is refused.
	fc.kill("broker-a")
	clEventually(t, "the impostor to be accepted once broker-a expired", func() (bool, string) {
		a := readyzOf(impostor)
		return a.status == 200, a.String()
	})
	restarted := launchUnready(t, brokerArgs(dataA)...)
	refused("the restarted broker-a", restarted)

	// Once the impostor is gone, broker-a is accepted and serves again.
	impostor.cmd.Process.Signal(syscall.SIGTERM)
	<-impostor.done
	clEventually(t, "the restarted broker-a to be ready once the impostor left", func() (bool, string) {
		a := readyzOf(restarted)
		return a.status == 200, a.String()
	})
	if a := clDo(t, "POST", restarted.url+"/v1/topics/orders/messages", map[string]string{"Content-Type": "text/plain"}, []byte("m2")); a.status != 201 {
		t.Errorf("publish on broker-a once accepted again: %s", a)
	}
}

// TestClusterHungNameServer (F6): with one of two name servers hung
// (SIGSTOP) a topic PUT or DELETE through one broker took 14-20s and
// answered 502 "failed on" brokers that had applied it: each broker waited
// for the hung name server longer than the coordinator's forward
// deadline, and healthy brokers were marked down for it. A broker now
// waits for one name server's acknowledgement, at most half the hop
// timeout; route lookups take the first name server that knows the
// topic; and a forward that timed out is "may or may not have been
// applied", never "failed".
func TestClusterHungNameServer(t *testing.T) {
	names := []string{"broker-a", "broker-b", "broker-c"}
	fc := startFaultCluster(t, 2, names, "expiry=60s", "--forward-timeout", "3s")
	fc.putTopic("warm", names...)
	hung := fc.ns[0]
	stopProc(t, hung)
	t.Cleanup(func() { hung.cmd.Process.Signal(syscall.SIGCONT) })

	// Under the 3s forward timeout. A route lookup of a topic no name
	// server knows needs every name server's answer: it waits for the hung
	// one's lookup deadline (2s). Before: 5s, and 14-20s for a PUT.
	const limit = 2500 * time.Millisecond
	a, took, err := timed("PUT", fc.url("broker-a")+"/v1/topics/NH", nil, []byte(`{"queues":1,"brokers":"all"}`), 30*time.Second)
	if err != nil || a.status != 201 || took > limit {
		t.Errorf("PUT topic on every broker with a name server hung: %s in %s (%v); want 201 within %s", a, took, err, limit)
	}
	for _, n := range names {
		if a := clDo(t, "GET", fc.url(n)+"/v1/topics/NH", map[string]string{"Postbus-Forwarded-By": "test"}, nil); a.status != 200 {
			t.Errorf("%s does not hold NH: %s", n, a)
		}
	}
	// A known topic's route is found through the healthy name server
	// without waiting for the hung one.
	a, took, err = timed("GET", fc.url("broker-c")+"/v1/topics/warm", nil, nil, 30*time.Second)
	if err != nil || a.status != 200 || took > limit {
		t.Errorf("GET a topic's route through broker-c: %s in %s (%v); want 200 within %s", a, took, err, limit)
	}
	a, took, err = timed("DELETE", fc.url("broker-b")+"/v1/topics/NH", nil, nil, 30*time.Second)
	if err != nil || a.status != 204 || took > limit {
		t.Errorf("DELETE topic with a name server hung: %s in %s (%v); want 204 within %s", a, took, err, limit)
	}
	// No healthy broker was taken for hung.
	for _, n := range names {
		m := clDo(t, "GET", fc.url(n)+"/metrics", nil, nil)
		if strings.Contains(string(m.body), `postbus_cluster_broker_skipped_total{broker=`) {
			t.Errorf("%s marked a healthy broker down while a name server hung", n)
		}
	}
}

// TestClusterHungHolderReads (F3): a message stored on a hung holder was
// "404 message_not_found (it may have expired)" by id (and /body,
// /trace) through another broker, and by key an empty 200: a producer
// checking its publish is told it is gone. By id it is 503
// broker_unavailable naming the holder now, and by key a 200 whose
// "incomplete" names it.
func TestClusterHungHolderReads(t *testing.T) {
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b", "broker-c"}, "expiry=60s", "--forward-timeout", "1s")
	fc.putTopic("orders", "broker-b")
	a := clDo(t, "POST", fc.url("broker-b")+"/v1/topics/orders/messages", map[string]string{"Content-Type": "text/plain", "Postbus-Keys": "hv"}, []byte("m"))
	var res clPubResult
	if err := json.Unmarshal(a.body, &res); err != nil || a.status != 201 || res.MsgID == "" {
		t.Fatalf("publish: %s", a)
	}
	hung := fc.brokers["broker-b"]
	stopProc(t, hung)
	t.Cleanup(func() { hung.cmd.Process.Signal(syscall.SIGCONT) })
	for _, path := range []string{"/v1/messages/" + res.MsgID, "/v1/messages/" + res.MsgID + "/body", "/v1/messages/" + res.MsgID + "/trace"} {
		a := clDo(t, "GET", fc.url("broker-a")+path, nil, nil)
		if code, detail := problemOf(a); a.status != 503 || code != "broker_unavailable" || !strings.Contains(detail, "broker-b") {
			t.Errorf("GET %s through broker-a with its holder hung: %s; want 503 broker_unavailable naming broker-b", path, a)
		}
	}
	// Twice: once the hung holder is asked (and times out), once it is
	// skipped for a while; neither answer may read as "no such messages".
	for i := range 2 {
		a := clDo(t, "GET", fc.url("broker-c")+"/v1/topics/orders/messages?key=hv", nil, nil)
		var page struct {
			Messages   []json.RawMessage `json:"messages"`
			Incomplete []string          `json:"incomplete"`
		}
		if err := json.Unmarshal(a.body, &page); err != nil {
			t.Fatalf("decode: %v", err)
		}
		if a.status != 200 || len(page.Incomplete) != 1 || !strings.Contains(page.Incomplete[0], "broker-b") {
			t.Errorf("by key through broker-c with the holder hung (try %d): %s; want 200 with incomplete naming broker-b", i+1, a)
		}
	}
	// A message nobody holds is still a plain 404 once every broker answers.
	hung.cmd.Process.Signal(syscall.SIGCONT)
	clEventually(t, "an unknown id to be 404 once broker-b answers", func() (bool, string) {
		a, err := clTry("GET", fc.url("broker-a")+"/v1/messages/"+strings.Repeat("A", len(res.MsgID)), nil, nil)
		if err != nil {
			return false, err.Error()
		}
		return a.status == 404, a.String()
	})
}

// TestClusterPartialAckSaysWhat (F8): an ack whose hop to one holder
// timed out answered 502 cluster_partial "failed on" that holder, without
// the answered receipts' own results (acked and stale differ) and without
// saying the unanswered share may have been settled.
func TestClusterPartialAckSaysWhat(t *testing.T) {
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b", "broker-c"}, "expiry=60s", "--forward-timeout", "1s")
	fc.putTopic("orders", "broker-a", "broker-b")
	if a := clDo(t, "POST", fc.url("broker-a")+"/v1/subscriptions", nil, []byte(`{"group":"g","topic":"orders","start_from":"earliest"}`)); a.status != 201 {
		t.Fatalf("create subscription: %s", a)
	}
	for _, b := range []string{"broker-a", "broker-b"} {
		if a := clDo(t, "POST", fc.url(b)+"/v1/topics/orders/messages", map[string]string{"Content-Type": "text/plain", "Postbus-Forwarded-By": "test"}, []byte(b)); a.status != 201 {
			t.Fatalf("publish on %s: %s", b, a)
		}
	}
	var receipts []string
	clEventually(t, "a receipt from each holder", func() (bool, string) {
		a := clDo(t, "POST", fc.url("broker-c")+"/v1/groups/g/topics/orders/pull?max=8&wait=1s", nil, nil)
		var page struct {
			Messages []clPulled `json:"messages"`
		}
		if err := json.Unmarshal(a.body, &page); err != nil {
			return false, "decode: " + err.Error()
		}
		for _, m := range page.Messages {
			receipts = append(receipts, m.Receipt)
		}
		return len(receipts) >= 2, a.String()
	})
	var onA string
	for _, rc := range receipts {
		if strings.HasPrefix(rc, "broker-a~") {
			onA = rc
		}
	}
	if onA == "" {
		t.Fatalf("no receipt of broker-a among %v", receipts)
	}
	stopProc(t, fc.brokers["broker-b"])
	t.Cleanup(func() { fc.brokers["broker-b"].cmd.Process.Signal(syscall.SIGCONT) })
	body, _ := json.Marshal(map[string]any{"receipts": receipts})
	a := clDo(t, "POST", fc.url("broker-c")+"/v1/groups/g/ack", nil, body)
	code, detail := problemOf(a)
	if a.status != 502 || code != "cluster_partial" {
		t.Fatalf("ack with broker-b hung: %s; want 502 cluster_partial", a)
	}
	if !strings.Contains(detail, onA+" acked") {
		t.Errorf("the partial ack does not give broker-a's receipt its result (%s acked): %s", onA, detail)
	}
	if !strings.Contains(detail, "may or may not have been settled on broker-b") || strings.Contains(detail, "failed on broker-b") {
		t.Errorf("the partial ack calls broker-b's unanswered share failed, or does not say it may have been settled: %s", detail)
	}
}
