package broker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/postbus/postbus/broker/commitlog"
	"github.com/postbus/postbus/broker/meta"
)

// ErrMetadataLost: the commitlog holds messages of topics that meta.db does
// not know (it is missing, was recreated, or is older than the log). The
// broker refuses to start rather than hide them; Config.RebuildMetadata
// recreates the topics from the log.
var ErrMetadataLost = errors.New("metadata lost")

const metaFile = "meta.db"

// MetaPath is the metadata database of a broker storing in dir.
func MetaPath(dir string) string { return filepath.Join(dir, metaFile) }

// Progress of long scans of the log (a rebuild from scratch): an INFO line
// every progressInterval or progressBytes, whichever comes first. Variables
// so that tests can make them small.
var (
	progressInterval       = 5 * time.Second
	progressBytes    int64 = 1 << 30
)

// rebuildHowTo is the way out that every refusal names.
const rebuildHowTo = "restore a meta.db at least as new as the commitlog (see README, Backup and restore), " +
	"or start once with --rebuild-metadata to recreate the topics from the commitlog " +
	"(subscriptions, consumer offsets, webhook secrets and topic retention cannot be recovered from it)"

// openMeta opens meta.db. It refuses to create a missing one beside a
// commitlog that holds messages, and with RebuildMetadata moves an
// unusable one aside (never deleting it) and starts a new one.
func (b *Broker) openMeta(ctx context.Context) error {
	if b.cfg.Replica != nil {
		// A replica's metadata is the group's: raft brings it up to date
		// with its log, so neither can be older than the other for long.
		b.meta = b.cfg.Replica.Meta
		return nil
	}
	path := b.dataPath(metaFile)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) && b.logHasRecords() && !b.cfg.RebuildMetadata {
		return fmt.Errorf("%w: metadata database %s is missing, but the commitlog holds messages (offsets %d to %d); "+
			"refusing to start, which would hide them: %s", ErrMetadataLost, path, b.log.MinOffset(), b.log.Committed(), rebuildHowTo)
	}
	stamp := b.now().UTC().Format("20060102T150405Z")
	aside := fmt.Sprintf("%s.unusable-%s", path, stamp)
	moveAside := func() error {
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if err := os.Rename(path+suffix, aside+suffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("move %s aside for --rebuild-metadata: %w", path+suffix, err)
			}
		}
		return nil
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) && b.cfg.RebuildMetadata {
		// A -wal or -shm left without its database must not be replayed
		// into the new one.
		if err := moveAside(); err != nil {
			return err
		}
	}
	opts := []meta.Option{meta.WithLogger(b.logger.With(slog.String("component", "meta"))), meta.WithClock(b.now)}
	if b.cfg.RebuildMetadata {
		// A rebuild keeps what it can open: it must know the file is
		// whole, however long checking a large one takes.
		opts = append(opts, meta.WithCheckLimit(-1))
	}
	s, err := meta.Open(ctx, path, opts...)
	if err != nil && b.cfg.RebuildMetadata && !errors.Is(err, meta.ErrSchemaTooNew) && ctx.Err() == nil {
		if meta.IsCorrupt(err) {
			aside = fmt.Sprintf("%s.damaged-%s", path, stamp)
		}
		if merr := moveAside(); merr != nil {
			return fmt.Errorf("open metadata: %w; %w", err, merr)
		}
		b.logger.Error("metadata database unusable: moved aside, rebuilding from the commitlog",
			slog.String("path", path), slog.String("moved_to", aside), slog.Any("err", err))
		s, err = meta.Open(ctx, path, opts...)
	}
	if err != nil {
		if errors.Is(err, meta.ErrSchemaTooNew) || b.cfg.RebuildMetadata || ctx.Err() != nil {
			return fmt.Errorf("open metadata: %w", err)
		}
		if meta.IsCorrupt(err) {
			return fmt.Errorf("open metadata: metadata database %s is damaged (%w); refusing to start on it: "+
				"restore it from a backup (see README, Backup and restore), or start once with --rebuild-metadata, "+
				"which moves it aside (meta.db.damaged-<time>) and recreates the topics and timers from the commitlog "+
				"(subscriptions, consumer offsets, webhook secrets and topic retention cannot be recovered from it)", path, err)
		}
		return fmt.Errorf("open metadata: %w; if %s is damaged, restore it from a backup or start with "+
			"--rebuild-metadata, which moves it aside and recreates the topics from the commitlog", err, path)
	}
	b.meta = s
	if s.Fresh() && b.logHasRecords() && !b.cfg.RebuildMetadata {
		return fmt.Errorf("%w: metadata database %s held no schema (a new file, or its -wal was lost), but the commitlog "+
			"holds messages (offsets %d to %d); refusing to start, which would hide them: %s",
			ErrMetadataLost, path, b.log.MinOffset(), b.log.Committed(), rebuildHowTo)
	}
	return nil
}

