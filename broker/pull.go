package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Pull (DESIGN §4): consumers that cannot take a webhook ask for messages
// and ack them, SQS-style, with RocketMQ's consumer-group semantics.
//
// Pull, Ack and Nack are thin over the consumer engine (engine.go), whose
// pull leases are durable: handing out a message stores, in the same
// append, a delayed copy of it in the group's retry topic, due when its
// visibility runs out, with the next attempt number: the same timer store
// as push retries. The receipt names that copy. Ack cancels its timer, so
// the message never comes back; nack stores the replacement copies and then
// swaps the timers in one transaction; if neither comes, the timer fires
// and the copy is handed out again as the next attempt, under a new
// receipt (the trace records the attempt before as expired). An attempt
// past max_retries goes to the group's dead-letter queue rather than out.
// The copy's timer and the group's offset past the message are stored in
// one transaction once the copy is in the log, so a restart (even SIGKILL)
// loses no unacked or nacked message, brings back no acked one, and never
// hands a message out both from its queue and from its copy.

// Pull limits.
const (
	MaxPullMessages = 256
	MaxPullWait     = 30 * time.Second
)

// pullGroupFor returns the group's pull state on a topic, creating the
// pull subscription on a first pull where groups auto-create (from the
// earliest retained message, so publish-then-pull just works).
func (b *Broker) pullGroupFor(ctx context.Context, group, topic string) (*consumer, error) {
	return b.pullGroup(ctx, group, topic, true)
}

// errNoPullGroup is pullGroup's answer, when it may not create one, for a
// group and topic with no pull subscription (none, or a push one).
var errNoPullGroup = errors.New("no pull subscription")

// pullGroup returns the group's pull state on a topic; with create, as a
// first pull does, it may create the pull subscription. Settling and
// leasing never create one: a receipt of a deleted subscription is stale,
// not a reason to subscribe its group again.
func (b *Broker) pullGroup(ctx context.Context, group, topic string, create bool) (*consumer, error) {
	b.eng.mu.Lock()
	c := b.eng.cons[[2]string{group, topic}]
	b.eng.mu.Unlock()
	if c != nil && !c.push {
		return c, nil
	}
	subs, err := b.Subscriptions(ctx)
	if err != nil {
		return nil, err
	}
	var sub *Subscription
	for i := range subs {
		if subs[i].Group == group && subs[i].Topic == topic {
			sub = &subs[i]
		}
	}
	switch {
	case !create && (sub == nil || sub.URL != ""):
		return nil, errNoPullGroup
	case sub != nil && sub.URL != "":
		return nil, errf(CodeInvalidSubscription, "group", "group %q receives topic %q by push (subscription %s); pull with another group", group, topic, sub.ID)
	case sub != nil && sub.State != StateActive:
		return nil, errf(CodeInvalidSubscription, "group", "the pull subscription of group %q on %q is %s; resume it first", group, topic, sub.State)
	case sub == nil:
		if !b.cfg.AutoCreateGroups {
			return nil, &Error{Code: CodeSubscriptionNotFound, Field: "group", Err: ErrSubscriptionNotFound,
				Detail: fmt.Sprintf("group %q has no subscription on topic %q and groups are not created on first use here (--auto-create-groups); create one with POST /v1/subscriptions (without a url)", group, topic)}
		}
		// The id is made from group and topic, so that the brokers of a
		// cluster, each creating its own on a first pull, agree on it.
		created, err := b.CreateSubscription(ctx, Subscription{ID: autoPullID(group, topic), Group: group, Topic: topic, StartFrom: "earliest", MaxRetries: -1})
		if err != nil && CodeOf(err) != CodeSubscriptionExists {
			return nil, err
		}
		if err != nil {
			// A concurrent first pull made it, or the id is another
			// group's or topic's: only the first is worth looking again
			// (the second looked again for ever, overflowing the stack).
			if other, oerr := b.Subscription(ctx, autoPullID(group, topic)); oerr != nil || other.Group != group || other.Topic != topic {
				return nil, errf(CodeSubscriptionExists, "group", "group %q cannot be subscribed to topic %q on its first pull: the subscription id %s is taken; create its subscription with POST /v1/subscriptions",
					group, topic, autoPullID(group, topic))
			}
			return b.pullGroupFor(ctx, group, topic)
		}
		sub = &created
	}
	return b.eng.install(ctx, *sub, false)
}

