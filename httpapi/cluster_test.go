package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/namesrv"
)

// The cluster tests run a bus in process: one name server and three
// brokers, each a real broker on its own directory behind its own
// httptest server, registering its topics with the name server every
// 100ms and at once when they change, as `postbus broker --namesrv` does.
// A request sent to a broker plainly is answered for the whole bus; the
// same request with Postbus-Forwarded-By is answered by that broker for
// itself, which is how the tests see where things ended up.

// clusterWait bounds every wait for the cluster to settle. A healthy
// cluster needs one heartbeat (100ms); the CI machine is small and shared.
const clusterWait = 10 * time.Second

// asSelf makes a broker answer for itself only.
var asSelf = map[string]string{hdrForwardedBy: "test"}

type clusterNode struct {
	name string
	srv  *httptest.Server
	b    *broker.Broker
}

type testCluster struct {
	reg   *namesrv.Registry
	names []string // the brokers, sorted
	nodes map[string]*clusterNode
}

// newTestCluster starts a name server and a broker of each name, and
// returns once the name server lists them all.
func newTestCluster(tb testing.TB, names ...string) *testCluster {
	tb.Helper()
	return newTestClusterSlowNames(tb, 0, names...)
}

// newTestClusterSlowNames is newTestCluster with a name server that takes
// delay over every heartbeat, as one across a network would.
func newTestClusterSlowNames(tb testing.TB, delay time.Duration, names ...string) *testCluster {
	tb.Helper()
	tc := &testCluster{reg: namesrv.NewRegistry(namesrv.DefaultConfig()), names: slices.Sorted(slices.Values(names)),
		nodes: make(map[string]*clusterNode)}
	api := mustNew(tb, Config{NameServer: tc.reg, NameServerOnly: true})
	ns := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/brokers/heartbeat" {
			time.Sleep(delay)
		}
		api.ServeHTTP(w, r)
	}))
	tb.Cleanup(ns.Close)
	for _, name := range names {
		tc.nodes[name] = startClusterNode(tb, name, ns.URL)
	}
	waitFor(tb, "every broker registered", func() (bool, string) {
		var got []string
		for _, b := range tc.reg.Brokers() {
			got = append(got, b.Name)
		}
		return slices.Equal(got, tc.names), fmt.Sprint(got)
	})
	return tc
}

// startClusterNode opens a broker and serves it as a member of the cluster
// of the name server at nsURL.
func startClusterNode(tb testing.TB, name, nsURL string) *clusterNode {
	tb.Helper()
	cfg := broker.DefaultConfig(tb.TempDir())
	cfg.SegmentSize = 8 << 20
	cfg.MaxMessageBytes = 1 << 20
	b, err := broker.Open(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	// The broker registers its server's URL, so the server comes first and
	// hands its requests to the API built after it.
	var api atomic.Pointer[Server]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		api.Load().ServeHTTP(w, r)
	}))
	client := namesrv.NewClient(namesrv.ClientConfig{Addrs: []string{nsURL}, Interval: 100 * time.Millisecond, Timeout: 2 * time.Second})
	api.Store(mustNew(tb, Config{Broker: b, Cluster: &Cluster{Self: name, Names: client}}))

	// As cmd/postbus's membership.register: every topic with its queues,
	// sent again at once when the topics change.
	info := func() namesrv.BrokerInfo {
		in := namesrv.BrokerInfo{Name: name, Addr: srv.URL, Version: "test"}
		for _, t := range b.Topics(context.Background(), "", 0) {
			in.Topics = append(in.Topics, namesrv.Topic{Name: t.Name, Queues: t.Queues})
		}
		return in
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { client.Run(ctx, info) })
	wg.Go(func() {
		for {
			changed := b.TopicsChanged()
			select {
			case <-changed:
				client.Changed()
			case <-ctx.Done():
				return
			}
		}
	})
	tb.Cleanup(func() {
		cancel()
		wg.Wait()
		srv.Close()
		if err := b.Close(); err != nil {
			tb.Errorf("close %s: %v", name, err)
		}
	})
	return &clusterNode{name: name, srv: srv, b: b}
}

