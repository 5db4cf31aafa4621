package httpapi

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
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

// TestRefusedSlowBodyIsAnsweredAtOnce (attack F9): a request refused
// before its body is read (a body where none is taken, an unknown header
// or parameter), whose client declares a body and then sends only part
// of it, was answered only once the whole body arrived: never, for a
// client that stops, which held the connection outside every limit. The
// refusal is now written at once and the connection closed.
func TestRefusedSlowBodyIsAnsweredAtOnce(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	for _, tc := range []struct {
		name, request string
		code          string
	}{
		{"pull with a body", "POST /v1/groups/g/topics/orders/pull?max=1 HTTP/1.1\r\n", "unexpected_body"},
		{"publish with an unknown header", "POST /v1/topics/orders/messages HTTP/1.1\r\nPostbus-Tags: x\r\n", "invalid_header"},
		{"publish with an unknown parameter", "POST /v1/topics/orders/messages?maxx=5 HTTP/1.1\r\n", "invalid_parameter"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			// 5 of the 1000 bytes declared, then nothing.
			if _, err := io.WriteString(conn, tc.request+"Host: x\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\nabcde"); err != nil {
				t.Fatal(err)
			}
			// Far less than the server's wait for the rest (unbounded here).
			if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("no answer while the body is incomplete: %v", err)
			}
			data, _ := io.ReadAll(resp.Body)
			if code, _ := problemCode(t, data); resp.StatusCode != http.StatusBadRequest || code != tc.code {
				t.Fatalf("%d %s, want 400 %s", resp.StatusCode, data, tc.code)
			}
			if !resp.Close {
				t.Errorf("the connection is kept for the rest of a body nobody reads (Connection: %q)", resp.Header.Get("Connection"))
			}
		})
	}
}
