package stats

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults for Config.
const (
	DefaultResolution = 10 * time.Second
	DefaultWindow     = time.Hour
	DefaultMaxTopics  = 1000
	DefaultMaxGroups  = 1000
)

// Snapshot is what a broker reports at one instant.
type Snapshot struct {
	// Topics maps each user topic to the messages it has stored so far
	// (the sum of its queues' max offsets): a counter.
	Topics map[string]int64
	// Groups maps each consumer group to its state.
	Groups map[string]Group
}

// Group is one consumer group in a Snapshot.
type Group struct {
	// Consumed maps each user topic the group reads to the sum of its
	// offsets there (the next offset it will consume, per queue): a
	// counter, except that an offset reset may move it back.
	Consumed    map[string]int64
	Lag         int64
	InFlight    int64
	DeadLetters int64
}

// Source takes a Snapshot of the broker.
type Source func(ctx context.Context) (Snapshot, error)

// Config is what a Recorder needs; the zero value of each field takes its
// default.
type Config struct {
	Resolution time.Duration // the step between points; DefaultResolution
	Window     time.Duration // how far back points are kept; DefaultWindow
	MaxTopics  int           // topics tracked at most; DefaultMaxTopics
	MaxGroups  int           // groups tracked at most; DefaultMaxGroups
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

// The series kept per topic and per group, as indexes into series.vals.
const (
	topicIn = iota
	topicOut
	topicSeries
)

const (
	groupOut = iota
	groupLag
	groupInFlight
	groupDLQ
	groupSeries
)

// series is one topic's or group's rings of points; vals[k][i] is the point
// of sample number seq with seq%slots == i, valid when seen[i] == seq+1.
type series struct {
	vals [][]float64
	seen []int64
	last int64 // the last sample number that saw it
}

// Recorder holds the series. Its methods are safe for concurrent use.
type Recorder struct {
	res, window time.Duration
	slots       int
	maxTopics   int
	maxGroups   int
	logger      *slog.Logger

	missed     prometheus.Counter
	errs       prometheus.Counter
	untracked  *prometheus.GaugeVec
	samples    prometheus.Counter
	mu         sync.Mutex
	seq        int64     // the number of the last sample; -1: none yet; guarded by mu
	bucket     time.Time // the last sample's point time; guarded by mu
	prevAt     time.Time // the last sample's actual time; guarded by mu
	prev       Snapshot  // the last sample; guarded by mu
	topics     map[string]*series
	groups     map[string]*series
	leftTopics int // topics left out at the last sample; guarded by mu
	leftGroups int // groups left out at the last sample; guarded by mu
}

// New returns an empty Recorder.
func New(cfg Config) (*Recorder, error) {
	if cfg.Resolution == 0 {
		cfg.Resolution = DefaultResolution
	}
	if cfg.Window == 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.MaxTopics == 0 {
		cfg.MaxTopics = DefaultMaxTopics
	}
	if cfg.MaxGroups == 0 {
		cfg.MaxGroups = DefaultMaxGroups
	}
	if cfg.Resolution < time.Second || cfg.Window < cfg.Resolution || cfg.MaxTopics < 0 || cfg.MaxGroups < 0 {
		return nil, fmt.Errorf("stats: resolution %s (at least 1s), window %s (at least the resolution), %d topics and %d groups (not negative)",
			cfg.Resolution, cfg.Window, cfg.MaxTopics, cfg.MaxGroups)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Recorder{
		res: cfg.Resolution, window: cfg.Window, slots: int(cfg.Window / cfg.Resolution),
		maxTopics: cfg.MaxTopics, maxGroups: cfg.MaxGroups, logger: cfg.Logger,
		seq: -1, topics: map[string]*series{}, groups: map[string]*series{},
		missed: prometheus.NewCounter(prometheus.CounterOpts{Name: "postbus_stats_missed_samples_total",
			Help: "Steps of the dashboard's series (GET /v1/stats) with no sample: the sampler was stalled; they show as gaps."}),
		errs: prometheus.NewCounter(prometheus.CounterOpts{Name: "postbus_stats_sample_errors_total",
			Help: "Samples of the dashboard's series that failed (the broker did not answer); they show as gaps."}),
		samples: prometheus.NewCounter(prometheus.CounterOpts{Name: "postbus_stats_samples_total",
			Help: "Samples taken for the dashboard's series."}),
		untracked: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "postbus_stats_untracked_series",
			Help: "Topics or groups left out of the dashboard's series at the last sample, over the cap."}, []string{"kind"}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{r.missed, r.errs, r.samples, r.untracked} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("stats: register metrics: %w", err)
			}
		}
	}
	r.untracked.WithLabelValues("topic").Set(0)
	r.untracked.WithLabelValues("group").Set(0)
	return r, nil
}

