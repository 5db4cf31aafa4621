package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pullClient speaks the pull API of one broker process for the crash
// tests.
type pullClient struct {
	tb     testing.TB
	url    string
	client *http.Client // nil: http.DefaultClient
}

type pulledMsg struct {
	MsgID   string `json:"msg_id"`
	Receipt string `json:"receipt"`
	Attempt int    `json:"attempt"`
	Body    string `json:"body"`
}

func (c pullClient) post(path string, body any, out any) int {
	c.tb.Helper()
	st, err := c.try(path, body, out)
	if err != nil {
		c.tb.Fatalf("POST %s: %v", path, err)
	}
	return st
}

// try is post for callers that expect the broker to go away (a SIGKILL):
// the error instead of a failed test.
func (c pullClient) try(path string, body any, out any) (int, error) {
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	client := c.client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Post(c.url+path, "application/json", rd)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode == 200 {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.StatusCode, err
		}
	}
	return resp.StatusCode, nil
}

func (c pullClient) pull(query string) []pulledMsg {
	c.tb.Helper()
	var got struct{ Messages []pulledMsg }
	if st := c.post("/v1/groups/workers/topics/work/pull?"+query, nil, &got); st != 200 {
		c.tb.Fatalf("pull: %d", st)
	}
	return got.Messages
}

// settle posts receipts to an ack, nack or visibility path and returns
// each receipt's status.
func (c pullClient) settle(path string, receipts []string, extra map[string]string) []string {
	c.tb.Helper()
	body := map[string]any{"receipts": receipts}
	for k, v := range extra {
		body[k] = v
	}
	var got struct {
		Results []struct{ Receipt, Status string }
	}
	if st := c.post("/v1/groups/workers/"+path, body, &got); st != 200 {
		c.tb.Fatalf("%s: %d, want 200", path, st)
	}
	out := make([]string, len(got.Results))
	for i, r := range got.Results {
		if r.Receipt != receipts[i] {
			c.tb.Fatalf("%s: results[%d] names another receipt", path, i)
		}
		out[i] = r.Status
	}
	return out
}

func receiptsOf(ms []pulledMsg) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Receipt
	}
	return out
}

func allAre(statuses []string, want string) bool {
	for _, s := range statuses {
		if s != want {
			return false
		}
	}
	return len(statuses) > 0
}

// TestSIGKILLRetriedAckAndVisibility runs the real binary: an ack retried
// after a SIGKILL (its answer lost, say) is answered acked, not stale; a
// visibility extended before the SIGKILL holds after the restart (the
// messages do not come back at their first, shorter end), and one
// shortened comes back at its new end, not the old one.
func TestSIGKILLRetriedAckAndVisibility(t *testing.T) {
	data := t.TempDir()
	args := []string{"broker", "--data", data, "--auto-create-topics"}
	p := start(t, args...)
	c := pullClient{tb: t, url: p.url}
	for i := range 24 {
		resp, err := http.Post(p.url+"/v1/topics/work/messages", "text/plain", strings.NewReader(fmt.Sprint("job ", i)))
		if err != nil || resp.StatusCode != 201 {
			t.Fatalf("publish: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	var got []pulledMsg
	for len(got) < 16 {
		got = append(got, c.pull(fmt.Sprintf("max=%d&wait=1s&visibility=3s", 16-len(got)))...)
	}
	acked, extended := got[:8], got[8:]
	if st := c.settle("ack", receiptsOf(acked), nil); !allAre(st, "acked") {
		t.Fatalf("ack: %v", st)
	}
	if st := c.settle("visibility", receiptsOf(extended), map[string]string{"visibility": "10m"}); !allAre(st, "extended") {
		t.Fatalf("extend: %v", st)
	}
	var rest []pulledMsg
	for len(rest) < 8 {
		rest = append(rest, c.pull(fmt.Sprintf("max=%d&wait=1s&visibility=10m", 8-len(rest)))...)
	}
	if st := c.settle("visibility", receiptsOf(rest), map[string]string{"visibility": "2s"}); !allAre(st, "extended") {
		t.Fatalf("shorten: %v", st)
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done

	p2 := start(t, args...)
	c = pullClient{tb: t, url: p2.url}
	if st := c.settle("ack", receiptsOf(acked), nil); !allAre(st, "acked") {
		t.Fatalf("the ack retried after the restart: %v, want all acked", st)
	}
	// The shortened come back at their new end; nothing else does, past
	// the first end (3s) of the extended ones too.
	back := map[string]bool{}
	want := map[string]bool{}
	for _, m := range rest {
		want[m.MsgID] = true
	}
	deadline := time.Now().Add(30 * time.Second)
	start := time.Now()
	for (len(back) < len(want) || time.Since(start) < 5*time.Second) && time.Now().Before(deadline) {
		for _, m := range c.pull("max=16&wait=1s&visibility=10m") {
			if !want[m.MsgID] {
				t.Fatalf("%s (%q) came back after the restart; it was acked or extended to 10m", m.MsgID, m.Body)
			}
			if m.Attempt != 2 {
				t.Fatalf("%s came back as attempt %d, want 2", m.MsgID, m.Attempt)
			}
			back[m.MsgID] = true
			if st := c.settle("ack", []string{m.Receipt}, nil); !allAre(st, "acked") {
				t.Fatalf("ack of %s: %v", m.MsgID, st)
			}
		}
	}
	if len(back) != len(want) {
		t.Fatalf("%d of the %d shortened messages came back after the restart", len(back), len(want))
	}
	// The extended receipts still hold their messages after the restart.
	if st := c.settle("ack", receiptsOf(extended), nil); !allAre(st, "acked") {
		t.Fatalf("ack of the extended after the restart: %v, want all acked", st)
	}
	// The old receipts of the shortened ones are stale, the others acked.
	if st := c.settle("ack", append(receiptsOf(rest[:1]), acked[0].Receipt), nil); st[0] != "stale" || st[1] != "acked" {
		t.Fatalf("old receipt and acked one: %v, want [stale acked]", st)
	}
}
