package push

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nuid"
	"github.com/postbus/postbus/broker"
)

// BatchElement is one message of a batched delivery's JSON array. Body
// and Encoding follow the pull answer's rule (broker.EncodeBody): UTF-8
// text as is, anything else base64.
type BatchElement struct {
	MsgID       string            `json:"msg_id"`
	Topic       string            `json:"topic"`
	Tag         string            `json:"tag,omitempty"`
	Keys        []string          `json:"keys,omitempty"`
	Properties  map[string]string `json:"properties,omitempty"`
	QueueID     int               `json:"queue_id"`
	QueueOffset int64             `json:"queue_offset"`
	Attempt     int               `json:"attempt"` // 1 on the first delivery
	ContentType string            `json:"content_type"`
	Body        string            `json:"body"`
	Encoding    string            `json:"encoding"` // utf8 or base64
	BornAt      string            `json:"born_at"`  // RFC 3339
}

// MaxBatchBody is about the most a batched request's body holds: a batch
// whose messages would make it larger goes out as several requests, in
// order (a message larger than that alone). A thousand messages of 4 MiB
// would otherwise be one request of gigabytes, held in memory.
const MaxBatchBody = 4 << 20

// maxBytesOut bounds the bodies a batched loop holds leased and not yet
// settled: past it, it leases nothing more until some are settled. A
// batch's default max_in_flight is eight batches (up to 1024 messages),
// which for messages of megabytes would otherwise be gigabytes in memory.
const maxBytesOut = 8 * MaxBatchBody

// EncodeBatch is the body of a batched delivery of leases, in their order.
func EncodeBatch(leases []broker.Lease) ([]byte, error) {
	els, err := encodeElements(leases)
	if err != nil {
		return nil, err
	}
	return joinElements(els), nil
}

// encodeElements encodes each lease as a BatchElement.
func encodeElements(leases []broker.Lease) ([][]byte, error) {
	out := make([][]byte, len(leases))
	for i, ls := range leases {
		m := ls.Message
		ct := m.ContentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		el := BatchElement{MsgID: m.ID, Topic: m.OriginTopic(), Tag: m.Tag, Keys: m.Keys, Properties: m.Properties,
			QueueID: m.QueueID, QueueOffset: m.QueueOffset, Attempt: ls.Attempt, ContentType: ct,
			BornAt: m.BornAt.UTC().Format(time.RFC3339Nano)}
		el.Body, el.Encoding = broker.EncodeBody(m.Body)
		b, err := json.Marshal(el)
		if err != nil {
			return nil, fmt.Errorf("encode message %s: %w", m.ID, err)
		}
		out[i] = b
	}
	return out, nil
}

// joinElements makes a JSON array of encoded elements.
func joinElements(els [][]byte) []byte {
	n := 2
	for _, e := range els {
		n += len(e) + 1
	}
	b := make([]byte, 0, n)
	b = append(b, '[')
	for i, e := range els {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, e...)
	}
	return append(b, ']')
}

// chunkEnd is where the request that starts at els[start] ends: as many
// elements as fit in MaxBatchBody, and at least one.
func chunkEnd(els [][]byte, start int) int {
	size := 2 + len(els[start])
	end := start + 1
	for end < len(els) && size+1+len(els[end]) <= MaxBatchBody {
		size += 1 + len(els[end])
		end++
	}
	return end
}

// NewBatchID is a batched request's id (webhook-id, and the jti of its
// Postbus-Signature): a fresh one for every request, retries too, since
// a retry may hold other messages. Receivers dedupe by each element's
// msg_id.
func NewBatchID() string { return "batch_" + nuid.Next() }

// errBadPartial is wrapped by ParsePartial's errors.
var errBadPartial = errors.New("invalid 207 answer")