// Resolution is the step between points.
func (r *Recorder) Resolution() time.Duration { return r.res }

// Run samples src at every multiple of the resolution until ctx ends.
func (r *Recorder) Run(ctx context.Context, src Source) {
	for {
		next := time.Now().Truncate(r.res).Add(r.res)
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		snap, err := src(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.errs.Inc()
			r.logger.Error("stats: a sample failed; its point is a gap", slog.Any("err", err))
			continue
		}
		r.Record(time.Now(), snap)
	}
}

// Record adds the sample taken at `at`. A sample in the same step as the
// last one, or before it, is refused (ERROR, not recorded): points are one
// a step, in order.
func (r *Recorder) Record(at time.Time, snap Snapshot) {
	r.mu.Lock()
	defer r.mu.Unlock()
	bucket := at.Truncate(r.res)
	if r.seq >= 0 {
		if !bucket.After(r.bucket) {
			r.errs.Inc()
			r.logger.Error("stats: a sample in a step already sampled, or earlier (the clock went back?), is left out",
				slog.Time("at", at), slog.Time("last", r.bucket))
			return
		}
		if gap := int64(bucket.Sub(r.bucket)/r.res) - 1; gap > 0 {
			r.missed.Add(float64(gap))
			r.logger.Error("stats: steps went by without a sample (the sampler was stalled); they are gaps",
				slog.Int64("missed", gap), slog.Time("from", r.bucket.Add(r.res)), slog.Time("to", bucket.Add(-r.res)))
			// The skipped numbers are simply never seen by any series:
			// their points read as null.
			r.seq += gap
		}
	}
	r.samples.Inc()
	r.seq++
	seq := r.seq
	var dt float64
	if seq > 0 && !r.prevAt.IsZero() {
		dt = at.Sub(r.prevAt).Seconds()
	}
	rate := func(now, before int64, ok bool) float64 {
		if !ok || dt <= 0 || now < before {
			return math.NaN()
		}
		return float64(now-before) / dt
	}
	// Out per topic sums what every group consumed of it.
	outOf := map[string]float64{}
	outKnown := map[string]bool{}
	leftGroups := 0
	for _, name := range sortedKeys(snap.Groups) {
		g := snap.Groups[name]
		s := r.seriesOf(r.groups, name, groupSeries, r.maxGroups)
		if s == nil {
			leftGroups++
			continue
		}
		pg, had := r.prev.Groups[name]
		out := math.NaN()
		for topic, c := range g.Consumed {
			before, ok := pg.Consumed[topic]
			v := rate(c, before, had && ok)
			if math.IsNaN(v) {
				continue
			}
			outOf[topic] += v
			outKnown[topic] = true
			if math.IsNaN(out) {
				out = 0
			}
			out += v
		}
		if had && len(g.Consumed) == 0 && dt > 0 {
			out = 0
		}
		s.put(seq, r.slots, groupOut, out)
		s.put(seq, r.slots, groupLag, float64(g.Lag))
		s.put(seq, r.slots, groupInFlight, float64(g.InFlight))
		s.put(seq, r.slots, groupDLQ, float64(g.DeadLetters))
	}
	leftTopics := 0
	for _, name := range sortedKeys(snap.Topics) {
		s := r.seriesOf(r.topics, name, topicSeries, r.maxTopics)
		if s == nil {
			leftTopics++
			continue
		}
		before, ok := r.prev.Topics[name]
		s.put(seq, r.slots, topicIn, rate(snap.Topics[name], before, ok))
		out := math.NaN()
		if outKnown[name] {
			out = outOf[name]
		} else if ok && dt > 0 {
			out = 0
		}
		s.put(seq, r.slots, topicOut, out)
	}
	if leftTopics != r.leftTopics || leftGroups != r.leftGroups {
		if leftTopics > 0 || leftGroups > 0 {
			r.logger.Error("stats: over the cap, topics or groups are left out of the dashboard's series",
				slog.Int("topics_left_out", leftTopics), slog.Int("max_topics", r.maxTopics),
				slog.Int("groups_left_out", leftGroups), slog.Int("max_groups", r.maxGroups))
		}
		r.leftTopics, r.leftGroups = leftTopics, leftGroups
	}
	r.untracked.WithLabelValues("topic").Set(float64(leftTopics))
	r.untracked.WithLabelValues("group").Set(float64(leftGroups))
	r.forget(r.topics, seq)
	r.forget(r.groups, seq)
	r.bucket, r.prevAt, r.prev = bucket, at, snap
}

