package broker

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/nats-io/nuid"
	"github.com/postbus/postbus/broker/meta"
	"github.com/prometheus/client_golang/prometheus"
)

// Transactional messages (DESIGN §3, RocketMQ's half messages).
//
// Prepare stores the message in the commitlog like a publish (fsynced
// before it is acknowledged under SyncFlush), on its real topic and the
// queue it will be committed to, flagged prepared and with no queue
// offset: nothing that reads queues (push, pull, reads by offset) can see
// it, and dispatch indexes only its id, not its keys or dedup id, so a
// query by key does not find it either. Dispatch adds its row to meta.db
// (transactions), as it adds a delayed message's timer, so a crash
// between the append and the row replays into the row. The record is the
// durable truth: Prepare answers once it is durable, without waiting for
// the row (which would cost a meta.db fsync of its own per prepare), and
// until dispatch has stored the row the process holds it in memory
// (txnLive.fresh), so a decision right after the answer finds it. The
// record carries what the row needs: its producer group in the record's
// origin field and its first check time in its deliver-at field.
//
// Commit appends the message again, with the same id and flagged
// committed, on its queue (so its queue offset is assigned at commit). The
// copy is the decision: dispatch marks the row committed, with the copy's
// queue and offset, when it meets it, in the same batched write as the
// rows of prepared records (and so on the replay after a crash), and until
// then the process answers from the commit it made (txnLive). A commit is
// one append, and stored once: a second decision finds the first. An
// append whose outcome is unknown (a failed fsync, a replica group's lost
// answer) makes the next decision wait for dispatch and look for the copy
// by id in the key index; finding one with the row unmarked, it only marks
// the row, logging it at ERROR and counting it
// (postbus_transaction_anomalies_total). Rollback appends a small record
// of the id flagged prepared and rolled back (no body, never queued, not
// indexed), which dispatch turns into the decision when it replays the log
// into a rebuilt meta.db, then writes the row (its decisions batched,
// decideBatch); the prepared record stays in the log, never queued, until
// retention. A topic's delete rolls its prepared transactions back in its
// own meta.db transaction.
//
// The check-back loop claims due rows (their next check moved one interval
// ahead and counted, in one meta.db write, so a crash with a check in
// flight asks again an interval later) and asks the producer group's
// check_url through TxnChecker. After TxnCheckMax checks without a
// decision the transaction is rolled back, the reason kept in its row and
// in the trace. Every meta.db write here goes through the store's write
// path (meta.Tx), so a replica group replays it.

// Transaction limits and defaults.
const (
	DefaultTxnTimeout       = 6 * time.Second
	MaxTxnTimeout           = time.Hour
	DefaultTxnCheckInterval = 30 * time.Second
	DefaultTxnCheckMax      = 15
	DefaultTxnCheckTimeout  = 5 * time.Second
	// txnCheckBatch bounds the due transactions one pass of the check
	// loop claims, and txnCheckParallel the checks in flight at once.
	txnCheckBatch    = 256
	txnCheckParallel = 32
	// txnPurgeEvery is how often decided transactions older than the
	// retention are deleted.
	txnPurgeEvery = 10 * time.Minute
	// txnFreshMax bounds the prepares held in memory until dispatch stores
	// their rows (txnLive.fresh): past it (dispatch stalled, meta.db
	// failing) a prepare waits for dispatch, at most txnFreshWait.
	txnFreshMax  = 1 << 16
	txnFreshWait = 30 * time.Second
)

// Transaction states as the API names them.
const (
	TxnStatePrepared   = "PREPARED"
	TxnStateCommitted  = "COMMITTED"
	TxnStateRolledBack = "ROLLED_BACK"
)

// Codes of transactional messages (see errors.go for the rest).
const (
	CodeInvalidTransaction    Code = "invalid_transaction"
	CodeTransactionNotFound   Code = "transaction_not_found"
	CodeTransactionDecided    Code = "transaction_decided" // the opposite decision was taken
	CodeInvalidProducerGroup  Code = "invalid_producer_group"
	CodeProducerGroupNotFound Code = "producer_group_not_found"
)

const (
	txnIDSep                   = "~" // broker~msgid in a cluster, as receipts
	txnCheckAnswerCommit       = "commit"
	txnCheckAnswerRollback     = "rollback"
	txnCheckAnswerUnknown      = "unknown"
	txnCheckFailed             = "failed"
	txnAnomalyCopyFound        = "commit_copy_found"
	txnAnomalyRecordUnreadable = "prepared_record_unreadable"
	txnAnomalyTopicGone        = "topic_gone"
	txnReasonMaxChecks         = "no decision after %d checks (last: %s)"
	txnReasonProducer          = "decided by the producer"
	txnReasonCheck             = "answered %s to check %d"
	txnReasonRecordLost        = "its prepared record could not be read: %v"
	txnReasonTopicGone         = meta.TxnReasonTopicDeleted
)

// ErrTxnNotFound and ErrTxnDecided are the sentinels of an unknown
// transaction and of a decision opposite to the one taken.
var (
	ErrTxnNotFound = &Error{Code: CodeTransactionNotFound}
	ErrTxnDecided  = &Error{Code: CodeTransactionDecided}
)

// Txn is a transaction as the API shows it.
type Txn struct {
	ID            string // the transaction id: the message id, after "broker~" in a cluster
	MsgID         string
	Topic         string
	ProducerGroup string
	State         string // TxnStatePrepared, TxnStateCommitted, TxnStateRolledBack
	PreparedAt    time.Time
	NextCheck     time.Time // while prepared
	Checks        int
	QueueID       int   // committed: its queue
	QueueOffset   int64 // committed: its offset
	DecidedAt     time.Time
	Reason        string
}

// TxnCheck is one check-back request to a producer group's check_url.
type TxnCheck struct {
	TransactionID string
	MsgID         string
	Topic         string
	Tag           string
	Keys          []string
	Check         int // 1 for the first
}

// TxnCheckResult is what a check-back got: Answer is commit, rollback or
// unknown when the endpoint answered one; empty with Err otherwise.
type TxnCheckResult struct {
	Answer  string
	Status  int // HTTP status, 0 without one
	Err     string
	Latency time.Duration
}

// ProducerGroup is a producer group's check endpoint and signing secrets.
type ProducerGroup struct {
	Name            string
	CheckURL        string
	Secret          string
	PreviousSecrets []PreviousSecret
	CreatedAt       time.Time
	UpdatedAt       time.Time
}

