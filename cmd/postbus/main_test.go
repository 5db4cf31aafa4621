package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// postbusBin is the binary under test, built once by TestMain.
var postbusBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "postbus-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	postbusBin = filepath.Join(dir, "postbus")
	build := exec.Command("go", "build", "-o", postbusBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build postbus:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running postbus process.
type proc struct {
	cmd  *exec.Cmd
	url  string
	logs *bytes.Buffer
	mu   *sync.Mutex
	done chan struct{}
}

// start runs postbus with args and waits for it to listen and be ready.
func start(tb testing.TB, args ...string) *proc {
	tb.Helper()
	p, err := launch(tb, true, args...)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// launchUnready is start without waiting for /readyz: for a process that
// is expected not to become ready.
func launchUnready(tb testing.TB, args ...string) *proc {
	tb.Helper()
	p, err := spawn(tb, true, false, args...)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// launch is start, with the failure to start returned rather than fatal
// (a restart on its old address may find it taken for a moment); dump
// says whether a failed test logs the process's output (the chaos test
// writes it to files instead). The process is killed when tb ends.
func launch(tb testing.TB, dump bool, args ...string) (*proc, error) {
	return spawn(tb, dump, true, args...)
}

// spawn starts the binary with args and waits until it listens, and,
// with waitForReady, until /readyz answers 200.
func spawn(tb testing.TB, dump, waitForReady bool, args ...string) (*proc, error) {
	if !slices.Contains(args, "--addr") { // a restart may take its old address
		args = append(args, "--addr", "127.0.0.1:0")
	}
	cmd := exec.Command(postbusBin, append(args, "--log-format", "json")...)
	cmd.Env = os.Environ()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, logs: new(bytes.Buffer), mu: new(sync.Mutex), done: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			p.mu.Lock()
			p.logs.Write(line)
			p.logs.WriteByte('\n')
			p.mu.Unlock()
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "postbus listening" {
				addr <- rec.Addr
			}
		}
		cmd.Wait()
	}()
	tb.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if dump && tb.Failed() {
			tb.Logf("postbus %s logs:\n%s", strings.Join(args, " "), p.Logs())
		}
	})
	select {
	case a := <-addr:
		p.url = "http://" + a
	case <-p.done:
		return nil, fmt.Errorf("postbus %s exited before listening:\n%s", strings.Join(args, " "), p.Logs())
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		return nil, fmt.Errorf("postbus %s did not listen within 30s:\n%s", strings.Join(args, " "), p.Logs())
	}
	if waitForReady && !ready(p.url, 30*time.Second) {
		cmd.Process.Kill()
		return nil, fmt.Errorf("%s/readyz did not answer 200 within 30s", p.url)
	}
	return p, nil
}

func (p *proc) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

func waitReady(tb testing.TB, url string) {
	tb.Helper()
	if !ready(url, 30*time.Second) {
		tb.Fatalf("%s/readyz did not answer 200 within 30s", url)
	}
}

