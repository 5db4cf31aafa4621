package namesrv

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testNameServer serves the name server protocol over a real Registry, as
// package httpapi does.
type testNameServer struct {
	reg  *Registry
	srv  *httptest.Server
	down atomic.Bool // answer 503 to everything

	heartbeats atomic.Int64 // heartbeat requests received, answered 200 or not
	patches    atomic.Int64 // patch requests received, answered 200 or not
	routeGets  atomic.Int64
	deletes    atomic.Int64
}

// registrations counts heartbeats and patches received.
func (ns *testNameServer) registrations() int64 { return ns.heartbeats.Load() + ns.patches.Load() }

func newTestNameServer(tb testing.TB) *testNameServer {
	tb.Helper()
	ns := &testNameServer{reg: NewRegistry(Config{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/brokers/heartbeat", func(w http.ResponseWriter, r *http.Request) {
		var req HeartbeatRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxHeartbeatBytes)).Decode(&req); err != nil {
			writeProblem(w, http.StatusBadRequest, "invalid_json", err.Error())
			return
		}
		anew := !ns.reg.Live(req.Name, req.Addr)
		if err := ns.reg.Heartbeat(req.BrokerInfo()); err != nil {
			if errors.Is(err, ErrNameTaken) {
				writeProblem(w, http.StatusConflict, "broker_name_taken", err.Error())
				return
			}
			writeProblem(w, http.StatusBadRequest, "invalid_broker", err.Error())
			return
		}
		ans := NewHeartbeatResponse(ns.reg.BrokerExpiry())
		ans.Registered = anew
		writeJSON(w, http.StatusOK, ans)
	})
	mux.HandleFunc("PATCH /v1/brokers/{name}", func(w http.ResponseWriter, r *http.Request) {
		var req PatchRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxHeartbeatBytes)).Decode(&req); err != nil {
			writeProblem(w, http.StatusBadRequest, "invalid_json", err.Error())
			return
		}
		switch err := ns.reg.Patch(req.BrokerInfo(r.PathValue("name")), req.Removed); {
		case errors.Is(err, ErrNotRegistered):
			writeProblem(w, http.StatusNotFound, "broker_not_found", err.Error())
		case err != nil:
			writeProblem(w, http.StatusBadRequest, "invalid_broker", err.Error())
		default:
			writeJSON(w, http.StatusOK, NewHeartbeatResponse(ns.reg.BrokerExpiry()))
		}
	})
	mux.HandleFunc("DELETE /v1/brokers/{name}", func(w http.ResponseWriter, r *http.Request) {
		ns.deletes.Add(1)
		if !ns.reg.Unregister(r.PathValue("name")) {
			writeProblem(w, http.StatusNotFound, "broker_not_found", "no such broker")
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/routes/{topic}", func(w http.ResponseWriter, r *http.Request) {
		ns.routeGets.Add(1)
		rt, ok, err := ns.reg.Lookup(r.PathValue("topic"))
		switch {
		case errors.Is(err, ErrWarmingUp):
			writeProblem(w, http.StatusServiceUnavailable, "not_ready", err.Error())
			return
		case errors.Is(err, ErrTopicGone):
			writeProblem(w, http.StatusServiceUnavailable, "broker_unavailable", err.Error())
			return
		case !ok:
			writeProblem(w, http.StatusNotFound, "route_not_found", "no broker holds the topic")
			return
		}
		writeJSON(w, http.StatusOK, NewRouteJSON(rt))
	})
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, NewClusterJSON(ns.reg.Brokers()))
	})
	ns.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v1/brokers/heartbeat":
			ns.heartbeats.Add(1)
		case r.Method == http.MethodPatch:
			ns.patches.Add(1)
		}
		if ns.down.Load() {
			writeProblem(w, http.StatusServiceUnavailable, "unavailable", "down for the test")
			return
		}
		mux.ServeHTTP(w, r)
	}))
	tb.Cleanup(ns.srv.Close)
	return ns
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeProblem(w http.ResponseWriter, status int, code, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"type": "about:blank", "title": http.StatusText(status), "status": status, "detail": detail, "code": code,
	})
}

// closedAddr is the base URL of a port nothing listens on.
func closedAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := "http://" + ln.Addr().String()
	ln.Close()
	return addr
}

// brokerState is what a test broker reports; tests change it between
// heartbeats.
type brokerState struct {
	mu   sync.Mutex
	info BrokerInfo
}

