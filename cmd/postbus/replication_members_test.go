//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// memberIDs is the ids a status lists, sorted.
func memberIDs(s replStatus) []string {
	var ids []string
	for _, m := range s.Members {
		ids = append(ids, m.ID)
	}
	slices.Sort(ids)
	return ids
}

// TestReplicaMembership (issue 13): a machine is replaced at run time. A
// new member started with --raft-join is added through a follower (POST
// /v1/replicas, forwarded to the leader) and catches up; an old one is
// removed (DELETE /v1/replicas/{id}) and stopped; the group of the new
// three then loses its leader and still serves every message, and the
// new member's own copy holds them all. Bad membership requests are 4xx
// with their codes, and a standalone broker answers 404 not_replicated.
func TestReplicaMembership(t *testing.T) {
	solo := start(t, "broker", "--data", t.TempDir())
	a := clDo(t, "GET", solo.url+"/v1/replicas", nil, nil)
	if code, _ := problemOf(a); a.status != http.StatusNotFound || code != "not_replicated" {
		t.Errorf("GET /v1/replicas on a standalone broker: %s; want 404 not_replicated", a)
	}

	g := startReplGroup(t, replOpts{})
	sink := newReplSink(t)
	const topic = "members"
	replSetup(t, g, sink, topic)
	l := newReplLoad(g, topic, "pull-"+topic, 7)
	stop := make(chan struct{})
	var pubs sync.WaitGroup
	for w := range 3 {
		pubs.Go(func() { l.publisher(w, stop, 10_000) })
	}
	stopPubs := sync.OnceFunc(func() { close(stop); pubs.Wait() })
	defer stopPubs()
	waitFor(t, replWait, "100 messages acknowledged", func() (bool, string) {
		n, _ := l.count(time.Time{})
		return n >= 100, fmt.Sprintf("%d acknowledged", n)
	})

	leader, _, err := g.waitLeader(replWait)
	if err != nil {
		t.Fatal(err)
	}
	var follower, old *replMember
	for _, m := range g.members {
		switch {
		case m == leader:
		case follower == nil:
			follower = m
		default:
			old = m
		}
	}

	// Bad requests first: each is refused, and changes nothing.
	for _, c := range []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"no addr", "POST", "/v1/replicas", `{"id":"n9"}`, 400, "invalid_member"},
		{"no id", "POST", "/v1/replicas", `{"addr":"127.0.0.1:1"}`, 400, "invalid_member"},
		{"not JSON", "POST", "/v1/replicas", `{"id":`, 400, "invalid_json"},
		{"unknown field", "POST", "/v1/replicas", `{"id":"n9","addr":"127.0.0.1:1","voter":true}`, 400, "invalid_json"},
		// As every JSON body: nothing but whitespace after the value (R4).
		{"trailing data", "POST", "/v1/replicas", `{"id":"n9","addr":"127.0.0.1:1"}x`, 400, "invalid_json"},
		{"unknown member", "DELETE", "/v1/replicas/n8", ``, 404, "member_not_found"},
	} {
		for _, via := range []*replMember{leader, follower} {
			var body []byte
			if c.body != "" {
				body = []byte(c.body)
			}
			a, err := g.call(c.method, via.url+c.path, body, replWait)
			if err != nil {
				t.Errorf("%s through %s: %v", c.name, via.id, err)
				continue
			}
			if code, _ := problemOf(a); a.status != c.status || code != c.code {
				t.Errorf("%s through %s: %s; want %d %s", c.name, via.id, a, c.status, c.code)
			}
		}
	}
	if s, err := g.status(leader); err != nil || !slices.Equal(memberIDs(s), []string{"n1", "n2", "n3"}) {
		t.Errorf("after the refused changes the leader lists %v (%v); want n1 n2 n3", memberIDs(s), err)
		// A member n9 added by a request that should have been refused
		// would count in the majority: take it out for the rest.
		if a, err := g.call("DELETE", leader.url+"/v1/replicas/n9", nil, replWait); err != nil || a.status != http.StatusOK {
			t.Fatalf("DELETE /v1/replicas/n9: %s", answerOf(a, err))
		}
	}

	// The new machine: started to join, added through a follower.
	n4 := g.joinMember("n4")
	body, _ := json.Marshal(map[string]string{"id": n4.id, "addr": n4.raftAddr})
	a, err = g.call("POST", follower.url+"/v1/replicas", body, replWait)
	if err != nil || a.status != http.StatusOK {
		t.Fatalf("POST /v1/replicas n4 through %s: %s", follower.id, answerOf(a, err))
	}
	var added replStatus
	if err := json.Unmarshal(a.body, &added); err != nil {
		t.Fatalf("POST /v1/replicas answered %s: %v", a, err)
	}
	if !slices.Equal(memberIDs(added), []string{"n1", "n2", "n3", "n4"}) {
		t.Errorf("POST /v1/replicas answered members %v; want n1..n4", memberIDs(added))
	}
	g.setMembers(append(slices.Clone(g.members), n4))
	if took, err := g.waitCaughtUp(n4, replWait); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("n4 caught up %s after it was added", took.Round(time.Millisecond))
	}

	// The old machine: removed through the new one, then stopped.
	a, err = g.call("DELETE", n4.url+"/v1/replicas/"+old.id, nil, replWait)
	if err != nil || a.status != http.StatusOK {
		t.Fatalf("DELETE /v1/replicas/%s through n4: %s", old.id, answerOf(a, err))
	}
	var removed replStatus
	if err := json.Unmarshal(a.body, &removed); err != nil {
		t.Fatalf("DELETE /v1/replicas answered %s: %v", a, err)
	}
	if slices.Contains(memberIDs(removed), old.id) {
		t.Errorf("DELETE /v1/replicas/%s answered members %v", old.id, memberIDs(removed))
	}
	g.kill(old)
	g.setMembers(slices.DeleteFunc(slices.Clone(g.members), func(m *replMember) bool { return m == old }))
	for _, m := range g.members {
		waitFor(t, replWait, m.id+" to list the new members", func() (bool, string) {
			s, err := g.status(m)
			if err != nil {
				return false, err.Error()
			}
			want := []string{"n1", "n2", "n3", "n4"}
			want = slices.DeleteFunc(want, func(id string) bool { return id == old.id })
			return slices.Equal(memberIDs(s), want), fmt.Sprint(memberIDs(s))
		})
	}

	// The new three lose their leader: the two left (n4 among them) elect
	// one and serve everything.
	stopPubs()
	leader, _, err = g.waitLeader(replWait)
	if err != nil {
		t.Fatal(err)
	}
	g.kill(leader)
	if l2, took, err := g.waitLeader(replFailoverBound); err != nil {
		t.Fatalf("after %s (leader of n4's group) was killed: %v", leader.id, err)
	} else {
		t.Logf("%s leads %s after %s's kill", l2.id, took.Round(time.Millisecond), leader.id)
	}
	for _, m := range g.members {
		if m == leader {
			continue
		}
		if bad := l.unreadable(m.url); len(bad) > 0 {
			t.Errorf("%d of %d acknowledged messages not read through %s; the first: %s", len(bad), len(l.ackedBodies()), m.id, strings.Join(bad[:min(len(bad), 10)], "; "))
		}
	}
	a, err = replPublish(replPubClient, n4, topic, []byte("after the replacement"), "after-replacement")
	if err != nil || a.status != http.StatusCreated {
		t.Errorf("a publish through n4 after the replacement: %s", answerOf(a, err))
	}
	g.restart(leader)
	if _, err := g.waitCaughtUp(leader, replWait); err != nil {
		t.Error(err)
	}
	checkCopies(t, g, l)
}
