package stats

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeBroker is a Source whose counters the test moves.
type fakeBroker struct {
	mu     sync.Mutex
	stored map[string]int64
	groups map[string]Group
	stall  time.Duration // the next sample takes this long
	fail   error         // the next sample fails with this
}

func (f *fakeBroker) source(ctx context.Context) (Snapshot, error) {
	f.mu.Lock()
	stall, fail := f.stall, f.fail
	f.stall, f.fail = 0, nil
	f.mu.Unlock()
	if stall > 0 {
		time.Sleep(stall) // the fake clock's: the sampler is stalled this long
	}
	if fail != nil {
		return Snapshot{}, fail
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	s := Snapshot{Topics: map[string]int64{}, Groups: map[string]Group{}}
	for k, v := range f.stored {
		s.Topics[k] = v
	}
	for k, g := range f.groups {
		c := map[string]int64{}
		for t, v := range g.Consumed {
			c[t] = v
		}
		g.Consumed = c
		s.Groups[k] = g
	}
	return s, nil
}

// step moves every counter: topic t stores in[t] more, group g consumes
// out[g] more of topic "orders".
func (f *fakeBroker) step(in map[string]int64, out map[string]int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for t, n := range in {
		f.stored[t] += n
	}
	for g, n := range out {
		gg := f.groups[g]
		if gg.Consumed == nil {
			gg.Consumed = map[string]int64{}
		}
		gg.Consumed["orders"] += n
		gg.Lag = f.stored["orders"] - gg.Consumed["orders"]
		f.groups[g] = gg
	}
}

func newFake() *fakeBroker {
	return &fakeBroker{stored: map[string]int64{}, groups: map[string]Group{}}
}

func newRecorder(t *testing.T, cfg Config) (*Recorder, *prometheus.Registry, *bytes.Buffer) {
	t.Helper()
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	cfg.Registerer = reg
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, reg, &logs
}

// run starts r.Run in the bubble and returns a stop that waits for it.
func run(r *Recorder, src Source) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx, src) }()
	return func() { cancel(); <-done }
}

func pointsEqual(got, want Points) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if math.IsNaN(got[i]) != math.IsNaN(want[i]) || (!math.IsNaN(got[i]) && math.Abs(got[i]-want[i]) > 1e-9) {
			return false
		}
	}
	return true
}

var null = math.NaN()

func TestRunSamplesEveryStepWithRates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, _, _ := newRecorder(t, Config{})
		f := newFake()
		stop := run(r, f.source)
		defer stop()
		// Each step: orders stores 50 (5/s), audit 10 (1/s); group a
		// consumes 20 of orders (2/s), group b 30 (3/s).
		for range 6 {
			f.step(map[string]int64{"orders": 50, "audit": 10}, map[string]int64{"a": 20, "b": 30})
			time.Sleep(10 * time.Second)
			synctest.Wait()
		}
		s := r.Series(nil, nil)
		if s.Resolution != 10*time.Second {
			t.Fatalf("resolution %s, want 10s", s.Resolution)
		}
		// The bubble starts at midnight; the first sample is at 00:00:10.
		if want := time.Date(2000, 1, 1, 0, 0, 10, 0, time.UTC); !s.Start.Equal(want) {
			t.Fatalf("start %s, want %s", s.Start, want)
		}
		wantIn := Points{null, 6, 6, 6, 6, 6}
		if !pointsEqual(s.InPerSecond, wantIn) {
			t.Fatalf("total in %v, want %v", s.InPerSecond, wantIn)
		}
		if want := (Points{null, 5, 5, 5, 5, 5}); !pointsEqual(s.OutPerSecond, want) {
			t.Fatalf("total out %v, want %v", s.OutPerSecond, want)
		}
		if len(s.Topics) != 2 || s.Topics[0].Topic != "audit" || s.Topics[1].Topic != "orders" {
			t.Fatalf("topics %+v, want audit and orders", s.Topics)
		}
		if want := (Points{null, 5, 5, 5, 5, 5}); !pointsEqual(s.Topics[1].InPerSecond, want) {
			t.Fatalf("orders in %v, want %v", s.Topics[1].InPerSecond, want)
		}
		if want := (Points{null, 5, 5, 5, 5, 5}); !pointsEqual(s.Topics[1].OutPerSecond, want) {
			t.Fatalf("orders out %v, want %v (both groups)", s.Topics[1].OutPerSecond, want)
		}
		if want := (Points{null, 0, 0, 0, 0, 0}); !pointsEqual(s.Topics[0].OutPerSecond, want) {
			t.Fatalf("audit out %v, want %v (nobody reads it)", s.Topics[0].OutPerSecond, want)
		}
		if len(s.Groups) != 2 || s.Groups[0].Group != "a" {
			t.Fatalf("groups %+v", s.Groups)
		}
		if want := (Points{null, 2, 2, 2, 2, 2}); !pointsEqual(s.Groups[0].OutPerSecond, want) {
			t.Fatalf("a out %v, want %v", s.Groups[0].OutPerSecond, want)
		}
		if want := (Points{30, 60, 90, 120, 150, 180}); !pointsEqual(s.Groups[0].Lag, want) {
			t.Fatalf("a lag %v, want %v", s.Groups[0].Lag, want)
		}
	})
}

