package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

func TestBuildVersion(t *testing.T) {
	rev := "0123456789abcdef0123456789abcdef01234567"
	tests := []struct {
		name    string
		ldflags string
		bi      *debug.BuildInfo
		want    string
	}{
		{"ldflags win", "v1.2.3", &debug.BuildInfo{Main: debug.Module{Version: "v0.9.0"}}, "v1.2.3"},
		{"no build info", "", nil, "dev"},
		{"installed as a module", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.4.1"}}, "v0.4.1"},
		{"checkout", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: "false"}}}, "dev-0123456789ab"},
		{"dirty checkout", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: "true"}}}, "dev-0123456789ab-dirty"},
		{"no vcs", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "dev"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := buildVersion(tt.ldflags, tt.bi); got != tt.want {
				t.Errorf("buildVersion(%q, …) = %q, want %q", tt.ldflags, got, tt.want)
			}
		})
	}
}

// TestVersionEverywhere: the version `postbus version` prints is the one in
// every server's start log line and in its /healthz.
func TestVersionEverywhere(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, postbusBin, "version").Output()
	if err != nil {
		t.Fatalf("postbus version: %v", err)
	}
	fields := strings.Fields(string(out))
	if len(fields) < 2 || fields[0] != "postbus" || fields[1] == "" {
		t.Fatalf("postbus version printed %q, want \"postbus <version> …\"", out)
	}
	want := fields[1]
	for _, args := range [][]string{
		{"dev", "--data", t.TempDir()},
		{"broker", "--data", t.TempDir()},
		{"namesrv", "--warm-up", "0s"},
	} {
		t.Run(args[0], func(t *testing.T) {
			p := start(t, args...)
			var health struct{ Status, Version string }
			getJSON(t, p.url+"/healthz", &health)
			if health.Version != want {
				t.Errorf("/healthz version %q, want %q", health.Version, want)
			}
			found := false
			for _, line := range strings.Split(p.Logs(), "\n") {
				var rec struct{ Msg, Version string }
				if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "postbus listening" {
					found = true
					if rec.Version != want {
						t.Errorf("start log line has version %q, want %q: %s", rec.Version, want, line)
					}
				}
			}
			if !found {
				t.Errorf("no start log line:\n%s", p.Logs())
			}
		})
	}
}
