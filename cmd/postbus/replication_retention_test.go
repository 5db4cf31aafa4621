//go:build unix

package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// segmentFiles lists the commitlog segment files in a member's data.
func segmentFiles(t *testing.T, m *replMember) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(m.data, "commitlog"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		if len(e.Name()) == 20 && strings.Trim(e.Name(), "0123456789") == "" {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestReplicaRetentionCutEverywhere (A4): one member's disk is fuller
// (it runs with a clean watermark below any disk's use). Following, it
// deletes nothing and says so (/readyz 503, postbus_raft_disk_over_clean).
// Leading, it cuts the oldest segments, and the cut is the group's:
// every member deletes the same segments, so after a failover away from
// it the group serves the same messages, not the ones it had dropped
// coming back (nor, the other way, acknowledged messages vanishing).
func TestReplicaRetentionCutEverywhere(t *testing.T) {
	g := startReplGroup(t, replOpts{})
	full := g.members[2]
	g.kill(full)
	full.args = append(full.args, "--disk-clean-ratio", "0.001", "--disk-full-ratio", "0.999", "--retention-check-interval", "200ms")
	g.restart(full)
	leader, _, err := g.waitLeader(replWait)
	if err != nil {
		t.Fatal(err)
	}
	if a, err := g.call("PUT", leader.url+"/v1/topics/dc", []byte(`{"queues":1}`), replWait); err != nil || a.status != 201 {
		t.Fatalf("create topic: %s", answerOf(a, err))
	}
	// About 12 MiB: three 4 MiB segments and some.
	var ids []string
	for i := range 50 {
		items := make([]replBatchItem, 60)
		for j := range items {
			items[j] = replBatchItem{BodyBase64: base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("dc-%d-%d-%s", i, j, strings.Repeat("x", 4000)))),
				DedupID: fmt.Sprintf("dc-%d-%d", i, j)}
		}
		body, _ := json.Marshal(items)
		l, _, err := g.waitLeader(replWait)
		if err != nil {
			t.Fatal(err)
		}
		a, err := g.call("POST", l.url+"/v1/topics/dc/messages/batch", body, replWait)
		if err != nil || a.status != http.StatusCreated {
			t.Fatalf("batch %d: %s", i, answerOf(a, err))
		}
		var res []struct {
			MsgID string `json:"msg_id"`
		}
		if err := json.Unmarshal(a.body, &res); err != nil || len(res) != len(items) {
			t.Fatalf("batch %d: answer %v: %s", i, err, a)
		}
		for _, r := range res {
			ids = append(ids, r.MsgID)
		}
	}
	if _, err := g.waitCaughtUp(full, replWait); err != nil {
		t.Fatal(err)
	}
	all := segmentFiles(t, g.members[0])
	if len(all) < 3 {
		t.Fatalf("only %d segments written: %v", len(all), all)
	}
	if full != leader {
		// Following over its watermark: nothing deleted, and said.
		waitFor(t, replWait, "the full follower to report its disk", func() (bool, string) {
			v, merr := replMetric(full, "postbus_raft_disk_over_clean")
			a, rerr := clCall(replStatusClient, "GET", full.url+"/readyz", nil, nil)
			return merr == nil && v == 1 && rerr == nil && a.status == http.StatusServiceUnavailable && strings.Contains(string(a.body), "clean watermark"),
				fmt.Sprintf("gauge %v (%v), /readyz %s", v, merr, answerOf(a, rerr))
		})
		if got := segmentFiles(t, full); !slices.Equal(got, all) {
			t.Fatalf("the follower over its watermark deleted segments on its own: %v, the group's %v", got, all)
		}
	}

	// Make it lead: kill whoever else leads until it does.
	for try := 0; ; try++ {
		l, _, err := g.waitLeader(replWait)
		if err != nil {
			t.Fatal(err)
		}
		if l == full {
			break
		}
		if try == 10 {
			t.Fatalf("%s did not get the lead in 10 failovers", full.id)
		}
		g.kill(l)
		if _, _, err := g.waitLeader(replWait); err != nil {
			t.Fatal(err)
		}
		g.restart(l)
		if _, err := g.waitCaughtUp(l, replWait); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, replWait, "the leader with the full disk to cut the log", func() (bool, string) {
		got := segmentFiles(t, full)
		return len(got) < len(all), fmt.Sprint(got)
	})
	cut := segmentFiles(t, full)
	for _, m := range g.members {
		if _, err := g.waitCaughtUp(m, replWait); err != nil {
			t.Fatal(err)
		}
		waitFor(t, replWait, m.id+"'s segments to be the leader's", func() (bool, string) {
			got := segmentFiles(t, m)
			cut = segmentFiles(t, full)
			return slices.Equal(got, cut), fmt.Sprintf("%s holds %v, the leader %v", m.id, got, cut)
		})
	}
	readable := func(via *replMember) (n int) {
		for _, id := range ids {
			a, err := clCall(replStatusClient, "GET", via.url+"/v1/messages/"+id, nil, nil)
			if err == nil && a.status == http.StatusOK {
				n++
			}
		}
		return n
	}
	before := readable(full)
	if before == 0 || before == len(ids) {
		t.Fatalf("with %s leading %d of %d messages are readable; want the cut to have taken some, not all", full.id, before, len(ids))
	}
	// Fail over away from it: the same messages, not the dropped ones back.
	g.kill(full)
	next, _, err := g.waitLeader(replWait)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.waitServing(replWait); err != nil {
		t.Fatal(err)
	}
	if after := readable(next); after != before {
		t.Fatalf("after the failover to %s %d of %d messages are readable; %d were with %s leading", next.id, after, len(ids), before, full.id)
	}
}
