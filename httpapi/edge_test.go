package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/postbus/postbus/broker"
)

// newDevServer is a broker with the name server's routes beside its own,
// as `postbus dev` serves them: every JSON route of openapi.yaml is there.
func newDevServer(tb testing.TB) *httptest.Server {
	tb.Helper()
	cfg := broker.DefaultConfig(tb.TempDir())
	cfg.SegmentSize = 8 << 20
	cfg.MaxMessageBytes = 1 << 20
	cfg.AutoCreateTopics = true
	b, err := broker.Open(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewServer(mustNew(tb, Config{Broker: b, NameServer: newContractRegistry()}))
	tb.Cleanup(func() {
		srv.Close()
		b.Close()
	})
	return srv
}

// codeOf is the code of a problem+json answer, or "" if it is none.
func codeOf(data []byte) string {
	var p problem
	json.Unmarshal(data, &p)
	return string(p.Code)
}

// TestJSONTrailingDataRefused sends, to every route openapi.yaml says takes
// a JSON body, a valid body followed by a stray ']' or '}' (and a few other
// tails): each is invalid JSON and must be refused before anything is done.
// The routes come from the document, so a JSON route added later is
// covered without touching this test.
func TestJSONTrailingDataRefused(t *testing.T) {
	doc := loadContract(t)
	srv := newDevServer(t)
	hdr := map[string]string{"Content-Type": "application/json"}
	// A subscription for the routes that look one up before the body.
	resp, data := do(t, "POST", srv.URL+"/v1/subscriptions", hdr, strings.NewReader(`{"group":"g","topic":"t"}`))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create subscription: %d %s", resp.StatusCode, data)
	}
	var sub struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(data, &sub); err != nil || sub.ID == "" {
		t.Fatalf("subscription answer %s: %v", data, err)
	}
	params := strings.NewReplacer("{topic}", "t", "{group}", "g", "{id}", sub.ID, "{name}", "b1")

	var routes []string
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			// A single publish takes any bytes as its body, JSON or not.
			if op.RequestBody == nil || op.RequestBody.Value.Content.Get("application/json") == nil || op.OperationID == "publish" {
				continue
			}
			routes = append(routes, method+" "+path)
		}
	}
	slices.Sort(routes)
	if len(routes) < 10 {
		t.Fatalf("openapi.yaml lists only %d routes with a JSON body: %v", len(routes), routes)
	}
	for _, route := range routes {
		method, path, _ := strings.Cut(route, " ")
		body := "{}"
		if strings.HasSuffix(path, "/batch") {
			body = `[{"body":"x"}]`
		}
		for _, tail := range []string{"]", "}", "]]]}", " \n]", "{}", "0", "x"} {
			t.Run(route+"/"+tail, func(t *testing.T) {
				resp, data := do(t, method, srv.URL+params.Replace(path), hdr, strings.NewReader(body+tail))
				if resp.StatusCode != http.StatusBadRequest || codeOf(data) != string(codeInvalidJSON) {
					t.Fatalf("%s with body %q: %d %s, want 400 invalid_json", route, body+tail, resp.StatusCode, data)
				}
			})
		}
	}
	// Whitespace after the value is fine.
	resp, data = do(t, "PUT", srv.URL+"/v1/topics/fresh", hdr, strings.NewReader("{\"queues\":2} \r\n\t"))
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT with trailing whitespace: %d %s", resp.StatusCode, data)
	}
}
