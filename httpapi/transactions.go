package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/namesrv"
)

// Transactions (DESIGN §4): a publish with Postbus-Transaction: prepare
// stores a prepared message; its producer commits or rolls it back by
// transaction id, and the broker checks with the producer group's
// check_url when it says nothing. A transaction id names its broker in a
// cluster (broker~msgid, as receipts), so a decision sent to any broker is
// forwarded to the one holding the transaction.

// Transaction headers of a single publish.
const (
	hdrTransaction        = "Postbus-Transaction"
	hdrProducerGroup      = "Postbus-Producer-Group"
	hdrTransactionTimeout = "Postbus-Transaction-Timeout"
)

// maxProducerGroupRequestBytes bounds a producer group's PUT body.
const maxProducerGroupRequestBytes = 16 << 10

// txnHeaders is what a publish's transaction headers ask for: prepare is
// false when the publish is plain.
type txnHeaders struct {
	prepare bool
	group   string
	timeout time.Duration
}

// parseTxnHeaders reads the transaction headers of a single publish. The
// producer group and timeout are refused without Postbus-Transaction:
// prepare (they would be ignored, and the message published plainly).
func parseTxnHeaders(h http.Header) (txnHeaders, error) {
	var out txnHeaders
	one := func(name string) (string, bool, error) {
		vs := h[name]
		switch len(vs) {
		case 0:
			return "", false, nil
		case 1:
			return vs[0], true, nil
		}
		return "", false, &headerError{name, "given more than once"}
	}
	v, has, err := one(hdrTransaction)
	if err != nil {
		return out, err
	}
	if has && v != "prepare" {
		return out, &headerError{hdrTransaction, fmt.Sprintf("%q is not a transaction step: a publish takes prepare; commit and rollback are POST /v1/transactions/{transaction_id}/commit|rollback", v)}
	}
	out.prepare = has
	group, hasGroup, err := one(hdrProducerGroup)
	if err != nil {
		return out, err
	}
	timeout, hasTimeout, err := one(hdrTransactionTimeout)
	if err != nil {
		return out, err
	}
	if !has {
		switch {
		case hasGroup:
			return out, &headerError{hdrProducerGroup, "only a transactional publish (Postbus-Transaction: prepare) takes a producer group"}
		case hasTimeout:
			return out, &headerError{hdrTransactionTimeout, "only a transactional publish (Postbus-Transaction: prepare) takes a transaction timeout"}
		}
		return out, nil
	}
	if !hasGroup || group == "" {
		return out, &headerError{hdrProducerGroup, "a transactional publish needs its producer group, whose check_url is asked when the transaction is not decided in time"}
	}
	if err := broker.ValidateProducerGroupName(group); err != nil {
		return out, &headerError{hdrProducerGroup, fmt.Sprintf("%q is not a producer group name: 1-120 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit", group)}
	}
	out.group = group
	if hasTimeout {
		d, err := time.ParseDuration(timeout)
		if err != nil || d <= 0 || d > broker.MaxTxnTimeout {
			return out, &headerError{hdrTransactionTimeout, fmt.Sprintf("%q is not a duration like 6s or 1m, positive and at most %s", timeout, broker.MaxTxnTimeout)}
		}
		out.timeout = d
	}
	return out, nil
}

// prepareResult is a prepare's answer.
type prepareResult struct {
	MsgID         string `json:"msg_id"`
	TransactionID string `json:"transaction_id"`
	Topic         string `json:"topic"`
	QueueID       int    `json:"queue_id"`
	Status        string `json:"status"`
	Broker        string `json:"broker,omitempty"`
}

// handlePrepare is handlePublish for Postbus-Transaction: prepare.
func (s *Server) handlePrepare(w http.ResponseWriter, r *http.Request, topic string, m *broker.Message, th txnHeaders) {
	res, err := s.broker.Prepare(r.Context(), topic, m, th.group, th.timeout)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/messages/"+res.ID)
	writeJSON(w, http.StatusCreated, prepareResult{MsgID: res.ID, TransactionID: s.broker.TransactionID(res.ID), Topic: res.Topic,
		QueueID: res.QueueID, Status: broker.TxnStatePrepared, Broker: s.selfName()})
}

// transactionJSON is a transaction as the API shows it.
type transactionJSON struct {
	TransactionID string `json:"transaction_id"`
	MsgID         string `json:"msg_id"`
	Topic         string `json:"topic"`
	ProducerGroup string `json:"producer_group"`
	State         string `json:"state"`
	PreparedAt    string `json:"prepared_at"`
	NextCheckAt   string `json:"next_check_at,omitempty"`
	Checks        int    `json:"checks"`
	QueueID       *int   `json:"queue_id,omitempty"`
	QueueOffset   *int64 `json:"queue_offset,omitempty"`
	DecidedAt     string `json:"decided_at,omitempty"`
	Reason        string `json:"reason,omitempty"`
}