// Pull hands out up to max messages of topic to group, waiting up to wait
// for the first to arrive. Each stays invisible to the group for
// visibility (0: the subscription's) unless acked. A poll held when its
// subscription is paused answers what a pull then gets
// (CodeInvalidSubscription); one whose subscription is deleted answers no
// messages, and does not create it again.
func (b *Broker) Pull(ctx context.Context, group, topic string, limit int, wait, visibility time.Duration) ([]Pulled, error) {
	if err := checkPull(group, topic, limit, wait, visibility); err != nil {
		return nil, err
	}
	got, _, err := b.PullNow(ctx, group, topic, limit, visibility, false, nil)
	if len(got) > 0 || err != nil || wait == 0 {
		return got, err
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	b.polls.add(group, 1)
	defer b.polls.add(group, -1)
	for {
		woken := make(chan struct{})
		got, w, err := b.PullNow(ctx, group, topic, limit, visibility, true, func() { close(woken) })
		if len(got) > 0 || err != nil || w == nil {
			return got, err
		}
		select {
		case <-woken:
			continue
		case <-deadline.C:
		case <-ctx.Done():
		}
		w.Cancel()
		return nil, nil
	}
}

// checkPull refuses what Pull refuses before looking at anything.
func checkPull(group, topic string, limit int, wait, visibility time.Duration) error {
	if err := ValidateGroupName(group); err != nil {
		return err
	}
	if err := ValidateTopicName(topic); err != nil {
		return err
	}
	switch {
	case limit < 1 || limit > MaxPullMessages:
		return errf(CodeInvalidPull, "max", "max %d must be 1-%d", limit, MaxPullMessages)
	case wait < 0 || wait > MaxPullWait:
		return errf(CodeInvalidPull, "wait", "wait %s must be 0-%s", wait, MaxPullWait)
	case visibility != 0 && (visibility < time.Second || visibility > MaxVisibility):
		return errf(CodeInvalidPull, "visibility", "visibility %s must be between 1s and %s", visibility, MaxVisibility)
	}
	return nil
}

// PullNow is one look of a pull: it hands out what is ready now, waiting
// for nothing. With fire, when nothing is ready, it returns an armed
// waiter (pollwake.go) whose fire runs once, on the waker's goroutine (it
// must not block), when something may be: the caller then looks again,
// with a new fire, or answers at its deadline after Cancel. Armed before
// the look, the waiter misses no wake-up.
//
// held says the poll was held already: it no longer creates the group's
// subscription; when the subscription is gone (deleted meanwhile) nothing
// is handed out and no waiter is armed, and the poll is over, answered
// with no messages. A poll held when its subscription is paused gets the
// error a new pull would.
func (b *Broker) PullNow(ctx context.Context, group, topic string, limit int, visibility time.Duration, held bool, fire func()) ([]Pulled, *PollWaiter, error) {
	if err := checkPull(group, topic, limit, 0, visibility); err != nil {
		return nil, nil, err
	}
	if _, err := b.topicState(topic); err != nil {
		if !b.cfg.AutoCreateTopics {
			return nil, nil, err
		}
	}
	c, err := b.pullGroup(ctx, group, topic, !held)
	if errors.Is(err, errNoPullGroup) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	// What was acknowledged before this pull is pullable by it.
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		return nil, nil, err
	}
	var w *PollWaiter
	for {
		c.mu.Lock()
		sub := c.sub
		c.mu.Unlock()
		vis := visibility
		if vis == 0 {
			vis = sub.Visibility
		}
		if fire != nil && w == nil {
			w = b.arm(group, topic, sub.Ordered, fire)
		}
		got, err := b.eng.lease(ctx, c, limit, 1, vis)
		if errors.Is(err, errConsumerDropped) {
			// Dropped (a subscription made, changed, paused or deleted,
			// an offset reset) since this look took it: lease from the
			// consumer built now, which reads the offsets the dropped one
			// can no longer move. The subscription is not made again.
			if c, err = b.pullGroup(ctx, group, topic, false); err != nil {
				if w != nil {
					w.Cancel()
				}
				if errors.Is(err, errNoPullGroup) {
					return nil, nil, nil
				}
				return nil, nil, err
			}
			continue
		}
		if len(got) > 0 || err != nil || w == nil {
			if w != nil {
				w.Cancel()
			}
			return got, nil, err
		}
		return nil, w, nil
	}
}

