//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The anti-entropy of subscriptions (issue 19), with real processes: each
// broker holding a topic pushes its subscription records (tombstones of
// deleted ones too) to the other holders, and every copy ends as the
// record with the highest version.

// syncSink is a webhook endpoint recording each delivery, by path, with
// the time it arrived.
type syncSink struct {
	srv *httptest.Server
	mu  sync.Mutex
	got map[string][]sinkHit // guarded by mu
}

type sinkHit struct {
	body string
	at   time.Time
	sig  string // webhook-signature
}

func newSyncSink(t *testing.T) *syncSink {
	s := &syncSink{got: map[string][]sinkHit{}}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.got[r.URL.Path] = append(s.got[r.URL.Path], sinkHit{body: string(body), at: time.Now(), sig: r.Header.Get("webhook-signature")})
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *syncSink) hits(path string) []sinkHit {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sinkHit(nil), s.got[path]...)
}

// missing is the bodies of want that path has not received.
func (s *syncSink) missing(path string, want []string) []string {
	got := map[string]bool{}
	for _, h := range s.hits(path) {
		got[h.body] = true
	}
	var out []string
	for _, w := range want {
		if !got[w] {
			out = append(out, w)
		}
	}
	return out
}

// waitDelivered waits until path has received every body of want.
func (s *syncSink) waitDelivered(t *testing.T, path string, want []string) {
	t.Helper()
	clEventually(t, fmt.Sprintf("%d messages delivered to %s", len(want), path), func() (bool, string) {
		m := s.missing(path, want)
		return len(m) == 0, fmt.Sprintf("missing %d: %v", len(m), clFirst(m, 5))
	})
}

// publishVia publishes bodies to topic through the broker at url, each
// answered 201.
func publishVia(t *testing.T, url, topic string, bodies ...string) {
	t.Helper()
	for _, b := range bodies {
		if a := clDo(t, "POST", url+"/v1/topics/"+topic+"/messages", map[string]string{"Content-Type": "text/plain"}, []byte(b)); a.status != 201 {
			t.Fatalf("publish %q through %s: %s", b, url, a)
		}
	}
}

func bodiesOf(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}

// subJSON is the part of a subscription the tests compare.
type subJSON struct {
	ID         string `json:"id"`
	Filter     string `json:"filter"`
	MaxRetries int    `json:"max_retries"`
	State      string `json:"state"`
	Version    string `json:"version"`
}

// copyOn is broker name's own copy of subscription id (asked with
// Postbus-Forwarded-By, so it answers for itself): its status and body.
func (fc *faultCluster) copyOn(name, id string) (int, subJSON) {
	a, err := clTry("GET", fc.url(name)+"/v1/subscriptions/"+id, map[string]string{"Postbus-Forwarded-By": "test"}, nil)
	if err != nil {
		return 0, subJSON{}
	}
	var s subJSON
	if err := json.Unmarshal(a.body, &s); err != nil {
		fc.t.Fatalf("decode: %v", err)
	}
	return a.status, s
}

func createSub(t *testing.T, url, body string) subJSON {
	t.Helper()
	a := clDo(t, "POST", url+"/v1/subscriptions", nil, []byte(body))
	if a.status != 201 {
		t.Fatalf("create subscription %s: %s", body, a)
	}
	var s subJSON
	if err := json.Unmarshal(a.body, &s); err != nil {
		t.Fatalf("decode: %v", err)
	}
	return s
}

