//go:build unix

package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"
)

// replLoad is the traffic of a replication test: publishers that send
// every message (single or in a batch) with a dedup id through the
// members in turn, and publish it again with the same id, through the
// next member, until it is answered 201 or a bound passes, as a careful
// client does across a failover; pullers that pull and ack through any
// member. It records what was acknowledged and what came back.
type replLoad struct {
	g     *replGroup
	topic string
	group string // the pull group
	seed  uint64

	mu         sync.Mutex
	acked      []*replAcked          // guarded by mu
	byDedup    map[string]*replAcked // guarded by mu
	conflicts  []string              // guarded by mu: one dedup id answered with two message ids
	refused    []string              // guarded by mu: a publish answered 4xx
	gaveUp     int                   // guarded by mu: messages never answered 201 within the bound
	tries      int                   // guarded by mu: publish requests sent
	pulled     map[string][]string   // guarded by mu: msg id -> bodies pulled
	pullBad    []string              // guarded by mu
	ackedAt    map[string]time.Time  // guarded by mu: msg id -> when an ack of it was first answered "acked"
	shardQueue map[string]int        // guarded by mu: sharding key -> the queue its first 201 named
	shardMoved []string              // guarded by mu: a sharding key answered with another queue
	again      []string              // guarded by mu: pulled by a pull sent after its ack was answered "acked"
}

// replAcked is a message answered 201.
type replAcked struct {
	id, dedup, via string
	body           []byte
	sent, answered time.Time // of the request that got the 201
	duplicate      bool      // the 201 said a dedup id matched
}

func newReplLoad(g *replGroup, topic, group string, seed uint64) *replLoad {
	return &replLoad{g: g, topic: topic, group: group, seed: seed, byDedup: map[string]*replAcked{}, pulled: map[string][]string{}, ackedAt: map[string]time.Time{}, shardQueue: map[string]int{}}
}

var (
	replPubClient  = &http.Client{Timeout: 5 * time.Second}
	replPullClient = &http.Client{Timeout: 8 * time.Second}
)

// replReadRetry bounds how long the reads of unreadable retry a 503.
const replReadRetry = 30 * time.Second

// replRetryBound is how long a publisher retries one message before it
// counts it as given up.
const replRetryBound = 30 * time.Second

// publisher publishes through the members until stop is closed, at most
// max requests' worth of messages.
// start runs publishers and pullers until the returned stop, which stops
// the publishers first, so that pullers can still take what they stored;
// stop may be called more than once.
func (l *replLoad) start(publishers, pullers int) (stop func()) {
	stopPub, stopPull := make(chan struct{}), make(chan struct{})
	var pubs, pulls sync.WaitGroup
	for w := range publishers {
		pubs.Go(func() { l.publisher(w, stopPub, 10_000) })
	}
	for n := range pullers {
		pulls.Go(func() { l.puller(n, stopPull) })
	}
	return sync.OnceFunc(func() {
		close(stopPub)
		pubs.Wait()
		close(stopPull)
		pulls.Wait()
	})
}

func (l *replLoad) publisher(w int, stop <-chan struct{}, max int) {
	rng := rand.New(rand.NewPCG(l.seed, 1000+uint64(w)))
	for i := 0; i < max; i++ {
		select {
		case <-stop:
			return
		default:
		}
		count := 1
		if rng.IntN(5) == 0 {
			count = 2 + rng.IntN(3)
		}
		msgs := make([]replMsg, count)
		for k := range msgs {
			// Bodies hold every byte value: what is read back must be
			// the same bytes, not a text round trip of them.
			b := fmt.Appendf(nil, "seed %d w%d i%d k%d ", l.seed, w, i, k)
			for range 16 + rng.IntN(1500) {
				b = append(b, byte(rng.IntN(256)))
			}
			msgs[k] = replMsg{body: b, dedup: fmt.Sprintf("s%d-w%d-%d-%d", l.seed, w, i, k)}
			switch rng.IntN(10) {
			case 0, 1: // a sharding key keeps its queue, across a failover too
				msgs[k].shard = fmt.Sprintf("key%d", rng.IntN(8))
			case 2: // a timer that must fire on whichever member leads then
				msgs[k].delay = fmt.Sprintf("%dms", 500+rng.IntN(2500))
			}
		}
		l.publishUntilAcked(w+i, msgs)
	}
}