// ParsePartial reads a 207 answer to a batch, {"failed":["msg_id",...]},
// and returns the failed ids, each one of ids (the batch's). An answer
// that is not that object, or names a message not in the batch, is an
// error: the endpoint and postbus disagree about what was sent, so
// nothing of the batch is taken as done.
func ParsePartial(body []byte, ids map[string]bool) (map[string]bool, error) {
	var ans struct {
		Failed *[]string `json:"failed"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&ans); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object with \"failed\": %v", errBadPartial, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: more than one JSON value", errBadPartial)
	}
	if name, dup := broker.DuplicateJSONName(body); dup {
		return nil, fmt.Errorf("%w: %q is given twice in one object", errBadPartial, clip(name))
	}
	if ans.Failed == nil {
		return nil, fmt.Errorf("%w: no \"failed\" list", errBadPartial)
	}
	failed := make(map[string]bool, len(*ans.Failed))
	for _, id := range *ans.Failed {
		if !ids[id] {
			return nil, fmt.Errorf("%w: %q is not a message of the batch", errBadPartial, clip(id))
		}
		failed[id] = true
	}
	return failed, nil
}

// runBatched is run for a subscription with a batch setting: it leases up
// to batch.max_messages messages (and no more than max_in_flight, which
// counts messages, allows), waits at most batch.max_wait after the first
// one for more to arrive, and sends them as one request. Several batches
// may be out at once, within max_in_flight.
//
// For an ordered subscription the engine hands out a queue's messages as
// a run in queue order (LeaseBatch): a batch holds, per queue, a run of
// consecutive messages.
func (l *loop) runBatched(ctx, dctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	eng := l.d.b.Engine()
	size, maxWait := l.sub.Batch.MaxMessages, l.sub.Batch.MaxWait
	// The lease lasts while the batch fills, and then the attempt.
	visibility := l.sub.Timeout + maxWait + leaseMargin
	slots := make(chan struct{}, l.sub.MaxInFlight) // one per message out
	finished := make(chan struct{}, 1)
	var batch []broker.Lease
	var due time.Time         // when the batch's first message has waited maxWait
	var bytesOut atomic.Int64 // bodies leased and not settled
	sizeOf := func(ls []broker.Lease) (n int64) {
		for _, l := range ls {
			n += int64(len(l.Body))
		}
		return n
	}
	send := func() {
		b := batch
		batch = nil
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.deliverBatch(ctx, dctx, b)
			bytesOut.Add(-sizeOf(b))
			for range b {
				<-slots
			}
			select {
			case finished <- struct{}{}:
			default:
			}
		}()
	}
	defer func() {
		// Leased and never sent: back, no attempt counted.
		if len(batch) > 0 {
			l.settleBatch(dctx, batch, releaseAll(len(batch)), nil)
			for range batch {
				<-slots
			}
		}
	}()
	for {
		arrived := l.d.b.Dispatched()
		room := min(size-len(batch), cap(slots)-len(slots))
		if bytesOut.Load() >= maxBytesOut {
			room = 0 // waits for a batch to finish
		}
		more := false
		if room > 0 && ctx.Err() == nil {
			leases, err := eng.LeaseBatch(ctx, l.sub.Group, l.sub.Topic, room, size, visibility)
			switch {
			case err == nil || ctx.Err() != nil:
			case errors.Is(err, broker.ErrSubscriptionInactive):
				l.log.Debug("the subscription is no longer active; waiting to be stopped", slog.Any("err", err))
			default:
				l.log.Error("leasing messages failed", slog.Any("err", err))
				l.d.metrics.leaseFailed(l.sub.ID)
			}
			for range leases {
				slots <- struct{}{} // room was free: never blocks
			}
			bytesOut.Add(sizeOf(leases))
			if len(batch) == 0 && len(leases) > 0 {
				due = time.Now().Add(maxWait)
			}
			batch = append(batch, leases...)
			more = len(leases) == room // maybe more ready now
		}
		if ctx.Err() != nil {
			return
		}
		if len(batch) > 0 && (len(batch) >= size || !time.Now().Before(due) || bytesOut.Load() >= maxBytesOut) {
			send()
			continue
		}
		if more {
			continue
		}
		wait := time.Second
		switch {
		case len(batch) > 0:
			wait = time.Until(due)
		case l.sub.Ordered:
			wait = 250 * time.Millisecond // a queue's retry falls due without a dispatch to wake on
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-arrived:
		case <-finished:
		case <-t.C:
		}
		t.Stop()
	}
}

func releaseAll(n int) []broker.Verdict {
	vs := make([]broker.Verdict, n)
	for i := range vs {
		vs[i] = broker.Release()
	}
	return vs
}

// queueKey is a message's queue, for what an ordered batch's failure
// holds back.
type queueKey struct {
	topic string
	queue int
}

// deliverBatch delivers a batch, as one request or, when its body would
// pass MaxBatchBody, as several one after another, and settles each
// lease. In an ordered subscription nothing after a failed message of
// its queue is acked: those are released, sent or not, and go out again
// after it, in order, the engine counting them as sent with the failed
// one (truncateRun), so their next delivery is their next attempt.
func (l *loop) deliverBatch(ctx, dctx context.Context, leases []broker.Lease) {
	els, err := encodeElements(leases)
	if err != nil {
		// Cannot happen for what the broker stores; were it to, the
		// messages must not vanish: they fail as an attempt would.
		l.log.Error("encoding a batch failed", slog.Any("err", err))
		l.settleChunk(dctx, leases, Result{Outcome: Retry, Err: clip(err.Error())}, nil)
		return
	}
	held := map[queueKey]string{}
	for start := 0; start < len(leases); {
		end := chunkEnd(els, start)
		chunk, body := leases[start:end], els[start:end]
		start = end
		if len(held) > 0 {
			// What follows a failed message of its ordered queue is not
			// sent: back, after it.
			var keep []broker.Lease
			var keepEls [][]byte
			var back []broker.Lease
			for i, ls := range chunk {
				if held[queueKey{ls.Topic, ls.QueueID}] != "" {
					back = append(back, ls)
				} else {
					keep, keepEls = append(keep, ls), append(keepEls, body[i])
				}
			}
			if len(back) > 0 {
				l.settleBatch(dctx, back, releaseAll(len(back)), nil)
			}
			chunk, body = keep, keepEls
			if len(chunk) == 0 {
				continue
			}
		}
		res, sent := l.attemptBatch(ctx, dctx, chunk, joinElements(body))
		if !sent || res.Outcome == Gone || dctx.Err() != nil {
			// Stopped, or the endpoint is gone: the rest is not sent.
			l.settleChunk(dctx, chunk, res, nil)
			if rest := leases[start:]; len(rest) > 0 {
				l.settleBatch(dctx, rest, releaseAll(len(rest)), nil)
			}
			if sent {
				l.logBatch(chunk, res, nil)
			}
			return
		}
		l.settleChunk(dctx, chunk, res, held)
	}
}

// settleChunk settles the leases of one request by its result: a 2xx acks
// them all; a 207 {"failed":[...]} retries those named (each on its own
// attempt count, dead past max_retries) and acks the rest; anything else
// fails them all. A request never sent, cut by the stop or answered 410
// releases them all. held (nil: no ordered queue is followed) gathers the
// ordered queues with a failure.
func (l *loop) settleChunk(dctx context.Context, leases []broker.Lease, res Result, held map[queueKey]string) {
	vs := make([]broker.Verdict, len(leases))
	failed := make([]bool, len(leases))
	counted := make([]settleCount, len(leases))
	var why string // a failure's reason in the attempt log
	switch {
	case res.Outcome == 0: // never sent
		l.settleBatch(dctx, leases, releaseAll(len(leases)), nil)
		return
	case res.Outcome == Gone:
		l.goneOnce.Do(l.gone)
		l.settleBatch(dctx, leases, releaseAll(len(leases)), nil)
		return
	case dctx.Err() != nil:
		// Cut off by the stop: the endpoint may have them; at least once.
		l.settleBatch(dctx, leases, releaseAll(len(leases)), nil)
		return
	case res.Outcome == Delivered && res.Status == http.StatusMultiStatus:
		ids := make(map[string]bool, len(leases))
		for _, ls := range leases {
			ids[ls.ID] = true
		}
		names, err := ParsePartial(res.Response, ids)
		if err != nil {
			// The endpoint and postbus disagree about the batch: none of
			// it is taken as done.
			l.log.Error("a batch's 207 answer is not a list of its failed messages; retrying the whole batch",
				slog.Int("batch", len(leases)), slog.Any("err", err))
			l.d.metrics.badPartial(l.sub.ID)
			why = clip("207 answer: " + err.Error())
			for i := range failed {
				failed[i] = true
			}
			break
		}
		why = "named failed in the 207 answer"
		for i, ls := range leases {
			failed[i] = names[ls.ID]
		}
	case res.Outcome == Delivered:
	default:
		why = res.Err
		for i := range failed {
			failed[i] = true
		}
	}
	// held: ordered queues with a failure, by the failed message: what
	// follows it goes out again after it.
	whys := make([]string, len(leases)) // the trace's error of each; "" delivered
	for i, ls := range leases {
		k := queueKey{ls.Topic, ls.QueueID}
		switch {
		case held[k] != "":
			vs[i] = broker.Release()
			whys[i] = "sent again after " + held[k] + ", which failed before it in its ordered queue"
		case !failed[i]:
			vs[i] = broker.Ack()
		default:
			whys[i] = why
			delay, dead := l.policy.Next(ls.Attempt, res.RetryAfter, rand.Float64)
			if dead {
				vs[i], counted[i] = broker.Dead(why), countDead
			} else {
				vs[i], counted[i] = broker.RetryAt(l.d.cfg.Now().Add(delay)), countRetry
			}
			if l.sub.Ordered && held != nil {
				held[k] = ls.ID
			}
		}
	}
	l.logBatch(leases, res, whys)
	l.settleBatch(dctx, leases, vs, counted)
}

// settleCount is what a settle adds to the metrics.
type settleCount uint8

const (
	countNone settleCount = iota
	countRetry
	countDead
)

// attemptBatch sends one batched request, body, of leases. It reports
// false when it was never sent (the loop stopped while it waited for the
// rate limit, or before the request could start). rate_per_second counts
// requests.
func (l *loop) attemptBatch(ctx, dctx context.Context, leases []broker.Lease, body []byte) (Result, bool) {
	if !l.mayStart(ctx, dctx) {
		return Result{}, false
	}
	now := l.d.cfg.Now()
	res := l.d.cfg.Client.Deliver(dctx, Delivery{
		URL: l.sub.URL, Body: body, MsgID: NewBatchID(), Batch: len(leases),
		Subscription: l.sub.ID, Secrets: l.sub.SigningSecrets(now), Timeout: l.sub.Timeout,
	}, l.d.cfg.Key, now)
	l.d.metrics.batchSent(l.sub.ID, len(leases))
	return res, true
}

// logBatch writes each message's attempt to the trace and the metrics.
// whys nil: every message had res's outcome; else whys[i] is why message
// i failed, "" when it was delivered.
func (l *loop) logBatch(leases []broker.Lease, res Result, whys []string) {
	now := l.d.cfg.Now()
	for i, ls := range leases {
		r := res
		if whys != nil {
			if whys[i] != "" {
				r.Outcome, r.Err = Retry, clip(whys[i])
			} else {
				r.Outcome, r.Err = Delivered, ""
			}
		}
		outcome := map[Outcome]string{Delivered: "delivered", Retry: "retry", Gone: "gone"}[r.Outcome]
		l.d.b.LogAttempt(broker.Attempt{MsgID: ls.ID, Group: l.sub.Group, Subscription: l.sub.ID, Attempt: ls.Attempt,
			At: now, Outcome: outcome, Status: r.Status, Error: r.Err, Latency: r.Latency})
		l.d.metrics.attempted(l.sub.ID, r, ls.StoredAt, now)
	}
}

// settleBatch settles a batch's leases with vs, trying again those whose
// settle failed for a reason other than staleness. counted marks the
// retries and dead letters, which the metrics count (nil: none).
func (l *loop) settleBatch(dctx context.Context, leases []broker.Lease, vs []broker.Verdict, counted []settleCount) {
	eng := l.d.b.Engine()
	rcpts := make([]string, len(leases))
	for i, ls := range leases {
		rcpts[i] = ls.Receipt
	}
	idx := make([]int, len(leases)) // positions in leases of rcpts
	for i := range idx {
		idx[i] = i
	}
	for len(rcpts) > 0 {
		errs := eng.SettleBatch(context.WithoutCancel(dctx), rcpts, vs)
		var againR []string
		var againV []broker.Verdict
		var againI []int
		for j, err := range errs {
			i := idx[j]
			switch {
			case err == nil:
				if counted != nil && counted[i] != countNone {
					l.d.metrics.settled(l.sub.ID, counted[i] == countDead)
				}
			case errors.Is(err, broker.ErrStaleReceipt):
				// Taken back by the engine (an offset reset, the
				// subscription changed, the lease expired, or an earlier
				// message of its ordered queue failed): it goes out again
				// from there.
				l.log.Debug("lease settled after it was taken back", slog.String("msg_id", leases[i].ID))
			default:
				l.log.Error("settling a delivery failed; trying again", slog.String("msg_id", leases[i].ID), slog.Any("err", err))
				againR, againV, againI = append(againR, rcpts[j]), append(againV, vs[j]), append(againI, i)
			}
		}
		rcpts, vs, idx = againR, againV, againI
		if len(rcpts) == 0 {
			return
		}
		select {
		case <-dctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}