// heldPolls counts the long polls waiting for messages, by group, for the
// groups API and postbus_pull_held_polls.
type heldPolls struct {
	mu      sync.Mutex
	byGroup map[string]int // guarded by mu
	total   int            // guarded by mu
}

func (h *heldPolls) add(group string, n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byGroup == nil {
		h.byGroup = map[string]int{}
	}
	h.byGroup[group] += n
	h.total += n
	if h.byGroup[group] == 0 {
		delete(h.byGroup, group)
	}
}

// HoldPoll counts a long poll of group held elsewhere than in Pull (a
// parked one, PullNow) in held_polls, until release runs (once).
func (b *Broker) HoldPoll(group string) (release func()) {
	b.polls.add(group, 1)
	var once sync.Once
	return func() { once.Do(func() { b.polls.add(group, -1) }) }
}

// of returns how many long polls of group are held, and of all groups.
func (h *heldPolls) of(group string) (int, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.byGroup[group], h.total
}

// AckResult is why a receipt in an ack or nack was refused.
type AckResult struct {
	Index  int
	Code   Code
	Detail string
}

// Ack marks pulled messages done for the group, for good. It is AckEach
// for callers that want one error: a stale receipt fails it (the others
// are acked all the same).
func (b *Broker) Ack(ctx context.Context, group string, receipts []string) error {
	res, err := b.AckEach(ctx, group, receipts)
	return eachErr(res, err)
}

// eachErr is the one error of a per-receipt answer: the first receipt not
// settled.
func eachErr(res []ReceiptResult, err error) error {
	if err != nil {
		return err
	}
	for i, r := range res {
		switch r.Status {
		case ReceiptStale:
			return staleErr(fmt.Sprintf("receipts[%d]", i))
		case ReceiptInvalid:
			return errf(CodeInvalidReceipt, fmt.Sprintf("receipts[%d]", i), "a push delivery's receipt is settled alone")
		}
	}
	return nil
}

// AckEach acks pulled messages for the group, each receipt on its own:
// a request with a receipt this bus did not issue to the group fails
// whole, changing nothing; otherwise every receipt is answered, in order
// (ReceiptStatus). Acking an acked receipt again is ReceiptAcked.
func (b *Broker) AckEach(ctx context.Context, group string, receipts []string) ([]ReceiptResult, error) {
	res, err := b.eng.settleEach(ctx, group, receipts, Ack())
	if err != nil {
		return nil, err
	}
	b.logSettled(group, settledNow(res), "acked")
	return res, nil
}

// NackEach gives pulled messages back to the group, each receipt on its
// own, to be handed out again (as the next attempt) after delay; past
// max_retries, to the dead-letter queue. Answered as AckEach.
func (b *Broker) NackEach(ctx context.Context, group string, receipts []string, delay time.Duration) ([]ReceiptResult, error) {
	if delay < 0 || delay > MaxRetryDelay {
		return nil, errf(CodeInvalidNack, "delay", "delay %s must be 0-%s", delay, MaxRetryDelay)
	}
	res, err := b.eng.settleEach(ctx, group, receipts, RetryAt(b.now().Add(delay)))
	if err != nil {
		return nil, err
	}
	b.logSettled(group, settledNow(res), "nacked")
	return res, nil
}

