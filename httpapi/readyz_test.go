package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/prometheus/client_golang/prometheus"
)

// TestReadyzListsDamagedSpans: a record damaged on disk while the broker was
// stopped does not keep it from starting or from being ready; /readyz lists
// the quarantined span and /metrics counts it, and the other messages read.
func TestReadyzListsDamagedSpans(t *testing.T) {
	ctx := context.Background()
	cfg := broker.DefaultConfig(t.TempDir())
	cfg.SegmentSize = 8 << 20
	cfg.MaxMessageBytes = 1 << 20
	cfg.AutoCreateTopics = true
	b, err := broker.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 3 {
		res, err := b.Publish(ctx, "t", []*broker.Message{{Body: []byte(fmt.Sprintf("message-%d-%s", i, strings.Repeat("x", 200)))}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res[0].ID)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	seg := filepath.Join(cfg.Dir, "commitlog", fmt.Sprintf("%020d", 0))
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(data, []byte("message-1-"))
	if at < 0 {
		t.Fatal("message 1 not found in the segment")
	}
	data[at+20] ^= 0x01
	if err := os.WriteFile(seg, data, 0o644); err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	b, err = broker.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open with a damaged record: %v", err)
	}
	srv := httptest.NewServer(mustNew(t, Config{Broker: b, Registry: reg}))
	t.Cleanup(func() {
		srv.Close()
		b.Close()
	})

	resp, body := do(t, "GET", srv.URL+"/readyz", nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %d %s", resp.StatusCode, body)
	}
	var ready struct {
		Status      string `json:"status"`
		Quarantined []struct {
			Offset, Next int64
			Reason       string
		} `json:"quarantined"`
	}
	if err := json.Unmarshal(body, &ready); err != nil {
		t.Fatal(err)
	}
	if ready.Status != "ready" || len(ready.Quarantined) != 1 {
		t.Fatalf("/readyz = %s, want ready with one quarantined span", body)
	}
	if q := ready.Quarantined[0]; q.Offset >= int64(at) || q.Next <= int64(at) || q.Reason == "" {
		t.Fatalf("quarantined span %+v does not hold the damaged byte at %d", q, at+20)
	}
	_, metrics := do(t, "GET", srv.URL+"/metrics", nil, nil)
	if !strings.Contains(string(metrics), "postbus_commitlog_quarantined_spans 1") {
		t.Fatalf("/metrics lacks postbus_commitlog_quarantined_spans 1")
	}
	for _, i := range []int{0, 2} {
		if resp, body := do(t, "GET", srv.URL+"/v1/messages/"+ids[i]+"/body", nil, nil); resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), fmt.Sprintf("message-%d-", i)) {
			t.Fatalf("message %d: %d %.40s", i, resp.StatusCode, body)
		}
	}
}

// TestReadyzDiskFull: while the disk is over the full watermark, and
// publishes are refused with 507 disk_full, /readyz answers 503 saying so.
func TestReadyzDiskFull(t *testing.T) {
	dir := t.TempDir()
	used, err := broker.DiskUsage(dir)
	if err != nil || used <= 0 {
		t.Fatalf("disk use of %s: %v, %v", dir, used, err)
	}
	srv, _ := newTestServer(t, func(c *broker.Config) {
		c.Dir = dir
		// Under what the disk holds already: full from the first check,
		// which the broker makes as it opens its retention loop.
		c.DiskCleanRatio, c.DiskFullRatio = used/2, used/2
	})
	// The first disk check runs beside Open: wait for the publish to be
	// refused (bounded), then /readyz must say why.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, body := do(t, "POST", srv.URL+"/v1/topics/t/messages", nil, strings.NewReader("x"))
		if resp.StatusCode == http.StatusInsufficientStorage {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish over the full watermark: %d %s", resp.StatusCode, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp, body := do(t, "GET", srv.URL+"/readyz", nil, nil)
	if code, _ := problemCode(t, body); resp.StatusCode != http.StatusServiceUnavailable || code != "not_ready" || !strings.Contains(string(body), "full watermark") {
		t.Fatalf("readyz while publishes are refused: %d %s", resp.StatusCode, body)
	}
}
