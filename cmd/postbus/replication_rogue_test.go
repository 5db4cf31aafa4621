//go:build unix

package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestReplicaRogueGroupRefused (A9): a member wiped and started with its
// own --raft-peers bootstraps a group of its own under the group's broker
// name (same secret, same name servers). That group has another id, so
// the name server refuses its leader's registration while the real
// group's leader is live (409 broker_name_taken, counted, ERROR on both
// sides): the name stays with the real group, and the rogue says it is
// not ready and refuses writes, instead of the name flapping between the
// two leaders.
func TestReplicaRogueGroupRefused(t *testing.T) {
	g := startReplGroup(t, replOpts{})
	leader, _, err := g.waitLeader(replWait)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, replWait, "the name server to list the group at its leader", func() (bool, string) {
		at, err := g.registeredAt()
		return err == nil && at == leader.url, fmt.Sprintf("%q %v (leader %s)", at, err, leader.url)
	})
	if a, err := g.call("PUT", leader.url+"/v1/topics/real", []byte(`{"queues":2}`), replWait); err != nil || a.status != 201 {
		t.Fatalf("create a topic on the real group: %s", answerOf(a, err))
	}

	rogue := &replMember{id: "n1", bindAddr: freeAddr(t), data: t.TempDir()}
	rogue.raftAddr = rogue.bindAddr
	rogue.args = g.memberArgs(rogue, "--raft-peers", "n1="+rogue.raftAddr)
	if err := g.startMember(rogue); err != nil {
		t.Fatal(err)
	}
	defer g.kill(rogue)
	ns := &replMember{id: "namesrv", url: g.ns.url}
	// Until the rogue has been refused twice (it heartbeats every 300 ms
	// once it leads its own group), the name must never move to it.
	waitFor(t, replWait, "the rogue group's registration to be refused", func() (bool, string) {
		at, err := g.registeredAt()
		if err == nil && at == rogue.url {
			t.Fatalf("the name server moved broker %s to the rogue group's leader %s", g.name, rogue.url)
		}
		refused, merr := replMetric(ns, "postbus_namesrv_registrations_refused_total")
		a, rerr := clCall(replStatusClient, "GET", rogue.url+"/readyz", nil, nil)
		ok := merr == nil && refused >= 2 && rerr == nil && a.status == http.StatusServiceUnavailable &&
			strings.Contains(string(a.body), "refuse this broker's name")
		return ok, fmt.Sprintf("registered at %q (%v); refusals %v (%v); rogue /readyz %s", at, err, refused, merr, answerOf(a, rerr))
	})
	if at, err := g.registeredAt(); err != nil || at != leader.url {
		t.Fatalf("after the rogue's refusals the name server lists %s at %q (%v), want the real leader %s", g.name, at, err, leader.url)
	}
	// The rogue takes no writes; the real group does.
	if a, err := clCall(replPubClient, "PUT", rogue.url+"/v1/topics/rogue", nil, []byte(`{"queues":1}`)); err != nil || a.status != http.StatusServiceUnavailable {
		t.Errorf("a topic created on the rogue group: %s", answerOf(a, err))
	}
	if a, err := replPublish(replPubClient, leader, "real", []byte("still here"), ""); err != nil || a.status != 201 {
		t.Fatalf("publish on the real group after the rogue came: %s", answerOf(a, err))
	}
	rp := rogue.proc()
	rp.mu.Lock()
	logs := rp.logs.String()
	rp.mu.Unlock()
	if !strings.Contains(logs, "name server refuses this broker's name") || !strings.Contains(logs, `"level":"ERROR"`) {
		t.Errorf("the rogue's log does not say at ERROR that its name was refused:\n%s", logs)
	}
}