// waitFor polls cond until it holds, failing the test after clusterWait
// with the state cond saw last.
func waitFor(tb testing.TB, what string, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(clusterWait)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("waited %s for %s; last seen: %s", clusterWait, what, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wantRoute checks that the name server routes topic to exactly holders,
// as it must as soon as a PUT or DELETE of the topic has answered.
func (tc *testCluster) wantRoute(tb testing.TB, topic string, holders ...string) {
	tb.Helper()
	rt, _ := tc.reg.Route(topic)
	var got []string
	for _, b := range rt.Brokers {
		got = append(got, b.Name)
	}
	if want := slices.Sorted(slices.Values(holders)); !slices.Equal(got, want) {
		tb.Fatalf("the name server routes %s to %v, want %v", topic, got, want)
	}
}

// clusterAnswer is one answer, whole.
type clusterAnswer struct {
	status int
	header http.Header
	body   []byte
}

func (a clusterAnswer) String() string {
	return fmt.Sprintf("%d [%s: %q] %s", a.status, hdrBroker, a.header.Get(hdrBroker), bytes.TrimSpace(a.body))
}

// via sends a request to broker name, which answers for the whole bus.
func (tc *testCluster) via(tb testing.TB, name, method, path string, hdr map[string]string, body string) clusterAnswer {
	tb.Helper()
	resp, data := do(tb, method, tc.nodes[name].srv.URL+path, hdr, strings.NewReader(body))
	return clusterAnswer{status: resp.StatusCode, header: resp.Header, body: data}
}

// at sends a request to broker name, which answers for itself only.
func (tc *testCluster) at(tb testing.TB, name, method, path, body string) clusterAnswer {
	tb.Helper()
	return tc.via(tb, name, method, path, asSelf, body)
}

// want checks an answer's status and the broker it names as answering.
func (a clusterAnswer) want(tb testing.TB, status int, answeredBy string) {
	tb.Helper()
	if a.status != status || a.header.Get(hdrBroker) != answeredBy {
		tb.Fatalf("answer %s; want %d from %s", a, status, answeredBy)
	}
}

// wantProblem checks an answer is the problem code with its status.
func (a clusterAnswer) wantProblem(tb testing.TB, status int, code broker.Code, answeredBy string) {
	tb.Helper()
	var p problem
	if err := json.Unmarshal(a.body, &p); err != nil || a.status != status || p.Code != code || a.header.Get(hdrBroker) != answeredBy {
		tb.Fatalf("answer %s; want %d %s from %s", a, status, code, answeredBy)
	}
}

func decodeAs[T any](tb testing.TB, a clusterAnswer) T {
	tb.Helper()
	var v T
	if err := json.Unmarshal(a.body, &v); err != nil {
		tb.Fatalf("decoding %s: %v", a, err)
	}
	return v
}

// holdingAmong returns the brokers among names that answer 200 for path
// for themselves.
func (tc *testCluster) holdingAmong(tb testing.TB, path string, names []string) []string {
	tb.Helper()
	var out []string
	for _, name := range names {
		switch a := tc.at(tb, name, "GET", path, ""); a.status {
		case http.StatusOK:
			out = append(out, name)
		case http.StatusNotFound:
		default:
			tb.Fatalf("GET %s on %s: %s", path, name, a)
		}
	}
	return out
}

// wantOn checks that exactly the brokers on have what path names.
func (tc *testCluster) wantOn(tb testing.TB, path string, on ...string) {
	tb.Helper()
	if got := tc.holdingAmong(tb, path, tc.names); !slices.Equal(got, slices.Sorted(slices.Values(on))) {
		tb.Fatalf("%s is on %v, want %v", path, got, on)
	}
}

// placeTopic creates topic through broker via with body and checks that
// the name server already routes it to exactly holders: a broker answers
// a topic's creation only once the name servers have it.
func (tc *testCluster) placeTopic(tb testing.TB, via, topic, body string, holders ...string) {
	tb.Helper()
	tc.via(tb, via, "PUT", "/v1/topics/"+topic, nil, body).want(tb, http.StatusCreated, via)
	tc.wantRoute(tb, topic, holders...)
}

// shardBroker is where the cluster doc says a sharding key goes: queue
// FNV-1a(key) mod the topic's queues, the queues numbered across the
// holders in name order (each holding queues of them).
func shardBroker(key string, holders []string, queues int) string {
	h := fnv.New64a()
	h.Write([]byte(key))
	q := h.Sum64() % uint64(len(holders)*queues)
	return holders[q/uint64(queues)]
}

const (
	brokerA = "broker-a"
	brokerB = "broker-b"
	brokerC = "broker-c"
)

func TestClusterPutTopic(t *testing.T) {
	tc := newTestCluster(t, brokerA, brokerB, brokerC)
	all := []string{brokerA, brokerB, brokerC}
	tests := []struct {
		name, via, topic, body string
		status                 int
		code                   broker.Code // of a refusal
		on                     []string    // the holders after
		queues                 int         // each holder's
	}{
		{"all", brokerA, "t-all", `{"brokers":"all"}`, 201, "", all, 4},
		{"one named, through another", brokerA, "t-b", `{"brokers":["broker-b"]}`, 201, "", []string{brokerB}, 4},
		{"two named, through a third", brokerC, "t-ab", `{"brokers":["broker-b","broker-a"],"queues":2}`, 201, "", []string{brokerA, brokerB}, 2},
		{"unknown name", brokerA, "t-x", `{"brokers":["broker-b","broker-x"]}`, 400, codeUnknownBroker, nil, 0},
		{"all again changes nothing", brokerB, "t-all", `{"brokers":"all"}`, 200, "", all, 4},
		{"without brokers: where it is", brokerC, "t-b", `{"retention":"1h"}`, 200, "", []string{brokerB}, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := tc.via(t, tt.via, "PUT", "/v1/topics/"+tt.topic, nil, tt.body)
			if tt.code != "" {
				a.wantProblem(t, tt.status, tt.code, tt.via)
			} else {
				a.want(t, tt.status, tt.via)
				got := decodeAs[struct {
					Name       string   `json:"name"`
					QueueCount int      `json:"queue_count"`
					Brokers    []string `json:"brokers"`
				}](t, a)
				if got.Name != tt.topic || got.QueueCount != tt.queues || !slices.Equal(slices.Sorted(slices.Values(got.Brokers)), tt.on) {
					t.Fatalf("answer %s; want %s of %d queues on %v", a, tt.topic, tt.queues, tt.on)
				}
			}
			tc.wantOn(t, "/v1/topics/"+tt.topic, tt.on...)
			for _, name := range tt.on {
				if st := decodeAs[topicJSON](t, tc.at(t, name, "GET", "/v1/topics/"+tt.topic, "")); st.QueueCount != tt.queues {
					t.Errorf("%s on %s has %d queues, want %d", tt.topic, name, st.QueueCount, tt.queues)
				}
			}
			if tt.on != nil {
				tc.wantRoute(t, tt.topic, tt.on...)
			}
		})
	}

	t.Run("get topic merged", func(t *testing.T) {
		for _, c := range []struct {
			via, topic string
			on         []string
			queues     int
		}{
			{brokerB, "t-all", all, 4},
			{brokerC, "t-b", []string{brokerB}, 4},
			{brokerC, "t-ab", []string{brokerA, brokerB}, 2},
			{brokerA, "t-ab", []string{brokerA, brokerB}, 2},
		} {
			a := tc.via(t, c.via, "GET", "/v1/topics/"+c.topic, nil, "")
			a.want(t, http.StatusOK, c.via)
			got := decodeAs[struct {
				Name       string   `json:"name"`
				QueueCount int      `json:"queue_count"`
				Brokers    []string `json:"brokers"`
				Queues     []struct {
					QueueID int    `json:"queue_id"`
					Broker  string `json:"broker"`
				} `json:"queues"`
			}](t, a)
			var queues []string
			for _, q := range got.Queues {
				queues = append(queues, fmt.Sprintf("%s/%d", q.Broker, q.QueueID))
			}
			slices.Sort(queues)
			var want []string
			for _, name := range c.on {
				for q := range c.queues {
					want = append(want, fmt.Sprintf("%s/%d", name, q))
				}
			}
			if got.Name != c.topic || got.QueueCount != len(want) || !slices.Equal(queues, want) ||
				!slices.Equal(slices.Sorted(slices.Values(got.Brokers)), c.on) {
				t.Errorf("GET %s through %s: %s\nwant queue_count %d, queues %v, brokers %v", c.topic, c.via, a, len(want), want, c.on)
			}
		}
	})

	t.Run("list topics merged", func(t *testing.T) {
		want := map[string]struct {
			queues int
			on     []string
		}{"t-all": {12, all}, "t-b": {4, []string{brokerB}}, "t-ab": {4, []string{brokerA, brokerB}}}
		for _, via := range all {
			a := tc.via(t, via, "GET", "/v1/topics", nil, "")
			a.want(t, http.StatusOK, via)
			got := decodeAs[struct {
				Topics []struct {
					Name       string   `json:"name"`
					QueueCount int      `json:"queue_count"`
					Brokers    []string `json:"brokers"`
				} `json:"topics"`
			}](t, a)
			var names []string
			for _, topic := range got.Topics {
				names = append(names, topic.Name)
				w, ok := want[topic.Name]
				if !ok {
					continue
				}
				if topic.QueueCount != w.queues || !slices.Equal(slices.Sorted(slices.Values(topic.Brokers)), w.on) {
					t.Errorf("through %s, %s has %d queues on %v; want %d on %v", via, topic.Name, topic.QueueCount, topic.Brokers, w.queues, w.on)
				}
			}
			if !slices.Equal(names, []string{"t-ab", "t-all", "t-b"}) {
				t.Errorf("through %s the topics are %v (each once, in order), want [t-ab t-all t-b]", via, names)
			}
		}
	})
}

// publishVia publishes body to topic through broker via, with headers hdr.
func (tc *testCluster) publishVia(tb testing.TB, via, topic string, hdr map[string]string, body string) (publishResult, clusterAnswer) {
	tb.Helper()
	a := tc.via(tb, via, "POST", "/v1/topics/"+topic+"/messages", hdr, body)
	if a.status != http.StatusCreated {
		tb.Fatalf("publish to %s through %s: %s", topic, via, a)
	}
	return decodeAs[publishResult](tb, a), a
}

// wantStored checks the message is stored on broker on alone, with body
// and queue.
func (tc *testCluster) wantStored(tb testing.TB, res publishResult, body string) {
	tb.Helper()
	tc.wantOn(tb, "/v1/messages/"+res.MsgID, res.Broker)
	m := decodeAs[messageJSON](tb, tc.at(tb, res.Broker, "GET", "/v1/messages/"+res.MsgID, ""))
	if m.Body != body || m.QueueID != res.QueueID || m.QueueOffset != res.QueueOffset || m.Topic != res.Topic {
		tb.Fatalf("stored on %s: %+v; the publish answered %+v with body %q", res.Broker, m, res, body)
	}
}

// TestClusterPlacedTopicRoutedAtOnce: the instant a PUT placing a topic
// on other brokers answers, a publish through a broker that took no part
// in it reaches the topic's holder (no window in which it finds no route),
// and after a DELETE the topic is gone from the routes.
func TestClusterPlacedTopicRoutedAtOnce(t *testing.T) {
	tc := newTestClusterSlowNames(t, 30*time.Millisecond, brokerA, brokerB, brokerC)
	for i := range 10 {
		topic := fmt.Sprintf("at-once-%d", i)
		tc.via(t, brokerA, "PUT", "/v1/topics/"+topic, nil, `{"brokers":["broker-b"]}`).want(t, http.StatusCreated, brokerA)
		res, _ := tc.publishVia(t, brokerC, topic, nil, "hi")
		if res.Broker != brokerB {
			t.Fatalf("publish to %s through %s stored on %s, not on its only holder %s", topic, brokerC, res.Broker, brokerB)
		}
		if a := tc.via(t, brokerA, "DELETE", "/v1/topics/"+topic, nil, ""); a.status != http.StatusNoContent {
			t.Fatalf("DELETE %s through %s: %s", topic, brokerA, a)
		}
		tc.wantRoute(t, topic)
	}
}

func TestClusterPublish(t *testing.T) {
	tc := newTestCluster(t, brokerA, brokerB, brokerC)
	all := []string{brokerA, brokerB, brokerC}
	tc.placeTopic(t, brokerA, "p-b", `{"brokers":["broker-b"]}`, brokerB)
	tc.placeTopic(t, brokerC, "p-ab", `{"brokers":["broker-a","broker-b"]}`, brokerA, brokerB)
	tc.placeTopic(t, brokerA, "p-all", `{"brokers":"all"}`, all...)

	t.Run("through a non-holder", func(t *testing.T) {
		for _, via := range all {
			body := fmt.Sprintf("to b through %s", via)
			res, a := tc.publishVia(t, via, "p-b", nil, body)
			a.want(t, http.StatusCreated, brokerB)
			if res.Broker != brokerB || res.Topic != "p-b" || res.Status != "SEND_OK" ||
				a.header.Get("Location") != "/v1/messages/"+res.MsgID {
				t.Fatalf("publish through %s: %s (Location %q)", via, a, a.header.Get("Location"))
			}
			tc.wantStored(t, res, body)
		}
	})

	t.Run("cloudevents through a non-holder", func(t *testing.T) {
		// The broker asked forwards the request as it came; the holder
		// reads the event from its ce-* headers or its structured body.
		for _, tt := range []struct {
			name string
			hdr  map[string]string
			body string
		}{
			{"binary", map[string]string{"ce-specversion": "1.0", "ce-id": "b1", "ce-source": "/shop", "ce-type": "created",
				"ce-tenant": "acme", "Content-Type": "text/plain"}, "data"},
			{"structured", map[string]string{"Content-Type": "application/cloudevents+json"},
				`{"specversion":"1.0","id":"b1","source":"/shop","type":"created","tenant":"acme","datacontenttype":"text/plain","data":"data"}`},
		} {
			res, a := tc.publishVia(t, brokerA, "p-b", tt.hdr, tt.body)
			a.want(t, http.StatusCreated, brokerB)
			tc.wantStored(t, res, "data")
			m := decodeAs[messageJSON](t, tc.at(t, brokerB, "GET", "/v1/messages/"+res.MsgID, ""))
			if m.Tag != "created" || m.ContentType != "text/plain" || m.Properties["ce-id"] != "b1" || m.Properties["ce-tenant"] != "acme" {
				t.Fatalf("%s event stored through %s: %+v", tt.name, brokerA, m)
			}
		}
	})

	t.Run("unkeyed over every holder", func(t *testing.T) {
		got := map[string]int{}
		for i := range 8 {
			body := fmt.Sprintf("rr-%d", i)
			res, a := tc.publishVia(t, brokerC, "p-ab", nil, body)
			if res.Broker != brokerA && res.Broker != brokerB || a.header.Get(hdrBroker) != res.Broker {
				t.Fatalf("publish through %s: %s", brokerC, a)
			}
			tc.wantStored(t, res, body)
			got[res.Broker]++
		}
		if got[brokerA] == 0 || got[brokerB] == 0 {
			t.Errorf("8 publishes through a non-holder went to %v; want both holders used", got)
		}
	})

	t.Run("sharding keys", func(t *testing.T) {
		for _, c := range []struct {
			topic   string
			holders []string
		}{{"p-all", all}, {"p-ab", []string{brokerA, brokerB}}} {
			used := map[string]bool{}
			for k := range 12 {
				key := fmt.Sprintf("order-%d", k)
				want := shardBroker(key, c.holders, 4)
				used[want] = true
				var first publishResult
				for i, via := range all {
					body := fmt.Sprintf("%s through %s", key, via)
					res, a := tc.publishVia(t, via, c.topic, map[string]string{hdrShardingKey: key}, body)
					if res.Broker != want || a.header.Get(hdrBroker) != want {
						t.Fatalf("key %s of %s through %s: %s; want it on %s", key, c.topic, via, a, want)
					}
					if i == 0 {
						first = res
					} else if res.QueueID != first.QueueID {
						t.Fatalf("key %s of %s: queue %d through %s, queue %d through %s", key, c.topic, first.QueueID, all[0], res.QueueID, via)
					}
					tc.wantStored(t, res, body)
				}
			}
			if len(used) != len(c.holders) {
				t.Errorf("12 keys of %s used %v; the test wants keys on every holder", c.topic, used)
			}
		}
	})

	t.Run("batch split by sharding key", func(t *testing.T) {
		// Keys for each broker, and a message without one between them.
		keyFor := map[string][]string{}
		for k := 0; len(keyFor[brokerA]) < 2 || len(keyFor[brokerB]) < 1 || len(keyFor[brokerC]) < 1; k++ {
			key := fmt.Sprintf("k%d", k)
			name := shardBroker(key, all, 4)
			keyFor[name] = append(keyFor[name], key)
		}
		keys := []string{keyFor[brokerA][0], keyFor[brokerC][0], "", keyFor[brokerB][0], keyFor[brokerA][1]}
		var items []string
		for i, key := range keys {
			items = append(items, fmt.Sprintf(`{"body":"batch-%d","sharding_key":%q}`, i, key))
		}
		for _, via := range all {
			a := tc.via(t, via, "POST", "/v1/topics/p-all/messages/batch", map[string]string{"Content-Type": "application/json"}, "["+strings.Join(items, ",")+"]")
			a.want(t, http.StatusCreated, via)
			res := decodeAs[[]publishResult](t, a)
			if len(res) != len(keys) {
				t.Fatalf("batch through %s: %s", via, a)
			}
			for i, key := range keys {
				if key != "" && res[i].Broker != shardBroker(key, all, 4) || res[i].Broker == "" {
					t.Fatalf("batch through %s: message %d (key %q) stored on %q; answer %s", via, i, key, res[i].Broker, a)
				}
				tc.wantStored(t, res[i], fmt.Sprintf("batch-%d", i))
			}
		}
	})
}

func TestClusterFailover(t *testing.T) {
	tc := newTestCluster(t, brokerA, brokerB, brokerC)
	all := []string{brokerA, brokerB, brokerC}
	tc.placeTopic(t, brokerA, "f-bc", `{"brokers":["broker-b","broker-c"]}`, brokerB, brokerC)
	tc.placeTopic(t, brokerA, "f-c", `{"brokers":["broker-c"]}`, brokerC)
	tc.placeTopic(t, brokerA, "f-all", `{"brokers":"all"}`, all...)
	tc.via(t, brokerA, "POST", "/v1/subscriptions", nil, `{"group":"g","topic":"f-bc","start_from":"earliest"}`).want(t, http.StatusCreated, brokerB)

	// broker-c's server goes away: connections to it are refused, while it
	// still heartbeats, so routes still list it.
	tc.nodes[brokerC].srv.Close()

	alive := []string{brokerA, brokerB}
	var onB []publishResult // f-bc's messages, all on broker-b
	for _, c := range []struct {
		name, via, topic string
		keyed            bool
		holders          []string // before broker-c was lost
	}{
		{"unkeyed through a non-holder", brokerA, "f-bc", false, []string{brokerB, brokerC}},
		{"keyed through a non-holder", brokerA, "f-bc", true, []string{brokerB, brokerC}},
		{"keyed through a holder", brokerB, "f-bc", true, []string{brokerB, brokerC}},
		{"keyed, on every broker", brokerA, "f-all", true, all},
		{"keyed, on every broker, through another", brokerB, "f-all", true, all},
	} {
		t.Run(c.name, func(t *testing.T) {
			lostKeys := 0
			for k := range 12 {
				hdr := map[string]string{}
				if c.keyed {
					key := fmt.Sprintf("key-%d", k)
					hdr[hdrShardingKey] = key
					if shardBroker(key, c.holders, 4) == brokerC {
						lostKeys++
					}
				}
				body := fmt.Sprintf("%s %d", c.name, k)
				if c.keyed && shardBroker(hdr[hdrShardingKey], c.holders, 4) == brokerC {
					// A keyed message waits for its key's holder: moving
					// it would break the key's order, and a retry with
					// its dedup id could be stored twice.
					a := tc.via(t, c.via, "POST", "/v1/topics/"+c.topic+"/messages", hdr, body)
					if a.status != http.StatusServiceUnavailable || problemCodeOf(a.body) != codeBrokerUnavailable || !strings.Contains(string(a.body), "nothing was stored") {
						t.Fatalf("publish %d (key of broker-c) through %s: %s; want 503 broker_unavailable, nothing stored", k, c.via, a)
					}
					continue
				}
				res, a := tc.publishVia(t, c.via, c.topic, hdr, body)
				if c.keyed && res.Broker != shardBroker(hdr[hdrShardingKey], c.holders, 4) {
					t.Fatalf("publish %d through %s: %s; want it on its key's holder %s", k, c.via, a, shardBroker(hdr[hdrShardingKey], c.holders, 4))
				}
				if !slices.Contains(alive, res.Broker) || a.header.Get(hdrBroker) != res.Broker {
					t.Fatalf("publish %d through %s: %s; want it on one of %v", k, c.via, a, alive)
				}
				if c.topic == "f-bc" {
					onB = append(onB, res)
				}
				if got := tc.holdingAmong(t, "/v1/messages/"+res.MsgID, alive); !slices.Equal(got, []string{res.Broker}) {
					t.Fatalf("message %d is on %v, want %s", k, got, res.Broker)
				}
			}
			if c.keyed && lostKeys == 0 {
				t.Errorf("none of the keys was broker-c's; the test wants some")
			}
		})
	}
	for _, res := range onB {
		if res.Broker != brokerB {
			t.Errorf("%s of f-bc stored on %s, want %s", res.MsgID, res.Broker, brokerB)
		}
	}

	t.Run("batch through a broker that saw the failure", func(t *testing.T) {
		var items []string
		for k := range 12 {
			items = append(items, fmt.Sprintf(`{"body":"b%d","sharding_key":"batch-%d"}`, k, k))
		}
		a := tc.via(t, brokerA, "POST", "/v1/topics/f-all/messages/batch", nil, "["+strings.Join(items, ",")+"]")
		// The keys of broker-c are not stored (and not moved); the others are.
		var onC []string
		for k := range 12 {
			if shardBroker(fmt.Sprintf("batch-%d", k), all, 4) == brokerC {
				onC = append(onC, fmt.Sprint(k))
			}
		}
		if len(onC) == 0 {
			t.Fatalf("none of the batch's keys is broker-c's; the test wants some")
		}
		want := fmt.Sprintf("not stored messages [%s]: their sharding keys or dedup ids tie them to broker-c", strings.Join(onC, " "))
		if a.status != http.StatusBadGateway || problemCodeOf(a.body) != codeClusterPartial || !strings.Contains(string(a.body), want) {
			t.Fatalf("batch with keys of broker-c: %s; want 502 cluster_partial saying %q", a, want)
		}
	})

	t.Run("topic on the lost broker only", func(t *testing.T) {
		for _, via := range []string{brokerA, brokerB, brokerA} {
			tc.via(t, via, "POST", "/v1/topics/f-c/messages", nil, "lost").wantProblem(t, http.StatusServiceUnavailable, codeBrokerUnavailable, via)
		}
	})

	t.Run("pull from the holders left", func(t *testing.T) {
		a := tc.via(t, brokerA, "POST", "/v1/groups/g/topics/f-bc/pull?max=100", nil, "")
		a.want(t, http.StatusOK, brokerA)
		var got []string
		for _, m := range decodeAs[pullAnswer](t, a).Messages {
			if !strings.HasPrefix(m.Receipt, brokerB+receiptSep) {
				t.Errorf("pulled %s with receipt %q", m.MsgID, m.Receipt)
			}
			got = append(got, m.MsgID)
		}
		var want []string
		for _, res := range onB {
			want = append(want, res.MsgID)
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("pulled %v, want the %d published since %v", got, len(want), want)
		}
	})
}

// secrets returns the subscription's secret on each of the brokers names,
// read from the brokers themselves: the API shows a secret only in the
// answers to a create and a rotation.
func (tc *testCluster) secrets(tb testing.TB, id string, names []string) []string {
	tb.Helper()
	var out []string
	for _, name := range names {
		sub, err := tc.nodes[name].b.Subscription(context.Background(), id)
		if err != nil {
			tb.Fatalf("subscription %s on %s: %v", id, name, err)
		}
		out = append(out, sub.Secret)
	}
	return out
}

func TestClusterSubscriptions(t *testing.T) {
	tc := newTestCluster(t, brokerA, brokerB, brokerC)
	all := []string{brokerA, brokerB, brokerC}
	holders := []string{brokerA, brokerB}
	tc.placeTopic(t, brokerA, "orders", `{"brokers":["broker-a","broker-b"]}`, holders...)

	// Created through the broker that does not hold the topic.
	a := tc.via(t, brokerC, "POST", "/v1/subscriptions", nil,
		`{"group":"billing","topic":"orders","url":"https://hooks.example.com/orders","max_retries":2,"format":"cloudevents"}`)
	created := decodeAs[subscriptionJSON](t, a)
	if a.status != http.StatusCreated || !slices.Contains(holders, a.header.Get(hdrBroker)) || created.ID == "" ||
		!strings.HasPrefix(created.Secret, "whsec_") || created.Type != "push" {
		t.Fatalf("create through %s: %s", brokerC, a)
	}
	id := created.ID
	path := "/v1/subscriptions/" + id

	// sameEverywhere checks every holder has the subscription as check
	// wants it, and the others have none.
	sameEverywhere := func(t *testing.T, check func(subscriptionJSON) bool) {
		t.Helper()
		tc.wantOn(t, path, holders...)
		for _, name := range holders {
			if a := tc.at(t, name, "GET", path, ""); !check(decodeAs[subscriptionJSON](t, a)) {
				t.Fatalf("on %s: %s", name, a)
			}
		}
	}
	// listedOnce checks a list through every broker shows it n times.
	listedOnce := func(t *testing.T, n int) {
		t.Helper()
		for _, via := range all {
			a := tc.via(t, via, "GET", "/v1/subscriptions", nil, "")
			a.want(t, http.StatusOK, via)
			count := 0
			for _, s := range decodeAs[struct {
				Subscriptions []subscriptionJSON `json:"subscriptions"`
			}](t, a).Subscriptions {
				if s.ID == id {
					count++
				}
			}
			if count != n {
				t.Fatalf("the list through %s shows %s %d times, want %d: %s", via, id, count, n, a)
			}
		}
	}

	for _, tt := range []struct {
		name, via, method, path, body string
		status                        int
		check                         func(*testing.T, clusterAnswer) // the answer, then every broker
	}{
		{"created on every holder with one id and secret", "", "", "", "", 0, func(t *testing.T, _ clusterAnswer) {
			sameEverywhere(t, func(s subscriptionJSON) bool {
				return s.ID == id && s.Group == "billing" && s.Topic == "orders" && s.MaxRetries == 2 && s.State == "active" &&
					s.Format == broker.FormatCloudEvents
			})
			if got := tc.secrets(t, id, holders); got[0] != created.Secret || got[1] != created.Secret {
				t.Fatalf("secrets %v, want %s on both", got, created.Secret)
			}
			listedOnce(t, 1)
		}},
		{"got through any broker", brokerC, "GET", path, "", 200, func(t *testing.T, a clusterAnswer) {
			if s := decodeAs[subscriptionJSON](t, a); s.ID != id || s.Secret != "" {
				t.Fatalf("got %s", a)
			}
		}},
		{"patched through another broker", brokerB, "PATCH", path, `{"max_retries":7,"filter":"paid"}`, 200, func(t *testing.T, a clusterAnswer) {
			sameEverywhere(t, func(s subscriptionJSON) bool { return s.MaxRetries == 7 && s.Filter == "paid" })
		}},
		{"format patched through a non-holder", brokerC, "PATCH", path, `{"format":"raw"}`, 200, func(t *testing.T, a clusterAnswer) {
			sameEverywhere(t, func(s subscriptionJSON) bool { return s.Format == broker.FormatRaw && s.MaxRetries == 7 })
		}},
		{"batch set through a non-holder", brokerC, "PATCH", path, `{"batch":{"max_messages":16,"max_wait":"40ms"}}`, 200, func(t *testing.T, a clusterAnswer) {
			sameEverywhere(t, func(s subscriptionJSON) bool { return s.Batch == batchJSON{16, "40ms"} && s.MaxRetries == 7 })
		}},
		{"batch changed through a holder", brokerA, "PATCH", path, `{"batch":{"max_wait":"5ms"}}`, 200, func(t *testing.T, a clusterAnswer) {
			sameEverywhere(t, func(s subscriptionJSON) bool { return s.Batch == batchJSON{16, "5ms"} })
		}},
		{"batch off through another broker", brokerB, "PATCH", path, `{"batch":null}`, 200, func(t *testing.T, a clusterAnswer) {
			sameEverywhere(t, func(s subscriptionJSON) bool { return s.Batch == batchJSON{} && s.MaxRetries == 7 })
		}},
		{"paused through a non-holder", brokerC, "POST", path + "/pause", "", 200, func(t *testing.T, a clusterAnswer) {
			sameEverywhere(t, func(s subscriptionJSON) bool { return s.State == "paused" && s.MaxRetries == 7 })
		}},
		{"resumed through a holder", brokerA, "POST", path + "/resume", "", 200, func(t *testing.T, a clusterAnswer) {
			sameEverywhere(t, func(s subscriptionJSON) bool { return s.State == "active" })
		}},
		{"secret rotated through a non-holder", brokerC, "POST", path + "/rotate-secret", "", 200, func(t *testing.T, a clusterAnswer) {
			rotated := decodeAs[subscriptionJSON](t, a).Secret
			if !strings.HasPrefix(rotated, "whsec_") || rotated == created.Secret {
				t.Fatalf("rotate: %s", a)
			}
			if got := tc.secrets(t, id, holders); got[0] != rotated || got[1] != rotated {
				t.Fatalf("secrets %v, want %s on both", got, rotated)
			}
		}},
		{"secret given", brokerB, "POST", path + "/rotate-secret", `{"secret":"whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMy"}`, 200, func(t *testing.T, a clusterAnswer) {
			if got := tc.secrets(t, id, holders); got[0] != "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMy" || got[1] != got[0] {
				t.Fatalf("secrets %v, want the one given on both", got)
			}
		}},
		{"deleted through another broker", brokerB, "DELETE", path, "", 204, func(t *testing.T, a clusterAnswer) {
			tc.wantOn(t, path)
			listedOnce(t, 0)
		}},
		{"gone everywhere", brokerC, "GET", path, "", 404, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var a clusterAnswer
			if tt.via != "" {
				a = tc.via(t, tt.via, tt.method, tt.path, nil, tt.body)
				// A holder answers for itself; another broker passes on
				// a holder's answer, or answers a 404 itself.
				by := a.header.Get(hdrBroker)
				wantBy := by == tt.via
				if !slices.Contains(holders, tt.via) && a.status != http.StatusNotFound {
					wantBy = slices.Contains(holders, by)
				}
				if a.status != tt.status || !wantBy {
					t.Fatalf("%s %s through %s: %s, want %d", tt.method, tt.path, tt.via, a, tt.status)
				}
			}
			if tt.check != nil {
				tt.check(t, a)
			}
		})
	}
}

