//go:build unix

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postbus/postbus/push"
)

// The harness of the replication tests (issue 13): a name server and a
// replica group of `postbus broker` processes started from the binary on
// 127.0.0.1, sharing one --broker-name, with short raft timeouts; each
// member's raft address optionally behind a tcpProxy so that a test can
// cut, drop or slow the traffic to it. Members are SIGKILLed, hung with
// SIGSTOP, continued, restarted on their data and restarted with their
// data directory deleted.

// replSecret is the group's --raft-secret (at least 32 bytes).
const replSecret = "replication-test-secret-0123456789abcdef"

// replShortTimeouts are raft timeouts short enough for a test, long
// enough for a loaded 2-core machine under -race not to elect all the
// time.
var replShortTimeouts = []string{
	"--raft-heartbeat-timeout", "500ms", "--raft-election-timeout", "500ms",
	"--raft-leader-lease-timeout", "250ms", "--raft-commit-timeout", "20ms",
}

// replStatus is GET /v1/replicas.
type replStatus struct {
	Broker  string             `json:"broker"`
	Leader  string             `json:"leader"`
	Members []replMemberStatus `json:"members"`
}

type replMemberStatus struct {
	ID           string `json:"id"`
	Addr         string `json:"addr"`
	Role         string `json:"role"`
	LastIndex    uint64 `json:"last_index"`
	AppliedIndex uint64 `json:"applied_index"`
}

// self is the entry of the member that answered.
func (s replStatus) self(id string) (replMemberStatus, bool) {
	i := slices.IndexFunc(s.Members, func(m replMemberStatus) bool { return m.ID == id })
	if i < 0 {
		return replMemberStatus{}, false
	}
	return s.Members[i], true
}

// replOpts shapes a group.
type replOpts struct {
	members  int      // 3 unless set
	proxied  bool     // each member's raft address is a proxy in front of it
	timeouts []string // raft timeout flags; nil: replShortTimeouts
	extra    []string // more broker flags
}

// replMember is one process of the group, restarted on its HTTP address,
// raft address and data.
type replMember struct {
	id       string
	raftAddr string    // what the peers list names: the proxy's address when proxied
	bindAddr string    // what the process binds (--raft-addr)
	proxy    *tcpProxy // nil unless proxied
	data     string
	args     []string // with --addr once the first start got one
	url      string

	mu      sync.Mutex
	p       *proc   // guarded by mu; nil while killed
	all     []*proc // guarded by mu: every incarnation, for the logs
	stopped bool    // guarded by mu: SIGSTOPped now
}

func (m *replMember) proc() *proc {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.p
}

// up reports whether the member runs and is not stopped.
func (m *replMember) up() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.p != nil && !m.stopped
}

// replGroup is a name server and the members of one replica group.
type replGroup struct {
	t    testing.TB
	name string
	ns   *proc
	// members are the group's members now: changed by the test's own
	// goroutine only, under mu, which the load's goroutines read them
	// under (list).
	members []*replMember
	mu      sync.Mutex
	every   []*replMember // every member ever started, for the logs
	opts    replOpts
}

// list is a copy of the members, for other goroutines than the test's.
func (g *replGroup) list() []*replMember {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.members)
}

// setMembers changes the group's members (the test's goroutine only).
func (g *replGroup) setMembers(ms []*replMember) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.members = ms
}

