package broker

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/postbus/postbus/broker/meta"
	"github.com/prometheus/client_golang/prometheus"
)

// Deferred acknowledgement of push deliveries (DESIGN §4 "Push extras").
//
// Every unordered push delivery carries an ack token (AckToken): a receipt
// of kind receiptDeferred, MAC'd with the receipt key and named with the
// broker like a pulled message's, naming the group, topic, message,
// attempt and a random ack key. An endpoint that answers 202 has the push
// loop turn its lease into a durable one (Engine.Defer): a copy of the
// message in the group's retry topic, as the next attempt, due when the
// subscription's ack_timeout ends, its timer stored under the ack key, and
// the group's offset moved past the message. From then on the delivery is
// a pull lease in all but name:
//
//   - POST /v1/acks/{token} {"status":"done"} cancels the timer (an ack);
//     {"status":"retry"} swaps it for a retry copy due after the delay (a
//     nack), or dead-letters the message past max_retries;
//   - the timer firing is the timeout: the copy comes back on the group's
//     retry queue, and the push loop hands it out as the next attempt (the
//     trace says expired), or dead-letters it past max_retries.
//
// A restart keeps all of it (the copy, its timer, the key), so a token
// still settles after one, and the loop counts the deferred deliveries
// against max_in_flight from the timers (DeferredInFlight). A token settles
// once: a second call finds the timer settled (ack_token_used) or fired
// (ack_token_expired).

// deferredReason marks a deferred delivery's copy: handed out again, its
// previous attempt was not acknowledged within ack_timeout.
const deferredReason = "\x00ack_timeout"

// pendingTokens are the ack tokens of deliveries still open: an endpoint
// may acknowledge as soon as it answered 202, before the loop stored the
// hold, and its acknowledgement waits for the delivery to end rather than
// being told the token names nothing.
type pendingTokens struct {
	mu sync.Mutex
	m  map[int64]chan struct{} // by ack key; closed when the delivery ended; guarded by mu
}

// AckToken makes the ack token of an unordered push lease of group on
// topic, and the ack key Defer stores with it. The caller calls TokenDone
// with the key once the delivery ended (held or not).
func (e *Engine) AckToken(group, topic string, ls Lease) (token string, key int64) {
	key = rand.Int64() // uniqueness only: the MAC makes the token unforgeable
	e.tokens.mu.Lock()
	if e.tokens.m == nil {
		e.tokens.m = map[int64]chan struct{}{}
	}
	e.tokens.m[key] = make(chan struct{})
	e.tokens.mu.Unlock()
	b := e.b
	name := b.nodeName()
	tok := receipt{Kind: receiptDeferred, Attempt: ls.Attempt, Timer: key, Group: group, Topic: topic, MsgID: ls.ID}.encode(b.receiptKey, name)
	if name != "" {
		tok = name + receiptSep + tok
	}
	return tok, key
}

// TokenDone says that the delivery AckToken made key for ended: held by
// Defer, settled, or given up.
func (e *Engine) TokenDone(key int64) {
	e.tokens.mu.Lock()
	defer e.tokens.mu.Unlock()
	if ch, ok := e.tokens.m[key]; ok {
		close(ch)
		delete(e.tokens.m, key)
	}
}

// tokenOpen returns a channel closed when the delivery of key ends, or nil
// when none is open.
func (e *Engine) tokenOpen(key int64) <-chan struct{} {
	e.tokens.mu.Lock()
	defer e.tokens.mu.Unlock()
	if ch, ok := e.tokens.m[key]; ok {
		return ch
	}
	return nil
}

