package broker

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMetricsTopics is how many topics get a topic label of their own
// on the per-topic publish counters (Config.MetricsTopics).
const DefaultMetricsTopics = 200

// Labels of the per-topic publish counters for topics without one of their
// own.
const (
	topicLabelOther  = "other"  // a user topic beyond the cap
	topicLabelSystem = "system" // the broker's own topics (%RETRY%…, %DLQ%…)
)

// topicLabels gives the per-topic publish counters a topic label for at
// most limit user topics, the first ones published to since the start,
// and "other" for the rest, so that a bus with many topics (or a client
// making up topic names) cannot grow /metrics without bound. A topic keeps
// its label for the life of the process, deleted or not.
type topicLabels struct {
	limit  int
	logger *slog.Logger

	mu     sync.Mutex
	known  map[string]struct{} // guarded by mu
	capped bool                // guarded by mu: the cap was met once (logged once)
}

func (t *topicLabels) label(topic string) string {
	if strings.HasPrefix(topic, "%") {
		return topicLabelSystem
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.known[topic]; ok {
		return topic
	}
	if len(t.known) < t.limit {
		t.known[topic] = struct{}{}
		return topic
	}
	if !t.capped {
		t.capped = true
		// Not an error, but an operator reading per-topic rates must know
		// that some topics are counted together.
		t.logger.Warn("more topics published to than --metrics-topics: later ones are counted under topic=\"other\" in postbus_topic_published_*",
			slog.Int("metrics_topics", t.limit), slog.String("first_other", topic))
	}
	return topicLabelOther
}

// topicMetrics are the per-topic publish counters.
type topicMetrics struct {
	labels   *topicLabels
	messages *prometheus.CounterVec
	bytes    *prometheus.CounterVec
}

func newTopicMetrics(limit int, logger *slog.Logger) *topicMetrics {
	if limit <= 0 {
		limit = DefaultMetricsTopics
	}
	m := &topicMetrics{
		labels: &topicLabels{limit: limit, logger: logger, known: make(map[string]struct{})},
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbus_topic_published_messages_total",
			Help: "Messages stored by publishes, by topic: a label for each of the first --metrics-topics topics published to, \"other\" for the rest, \"system\" for the broker's own.",
		}, []string{"topic"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbus_topic_published_bytes_total",
			Help: "Body bytes stored by publishes, by topic (labelled as postbus_topic_published_messages_total).",
		}, []string{"topic"}),
	}
	m.messages.WithLabelValues(topicLabelOther) // exported at 0, so rate() works from the start
	m.bytes.WithLabelValues(topicLabelOther)
	return m
}

func (m *topicMetrics) published(topic string, n, bytes int) {
	if m == nil {
		return
	}
	l := m.labels.label(topic)
	m.messages.WithLabelValues(l).Add(float64(n))
	m.bytes.WithLabelValues(l).Add(float64(bytes))
}

var (
	groupLagDesc = prometheus.NewDesc("postbus_group_lag",
		"Messages a group can still be given on a topic: queued after its offsets (retry topics hold what waits for a retry). Pull and push groups alike.",
		[]string{"group", "topic"}, nil)
	groupInFlightDesc = prometheus.NewDesc("postbus_group_in_flight",
		"Messages out to a group on a topic and not settled: pulled and not acked, pushed and not answered, or (on its retry topic) waiting for a retry.",
		[]string{"group", "topic"}, nil)
	groupDeadDesc = prometheus.NewDesc("postbus_group_dead_letters",
		"Messages in a group's dead-letter queue.",
		[]string{"group"}, nil)
	groupPollsDesc = prometheus.NewDesc("postbus_group_held_polls",
		"Long polls of a group held waiting for messages now: its connected pullers.",
		[]string{"group"}, nil)
	groupOldestDesc = prometheus.NewDesc("postbus_group_oldest_unconsumed_seconds",
		"Age (since it was stored) of the oldest message of a topic a group has not finished: not yet given to it, out and not acked, or waiting for a retry; 0 when there is none.",
		[]string{"group", "topic"}, nil)
	groupScrapeErrorsDesc = prometheus.NewDesc("postbus_group_metrics_errors",
		"1 when the last scrape could not read the groups (the error is logged); the postbus_group_* series are then missing.",
		nil, nil)
)

// groupCollector computes the postbus_group_* gauges when scraped, from
// what GET /v1/groups/{group} shows.
type groupCollector struct{ b *Broker }

func (c groupCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{groupLagDesc, groupInFlightDesc, groupDeadDesc, groupPollsDesc, groupOldestDesc, groupScrapeErrorsDesc} {
		ch <- d
	}
}

func (c groupCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	failed := 0.0
	defer func() { ch <- prometheus.MustNewConstMetric(groupScrapeErrorsDesc, prometheus.GaugeValue, failed) }()
	groups, err := c.b.Groups(ctx)
	if err != nil {
		failed = 1
		c.b.logger.Error("reading the groups for /metrics failed", slog.Any("err", err))
		return
	}
	now := c.b.now()
	for _, g := range groups {
		ch <- prometheus.MustNewConstMetric(groupDeadDesc, prometheus.GaugeValue, float64(g.DeadLetters), g.Name)
		ch <- prometheus.MustNewConstMetric(groupPollsDesc, prometheus.GaugeValue, float64(g.HeldPolls), g.Name)
		lag, inFlight := map[string]int64{}, map[string]int64{}
		for _, q := range g.Queues {
			lag[q.Topic] += q.Lag
			inFlight[q.Topic] += int64(q.InFlight)
		}
		for t, n := range lag {
			ch <- prometheus.MustNewConstMetric(groupLagDesc, prometheus.GaugeValue, float64(n), g.Name, t)
			ch <- prometheus.MustNewConstMetric(groupInFlightDesc, prometheus.GaugeValue, float64(inFlight[t]), g.Name, t)
		}
		for _, s := range g.Subscriptions {
			oldest, ok, err := c.b.oldestUnconsumed(ctx, s, g.Queues)
			if err != nil {
				c.b.logger.Error("reading the oldest unconsumed message for /metrics failed", slog.String("group", s.Group),
					slog.String("topic", s.Topic), slog.Any("err", err))
				continue
			}
			age := 0.0
			if ok {
				age = max(now.Sub(oldest).Seconds(), 0)
			}
			ch <- prometheus.MustNewConstMetric(groupOldestDesc, prometheus.GaugeValue, age, s.Group, s.Topic)
		}
	}
}

// oldestUnconsumed is when the oldest message of s's topic that s's group
// has not finished was stored: the first deliverable message at or after
// the group's offset in each queue with lag, and the oldest out or waiting
// for a retry (oldestUnacked).
func (b *Broker) oldestUnconsumed(ctx context.Context, s Subscription, queues []QueueLag) (time.Time, bool, error) {
	oldest, found, err := b.oldestUnacked(ctx, s)
	if err != nil {
		return time.Time{}, false, err
	}
	filter, err := ParseFilter(s.Filter)
	if err != nil {
		return time.Time{}, false, err
	}
	for _, q := range queues {
		if q.Topic != s.Topic || q.Lag == 0 {
			continue
		}
		msgs, _, err := b.ReadQueue(q.Topic, q.Queue, q.Offset, 1, filter)
		if err != nil {
			return time.Time{}, false, err
		}
		if len(msgs) == 1 && (!found || msgs[0].StoredAt.Before(oldest)) {
			oldest, found = msgs[0].StoredAt, true
		}
	}
	return oldest, found, nil
}