func (b *Broker) dataPath(name string) string { return filepath.Join(b.cfg.Dir, name) }

// logHasRecords reports whether the log holds anything between its oldest
// retained offset and its end.
func (b *Broker) logHasRecords() bool { return b.log.Committed() > b.log.MinOffset() }

// topicSurvey is what the log says of one topic.
type topicSurvey struct {
	records     int64
	maxQueue    int   // highest queue id of the current incarnation
	first, last int64 // first and last stored-at (unix ms) of the current incarnation
	firstOff    int64 // log offset of the first record of the current incarnation
	// next is the queue offset expected next per queue: one that does not
	// grow means the topic was deleted and created again.
	next      map[int]int64
	recreated int // incarnations found before the current one
	deleted   int64
}

// logSurvey is what a scan of part of the log found.
type logSurvey struct {
	from, to int64
	records  int64
	damaged  int // damaged spans skipped (dispatch reports each)
	topics   map[string]*topicSurvey
	// fired lists delayed records whose timer has fired: a later copy of
	// the same message on the same topic was put on its queue (or moved
	// ahead of retention). Re-dispatching them adds their timers again.
	fired []int64
}

// surveyLog reads the record headers in [from, to) and sums them up per
// topic. Records of a topic deleted (tomb) at or after their store time
// are counted as deleted.
func (b *Broker) surveyLog(what string, from, to int64, tomb map[string]time.Time) (*logSurvey, error) {
	sv := &logSurvey{from: from, to: to, topics: make(map[string]*topicSurvey)}
	pending := make(map[string]int64) // topic NUL id -> offset of its last unfired delayed record
	p := b.startProgress(what, from, to, nil)
	defer p.stop()
	visit := func(off int64, rec []byte) error {
		p.at.Store(off)
		if off >= to {
			return errStopScan
		}
		h, err := decodeHeader(rec)
		if err != nil {
			b.logger.Error("undecodable record skipped by the log survey", slog.Int64("offset", off), slog.Any("err", err))
			return nil
		}
		sv.records++
		topic := string(h.Topic)
		ts := sv.topics[topic]
		if ts == nil {
			ts = &topicSurvey{next: make(map[int]int64), first: -1}
			sv.topics[topic] = ts
		}
		ts.records++
		if d, ok := tomb[topic]; ok && h.StoredAt <= d.UnixMilli() {
			ts.deleted++
			return nil
		}
		if h.Flags&(flagDelayed|flagRePut) == flagDelayed {
			key := topic + "\x00" + string(h.ID)
			if prev, ok := pending[key]; ok {
				sv.fired = append(sv.fired, prev) // moved ahead of retention
			}
			pending[key] = off
		} else if h.Flags&flagPrepared != 0 {
			// A transaction's prepared (or rollback) record takes no queue
			// offset (its field is 0): it says nothing of the queue's
			// incarnations. Read as one, a second prepare on a queue
			// looked like the topic created again.
		} else {
			if h.Flags&flagRePut != 0 {
				key := topic + "\x00" + string(h.ID)
				if prev, ok := pending[key]; ok {
					sv.fired = append(sv.fired, prev)
					delete(pending, key)
				}
			}
			if n, ok := ts.next[h.QueueID]; ok && h.QueueOffset < n {
				// The queue started again: a new incarnation of the topic.
				ts.recreated++
				clear(ts.next)
				ts.first, ts.maxQueue = -1, 0
			}
			ts.next[h.QueueID] = h.QueueOffset + 1
		}
		if ts.first < 0 {
			ts.first, ts.firstOff = h.StoredAt, off
		}
		ts.last = h.StoredAt
		ts.maxQueue = max(ts.maxQueue, h.QueueID)
		return nil
	}
	next, err := b.log.Scan(from, visit)
	for {
		// A damaged span is skipped, as dispatch skips it (and reports
		// it): the records after it count.
		var ce *commitlog.CorruptError
		if !errors.As(err, &ce) || ce.Next <= ce.Off || ce.Next <= next || ce.Next >= to {
			break
		}
		sv.damaged++
		next, err = b.log.Scan(ce.Next, visit)
	}
	if errors.As(err, new(*commitlog.CorruptError)) {
		err = nil // at the end of the range: nothing after it to survey
	}
	if err != nil && !errors.Is(err, errStopScan) {
		return nil, fmt.Errorf("%s: scan the commitlog from %d: %w", what, next, err)
	}
	slices.Sort(sv.fired)
	return sv, nil
}

var errStopScan = errors.New("stop scan")

