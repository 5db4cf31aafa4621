package bench

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseVmRSS(t *testing.T) {
	const head = "Name:\tpostbus\nState:\tS (sleeping)\nVmPeak:\t  900000 kB\nVmSize:\t  800000 kB\nVmHWM:\t   70000 kB\n"
	tests := []struct {
		name   string
		status string
		want   int64
		err    error // nil: want success
	}{
		{"typical", head + "VmRSS:\t   12345 kB\nRssAnon:\t 10000 kB\nThreads:\t9\n", 12345 * 1024, nil},
		{"last line without newline", head + "VmRSS:\t1 kB", 1024, nil},
		{"zero", "VmRSS:\t0 kB\n", 0, nil},
		{"kernel thread has none", "Name:\tkthreadd\nState:\tS\nThreads:\t1\n", 0, ErrNoRSS},
		{"empty", "", 0, ErrNoRSS},
		{"other unit", "VmRSS:\t12 MB\n", 0, ErrNoRSS},
		{"no unit", "VmRSS:\t12\n", 0, ErrNoRSS},
		{"not a number", "VmRSS:\tlots kB\n", 0, ErrNoRSS},
		{"negative", "VmRSS:\t-5 kB\n", 0, ErrNoRSS},
		{"absurd", "VmRSS:\t99999999999999999 kB\n", 0, ErrNoRSS},
		{"VmHWM is not VmRSS", "VmHWM:\t5 kB\n", 0, ErrNoRSS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseVmRSS([]byte(tt.status))
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("parseVmRSS = %d, %v; want %v", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseVmRSS = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}

// statmRSS reads this process's resident size from /proc/<pid>/statm, a
// different file in different units, as an oracle for VmRSS.
func statmRSS(tb testing.TB) int64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", os.Getpid()))
	if err != nil {
		tb.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		tb.Fatalf("statm %q", b)
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		tb.Fatal(err)
	}
	return pages * int64(os.Getpagesize())
}

func TestReadVmRSSOfSelf(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc/<pid>/status is Linux's")
	}
	path := fmt.Sprintf("/proc/%d/status", os.Getpid())
	near := func(t *testing.T, got, oracle int64) {
		t.Helper()
		// The two files are read a moment apart; the runtime may map or
		// return a few MiB in between.
		if d := got - oracle; d < -8<<20 || d > 8<<20 {
			t.Errorf("VmRSS %s, statm says %s", fmtBytes(got), fmtBytes(oracle))
		}
	}
	before, err := readVmRSS(path)
	if err != nil {
		t.Fatal(err)
	}
	near(t, before, statmRSS(t))

	// Touching 64 MiB must show: this is what --broker-pid is for.
	const grow = 64 << 20
	ballast := make([]byte, grow)
	for i := 0; i < len(ballast); i += os.Getpagesize() {
		ballast[i] = 1
	}
	after, err := readVmRSS(path)
	if err != nil {
		t.Fatal(err)
	}
	near(t, after, statmRSS(t))
	runtime.KeepAlive(ballast)
	if after-before < grow*3/4 {
		t.Errorf("VmRSS grew %s after touching %s", fmtBytes(after-before), fmtBytes(grow))
	}
}

func TestRSSSampler(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc/<pid>/status is Linux's")
	}
	t.Run("samples until stopped", func(t *testing.T) {
		s, err := startRSSSampler(os.Getpid(), time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			s.mu.Lock()
			n := s.stats.samples
			s.mu.Unlock()
			if n >= 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d samples after 5s at 1ms", n)
			}
			runtime.Gosched()
		}
		st := s.Stop()
		again := s.Stop() // idempotent, and nothing sampled after the first
		if st != again {
			t.Errorf("second Stop = %+v, first %+v", again, st)
		}
		if st.max <= 0 || st.samples < 3 || st.err != nil || st.pid != os.Getpid() {
			t.Errorf("stats %+v: want max > 0, >= 3 samples, no error", st)
		}
	})
	t.Run("a pid that does not exist is refused", func(t *testing.T) {
		// pid_max is at most 2^22, so this pid cannot exist.
		if s, err := startRSSSampler(1<<23, time.Second); err == nil {
			s.Stop()
			t.Fatal("startRSSSampler(1<<23) = nil error")
		}
	})
}

func TestPublishBrokerPID(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc/<pid>/status is Linux's")
	}
	f := newFakeBroker(t, fakeOpts{topic: "bench", size: 64})
	out, err := runPublish(t, t.Context(), baseArgs(f.srv.URL, "--count", "20", "--conns", "2", "--size", "64",
		"--broker-pid", strconv.Itoa(os.Getpid()), "--json")...)
	if err != nil {
		t.Fatalf("Publish: %v\n%s", err, out)
	}
	rep := decodeJSONReport(t, out)
	if rep.Target.BrokerRSSMax == nil || *rep.Target.BrokerRSSMax <= 0 {
		t.Errorf("JSON report lacks broker_rss_max_bytes:\n%s", out)
	}
	if !strings.Contains(out, "broker    RSS max ") {
		t.Errorf("text report lacks the RSS line:\n%s", out)
	}
	if _, err := runPublish(t, t.Context(), baseArgs(f.srv.URL, "--count", "1", "--broker-pid", "-1")...); err == nil {
		t.Error("--broker-pid -1 accepted")
	}
	if _, err := runPublish(t, t.Context(), baseArgs(f.srv.URL, "--count", "1", "--broker-pid", strconv.Itoa(1<<23))...); err == nil {
		t.Error("--broker-pid of no process accepted")
	}
}