// Defer turns a push lease its endpoint answered 202 into a deferred
// delivery held until until (see above): ack key key names it. The lease
// is settled by it; an error wrapping ErrStaleReceipt says the engine took
// the lease back meanwhile (the message goes out again from there), and
// nothing is held.
func (e *Engine) Defer(ctx context.Context, rcpt string, key int64, until time.Time) error {
	b := e.b
	r, err := decodeReceipt(rcpt, b.receiptKey, b.nodeName())
	if err != nil || r.Kind != receiptPush {
		return errf(CodeInvalidReceipt, "receipt", "not a push lease's receipt")
	}
	e.mu.Lock()
	c := e.cons[[2]string{r.Group, r.Topic}]
	e.mu.Unlock()
	if c == nil {
		return staleErr("receipt")
	}
	c.mu.Lock()
	l := c.leases[uint64(r.Timer)]
	if l == nil || c.closed || l.ordered {
		c.mu.Unlock()
		return staleErr("receipt")
	}
	sub := c.sub
	c.mu.Unlock()

	// The copy is stored first, with no timer: nothing hands it out
	// until its timer is. The timer and the group's offset past the
	// message are then stored in one transaction, with c.mu held (a
	// drop or an expiry of the lease comes before it, and nothing is
	// held, or after it), and the offset flushes held off (none writes
	// an older offset of the queue after it): after a kill of the
	// process either the token names a held copy and the message is not
	// handed out again from its queue, or the token names nothing (410)
	// and the message goes out again from the offset, never both. With
	// the timer stored first and the offset moved after, a kill in
	// between had the restart deliver the message again while its old
	// token still settled the copy with 200.
	cp := l.m.retryCopy(sub.Group, l.attempt+1, until)
	cp.Reason = deferredReason
	cp.flags |= flagLeased // its timer is stored here, with the ack key
	ts, err := b.topicOrSystem(ctx, cp.Topic)
	if err != nil {
		return fmt.Errorf("defer %s: %w", l.m.ID, err)
	}
	res, err := b.store(ctx, ts, []*Message{cp}, false)
	if err != nil {
		return fmt.Errorf("defer %s: store its copy: %w", l.m.ID, err)
	}
	off := res[0].logOffset
	if err := b.waitDispatched(ctx, off+1); err != nil {
		return fmt.Errorf("defer %s: %w", l.m.ID, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.leases[l.id] != l {
		// Taken back meanwhile (a reset, a change that dropped the
		// consumer, the lease expired): the message goes out from
		// there; the copy stays without a timer, and the token is
		// answered expired.
		return staleErr("receipt")
	}
	after := *l.c
	after.pending = slices.Clone(l.c.pending)
	after.Finish(l.m.QueueOffset)
	moved := meta.Offset{Group: sub.Group, Topic: after.Topic, Queue: after.Queue, Next: after.Committed(), Progress: after.progress()}
	b.offs.flushMu.Lock()
	defer b.offs.flushMu.Unlock()
	err = b.meta.AddDeferredTimer(ctx, meta.Timer{LogOffset: off, DeliverAt: until, Owner: cp.Topic}, key, []meta.Offset{moved})
	if err != nil {
		// Neither is stored: the lease stays, and ends as a failed
		// attempt or by its expiry.
		return fmt.Errorf("defer %s: %w", l.m.ID, err)
	}
	delete(c.leases, l.id)
	// The offset it sets in memory is the one stored just now; set
	// before the flushes go on, so none writes an older one left dirty
	// by the lease over it.
	e.finishPush(ctx, c, l)
	b.timerWake()
	b.deferred.held.Inc()
	return nil
}

// timerWake wakes the timer loop, which sleeps until the next timer it knew
// of: a deferred delivery's timeout may come before it.
func (b *Broker) timerWake() {
	if b.timer != nil {
		b.timer.Wake()
	}
}

// DeferredInFlight counts group's deferred deliveries on topic held here
// for an acknowledgement: what the push loop counts against max_in_flight
// beside the deliveries it has open.
func (b *Broker) DeferredInFlight(ctx context.Context, group, topic string) (int, error) {
	return b.meta.PendingDeferredOf(ctx, RetryTopic(group, topic))
}

// DeferredSettled returns a channel closed when a deferred delivery is
// next settled by its token, so a push loop waiting for room in its
// max_in_flight looks again.
func (b *Broker) DeferredSettled() <-chan struct{} { return b.deferredSig.wait() }

// DeferredAck is a deferred delivery found by its token.
type DeferredAck struct {
	Subscription Subscription
	MsgID        string
	Attempt      int // the attempt the endpoint answered 202
	timer        int64
}

// Deferred finds the delivery an ack token names. A token this bus did not
// issue (or not an ack token) is invalid_ack_token; one whose delivery is
// over (its timer fired and was purged, its subscription or topic was
// deleted) ack_token_expired.
func (b *Broker) Deferred(ctx context.Context, token string) (DeferredAck, error) {
	r, err := decodeReceipt(token, b.receiptKey, b.nodeName())
	if err != nil || r.Kind != receiptDeferred {
		return DeferredAck{}, errf(CodeInvalidAckToken, "token", "not an ack token this bus issued")
	}
	expired := func(why string) error {
		return &Error{Code: CodeAckTokenExpired, Field: "token", Err: ErrStaleReceipt, Detail: "the delivery this token acknowledges is over: " + why + "; nothing was changed"}
	}
	off, owner, ok, err := b.meta.DeferredTimer(ctx, r.Timer)
	if err != nil {
		return DeferredAck{}, err
	}
	if open := b.eng.tokenOpen(r.Timer); !ok && open != nil {
		// Acknowledged before the loop held the delivery (just after
		// the endpoint's 202, or even before it).
		select {
		case <-open:
		case <-ctx.Done():
			return DeferredAck{}, ctx.Err()
		}
		if off, owner, ok, err = b.meta.DeferredTimer(ctx, r.Timer); err != nil {
			return DeferredAck{}, err
		}
	}
	retry := RetryTopic(r.Group, r.Topic)
	if !ok {
		return DeferredAck{}, expired("its ack_timeout passed long ago, or the delivery was never held (the endpoint's 202 was not recorded)")
	}
	if owner != retry {
		// The MAC'd group and topic disagree with the stored timer's:
		// not a state this broker writes.
		b.logger.Error("an ack token's timer belongs to another group or topic", slog.String("group", r.Group), slog.String("topic", r.Topic),
			slog.String("owner", owner), slog.Int64("timer", off))
		return DeferredAck{}, errf(CodeInvalidAckToken, "token", "not an ack token this bus issued")
	}
	if !b.ownsCopy(retry, off) {
		return DeferredAck{}, expired(fmt.Sprintf("topic %q was deleted since", r.Topic))
	}
	subs, err := b.Subscriptions(ctx)
	if err != nil {
		return DeferredAck{}, err
	}
	for _, s := range subs {
		if s.Group == r.Group && s.Topic == r.Topic && s.URL != "" {
			return DeferredAck{Subscription: s, MsgID: r.MsgID, Attempt: r.Attempt, timer: off}, nil
		}
	}
	return DeferredAck{}, expired(fmt.Sprintf("group %q has no push subscription on %q any more", r.Group, r.Topic))
}

// SettleDeferred settles a deferred delivery: Ack (done), RetryAt (a failed
// attempt, retried then) or Dead (a failed attempt past max_retries). A
// delivery settled before is ack_token_used, one whose ack_timeout passed
// (the message went out again) ack_token_expired; nothing changes then.
func (b *Broker) SettleDeferred(ctx context.Context, d DeferredAck, v Verdict) error {
	s := d.Subscription
	r := receipt{Kind: receiptTimer, Attempt: d.Attempt, Timer: d.timer, Group: s.Group, Topic: s.Topic, MsgID: d.MsgID}
	states, err := b.eng.settleTimersEach(ctx, s.Group, []receipt{r}, v)
	if err != nil {
		return err
	}
	now := b.now()
	switch states[0] {
	case meta.TimerDone:
	case meta.TimerAcked, meta.TimerNacked:
		was := "done"
		if states[0] == meta.TimerNacked {
			was = "retry"
		}
		b.deferred.acks.WithLabelValues("used").Inc()
		return &Error{Code: CodeAckTokenUsed, Field: "token", Err: ErrStaleReceipt,
			Detail: fmt.Sprintf("the delivery was acknowledged already (status %s); a token settles once, nothing was changed", was)}
	default:
		b.deferred.acks.WithLabelValues("expired").Inc()
		return &Error{Code: CodeAckTokenExpired, Field: "token", Err: ErrStaleReceipt,
			Detail: "the delivery's ack_timeout passed (or its group's position was reset): the message went out again, or was dead-lettered; nothing was changed"}
	}
	a := Attempt{MsgID: d.MsgID, Group: s.Group, Subscription: s.ID, Attempt: max(d.Attempt, 1), At: now}
	status := "done"
	switch v.kind {
	case verdictAck:
		a.Outcome = "acked"
	case verdictDead:
		a.Outcome, a.Error, status = "dead", v.reason, "dead"
	default:
		a.Outcome, status = "nacked", "retry"
		a.Error = "retry asked at " + v.at.UTC().Format(time.RFC3339Nano)
	}
	b.LogAttempt(a)
	b.deferred.acks.WithLabelValues(status).Inc()
	b.deferredSig.fire()
	if v.kind == verdictRetry && !v.at.After(now) {
		b.timerWake() // due now: the timer loop sleeps until the next one it knew
	}
	return nil
}

// deferredMetrics are the series of deferred acknowledgement.
type deferredMetrics struct {
	held     prometheus.Counter     // deliveries deferred by a 202
	acks     *prometheus.CounterVec // POST /v1/acks answers, by status
	timeouts prometheus.Counter     // deferred deliveries whose ack_timeout passed
	probes   *prometheus.CounterVec // dlq_redrive probes, by result (dlqredrive.go)
	redriven prometheus.Counter     // dead letters redriven after a probe succeeded
}

func newDeferredMetrics() deferredMetrics {
	m := deferredMetrics{
		held: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_push_deferred_total", Help: "Push deliveries answered 202 Accepted and held for a later acknowledgement (POST /v1/acks/{token}).",
		}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbus_push_deferred_acks_total", Help: "Acknowledgements of deferred push deliveries, by status: done, retry, dead (a retry past max_retries), used (the token had settled already) or expired (its ack_timeout had passed).",
		}, []string{"status"}),
		timeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_push_deferred_timeouts_total", Help: "Deferred push deliveries whose ack_timeout passed without an acknowledgement: each counts as a failed attempt (the trace says expired) and goes out again or is dead-lettered.",
		}),
	}
	m.probes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postbus_dlq_redrive_probes_total", Help: "Probes of push endpoints with a dead letter (a subscription's dlq_redrive), by result: delivered (the rest were redriven) or failed (the next waits dlq_redrive.after).",
	}, []string{"result"})
	m.redriven = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "postbus_dlq_redrive_redriven_total", Help: "Dead letters redriven on their own after a probe of their endpoint succeeded (dlq_redrive).",
	})
	for _, s := range []string{"done", "retry", "dead", "used", "expired"} {
		m.acks.WithLabelValues(s)
	}
	for _, r := range []string{"delivered", "failed"} {
		m.probes.WithLabelValues(r)
	}
	return m
}

func (m deferredMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.held, m.acks, m.timeouts, m.probes, m.redriven}
}
