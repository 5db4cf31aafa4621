package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/postbus/postbus/broker/meta"
)

// Subscriptions with one truth across brokers.
//
// Every holder of a topic keeps its own copy of each of the topic's
// subscriptions. Every change of a subscription (create, update, pause,
// resume, rotate, disable, delete) carries a Version, minted by the broker
// that coordinates it and given to every copy; a delete leaves a
// tombstone at its version. Brokers exchange their records (httpapi's
// anti-entropy) and keep, per id, the record that wins (meta.Wins): the
// highest version; at equal version a tombstone over a live record; then
// the greater broker name. Tombstones live for Config.TombstoneTTL
// (counted from their version), longer than any broker expiry: a broker
// away for longer may bring back a subscription deleted meanwhile.

// Version orders the changes of one subscription across brokers (see
// meta.Version): a time in Unix milliseconds from the minting broker's
// hybrid logical clock, and that broker's name.
type Version = meta.Version

// ParseVersion reads a Version's String form, At@By.
func ParseVersion(s string) (Version, error) { return meta.ParseVersion(s) }

// MaxVersionSkew is how far ahead of this broker's clock a version from
// another broker may be: further, it is refused (a clock far off, or a
// forged record), since it would win over every change for that long.
const MaxVersionSkew = 10 * time.Minute

// versionClock mints versions: a hybrid logical clock in milliseconds,
// never below a version seen, so a change made after another was seen has
// a higher version whatever the wall clocks say.
type versionClock struct {
	last atomic.Int64
}

func (c *versionClock) next(now time.Time) int64 {
	for {
		last := c.last.Load()
		v := max(now.UnixMilli(), last+1)
		if c.last.CompareAndSwap(last, v) {
			return v
		}
	}
}

func (c *versionClock) observe(v int64) {
	for {
		last := c.last.Load()
		if v <= last || c.last.CompareAndSwap(last, v) {
			return
		}
	}
}

// SetName sets the name this broker gives the versions it mints (its name
// in a cluster); standalone it is empty.
func (b *Broker) SetName(name string) { b.name.Store(&name) }

func (b *Broker) nodeName() string {
	if p := b.name.Load(); p != nil {
		return *p
	}
	return ""
}

// NextVersion mints the version of a subscription change coordinated by
// this broker.
func (b *Broker) NextVersion() Version {
	return Version{At: b.clock.next(b.now()), By: b.nodeName()}
}

// CheckVersion refuses a version from elsewhere that is too far ahead of
// this broker's clock (MaxVersionSkew), and lets the clock catch up with
// one that is not.
func (b *Broker) CheckVersion(v Version) error {
	if limit := b.now().Add(MaxVersionSkew).UnixMilli(); v.At > limit {
		b.metrics.syncRefused.WithLabelValues(refusedFuture).Inc()
		b.logger.Error("subscription version from the future refused: a broker's clock is off by more than the allowed skew, or the version is forged",
			slog.String("version", v.String()), slog.Duration("max_skew", MaxVersionSkew))
		return errf(CodeInvalidSubscription, "version", "version %s is more than %s ahead of this broker's clock", v, MaxVersionSkew)
	}
	b.clock.observe(v.At)
	return nil
}

type versionKey struct{}

// WithVersion returns ctx carrying the version a cluster's coordinator
// minted for a subscription change, for the change to store on this
// broker's copy; without one, the broker mints its own.
func WithVersion(ctx context.Context, v Version) context.Context {
	return context.WithValue(ctx, versionKey{}, v)
}

func (b *Broker) versionFor(ctx context.Context) Version {
	if v, ok := ctx.Value(versionKey{}).(Version); ok && !v.IsZero() {
		b.clock.observe(v.At) // a later change here mints above it
		return v
	}
	return b.NextVersion()
}

// SubscriptionRecord is a subscription as brokers exchange it: as stored,
// secrets included, with its version; or, Deleted, its tombstone (ID,
// Group, Topic and version only).
type SubscriptionRecord struct {
	ID        string          `json:"id"`
	Group     string          `json:"group"`
	Topic     string          `json:"topic"`
	Version   int64           `json:"version"`
	VersionBy string          `json:"version_by"`
	Deleted   bool            `json:"deleted,omitempty"`
	URL       string          `json:"url,omitempty"`
	Filter    string          `json:"filter,omitempty"`
	Ordered   bool            `json:"ordered,omitempty"`
	Config    json.RawMessage `json:"config,omitempty"`
	Secret    string          `json:"secret,omitempty"`
	State     string          `json:"state,omitempty"`
	CreatedAt int64           `json:"created_at,omitempty"` // Unix ms
	UpdatedAt int64           `json:"updated_at,omitempty"`
}

// V is the record's version.
func (r SubscriptionRecord) V() Version { return Version{At: r.Version, By: r.VersionBy} }