// ready polls url's /readyz until it answers 200 or limit passes.
func ready(url string, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

type acked struct {
	id   string
	body []byte
}

// TestSIGKILLDuringPublishStorm: every message that got a 201 under
// --flush sync is there after a SIGKILL and restart, byte for byte.
func TestSIGKILLDuringPublishStorm(t *testing.T) {
	data := t.TempDir()
	args := []string{"broker", "--data", data, "--auto-create-topics", "--flush", "sync", "--segment-size", "8MiB", "--max-message-bytes", "256KiB"}
	p := start(t, args...)

	var mu sync.Mutex
	var got []acked
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := []byte(fmt.Sprintf("worker %d message %d %s", w, i, strings.Repeat("x", (w*131+i*17)%3000)))
				if w%4 == 0 { // some workers publish batches
					batch := fmt.Sprintf(`[{"body":%q},{"body_base64":"AAEC/w=="}]`, body)
					resp, err := client.Post(p.url+"/v1/topics/storm/messages/batch", "application/json", strings.NewReader(batch))
					if err != nil {
						return
					}
					var res []struct {
						MsgID string `json:"msg_id"`
					}
					err = json.NewDecoder(resp.Body).Decode(&res)
					resp.Body.Close()
					if err != nil || resp.StatusCode != http.StatusCreated || len(res) != 2 {
						return
					}
					mu.Lock()
					got = append(got, acked{res[0].MsgID, body}, acked{res[1].MsgID, []byte{0, 1, 2, 255}})
					mu.Unlock()
					continue
				}
				resp, err := client.Post(p.url+"/v1/topics/storm/messages", "text/plain", bytes.NewReader(body))
				if err != nil {
					return
				}
				var res struct {
					MsgID string `json:"msg_id"`
				}
				err = json.NewDecoder(resp.Body).Decode(&res)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusCreated {
					return
				}
				mu.Lock()
				got = append(got, acked{res.MsgID, body})
				mu.Unlock()
			}
		}()
	}
	// Kill once enough has been acknowledged to span several segments.
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 3000 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	close(stop)
	wg.Wait()
	mu.Lock()
	acks := append([]acked(nil), got...)
	mu.Unlock()
	if len(acks) < 100 {
		t.Fatalf("only %d publishes were acknowledged before the kill", len(acks))
	}
	t.Logf("%d messages acknowledged before SIGKILL", len(acks))

	p2 := start(t, args...)
	for i, a := range acks {
		resp, err := http.Get(p2.url + "/v1/messages/" + a.id + "/body")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("acknowledged message %d (%s) after restart: status %d: %s", i, a.id, resp.StatusCode, body)
		}
		if !bytes.Equal(body, a.body) {
			t.Fatalf("acknowledged message %d (%s) differs after restart:\n got %q\nwant %q", i, a.id, body, a.body)
		}
	}
	// The store takes new publishes after recovery.
	resp, err := http.Post(p2.url+"/v1/topics/storm/messages", "text/plain", strings.NewReader("after"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("publish after recovery: status %d", resp.StatusCode)
	}
}

func getJSON(tb testing.TB, url string, v any) {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		tb.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		tb.Fatal(err)
	}
}

// TestSIGTERMShutsDownCleanly: SIGTERM exits 0 after a checkpoint, so the
// next start has nothing to rebuild.
func TestSIGTERMShutsDownCleanly(t *testing.T) {
	data := t.TempDir()
	p := start(t, "broker", "--data", data, "--auto-create-topics")
	resp, err := http.Post(p.url+"/v1/topics/t/messages", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("postbus did not exit within 20s of SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM:\n%s", code, p.Logs())
	}
	if !strings.Contains(p.Logs(), `"msg":"stopped"`) {
		t.Fatalf("no clean stop in the logs:\n%s", p.Logs())
	}
}