func TestClusterPull(t *testing.T) {
	tc := newTestCluster(t, brokerA, brokerB, brokerC)
	holders := []string{brokerA, brokerB}
	tc.placeTopic(t, brokerC, "jobs", `{"brokers":["broker-a","broker-b"]}`, holders...)
	// A long visibility: a message not acked or handed back does not come
	// back within the test.
	tc.via(t, brokerC, "POST", "/v1/subscriptions", nil, `{"group":"workers","topic":"jobs","start_from":"earliest","visibility":"5m"}`).
		want(t, http.StatusCreated, brokerA)

	storedOn := map[string]string{} // message id -> broker
	publishAt := func(t *testing.T, name, body string) {
		a := tc.at(t, name, "POST", "/v1/topics/jobs/messages", body)
		a.want(t, http.StatusCreated, name)
		storedOn[decodeAs[publishResult](t, a).MsgID] = name
	}
	// pull pulls through via and checks each receipt names the broker
	// holding its message.
	pull := func(t *testing.T, via, query string) []pulledJSON {
		t.Helper()
		a := tc.via(t, via, "POST", "/v1/groups/workers/topics/jobs/pull?"+query, nil, "")
		a.want(t, http.StatusOK, via)
		got := decodeAs[pullAnswer](t, a).Messages
		for _, m := range got {
			if name := storedOn[m.MsgID]; !strings.HasPrefix(m.Receipt, name+receiptSep) {
				t.Fatalf("pulled %s, stored on %q, with receipt %q", m.MsgID, name, m.Receipt)
			}
		}
		return got
	}
	ack := func(t *testing.T, via string, msgs []pulledJSON) {
		t.Helper()
		var receipts []string
		for _, m := range msgs {
			receipts = append(receipts, m.Receipt)
		}
		body, _ := json.Marshal(map[string][]string{"receipts": receipts})
		a := tc.via(t, via, "POST", "/v1/groups/workers/ack", nil, string(body))
		a.want(t, http.StatusOK, via)
		got := decodeAs[receiptResultsJSON](t, a)
		if len(got.Results) != len(receipts) {
			t.Fatalf("ack through %s: %s, want %d results", via, a, len(receipts))
		}
		for i, r := range got.Results {
			if r.Receipt != receipts[i] || r.Status != "acked" {
				t.Fatalf("ack through %s: results[%d] = %+v, want %s acked", via, i, r, receipts[i])
			}
		}
	}
	ids := func(msgs []pulledJSON) []string {
		var out []string
		for _, m := range msgs {
			out = append(out, m.MsgID)
		}
		return slices.Sorted(slices.Values(out))
	}

	var pulled []pulledJSON
	t.Run("every holder's messages, at most max", func(t *testing.T) {
		for _, name := range holders {
			for i := range 3 {
				publishAt(t, name, fmt.Sprintf("%s-%d", name, i))
			}
		}
		// A short visibility: a message not acked comes back within a
		// second, as attempt 2.
		for _, c := range []struct {
			via, query string
			want       int
		}{{brokerC, "max=4&visibility=1s", 4}, {brokerA, "max=4&visibility=1s", 2}, {brokerB, "max=4", 0}, {brokerC, "max=4&wait=0s", 0}} {
			got := pull(t, c.via, c.query)
			if len(got) != c.want {
				t.Fatalf("pull through %s (%s): %d messages, want %d", c.via, c.query, len(got), c.want)
			}
			pulled = append(pulled, got...)
		}
		if got, want := ids(pulled), slices.Sorted(maps.Keys(storedOn)); !slices.Equal(got, want) {
			t.Fatalf("pulled %v, want each of %v once", got, want)
		}
	})

	t.Run("ack through another broker", func(t *testing.T) {
		ack(t, brokerB, pulled[:4]) // pulled through broker-c
		ack(t, brokerC, pulled[4:5])
		// The one not acked comes back once its visibility runs out; the
		// others do not.
		again := pull(t, brokerA, "max=10&wait=10s")
		if len(again) != 1 || again[0].MsgID != pulled[5].MsgID || again[0].Attempt != 2 {
			t.Fatalf("pulled after the acks: %+v; want only %s, as attempt 2", again, pulled[5].MsgID)
		}
		ack(t, brokerC, again)
		if got := pull(t, brokerB, "max=10&wait=2s"); len(got) != 0 {
			t.Errorf("pulled after every ack: %+v", got)
		}
	})

	// longPoll pulls through via, waiting, while publish runs once the
	// poll has had a moment to start waiting.
	longPoll := func(t *testing.T, via, query string, publish func()) ([]pulledJSON, time.Duration) {
		t.Helper()
		type result struct {
			a    clusterAnswer
			took time.Duration
		}
		done := make(chan result, 1)
		go func() {
			start := time.Now()
			resp, data := do(t, "POST", tc.nodes[via].srv.URL+"/v1/groups/workers/topics/jobs/pull?"+query, nil, nil)
			done <- result{clusterAnswer{resp.StatusCode, resp.Header, data}, time.Since(start)}
		}()
		time.Sleep(300 * time.Millisecond) // not needed to pass: a publish before the wait is pulled at once
		publish()
		r := <-done
		r.a.want(t, http.StatusOK, via)
		return decodeAs[pullAnswer](t, r.a).Messages, r.took
	}

	t.Run("long poll wakes on a publish to the other broker", func(t *testing.T) {
		var id string
		got, took := longPoll(t, brokerA, "max=5&wait=8s", func() {
			a := tc.at(t, brokerB, "POST", "/v1/topics/jobs/messages", "late")
			id = decodeAs[publishResult](t, a).MsgID
			storedOn[id] = brokerB
		})
		if len(got) != 1 || got[0].MsgID != id || got[0].Body != "late" || !strings.HasPrefix(got[0].Receipt, brokerB+receiptSep) || took >= 8*time.Second {
			t.Fatalf("long poll through %s answered after %s with %+v; want %s from %s before the wait ran out", brokerA, took, got, id, brokerB)
		}
		ack(t, brokerC, got)
	})

	t.Run("long poll gives at most max when both brokers have some", func(t *testing.T) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		got, _ := longPoll(t, brokerC, "max=1&wait=8s", func() {
			for _, name := range holders {
				wg.Go(func() {
					a := tc.at(t, name, "POST", "/v1/topics/jobs/messages", "race-"+name)
					mu.Lock()
					storedOn[decodeAs[publishResult](t, a).MsgID] = name
					mu.Unlock()
				})
			}
			wg.Wait()
		})
		if len(got) != 1 {
			t.Fatalf("long poll with max=1 gave %d messages: %+v", len(got), got)
		}
		// The other one is still to be had: handed back if a poll took it.
		seen := []pulledJSON{got[0]}
		ack(t, brokerA, got)
		waitFor(t, "the other message", func() (bool, string) {
			more := pull(t, brokerB, "max=10&wait=1s")
			if len(more) > 0 {
				ack(t, brokerC, more)
			}
			seen = append(seen, more...)
			var bodies []string
			for _, m := range seen {
				bodies = append(bodies, m.Body)
			}
			slices.Sort(bodies)
			return slices.Equal(bodies, []string{"race-broker-a", "race-broker-b"}), fmt.Sprint(bodies)
		})
	})
}

