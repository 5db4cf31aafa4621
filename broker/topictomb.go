package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/postbus/postbus/broker/meta"
)

// Topic deletes that reach the brokers that missed them.
//
// In a cluster, a topic's DELETE is made on every holder at once, with a
// version minted by the coordinating broker (as a subscription change's);
// each holder keeps a tombstone of the topic at that version. A holder
// that was down (expired by the name servers) when the topic was deleted
// still holds its copy when it comes back, and would register it again:
// the topic, and its subscriptions, would come back with it. Brokers
// exchange their topic tombstones (httpapi's anti-entropy, with every
// live broker, since the brokers that hold one no longer hold the topic),
// and a broker holding a topic created before a tombstone's version
// deletes its copy. A topic created after the delete (its creation time,
// taken from the same hybrid clock, above the version) is a new topic and
// is kept. Tombstones live for Config.TombstoneTTL, as subscriptions'.
//
// An acknowledged message is never dropped by a tombstone: a broker that
// did not know of a delete (down or hung when it was made) may have taken
// publishes into its copy since; a tombstone older than the newest of
// them is not applied (the copy stays, with an ERROR and
// postbus_topic_tombstones_kept_total), and a delete made again drops
// it. httpapi's fence keeps this rare: a broker takes no write before its
// first exchange of tombstones, nor after being paused until it has
// exchanged them again.
//
// What this assumes: the brokers' clocks agree to within the time between
// a delete and a new topic of the same name created on a broker that had
// not yet heard of the delete; such a new copy would be taken for the old
// one and deleted. A broker that heard of the delete (it took part, or
// got the tombstone) creates later topics above it whatever its clock.

// TopicTombstone is a deleted topic as brokers exchange it.
type TopicTombstone struct {
	Name      string `json:"name"`
	Version   int64  `json:"version"`
	VersionBy string `json:"version_by"`
}

// V is the tombstone's version.
func (t TopicTombstone) V() Version { return Version{At: t.Version, By: t.VersionBy} }

// TopicTombstones returns this broker's topic tombstones that have not
// expired, by name.
func (b *Broker) TopicTombstones(ctx context.Context) ([]TopicTombstone, error) {
	ts, err := b.meta.TopicTombstones(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]TopicTombstone, 0, len(ts))
	for _, t := range ts {
		if !b.tombstoneExpired(t.Version) {
			out = append(out, TopicTombstone{Name: t.Name, Version: t.Version.At, VersionBy: t.Version.By})
		}
	}
	return out, nil
}

// NewerTopicTombstones is those of mine that theirs lacks or holds at a
// lower version: what the other side has to learn from here.
func NewerTopicTombstones(mine, theirs []TopicTombstone) []TopicTombstone {
	by := make(map[string]Version, len(theirs))
	for _, t := range theirs {
		by[t.Name] = t.V()
	}
	var out []TopicTombstone
	for _, t := range mine {
		if o, ok := by[t.Name]; !ok || meta.Wins(t.V(), true, o, true) {
			out = append(out, t)
		}
	}
	return out
}

// TopicTombstoneStats counts what ApplyTopicTombstones did.
type TopicTombstoneStats struct {
	Deleted []string // topics whose copy here was deleted
	Stored  int      // tombstones stored (new here, or a higher version)
	Refused int      // refused as invalid or from the future (each logged at ERROR)
}

// ApplyTopicTombstones takes other brokers' topic tombstones: each is
// kept (the higher version per topic), and a topic held here that was
// created before a tombstone's version is deleted (it was deleted in the
// cluster while this broker was away).
func (b *Broker) ApplyTopicTombstones(ctx context.Context, ts []TopicTombstone) (TopicTombstoneStats, error) {
	var st TopicTombstoneStats
	for _, t := range ts {
		if b.tombstoneExpired(t.V()) {
			continue
		}
		if err := ValidateTopicName(t.Name); err != nil || strings.HasPrefix(t.Name, "%") || t.Version <= 0 {
			st.Refused++
			b.metrics.syncRefused.WithLabelValues(refusedInvalid).Inc()
			b.logger.Error("topic tombstone from another broker refused", slog.String("topic", t.Name),
				slog.String("version", t.V().String()), slog.Any("err", cmpErr(err, "not a user topic with a version")))
			continue
		}
		if err := b.CheckVersion(t.V()); err != nil {
			st.Refused++
			continue
		}
		stored, err := b.meta.PutTopicTombstone(ctx, meta.TopicTombstone{Name: t.Name, Version: t.V()})
		if err != nil {
			return st, err
		}
		if stored {
			st.Stored++
		}
		deleted, err := b.deleteOlderThan(ctx, t)
		if err != nil {
			return st, err
		}
		if deleted {
			st.Deleted = append(st.Deleted, t.Name)
		}
	}
	return st, nil
}

