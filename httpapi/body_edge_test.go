package httpapi

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// stalledRequestAs is stalledRequest with extra header lines (such as an
// Authorization).
func stalledRequestAs(tb testing.TB, srv *httptest.Server, path string, hdr map[string]string, contentLength int, sent []byte) net.Conn {
	tb.Helper()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	var head strings.Builder
	fmt.Fprintf(&head, "POST %s HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\nContent-Length: %d\r\n", path, contentLength)
	for k, v := range hdr {
		fmt.Fprintf(&head, "%s: %s\r\n", k, v)
	}
	head.WriteString("\r\n")
	if _, err := c.Write(append([]byte(head.String()), sent...)); err != nil {
		tb.Fatal(err)
	}
	return c
}

// readAnswer reads the response on c, failing after limit.
func readAnswer(tb testing.TB, c net.Conn, limit time.Duration) (*http.Response, []byte) {
	tb.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		tb.Fatalf("no answer within %s: %v", limit, err)
	}
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		tb.Fatal(err)
	}
	// The server closes the connection after such an answer: the next
	// read sees its end, not a wait.
	if _, err := br.ReadByte(); err != io.EOF {
		tb.Fatalf("the connection stays open after the answer (%v): %v %s", err, resp.Header, data)
	}
	return resp, data
}

// TestSlowBodyRefused is the attack of F2: bodies sent a byte every few
// seconds held their memory for the server's whole read timeout (two
// minutes). A body must now arrive at the least rate once the grace has
// passed, or the request answers 408 request_timeout, its connection is
// closed, its memory given back, nothing stored, and the refusal counted
// and logged. A body that keeps the pace goes through.
func TestSlowBodyRefused(t *testing.T) {
	const grace = 300 * time.Millisecond
	var logs syncBuffer
	srv, s := newEdgeServer(t, 4<<20, Config{MinBodyRate: 256 << 10, BodyGrace: grace, Logger: newTestLogger(&logs)})
	for _, tc := range []struct {
		name, path string
		announce   int
		sent       []byte
	}{
		{"publish, one byte", "/v1/topics/t/messages", 4 << 20, []byte("x")},
		{"publish, 1 MiB then nothing", "/v1/topics/t/messages", 4 << 20, bytes.Repeat([]byte("x"), 1<<20)},
		{"batch", "/v1/topics/t/messages/batch", maxBatchRequestBytes, []byte("[")},
		{"subscription", "/v1/subscriptions", 60000, []byte("{")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c := stalledRequest(t, srv, tc.path, tc.announce, tc.sent)
			// 1 MiB at 256 KiB/s is 4 s of credit on top of the grace.
			resp, data := readAnswer(t, c, 40*time.Second)
			if resp.StatusCode != http.StatusRequestTimeout || codeOf(data) != string(codeRequestTimeout) {
				t.Fatalf("stalled body: %d %s, want 408 request_timeout", resp.StatusCode, data)
			}
			if took := time.Since(start); took < grace {
				t.Fatalf("refused after %s, within the grace of %s", took, grace)
			}
		})
	}
	waitUntil(t, "the refused bodies' memory to be given back", func() (bool, string) {
		got := s.bodies.used.Load()
		return got == 0, fmt.Sprintf("%d bytes reserved", got)
	})
	if _, metrics := do(t, "GET", srv.URL+"/metrics", nil, nil); !bytes.Contains(metrics, []byte("\npostbus_http_body_too_slow_total 4\n")) {
		t.Errorf("/metrics does not count the 4 slow bodies:\n%s", grepLines(metrics, "postbus_http_body"))
	}
	if n := strings.Count(logs.String(), "request body arriving too slowly"); n != 4 {
		t.Errorf("%d ERROR lines for 4 slow bodies:\n%s", n, logs.String())
	}
	if resp, data := do(t, "GET", srv.URL+"/v1/topics/t", nil, nil); resp.StatusCode == http.StatusOK && strings.Contains(string(data), `"messages":1`) {
		t.Fatalf("a refused publish was stored: %s", data)
	}
	// A body arriving at the pace, in pieces, past the grace, is taken.
	c := stalledRequest(t, srv, "/v1/topics/t/messages", 256<<10, nil)
	piece := bytes.Repeat([]byte("y"), 32<<10)
	for range 8 {
		if _, err := c.Write(piece); err != nil {
			t.Fatal(err)
		}
		time.Sleep(grace / 4) // pacing the sender, not asserting
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if data, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusCreated {
		t.Fatalf("a body at the pace: %d %s", resp.StatusCode, data)
	}
}

