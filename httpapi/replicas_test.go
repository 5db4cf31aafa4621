package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
)

// fakeReplicas is a member that leads (or not) and records additions.
type fakeReplicas struct {
	mu     sync.Mutex
	leads  bool
	known  bool
	added  []string
	leader string
}

func (f *fakeReplicas) Status() (any, error) { return map[string]any{"broker": "g"}, nil }
func (f *fakeReplicas) Add(id, addr string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.added = append(f.added, id+"="+addr)
	return nil
}
func (f *fakeReplicas) Remove(id string) error { return ErrMemberNotFound }
func (f *fakeReplicas) Leader() (string, bool, bool) {
	return f.leader, f.leads, f.known || f.leads
}

// TestFrontAddReadsItsBodyLikeEveryRoute: POST /v1/replicas on a member
// refuses what every JSON route refuses, and adds nobody then.
func TestFrontAddReadsItsBodyLikeEveryRoute(t *testing.T) {
	cases := []struct {
		name, body, ctype string
		code              string
	}{
		{"trailing data", `{"id":"n9","addr":"127.0.0.1:1"}x`, "application/json", "invalid_json"},
		{"trailing brackets", `{"id":"n9","addr":"127.0.0.1:1"}]]]}`, "application/json", "invalid_json"},
		{"a key twice", `{"id":"a","id":"n9","addr":"127.0.0.1:1"}`, "application/json", "invalid_json"},
		{"not JSON's media type", `{"id":"n9","addr":"127.0.0.1:1"}`, "text/plain", "unsupported_media_type"},
		{"an unknown field", `{"id":"n9","addr":"127.0.0.1:1","voter":false}`, "application/json", "invalid_json"},
		{"no address", `{"id":"n9"}`, "application/json", "invalid_member"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs := &fakeReplicas{leads: true}
			f, err := NewFront(FrontConfig{Replicas: rs})
			if err != nil {
				t.Fatal(err)
			}
			req := httptest.NewRequest(http.MethodPost, "/v1/replicas", strings.NewReader(tc.body))
			req.Header.Set("Content-Type", tc.ctype)
			rec := httptest.NewRecorder()
			f.ServeHTTP(rec, req)
			var p problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
				t.Fatalf("status %d, body %q: %v", rec.Code, rec.Body, err)
			}
			if string(p.Code) != tc.code {
				t.Fatalf("status %d code %q, want %q: %s", rec.Code, p.Code, tc.code, rec.Body)
			}
			if len(rs.added) != 0 {
				t.Fatalf("added %v", rs.added)
			}
		})
	}
}

// TestFrontNoLeader: a follower that knows no leader holds a request for
// LeaderWait, then answers 503 no_leader with Retry-After; a request
// another member forwarded is not sent on.
func TestFrontNoLeader(t *testing.T) {
	f, err := NewFront(FrontConfig{Replicas: &fakeReplicas{}, LeaderWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, forwarded := range []bool{false, true} {
		req := httptest.NewRequest(http.MethodPost, "/v1/topics/t/messages", strings.NewReader("x"))
		if forwarded {
			req.Header.Set(forwardedHeader, "1")
		}
		rec := httptest.NewRecorder()
		f.ServeHTTP(rec, req)
		var p problem
		if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
			t.Fatal(err)
		}
		if rec.Code != http.StatusServiceUnavailable || p.Code != codeNoLeader || rec.Header().Get("Retry-After") == "" {
			t.Fatalf("forwarded=%v: %d %q Retry-After %q", forwarded, rec.Code, p.Code, rec.Header().Get("Retry-After"))
		}
	}
}

// TestFrontForwardFailure: a forward that could not connect answers
// no_leader (nothing was done); one whose leader went away after taking
// the request answers unavailable, saying the write may have been done.
func TestFrontForwardFailure(t *testing.T) {
	// A leader that takes the request and drops the connection.
	ln := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hj, ok := w.(http.Hijacker)
		if !ok {
			t.Error("no hijacker")
			return
		}
		c, _, err := hj.Hijack()
		if err == nil {
			c.Close()
		}
	}))
	defer ln.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	deadAddr := closed.URL
	closed.Close()
	for _, tc := range []struct {
		name, leader string
		status       int
		code         string
	}{
		{"leader gone before the answer", ln.URL, http.StatusServiceUnavailable, "unavailable"},
		{"leader not reachable", deadAddr, http.StatusServiceUnavailable, "no_leader"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := NewFront(FrontConfig{Replicas: &fakeReplicas{known: true, leader: tc.leader}})
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			f.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/topics/t/messages", strings.NewReader("x")))
			var p problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
				t.Fatalf("%d %q: %v", rec.Code, rec.Body, err)
			}
			if rec.Code != tc.status || string(p.Code) != tc.code {
				t.Fatalf("%d %q, want %d %q: %s", rec.Code, p.Code, tc.status, tc.code, p.Detail)
			}
		})
	}
}

