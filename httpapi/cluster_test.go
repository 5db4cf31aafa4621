package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/http"
	"net/http/httptest"
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
	tc := &testCluster{reg: namesrv.NewRegistry(namesrv.DefaultConfig()), names: slices.Sorted(slices.Values(names)),
		nodes: make(map[string]*clusterNode)}
	ns := httptest.NewServer(mustNew(tb, Config{NameServer: tc.reg, NameServerOnly: true}))
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
	cfg.SegmentSize = 4 << 20
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

// waitRoute waits until the name server routes topic to exactly holders.
// Until then a broker might see a part of the route (and cache it), so
// tests wait for it after placing a topic and before using it.
func (tc *testCluster) waitRoute(tb testing.TB, topic string, holders ...string) {
	tb.Helper()
	want := slices.Sorted(slices.Values(holders))
	waitFor(tb, "the route of "+topic+" to list "+strings.Join(want, ", "), func() (bool, string) {
		rt, _ := tc.reg.Route(topic)
		var got []string
		for _, b := range rt.Brokers {
			got = append(got, b.Name)
		}
		return slices.Equal(got, want), fmt.Sprint(got)
	})
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

// placeTopic creates topic through broker via with body and waits for its
// route to list holders.
func (tc *testCluster) placeTopic(tb testing.TB, via, topic, body string, holders ...string) {
	tb.Helper()
	tc.via(tb, via, "PUT", "/v1/topics/"+topic, nil, body).want(tb, http.StatusCreated, via)
	tc.waitRoute(tb, topic, holders...)
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
				tc.waitRoute(t, tt.topic, tt.on...)
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
				res, a := tc.publishVia(t, c.via, c.topic, hdr, body)
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
		a.want(t, http.StatusCreated, brokerA)
		for i, res := range decodeAs[[]publishResult](t, a) {
			if res.Broker != brokerA && res.Broker != brokerB {
				t.Fatalf("batch message %d stored on %q: %s", i, res.Broker, a)
			}
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

