package httpapi

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/postbus/postbus/broker"
)

// TestHeldPollsBounded is F9: 9,000 long polls from one token stalled a
// broker for everyone. Long polls held at once are bounded per client and
// per server, before anything else is asked: beyond the client's bound
// 429 too_many_polls, beyond the server's 503 server_busy (an ERROR line),
// both with Retry-After and counted. Pulls without a wait are not held and
// not counted; a poll that ends gives its place back.
func TestHeldPollsBounded(t *testing.T) {
	var logs syncBuffer
	srv, s := newEdgeServer(t, 1<<20, Config{Auth: AuthConfig{HMACSecret: testSecret}, MaxHeldPolls: 3, MaxHeldPollsPerClient: 2, Logger: newTestLogger(&logs)})
	admin := withToken(hsToken(t, scoped("admin")))
	if resp, data := do(t, "PUT", srv.URL+"/v1/topics/idle", admin, strings.NewReader(`{"queues":1}`)); resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT topic: %d %s", resp.StatusCode, data)
	}
	tok := func(sub string) map[string]string {
		return withToken(hsToken(t, jwtClaims("consume:* subscribe:*", sub)))
	}
	a, b, c := tok("a"), tok("b"), tok("c")
	// Held polls: a pull of an empty topic and a read past a queue's end.
	pullPath := func(group string) string { return "/v1/groups/" + group + "/topics/idle/pull?wait=30s" }
	readPath := "/v1/topics/idle/queues/0/messages?offset=1000&wait=30s"
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	hold := func(hdr map[string]string, method, path string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, method, srv.URL+path, nil)
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	heldNow := func() int {
		s.polls.mu.Lock()
		defer s.polls.mu.Unlock()
		return s.polls.held
	}
	waitHeld := func(n int) {
		waitUntil(t, fmt.Sprintf("%d polls held", n), func() (bool, string) {
			got := heldNow()
			return got == n, fmt.Sprintf("%d held", got)
		})
	}
	hold(a, "POST", pullPath("ga"))
	hold(a, "GET", readPath)
	waitHeld(2)
	refused := func(hdr map[string]string, method, path string, status int, code broker.Code) {
		t.Helper()
		resp, data := do(t, method, srv.URL+path, hdr, nil)
		if resp.StatusCode != status || codeOf(data) != string(code) || resp.Header.Get("Retry-After") != "1" {
			t.Fatalf("%s %s: %d %s (Retry-After %q), want %d %s", method, path, resp.StatusCode, data, resp.Header.Get("Retry-After"), status, code)
		}
	}
	// a is at its bound: a third long poll is refused, a pull without a
	// wait is not held and goes through.
	refused(a, "POST", pullPath("ga2"), http.StatusTooManyRequests, codeTooManyPolls)
	refused(a, "GET", readPath, http.StatusTooManyRequests, codeTooManyPolls)
	if resp, data := do(t, "POST", srv.URL+"/v1/groups/ga3/topics/idle/pull", a, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("a pull without a wait: %d %s", resp.StatusCode, data)
	}
	// b takes the server's last place; c is refused for the server's bound.
	hold(b, "POST", pullPath("gb"))
	waitHeld(3)
	refused(c, "POST", pullPath("gc"), http.StatusServiceUnavailable, codeServerBusy)
	if !strings.Contains(logs.String(), "long polls held reach the server's bound") {
		t.Errorf("no ERROR line for the server's bound:\n%s", logs.String())
	}
	_, metrics := do(t, "GET", srv.URL+"/metrics", admin, nil)
	for _, want := range []string{`postbus_http_polls_refused_total{bound="client"} 2`, `postbus_http_polls_refused_total{bound="server"} 1`, "postbus_http_held_polls 3"} {
		if !bytes.Contains(metrics, []byte("\n"+want+"\n")) {
			t.Errorf("/metrics lacks %s:\n%s", want, grepLines(metrics, "poll"))
		}
	}
	// The polls end (their clients leave): their places are given back.
	cancel()
	wg.Wait()
	waitHeld(0)
	resp, data := do(t, "POST", srv.URL+"/v1/groups/gc/topics/idle/pull?wait=1ms", c, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("a poll once the others ended: %d %s", resp.StatusCode, data)
	}
}
