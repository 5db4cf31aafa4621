//go:build unix

package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postbus/postbus/push"
)

// The cluster fault test (issue 19): two name servers and four brokers as
// real processes, publishes (single and batch, some sharded) through every
// broker, push subscriptions created, changed, paused, resumed and deleted
// through random brokers, pull groups pulling and acking through random
// brokers, and a seeded random schedule of faults: brokers SIGKILLed and
// restarted on their data, brokers hung with SIGSTOP then continued, name
// servers SIGKILLed and restarted empty, name servers hung. After the
// faults every process is brought back and the bus gets a bounded time to
// settle; then:
//
//   - lost: an acknowledged (201) message not readable by id through any
//     broker, or read back with another topic or body;
//   - undelivered: an acknowledged message not delivered (answered 2xx by
//     the webhook) to a subscription that was created (201) before the
//     publish was sent, never deleted, and whose every filter, as created
//     and as any PATCH tried to set it, matches the message's tag; or not
//     pulled by its topic's pull group;
//   - after delete: a delivery that reached the webhook more than
//     chaosDeleteGrace after its subscription's DELETE was answered 204;
//   - false: a delivery or pull of something never published, of a
//     publish answered as not stored (4xx, or 5xx "nothing was stored"),
//     of a message under another id than its 201 gave (stored twice), with
//     another body, to a subscription whose create was answered as not
//     created, of a tag no filter of the subscription ever matched, or with
//     a signature its subscription's secret does not verify; a message
//     answered as not stored that a query by key finds; a 201 naming a
//     broker that does not hold the topic;
//   - acked again: a message pulled again after an ack answered "acked",
//     its broker not SIGKILLed in between.
//
// Duplicate deliveries and pulls are counted, not failed: delivery is at
// least once, and a SIGKILLed broker repeats what it had not persisted.
//
// Subscriptions on one holder only after a name server restart (fault 2)
// and a deleted subscription coming back (fault 3) are what the
// subscription versions and anti-entropy sync repair; until then they show
// up as undelivered and after-delete counts whenever a subscription
// changes while a broker is down or a name server warms up. Without
// -chaos.subfaults, subscription changes are made only while every process
// is up and both name servers list every broker; with it they race the
// faults.
//
//	go test -run TestClusterChaos ./cmd/postbus/                      # CI: the short form
//	go test -run TestClusterChaos ./cmd/postbus/ -timeout 30m \
//	    -chaos.seeds=10 -chaos.first=100 -chaos.duration=60s [-chaos.subfaults]
var (
	flagChaosSeeds     = flag.Int("chaos.seeds", 0, "run the long form of the cluster fault test with this many seeds (0: the short form)")
	flagChaosFirst     = flag.Uint64("chaos.first", 1, "the long form's first seed")
	flagChaosDuration  = flag.Duration("chaos.duration", 0, "how long faults are injected in each run (0: 25s short, 60s long)")
	flagChaosSubFaults = flag.Bool("chaos.subfaults", false, "change subscriptions while faults are in progress (issue 19 faults 2 and 3)")
)

// chaosMaybeCreated finds, in a subscription create's 502, the id of a
// subscription that may or may not have been created on some holder.
var chaosMaybeCreated = regexp.MustCompile(`subscription (\S+) may or may not have been created`)

// chaosShortSeeds are the seeds of the short form.
var chaosShortSeeds = []uint64{1}

const (
	// chaosDeleteGrace is how long after a DELETE's 204 a delivery of the
	// subscription may still reach the webhook: one sent just before the
	// delete took effect, still on the wire.
	chaosDeleteGrace = 2 * time.Second
	chaosExpiry      = 2 * time.Second
	chaosHeartbeat   = 300 * time.Millisecond
	chaosBrokers     = 4
	// chaosSlow is a publish answer slow enough to count: above two
	// forward timeouts.
	chaosSlow = 2500 * time.Millisecond
	// chaosMaxRequests bounds each publisher's and puller's loop, beside
	// its time.
	chaosMaxRequests = 100_000
)

// chaosTags are the publishes' tags; chaosFilters the filters a push
// subscription is created or patched with. "c" matches "*" only.
var (
	chaosTags    = []string{"a", "b", "c"}
	chaosFilters = []string{"*", "a || b", "a"}
)

func filterMatches(filter, tag string) bool {
	if filter == "*" {
		return true
	}
	for _, f := range strings.Split(filter, "||") {
		if strings.TrimSpace(f) == tag {
			return true
		}
	}
	return false
}

func TestClusterChaos(t *testing.T) {
	seeds := chaosShortSeeds
	duration := 25 * time.Second
	if *flagChaosSeeds > 0 {
		seeds = nil
		for i := range *flagChaosSeeds {
			seeds = append(seeds, *flagChaosFirst+uint64(i))
		}
		duration = 60 * time.Second
	}
	if *flagChaosDuration > 0 {
		duration = *flagChaosDuration
	}
	var rows []string
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			c := runChaos(t, seed, duration, *flagChaosSubFaults)
			rows = append(rows, fmt.Sprintf("%6d %s", seed, c.row()))
		})
	}
	t.Logf("cluster fault test, %s of faults each, subscription changes during faults %v:\n  seed %s\n%s",
		duration, *flagChaosSubFaults, chaosCountsHeader, strings.Join(rows, "\n"))
}

// chaosCounts is what one run found.
type chaosCounts struct {
	faults, subOps                        int
	acked, lost                           int
	refused, notSent, unknown, unknownIn  int
	undelivered, unpulled                 int
	dupPush, dupPull, afterDelete, falses int
	ackedAgain, ackedAgainCrash           int
	slow                                  int
	deliveries, pulls                     int
}

const chaosCountsHeader = "faults subops  acked  lost refused notsent unknown(stored) undelivered unpulled dup-push dup-pull after-delete false acked-again(after-kill) slow deliveries pulls"

func (c chaosCounts) row() string {
	return fmt.Sprintf("%6d %6d %6d %5d %7d %7d %7d(%d) %11d %8d %8d %8d %12d %5d %11d(%d) %4d %10d %5d",
		c.faults, c.subOps, c.acked, c.lost, c.refused, c.notSent, c.unknown, c.unknownIn,
		c.undelivered, c.unpulled, c.dupPush, c.dupPull, c.afterDelete, c.falses, c.ackedAgain, c.ackedAgainCrash, c.slow, c.deliveries, c.pulls)
}

// chaosNode is one process of the cluster, restarted on its address (and
// a broker on its data).
type chaosNode struct {
	name string
	args []string // with --addr: the address it first got
	url  string

	mu      sync.Mutex
	p       *proc
	all     []*proc     // every incarnation, for the logs
	faulted bool        // in a fault now
	kills   []time.Time // when it was SIGKILLed
	down    []chaosSpan // when it was killed or stopped
}

