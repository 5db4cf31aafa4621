//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// restartBroker starts broker name again with its command line, at its
// address, on its data directory (after fc.kill).
func (fc *faultCluster) restartBroker(name string) {
	fc.t.Helper()
	c := fc.brokers[name]
	args := slices.Clone(c.cmd.Args[1 : len(c.cmd.Args)-2]) // without --log-format json
	i := slices.Index(args, "--addr")
	args[i+1] = strings.TrimPrefix(c.url, "http://")
	fc.brokers[name] = start(fc.t, args...)
}

// TestClusterTopicDeleteReachesExpiredHolder (issue 19, F10): a topic
// deleted while one of its holders was down (expired by the name
// servers) answered 204, came back with that holder, took publishes
// through every broker (routed to it) and pushed them to the deleted
// topic's subscription. A topic delete now leaves a tombstone that the
// brokers exchange like subscriptions' records: the holder that missed
// the delete drops its copy once back, and the topic stays deleted.
func TestClusterTopicDeleteReachesExpiredHolder(t *testing.T) {
	const interval = 8 * time.Second
	sink := newSyncSink(t)
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b", "broker-c"}, "expiry=1s", "--forward-timeout", "1s",
		"--subscription-sync-interval", interval.String())
	fc.putTopic("doomed", "broker-a", "broker-b", "broker-c")
	fc.putTopic("kept", "broker-a", "broker-c")
	createSub(t, fc.url("broker-a"), `{"group":"g","topic":"doomed","url":"`+sink.srv.URL+`/doomed","start_from":"earliest"}`)
	createSub(t, fc.url("broker-a"), `{"group":"g","topic":"kept","url":"`+sink.srv.URL+`/kept","start_from":"earliest"}`)
	before := bodiesOf("f10-before", 6)
	for i, b := range before {
		publishVia(t, fc.url([]string{"broker-a", "broker-b", "broker-c"}[i%3]), "doomed", b)
	}
	sink.waitDelivered(t, "/doomed", before)

	fc.kill("broker-c")
	clEventually(t, "the name server to expire broker-c", func() (bool, string) {
		a, err := clTry("GET", fc.ns[0].url+"/v1/cluster", nil, nil)
		return err == nil && !strings.Contains(string(a.body), "broker-c"), fmt.Sprint(a, err)
	})
	if a := clDo(t, "DELETE", fc.url("broker-a")+"/v1/topics/doomed", nil, nil); a.status != 204 {
		t.Fatalf("delete of doomed with broker-c expired: %s", a)
	}
	deleted := time.Now()
	fc.restartBroker("broker-c")
	ownCopy := func(name, topic string) int {
		a, err := clTry("GET", fc.url(name)+"/v1/topics/"+topic, map[string]string{"Postbus-Forwarded-By": "test"}, nil)
		if err != nil {
			return 0
		}
		return a.status
	}
	took := clEventually(t, "broker-c to drop its copy of the deleted topic", func() (bool, string) {
		st := ownCopy("broker-c", "doomed")
		return st == 404, fmt.Sprint(st)
	})
	t.Logf("broker-c dropped the deleted topic %s after it was started again", took.Round(time.Millisecond))
	if took > interval {
		t.Errorf("broker-c, back, kept the deleted topic for %s, more than one sync interval (%s)", took.Round(time.Millisecond), interval)
	}
	fc.waitRoute("kept", "broker-a", "broker-c")
	clEventually(t, "the name server to forget doomed", func() (bool, string) {
		st, raw := routeStatus(fc.ns[0], "doomed")
		return st == 404, raw
	})
	for _, via := range []string{"broker-a", "broker-b", "broker-c"} {
		a := clDo(t, "POST", fc.url(via)+"/v1/topics/doomed/messages", map[string]string{"Content-Type": "text/plain"}, []byte("f10-after-"+via))
		if code, _ := problemOf(a); a.status != 404 || code != "topic_not_found" {
			t.Errorf("publish to the deleted topic through %s: %s; want 404 topic_not_found", via, a)
		}
		if st := clDo(t, "GET", fc.url(via)+"/v1/topics/doomed", nil, nil).status; st != 404 {
			t.Errorf("GET the deleted topic through %s: %d; want 404", via, st)
		}
	}
	// The topic kept on broker-c is untouched, and delivers.
	kept := bodiesOf("f10-kept", 4)
	publishVia(t, fc.url("broker-c"), "kept", kept...)
	sink.waitDelivered(t, "/kept", kept)
	// A message delivered before the delete may come again from broker-c
	// after its SIGKILL (at least once); nothing else may.
	for _, h := range sink.hits("/doomed") {
		if h.at.After(deleted) && !slices.Contains(before, h.body) {
			t.Errorf("%q delivered to the deleted topic's subscription %s after the delete's 204", h.body, h.at.Sub(deleted).Round(time.Millisecond))
		}
	}
	m := clDo(t, "GET", fc.url("broker-c")+"/metrics", nil, nil)
	if !strings.Contains(string(m.body), `postbus_topic_tombstones_applied_total 1`) {
		t.Errorf("broker-c's /metrics does not count the topic tombstone applied: %s", grepLines(string(m.body), "postbus_topic_tombstones"))
	}
}