// SigningSecrets are the secrets a check at now is signed with: the
// current one, then each earlier one whose overlap has not ended.
func (g *ProducerGroup) SigningSecrets(now time.Time) []string {
	return signingSecrets(g.Secret, g.PreviousSecrets, now)
}

// TxnChecker asks a producer group about a transaction (package push
// implements it with the SSRF-guarded, signing webhook client). It must
// return within ctx's deadline.
type TxnChecker interface {
	CheckTransaction(ctx context.Context, g ProducerGroup, c TxnCheck) TxnCheckResult
}

// SetTxnChecker sets who sends the check-backs (Config.TxnChecker, when it
// can only be made once the broker is open).
func (b *Broker) SetTxnChecker(c TxnChecker) {
	if c == nil {
		b.txnChecker.Store(nil)
		return
	}
	b.txnChecker.Store(&c)
}

// TransactionID is the id the API gives the transaction of the message
// msgID: in a cluster it names this broker, so that a decision sent to any
// broker reaches this one.
func (b *Broker) TransactionID(msgID string) string {
	if p := b.name.Load(); p != nil && *p != "" {
		return *p + txnIDSep + msgID
	}
	return msgID
}

// validateTxnTimeout checks a transaction's timeout (0: the default).
func validateTxnTimeout(d time.Duration) error {
	if d < 0 || d > MaxTxnTimeout {
		return errf(CodeInvalidTransaction, "Postbus-Transaction-Timeout", "the transaction timeout must be positive and at most %s, not %s", MaxTxnTimeout, d)
	}
	return nil
}

// ValidateProducerGroupName reports whether name may name a producer group:
// the rules of consumer group names.
func ValidateProducerGroupName(name string) error {
	if !groupRE.MatchString(name) {
		return errf(CodeInvalidProducerGroup, "producer_group", "%q is not a valid producer group name: 1-120 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit", name)
	}
	return nil
}

// Prepare stores m as a prepared (half) message of topic for the producer
// group, to be checked after timeout (0: DefaultTxnTimeout) if undecided.
// It returns once the message is durable (fsynced under SyncFlush); its
// transaction row is dispatch's to store. A delayed message, a dedup id
// and an unknown producer group are refused before anything is stored.
func (b *Broker) Prepare(ctx context.Context, topic string, m *Message, group string, timeout time.Duration) (Result, error) {
	if b.isClosing() {
		return Result{}, ErrClosed
	}
	if err := ValidateProducerGroupName(group); err != nil {
		return Result{}, err
	}
	if err := validateTxnTimeout(timeout); err != nil {
		return Result{}, err
	}
	if timeout == 0 {
		timeout = DefaultTxnTimeout
	}
	if m.Delay != 0 || m.DelayLevel != 0 || !m.DeliverAt.IsZero() {
		return Result{}, errf(CodeInvalidTransaction, "Postbus-Transaction", "a transactional message cannot be delayed: commit it when it is due instead")
	}
	if m.DedupID != "" {
		return Result{}, errf(CodeInvalidTransaction, "Postbus-Dedup-Id", "a transactional message takes no dedup id: a prepare retried by its producer makes a second transaction, rolled back by the check that finds no row for it")
	}
	now := b.now()
	if _, err := b.check(topic, []*Message{m}, now); err != nil {
		if code := CodeOf(err); code != "" {
			b.metrics.rejected(code)
		}
		return Result{}, err
	}
	if _, known := b.producers.Load(group); !known {
		if _, err := b.producerGroup(ctx, group); err != nil {
			return Result{}, err
		}
		b.producers.Store(group, struct{}{}) // groups are never deleted
	}
	if b.diskFull.Load() {
		b.metrics.rejected(CodeDiskFull)
		return Result{}, &Error{Code: CodeDiskFull, Err: ErrDiskFull, Detail: fmt.Sprintf("the disk holding the data directory is over %.0f%% full; publishes are refused until retention frees space", b.cfg.DiskFullRatio*100)}
	}
	if err := b.meta.Corrupt(); err != nil {
		b.metrics.rejected(CodeUnavailable)
		return Result{}, &Error{Code: CodeUnavailable, Err: err, Detail: "the metadata database is damaged, so the transaction cannot be kept; nothing was stored. The broker needs a restart with --rebuild-metadata"}
	}
	m.ID = nuid.Next()
	m.Topic = topic
	m.BornAt = now
	m.flags = flagPrepared
	m.Origin = group
	m.DeliverAt = now.Add(timeout) // the first check, for dispatch's row
	if b.txnLive.freshCount() >= txnFreshMax {
		wctx, cancel := context.WithTimeout(ctx, txnFreshWait)
		err := b.waitDispatched(wctx, b.log.Committed())
		cancel()
		if err != nil {
			b.metrics.rejected(CodeUnavailable)
			return Result{}, &Error{Code: CodeUnavailable, Err: err,
				Detail: fmt.Sprintf("%d prepared messages wait for dispatch to store their transactions; nothing was stored, retry", txnFreshMax)}
		}
	}
	// Known as prepared from before its append until dispatch stores its
	// row (see txnLive.fresh): the answer does not wait for that write.
	b.txnLive.expect(m.ID)
	for attempt := 0; ; attempt++ {
		ts, err := b.topicForPublish(ctx, topic)
		if err != nil {
			b.txnLive.unexpect(m.ID)
			return Result{}, err
		}
		m.QueueID = ts.pickQueue(m.ShardingKey)
		res, err := b.store(ctx, ts, []*Message{m}, false)
		if errors.Is(err, errStaleTopic) && attempt < maxStaleRetries {
			continue
		}
		if err != nil {
			// Not stored, or (a failed fsync) not known to be: a record
			// that is in the log after all gets its row from dispatch.
			b.txnLive.unexpect(m.ID)
		}
		if errors.Is(err, errStaleTopic) {
			return Result{}, &Error{Code: CodeUnavailable, Detail: fmt.Sprintf("topic %q was deleted and created again %d times while publishing; nothing was stored", topic, attempt+1), Err: err}
		}
		if err != nil {
			return Result{}, err
		}
		b.txnLive.appended(meta.Txn{MsgID: m.ID, Topic: topic, ProducerGroup: group, LogOffset: res[0].logOffset,
			State: meta.TxnPrepared, PreparedAt: res[0].storedAt, NextCheck: m.DeliverAt, QueueID: -1, QueueOffset: -1})
		b.metrics.published(topic, 1, len(m.Body))
		b.metrics.txn.prepared.Inc()
		r := res[0]
		r.DeliverAt = time.Time{}
		return r, nil
	}
}