// chaosSpan is a stretch of time; an open one has no end yet.
type chaosSpan struct{ from, to time.Time }

// overlaps reports whether n was killed or stopped at any time within
// [from, to].
func (n *chaosNode) overlaps(from, to time.Time) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.ContainsFunc(n.down, func(s chaosSpan) bool {
		return s.from.Before(to) && (s.to.IsZero() || s.to.After(from))
	})
}

func (n *chaosNode) proc() *proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.p
}

// outcome is what a publish's answer said of one message.
type outcome int

const (
	outAcked   outcome = iota // 201
	outRefused                // 4xx, or a 5xx saying nothing was stored: must not be stored
	outNotSent                // the connection was refused: nothing reached the broker
	outUnknown                // no answer, or "may or may not have been stored"
	outPartial                // in a 502 cluster_partial: stored, per the answer
)

// chaosItem is one message of one publish.
type chaosItem struct {
	key, topic, tag, body string
	sent, answered        time.Time
	out                   outcome
	id, broker            string // from the 201
	answer                string // for failure messages
}

// chaosPub is one publish request, for its latency.
type chaosPub struct {
	via            *chaosNode
	sent, answered time.Time
	answer         string
}

// chaosSub is one create of a push subscription; its webhook path is
// /h/<n>, so a delivery tells which create it belongs to even when the
// create's answer was lost.
type chaosSub struct {
	n                 int
	topic, group      string
	id, secret        string
	created           time.Time // its 201 arrived; zero: not created, or unknown
	refused           bool      // the answer said it was not created
	maybe             bool      // the answer said it may or may not have been created (id known)
	answered          time.Time // the create's answer arrived
	filters           []string  // as created and as every PATCH tried
	stable            bool      // never deleted
	deleteFrom        time.Time // its first DELETE was sent
	deleted           time.Time // a DELETE answered 204 (or 404 after one was tried)
	paused, unsettled bool      // last pause/resume; unsettled: its answer was not 200
}

type chaosDelivery struct {
	path, subID, msgID, tag string
	attempt                 int
	body                    []byte
	header                  http.Header
	at                      time.Time
	status                  int // the webhook's answer
}

// chaosAck is an ack answered "acked".
type chaosAck struct {
	at           time.Time
	via, receipt string
}

type chaosPull struct {
	topic, msgID, receipt, body, via string
	attempt                          int
	sent                             time.Time // the pull request was sent
}

// chaosRun is one seed's cluster and its record of everything sent and
// received.
type chaosRun struct {
	t         *testing.T
	seed      uint64
	subFaults bool
	began     time.Time

	ns, brokers []*chaosNode
	holders     map[string][]string // topic -> brokers
	topics      []string

	// calm is held shared by a fault and exclusively by a subscription
	// change, without -chaos.subfaults.
	calm sync.RWMutex

	mu         sync.Mutex
	pubs       []chaosPub
	items      map[string]*chaosItem // by body
	itemList   []*chaosItem
	subs       []*chaosSub
	deliveries []chaosDelivery
	pulls      []chaosPull
	ackedAt    map[string]chaosAck // msg id -> its first "acked"
	events     []string
	counts     chaosCounts
	problems   []string
}

func (r *chaosRun) logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("%7.2fs ", time.Since(r.began).Seconds())+fmt.Sprintf(format, args...))
}

// problem records one broken invariant; the run fails with all of them.
func (r *chaosRun) problem(kind string, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.problems = append(r.problems, kind+": "+fmt.Sprintf(format, args...))
	if kind == "false" {
		r.counts.falses++
	}
}

var (
	chaosPubClient  = &http.Client{Timeout: 5 * time.Second}
	chaosAPIClient  = &http.Client{Timeout: 8 * time.Second}
	chaosPullClient = &http.Client{Timeout: 8 * time.Second}
)

// refusedDial reports whether err is a refused connection: nothing was
// sent.
func refusedDial(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection refused")
}

