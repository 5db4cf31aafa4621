package broker

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeChecker answers checks with answer(check), recording each.
type fakeChecker struct {
	mu     sync.Mutex
	checks []TxnCheck
	answer func(TxnCheck) TxnCheckResult
}

func (f *fakeChecker) CheckTransaction(ctx context.Context, g ProducerGroup, c TxnCheck) TxnCheckResult {
	f.mu.Lock()
	f.checks = append(f.checks, c)
	answer := f.answer
	f.mu.Unlock()
	return answer(c)
}

func (f *fakeChecker) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.checks)
}

// fakeClock is a clock the test moves.
type fakeClock struct{ ms atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ms.Store(time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC).UnixMilli())
	return c
}
func (c *fakeClock) now() time.Time          { return time.UnixMilli(c.ms.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ms.Add(d.Milliseconds()) }

func txnBroker(tb testing.TB, dir string, clock *fakeClock, checker TxnChecker) *Broker {
	tb.Helper()
	cfg := testConfig(tb, dir)
	if clock != nil {
		cfg.Now = clock.now
	}
	cfg.TxnChecker = checker
	cfg.TxnCheckInterval = 30 * time.Second
	cfg.TxnCheckMax = 3
	b := openBroker(tb, cfg)
	if _, _, err := b.PutProducerGroup(context.Background(), "orders-svc", "https://orders.example/txn-check", ""); err != nil {
		tb.Fatalf("put producer group: %v", err)
	}
	return b
}

func prepare(tb testing.TB, b *Broker, topic string, m *Message) Result {
	tb.Helper()
	res, err := b.Prepare(context.Background(), topic, m, "orders-svc", 0)
	if err != nil {
		tb.Fatalf("prepare: %v", err)
	}
	return res
}

// queued returns every message on the topic's queues, read by offset.
func onQueues(tb testing.TB, b *Broker, topic string) []*Message {
	tb.Helper()
	if err := b.waitDispatched(context.Background(), b.log.Committed()); err != nil {
		tb.Fatal(err)
	}
	var out []*Message
	for q := 0; q < b.cfg.DefaultQueues; q++ {
		msgs, _, err := b.ReadQueue(topic, q, 0, 100, Filter{all: true})
		if err != nil {
			tb.Fatalf("read queue %d: %v", q, err)
		}
		out = append(out, msgs...)
	}
	return out
}

func waitTxn(tb testing.TB, b *Broker, id, state string) Txn {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		t, err := b.Transaction(context.Background(), id)
		if err != nil {
			tb.Fatalf("transaction %s: %v", id, err)
		}
		if t.State == state {
			return t
		}
		if time.Now().After(deadline) {
			tb.Fatalf("transaction %s is %s (%d checks, %q); want %s", id, t.State, t.Checks, t.Reason, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestTxnPrepareInvisibleUntilCommit(t *testing.T) {
	ctx := context.Background()
	b := txnBroker(t, t.TempDir(), nil, nil)
	publish(t, b, "orders", msg("plain")) // the topic, and a message that is visible
	res := prepare(t, b, "orders", &Message{Body: []byte(`{"id":1001}`), Keys: []string{"order-1001"}, Tag: "created"})
	if res.QueueOffset != -1 {
		t.Errorf("prepare answered queue offset %d; want -1 (assigned at commit)", res.QueueOffset)
	}

	// Invisible to reads by offset, queries by key, pulls.
	if got := onQueues(t, b, "orders"); len(got) != 1 || string(got[0].Body) != "plain" {
		t.Fatalf("queues hold %d messages while prepared; want only the plain one", len(got))
	}
	if byKey, _, err := b.MessagesByKey(ctx, "orders", "order-1001", 0, 10); err != nil || len(byKey) != 0 {
		t.Fatalf("by key while prepared: %d messages, err %v; want none", len(byKey), err)
	}
	pulled, err := b.Pull(ctx, "g1", "orders", 32, 0, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pulled {
		if p.ID == res.ID {
			t.Fatalf("pull handed out the prepared message")
		}
	}
	m, err := b.Message(ctx, res.ID)
	if err != nil || !m.Prepared() {
		t.Fatalf("Message(%s) = %+v, %v; want the prepared message", res.ID, m, err)
	}
	if tx, err := b.Transaction(ctx, res.ID); err != nil || tx.State != TxnStatePrepared || tx.ProducerGroup != "orders-svc" {
		t.Fatalf("transaction = %+v, %v", tx, err)
	}

	tx, err := b.Commit(ctx, res.ID)
	if err != nil || tx.State != TxnStateCommitted || tx.QueueOffset != 0 {
		t.Fatalf("commit = %+v, %v; want committed at offset 0 of its queue", tx, err)
	}
	// Idempotent: the same answer again; the opposite decision is refused.
	again, err := b.Commit(ctx, res.ID)
	if err != nil || again.QueueID != tx.QueueID || again.QueueOffset != tx.QueueOffset {
		t.Fatalf("second commit = %+v, %v; want %+v", again, err, tx)
	}
	if _, err := b.Rollback(ctx, res.ID); !errors.Is(err, ErrTxnDecided) || CodeOf(err) != CodeTransactionDecided {
		t.Fatalf("rollback after commit: %v; want %s", err, CodeTransactionDecided)
	}

	got := onQueues(t, b, "orders")
	if len(got) != 2 {
		t.Fatalf("queues hold %d messages after commit; want 2", len(got))
	}
	var found *Message
	for _, m := range got {
		if m.ID == res.ID {
			found = m
		}
	}
	if found == nil || string(found.Body) != `{"id":1001}` || found.QueueID != tx.QueueID || found.QueueOffset != tx.QueueOffset || found.Prepared() {
		t.Fatalf("committed message = %+v; want the body on queue %d offset %d", found, tx.QueueID, tx.QueueOffset)
	}
	if byKey, _, err := b.MessagesByKey(ctx, "orders", "order-1001", 0, 10); err != nil || len(byKey) != 1 || byKey[0].ID != res.ID {
		t.Fatalf("by key after commit: %d messages, err %v; want the committed one", len(byKey), err)
	}
	if m, err := b.Message(ctx, res.ID); err != nil || m.Prepared() || !m.Committed() {
		t.Fatalf("Message after commit = %+v, %v", m, err)
	}
	pulled, err = b.Pull(ctx, "g1", "orders", 32, 0, time.Minute)
	if err != nil || len(pulled) != 1 || pulled[0].ID != res.ID {
		t.Fatalf("pull after commit: %d messages, %v; want the committed one", len(pulled), err)
	}
}

func TestTxnRollbackNeverDelivered(t *testing.T) {
	ctx := context.Background()
	b := txnBroker(t, t.TempDir(), nil, nil)
	res := prepare(t, b, "orders", msg("undone"))
	tx, err := b.Rollback(ctx, res.ID)
	if err != nil || tx.State != TxnStateRolledBack {
		t.Fatalf("rollback = %+v, %v", tx, err)
	}
	if _, err := b.Rollback(ctx, res.ID); err != nil {
		t.Fatalf("second rollback: %v; want the same answer", err)
	}
	if _, err := b.Commit(ctx, res.ID); CodeOf(err) != CodeTransactionDecided {
		t.Fatalf("commit after rollback: %v; want %s", err, CodeTransactionDecided)
	}
	if got := onQueues(t, b, "orders"); len(got) != 0 {
		t.Fatalf("queues hold %d messages after a rollback", len(got))
	}
}

func TestTxnBadInput(t *testing.T) {
	ctx := context.Background()
	b := txnBroker(t, t.TempDir(), nil, nil)
	for _, tc := range []struct {
		name    string
		m       *Message
		group   string
		timeout time.Duration
		want    Code
	}{
		{"unknown group", msg("x"), "nobody", 0, CodeProducerGroupNotFound},
		{"bad group", msg("x"), "bad group", 0, CodeInvalidProducerGroup},
		{"delayed", &Message{Body: []byte("x"), Delay: time.Second}, "orders-svc", 0, CodeInvalidTransaction},
		{"dedup id", &Message{Body: []byte("x"), DedupID: "d1"}, "orders-svc", 0, CodeInvalidTransaction},
		{"timeout too long", msg("x"), "orders-svc", 2 * MaxTxnTimeout, CodeInvalidTransaction},
		{"bad tag", &Message{Body: []byte("x"), Tag: "a||b"}, "orders-svc", 0, CodeInvalidTag},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := b.Prepare(ctx, "orders", tc.m, tc.group, tc.timeout)
			if CodeOf(err) != tc.want {
				t.Fatalf("prepare: %v; want %s", err, tc.want)
			}
		})
	}
	if _, err := b.Commit(ctx, "NoSuchTransaction1"); !errors.Is(err, ErrTxnNotFound) {
		t.Fatalf("commit of an unknown id: %v; want %s", err, CodeTransactionNotFound)
	}
	if _, err := b.Rollback(ctx, "bad id!"); CodeOf(err) != CodeInvalidTransaction {
		t.Fatalf("rollback of a malformed id: %v; want %s", err, CodeInvalidTransaction)
	}
	if txs, _, err := b.Transactions(ctx, "", 0, 10); err != nil || len(txs) != 0 {
		t.Fatalf("refused prepares left %d transactions (%v); want none stored", len(txs), err)
	}
}

// A commit's copy in the log is its decision: dispatch marks the row when
// it meets the copy, so a commit whose row was never marked (a crash
// before dispatch got to it, then the replay; or an append that failed
// with its outcome unknown) is committed, stored once, and a later
// decision, either way, finds it so.
func TestTxnCommitCopyDecides(t *testing.T) {
	for _, tc := range []struct {
		name     string
		decision string // "" for none: dispatch alone marks the row
		unsure   bool   // the copy's append failed with an unknown outcome
	}{
		{"dispatch marks the row", "", false},
		{"commit after an unknown outcome", "commit", true},
		{"rollback after an unknown outcome", "rollback", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			b := txnBroker(t, t.TempDir(), nil, nil)
			res := prepare(t, b, "orders", msg("once"))
			row, _, err := b.txnRow(ctx, res.ID)
			if err != nil {
				t.Fatal(err)
			}
			prep, err := b.readMessage(row.LogOffset)
			if err != nil || !prep.Prepared() {
				t.Fatalf("prepared record: %v, %v", prep, err)
			}
			if _, err := b.storeCommitted(ctx, prep); err != nil { // the commit's append, and no more
				t.Fatal(err)
			}
			if tc.unsure {
				b.txnLive.doubt(res.ID)
			}
			var tx Txn
			switch tc.decision {
			case "":
				if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
					t.Fatal(err)
				}
				tx, err = b.Transaction(ctx, res.ID)
			case "commit":
				tx, err = b.Commit(ctx, res.ID)
			case "rollback":
				tx, err = b.Rollback(ctx, res.ID)
				if CodeOf(err) != CodeTransactionDecided {
					t.Fatalf("rollback of a transaction whose message is on its queue: %v; want %s", err, CodeTransactionDecided)
				}
				err = nil
			}
			if err != nil {
				t.Fatal(err)
			}
			if tx.State != TxnStateCommitted || tx.Reason != "committed; its row marked from the log after a restart" {
				t.Fatalf("transaction %+v; want committed, marked from the log", tx)
			}
			if got := onQueues(t, b, "orders"); len(got) != 1 {
				t.Fatalf("queues hold %d copies of the message; want 1", len(got))
			}
		})
	}
}

func TestTxnSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := txnBroker(t, dir, nil, nil)
	kept := prepare(t, b, "orders", msg("kept"))
	undone := prepare(t, b, "orders", msg("undone"))
	if _, err := b.Rollback(ctx, undone.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = txnBroker(t, dir, nil, nil)
	if tx, err := b.Transaction(ctx, kept.ID); err != nil || tx.State != TxnStatePrepared {
		t.Fatalf("after restart: %+v, %v; want prepared", tx, err)
	}
	if tx, err := b.Transaction(ctx, undone.ID); err != nil || tx.State != TxnStateRolledBack {
		t.Fatalf("after restart: %+v, %v; want rolled back", tx, err)
	}
	if _, err := b.Commit(ctx, kept.ID); err != nil {
		t.Fatal(err)
	}
	if got := onQueues(t, b, "orders"); len(got) != 1 || got[0].ID != kept.ID {
		t.Fatalf("queues hold %d messages; want the committed one", len(got))
	}
}

func TestTxnCheckBack(t *testing.T) {
	for _, tc := range []struct {
		name    string
		answers []string // per check; "" fails it
		state   string
		checks  int
		reason  string
	}{
		{"unknown then commit", []string{"unknown", "commit"}, TxnStateCommitted, 2, "answered commit to check 2"},
		{"rollback", []string{"rollback"}, TxnStateRolledBack, 1, "answered rollback to check 1"},
		{"failures then commit", []string{"", "", "commit"}, TxnStateCommitted, 3, "answered commit to check 3"},
		{"max checks", []string{"unknown", "", "unknown"}, TxnStateRolledBack, 3, "no decision after 3 checks (last: unknown)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clock := newFakeClock()
			checker := &fakeChecker{answer: func(c TxnCheck) TxnCheckResult {
				if c.Check > len(tc.answers) {
					return TxnCheckResult{Err: "asked too often"}
				}
				if a := tc.answers[c.Check-1]; a != "" {
					return TxnCheckResult{Answer: a, Status: 200}
				}
				return TxnCheckResult{Err: "status 500", Status: 500}
			}}
			b := txnBroker(t, t.TempDir(), clock, checker)
			res := prepare(t, b, "orders", &Message{Body: []byte("checked"), Tag: "created", Keys: []string{"k1"}})

			// Not due before its timeout.
			if n := b.CheckTransactions(ctx); n != 0 || checker.count() != 0 {
				t.Fatalf("checked %d before the timeout", checker.count())
			}
			clock.advance(DefaultTxnTimeout)
			for i := 0; i < len(tc.answers); i++ {
				deadline := time.Now().Add(10 * time.Second)
				for checker.count() < i+1 {
					b.CheckTransactions(ctx)
					if time.Now().After(deadline) {
						t.Fatalf("check %d was never made", i+1)
					}
				}
				clock.advance(b.cfg.TxnCheckInterval)
			}
			tx := waitTxn(t, b, res.ID, tc.state)
			if tx.Checks != tc.checks || tx.Reason != tc.reason {
				t.Fatalf("decided after %d checks, reason %q; want %d, %q", tx.Checks, tx.Reason, tc.checks, tc.reason)
			}
			if n := checker.count(); n != tc.checks {
				t.Fatalf("%d checks made; want %d", n, tc.checks)
			}
			checker.mu.Lock()
			first := checker.checks[0]
			checker.mu.Unlock()
			if first.MsgID != res.ID || first.TransactionID != res.ID || first.Topic != "orders" || first.Tag != "created" || len(first.Keys) != 1 || first.Check != 1 {
				t.Fatalf("first check = %+v", first)
			}
			want := 0
			if tc.state == TxnStateCommitted {
				want = 1
			}
			if got := onQueues(t, b, "orders"); len(got) != want {
				t.Fatalf("queues hold %d messages; want %d", len(got), want)
			}
			tr, err := b.MessageTrace(ctx, res.ID)
			if err != nil {
				t.Fatal(err)
			}
			if tr.Transaction == nil || tr.Transaction.State != tc.state || tr.Transaction.Reason != tc.reason || len(tr.Transaction.CheckLog) != tc.checks {
				t.Fatalf("trace's transaction = %+v; want %s with %d checks and the reason %q", tr.Transaction, tc.state, tc.checks, tc.reason)
			}
			for i, c := range tr.Transaction.CheckLog {
				want := tc.answers[i]
				if want == "" {
					want = "failed"
				}
				if c.Check != i+1 || c.Outcome != want {
					t.Fatalf("trace's check %d = %+v; want outcome %s", i+1, c, want)
				}
			}
		})
	}
}