func recordOf(m meta.Subscription) SubscriptionRecord {
	return SubscriptionRecord{ID: m.ID, Group: m.Group, Topic: m.Topic, Version: m.Version.At, VersionBy: m.Version.By,
		URL: m.URL, Filter: m.Filter, Ordered: m.Ordered, Config: json.RawMessage(m.Config), Secret: m.Secret, State: m.State,
		CreatedAt: m.CreatedAt.UnixMilli(), UpdatedAt: m.UpdatedAt.UnixMilli()}
}

func (r SubscriptionRecord) toMeta() meta.Subscription {
	m := meta.Subscription{ID: r.ID, Group: r.Group, Topic: r.Topic, URL: r.URL, Filter: r.Filter, Ordered: r.Ordered,
		Config: string(r.Config), Secret: r.Secret, State: r.State, Version: r.V()}
	if r.CreatedAt > 0 {
		m.CreatedAt = time.UnixMilli(r.CreatedAt).UTC()
	}
	if r.UpdatedAt > 0 {
		m.UpdatedAt = time.UnixMilli(r.UpdatedAt).UTC()
	}
	return m
}

// tombstoneExpired reports whether a tombstone at v has outlived the
// tombstone lifetime: it is no longer kept, sent or taken.
func (b *Broker) tombstoneExpired(v Version) bool {
	return v.At < b.now().Add(-b.cfg.TombstoneTTL).UnixMilli()
}

// SubscriptionRecords returns, for each of topics, its subscriptions'
// records and its tombstones (unexpired), by id.
func (b *Broker) SubscriptionRecords(ctx context.Context, topics []string) (map[string][]SubscriptionRecord, error) {
	want := make(map[string]bool, len(topics))
	out := make(map[string][]SubscriptionRecord, len(topics))
	for _, t := range topics {
		want[t] = true
		out[t] = []SubscriptionRecord{}
	}
	subs, err := b.meta.Subscriptions(ctx)
	if err != nil {
		return nil, err
	}
	for _, m := range subs {
		if want[m.Topic] {
			out[m.Topic] = append(out[m.Topic], recordOf(m))
		}
	}
	tombs, err := b.meta.SubscriptionTombstones(ctx)
	if err != nil {
		return nil, err
	}
	for _, t := range tombs {
		if want[t.Topic] && !b.tombstoneExpired(t.Version) {
			out[t.Topic] = append(out[t.Topic], SubscriptionRecord{ID: t.ID, Group: t.Group, Topic: t.Topic,
				Version: t.Version.At, VersionBy: t.Version.By, Deleted: true})
		}
	}
	return out, nil
}

// Newer reports whether mine holds a record that theirs lacks or that
// wins over theirs: the other side has something to learn from here.
func Newer(mine, theirs []SubscriptionRecord) bool {
	by := make(map[string]SubscriptionRecord, len(theirs))
	for _, r := range theirs {
		by[r.ID] = r
	}
	for _, r := range mine {
		o, ok := by[r.ID]
		if !ok || meta.Wins(r.V(), r.Deleted, o.V(), o.Deleted) {
			return true
		}
	}
	return false
}

// NewerTombstones is the tombstones of mine that theirs lacks or that win
// over theirs: deletes the other side missed. Unlike live records they
// carry no secret, so they may travel in an answer.
func NewerTombstones(mine, theirs []SubscriptionRecord) []SubscriptionRecord {
	by := make(map[string]SubscriptionRecord, len(theirs))
	for _, r := range theirs {
		by[r.ID] = r
	}
	var out []SubscriptionRecord
	for _, r := range mine {
		if !r.Deleted {
			continue
		}
		if o, ok := by[r.ID]; !ok || meta.Wins(r.V(), r.Deleted, o.V(), o.Deleted) {
			out = append(out, r)
		}
	}
	return out
}

// SyncStats counts what ApplySubscriptionRecords did.
type SyncStats struct {
	Applied    int // live records that created or changed a subscription
	Tombstones int // tombstones that deleted a subscription or were stored
	Stale      int // records that lost to what was stored (or were it)
	Skipped    int // records of topics this broker does not hold, or expired tombstones
	Refused    int // records refused as invalid (each logged at ERROR)
}

// Why a record from another broker was refused (the reason label of
// postbus_subscription_records_refused_total).
const (
	refusedFuture  = "future_version" // too far ahead of this broker's clock
	refusedInvalid = "invalid"        // a setting, id or secret that does not pass validation
)