func (s *brokerState) get() BrokerInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info
}

func (s *brokerState) set(info BrokerInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.info = info
}

// runClient starts c.Run and returns a stop function that cancels it and
// waits for it to return.
func runClient(tb testing.TB, c *Client, info func() BrokerInfo) (stop func()) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx, info) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				tb.Fatal("Run did not return after its context ended")
			}
		})
	}
	tb.Cleanup(stop)
	return stop
}

func hasRoute(ns *testNameServer, topic, broker string) bool {
	rt, ok := ns.reg.Route(topic)
	return ok && slices.ContainsFunc(rt.Brokers, func(b RouteBroker) bool { return b.Name == broker })
}

func TestClientHeartbeatsEveryNameServer(t *testing.T) {
	ns1, ns2 := newTestNameServer(t), newTestNameServer(t)
	dead := closedAddr(t)
	logs := newLogCapture()
	c := NewClient(ClientConfig{
		Addrs: []string{dead, ns1.srv.URL, ns2.srv.URL}, Interval: time.Hour, Timeout: 2 * time.Second, Logger: logs.logger(),
	})
	state := &brokerState{info: broker("b1", Topic{"orders", 4})}
	runClient(t, c, state.get)

	for _, ns := range []*testNameServer{ns1, ns2} {
		waitFor(t, "registration at "+ns.srv.URL, func() bool { return hasRoute(ns, "orders", "b1") })
	}
	// More rounds: the dead name server is still tried each round but its
	// outage is logged once.
	for i := range 3 {
		c.Changed()
		waitFor(t, "another round", func() bool { return ns1.registrations() >= int64(i+2) && ns2.registrations() >= int64(i+2) })
	}
	if n := logs.count(slog.LevelWarn, "heartbeat failed", logKeyNameSrv, dead); n != 1 {
		t.Errorf("dead name server logged %d times over 4 rounds, want 1", n)
	}
	for _, ns := range []*testNameServer{ns1, ns2} {
		if n := logs.count(slog.LevelWarn, "heartbeat failed", logKeyNameSrv, ns.srv.URL); n != 0 {
			t.Errorf("live name server %s logged as failing %d times", ns.srv.URL, n)
		}
	}
	// The test registries expire after 120s, long before an hour's interval.
	if n := logs.count(slog.LevelWarn, "expires brokers sooner", logKeyNameSrv, ns1.srv.URL); n != 1 {
		t.Errorf("short expiry warned %d times, want 1", n)
	}
}

func TestClientOutageLoggedOncePerOutage(t *testing.T) {
	ns := newTestNameServer(t)
	logs := newLogCapture()
	c := NewClient(ClientConfig{Addrs: []string{ns.srv.URL}, Interval: time.Hour, Timeout: 2 * time.Second, Logger: logs.logger()})
	state := &brokerState{info: broker("b1", Topic{"orders", 4})}
	ns.down.Store(true)
	runClient(t, c, state.get)

	rounds := int64(0)
	round := func() {
		t.Helper()
		rounds++
		if rounds > 1 {
			c.Changed()
		}
		// Rounds run one after another, so once round n's request has
		// arrived, round n-1 has been logged.
		waitFor(t, "a heartbeat", func() bool { return ns.registrations() >= rounds })
	}
	failed := func() int { return logs.count(slog.LevelWarn, "heartbeat failed", logKeyNameSrv, ns.srv.URL) }
	recovered := func() int { return logs.count(slog.LevelInfo, "succeeds again", logKeyNameSrv, ns.srv.URL) }

	for range 3 {
		round()
	}
	waitFor(t, "the outage to be logged", func() bool { return failed() >= 1 })
	if got := failed(); got != 1 {
		t.Errorf("first outage logged %d times over 3 rounds, want 1", got)
	}
	if errMsg := lastAttr(logs, "heartbeat failed", logKeyErr); !strings.Contains(errMsg, "503") || !strings.Contains(errMsg, "down for the test") {
		t.Errorf("logged error %q lacks the status and the problem's detail", errMsg)
	}

	ns.down.Store(false)
	round()
	waitFor(t, "registration", func() bool { return hasRoute(ns, "orders", "b1") })
	waitFor(t, "the recovery to be logged", func() bool { return recovered() == 1 })

	ns.down.Store(true)
	round()
	round()
	waitFor(t, "the second outage to be logged", func() bool { return failed() >= 2 })
	if got := failed(); got != 2 {
		t.Errorf("two outages logged %d times, want 2", got)
	}
}