func TestCommandLine(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      []string
		wantCode int
		wantOut  []string
	}{
		{"no command", nil, nil, 2, []string{"Commands:", "dev", "broker", "bench"}},
		{"help", []string{"--help"}, nil, 0, []string{"Quick start"}},
		{"version", []string{"version"}, nil, 0, []string{"postbus "}},
		{"unknown", []string{"frobnicate"}, nil, 2, []string{`unknown command "frobnicate"`}},
		{"broker help", []string{"broker", "--help"}, nil, 0, []string{"-flush", "POSTBUS_FLUSH_INTERVAL", "-retention"}},
		{"dev help", []string{"dev", "--help"}, nil, 0, []string{"127.0.0.1:8080", "./data"}},
		{"bad flag", []string{"broker", "--flush", "sometimes"}, nil, 2, []string{"want sync or async"}},
		{"bad env", []string{"broker"}, []string{"POSTBUS_FLUSH=never"}, 2, []string{"POSTBUS_FLUSH"}},
		{"bench help", []string{"bench"}, nil, 2, []string{"publish"}},
		{"backup help", []string{"backup", "--help"}, nil, 0, []string{"--to", "consistent snapshot", "while a broker may be running"}},
		{"backup without --to", []string{"backup", "--data", "."}, nil, 2, []string{"--to is required"}},
		{"broker help names --rebuild-metadata", []string{"broker", "--help"}, nil, 0, []string{"-rebuild-metadata"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, postbusBin, tt.args...)
			cmd.Env = append(os.Environ(), tt.env...)
			out, _ := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != tt.wantCode {
				t.Errorf("exit code %d, want %d; output:\n%s", code, tt.wantCode, out)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestSizeFlags: a --segment-size below the smallest, or a
// --max-message-bytes over the batch limit, is refused at start with a
// message naming the flag and what would work, before anything is created;
// small segments start, whatever the message limit (a batch larger than a
// segment gets a segment of its own). 1 MiB segments with 100 KiB messages
// used to be refused (and before that started and answered 503 to
// batches); a segment of the max message plus 64 KiB exited with the
// commitlog's internal message.
func TestSizeFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantOut []string
	}{
		{"one byte short of 1MiB", []string{"--segment-size", "1048575"},
			[]string{"--segment-size 1048575 is too small", "at least 1MiB"}},
		{"64KiB segments", []string{"--segment-size", "64KiB", "--max-message-bytes", "100KiB"},
			[]string{"--segment-size 64KiB is too small", "at least 1MiB"}},
		{"segment over 1GiB", []string{"--segment-size", "64GiB"},
			[]string{"--segment-size 64GiB is too large", "at most 1GiB"}},
		{"max message over the batch limit", []string{"--max-message-bytes", "4194305"},
			[]string{"--max-message-bytes 4194305", "4MiB"}},
		{"body memory below the largest body", []string{"--max-body-memory", "4MiB"},
			[]string{"--max-body-memory 4MiB", "at least"}},
		{"body share below the largest body", []string{"--max-body-memory-per-client", "4MiB"},
			[]string{"--max-body-memory-per-client 4MiB", "the largest request body"}},
		{"body share over the bound", []string{"--max-body-memory", "64MiB", "--max-body-memory-per-client", "65MiB"},
			[]string{"--max-body-memory-per-client 65MiB", "to --max-body-memory (64MiB)"}},
		{"no body grace", []string{"--body-grace", "0s"},
			[]string{"--body-grace 0s"}},
		{"client polls over the broker's", []string{"--max-held-polls", "10", "--max-held-polls-per-client", "11"},
			[]string{"--max-held-polls 10, --max-held-polls-per-client 11"}},
		{"negative burst", []string{"--rate-limit", "5", "--rate-burst", "-1"},
			[]string{"--rate-burst -1"}},
		{"burst without a rate", []string{"--rate-burst", "10"},
			[]string{"--rate-burst 10 needs --rate-limit"}},
		{"negative rate", []string{"--rate-limit", "-1"},
			[]string{"--rate-limit -1"}},
		// A name that transaction ids cannot carry, or name servers take
		// (attack F9: started, took prepares, could commit none).
		{"broker name with a tilde", []string{"--broker-name", "x~y"},
			[]string{`--broker-name "x~y"`, "A-Z a-z 0-9"}},
		{"broker name with a slash", []string{"--broker-name", "a/b"},
			[]string{`--broker-name "a/b"`}},
		{"broker name too long", []string{"--broker-name", strings.Repeat("n", 65)},
			[]string{"--broker-name", "1-64 characters"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, postbusBin, append([]string{"broker", "--data", data, "--addr", "127.0.0.1:0"}, tt.args...)...)
			out, _ := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != 1 {
				t.Errorf("exit code %d, want 1; output:\n%s", code, out)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(string(out), "commitlog") {
				t.Errorf("output speaks of the commitlog's internals:\n%s", out)
			}
			if _, err := os.Stat(data); !os.IsNotExist(err) {
				t.Errorf("the data directory was created (%v)", err)
			}
		})
	}
	// Small segments start, with the default message limit and a small one,
	// and so does a segment of the max message plus 64 KiB.
	for _, args := range [][]string{
		{"--segment-size", "1MiB"},
		{"--segment-size", "1MiB", "--max-message-bytes", "100KiB"},
		{"--segment-size", "4160KiB", "--max-message-bytes", "4MiB"},
	} {
		start(t, append([]string{"broker", "--data", t.TempDir()}, args...)...)
	}
}

func TestEnvSetsFlags(t *testing.T) {
	data := t.TempDir()
	t.Setenv("POSTBUS_DATA", data)
	t.Setenv("POSTBUS_AUTO_CREATE_TOPICS", "true")
	p := start(t, "broker")
	resp, err := http.Post(p.url+"/v1/topics/envtopic/messages", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("publish with auto-create from the environment: %d", resp.StatusCode)
	}
	if _, err := os.Stat(filepath.Join(data, "meta.db")); err != nil {
		t.Fatalf("POSTBUS_DATA was not used: %v", err)
	}
}

// TestBrokerRefusesOpenNonLoopback: a broker on a non-loopback address
// will not serve without auth unless told to.
func TestBrokerRefusesOpenNonLoopback(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, postbusBin, "broker", "--data", t.TempDir(), "--addr", "0.0.0.0:0")
	out, _ := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "without auth") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	cmd = exec.CommandContext(ctx, postbusBin, "broker", "--data", t.TempDir(), "--addr", "0.0.0.0:0", "--jwt-secret", "short")
	out, _ = cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "at least 32") {
		t.Fatalf("short secret: exit %d:\n%s", code, out)
	}
}

