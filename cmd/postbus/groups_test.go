package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
)

// call makes one request to a running postbus and returns its status and body.
func call(tb testing.TB, method, url, token, body string) (int, []byte) {
	tb.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, data
}

// Groups are created on first use in broker mode too (issue 11, fault 14):
// a new group's first pull of an existing topic creates its pull
// subscription from the earliest message, unless --auto-create-groups=false,
// when it stays a 404 problem naming the group. Topic auto-creation is a
// separate switch: a pull of a missing topic is still 404 in broker mode.
func TestFirstPullCreatesGroup(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantStatus int
		wantCode   string
	}{
		{"broker", []string{"broker"}, 200, ""},
		{"broker auto-create-groups", []string{"broker", "--auto-create-groups"}, 200, ""},
		{"broker auto-create-groups=false", []string{"broker", "--auto-create-groups=false"}, 404, "subscription_not_found"},
		{"dev", []string{"dev"}, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := start(t, append(tt.args, "--data", t.TempDir())...)
			if st, data := call(t, "PUT", p.url+"/v1/topics/orders", "", `{"queues":2}`); st != 201 {
				t.Fatalf("create topic: %d %s", st, data)
			}
			if st, data := call(t, "POST", p.url+"/v1/topics/orders/messages", "", "hello"); st != 201 {
				t.Fatalf("publish: %d %s", st, data)
			}
			st, data := call(t, "POST", p.url+"/v1/groups/workers/topics/orders/pull?max=8", "", "")
			if st != tt.wantStatus {
				t.Fatalf("first pull: %d %s, want %d", st, data, tt.wantStatus)
			}
			if tt.wantCode != "" {
				var prob struct{ Code, Detail string }
				if json.Unmarshal(data, &prob) != nil || prob.Code != tt.wantCode || !strings.Contains(prob.Detail, `"workers"`) {
					t.Fatalf("first pull: %s, want code %s naming the group", data, tt.wantCode)
				}
				// A subscription made beforehand lets the group pull.
				if st, data := call(t, "POST", p.url+"/v1/subscriptions", "", `{"group":"workers","topic":"orders","start_from":"earliest"}`); st != 201 {
					t.Fatalf("create subscription: %d %s", st, data)
				}
				if st, data = call(t, "POST", p.url+"/v1/groups/workers/topics/orders/pull?max=8", "", ""); st != 200 {
					t.Fatalf("pull after subscribing: %d %s", st, data)
				}
			}
			var got struct {
				Messages []struct{ Body string } `json:"messages"`
			}
			if err := json.Unmarshal(data, &got); err != nil || len(got.Messages) != 1 || got.Messages[0].Body != "hello" {
				t.Fatalf("pull: %s, want the one message published before", data)
			}
			if tt.args[0] == "broker" {
				st, data := call(t, "POST", p.url+"/v1/groups/workers/topics/missing/pull", "", "")
				if st != 404 || !strings.Contains(string(data), "topic_not_found") {
					t.Fatalf("pull of a missing topic: %d %s, want 404 topic_not_found", st, data)
				}
			}
		})
	}
}

// --auto-create-groups is documented in --help.
func TestAutoCreateGroupsInHelp(t *testing.T) {
	for _, mode := range []string{"broker", "dev"} {
		out, _ := exec.Command(postbusBin, mode, "--help").CombinedOutput()
		if !strings.Contains(string(out), "-auto-create-groups") || !strings.Contains(string(out), "first pull") {
			t.Errorf("postbus %s --help does not describe --auto-create-groups:\n%s", mode, out)
		}
	}
}

// `postbus token` mints subscribe:<topic-glob>, and the broker honours it:
// a worker token with subscribe on the topic and consume on its group pulls
// (a first pull creating the group), one with consume alone is refused. A
// scope postbus does not know is a usage error, not a token that can do
// nothing.
func TestTokenMintsSubscribe(t *testing.T) {
	t.Setenv("POSTBUS_JWT_SECRET", strings.Repeat("s", 32))
	p := start(t, "broker", "--data", t.TempDir())
	mint := func(scope string) string {
		out, err := exec.Command(postbusBin, "token", "--scope", scope, "--ttl", "5m").Output()
		if err != nil {
			t.Fatalf("postbus token --scope %q: %v", scope, err)
		}
		return strings.TrimSpace(string(out))
	}
	admin := mint("admin")
	if st, data := call(t, "PUT", p.url+"/v1/topics/orders", admin, `{"queues":1}`); st != 201 {
		t.Fatalf("create topic: %d %s", st, data)
	}
	if st, data := call(t, "POST", p.url+"/v1/topics/orders/messages", admin, "hello"); st != 201 {
		t.Fatalf("publish: %d %s", st, data)
	}
	if st, data := call(t, "POST", p.url+"/v1/groups/workers/topics/orders/pull", mint("consume:workers"), ""); st != 403 {
		t.Fatalf("pull with consume alone: %d %s", st, data)
	}
	st, data := call(t, "POST", p.url+"/v1/groups/workers/topics/orders/pull", mint("subscribe:orders consume:workers"), "")
	if st != 200 || !strings.Contains(string(data), "hello") {
		t.Fatalf("pull with subscribe and consume: %d %s", st, data)
	}
	cmd := exec.Command(postbusBin, "token", "--scope", "subscribe:orders consme:workers", "--ttl", "5m")
	if out, _ := cmd.CombinedOutput(); cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), `"consme:workers" is not a scope`) {
		t.Fatalf("token with a misspelt scope: exit %d %s", cmd.ProcessState.ExitCode(), out)
	}
}