// ApplySubscriptionRecords merges other brokers' records of subscriptions
// into this broker's: per id, the record that wins is kept (see the
// comment at the top of this file). Records of topics this broker does
// not hold are skipped. A subscription created here starts where the
// record says, "latest" meaning its creation time (the messages stored
// here since it was created are delivered), and the delivery engine
// starts, changes, pauses or stops as the records say.
func (b *Broker) ApplySubscriptionRecords(ctx context.Context, recs []SubscriptionRecord) (SyncStats, error) {
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	var st SyncStats
	changed := false
	defer func() {
		if changed {
			b.subsSig.fire()
		}
	}()
	for _, r := range recs {
		ts, err := b.topicState(r.Topic)
		if err != nil {
			st.Skipped++
			continue
		}
		if r.Deleted && b.tombstoneExpired(r.V()) {
			st.Skipped++
			continue
		}
		if err := b.CheckVersion(r.V()); err != nil {
			st.Refused++
			continue
		}
		if err := b.checkRecord(r); err != nil {
			st.Refused++
			b.metrics.syncRefused.WithLabelValues(refusedInvalid).Inc()
			b.logger.Error("subscription record from another broker refused", slog.String("id", r.ID), slog.String("topic", r.Topic),
				slog.String("version", r.V().String()), slog.Any("err", err))
			continue
		}
		m := r.toMeta()
		var sub Subscription
		if !r.Deleted {
			if sub, err = subscriptionFromMeta(m); err != nil {
				return st, err // checkRecord read it: unreachable
			}
			// A subscription new here is positioned first, so that its
			// consumer never starts from nowhere.
			if _, err := b.meta.Subscription(ctx, r.ID); errors.Is(err, meta.ErrNotFound) {
				from := sub.StartFrom
				if from == "latest" {
					from = m.CreatedAt.Format(time.RFC3339Nano)
				}
				if err := b.positionGroup(ctx, r.Group, ts, from); err != nil {
					return st, fmt.Errorf("position group %s on %s for subscription %s: %w", r.Group, r.Topic, r.ID, err)
				}
			}
		}
		res, err := b.meta.ApplySubscription(ctx, m, r.Deleted)
		if err != nil {
			return st, err
		}
		if !res.Applied {
			st.Stale++
			continue
		}
		changed = true
		if res.Displaced != nil {
			old, err := subscriptionFromMeta(*res.Displaced)
			if err == nil {
				b.eng.subscriptionChanged(ctx, old, true)
			}
			b.logger.Warn("subscription replaced by another of the same group and topic with a later version",
				slog.String("id", res.Displaced.ID), slog.String("by", r.ID), slog.String("group", r.Group), slog.String("topic", r.Topic))
		}
		switch {
		case r.Deleted:
			st.Tombstones++
			b.metrics.syncApplied.WithLabelValues("tombstone").Inc()
			if res.Before != nil {
				old, err := subscriptionFromMeta(*res.Before)
				if err == nil {
					b.eng.subscriptionChanged(ctx, old, true)
				}
				b.logger.Info("subscription deleted by another broker's record", slog.String("id", r.ID),
					slog.String("topic", r.Topic), slog.String("version", r.V().String()))
			}
		case res.Before != nil && res.Displaced == nil:
			st.Applied++
			b.metrics.syncApplied.WithLabelValues("live").Inc()
			b.eng.subscriptionChanged(ctx, sub, false)
		default:
			st.Applied++
			b.metrics.syncApplied.WithLabelValues("live").Inc()
			b.eng.drop(func(g, t string) bool { return g == sub.Group && t == sub.Topic })
			b.logger.Info("subscription created from another broker's record", slog.String("id", r.ID), slog.String("group", r.Group),
				slog.String("topic", r.Topic), slog.String("version", r.V().String()))
		}
	}
	return st, nil
}

// checkRecord validates another broker's record as a create here would.
func (b *Broker) checkRecord(r SubscriptionRecord) error {
	if !subscriptionIDRE.MatchString(r.ID) {
		return fmt.Errorf("%q is not a subscription id", r.ID)
	}
	if err := ValidateGroupName(r.Group); err != nil {
		return err
	}
	if r.Version <= 0 {
		return fmt.Errorf("version %s: a record carries a version", r.V())
	}
	if r.Deleted {
		return nil
	}
	s, err := subscriptionFromMeta(r.toMeta())
	if err != nil {
		return err
	}
	switch s.State {
	case StateActive, StatePaused, StateDisabled:
	default:
		return fmt.Errorf("state %q", s.State)
	}
	if s.URL != "" {
		if err := ValidateSecret(s.Secret); err != nil {
			return err
		}
	} else if s.Secret != "" {
		return errors.New("a pull subscription with a secret")
	}
	return s.validate()
}

// purgeTombstones drops the tombstones older than the tombstone lifetime.
func (b *Broker) purgeTombstones(ctx context.Context) {
	n, err := b.meta.PurgeSubscriptionTombstones(ctx, b.now().Add(-b.cfg.TombstoneTTL).UnixMilli())
	if err != nil {
		b.logger.Error("purging subscription tombstones failed", slog.Any("err", err))
		return
	}
	if n > 0 {
		b.logger.Info("subscription tombstones expired", slog.Int64("purged", n), slog.Duration("ttl", b.cfg.TombstoneTTL))
	}
	n, err = b.meta.PurgeTopicTombstones(ctx, b.now().Add(-b.cfg.TombstoneTTL).UnixMilli())
	if err != nil {
		b.logger.Error("purging topic tombstones failed", slog.Any("err", err))
		return
	}
	if n > 0 {
		b.logger.Info("topic tombstones expired", slog.Int64("purged", n), slog.Duration("ttl", b.cfg.TombstoneTTL))
	}
}