// TestTokenMintAndUse: a token minted by `postbus token` with the broker's
// secret publishes within its scope and nowhere else.
func TestTokenMintAndUse(t *testing.T) {
	secret := strings.Repeat("s", 32)
	t.Setenv("POSTBUS_JWT_SECRET", secret)
	p := start(t, "broker", "--data", t.TempDir(), "--auto-create-topics")
	mint := func(args ...string) string {
		out, err := exec.Command(postbusBin, append([]string{"token"}, args...)...).Output()
		if err != nil {
			t.Fatalf("postbus token %q: %v", args, err)
		}
		return strings.TrimSpace(string(out))
	}
	tok := mint("--scope", "publish:orders*", "--ttl", "5m", "--sub", "checkout")
	post := func(topic, token string) int {
		req, _ := http.NewRequest("POST", p.url+"/v1/topics/"+topic+"/messages", strings.NewReader("x"))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := post("orders.eu", tok); got != http.StatusCreated {
		t.Fatalf("publish in scope: %d", got)
	}
	if got := post("payments", tok); got != http.StatusForbidden {
		t.Fatalf("publish out of scope: %d", got)
	}
	if got := post("orders", ""); got != http.StatusUnauthorized {
		t.Fatalf("publish without a token: %d", got)
	}
	if strings.Contains(p.Logs(), tok) || strings.Contains(p.Logs(), secret) {
		t.Fatal("the broker logged the token or the secret")
	}
	cmd := exec.Command(postbusBin, "token", "--ttl", "5m")
	if out, _ := cmd.CombinedOutput(); cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "--scope is required") {
		t.Fatalf("token without a scope: %s", out)
	}
	for _, ttl := range []string{"59s", "0s", "-1h"} {
		cmd := exec.Command(postbusBin, "token", "--scope", "admin", "--ttl", ttl, "--jwt-secret", secret)
		if out, _ := cmd.CombinedOutput(); cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "--ttl") {
			t.Fatalf("token with --ttl %s: exit %d: %s", ttl, cmd.ProcessState.ExitCode(), out)
		}
	}
	if out, err := exec.Command(postbusBin, "token", "--scope", "admin", "--ttl", "1m", "--jwt-secret", secret).Output(); err != nil || strings.Count(string(out), ".") != 2 {
		t.Fatalf("token with --ttl 1m: %v: %s", err, out)
	}
}