func runChaos(t *testing.T, seed uint64, duration time.Duration, subFaults bool) chaosCounts {
	r := &chaosRun{t: t, seed: seed, subFaults: subFaults, began: time.Now(),
		items: map[string]*chaosItem{}, ackedAt: map[string]chaosAck{}, holders: map[string][]string{}}
	replay := fmt.Sprintf("go test -run 'TestClusterChaos' ./cmd/postbus/ -chaos.seeds=1 -chaos.first=%d -chaos.duration=%s -chaos.subfaults=%v",
		seed, duration, subFaults)
	t.Logf("seed %d (replay: %s)", seed, replay)
	rng := rand.New(rand.NewPCG(seed, 19))
	defer func() {
		if t.Failed() {
			t.Logf("seed %d failed (replay: %s)", seed, replay)
			r.dumpLogs()
		}
	}()

	sink := httptest.NewServer(http.HandlerFunc(r.webhook(rand.New(rand.NewPCG(seed, 1)))))
	defer sink.Close()

	// Two name servers, four brokers.
	for i := range 2 {
		n := &chaosNode{name: fmt.Sprintf("ns%d", i+1),
			args: []string{"namesrv", "--broker-expiry", chaosExpiry.String(), "--scan-interval", "100ms", "--warm-up", "600ms"}}
		if err := r.startNode(n); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		r.ns = append(r.ns, n)
	}
	nsList := r.ns[0].url + ";" + r.ns[1].url
	for i := range chaosBrokers {
		name := fmt.Sprintf("broker-%c", 'a'+i)
		n := &chaosNode{name: name, args: []string{"broker", "--data", t.TempDir(), "--namesrv", nsList, "--broker-name", name,
			"--heartbeat-interval", chaosHeartbeat.String(), "--forward-timeout", "1s", "--allow-private-webhooks",
			"--segment-size", "4MiB", "--offset-interval", "1s",
			// What is tested is the cluster, not a full disk: a shared
			// machine's disk past the default 85% would have segments
			// deleted before their retention, and their messages lost.
			"--disk-clean-ratio", "0.99", "--disk-full-ratio", "0.995"}}
		if err := r.startNode(n); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		r.brokers = append(r.brokers, n)
	}
	r.waitHealed(30 * time.Second)

	// Three topics, each on two or three brokers chosen by the seed.
	for i := range 3 {
		topic := fmt.Sprintf("chaos%d", i+1)
		names := make([]string, chaosBrokers)
		for j := range names {
			names[j] = r.brokers[j].name
		}
		rng.Shuffle(len(names), func(a, b int) { names[a], names[b] = names[b], names[a] })
		h := names[:2+rng.IntN(2)]
		slices.Sort(h)
		body, _ := json.Marshal(map[string]any{"queues": 2, "brokers": h})
		a := r.mustCall("PUT", r.brokers[rng.IntN(chaosBrokers)].url+"/v1/topics/"+topic, body)
		if a.status != 201 && a.status != 200 {
			t.Fatalf("seed %d: PUT topic %s on %v: %s", seed, topic, h, a)
		}
		r.holders[topic] = h
		r.topics = append(r.topics, topic)
		// A pull group and a push subscription that live through the run.
		pb, _ := json.Marshal(map[string]any{"group": "pull-" + topic, "topic": topic, "start_from": "earliest", "visibility": "5s"})
		if a := r.mustCall("POST", r.brokers[rng.IntN(chaosBrokers)].url+"/v1/subscriptions", pb); a.status != 201 {
			t.Fatalf("seed %d: create the pull group of %s: %s", seed, topic, a)
		}
		if s := r.createSub(sink.URL, r.brokers[rng.IntN(chaosBrokers)], topic, "*", true); s.created.IsZero() {
			t.Fatalf("seed %d: the stable push subscription of %s was not created", seed, topic)
		}
	}
	r.logf("topics %v", r.holders)
	t.Logf("seed %d: topics %v", seed, r.holders)

	// The run: publishers, pullers, subscription changes and faults.
	faultEnd := time.Now().Add(duration)
	stopPub := make(chan struct{})
	stopPull := make(chan struct{})
	var pubWG, pullWG, faultWG sync.WaitGroup
	for w := range 3 {
		prng := rand.New(rand.NewPCG(seed, 100+uint64(w)))
		pubWG.Go(func() { r.publisher(w, prng, stopPub) })
	}
	for i, topic := range r.topics {
		qrng := rand.New(rand.NewPCG(seed, 200+uint64(i)))
		pullWG.Go(func() { r.puller(topic, qrng, stopPull) })
	}
	for lane := range 2 {
		frng := rand.New(rand.NewPCG(seed, 300+uint64(lane)))
		faultWG.Go(func() { r.faultLane(frng, faultEnd) })
	}
	srng := rand.New(rand.NewPCG(seed, 400))
	faultWG.Go(func() { r.subChurn(sink.URL, srng, faultEnd) })
	faultWG.Wait()
	close(stopPub)
	pubWG.Wait()
	r.logf("faults over")

	// Everything back: every process running, registered, every
	// subscription resumed.
	for _, n := range append(slices.Clone(r.ns), r.brokers...) {
		if n.proc() == nil {
			t.Fatalf("seed %d: %s is not running after the faults", seed, n.name)
		}
	}
	r.waitHealed(30 * time.Second)
	r.resumeAll(rng)
	settled := r.settle(60 * time.Second)
	close(stopPull)
	pullWG.Wait()
	r.logf("settled: %v", settled)

	r.check()
	if errs := r.errorLines(); len(errs) > 0 {
		t.Logf("seed %d: ERROR lines the processes logged (what, how many):\n  %s", seed, strings.Join(errs, "\n  "))
	}
	c := r.counts
	t.Logf("seed %d: settled in %s; counts:\n  %s\n  %s", seed, settled.Round(time.Millisecond), chaosCountsHeader, c.row())
	if len(r.problems) > 0 {
		kinds := map[string]int{}
		for _, p := range r.problems {
			k, _, _ := strings.Cut(p, ":")
			kinds[k]++
		}
		t.Errorf("seed %d: %d broken invariants %v; the first:\n  %s", seed, len(r.problems), kinds, strings.Join(r.problems[:min(len(r.problems), 30)], "\n  "))
		t.Logf("seed %d: events:\n  %s", seed, strings.Join(r.events, "\n  "))
	}
	return c
}

