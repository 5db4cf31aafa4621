package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestTopicDeleteTakesItsDeadLetters (attack F14): a topic's delete took
// its messages but left its dead letters in the groups' dead-letter
// queues, and "redrive all" then delivered them into a topic created
// again under the name. They go with the topic now; another topic's dead
// letters in the same group stay.
func TestTopicDeleteTakesItsDeadLetters(t *testing.T) {
	p := start(t, "broker", "--data", t.TempDir(), "--auto-create-topics")
	text := map[string]string{"Content-Type": "text/plain"}
	must := func(a clAnswer, status int, what string) clAnswer {
		t.Helper()
		if a.status != status {
			t.Fatalf("%s: %s, want %d", what, a, status)
		}
		return a
	}
	for _, topic := range []string{"doomed", "kept"} {
		must(clDo(t, "POST", p.url+"/v1/subscriptions", nil, []byte(`{"group":"dg","topic":"`+topic+`","max_retries":1,"retry_delays":["100ms"],"start_from":"earliest"}`)), 201, "subscribe")
		must(clDo(t, "POST", p.url+"/v1/topics/"+topic+"/messages", text, []byte("old-"+topic)), 201, "publish")
		// The first attempt and its one retry, both nacked: dead.
		for range 2 {
			a := must(clDo(t, "POST", p.url+"/v1/groups/dg/topics/"+topic+"/pull?max=1&wait=5s", nil, nil), 200, "pull")
			var got struct {
				Messages []struct {
					Receipt string `json:"receipt"`
				} `json:"messages"`
			}
			if err := json.Unmarshal(a.body, &got); err != nil || len(got.Messages) != 1 {
				t.Fatalf("pull %s: %s", topic, a)
			}
			must(clDo(t, "POST", p.url+"/v1/groups/dg/nack", nil, []byte(`{"receipts":["`+got.Messages[0].Receipt+`"]}`)), 200, "nack")
		}
		// A pull moves a retry over its maximum to the dead letters.
		must(clDo(t, "POST", p.url+"/v1/groups/dg/topics/"+topic+"/pull?max=1&wait=1s", nil, nil), 200, "pull")
	}
	dlq := func() (bool, string) {
		a := clDo(t, "GET", p.url+"/v1/groups/dg/dlq", nil, nil)
		return strings.Contains(string(a.body), "old-doomed") && strings.Contains(string(a.body), "old-kept"), a.String()
	}
	clEventually(t, "both dead letters", dlq)
	must(clDo(t, "DELETE", p.url+"/v1/topics/doomed", nil, nil), 204, "delete")
	if d := clDo(t, "GET", p.url+"/v1/groups/dg/dlq", nil, nil); strings.Contains(string(d.body), "old-doomed") || !strings.Contains(string(d.body), "old-kept") {
		t.Fatalf("dead letters after doomed's delete: %s; want kept's alone", d)
	}
	must(clDo(t, "PUT", p.url+"/v1/topics/doomed", nil, []byte(`{"queues":1}`)), 201, "create again")
	must(clDo(t, "POST", p.url+"/v1/subscriptions", nil, []byte(`{"group":"dg","topic":"doomed","start_from":"earliest"}`)), 201, "subscribe again")
	if a := must(clDo(t, "POST", p.url+"/v1/groups/dg/dlq/redrive", nil, []byte(`{"all":true}`)), 200, "redrive"); !strings.Contains(string(a.body), `"redriven":1`) {
		t.Fatalf("redrive all: %s; want kept's one", a)
	}
	if a := must(clDo(t, "POST", p.url+"/v1/groups/dg/topics/doomed/pull?max=8&wait=1s", nil, nil), 200, "pull"); strings.Contains(string(a.body), "old-doomed") {
		t.Fatalf("pull of the new doomed: %s; want nothing of the deleted one", a)
	}
}
