//go:build unix

package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// replMetric is the sum of a metric's samples on the member's /metrics.
func replMetric(m *replMember, name string) (float64, error) {
	a, err := clCall(replStatusClient, "GET", m.url+"/metrics", nil, nil)
	if err != nil {
		return 0, err
	}
	if a.status != http.StatusOK {
		return 0, fmt.Errorf("GET /metrics on %s: %s", m.id, a)
	}
	var sum float64
	found := false
	sc := bufio.NewScanner(bytes.NewReader(a.body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("%s on %s: %q: %w", name, m.id, line, err)
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("%s: no %s on /metrics", m.id, name)
	}
	return sum, nil
}

// TestReplicaRaftSecret (issue 13): raft connections prove the shared
// secret. A member restarted with another secret is refused by the
// others (counted in postbus_raft_connections_refused_total), gets none
// of the entries committed meanwhile and does not unseat the leader; back
// with the group's secret, it catches up.
func TestReplicaRaftSecret(t *testing.T) {
	g := startReplGroup(t, replOpts{})
	sink := newReplSink(t)
	const topic = "secret"
	replSetup(t, g, sink, topic)
	leader, _, err := g.waitLeader(replWait)
	if err != nil {
		t.Fatal(err)
	}
	var intruder *replMember
	for _, m := range g.members {
		if m != leader {
			intruder = m
		}
	}
	g.kill(intruder)
	good := slices.Clone(intruder.args)
	i := slices.Index(intruder.args, "--raft-secret")
	intruder.args[i+1] = strings.Repeat("x", len(replSecret)) // long enough, and wrong
	g.restart(intruder)
	before, err := replMetric(leader, "postbus_raft_connections_refused_total")
	if err != nil {
		t.Fatal(err)
	}

	for i := range 20 {
		a, err := replPublish(replPubClient, leader, topic, fmt.Appendf(nil, "while %s holds another secret: %d", intruder.id, i), fmt.Sprint("secret-", i))
		if err != nil || a.status != http.StatusCreated {
			t.Fatalf("publish %d through the leader %s: %s", i, leader.id, answerOf(a, err))
		}
	}
	// The intruder's election attempts, and the leader's dials to it,
	// are refused on both sides.
	waitFor(t, replWait, "the group to refuse a raft connection from or to "+intruder.id, func() (bool, string) {
		v, err := replMetric(leader, "postbus_raft_connections_refused_total")
		w, err2 := replMetric(intruder, "postbus_raft_connections_refused_total")
		return err == nil && err2 == nil && (v > before || w > 0), fmt.Sprintf("leader %v (%v), %s %v (%v)", v, err, intruder.id, w, err2)
	})
	lead, err := g.applied(leader)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := g.applied(intruder); err != nil || got >= lead {
		t.Errorf("%s with another secret applied %d (%v); the leader %d: it must get none of the entries since", intruder.id, got, err, lead)
	}
	if l2, _, err := g.waitLeader(replWait); err != nil || l2 != leader {
		t.Errorf("the leader after %s came with another secret: %v (%v); want %s still", intruder.id, l2, err, leader.id)
	}

	// Back with the group's secret, it catches up.
	g.kill(intruder)
	intruder.args = good
	g.restart(intruder)
	if took, err := g.waitCaughtUp(intruder, replWait); err != nil {
		t.Error(err)
	} else {
		t.Logf("%s caught up %s after its restart with the group's secret", intruder.id, took.Round(time.Millisecond))
	}
}