// grepLines is the lines of text that contain s.
func grepLines(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestClusterRestartedBrokerPushesNoDeletedSubscription: a broker killed
// with retries of a subscription due, and restarted after the
// subscription was deleted, started pushing at once and delivered them
// before its first exchange with the other brokers told it of the delete
// (TestClusterChaos -chaos.subfaults, seed 204: deliveries 2s after the
// delete's answer). Its pushes now start after that exchange.
func TestClusterRestartedBrokerPushesNoDeletedSubscription(t *testing.T) {
	var (
		mu   sync.Mutex
		hits []time.Time
	)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits = append(hits, time.Now())
		mu.Unlock()
		w.WriteHeader(http.StatusServiceUnavailable) // always retried
	}))
	t.Cleanup(hook.Close)
	hitsSince := func(at time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, h := range hits {
			if h.After(at) {
				n++
			}
		}
		return n
	}
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-c"}, "expiry=1s", "--forward-timeout", "1s")
	fc.putTopic("orders", "broker-a", "broker-c")
	sub := createSub(t, fc.url("broker-a"), `{"group":"dead","topic":"orders","url":"`+hook.URL+`/dead","start_from":"earliest","retry_delays":["100ms"],"max_retries":100}`)
	publishVia(t, fc.url("broker-c"), "orders", bodiesOf("due", 20)...)
	clEventually(t, "broker-c's deliveries to fail and be retried", func() (bool, string) {
		n := hitsSince(time.Time{})
		return n >= 60, fmt.Sprint(n, " attempts")
	})
	fc.kill("broker-c")
	clEventually(t, "the name server to expire broker-c", func() (bool, string) {
		a, err := clTry("GET", fc.ns[0].url+"/v1/cluster", nil, nil)
		return err == nil && !strings.Contains(string(a.body), "broker-c"), fmt.Sprint(a, err)
	})
	if a := clDo(t, "DELETE", fc.url("broker-a")+"/v1/subscriptions/"+sub.ID, nil, nil); a.status != 204 {
		t.Fatalf("delete with broker-c expired: %s", a)
	}
	deleted := time.Now()
	fc.restartBroker("broker-c")
	clEventually(t, "broker-c to lose the deleted subscription", func() (bool, string) {
		st, got := fc.copyOn("broker-c", sub.ID)
		return st == 404, fmt.Sprintf("%d %+v", st, got)
	})
	// Its retries were due at once: one more publish, and a round trip to
	// broker-c, give any delivery that would come the time to.
	publishVia(t, fc.url("broker-c"), "orders", "after")
	if n := hitsSince(deleted.Add(100 * time.Millisecond)); n > 0 {
		t.Errorf("broker-c, restarted after the subscription was deleted, delivered it %d times", n)
	}
}

