//go:build unix

package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// maxBytesPerHeldPoll bounds what one held long poll may cost the broker
// (heap and stacks, after a GC): 10,000 of them must fit in well under
// 100 MB beside the broker's own ~50 MB.
const maxBytesPerHeldPoll = 8 << 10

// TestHeldPollMemory holds 2,000 long polls on the real binary (raw
// HTTP/1.1 connections, 20 topics × 5 groups) and measures what each costs
// the broker: Go heap and stacks in use after a forced GC, before and
// while they are held. Before held polls parked (httpapi/parked.go) each
// kept its connection's goroutine and net/http's buffers: about 35 KiB
// (330 MB RSS for 10,000); now about 3 KiB. Closing the connections drops
// every poll.
func TestHeldPollMemory(t *testing.T) {
	const polls, topics, groups = 2000, 20, 5
	dln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	debugAddr := dln.Addr().String()
	dln.Close()
	p := start(t, "broker", "--data", t.TempDir(), "--auto-create-topics",
		"--max-held-polls", strconv.Itoa(polls+10), "--max-held-polls-per-client", strconv.Itoa(polls+10), "--debug-addr", debugAddr)
	client := &http.Client{Timeout: 20 * time.Second}
	get := func(url string) string {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
		}
		return string(body)
	}
	metric := func(text, name string) float64 {
		for _, l := range strings.Split(text, "\n") {
			if v, ok := strings.CutPrefix(l, name+" "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatalf("%s: %v", l, err)
				}
				return f
			}
		}
		t.Fatalf("no %s in /metrics", name)
		return 0
	}
	// inUse is the broker's heap and stacks in use after a GC.
	inUse := func() float64 {
		get("http://" + debugAddr + "/debug/pprof/heap?gc=1")
		m := get(p.url + "/metrics")
		return metric(m, "go_memstats_heap_inuse_bytes") + metric(m, "go_memstats_stack_inuse_bytes")
	}
	held := func() float64 { return metric(get(p.url+"/metrics"), "postbus_pull_held_polls") }
	path := func(i int) string {
		return fmt.Sprintf("/v1/groups/g%d/topics/t%d/pull?max=1&wait=30s", i%groups, i%topics)
	}
	for i := range topics * groups { // subscribes every group to every topic
		resp, err := client.Post(p.url+strings.Replace(path(i), "wait=30s", "wait=0s", 1), "", nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("first pull %s: %v %v", path(i), resp, err)
		}
		resp.Body.Close()
	}
	before := inUse()
	var rssBefore string
	if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid)); err == nil {
		rssBefore = vmRSS(string(status))
	}
	conns := make([]net.Conn, 0, polls)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range polls {
		c, err := net.Dial("tcp", strings.TrimPrefix(p.url, "http://"))
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		if _, err := fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", path(i)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for held() < polls {
		if time.Now().After(deadline) {
			t.Fatalf("%v of %d polls held after 20 s", held(), polls)
		}
		time.Sleep(20 * time.Millisecond)
	}
	per := (inUse() - before) / polls
	rss := ""
	if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid)); err == nil {
		rss = fmt.Sprintf("; RSS %s before, %s while held", rssBefore, vmRSS(string(status)))
	}
	t.Logf("%d held polls: %.0f bytes of heap and stack each%s", polls, per, rss)
	if per > maxBytesPerHeldPoll {
		t.Errorf("a held poll costs %.0f bytes of heap and stack, want at most %d", per, maxBytesPerHeldPoll)
	}
	// None of them answered meanwhile: an answer would be a fault.
	for i, c := range conns[:10] {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if n, err := bufio.NewReader(c).ReadByte(); err == nil {
			t.Fatalf("poll %d answered early (%q)", i, n)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	deadline = time.Now().Add(20 * time.Second)
	for held() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%v polls still held 20 s after their clients went", held())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// vmRSS is the VmRSS line's value of a /proc/<pid>/status.
func vmRSS(status string) string {
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}