// seriesOf returns name's series in m, making it when there is room; nil
// when the cap leaves it out.
func (r *Recorder) seriesOf(m map[string]*series, name string, n, limit int) *series {
	if s := m[name]; s != nil {
		return s
	}
	if len(m) >= limit {
		return nil
	}
	s := &series{vals: make([][]float64, n), seen: make([]int64, r.slots)}
	for k := range s.vals {
		s.vals[k] = make([]float64, r.slots)
	}
	m[name] = s
	return s
}

func (s *series) put(seq int64, slots, k int, v float64) {
	i := int(seq % int64(slots))
	if s.seen[i] != seq+1 {
		// A new sample for this series: clear what the slot held from a
		// window ago.
		for j := range s.vals {
			s.vals[j][i] = math.NaN()
		}
		s.seen[i] = seq + 1
	}
	s.vals[k][i] = v
	s.last = seq
}

// forget drops the series no sample of the window has seen.
func (r *Recorder) forget(m map[string]*series, seq int64) {
	for name, s := range m {
		if seq-s.last >= int64(r.slots) {
			delete(m, name)
		}
	}
}

// Points is a series of values, one a step; NaN is no value (JSON null).
type Points []float64

// MarshalJSON writes the points with at most three decimals, NaN as null.
func (p Points) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 2+len(p)*4)
	b = append(b, '[')
	for i, v := range p {
		if i > 0 {
			b = append(b, ',')
		}
		switch {
		case math.IsNaN(v) || math.IsInf(v, 0):
			b = append(b, "null"...)
		default:
			b = strconv.AppendFloat(b, math.Round(v*1000)/1000, 'f', -1, 64)
		}
	}
	return append(b, ']'), nil
}

// TopicSeries is one topic's points.
type TopicSeries struct {
	Topic        string `json:"topic"`
	InPerSecond  Points `json:"in_per_second"`
	OutPerSecond Points `json:"out_per_second"`
}

// GroupSeries is one group's points.
type GroupSeries struct {
	Group        string `json:"group"`
	OutPerSecond Points `json:"out_per_second"`
	Lag          Points `json:"lag"`
	InFlight     Points `json:"in_flight"`
	DeadLetters  Points `json:"dead_letters"`
}

// Series is what Series returns: points from Start, one every Resolution,
// the last at the newest sample.
type Series struct {
	Start        time.Time
	Resolution   time.Duration
	InPerSecond  Points // the sums over the topics returned
	OutPerSecond Points // the sums over the groups returned
	Topics       []TopicSeries
	Groups       []GroupSeries
}

// Series returns the window's points of the topics and groups the filters
// keep (nil: all), sorted by name. Totals sum what is returned, so a caller
// that may see only some topics sees only their sums.
func (r *Recorder) Series(keepTopic, keepGroup func(string) bool) Series {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := min(int(r.seq+1), r.slots)
	out := Series{Resolution: r.res, Topics: []TopicSeries{}, Groups: []GroupSeries{},
		InPerSecond: nanPoints(n), OutPerSecond: nanPoints(n)}
	if r.seq < 0 {
		return out
	}
	first := r.seq - int64(n) + 1
	out.Start = r.bucket.Add(-time.Duration(n-1) * r.res)
	read := func(s *series, k int) Points {
		p := nanPoints(n)
		for j := range n {
			seq := first + int64(j)
			i := int(seq % int64(r.slots))
			if s.seen[i] == seq+1 {
				p[j] = s.vals[k][i]
			}
		}
		return p
	}
	for _, name := range sortedKeys(r.topics) {
		if keepTopic != nil && !keepTopic(name) {
			continue
		}
		s := r.topics[name]
		ts := TopicSeries{Topic: name, InPerSecond: read(s, topicIn), OutPerSecond: read(s, topicOut)}
		addInto(out.InPerSecond, ts.InPerSecond)
		out.Topics = append(out.Topics, ts)
	}
	for _, name := range sortedKeys(r.groups) {
		if keepGroup != nil && !keepGroup(name) {
			continue
		}
		s := r.groups[name]
		gs := GroupSeries{Group: name, OutPerSecond: read(s, groupOut), Lag: read(s, groupLag),
			InFlight: read(s, groupInFlight), DeadLetters: read(s, groupDLQ)}
		addInto(out.OutPerSecond, gs.OutPerSecond)
		out.Groups = append(out.Groups, gs)
	}
	return out
}

// addInto adds p to sum point by point; a point is null in the sum only
// when it is null in every series added.
func addInto(sum, p Points) {
	for i, v := range p {
		if math.IsNaN(v) {
			continue
		}
		if math.IsNaN(sum[i]) {
			sum[i] = 0
		}
		sum[i] += v
	}
}

func nanPoints(n int) Points {
	p := make(Points, n)
	for i := range p {
		p[i] = math.NaN()
	}
	return p
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