// startNode starts n, on its first address from its second start on.
func (r *chaosRun) startNode(n *chaosNode) error {
	var err error
	for try := range 20 {
		var p *proc
		if p, err = launch(r.t, false, n.args...); err == nil {
			n.mu.Lock()
			n.p = p
			n.all = append(n.all, p)
			n.mu.Unlock()
			if n.url == "" {
				n.url = p.url
				n.args = append(n.args, "--addr", strings.TrimPrefix(p.url, "http://"))
			}
			return nil
		}
		// The old address may be taken for a moment (a connection in
		// another process got it as its local port).
		r.logf("starting %s, try %d: %v", n.name, try+1, firstLine(err.Error()))
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("%s does not start: %w", n.name, err)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func (r *chaosRun) mustCall(method, url string, body []byte) clAnswer {
	r.t.Helper()
	a, err := clCall(chaosAPIClient, method, url, nil, body)
	if err != nil {
		r.t.Fatalf("seed %d: %s %s: %v", r.seed, method, url, err)
	}
	return a
}

// healed reports whether both name servers list every broker at its
// address.
func (r *chaosRun) healed() (bool, string) {
	for _, ns := range r.ns {
		a, err := clCall(chaosAPIClient, "GET", ns.url+"/v1/cluster", nil, nil)
		if err != nil {
			return false, ns.name + ": " + err.Error()
		}
		type listed struct {
			Name string `json:"name"`
			Addr string `json:"addr"`
		}
		var c struct {
			Brokers []listed `json:"brokers"`
		}
		if err := json.Unmarshal(a.body, &c); err != nil {
			return false, "decode: " + err.Error()
		}
		for _, b := range r.brokers {
			if !slices.ContainsFunc(c.Brokers, func(x listed) bool { return x.Name == b.name && x.Addr == b.url }) {
				return false, fmt.Sprintf("%s does not list %s: %s", ns.name, b.name, a)
			}
		}
	}
	return true, ""
}

// waitHealed waits until healed, and one heartbeat more so that the
// brokers' cached routes have caught up.
func (r *chaosRun) waitHealed(limit time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, why := r.healed()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("seed %d: the cluster did not heal within %s: %s", r.seed, limit, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * chaosHeartbeat)
}

// webhook records every delivery; 3% are answered 500, to be retried.
func (r *chaosRun) webhook(rng *rand.Rand) func(w http.ResponseWriter, req *http.Request) {
	var rmu sync.Mutex
	return func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		rmu.Lock()
		fail := rng.IntN(100) < 3
		rmu.Unlock()
		status := http.StatusNoContent
		if fail {
			status = http.StatusInternalServerError
		}
		attempt, _ := strconv.Atoi(req.Header.Get(push.HeaderAttempt))
		d := chaosDelivery{path: req.URL.Path, subID: req.Header.Get(push.HeaderSubscription), msgID: req.Header.Get(push.HeaderMessageID),
			tag: req.Header.Get(push.HeaderTag), attempt: attempt, body: body, header: req.Header.Clone(), at: time.Now(), status: status}
		r.mu.Lock()
		r.deliveries = append(r.deliveries, d)
		r.mu.Unlock()
		w.WriteHeader(status)
	}
}

// publisher publishes through every broker in turn until stop: single
// messages and batches, some sharded, each message with a unique key and
// body.
func (r *chaosRun) publisher(w int, rng *rand.Rand, stop chan struct{}) {
	for n := 0; n < chaosMaxRequests; n++ {
		select {
		case <-stop:
			return
		case <-time.After(time.Duration(20+rng.IntN(40)) * time.Millisecond):
		}
		via := r.brokers[n%len(r.brokers)]
		topic := r.topics[rng.IntN(len(r.topics))]
		count := 1
		if rng.IntN(10) < 3 {
			count = 2 + rng.IntN(5)
		}
		sharded := rng.IntN(10) < 3
		items := make([]*chaosItem, count)
		type batchItem struct {
			Body        string   `json:"body"`
			Tag         string   `json:"tag"`
			Keys        []string `json:"keys"`
			ShardingKey string   `json:"sharding_key,omitempty"`
		}
		batch := make([]batchItem, count)
		for i := range items {
			key := fmt.Sprintf("k%d.%d.%d", w, n, i)
			tag := chaosTags[rng.IntN(len(chaosTags))]
			it := &chaosItem{key: key, topic: topic, tag: tag, body: fmt.Sprintf("chaos seed %d %s tag %s", r.seed, key, tag)}
			items[i] = it
			batch[i] = batchItem{Body: it.body, Tag: tag, Keys: []string{key}}
			if sharded {
				batch[i].ShardingKey = fmt.Sprintf("s%d", rng.IntN(50))
			}
		}
		var (
			a   clAnswer
			err error
		)
		sent := time.Now()
		if count == 1 {
			hdr := map[string]string{"Content-Type": "text/plain", "Postbus-Tag": items[0].tag, "Postbus-Keys": items[0].key}
			if sharded {
				hdr["Postbus-Sharding-Key"] = batch[0].ShardingKey
			}
			a, err = clCall(chaosPubClient, "POST", via.url+"/v1/topics/"+topic+"/messages", hdr, []byte(items[0].body))
		} else {
			body, _ := json.Marshal(batch)
			a, err = clCall(chaosPubClient, "POST", via.url+"/v1/topics/"+topic+"/messages/batch", nil, body)
		}
		answered := time.Now()
		outs := r.classify(topic, via.name, count, a, err)
		r.mu.Lock()
		r.pubs = append(r.pubs, chaosPub{via: via, sent: sent, answered: answered, answer: answerOf(a, err)})
		for i, it := range items {
			it.sent, it.answered = sent, answered
			it.out, it.id, it.broker = outs[i].out, outs[i].id, outs[i].broker
			if err != nil {
				it.answer = err.Error()
			} else {
				it.answer = a.String()
			}
			r.items[it.body] = it
			r.itemList = append(r.itemList, it)
		}
		r.mu.Unlock()
	}
}

type itemOutcome struct {
	out        outcome
	id, broker string
}

// partialPart finds "messages [0 2] on broker-b" in a cluster_partial
// detail.
var partialPart = regexp.MustCompile(`messages \[([0-9 ]*)\] on ([A-Za-z0-9._-]+)`)

// classify reads a publish's answer: what it says of each of its count
// messages.
func (r *chaosRun) classify(topic, via string, count int, a clAnswer, err error) []itemOutcome {
	outs := make([]itemOutcome, count)
	set := func(o outcome) {
		for i := range outs {
			outs[i].out = o
		}
	}
	switch {
	case err != nil && refusedDial(err):
		set(outNotSent)
		return outs
	case err != nil:
		set(outUnknown)
		return outs
	case a.status == 201:
		var res []clPubResult
		if count == 1 {
			var one clPubResult
			if err := json.Unmarshal(a.body, &one); err != nil {
				r.t.Errorf("decode: %v", err)
			}
			res = []clPubResult{one}
		} else {
			if err := json.Unmarshal(a.body, &res); err != nil {
				r.t.Errorf("decode: %v", err)
			}
		}
		if len(res) != count {
			r.problem("false", "publish of %d to %s through %s: 201 with %d results: %s", count, topic, via, len(res), a)
			set(outUnknown)
			return outs
		}
		for i, x := range res {
			outs[i] = itemOutcome{out: outAcked, id: x.MsgID, broker: x.Broker}
			if x.MsgID == "" || x.Topic != topic || !slices.Contains(r.holders[topic], x.Broker) {
				r.problem("false", "publish to %s (held by %v) through %s: 201 result %d is %+v", topic, r.holders[topic], via, i, x)
			}
		}
		return outs
	case a.status < 500:
		set(outRefused)
		return outs
	}
	code, detail := problemOf(a)
	switch {
	case code == "cluster_partial" && count > 1:
		// "stored messages [..] on X, ...; not stored messages [..] on
		// ...; may or may not have been stored messages [..] on ...".
		set(outUnknown)
		stored, rest, _ := strings.Cut(detail, "; not stored ")
		if !strings.Contains(detail, "; not stored ") {
			stored, rest, _ = strings.Cut(detail, "; may or may not have been stored ")
			rest = "; may or may not have been stored " + rest
		}
		notStored, maybe, _ := strings.Cut(rest, "; may or may not have been stored ")
		mark := func(text string, o outcome) {
			for _, m := range partialPart.FindAllStringSubmatch(text, -1) {
				for _, f := range strings.Fields(m[1]) {
					if i, err := strconv.Atoi(f); err == nil && i < count {
						outs[i].out = o
					}
				}
			}
		}
		mark(stored, outPartial)
		mark(notStored, outRefused)
		mark(maybe, outUnknown)
	case strings.Contains(detail, "nothing was stored") || strings.Contains(detail, "not created here"):
		set(outRefused)
	default:
		set(outUnknown)
	}
	return outs
}

// puller pulls topic's group through random brokers until stop, acking
// through random brokers.
func (r *chaosRun) puller(topic string, rng *rand.Rand, stop chan struct{}) {
	group := "pull-" + topic
	for range chaosMaxRequests {
		select {
		case <-stop:
			return
		default:
		}
		via := r.brokers[rng.IntN(len(r.brokers))]
		sent := time.Now()
		a, err := clCall(chaosPullClient, "POST", via.url+"/v1/groups/"+group+"/topics/"+topic+"/pull?max=32&wait=1s&visibility=5s", nil, nil)
		if err != nil || a.status != 200 {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		var page struct {
			Messages []clPulled `json:"messages"`
		}
		if err := json.Unmarshal(a.body, &page); err != nil {
			r.problem("false", "pull of %s through %s: 200 that does not parse: %s", topic, via.name, a)
			continue
		}
		if len(page.Messages) == 0 {
			continue
		}
		receipts := make([]string, len(page.Messages))
		r.mu.Lock()
		for i, m := range page.Messages {
			receipts[i] = m.Receipt
			r.pulls = append(r.pulls, chaosPull{topic: topic, msgID: m.MsgID, receipt: m.Receipt, body: m.Body, via: via.name, attempt: m.Attempt, sent: sent})
		}
		r.mu.Unlock()
		ackVia := r.brokers[rng.IntN(len(r.brokers))]
		body, _ := json.Marshal(map[string][]string{"receipts": receipts})
		aa, err := clCall(chaosPullClient, "POST", ackVia.url+"/v1/groups/"+group+"/ack", nil, body)
		if err != nil || aa.status != 200 {
			continue // the messages come back after their visibility
		}
		var res struct {
			Results []struct {
				Receipt string `json:"receipt"`
				Status  string `json:"status"`
			} `json:"results"`
		}
		if err := json.Unmarshal(aa.body, &res); err != nil {
			r.t.Errorf("decode: %v", err)
		}
		if len(res.Results) != len(receipts) {
			r.problem("false", "ack of %d receipts through %s: %d results: %s", len(receipts), ackVia.name, len(res.Results), aa)
			continue
		}
		now := time.Now()
		r.mu.Lock()
		for i, x := range res.Results {
			if x.Receipt != receipts[i] {
				r.problem("false", "ack through %s: result %d is for receipt %q, sent %q", ackVia.name, i, x.Receipt, receipts[i])
			}
			if x.Status == "acked" {
				if _, ok := r.ackedAt[page.Messages[i].MsgID]; !ok {
					r.ackedAt[page.Messages[i].MsgID] = chaosAck{now, ackVia.name, x.Receipt}
				}
			}
		}
		r.mu.Unlock()
	}
}

// faultLane injects one fault at a time until end: a broker or a name
// server SIGKILLed and restarted, or hung with SIGSTOP and continued.
func (r *chaosRun) faultLane(rng *rand.Rand, end time.Time) {
	for time.Now().Before(end) {
		time.Sleep(time.Duration(200+rng.IntN(1300)) * time.Millisecond)
		if !time.Now().Before(end) {
			return
		}
		if !r.subFaults {
			r.calm.RLock()
		}
		r.fault(rng)
		if !r.subFaults {
			r.calm.RUnlock()
		}
	}
}

func (r *chaosRun) fault(rng *rand.Rand) {
	var pool []*chaosNode
	kill := rng.IntN(2) == 0
	if rng.IntN(10) < 6 {
		pool = r.brokers
	} else {
		pool = r.ns
	}
	n := pool[rng.IntN(len(pool))]
	n.mu.Lock()
	if n.faulted {
		n.mu.Unlock()
		return
	}
	p := n.p
	if p == nil { // a restart failed
		n.mu.Unlock()
		return
	}
	n.faulted = true
	n.down = append(n.down, chaosSpan{from: time.Now()})
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.faulted = false
		n.down[len(n.down)-1].to = time.Now()
		n.mu.Unlock()
	}()
	// Long enough, at times, for the name servers to expire a broker.
	d := time.Duration(300+rng.IntN(3700)) * time.Millisecond
	r.mu.Lock()
	r.counts.faults++
	r.mu.Unlock()
	if kill {
		r.logf("SIGKILL %s for %s", n.name, d)
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		n.mu.Lock()
		n.p = nil
		n.kills = append(n.kills, time.Now())
		n.mu.Unlock()
		time.Sleep(d)
		if err := r.startNode(n); err != nil {
			r.problem("hang", "restarting %s: %v", n.name, err)
			return
		}
		r.logf("%s restarted", n.name)
		return
	}
	r.logf("SIGSTOP %s for %s", n.name, d)
	p.cmd.Process.Signal(syscall.SIGSTOP)
	time.Sleep(d)
	p.cmd.Process.Signal(syscall.SIGCONT)
	r.logf("SIGCONT %s", n.name)
}

// subChurn creates, patches, pauses, resumes and deletes push
// subscriptions through random brokers until end.
func (r *chaosRun) subChurn(sinkURL string, rng *rand.Rand, end time.Time) {
	for time.Now().Before(end) {
		time.Sleep(time.Duration(300+rng.IntN(1200)) * time.Millisecond)
		if !time.Now().Before(end) {
			return
		}
		if !r.subFaults {
			r.calm.Lock()
			ok, why := r.healedWithin(20 * time.Second)
			if !ok {
				r.calm.Unlock()
				r.problem("hang", "the cluster did not heal within 20s of the faults ending: %s", why)
				return
			}
		}
		r.subOp(sinkURL, rng)
		if !r.subFaults {
			r.calm.Unlock()
		}
	}
}

func (r *chaosRun) healedWithin(limit time.Duration) (bool, string) {
	deadline := time.Now().Add(limit)
	for {
		ok, why := r.healed()
		if ok {
			time.Sleep(2 * chaosHeartbeat)
			return true, ""
		}
		if time.Now().After(deadline) {
			return false, why
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// liveSubs are the subscriptions created and not being deleted.
func (r *chaosRun) liveSubs() []*chaosSub {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*chaosSub
	for _, s := range r.subs {
		if !s.created.IsZero() && s.deleteFrom.IsZero() {
			out = append(out, s)
		}
	}
	return out
}

func (r *chaosRun) subOp(sinkURL string, rng *rand.Rand) {
	via := r.brokers[rng.IntN(len(r.brokers))]
	live := r.liveSubs()
	var churn []*chaosSub
	for _, s := range live {
		if !s.stable {
			churn = append(churn, s)
		}
	}
	r.mu.Lock()
	r.counts.subOps++
	r.mu.Unlock()
	op := rng.IntN(100)
	switch {
	case op < 30 && len(churn) < 5:
		topic := r.topics[rng.IntN(len(r.topics))]
		if s := r.createSub(sinkURL, via, topic, chaosFilters[rng.IntN(2)], false); s.maybe {
			// As a client told so would: delete it by the id the answer
			// names, so that it delivers nowhere.
			r.deleteSub(s, rng)
		}
	case op < 50:
		s := live[rng.IntN(len(live))]
		f := chaosFilters[rng.IntN(len(chaosFilters))]
		r.mu.Lock()
		s.filters = append(s.filters, f)
		r.mu.Unlock()
		body, _ := json.Marshal(map[string]string{"filter": f})
		a, err := clCall(chaosAPIClient, "PATCH", via.url+"/v1/subscriptions/"+s.id, nil, body)
		r.logf("PATCH %s (%s) filter %q through %s: %s", s.id, s.topic, f, via.name, answerOf(a, err))
	case op < 80:
		s := live[rng.IntN(len(live))]
		verb := "pause"
		if rng.IntN(2) == 0 {
			verb = "resume"
		}
		a, err := clCall(chaosAPIClient, "POST", via.url+"/v1/subscriptions/"+s.id+"/"+verb, nil, nil)
		r.mu.Lock()
		s.paused, s.unsettled = verb == "pause", err != nil || a.status != 200
		r.mu.Unlock()
		r.logf("%s %s (%s) through %s: %s", verb, s.id, s.topic, via.name, answerOf(a, err))
	case len(churn) > 0:
		r.deleteSub(churn[rng.IntN(len(churn))], rng)
	}
}

func answerOf(a clAnswer, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%d %s", a.status, bytes.TrimSpace(a.body))
}

// createSub creates a push subscription of topic through via; its webhook
// is the sink's /h/<n>.
func (r *chaosRun) createSub(sinkURL string, via *chaosNode, topic, filter string, stable bool) *chaosSub {
	r.mu.Lock()
	s := &chaosSub{n: len(r.subs), topic: topic, filters: []string{filter}, stable: stable}
	s.group = fmt.Sprintf("push%d", s.n)
	r.subs = append(r.subs, s)
	r.mu.Unlock()
	body, _ := json.Marshal(map[string]any{"group": s.group, "topic": topic, "url": fmt.Sprintf("%s/h/%d", sinkURL, s.n),
		"filter": filter, "retry_delays": []string{"200ms", "1s"}, "max_retries": 16, "timeout": "2s"})
	a, err := clCall(chaosAPIClient, "POST", via.url+"/v1/subscriptions", nil, body)
	answered := time.Now()
	var got struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	if err == nil {
		if err := json.Unmarshal(a.body, &got); err != nil {
			r.t.Errorf("decode: %v", err)
		}
	}
	r.mu.Lock()
	s.answered = answered
	switch {
	case err == nil && a.status == 201:
		s.id, s.secret, s.created = got.ID, got.Secret, answered
	case err == nil && a.status != 500 && (a.status < 500 || strings.Contains(string(a.body), "not created") || strings.Contains(string(a.body), "created nowhere")):
		s.refused = true
	case err == nil && a.status == 502 && chaosMaybeCreated.Match(a.body):
		s.id, s.maybe = string(chaosMaybeCreated.FindSubmatch(a.body)[1]), true
	}
	r.mu.Unlock()
	r.logf("create %s (%s on %s, filter %q) through %s: %s", s.group, s.id, topic, filter, via.name, answerOf(a, err))
	return s
}

// deleteSub deletes s, retrying as a client would while it answers
// 502 or 503, for at most 20s.
func (r *chaosRun) deleteSub(s *chaosSub, rng *rand.Rand) {
	r.mu.Lock()
	s.deleteFrom = time.Now()
	r.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for tries := 1; ; tries++ {
		via := r.brokers[rng.IntN(len(r.brokers))]
		a, err := clCall(chaosAPIClient, "DELETE", via.url+"/v1/subscriptions/"+s.id, nil, nil)
		r.logf("DELETE %s (%s) through %s, try %d: %s", s.id, s.topic, via.name, tries, answerOf(a, err))
		if err == nil && (a.status == 204 || (a.status == 404 && (tries > 1 || s.maybe))) {
			r.mu.Lock()
			s.deleted = time.Now()
			r.mu.Unlock()
			return
		}
		if err == nil && a.status == 404 {
			r.problem("false", "DELETE of subscription %s (created %s) answered 404 on its first try: %s", s.id, s.created.Sub(r.began), a)
			return
		}
		if time.Now().After(deadline) {
			r.logf("DELETE %s gave up after %d tries", s.id, tries)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// resumeAll resumes every live subscription, retrying while it fails.
func (r *chaosRun) resumeAll(rng *rand.Rand) {
	for _, s := range r.liveSubs() {
		deadline := time.Now().Add(20 * time.Second)
		for {
			via := r.brokers[rng.IntN(len(r.brokers))]
			a, err := clCall(chaosAPIClient, "POST", via.url+"/v1/subscriptions/"+s.id+"/resume", nil, nil)
			if err == nil && a.status == 200 {
				break
			}
			if time.Now().After(deadline) {
				r.problem("hang", "resume of %s after the faults: %s", s.id, answerOf(a, err))
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// required lists, for each subscription (by index) and each pull group
// (by topic), the acknowledged messages it must get.
func (r *chaosRun) required() (push map[*chaosSub][]*chaosItem, pull map[string][]*chaosItem) {
	r.mu.Lock()
	defer r.mu.Unlock()
	push = map[*chaosSub][]*chaosItem{}
	pull = map[string][]*chaosItem{}
	for _, it := range r.itemList {
		if it.out != outAcked {
			continue
		}
		pull[it.topic] = append(pull[it.topic], it)
		for _, s := range r.subs {
			if s.topic != it.topic || s.created.IsZero() || !s.deleteFrom.IsZero() || !it.sent.After(s.created) {
				continue
			}
			if !slices.ContainsFunc(s.filters, func(f string) bool { return !filterMatches(f, it.tag) }) {
				push[s] = append(push[s], it)
			}
		}
	}
	return push, pull
}

// missing counts the required deliveries (a 2xx answered one) and pulls
// not seen yet.
func (r *chaosRun) missing() (undelivered map[*chaosSub][]*chaosItem, unpulled map[string][]*chaosItem) {
	reqPush, reqPull := r.required()
	r.mu.Lock()
	defer r.mu.Unlock()
	got := map[string]bool{} // path + msg id
	for _, d := range r.deliveries {
		if d.status < 300 {
			got[d.path+" "+d.msgID] = true
		}
	}
	pulled := map[string]bool{}
	for _, p := range r.pulls {
		pulled[p.msgID] = true
	}
	undelivered = map[*chaosSub][]*chaosItem{}
	for s, its := range reqPush {
		for _, it := range its {
			if !got[fmt.Sprintf("/h/%d %s", s.n, it.id)] {
				undelivered[s] = append(undelivered[s], it)
			}
		}
	}
	unpulled = map[string][]*chaosItem{}
	for topic, its := range reqPull {
		for _, it := range its {
			if !pulled[it.id] {
				unpulled[topic] = append(unpulled[topic], it)
			}
		}
	}
	return undelivered, unpulled
}

// settle waits, at most limit, until every required delivery and pull
// has happened.
func (r *chaosRun) settle(limit time.Duration) time.Duration {
	began := time.Now()
	for time.Since(began) < limit {
		u, p := r.missing()
		if len(u) == 0 && len(p) == 0 {
			return time.Since(began)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return time.Since(began)
}

// check counts and judges everything recorded.
func (r *chaosRun) check() {
	undelivered, unpulled := r.missing()
	r.mu.Lock()
	items := slices.Clone(r.itemList)
	subs := slices.Clone(r.subs)
	deliveries := slices.Clone(r.deliveries)
	pulls := slices.Clone(r.pulls)
	ackedAt := maps.Clone(r.ackedAt)
	byBody := maps.Clone(r.items)
	r.mu.Unlock()
	c := &r.counts
	// A publish through a broker that was neither killed nor stopped
	// meanwhile answers within a few forward timeouts (1s each), whatever
	// else is down.
	r.mu.Lock()
	pubs := slices.Clone(r.pubs)
	r.mu.Unlock()
	for _, p := range pubs {
		took := p.answered.Sub(p.sent)
		if took < chaosSlow || p.via.overlaps(p.sent, p.answered) {
			continue
		}
		c.slow++
		var hung []string
		for _, n := range append(slices.Clone(r.ns), r.brokers...) {
			if n.overlaps(p.sent, p.answered) {
				hung = append(hung, n.name)
			}
		}
		if c.slow <= 5 {
			r.t.Logf("seed %d: slow publish: through %s at %.2fs took %s while %v were down or stopped: %s", r.seed, p.via.name, p.sent.Sub(r.began).Seconds(), took.Round(time.Millisecond), hung, clip([]byte(p.answer)))
		}
	}
	for _, it := range items {
		switch it.out {
		case outAcked:
			c.acked++
		case outRefused:
			c.refused++
		case outNotSent:
			c.notSent++
		case outUnknown, outPartial:
			c.unknown++
		}
	}
	for s, its := range undelivered {
		c.undelivered += len(its)
		r.problem("undelivered", "subscription %s (%s, group %s, created %.2fs, filters %q) missed %d acknowledged messages, e.g. %s (stored on %s, sent %.2fs)",
			s.id, s.topic, s.group, s.created.Sub(r.began).Seconds(), s.filters, len(its), its[0].id, its[0].broker, its[0].sent.Sub(r.began).Seconds())
	}
	for topic, its := range unpulled {
		c.unpulled += len(its)
		r.problem("unpulled", "group pull-%s never pulled %d acknowledged messages, e.g. %s (stored on %s, sent %.2fs)",
			topic, len(its), its[0].id, its[0].broker, its[0].sent.Sub(r.began).Seconds())
	}

	// Every acknowledged message reads back by id, through some broker.
	r.parallel(len(items), func(i int) {
		it := items[i]
		if it.out != outAcked {
			return
		}
		for _, b := range r.brokers {
			a, err := clCall(chaosAPIClient, "GET", b.url+"/v1/messages/"+it.id, nil, nil)
			if err != nil || a.status != 200 {
				continue
			}
			var m struct {
				Topic string `json:"topic"`
				Body  string `json:"body"`
			}
			if err := json.Unmarshal(a.body, &m); err != nil {
				r.t.Errorf("decode: %v", err)
			}
			if m.Topic != it.topic || m.Body != it.body {
				r.problem("false", "message %s reads back as %s/%q through %s, published to %s as %q", it.id, m.Topic, m.Body, b.name, it.topic, it.body)
			}
			return
		}
		r.mu.Lock()
		c.lost++
		r.mu.Unlock()
		r.problem("lost", "acknowledged message %s (%s, stored on %s at %.2fs) is not readable by id through any broker", it.id, it.topic, it.broker, it.answered.Sub(r.began).Seconds())
	})
	// What the answers said was not stored is not; what they left open
	// is counted.
	r.parallel(len(items), func(i int) {
		it := items[i]
		if it.out != outRefused && it.out != outUnknown && it.out != outPartial {
			return
		}
		found, ok := r.findByKey(it)
		if !ok {
			r.problem("hang", "the query by key %s of %s answers nothing useful through any broker", it.key, it.topic)
			return
		}
		switch {
		case it.out == outRefused && found:
			r.problem("false", "message %s of %s answered as not stored is stored; the answer: %s", it.key, it.topic, it.answer)
		case it.out == outPartial && !found:
			r.problem("false", "message %s of %s answered as stored (in a cluster_partial) is not; the answer: %s", it.key, it.topic, it.answer)
		case found:
			r.mu.Lock()
			c.unknownIn++
			r.mu.Unlock()
		}
	})

	// Deliveries.
	type pair struct {
		path, id string
	}
	ok2xx := map[pair]int{}
	subByPath := map[string]*chaosSub{}
	for _, s := range subs {
		subByPath[fmt.Sprintf("/h/%d", s.n)] = s
	}
	badSigs := 0
	for _, d := range deliveries {
		c.deliveries++
		s := subByPath[d.path]
		it := byBody[string(d.body)]
		switch {
		case s == nil:
			r.problem("false", "delivery to %s, no subscription's webhook", d.path)
			continue
		case s.refused && d.at.After(s.answered.Add(chaosDeleteGrace)):
			// Before the answer, the holders that created it had not
			// been told to undo it yet.
			r.problem("false", "delivery of %s to subscription %s %.2fs after its create was answered as not created",
				d.msgID, s.group, d.at.Sub(s.answered).Seconds())
		case s.id != "" && d.subID != s.id:
			r.problem("false", "delivery to %s (subscription %s) names subscription %q", d.path, s.id, d.subID)
		case !s.deleted.IsZero() && d.at.After(s.deleted.Add(chaosDeleteGrace)):
			c.afterDelete++
			if c.afterDelete <= 10 {
				r.problem("after-delete", "delivery of %s (attempt %d) to subscription %s (%s) %.2fs after its DELETE was answered 204",
					d.msgID, d.attempt, s.id, s.topic, d.at.Sub(s.deleted).Seconds())
			}
		}
		switch {
		case it == nil:
			r.problem("false", "delivery of %s to %s with a body never published: %q", d.msgID, d.path, clip(d.body))
			continue
		case it.out == outRefused || it.out == outNotSent:
			r.problem("false", "delivery of %s (%s) to %s, whose publish was answered as not stored: %s", d.msgID, it.key, d.path, it.answer)
		case it.out == outAcked && it.id != d.msgID:
			r.problem("false", "delivery of %s as %s to %s; its 201 said %s (stored twice?)", it.key, d.msgID, d.path, it.id)
		case it.topic != s.topic || d.tag != it.tag:
			r.problem("false", "delivery of %s (%s, tag %s) to subscription of %s with tag %q", it.key, it.topic, it.tag, s.topic, d.tag)
		case !slices.ContainsFunc(s.filters, func(f string) bool { return filterMatches(f, it.tag) }):
			r.problem("false", "delivery of %s (tag %s) to subscription %s whose filters were only %q", it.key, it.tag, s.id, s.filters)
		}
		if s.secret != "" {
			if err := push.VerifyStandardWebhook(s.secret, d.header, d.body, time.Hour, d.at); err != nil {
				if badSigs++; badSigs <= 5 {
					r.problem("false", "delivery of %s to %s does not verify with its subscription's secret: %v", d.msgID, s.id, err)
				}
			}
		}
		if d.status < 300 {
			k := pair{d.path, d.msgID}
			if ok2xx[k]++; ok2xx[k] > 1 {
				c.dupPush++
			}
		}
	}

	// Pulls.
	pulled := map[string]int{}
	for _, p := range pulls {
		c.pulls++
		it := byBody[p.body]
		switch {
		case it == nil:
			r.problem("false", "pull of %s from %s with a body never published: %q", p.msgID, p.topic, clip([]byte(p.body)))
			continue
		case it.out == outRefused || it.out == outNotSent:
			r.problem("false", "pull of %s (%s), whose publish was answered as not stored: %s", p.msgID, it.key, it.answer)
		case it.out == outAcked && it.id != p.msgID:
			r.problem("false", "pull of %s as %s; its 201 said %s (stored twice?)", it.key, p.msgID, it.id)
		case it.topic != p.topic:
			r.problem("false", "pull of %s (%s) from %s", it.key, it.topic, p.topic)
		}
		if pulled[p.msgID]++; pulled[p.msgID] > 1 {
			c.dupPull++
		}
		if ack, ok := ackedAt[p.msgID]; ok && p.sent.After(ack.at) {
			// A broker SIGKILLed after handing the message out (to a pull
			// whose answer may never have arrived) hands it out again
			// once restarted, its offset not persisted yet, while the
			// first lease, persisted, still runs out later: that copy
			// comes back after the second was acked. Counted, as at
			// least once allows; without a SIGKILL of the broker since
			// the message was published it is a false ack.
			issuer, _, _ := strings.Cut(ack.receipt, receiptSepTest)
			if r.killedBetween(issuer, it.sent, p.sent) {
				c.ackedAgainCrash++
			} else {
				c.ackedAgain++
				var history []string
				for _, q := range pulls {
					if q.msgID == p.msgID {
						history = append(history, fmt.Sprintf("pulled at %.2fs through %s, attempt %d, receipt %s", q.sent.Sub(r.began).Seconds(), q.via, q.attempt, q.receipt))
					}
				}
				r.problem("acked-again", "message %s (%s) pulled again at %.2fs after an ack through %s answered acked at %.2fs (receipt %s), %s not SIGKILLed in between: %s",
					p.msgID, p.topic, p.sent.Sub(r.began).Seconds(), ack.via, ack.at.Sub(r.began).Seconds(), ack.receipt, issuer, strings.Join(history, "; "))
			}
		}
	}
}

const receiptSepTest = "~"

func (r *chaosRun) killedBetween(name string, from, to time.Time) bool {
	for _, b := range r.brokers {
		if b.name != name {
			continue
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		return slices.ContainsFunc(b.kills, func(k time.Time) bool { return k.After(from) && k.Before(to) })
	}
	return false
}

// findByKey asks each holder of it's topic, alone, whether it stores
// it's key; ok is false when a holder did not answer within a few tries.
// Each holder is asked alone because a merged query leaves out, with a
// 200, a holder the asked broker still skips as down (for 10s after a
// refused connection or a timeout), even once it is back.
func (r *chaosRun) findByKey(it *chaosItem) (found, ok bool) {
	for _, h := range r.holders[it.topic] {
		i := slices.IndexFunc(r.brokers, func(n *chaosNode) bool { return n.name == h })
		answered := false
		for try := 0; try < 5 && !answered; try++ {
			a, err := clCall(chaosAPIClient, "GET", r.brokers[i].url+"/v1/topics/"+it.topic+"/messages?key="+it.key+"&limit=8",
				map[string]string{"Postbus-Forwarded-By": "chaos-test"}, nil)
			if err != nil || a.status != 200 {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			answered = true
			var page struct {
				Messages []struct {
					MsgID string `json:"msg_id"`
				} `json:"messages"`
			}
			if err := json.Unmarshal(a.body, &page); err != nil {
				r.t.Errorf("decode: %v", err)
			}
			if len(page.Messages) > 0 {
				return true, true
			}
		}
		if !answered {
			return false, false
		}
	}
	return false, true
}

// parallel runs f(0..n-1) on 8 goroutines.
func (r *chaosRun) parallel(n int, f func(int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range next {
				f(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

func clip(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}

// errorLines counts the processes' ERROR log lines by message and error,
// the numbers and addresses in it left out.
func (r *chaosRun) errorLines() []string {
	digits := regexp.MustCompile(`[0-9]+`)
	count := map[string]int{}
	for _, n := range append(slices.Clone(r.ns), r.brokers...) {
		n.mu.Lock()
		all := slices.Clone(n.all)
		n.mu.Unlock()
		for _, p := range all {
			for _, line := range strings.Split(p.Logs(), "\n") {
				var rec struct {
					Level, Msg, Err string
				}
				if json.Unmarshal([]byte(line), &rec) != nil || rec.Level != "ERROR" {
					continue
				}
				count[fmt.Sprintf("%s: %s: %s", n.name, rec.Msg, clip([]byte(digits.ReplaceAllString(rec.Err, "N"))))]++
			}
		}
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(count)) {
		out = append(out, fmt.Sprintf("%s (%d)", k, count[k]))
	}
	return out
}

// dumpLogs writes every process's logs (every incarnation) to files and
// says where.
func (r *chaosRun) dumpLogs() {
	dir, err := os.MkdirTemp("", fmt.Sprintf("postbus-chaos-%d-", r.seed))
	if err != nil {
		r.t.Logf("keeping the logs: %v", err)
		return
	}
	for _, n := range append(slices.Clone(r.ns), r.brokers...) {
		n.mu.Lock()
		all := slices.Clone(n.all)
		n.mu.Unlock()
		for i, p := range all {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s.%d.log", n.name, i)), []byte(p.Logs()), 0o644); err != nil {
				r.t.Logf("keeping the logs: %v", err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "events.log"), []byte(strings.Join(r.events, "\n")+"\n"), 0o644); err != nil {
		r.t.Logf("keeping the events: %v", err)
	}
	r.t.Logf("seed %d: the processes' logs are in %s", r.seed, dir)
}
