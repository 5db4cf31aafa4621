//go:build unix

package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
)

// parkedEnv is a server whose held pulls park (parked.go).
type parkedEnv struct {
	srv *httptest.Server
	s   *Server
	b   *broker.Broker
}

func newParkedEnv(t *testing.T) *parkedEnv {
	t.Helper()
	cfg := broker.DefaultConfig(t.TempDir())
	cfg.SegmentSize = 8 << 20
	cfg.AutoCreateTopics = true
	b, err := broker.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := mustNew(t, Config{Broker: b})
	srv := httptest.NewServer(s)
	t.Cleanup(func() {
		s.CloseParked()
		srv.Close()
		b.Close()
	})
	return &parkedEnv{srv: srv, s: s, b: b}
}

func (e *parkedEnv) parkedNow() int {
	e.s.parked.mu.Lock()
	defer e.s.parked.mu.Unlock()
	return len(e.s.parked.polls)
}

// rawPoll sends a pull on a connection of its own and returns the
// connection and a reader of its answer.
func (e *parkedEnv) rawPoll(t *testing.T, group, topic, wait string) (net.Conn, func() (*http.Response, string)) {
	t.Helper()
	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	path := fmt.Sprintf("/v1/groups/%s/topics/%s/pull?max=5&wait=%s", group, topic, wait)
	if _, err := fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nX-Request-Id: poll-1\r\nContent-Length: 0\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	return conn, func() (*http.Response, string) {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(40 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("read the poll's answer: %v", err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("read the poll's body: %v", err)
		}
		return resp, string(body)
	}
}

func pulledOf(t *testing.T, body string) []pulledJSON {
	t.Helper()
	var out struct{ Messages []pulledJSON }
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("answer %q: %v", body, err)
	}
	return out.Messages
}

// A held pull over HTTP/1 parks: it keeps no goroutine (its memory is
// TestHeldPollMemory's, in cmd/postbus), and it answers as a held pull
// does: at a publish with the message, at the end of its wait empty, at a
// shutdown empty, with the request's id and counted in the request
// metrics, then closes its connection. A client that goes away is dropped
// unanswered, and what is published then goes to the next puller as
// attempt 1.
func TestParkedPoll(t *testing.T) {
	for _, tc := range []string{"publish", "wait ends", "shutdown", "paused", "client gone"} {
		t.Run(tc, func(t *testing.T) {
			e := newParkedEnv(t)
			if resp, data := do(t, "POST", e.srv.URL+"/v1/groups/g/topics/t/pull", nil, nil); resp.StatusCode != 200 {
				t.Fatalf("first pull: %d %s", resp.StatusCode, data)
			}
			wait := "20s"
			if tc == "wait ends" {
				wait = "1s"
			}
			start := time.Now()
			conn, answer := e.rawPoll(t, "g", "t", wait)
			waitUntil(t, "the poll parked", func() (bool, string) {
				n := e.parkedNow()
				return n == 1, fmt.Sprintf("%d parked", n)
			})
			if g, err := e.b.Group(context.Background(), "g"); err != nil || g.HeldPolls != 1 {
				t.Fatalf("group held_polls %+v %v, want 1", g.HeldPolls, err)
			}
			want := 0
			switch tc {
			case "publish":
				if resp, data := do(t, "POST", e.srv.URL+"/v1/topics/t/messages", nil, strings.NewReader("hello")); resp.StatusCode != http.StatusCreated {
					t.Fatalf("publish: %d %s", resp.StatusCode, data)
				}
				want = 1
			case "shutdown":
				e.s.CloseParked()
			case "paused":
				subs, err := e.b.Subscriptions(context.Background())
				if err != nil || len(subs) != 1 {
					t.Fatalf("subscriptions %+v %v, want the first pull's", subs, err)
				}
				if resp, data := do(t, "POST", e.srv.URL+"/v1/subscriptions/"+subs[0].ID+"/pause", nil, nil); resp.StatusCode != 200 {
					t.Fatalf("pause: %d %s", resp.StatusCode, data)
				}
			case "client gone":
				conn.Close()
				waitUntil(t, "the gone poll dropped", func() (bool, string) {
					n := e.parkedNow()
					return n == 0, fmt.Sprintf("%d parked", n)
				})
				if resp, data := do(t, "POST", e.srv.URL+"/v1/topics/t/messages", nil, strings.NewReader("after")); resp.StatusCode != http.StatusCreated {
					t.Fatalf("publish: %d %s", resp.StatusCode, data)
				}
				resp, data := do(t, "POST", e.srv.URL+"/v1/groups/g/topics/t/pull", nil, nil)
				if got := pulledOf(t, string(data)); resp.StatusCode != 200 || len(got) != 1 || got[0].Attempt != 1 {
					t.Fatalf("pull after the poll's client went: %d %s, want the message as attempt 1", resp.StatusCode, data)
				}
			}
			if tc == "paused" {
				resp, body := answer()
				if resp.StatusCode != http.StatusBadRequest || codeOf([]byte(body)) != string(broker.CodeInvalidSubscription) || !resp.Close ||
					resp.Header.Get("Content-Type") != "application/problem+json" || resp.Header.Get("X-Request-Id") != "poll-1" {
					t.Fatalf("parked poll across a pause answered %d %v %s, want 400 invalid_subscription, the request id, and the connection closed", resp.StatusCode, resp.Header, body)
				}
				if took := time.Since(start); took > 10*time.Second {
					t.Fatalf("the poll answered %s after it was sent: not woken by the pause", took)
				}
			}
			if tc != "client gone" && tc != "paused" {
				resp, body := answer()
				got := pulledOf(t, body)
				took := time.Since(start)
				if resp.StatusCode != 200 || len(got) != want || !resp.Close || resp.Header.Get("X-Request-Id") != "poll-1" ||
					resp.Header.Get("Content-Type") != "application/json" {
					t.Fatalf("parked poll answered %d %v %s (close %v), want 200 with %d messages, the request id, and the connection closed", resp.StatusCode, resp.Header, body, resp.Close, want)
				}
				if tc == "wait ends" && (took < time.Second || took > 10*time.Second) {
					t.Fatalf("the 1s poll answered after %s", took)
				}
				if tc != "wait ends" && took > 10*time.Second {
					t.Fatalf("the poll answered after %s: not woken", took)
				}
				if n, err := conn.Read(make([]byte, 1)); n != 0 || err == nil {
					t.Fatalf("after the answer the connection gave %d bytes, %v; want it closed", n, err)
				}
				_, metrics := do(t, "GET", e.srv.URL+"/metrics", nil, nil)
				if line := `postbus_http_requests_total{method="POST",route="/v1/groups/{group}/topics/{topic}/pull",status="200"} 2`; !strings.Contains(string(metrics), line) {
					t.Fatalf("metrics lack %s", line)
				}
			}
			if n := e.parkedNow(); n != 0 {
				t.Fatalf("%d polls still parked", n)
			}
			if g, err := e.b.Group(context.Background(), "g"); err != nil || g.HeldPolls != 0 {
				t.Fatalf("group held_polls %+v %v after the poll, want 0", g.HeldPolls, err)
			}
			e.s.polls.mu.Lock()
			held := e.s.polls.held
			e.s.polls.mu.Unlock()
			if held != 0 {
				t.Fatalf("the held-poll bound counts %d after the poll, want 0", held)
			}
		})
	}
}
