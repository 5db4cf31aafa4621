package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"
)

// ErrNoRSS is returned when a status file has no usable VmRSS line: a
// kernel thread, a zombie, or not Linux's /proc format at all.
var ErrNoRSS = errors.New("no VmRSS line")

// maxStatusBytes bounds how much of /proc/<pid>/status is read; the file is
// about 1.5 KiB, and VmRSS sits in its first half.
const maxStatusBytes = 64 << 10

// rssStats is what a sampler saw of a process's resident set size.
type rssStats struct {
	pid     int
	max     int64 // bytes
	samples int
	err     error // why sampling stopped early (the process exited), if it did
}

// rssSampler reads a process's VmRSS every interval until stopped. Reading
// /proc costs a few microseconds, so a once-a-second sample does not
// disturb the broker it watches.
type rssSampler struct {
	path string
	stop chan struct{}
	done chan struct{} // closed when the sampling goroutine returns

	mu    sync.Mutex // guards stats
	stats rssStats

	stopOnce sync.Once
}

// startRSSSampler takes a first sample at once, so a wrong pid is refused
// before any load is sent, then samples every interval.
func startRSSSampler(pid int, interval time.Duration) (*rssSampler, error) {
	s := &rssSampler{
		path:  fmt.Sprintf("/proc/%d/status", pid),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
		stats: rssStats{pid: pid},
	}
	rss, err := readVmRSS(s.path)
	if err != nil {
		return nil, fmt.Errorf("--broker-pid %d: %w", pid, err)
	}
	s.stats.max, s.stats.samples = rss, 1
	go s.loop(interval)
	return s, nil
}

func (s *rssSampler) loop(interval time.Duration) {
	defer close(s.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		rss, err := readVmRSS(s.path)
		s.mu.Lock()
		if err != nil {
			s.stats.err = err
			s.mu.Unlock()
			return // the process is gone; its pid may be reused, so stop
		}
		s.stats.max = max(s.stats.max, rss)
		s.stats.samples++
		s.mu.Unlock()
	}
}

// Stop ends sampling and returns what was seen. It is idempotent, and a
// nil sampler (no --broker-pid) saw nothing.
func (s *rssSampler) Stop() rssStats {
	if s == nil {
		return rssStats{}
	}
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// result stops s and returns what it saw for the report; nil for a nil
// sampler, which the report leaves out.
func (s *rssSampler) result() *rssStats {
	if s == nil {
		return nil
	}
	st := s.Stop()
	return &st
}

// readVmRSS returns the VmRSS of a /proc/<pid>/status file in bytes.
func readVmRSS(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("read rss: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStatusBytes))
	if err != nil {
		return 0, fmt.Errorf("read rss %s: %w", path, err)
	}
	rss, err := parseVmRSS(b)
	if err != nil {
		return 0, fmt.Errorf("read rss %s: %w", path, err)
	}
	return rss, nil
}

// parseVmRSS finds the line "VmRSS:<spaces><number> kB" and returns the
// number in bytes. The kernel has printed kB there since 2.6; anything else
// is refused rather than guessed at.
func parseVmRSS(status []byte) (int64, error) {
	for line := range bytes.Lines(status) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		fields := bytes.Fields(rest)
		if len(fields) != 2 || string(fields[1]) != "kB" {
			return 0, fmt.Errorf("%w: malformed %q", ErrNoRSS, bytes.TrimSpace(line))
		}
		kb, err := strconv.ParseInt(string(fields[0]), 10, 64)
		if err != nil || kb < 0 || kb > 1<<53/1024 {
			return 0, fmt.Errorf("%w: malformed %q", ErrNoRSS, bytes.TrimSpace(line))
		}
		return kb * 1024, nil
	}
	return 0, ErrNoRSS
}

// fmtBytes prints n in binary units with one decimal.
func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// writeRSS prints the report line of a sampler's stats.
func writeRSS(out io.Writer, st *rssStats) {
	if st == nil {
		return
	}
	fmt.Fprintf(out, "  broker    RSS max %s (pid %d, %d sample(s) a second apart)", fmtBytes(st.max), st.pid, st.samples)
	if st.err != nil {
		fmt.Fprintf(out, "; sampling stopped: %v", st.err)
	}
	fmt.Fprintln(out)
}
