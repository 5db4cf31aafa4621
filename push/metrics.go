package push

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// pushMetrics are the dispatcher's series, per subscription.
type pushMetrics struct {
	attempts *prometheus.CounterVec   // by subscription and outcome
	latency  *prometheus.HistogramVec // one attempt, by subscription
	e2e      *prometheus.HistogramVec // stored to delivered, by subscription
	retries  *prometheus.CounterVec
	dead     *prometheus.CounterVec
	leaseErr *prometheus.CounterVec // leases that failed for a reason other than the subscription stopping
	partial  *prometheus.CounterVec // cloudevents deliveries of messages whose ce- properties are no whole event
	batches  *prometheus.CounterVec // batched requests sent
	batchMsg *prometheus.CounterVec // messages in them
	bad207   *prometheus.CounterVec // 207 answers that were not a list of the batch's failed messages
	// deferErr counts deliveries answered 202 that could not be held for
	// their acknowledgement (each logged at ERROR, and a failed attempt).
	deferErr *prometheus.CounterVec
}

func newPushMetrics(reg prometheus.Registerer, d *Dispatcher) *pushMetrics {
	buckets := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	m := &pushMetrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postbus_push_attempts_total",
			Help: "Push delivery attempts by subscription and outcome (delivered, retry, gone, deferred: a 202 acknowledged later)."}, []string{"subscription", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "postbus_push_attempt_seconds",
			Help: "Push attempt latency: request sent to response read.", Buckets: buckets}, []string{"subscription"}),
		e2e: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "postbus_push_delivery_seconds",
			Help: "Publish (or retry) stored to webhook answered 2xx.", Buckets: buckets}, []string{"subscription"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postbus_push_retries_total",
			Help: "Failed deliveries scheduled for a retry."}, []string{"subscription"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postbus_push_dead_letters_total",
			Help: "Messages moved to a dead-letter queue after their last retry."}, []string{"subscription"}),
		leaseErr: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postbus_push_lease_errors_total",
			Help: "A push loop's leases that failed (each logged at ERROR); a loop racing its subscription's pause, disable or deletion is not counted."}, []string{"subscription"}),
		partial: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postbus_push_partial_cloudevents_total",
			Help: "Deliveries in format cloudevents of a message whose ce-* properties are not a whole CloudEvent (stored before they were checked): sent as an event made from the message, with those properties as Postbus-Prop-* (each logged at ERROR)."}, []string{"subscription"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postbus_push_batches_total",
			Help: "Batched push requests sent."}, []string{"subscription"}),
		batchMsg: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postbus_push_batch_messages_total",
			Help: "Messages sent in batched push requests."}, []string{"subscription"}),
		bad207: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postbus_push_batch_invalid_answers_total",
			Help: "207 answers to a batch that were not {\"failed\":[...]} naming only the batch's messages (the whole batch was retried; each logged at ERROR)."}, []string{"subscription"}),
		deferErr: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postbus_push_defer_failures_total",
			Help: "Push deliveries answered 202 Accepted that could not be held for their acknowledgement (each logged at ERROR): a failed attempt, retried per the policy."}, []string{"subscription"}),
	}
	if reg != nil {
		reg.MustRegister(m.attempts, m.latency, m.e2e, m.retries, m.dead, m.leaseErr, m.deferErr, m.batches, m.batchMsg, m.bad207, m.partial, lagCollector{d})
	}
	return m
}

func (m *pushMetrics) attempted(sub string, r Result, stored, now time.Time) {
	outcome := map[Outcome]string{Delivered: "delivered", Retry: "retry", Gone: "gone", Deferred: "deferred"}[r.Outcome]
	m.attempts.WithLabelValues(sub, outcome).Inc()
	m.latency.WithLabelValues(sub).Observe(r.Latency.Seconds())
	if r.Outcome == Delivered {
		m.e2e.WithLabelValues(sub).Observe(now.Add(r.Latency).Sub(stored).Seconds())
	}
}

func (m *pushMetrics) leaseFailed(sub string) { m.leaseErr.WithLabelValues(sub).Inc() }

func (m *pushMetrics) batchSent(sub string, n int) {
	m.batches.WithLabelValues(sub).Inc()
	m.batchMsg.WithLabelValues(sub).Add(float64(n))
}

func (m *pushMetrics) badPartial(sub string) { m.bad207.WithLabelValues(sub).Inc() }

func (m *pushMetrics) deferFailed(sub string) { m.deferErr.WithLabelValues(sub).Inc() }

func (m *pushMetrics) settled(sub string, dead bool) {
	if dead {
		m.dead.WithLabelValues(sub).Inc()
	} else {
		m.retries.WithLabelValues(sub).Inc()
	}
}

// lagCollector reports each running subscription's lag (messages on its
// topic and retry queue not yet finished) and its dead-letter count when
// scraped.
type lagCollector struct{ d *Dispatcher }

var (
	lagDesc = prometheus.NewDesc("postbus_push_lag_messages", "Messages a push subscription has not finished.", []string{"subscription"}, nil)
	dlqDesc = prometheus.NewDesc("postbus_dlq_messages", "Messages in a group's dead-letter queue.", []string{"group"}, nil)
	// deferredDesc is what a loop counts against max_in_flight beside the
	// deliveries it has open.
	deferredDesc = prometheus.NewDesc("postbus_push_deferred_in_flight", "Push deliveries answered 202 Accepted and held for their acknowledgement now, counted against max_in_flight.", []string{"subscription"}, nil)
)

func (c lagCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- lagDesc
	ch <- dlqDesc
	ch <- deferredDesc
}

func (c lagCollector) Collect(ch chan<- prometheus.Metric) {
	c.d.mu.Lock()
	subs := make(map[string][2]string, len(c.d.loops)) // id -> group, topic
	for id, l := range c.d.loops {
		subs[id] = [2]string{l.sub.Group, l.sub.Topic}
		ch <- prometheus.MustNewConstMetric(deferredDesc, prometheus.GaugeValue, float64(l.deferred.Load()), id)
	}
	c.d.mu.Unlock()
	groups := map[string]bool{}
	for id, gt := range subs {
		group, topic := gt[0], gt[1]
		lag := int64(0)
		n, _ := c.d.b.Queues(topic)
		for q := 0; q < n; q++ {
			off, _ := c.d.b.Offset(group, topic, q)
			_, hi := c.d.b.QueueBounds(topic, q)
			lag += max(hi-off, 0)
		}
		ch <- prometheus.MustNewConstMetric(lagDesc, prometheus.GaugeValue, float64(lag), id)
		groups[group] = true
	}
	for g := range groups {
		if info, err := c.d.b.Group(context.Background(), g); err == nil {
			ch <- prometheus.MustNewConstMetric(dlqDesc, prometheus.GaugeValue, float64(info.DeadLetters), g)
		}
	}
}