// Transaction returns the transaction of msgID.
func (b *Broker) Transaction(ctx context.Context, msgID string) (Txn, error) {
	t, _, err := b.txnRow(ctx, msgID)
	if err != nil {
		return Txn{}, err
	}
	return b.txnOut(b.txnLive.overlay(t)), nil
}

// Transactions lists transactions in state (TxnStatePrepared, …; "" for
// all) in prepare order, after the cursor (0 for the first page); next is
// the cursor of the following page, 0 at the end.
func (b *Broker) Transactions(ctx context.Context, state string, cursor int64, limit int) (out []Txn, next int64, err error) {
	st := ""
	switch state {
	case "":
	case TxnStatePrepared:
		st = meta.TxnPrepared
	case TxnStateCommitted:
		st = meta.TxnCommitted
	case TxnStateRolledBack:
		st = meta.TxnRolledBack
	default:
		return nil, 0, errf(CodeInvalidTransaction, "state", "state is PREPARED, COMMITTED or ROLLED_BACK, not %q", state)
	}
	if limit <= 0 {
		limit = DefaultQueryLimit
	}
	limit = min(limit, MaxQueryLimit)
	// Every answered prepare is listed: its row may still be dispatch's
	// to write.
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		return nil, 0, err
	}
	rows, err := b.meta.Txns(ctx, st, cursor-1, limit+1)
	if err != nil {
		return nil, 0, err
	}
	if len(rows) > limit {
		rows = rows[:limit]
		next = rows[limit-1].LogOffset + 1
	}
	for _, t := range rows {
		t = b.txnLive.overlay(t)
		if st != "" && t.State != st {
			continue // committed here; its row is about to say so
		}
		out = append(out, b.txnOut(t))
	}
	return out, next, nil
}

func (b *Broker) txnOut(t meta.Txn) Txn {
	out := Txn{ID: b.TransactionID(t.MsgID), MsgID: t.MsgID, Topic: t.Topic, ProducerGroup: t.ProducerGroup,
		PreparedAt: t.PreparedAt, Checks: t.Checks, QueueID: t.QueueID, QueueOffset: t.QueueOffset,
		DecidedAt: t.DecidedAt, Reason: t.Reason}
	switch t.State {
	case meta.TxnPrepared:
		out.State, out.NextCheck = TxnStatePrepared, t.NextCheck
	case meta.TxnCommitted:
		out.State = TxnStateCommitted
	default:
		out.State = TxnStateRolledBack
	}
	return out
}

// txnRow reads msgID's transaction row: the row of a prepare answered by
// this process whose row dispatch has not stored yet (fresh), or its row in
// meta.db once dispatch has caught up with the log.
func (b *Broker) txnRow(ctx context.Context, msgID string) (t meta.Txn, fresh bool, err error) {
	if !msgIDRE.MatchString(msgID) {
		return meta.Txn{}, false, errf(CodeInvalidTransaction, "transaction_id", "%q is not a transaction id", msgID)
	}
	if t, ok := b.txnLive.freshRow(msgID); ok {
		return t, true, nil
	}
	t, err = b.meta.Txn(ctx, msgID)
	if errors.Is(err, meta.ErrNotFound) {
		// Its prepare may be in the log with its row still to come from
		// dispatch (a prepare whose answer was lost, or made before a
		// restart): look again once dispatch has caught up.
		if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
			return meta.Txn{}, false, err
		}
		t, err = b.meta.Txn(ctx, msgID)
	}
	if errors.Is(err, meta.ErrNotFound) {
		return meta.Txn{}, false, &Error{Code: CodeTransactionNotFound, Field: "transaction_id", Err: ErrTxnNotFound,
			Detail: fmt.Sprintf("no transaction %q", msgID)}
	}
	return t, false, err
}

// txnLocks serialise the decisions on one transaction (striped by id), so
// that a commit and a check's commit never both append its message.
type txnLocks struct {
	seed maphash.Seed
	mu   [64]sync.Mutex
}

func (l *txnLocks) of(id string) *sync.Mutex {
	return &l.mu[maphash.String(l.seed, id)%uint64(len(l.mu))]
}

// Commit commits the transaction of msgID: its message is stored on its
// queue with the same id and delivered from there. Committing a committed
// transaction answers it again; a rolled-back one is ErrTxnDecided.
func (b *Broker) Commit(ctx context.Context, msgID string) (Txn, error) {
	return b.decide(ctx, msgID, true, txnReasonProducer)
}

// Rollback rolls the transaction of msgID back: its message is never
// delivered. Rolling back a rolled-back transaction answers it again; a
// committed one is ErrTxnDecided.
func (b *Broker) Rollback(ctx context.Context, msgID string) (Txn, error) {
	return b.decide(ctx, msgID, false, txnReasonProducer)
}

func (b *Broker) decide(ctx context.Context, msgID string, commit bool, reason string) (Txn, error) {
	if b.isClosing() {
		return Txn{}, ErrClosed
	}
	// The row is read under the lock: one read, and no decision of
	// another caller between it and this one's.
	mu := b.txnMu.of(msgID)
	mu.Lock()
	t, fresh, err := b.txnRow(ctx, msgID)
	if err == nil && t.State == meta.TxnPrepared {
		t, err = b.decideLocked(ctx, t, fresh, commit, reason)
	}
	mu.Unlock()
	if err != nil {
		return Txn{}, err
	}
	if (t.State == meta.TxnCommitted) != commit {
		want, have := "commit", "rolled back"
		if !commit {
			want, have = "roll back", "committed"
		}
		return b.txnOut(t), &Error{Code: CodeTransactionDecided, Field: "transaction_id", Err: ErrTxnDecided,
			Detail: fmt.Sprintf("cannot %s transaction %s: it was %s at %s (%s)", want, b.TransactionID(msgID), have,
				t.DecidedAt.UTC().Format(time.RFC3339Nano), t.Reason)}
	}
	return b.txnOut(t), nil
}

