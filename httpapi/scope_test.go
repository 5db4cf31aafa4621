package httpapi

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
)

// scopeFixture is a broker with auth, holding topics orders and other, a
// message with key k on orders, and group billing's pull subscription to
// orders.
type scopeFixture struct {
	url   string
	msgID string
	subID string
	txnID string // a transaction prepared on orders by producer group shop
}

func newScopeFixture(tb testing.TB) scopeFixture {
	tb.Helper()
	srv, b := newAuthServer(tb, Config{}, nil)
	ctx := context.Background()
	res, err := b.Publish(ctx, "orders", []*broker.Message{{Body: []byte("secret body"), Keys: []string{"k"}}})
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := b.Publish(ctx, "other", []*broker.Message{{Body: []byte("x")}}); err != nil {
		tb.Fatal(err)
	}
	sub, err := b.CreateSubscription(ctx, broker.Subscription{Group: "billing", Topic: "orders", MaxRetries: -1, StartFrom: "earliest"})
	if err != nil {
		tb.Fatal(err)
	}
	if _, _, err := b.PutProducerGroup(ctx, "shop", "https://shop.example/check", ""); err != nil {
		tb.Fatal(err)
	}
	prep, err := b.Prepare(ctx, "orders", &broker.Message{Body: []byte("half")}, "shop", time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return scopeFixture{url: srv.URL, msgID: res[0].ID, subID: sub.ID, txnID: b.TransactionID(prep.ID)}
}

// scopeRequest is how the table calls a route: its path with the fixture's
// names, and a body that gets past the body checks.
func (f scopeFixture) request(method, pattern string) (path, body string) {
	path = strings.NewReplacer("{topic}", "orders", "{msg_id}", f.msgID, "{group}", "billing", "{id}", f.subID, "{queue}", "0",
		"{transaction_id}", f.txnID).Replace(pattern)
	switch {
	case strings.HasSuffix(pattern, "/messages") && method == "GET":
		path += "?key=k"
	case strings.HasSuffix(pattern, "/pull"):
		path += "?max=1"
	}
	switch {
	case strings.HasSuffix(pattern, "/batch"):
		body = `[{"body":"x"}]`
	case pattern == "/v1/producer-groups/{group}" && method == "PUT":
		body = `{"check_url":"https://shop.example/check"}`
	case method == "PUT":
		body = `{"queues":4}`
	case pattern == "/v1/subscriptions" && method == "POST":
		body = `{"group":"billing","topic":"other"}`
	case strings.HasSuffix(pattern, "/reset"):
		body = `{"topic":"orders","to":"latest"}`
	case strings.HasSuffix(pattern, "/ack"), strings.HasSuffix(pattern, "/nack"):
		body = `{"receipts":["x"]}`
	case strings.HasSuffix(pattern, "/redrive"):
		body = `{"all":true}`
	case method == "PATCH":
		body = `{}`
	case bodyRoutes[method+" "+pattern]:
		body = "x"
	}
	return path, body
}

// TestScopesEveryRoute: every route against every kind of token, each
// answer checked against what the scopes allow (DESIGN §5). A token is
// refused with 403, or, where the handler narrows what it shows, with the
// 404 of something that does not exist. The holes this closes (issue 11,
// fault 15): consume:<group> alone could subscribe its group to any topic
// and pull its bodies away.
func TestScopesEveryRoute(t *testing.T) {
	tokens := []string{
		"admin",
		"publish:orders",
		"subscribe:orders",
		"consume:billing",
		"consume:billing subscribe:orders",
		"consume:billing subscribe:other",
		"consume:billing publish:orders",
		"consume:mallory",
		"consume:mallory subscribe:orders",
		"publish:other subscribe:other consume:nobody",
	}
	// allowed says what the scopes let the route do on the fixture: topic
	// orders (other for a new subscription), group billing.
	allowed := func(sc scopes, method, pattern string) bool {
		switch pattern {
		case "/healthz", "/readyz", "/metrics", "/openapi.yaml", "/.well-known/jwks.json":
			return true
		case "/v1/acks/{token}":
			return true // the ack token is the capability
		case "/v1/topics", "/v1/subscriptions", "/v1/groups":
			if method == "GET" {
				return true // lists, narrowed
			}
			// POST /v1/subscriptions for billing on other.
			return sc.canConsume("billing") && sc.canSubscribe("other")
		case "/v1/topics/{topic}/queues/{queue}/messages":
			// By offset is consuming the stream: subscribe only (DESIGN §5).
			return sc.canSubscribe("orders")
		case "/v1/messages/{msg_id}", "/v1/messages/{msg_id}/body", "/v1/messages/{msg_id}/trace",
			"/v1/topics/{topic}/messages":
			if method == "POST" {
				return sc.canPublish("orders")
			}
			return sc.canPublish("orders") || sc.canSubscribe("orders")
		case "/v1/topics/{topic}":
			if method == "GET" {
				return sc.canPublish("orders") || sc.canSubscribe("orders")
			}
			return sc.admin
		case "/v1/topics/{topic}/messages/batch":
			return sc.canPublish("orders")
		case "/v1/groups/{group}/topics/{topic}/pull":
			return sc.canConsume("billing") && sc.canSubscribe("orders")
		}
		if strings.HasPrefix(pattern, "/v1/subscriptions/{id}") || strings.HasPrefix(pattern, "/v1/groups/{group}") {
			return sc.canConsume("billing")
		}
		if strings.HasPrefix(pattern, "/v1/brokers") || strings.HasPrefix(pattern, "/v1/internal/") || strings.HasPrefix(pattern, "/v1/replicas") {
			return sc.admin
		}
		// Stats are narrowed to the token's topics and groups by the handler.
		if strings.HasPrefix(pattern, "/v1/routes") || pattern == "/v1/cluster" || pattern == "/v1/stats" {
			return true
		}
		switch {
		case pattern == "/v1/transactions" || strings.HasPrefix(pattern, "/v1/producer-groups/"):
			return sc.admin // operators'
		case pattern == "/v1/transactions/{transaction_id}":
			return sc.canPublish("orders") || sc.canSubscribe("orders")
		case strings.HasPrefix(pattern, "/v1/transactions/{transaction_id}/"):
			return sc.canPublish("orders") // deciding is publishing
		}
		t.Fatalf("no rule for %s %s: add one", method, pattern)
		return false
	}
	s := mustNew(t, Config{Auth: AuthConfig{HMACSecret: testSecret}})
	routes := make([]string, 0, len(s.Access()))
	for route := range s.Access() {
		routes = append(routes, route)
	}
	sort.Strings(routes)
	for _, route := range routes {
		method, pattern, _ := strings.Cut(route, " ")
		t.Run(route, func(t *testing.T) {
			t.Parallel()
			var f scopeFixture
			for i, scope := range tokens {
				// A change (a delete, a pause) by one token would change
				// what the next one sees: each changing request gets a
				// fixture of its own.
				if i == 0 || method != "GET" {
					f = newScopeFixture(t)
				}
				sc := parseScopes(scope)
				want := allowed(sc, method, pattern)
				path, body := f.request(method, pattern)
				resp, data := do(t, method, f.url+path, withToken(hsToken(t, scoped(scope))), strings.NewReader(body))
				code, _ := problemCode(t, orJSON(data))
				refused := resp.StatusCode == 403 ||
					(resp.StatusCode == 404 && (code == "message_not_found" || code == "subscription_not_found" || code == "transaction_not_found"))
				if resp.StatusCode == 401 {
					t.Fatalf("scope %q: 401 for a valid token: %s", scope, data)
				}
				if refused == want {
					t.Errorf("scope %q: %d %s; want allowed=%v", scope, resp.StatusCode, clip(data), want)
				}
			}
		})
	}
}

// orJSON gives problemCode something to read for a non-JSON answer.
func orJSON(data []byte) []byte {
	if len(data) > 0 && data[0] == '{' {
		return data
	}
	return []byte(`{}`)
}

// The attack of issue 11, fault 15: a token for its own group (consume:
// mallory) subscribes that group to a topic it was never let read, by push
// or by a first pull, and takes its bodies away. Both are refused and
// leave nothing behind; with subscribe on the topic they work.
func TestConsumeAloneCannotSubscribeToATopic(t *testing.T) {
	srv, b := newAuthServer(t, Config{}, nil)
	ctx := context.Background()
	if _, err := b.Publish(ctx, "orders", []*broker.Message{{Body: []byte("card 4111")}}); err != nil {
		t.Fatal(err)
	}
	mallory := withToken(hsToken(t, scoped("consume:mallory")))
	resp, data := do(t, "POST", srv.URL+"/v1/subscriptions", mallory,
		strings.NewReader(`{"group":"mallory","topic":"orders","url":"https://mallory.example/hook","start_from":"earliest"}`))
	if code, field := problemCode(t, data); resp.StatusCode != 403 || code != "forbidden" || field != "topic" {
		t.Fatalf("push subscription by consume:mallory: %d %s", resp.StatusCode, data)
	}
	resp, data = do(t, "POST", srv.URL+"/v1/groups/mallory/topics/orders/pull?max=10", mallory, nil)
	if resp.StatusCode != 403 || strings.Contains(string(data), "card") {
		t.Fatalf("first pull by consume:mallory: %d %s", resp.StatusCode, data)
	}
	if subs, err := b.Subscriptions(ctx); err != nil || len(subs) != 0 {
		t.Fatalf("refused requests left %d subscriptions (%v)", len(subs), err)
	}
	allowed := withToken(hsToken(t, scoped("consume:mallory subscribe:orders")))
	resp, data = do(t, "POST", srv.URL+"/v1/groups/mallory/topics/orders/pull?max=10", allowed, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(data), "card 4111") {
		t.Fatalf("first pull with subscribe:orders: %d %s", resp.StatusCode, data)
	}
}
