package httpapi

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestContractBodyRoutes: the routes that take a body are exactly those
// with a requestBody in openapi.yaml.
func TestContractBodyRoutes(t *testing.T) {
	doc := loadContract(t)
	documented := make(map[string]bool)
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			if op.RequestBody != nil {
				documented[method+" "+path] = true
			}
		}
	}
	for route := range servedRoutes(t, mustNew(t, Config{NameServer: newContractRegistry()})) {
		if bodyRoutes[route] != documented[route] {
			t.Errorf("%s: takes a body %v, openapi.yaml has a requestBody %v", route, bodyRoutes[route], documented[route])
		}
	}
}

// TestBodyRefusedWhereNoneTaken: a body sent to a route that takes none
// (a pull, a DELETE, a GET) used to be ignored without a word (S4-8);
// it is now 400 unexpected_body, and nothing is done. The same requests
// without a body pass.
func TestBodyRefusedWhereNoneTaken(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	if resp, _ := do(t, "POST", srv.URL+"/v1/topics/orders/messages", map[string]string{"Content-Type": "text/plain"}, strings.NewReader("m")); resp.StatusCode != http.StatusCreated {
		t.Fatalf("publish: %d", resp.StatusCode)
	}
	for _, tc := range []struct {
		method, path string
		ok           int
	}{
		{"GET", "/v1/topics/orders", http.StatusOK},
		{"POST", "/v1/groups/g/topics/orders/pull?max=1", http.StatusOK},
		{"GET", "/v1/topics/orders/queues/0/messages", http.StatusOK},
		{"DELETE", "/v1/groups/g/dlq", http.StatusOK},
		{"DELETE", "/v1/topics/orders", http.StatusNoContent},
	} {
		for _, chunked := range []bool{false, true} {
			var body io.Reader = strings.NewReader(`{"filter":"TagA"}`)
			if chunked {
				body = io.MultiReader(body) // no length known: sent chunked
			}
			resp, data := do(t, tc.method, srv.URL+tc.path, map[string]string{"Content-Type": "application/json"}, body)
			var p struct {
				Code string `json:"code"`
			}
			_ = json.Unmarshal(data, &p)
			if resp.StatusCode != http.StatusBadRequest || p.Code != "unexpected_body" {
				t.Errorf("%s %s with a body (chunked %v): %d %s, want 400 unexpected_body", tc.method, tc.path, chunked, resp.StatusCode, data)
			}
		}
		if resp, data := do(t, tc.method, srv.URL+tc.path, nil, nil); resp.StatusCode != tc.ok {
			t.Errorf("%s %s without a body: %d %s, want %d", tc.method, tc.path, resp.StatusCode, data, tc.ok)
		}
	}
}

// TestContentTypeNeedsSubtype: a Content-Type without a subtype ("text")
// was stored as given while a malformed parameter was refused (S4-8):
// both are refused now, on a publish and on a batch item.
func TestContentTypeNeedsSubtype(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	for _, tc := range []struct {
		ct   string
		want int
		code string
	}{
		{"text", http.StatusBadRequest, "invalid_header"},
		{"text/", http.StatusBadRequest, "invalid_header"},
		{"/plain", http.StatusBadRequest, "invalid_header"},
		{"a/b; x", http.StatusBadRequest, "invalid_header"},
		{"text/plain; charset=utf-8", http.StatusCreated, ""},
		{"application/vnd.x+json", http.StatusCreated, ""},
	} {
		resp, data := do(t, "POST", srv.URL+"/v1/topics/ct/messages", map[string]string{"Content-Type": tc.ct}, strings.NewReader("m"))
		var p struct {
			Code string `json:"code"`
		}
		_ = json.Unmarshal(data, &p)
		if resp.StatusCode != tc.want || p.Code != tc.code {
			t.Errorf("publish with Content-Type %q: %d %s, want %d %s", tc.ct, resp.StatusCode, data, tc.want, tc.code)
		}
		item, _ := json.Marshal([]map[string]string{{"body": "m", "content_type": tc.ct}})
		resp, data = do(t, "POST", srv.URL+"/v1/topics/ct/messages/batch", map[string]string{"Content-Type": "application/json"}, strings.NewReader(string(item)))
		p.Code = ""
		_ = json.Unmarshal(data, &p)
		want, code := tc.want, tc.code
		if code != "" {
			code = "invalid_message"
		}
		if resp.StatusCode != want || p.Code != code {
			t.Errorf("batch item with content_type %q: %d %s, want %d %s", tc.ct, resp.StatusCode, data, want, code)
		}
	}
}
