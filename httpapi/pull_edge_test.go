package httpapi

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/postbus/postbus/broker"
)

// TestClusterPullParametersCheckedFirst: a pull through a broker asks the
// holders for ready messages before it waits, and only the wait checked
// the wait: wait=31s was 200 when a message was ready and 400 when none
// was. A parameter out of range is refused the same either way.
func TestClusterPullParametersCheckedFirst(t *testing.T) {
	tc := newTestCluster(t, brokerA, brokerB)
	tc.placeTopic(t, brokerB, "pz", `{"brokers":["broker-a"]}`, brokerA)
	tc.via(t, brokerB, "POST", "/v1/subscriptions", nil, `{"group":"pzg","topic":"pz","start_from":"earliest"}`).
		want(t, http.StatusCreated, brokerA)
	bad := []struct{ query, field string }{
		{"wait=31s", "wait"},
		{"wait=1h", "wait"},
		{"visibility=500ms", "visibility"},
		{"visibility=13h", "visibility"},
	}
	for round, ready := range []bool{false, true} {
		if ready {
			tc.at(t, brokerA, "POST", "/v1/topics/pz/messages", fmt.Sprintf("m%d", round)).want(t, http.StatusCreated, brokerA)
		}
		for _, via := range []string{brokerA, brokerB} {
			for _, b := range bad {
				a := tc.via(t, via, "POST", "/v1/groups/pzg/topics/pz/pull?"+b.query, nil, "")
				if p := decodeAs[problem](t, a); a.status != http.StatusBadRequest || p.Code != broker.CodeInvalidPull || p.Field != b.field {
					t.Fatalf("ready=%v via %s %s: %s; want 400 invalid_pull on %s", ready, via, b.query, a, b.field)
				}
			}
		}
	}
	// The message is still there for a pull within range.
	a := tc.via(t, brokerB, "POST", "/v1/groups/pzg/topics/pz/pull?wait=30s", nil, "")
	a.want(t, http.StatusOK, brokerB)
	if got := decodeAs[pullAnswer](t, a).Messages; len(got) != 1 {
		t.Fatalf("pulled %s, want the one message", a)
	}
}