// TestSIGKILLDuringPush: with deliveries and retries in flight, SIGKILL
// and restart; every message is then delivered at least once, and every
// message that keeps failing ends in the dead-letter queue, none skipping it.
func TestSIGKILLDuringPush(t *testing.T) {
	data := t.TempDir()
	args := []string{"broker", "--data", data, "--auto-create-topics", "--allow-private-webhooks", "--offset-interval", "200ms"}
	var mu sync.Mutex
	delivered := map[string]int{} // msg id -> 2xx answers
	attempts := map[string]int{}
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		id := r.Header.Get("Postbus-Message-Id")
		mu.Lock()
		defer mu.Unlock()
		attempts[id]++
		switch {
		case strings.HasPrefix(string(body), "poison"):
			w.WriteHeader(500)
		case attempts[id] == 1 && len(attempts)%3 == 0: // a third fail once: retries in flight
			w.WriteHeader(503)
		default:
			delivered[id]++
			w.WriteHeader(200)
		}
	}))
	defer sink.Close()

	p := start(t, args...)
	resp, err := http.Post(p.url+"/v1/subscriptions", "application/json", strings.NewReader(fmt.Sprintf(
		`{"group":"g","topic":"jobs","url":%q,"max_retries":2,"retry_delays":["300ms"],"start_from":"earliest"}`, sink.URL)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("create subscription: %d", resp.StatusCode)
	}
	var ids, poison []string
	for i := 0; i < 300; i++ {
		body := fmt.Sprintf("job %d", i)
		if i%50 == 7 {
			body = fmt.Sprintf("poison %d", i)
		}
		resp, err := http.Post(p.url+"/v1/topics/jobs/messages", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var res struct {
			MsgID string `json:"msg_id"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
			t.Fatalf("decode: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != 201 {
			t.Fatalf("publish: %d", resp.StatusCode)
		}
		if strings.HasPrefix(body, "poison") {
			poison = append(poison, res.MsgID)
		} else {
			ids = append(ids, res.MsgID)
		}
	}
	// Kill while deliveries and retries are under way.
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(delivered)
		mu.Unlock()
		if n >= 100 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	p2 := start(t, args...)

	waitFor := func(what string, cond func() bool) {
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("after the restart, timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("every message delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range ids {
			if delivered[id] == 0 {
				return false
			}
		}
		return true
	})
	// Every poison message is in the dead-letter queue, after all its
	// attempts: none skipped it.
	var dlq struct {
		Messages []struct {
			MsgID     string `json:"msg_id"`
			Attempts  int    `json:"attempts"`
			LastError string `json:"last_error"`
		} `json:"messages"`
	}
	dead := map[string]bool{}
	waitFor("every poison message dead-lettered", func() bool {
		getJSON(t, p2.url+"/v1/groups/g/dlq?limit=256", &dlq)
		clear(dead)
		for _, m := range dlq.Messages {
			dead[m.MsgID] = true
		}
		for _, id := range poison {
			if !dead[id] {
				return false
			}
		}
		return true
	})
	for _, m := range dlq.Messages {
		if m.Attempts != 3 || !strings.Contains(m.LastError, "500") {
			t.Errorf("dead letter %s: %d attempts, last error %q; want 3 attempts ending in a 500", m.MsgID, m.Attempts, m.LastError)
		}
	}
	mu.Lock()
	dups := 0
	for _, id := range ids {
		dups += delivered[id] - 1
	}
	mu.Unlock()
	t.Logf("%d messages delivered, %d duplicate deliveries across the crash, %d dead letters", len(ids), dups, len(dlq.Messages))
}

// TestSIGKILLDuringPull: after SIGKILL and restart, a message whose ack
// was answered 200 never comes back, and every unacked one does.
func TestSIGKILLDuringPull(t *testing.T) {
	data := t.TempDir()
	args := []string{"broker", "--data", data, "--auto-create-topics", "--offset-interval", "100ms"}
	p := start(t, args...)
	want := map[string]bool{}
	for i := 0; i < 200; i++ {
		resp, err := http.Post(p.url+"/v1/topics/work/messages", "text/plain", strings.NewReader(fmt.Sprint("job ", i)))
		if err != nil {
			t.Fatal(err)
		}
		var res struct {
			MsgID string `json:"msg_id"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
			t.Fatalf("decode: %v", err)
		}
		resp.Body.Close()
		want[res.MsgID] = true
	}
	type pulled struct {
		Messages []struct {
			MsgID   string `json:"msg_id"`
			Receipt string `json:"receipt"`
			Attempt int    `json:"attempt"`
		} `json:"messages"`
	}
	pull := func(url string) pulled {
		resp, err := http.Post(url+"/v1/groups/workers/topics/work/pull?max=16&wait=1s&visibility=2s", "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got pulled
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 {
			t.Fatalf("pull: %d %v", resp.StatusCode, err)
		}
		return got
	}
	ack := func(url string, receipts []string) int {
		body, _ := json.Marshal(map[string][]string{"receipts": receipts})
		resp, err := http.Post(url+"/v1/groups/workers/ack", "application/json", bytes.NewReader(body))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	acked := map[string]bool{}
	outstanding := map[string]bool{}
	for len(acked) < 80 {
		got := pull(p.url)
		var rs []string
		for i, m := range got.Messages {
			if i%2 == 0 { // ack half, leave half out
				rs = append(rs, m.Receipt)
			} else {
				outstanding[m.MsgID] = true
			}
		}
		if ack(p.url, rs) == 200 {
			for i, m := range got.Messages {
				if i%2 == 0 {
					acked[m.MsgID] = true
				}
			}
		}
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done

	p2 := start(t, args...)
	seen := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for len(seen) < len(want)-len(acked) && time.Now().Before(deadline) {
		got := pull(p2.url)
		var rs []string
		for _, m := range got.Messages {
			if acked[m.MsgID] {
				t.Fatalf("message %s came back after its ack was answered 200", m.MsgID)
			}
			seen[m.MsgID] = true
			rs = append(rs, m.Receipt)
		}
		if len(rs) > 0 && ack(p2.url, rs) != 200 {
			t.Fatal("ack after the restart failed")
		}
	}
	for id := range want {
		if !acked[id] && !seen[id] {
			t.Fatalf("unacked message %s never came back after the restart", id)
		}
	}
	t.Logf("%d acked before SIGKILL, %d left out unacked, %d handed out after the restart", len(acked), len(outstanding), len(seen))
}

// TestClusterRegistration runs a name server and two brokers as real
// processes: both brokers register their topics, routes list them, a
// SIGKILLed broker drops out of routes within the expiry, and a cleanly
// stopped one unregisters at once.
func TestClusterRegistration(t *testing.T) {
	ns := start(t, "namesrv", "--broker-expiry", "1s", "--scan-interval", "50ms", "--warm-up", "0", "--topic-memory", "2s")
	brokerA := start(t, "broker", "--data", t.TempDir(), "--auto-create-topics", "--namesrv", ns.url,
		"--broker-name", "broker-a", "--heartbeat-interval", "200ms")
	brokerB := start(t, "broker", "--data", t.TempDir(), "--auto-create-topics", "--namesrv", ns.url,
		"--broker-name", "broker-b", "--heartbeat-interval", "200ms")
	// Placed on both through one of them, once both are registered; each
	// registers the topic with its own heartbeat.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var c struct {
			Brokers []struct{} `json:"brokers"`
		}
		getJSON(t, ns.url+"/v1/cluster", &c)
		if len(c.Brokers) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the brokers did not register within 20s")
		}
	}
	req, _ := http.NewRequest(http.MethodPut, brokerA.url+"/v1/topics/orders", strings.NewReader(`{"brokers":"all"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT orders on all brokers: %d", resp.StatusCode)
	}
	type route struct {
		Brokers []struct {
			Name   string `json:"name"`
			Addr   string `json:"addr"`
			Queues int    `json:"queues"`
		} `json:"brokers"`
	}
	routeOf := func(topic string) (route, int) {
		resp, err := http.Get(ns.url + "/v1/routes/" + topic)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r route
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			t.Fatalf("decode: %v", err)
		}
		return r, resp.StatusCode
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// A new topic is registered at once (not only at the next heartbeat).
	waitFor("both brokers in the route of orders", func() bool {
		r, code := routeOf("orders")
		return code == 200 && len(r.Brokers) == 2 && r.Brokers[0].Name == "broker-a" && r.Brokers[1].Name == "broker-b" &&
			r.Brokers[0].Addr == brokerA.url && r.Brokers[0].Queues == 4
	})
	var cluster struct {
		Brokers []struct {
			Name string `json:"name"`
		} `json:"brokers"`
	}
	getJSON(t, ns.url+"/v1/cluster", &cluster)
	if len(cluster.Brokers) != 2 {
		t.Fatalf("cluster lists %d brokers, want 2", len(cluster.Brokers))
	}
	if _, code := routeOf("nothing-here"); code != 404 {
		t.Fatalf("route of an unknown topic: %d", code)
	}

	// SIGKILL: dropped within the expiry.
	brokerB.cmd.Process.Signal(syscall.SIGKILL)
	<-brokerB.done
	killed := time.Now()
	waitFor("the killed broker dropped from routes", func() bool {
		r, _ := routeOf("orders")
		return len(r.Brokers) == 1 && r.Brokers[0].Name == "broker-a"
	})
	if took := time.Since(killed); took > 10*time.Second {
		t.Fatalf("dropped %s after the kill; the expiry is 1s", took)
	}

	// SIGTERM: unregistered at once, before the expiry could act. For
	// --topic-memory the route says the topic's brokers are down (503), not
	// that nobody holds it (404), so that no broker takes the topic's place.
	brokerA.cmd.Process.Signal(syscall.SIGTERM)
	<-brokerA.done
	if _, code := routeOf("orders"); code != 503 {
		t.Fatalf("after broker-a stopped cleanly, route answers %d, want 503", code)
	}
	waitFor("the route to say nobody holds orders, once --topic-memory has passed", func() bool {
		_, code := routeOf("orders")
		return code == 404
	})
}

// TestBrokerJoinsDevBus: `postbus dev` embeds a name server, so a broker
// started with --namesrv pointing at it joins the dev bus: both are in the
// dev's cluster, a topic can be placed on both, and a message published
// through the dev broker to a topic only the second holds lands there.
func TestBrokerJoinsDevBus(t *testing.T) {
	dev := start(t, "dev", "--data", t.TempDir(), "--heartbeat-interval", "200ms")
	joiner := start(t, "broker", "--data", t.TempDir(), "--namesrv", dev.url, "--broker-name", "joiner",
		"--heartbeat-interval", "200ms")
	deadline := time.Now().Add(20 * time.Second)
	for {
		var c struct {
			Brokers []struct {
				Name string `json:"name"`
				Addr string `json:"addr"`
			} `json:"brokers"`
		}
		getJSON(t, dev.url+"/v1/cluster", &c)
		if len(c.Brokers) == 2 && slices.ContainsFunc(c.Brokers, func(b struct {
			Name string `json:"name"`
			Addr string `json:"addr"`
		}) bool {
			return b.Name == "joiner" && b.Addr == joiner.url
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dev bus's cluster after 20s: %+v", c)
		}
		time.Sleep(20 * time.Millisecond)
	}
	req, _ := http.NewRequest(http.MethodPut, dev.url+"/v1/topics/joined", strings.NewReader(`{"brokers":["joiner"]}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var placed struct {
		Brokers []string `json:"brokers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&placed); err != nil {
		t.Fatalf("decode: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || !slices.Equal(placed.Brokers, []string{"joiner"}) {
		t.Fatalf("PUT joined on joiner through dev: %d, placed on %v", resp.StatusCode, placed.Brokers)
	}
	// The joiner registered the topic before answering, so the very first
	// publish through dev is forwarded to it; dev, which creates topics on
	// first publish, must not make one of its own.
	resp, err = http.Post(dev.url+"/v1/topics/joined/messages", "text/plain", strings.NewReader("hi"))
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Broker string `json:"broker"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		t.Fatalf("decode: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || res.Broker != "joiner" {
		t.Fatalf("publish through dev: %d, stored on %q, want 201 on the topic's only holder, joiner", resp.StatusCode, res.Broker)
	}
}