// live reports whether the survey found records of topic that belong to
// an incarnation the metadata does not know.
func (ts *topicSurvey) live() bool { return ts.first >= 0 }

// unknownTopics lists the topics whose records (in sv) or consume queues
// the metadata knows nothing of: neither a topic nor a deletion.
func (b *Broker) unknownTopics(sv *logSurvey, tomb map[string]time.Time) map[string]string {
	unknown := make(map[string]string)
	for name, ts := range sv.topics {
		if _, ok := b.topics[name]; ok || !ts.live() {
			continue
		}
		if !strings.HasPrefix(name, "%") && ValidateTopicName(name) != nil {
			// No topic can have this name: nothing to recreate or serve.
			b.logger.Error("records under a name no topic can have; not served", slog.String("topic", name),
				slog.Int64("records", ts.records), slog.Int64("first_offset", ts.firstOff))
			continue
		}
		if d, ok := tomb[name]; ok {
			// Stored after the topic's deletion: a publish that raced the
			// delete, or a re-creation this meta.db does not know. Not a
			// reason to refuse (a race must not stop the next start), but
			// never silent.
			b.logger.Error("records of a deleted topic stored after its deletion; not served. "+
				"If the topic was created again after this meta.db was written, start once with --rebuild-metadata",
				slog.String("topic", name), slog.Time("deleted_at", d), slog.Int64("records", ts.records-ts.deleted),
				slog.Int64("first_offset", ts.firstOff))
			continue
		}
		unknown[name] = fmt.Sprintf("%d records in the commitlog from offset %d", ts.records-ts.deleted, ts.firstOff)
	}
	queues := make(map[string]int)
	for _, q := range b.cq.Queues() {
		if _, ok := b.topics[q.Topic]; ok {
			continue
		}
		if _, ok := tomb[q.Topic]; ok {
			continue
		}
		queues[q.Topic]++
	}
	for name, n := range queues {
		if s := unknown[name]; s != "" {
			unknown[name] = fmt.Sprintf("%s, %d consume queues", s, n)
		} else {
			unknown[name] = fmt.Sprintf("%d consume queues", n)
		}
	}
	return unknown
}

// refuseUnknown logs each unknown topic at ERROR and returns the error
// that stops Open.
func (b *Broker) refuseUnknown(unknown map[string]string) error {
	names := make([]string, 0, len(unknown))
	for name := range unknown {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		b.logger.Error("topic unknown to the metadata database", slog.String("topic", name), slog.String("holds", unknown[name]))
	}
	shown := names
	if len(shown) > 10 {
		shown = shown[:10]
	}
	more := ""
	if len(names) > len(shown) {
		more = fmt.Sprintf(" and %d more", len(names)-len(shown))
	}
	return fmt.Errorf("%w: metadata database %s does not know %d topic(s) that the commitlog or the consume queues hold: %s%s; "+
		"it is older than the log (restored from a backup, or its -wal was lost in a crash). Refusing to start, which would hide "+
		"those messages and delete their queues: %s", ErrMetadataLost, b.dataPath(metaFile), len(names),
		strings.Join(shown, ", "), more, rebuildHowTo)
}