// TestClusterSubscriptionCreateAnswerIsHonest: a subscription create that
// reached a hung holder (sent, never answered) was undone on the holders
// that answered and reported "created nowhere", though the hung holder
// might create it once continued and deliver it for good. The undo now
// reaches the hung holder too, or, failing that, leaves tombstones that
// the anti-entropy brings to it; and the answer says the subscription may
// or may not exist there, naming its id.
func TestClusterSubscriptionCreateAnswerIsHonest(t *testing.T) {
	sink := newSyncSink(t)
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b"}, "expiry=30s", "--forward-timeout", "1s",
		"--subscription-sync-interval", "2s")
	fc.putTopic("orders", "broker-a", "broker-b")
	b := fc.brokers["broker-b"]
	stopProc(t, b)
	a := clDo(t, "POST", fc.url("broker-a")+"/v1/subscriptions", nil, []byte(`{"group":"half","topic":"orders","url":"`+sink.srv.URL+`/half","start_from":"earliest"}`))
	if err := b.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	t.Logf("create with broker-b hung: %s", a)
	code, detail := problemOf(a)
	if a.status != 502 || code != "cluster_partial" || strings.Contains(detail, "created nowhere") || !strings.Contains(detail, "may or may not") {
		t.Fatalf("create with broker-b hung: %s; want 502 cluster_partial saying it may or may not have been created on broker-b", a)
	}
	id := regexp.MustCompile(`subscription (\S+) may or may not`).FindStringSubmatch(detail)
	if id == nil {
		t.Fatalf("the answer does not name the subscription's id: %s", detail)
	}
	clEventually(t, "no broker to hold the half-created subscription", func() (bool, string) {
		sa, _ := fc.copyOn("broker-a", id[1])
		sb, _ := fc.copyOn("broker-b", id[1])
		return sa == 404 && sb == 404, fmt.Sprint(sa, sb)
	})
	publishVia(t, fc.url("broker-b"), "orders", bodiesOf("after", 5)...)
	createSub(t, fc.url("broker-a"), `{"group":"live","topic":"orders","url":"`+sink.srv.URL+`/live","start_from":"earliest"}`)
	sink.waitDelivered(t, "/live", bodiesOf("after", 5))
	if n := len(sink.hits("/half")); n > 0 {
		t.Errorf("the subscription answered as not created delivered %d messages", n)
	}
}

