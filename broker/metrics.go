package broker

import (
	"context"
	"log/slog"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the broker's Prometheus series. Gauges are computed when
// scraped, so the publish path pays only for two counter increments.
type metrics struct {
	messages prometheus.Counter
	bytes    prometheus.Counter
	rejects  *prometheus.CounterVec

	attemptsDropped prometheus.Counter
	leasesExpired   prometheus.Counter
	progressBad     prometheus.Counter
	skippedRecords  *prometheus.CounterVec
	lostQueueEnds   prometheus.Counter
	timersDropped   prometheus.Counter
	delayAnomalies  *prometheus.CounterVec
	misplaced       prometheus.Counter

	cleanedMessages prometheus.Counter
	cleanedBytes    prometheus.Counter
	// heldBytes is the sealed log retention (by="retention") or the
	// disk's clean watermark (by="disk_clean") would delete at its last
	// pass but keeps for an undecided prepared transaction.
	heldBytes *prometheus.GaugeVec
	rebuilds  *prometheus.CounterVec

	syncApplied *prometheus.CounterVec // other brokers' subscription records applied, by kind
	syncRefused *prometheus.CounterVec // ... refused, by reason
	// topicTombsApplied counts topics deleted here by another broker's
	// tombstone.
	topicTombsApplied prometheus.Counter
	// topicTombsKept counts tombstones not applied to a copy that took
	// publishes after the delete (each logged at ERROR).
	topicTombsKept prometheus.Counter

	topics *topicMetrics // publishes by topic, with a bounded label set

	txn txnMetrics // transactional messages (txn.go)
}

// Why recovery rebuilt the derived indexes from the start of the log (the
// reason label of postbus_recovery_rebuilds_total).
const (
	rebuildCheckpoint = "checkpoint_unreadable" // checkpoint.json did not parse
	rebuildKeyIndex   = "keyindex_corrupt"      // the key index failed its checks
)

// Why dispatch skipped a record (the reason label of
// postbus_dispatch_skipped_records_total).
const (
	skipOutOfOrder  = "out_of_order" // its queue offset does not follow its queue's
	skipUndecodable = "undecodable"  // a good frame whose record cannot be decoded
	skipCorrupt     = "corrupt"      // a damaged span of the log, quarantined
)

// What the timer loop found wrong with a due delayed message (the reason
// label of postbus_delayed_anomalies_total).
const (
	delayAlreadyPut  = "already_put_back"      // a put-back copy was in the log already: not put back twice
	delayAlreadyDead = "already_dead_lettered" // its message was dead-lettered after it: not handed out again
)

func newMetrics(metricsTopics int, logger *slog.Logger) *metrics {
	m := &metrics{
		topics: newTopicMetrics(metricsTopics, logger),
		messages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_published_messages_total", Help: "Messages stored by publishes (duplicates excluded).",
		}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_published_bytes_total", Help: "Body bytes stored by publishes.",
		}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbus_publish_rejected_total", Help: "Publishes refused, by error code.",
		}, []string{"code"}),
		leasesExpired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_push_leases_expired_total", Help: "Push leases whose visibility ran out before their loop settled them (a hung delivery); each message went out again and the trace shows expired.",
		}),
		progressBad: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_offset_progress_unreadable_total", Help: "Push consumers' recorded progress above an offset that could not be read; the group resumed at the offset, delivering again what it had settled above it. Each is also logged at ERROR.",
		}),
		attemptsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_attempts_dropped_total", Help: "Delivery attempts not written to the trace log because its writer fell behind.",
		}),
		skippedRecords: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbus_dispatch_skipped_records_total",
			Help: "Log records dispatch could not put on their queue or index, by reason; each is also logged at ERROR.",
		}, []string{"reason"}),
		lostQueueEnds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_recovery_lost_queue_offsets_total",
			Help: "Queue offsets a consumer group had read past, or the log had acknowledged before losing its tail, that the rebuilt queue no longer held (messages lost to damage or a cut tail), kept as holes; and queue entries whose records went with segments missing at the log's start (not retired by retention). Each is logged at ERROR.",
		}),
		misplaced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_queue_entries_misplaced_total",
			Help: "Queue entries whose commitlog record is not theirs (another topic, queue or queue offset: a segment replaced by other content), found when read; each is logged at ERROR and answered as damaged, never as the message at that offset.",
		}),
		timersDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_delay_timers_dropped_total",
			Help: "Delay, retry and redelivery timers dropped because the record they bring back could not be read (lost or damaged); each is logged at ERROR.",
		}),
		cleanedMessages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_disk_clean_dropped_messages_total",
			Help: "Messages (queue entries, retry and dead-letter copies included) deleted before their retention because the disk was over --disk-clean-ratio; each deletion is logged at ERROR.",
		}),
		cleanedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_disk_clean_dropped_bytes_total",
			Help: "Commitlog bytes deleted before their retention because the disk was over --disk-clean-ratio.",
		}),
		heldBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "postbus_retention_held_bytes",
			Help: "Commitlog bytes that retention (by=retention) or the disk's clean watermark (by=disk_clean: every sealed segment from the oldest kept) would delete at its last pass but keeps, because a segment holds an undecided prepared transaction's record; logged at WARN (retention) or ERROR (disk_clean) once per record.",
		}, []string{"by"}),
		rebuilds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbus_recovery_rebuilds_total",
			Help: "Starts that rebuilt the consume queues and key index from the start of the commitlog because a derived file was damaged, by reason; each is logged at ERROR (a missing checkpoint, as on a first start, is not counted).",
		}, []string{"reason"}),
		delayAnomalies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbus_delayed_anomalies_total",
			Help: "Due delayed messages the timer loop did not put back as usual, by reason; each is also logged at ERROR.",
		}, []string{"reason"}),
	}
	m.txn = newTxnMetrics()
	m.syncApplied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postbus_subscription_records_applied_total",
		Help: "Other brokers' subscription records that changed this broker's copies, by kind: live (created or changed a subscription) or tombstone (deleted one, or was kept).",
	}, []string{"kind"})
	m.syncRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postbus_subscription_records_refused_total",
		Help: "Subscription records or versions from other brokers refused, by reason: future_version (more than the allowed skew ahead of this broker's clock) or invalid; each is also logged at ERROR.",
	}, []string{"reason"})
	m.topicTombsApplied = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "postbus_topic_tombstones_applied_total",
		Help: "Topics this broker deleted because another broker's tombstone said they were deleted in the cluster while this broker was away (each logged at WARN).",
	})
	m.topicTombsKept = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "postbus_topic_tombstones_kept_total",
		Help: "Other brokers' topic tombstones not applied here because this broker's copy of the topic took publishes after the delete (it did not know of it): the copy is kept so that no acknowledged message is lost; each logged at ERROR.",
	})
	for _, k := range []string{"live", "tombstone"} {
		m.syncApplied.WithLabelValues(k)
	}
	for _, r := range []string{refusedFuture, refusedInvalid} {
		m.syncRefused.WithLabelValues(r)
	}
	for _, r := range []string{rebuildCheckpoint, rebuildKeyIndex} {
		m.rebuilds.WithLabelValues(r)
	}
	for _, r := range []string{delayAlreadyPut, delayAlreadyDead} {
		m.delayAnomalies.WithLabelValues(r)
	}
	for _, r := range []string{skipOutOfOrder, skipUndecodable, skipCorrupt, skipMisplaced} {
		m.skippedRecords.WithLabelValues(r) // exported at 0, so alerts need no absent()
	}
	return m
}

