package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestExamples runs every program in examples/ against a real broker: the
// producer publishes, the webhook receiver gets each message through a push
// subscription and checks its signature by hand (and refuses a forged one),
// and the pull worker receives and acks each message. python3 and node
// must be on PATH: CI has both, and a test that skipped them would let the
// examples rot unseen.
func TestExamples(t *testing.T) {
	p := start(t, "dev", "--data", t.TempDir())
	examples, err := filepath.Abs(filepath.Join("..", "..", "examples"))
	if err != nil {
		t.Fatal(err)
	}
	for _, lang := range []struct{ name, interp, ext string }{
		{"python", "python3", ".py"},
		{"node", "node", ".js"},
	} {
		t.Run(lang.name, func(t *testing.T) {
			interp, err := exec.LookPath(lang.interp)
			if err != nil {
				t.Fatalf("%s is not on PATH (%v): the %s examples cannot be run; install it (CI has it)", lang.interp, err, lang.name)
			}
			script := func(name string) string { return filepath.Join(examples, lang.name, name+lang.ext) }
			env := append(os.Environ(), "POSTBUS_URL="+p.url)
			topic, hooks, workers := "examples-"+lang.name, "hooks-"+lang.name, "workers-"+lang.name
			putJSON(t, p.url+"/v1/topics/"+topic, `{"queues":2}`, http.StatusCreated, http.StatusOK)

			port := freePort(t)
			var sub struct{ Secret string }
			postJSON(t, p.url+"/v1/subscriptions", fmt.Sprintf(`{"group":%q,"topic":%q,"url":"http://127.0.0.1:%d/hook"}`, hooks, topic, port), http.StatusCreated, &sub)
			if !strings.HasPrefix(sub.Secret, "whsec_") {
				t.Fatalf("subscription secret %q", sub.Secret)
			}

			const n = 3
			receiver := startScript(t, append(env, "WEBHOOK_SECRET="+sub.Secret), interp, script("webhook_receiver"), "--port", fmt.Sprint(port), "--count", fmt.Sprint(n))
			receiver.waitLine(t, "listening on ")

			// A delivery signed with another secret is refused.
			req, err := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d/hook", port), strings.NewReader(`{"forged":true}`))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("webhook-id", "forged-1")
			req.Header.Set("webhook-timestamp", fmt.Sprint(time.Now().Unix()))
			req.Header.Set("webhook-signature", "v1,bm90IHRoZSByaWdodCBzaWduYXR1cmUgYXQgYWxsIQ==")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("a forged delivery got %d from the %s receiver, want 401", resp.StatusCode, lang.name)
			}

			out := runScript(t, env, interp, script("producer"), topic, fmt.Sprint(n))
			var published []string
			for _, line := range out {
				var ack struct {
					MsgID  string `json:"msg_id"`
					Status string `json:"status"`
				}
				if err := json.Unmarshal([]byte(line), &ack); err != nil {
					t.Fatalf("producer printed %q: %v", line, err)
				}
				if ack.Status != "SEND_OK" || ack.MsgID == "" {
					t.Fatalf("producer printed %q", line)
				}
				published = append(published, ack.MsgID)
			}
			if len(published) != n {
				t.Fatalf("producer published %d messages, want %d: %q", len(published), n, out)
			}

			if got := msgIDs(t, receiver.wait(t, 60*time.Second)); !sameSet(got, published) {
				t.Errorf("the %s receiver processed %q, want %q", lang.name, got, published)
			}
			if got := msgIDs(t, runScript(t, env, interp, script("pull_worker"), workers, topic, "--count", fmt.Sprint(n))); !sameSet(got, published) {
				t.Errorf("the %s pull worker processed %q, want %q", lang.name, got, published)
			}
			// The worker acked what it processed.
			var g struct {
				Queues []struct {
					InFlight int   `json:"in_flight"`
					Lag      int64 `json:"lag"`
				} `json:"queues"`
			}
			getJSON(t, p.url+"/v1/groups/"+workers, &g)
			for i, q := range g.Queues {
				if q.InFlight != 0 || q.Lag != 0 {
					t.Errorf("queue %d of %s after the worker: in flight %d, lag %d; want 0 and 0", i, workers, q.InFlight, q.Lag)
				}
			}
		})
	}
}

// script is an example program running in the background.
type script struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *bytes.Buffer
	done   chan struct{}
	seen   []string
}

func startScript(tb testing.TB, env []string, name string, args ...string) *script {
	tb.Helper()
	s := &script{cmd: exec.Command(name, args...), lines: make(chan string, 100), stderr: new(bytes.Buffer), done: make(chan struct{})}
	s.cmd.Env = env
	s.cmd.Stderr = s.stderr
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		tb.Fatalf("start %s %q: %v", name, args, err)
	}
	go func() {
		defer close(s.done)
		defer close(s.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		_ = s.cmd.Wait()
	}()
	tb.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		<-s.done
	})
	return s
}

// waitLine waits for a line of output starting with prefix.
func (s *script) waitLine(tb testing.TB, prefix string) {
	tb.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				<-s.done
				tb.Fatalf("%q exited before printing %q: %s", s.cmd.Args, prefix, s.stderr)
			}
			if strings.HasPrefix(line, prefix) {
				return
			}
			s.seen = append(s.seen, line)
		case <-timeout:
			tb.Fatalf("%q printed no %q within 30s", s.cmd.Args, prefix)
		}
	}
}

// wait returns the program's output lines once it has exited with 0.
func (s *script) wait(tb testing.TB, limit time.Duration) []string {
	tb.Helper()
	timeout := time.After(limit)
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				<-s.done
				if code := s.cmd.ProcessState.ExitCode(); code != 0 {
					tb.Fatalf("%q exited %d: %s", s.cmd.Args, code, s.stderr)
				}
				return s.seen
			}
			s.seen = append(s.seen, line)
		case <-timeout:
			tb.Fatalf("%q did not exit within %s; printed %q; stderr: %s", s.cmd.Args, limit, s.seen, s.stderr)
		}
	}
}

func runScript(tb testing.TB, env []string, name string, args ...string) []string {
	tb.Helper()
	return startScript(tb, env, name, args...).wait(tb, 60*time.Second)
}

func msgIDs(tb testing.TB, lines []string) []string {
	tb.Helper()
	var ids []string
	for _, line := range lines {
		var m struct {
			MsgID string `json:"msg_id"`
		}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			tb.Fatalf("output line %q: %v", line, err)
		}
		ids = append(ids, m.MsgID)
	}
	return ids
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// freePort returns a port nothing listens on at the moment.
func freePort(tb testing.TB) int {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func putJSON(tb testing.TB, url, body string, want ...int) {
	tb.Helper()
	sendJSON(tb, "PUT", url, body, nil, want...)
}

func postJSON(tb testing.TB, url, body string, want int, v any) {
	tb.Helper()
	sendJSON(tb, "POST", url, body, v, want)
}

func sendJSON(tb testing.TB, method, url, body string, v any, want ...int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	if !slices.Contains(want, resp.StatusCode) {
		tb.Fatalf("%s %s: %d %s, want %v", method, url, resp.StatusCode, b, want)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			tb.Fatalf("%s %s: %v in %s", method, url, err, b)
		}
	}
}