// TestClusterSyncCreateMissedByRestartedNameServer (fault 2): a name
// server restarted empty, with no warm-up (as inside `postbus dev`),
// routes a topic to the holders that have re-registered only; a
// subscription created then exists on those only, and used to stay so:
// the other holder's messages were never delivered. Now the holder that
// was missing gets the subscription when it registers again, and
// delivers the messages stored on it since the subscription's creation.
func TestClusterSyncCreateMissedByRestartedNameServer(t *testing.T) {
	sink := newSyncSink(t)
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b"}, "expiry=20s", "--forward-timeout", "1s",
		"--subscription-sync-interval", "60s") // longer than the test: the exchange on re-registration repairs it
	fc.putTopic("orders", "broker-a", "broker-b")

	// broker-b cannot re-register while the name server restarts.
	stopProc(t, fc.brokers["broker-b"])
	ns := fc.ns[0]
	addr := strings.TrimPrefix(ns.url, "http://")
	ns.cmd.Process.Signal(syscall.SIGKILL)
	<-ns.done
	fc.ns[0] = start(t, "namesrv", "--broker-expiry", "20s", "--scan-interval", "100ms", "--warm-up", "0s", "--addr", addr)
	fc.waitRoute("orders", "broker-a")

	// Created while the route names broker-a alone: on broker-a only (a
	// create that still reached for the stopped broker-b is undone, 502,
	// and retried).
	var sub subJSON
	clEventually(t, "the subscription's create through broker-a", func() (bool, string) {
		a := clDo(t, "POST", fc.url("broker-a")+"/v1/subscriptions", nil, []byte(`{"group":"g2","topic":"orders","url":"`+sink.srv.URL+`/f2"}`))
		if err := json.Unmarshal(a.body, &sub); err != nil {
			return false, "decode: " + err.Error()
		}
		return a.status == 201, a.String()
	})
	fc.brokers["broker-b"].cmd.Process.Signal(syscall.SIGCONT)

	// Stored on broker-b after the subscription was created, before or
	// after broker-b got it: all delivered.
	onB := bodiesOf("f2-b", 5)
	publishVia(t, fc.url("broker-b"), "orders", onB...)
	took := clEventually(t, "broker-b to get the subscription", func() (bool, string) {
		st, got := fc.copyOn("broker-b", sub.ID)
		return st == 200 && got.Version == sub.Version, fmt.Sprintf("%d %+v, want version %s", st, got, sub.Version)
	})
	t.Logf("broker-b had the subscription %s after broker-b resumed", took.Round(time.Millisecond))
	sink.waitDelivered(t, "/f2", onB)
	onA := bodiesOf("f2-a", 3)
	publishVia(t, fc.url("broker-a"), "orders", onA...)
	sink.waitDelivered(t, "/f2", onA)
	m := clDo(t, "GET", fc.url("broker-b")+"/metrics", nil, nil)
	if !strings.Contains(string(m.body), `postbus_subscription_records_applied_total{kind="live"} 1`) {
		t.Errorf("broker-b's /metrics does not count the record applied")
	}
}

// TestClusterSyncDeleteReachesExpiredHolder (fault 3): a subscription
// deleted while one holder was expired (hung past the broker expiry, or
// killed) answered 204, lived on on that holder when it came back, and
// went on delivering to the deleted webhook. The delete's tombstone
// reaches the holder when it is back: no delivery to the deleted webhook
// later than the delete's 204 plus one sync interval (the holder is back
// at once), none of what is published after it lost its copy, while the
// subscription kept delivers everything.
func TestClusterSyncDeleteReachesExpiredHolder(t *testing.T) {
	for _, how := range []string{"hung", "killed"} {
		t.Run(how, func(t *testing.T) { testDeleteReachesExpiredHolder(t, how) })
	}
}

