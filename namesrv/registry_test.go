package namesrv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestHeartbeatValidation(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		name    string
		edit    func(*BrokerInfo)
		wantErr string // "" when valid; else a fragment of the message
	}{
		{"valid", func(*BrokerInfo) {}, ""},
		{"name 64 chars", func(b *BrokerInfo) { b.Name = long(64) }, ""},
		{"name with . _ -", func(b *BrokerInfo) { b.Name = "b-1.zone_a" }, ""},
		{"empty cluster is default", func(b *BrokerInfo) { b.Cluster = "" }, ""},
		{"https addr with path", func(b *BrokerInfo) { b.Addr = "https://b1.example/postbus" }, ""},
		{"ipv6 addr", func(b *BrokerInfo) { b.Addr = "http://[::1]:8080" }, ""},
		{"no topics", func(b *BrokerInfo) { b.Topics = nil }, ""},
		{"system topics", func(b *BrokerInfo) {
			b.Topics = []Topic{{"%RETRY%g%orders", 1}, {"%DLQ%g", 1}}
		}, ""},
		{"topic 127 chars", func(b *BrokerInfo) { b.Topics = []Topic{{long(127), 1}} }, ""},
		{"1024 queues", func(b *BrokerInfo) { b.Topics = []Topic{{"t", 1024}} }, ""},
		{"100k topics", func(b *BrokerInfo) { b.Topics = topics(MaxTopicsPerBroker, 1) }, ""},

		{"empty name", func(b *BrokerInfo) { b.Name = "" }, "broker name"},
		{"name 65 chars", func(b *BrokerInfo) { b.Name = long(65) }, "broker name"},
		{"name starts with dash", func(b *BrokerInfo) { b.Name = "-b" }, "broker name"},
		{"name with slash", func(b *BrokerInfo) { b.Name = "a/b" }, "broker name"},
		{"name with space", func(b *BrokerInfo) { b.Name = "a b" }, "broker name"},
		{"name non-ascii", func(b *BrokerInfo) { b.Name = "brøker" }, "broker name"},
		{"bad cluster", func(b *BrokerInfo) { b.Cluster = "c c" }, "cluster"},
		{"empty addr", func(b *BrokerInfo) { b.Addr = "" }, "addr"},
		{"addr without scheme", func(b *BrokerInfo) { b.Addr = "b1:8080" }, "addr"},
		{"addr ftp", func(b *BrokerInfo) { b.Addr = "ftp://b1:21" }, "addr"},
		{"addr relative", func(b *BrokerInfo) { b.Addr = "/v1" }, "addr"},
		{"addr no host", func(b *BrokerInfo) { b.Addr = "http://" }, "addr"},
		{"addr with user", func(b *BrokerInfo) { b.Addr = "http://u:p@b1:8080" }, "user info"},
		{"addr with query", func(b *BrokerInfo) { b.Addr = "http://b1:8080/?x=1" }, "query"},
		{"addr with fragment", func(b *BrokerInfo) { b.Addr = "http://b1:8080/#x" }, "fragment"},
		{"addr too long", func(b *BrokerInfo) { b.Addr = "http://b1/" + long(MaxAddrLen) }, "addr"},
		{"version control char", func(b *BrokerInfo) { b.Version = "v1\n" }, "version"},
		{"version too long", func(b *BrokerInfo) { b.Version = long(MaxVersionLen + 1) }, "version"},
		{"too many topics", func(b *BrokerInfo) { b.Topics = topics(MaxTopicsPerBroker+1, 1) }, "100000"},
		{"empty topic", func(b *BrokerInfo) { b.Topics = []Topic{{"", 1}} }, "topics[0]"},
		{"topic 128 chars", func(b *BrokerInfo) { b.Topics = []Topic{{long(128), 1}} }, "topics[0]"},
		{"topic with slash", func(b *BrokerInfo) { b.Topics = []Topic{{"ok", 1}, {"a/b", 1}} }, "topics[1]"},
		{"system topic lower kind", func(b *BrokerInfo) { b.Topics = []Topic{{"%retry%g", 1}} }, "topics[0]"},
		{"system topic no rest", func(b *BrokerInfo) { b.Topics = []Topic{{"%DLQ%", 1}} }, "topics[0]"},
		{"system topic no kind", func(b *BrokerInfo) { b.Topics = []Topic{{"%%g", 1}} }, "topics[0]"},
		{"lone percent", func(b *BrokerInfo) { b.Topics = []Topic{{"%", 1}} }, "topics[0]"},
		{"system topic too long", func(b *BrokerInfo) { b.Topics = []Topic{{"%DLQ%" + long(251), 1}} }, "topics[0]"},
		{"zero queues", func(b *BrokerInfo) { b.Topics = []Topic{{"t", 0}} }, "queues"},
		{"negative queues", func(b *BrokerInfo) { b.Topics = []Topic{{"t", -1}} }, "queues"},
		{"1025 queues", func(b *BrokerInfo) { b.Topics = []Topic{{"t", 1025}} }, "queues"},
		{"duplicate topic", func(b *BrokerInfo) { b.Topics = []Topic{{"t", 1}, {"u", 1}, {"t", 2}} }, "listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRegistry(Config{})
			// A registration already in place must survive a refused one.
			prev := broker("b1", Topic{"kept", 2})
			mustHeartbeat(t, r, prev)

			info := broker("b1", Topic{"orders", 4})
			info.Cluster = "c1"
			tt.edit(&info)
			err := r.Heartbeat(info)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Heartbeat: %v, want nil", err)
				}
				checkInvariants(t, r)
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Heartbeat: %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not mention %q", err, tt.wantErr)
			}
			if len(err.Error()) > 400 {
				t.Errorf("error is %d bytes long; inputs must be clipped", len(err.Error()))
			}
			if _, ok := r.Route("kept"); !ok {
				t.Error("a refused heartbeat removed the previous registration's route")
			}
			checkInvariants(t, r)
		})
	}
}