func TestTxnListPrepared(t *testing.T) {
	ctx := context.Background()
	b := txnBroker(t, t.TempDir(), nil, nil)
	var ids []string
	for range 5 {
		ids = append(ids, prepare(t, b, "orders", msg("x")).ID)
	}
	if _, err := b.Commit(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	var got []string
	cursor := int64(0)
	for page := 0; ; page++ {
		txs, next, err := b.Transactions(ctx, TxnStatePrepared, cursor, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, tx := range txs {
			got = append(got, tx.MsgID)
		}
		if next == 0 {
			break
		}
		if page > 5 {
			t.Fatalf("cursor does not end: %d", next)
		}
		cursor = next
	}
	want := []string{ids[0], ids[2], ids[3], ids[4]}
	if len(got) != len(want) {
		t.Fatalf("listed %v; want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("listed %v; want %v", got, want)
		}
	}
	if _, _, err := b.Transactions(ctx, "WHATEVER", 0, 2); CodeOf(err) != CodeInvalidTransaction {
		t.Fatalf("bad state: %v", err)
	}
}

// TestTxnTopicDeleteRollsBack: a topic's delete rolls its prepared
// transactions back at once, saying why (G9: they stayed PREPARED, listed,
// counted and checked until their timeouts); a commit after it is the
// opposite decision (409), and a decided one keeps its decision.
func TestTxnTopicDeleteRollsBack(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := txnBroker(t, dir, nil, nil)
	open := prepare(t, b, "orders", msg("open"))
	done := prepare(t, b, "orders", msg("done"))
	other := prepare(t, b, "invoices", msg("other"))
	if _, err := b.Commit(ctx, done.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteTopic(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		tx, err := b.Transaction(ctx, open.ID)
		if err != nil || tx.State != TxnStateRolledBack || tx.Reason != "its topic was deleted" || tx.DecidedAt.IsZero() {
			t.Fatalf("%s: the deleted topic's prepared transaction is %+v, %v; want rolled back because its topic was deleted", when, tx, err)
		}
		if _, err := b.Commit(ctx, open.ID); !errors.Is(err, ErrTxnDecided) {
			t.Fatalf("%s: commit after the delete: %v; want ErrTxnDecided", when, err)
		}
		if tx, err := b.Transaction(ctx, done.ID); err != nil || tx.State != TxnStateCommitted {
			t.Fatalf("%s: the committed one is %+v, %v; want committed", when, tx, err)
		}
		if tx, err := b.Transaction(ctx, other.ID); err != nil || tx.State != TxnStatePrepared {
			t.Fatalf("%s: another topic's is %+v, %v; want prepared", when, tx, err)
		}
		list, _, err := b.Transactions(ctx, TxnStatePrepared, 0, 100)
		if err != nil || len(list) != 1 || list[0].MsgID != other.ID {
			t.Fatalf("%s: prepared list %+v, %v; want only the other topic's", when, list, err)
		}
	}
	check("after the delete")
	if got := testutil.ToFloat64(b.metrics.txn.rolledBack); got != 1 {
		t.Fatalf("rolled back counter %v; want 1", got)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = txnBroker(t, dir, nil, nil)
	check("after a restart")
}

// TestTxnRollbackSurvivesRebuild: a rollback leaves its record in the log,
// so a meta.db rebuilt from the log (--rebuild-metadata) knows it; before,
// the rolled-back transaction came back prepared (and was checked again).
func TestTxnRollbackSurvivesRebuild(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := txnBroker(t, dir, nil, nil)
	// On one queue: prepared records, which take no queue offset, were
	// read by the rebuild's survey as the topic created again.
	one := func(body string) *Message { return &Message{Body: []byte(body), ShardingKey: "k"} }
	kept := prepare(t, b, "orders", one("kept"))
	undone := prepare(t, b, "orders", one("undone"))
	done := prepare(t, b, "orders", one("done"))
	if _, err := b.Rollback(ctx, undone.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Commit(ctx, done.ID); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(b.metrics.txn.rolledBack); got != 1 {
		t.Fatalf("rolled back counter %v; want 1", got)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	removeMeta(t, dir)
	cfg := testConfig(t, dir)
	cfg.RebuildMetadata = true
	b = openBroker(t, cfg)
	for _, c := range []struct {
		id, state, reason string
	}{
		{kept.ID, TxnStatePrepared, ""},
		{undone.ID, TxnStateRolledBack, txnReasonProducer},
		{done.ID, TxnStateCommitted, "committed; its row marked from the log after a restart"},
	} {
		if tx, err := b.Transaction(ctx, c.id); err != nil || tx.State != c.state || tx.Reason != c.reason {
			t.Fatalf("after the rebuild %s is %+v, %v; want %s (%q)", c.id, tx, err, c.state, c.reason)
		}
	}
	if _, err := b.Commit(ctx, undone.ID); !errors.Is(err, ErrTxnDecided) {
		t.Fatalf("commit of the rolled-back transaction after the rebuild: %v; want ErrTxnDecided", err)
	}
	if got := onQueues(t, b, "orders"); len(got) != 1 || got[0].ID != done.ID {
		t.Fatalf("queues hold %d messages; want the committed one", len(got))
	}
	if m, err := b.Message(ctx, undone.ID); err != nil || len(m.Body) == 0 {
		t.Fatalf("the rolled-back message by id: %+v, %v; want its prepared record", m, err)
	}
}

// TestTxnCommitAnswersOneDecisionTime: the first commit's answer names the
// time its row keeps (attack s8 F1: it named the clock's reading to the
// nanosecond, a few ms after the time dispatch stored).
func TestTxnCommitAnswersOneDecisionTime(t *testing.T) {
	ctx := context.Background()
	b := txnBroker(t, t.TempDir(), nil, nil)
	res := prepare(t, b, "orders", msg("once"))
	first, err := b.Commit(ctx, res.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	again, err := b.Commit(ctx, res.ID)
	if err != nil {
		t.Fatal(err)
	}
	got, err := b.Transaction(ctx, res.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !first.DecidedAt.Equal(again.DecidedAt) || !first.DecidedAt.Equal(got.DecidedAt) {
		t.Fatalf("decided at %v first, %v on the repeat, %v stored", first.DecidedAt, again.DecidedAt, got.DecidedAt)
	}
}

// TestProducerGroupUpdatedAt (attack s8 F6): a change of a producer
// group's check_url or secret moves its updated_at; a PUT that changes
// nothing keeps it. It stayed at the creation time through every change.
func TestProducerGroupUpdatedAt(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	b := txnBroker(t, t.TempDir(), clock, nil)
	first, _, err := b.PutProducerGroup(ctx, "pg", "https://a.example/check", "")
	if err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Second)
	same, _, err := b.PutProducerGroup(ctx, "pg", "https://a.example/check", "")
	if err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Second)
	moved, _, err := b.PutProducerGroup(ctx, "pg", "https://b.example/check", "")
	if err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Second)
	rotated, err := b.RotateProducerGroupSecret(ctx, "pg", "")
	if err != nil {
		t.Fatal(err)
	}
	if !same.UpdatedAt.Equal(first.UpdatedAt) || !moved.UpdatedAt.Equal(first.UpdatedAt.Add(2*time.Second)) ||
		!rotated.UpdatedAt.Equal(first.UpdatedAt.Add(3*time.Second)) || !rotated.CreatedAt.Equal(first.CreatedAt) {
		t.Fatalf("updated_at: created %v, unchanged PUT %v, new check_url %v, rotated %v (created_at %v)",
			first.UpdatedAt, same.UpdatedAt, moved.UpdatedAt, rotated.UpdatedAt, rotated.CreatedAt)
	}
}