func testDeleteReachesExpiredHolder(t *testing.T, how string) {
	const interval = 8 * time.Second
	sink := newSyncSink(t)
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-c"}, "expiry=1s", "--forward-timeout", "1s",
		"--subscription-sync-interval", interval.String())
	fc.putTopic("orders", "broker-a", "broker-c")
	dead := createSub(t, fc.url("broker-a"), `{"group":"dead","topic":"orders","url":"`+sink.srv.URL+`/dead","start_from":"earliest"}`)
	createSub(t, fc.url("broker-a"), `{"group":"live","topic":"orders","url":"`+sink.srv.URL+`/live","start_from":"earliest"}`)
	before := append(bodiesOf("f3-a", 4), bodiesOf("f3-c", 4)...)
	publishVia(t, fc.url("broker-a"), "orders", before[:4]...)
	publishVia(t, fc.url("broker-c"), "orders", before[4:]...)
	sink.waitDelivered(t, "/dead", before)
	sink.waitDelivered(t, "/live", before)

	// broker-c hangs, or dies, until the name server expires it.
	c := fc.brokers["broker-c"]
	if how == "hung" {
		stopProc(t, c)
	} else {
		fc.kill("broker-c")
	}
	clEventually(t, "the name server to expire broker-c", func() (bool, string) {
		a, err := clTry("GET", fc.ns[0].url+"/v1/cluster", nil, nil)
		return err == nil && !strings.Contains(string(a.body), "broker-c"), fmt.Sprint(a, err)
	})
	if a := clDo(t, "DELETE", fc.url("broker-a")+"/v1/subscriptions/"+dead.ID, nil, nil); a.status != 204 {
		t.Fatalf("delete with broker-c expired: %s", a)
	}
	deleted := time.Now()
	if how == "hung" {
		c.cmd.Process.Signal(syscall.SIGCONT)
	} else {
		// The same command line, at the same address, on the same data.
		args := slices.Clone(c.cmd.Args[1 : len(c.cmd.Args)-2]) // without --log-format json
		i := slices.Index(args, "--addr")
		args[i+1] = strings.TrimPrefix(c.url, "http://")
		fc.brokers["broker-c"] = start(t, args...)
	}

	// Stored on broker-c once it is back.
	after := bodiesOf("f3-back", 10)
	publishVia(t, fc.url("broker-c"), "orders", after...)
	took := clEventually(t, "broker-c to lose the deleted subscription", func() (bool, string) {
		st, got := fc.copyOn("broker-c", dead.ID)
		return st == 404, fmt.Sprintf("%d %+v", st, got)
	})
	t.Logf("broker-c lost the deleted subscription %s after %d messages were published through it", took.Round(time.Millisecond), len(after))
	if took > interval {
		t.Errorf("broker-c, back, kept the deleted subscription for %s, more than one sync interval (%s)", took.Round(time.Millisecond), interval)
	}
	sink.waitDelivered(t, "/live", after)
	later := bodiesOf("f3-later", 5)
	publishVia(t, fc.url("broker-c"), "orders", later...)
	sink.waitDelivered(t, "/live", later)

	late, back := 0, 0
	for _, h := range sink.hits("/dead") {
		if strings.HasPrefix(h.body, "f3-back") {
			back++
		}
		if h.at.After(deleted.Add(interval)) {
			late++
			t.Errorf("%q delivered to the deleted subscription %s after its delete's 204", h.body, h.at.Sub(deleted).Round(time.Millisecond))
		}
	}
	if m := sink.missing("/dead", later); len(m) != len(later) {
		t.Errorf("messages published after broker-c lost the subscription were delivered to it: %d of %d", len(later)-len(m), len(later))
	}
	t.Logf("deliveries to the deleted subscription after the delete: %d of the %d published through broker-c as it came back, %d late", back, len(after), late)
	m := clDo(t, "GET", fc.url("broker-c")+"/metrics", nil, nil)
	if !strings.Contains(string(m.body), `postbus_subscription_records_applied_total{kind="tombstone"} 1`) {
		t.Errorf("broker-c's /metrics does not count the tombstone applied")
	}
}

