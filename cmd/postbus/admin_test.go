package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// adminRun runs the built binary's `postbus admin` with args against url
// and returns its stdout, stderr and exit code.
func adminRun(tb testing.TB, url string, args ...string) (stdout, stderr string, code int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, postbusBin, append([]string{"admin"}, args...)...)
	cmd.Env = append(os.Environ(), "POSTBUS_URL="+url, "POSTBUS_TOKEN=", "POSTBUS_TLS_CA=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil && cmd.ProcessState == nil {
		tb.Fatalf("postbus admin %q: %v", args, err)
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

// TestAdmin drives every noun and verb of `postbus admin` through the real
// binary against a real broker, in the order an operator would, checking
// tables, -o json, problems on stderr and exit codes.
func TestAdmin(t *testing.T) {
	p := start(t, "dev", "--data", t.TempDir())
	// A webhook that always fails, for a dead letter.
	var subID, msgID string
	steps := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  []string // substrings of stdout
		wantErr  []string // substrings of stderr
		after    func(t *testing.T, stdout string)
	}{
		{name: "create topic", args: []string{"topics", "create", "orders", "--queues", "2", "--retention", "48h"}, wantOut: []string{"orders", "Queues:", "2"}},
		{name: "create existing topic", args: []string{"topics", "create", "orders"}, wantCode: exitRefused, wantErr: []string{"topic orders exists"}},
		{name: "grow topic", args: []string{"topics", "grow", "orders", "--queues", "4"}, wantOut: []string{"Queues:", "4"}},
		{name: "grow to fewer", args: []string{"topics", "grow", "orders", "--queues", "2"}, wantCode: exitUsage, wantErr: []string{"has 4 queues"}},
		{name: "list topics", args: []string{"topics", "list"}, wantOut: []string{"TOPIC", "QUEUES", "orders", "48h"}},
		{name: "show unknown topic", args: []string{"topics", "show", "nope"}, wantCode: exitNotFound, wantErr: []string{"404 topic_not_found"}},
		{name: "bad topic name", args: []string{"topics", "create", "bad name!"}, wantCode: exitRefused, wantErr: []string{"400 "}},
		{name: "subscribe a failing webhook", args: []string{"subscriptions", "create", "--group", "billing", "--topic", "orders",
			"--webhook-url", "http://127.0.0.1:1/hook", "--max-retries", "0", "--start-from", "earliest", "-o", "json"},
			wantOut: []string{`"secret": "whsec_`},
			after: func(t *testing.T, stdout string) {
				var s struct{ ID string }
				if err := json.Unmarshal([]byte(stdout), &s); err != nil || s.ID == "" {
					t.Fatalf("subscription create -o json printed %q: %v", stdout, err)
				}
				subID = s.ID
			}},
		{name: "subscribe in cloudevents", args: []string{"subscriptions", "create", "--group", "events", "--topic", "orders",
			"--webhook-url", "http://127.0.0.1:1/events", "--format", "cloudevents"}, wantOut: []string{"Format:", "cloudevents"}},
		{name: "subscribe in a bad format", args: []string{"subscriptions", "create", "--group", "events2", "--topic", "orders",
			"--webhook-url", "http://127.0.0.1:1/events", "--format", "cloudevent"}, wantCode: exitRefused, wantErr: []string{"400 invalid_subscription"}},
		{name: "send", args: []string{"messages", "send", "orders", "--tag", "created", "--keys", "order-1", "--body", `{"id":1}`, "-o", "json"},
			wantOut: []string{`"status": "SEND_OK"`},
			after: func(t *testing.T, stdout string) {
				var ack struct {
					MsgID string `json:"msg_id"`
				}
				if err := json.Unmarshal([]byte(stdout), &ack); err != nil || ack.MsgID == "" {
					t.Fatalf("send -o json printed %q: %v", stdout, err)
				}
				msgID = ack.MsgID
				waitUntil(t, 30*time.Second, "the message to be dead-lettered", func() bool {
					var g struct {
						DeadLetters int `json:"dead_letters"`
					}
					getJSON(t, p.url+"/v1/groups/billing", &g)
					return g.DeadLetters == 1
				})
			}},
		{name: "get", args: []string{"messages", "get", "$MSG"}, wantOut: []string{"Message:", "$MSG", "Tag:", "created", "Body:", `{"id":1}`}},
		{name: "get raw", args: []string{"messages", "get", "$MSG", "--raw"}, wantOut: []string{`{"id":1}`}},
		{name: "by key", args: []string{"messages", "key", "orders", "order-1"}, wantOut: []string{"MSG_ID", "$MSG", "order-1"}},
		{name: "trace", args: []string{"messages", "trace", "$MSG"}, wantOut: []string{"OUTCOME", "dead", "billing"}},
		{name: "unknown message", args: []string{"messages", "get", "AAAAAAAAAAAAAAAAAAAAAA"}, wantCode: exitNotFound, wantErr: []string{"404 "}},
		{name: "groups list", args: []string{"groups", "list"}, wantOut: []string{"GROUP", "billing", "orders(push)"}},
		{name: "group show", args: []string{"groups", "show", "billing"}, wantOut: []string{"Dead letters:", "IN_FLIGHT", "orders", "$SUB"}},
		{name: "dlq list", args: []string{"dlq", "list", "billing"}, wantOut: []string{"LAST_ERROR", "$MSG", "connection refused"}},
		{name: "dlq show", args: []string{"dlq", "show", "billing", "$MSG"}, wantOut: []string{"Last error:", "connection refused", `{"id":1}`}},
		{name: "dlq show unknown", args: []string{"dlq", "show", "billing", "nope"}, wantCode: exitNotFound, wantErr: []string{"no dead letter nope"}},
		{name: "redrive needs ids or --all", args: []string{"dlq", "redrive", "billing"}, wantCode: exitUsage, wantErr: []string{"--all"}},
		{name: "redrive", args: []string{"dlq", "redrive", "billing", "$MSG", "-o", "json"}, wantOut: []string{`"redriven": 1`}},
		{name: "purge needs --yes", args: []string{"dlq", "purge", "billing"}, wantCode: exitUsage, wantErr: []string{"--yes"}},
		{name: "purge", args: []string{"dlq", "purge", "billing", "--yes"}, wantOut: []string{"purged"}},
		{name: "reset", args: []string{"groups", "reset", "billing", "--topic", "orders", "--to", "latest"}, wantOut: []string{"reset group billing on orders to latest"}},
		{name: "reset to nonsense", args: []string{"groups", "reset", "billing", "--topic", "orders", "--to", "yesterday"}, wantCode: exitRefused, wantErr: []string{"400 "}},
		{name: "subscriptions list", args: []string{"subscriptions", "list", "--group", "billing"}, wantOut: []string{"$SUB", "push"}},
		{name: "pause", args: []string{"subscriptions", "pause", "$SUB"}, wantOut: []string{"State:", "paused"}},
		{name: "show paused", args: []string{"subscriptions", "show", "$SUB", "-o", "json"}, wantOut: []string{`"state": "paused"`}},
		{name: "resume", args: []string{"subscriptions", "resume", "$SUB"}, wantOut: []string{"active"}},
		{name: "rotate", args: []string{"subscriptions", "rotate", "$SUB"}, wantOut: []string{"Secret:", "whsec_"}},
		{name: "delete subscription", args: []string{"subscriptions", "delete", "$SUB"}, wantOut: []string{"deleted subscription"}},
		{name: "show deleted subscription", args: []string{"subscriptions", "show", "$SUB"}, wantCode: exitNotFound},
		{name: "transactions", args: []string{"transactions", "list"}, wantCode: -1},
		{name: "cluster", args: []string{"cluster", "show"}, wantOut: []string{"BROKER", "DefaultCluster", "VERSION"}},
		{name: "replicas on a standalone broker", args: []string{"replicas", "list"}, wantCode: exitNotFound, wantErr: []string{"not_replicated"}},
		{name: "delete topic needs --yes", args: []string{"topics", "delete", "orders"}, wantCode: exitUsage, wantErr: []string{"--yes"}},
		{name: "delete topic", args: []string{"topics", "delete", "orders", "--yes"}, wantOut: []string{"deleted topic orders"}},
		{name: "topics list json", args: []string{"topics", "list", "-o", "json"}, wantOut: []string{`"topics": []`}},
		{name: "flags before the noun", args: []string{"-o", "json", "--timeout=10s", "topics", "list"}, wantOut: []string{`"topics": []`}},
		{name: "bad output", args: []string{"topics", "list", "-o", "yaml"}, wantCode: exitUsage, wantErr: []string{"want table or json"}},
		{name: "wrong argument count", args: []string{"topics", "show"}, wantCode: exitUsage, wantErr: []string{"takes 1 argument"}},
		{name: "unknown noun", args: []string{"queues", "list"}, wantCode: exitUsage, wantErr: []string{`unknown noun "queues"`}},
		{name: "unknown verb", args: []string{"topics", "frob"}, wantCode: exitUsage, wantErr: []string{`unknown verb "frob"`, "create"}},
	}
	for _, st := range steps {
		if t.Failed() {
			return // each step builds on the ones before
		}
		t.Run(st.name, func(t *testing.T) {
			sub := func(s string) string { return strings.NewReplacer("$MSG", msgID, "$SUB", subID).Replace(s) }
			args := make([]string, len(st.args))
			for i, a := range st.args {
				args[i] = sub(a)
			}
			stdout, stderr, code := adminRun(t, p.url, args...)
			if st.wantCode == -1 {
				// transactions list: a table (nothing prepared here).
				if code != 0 || !strings.HasPrefix(stdout, "TRANSACTION ") {
					t.Fatalf("postbus admin %q: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, stdout, stderr)
				}
				return
			}
			if code != st.wantCode {
				t.Fatalf("postbus admin %q: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", args, code, st.wantCode, stdout, stderr)
			}
			for _, w := range st.wantOut {
				if !strings.Contains(stdout, sub(w)) {
					t.Errorf("postbus admin %q: stdout lacks %q:\n%s", args, sub(w), stdout)
				}
			}
			for _, w := range st.wantErr {
				if !strings.Contains(stderr, sub(w)) {
					t.Errorf("postbus admin %q: stderr lacks %q:\n%s", args, sub(w), stderr)
				}
			}
			if st.wantCode == 0 && stderr != "" {
				t.Errorf("postbus admin %q: succeeded with stderr %q", args, stderr)
			}
			if st.after != nil {
				st.after(t, stdout)
			}
		})
	}
}

// TestAdminUnavailable: a broker that cannot be reached is exit 6, one that
// refuses the token exit 5.
func TestAdminUnavailable(t *testing.T) {
	port := freePort(t)
	_, stderr, code := adminRun(t, fmt.Sprintf("http://127.0.0.1:%d", port), "topics", "list")
	if code != exitUnavailable {
		t.Errorf("no broker: exit %d, want %d; stderr %q", code, exitUnavailable, stderr)
	}
	secret := "admin-test-secret-admin-test-secret-0123"
	p := start(t, "broker", "--data", t.TempDir(), "--jwt-secret", secret)
	_, stderr, code = adminRun(t, p.url, "topics", "list", "--token", "not-a-token")
	if code != exitAuth || !strings.Contains(stderr, "401 unauthorized") {
		t.Errorf("bad token: exit %d, want %d; stderr %q", code, exitAuth, stderr)
	}
}

// TestAdminHelp: every noun and verb explains itself, each verb with an
// example, on stdout with exit 0.
func TestAdminHelp(t *testing.T) {
	out, _, code := adminRun(t, "http://127.0.0.1:1", "--help")
	if code != 0 || !strings.Contains(out, "Exit codes:") {
		t.Fatalf("admin --help: exit %d:\n%s", code, out)
	}
	nouns := adminNouns()
	for noun, verbs := range nouns {
		if !strings.Contains(out, "  "+noun+" ") {
			t.Errorf("admin --help does not name %s:\n%s", noun, out)
		}
		nounOut, _, code := adminRun(t, "http://127.0.0.1:1", noun, "--help")
		if code != 0 {
			t.Errorf("admin %s --help: exit %d", noun, code)
		}
		for verb, v := range verbs {
			if !strings.Contains(nounOut, "  "+verb+" ") {
				t.Errorf("admin %s --help does not name %s:\n%s", noun, verb, nounOut)
			}
			verbOut, _, code := adminRun(t, "http://127.0.0.1:1", noun, verb, "--help")
			if code != 0 || !strings.Contains(verbOut, "Example:\n  postbus admin "+noun+" "+verb) || !strings.Contains(verbOut, v.summary) {
				t.Errorf("admin %s %s --help: exit %d, no example or summary:\n%s", noun, verb, code, verbOut)
			}
		}
	}
	if !slices.Contains([]int{exitNotFound}, codeForStatus(http.StatusNotFound)) {
		t.Errorf("404 maps to %d", codeForStatus(http.StatusNotFound))
	}
}

// waitUntil waits until cond holds, polling, or fails after limit.
func waitUntil(tb testing.TB, limit time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("waited %s for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAdminRefusesWhatItWouldGuess (attack G2, G6): a negative queue count
// became the broker's default, a zero or negative --timeout no timeout at
// all, and `messages send` ignored a body piped on standard input (its
// help says it reads it) and sent an empty one. Each is now refused as a
// usage error before any request, or read.
func TestAdminRefusesWhatItWouldGuess(t *testing.T) {
	p := start(t, "dev", "--data", t.TempDir())
	for _, args := range [][]string{
		{"topics", "create", "neg", "--queues", "-5"},
		{"topics", "list", "--timeout", "0s"},
		{"topics", "list", "--timeout", "-1s"},
		{"messages", "send", "orders"}, // no body, and standard input is /dev/null
	} {
		if stdout, stderr, code := adminRun(t, p.url, args...); code != exitUsage {
			t.Errorf("postbus admin %q: exit %d, want %d (usage)\nstdout:\n%s\nstderr:\n%s", args, code, exitUsage, stdout, stderr)
		}
	}
	if a := clDo(t, "GET", p.url+"/v1/topics/neg", nil, nil); a.status != 404 {
		t.Errorf("topic neg after a refused create: %s", a)
	}
	cmd := exec.Command(postbusBin, "admin", "messages", "send", "piped", "-o", "json")
	cmd.Env = append(os.Environ(), "POSTBUS_URL="+p.url, "POSTBUS_TOKEN=", "POSTBUS_TLS_CA=")
	cmd.Stdin = strings.NewReader("hi from a pipe\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("send with a piped body: %v: %s", err, out)
	}
	var sent struct {
		MsgID string `json:"msg_id"`
	}
	if err := json.Unmarshal(out, &sent); err != nil || sent.MsgID == "" {
		t.Fatalf("send with a piped body: %s: %v", out, err)
	}
	if a := clDo(t, "GET", p.url+"/v1/messages/"+sent.MsgID+"/body", nil, nil); a.status != 200 || string(a.body) != "hi from a pipe\n" {
		t.Fatalf("the piped body as stored: %s", a)
	}
	// An empty body, piped or from a file, is refused as a usage error
	// before any request, as no body at all is (it was sent, and answered
	// 400, exit 4).
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		args  []string
		stdin io.Reader
	}{
		{"empty pipe", []string{"messages", "send", "empties"}, strings.NewReader("")},
		{"empty file", []string{"messages", "send", "empties", "--body-file", empty}, nil},
		{"empty pipe named", []string{"messages", "send", "empties", "--body-file", "-"}, strings.NewReader("")},
	} {
		cmd := exec.Command(postbusBin, append([]string{"admin"}, tc.args...)...)
		cmd.Env = append(os.Environ(), "POSTBUS_URL="+p.url, "POSTBUS_TOKEN=", "POSTBUS_TLS_CA=")
		cmd.Stdin = tc.stdin
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitUsage {
			t.Errorf("%s: %v, want exit %d: %s", tc.name, err, exitUsage, out)
		}
	}
	if a := clDo(t, "GET", p.url+"/v1/topics/empties", nil, nil); a.status != 404 {
		t.Errorf("topic empties after refused sends (nothing should have been sent): %s", a)
	}
}