func TestClusterQueries(t *testing.T) {
	tc := newTestCluster(t, brokerA, brokerB, brokerC)
	all := []string{brokerA, brokerB, brokerC}
	holders := []string{brokerA, brokerB}
	tc.placeTopic(t, brokerA, "orders", `{"brokers":["broker-a","broker-b"]}`, holders...)

	// Three messages with one key on each holder, published to it directly.
	keyed := map[string]string{} // message id -> broker
	for i := range 3 {
		for _, name := range holders {
			a := tc.via(t, name, "POST", "/v1/topics/orders/messages",
				map[string]string{hdrForwardedBy: "test", hdrKeys: "order-7", hdrTag: "paid"}, fmt.Sprintf("%s-%d", name, i))
			a.want(t, http.StatusCreated, name)
			keyed[decodeAs[publishResult](t, a).MsgID] = name
		}
	}
	a := tc.via(t, brokerB, "POST", "/v1/topics/orders/messages",
		map[string]string{hdrForwardedBy: "test", hdrTag: "solo", "Content-Type": "text/plain"}, "only on b")
	a.want(t, http.StatusCreated, brokerB)
	solo := decodeAs[publishResult](t, a).MsgID
	tc.wantOn(t, "/v1/messages/"+solo, brokerB)

	t.Run("by id through a broker without it", func(t *testing.T) {
		for _, via := range []string{brokerA, brokerC} {
			a := tc.via(t, via, "GET", "/v1/messages/"+solo, nil, "")
			a.want(t, http.StatusOK, brokerB)
			if m := decodeAs[messageJSON](t, a); m.MsgID != solo || m.Body != "only on b" || m.Tag != "solo" || m.Topic != "orders" {
				t.Errorf("GET through %s: %s", via, a)
			}
			a = tc.via(t, via, "GET", "/v1/messages/"+solo+"/body", nil, "")
			a.want(t, http.StatusOK, brokerB)
			if string(a.body) != "only on b" || a.header.Get("Content-Type") != "text/plain" || a.header.Get("Postbus-Message-Id") != solo {
				t.Errorf("GET body through %s: %s (Content-Type %q)", via, a, a.header.Get("Content-Type"))
			}
			a = tc.via(t, via, "GET", "/v1/messages/"+solo+"/trace", nil, "")
			a.want(t, http.StatusOK, brokerB)
			if tr := decodeAs[struct {
				MsgID string `json:"msg_id"`
				Topic string `json:"topic"`
			}](t, a); tr.MsgID != solo || tr.Topic != "orders" {
				t.Errorf("GET trace through %s: %s", via, a)
			}
		}
	})

	t.Run("unknown id", func(t *testing.T) {
		for _, path := range []string{"", "/body", "/trace"} {
			tc.via(t, brokerC, "GET", "/v1/messages/AAAAAAAAAAAAAAAAAAAAAA"+path, nil, "").
				wantProblem(t, http.StatusNotFound, broker.CodeMessageNotFound, brokerC)
		}
	})

	t.Run("by key merged, paged with the composite cursor", func(t *testing.T) {
		for _, via := range all {
			seen := map[string]int{}
			query := "/v1/topics/orders/messages?key=order-7&limit=2"
			pages := 0
			for next := "start"; next != ""; pages++ {
				if pages == 5 {
					t.Fatalf("through %s: still a cursor after %d pages", via, pages)
				}
				a := tc.via(t, via, "GET", query, nil, "")
				a.want(t, http.StatusOK, via)
				page := decodeAs[struct {
					Messages   []messageJSON `json:"messages"`
					NextCursor string        `json:"next_cursor"`
				}](t, a)
				if len(page.Messages) > 2*len(holders) {
					t.Fatalf("through %s: a page of %d messages with limit 2 over 2 brokers: %s", via, len(page.Messages), a)
				}
				var prev time.Time
				for i, m := range page.Messages {
					seen[m.MsgID]++
					at, err := time.Parse(time.RFC3339Nano, m.StoredAt)
					if err != nil || i > 0 && at.After(prev) {
						t.Errorf("through %s: page %d not newest first: %s", via, pages, a)
					}
					prev = at
				}
				next = page.NextCursor
				query = "/v1/topics/orders/messages?key=order-7&limit=2&cursor=" + url.QueryEscape(next)
			}
			if pages < 2 || len(seen) != len(keyed) {
				t.Errorf("through %s: %d pages gave %v, want each of the %d keyed messages", via, pages, seen, len(keyed))
			}
			for id, n := range seen {
				if _, ok := keyed[id]; !ok || n != 1 {
					t.Errorf("through %s: %s seen %d times (keyed: %v)", via, id, n, ok)
				}
			}
		}
	})
}