// TestClusterSyncBrokerJoinsTopic: a broker that creates its own copy of
// a topic (here a PUT answered by that broker alone) had none of the
// topic's subscriptions, so its messages were never pushed. It gets them
// from the other holders once it is in the topic's route.
func TestClusterSyncBrokerJoinsTopic(t *testing.T) {
	sink := newSyncSink(t)
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b"}, "--subscription-sync-interval", "60s")
	fc.putTopic("orders", "broker-a")
	sub := createSub(t, fc.url("broker-a"), `{"group":"j","topic":"orders","url":"`+sink.srv.URL+`/join","start_from":"earliest"}`)
	paused := createSub(t, fc.url("broker-a"), `{"group":"p","topic":"orders","url":"`+sink.srv.URL+`/paused","start_from":"earliest"}`)
	if a := clDo(t, "POST", fc.url("broker-a")+"/v1/subscriptions/"+paused.ID+"/pause", nil, nil); a.status != 200 {
		t.Fatalf("pause: %s", a)
	}
	if a := clDo(t, "PUT", fc.url("broker-b")+"/v1/topics/orders", map[string]string{"Postbus-Forwarded-By": "test"}, []byte(`{"queues":2}`)); a.status != 201 {
		t.Fatalf("PUT orders on broker-b alone: %s", a)
	}
	fc.waitRoute("orders", "broker-a", "broker-b")
	clEventually(t, "broker-b to get both subscriptions", func() (bool, string) {
		st1, got1 := fc.copyOn("broker-b", sub.ID)
		st2, got2 := fc.copyOn("broker-b", paused.ID)
		return st1 == 200 && st2 == 200 && got2.State == "paused", fmt.Sprintf("%d %+v; %d %+v", st1, got1, st2, got2)
	})
	onB := bodiesOf("join-b", 5)
	publishVia(t, fc.url("broker-b"), "orders", onB...)
	sink.waitDelivered(t, "/join", onB)
	if h := sink.hits("/paused"); len(h) > 0 {
		t.Errorf("the paused subscription delivered %d messages on the broker that joined", len(h))
	}
}

// TestClusterSyncPlacementCopiesRecords: a PUT that adds a broker to a
// topic gives it the topic's subscriptions as the records themselves:
// the same version (so the exchange has nothing to repair, and no copy
// made anew replaces the others), the paused state, and the secrets a
// rotation keeps signing.
func TestClusterSyncPlacementCopiesRecords(t *testing.T) {
	sink := newSyncSink(t)
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b"}, "--subscription-sync-interval", "1s")
	fc.putTopic("orders", "broker-a")
	sub := createSub(t, fc.url("broker-a"), `{"group":"pl","topic":"orders","url":"`+sink.srv.URL+`/placed","start_from":"earliest"}`)
	if a := clDo(t, "POST", fc.url("broker-a")+"/v1/subscriptions/"+sub.ID+"/rotate-secret", nil, nil); a.status != 200 {
		t.Fatalf("rotate: %s", a)
	}
	if a := clDo(t, "POST", fc.url("broker-a")+"/v1/subscriptions/"+sub.ID+"/pause", nil, nil); a.status != 200 {
		t.Fatalf("pause: %s", a)
	}
	_, onA := fc.copyOn("broker-a", sub.ID)
	if a := clDo(t, "PUT", fc.url("broker-a")+"/v1/topics/orders", nil, []byte(`{"queues":2,"brokers":["broker-a","broker-b"]}`)); a.status != 200 && a.status != 201 {
		t.Fatalf("PUT orders on both: %s", a)
	}
	st, onB := fc.copyOn("broker-b", sub.ID)
	if st != 200 || onB != onA {
		t.Fatalf("broker-b's copy right after the PUT: %d %+v; want broker-a's record %+v", st, onB, onA)
	}
	if a := clDo(t, "POST", fc.url("broker-a")+"/v1/subscriptions/"+sub.ID+"/resume", nil, nil); a.status != 200 {
		t.Fatalf("resume: %s", a)
	}
	onBroker := bodiesOf("placed-b", 3)
	publishVia(t, fc.url("broker-b"), "orders", onBroker...)
	sink.waitDelivered(t, "/placed", onBroker)
	for _, h := range sink.hits("/placed") {
		if n := strings.Count(h.sig, "v1,"); n != 2 {
			t.Errorf("%q signed with %d secrets (%s); want the current one and the one rotated out", h.body, n, h.sig)
		}
	}
	// Several exchanges later, still one record everywhere.
	_, a1 := fc.copyOn("broker-a", sub.ID)
	first := pushesOK(t, fc.url("broker-a"))
	clEventually(t, "two more pushes from broker-a", func() (bool, string) {
		n := pushesOK(t, fc.url("broker-a"))
		return n >= first+2, fmt.Sprintf("%g pushes, from %g", n, first)
	})
	if _, b1 := fc.copyOn("broker-b", sub.ID); b1 != a1 {
		t.Errorf("after the exchanges: broker-a %+v, broker-b %+v", a1, b1)
	}
}

