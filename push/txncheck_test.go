package push

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
)

func TestParseCheckAnswer(t *testing.T) {
	for _, tc := range []struct {
		body, answer, err string
	}{
		{`{"status":"commit"}`, "commit", ""},
		{`{"status":"rollback","why":"no row"}`, "rollback", ""},
		{`{"status":"unknown"}`, "unknown", ""},
		{`{"status":"COMMIT"}`, "", "is not commit, rollback or unknown"},
		{`{"state":"commit"}`, "", "has no status"},
		{`commit`, "", "is not JSON"},
		{``, "", "is not JSON"},
		{`{"status":null}`, "", "has no status"},
		{`{"status":"rollback","status":"commit"}`, "", `gives "status" twice`},
		{`{"status":"commit","status":"commit"}`, "", `gives "status" twice`},
		{`{"status":"commit","why":{"a":1,"a":2}}`, "", `gives "a" twice`},
		{`{"status":"commit","why":{"status":1}}`, "commit", ""},
	} {
		answer, err := parseCheckAnswer([]byte(tc.body))
		if answer != tc.answer || !strings.Contains(err, tc.err) || (tc.err == "") != (err == "") {
			t.Errorf("parseCheckAnswer(%q) = %q, %q; want %q and an error saying %q", tc.body, answer, err, tc.answer, tc.err)
		}
	}
}

// A check is a signed POST of the documented JSON; what the endpoint
// answers decides its outcome.
func TestTxnCheckerRequest(t *testing.T) {
	secret := broker.NewSecret()
	var got http.Header
	var body []byte
	answer := `{"status":"commit"}`
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		body, _ = io.ReadAll(r.Body)
		w.WriteHeader(status)
		io.WriteString(w, answer)
	}))
	defer srv.Close()
	c := NewTxnChecker(NewClient(ClientConfig{AllowPrivate: true}), nil)
	g := broker.ProducerGroup{Name: "shop", CheckURL: srv.URL + "/check", Secret: secret}
	check := broker.TxnCheck{TransactionID: "b~M1", MsgID: "M1", Topic: "orders", Tag: "t", Keys: []string{"k1"}, Check: 3}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res := c.CheckTransaction(ctx, g, check)
	if res.Answer != "commit" || res.Status != 200 || res.Err != "" {
		t.Fatalf("result %+v", res)
	}
	if err := VerifyStandardWebhook(secret, got, body, time.Minute, time.Now()); err != nil {
		t.Fatalf("the check does not verify with the group's secret: %v", err)
	}
	var sent map[string]any
	if err := json.Unmarshal(body, &sent); err != nil {
		t.Fatal(err)
	}
	if sent["transaction_id"] != "b~M1" || sent["msg_id"] != "M1" || sent["topic"] != "orders" || sent["tag"] != "t" || sent["check"] != float64(3) {
		t.Fatalf("check body %s", body)
	}
	if got.Get("webhook-id") != "M1-3" || got.Get(HeaderTransactionID) != "b~M1" || got.Get(HeaderCheck) != "3" {
		t.Fatalf("check headers %v", got)
	}

	status, answer = http.StatusServiceUnavailable, `{"status":"commit"}`
	if res := c.CheckTransaction(ctx, g, check); res.Answer != "" || res.Status != 503 || res.Err != "status 503" {
		t.Fatalf("a 503 with a commit body: %+v; want a failed check", res)
	}
	status = http.StatusFound
	if res := c.CheckTransaction(ctx, g, check); res.Answer != "" || res.Err != "status 302" {
		t.Fatalf("a redirect: %+v; want a failed check, not followed", res)
	}
	// Without AllowPrivate the SSRF guard refuses loopback.
	guarded := NewTxnChecker(NewClient(ClientConfig{}), nil)
	if res := guarded.CheckTransaction(ctx, g, check); res.Answer != "" || !strings.Contains(res.Err, "forbidden address") {
		t.Fatalf("a loopback check_url without AllowPrivate: %+v; want refused", res)
	}
}
