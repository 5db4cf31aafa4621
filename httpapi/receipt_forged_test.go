package httpapi

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/postbus/postbus/broker"
)

// TestForgedReceiptsAreInvalid (pull hostile pass F4): on a broker in a
// cluster (as `postbus dev` runs), a receipt that cannot be one this bus
// issued, whatever broker name it is given, makes an ack, a nack or a
// change of visibility a 400 invalid_receipt that changes nothing: not a
// 502 or 503 that tells the client to retry for ever, and never acked.
// "other~garbage" beside a good receipt was a 502 cluster_partial (the
// good one acked), "a~" before a whole receipt a 503, and "~" or a space
// before one acked it.
func TestForgedReceiptsAreInvalid(t *testing.T) {
	tc := newTestCluster(t, "solo")
	tc.via(t, "solo", "PUT", "/v1/topics/t", nil, `{"queues":1}`).want(t, http.StatusCreated, "solo")
	tc.via(t, "solo", "POST", "/v1/subscriptions", nil, `{"group":"g","topic":"t","start_from":"earliest"}`).want(t, http.StatusCreated, "solo")
	tc.via(t, "solo", "POST", "/v1/topics/t/messages/batch", nil, `[{"body":"a"},{"body":"b"}]`).want(t, http.StatusCreated, "solo")
	a := tc.via(t, "solo", "POST", "/v1/groups/g/topics/t/pull?max=2&visibility=60s", nil, "")
	a.want(t, http.StatusOK, "solo")
	msgs := decodeAs[pullAnswer](t, a).Messages
	if len(msgs) != 2 {
		t.Fatalf("pulled %d, want 2: %s", len(msgs), a)
	}
	good, target := msgs[0].Receipt, msgs[1].Receipt
	name, raw, ok := strings.Cut(target, receiptSep)
	if !ok || name != "solo" {
		t.Fatalf("receipt %q does not name its broker", target)
	}
	for _, tt := range []struct{ name, receipt string }{
		{"garbage under an unknown broker", "other" + receiptSep + "garbage"},
		{"a name before a whole receipt", "a" + receiptSep + target},
		// The name is covered by the receipt's MAC: another name, or
		// none, makes it another receipt (both used to be acked).
		{"another broker's name", "zz" + receiptSep + raw},
		{"no name", raw},
		{"an empty name", receiptSep + raw},
		{"a space before a receipt", " " + target},
		{"a name alone", name + receiptSep},
		{"garbage", "garbage"},
	} {
		for _, op := range []struct{ path, extra string }{
			{"ack", ""}, {"nack", `,"delay":"0s"`}, {"visibility", `,"visibility":"0s"`},
		} {
			t.Run(tt.name+"/"+op.path, func(t *testing.T) {
				body, err := json.Marshal(tt.receipt)
				if err != nil {
					t.Fatal(err)
				}
				for _, rs := range []string{string(body), `"` + good + `",` + string(body)} {
					a := tc.via(t, "solo", "POST", "/v1/groups/g/"+op.path, nil, `{"receipts":[`+rs+`]`+op.extra+`}`)
					a.wantProblem(t, http.StatusBadRequest, broker.CodeInvalidReceipt, "solo")
				}
			})
		}
	}
	// Nothing was changed: both receipts still hold their messages.
	a = tc.via(t, "solo", "POST", "/v1/groups/g/nack", nil, `{"receipts":["`+good+`","`+target+`"],"delay":"0s"}`)
	a.want(t, http.StatusOK, "solo")
	for _, r := range decodeAs[receiptResultsJSON](t, a).Results {
		if r.Status != "nacked" {
			t.Fatalf("after the forged requests, nack of the real receipts: %s; want both nacked", a)
		}
	}
}