// rebuildTopics creates in the metadata the topics sv found that it does
// not know, and grows those whose log shows more queues, saying loudly
// what the log cannot give back.
func (b *Broker) rebuildTopics(ctx context.Context, sv *logSurvey, tomb map[string]time.Time, fresh bool, took time.Duration) error {
	names := make([]string, 0, len(sv.topics))
	for name := range sv.topics {
		names = append(names, name)
	}
	slices.Sort(names)
	var created, grown, skipped int
	for _, name := range names {
		ts := sv.topics[name]
		if !ts.live() {
			skipped++
			b.logger.Info("rebuild: topic deleted, not recreated", slog.String("topic", name),
				slog.Int64("records", ts.records), slog.Time("deleted_at", tomb[name]))
			continue
		}
		queues := ts.maxQueue + 1
		if cur, ok := b.topics[name]; ok {
			t := *cur.info.Load()
			if queues <= t.Queues {
				continue
			}
			mt, _, err := b.meta.PutTopic(ctx, meta.Topic{Name: name, Queues: queues, Retention: t.Retention})
			if err != nil {
				return fmt.Errorf("rebuild topic %q: %w", name, err)
			}
			nt := topicFromMeta(mt)
			for len(cur.next) < nt.Queues {
				cur.next = append(cur.next, 0)
			}
			cur.info.Store(&nt)
			grown++
			b.logger.Warn("rebuild: topic has more queues in the commitlog than in the metadata; grown",
				slog.String("topic", name), slog.Int("queues", t.Queues), slog.Int("now", queues))
			continue
		}
		if ValidateTopicName(name) != nil && !strings.HasPrefix(name, "%") {
			b.logger.Error("rebuild: record topic name is not a valid topic name; not recreated",
				slog.String("topic", name), slog.Int64("records", ts.records))
			continue
		}
		// The incarnation starts at its first record: records of the name
		// below it are an earlier, deleted one's.
		mt, err := b.meta.CreateTopic(ctx, meta.Topic{Name: name, Queues: queues, CreatedAt: time.UnixMilli(ts.first), LogStart: ts.firstOff})
		if err != nil {
			return fmt.Errorf("rebuild topic %q: %w", name, err)
		}
		nt := topicFromMeta(mt)
		b.topics[name] = newTopicState(nt)
		if !strings.HasPrefix(name, "%") {
			if i, found := slices.BinarySearch(b.names, name); !found {
				b.names = slices.Insert(b.names, i, name)
			}
		}
		created++
		attrs := []any{slog.String("topic", name), slog.Int("queues", queues), slog.Int64("records", ts.records-ts.deleted),
			slog.Time("created_at", nt.CreatedAt)}
		if ts.recreated > 0 {
			attrs = append(attrs, slog.Int("earlier_incarnations_hidden", ts.recreated))
		}
		b.logger.Warn("rebuild: topic recreated from the commitlog (queue count: highest queue id seen + 1; retention: the broker default)", attrs...)
	}
	lost := []string{
		"subscriptions: push webhooks (URL, filter, signing secret, retry policy) and pull subscriptions must be created again; new webhook secrets will differ",
		"consumer offsets: a group starts again where its new subscription says (pull: earliest by default) and receives again what it had consumed",
		"topic settings: retention is the broker default; a queue count is the highest queue id found in the log plus one",
		"dead-letter state: dead letters already redriven or purged are listed again",
		"the delivery attempt log (/v1/messages/{id}/trace) and ordered subscriptions' retry waits",
	}
	if fresh {
		for _, what := range lost {
			b.logger.Error("rebuild: cannot be recovered from the commitlog", slog.String("lost", what))
		}
	} else {
		b.logger.Warn("rebuild: the metadata database was kept; what changed in it after it was written " +
			"(subscriptions, consumer offsets, settings) is lost, and only topics missing from it were recreated")
	}
	b.logger.Warn("metadata rebuilt from the commitlog",
		slog.Int("topics_created", created), slog.Int("topics_grown", grown), slog.Int("deleted_topics_skipped", skipped),
		slog.Int64("records", sv.records), slog.Int("damaged_spans_skipped", sv.damaged), slog.Int64("from", sv.from), slog.Int64("to", sv.to),
		slog.Duration("took", took.Round(time.Millisecond)),
		slog.String("next", "start without --rebuild-metadata from now on; recreate subscriptions"))
	return nil
}

// progress logs how far a long scan of the log has got, from a goroutine,
// so the scan itself only stores its offset in at.
type progress struct {
	at   *atomic.Int64
	done chan struct{}
	wait chan struct{}
}

// startProgress starts reporting a scan of [from, to) under the name what,
// whose position is in at (nil: the progress's own); short scans stay
// silent. stop ends it.
func (b *Broker) startProgress(what string, from, to int64, at *atomic.Int64) *progress {
	if at == nil {
		at = new(atomic.Int64)
	}
	p := &progress{at: at, done: make(chan struct{}), wait: make(chan struct{})}
	p.at.Store(from)
	go func() {
		defer close(p.wait)
		start := time.Now()
		tick := time.NewTicker(max(min(progressInterval, time.Second), time.Millisecond))
		defer tick.Stop()
		lastAt, lastOff := start, from
		for {
			select {
			case <-p.done:
				// A scan long enough to have reported says it is done.
				if took := time.Since(start); took >= progressInterval {
					b.logger.Info(what+": done", slog.Int64("from", from), slog.Int64("to", to),
						slog.Duration("took", took.Round(time.Millisecond)))
				}
				return
			case now := <-tick.C:
				off := p.at.Load()
				if now.Sub(lastAt) < progressInterval && off-lastOff < progressBytes {
					continue
				}
				pct := 100.0
				if to > from {
					pct = float64(off-from) * 100 / float64(to-from)
				}
				b.logger.Info(what+": progress", slog.Int64("offset", off), slog.Int64("to", to),
					slog.String("done", fmt.Sprintf("%.1f%%", pct)),
					slog.Int64("mb_per_s", int64(float64(off-from)/max(now.Sub(start).Seconds(), 0.001)/(1<<20))))
				lastAt, lastOff = now, off
			}
		}
	}()
	return p
}

func (p *progress) stop() {
	close(p.done)
	<-p.wait
}