func toTransactionJSON(t broker.Txn) transactionJSON {
	out := transactionJSON{TransactionID: t.ID, MsgID: t.MsgID, Topic: t.Topic, ProducerGroup: t.ProducerGroup, State: t.State,
		PreparedAt: t.PreparedAt.UTC().Format(time.RFC3339Nano), Checks: t.Checks, Reason: t.Reason}
	if t.State == broker.TxnStatePrepared {
		out.NextCheckAt = t.NextCheck.UTC().Format(time.RFC3339Nano)
	}
	if t.State == broker.TxnStateCommitted {
		q, off := t.QueueID, t.QueueOffset
		out.QueueID, out.QueueOffset = &q, &off
	}
	if !t.DecidedAt.IsZero() {
		out.DecidedAt = t.DecidedAt.UTC().Format(time.RFC3339Nano)
	}
	return out
}

// forwardTransaction sends a request about a transaction another broker
// holds (its id names it) to that broker, and reports whether it did.
func (s *Server) forwardTransaction(w http.ResponseWriter, r *http.Request, local http.HandlerFunc) bool {
	if !s.coordinating(r) {
		return false
	}
	name, _, ok := txnIDParts(w, r)
	if !ok {
		return true
	}
	if name == "" || name == s.cluster.self {
		return false
	}
	peers, err := s.cluster.brokers(r.Context())
	if err != nil {
		writeProblem(w, r, codeBrokerUnavailable, "", fmt.Sprintf("transaction is held by broker %s, and the cluster's brokers cannot be listed: %v", name, err))
		return true
	}
	for _, p := range peers {
		if p.name == name {
			body, ok := fanOutBody(w, r)
			if !ok {
				return true
			}
			writeAnswer(w, r, s.askOne(r, p, "", body, local))
			return true
		}
	}
	if gone, ok := s.cluster.names.Gone(); ok && !slices.Contains(gone, name) {
		// No name server has heard of the broker lately, live or gone:
		// waiting for it would be waiting for ever.
		writeProblem(w, r, broker.CodeTransactionNotFound, "transaction_id", fmt.Sprintf("transaction %q names broker %s, which no name server knows, live or lately gone", pathParam(r, "transaction_id"), name))
		return true
	}
	w.Header().Set("Retry-After", "5")
	writeProblem(w, r, codeBrokerUnavailable, "transaction_id", fmt.Sprintf("transaction is held by broker %s, which is not live in the cluster now; retry once it is back", name))
	return true
}

// txnIDParts splits the path's transaction id into the broker it names
// ("" for none) and its message id, or answers 400 invalid_transaction for
// one no broker hands out (an empty or invalid broker name before the ~, a
// message id that is not one), the same for every malformed id.
func txnIDParts(w http.ResponseWriter, r *http.Request) (name, msgID string, ok bool) {
	id := pathParam(r, "transaction_id")
	name, msgID, named := strings.Cut(id, "~")
	if !named {
		name, msgID = "", id
	}
	if (named && !namesrv.ValidBrokerName(name)) || !broker.ValidMessageID(msgID) {
		writeProblem(w, r, broker.CodeInvalidTransaction, "transaction_id", fmt.Sprintf(
			"%q is not a transaction id: one is a message id (1-64 letters and digits), in a cluster after the name of its broker and ~", id))
		return "", "", false
	}
	return name, msgID, true
}

// localTxnID is the message id of a transaction id this broker holds, or a
// problem written.
func (s *Server) localTxnID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := pathParam(r, "transaction_id")
	name, msgID, ok := txnIDParts(w, r)
	if !ok {
		return "", false
	}
	if name != "" && name != s.selfName() {
		writeProblem(w, r, broker.CodeTransactionNotFound, "transaction_id", fmt.Sprintf("no transaction %q here: it names broker %s", id, name))
		return "", false
	}
	return msgID, true
}

// transactionFor reads the transaction of the path and checks that the
// token may publish on its topic (a transaction it may not see is not
// found, as a message it may not read).
func (s *Server) transactionFor(w http.ResponseWriter, r *http.Request, publish bool) (broker.Txn, bool) {
	msgID, ok := s.localTxnID(w, r)
	if !ok {
		return broker.Txn{}, false
	}
	t, err := s.broker.Transaction(r.Context(), msgID)
	if err != nil {
		s.writeError(w, r, err)
		return broker.Txn{}, false
	}
	if p := principalFrom(r.Context()); p != nil {
		// One the token may not read is not found, for a decision too: a
		// 403 naming its topic told a stranger it exists.
		if !p.scopes.canRead(t.Topic) {
			writeProblem(w, r, broker.CodeTransactionNotFound, "transaction_id", fmt.Sprintf("no transaction %q", pathParam(r, "transaction_id")))
			return broker.Txn{}, false
		}
		if publish && !p.scopes.canPublish(t.Topic) {
			writeProblem(w, r, codeForbidden, "", "the token's scope does not allow this (publish:"+t.Topic+" is needed to decide a transaction of topic "+t.Topic+")")
			return broker.Txn{}, false
		}
	}
	return t, true
}

