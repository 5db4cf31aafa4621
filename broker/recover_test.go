package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// syncBuffer is a log sink tests read while the broker writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func withLogs(cfg Config) (Config, *syncBuffer) {
	buf := new(syncBuffer)
	cfg.Logger = slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return cfg, buf
}

// fixture is a data directory with two topics whose messages are known.
type fixture struct {
	cfg  Config
	msgs map[string][]Result // by topic
	body map[string]string   // by message id
}

// newFixture publishes to "orders" (3 queues, 48h retention) and
// "payments" (auto-created with the default 4 queues), every queue used,
// and closes the broker.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{cfg: testConfig(t, t.TempDir()), msgs: map[string][]Result{}, body: map[string]string{}}
	b := openBroker(t, f.cfg)
	retention := 48 * time.Hour
	if _, _, err := b.PutTopic(ctx, "orders", TopicSettings{Queues: 3, Retention: &retention}); err != nil {
		t.Fatal(err)
	}
	f.publish(t, b, "orders", 30)
	f.publish(t, b, "payments", 5)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) publish(t *testing.T, b *Broker, topic string, n int) {
	t.Helper()
	for i := range n {
		body := fmt.Sprintf("%s message %d", topic, i)
		r := publish(t, b, topic, &Message{Body: []byte(body), Keys: []string{topic + "-key"}})[0]
		f.msgs[topic] = append(f.msgs[topic], r)
		f.body[r.ID] = body
	}
}

// check reads every message of topics back by id, by key and by queue.
func (f *fixture) check(t *testing.T, b *Broker, topics ...string) {
	t.Helper()
	ctx := context.Background()
	for _, topic := range topics {
		for _, r := range f.msgs[topic] {
			m, err := b.Message(ctx, r.ID)
			if err != nil {
				t.Fatalf("%s message %s: %v", topic, r.ID, err)
			}
			if string(m.Body) != f.body[r.ID] || m.QueueID != r.QueueID || m.QueueOffset != r.QueueOffset {
				t.Fatalf("%s message %s = %q at %d/%d, want %q at %d/%d", topic, r.ID, m.Body, m.QueueID, m.QueueOffset,
					f.body[r.ID], r.QueueID, r.QueueOffset)
			}
			all, _ := ParseFilter("*")
			got, _, err := b.ReadQueue(topic, r.QueueID, r.QueueOffset, 1, all)
			if err != nil || len(got) != 1 || got[0].ID != r.ID {
				t.Fatalf("%s queue %d offset %d: %d messages, %v; want %s", topic, r.QueueID, r.QueueOffset, len(got), err, r.ID)
			}
		}
		byKey, _, err := b.MessagesByKey(ctx, topic, topic+"-key", 0, 1000)
		if err != nil || len(byKey) != len(f.msgs[topic]) {
			t.Fatalf("%s by key: %d messages, %v; want %d", topic, len(byKey), err, len(f.msgs[topic]))
		}
	}
}