// register exports the series, with gauges read from b when scraped; the
// counters exist from Open's start, so recovery's dispatch counts too.
func (m *metrics) register(b *Broker, reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	m.txn.register(b, reg)
	reg.MustRegister(b.deferred.collectors()...)
	reg.MustRegister(m.messages, m.bytes, m.rejects, m.attemptsDropped, m.leasesExpired, m.progressBad, m.skippedRecords, m.lostQueueEnds, m.timersDropped, m.misplaced,
		m.delayAnomalies, m.cleanedMessages, m.cleanedBytes, m.heldBytes, m.rebuilds, m.syncApplied, m.syncRefused, m.topicTombsApplied, m.topicTombsKept,
		m.topics.messages, m.topics.bytes, groupCollector{b},
		gauge("postbus_subscription_tombstones", "Deleted subscriptions' tombstones kept, to reach brokers that missed the delete.",
			func() float64 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				ts, err := b.meta.SubscriptionTombstones(ctx)
				if err != nil {
					return math.NaN()
				}
				return float64(len(ts))
			}),
		gauge("postbus_commitlog_bytes", "Bytes of the commitlog between its oldest retained offset and its end.",
			func() float64 { return float64(b.log.Committed() - b.log.MinOffset()) }),
		gauge("postbus_pull_held_polls", "Long polls (pulls with a wait) held waiting for messages now, of every group.",
			func() float64 { _, n := b.polls.of(""); return float64(n) }),
		gauge("postbus_commitlog_segments", "Commitlog segment files.",
			func() float64 { return float64(len(b.log.Segments())) }),
		gauge("postbus_commitlog_quarantined_spans", "Damaged commitlog spans found and skipped (each logged at ERROR with its offset, listed by /readyz); their records are lost.",
			func() float64 { return float64(len(b.log.Quarantined()) + len(b.lostTail) + len(b.misplaced.list())) }),
		gauge("postbus_dispatch_lag_bytes", "Committed log bytes not yet indexed into consume queues and the key index.",
			func() float64 { return float64(b.log.Committed() - b.dispatched.Load()) }),
		gauge("postbus_disk_used_ratio", "Used fraction of the file system holding the data directory.",
			func() float64 { return math.Float64frombits(b.diskUsed.Load()) }),
		gauge("postbus_disk_full", "1 while publishes are refused because the disk is over the full watermark.",
			func() float64 {
				if b.diskFull.Load() {
					return 1
				}
				return 0
			}),
		gauge("postbus_commitlog_failed", "1 once the commitlog met a failed fsync (or a failed write it could not undo): publishes are refused and /readyz fails until the broker is restarted.",
			func() float64 {
				if b.log.Failed() != nil {
					return 1
				}
				return 0
			}),
		gauge("postbus_meta_damaged", "1 once the metadata database (meta.db) was found damaged (SQLITE_CORRUPT, or its quick_check failed): /readyz fails and delayed publishes are refused until a restart with --rebuild-metadata.",
			func() float64 {
				if b.meta.Corrupt() != nil {
					return 1
				}
				return 0
			}),
		gauge("postbus_checkpoint_failing", "Checkpoints of the consume queues and key index failed in a row (0 when the last one succeeded); /readyz fails from 3.",
			func() float64 { n, _ := b.ckpt.counts(); return float64(n) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "postbus_checkpoint_failures_total", Help: "Checkpoints of the consume queues and key index that failed."},
			func() float64 { _, n := b.ckpt.counts(); return float64(n) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "postbus_keyindex_write_errors_total", Help: "Failed writes, fsyncs and seals of the key index (each repaired by a later checkpoint, or reported by it)."},
			func() float64 { return float64(b.idx.Stats().WriteErrors) }),
		oldestUnackedCollector{b},
		gauge("postbus_topics", "Topics.", func() float64 {
			b.topicsMu.RLock()
			defer b.topicsMu.RUnlock()
			return float64(len(b.topics))
		}),
	)
}