// decideLocked decides t, a prepared row read under its lock (fresh: not
// stored by dispatch yet).
func (b *Broker) decideLocked(ctx context.Context, t meta.Txn, fresh, commit bool, reason string) (meta.Txn, error) {
	var err error
	if p, ok := b.txnLive.pending(t.MsgID); ok {
		return p, nil // committed; dispatch has not marked its row yet
	}
	var prep, copyOf *Message
	if b.txnLive.doubtful(t.MsgID) {
		// An earlier commit's append failed with its outcome unknown (a
		// failed fsync, a replica group's lost answer): its copy may be
		// in the log. Look for it once dispatch, which marks the row of
		// a copy it meets, has caught up.
		if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
			return meta.Txn{}, err
		}
		if t, err = b.meta.Txn(ctx, t.MsgID); err != nil || t.State != meta.TxnPrepared {
			return t, err
		}
		if prep, copyOf, err = b.txnRecords(ctx, t); err != nil {
			return meta.Txn{}, err
		}
	} else if m, err := b.readMessage(t.LogOffset); err == nil && m.ID == t.MsgID && m.Prepared() {
		prep = m
	} else {
		b.logger.Error("transaction's prepared record unreadable", slog.String("id", t.MsgID), slog.Int64("offset", t.LogOffset), slog.Any("err", err))
	}
	state, qid, qoff := meta.TxnRolledBack, -1, int64(-1)
	switch {
	case copyOf != nil:
		// Committed by an append whose answer was lost, and its row not
		// marked: the message is on its queue already, so it is committed
		// whatever this decision says, and never stored twice.
		b.logger.Error("transaction's message already committed; only marking its row",
			slog.String("id", t.MsgID), slog.Int64("offset", copyOf.LogOffset))
		b.metrics.txn.anomaly(txnAnomalyCopyFound)
		state, qid, qoff = meta.TxnCommitted, copyOf.QueueID, copyOf.QueueOffset
		reason = "found committed after a commit whose outcome was unknown"
	case !commit:
	case prep == nil:
		// Gone with its segment or damaged: nothing to commit. Rolled
		// back, and said so, rather than left to be checked for ever.
		b.logger.Error("transaction's prepared record unreadable; rolling it back", slog.String("id", t.MsgID), slog.Int64("offset", t.LogOffset))
		b.metrics.txn.anomaly(txnAnomalyRecordUnreadable)
		reason = fmt.Sprintf(txnReasonRecordLost, "not found in the log")
	default:
		b.txnLive.begin(t.MsgID, reason) // dispatch may meet the copy before the append returns
		r, err := b.storeCommitted(ctx, prep)
		if err != nil {
			b.txnLive.abort(t.MsgID)
		}
		if errors.Is(err, ErrTopicNotFound) {
			b.logger.Error("transaction's topic deleted before its commit; rolling it back", slog.String("id", t.MsgID), slog.String("topic", t.Topic))
			b.metrics.txn.anomaly(txnAnomalyTopicGone)
			reason = txnReasonTopicGone
			break
		}
		if err != nil {
			b.txnLive.doubt(t.MsgID)
			return meta.Txn{}, err
		}
		// The copy in the log is the decision: dispatch marks the row
		// when it meets it (after a crash, on the replay), in its own
		// batched write, so a commit costs one append. Until then the
		// row is read through this entry.
		// Decided when its copy was stored: the time dispatch marks the
		// row with, so every answer says the same (the first said the
		// clock's reading, to the nanosecond).
		t.State, t.QueueID, t.QueueOffset, t.DecidedAt, t.Reason = meta.TxnCommitted, r.QueueID, r.QueueOffset, r.storedAt.UTC(), reason
		b.txnLive.done(t)
		b.metrics.txn.committed.Inc()
		return t, nil
	}
	if state == meta.TxnRolledBack && reason != txnReasonTopicGone {
		// Its trace in the log first, so that a meta.db rebuilt from the
		// log (--rebuild-metadata) does not bring it back as prepared.
		// Dispatch marks the row from it too: the write below may find
		// it decided already.
		if err := b.storeRolledBack(ctx, t, reason); err != nil && !errors.Is(err, ErrTopicNotFound) {
			return meta.Txn{}, fmt.Errorf("rollback of transaction %s: %w", t.MsgID, err)
		}
	}
	if fresh {
		// A decision other than a commit is a write of the row: dispatch
		// stores it first. (A commit needs no row: its copy in the log
		// decides, and dispatch marks the row it stores.)
		if err := b.waitDispatched(ctx, t.LogOffset+1); err != nil {
			return meta.Txn{}, err
		}
	}
	now := b.now()
	t, err = b.decideRow(meta.TxnDecision{MsgID: t.MsgID, State: state, QueueID: qid, QueueOffset: qoff, At: now, Reason: reason})
	if errors.Is(err, meta.ErrDecided) {
		if t.State == meta.TxnRolledBack && state == meta.TxnRolledBack {
			b.metrics.txn.rolledBack.Inc() // marked by dispatch from its record
		}
		return t, nil
	}
	if err != nil {
		return meta.Txn{}, err
	}
	b.txnLive.settled(t.MsgID)
	if state == meta.TxnCommitted {
		b.metrics.txn.committed.Inc()
	} else {
		b.metrics.txn.rolledBack.Inc()
	}
	return t, nil
}

// txnLive is what the process knows of transactions beyond their rows:
// commits under way and those whose rows dispatch has not marked yet, and
// transactions whose last commit failed with its outcome unknown.
type txnLive struct {
	mu      sync.Mutex
	reasons map[string]string   // commits from their append until dispatch marks them; guarded by mu
	commits map[string]meta.Txn // of those, the ones whose append returned; guarded by mu
	unsure  map[string]bool     // guarded by mu
	// fresh are prepares from before their append until dispatch has
	// stored their rows (a row with LogOffset -1: the append is under
	// way). The prepared record in the log is the durable truth, and a
	// crash replays it into its row, so a prepare is answered once its
	// record is durable, without waiting for that meta.db write, and a
	// commit right after it is decided from this row. Guarded by mu.
	fresh map[string]meta.Txn
}

// expect notes a prepare about to be appended. Noted before the append,
// so that dispatch, which forgets an entry once it has stored its row,
// can never store it before the entry exists (and leave it for ever).
func (l *txnLive) expect(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fresh == nil {
		l.fresh = make(map[string]meta.Txn)
	}
	l.fresh[id] = meta.Txn{MsgID: id, LogOffset: -1}
}