// TestNotLeaderIsUnavailable: an error that says the member lost the lead
// under a request (a metadata write inside a pull, say) answers 503
// unavailable with Retry-After, not 500.
func TestNotLeaderIsUnavailable(t *testing.T) {
	s := &Server{logger: slog.New(slog.DiscardHandler)}
	rec := httptest.NewRecorder()
	err := fmt.Errorf("create system topic: put topic: replicate a metadata write: %w", broker.ErrNotLeader)
	s.writeError(rec, httptest.NewRequest(http.MethodPost, "/v1/groups/g/topics/t/pull", nil), err)
	var p problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusServiceUnavailable || p.Code != broker.CodeUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("%d %q Retry-After %q", rec.Code, p.Code, rec.Header().Get("Retry-After"))
	}
}

// TestFrontReadyzUntrusted: a member whose files may no longer match its
// group's answers /readyz 503 with the reason, whether it follows (a
// leader known) or leads (its API set).
func TestFrontReadyzUntrusted(t *testing.T) {
	why := errors.New("its commitlog has 1 damaged span(s); stop it, delete its data directory")
	for _, leads := range []bool{false, true} {
		var untrusted error
		f, err := NewFront(FrontConfig{Replicas: &fakeReplicas{known: true, leader: "http://127.0.0.1:1"},
			Untrusted: func() error { return untrusted }})
		if err != nil {
			t.Fatal(err)
		}
		if leads {
			f.SetLeader(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
		}
		for _, tc := range []struct {
			untrusted error
			status    int
		}{{nil, http.StatusOK}, {why, http.StatusServiceUnavailable}} {
			untrusted = tc.untrusted
			rec := httptest.NewRecorder()
			f.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
			if rec.Code != tc.status {
				t.Fatalf("leads=%v untrusted=%v: /readyz %d, want %d: %s", leads, tc.untrusted, rec.Code, tc.status, rec.Body)
			}
			if tc.untrusted == nil {
				continue
			}
			var p problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
				t.Fatalf("%d %q: %v", rec.Code, rec.Body, err)
			}
			if p.Code != codeNotReady || !strings.Contains(p.Detail, "delete its data directory") {
				t.Fatalf("leads=%v: problem %q %q", leads, p.Code, p.Detail)
			}
		}
	}
}

// TestFrontHealthzVersion: a member's /healthz answers the Health schema
// with its version also while it follows (it used to answer "ok\n").
func TestFrontHealthzVersion(t *testing.T) {
	f, err := NewFront(FrontConfig{Replicas: &fakeReplicas{}, Version: "v9.9.9"})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	f.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	var h struct{ Status, Version string }
	if err := json.Unmarshal(rec.Body.Bytes(), &h); err != nil {
		t.Fatalf("/healthz %d %q: %v", rec.Code, rec.Body, err)
	}
	if rec.Code != http.StatusOK || h.Status != "ok" || h.Version != "v9.9.9" {
		t.Fatalf("/healthz %d %+v, want 200 ok v9.9.9", rec.Code, h)
	}
}