func (s *Server) handleGetTransaction(w http.ResponseWriter, r *http.Request) {
	if s.forwardTransaction(w, r, s.handleGetTransaction) {
		return
	}
	t, ok := s.transactionFor(w, r, false)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, toTransactionJSON(t))
}

func (s *Server) handleCommitTransaction(w http.ResponseWriter, r *http.Request) {
	s.decideTransaction(w, r, true, s.handleCommitTransaction)
}

func (s *Server) handleRollbackTransaction(w http.ResponseWriter, r *http.Request) {
	s.decideTransaction(w, r, false, s.handleRollbackTransaction)
}

func (s *Server) decideTransaction(w http.ResponseWriter, r *http.Request, commit bool, self http.HandlerFunc) {
	if s.forwardTransaction(w, r, self) {
		return
	}
	var msgID string
	if principalFrom(r.Context()) == nil {
		// No scope to check against its topic: the decision reads the
		// row itself (and answers an unknown id), once.
		id, ok := s.localTxnID(w, r)
		if !ok {
			return
		}
		msgID = id
	} else {
		t, ok := s.transactionFor(w, r, true)
		if !ok {
			return
		}
		msgID = t.MsgID
	}
	decide := s.broker.Commit
	if !commit {
		decide = s.broker.Rollback
	}
	t, err := decide(r.Context(), msgID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toTransactionJSON(t))
}

func (s *Server) handleListTransactions(w http.ResponseWriter, r *http.Request) {
	limit, perr := queryInt(r, "limit", broker.DefaultQueryLimit, 1, broker.MaxQueryLimit)
	if perr != nil {
		s.writeError(w, r, perr)
		return
	}
	state := strings.ToUpper(r.URL.Query().Get("state"))
	switch state {
	case "", broker.TxnStatePrepared, broker.TxnStateCommitted, broker.TxnStateRolledBack:
	default:
		writeProblem(w, r, codeInvalidParameter, "state", fmt.Sprintf("state is prepared, committed or rolled_back, not %q", r.URL.Query().Get("state")))
		return
	}
	if s.coordinating(r) {
		// Every broker's, merged oldest prepare first, each naming its
		// broker; the cursor is composite (each broker's own).
		s.pagedListEverywhere(w, r, "transactions", s.everyBroker(r), s.handleListTransactions, "prepared_at", false)
		return
	}
	var cursor int64
	if c := r.URL.Query().Get("cursor"); c != "" {
		n, err := strconv.ParseInt(c, 10, 64)
		if err != nil || n <= 0 {
			writeProblem(w, r, codeInvalidParameter, "cursor", "the cursor is not one this server returned")
			return
		}
		cursor = n
	}
	txs, next, err := s.broker.Transactions(r.Context(), state, cursor, int(limit))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := struct {
		Transactions []transactionJSON `json:"transactions"`
		NextCursor   string            `json:"next_cursor,omitempty"`
	}{Transactions: make([]transactionJSON, 0, len(txs))}
	for _, t := range txs {
		out.Transactions = append(out.Transactions, toTransactionJSON(t))
	}
	if next > 0 {
		out.NextCursor = strconv.FormatInt(next, 10)
	}
	writeJSON(w, http.StatusOK, out)
}

// producerGroupRequest is a producer group's PUT body; the secret is for
// the brokers of a cluster, which all sign with the one the coordinating
// broker made.
type producerGroupRequest struct {
	CheckURL string `json:"check_url"`
	Secret   string `json:"secret,omitempty"`
}

// producerGroupJSON is a producer group as the API shows it; the secret
// only in the answer to a PUT that created the group and to a rotation.
type producerGroupJSON struct {
	Name      string `json:"name"`
	CheckURL  string `json:"check_url"`
	Secret    string `json:"secret,omitempty"`
	CreatedAt string `json:"created_at"`
	UpdatedAt string `json:"updated_at"`
}

func toProducerGroupJSON(g broker.ProducerGroup, secret bool) producerGroupJSON {
	out := producerGroupJSON{Name: g.Name, CheckURL: g.CheckURL, CreatedAt: g.CreatedAt.UTC().Format(time.RFC3339Nano),
		UpdatedAt: g.UpdatedAt.UTC().Format(time.RFC3339Nano)}
	if secret {
		out.Secret = g.Secret
	}
	return out
}