// unexpect forgets a prepare whose append failed.
func (l *txnLive) unexpect(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.fresh, id)
}

// appended records the row of a prepare whose record is durable, unless
// dispatch has stored it already.
func (l *txnLive) appended(t meta.Txn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.fresh[t.MsgID]; ok {
		l.fresh[t.MsgID] = t
	}
}

// freshRow returns the row of a prepare whose record is durable and whose
// row dispatch has not stored yet.
func (l *txnLive) freshRow(id string) (meta.Txn, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.fresh[id]
	return t, ok && t.LogOffset >= 0
}

// rowsStored forgets the prepares whose rows dispatch stored, or whose
// records it skipped (their topic deleted).
func (l *txnLive) rowsStored(ts []meta.Txn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, t := range ts {
		delete(l.fresh, t.MsgID)
	}
}

// freshCount is how many prepares wait for their rows.
func (l *txnLive) freshCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.fresh)
}

// begin notes a commit about to be appended, with its reason.
func (l *txnLive) begin(id, reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.reasons == nil {
		l.reasons = make(map[string]string)
	}
	l.reasons[id] = reason
	delete(l.unsure, id)
}

// abort forgets a commit whose append failed.
func (l *txnLive) abort(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.reasons, id)
}

// done records a commit whose append returned, unless dispatch has marked
// its row already.
func (l *txnLive) done(t meta.Txn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.reasons[t.MsgID]; !ok {
		return
	}
	if l.commits == nil {
		l.commits = make(map[string]meta.Txn)
	}
	l.commits[t.MsgID] = t
}

func (l *txnLive) pending(id string) (meta.Txn, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.commits[id]
	return t, ok
}

// marked forgets the commits whose rows are marked.
func (l *txnLive) marked(ids []meta.TxnDecision) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, d := range ids {
		delete(l.reasons, d.MsgID)
		delete(l.commits, d.MsgID)
		delete(l.unsure, d.MsgID)
	}
}

func (l *txnLive) doubt(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.unsure == nil {
		l.unsure = make(map[string]bool)
	}
	l.unsure[id] = true
}

func (l *txnLive) doubtful(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.unsure[id]
}

func (l *txnLive) settled(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.unsure, id)
}

// overlay shows a row as committed when this process committed it and
// dispatch has not marked it yet.
func (l *txnLive) overlay(t meta.Txn) meta.Txn {
	if t.State != meta.TxnPrepared {
		return t
	}
	if p, ok := l.pending(t.MsgID); ok {
		return p
	}
	return t
}

// commitReason is the reason dispatch records for the commit it meets: the
// one its commit gave, or, replaying after a restart, that the row was
// marked from the log.
func (l *txnLive) commitReason(id string) string {
	l.mu.Lock()
	r, ok := l.reasons[id]
	l.mu.Unlock()
	if ok {
		return r
	}
	return "committed; its row marked from the log after a restart"
}

// txnRecords finds the prepared record of t and a committed copy stored
// after it, if any (nil when there is none).
func (b *Broker) txnRecords(ctx context.Context, t meta.Txn) (prep, committed *Message, err error) {
	_, err = b.lookup(ctx, hashKey(keyID, t.MsgID), func(c *Message) bool {
		if c.ID != t.MsgID || c.Topic != t.Topic {
			return true
		}
		if c.LogOffset == t.LogOffset && c.flags&flagPrepared != 0 {
			prep = c
			return false // newest first: nothing after it is left
		}
		if c.LogOffset > t.LogOffset && c.flags&flagCommitted != 0 && committed == nil {
			committed = c
		}
		return true
	})
	if err != nil {
		return nil, nil, fmt.Errorf("look up the records of transaction %s: %w", t.MsgID, err)
	}
	return prep, committed, nil
}

// storeRolledBack appends the record of t's rollback: the transaction's
// id on its topic, flagged prepared and rolled back, with the reason and
// no body. Never queued, its id not indexed; dispatch marks the row from it
// (dispatchRolledBack).
func (b *Broker) storeRolledBack(ctx context.Context, t meta.Txn, reason string) error {
	m := &Message{ID: t.MsgID, Topic: t.Topic, BornAt: b.now(), flags: flagPrepared | flagRolledBack, Reason: reason}
	for attempt := 0; ; attempt++ {
		ts, err := b.topicState(t.Topic)
		if err != nil {
			return err
		}
		_, err = b.store(ctx, ts, []*Message{m}, false)
		if errors.Is(err, errStaleTopic) && attempt < maxStaleRetries {
			continue
		}
		return err
	}
}

// dispatchRolledBack records a rollback's record met by dispatch: its
// decision, marked in the row with the round's other decisions. Called
// with dispatchMu held.
func (b *Broker) dispatchRolledBack(off int64, rec []byte) {
	var m Message
	if err := decodeRecord(rec, &m); err != nil {
		b.logger.Error("undecodable rollback record skipped", slog.Int64("offset", off), slog.Any("err", err))
		b.metrics.skipped(skipUndecodable)
		return
	}
	b.newCommits = append(b.newCommits, meta.TxnDecision{MsgID: m.ID, State: meta.TxnRolledBack, QueueID: -1, QueueOffset: -1,
		At: m.StoredAt, Reason: m.Reason})
}

// storeCommitted appends the committed copy of the prepared message prep
// on its topic and queue.
func (b *Broker) storeCommitted(ctx context.Context, prep *Message) (Result, error) {
	m := *prep
	m.flags = flagCommitted
	m.DeliverAt, m.Origin, m.Attempt, m.Reason = time.Time{}, "", 0, ""
	m.Keys = append([]string(nil), prep.Keys...)
	for attempt := 0; ; attempt++ {
		ts, err := b.topicState(m.Topic)
		if err != nil {
			return Result{}, err
		}
		// A topic of the same name created since the prepare is another
		// topic: the message never reaches it.
		if !ts.info.Load().owns(prep.LogOffset, prep.StoredAt.UnixMilli()) {
			return Result{}, ErrTopicNotFound
		}
		if m.QueueID >= len(ts.next) {
			m.QueueID = ts.pickQueue(m.ShardingKey)
		}
		res, err := b.store(ctx, ts, []*Message{&m}, false)
		if errors.Is(err, errStaleTopic) && attempt < maxStaleRetries {
			continue
		}
		if err != nil {
			return Result{}, err
		}
		return res[0], nil
	}
}