func removeMeta(t *testing.T, dir string) {
	t.Helper()
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(filepath.Join(dir, metaFile+suffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
}

func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Stat(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// TestOpenRefusesLostMetadata: a commitlog with messages beside a missing,
// empty or garbage meta.db used to start a "ready" broker that answered
// 404 for every message and deleted the consume queues. It refuses now,
// naming the file and the way out, and changes nothing on disk.
func TestOpenRefusesLostMetadata(t *testing.T) {
	f := newFixture(t)
	dir := f.cfg.Dir
	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T)
		want   []string
		isErr  error
	}{
		{name: "missing", break_: func(t *testing.T) { removeMeta(t, dir) },
			want: []string{filepath.Join(dir, "meta.db"), "is missing", "--rebuild-metadata"}, isErr: ErrMetadataLost},
		{name: "empty file", break_: func(t *testing.T) {
			removeMeta(t, dir)
			if err := os.WriteFile(filepath.Join(dir, "meta.db"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}, want: []string{filepath.Join(dir, "meta.db"), "held no schema", "--rebuild-metadata"}, isErr: ErrMetadataLost},
		{name: "garbage", break_: func(t *testing.T) {
			removeMeta(t, dir)
			if err := os.WriteFile(filepath.Join(dir, "meta.db"), bytes.Repeat([]byte("garbage!"), 1024), 0o644); err != nil {
				t.Fatal(err)
			}
		}, want: []string{filepath.Join(dir, "meta.db"), "--rebuild-metadata"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.break_(t)
			before := dirListing(t, dir)
			b, err := Open(context.Background(), f.cfg)
			if err == nil {
				b.Close()
				t.Fatal("Open succeeded")
			}
			if tc.isErr != nil && !errors.Is(err, tc.isErr) {
				t.Fatalf("Open: %v, want %v", err, tc.isErr)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Open error %q does not say %q", err, w)
				}
			}
			if tc.name == "missing" && exists(t, filepath.Join(dir, "meta.db")) {
				t.Error("a refused Open created meta.db")
			}
			if after := dirListing(t, dir); !equalListings(before, after, "meta.db") {
				t.Errorf("a refused Open changed the data directory:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

// dirListing lists the files under dir (path and size); lock is left out.
func dirListing(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "lock" {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		out[rel] = info.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// equalListings compares listings, ignoring files whose name starts with
// ignore (SQLite may touch its own files).
func equalListings(a, b map[string]int64, ignore string) bool {
	for _, m := range []map[string]int64{a, b} {
		for k := range m {
			if strings.HasPrefix(k, ignore) {
				delete(m, k)
			}
		}
	}
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestRebuildMetadata: --rebuild-metadata recreates the topics (names,
// queue counts, creation before their first message) from the log, says
// at ERROR what it cannot recover, and the broker serves every message
// again; the next start needs no flag. An unusable meta.db is moved aside,
// never deleted.
func TestRebuildMetadata(t *testing.T) {
	for _, tc := range []struct {
		name    string
		break_  func(t *testing.T, dir string)
		aside   bool
		derived bool // also lose the derived indexes
	}{
		{name: "missing", break_: func(t *testing.T, dir string) { removeMeta(t, dir) }},
		{name: "missing with indexes", derived: true, break_: func(t *testing.T, dir string) { removeMeta(t, dir) }},
		{name: "missing, its -wal left", aside: true, break_: func(t *testing.T, dir string) {
			removeMeta(t, dir)
			if err := os.WriteFile(filepath.Join(dir, "meta.db-wal"), bytes.Repeat([]byte("wal?"), 1024), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "garbage", aside: true, break_: func(t *testing.T, dir string) {
			removeMeta(t, dir)
			if err := os.WriteFile(filepath.Join(dir, "meta.db"), bytes.Repeat([]byte("garbage!"), 1024), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			dir := f.cfg.Dir
			tc.break_(t, dir)
			if tc.derived {
				for _, d := range []string{"index", "consumequeue", checkpointFile} {
					if err := os.RemoveAll(filepath.Join(dir, d)); err != nil {
						t.Fatal(err)
					}
				}
			}
			cfg, logs := withLogs(f.cfg)
			cfg.RebuildMetadata = true
			b := openBroker(t, cfg)
			ctx := context.Background()
			for _, want := range []struct {
				name   string
				queues int
			}{{"orders", 3}, {"payments", 4}} {
				st, err := b.Topic(ctx, want.name)
				if err != nil {
					t.Fatalf("topic %s after rebuild: %v", want.name, err)
				}
				if st.Topic.Queues != want.queues || st.Messages != int64(len(f.msgs[want.name])) {
					t.Errorf("topic %s: %d queues, %d messages; want %d, %d", want.name, st.Topic.Queues, st.Messages,
						want.queues, len(f.msgs[want.name]))
				}
			}
			f.check(t, b, "orders", "payments")
			out := logs.String()
			for _, want := range []string{"level=ERROR msg=\"rebuild: cannot be recovered from the commitlog\" lost=\"subscriptions",
				"consumer offsets", "level=WARN msg=\"metadata rebuilt from the commitlog\" topics_created=2"} {
				if !strings.Contains(out, want) {
					t.Errorf("logs lack %q:\n%s", want, out)
				}
			}
			asides, _ := filepath.Glob(filepath.Join(dir, "meta.db.unusable-*")) // the database, or its -wal left without it
			damaged, _ := filepath.Glob(filepath.Join(dir, "meta.db.damaged-*")) // a file SQLite finds malformed
			asides = append(asides, damaged...)
			if tc.aside != (len(asides) == 1) {
				t.Errorf("moved-aside files %v; want one: %v", asides, tc.aside)
			}
			// New traffic goes on from the rebuilt offsets.
			st, err := b.Topic(ctx, "payments")
			if err != nil {
				t.Fatal(err)
			}
			r := publish(t, b, "payments", msg("after"))[0]
			if want := st.Queues[r.QueueID].MaxOffset; r.QueueOffset != want || want == 0 {
				t.Errorf("publish after rebuild at queue offset %d, want %d (> 0)", r.QueueOffset, want)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			cfg.RebuildMetadata = false
			b = openBroker(t, cfg)
			f.check(t, b, "orders", "payments")
		})
	}
}

// TestOpenRefusesOlderMetadata: a meta.db older than the log (a restored
// backup, or a -wal lost in a crash) does not know topics created since.
// Their consume queues were deleted at start and their messages hidden;
// now the broker refuses, naming them, and --rebuild-metadata recreates
// only them, keeping what the old meta.db knew (here a retention).
func TestOpenRefusesOlderMetadata(t *testing.T) {
	for _, lose := range []string{"nothing", "checkpoint"} {
		t.Run("lose "+lose, func(t *testing.T) {
			ctx := context.Background()
			cfg := testConfig(t, t.TempDir())
			dir := cfg.Dir
			f := &fixture{cfg: cfg, msgs: map[string][]Result{}, body: map[string]string{}}
			b := openBroker(t, cfg)
			retention := 48 * time.Hour
			if _, _, err := b.PutTopic(ctx, "orders", TopicSettings{Queues: 2, Retention: &retention}); err != nil {
				t.Fatal(err)
			}
			f.publish(t, b, "orders", 10)
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			backup, err := os.ReadFile(filepath.Join(dir, "meta.db"))
			if err != nil {
				t.Fatal(err)
			}
			b = openBroker(t, cfg)
			f.publish(t, b, "orders", 5)
			f.publish(t, b, "payments", 7)
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			removeMeta(t, dir)
			if err := os.WriteFile(filepath.Join(dir, "meta.db"), backup, 0o644); err != nil {
				t.Fatal(err)
			}
			if lose == "checkpoint" {
				if err := os.Remove(filepath.Join(dir, checkpointFile)); err != nil {
					t.Fatal(err)
				}
			}

			cfg, logs := withLogs(cfg)
			_, err = Open(ctx, cfg)
			if !errors.Is(err, ErrMetadataLost) || !strings.Contains(err.Error(), "payments") ||
				!strings.Contains(err.Error(), "--rebuild-metadata") {
				t.Fatalf("Open with an older meta.db: %v; want ErrMetadataLost naming payments and --rebuild-metadata", err)
			}
			if !strings.Contains(logs.String(), `level=ERROR msg="topic unknown to the metadata database" topic=payments`) {
				t.Errorf("no ERROR line for payments:\n%s", logs)
			}
			if !exists(t, filepath.Join(dir, "consumequeue", "payments")) {
				t.Fatal("the refused Open deleted the consume queues of payments")
			}

			cfg.RebuildMetadata = true
			b = openBroker(t, cfg)
			f.check(t, b, "orders", "payments")
			st, err := b.Topic(ctx, "orders")
			if err != nil || st.Retention != retention || st.Topic.Queues != 2 {
				t.Fatalf("orders after rebuild: %+v, %v; want its 48h retention and 2 queues kept", st.Topic, err)
			}
			if !strings.Contains(logs.String(), "topics_created=1") {
				t.Errorf("summary does not say one topic was created:\n%s", logs)
			}
		})
	}
}

// TestDeletedTopicLeftoversStillRemoved: the consume queues a crash left
// behind a topic deleted (recorded in meta.db) are removed at start as
// before, while a topic meta.db never knew is refused.
func TestDeletedTopicLeftoversStillRemoved(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	dir := cfg.Dir
	b := openBroker(t, cfg)
	publish(t, b, "gone", msg("one"), msg("two"))
	publish(t, b, "stays", msg("three"))
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	saved := filepath.Join(t.TempDir(), "gone")
	if err := os.CopyFS(saved, os.DirFS(filepath.Join(dir, "consumequeue", "gone"))); err != nil {
		t.Fatal(err)
	}
	b = openBroker(t, cfg)
	if err := b.DeleteTopic(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// As if the crash came between the metadata's delete and the queues'.
	if err := os.CopyFS(filepath.Join(dir, "consumequeue", "gone"), os.DirFS(saved)); err != nil {
		t.Fatal(err)
	}
	cfg, logs := withLogs(cfg)
	b = openBroker(t, cfg)
	if exists(t, filepath.Join(dir, "consumequeue", "gone")) {
		t.Error("queues of the deleted topic were not removed")
	}
	if !strings.Contains(logs.String(), `msg="removing the consume queues of a deleted topic" topic=gone`) {
		t.Errorf("removal not logged:\n%s", logs)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	// A queue directory of a topic meta.db never knew is another matter.
	if err := os.CopyFS(filepath.Join(dir, "consumequeue", "stranger"), os.DirFS(saved)); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, cfg); !errors.Is(err, ErrMetadataLost) || !strings.Contains(err.Error(), "stranger") {
		t.Fatalf("Open with queues of an unknown topic: %v; want ErrMetadataLost naming it", err)
	}
	if !exists(t, filepath.Join(dir, "consumequeue", "stranger")) {
		t.Fatal("queues of an unknown topic deleted")
	}
}

// TestRebuildFromScratch: with index/, consumequeue/ and checkpoint.json
// all gone the broker rebuilds them from the log and starts, logging its
// progress; delayed messages already put on their queue (their fired
// timers purged) are not put there a second time.
func TestRebuildFromScratch(t *testing.T) {
	defer func(i time.Duration, n int64) { progressInterval, progressBytes = i, n }(progressInterval, progressBytes)
	progressInterval, progressBytes = 0, 1 // every scan reports, and says when it is done

	ctx := context.Background()
	f := newFixture(t)
	b := openBroker(t, f.cfg)
	d := publish(t, b, "payments", &Message{Body: []byte("delayed"), Delay: 20 * time.Millisecond})[0]
	f.publish(t, b, "payments", 3)
	waitFor(t, 10*time.Second, "the delayed message on its queue", func() bool {
		return queued(t, b, "payments") == int64(len(f.msgs["payments"]))+1
	})
	if err := b.checkpoint(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.meta.PurgeFiredTimers(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	for _, lose := range []string{"index", "consumequeue", checkpointFile} {
		if err := os.RemoveAll(filepath.Join(f.cfg.Dir, lose)); err != nil {
			t.Fatal(err)
		}
	}
	cfg, logs := withLogs(f.cfg)
	b = openBroker(t, cfg)
	f.check(t, b, "orders", "payments")
	if n, err := b.meta.PendingTimers(ctx); err != nil || n != 0 {
		t.Fatalf("%d timers pending after the rebuild (%v); the delayed message was already delivered", n, err)
	}
	if got, want := queued(t, b, "payments"), int64(len(f.msgs["payments"]))+1; got != want {
		t.Fatalf("payments holds %d messages, want %d", got, want)
	}
	m, err := b.Message(ctx, d.ID)
	if err != nil || string(m.Body) != "delayed" || m.QueueOffset < 0 {
		t.Fatalf("delayed message after rebuild: %+v, %v", m, err)
	}
	for _, want := range []string{`msg="rebuilding indexes from the commitlog" from=0`, `msg="rebuilding indexes from the commitlog: done"`,
		`msg="checking the commitlog's topics: done"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
}

// TestRecordsAfterDeletionDoNotStopStart: a record of a deleted topic
// stored after its deletion (a publish that raced the delete, or a
// re-creation this meta.db does not know) must not stop the next start,
// but it is logged at ERROR, never skipped silently.
func TestRecordsAfterDeletionDoNotStopStart(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	var skew atomic.Int64 // the clock moves only when told
	base := time.Now()
	cfg.Now = func() time.Time { return base.Add(time.Duration(skew.Load())) }
	b := openBroker(t, cfg)
	publish(t, b, "gone", msg("before"))
	b.topicsMu.RLock()
	stale := b.topics["gone"]
	b.topicsMu.RUnlock()
	if err := b.DeleteTopic(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	skew.Add(int64(time.Second)) // stored after the deletion
	// Appended as a publish holding the deleted topic's state would have.
	rec := encodeRecord(nil, &Message{Topic: "gone", ID: "raced", Body: []byte("raced")})
	patchRecord(rec, b.now(), stale.next[0])
	_, end, err := b.log.Append([][]byte{rec})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.log.Sync(ctx, end); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(cfg.Dir, checkpointFile)); err != nil {
		t.Fatal(err)
	}
	cfg, logs := withLogs(cfg)
	b = openBroker(t, cfg)
	if _, err := b.Message(ctx, "raced"); !errors.Is(err, ErrMessageNotFound) {
		t.Fatalf("raced message of a deleted topic: %v, want not found", err)
	}
	if !strings.Contains(logs.String(), `level=ERROR msg="records of a deleted topic stored after its deletion`) {
		t.Fatalf("no ERROR line for the raced record:\n%s", logs)
	}
}

// TestRebuildAroundDamage: a damaged record does not stop the check of the
// log's topics nor --rebuild-metadata: the topics are recreated from the
// records around it and every other message is served.
func TestRebuildAroundDamage(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	b := openBroker(t, f.cfg)
	victim := f.msgs["orders"][10]
	m, err := b.Message(ctx, victim.ID)
	if err != nil {
		t.Fatal(err)
	}
	off := m.LogOffset
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	seg, err := os.OpenFile(filepath.Join(f.cfg.Dir, "commitlog", fmt.Sprintf("%020d", 0)), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seg.WriteAt([]byte("XXXX"), off+30); err != nil { // inside the frame: its CRC fails
		t.Fatal(err)
	}
	seg.Close()
	removeMeta(t, f.cfg.Dir)
	for _, d := range []string{"index", "consumequeue", checkpointFile} {
		if err := os.RemoveAll(filepath.Join(f.cfg.Dir, d)); err != nil {
			t.Fatal(err)
		}
	}
	cfg, logs := withLogs(f.cfg)
	cfg.RebuildMetadata = true
	b = openBroker(t, cfg)
	if !strings.Contains(logs.String(), "damaged_spans_skipped=1") {
		t.Errorf("the rebuild summary does not count the damaged span:\n%s", logs)
	}
	f.msgs["orders"] = append(f.msgs["orders"][:10:10], f.msgs["orders"][11:]...)
	for _, topic := range []string{"orders", "payments"} {
		for _, r := range f.msgs[topic] {
			got, err := b.Message(ctx, r.ID)
			if err != nil || string(got.Body) != f.body[r.ID] {
				t.Fatalf("%s message %s after a rebuild around damage: %v", topic, r.ID, err)
			}
		}
	}
	if st, err := b.Topic(ctx, "orders"); err != nil || st.Topic.Queues != 3 {
		t.Fatalf("orders after rebuild: %+v, %v", st.Topic, err)
	}
}

// TestGarbageCheckpointRebuildsLoudly: an unparseable checkpoint.json
// rebuilds the indexes from the start of the log, as a missing one does,
// and says so (it used to be taken for the zero checkpoint silently).
func TestGarbageCheckpointRebuildsLoudly(t *testing.T) {
	f := newFixture(t)
	if err := os.WriteFile(filepath.Join(f.cfg.Dir, checkpointFile), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, logs := withLogs(f.cfg)
	b := openBroker(t, cfg)
	f.check(t, b, "orders", "payments")
	if !strings.Contains(logs.String(), `level=ERROR msg="checkpoint is unreadable; rebuilding the indexes from the start of the commitlog" err="checkpoint unreadable`) {
		t.Fatalf("no ERROR line for the unreadable checkpoint:\n%s", logs)
	}
}
