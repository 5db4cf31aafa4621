package httpapi

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestVersionHeaderNamesABroker (attack F11): a forwarded topic delete's
// Postbus-Topic-Version took any text after the @ (a space, nothing,
// 300 characters) and stored a tombstone with it. After the @ comes the
// name of the broker that minted the version: anything else is a 400
// invalid_header naming the header, and the topic stays.
func TestVersionHeaderNamesABroker(t *testing.T) {
	tc := newTestCluster(t, "broker-a")
	tc.placeTopic(t, "broker-a", "kept", `{"queues":1}`, "broker-a")
	now := time.Now().UnixMilli()
	for _, v := range []string{fmt.Sprintf("%d@b r1", now), fmt.Sprintf("%d@", now), fmt.Sprintf("%d@%s", now, strings.Repeat("a", 65))} {
		a := tc.via(t, "broker-a", "DELETE", "/v1/topics/kept", map[string]string{hdrForwardedBy: "broker-b", hdrTopicVersion: v}, "")
		if code, field := problemCode(t, a.body); a.status != 400 || code != "invalid_header" || field != hdrTopicVersion {
			t.Errorf("delete with %s %q: %d %s; want 400 invalid_header", hdrTopicVersion, v, a.status, a.body)
		}
	}
	if a := tc.via(t, "broker-a", "GET", "/v1/topics/kept", asSelf, ""); a.status != 200 {
		t.Fatalf("the topic after refused deletes: %d %s", a.status, a.body)
	}
	a := tc.via(t, "broker-a", "DELETE", "/v1/topics/kept", map[string]string{hdrForwardedBy: "broker-b", hdrTopicVersion: fmt.Sprintf("%d@broker-b", now)}, "")
	if a.status != 204 {
		t.Fatalf("delete with a good version: %d %s", a.status, a.body)
	}
}
