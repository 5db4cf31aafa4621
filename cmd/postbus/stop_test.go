package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestStopWhileStarting: a signal before the broker is up is a stop, not
// a failure: exit 0, saying so, with no advice to restore or rebuild the
// metadata (found by the hostile pass: SIGTERM 0.2 s after start exited 1
// and recommended --rebuild-metadata).
func TestStopWhileStarting(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"broker", "--addr", "127.0.0.1:0", "--data", t.TempDir(), "--insecure-no-auth"}, &stdout, &stderr)
	if code != 0 || !strings.Contains(stderr.String(), "stopped while starting") || strings.Contains(stderr.String(), "rebuild-metadata") {
		t.Fatalf("exit %d, stderr %q; want 0 and 'stopped while starting' without advice to rebuild", code, stderr.String())
	}
}