// newLoneBroker starts a broker named solo whose name server refuses
// every connection.
func newLoneBroker(tb testing.TB) *testCluster {
	tb.Helper()
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	return &testCluster{names: []string{"solo"}, nodes: map[string]*clusterNode{"solo": startClusterNode(tb, "solo", gone.URL)}}
}

// TestClusterNameServerDown: a broker whose name server never answers still
// serves its own topics, as it would standalone.
func TestClusterNameServerDown(t *testing.T) {
	tc := newLoneBroker(t)

	tc.via(t, "solo", "PUT", "/v1/topics/local", nil, `{"queues":2}`).want(t, http.StatusCreated, "solo")
	tc.via(t, "solo", "POST", "/v1/subscriptions", nil, `{"group":"g","topic":"local","start_from":"earliest"}`).want(t, http.StatusCreated, "solo")
	for _, hdr := range []map[string]string{nil, {hdrShardingKey: "k1", hdrKeys: "order-1"}} {
		res, a := tc.publishVia(t, "solo", "local", hdr, "hello")
		a.want(t, http.StatusCreated, "solo")
		if res.Broker != "solo" {
			t.Fatalf("publish: %s", a)
		}
		tc.via(t, "solo", "GET", "/v1/messages/"+res.MsgID, nil, "").want(t, http.StatusOK, "solo")
	}
	a := tc.via(t, "solo", "POST", "/v1/topics/local/messages/batch", nil, `[{"body":"x","sharding_key":"a"},{"body":"y","sharding_key":"b"}]`)
	a.want(t, http.StatusCreated, "solo")

	for _, c := range []struct {
		method, path string
		status       int
		check        func(clusterAnswer) bool
	}{
		{"GET", "/v1/topics/local", 200, func(a clusterAnswer) bool { return decodeAs[topicJSON](t, a).QueueCount == 2 }},
		{"GET", "/v1/topics/local/messages?key=order-1", 200, func(a clusterAnswer) bool { return strings.Count(string(a.body), `"msg_id"`) == 1 }},
		{"GET", "/v1/topics", 200, func(a clusterAnswer) bool { return strings.Contains(string(a.body), `"name":"local"`) }},
		{"GET", "/v1/subscriptions", 200, func(a clusterAnswer) bool { return strings.Count(string(a.body), `"topic":"local"`) == 1 }},
		{"POST", "/v1/groups/g/topics/local/pull?max=10", 200, func(a clusterAnswer) bool { return len(decodeAs[pullAnswer](t, a).Messages) == 4 }},
	} {
		a := tc.via(t, "solo", c.method, c.path, nil, "")
		if a.status != c.status || a.header.Get(hdrBroker) != "solo" || !c.check(a) {
			t.Errorf("%s %s: %s", c.method, c.path, a)
		}
	}
}