// TestClusterSyncConcurrentUpdatesConverge: changes of one subscription
// made at once on different brokers, each on its own copy only (as when
// the others could not be reached), end as one record everywhere: the one
// with the highest version. Changes coordinated through two brokers at
// once converge too.
func TestClusterSyncConcurrentUpdatesConverge(t *testing.T) {
	names := []string{"broker-a", "broker-b", "broker-c"}
	fc := startFaultCluster(t, 1, names, "--subscription-sync-interval", "1s")
	fc.putTopic("orders", names...)
	sub := createSub(t, fc.url("broker-a"), `{"group":"cc","topic":"orders"}`)

	converged := func(what string) subJSON {
		var first subJSON
		clEventually(t, what, func() (bool, string) {
			var seen []string
			for i, n := range names {
				st, got := fc.copyOn(n, sub.ID)
				seen = append(seen, fmt.Sprintf("%s: %d %+v", n, st, got))
				if st != 200 {
					return false, strings.Join(seen, "; ")
				}
				if i == 0 {
					first = got
				} else if got != first {
					return false, strings.Join(seen, "; ")
				}
			}
			return true, strings.Join(seen, "; ")
		})
		return first
	}

	// Each broker changes its own copy alone (Postbus-Forwarded-By).
	answers := make([]subJSON, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Go(func() {
			body := fmt.Sprintf(`{"filter":"tag-%d","max_retries":%d}`, i, i+1)
			a, err := clTry("PATCH", fc.url(n)+"/v1/subscriptions/"+sub.ID, map[string]string{"Postbus-Forwarded-By": "test"}, []byte(body))
			if err != nil || a.status != 200 {
				t.Errorf("PATCH on %s alone: %v %v", n, a, err)
				return
			}
			if err := json.Unmarshal(a.body, &answers[i]); err != nil {
				t.Errorf("decode: %v", err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	win := answers[0]
	for _, a := range answers[1:] {
		if versionAfter(a.Version, win.Version) {
			win = a
		}
	}
	got := converged("every copy to be the same record")
	if got.Filter != win.Filter || got.MaxRetries != win.MaxRetries || got.Version != win.Version {
		t.Errorf("converged on %+v, want the change with the highest version, %+v (changes: %+v)", got, win, answers)
	}

	// Two coordinated changes at once, through two brokers.
	for i, via := range []string{"broker-a", "broker-c"} {
		wg.Go(func() {
			body := fmt.Sprintf(`{"filter":"both-%d"}`, i)
			if a, err := clTry("PATCH", fc.url(via)+"/v1/subscriptions/"+sub.ID, nil, []byte(body)); err != nil || a.status != 200 {
				t.Errorf("PATCH through %s: %v %v", via, a, err)
			}
		})
	}
	wg.Wait()
	got = converged("every copy to be the same record after coordinated changes")
	if !strings.HasPrefix(got.Filter, "both-") {
		t.Errorf("converged on %+v, want one of the coordinated changes", got)
	}
}

// pushesOK is how many pushes of subscription records the broker at url
// has had taken.
func pushesOK(t *testing.T, url string) float64 {
	t.Helper()
	var v float64
	if _, err := fmt.Sscan(metricValue(t, url, `postbus_subscription_sync_total{result="ok"}`), &v); err != nil {
		t.Fatalf("%s/metrics: postbus_subscription_sync_total{result=\"ok\"}: %v", url, err)
	}
	return v
}

// versionAfter reports whether version a (At@By) wins over b: higher At,
// then greater broker name.
func versionAfter(a, b string) bool {
	var atA, atB int64
	byA, byB := "", ""
	if i := strings.IndexByte(a, '@'); i > 0 {
		_, _ = fmt.Sscan(a[:i], &atA) // a malformed version compares as 0, and loses
		byA = a[i+1:]
	}
	if i := strings.IndexByte(b, '@'); i > 0 {
		_, _ = fmt.Sscan(b[:i], &atB)
		byB = b[i+1:]
	}
	if atA != atB {
		return atA > atB
	}
	return byA > byB
}
