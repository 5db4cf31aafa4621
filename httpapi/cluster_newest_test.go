package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/postbus/postbus/broker"
)

// TestClusterNewestCopyAnswered: copies of a subscription differ for a
// moment after a change that missed a holder. GET /v1/subscriptions/{id}
// answered the first copy found (this broker's when it had one), and a
// group's merged view listed each subscription as the first broker's
// copy: both could show the change undone. Both now show the copy with
// the highest version.
func TestClusterNewestCopyAnswered(t *testing.T) {
	tc := newTestCluster(t, brokerA, brokerB, brokerC)
	tc.placeTopic(t, brokerA, "orders", `{"brokers":["broker-a","broker-b"]}`, brokerA, brokerB)
	a := tc.via(t, brokerC, "POST", "/v1/subscriptions", nil, `{"group":"billing","topic":"orders","filter":"*"}`)
	created := decodeAs[subscriptionJSON](t, a)
	if a.status != http.StatusCreated {
		t.Fatalf("create: %s", a)
	}
	// broker-b alone takes a later change (as when the change's forward
	// to broker-a was lost): a record with a higher version.
	ctx := context.Background()
	recs, err := tc.nodes[brokerA].b.SubscriptionRecords(ctx, []string{"orders"})
	if err != nil || len(recs["orders"]) != 1 {
		t.Fatalf("records: %v, %v", recs, err)
	}
	rec := recs["orders"][0]
	rec.Filter, rec.Version, rec.VersionBy = "a || b", rec.Version+1000, brokerB
	if st, err := tc.nodes[brokerB].b.ApplySubscriptionRecords(ctx, []broker.SubscriptionRecord{rec}); err != nil || st.Applied != 1 {
		t.Fatalf("apply on broker-b: %+v, %v", st, err)
	}
	want := fmt.Sprintf("%d@%s", rec.Version, brokerB)
	for _, via := range []string{brokerA, brokerB, brokerC} {
		got := decodeAs[subscriptionJSON](t, tc.via(t, via, "GET", "/v1/subscriptions/"+created.ID, nil, ""))
		if got.Filter != "a || b" || got.Version != want {
			t.Errorf("GET through %s: filter %q version %s; want the newest copy, %q at %s", via, got.Filter, got.Version, "a || b", want)
		}
		g := decodeAs[groupJSON](t, tc.via(t, via, "GET", "/v1/groups/billing", nil, ""))
		if len(g.Subscriptions) != 1 || g.Subscriptions[0].Filter != "a || b" {
			t.Errorf("group through %s lists %+v; want the newest copy once", via, g.Subscriptions)
		}
	}
}

// TestCombineGroups: brokers' views of a group merge into one: counts
// summed, the oldest unacked age the greatest, each subscription once as
// its newest copy.
func TestCombineGroups(t *testing.T) {
	sub := func(id, version, filter string) map[string]any {
		return map[string]any{"id": id, "version": version, "filter": filter}
	}
	for _, tc := range []struct {
		name       string
		into, from map[string]any
		want       map[string]any
	}{
		{"counts and ages",
			map[string]any{"lag": 3.0, "dead_letters": 1.0, "held_polls": 2.0, "oldest_unacked_seconds": 4.5, "subscriptions": []any{}},
			map[string]any{"lag": 4.0, "dead_letters": 0.0, "held_polls": 5.0, "oldest_unacked_seconds": 9.25, "subscriptions": []any{}},
			map[string]any{"lag": 7.0, "dead_letters": 1.0, "held_polls": 7.0, "oldest_unacked_seconds": 9.25}},
		{"the younger age kept when the other is younger still",
			map[string]any{"oldest_unacked_seconds": 12.0},
			map[string]any{"oldest_unacked_seconds": 0.0},
			map[string]any{"oldest_unacked_seconds": 12.0}},
		{"a newer copy replaces an older one",
			map[string]any{"subscriptions": []any{sub("s1", "100@broker-a", "*"), sub("s2", "50@broker-a", "*")}},
			map[string]any{"subscriptions": []any{sub("s1", "200@broker-b", "a"), sub("s3", "10@broker-b", "*")}},
			map[string]any{"subscriptions": []any{sub("s1", "200@broker-b", "a"), sub("s2", "50@broker-a", "*"), sub("s3", "10@broker-b", "*")}}},
		{"an older copy does not replace a newer one; equal time, the greater broker",
			map[string]any{"subscriptions": []any{sub("s1", "200@broker-a", "*"), sub("s2", "70@broker-b", "b")}},
			map[string]any{"subscriptions": []any{sub("s1", "100@broker-b", "a"), sub("s2", "70@broker-a", "a")}},
			map[string]any{"subscriptions": []any{sub("s1", "200@broker-a", "*"), sub("s2", "70@broker-b", "b")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			combineGroups(tc.into, tc.from, "")
			for k, v := range tc.want {
				if fmt.Sprint(tc.into[k]) != fmt.Sprint(v) {
					t.Errorf("%s = %v; want %v", k, tc.into[k], v)
				}
			}
		})
	}
}
