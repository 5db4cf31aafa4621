package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postbus/postbus/push"
)

// clusterWait bounds every "eventually" of the cluster test. It is far
// above what a healthy cluster needs (a heartbeat, an expiry of 3s): the
// CI machine is small and shared.
const clusterWait = 25 * time.Second

// clAnswer is one HTTP answer, whole.
type clAnswer struct {
	status int
	header http.Header
	body   []byte
}

func (a clAnswer) String() string {
	return fmt.Sprintf("%d [Postbus-Broker: %q] %s", a.status, a.header.Get("Postbus-Broker"), bytes.TrimSpace(a.body))
}

var clClient = &http.Client{Timeout: 20 * time.Second}

// clTry sends one request. A body without a Content-Type in hdr is sent
// as JSON.
func clTry(method, url string, hdr map[string]string, body []byte) (clAnswer, error) {
	return clCall(clClient, method, url, hdr, body)
}

// clCall is clTry through the client c; err is the transport's.
func clCall(c *http.Client, method, url string, hdr map[string]string, body []byte) (clAnswer, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return clAnswer{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return clAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return clAnswer{}, err
	}
	return clAnswer{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

func clDo(tb testing.TB, method, url string, hdr map[string]string, body []byte) clAnswer {
	tb.Helper()
	a, err := clTry(method, url, hdr, body)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, url, err)
	}
	return a
}