// TestClusterDeadLettersAndGroups: each broker keeps the dead letters it
// made; through any broker the group's dead letters are listed merged,
// paged with a composite cursor, and the group's details sum every
// broker's.
func TestClusterDeadLettersAndGroups(t *testing.T) {
	tc := newTestCluster(t, brokerA, brokerB, brokerC)
	holders := []string{brokerA, brokerB}
	tc.placeTopic(t, brokerA, "jobs", `{"brokers":["broker-a","broker-b"]}`, holders...)
	// No retries: a nacked message is dead at once.
	tc.via(t, brokerC, "POST", "/v1/subscriptions", nil, `{"group":"doomed","topic":"jobs","start_from":"earliest","max_retries":0}`).
		want(t, http.StatusCreated, brokerA)
	storedOn := map[string]string{}
	for _, name := range holders {
		for i := range 2 {
			a := tc.at(t, name, "POST", "/v1/topics/jobs/messages", fmt.Sprintf("%s-%d", name, i))
			a.want(t, http.StatusCreated, name)
			storedOn[decodeAs[publishResult](t, a).MsgID] = name
		}
	}
	a := tc.via(t, brokerC, "POST", "/v1/groups/doomed/topics/jobs/pull?max=10", nil, "")
	a.want(t, http.StatusOK, brokerC)
	pulled := decodeAs[pullAnswer](t, a).Messages
	if len(pulled) != 4 {
		t.Fatalf("pulled %d messages, want 4: %s", len(pulled), a)
	}
	var receipts []string
	for _, m := range pulled {
		receipts = append(receipts, m.Receipt)
	}
	body, _ := json.Marshal(map[string]any{"receipts": receipts})
	a = tc.via(t, brokerC, "POST", "/v1/groups/doomed/nack", nil, string(body))
	a.want(t, http.StatusOK, brokerC)

	type deadLetter struct {
		MsgID  string    `json:"msg_id"`
		Broker string    `json:"broker"`
		DeadAt time.Time `json:"dead_at"`
	}
	type page struct {
		Messages   []deadLetter `json:"messages"`
		NextCursor string       `json:"next_cursor"`
	}
	// Each broker lists only its own, asked for itself. A nacked message
	// past its retries is dead-lettered when its retry comes due and a pull
	// meets it.
	waitFor(t, "two dead letters on each holder", func() (bool, string) {
		tc.via(t, brokerC, "POST", "/v1/groups/doomed/topics/jobs/pull?max=10", nil, "").want(t, http.StatusOK, brokerC)
		for _, name := range holders {
			p := decodeAs[page](t, tc.at(t, name, "GET", "/v1/groups/doomed/dlq", ""))
			if len(p.Messages) != 2 {
				return false, fmt.Sprintf("%s lists %d", name, len(p.Messages))
			}
		}
		return true, ""
	})
	for _, via := range []string{brokerA, brokerC} {
		seen := map[string]string{}
		query := "/v1/groups/doomed/dlq?limit=1"
		for pages := 0; ; pages++ {
			if pages == 4 {
				t.Fatalf("through %s: still a cursor after %d pages", via, pages)
			}
			a := tc.via(t, via, "GET", query, nil, "")
			a.want(t, http.StatusOK, via)
			p := decodeAs[page](t, a)
			// One from each broker per page (limit is per broker), oldest first.
			if len(p.Messages) != 2 || p.Messages[0].DeadAt.After(p.Messages[1].DeadAt) {
				t.Fatalf("through %s, page %d: %s", via, pages, a)
			}
			for _, d := range p.Messages {
				if storedOn[d.MsgID] != d.Broker {
					t.Errorf("dead letter %s names broker %q, stored on %q", d.MsgID, d.Broker, storedOn[d.MsgID])
				}
				seen[d.MsgID] = d.Broker
			}
			if p.NextCursor == "" {
				break
			}
			query = "/v1/groups/doomed/dlq?limit=1&cursor=" + url.QueryEscape(p.NextCursor)
		}
		if len(seen) != 4 {
			t.Errorf("through %s: %d distinct dead letters over the pages, want 4", via, len(seen))
		}
	}

	// The group's details: dead letters summed, queues of both holders.
	a = tc.via(t, brokerC, "GET", "/v1/groups/doomed", nil, "")
	a.want(t, http.StatusOK, brokerC)
	g := decodeAs[struct {
		DeadLetters   int `json:"dead_letters"`
		Subscriptions []struct {
			ID string `json:"id"`
		} `json:"subscriptions"`
		Queues []struct {
			Topic  string `json:"topic"`
			Broker string `json:"broker"`
		} `json:"queues"`
	}](t, a)
	brokersOf := map[string]bool{}
	for _, q := range g.Queues {
		if q.Topic == "jobs" {
			brokersOf[q.Broker] = true
		}
	}
	if g.DeadLetters != 4 || len(g.Subscriptions) != 1 || !brokersOf[brokerA] || !brokersOf[brokerB] {
		t.Errorf("group through %s: %s", brokerC, a)
	}
	// Purge through one broker empties every broker's.
	a = tc.via(t, brokerB, "DELETE", "/v1/groups/doomed/dlq", nil, "")
	a.want(t, http.StatusOK, brokerB)
	if n := decodeAs[map[string]int](t, a)["purged"]; n != 4 {
		t.Errorf("purge: %s, want 4 purged", a)
	}
}

