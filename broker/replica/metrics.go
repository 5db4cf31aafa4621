package replica

import (
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	state             *prometheus.GaugeVec
	leaderChanges     prometheus.Counter
	applied           prometheus.GaugeFunc
	applySeconds      prometheus.Histogram
	proposeSeconds    prometheus.Histogram
	applyFailures     *prometheus.CounterVec
	skipped           prometheus.Counter
	restores          prometheus.Counter
	refused           prometheus.Counter
	handshakeFailures prometheus.Counter
	staleEntries      *prometheus.CounterVec
	untrusted         prometheus.Gauge
	diskOver          prometheus.Gauge
	n                 *Node
}

var raftStates = []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown}

func newMetrics(n *Node) *metrics {
	m := &metrics{n: n}
	m.state = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "postbus_raft_state",
		Help: "1 for this member's raft state (follower, candidate, leader, shutdown), 0 for the others."}, []string{"state"})
	m.leaderChanges = prometheus.NewCounter(prometheus.CounterOpts{Name: "postbus_raft_leader_changes_total",
		Help: "Times this member gained or lost the lead of its replica group."})
	m.applied = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "postbus_raft_applied_index",
		Help: "The index of the last raft entry this member applied to its files."}, func() float64 {
		if n.raft == nil {
			return 0
		}
		return float64(n.AppliedIndex())
	})
	m.applySeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "postbus_raft_apply_seconds",
		Help: "Time to apply one committed raft entry to this member's commitlog or metadata.", Buckets: prometheus.ExponentialBuckets(0.00005, 4, 10)})
	m.proposeSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "postbus_raft_propose_seconds",
		Help: "Time from proposing an entry on the leader to its commit and apply there.", Buckets: prometheus.ExponentialBuckets(0.0002, 4, 10)})
	m.applyFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postbus_raft_apply_failures_total",
		Help: "Committed raft entries this member could not apply (its files may no longer match its group's), by kind."}, []string{"kind"})
	m.skipped = prometheus.NewCounter(prometheus.CounterOpts{Name: "postbus_raft_replayed_records_skipped_total",
		Help: "Records of raft entries handed again after a restart that the commitlog already held."})
	m.restores = prometheus.NewCounter(prometheus.CounterOpts{Name: "postbus_raft_snapshot_restores_total",
		Help: "Times a snapshot from the group replaced this member's commitlog and metadata."})
	m.refused = prometheus.NewCounter(prometheus.CounterOpts{Name: "postbus_raft_connections_refused_total",
		Help: "Raft connections refused because they did not prove the shared secret."})
	m.staleEntries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postbus_raft_stale_entries_total",
		Help: "Committed entries refused because a broker of an earlier lead proposed them after a newer leader announced itself, by kind."}, []string{"kind"})
	m.handshakeFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "postbus_raft_handshake_failures_total",
		Help: "Raft connections closed during their handshake before either side proved or failed to prove the shared secret (a peer going away, a network cut)."})
	m.untrusted = prometheus.NewGauge(prometheus.GaugeOpts{Name: "postbus_raft_member_untrusted",
		Help: "1 once this member's files may no longer match its group's (an entry it could not apply, damaged commitlog spans): it does not lead nor report ready until its data directory is restored from the group."})
	m.diskOver = prometheus.NewGauge(prometheus.GaugeOpts{Name: "postbus_raft_disk_over_clean",
		Help: "1 while this member follows with its disk over --disk-clean-ratio: it deletes nothing on its own (only the leader's retention cut, applied by every member) and is not ready."})
	return m
}

// stateCollector sets the state gauge at each scrape.
type stateCollector struct{ m *metrics }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) { c.m.state.Describe(ch) }

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	cur := raft.Shutdown
	if c.m.n.raft != nil {
		cur = c.m.n.raft.State()
	}
	for _, s := range raftStates {
		v := 0.0
		if s == cur {
			v = 1
		}
		c.m.state.WithLabelValues(s.String()).Set(v)
	}
	c.m.state.Collect(ch)
}

// Collectors are the member's metrics, for a registry of the caller's.
func (n *Node) Collectors() []prometheus.Collector {
	m := n.metrics
	return []prometheus.Collector{stateCollector{m}, m.leaderChanges, m.applied, m.applySeconds, m.proposeSeconds,
		m.applyFailures, m.skipped, m.restores, m.refused, m.handshakeFailures, m.staleEntries, m.untrusted, m.diskOver}
}