func lastAttr(logs *logCapture, msg, key string) string {
	logs.mu.Lock()
	defer logs.mu.Unlock()
	for i := len(*logs.records) - 1; i >= 0; i-- {
		if r := (*logs.records)[i]; strings.Contains(r.msg, msg) {
			return r.attrs[key]
		}
	}
	return ""
}

func TestClientChangedHeartbeatsAtOnce(t *testing.T) {
	ns := newTestNameServer(t)
	c := NewClient(ClientConfig{Addrs: []string{ns.srv.URL}, Interval: time.Hour, Timeout: 2 * time.Second})
	state := &brokerState{info: broker("b1", Topic{"orders", 4})}
	runClient(t, c, state.get)
	waitFor(t, "registration", func() bool { return hasRoute(ns, "orders", "b1") })

	// Many nudges while nothing changed coalesce into at most one round.
	state.set(broker("b1", Topic{"payments", 2}))
	c.Changed()
	c.Changed()
	c.Changed()
	waitFor(t, "the new topic's route, long before the hour's interval", func() bool { return hasRoute(ns, "payments", "b1") })
	if _, ok := ns.reg.Route("orders"); ok {
		t.Error("the dropped topic still has a route")
	}
	if n := ns.registrations(); n > 3 {
		t.Errorf("%d heartbeats and patches for one start and three nudges; nudges should coalesce", n)
	}
}

// TestClientRegisteredAnew: Registered receives when a name server's
// answer says it registered the broker anew (the first heartbeat, and one
// after the name server lost the broker), and not for the heartbeats of a
// broker it holds.
func TestClientRegisteredAnew(t *testing.T) {
	ns := newTestNameServer(t)
	c := NewClient(ClientConfig{Addrs: []string{ns.srv.URL}, Interval: 20 * time.Millisecond, Timeout: 2 * time.Second})
	state := &brokerState{info: broker("b1", Topic{"orders", 4})}
	runClient(t, c, state.get)
	recv := func(what string) {
		t.Helper()
		select {
		case <-c.Registered():
		case <-time.After(10 * time.Second):
			t.Fatalf("no Registered after %s", what)
		}
	}
	recv("the first heartbeat")
	// Heartbeats of a registered broker: nothing more.
	n := ns.heartbeats.Load()
	waitFor(t, "three more heartbeats", func() bool { return ns.heartbeats.Load() >= n+3 })
	select {
	case <-c.Registered():
		t.Fatal("Registered received while the name server held the broker")
	default:
	}
	// The name server loses the broker (as when it restarts).
	if !ns.reg.Unregister("b1") {
		t.Fatal("b1 was not registered")
	}
	recv("the name server lost the broker")
}

func TestRegistryLive(t *testing.T) {
	clock := newFakeClock()
	r := NewRegistry(Config{Now: clock.Now, BrokerExpiry: time.Minute})
	b := broker("b1", Topic{"orders", 1})
	if r.Live("b1", b.Addr) {
		t.Error("Live before any heartbeat")
	}
	if err := r.Heartbeat(b); err != nil {
		t.Fatal(err)
	}
	if !r.Live("b1", b.Addr) || r.Live("b1", "http://elsewhere:1") || r.Live("b2", b.Addr) {
		t.Error("Live: want true for b1 at its address only")
	}
	clock.Advance(2 * time.Minute)
	if r.Live("b1", b.Addr) {
		t.Error("Live after the expiry")
	}
}

// TestClientSync: Sync returns only once a heartbeat that read the
// broker's state after the call has reached the name server, not when a
// round already under way (with the state from before) ends.
func TestClientSync(t *testing.T) {
	ns := newTestNameServer(t)
	c := NewClient(ClientConfig{Addrs: []string{ns.srv.URL}, Interval: time.Hour, Timeout: 2 * time.Second})
	if err := c.Sync(t.Context()); err != nil {
		t.Fatalf("Sync before Run: %v", err)
	}
	state := &brokerState{info: broker("b1", Topic{"orders", 4})}
	var hold atomic.Pointer[chan struct{}]
	reading := make(chan struct{}, 1)
	stop := runClient(t, c, func() BrokerInfo {
		info := state.get()
		if h := hold.Load(); h != nil {
			reading <- struct{}{}
			<-*h
		}
		return info
	})
	waitFor(t, "registration", func() bool { return hasRoute(ns, "orders", "b1") })

	// A round reads the old state and stalls; the topic is created; Sync
	// must wait for the round after it.
	release := make(chan struct{})
	hold.Store(&release)
	c.Changed()
	<-reading
	hold.Store(nil)
	state.set(broker("b1", Topic{"orders", 4}, Topic{"payments", 2}))
	synced := make(chan error, 1)
	go func() { synced <- c.Sync(t.Context()) }()
	close(release)
	if err := <-synced; err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if !hasRoute(ns, "payments", "b1") {
		t.Fatal("Sync returned before the name server had the new topic")
	}

	// Run ended: nothing to wait for.
	stop()
	if err := c.Sync(t.Context()); err != nil {
		t.Fatalf("Sync after Run: %v", err)
	}
}