// --- check-back ---------------------------------------------------------

// txnLoop runs the check-back passes: at the next check due, when
// dispatch adds a transaction, and at least every second (a clock that
// jumps, a row decided elsewhere).
func (b *Broker) txnLoop() {
	defer b.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-b.closing
		cancel()
	}()
	purged := b.now() // the first purge one period after the start
	for {
		wake := b.txnSig.wait()
		// Every transaction dispatch adds wakes the loop until it has
		// looked at the rows (and so seen those added before).
		b.txnWakeAt.Store(0)
		b.CheckTransactions(ctx)
		if now := b.now(); now.Sub(purged) >= txnPurgeEvery {
			// Decided transactions are kept as long as messages are, for
			// their traces and idempotent decisions, then dropped.
			purged = now
			if n, err := b.meta.PurgeTxns(ctx, now.Add(-b.cfg.Retention)); err != nil {
				if ctx.Err() == nil {
					b.logger.Error("purging decided transactions failed", slog.Any("err", err))
				}
			} else if n > 0 {
				b.logger.Info("decided transactions older than the retention purged", slog.Int64("transactions", n))
			}
		}
		wait := time.Second
		if at, ok, err := b.meta.NextTxnCheck(ctx); err == nil && ok {
			wait = min(wait, max(at.Sub(b.now()), time.Millisecond))
		}
		b.txnWakeAt.Store(b.now().Add(wait).UnixMilli())
		t := time.NewTimer(wait)
		select {
		case <-b.closing:
			t.Stop()
			return
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// CheckTransactions runs one pass of the check-back loop: it claims the
// transactions due by now and asks their producer groups, at most
// txnCheckParallel at once, deciding each as answered, and returns how
// many it checked.
func (b *Broker) CheckTransactions(ctx context.Context) int {
	checked := 0
	for {
		// A read first: claiming is a write, which would queue behind
		// (and delay) dispatch's and the decisions' writes for nothing.
		now := b.now()
		if at, ok, err := b.meta.NextTxnCheck(ctx); err != nil || !ok || at.After(now) {
			if err != nil && ctx.Err() == nil && b.txnCheckErrs.Add(1) == 1 {
				// Once until a pass succeeds: the loop runs every second,
				// and a damaged meta.db is reported by Ready already.
				b.logger.Error("looking for due transaction checks failed; checks wait until meta.db answers", slog.Any("err", err))
			}
			if err == nil {
				b.txnCheckErrs.Store(0)
			}
			return checked
		}
		b.txnCheckErrs.Store(0)
		due, err := b.meta.ClaimDueTxns(ctx, now, b.cfg.TxnCheckInterval, txnCheckBatch)
		if err != nil {
			if ctx.Err() == nil {
				b.logger.Error("claiming due transaction checks failed", slog.Any("err", err))
			}
			return checked
		}
		if len(due) == 0 {
			return checked
		}
		sem := make(chan struct{}, txnCheckParallel)
		var wg sync.WaitGroup
		for _, t := range due {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				b.checkOne(ctx, t)
			}()
		}
		wg.Wait()
		checked += len(due)
		if len(due) < txnCheckBatch || ctx.Err() != nil {
			return checked
		}
	}
}

// checkOne asks t's producer group about t (claimed: t.Checks counts this
// check) and decides it as answered, or after the last check.
func (b *Broker) checkOne(ctx context.Context, t meta.Txn) {
	if _, ok := b.txnLive.pending(t.MsgID); ok {
		return // committed; dispatch is about to mark its row
	}
	maxChecks := b.cfg.TxnCheckMax
	if t.Checks > maxChecks {
		// Its last check was made (and failed) before a crash cut its
		// rollback: roll back now.
		b.rollbackAfterChecks(ctx, t, "the last check's answer was lost in a restart")
		return
	}
	res := b.askProducer(ctx, t)
	if ctx.Err() != nil {
		// Cut by the broker's close, not answered: asked again after the
		// restart (the claim moved its next check ahead and counted it).
		return
	}
	b.metrics.txn.check(res.Answer)
	outcome := res.Answer
	if outcome == "" {
		outcome = txnCheckFailed
	}
	if err := b.meta.AddTxnCheck(ctx, meta.TxnCheck{MsgID: t.MsgID, Check: t.Checks, At: b.now(), Outcome: outcome,
		Status: res.Status, Error: res.Err, Latency: res.Latency}); err != nil {
		// The trace misses this check; the decision does not depend on it.
		b.logger.Error("recording a transaction check for its trace failed", slog.String("id", t.MsgID), slog.Any("err", err))
	}
	switch res.Answer {
	case txnCheckAnswerCommit, txnCheckAnswerRollback:
		reason := fmt.Sprintf(txnReasonCheck, res.Answer, t.Checks)
		if _, err := b.decide(ctx, t.MsgID, res.Answer == txnCheckAnswerCommit, reason); err != nil && !errors.Is(err, ErrTxnDecided) {
			// It stays prepared and is checked again next interval.
			b.logger.Error("deciding a transaction as its check answered failed", slog.String("id", t.MsgID), slog.String("answer", res.Answer), slog.Any("err", err))
		}
		return
	}
	if t.Checks >= maxChecks {
		last := res.Err
		if res.Answer != "" {
			last = res.Answer
		}
		b.rollbackAfterChecks(ctx, t, last)
		return
	}
	if res.Answer == "" {
		b.logger.Warn("transaction check failed; asking again later", slog.String("id", t.MsgID),
			slog.String("producer_group", t.ProducerGroup), slog.Int("check", t.Checks), slog.String("err", res.Err))
	}
}

func (b *Broker) rollbackAfterChecks(ctx context.Context, t meta.Txn, last string) {
	reason := fmt.Sprintf(txnReasonMaxChecks, b.cfg.TxnCheckMax, last)
	b.logger.Warn("transaction rolled back after its last check", slog.String("id", t.MsgID), slog.String("reason", reason))
	b.metrics.txn.maxChecks.Inc()
	if _, err := b.decide(ctx, t.MsgID, false, reason); err != nil && !errors.Is(err, ErrTxnDecided) {
		b.logger.Error("rolling back a transaction after its last check failed", slog.String("id", t.MsgID), slog.Any("err", err))
	}
}

// askProducer makes one check of t.
func (b *Broker) askProducer(ctx context.Context, t meta.Txn) TxnCheckResult {
	g, err := b.producerGroup(ctx, t.ProducerGroup)
	if err != nil {
		return TxnCheckResult{Err: "producer group: " + err.Error()}
	}
	checker := b.txnChecker.Load()
	if checker == nil {
		return TxnCheckResult{Err: "this broker sends no checks (no checker configured)"}
	}
	c := TxnCheck{TransactionID: b.TransactionID(t.MsgID), MsgID: t.MsgID, Topic: t.Topic, Check: t.Checks}
	if m, err := b.readMessage(t.LogOffset); err == nil && m.ID == t.MsgID {
		c.Tag, c.Keys = m.Tag, m.Keys
	}
	cctx, cancel := context.WithTimeout(ctx, b.cfg.TxnCheckTimeout)
	defer cancel()
	return (*checker).CheckTransaction(cctx, g, c)
}

// --- producer groups ----------------------------------------------------

func toProducerGroup(g meta.ProducerGroup) ProducerGroup {
	out := ProducerGroup{Name: g.Name, CheckURL: g.CheckURL, Secret: g.Secret, CreatedAt: g.CreatedAt, UpdatedAt: g.UpdatedAt}
	for _, p := range g.PreviousSecrets {
		out.PreviousSecrets = append(out.PreviousSecrets, PreviousSecret{Secret: p.Secret, Until: p.Until})
	}
	return out
}

func (b *Broker) producerGroup(ctx context.Context, name string) (ProducerGroup, error) {
	g, err := b.meta.ProducerGroup(ctx, name)
	if errors.Is(err, meta.ErrNotFound) {
		return ProducerGroup{}, &Error{Code: CodeProducerGroupNotFound, Field: "producer_group",
			Detail: fmt.Sprintf("no producer group %q: register it with PUT /v1/producer-groups/%s {\"check_url\":…}", name, url.PathEscape(name))}
	}
	if err != nil {
		return ProducerGroup{}, err
	}
	return toProducerGroup(g), nil
}

// ProducerGroup returns a producer group.
func (b *Broker) ProducerGroup(ctx context.Context, name string) (ProducerGroup, error) {
	if err := ValidateProducerGroupName(name); err != nil {
		return ProducerGroup{}, err
	}
	return b.producerGroup(ctx, name)
}

// ProducerGroups lists the producer groups.
func (b *Broker) ProducerGroups(ctx context.Context) ([]ProducerGroup, error) {
	gs, err := b.meta.ProducerGroups(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]ProducerGroup, 0, len(gs))
	for _, g := range gs {
		out = append(out, toProducerGroup(g))
	}
	return out, nil
}

