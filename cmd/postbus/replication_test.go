//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// replFailoverBound is how long the group may go without a leader after
// its leader is SIGKILLed, with the short timeouts: a few election
// timeouts, and a margin for a loaded 2-core machine under -race.
const replFailoverBound = 10 * time.Second

// replWait bounds every other "eventually" of these tests (catch-up,
// delivery, pulls).
const replWait = 60 * time.Second

// replSetup creates the topic, a push subscription to sink and a pull
// group, each through another member (a follower forwards them).
func replSetup(t *testing.T, g *replGroup, sink *replSink, topic string) {
	t.Helper()
	via := func(i int) string { return g.members[i%len(g.members)].url }
	if a, err := g.call("PUT", via(0)+"/v1/topics/"+topic, []byte(`{"queues":4}`), replWait); err != nil || a.status != 201 && a.status != 200 {
		t.Fatalf("PUT /v1/topics/%s through %s: %s", topic, g.members[0].id, answerOf(a, err))
	}
	push, _ := json.Marshal(map[string]any{"group": "push-" + topic, "topic": topic, "url": sink.srv.URL + "/h",
		"retry_delays": []string{"200ms", "1s"}, "max_retries": 16, "timeout": "2s"})
	a, err := g.call("POST", via(1)+"/v1/subscriptions", push, replWait)
	if err != nil || a.status != 201 {
		t.Fatalf("create the push subscription through %s: %s", g.members[1%len(g.members)].id, answerOf(a, err))
	}
	var sub struct {
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal(a.body, &sub); err != nil || sub.Secret == "" {
		t.Fatalf("the push subscription's create answered no secret (%v): %s", err, a)
	}
	sink.mu.Lock()
	sink.secret = sub.Secret
	sink.mu.Unlock()
	pull, _ := json.Marshal(map[string]any{"group": "pull-" + topic, "topic": topic, "start_from": "earliest", "visibility": "5s"})
	if a, err := g.call("POST", via(2)+"/v1/subscriptions", pull, replWait); err != nil || a.status != 201 {
		t.Fatalf("create the pull group through %s: %s", g.members[2%len(g.members)].id, answerOf(a, err))
	}
}

// waitFor polls cond every 50ms until it holds or limit passes; it says
// how long that took, and fails the test with the last state otherwise.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	began := time.Now()
	for {
		ok, state := cond()
		if ok {
			return time.Since(began)
		}
		if time.Since(began) > limit {
			t.Fatalf("timed out after %s waiting for %s; last seen: %s", limit, what, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkAllReadable fails t for every acknowledged message that one of
// members does not read back byte for byte; each member is first given
// time to catch up with the leader.
func checkAllReadable(t *testing.T, g *replGroup, l *replLoad, why string, members ...*replMember) {
	t.Helper()
	for _, m := range members {
		if took, err := g.waitCaughtUp(m, replWait); err != nil {
			t.Errorf("%s: %v", why, err)
		} else {
			t.Logf("%s: %s caught up in %s", why, m.id, took.Round(time.Millisecond))
		}
		if bad := l.unreadable(m.url); len(bad) > 0 {
			t.Errorf("%s: %d of %d acknowledged messages not read back from %s byte for byte; the first: %s",
				why, len(bad), len(l.ackedBodies()), m.id, strings.Join(bad[:min(len(bad), 10)], "; "))
		}
	}
}

// checkCopies SIGKILLs every member and opens each one's data directory
// with a standalone broker: every acknowledged message must be in every
// member's own copy, byte for byte. (A follower forwards reads to its
// leader, so reading through the group shows the leader's copy only.)
// It returns how many messages some copy lacks.
func checkCopies(t *testing.T, g *replGroup, l *replLoad) int {
	t.Helper()
	for _, m := range g.members {
		g.kill(m)
	}
	lost := map[string]bool{}
	for _, m := range g.members {
		p := start(t, "broker", "--data", m.data, "--disk-clean-ratio", "0.99", "--disk-full-ratio", "0.995")
		bad := l.unreadable(p.url)
		for _, b := range bad {
			id, _, _ := strings.Cut(b, ":")
			lost[id] = true
		}
		if len(bad) > 0 {
			t.Errorf("%d of %d acknowledged messages missing from %s's copy (its data directory opened standalone); the first: %s",
				len(bad), len(l.ackedBodies()), m.id, strings.Join(bad[:min(len(bad), 10)], "; "))
		}
		p.cmd.Process.Kill()
		<-p.done
	}
	return len(lost)
}

// TestReplicaGroupFailover (issue 13): a group of three, concurrent
// publishers through every member with dedup ids, the leader SIGKILLed in
// the middle. Every message answered 201 reads back byte for byte on the
// survivors and is delivered to a webhook (a repeat with the same
// webhook-id) and pulled; a new leader is elected within the bound and
// publishes succeed again; the killed member rejoins and catches up; a
// follower whose data directory was deleted rejoins with the same flags
// and catches up; and those two alone, the third killed, serve every
// message.
func TestReplicaGroupFailover(t *testing.T) {
	const seed = 13
	t.Logf("seed %d", seed)
	// Snapshots every 64 entries, keeping 16 behind them: a wiped member
	// is far behind the log's start and is restored by a snapshot.
	g := startReplGroup(t, replOpts{extra: []string{"--raft-snapshot-threshold", "64", "--raft-snapshot-interval", "1s", "--raft-trailing-logs", "16"}})
	sink := newReplSink(t)
	const topic = "repl"
	replSetup(t, g, sink, topic)
	l := newReplLoad(g, topic, "pull-"+topic, seed)

	stopAll := l.start(6, 2)
	defer stopAll()

	waitFor(t, replWait, "200 messages acknowledged before the failover", func() (bool, string) {
		n, _ := l.count(time.Time{})
		return n >= 200, fmt.Sprintf("%d acknowledged", n)
	})

	// The leader dies in the middle of the publishing.
	old, _, err := g.waitLeader(replWait)
	if err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	g.kill(old)
	t.Logf("SIGKILLed the leader %s", old.id)
	leader, elected, err := g.waitLeader(replFailoverBound)
	if err != nil {
		t.Fatalf("after the leader %s was SIGKILLed: %v", old.id, err)
	}
	if leader == old {
		t.Fatalf("the killed member %s is named leader", old.id)
	}
	t.Logf("new leader %s, %s after the kill", leader.id, elected.Round(time.Millisecond))
	// The name server routes the broker name to the new leader.
	took := waitFor(t, replWait, "the name server to list "+g.name+" at the new leader "+leader.url, func() (bool, string) {
		addr, err := g.registeredAt()
		return err == nil && addr == leader.url, fmt.Sprintf("%q, %v", addr, err)
	})
	t.Logf("the name server lists %s at %s %s after the election", g.name, leader.id, took.Round(time.Millisecond))

	// Publishes succeed again: through the survivors, 200 more.
	waitFor(t, replWait, "200 messages acknowledged after the failover", func() (bool, string) {
		_, after := l.count(killedAt)
		return after >= 200, fmt.Sprintf("%d acknowledged after the kill", after)
	})
	if first, ok := l.firstAckAfter(killedAt); ok {
		t.Logf("failover: the first 201 to a publish sent after the kill came %s after it", first.Sub(killedAt).Round(time.Millisecond))
	}
	stopAll()
	all, after := l.count(killedAt)
	l.mu.Lock()
	t.Logf("publishes: %d requests, %d messages acknowledged (%d after the kill), %d given up, %d refused",
		l.tries, all, after, l.gaveUp, len(l.refused))
	if len(l.refused) > 0 {
		t.Errorf("%d publishes refused (4xx) although the group had a leader within the bound; the first: %s", len(l.refused), strings.Join(l.refused[:min(len(l.refused), 5)], "; "))
	}
	if len(l.conflicts) > 0 {
		t.Errorf("%d dedup ids answered with two message ids; the first: %s", len(l.conflicts), strings.Join(l.conflicts[:min(len(l.conflicts), 5)], "; "))
	}
	if len(l.shardMoved) > 0 {
		t.Errorf("%d sharding keys answered with another queue; the first: %s", len(l.shardMoved), strings.Join(l.shardMoved[:min(len(l.shardMoved), 5)], "; "))
	}
	if l.gaveUp > 0 {
		t.Errorf("%d messages not acknowledged within %s of retries with their dedup id", l.gaveUp, replRetryBound)
	}
	l.mu.Unlock()

	var survivors []*replMember
	for _, m := range g.members {
		if m != old {
			survivors = append(survivors, m)
		}
	}
	checkAllReadable(t, g, l, "after the leader's SIGKILL", survivors...)

	// Push: every acknowledged message delivered, repeats with the same
	// webhook-id (the sink checks webhook-id = Postbus-Message-Id).
	want := l.ackedBodies()
	waitFor(t, replWait, "every acknowledged message delivered to the webhook", func() (bool, string) {
		missing, _ := sink.missing(want)
		return len(missing) == 0, fmt.Sprintf("%d of %d not delivered, e.g. %v", len(missing), len(want), missing[:min(len(missing), 5)])
	})
	_, pushRepeats := sink.missing(want)
	sink.mu.Lock()
	if len(sink.bad) > 0 {
		t.Errorf("%d deliveries whose webhook-id is not their message id; the first: %s", len(sink.bad), sink.bad[0])
	}
	sink.mu.Unlock()

	// Pull: every acknowledged message pulled, no message stored twice.
	stopPull2 := make(chan struct{})
	var pullers2 sync.WaitGroup
	for n := range 2 {
		pullers2.Go(func() { l.puller(10+n, stopPull2) })
	}
	waitFor(t, replWait, "every acknowledged message pulled", func() (bool, string) {
		missing, _ := l.unpulled()
		return len(missing) == 0, fmt.Sprintf("%d of %d not pulled, e.g. %v", len(missing), len(want), missing[:min(len(missing), 5)])
	})
	close(stopPull2)
	pullers2.Wait()
	_, pullRepeats := l.unpulled()
	l.mu.Lock()
	if len(l.again) > 0 {
		t.Errorf("%d messages pulled again after an ack answered \"acked\"; the first: %s", len(l.again), strings.Join(l.again[:min(len(l.again), 5)], "; "))
	}
	if len(l.pullBad) > 0 {
		t.Errorf("%d pulls or acks answered 200 with a wrong body; the first: %s", len(l.pullBad), l.pullBad[0])
	}
	l.mu.Unlock()
	if twice := l.storedTwice(); len(twice) > 0 {
		t.Errorf("%d messages stored twice (one body, one dedup id, two message ids); the first: %s", len(twice), strings.Join(twice[:min(len(twice), 5)], "; "))
	}
	t.Logf("delivered: %d push repeats, %d pull repeats over %d messages", pushRepeats, pullRepeats, len(want))

	// The killed member rejoins on its data and catches up.
	g.restart(old)
	checkAllReadable(t, g, l, "the killed member back", old)

	// A follower loses its disk and rejoins with the same flags.
	leader, _, err = g.waitLeader(replWait)
	if err != nil {
		t.Fatal(err)
	}
	var wiped *replMember
	for _, m := range g.members {
		if m != leader {
			wiped = m
			break
		}
	}
	g.wipe(wiped)
	t.Logf("%s restarted with its data directory deleted", wiped.id)
	checkAllReadable(t, g, l, "the wiped follower back", wiped)
	if n, err := replMetric(wiped, "postbus_raft_snapshot_restores_total"); err != nil || n < 1 {
		t.Errorf("the wiped %s caught up with %v snapshot restores (%v); want at least one (the log it needs was compacted)", wiped.id, n, err)
	}

	// Those two alone (the leader killed now) serve every message and
	// take publishes: the wiped member's copy is whole.
	g.kill(leader)
	newLeader, took, err := g.waitLeader(replFailoverBound)
	if err != nil {
		t.Fatalf("after the second leader %s was SIGKILLed: %v", leader.id, err)
	}
	t.Logf("second failover: %s leads %s after %s's kill", newLeader.id, took.Round(time.Millisecond), leader.id)
	var rest []*replMember
	for _, m := range g.members {
		if m != leader {
			rest = append(rest, m)
		}
	}
	for _, m := range rest {
		if bad := l.unreadable(m.url); len(bad) > 0 {
			t.Errorf("with %s killed: %d acknowledged messages not read back from %s; the first: %s", leader.id, len(bad), m.id, strings.Join(bad[:min(len(bad), 10)], "; "))
		}
	}
	a, err := replPublish(replPubClient, wiped, topic, []byte("after the second failover"), "last")
	if err != nil || a.status != http.StatusCreated {
		t.Errorf("a publish through %s after the second failover: %s", wiped.id, answerOf(a, err))
	}
	if errs := g.errorLines(); len(errs) > 0 {
		t.Logf("ERROR lines the members logged (how many, what):\n  %s", strings.Join(errs, "\n  "))
	}

	// Every member's own files hold every message: the killed leader's
	// once it is back, and the wiped one's.
	g.restart(leader)
	if _, err := g.waitCaughtUp(leader, replWait); err != nil {
		t.Error(err)
	}
	checkCopies(t, g, l)
}