// replMsg is one message to publish.
type replMsg struct {
	body         []byte
	dedup, shard string
	delay        string // a Postbus-Delay
}

// publishUntilAcked sends bodies (one message, or a batch) until a 201,
// a 4xx, or replRetryBound; each try goes through the next member.
func (l *replLoad) publishUntilAcked(turn int, msgs []replMsg) {
	dedups := make([]string, len(msgs))
	for k, m := range msgs {
		dedups[k] = m.dedup
	}
	began := time.Now()
	members := l.g.list()
	for try := 0; ; try++ {
		m := members[(turn+try)%len(members)]
		sent := time.Now()
		var (
			a   clAnswer
			err error
		)
		if len(msgs) == 1 {
			hdr := map[string]string{"Content-Type": "application/octet-stream", "Postbus-Dedup-Id": msgs[0].dedup}
			if msgs[0].shard != "" {
				hdr["Postbus-Sharding-Key"] = msgs[0].shard
			}
			if msgs[0].delay != "" {
				hdr["Postbus-Delay"] = msgs[0].delay
			}
			a, err = clCall(replPubClient, "POST", m.url+"/v1/topics/"+l.topic+"/messages", hdr, msgs[0].body)
		} else {
			items := make([]replBatchItem, len(msgs))
			for k, x := range msgs {
				items[k] = replBatchItem{BodyBase64: base64.StdEncoding.EncodeToString(x.body), DedupID: x.dedup, ShardingKey: x.shard, Delay: x.delay}
			}
			body, _ := json.Marshal(items)
			a, err = clCall(replPubClient, "POST", m.url+"/v1/topics/"+l.topic+"/messages/batch", nil, body)
		}
		answered := time.Now()
		l.mu.Lock()
		l.tries++
		l.mu.Unlock()
		switch {
		case err == nil && (a.status == http.StatusCreated || a.status == http.StatusOK):
			// 200: a single message whose dedup id matched one stored
			// before (a try whose answer was lost); stored all the same.
			l.record(m, a, msgs, sent, answered)
			return
		case err == nil && a.status < 500 && a.status != http.StatusTooManyRequests:
			l.mu.Lock()
			l.refused = append(l.refused, fmt.Sprintf("publish %v through %s: %s", dedups, m.id, a))
			l.mu.Unlock()
			return
		}
		if time.Since(began) > replRetryBound {
			l.mu.Lock()
			l.gaveUp += len(msgs)
			l.mu.Unlock()
			l.g.t.Logf("gave up on %v after %s; last answer through %s: %s", dedups, replRetryBound, m.id, answerOf(a, err))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (l *replLoad) record(m *replMember, a clAnswer, msgs []replMsg, sent, answered time.Time) {
	type result struct {
		MsgID     string `json:"msg_id"`
		QueueID   int    `json:"queue_id"`
		Duplicate bool   `json:"duplicate"`
	}
	var res []result
	if len(msgs) == 1 {
		var one result
		if err := json.Unmarshal(a.body, &one); err == nil {
			res = []result{one}
		}
	} else if err := json.Unmarshal(a.body, &res); err != nil {
		res = nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(res) != len(msgs) {
		l.refused = append(l.refused, fmt.Sprintf("publish of %d messages through %s: a 201 with %d results: %s", len(msgs), m.id, len(res), a))
		return
	}
	for k, r := range res {
		x := &replAcked{id: r.MsgID, dedup: msgs[k].dedup, via: m.id, body: msgs[k].body, sent: sent, answered: answered, duplicate: r.Duplicate}
		if key := msgs[k].shard; key != "" {
			if q, ok := l.shardQueue[key]; !ok {
				l.shardQueue[key] = r.QueueID
			} else if q != r.QueueID {
				l.shardMoved = append(l.shardMoved, fmt.Sprintf("sharding key %s: queue %d, then %d (%s through %s)", key, q, r.QueueID, r.MsgID, m.id))
			}
		}
		if prev, ok := l.byDedup[x.dedup]; ok {
			if prev.id != x.id {
				l.conflicts = append(l.conflicts, fmt.Sprintf("dedup id %s: answered %s, then %s", x.dedup, prev.id, x.id))
			}
			continue
		}
		l.byDedup[x.dedup] = x
		l.acked = append(l.acked, x)
	}
}

// count is how many messages were acknowledged, and of them how many by
// a request sent after since.
func (l *replLoad) count(since time.Time) (all, after int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range l.acked {
		if a.sent.After(since) {
			after++
		}
	}
	return len(l.acked), after
}

// firstAckAfter is when the first 201 to a request sent after t arrived.
func (l *replLoad) firstAckAfter(t time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	for _, a := range l.acked {
		if a.sent.After(t) && (first.IsZero() || a.answered.Before(first)) {
			first = a.answered
		}
	}
	return first, !first.IsZero()
}

// ackedBodies is every acknowledged message, by id.
func (l *replLoad) ackedBodies() map[string][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	want := make(map[string][]byte, len(l.acked))
	for _, a := range l.acked {
		want[a.id] = a.body
	}
	return want
}

// puller pulls the group through random members and acks through random
// members until stop.
func (l *replLoad) puller(n int, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(l.seed, 2000+uint64(n)))
	for range 100_000 {
		select {
		case <-stop:
			return
		default:
		}
		members := l.g.list()
		m := members[rng.IntN(len(members))]
		sent := time.Now()
		a, err := clCall(replPullClient, "POST", m.url+"/v1/groups/"+l.group+"/topics/"+l.topic+"/pull?max=32&wait=1s&visibility=5s", nil, nil)
		if err != nil || a.status != http.StatusOK {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		var page struct {
			Messages []struct {
				MsgID    string `json:"msg_id"`
				Receipt  string `json:"receipt"`
				Body     string `json:"body"`
				Encoding string `json:"encoding"`
			} `json:"messages"`
		}
		if err := json.Unmarshal(a.body, &page); err != nil {
			l.mu.Lock()
			l.pullBad = append(l.pullBad, fmt.Sprintf("pull through %s: a 200 that does not parse: %s", m.id, a))
			l.mu.Unlock()
			continue
		}
		if len(page.Messages) == 0 {
			continue
		}
		receipts := make([]string, len(page.Messages))
		l.mu.Lock()
		for i, p := range page.Messages {
			receipts[i] = p.Receipt
			body := p.Body
			if p.Encoding == "base64" {
				b, err := base64.StdEncoding.DecodeString(p.Body)
				if err != nil {
					l.pullBad = append(l.pullBad, fmt.Sprintf("pull through %s: %s has a base64 body that does not decode", m.id, p.MsgID))
				}
				body = string(b)
			}
			l.pulled[p.MsgID] = append(l.pulled[p.MsgID], body)
			// An ack answered "acked" is committed by a majority: no
			// failover may hand the message out again.
			if at, ok := l.ackedAt[p.MsgID]; ok && at.Before(sent) {
				l.again = append(l.again, fmt.Sprintf("%s pulled through %s at %s, its ack answered acked at %s",
					p.MsgID, m.id, sent.Format("15:04:05.000"), at.Format("15:04:05.000")))
			}
		}
		l.mu.Unlock()
		ackVia := members[rng.IntN(len(members))]
		body, _ := json.Marshal(map[string][]string{"receipts": receipts})
		// An ack that fails leaves the messages to come back after their
		// visibility: a repeat, counted, not a fault.
		aa, err := clCall(replPullClient, "POST", ackVia.url+"/v1/groups/"+l.group+"/ack", nil, body)
		if err != nil || aa.status != http.StatusOK {
			continue
		}
		var res struct {
			Results []struct {
				Receipt string `json:"receipt"`
				Status  string `json:"status"`
			} `json:"results"`
		}
		if err := json.Unmarshal(aa.body, &res); err != nil || len(res.Results) != len(receipts) {
			l.mu.Lock()
			l.pullBad = append(l.pullBad, fmt.Sprintf("ack of %d receipts through %s: %s", len(receipts), ackVia.id, aa))
			l.mu.Unlock()
			continue
		}
		now := time.Now()
		l.mu.Lock()
		for i, r := range res.Results {
			if _, ok := l.ackedAt[page.Messages[i].MsgID]; r.Status == "acked" && !ok {
				l.ackedAt[page.Messages[i].MsgID] = now
			}
		}
		l.mu.Unlock()
	}
}

// unpulled is the acknowledged messages never pulled with their body, and
// how many pulls were repeats.
func (l *replLoad) unpulled() (missing []string, repeats int) {
	want := l.ackedBodies()
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, body := range want {
		if !slices.Contains(l.pulled[id], string(body)) {
			missing = append(missing, id)
		}
	}
	for _, bs := range l.pulled {
		repeats += max(len(bs)-1, 0)
	}
	slices.Sort(missing)
	return missing, repeats
}

// storedTwice is the bodies pulled under more than one message id: a
// message stored twice although its retries carried one dedup id.
func (l *replLoad) storedTwice() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ids := map[string][]string{}
	for id, bs := range l.pulled {
		for _, b := range slices.Compact(slices.Sorted(slices.Values(bs))) {
			ids[b] = append(ids[b], id)
		}
	}
	var twice []string
	for b, list := range ids {
		if len(list) > 1 {
			twice = append(twice, fmt.Sprintf("%q as %v", clip([]byte(b)), list))
		}
	}
	slices.Sort(twice)
	return twice
}

// unreadable is the acknowledged messages that the broker at url does
// not answer with their bytes (GET /v1/messages/{id}/body), each with
// what it answered. A 503 (no leader yet: a failover) is asked again, as
// a client would, until replReadRetry has passed since the first read.
func (l *replLoad) unreadable(url string) []string {
	retryUntil := time.Now().Add(replReadRetry)
	want := l.ackedBodies()
	ids := slices.Sorted(func(yield func(string) bool) {
		for id := range want {
			if !yield(id) {
				return
			}
		}
	})
	var bad []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan string)
	for range 8 {
		wg.Go(func() {
			for id := range next {
				a, err := clCall(replPubClient, "GET", url+"/v1/messages/"+id+"/body", nil, nil)
				for (err != nil || a.status == http.StatusServiceUnavailable) && time.Now().Before(retryUntil) {
					time.Sleep(100 * time.Millisecond)
					a, err = clCall(replPubClient, "GET", url+"/v1/messages/"+id+"/body", nil, nil)
				}
				if err == nil && a.status == http.StatusOK && string(a.body) == string(want[id]) {
					continue
				}
				mu.Lock()
				if err != nil {
					bad = append(bad, fmt.Sprintf("%s: %v", id, err))
				} else if a.status == http.StatusOK {
					bad = append(bad, fmt.Sprintf("%s: another body (%d bytes, want %d)", id, len(a.body), len(want[id])))
				} else {
					bad = append(bad, fmt.Sprintf("%s: %s", id, a))
				}
				mu.Unlock()
			}
		})
	}
	for _, id := range ids {
		next <- id
	}
	close(next)
	wg.Wait()
	slices.Sort(bad)
	return bad
}