// PutProducerGroup registers a producer group's check_url, or changes it;
// its secret is kept (a new group's is secret when given, else made up).
// created reports whether the group is new.
func (b *Broker) PutProducerGroup(ctx context.Context, name, checkURL, secret string) (g ProducerGroup, created bool, err error) {
	if err := ValidateProducerGroupName(name); err != nil {
		return ProducerGroup{}, false, err
	}
	if err := ValidateWebhookURL(checkURL); err != nil {
		var e *Error
		if errors.As(err, &e) {
			return ProducerGroup{}, false, &Error{Code: CodeInvalidProducerGroup, Field: "check_url", Detail: e.Detail, Err: err}
		}
		return ProducerGroup{}, false, &Error{Code: CodeInvalidProducerGroup, Field: "check_url", Detail: err.Error(), Err: err}
	}
	if secret != "" {
		if err := ValidateSecret(secret); err != nil {
			return ProducerGroup{}, false, &Error{Code: CodeInvalidProducerGroup, Field: "secret", Detail: "a secret is whsec_ and the standard base64 of 24 to 64 random bytes", Err: err}
		}
	}
	old, err := b.meta.ProducerGroup(ctx, name)
	switch {
	case errors.Is(err, meta.ErrNotFound):
		created = true
		if secret == "" {
			secret = NewSecret()
		}
		old = meta.ProducerGroup{Name: name, Secret: secret}
	case err != nil:
		return ProducerGroup{}, false, err
	}
	if created || old.CheckURL != checkURL {
		old.UpdatedAt = b.now() // it kept its first time through every change
	}
	old.CheckURL = checkURL
	mg, err := b.meta.PutProducerGroup(ctx, old)
	if err != nil {
		return ProducerGroup{}, false, err
	}
	return toProducerGroup(mg), created, nil
}

// RotateProducerGroupSecret gives a producer group a new signing secret
// (secret when given, else made up); the old one keeps signing beside it
// for SecretOverlap, as a subscription's.
func (b *Broker) RotateProducerGroupSecret(ctx context.Context, name, secret string) (ProducerGroup, error) {
	if err := ValidateProducerGroupName(name); err != nil {
		return ProducerGroup{}, err
	}
	g, err := b.meta.ProducerGroup(ctx, name)
	if errors.Is(err, meta.ErrNotFound) {
		_, err = b.producerGroup(ctx, name)
		return ProducerGroup{}, err
	}
	if err != nil {
		return ProducerGroup{}, err
	}
	if secret == "" {
		secret = NewSecret()
	} else if err := ValidateSecret(secret); err != nil {
		return ProducerGroup{}, &Error{Code: CodeInvalidProducerGroup, Field: "secret", Detail: "a secret is whsec_ and the standard base64 of 24 to 64 random bytes", Err: err}
	}
	if secret == g.Secret {
		return ProducerGroup{}, errf(CodeInvalidProducerGroup, "secret", "the new secret is the current one")
	}
	now := b.now()
	prev := []meta.PreviousSecret{{Secret: g.Secret, Until: now.Add(SecretOverlap)}}
	for _, p := range g.PreviousSecrets {
		if now.Before(p.Until) && p.Secret != secret {
			prev = append(prev, p)
		}
	}
	if len(prev) > MaxPreviousSecrets {
		return ProducerGroup{}, errf(CodeInvalidProducerGroup, "secret",
			"%d earlier secrets still sign beside the current one (each for %s after its rotation); at most %d: wait until %s for the oldest to expire",
			len(prev)-1, SecretOverlap, MaxPreviousSecrets, prev[len(prev)-1].Until.UTC().Format(time.RFC3339))
	}
	g.Secret, g.PreviousSecrets, g.UpdatedAt = secret, prev, now
	mg, err := b.meta.PutProducerGroup(ctx, g)
	if err != nil {
		return ProducerGroup{}, err
	}
	return toProducerGroup(mg), nil
}