func TestWindowKeepsTheLastHour(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, _, _ := newRecorder(t, Config{})
		f := newFake()
		stop := run(r, f.source)
		defer stop()
		for i := range 2 * 360 {
			// The rate moves each step so that the points say which
			// step they are.
			f.step(map[string]int64{"orders": int64(10 * i)}, nil)
			time.Sleep(10 * time.Second)
			synctest.Wait()
		}
		s := r.Series(nil, nil)
		if len(s.InPerSecond) != 360 {
			t.Fatalf("%d points, want 360 (an hour at 10 s)", len(s.InPerSecond))
		}
		if want := time.Date(2000, 1, 1, 2, 0, 0, 0, time.UTC).Add(-59*time.Minute - 50*time.Second); !s.Start.Equal(want) {
			t.Fatalf("start %s, want %s", s.Start, want)
		}
		// The last point is of the step that stored 10*719 in 10 s.
		if got, want := s.InPerSecond[359], 719.0; got != want {
			t.Fatalf("last point %v, want %v", got, want)
		}
		if got, want := s.InPerSecond[0], 360.0; got != want {
			t.Fatalf("first point %v, want %v", got, want)
		}
	})
}

func TestStalledSamplerLeavesGaps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, reg, logs := newRecorder(t, Config{})
		f := newFake()
		stop := run(r, f.source)
		defer stop()
		tick := func() {
			f.step(map[string]int64{"orders": 100}, nil)
			time.Sleep(10 * time.Second)
			synctest.Wait()
		}
		tick()
		tick()
		// The third sample stalls 25 s: it lands two steps late.
		f.mu.Lock()
		f.stall = 25 * time.Second
		f.mu.Unlock()
		tick()
		time.Sleep(30 * time.Second)
		synctest.Wait()
		tick()
		s := r.Series(nil, nil)
		// 00:00:10, :20, then the sample due at :30 taken at :55
		// (points :30 and :40 missing), then :60 (none: the one at :55
		// ran late, the next timer is at 1:00), 1:10...
		got := s.InPerSecond
		if n := testutil.ToFloat64(r.missed); n != 2 {
			t.Fatalf("missed samples %v, want 2; points %v", n, got)
		}
		if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "missed=2") {
			t.Fatalf("no ERROR line for the gap: %s", logs)
		}
		if !math.IsNaN(got[2]) || !math.IsNaN(got[3]) {
			t.Fatalf("points %v: want the two missed steps null", got)
		}
		// The late sample's rate is over the real 35 s: 100 in 35 s.
		if want := 100 / 35.0; math.Abs(got[4]-want) > 1e-9 {
			t.Fatalf("late point %v, want %v; points %v", got[4], want, got)
		}
		if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP postbus_stats_missed_samples_total Steps of the dashboard's series (GET /v1/stats) with no sample: the sampler was stalled; they show as gaps.