// TestClusterRestartedHolderTakesNoWriteBeforeDeletes (attack F1): a
// holder killed, its topic deleted meanwhile through another broker, and
// restarted while that broker was hung, answered publishes into its copy
// 201, then dropped them all when the other broker's tombstone reached
// it. A broker now takes no write before it has exchanged topic deletes
// with every broker the name servers list (waiting, for at most the hop
// timeout, for one that does not answer): the publishes wait, the copy is
// deleted first, and every publish answered 201 stays readable.
func TestClusterRestartedHolderTakesNoWriteBeforeDeletes(t *testing.T) {
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b"}, "expiry=60s", "--forward-timeout", "6s")
	fc.putTopic("doomed", "broker-a", "broker-b")
	fc.kill("broker-b")
	if a := clDo(t, "DELETE", fc.url("broker-a")+"/v1/topics/doomed", nil, nil); a.status != 204 && a.status != 502 {
		t.Fatalf("delete of doomed with broker-b down: %s", a)
	}
	hung := fc.brokers["broker-a"]
	stopProc(t, hung)
	bURL := fc.url("broker-b") // the same once it is started again
	// Publishes straight to broker-b while broker-a is hung, and after.
	type answer struct {
		status int
		id     string
	}
	var (
		mu      sync.Mutex
		answers []answer
		wg      sync.WaitGroup
	)
	end := time.Now().Add(5 * time.Second)
	for w := range 4 {
		wg.Go(func() {
			for i := 0; time.Now().Before(end); i++ {
				a, err := clTry("POST", bURL+"/v1/topics/doomed/messages", map[string]string{"Content-Type": "text/plain"},
					[]byte(fmt.Sprintf("f1-%d-%d", w, i)))
				if err != nil {
					time.Sleep(20 * time.Millisecond) // not listening yet
					continue
				}
				var m struct {
					ID string `json:"msg_id"`
				}
				if a.status == 201 {
					if err := json.Unmarshal(a.body, &m); err != nil {
						t.Errorf("201 that is not a message: %s", a)
					}
				}
				mu.Lock()
				answers = append(answers, answer{a.status, m.ID})
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	// broker-a stays hung through broker-b's start and the first of the
	// publishes, for less than the hop timeout.
	resumed := time.AfterFunc(2*time.Second, func() { hung.cmd.Process.Signal(syscall.SIGCONT) })
	defer resumed.Stop()
	fc.restartBroker("broker-b") // returns once broker-b is ready
	wg.Wait()
	clEventually(t, "broker-b to drop its copy of the deleted topic", func() (bool, string) {
		a, err := clTry("GET", fc.url("broker-b")+"/v1/topics/doomed", map[string]string{"Postbus-Forwarded-By": "test"}, nil)
		return err == nil && a.status == 404, fmt.Sprint(a, err)
	})
	statuses := map[int]int{}
	for _, a := range answers {
		statuses[a.status]++
		if a.status != 201 {
			continue
		}
		for _, via := range []string{"broker-a", "broker-b"} {
			if g := clDo(t, "GET", fc.url(via)+"/v1/messages/"+a.id, nil, nil); g.status != 200 {
				t.Errorf("message %s answered 201 by broker-b, then through %s: %s", a.id, via, g)
			}
		}
	}
	t.Logf("publishes to broker-b by status: %v", statuses)
	if statuses[201] > 0 {
		t.Errorf("broker-b acknowledged %d publishes into the copy of a topic deleted in the cluster", statuses[201])
	}
	if statuses[404]+statuses[503] == 0 {
		t.Errorf("no publish was answered while broker-b learnt of the delete: %v", statuses)
	}
	if logs := fc.brokers["broker-b"].Logs(); strings.Contains(logs, "the copy is kept") {
		t.Errorf("broker-b kept its copy rather than taking the delete before any write: %s", grepLines(logs, "the copy is kept"))
	}
}

// TestClusterPausedHolderTakesNoQueuedWrite (attack G1, G8): publishes
// that reached a broker while it was paused (SIGSTOP), and a topic was
// deleted through another, were served the instant it resumed, before its
// watchdog noticed the pause: into its copy of the deleted topic, which
// then came back with its old messages. A write served after a pause now
// notices it itself and waits for the exchange of topic deletes.
func TestClusterPausedHolderTakesNoQueuedWrite(t *testing.T) {
	fc := startFaultCluster(t, 1, []string{"broker-a", "broker-b"}, "expiry=60s", "--forward-timeout", "2s")
	fc.putTopic("doomed", "broker-a", "broker-b")
	publishVia(t, fc.url("broker-b"), "doomed", "before-1", "before-2")
	paused := fc.brokers["broker-b"]
	stopProc(t, paused)
	if a := clDo(t, "DELETE", fc.url("broker-a")+"/v1/topics/doomed", nil, nil); a.status != 204 && a.status != 502 {
		t.Fatalf("delete of doomed with broker-b paused: %s", a)
	}
	var wg sync.WaitGroup
	answers := make(chan clAnswer, 6)
	for i := range 6 {
		wg.Go(func() {
			a, err := clTry("POST", paused.url+"/v1/topics/doomed/messages", map[string]string{"Content-Type": "text/plain"}, []byte(fmt.Sprint("queued-", i)))
			if err != nil {
				t.Errorf("publish queued on the paused broker: %v", err)
				return
			}
			answers <- a
		})
	}
	time.Sleep(4 * time.Second) // paused for longer than the watchdog's 3 s
	paused.cmd.Process.Signal(syscall.SIGCONT)
	wg.Wait()
	close(answers)
	for a := range answers {
		if a.status == 201 {
			t.Errorf("a publish queued while broker-b was paused went into its copy of the deleted topic: %s", a)
		}
	}
	if logs := paused.Logs(); strings.Contains(logs, "the copy is kept") {
		t.Errorf("broker-b kept its copy of the deleted topic: %s", grepLines(logs, "the copy is kept"))
	}
	a, err := clTry("GET", paused.url+"/v1/topics/doomed", map[string]string{"Postbus-Forwarded-By": "test"}, nil)
	if err != nil || a.status != 404 {
		t.Errorf("broker-b's copy of the deleted topic after the pause: %v %v; want 404", a, err)
	}
}