// --- metrics ------------------------------------------------------------

// txnMetrics are the series of transactional messages.
type txnMetrics struct {
	prepared   prometheus.Counter
	committed  prometheus.Counter
	rolledBack prometheus.Counter
	maxChecks  prometheus.Counter
	checks     *prometheus.CounterVec
	anomalies  *prometheus.CounterVec
}

func newTxnMetrics() txnMetrics {
	m := txnMetrics{
		prepared: prometheus.NewCounter(prometheus.CounterOpts{Name: "postbus_transactions_prepared_total",
			Help: "Transactional messages prepared (stored as half messages)."}),
		committed: prometheus.NewCounter(prometheus.CounterOpts{Name: "postbus_transactions_committed_total",
			Help: "Transactions committed (by their producer or a check)."}),
		rolledBack: prometheus.NewCounter(prometheus.CounterOpts{Name: "postbus_transactions_rolled_back_total",
			Help: "Transactions rolled back (by their producer, a check, or after the last check)."}),
		maxChecks: prometheus.NewCounter(prometheus.CounterOpts{Name: "postbus_transactions_check_max_rollbacks_total",
			Help: "Transactions rolled back because --transaction-check-max checks brought no decision; each is logged at WARN and its trace says why."}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postbus_transaction_checks_total",
			Help: "Check-backs sent to producer groups' check_url, by outcome: commit, rollback, unknown, or failed (an error, a timeout, a bad answer)."}, []string{"outcome"}),
		anomalies: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "postbus_transaction_anomalies_total",
			Help: "Transactions not decided as usual, by reason: commit_copy_found (a commit whose append had an unknown outcome was found stored: its row marked only), prepared_record_unreadable or topic_gone (rolled back); each is logged at ERROR."}, []string{"reason"}),
	}
	for _, o := range []string{txnCheckAnswerCommit, txnCheckAnswerRollback, txnCheckAnswerUnknown, txnCheckFailed} {
		m.checks.WithLabelValues(o)
	}
	for _, r := range []string{txnAnomalyCopyFound, txnAnomalyRecordUnreadable, txnAnomalyTopicGone} {
		m.anomalies.WithLabelValues(r)
	}
	return m
}

func (m *txnMetrics) check(answer string) {
	if answer == "" {
		answer = txnCheckFailed
	}
	m.checks.WithLabelValues(answer).Inc()
}

func (m *txnMetrics) anomaly(reason string) { m.anomalies.WithLabelValues(reason).Inc() }

func (m *txnMetrics) register(b *Broker, reg prometheus.Registerer) {
	reg.MustRegister(m.prepared, m.committed, m.rolledBack, m.maxChecks, m.checks, m.anomalies,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "postbus_transactions_prepared",
			Help: "Transactions prepared and not yet decided."}, func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			n, err := b.meta.CountTxns(ctx)
			if err != nil {
				return -1
			}
			return float64(n[meta.TxnPrepared])
		}))
}

// dispatchPrepared records a prepared message met by dispatch: its
// transaction row (stored with the round's timers) and its id in the key
// index, not its keys or dedup id (queries by key must not find it).
// Called with dispatchMu held.
func (b *Broker) dispatchPrepared(off int64, rec []byte, h *recordHeader) {
	var m Message
	if err := decodeRecord(rec, &m); err != nil {
		b.logger.Error("undecodable prepared record skipped", slog.Int64("offset", off), slog.Any("err", err))
		b.metrics.skipped(skipUndecodable)
		b.txnLive.unexpect(string(h.ID))
		return
	}
	b.newTxns = append(b.newTxns, meta.Txn{MsgID: m.ID, Topic: m.Topic, ProducerGroup: m.Origin, LogOffset: off,
		PreparedAt: m.StoredAt, NextCheck: m.DeliverAt})
	b.idx.Add(hashKeyBytes(keyID, h.ID), off)
}

// TxnTrace is a transaction as a message's trace shows it: its row and
// each check.
type TxnTrace struct {
	Txn
	CheckLog []meta.TxnCheck
}

// txnTrace returns the transaction of m for its trace, nil when m is not
// a transaction's message.
func (b *Broker) txnTrace(ctx context.Context, m *Message) (*TxnTrace, error) {
	if !m.Prepared() && !m.Committed() {
		return nil, nil
	}
	t, err := b.meta.Txn(ctx, m.ID)
	if errors.Is(err, meta.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	checks, err := b.meta.TxnChecks(ctx, m.ID)
	if err != nil {
		return nil, err
	}
	return &TxnTrace{Txn: b.txnOut(b.txnLive.overlay(t)), CheckLog: checks}, nil
}

// decideBatch group-commits decisions: the first caller to find no write
// under way writes every decision queued until none is left, and the
// others wait for theirs, so concurrent commits share one meta.db fsync.
type decideBatch struct {
	mu       sync.Mutex
	pending  []*decideReq // guarded by mu
	flushing bool         // a caller is writing; guarded by mu
}

type decideReq struct {
	d    meta.TxnDecision
	res  meta.TxnDecided
	err  error
	done chan struct{}
}

// decideRow writes one decision with whatever others are queued.
func (b *Broker) decideRow(d meta.TxnDecision) (meta.Txn, error) {
	r := &decideReq{d: d, done: make(chan struct{})}
	q := &b.decisions
	q.mu.Lock()
	q.pending = append(q.pending, r)
	if q.flushing {
		q.mu.Unlock()
		<-r.done
		return r.res.Txn, firstErr(r.err, r.res.Err)
	}
	q.flushing = true
	for len(q.pending) > 0 {
		batch := q.pending
		q.pending = nil
		q.mu.Unlock()
		ds := make([]meta.TxnDecision, len(batch))
		for i, p := range batch {
			ds[i] = p.d
		}
		// Not the caller's context: the batch holds others' decisions.
		res, err := b.meta.DecideTxns(context.Background(), ds)
		for i, p := range batch {
			if err != nil {
				p.err = err
			} else {
				p.res = res[i]
			}
			close(p.done)
		}
		q.mu.Lock()
	}
	q.flushing = false
	q.mu.Unlock()
	return r.res.Txn, firstErr(r.err, r.res.Err)
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