// TestClientPatchesChanges: a change to a registered broker's topics is
// sent as a patch of just those topics; a name server that has forgotten
// the broker, and a change too big for a patch, get the whole
// registration.
func TestClientPatchesChanges(t *testing.T) {
	ns := newTestNameServer(t)
	c := NewClient(ClientConfig{Addrs: []string{ns.srv.URL}, Interval: time.Hour, Timeout: 2 * time.Second})
	held := topics(2000, 4)
	state := &brokerState{info: broker("b1", held...)}
	runClient(t, c, state.get)
	waitFor(t, "registration", func() bool { return hasRoute(ns, held[0].Name, "b1") })
	whole := ns.heartbeats.Load()

	sync := func(ts []Topic) {
		t.Helper()
		state.set(broker("b1", ts...))
		if err := c.Sync(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	held = append(held, Topic{"invoices", 2})
	sync(held)
	if !hasRoute(ns, "invoices", "b1") {
		t.Fatal("the created topic is not routed after Sync")
	}
	held = held[1:]
	sync(held)
	if _, ok := ns.reg.Route(topics(1, 4)[0].Name); ok {
		t.Fatal("the deleted topic is still routed after Sync")
	}
	if p, h := ns.patches.Load(), ns.heartbeats.Load(); p != 2 || h != whole {
		t.Fatalf("%d patches and %d more heartbeats for two one-topic changes, want 2 and 0", p, h-whole)
	}

	// The name server restarted: the patch is refused and the whole
	// registration sent at once.
	ns.reg.Unregister("b1")
	held = append(held, Topic{"refunds", 1})
	sync(held)
	for _, name := range []string{"refunds", "invoices", held[0].Name} {
		if !hasRoute(ns, name, "b1") {
			t.Errorf("%s not routed after the forgetful name server got a Sync", name)
		}
	}
	if p, h := ns.patches.Load(), ns.heartbeats.Load(); p != 3 || h != whole+1 {
		t.Fatalf("%d patches and %d more heartbeats, want 3 and 1", p, h-whole)
	}

	// More than a patch carries: the whole registration.
	big := topics(maxPatchTopics+1, 1)
	sync(big)
	if p, h := ns.patches.Load(), ns.heartbeats.Load(); p != 3 || h != whole+2 {
		t.Fatalf("%d patches and %d more heartbeats for a change of %d topics, want 3 and 2", p, h-whole, len(big)+len(held))
	}
	if b := ns.reg.Brokers(); len(b) != 1 || len(b[0].Topics) != len(big) {
		t.Fatalf("registered %+v, want b1 with %d topics", len(b), len(big))
	}
}

// TestClientSyncBoundedByContext: a name server that never answers holds
// Sync only as long as the caller allows.
func TestClientSyncBoundedByContext(t *testing.T) {
	stuck := make(chan struct{})
	var asked atomic.Int64
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		select {
		case <-stuck:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(hung.Close)
	t.Cleanup(func() { close(stuck) })
	c := NewClient(ClientConfig{Addrs: []string{hung.URL}, Interval: time.Hour, Timeout: time.Second})
	runClient(t, c, func() BrokerInfo { return broker("b1") })
	waitFor(t, "the first heartbeat", func() bool { return asked.Load() > 0 })
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := c.Sync(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sync against a name server that hangs: %v, want the deadline", err)
	}
}

func TestClientUnregistersOnCancel(t *testing.T) {
	ns1, ns2 := newTestNameServer(t), newTestNameServer(t)
	dead := closedAddr(t)
	c := NewClient(ClientConfig{Addrs: []string{ns1.srv.URL, dead, ns2.srv.URL}, Interval: time.Hour, Timeout: 2 * time.Second})
	state := &brokerState{info: broker("b1", Topic{"orders", 4})}
	stop := runClient(t, c, state.get)
	for _, ns := range []*testNameServer{ns1, ns2} {
		waitFor(t, "registration", func() bool { return hasRoute(ns, "orders", "b1") })
	}
	// ns2 has lost the registration already (say it restarted): its 404
	// is as good as a 204.
	ns2.reg.Unregister("b1")

	stop() // returns once Run has returned
	for _, ns := range []*testNameServer{ns1, ns2} {
		if n := ns.deletes.Load(); n != 1 {
			t.Errorf("%s got %d unregister requests, want 1", ns.srv.URL, n)
		}
		if n, _ := registered(ns.reg); n != 0 {
			t.Errorf("%s still holds %d brokers", ns.srv.URL, n)
		}
	}
}

func TestClientRenameUnregistersOldName(t *testing.T) {
	ns := newTestNameServer(t)
	c := NewClient(ClientConfig{Addrs: []string{ns.srv.URL}, Interval: time.Hour, Timeout: 2 * time.Second})
	state := &brokerState{info: broker("old", Topic{"orders", 4})}
	runClient(t, c, state.get)
	waitFor(t, "registration", func() bool { return hasRoute(ns, "orders", "old") })
	state.set(broker("new", Topic{"orders", 4}))
	c.Changed()
	waitFor(t, "the new name", func() bool { return hasRoute(ns, "orders", "new") })
	if hasRoute(ns, "orders", "old") {
		t.Error("the old name still routes")
	}
}

func TestClientInvalidInfoNotSent(t *testing.T) {
	ns := newTestNameServer(t)
	logs := newLogCapture()
	c := NewClient(ClientConfig{Addrs: []string{ns.srv.URL}, Interval: time.Hour, Timeout: 2 * time.Second, Logger: logs.logger()})
	state := &brokerState{info: broker("b1", Topic{"orders", 0})}
	var calls atomic.Int64
	runClient(t, c, func() BrokerInfo { calls.Add(1); return state.get() })
	waitFor(t, "the refusal to be logged", func() bool { return logs.count(slog.LevelError, "invalid") == 1 })
	c.Changed() // the same bad info again: not sent, not logged again
	waitFor(t, "the second round", func() bool { return calls.Load() >= 2 })
	state.set(broker("b1", Topic{"orders", 4}))
	c.Changed()
	waitFor(t, "registration", func() bool { return hasRoute(ns, "orders", "b1") })
	if n := ns.heartbeats.Load(); n != 1 {
		t.Errorf("name server saw %d heartbeats, want 1 (the valid one)", n)
	}
	if n := logs.count(slog.LevelError, "invalid"); n != 1 {
		t.Errorf("invalid registration logged %d times, want 1", n)
	}
}

// TestClientLookupLeavesTheCache: Lookup asks the name servers each time
// and neither reads nor fills Route's cache, so a route a background
// lookup fetched while a topic was being placed is not what requests are
// routed by for a heartbeat interval.
func TestClientLookupLeavesTheCache(t *testing.T) {
	ns := newTestNameServer(t)
	mustHeartbeat(t, ns.reg, broker("b1", Topic{"orders", 4}))
	c := NewClient(ClientConfig{Addrs: []string{ns.srv.URL}, Interval: time.Hour, Timeout: 2 * time.Second})
	ctx := t.Context()
	names := func(rt Route) (out []string) {
		for _, b := range rt.Brokers {
			out = append(out, b.Name)
		}
		return out
	}
	if rt, ok, err := c.Lookup(ctx, "orders"); err != nil || !ok || !slices.Equal(names(rt), []string{"b1"}) {
		t.Fatalf("Lookup = %+v, %v, %v; want b1", rt, ok, err)
	}
	mustHeartbeat(t, ns.reg, broker("b2", Topic{"orders", 4}))
	if rt, ok, err := c.Route(ctx, "orders"); err != nil || !ok || !slices.Equal(names(rt), []string{"b1", "b2"}) {
		t.Errorf("Route after a Lookup = %+v, %v, %v; want b1 and b2 (the Lookup's answer is not cached)", rt, ok, err)
	}
	mustHeartbeat(t, ns.reg, broker("b3", Topic{"orders", 4}))
	gets := ns.routeGets.Load()
	if rt, _, _ := c.Lookup(ctx, "orders"); !slices.Equal(names(rt), []string{"b1", "b2", "b3"}) || ns.routeGets.Load() != gets+1 {
		t.Errorf("Lookup with a route cached = %v after %d requests; want b1 b2 b3 asked of the name server", names(rt), ns.routeGets.Load()-gets)
	}
}

func TestClientRouteCache(t *testing.T) {
	ns := newTestNameServer(t)
	mustHeartbeat(t, ns.reg, broker("b1", Topic{"orders", 4}))
	mustHeartbeat(t, ns.reg, broker("b2", Topic{"orders", 8}))
	clock := newFakeClock()
	c := NewClient(ClientConfig{Addrs: []string{ns.srv.URL}, Interval: 30 * time.Second, Timeout: 2 * time.Second, Now: clock.Now})
	ctx := t.Context()

	want, _ := ns.reg.Route("orders")
	route := func(what string) Route {
		t.Helper()
		rt, ok, err := c.Route(ctx, "orders")
		if err != nil || !ok {
			t.Fatalf("%s: Route = %v, %v", what, ok, err)
		}
		if !reflect.DeepEqual(rt, want) {
			t.Fatalf("%s: Route = %+v, want %+v", what, rt, want)
		}
		return rt
	}
	rt := route("first")
	rt.Brokers[0].Addr = "mutated" // the cache hands out copies
	if got := ns.routeGets.Load(); got != 1 {
		t.Fatalf("%d route requests, want 1", got)
	}
	clock.Advance(29 * time.Second)
	route("within interval")
	if got := ns.routeGets.Load(); got != 1 {
		t.Errorf("%d route requests within the interval, want 1 (cached)", got)
	}
	clock.Advance(time.Second)
	route("after interval")
	if got := ns.routeGets.Load(); got != 2 {
		t.Errorf("%d route requests after the interval, want 2 (refreshed)", got)
	}

	// A topic no broker holds is not found, and not cached.
	for range 2 {
		if rt, ok, err := c.Route(ctx, "nowhere"); ok || err != nil {
			t.Errorf("Route(nowhere) = %+v, %v, %v; want not found", rt, ok, err)
		}
	}
	if got := ns.routeGets.Load(); got != 4 {
		t.Errorf("%d route requests, want 4 (unknown topics are asked each time)", got)
	}

	// Every name server down: the cached route, however old, still serves.
	ns.down.Store(true)
	clock.Advance(time.Hour)
	route("all down")
	ns.srv.Close()
	clock.Advance(time.Hour)
	route("all gone")

	_, ok, err := c.Route(ctx, "uncached")
	if ok || !errors.Is(err, ErrUnavailable) {
		t.Errorf("Route(uncached) with every name server down = %v, %v; want ErrUnavailable", ok, err)
	}
	if _, _, err := c.Route(ctx, "no/such topic"); err == nil {
		t.Error("Route of an invalid topic name: no error")
	}
}

// TestClientRouteMergesEveryNameServer: a route is every name server's
// answer merged, so that one restarted (which lists only the brokers that
// have heartbeated to it since) is never taken as the whole truth; "no
// broker holds it" needs every name server to say so; a name server still
// warming up, or down, leaves the answer open (the cached route, or
// ErrUnavailable); one that says the topic's brokers are down gives
// ErrTopicGone.
func TestClientRouteMergesEveryNameServer(t *testing.T) {
	restarted, knows := newTestNameServer(t), newTestNameServer(t)
	const topic = "%RETRY%g%orders"
	mustHeartbeat(t, knows.reg, broker("b1", Topic{topic, 1}))
	mustHeartbeat(t, knows.reg, broker("b2", Topic{topic, 1}))
	mustHeartbeat(t, restarted.reg, broker("b2", Topic{topic, 1})) // b1 has not heartbeated to it yet
	clock := newFakeClock()
	c := NewClient(ClientConfig{Addrs: []string{restarted.srv.URL, knows.srv.URL}, Interval: 30 * time.Second, Timeout: 2 * time.Second, Now: clock.Now})
	names := func(rt Route) []string {
		var out []string
		for _, b := range rt.Brokers {
			out = append(out, b.Name)
		}
		return out
	}
	for i := range 2 {
		clock.Advance(time.Minute) // past the cache
		rt, ok, err := c.Route(t.Context(), topic)
		if err != nil || !ok || !slices.Equal(names(rt), []string{"b1", "b2"}) || rt.Topic != topic {
			t.Fatalf("round %d: Route = %+v, %v, %v; want b1 and b2", i, rt, ok, err)
		}
	}
	if a, b := restarted.routeGets.Load(), knows.routeGets.Load(); a != 2 || b != 2 {
		t.Errorf("name servers asked %d and %d times, want 2 each", a, b)
	}

	// The only name server that knows a topic is down, and the other has
	// not heard of it: that leaves the question open, and the cached
	// route is served, or without one ErrUnavailable.
	mustHeartbeat(t, knows.reg, broker("b1", Topic{topic, 1}, Topic{"t2", 1}))
	if _, ok, err := c.Route(t.Context(), "t2"); !ok || err != nil {
		t.Fatalf("Route(t2) = %v, %v", ok, err)
	}
	knows.down.Store(true)
	clock.Advance(time.Minute)
	if rt, ok, err := c.Route(t.Context(), "t2"); !ok || err != nil || !slices.Equal(names(rt), []string{"b1"}) {
		t.Errorf("Route with a name server down = %+v, %v, %v; want the cached route", rt, ok, err)
	}
	c.Forget("t2")
	if _, ok, err := c.Route(t.Context(), "t2"); ok || !errors.Is(err, ErrUnavailable) {
		t.Errorf("Route with a name server down and nothing cached = %v, %v; want ErrUnavailable", ok, err)
	}
	// Every name server answers, and the topic's brokers left within the
	// expiry: the topic is gone for now, not unknown.
	knows.down.Store(false)
	knows.reg.Unregister("b1")
	knows.reg.Unregister("b2")
	restarted.reg.Unregister("b2")
	clock.Advance(time.Minute)
	if _, ok, err := c.Route(t.Context(), topic); ok || !errors.Is(err, ErrTopicGone) {
		t.Errorf("Route after its brokers left = %v, %v; want ErrTopicGone", ok, err)
	}
	// A topic nobody ever held: every name server says so.
	if rt, ok, err := c.Route(t.Context(), "never-held"); ok || err != nil {
		t.Errorf("Route of a topic nobody held = %+v, %v, %v; want not found", rt, ok, err)
	}
}

// TestClientRouteWaitsForWarmUp: a name server in its warm-up answers no
// route, and the client does not take the others' "unknown" for certain.
func TestClientRouteWaitsForWarmUp(t *testing.T) {
	warming, other := newTestNameServer(t), newTestNameServer(t)
	warming.reg = NewRegistry(Config{WarmUp: time.Hour})
	mustHeartbeat(t, warming.reg, broker("b1", Topic{"orders", 1}))
	c := NewClient(ClientConfig{Addrs: []string{warming.srv.URL, other.srv.URL}, Interval: 30 * time.Second, Timeout: 2 * time.Second})
	if _, ok, err := c.Route(t.Context(), "orders"); ok || !errors.Is(err, ErrUnavailable) {
		t.Errorf("Route with a name server warming up = %v, %v; want ErrUnavailable", ok, err)
	}
	mustHeartbeat(t, other.reg, broker("b2", Topic{"orders", 1}))
	if rt, ok, err := c.Route(t.Context(), "orders"); !ok || err != nil || len(rt.Brokers) != 1 || rt.Brokers[0].Name != "b2" {
		t.Errorf("Route = %+v, %v, %v; want b2, from the name server that is warm", rt, ok, err)
	}
}

func TestClientCluster(t *testing.T) {
	ns := newTestNameServer(t)
	mustHeartbeat(t, ns.reg, broker("b1", topics(3, 1)...))
	resp, err := http.Get(ns.srv.URL + "/v1/cluster")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got ClusterJSON
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if len(got.Brokers) != 1 || got.Brokers[0].Name != "b1" || got.Brokers[0].Topics != 3 || got.Brokers[0].LastHeartbeat.IsZero() {
		t.Errorf("cluster = %+v", got)
	}
}

func TestClientWithoutNameServers(t *testing.T) {
	c := NewClient(ClientConfig{})
	stop := runClient(t, c, func() BrokerInfo { return broker("b1") })
	stop()
	if _, ok, err := c.Route(t.Context(), "orders"); ok || !errors.Is(err, ErrUnavailable) {
		t.Errorf("Route without name servers = %v, %v; want ErrUnavailable", ok, err)
	}
}

func TestParseAddrs(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"ns1:9876", []string{"http://ns1:9876"}, ""},
		{"ns1:9876;ns2:9876", []string{"http://ns1:9876", "http://ns2:9876"}, ""},
		{" ns1:9876 ; https://ns2 ", []string{"http://ns1:9876", "https://ns2"}, ""},
		{"HTTP://NS1:9876/", []string{"http://NS1:9876"}, ""},
		{"http://10.0.0.1:9876/prefix/", []string{"http://10.0.0.1:9876/prefix"}, ""},
		{"[::1]:9876", []string{"http://[::1]:9876"}, ""},
		{"localhost", []string{"http://localhost"}, ""},

		{"", nil, "none given"},
		{"  ", nil, "none given"},
		{"ns1:9876;", nil, "part 2 is empty"},
		{";ns1:9876", nil, "part 1 is empty"},
		{"ns1;;ns2", nil, "part 2 is empty"},
		{"ns1:9876;ns1:9876", nil, "listed twice"},
		{"ns1:9876;http://ns1:9876/", nil, "listed twice"},
		{"ftp://ns1", nil, "http"},
		{"ns1:", nil, "empty port"},
		{"ns1:99999", nil, "out of range"},
		{"ns1:0", nil, "out of range"},
		{"ns1:abc", nil, "not a URL"},
		{"user@ns1:9876", nil, "user info"},
		{"ns1:9876?x=1", nil, "query"},
		{"ns1:9876#x", nil, "fragment"},
		{"http://", nil, "no host"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAddrs(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseAddrs(%q) = %v, %v; want an error mentioning %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseAddrs(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

// FuzzParseAddrs: never a panic; what is accepted is a list of base URLs
// that parses to itself again.
func FuzzParseAddrs(f *testing.F) {
	for _, s := range []string{"ns1:9876;ns2:9876", "https://ns/p/", "[::1]:1", ";", "a:1;a:1", "%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseAddrs(s)
		if err != nil {
			return
		}
		if len(got) == 0 {
			t.Fatal("no error and no address")
		}
		for _, a := range got {
			u, err := url.Parse(a)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				t.Fatalf("accepted %q, which is not a base URL", a)
			}
		}
		again, err := ParseAddrs(strings.Join(got, ";"))
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("ParseAddrs(%q) = %v; parsing that again gives %v, %v", s, got, again, err)
		}
	})
}

func TestClientBrokers(t *testing.T) {
	ns := newTestNameServer(t)
	mustHeartbeat(t, ns.reg, broker("b1", Topic{"orders", 4}))
	clock := newFakeClock()
	c := NewClient(ClientConfig{Addrs: []string{closedAddr(t), ns.srv.URL}, Interval: 30 * time.Second, Timeout: 2 * time.Second, Now: clock.Now})
	names := func(what string) []string {
		t.Helper()
		list, err := c.Brokers(t.Context())
		if err != nil {
			t.Fatalf("%s: Brokers: %v", what, err)
		}
		var out []string
		for _, b := range list {
			if b.Addr == "" || b.LastHeartbeat.IsZero() {
				t.Errorf("%s: broker %+v lacks its address or heartbeat", what, b)
			}
			out = append(out, b.Name)
		}
		return out
	}
	if got := names("first"); !reflect.DeepEqual(got, []string{"b1"}) {
		t.Fatalf("Brokers = %v, want [b1]", got)
	}
	mustHeartbeat(t, ns.reg, broker("b2", Topic{"orders", 4}))
	clock.Advance(29 * time.Second)
	if got := names("within interval"); !reflect.DeepEqual(got, []string{"b1"}) {
		t.Errorf("within the interval Brokers = %v, want the cached [b1]", got)
	}
	clock.Advance(time.Second)
	if got := names("after interval"); !reflect.DeepEqual(got, []string{"b1", "b2"}) {
		t.Errorf("after the interval Brokers = %v, want [b1 b2]", got)
	}
	ns.srv.Close()
	clock.Advance(time.Hour)
	if got := names("all gone"); !reflect.DeepEqual(got, []string{"b1", "b2"}) {
		t.Errorf("with every name server down Brokers = %v, want the stale [b1 b2]", got)
	}
	fresh := NewClient(ClientConfig{Addrs: []string{closedAddr(t)}, Timeout: 2 * time.Second})
	if _, err := fresh.Brokers(t.Context()); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Brokers with no name server and nothing cached: %v, want ErrUnavailable", err)
	}
}