// ChangeVisibility makes pulled messages invisible to the group for
// visibility from now (0-MaxVisibility; 0 hands them out again at once),
// as SQS's ChangeMessageVisibility, each receipt on its own: the receipts
// stay good, and the new end of visibility is stored as the old one was,
// so it holds across a restart. A receipt whose visibility ran out is
// stale: its message may be out again already.
func (b *Broker) ChangeVisibility(ctx context.Context, group string, receipts []string, visibility time.Duration) ([]ReceiptResult, error) {
	if visibility < 0 || visibility > MaxVisibility {
		return nil, errf(CodeInvalidVisibility, "visibility", "visibility %s must be 0-%s", visibility, MaxVisibility)
	}
	return b.eng.settleEach(ctx, group, receipts, visibleAt(b.now().Add(visibility)))
}

// settledNow are the receipts a request settled, for the trace (a retry
// was recorded by the request it retries).
func settledNow(res []ReceiptResult) []string {
	var out []string
	for _, r := range res {
		if r.now && (r.Status == ReceiptAcked || r.Status == ReceiptNacked) {
			out = append(out, r.Receipt)
		}
	}
	return out
}

// logSettled records acks and nacks in the trace.
func (b *Broker) logSettled(group string, receipts []string, outcome string) {
	now := b.now()
	for _, s := range receipts {
		if r, err := decodeReceipt(s, b.receiptKey, b.nodeName()); err == nil {
			b.LogAttempt(Attempt{MsgID: r.MsgID, Group: group, Subscription: b.pullSubscriptionID(group, r.Topic), Attempt: max(r.Attempt, 1), At: now, Outcome: outcome})
		}
	}
}

// pullSubscriptionID names the pull subscription a receipt came from, for
// the attempt log.
// autoPullID is the id of the pull subscription a first pull creates: 24
// hex digits of a SHA-256 of group and topic.
func autoPullID(group, topic string) string {
	sum := sha256.Sum256([]byte(group + "\x00" + topic))
	return hex.EncodeToString(sum[:12])
}

func (b *Broker) pullSubscriptionID(group, topic string) string {
	b.eng.mu.Lock()
	c := b.eng.cons[[2]string{group, topic}]
	b.eng.mu.Unlock()
	if c != nil {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.sub.ID
	}
	// Dropped meanwhile (an offset reset, a change): ask the metadata.
	if subs, err := b.Subscriptions(context.Background()); err == nil {
		for _, s := range subs {
			if s.Group == group && s.Topic == topic {
				return s.ID
			}
		}
	}
	return "pull:" + topic
}

// Nack is NackEach for callers that want one error, as Ack is AckEach.
func (b *Broker) Nack(ctx context.Context, group string, receipts []string, delay time.Duration) error {
	res, err := b.NackEach(ctx, group, receipts, delay)
	return eachErr(res, err)
}

// ReadQueueWait is ReadQueue that waits up to wait for a message to
// arrive, for consumers that keep their own position.
func (b *Broker) ReadQueueWait(ctx context.Context, topic string, queue int, from int64, limit int, wait time.Duration) ([]*Message, int64, error) {
	n, err := b.Queues(topic)
	if err != nil {
		return nil, 0, err
	}
	if queue < 0 || queue >= n {
		return nil, 0, errf(CodeQueueNotFound, "queue", "topic %q has queues 0-%d", topic, n-1)
	}
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		return nil, 0, err
	}
	msgs, next, err := b.ReadQueue(topic, queue, from, limit, Filter{all: true})
	if len(msgs) > 0 || err != nil || wait == 0 {
		return msgs, next, err
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		woken := make(chan struct{})
		w := b.arm("", topic, false, func() { close(woken) })
		msgs, next, err := b.ReadQueue(topic, queue, from, limit, Filter{all: true})
		if len(msgs) > 0 || err != nil {
			w.Cancel()
			return msgs, next, err
		}
		select {
		case <-woken:
			continue
		case <-deadline.C:
			w.Cancel()
			return msgs, next, nil
		case <-ctx.Done():
			w.Cancel()
			return nil, from, nil
		}
	}
}