// clEventually polls cond until it holds or clusterWait passes; last
// describes the state seen last, for the failure message.
func clEventually(tb testing.TB, what string, cond func() (bool, string)) time.Duration {
	tb.Helper()
	start := time.Now()
	var last string
	for {
		ok, state := cond()
		if ok {
			return time.Since(start)
		}
		last = state
		if time.Since(start) > clusterWait {
			tb.Fatalf("timed out after %s waiting for %s; last seen: %s", clusterWait, what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// clMsg is a message whose publish was answered 201.
type clMsg struct {
	topic  string
	body   string
	broker string // the broker that stored it, as the answer said
	queue  int
	keys   []string
}

type clPubResult struct {
	MsgID       string `json:"msg_id"`
	Topic       string `json:"topic"`
	QueueID     int    `json:"queue_id"`
	QueueOffset int64  `json:"queue_offset"`
	Status      string `json:"status"`
	Broker      string `json:"broker"`
}

type clDelivery struct {
	path   string
	header http.Header
	body   []byte
}

type clPulled struct {
	MsgID   string `json:"msg_id"`
	Receipt string `json:"receipt"`
	Attempt int    `json:"attempt"`
	Topic   string `json:"topic"`
	Body    string `json:"body"`
}

// TestClusterAcceptance runs two name servers and three brokers as real
// processes and checks the cluster contract end to end: topic placement,
// publishing (single, sharded, batch) through every broker, subscriptions
// created on every holder, push to a webhook sink, pull and ack through any
// broker, queries by id and by key, a SIGKILLed broker (publishes keep
// being accepted, routes drop it, it comes back on its data) and, at the
// end, every message answered 201 delivered to the sink and received by the
// pull group at least once.
func TestClusterAcceptance(t *testing.T) {
	began := time.Now()
	phase := func(name string) { t.Logf("%6.1fs %s", time.Since(began).Seconds(), name) }

	// The webhook sink records every delivery; it is checked at the end.
	var sinkMu sync.Mutex
	var deliveries []clDelivery
	delivered := map[string]map[string]int{} // path -> webhook-id -> deliveries
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sinkMu.Lock()
		deliveries = append(deliveries, clDelivery{path: r.URL.Path, header: r.Header.Clone(), body: body})
		if delivered[r.URL.Path] == nil {
			delivered[r.URL.Path] = map[string]int{}
		}
		delivered[r.URL.Path][r.Header.Get("webhook-id")]++
		sinkMu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer sink.Close()

	phase("starting 2 name servers and 3 brokers")
	ns1 := start(t, "namesrv", "--broker-expiry", "3s", "--scan-interval", "200ms", "--warm-up", "300ms")
	ns2 := start(t, "namesrv", "--broker-expiry", "3s", "--scan-interval", "200ms", "--warm-up", "300ms")
	nameServers := []*proc{ns1, ns2}
	names := []string{"broker-a", "broker-b", "broker-c"}
	dirs := map[string]string{}
	brokerArgs := func(name string) []string {
		return []string{"broker", "--data", dirs[name], "--namesrv", ns1.url + ";" + ns2.url, "--broker-name", name,
			"--heartbeat-interval", "300ms", "--allow-private-webhooks"}
	}
	var bmu sync.Mutex // guards brokers: broker-c is replaced on restart
	brokers := map[string]*proc{}
	for _, n := range names {
		dirs[n] = t.TempDir()
		p := start(t, brokerArgs(n)...)
		bmu.Lock()
		brokers[n] = p
		bmu.Unlock()
	}
	url := func(name string) string {
		bmu.Lock()
		defer bmu.Unlock()
		return brokers[name].url
	}
	// states says which processes are still running, for failure messages
	// about a broker that cannot be reached.
	states := func() string {
		bmu.Lock()
		defer bmu.Unlock()
		var out []string
		for _, n := range names {
			p := brokers[n]
			select {
			case <-p.done:
				out = append(out, fmt.Sprintf("%s (%s) exited: %v", n, p.url, p.cmd.ProcessState))
			default:
				out = append(out, fmt.Sprintf("%s (%s) running", n, p.url))
			}
		}
		return strings.Join(out, "; ")
	}

	// clusterOf lists the brokers a name server knows.
	clusterOf := func(ns *proc) []string {
		a, err := clTry("GET", ns.url+"/v1/cluster", nil, nil)
		if err != nil || a.status != 200 {
			return nil
		}
		var c struct {
			Brokers []struct {
				Name string `json:"name"`
			} `json:"brokers"`
		}
		if err := json.Unmarshal(a.body, &c); err != nil {
			t.Fatalf("decode: %v", err)
		}
		var out []string
		for _, b := range c.Brokers {
			out = append(out, b.Name)
		}
		sort.Strings(out)
		return out
	}
	for i, ns := range nameServers {
		clEventually(t, fmt.Sprintf("name server %d to list the three brokers", i+1), func() (bool, string) {
			got := clusterOf(ns)
			return slices.Equal(got, names), fmt.Sprint(got)
		})
	}

	// routeOf is a name server's route of topic: broker name -> address,
	// and name -> queues.
	routeOf := func(ns *proc, topic string) (map[string]string, map[string]int, string) {
		a, err := clTry("GET", ns.url+"/v1/routes/"+topic, nil, nil)
		if err != nil {
			return nil, nil, err.Error()
		}
		if a.status != 200 {
			return nil, nil, a.String()
		}
		var r struct {
			Brokers []struct {
				Name   string `json:"name"`
				Addr   string `json:"addr"`
				Queues int    `json:"queues"`
			} `json:"brokers"`
		}
		if err := json.Unmarshal(a.body, &r); err != nil {
			return nil, nil, a.String()
		}
		addrs, queues := map[string]string{}, map[string]int{}
		for _, b := range r.Brokers {
			addrs[b.Name], queues[b.Name] = b.Addr, b.Queues
		}
		return addrs, queues, a.String()
	}
	// waitRoute waits until both name servers route topic to exactly the
	// brokers named, at their current addresses, with 2 queues each.
	waitRoute := func(topic string, holders ...string) time.Duration {
		t.Helper()
		var longest time.Duration
		for i, ns := range nameServers {
			d := clEventually(t, fmt.Sprintf("name server %d to route %s to %v", i+1, topic, holders), func() (bool, string) {
				addrs, queues, raw := routeOf(ns, topic)
				if len(addrs) != len(holders) {
					return false, raw
				}
				for _, h := range holders {
					if addrs[h] != url(h) || queues[h] != 2 {
						return false, raw
					}
				}
				return true, raw
			})
			longest = max(longest, d)
		}
		return longest
	}

	fwd := map[string]string{"Postbus-Forwarded-By": "test"} // answer from this broker only

	// 1. Topic placement.
	phase("topic placement")
	putTopic := func(via, topic, body string, want []string) {
		t.Helper()
		a := clDo(t, "PUT", url(via)+"/v1/topics/"+topic, nil, []byte(body))
		if a.status != 200 && a.status != 201 {
			t.Fatalf("PUT /v1/topics/%s %s on %s: %s", topic, body, via, a)
		}
		if got := a.header.Get("Postbus-Broker"); got != via {
			t.Errorf("PUT /v1/topics/%s on %s: Postbus-Broker %q", topic, via, got)
		}
		var tj struct {
			Name       string   `json:"name"`
			QueueCount int      `json:"queue_count"`
			Brokers    []string `json:"brokers"`
		}
		if err := json.Unmarshal(a.body, &tj); err != nil {
			t.Fatalf("PUT /v1/topics/%s on %s: %v: %s", topic, via, err, a)
		}
		got := slices.Clone(tj.Brokers)
		sort.Strings(got)
		if tj.Name != topic || tj.QueueCount != 2 || !slices.Equal(got, want) {
			t.Fatalf("PUT /v1/topics/%s %s on %s: want name %s, queue_count 2, brokers %v; got %s", topic, body, via, topic, want, a)
		}
		for _, n := range names {
			g := clDo(t, "GET", url(n)+"/v1/topics/"+topic, fwd, nil)
			holds := slices.Contains(want, n)
			if holds && g.status != 200 {
				t.Fatalf("after PUT /v1/topics/%s, %s (asked alone) does not hold it: %s", topic, n, g)
			}
			if !holds && g.status != 404 {
				t.Fatalf("after PUT /v1/topics/%s on %v, %s (asked alone) answers %s, want 404", topic, want, n, g)
			}
			if holds {
				var st struct {
					QueueCount int `json:"queue_count"`
				}
				if err := json.Unmarshal(g.body, &st); err != nil {
					t.Fatalf("decode: %v", err)
				}
				if st.QueueCount != 2 {
					t.Fatalf("%s holds %s with %d queues, want 2 (queues are per broker): %s", n, topic, st.QueueCount, g)
				}
			}
		}
	}
	putTopic("broker-a", "orders", `{"queues":2,"brokers":"all"}`, names)
	putTopic("broker-b", "solo", `{"queues":2,"brokers":["broker-b"]}`, []string{"broker-b"})
	putTopic("broker-a", "pair", `{"queues":2,"brokers":["broker-b","broker-c"]}`, []string{"broker-b", "broker-c"})
	{
		a := clDo(t, "PUT", url("broker-a")+"/v1/topics/ghost", nil, []byte(`{"queues":1,"brokers":["broker-a","broker-x"]}`))
		var p struct {
			Code string `json:"code"`
		}
		if err := json.Unmarshal(a.body, &p); err != nil {
			t.Fatalf("decode: %v", err)
		}
		if a.status != 400 || p.Code != "unknown_broker" {
			t.Errorf("PUT /v1/topics/ghost naming broker-x: want 400 unknown_broker, got %s", a)
		}
		if a.header.Get("Postbus-Broker") != "broker-a" {
			t.Errorf("the 400 from broker-a has Postbus-Broker %q", a.header.Get("Postbus-Broker"))
		}
		for _, n := range names {
			if g := clDo(t, "GET", url(n)+"/v1/topics/ghost", fwd, nil); g.status != 404 {
				t.Errorf("a refused PUT (unknown broker) left topic ghost on %s: %s", n, g)
			}
		}
	}
	d := waitRoute("orders", names...)
	waitRoute("solo", "broker-b")
	waitRoute("pair", "broker-b", "broker-c")
	t.Logf("routes listed the holders %s after the PUTs", d.Round(time.Millisecond))

	// 2. Subscriptions, created through brokers that hold the topic and
	// through ones that do not: a push group "hooks" (sink path = topic)
	// and a pull group "pullers" on every topic.
	phase("subscriptions")
	topics := []string{"orders", "solo", "pair"}
	holdersOf := map[string][]string{"orders": names, "solo": {"broker-b"}, "pair": {"broker-b", "broker-c"}}
	secrets := map[string]string{} // sink path -> secret
	subIDs := map[string][]string{}
	createSub := func(via, group, topic string, push bool) {
		t.Helper()
		req := map[string]any{"group": group, "topic": topic, "start_from": "earliest"}
		if push {
			req["url"] = sink.URL + "/" + topic
		}
		body, _ := json.Marshal(req)
		a := clDo(t, "POST", url(via)+"/v1/subscriptions", nil, body)
		var s struct {
			ID     string `json:"id"`
			Secret string `json:"secret"`
			Topic  string `json:"topic"`
			Group  string `json:"group"`
		}
		if err := json.Unmarshal(a.body, &s); err != nil {
			t.Fatalf("decode: %v", err)
		}
		if a.status != 201 || s.ID == "" || s.Topic != topic || s.Group != group || (push && !strings.HasPrefix(s.Secret, "whsec_")) {
			t.Fatalf("POST /v1/subscriptions %s through %s: %s", body, via, a)
		}
		if push {
			sinkMu.Lock()
			secrets["/"+topic] = s.Secret
			sinkMu.Unlock()
		}
		subIDs[topic] = append(subIDs[topic], s.ID)
		for _, n := range holdersOf[topic] {
			g := clDo(t, "GET", url(n)+"/v1/subscriptions/"+s.ID, fwd, nil)
			var gs struct {
				ID    string `json:"id"`
				Group string `json:"group"`
				Topic string `json:"topic"`
			}
			if err := json.Unmarshal(g.body, &gs); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if g.status != 200 || gs.ID != s.ID || gs.Group != group || gs.Topic != topic {
				t.Fatalf("subscription %s (%s on %s, created through %s): holder %s asked alone answers %s", s.ID, group, topic, via, n, g)
			}
			if got := g.header.Get("Postbus-Broker"); got != n {
				t.Errorf("GET /v1/subscriptions/%s asked alone of %s: Postbus-Broker %q", s.ID, n, got)
			}
		}
		for _, n := range names {
			if g := clDo(t, "GET", url(n)+"/v1/subscriptions/"+s.ID, nil, nil); g.status != 200 || !bytes.Contains(g.body, []byte(s.ID)) {
				t.Fatalf("GET /v1/subscriptions/%s (%s on %s) through %s: %s", s.ID, group, topic, n, g)
			}
		}
	}
	createSub("broker-c", "hooks", "orders", true)
	createSub("broker-a", "pullers", "orders", false)
	createSub("broker-a", "hooks", "solo", true) // through a broker not holding it
	createSub("broker-c", "pullers", "solo", false)
	createSub("broker-a", "hooks", "pair", true) // through a broker not holding it
	createSub("broker-b", "pullers", "pair", false)

	// 3. Publishing through every broker.
	var amu sync.Mutex
	acks := map[string]clMsg{} // msg id -> the message, for every 201
	publishErrors := 0
	bad := func(format string, args ...any) {
		t.Helper()
		t.Errorf(format, args...)
		if publishErrors++; publishErrors > 8 {
			t.Fatal("too many failed publishes; stopping")
		}
	}
	record := func(r clPubResult, body string, keys []string) {
		amu.Lock()
		acks[r.MsgID] = clMsg{topic: r.Topic, body: body, broker: r.Broker, queue: r.QueueID, keys: keys}
		amu.Unlock()
	}
	n := 0
	// publish sends one message and checks the 201; ok is false when it
	// was not acknowledged.
	publish := func(via, topic, shardKey string, keys ...string) (clPubResult, bool) {
		t.Helper()
		n++
		body := fmt.Sprintf("%s #%d via %s key=%q", topic, n, via, shardKey)
		hdr := map[string]string{"Content-Type": "text/plain"}
		if shardKey != "" {
			hdr["Postbus-Sharding-Key"] = shardKey
		}
		if len(keys) > 0 {
			hdr["Postbus-Keys"] = strings.Join(keys, ",")
		}
		a, err := clTry("POST", url(via)+"/v1/topics/"+topic+"/messages", hdr, []byte(body))
		if err != nil {
			bad("publish %q to %s through %s: %v [%s]", body, topic, via, err, states())
			return clPubResult{}, false
		}
		var r clPubResult
		if err := json.Unmarshal(a.body, &r); err != nil {
			t.Fatalf("decode: %v", err)
		}
		if a.status != 201 || r.MsgID == "" || r.Status != "SEND_OK" || r.Topic != topic || !slices.Contains(holdersOf[topic], r.Broker) {
			bad("publish %q to %s (held by %v) through %s: %s", body, topic, holdersOf[topic], via, a)
			return r, false
		}
		if a.header.Get("Postbus-Broker") == "" {
			t.Errorf("publish through %s: no Postbus-Broker header: %s", via, a)
		}
		record(r, body, keys)
		return r, true
	}
	batchN := 0
	// publishBatch sends items (sharding keys, "" for none) as one batch
	// and checks the 201 and the results' order (by reading each back
	// later: bodies are unique); it returns the results, nil when the batch
	// was not acknowledged.
	publishBatch := func(via, topic string, shardKeys []string) []clPubResult {
		t.Helper()
		batchN++
		type item struct {
			Body        string `json:"body"`
			ShardingKey string `json:"sharding_key,omitempty"`
		}
		items := make([]item, len(shardKeys))
		for i, k := range shardKeys {
			items[i] = item{Body: fmt.Sprintf("%s batch %d item %d via %s key=%q", topic, batchN, i, via, k), ShardingKey: k}
		}
		data, _ := json.Marshal(items)
		a, err := clTry("POST", url(via)+"/v1/topics/"+topic+"/messages/batch", nil, data)
		if err != nil {
			bad("batch of %d to %s through %s: %v [%s]", len(items), topic, via, err, states())
			return nil
		}
		var res []clPubResult
		if err := json.Unmarshal(a.body, &res); err != nil {
			t.Fatalf("decode: %v", err)
		}
		if a.status != 201 || len(res) != len(items) {
			bad("batch of %d to %s (keys %q) through %s: want 201 with %d results, got %s", len(items), topic, shardKeys, via, len(items), a)
			return nil
		}
		for i, r := range res {
			if r.MsgID == "" || r.Status != "SEND_OK" || r.Topic != topic || !slices.Contains(holdersOf[topic], r.Broker) {
				bad("batch to %s through %s: result %d is %+v", topic, via, i, r)
				return nil
			}
		}
		for i, r := range res {
			record(r, items[i].Body, nil)
		}
		return res
	}
	type placement struct {
		broker string
		queue  int
	}

	phase("publishing through every broker")
	// Unsharded publishes to a topic every broker holds stay where they
	// were sent. Every tenth carries the key "vip" for the query by key.
	var vip []string
	for i := 0; i < 90; i++ {
		via := names[i%3]
		var keys []string
		if i%10 == 0 {
			keys = []string{"vip", fmt.Sprintf("order-%d", i)}
		}
		r, ok := publish(via, "orders", "", keys...)
		if !ok {
			continue
		}
		if r.Broker != via {
			t.Errorf("unsharded publish to orders through %s (a holder) was stored on %s", via, r.Broker)
		}
		if len(keys) > 0 {
			vip = append(vip, r.MsgID)
		}
	}
	// A sharding key picks one queue of the whole topic, whichever broker
	// it is sent through.
	shardOf := map[string]placement{}
	onBroker := map[string][]string{} // broker -> sharding keys placed there
	var shardKeys []string
	for i := 0; i < 40 && (i < 12 || len(onBroker["broker-c"]) == 0 || len(onBroker) < 3); i++ {
		k := fmt.Sprintf("customer-%d", i)
		shardKeys = append(shardKeys, k)
		for _, via := range names {
			r, ok := publish(via, "orders", k)
			if !ok {
				continue
			}
			p := placement{r.Broker, r.QueueID}
			if prev, seen := shardOf[k]; !seen {
				shardOf[k] = p
				onBroker[r.Broker] = append(onBroker[r.Broker], k)
			} else if prev != p {
				t.Errorf("sharding key %s: stored at %+v, then through %s at %+v", k, prev, via, p)
			}
		}
	}
	if len(onBroker) != 3 {
		t.Fatalf("%d sharding keys placed on only %v: a key does not pick among all the topic's queues", len(shardKeys), onBroker)
	}
	keyOnC := onBroker["broker-c"][0]
	t.Logf("sharding keys per broker: a %d, b %d, c %d; %s is on broker-c", len(onBroker["broker-a"]), len(onBroker["broker-b"]), len(onBroker["broker-c"]), keyOnC)

	// A batch whose keys span the brokers: results in the batch's order,
	// each key where its single publishes went.
	batchKeys := append(slices.Clone(shardKeys[:12]), "", "", "")
	if res := publishBatch("broker-a", "orders", batchKeys); res != nil {
		for i, k := range batchKeys {
			if k != "" && (placement{res[i].Broker, res[i].QueueID}) != shardOf[k] {
				t.Errorf("batch item %d (sharding key %s) stored at %s queue %d; its single publishes are at %+v", i, k, res[i].Broker, res[i].QueueID, shardOf[k])
			}
		}
	}
	// A topic only broker-b holds, published through all three.
	for i := 0; i < 24; i++ {
		via := names[i%3]
		if r, ok := publish(via, "solo", ""); ok && r.Broker != "broker-b" {
			t.Errorf("publish to solo (held by broker-b alone) through %s: stored on %s", via, r.Broker)
		}
	}
	if res := publishBatch("broker-c", "solo", []string{"", "x", "y", "", "z"}); res != nil {
		for i, r := range res {
			if r.Broker != "broker-b" {
				t.Errorf("batch to solo through broker-c: item %d stored on %s", i, r.Broker)
			}
		}
	}
	// A topic held by broker-b and broker-c, published through broker-a.
	pairOn := map[string]int{}
	for i := 0; i < 20; i++ {
		if r, ok := publish("broker-a", "pair", ""); ok {
			pairOn[r.Broker]++
		}
	}
	pairKeyOnC := ""
	for i := 0; i < 40 && pairKeyOnC == ""; i++ {
		k := fmt.Sprintf("pair-%d", i)
		if r, ok := publish("broker-a", "pair", k); ok && r.Broker == "broker-c" {
			pairKeyOnC = k
		}
	}
	if pairKeyOnC == "" {
		t.Fatal("no sharding key of 40 placed a message of pair on broker-c")
	}
	t.Logf("unsharded publishes to pair through broker-a stored on %v", pairOn)

	// 4. Queries through any broker.
	phase("queries")
	checkByID := func(what string, ids []string, vias []string) {
		t.Helper()
		for i, id := range ids {
			amu.Lock()
			m := acks[id]
			amu.Unlock()
			via := vias[i%len(vias)]
			a := clDo(t, "GET", url(via)+"/v1/messages/"+id, nil, nil)
			var got struct {
				MsgID string `json:"msg_id"`
				Topic string `json:"topic"`
				Body  string `json:"body"`
			}
			if err := json.Unmarshal(a.body, &got); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if a.status != 200 || got.MsgID != id || got.Body != m.body || got.Topic != m.topic {
				t.Fatalf("%s: GET /v1/messages/%s (stored on %s, body %q) through %s: %s", what, id, m.broker, m.body, via, a)
			}
		}
	}
	ackedIDs := func() []string {
		amu.Lock()
		defer amu.Unlock()
		return slices.Sorted(maps.Keys(acks))
	}
	checkByID("before the kill", ackedIDs(), names)
	checkKey := func(via string, want []string) {
		t.Helper()
		clEventually(t, "the query by key vip through "+via+" to list every vip message", func() (bool, string) {
			a, err := clTry("GET", url(via)+"/v1/topics/orders/messages?key=vip&limit=256", nil, nil)
			if err != nil {
				return false, err.Error()
			}
			var got struct {
				Messages []struct {
					MsgID string   `json:"msg_id"`
					Keys  []string `json:"keys"`
				} `json:"messages"`
			}
			if err := json.Unmarshal(a.body, &got); err != nil {
				return false, "decode: " + err.Error()
			}
			seen := map[string]bool{}
			for _, m := range got.Messages {
				if !slices.Contains(m.Keys, "vip") {
					t.Fatalf("query by key vip through %s answers message %s with keys %v", via, m.MsgID, m.Keys)
				}
				seen[m.MsgID] = true
			}
			var missing []string
			for _, id := range want {
				if !seen[id] {
					missing = append(missing, id)
				}
			}
			return a.status == 200 && len(missing) == 0, fmt.Sprintf("missing %v; answer %s", missing, a)
		})
	}
	for _, via := range names {
		checkKey(via, vip)
	}

	// 5. Pull through one broker gets every holder's messages; acks go
	// through another.
	var pmu sync.Mutex
	pulled := map[string]int{} // msg id -> times received
	pull := func(via, topic string) (ok bool, detail string) {
		t.Helper()
		a, err := clTry("POST", url(via)+"/v1/groups/pullers/topics/"+topic+"/pull?max=32&wait=1s&visibility=10s", nil, nil)
		if err != nil {
			return false, err.Error()
		}
		var got struct {
			Messages []clPulled `json:"messages"`
		}
		if a.status != 200 || json.Unmarshal(a.body, &got) != nil {
			t.Fatalf("pull %s through %s: %s", topic, via, a)
		}
		var receipts []string
		from := map[string]int{}
		for _, m := range got.Messages {
			issuer, _, found := strings.Cut(m.Receipt, "~")
			amu.Lock()
			rec, known := acks[m.MsgID]
			amu.Unlock()
			if !found || !slices.Contains(holdersOf[topic], issuer) {
				t.Fatalf("pull %s through %s: message %s has receipt %q, not prefixed by a holder's name and ~", topic, via, m.MsgID, m.Receipt)
			}
			if known && (issuer != rec.broker || m.Body != rec.body || m.Topic != topic) {
				t.Fatalf("pull %s through %s: message %s (stored on %s, body %q) came with receipt %q, body %q, topic %q",
					topic, via, m.MsgID, rec.broker, rec.body, m.Receipt, m.Body, m.Topic)
			}
			from[issuer]++
			receipts = append(receipts, m.Receipt)
		}
		if len(receipts) > 0 {
			ackVia := names[(slices.Index(names, via)+1)%3]
			body, _ := json.Marshal(map[string][]string{"receipts": receipts})
			a, err := clTry("POST", url(ackVia)+"/v1/groups/pullers/ack", nil, body)
			if err != nil {
				return false, fmt.Sprintf("ack through %s: %v", ackVia, err)
			}
			var r struct {
				Results []struct {
					Status string `json:"status"`
				} `json:"results"`
			}
			if err := json.Unmarshal(a.body, &r); err != nil {
				return false, "decode: " + err.Error()
			}
			acked := 0
			for _, res := range r.Results {
				if res.Status == "acked" {
					acked++
				}
			}
			if a.status != 200 || acked != len(receipts) || len(r.Results) != len(receipts) {
				t.Fatalf("ack of %d receipts from %v through %s: %s", len(receipts), from, ackVia, a)
			}
		}
		pmu.Lock()
		for _, m := range got.Messages {
			pulled[m.MsgID]++
		}
		pmu.Unlock()
		return true, fmt.Sprint(from)
	}
	phase("pull before the kill")
	issuers := map[string]bool{}
	for i := 0; i < 5 && len(issuers) < 3; i++ {
		ok, detail := pull("broker-b", "orders")
		if !ok {
			t.Fatalf("pull through broker-b: %s", detail)
		}
		pmu.Lock()
		for id := range pulled {
			amu.Lock()
			issuers[acks[id].broker] = true
			amu.Unlock()
		}
		pmu.Unlock()
	}
	if len(issuers) != 3 {
		t.Fatalf("5 pulls of orders through broker-b got messages stored on %v only; want every holder", slices.Sorted(maps.Keys(issuers)))
	}

	// 6. SIGKILL broker-c.
	phase("SIGKILL broker-c")
	bmu.Lock()
	oldC := brokers["broker-c"]
	bmu.Unlock()
	oldC.cmd.Process.Signal(syscall.SIGKILL)
	<-oldC.done
	killed := time.Now()
	// Keyed publishes whose key is broker-c's are not moved to another
	// holder (that would break the key's order, and a retry with the same
	// dedup id could be stored twice): 503, nothing stored, while the name
	// servers still list broker-c. The first is a batch whose keys span
	// the brokers, so a broker-c part is due before anyone has seen it
	// fail: the others' parts are stored, broker-c's are not.
	keyedRefused := func(what, via, path string, hdr map[string]string, body []byte) {
		t.Helper()
		a, err := clTry("POST", url(via)+path, hdr, body)
		if err != nil {
			t.Errorf("%s through %s: %v", what, via, err)
			return
		}
		code, detail := problemOf(a)
		switch {
		case a.status == 503 && code == "broker_unavailable" && strings.Contains(detail, "nothing was stored"):
		case a.status == 502 && code == "cluster_partial" && strings.Contains(detail, "tie them to broker-c"):
		case time.Since(killed) > 3*time.Second && a.status == 201:
			// The name servers expired broker-c (expiry 3s): its keys
			// moved to the live holders with the route.
		default:
			t.Errorf("%s through %s after broker-c was killed: %s; want 503 broker_unavailable (nothing stored) or 502 naming broker-c's share", what, via, a)
		}
	}
	var batch []string
	for _, k := range shardKeys[:12] {
		batch = append(batch, fmt.Sprintf(`{"body":"after the kill %s","sharding_key":%q}`, k, k))
	}
	keyedRefused("a batch whose keys span the brokers", "broker-b", "/v1/topics/orders/messages/batch", nil, []byte("["+strings.Join(batch, ",")+"]"))
	for i := 0; i < 6; i++ {
		keyedRefused("a publish with broker-c's key", names[i%2], "/v1/topics/orders/messages",
			map[string]string{"Content-Type": "text/plain", "Postbus-Sharding-Key": keyOnC}, []byte("after the kill"))
	}
	for i := 0; i < 10; i++ {
		via := names[i%2]
		if r, ok := publish(via, "orders", "", "vip"); ok {
			vip = append(vip, r.MsgID)
			if r.Broker != via {
				t.Errorf("unsharded publish to orders through %s after the kill stored on %s", via, r.Broker)
			}
		}
	}
	// A topic held by broker-b and the dead broker-c, through broker-a.
	for i := 0; i < 8; i++ {
		if r, ok := publish("broker-a", "pair", ""); ok && r.Broker != "broker-b" {
			t.Errorf("publish to pair through broker-a after the kill stored on %s", r.Broker)
		}
	}
	for i := 0; i < 3; i++ {
		keyedRefused("a publish to pair with broker-c's key", "broker-a", "/v1/topics/pair/messages",
			map[string]string{"Content-Type": "text/plain", "Postbus-Sharding-Key": pairKeyOnC}, []byte("after the kill"))
	}
	for i := 0; i < 4; i++ {
		publish(names[i%2], "solo", "")
	}
	// Queries of what the live brokers hold still answer.
	var liveIDs []string
	amu.Lock()
	for id, m := range acks {
		if m.broker != "broker-c" && len(liveIDs) < 20 {
			liveIDs = append(liveIDs, id)
		}
	}
	amu.Unlock()
	checkByID("with broker-c dead", liveIDs, names[:2])

	// Both name servers drop broker-c.
	for _, topic := range []string{"orders", "pair"} {
		want := slices.DeleteFunc(slices.Clone(holdersOf[topic]), func(s string) bool { return s == "broker-c" })
		for i, ns := range nameServers {
			clEventually(t, fmt.Sprintf("name server %d to drop broker-c from the route of %s", i+1, topic), func() (bool, string) {
				addrs, _, raw := routeOf(ns, topic)
				got := slices.Sorted(maps.Keys(addrs))
				return slices.Equal(got, want), raw
			})
		}
	}
	t.Logf("both name servers dropped broker-c from routes %s after the kill (expiry 3s)", time.Since(killed).Round(time.Millisecond))
	for i := 0; i < 4; i++ {
		if r, ok := publish(names[i%2], "orders", keyOnC); ok && r.Broker == "broker-c" {
			t.Errorf("publish with key %s after broker-c left the routes answered as stored on broker-c", keyOnC)
		}
		if r, ok := publish("broker-a", "pair", ""); ok && r.Broker != "broker-b" {
			t.Errorf("publish to pair after broker-c left the routes stored on %s", r.Broker)
		}
	}

	// Restart broker-c on its data.
	phase("restarting broker-c")
	newC := start(t, brokerArgs("broker-c")...)
	bmu.Lock()
	brokers["broker-c"] = newC
	bmu.Unlock()
	back := waitRoute("orders", names...)
	waitRoute("pair", "broker-b", "broker-c")
	t.Logf("broker-c back in the routes %s after it was ready", back.Round(time.Millisecond))
	for _, topic := range topics {
		for _, id := range subIDs[topic] {
			if !slices.Contains(holdersOf[topic], "broker-c") {
				continue
			}
			if g := clDo(t, "GET", url("broker-c")+"/v1/subscriptions/"+id, fwd, nil); g.status != 200 {
				t.Fatalf("restarted broker-c lost subscription %s on %s: %s", id, topic, g)
			}
		}
	}
	for i := 0; i < 6; i++ {
		if r, ok := publish("broker-c", "orders", "", "vip"); ok {
			vip = append(vip, r.MsgID)
			if r.Broker != "broker-c" {
				t.Errorf("unsharded publish to orders through the restarted broker-c stored on %s", r.Broker)
			}
		}
	}
	for i := 0; i < 3; i++ {
		publish("broker-c", "solo", "")
		publish("broker-c", "pair", "")
		publish(names[i%3], "orders", keyOnC)
	}

	// 7. Every message answered 201 is pushed to the sink and pulled by
	// the group, at least once.
	phase("waiting for every acknowledged message to be pushed and pulled")
	all := ackedIDs()
	missingPush := func() []string {
		sinkMu.Lock()
		defer sinkMu.Unlock()
		var out []string
		for _, id := range all {
			amu.Lock()
			m := acks[id]
			amu.Unlock()
			if delivered["/"+m.topic][id] == 0 {
				out = append(out, fmt.Sprintf("%s (%s on %s)", id, m.topic, m.broker))
			}
		}
		return out
	}
	missingPull := func() []string {
		pmu.Lock()
		defer pmu.Unlock()
		var out []string
		for _, id := range all {
			if pulled[id] == 0 {
				amu.Lock()
				m := acks[id]
				amu.Unlock()
				out = append(out, fmt.Sprintf("%s (%s on %s)", id, m.topic, m.broker))
			}
		}
		return out
	}
	round := 0
	var lastPull string
	drained := clEventually(t, fmt.Sprintf("all %d acknowledged messages pushed and pulled", len(all)), func() (bool, string) {
		mp := missingPull()
		if len(mp) > 0 {
			for _, topic := range topics {
				via := names[round%3]
				if ok, detail := pull(via, topic); !ok {
					lastPull = fmt.Sprintf("pull %s through %s: %s", topic, via, detail)
				}
			}
			round++
			mp = missingPull()
		}
		ms := missingPush()
		return len(mp) == 0 && len(ms) == 0, fmt.Sprintf("not pulled (%d): %s; not pushed (%d): %s; last pull error: %s",
			len(mp), clFirst(mp, 10), len(ms), clFirst(ms, 10), lastPull)
	})
	t.Logf("every acknowledged message pushed and pulled %s after the restart", drained.Round(time.Millisecond))

	// Every delivery is signed with its subscription's one secret, whichever
	// broker sent it, and its webhook-id is the message id.
	sinkMu.Lock()
	got := slices.Clone(deliveries)
	sinkMu.Unlock()
	fromBroker := map[string]map[string]bool{} // topic -> brokers whose messages arrived
	badSigs := 0
	for _, dv := range got {
		id := dv.header.Get("webhook-id")
		amu.Lock()
		m, known := acks[id]
		amu.Unlock()
		if dv.header.Get("Postbus-Message-Id") != id {
			t.Errorf("delivery to %s: webhook-id %q, Postbus-Message-Id %q", dv.path, id, dv.header.Get("Postbus-Message-Id"))
		}
		if known && (dv.path != "/"+m.topic || string(dv.body) != m.body) {
			t.Errorf("message %s (%s, body %q) delivered to %s with body %q", id, m.topic, m.body, dv.path, dv.body)
		}
		sinkMu.Lock()
		secret := secrets[dv.path]
		sinkMu.Unlock()
		if err := push.VerifyStandardWebhook(secret, dv.header, dv.body, time.Hour, time.Now()); err != nil {
			if badSigs++; badSigs <= 5 {
				t.Errorf("delivery of %s to %s (stored on %s) does not verify with the subscription's secret: %v", id, dv.path, m.broker, err)
			}
			continue
		}
		if known {
			if fromBroker[m.topic] == nil {
				fromBroker[m.topic] = map[string]bool{}
			}
			fromBroker[m.topic][m.broker] = true
		}
	}
	if badSigs > 0 {
		t.Errorf("%d of %d deliveries have a bad signature", badSigs, len(got))
	}
	for _, topic := range topics {
		if gotB := slices.Sorted(maps.Keys(fromBroker[topic])); !slices.Equal(gotB, holdersOf[topic]) {
			t.Errorf("verified deliveries of %s came from messages stored on %v, want every holder %v", topic, gotB, holdersOf[topic])
		}
	}

	// Queries find everything again, broker-c's share included.
	phase("final queries")
	checkByID("after the restart", all, []string{"broker-c", "broker-a", "broker-b"})
	for _, via := range names {
		checkKey(via, vip)
	}

	dupPush, dupPull := 0, 0
	sinkMu.Lock()
	for _, m := range delivered {
		for _, c := range m {
			dupPush += c - 1
		}
	}
	sinkMu.Unlock()
	pmu.Lock()
	for _, c := range pulled {
		dupPull += c - 1
	}
	pmu.Unlock()
	phase(fmt.Sprintf("done: %d messages acknowledged; %d deliveries (%d duplicate), %d pulled duplicates", len(all), len(got), dupPush, dupPull))
}

func clFirst(s []string, n int) string {
	if len(s) > n {
		return strings.Join(s[:n], ", ") + ", ..."
	}
	return strings.Join(s, ", ")
}

// problemOf is an answer's problem code and detail.
func problemOf(a clAnswer) (code, detail string) {
	var p struct {
		Code   string `json:"code"`
		Detail string `json:"detail"`
	}
	if json.Unmarshal(a.body, &p) != nil {
		return "", "" // not a problem document
	}
	return p.Code, p.Detail
}