// deleteOlderThan deletes this broker's copy of t's topic if it was
// created before t's version.
func (b *Broker) deleteOlderThan(ctx context.Context, t TopicTombstone) (bool, error) {
	// One at a time (tombstones arrive from several brokers at once), so
	// that a topic is deleted, and counted, once.
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	b.topicsMu.RLock()
	ts := b.topics[t.Name]
	b.topicsMu.RUnlock()
	if ts == nil {
		return false, nil
	}
	created := ts.info.Load().CreatedAt
	if created.UnixMilli() >= t.Version {
		return false, nil // a topic of the name created since: kept
	}
	err := b.DeleteTopic(WithVersion(context.WithValue(ctx, keepNewerKey{}, t.Version), t.V()), t.Name)
	if errors.Is(err, ErrTopicNotFound) {
		return false, nil // deleted meanwhile
	}
	if kept, ok := errors.AsType[*keptNewerError](err); ok {
		if b.keptNewer[t.Name] != t.Version {
			if b.keptNewer == nil {
				b.keptNewer = map[string]int64{}
			}
			b.keptNewer[t.Name] = t.Version
			b.metrics.topicTombsKept.Inc()
			b.logger.Error("topic deleted in the cluster while this broker was away, but this broker acknowledged messages in its copy after the delete: the copy is kept, so that they are not lost; delete the topic again to drop it",
				slog.String("topic", t.Name), slog.String("version", t.V().String()), slog.Time("created", created),
				slog.Time("newest_publish", time.UnixMilli(kept.newest).UTC()))
		}
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("delete topic %q by another broker's tombstone: %w", t.Name, err)
	}
	b.metrics.topicTombsApplied.Inc()
	b.logger.Warn("topic deleted by another broker's tombstone: it was deleted in the cluster while this broker was away",
		slog.String("topic", t.Name), slog.String("version", t.V().String()), slog.Time("created", created))
	return true, nil
}

// keepNewerKey marks a DeleteTopic made for another broker's tombstone,
// with the tombstone's version: the delete is not made when the copy
// holds a producer's message stored at or after it (keptNewerError).
type keepNewerKey struct{}

// keptNewerError is DeleteTopic's refusal to apply a tombstone to a copy
// that took publishes after the delete it stands for: this broker did
// not know of the delete (it was down, or hung, when it was made) and
// acknowledged them, and an acknowledged message is never dropped.
type keptNewerError struct {
	newest int64 // the newest such publish, Unix ms
}

func (e *keptNewerError) Error() string {
	return fmt.Sprintf("the topic took a publish at %s, after the delete", time.UnixMilli(e.newest).UTC().Format(time.RFC3339Nano))
}

// newestPublish is when a producer's message was last stored in ts's
// topic, Unix ms, as far as can be told: this process's last publish, or
// the newest message at the end of each queue (what a restart left).
// A delayed message still waiting for its time is counted while this
// process runs, not after a restart. Called with appendMu held and
// dispatch caught up with the log's end.
func (b *Broker) newestPublish(ts *topicState) int64 {
	newest := ts.lastPublish
	for q := range ts.info.Load().Queues {
		lo, hi := b.cq.Bounds(ts.name, q)
		if hi <= lo {
			continue
		}
		es, err := b.cq.Read(ts.name, q, hi-1, 1, nil)
		if err != nil || len(es) == 0 || es[0].Size == holeSize {
			continue
		}
		if m, err := b.readQueued(ts.name, q, hi-1, es[0].Offset); err == nil {
			newest = max(newest, m.StoredAt.UnixMilli())
		}
	}
	return newest
}

// ApplyOwnTopicTombstones deletes the topics held here that one of this
// broker's own tombstones says were deleted: a crash between storing a
// delete's tombstone and deleting the topic leaves both.
func (b *Broker) ApplyOwnTopicTombstones(ctx context.Context) error {
	ts, err := b.TopicTombstones(ctx)
	if err != nil {
		return err
	}
	for _, t := range ts {
		if _, err := b.deleteOlderThan(ctx, t); err != nil {
			return err
		}
	}
	return nil
}

// storeTopicTombstone keeps the tombstone of a topic this broker deletes
// in a cluster, at the delete's version, before the topic goes.
func (b *Broker) storeTopicTombstone(ctx context.Context, name string) error {
	if b.nodeName() == "" || strings.HasPrefix(name, "%") {
		return nil // standalone: nobody to tell
	}
	v := b.versionFor(ctx)
	if _, err := b.meta.PutTopicTombstone(ctx, meta.TopicTombstone{Name: name, Version: v}); err != nil {
		return fmt.Errorf("store the tombstone of topic %q: %w", name, err)
	}
	return nil
}

// creationTime is when a topic created now is created: from the hybrid
// clock, so above every version this broker has seen (a topic tombstone
// among them), whatever the wall clock says.
func (b *Broker) creationTime() time.Time {
	return time.UnixMilli(b.clock.next(b.now())).UTC()
}

func cmpErr(err error, otherwise string) any {
	if err != nil {
		return err
	}
	return otherwise
}