func (m *metrics) published(topic string, n, bytes int) {
	if m == nil {
		return
	}
	m.messages.Add(float64(n))
	m.bytes.Add(float64(bytes))
	m.topics.published(topic, n, bytes)
}

func (m *metrics) rejected(code Code) {
	if m == nil {
		return
	}
	m.rejects.WithLabelValues(string(code)).Inc()
}

func (m *metrics) skipped(reason string) {
	if m == nil {
		return
	}
	m.skippedRecords.WithLabelValues(reason).Inc()
}

func (m *metrics) cleaned(messages, bytes int64) {
	if m == nil {
		return
	}
	m.cleanedMessages.Add(float64(messages))
	m.cleanedBytes.Add(float64(bytes))
}

func (m *metrics) held(by string, bytes int64) {
	if m == nil {
		return
	}
	m.heldBytes.WithLabelValues(by).Set(float64(bytes))
}

func (m *metrics) timerDropped() {
	if m == nil {
		return
	}
	m.timersDropped.Inc()
}

func (m *metrics) misplacedEntry() {
	if m == nil {
		return
	}
	m.misplaced.Inc()
}

func (m *metrics) lostQueueEnd(n int64) {
	if m == nil {
		return
	}
	m.lostQueueEnds.Add(float64(n))
}

func (m *metrics) delayAnomaly(reason string) {
	if m == nil {
		return
	}
	m.delayAnomalies.WithLabelValues(reason).Inc()
}

func (m *metrics) progressUnreadable() {
	if m == nil {
		return
	}
	m.progressBad.Inc()
}

func (m *metrics) leaseExpired() {
	if m == nil {
		return
	}
	m.leasesExpired.Inc()
}

var oldestUnackedDesc = prometheus.NewDesc("postbus_group_oldest_unacked_seconds",
	"Age (since it was published) of the oldest message out to a group on a topic and not acked: out on pull or push, or waiting for a retry; absent when none is.",
	[]string{"group", "topic"}, nil)

// oldestUnackedCollector computes postbus_group_oldest_unacked_seconds
// for every subscription when scraped.
type oldestUnackedCollector struct{ b *Broker }

func (o oldestUnackedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- oldestUnackedDesc }

func (o oldestUnackedCollector) Collect(ch chan<- prometheus.Metric) {
	ctx := context.Background()
	subs, err := o.b.Subscriptions(ctx)
	if err != nil {
		o.b.logger.Error("listing subscriptions for postbus_group_oldest_unacked_seconds failed", slog.Any("err", err))
		return
	}
	now := o.b.now()
	for _, s := range subs {
		at, ok, err := o.b.oldestUnacked(ctx, s)
		if err != nil {
			o.b.logger.Error("reading the oldest unacked message failed", slog.String("group", s.Group), slog.String("topic", s.Topic), slog.Any("err", err))
			continue
		}
		if ok {
			ch <- prometheus.MustNewConstMetric(oldestUnackedDesc, prometheus.GaugeValue, max(now.Sub(at).Seconds(), 0), s.Group, s.Topic)
		}
	}
}