# TYPE postbus_stats_missed_samples_total counter
postbus_stats_missed_samples_total 2
`), "postbus_stats_missed_samples_total"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestFailedSampleIsAGapAndCounted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, _, logs := newRecorder(t, Config{})
		f := newFake()
		stop := run(r, f.source)
		defer stop()
		f.step(map[string]int64{"orders": 10}, nil)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		f.mu.Lock()
		f.fail = errors.New("meta.db is locked")
		f.mu.Unlock()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		f.step(map[string]int64{"orders": 40}, nil)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if n := testutil.ToFloat64(r.errs); n != 1 {
			t.Fatalf("sample errors %v, want 1", n)
		}
		if !strings.Contains(logs.String(), "meta.db is locked") {
			t.Fatalf("the failure is not logged: %s", logs)
		}
		s := r.Series(nil, nil)
		if want := (Points{null, null, 2}); !pointsEqual(s.InPerSecond, want) {
			t.Fatalf("points %v, want %v (40 over the 20 s since the last sample)", s.InPerSecond, want)
		}
	})
}

func TestRecord(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 20, 0, 0, 0, time.UTC)
	snap := func(stored int64, consumed int64) Snapshot {
		return Snapshot{Topics: map[string]int64{"orders": stored},
			Groups: map[string]Group{"g": {Consumed: map[string]int64{"orders": consumed}, Lag: stored - consumed}}}
	}
	tests := []struct {
		name    string
		samples []Snapshot
		at      []time.Duration
		wantIn  Points
		wantOut Points
	}{
		{"steady", []Snapshot{snap(0, 0), snap(100, 50), snap(200, 100)}, []time.Duration{0, 10 * time.Second, 20 * time.Second},
			Points{null, 10, 10}, Points{null, 5, 5}},
		{"offsets reset back: no rate, not a negative one", []Snapshot{snap(100, 100), snap(100, 0), snap(100, 10)},
			[]time.Duration{0, 10 * time.Second, 20 * time.Second}, Points{null, 0, 0}, Points{null, null, 1}},
		{"topic recreated: no rate", []Snapshot{snap(500, 0), snap(3, 0)},
			[]time.Duration{0, 10 * time.Second}, Points{null, null}, Points{null, 0}},
		{"a sample in the same step is left out", []Snapshot{snap(0, 0), snap(100, 0), snap(200, 0)},
			[]time.Duration{0, 3 * time.Second, 10 * time.Second}, Points{null, 20}, Points{null, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _, _ := newRecorder(t, Config{})
			for i, s := range tc.samples {
				r.Record(t0.Add(tc.at[i]), s)
			}
			s := r.Series(nil, nil)
			if !pointsEqual(s.InPerSecond, tc.wantIn) {
				t.Errorf("in %v, want %v", s.InPerSecond, tc.wantIn)
			}
			if !pointsEqual(s.OutPerSecond, tc.wantOut) {
				t.Errorf("out %v, want %v", s.OutPerSecond, tc.wantOut)
			}
		})
	}
}

func TestSameStepSampleIsCountedAndLogged(t *testing.T) {
	r, _, logs := newRecorder(t, Config{})
	t0 := time.Date(2026, 12, 7, 20, 0, 0, 0, time.UTC)
	r.Record(t0, Snapshot{})
	r.Record(t0.Add(-time.Minute), Snapshot{})
	if n := testutil.ToFloat64(r.errs); n != 1 {
		t.Fatalf("errors %v, want 1", n)
	}
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("no ERROR line: %s", logs)
	}
}

func TestCapLeavesOutAndSays(t *testing.T) {
	r, _, logs := newRecorder(t, Config{MaxTopics: 2, MaxGroups: 1})
	t0 := time.Date(2026, 12, 7, 20, 0, 0, 0, time.UTC)
	r.Record(t0, Snapshot{Topics: map[string]int64{"a": 1, "b": 1, "c": 1},
		Groups: map[string]Group{"x": {}, "y": {}}})
	s := r.Series(nil, nil)
	if len(s.Topics) != 2 || len(s.Groups) != 1 {
		t.Fatalf("%d topics and %d groups, want 2 and 1", len(s.Topics), len(s.Groups))
	}
	if got := testutil.ToFloat64(r.untracked.WithLabelValues("topic")); got != 1 {
		t.Fatalf("untracked topics %v, want 1", got)
	}
	if got := testutil.ToFloat64(r.untracked.WithLabelValues("group")); got != 1 {
		t.Fatalf("untracked groups %v, want 1", got)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "topics_left_out=1") {
		t.Fatalf("no ERROR line: %s", logs)
	}
}

func TestSeriesNotSeenForAWindowIsForgotten(t *testing.T) {
	r, _, _ := newRecorder(t, Config{Window: time.Minute})
	t0 := time.Date(2026, 12, 7, 20, 0, 0, 0, time.UTC)
	r.Record(t0, Snapshot{Topics: map[string]int64{"gone": 1, "kept": 1}})
	for i := 1; i <= 6; i++ {
		r.Record(t0.Add(time.Duration(i)*10*time.Second), Snapshot{Topics: map[string]int64{"kept": 1}})
		if n := len(r.Series(nil, nil).Topics); (i < 6 && n != 2) || (i == 6 && n != 1) {
			t.Fatalf("after %d samples %d topics", i+1, n)
		}
	}
}

func TestFiltersNarrowTheTotals(t *testing.T) {
	r, _, _ := newRecorder(t, Config{})
	t0 := time.Date(2026, 12, 7, 20, 0, 0, 0, time.UTC)
	r.Record(t0, Snapshot{Topics: map[string]int64{"mine": 0, "theirs": 0}})
	r.Record(t0.Add(10*time.Second), Snapshot{Topics: map[string]int64{"mine": 10, "theirs": 1000}})
	s := r.Series(func(t string) bool { return t == "mine" }, func(string) bool { return false })
	if len(s.Topics) != 1 || len(s.Groups) != 0 {
		t.Fatalf("%+v", s)
	}
	if want := (Points{null, 1}); !pointsEqual(s.InPerSecond, want) {
		t.Fatalf("total %v, want %v: another's topic counted", s.InPerSecond, want)
	}
}

func TestPointsJSON(t *testing.T) {
	b, err := json.Marshal(Points{null, 1.23456, 0, math.Inf(1), 1e9})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), "[null,1.235,0,null,1000000000]"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	var back []*float64
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
}

func TestNewRefusesNonsense(t *testing.T) {
	for _, cfg := range []Config{{Resolution: time.Millisecond}, {Window: time.Second}, {MaxTopics: -1}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}