func (s *Server) handlePutProducerGroup(w http.ResponseWriter, r *http.Request) {
	var req producerGroupRequest
	if perr := decodeJSONBody(r, maxProducerGroupRequestBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	name := pathParam(r, "group")
	if req.CheckURL == "" {
		writeProblem(w, r, broker.CodeInvalidProducerGroup, "check_url", "a producer group needs its check_url, the endpoint asked about its undecided transactions")
		return
	}
	if s.coordinating(r) {
		// Every broker signs this group's checks with one secret.
		if req.Secret == "" {
			g, err := s.broker.ProducerGroup(r.Context(), name)
			switch {
			case err == nil:
				req.Secret = g.Secret
			case broker.CodeOf(err) == broker.CodeProducerGroupNotFound:
				req.Secret = broker.NewSecret()
			default:
				s.writeError(w, r, err)
				return
			}
		}
		body, _ := json.Marshal(req)
		r.Header.Set("Content-Type", "application/json")
		s.everywhereBody(w, r, body, s.handlePutProducerGroup)
		return
	}
	g, created, err := s.broker.PutProducerGroup(r.Context(), name, req.CheckURL, req.Secret)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	// The secret is answered every time: a PUT is how a producer learns
	// it, and only admin may make one.
	writeJSON(w, status, toProducerGroupJSON(g, true))
}

func (s *Server) handleGetProducerGroup(w http.ResponseWriter, r *http.Request) {
	g, err := s.broker.ProducerGroup(r.Context(), pathParam(r, "group"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toProducerGroupJSON(g, false))
}

func (s *Server) handleRotateProducerGroupSecret(w http.ResponseWriter, r *http.Request) {
	var req rotateRequest
	if r.ContentLength != 0 {
		if perr := decodeJSONBody(r, maxProducerGroupRequestBytes, &req); perr != nil {
			s.writeError(w, r, perr)
			return
		}
	}
	if s.coordinating(r) {
		if req.Secret == "" {
			req.Secret = broker.NewSecret()
		}
		body, _ := json.Marshal(req)
		r.Header.Set("Content-Type", "application/json")
		s.everywhereBody(w, r, body, s.handleRotateProducerGroupSecret)
		return
	}
	g, err := s.broker.RotateProducerGroupSecret(r.Context(), pathParam(r, "group"), req.Secret)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toProducerGroupJSON(g, true))
}

// txnState is the state GET /v1/messages/{id} shows for a transaction's
// message: PREPARED or ROLLED_BACK for its prepared record, COMMITTED for
// the message its commit stored; "" for a plain message.
func (s *Server) txnState(r *http.Request, m *broker.Message) (string, error) {
	switch {
	case m.Committed():
		return broker.TxnStateCommitted, nil
	case !m.Prepared():
		return "", nil
	}
	t, err := s.broker.Transaction(r.Context(), m.ID)
	if errors.Is(err, broker.ErrTxnNotFound) {
		return broker.TxnStatePrepared, nil
	}
	if err != nil {
		return "", err
	}
	if t.State == broker.TxnStateCommitted {
		// Its commit's copy is not indexed yet (Message waits for
		// dispatch, so this is a race with the commit): it is committed.
		return broker.TxnStateCommitted, nil
	}
	return t.State, nil
}

// txnTraceJSON is a transaction in its message's trace.
type txnTraceJSON struct {
	transactionJSON
	CheckLog []txnCheckJSON `json:"check_log"`
}

// txnCheckJSON is one check-back: its answer (commit, rollback, unknown)
// or failed, with the endpoint's status, the error and the latency.
type txnCheckJSON struct {
	Check     int     `json:"check"`
	At        string  `json:"at"`
	Outcome   string  `json:"outcome"`
	Status    int     `json:"status,omitempty"`
	Error     string  `json:"error,omitempty"`
	LatencyMS float64 `json:"latency_ms"`
}

func toTxnTraceJSON(tt *broker.TxnTrace) *txnTraceJSON {
	out := &txnTraceJSON{transactionJSON: toTransactionJSON(tt.Txn), CheckLog: make([]txnCheckJSON, 0, len(tt.CheckLog))}
	for _, c := range tt.CheckLog {
		out.CheckLog = append(out.CheckLog, txnCheckJSON{Check: c.Check, At: c.At.UTC().Format(time.RFC3339Nano), Outcome: c.Outcome,
			Status: c.Status, Error: c.Error, LatencyMS: float64(c.Latency.Microseconds()) / 1000})
	}
	return out
}