func TestHeartbeatDefaultsAndCopies(t *testing.T) {
	clock := newFakeClock()
	r := NewRegistry(Config{Now: clock.Now})
	info := broker("b1", Topic{"orders", 4})
	info.LastHeartbeat = time.Unix(1, 0) // ignored
	mustHeartbeat(t, r, info)
	info.Topics[0] = Topic{"mutated", 9} // the registry kept its own copy

	got := r.Brokers()
	want := []BrokerInfo{{
		Name: "b1", Cluster: DefaultCluster, Addr: "http://b1.example:8080", Version: "test",
		Topics: []Topic{{"orders", 4}}, LastHeartbeat: clock.Now(),
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Brokers() = %+v\nwant %+v", got, want)
	}
	got[0].Topics[0].Queues = 99 // and hands out copies
	if rt, _ := r.Route("orders"); rt.Brokers[0].Queues != 4 {
		t.Errorf("queues = %d after mutating Brokers()'s answer, want 4", rt.Brokers[0].Queues)
	}
}

func TestRouteAcrossBrokers(t *testing.T) {
	r := NewRegistry(Config{})
	// Registered out of order: routes come sorted by name.
	b2 := broker("b2", Topic{"orders", 8}, Topic{"only-b2", 1})
	b2.Cluster = "east"
	mustHeartbeat(t, r, b2)
	mustHeartbeat(t, r, broker("b1", Topic{"orders", 4}, Topic{"only-b1", 2}))
	checkInvariants(t, r)

	got, ok := r.Route("orders")
	want := Route{Topic: "orders", Brokers: []RouteBroker{
		{Name: "b1", Cluster: DefaultCluster, Addr: "http://b1.example:8080", Queues: 4},
		{Name: "b2", Cluster: "east", Addr: "http://b2.example:8080", Queues: 8},
	}}
	if !ok || !reflect.DeepEqual(got, want) {
		t.Fatalf("Route(orders) = %+v, %v\nwant %+v", got, ok, want)
	}
	for topic, holder := range map[string]string{"only-b1": "b1", "only-b2": "b2"} {
		rt, ok := r.Route(topic)
		if !ok || len(rt.Brokers) != 1 || rt.Brokers[0].Name != holder {
			t.Errorf("Route(%s) = %+v, %v; want only %s", topic, rt, ok, holder)
		}
	}
	if rt, ok := r.Route("nowhere"); ok {
		t.Errorf("Route(nowhere) = %+v, true", rt)
	}

	// A queue count change and an address change show in the route.
	moved := broker("b1", Topic{"orders", 16}, Topic{"only-b1", 2})
	moved.Addr = "http://10.0.0.9:8080"
	mustHeartbeat(t, r, moved)
	got, _ = r.Route("orders")
	if got.Brokers[0].Queues != 16 || got.Brokers[0].Addr != "http://10.0.0.9:8080" {
		t.Errorf("after change, b1 in route = %+v", got.Brokers[0])
	}
	checkInvariants(t, r)
}

func TestHeartbeatWithoutTopicRemovesRoute(t *testing.T) {
	tests := []struct {
		name   string
		second []Topic
	}{
		{"topic dropped", []Topic{{"b", 1}}},
		{"all dropped", nil},
		{"reordered and dropped", []Topic{{"c", 3}, {"b", 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRegistry(Config{})
			mustHeartbeat(t, r, broker("b1", Topic{"a", 1}, Topic{"b", 1}))
			mustHeartbeat(t, r, broker("b2", Topic{"a", 2}))
			mustHeartbeat(t, r, broker("b1", tt.second...))
			checkInvariants(t, r)

			rt, ok := r.Route("a")
			if !ok || len(rt.Brokers) != 1 || rt.Brokers[0].Name != "b2" {
				t.Errorf("Route(a) = %+v, %v; want b2 alone", rt, ok)
			}
			for _, top := range tt.second {
				if _, ok := r.Route(top.Name); !ok {
					t.Errorf("Route(%s) missing", top.Name)
				}
			}
			mustHeartbeat(t, r, broker("b2"))
			if rt, ok := r.Route("a"); ok {
				t.Errorf("Route(a) = %+v after every holder dropped it", rt)
			}
			if _, n := registered(r); n != len(tt.second) {
				t.Errorf("index holds %d topics, want %d", n, len(tt.second))
			}
		})
	}
}

func TestUnregister(t *testing.T) {
	r := NewRegistry(Config{})
	mustHeartbeat(t, r, broker("b1", Topic{"a", 1}, Topic{"b", 1}))
	mustHeartbeat(t, r, broker("b2", Topic{"a", 1}))

	if !r.Unregister("b1") {
		t.Fatal("Unregister(b1) = false")
	}
	if r.Unregister("b1") {
		t.Error("second Unregister(b1) = true")
	}
	if r.Unregister("never") {
		t.Error("Unregister(never) = true")
	}
	checkInvariants(t, r)
	if _, ok := r.Route("b"); ok {
		t.Error("Route(b) still answers after its only broker left")
	}
	if rt, ok := r.Route("a"); !ok || len(rt.Brokers) != 1 || rt.Brokers[0].Name != "b2" {
		t.Errorf("Route(a) = %+v, %v; want b2 alone", rt, ok)
	}
	if bs := r.Brokers(); len(bs) != 1 || bs[0].Name != "b2" {
		t.Errorf("Brokers() = %+v; want b2 alone", bs)
	}
	// It can come back.
	mustHeartbeat(t, r, broker("b1", Topic{"b", 1}))
	if _, ok := r.Route("b"); !ok {
		t.Error("Route(b) missing after re-registering")
	}
	checkInvariants(t, r)
}

func TestEviction(t *testing.T) {
	clock := newFakeClock()
	logs := newLogCapture()
	r := NewRegistry(Config{BrokerExpiry: 120 * time.Second, ScanInterval: 10 * time.Millisecond, Now: clock.Now, Logger: logs.logger()})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	mustHeartbeat(t, r, broker("silent", Topic{"shared", 1}, Topic{"mine", 1}))
	mustHeartbeat(t, r, broker("chatty", Topic{"shared", 2}))

	// Exactly at the expiry both are still alive, and scans keep them.
	clock.Advance(120 * time.Second)
	mustHeartbeat(t, r, broker("chatty", Topic{"shared", 2}))
	if bs := r.Brokers(); len(bs) != 2 {
		t.Fatalf("at expiry, Brokers() = %d brokers, want 2", len(bs))
	}

	clock.Advance(time.Second)
	// Past expiry, the silent broker is out of answers before any scan...
	if rt, ok := r.Route("mine"); ok {
		t.Errorf("Route(mine) = %+v for an expired broker", rt)
	}
	// ...and the scan removes it for good.
	waitFor(t, "the silent broker's eviction", func() bool { n, _ := registered(r); return n == 1 })
	checkInvariants(t, r)
	if _, n := registered(r); n != 1 {
		t.Errorf("index holds %d topics after eviction, want 1 (shared)", n)
	}
	if rt, ok := r.Route("shared"); !ok || len(rt.Brokers) != 1 || rt.Brokers[0].Name != "chatty" {
		t.Errorf("Route(shared) = %+v, %v; want chatty alone", rt, ok)
	}
	if n := logs.count(slog.LevelWarn, "expired", logKeyBroker, "silent"); n != 1 {
		t.Errorf("eviction of silent logged %d times, want 1", n)
	}

	// The survivor goes too once it falls silent.
	clock.Advance(121 * time.Second)
	waitFor(t, "the second eviction", func() bool { n, m := registered(r); return n == 0 && m == 0 })
}

func TestRunStopsWithContext(t *testing.T) {
	r := NewRegistry(Config{ScanInterval: time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

func TestPatch(t *testing.T) {
	base := broker("b1", Topic{"a", 1}, Topic{"b", 2}, Topic{"c", 3})
	tests := []struct {
		name    string
		info    func(BrokerInfo) BrokerInfo // the patch's broker, given b1's registration
		put     []Topic
		removed []string
		want    []Topic // b1's topics after; nil: unchanged
		wantErr error
	}{
		{name: "add", put: []Topic{{"d", 4}, {"0", 1}}, want: []Topic{{"0", 1}, {"a", 1}, {"b", 2}, {"c", 3}, {"d", 4}}},
		{name: "resize", put: []Topic{{"b", 8}}, want: []Topic{{"a", 1}, {"b", 8}, {"c", 3}}},
		{name: "remove", removed: []string{"a", "c"}, want: []Topic{{"b", 2}}},
		{name: "remove one not held", removed: []string{"zz"}, want: []Topic{{"a", 1}, {"b", 2}, {"c", 3}}},
		{name: "all at once", put: []Topic{{"e", 5}, {"a", 9}}, removed: []string{"b"},
			want: []Topic{{"a", 9}, {"c", 3}, {"e", 5}}},
		{name: "remove everything", removed: []string{"a", "b", "c"}, want: []Topic{}},
		{name: "nothing", want: []Topic{{"a", 1}, {"b", 2}, {"c", 3}}},
		{name: "unknown broker", info: func(b BrokerInfo) BrokerInfo { b.Name = "b9"; return b }, put: []Topic{{"d", 1}},
			wantErr: ErrNotRegistered},
		{name: "another address", info: func(b BrokerInfo) BrokerInfo { b.Addr = "http://elsewhere:8080"; return b },
			put: []Topic{{"d", 1}}, wantErr: ErrNotRegistered},
		{name: "another cluster", info: func(b BrokerInfo) BrokerInfo { b.Cluster = "west"; return b },
			put: []Topic{{"d", 1}}, wantErr: ErrNotRegistered},
		{name: "put and removed", put: []Topic{{"d", 1}}, removed: []string{"d"}, wantErr: ErrInvalid},
		{name: "put twice", put: []Topic{{"d", 1}, {"d", 2}}, wantErr: ErrInvalid},
		{name: "bad put name", put: []Topic{{"bad!", 1}}, wantErr: ErrInvalid},
		{name: "bad queues", put: []Topic{{"d", 0}}, wantErr: ErrInvalid},
		{name: "bad removed name", removed: []string{"bad!"}, wantErr: ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			r := NewRegistry(Config{Now: clock.Now})
			mustHeartbeat(t, r, base)
			mustHeartbeat(t, r, broker("b2", Topic{"a", 7}))
			clock.Advance(time.Minute)
			info := base
			if tt.info != nil {
				info = tt.info(base)
			}
			info.Topics = tt.put
			err := r.Patch(info, tt.removed)
			checkInvariants(t, r)
			var got BrokerInfo
			for _, b := range r.Brokers() {
				if b.Name == "b1" {
					got = b
				}
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Patch: %v, want %v", err, tt.wantErr)
				}
				if !reflect.DeepEqual(got.Topics, base.Topics) || !got.LastHeartbeat.Equal(clock.Now().Add(-time.Minute)) {
					t.Errorf("a refused patch changed b1: %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Patch: %v", err)
			}
			if !reflect.DeepEqual(got.Topics, tt.want) && !(len(got.Topics) == 0 && len(tt.want) == 0) {
				t.Errorf("topics %v, want %v", got.Topics, tt.want)
			}
			if !got.LastHeartbeat.Equal(clock.Now()) {
				t.Errorf("last heartbeat %s, want the patch's time %s", got.LastHeartbeat, clock.Now())
			}
			// b2's share of a shared topic is untouched.
			if rt, ok := r.Route("a"); !ok || !slices.ContainsFunc(rt.Brokers, func(b RouteBroker) bool { return b.Name == "b2" && b.Queues == 7 }) {
				t.Errorf("route of a lost b2: %+v", rt)
			}
		})
	}
}

// TestPatchMatchesHeartbeat: any sequence of patches leaves the registry
// as a heartbeat of the same resulting topics would.
func TestPatchMatchesHeartbeat(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	r := NewRegistry(Config{})
	model := map[string]int{}
	mustHeartbeat(t, r, broker("b1"))
	for range 500 {
		var put []Topic
		var removed []string
		picked := map[string]bool{}
		for range rng.IntN(4) {
			name := fmt.Sprintf("t%02d", rng.IntN(40))
			if picked[name] {
				continue
			}
			picked[name] = true
			if rng.IntN(3) == 0 {
				removed = append(removed, name)
				delete(model, name)
			} else {
				q := 1 + rng.IntN(8)
				put = append(put, Topic{name, q})
				model[name] = q
			}
		}
		info := broker("b1", put...)
		if err := r.Patch(info, removed); err != nil {
			t.Fatalf("Patch(%v, %v): %v", put, removed, err)
		}
		checkInvariants(t, r)
	}
	want := NewRegistry(Config{})
	var all []Topic
	for name, q := range model {
		all = append(all, Topic{name, q})
	}
	mustHeartbeat(t, want, broker("b1", all...))
	got, exp := r.Brokers()[0].Topics, want.Brokers()[0].Topics
	if !reflect.DeepEqual(got, exp) && !(len(got) == 0 && len(exp) == 0) {
		t.Fatalf("after patches: %v\nheartbeat of the same: %v", got, exp)
	}
}

func TestRegistryConcurrent(t *testing.T) {
	clock := newFakeClock()
	// A short expiry and a moving clock make the scanner evict brokers
	// while others heartbeat and route.
	r := NewRegistry(Config{BrokerExpiry: 2 * time.Second, ScanInterval: time.Millisecond, Now: clock.Now})
	ctx, cancel := context.WithCancel(t.Context())
	runDone := make(chan struct{})
	go func() { defer close(runDone); r.Run(ctx) }()

	const brokers, rounds = 6, 200
	shared := topics(50, 2)
	var wg sync.WaitGroup
	for b := range brokers {
		name := fmt.Sprintf("b%d", b)
		wg.Go(func() {
			for i := range rounds {
				// Each round holds a different slice of the shared topics.
				ts := shared[i%10 : 20+i%30]
				if err := r.Heartbeat(broker(name, ts...)); err != nil {
					t.Errorf("Heartbeat: %v", err)
					return
				}
				// A patch races the others' heartbeats and the scanner; a
				// broker just unregistered or evicted is told so.
				p := broker(name, shared[40+i%10])
				if err := r.Patch(p, []string{shared[i%10].Name}); err != nil && !errors.Is(err, ErrNotRegistered) {
					t.Errorf("Patch: %v", err)
					return
				}
				if i%37 == 0 {
					r.Unregister(name)
				}
				if i%50 == 0 {
					clock.Advance(time.Second)
				}
			}
		})
	}
	for range 4 {
		wg.Go(func() {
			for i := range rounds * 2 {
				if rt, ok := r.Route(shared[i%len(shared)].Name); ok {
					for j := 1; j < len(rt.Brokers); j++ {
						if rt.Brokers[j-1].Name >= rt.Brokers[j].Name {
							t.Errorf("route not sorted: %+v", rt.Brokers)
							return
						}
					}
				}
				_ = r.Brokers()
			}
		})
	}
	wg.Wait()
	cancel()
	<-runDone
	checkInvariants(t, r)
}

func TestProtocolJSON(t *testing.T) {
	tests := []struct {
		name string
		v    any
		want string
	}{
		{"heartbeat", NewHeartbeatRequest(BrokerInfo{Name: "b1", Cluster: "c", Addr: "http://h:1", Version: "v"}),
			`{"name":"b1","cluster":"c","addr":"http://h:1","version":"v","topics":[]}`},
		{"heartbeat topics", NewHeartbeatRequest(broker("b1", Topic{"t", 4})),
			`{"name":"b1","cluster":"","addr":"http://b1.example:8080","version":"test","topics":[{"name":"t","queues":4}]}`},
		{"expires 120s", NewHeartbeatResponse(120 * time.Second), `{"expires_in":"120s"}`},
		{"expires 1.5s", NewHeartbeatResponse(1500 * time.Millisecond), `{"expires_in":"1.5s"}`},
		{"route", NewRouteJSON(Route{Topic: "t", Brokers: []RouteBroker{{"b1", "c", "http://h:1", 4}}}),
			`{"topic":"t","brokers":[{"name":"b1","cluster":"c","addr":"http://h:1","queues":4}]}`},
		{"cluster", NewClusterJSON([]BrokerInfo{{Name: "b1", Cluster: "c", Addr: "http://h:1", Version: "v",
			Topics: topics(3, 1), LastHeartbeat: time.Date(2025, 3, 1, 13, 0, 0, 0, time.FixedZone("x", 3600))}}),
			`{"brokers":[{"name":"b1","cluster":"c","addr":"http://h:1","version":"v","topics":3,"last_heartbeat":"2025-03-01T12:00:00Z"}]}`},
		{"empty cluster", NewClusterJSON(nil), `{"brokers":[]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := json.Marshal(tt.v)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
	rt := Route{Topic: "t", Brokers: []RouteBroker{{"b1", "c", "http://h:1", 4}}}
	if back := NewRouteJSON(rt).Route(); !reflect.DeepEqual(back, rt) {
		t.Errorf("route round trip = %+v, want %+v", back, rt)
	}
	info := broker("b1", Topic{"t", 4})
	if back := NewHeartbeatRequest(info).BrokerInfo(); !reflect.DeepEqual(back, info) {
		t.Errorf("heartbeat round trip = %+v, want %+v", back, info)
	}
}

// FuzzHeartbeat feeds arbitrary heartbeat bodies to a registry: it must
// never panic, and whatever it accepts must be routable and consistent.
func FuzzHeartbeat(f *testing.F) {
	f.Add([]byte(`{"name":"b1","addr":"http://h:1","topics":[{"name":"t","queues":4}]}`), []byte(`{"name":"b1","addr":"http://h:2","topics":[{"name":"u","queues":1}]}`))
	f.Add([]byte(`{"name":"b1","addr":"http://h:1","topics":[{"name":"t","queues":4},{"name":"t","queues":4}]}`), []byte(`{}`))
	f.Add([]byte(`{"name":"b2","cluster":"c","addr":"https://h","topics":[{"name":"%DLQ%g","queues":1}]}`), []byte(`{"name":"b2"}`))
	f.Fuzz(func(t *testing.T, first, second []byte) {
		r := NewRegistry(Config{})
		for _, body := range [][]byte{first, second} {
			var req HeartbeatRequest
			if json.Unmarshal(body, &req) != nil {
				continue
			}
			if err := r.Heartbeat(req.BrokerInfo()); err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v does not wrap ErrInvalid", err)
				}
				continue
			}
			for _, top := range req.Topics {
				rt, ok := r.Route(top.Name)
				if !ok {
					t.Fatalf("accepted topic %q has no route", top.Name)
				}
				found := false
				for _, b := range rt.Brokers {
					found = found || b.Name == req.Name && b.Queues == top.Queues
				}
				if !found {
					t.Fatalf("route %+v lacks %s with %d queues", rt, req.Name, top.Queues)
				}
			}
		}
		if err := invariantErr(r); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzPatch feeds a heartbeat and then arbitrary patch bodies to a
// registry: it must never panic, a refused patch changes nothing, and an
// accepted one leaves exactly the topics a model of it predicts.
func FuzzPatch(f *testing.F) {
	f.Add([]byte(`{"addr":"http://h:1","put":[{"name":"u","queues":2}],"removed":["t"]}`))
	f.Add([]byte(`{"addr":"http://h:1","put":[{"name":"t","queues":9}],"removed":["t"]}`))
	f.Add([]byte(`{"addr":"http://h:2","put":[],"removed":[]}`))
	f.Add([]byte(`{"cluster":"c","addr":"http://h:1","removed":["%DLQ%g","nope"]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var req PatchRequest
		if json.Unmarshal(body, &req) != nil {
			return
		}
		r := NewRegistry(Config{})
		mustHeartbeat(t, r, BrokerInfo{Name: "b1", Addr: "http://h:1", Topics: []Topic{{"t", 4}, {"%DLQ%g", 1}}})
		before := r.Brokers()[0].Topics
		err := r.Patch(req.BrokerInfo("b1"), req.Removed)
		if err := invariantErr(r); err != nil {
			t.Fatal(err)
		}
		got := r.Brokers()[0].Topics
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNotRegistered) {
				t.Fatalf("error %v wraps neither ErrInvalid nor ErrNotRegistered", err)
			}
			if !reflect.DeepEqual(got, before) {
				t.Fatalf("refused patch changed the topics: %v -> %v", before, got)
			}
			return
		}
		model := map[string]int{}
		for _, tp := range before {
			model[tp.Name] = tp.Queues
		}
		for _, name := range req.Removed {
			delete(model, name)
		}
		for _, tp := range req.Put {
			model[tp.Name] = tp.Queues
		}
		if len(got) != len(model) {
			t.Fatalf("topics %v, want %v", got, model)
		}
		for _, tp := range got {
			if q, ok := model[tp.Name]; !ok || q != tp.Queues {
				t.Fatalf("topics %v, want %v", got, model)
			}
		}
	})
}

func BenchmarkHeartbeat(b *testing.B) {
	for _, n := range []int{100, 10_000, 100_000} {
		base := topics(n, 4)
		other := append([]Topic(nil), base...)
		other[n/2].Queues = 8
		body, _ := json.Marshal(NewHeartbeatRequest(broker("b1", base...)))
		b.Run(fmt.Sprintf("topics=%d", n), func(b *testing.B) {
			b.Run("unchanged", func(b *testing.B) {
				r := NewRegistry(Config{})
				mustHeartbeat(b, r, broker("b1", base...))
				info := broker("b1", append([]Topic(nil), base...)...) // equal, not the same slice
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				for b.Loop() {
					if err := r.Heartbeat(info); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("one_changed", func(b *testing.B) {
				r := NewRegistry(Config{})
				infos := [2]BrokerInfo{broker("b1", base...), broker("b1", other...)}
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if err := r.Heartbeat(infos[i%2]); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
			b.Run("new_broker", func(b *testing.B) {
				r := NewRegistry(Config{})
				info := broker("b1", base...)
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				for b.Loop() {
					if err := r.Heartbeat(info); err != nil {
						b.Fatal(err)
					}
					r.Unregister("b1")
				}
			})
		})
	}
}

// BenchmarkTopicCreated is a name server's whole work (decoding the body
// included) when a broker holding n topics creates one more and says so
// with its whole registration, or with a patch. The topic is created and
// deleted by turns, so each iteration is one change.
func BenchmarkTopicCreated(b *testing.B) {
	for _, n := range []int{100, 10_000} {
		base := topics(n, 4)
		added := append(slices.Clone(base), Topic{"zz-new", 4})
		bodies := [2][]byte{}
		bodies[0], _ = json.Marshal(NewHeartbeatRequest(broker("b1", added...)))
		bodies[1], _ = json.Marshal(NewHeartbeatRequest(broker("b1", base...)))
		patches := [2][]byte{}
		patches[0], _ = json.Marshal(NewPatchRequest(broker("b1"), []Topic{{"zz-new", 4}}, nil))
		patches[1], _ = json.Marshal(NewPatchRequest(broker("b1"), nil, []string{"zz-new"}))
		b.Run(fmt.Sprintf("topics=%d/heartbeat", n), func(b *testing.B) {
			r := NewRegistry(Config{})
			mustHeartbeat(b, r, broker("b1", base...))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				var req HeartbeatRequest
				if err := json.Unmarshal(bodies[i%2], &req); err != nil {
					b.Fatal(err)
				}
				if err := r.Heartbeat(req.BrokerInfo()); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
		b.Run(fmt.Sprintf("topics=%d/patch", n), func(b *testing.B) {
			r := NewRegistry(Config{})
			mustHeartbeat(b, r, broker("b1", base...))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				var req PatchRequest
				if err := json.Unmarshal(patches[i%2], &req); err != nil {
					b.Fatal(err)
				}
				if err := r.Patch(req.BrokerInfo("b1"), req.Removed); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

func BenchmarkRoute(b *testing.B) {
	for _, nb := range []int{1, 4, 16} {
		r := NewRegistry(Config{})
		ts := topics(10_000, 4)
		for i := range nb {
			mustHeartbeat(b, r, broker(fmt.Sprintf("b%02d", i), ts...))
		}
		rt, _ := r.Route("topic-05000")
		body, _ := json.Marshal(NewRouteJSON(rt))
		b.Run(fmt.Sprintf("brokers=%d/topics=10000", nb), func(b *testing.B) {
			b.Run("serial", func(b *testing.B) {
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				for b.Loop() {
					if _, ok := r.Route("topic-05000"); !ok {
						b.Fatal("no route")
					}
				}
			})
			b.Run("parallel", func(b *testing.B) {
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, ok := r.Route("topic-05000"); !ok {
							b.Error("no route")
							return
						}
					}
				})
			})
		})
	}
}

// TestRegistryRefusesATakenName: a broker of another instance claiming a
// live broker's name at another address is refused, and the live one
// keeps its routes; the same instance at a new address (a restart on
// another port) moves; once the holder has expired the name is free.
func TestRegistryRefusesATakenName(t *testing.T) {
	clock := newFakeClock()
	r := NewRegistry(Config{BrokerExpiry: 10 * time.Second, Now: clock.Now})
	live := broker("b1", Topic{"orders", 2})
	live.Instance = "aaaa"
	mustHeartbeat(t, r, live)

	other := broker("b1")
	other.Addr, other.Instance = "http://elsewhere.example:8080", "bbbb"
	if err := r.Heartbeat(other); !errors.Is(err, ErrNameTaken) {
		t.Fatalf("Heartbeat of another instance under a live name = %v; want ErrNameTaken", err)
	}
	if n := r.Refusals(); n != 1 {
		t.Fatalf("refusals counted: %d, want 1", n)
	}
	if rt, ok := r.Route("orders"); !ok || rt.Brokers[0].Addr != live.Addr {
		t.Fatalf("after the refused claim, route = %+v, %v; want the live broker's", rt, ok)
	}

	moved := live
	moved.Addr = "http://b1.example:9090"
	mustHeartbeat(t, r, moved) // the same data on another port
	if rt, _ := r.Route("orders"); rt.Brokers[0].Addr != moved.Addr {
		t.Fatalf("the broker restarted on another port is at %s, want %s", rt.Brokers[0].Addr, moved.Addr)
	}

	clock.Advance(11 * time.Second) // the holder is silent past its expiry
	mustHeartbeat(t, r, other)
	if rt, ok := r.Route("orders"); ok {
		t.Fatalf("route after the name changed hands = %+v; want none (the new holder lists no topics)", rt)
	}
}

// TestRegistryLookup: a topic whose brokers expired or unregistered is
// "gone" for the topic memory, not unknown; a system topic is looked up
// like any other; a registry in its warm-up answers no route.
func TestRegistryLookup(t *testing.T) {
	clock := newFakeClock()
	r := NewRegistry(Config{BrokerExpiry: 10 * time.Second, TopicMemory: 10 * time.Second, Now: clock.Now, WarmUp: 3 * time.Second})
	mustHeartbeat(t, r, broker("b1", Topic{"orders", 2}, Topic{"%DLQ%g", 1}))
	mustHeartbeat(t, r, broker("b2", Topic{"solo", 1}))
	if _, _, err := r.Lookup("orders"); !errors.Is(err, ErrWarmingUp) {
		t.Fatalf("Lookup during warm-up = %v; want ErrWarmingUp", err)
	}
	clock.Advance(3 * time.Second)
	for _, topic := range []string{"orders", "%DLQ%g"} {
		if rt, ok, err := r.Lookup(topic); !ok || err != nil || rt.Brokers[0].Name != "b1" {
			t.Fatalf("Lookup(%s) = %+v, %v, %v", topic, rt, ok, err)
		}
	}
	if _, ok, err := r.Lookup("never"); ok || err != nil {
		t.Fatalf("Lookup of an unknown topic = %v, %v; want not found, no error", ok, err)
	}
	r.Unregister("b2")
	clock.Advance(8 * time.Second) // b1 silent for 11s: past its expiry, not yet evicted
	for _, topic := range []string{"orders", "solo"} {
		if _, ok, err := r.Lookup(topic); ok || !errors.Is(err, ErrTopicGone) {
			t.Fatalf("Lookup(%s) with its broker down = %v, %v; want ErrTopicGone", topic, ok, err)
		}
	}
	r.evict(clock.Now())
	if _, _, err := r.Lookup("orders"); !errors.Is(err, ErrTopicGone) {
		t.Fatalf("Lookup(orders) after its broker was evicted = %v; want ErrTopicGone", err)
	}
	clock.Advance(11 * time.Second) // one topic memory after they left
	r.evict(clock.Now())
	for _, topic := range []string{"orders", "solo"} {
		if _, ok, err := r.Lookup(topic); ok || err != nil {
			t.Fatalf("Lookup(%s) a topic memory after its broker left = %v, %v; want not found", topic, ok, err)
		}
	}
	if len(r.gone) != 0 {
		t.Fatalf("gone topics kept past their expiry: %v", r.gone)
	}
}

// TestRegistryRemembersTopicsOfDownBrokers: a topic whose only holder is
// down stays "gone" (ErrTopicGone, so no broker auto-creates a copy of
// it without its subscriptions) long after the broker was evicted, not
// just for one expiry (issue 19, F5); until the topic memory ends, or
// the broker comes back with the topic (routed again) or without it
// (forgotten at once).
func TestRegistryRemembersTopicsOfDownBrokers(t *testing.T) {
	clock := newFakeClock()
	r := NewRegistry(Config{BrokerExpiry: 10 * time.Second, Now: clock.Now})
	mustHeartbeat(t, r, broker("b1", Topic{"orders", 2}, Topic{"audit", 1}))
	mustHeartbeat(t, r, broker("b2", Topic{"kept", 1}))
	clock.Advance(11 * time.Second) // both silent past their expiry
	r.evict(clock.Now())
	for _, d := range []time.Duration{11 * time.Second, time.Minute, 23 * time.Hour} {
		clock.Advance(d)
		r.evict(clock.Now())
		for _, topic := range []string{"orders", "audit", "kept"} {
			if _, ok, err := r.Lookup(topic); ok || !errors.Is(err, ErrTopicGone) {
				t.Fatalf("Lookup(%s) after its broker was down for %s more = %v, %v; want ErrTopicGone", topic, d, ok, err)
			}
		}
	}
	// b1 comes back holding orders only: audit was lost with its data.
	mustHeartbeat(t, r, broker("b1", Topic{"orders", 2}))
	if rt, ok, err := r.Lookup("orders"); !ok || err != nil || rt.Brokers[0].Name != "b1" {
		t.Fatalf("Lookup(orders) with b1 back = %+v, %v, %v", rt, ok, err)
	}
	if _, ok, err := r.Lookup("audit"); ok || err != nil {
		t.Fatalf("Lookup(audit), which b1 came back without = %v, %v; want not found", ok, err)
	}
	clock.Advance(2 * time.Hour) // 24h after b2 left
	mustHeartbeat(t, r, broker("b1", Topic{"orders", 2}))
	r.evict(clock.Now())
	if _, ok, err := r.Lookup("kept"); ok || err != nil {
		t.Fatalf("Lookup(kept) a topic memory after its broker left = %v, %v; want not found", ok, err)
	}
	if len(r.gone) != 0 {
		t.Fatalf("gone topics kept past the topic memory: %v", r.gone)
	}
}

// TestRegistryGoneBrokers: a broker that expired or unregistered is
// listed as gone for the topic memory, until it registers again; one
// never registered is not.
func TestRegistryGoneBrokers(t *testing.T) {
	clock := newFakeClock()
	r := NewRegistry(Config{BrokerExpiry: 10 * time.Second, TopicMemory: time.Hour, Now: clock.Now})
	mustHeartbeat(t, r, broker("b1", Topic{"orders", 1}))
	mustHeartbeat(t, r, broker("b2"))
	mustHeartbeat(t, r, broker("b3"))
	r.Unregister("b2")
	clock.Advance(5 * time.Second)
	mustHeartbeat(t, r, broker("b3"))
	clock.Advance(6 * time.Second) // b1 silent past its expiry, not yet evicted
	if got := r.GoneBrokers(); !slices.Equal(got, []string{"b1", "b2"}) {
		t.Fatalf("gone = %v; want [b1 b2]", got)
	}
	mustHeartbeat(t, r, broker("b3"))
	r.evict(clock.Now())
	mustHeartbeat(t, r, broker("b2")) // back
	if got := r.GoneBrokers(); !slices.Equal(got, []string{"b1"}) {
		t.Fatalf("gone after b2 came back = %v; want [b1]", got)
	}
	clock.Advance(time.Hour + time.Second)
	mustHeartbeat(t, r, broker("b2"))
	mustHeartbeat(t, r, broker("b3"))
	r.evict(clock.Now())
	if got := r.GoneBrokers(); len(got) != 0 {
		t.Fatalf("gone a topic memory later = %v; want none", got)
	}
}