// freeAddr is a 127.0.0.1 address nothing listens on at the moment, on a
// port below the kernel's ephemeral range (32768 and up on Linux): a
// member restarted on it must find it free, and a port from that range
// may meanwhile be taken as the local port of some connection (a
// restart then failed with "address already in use" for seconds).
func freeAddr(tb testing.TB) string {
	tb.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000)))
		if err != nil {
			continue // taken: another
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startReplGroup starts a name server and the members of broker-a, and
// waits until they have a leader.
func startReplGroup(tb testing.TB, o replOpts) *replGroup {
	tb.Helper()
	if o.members == 0 {
		o.members = 3
	}
	if o.timeouts == nil {
		o.timeouts = replShortTimeouts
	}
	g := &replGroup{t: tb, name: "broker-a", opts: o}
	g.ns = start(tb, "namesrv", "--broker-expiry", "2s", "--scan-interval", "100ms", "--warm-up", "300ms")
	var peers []string
	for i := range o.members {
		m := &replMember{id: fmt.Sprintf("n%d", i+1), bindAddr: freeAddr(tb), data: tb.TempDir()}
		m.raftAddr = m.bindAddr
		if o.proxied {
			m.proxy = newTCPProxy(tb, "127.0.0.1:0", m.bindAddr)
			m.raftAddr = m.proxy.addr()
		}
		peers = append(peers, m.id+"="+m.raftAddr)
		g.members = append(g.members, m)
	}
	for _, m := range g.members {
		m.args = g.memberArgs(m, "--raft-peers", strings.Join(peers, ","))
		if err := g.startMember(m); err != nil {
			tb.Fatal(err)
		}
	}
	tb.Cleanup(g.saveLogs)
	if _, _, err := g.waitLeader(30 * time.Second); err != nil {
		tb.Fatalf("the group elected no leader: %v", err)
	}
	if err := g.waitServing(30 * time.Second); err != nil {
		tb.Fatal(err)
	}
	return g
}

// waitServing waits until every running member answers a request of the
// API (GET /v1/topics, served by the leader, forwarded by a follower).
func (g *replGroup) waitServing(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for _, m := range g.running() {
		for {
			a, err := clCall(replStatusClient, "GET", m.url+"/v1/topics", nil, nil)
			if err == nil && a.status == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s does not serve GET /v1/topics within %s: %s", m.id, limit, answerOf(a, err))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// call is clCall that retries, as a client should, while the group
// answers 503 (no leader yet, a failover) or does not answer, for at most
// limit.
func (g *replGroup) call(method, url string, body []byte, limit time.Duration) (clAnswer, error) {
	deadline := time.Now().Add(limit)
	for {
		a, err := clCall(replPubClient, method, url, nil, body)
		if (err == nil && a.status != http.StatusServiceUnavailable) || time.Now().After(deadline) {
			return a, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// memberArgs are m's flags: the group's, and how it finds the group
// (--raft-peers LIST, or --raft-join).
func (g *replGroup) memberArgs(m *replMember, how ...string) []string {
	args := append([]string{"broker", "--data", m.data, "--namesrv", g.ns.url, "--broker-name", g.name,
		"--node-id", m.id, "--raft-addr", m.bindAddr, "--raft-secret", replSecret,
		"--heartbeat-interval", "300ms", "--allow-private-webhooks", "--segment-size", "4MiB",
		// What is tested is replication, not a full disk: a shared
		// machine's disk past the default 85% would have segments
		// deleted before their retention.
		"--disk-clean-ratio", "0.99", "--disk-full-ratio", "0.995"}, how...)
	args = append(args, g.opts.timeouts...)
	return append(args, g.opts.extra...)
}

// joinMember starts a new member, id, with --raft-join: it waits to be
// added (POST /v1/replicas); it is not among g.members until added.
func (g *replGroup) joinMember(id string) *replMember {
	g.t.Helper()
	m := &replMember{id: id, bindAddr: freeAddr(g.t), data: g.t.TempDir()}
	m.raftAddr = m.bindAddr
	m.args = g.memberArgs(m, "--raft-join")
	if err := g.startMember(m); err != nil {
		g.t.Fatal(err)
	}
	return m
}

// startMember starts m (on its first HTTP address from its second start
// on) without waiting for /readyz: a member alone may not be ready until
// the group has a leader.
func (g *replGroup) startMember(m *replMember) error {
	if !slices.Contains(g.every, m) {
		g.every = append(g.every, m)
	}
	var err error
	for try := range 20 {
		var p *proc
		if p, err = spawn(g.t, false, false, m.args...); err == nil {
			m.mu.Lock()
			m.p, m.stopped = p, false
			m.all = append(m.all, p)
			m.mu.Unlock()
			if m.url == "" {
				m.url = p.url
				m.args = append(m.args, "--addr", strings.TrimPrefix(p.url, "http://"))
			}
			return nil
		}
		// The old address may be taken for a moment (a connection in
		// another process got it as its local port); anything else is
		// the member's own fault.
		if !strings.Contains(err.Error(), "address already in use") {
			return fmt.Errorf("%s does not start: %w", m.id, err)
		}
		g.t.Logf("starting %s, try %d: an address is in use", m.id, try+1)
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("%s does not start: %w", m.id, err)
}

// kill SIGKILLs m and waits until it has exited.
func (g *replGroup) kill(m *replMember) {
	m.mu.Lock()
	p := m.p
	m.p, m.stopped = nil, false
	m.mu.Unlock()
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop hangs m with SIGSTOP: to its peers, a partition.
func (g *replGroup) stop(m *replMember) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.p != nil && !m.stopped {
		m.p.cmd.Process.Signal(syscall.SIGSTOP)
		m.stopped = true
	}
}

func (g *replGroup) cont(m *replMember) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.p != nil && m.stopped {
		m.p.cmd.Process.Signal(syscall.SIGCONT)
		m.stopped = false
	}
}

// restart starts a killed m again on its data, with the same flags.
func (g *replGroup) restart(m *replMember) {
	g.t.Helper()
	if err := g.startMember(m); err != nil {
		g.t.Fatal(err)
	}
}

// wipe kills m, deletes its data directory and starts it again with the
// same flags: a machine whose disk was replaced.
func (g *replGroup) wipe(m *replMember) {
	g.t.Helper()
	g.kill(m)
	if err := os.RemoveAll(m.data); err != nil {
		g.t.Fatal(err)
	}
	if err := os.MkdirAll(m.data, 0o755); err != nil {
		g.t.Fatal(err)
	}
	g.restart(m)
}

func (g *replGroup) member(id string) *replMember {
	for _, m := range g.members {
		if m.id == id {
			return m
		}
	}
	return nil
}

// running is every member that runs and is not stopped.
func (g *replGroup) running() []*replMember {
	var up []*replMember
	for _, m := range g.members {
		if m.up() {
			up = append(up, m)
		}
	}
	return up
}

var replStatusClient = &http.Client{Timeout: 2 * time.Second}

// status is m's GET /v1/replicas.
func (g *replGroup) status(m *replMember) (replStatus, error) {
	a, err := clCall(replStatusClient, "GET", m.url+"/v1/replicas", nil, nil)
	if err != nil {
		return replStatus{}, err
	}
	if a.status != http.StatusOK {
		return replStatus{}, fmt.Errorf("GET /v1/replicas on %s: %s", m.id, a)
	}
	var s replStatus
	if err := json.Unmarshal(a.body, &s); err != nil {
		return replStatus{}, fmt.Errorf("GET /v1/replicas on %s: %w: %s", m.id, err, a)
	}
	return s, nil
}

// leaderNow is the member that says it leads and that a majority of the
// group's members (counting it) name as leader; nil, with what was seen,
// if there is none.
func (g *replGroup) leaderNow() (*replMember, string) {
	votes := map[string]int{}
	var seen []string
	self := map[string]bool{}
	for _, m := range g.running() {
		s, err := g.status(m)
		if err != nil {
			seen = append(seen, fmt.Sprintf("%s: %v", m.id, err))
			continue
		}
		seen = append(seen, fmt.Sprintf("%s: leader %q", m.id, s.Leader))
		if s.Leader != "" {
			votes[s.Leader]++
		}
		if me, ok := s.self(m.id); ok && me.Role == "leader" && s.Leader == m.id {
			self[m.id] = true
		}
	}
	for id, n := range votes {
		if self[id] && n > len(g.members)/2 {
			return g.member(id), strings.Join(seen, "; ")
		}
	}
	return nil, strings.Join(seen, "; ")
}

// waitLeader waits until the group has a leader; it says how long that
// took.
func (g *replGroup) waitLeader(limit time.Duration) (*replMember, time.Duration, error) {
	began := time.Now()
	for {
		l, seen := g.leaderNow()
		if l != nil {
			return l, time.Since(began), nil
		}
		if time.Since(began) > limit {
			return nil, time.Since(began), fmt.Errorf("no leader within %s; last seen: %s", limit, seen)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// registeredAt is the address the name server lists the group's broker
// name at ("" when it does not list it).
func (g *replGroup) registeredAt() (string, error) {
	a, err := clCall(replStatusClient, "GET", g.ns.url+"/v1/cluster", nil, nil)
	if err != nil {
		return "", err
	}
	var c struct {
		Brokers []struct {
			Name string `json:"name"`
			Addr string `json:"addr"`
		} `json:"brokers"`
	}
	if err := json.Unmarshal(a.body, &c); err != nil {
		return "", fmt.Errorf("GET /v1/cluster: %w: %s", err, a)
	}
	for _, b := range c.Brokers {
		if b.Name == g.name {
			return b.Addr, nil
		}
	}
	return "", nil
}

// applied is m's own applied index.
func (g *replGroup) applied(m *replMember) (uint64, error) {
	s, err := g.status(m)
	if err != nil {
		return 0, err
	}
	me, ok := s.self(m.id)
	if !ok {
		return 0, fmt.Errorf("%s does not list itself: %+v", m.id, s)
	}
	return me.AppliedIndex, nil
}

// waitCaughtUp waits until m's applied index reaches the leader's as it
// was when the wait began; it says how long that took.
func (g *replGroup) waitCaughtUp(m *replMember, limit time.Duration) (time.Duration, error) {
	began := time.Now()
	l, _, err := g.waitLeader(limit)
	if err != nil {
		return 0, err
	}
	target, err := g.applied(l)
	if err != nil {
		return 0, fmt.Errorf("the leader %s: %w", l.id, err)
	}
	var last string
	for {
		got, err := g.applied(m)
		if err == nil && got >= target {
			return time.Since(began), nil
		}
		last = fmt.Sprintf("applied %d, %v", got, err)
		if time.Since(began) > limit {
			return time.Since(began), fmt.Errorf("%s did not reach the leader %s's applied index %d within %s; last: %s", m.id, l.id, target, limit, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// saveLogs writes every incarnation's output to files when the test
// failed, and says where.
func (g *replGroup) saveLogs() {
	if !g.t.Failed() {
		return
	}
	dir, err := os.MkdirTemp("", "postbus-repl-logs-")
	if err != nil {
		g.t.Logf("keep the logs: %v", err)
		return
	}
	for _, m := range g.every {
		m.mu.Lock()
		all := slices.Clone(m.all)
		m.mu.Unlock()
		for i, p := range all {
			name := filepath.Join(dir, fmt.Sprintf("%s.%d.log", m.id, i+1))
			if err := os.WriteFile(name, []byte(p.Logs()), 0o644); err != nil {
				g.t.Logf("write %s: %v", name, err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "namesrv.log"), []byte(g.ns.Logs()), 0o644); err != nil {
		g.t.Logf("write namesrv.log: %v", err)
	}
	g.t.Logf("the members' logs are in %s", dir)
}

// errorLines counts the ERROR lines every incarnation logged, by message.
func (g *replGroup) errorLines() []string {
	count := map[string]int{}
	for _, m := range g.every {
		m.mu.Lock()
		all := slices.Clone(m.all)
		m.mu.Unlock()
		for _, p := range all {
			for _, line := range strings.Split(p.Logs(), "\n") {
				var rec struct {
					Level string `json:"level"`
					Msg   string `json:"msg"`
				}
				if json.Unmarshal([]byte(line), &rec) == nil && rec.Level == "ERROR" {
					count[rec.Msg]++
				}
			}
		}
	}
	var out []string
	for msg, n := range count {
		out = append(out, fmt.Sprintf("%5d %s", n, msg))
	}
	slices.Sort(out)
	return out
}

// replSink is a webhook endpoint that records every delivery.
type replSink struct {
	srv    *httptest.Server
	mu     sync.Mutex
	got    map[string][]replDelivery // guarded by mu: by Postbus-Message-Id
	bad    []string                  // guarded by mu: deliveries whose headers or signature are wrong
	secret string                    // guarded by mu: the subscription's signing secret, once created
}

type replDelivery struct {
	webhookID string
	body      []byte
	attempt   int
	at        time.Time
	failed    bool // the sink answered 503
}

func newReplSink(tb testing.TB) *replSink {
	s := &replSink{got: map[string][]replDelivery{}}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		id := r.Header.Get(push.HeaderMessageID)
		attempt, _ := strconv.Atoi(r.Header.Get(push.HeaderAttempt))
		d := replDelivery{webhookID: r.Header.Get(push.HeaderWebhookID), body: body, attempt: attempt, at: time.Now()}
		// The first attempt of one message in 16 fails: its retry is a
		// timer that must fire on whichever member leads by then.
		h := fnv.New32a()
		h.Write([]byte(id))
		d.failed = attempt == 1 && h.Sum32()%16 == 0
		s.mu.Lock()
		s.got[id] = append(s.got[id], d)
		if id == "" || d.webhookID != id {
			s.bad = append(s.bad, fmt.Sprintf("a delivery with %s %q and %s %q", push.HeaderMessageID, id, push.HeaderWebhookID, d.webhookID))
		}
		// Every member signs with the subscription's replicated secret: a
		// delivery from a new leader verifies as one from the old.
		if s.secret != "" {
			if err := push.VerifyStandardWebhook(s.secret, r.Header, body, 10*time.Minute, time.Now()); err != nil {
				s.bad = append(s.bad, fmt.Sprintf("a delivery of %s (attempt %d) whose signature does not verify: %v", id, attempt, err))
			}
		}
		s.mu.Unlock()
		if d.failed {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	tb.Cleanup(s.srv.Close)
	return s
}

// missing is the messages of want (id -> body) not delivered, or
// delivered with another body; and how many deliveries were repeats.
func (s *replSink) missing(want map[string][]byte) (missing []string, repeats int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, body := range want {
		ds := s.got[id]
		if !slices.ContainsFunc(ds, func(d replDelivery) bool { return !d.failed && bytes.Equal(d.body, body) }) {
			missing = append(missing, id)
		}
	}
	for _, ds := range s.got {
		repeats += max(len(ds)-1, 0)
	}
	slices.Sort(missing)
	return missing, repeats
}

// replPublish publishes one message with a dedup id through m.
func replPublish(c *http.Client, m *replMember, topic string, body []byte, dedup string) (clAnswer, error) {
	return clCall(c, "POST", m.url+"/v1/topics/"+topic+"/messages",
		map[string]string{"Content-Type": "application/octet-stream", "Postbus-Dedup-Id": dedup}, body)
}

// replBatchItem is one message of a batch publish.
type replBatchItem struct {
	BodyBase64  string `json:"body_base64"`
	DedupID     string `json:"dedup_id"`
	ShardingKey string `json:"sharding_key,omitempty"`
	Delay       string `json:"delay,omitempty"`
}

// percentile is the p-th percentile (0..100) of ds, 0 for none.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, (len(s)*p)/100)]
}