// TestBodyChargedAsArrived: a stalled body announced at 4 MiB that has
// sent 1 MiB was charged 2 MiB (its buffer doubled), so 8 such held 16 MiB.
// What a body holds is now at most a quarter over what arrived.
func TestBodyChargedAsArrived(t *testing.T) {
	srv, s := newEdgeServer(t, 4<<20, Config{MinBodyRate: -1})
	const sent = 1 << 20
	stalledRequest(t, srv, "/v1/topics/t/messages", 4<<20, bytes.Repeat([]byte("x"), sent))
	waitUntil(t, "the 1 MiB sent to be read", func() (bool, string) {
		got := s.bodies.used.Load()
		return got > sent, fmt.Sprintf("%d bytes reserved", got)
	})
	if got := s.bodies.used.Load(); got > sent+sent/4+bodyChunk {
		t.Fatalf("%d bytes reserved for a body of which %d arrived: more than a quarter over", got, sent)
	}
}

// TestBodyMemoryShared: one client (a token) whose bodies hold all of its
// share is refused more (503 server_busy, counted), while another client
// goes on publishing; used to be that one client could take all of
// --max-body-memory.
func TestBodyMemoryShared(t *testing.T) {
	least := MinBodyMemory(false)
	srv, s := newEdgeServer(t, 1<<20, Config{Auth: AuthConfig{HMACSecret: testSecret}, MaxBodyMemory: 4 * least, MaxBodyMemoryPerClient: least, MinBodyRate: -1})
	hog := hsToken(t, scoped("admin"))
	other := hsToken(t, jwtClaims("publish:*", "other"))
	// The hog's stalled batch holds all but 64 KiB of its share.
	stalledRequestAs(t, srv, "/v1/topics/t/messages/batch", map[string]string{"Authorization": "Bearer " + hog}, maxBatchRequestBytes, bytes.Repeat([]byte(" "), maxBatchRequestBytes-1))
	waitUntil(t, "the stalled batch to reserve its announced length", func() (bool, string) {
		got := s.bodies.used.Load()
		return got == maxBatchRequestBytes, fmt.Sprintf("%d bytes reserved", got)
	})
	big := bytes.Repeat([]byte("y"), 512<<10)
	hdr := func(tok string) map[string]string {
		return map[string]string{"Authorization": "Bearer " + tok, "Content-Type": "application/octet-stream"}
	}
	resp, data := do(t, "POST", srv.URL+"/v1/topics/t/messages", hdr(hog), bytes.NewReader(big))
	if resp.StatusCode != http.StatusServiceUnavailable || codeOf(data) != string(codeServerBusy) || resp.Header.Get("Retry-After") != "1" || !strings.Contains(string(data), "--max-body-memory-per-client") {
		t.Fatalf("the hog's second body: %d %s, want 503 server_busy naming its share", resp.StatusCode, data)
	}
	resp, data = do(t, "POST", srv.URL+"/v1/topics/t/messages", hdr(other), bytes.NewReader(big))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("another client, with the hog at its share: %d %s", resp.StatusCode, data)
	}
	_, metrics := do(t, "GET", srv.URL+"/metrics", hdr(hog), nil)
	if !bytes.Contains(metrics, []byte("\npostbus_http_body_memory_client_refused_total 1\n")) || !bytes.Contains(metrics, []byte("\npostbus_http_body_memory_refused_total 0\n")) {
		t.Errorf("/metrics does not count the one refusal for the share:\n%s", grepLines(metrics, "postbus_http_body"))
	}
}

// TestRefusedBodyNotDrained: a request refused by its access check (no
// token, a bad one, a scope that does not allow it) is answered at once
// and its connection closed, before its body is read: the server used to
// wait for up to 256 KiB of the body nobody would read before answering.
// A token with no rights on anything, creating a subscription, holds body
// memory only within its client's share (TestBodyMemoryShared).
func TestRefusedBodyNotDrained(t *testing.T) {
	srv, s := newEdgeServer(t, 1<<20, Config{Auth: AuthConfig{HMACSecret: testSecret}, MinBodyRate: -1})
	for _, tc := range []struct {
		name, token string
		status      int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"bad token", "x.y.z", http.StatusUnauthorized},
		{"out of scope", hsToken(t, scoped("consume:nothing")), http.StatusForbidden},
	} {
		hdr := map[string]string{}
		if tc.token != "" {
			hdr["Authorization"] = "Bearer " + tc.token
		}
		for _, path := range []string{"/v1/topics/t/messages", "/v1/subscriptions"} {
			c := stalledRequestAs(t, srv, path, hdr, 65535, []byte("{"))
			resp, data := readAnswer(t, c, 20*time.Second)
			if resp.StatusCode != tc.status {
				t.Fatalf("%s, POST %s: %d %s, want %d before the body", tc.name, path, resp.StatusCode, data, tc.status)
			}
		}
	}
	if got := s.bodies.used.Load(); got != 0 {
		t.Fatalf("%d bytes reserved by refused requests", got)
	}
}

// syncBuffer is a log sink handlers write from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func newTestLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// jwtClaims are claims for a token of scope for client sub, valid an hour.
func jwtClaims(scope, sub string) jwt.MapClaims {
	return jwt.MapClaims{"scope": scope, "exp": time.Now().Add(time.Hour).Unix(), "sub": sub}
}
