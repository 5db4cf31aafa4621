package httpapi

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/push"
)

// checkEndpoint is a producer's check_url: it answers check n with
// answers[n-1] ("hang" holds the request until the broker gives up,
// "garbage" answers what is not the JSON, "500" fails), recording each
// check and whether its signature verified with the group's secret.
type checkEndpoint struct {
	mu       sync.Mutex
	secret   string
	answers  []string
	checks   []map[string]any
	badSigns int
}

func (c *checkEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	var check map[string]any
	if err := json.Unmarshal(body, &check); err != nil {
		c.badSigns++ // counted as a bad request: the test fails on it
	}
	if err := push.VerifyStandardWebhook(c.secret, r.Header, body, time.Minute, time.Now()); err != nil {
		c.badSigns++
	}
	c.checks = append(c.checks, check)
	n := len(c.checks)
	answer := "500"
	if n <= len(c.answers) {
		answer = c.answers[n-1]
	}
	c.mu.Unlock()
	switch answer {
	case "hang":
		<-r.Context().Done()
	case "garbage":
		fmt.Fprint(w, `{"status":"maybe"}`)
	case "500":
		http.Error(w, "down", http.StatusInternalServerError)
	default:
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"status":%q}`, answer)
	}
}

func (c *checkEndpoint) snapshot() (checks []map[string]any, badSigns int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]map[string]any(nil), c.checks...), c.badSigns
}

func txnServer(tb testing.TB) (*httptest.Server, *broker.Broker) {
	tb.Helper()
	srv, b := newTestServer(tb, func(c *broker.Config) {
		c.TxnCheckInterval = 20 * time.Millisecond
		c.TxnCheckMax = 4
		c.TxnCheckTimeout = 300 * time.Millisecond
	})
	client := push.NewClient(push.ClientConfig{AllowPrivate: true})
	tb.Cleanup(func() { client.Close() })
	b.SetTxnChecker(push.NewTxnChecker(client, nil))
	return srv, b
}

func jsonOf(tb testing.TB, body []byte) map[string]any {
	tb.Helper()
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		tb.Fatalf("decode %s: %v", body, err)
	}
	return v
}

func TestTransactionCheckBackOverHTTP(t *testing.T) {
	for _, tc := range []struct {
		name    string
		answers []string
		state   string
		reason  string
	}{
		{"unknown then commit", []string{"unknown", "commit"}, "COMMITTED", "answered commit to check 2"},
		{"rollback", []string{"rollback"}, "ROLLED_BACK", "answered rollback to check 1"},
		{"hangs then commit", []string{"hang", "commit"}, "COMMITTED", "answered commit to check 2"},
		{"garbage then commit", []string{"garbage", "500", "commit"}, "COMMITTED", "answered commit to check 3"},
		{"max checks", []string{"unknown", "hang", "garbage", "unknown"}, "ROLLED_BACK", "no decision after 4 checks (last: unknown)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := txnServer(t)
			ep := &checkEndpoint{answers: tc.answers}
			checkSrv := httptest.NewServer(ep)
			defer checkSrv.Close()
			resp, body := do(t, "PUT", srv.URL+"/v1/producer-groups/orders-svc", map[string]string{"Content-Type": "application/json"},
				strings.NewReader(`{"check_url":"`+checkSrv.URL+`/txn-check"}`))
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("put producer group: %d %s", resp.StatusCode, body)
			}
			ep.mu.Lock()
			ep.secret, _ = jsonOf(t, body)["secret"].(string)
			ep.mu.Unlock()

			resp, body = do(t, "POST", srv.URL+"/v1/topics/orders/messages", map[string]string{
				"Postbus-Transaction": "prepare", "Postbus-Producer-Group": "orders-svc", "Postbus-Transaction-Timeout": "30ms",
				"Postbus-Tag": "created", "Postbus-Keys": "order-1001",
			}, strings.NewReader(`{"id":1001}`))
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("prepare: %d %s", resp.StatusCode, body)
			}
			prep := jsonOf(t, body)
			id := prep["transaction_id"].(string)

			var tx map[string]any
			deadline := time.Now().Add(20 * time.Second)
			for {
				resp, body = do(t, "GET", srv.URL+"/v1/transactions/"+id, nil, nil)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("get transaction: %d %s", resp.StatusCode, body)
				}
				tx = jsonOf(t, body)
				if tx["state"] != "PREPARED" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("still prepared after %v checks", tx["checks"])
				}
				time.Sleep(10 * time.Millisecond)
			}
			if tx["state"] != tc.state || tx["reason"] != tc.reason {
				t.Fatalf("transaction %v; want %s, %q", tx, tc.state, tc.reason)
			}
			checks, bad := ep.snapshot()
			if bad != 0 {
				t.Fatalf("%d checks did not verify with the group's secret", bad)
			}
			first := checks[0]
			if first["transaction_id"] != id || first["msg_id"] != prep["msg_id"] || first["topic"] != "orders" ||
				first["tag"] != "created" || fmt.Sprint(first["keys"]) != "[order-1001]" || first["check"] != float64(1) {
				t.Fatalf("first check = %v", first)
			}

			// Delivered once committed, never when rolled back.
			resp, body = do(t, "POST", srv.URL+"/v1/groups/g1/topics/orders/pull?max=10", nil, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("pull: %d %s", resp.StatusCode, body)
			}
			msgs, _ := jsonOf(t, body)["messages"].([]any)
			want := 0
			if tc.state == "COMMITTED" {
				want = 1
			}
			if len(msgs) != want {
				t.Fatalf("pulled %d messages; want %d", len(msgs), want)
			}

			// The trace shows every check and the decision's reason.
			resp, body = do(t, "GET", srv.URL+"/v1/messages/"+prep["msg_id"].(string)+"/trace", nil, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("trace: %d %s", resp.StatusCode, body)
			}
			trace, _ := jsonOf(t, body)["transaction"].(map[string]any)
			log, _ := trace["check_log"].([]any)
			if trace["reason"] != tc.reason || len(log) != len(checks) {
				t.Fatalf("trace's transaction %v; want %d checks and reason %q", trace, len(checks), tc.reason)
			}
		})
	}
}

// Nothing is half-stored: every refused prepare leaves no transaction.
func TestTransactionBadInputStoresNothing(t *testing.T) {
	srv, b := txnServer(t)
	resp, body := do(t, "PUT", srv.URL+"/v1/producer-groups/orders-svc", map[string]string{"Content-Type": "application/json"},
		strings.NewReader(`{"check_url":"https://orders.example/check"}`))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("put producer group: %d %s", resp.StatusCode, body)
	}
	prep := map[string]string{"Postbus-Transaction": "prepare", "Postbus-Producer-Group": "orders-svc"}
	with := func(extra map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range prep {
			out[k] = v
		}
		for k, v := range extra {
			if v == "" {
				delete(out, k)
			} else {
				out[k] = v
			}
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		path   string
		hdr    map[string]string
		status int
		code   string
		field  string
	}{
		{"step", "/v1/topics/orders/messages", with(map[string]string{"Postbus-Transaction": "Prepare"}), 400, "invalid_header", "Postbus-Transaction"},
		{"twice", "/v1/topics/orders/messages", with(map[string]string{"Postbus-Transaction": "prepare\nprepare"}), 400, "invalid_header", "Postbus-Transaction"},
		{"no group", "/v1/topics/orders/messages", with(map[string]string{"Postbus-Producer-Group": ""}), 400, "invalid_header", "Postbus-Producer-Group"},
		{"bad group", "/v1/topics/orders/messages", with(map[string]string{"Postbus-Producer-Group": "a b"}), 400, "invalid_header", "Postbus-Producer-Group"},
		{"timeout", "/v1/topics/orders/messages", with(map[string]string{"Postbus-Transaction-Timeout": "-1s"}), 400, "invalid_header", "Postbus-Transaction-Timeout"},
		{"timeout too long", "/v1/topics/orders/messages", with(map[string]string{"Postbus-Transaction-Timeout": "2h"}), 400, "invalid_header", "Postbus-Transaction-Timeout"},
		{"timeout alone", "/v1/topics/orders/messages", map[string]string{"Postbus-Transaction-Timeout": "5s"}, 400, "invalid_header", "Postbus-Transaction-Timeout"},
		{"dedup", "/v1/topics/orders/messages", with(map[string]string{"Postbus-Dedup-Id": "d1"}), 400, "invalid_transaction", "Postbus-Dedup-Id"},
		{"unknown group", "/v1/topics/orders/messages", with(map[string]string{"Postbus-Producer-Group": "nobody"}), 404, "producer_group_not_found", "producer_group"},
		{"unknown header", "/v1/topics/orders/messages", with(map[string]string{"Postbus-Transaction-Id": "x"}), 400, "invalid_header", "Postbus-Transaction-Id"},
		{"batch", "/v1/topics/orders/messages/batch", with(map[string]string{"Content-Type": "application/json"}), 400, "invalid_header", "Postbus-Producer-Group"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := "x"
			if strings.HasSuffix(tc.path, "batch") {
				body = `[{"body":"x"}]`
			}
			resp, data := do(t, "POST", srv.URL+tc.path, tc.hdr, strings.NewReader(body))
			p := jsonOf(t, data)
			if resp.StatusCode != tc.status || p["code"] != tc.code || p["field"] != tc.field {
				t.Fatalf("%d %s; want %d %s naming %s", resp.StatusCode, data, tc.status, tc.code, tc.field)
			}
		})
	}
	txs, _, err := b.Transactions(t.Context(), "", 0, 10)
	if err != nil || len(txs) != 0 {
		t.Fatalf("refused prepares left %d transactions (%v)", len(txs), err)
	}
	for q := 0; q < 4; q++ {
		if msgs, _, err := b.ReadQueue("orders", q, 0, 10, mustFilter(t, "*")); err == nil && len(msgs) != 0 {
			t.Fatalf("queue %d holds %d messages after refused prepares", q, len(msgs))
		}
	}
}

func mustFilter(tb testing.TB, expr string) broker.Filter {
	tb.Helper()
	f, err := broker.ParseFilter(expr)
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// escapeEvery percent-encodes every byte of s, as a client may.
func escapeEvery(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "%%%02X", s[i])
	}
	return b.String()
}

// TestPathParamsPercentDecoded (attack s8 F15): a path parameter sent
// percent-encoded is the same parameter decoded, as RFC 3986 says: a
// transaction id whose '~' Java's URLEncoder sends as %7E was refused as
// "not a transaction id", and a topic escaped was taken by its escaped
// name.
func TestPathParamsPercentDecoded(t *testing.T) {
	srv, _ := txnServer(t)
	resp, body := do(t, "PUT", srv.URL+"/v1/producer-groups/orders-svc", map[string]string{"Content-Type": "application/json"},
		strings.NewReader(`{"check_url":"https://example.com/txn-check"}`))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("put producer group: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, "POST", srv.URL+"/v1/topics/"+escapeEvery("orders-x")+"/messages", map[string]string{
		"Postbus-Transaction": "prepare", "Postbus-Producer-Group": "orders-svc"}, strings.NewReader(`{"id":1}`))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("prepare on an escaped topic name: %d %s", resp.StatusCode, body)
	}
	id, _ := jsonOf(t, body)["transaction_id"].(string)
	if resp, body := do(t, "GET", srv.URL+"/v1/topics/orders-x", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("the topic under its own name: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, "GET", srv.URL+"/v1/transactions/"+escapeEvery(id), nil, nil)
	if resp.StatusCode != http.StatusOK || jsonOf(t, body)["state"] != "PREPARED" {
		t.Fatalf("get the transaction by its escaped id: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, "POST", srv.URL+"/v1/transactions/"+escapeEvery(id)+"/commit", nil, nil)
	if resp.StatusCode != http.StatusOK || jsonOf(t, body)["state"] != "COMMITTED" {
		t.Fatalf("commit by the escaped id: %d %s", resp.StatusCode, body)
	}
}