// TestClusterTopicGainsBrokers: a topic placed on more brokers later takes
// its subscriptions along (same ids, same secrets, paused where paused),
// whichever broker the PUT goes through.
func TestClusterTopicGainsBrokers(t *testing.T) {
	tc := newTestCluster(t, brokerA, brokerB, brokerC)
	tc.placeTopic(t, brokerA, "orders", `{"brokers":["broker-a"]}`, brokerA)
	a := tc.via(t, brokerA, "POST", "/v1/subscriptions", nil,
		`{"group":"billing","topic":"orders","url":"https://hooks.example.com/orders","retry_delays":["1s","5s"],"batch":{"max_messages":50,"max_wait":"20ms"}}`)
	a.want(t, http.StatusCreated, brokerA)
	push := decodeAs[subscriptionJSON](t, a)
	a = tc.via(t, brokerA, "POST", "/v1/subscriptions", nil, `{"group":"workers","topic":"orders"}`)
	a.want(t, http.StatusCreated, brokerA)
	pull := decodeAs[subscriptionJSON](t, a)
	tc.via(t, brokerA, "POST", "/v1/subscriptions/"+pull.ID+"/pause", nil, "").want(t, http.StatusOK, brokerA)

	// Through broker-c, which does not hold orders: a holder places it.
	// 201: created on the new brokers.
	a = tc.via(t, brokerC, "PUT", "/v1/topics/orders", nil, `{"brokers":["broker-a","broker-b","broker-c"]}`)
	a.want(t, http.StatusCreated, brokerA)
	tc.wantRoute(t, "orders", brokerA, brokerB, brokerC)
	for _, name := range []string{brokerB, brokerC} {
		got, err := tc.nodes[name].b.Subscription(context.Background(), push.ID)
		if err != nil {
			t.Fatalf("push subscription on %s: %v", name, err)
		}
		if got.Secret != push.Secret || got.URL != push.URL || len(got.RetryDelays) != 2 || got.Group != "billing" ||
			got.Batch != (broker.PushBatch{MaxMessages: 50, MaxWait: 20 * time.Millisecond}) || got.MaxInFlight != 400 {
			t.Errorf("push subscription on %s: %+v, want the one on %s", name, got, brokerA)
		}
		got, err = tc.nodes[name].b.Subscription(context.Background(), pull.ID)
		if err != nil {
			t.Fatalf("pull subscription on %s: %v", name, err)
		}
		if got.State != broker.StatePaused || got.URL != "" {
			t.Errorf("pull subscription on %s: %+v, want paused", name, got)
		}
	}
	// Placing it again changes nothing and fails nowhere.
	tc.via(t, brokerB, "PUT", "/v1/topics/orders", nil, `{"brokers":"all"}`).want(t, http.StatusOK, brokerB)
}

// TestClusterForwardKeepsRequestID: a request forwarded to another broker
// keeps its request id, so both brokers' logs name it.
func TestClusterForwardKeepsRequestID(t *testing.T) {
	tc := newTestCluster(t, brokerA, brokerB)
	tc.placeTopic(t, brokerB, "orders", `{"brokers":["broker-b"]}`, brokerB)
	a := tc.via(t, brokerA, "POST", "/v1/topics/orders/messages", map[string]string{"X-Request-Id": "trace-me-42"}, "x")
	a.want(t, http.StatusCreated, brokerB)
	if got := a.header.Get("X-Request-Id"); got != "trace-me-42" {
		t.Errorf("X-Request-Id %q after a forward, want the caller's", got)
	}
}
