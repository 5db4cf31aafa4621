package httpapi

import (
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/postbus/postbus/broker"
)

type queueLagJSON struct {
	Topic     string `json:"topic"`
	QueueID   int    `json:"queue_id"`
	Offset    int64  `json:"offset"`
	MaxOffset int64  `json:"max_offset"`
	Lag       int64  `json:"lag"`
	Expired   int64  `json:"expired"`
	InFlight  int    `json:"in_flight"`
}

type groupJSON struct {
	Name          string             `json:"name"`
	Subscriptions []subscriptionJSON `json:"subscriptions"`
	Lag           int64              `json:"lag"`
	DeadLetters   int64              `json:"dead_letters"`
	HeldPolls     int                `json:"held_polls"`
	// OldestUnacked is in seconds, with millisecond precision.
	OldestUnacked float64        `json:"oldest_unacked_seconds"`
	Queues        []queueLagJSON `json:"queues,omitempty"`
	// DLQRedrive is where each push subscription's dlq_redrive stands
	// (GET /v1/groups/{group} only).
	DLQRedrive []dlqRedriveJSON `json:"dlq_redrive,omitempty"`
}

// dlqRedriveJSON is a subscription's self-healing of its dead letters.
type dlqRedriveJSON struct {
	Subscription string `json:"subscription"`
	State        string `json:"state"`
	NextProbeAt  string `json:"next_probe_at,omitempty"`
	DeadLetters  int    `json:"dead_letters"`
	Probes       int64  `json:"probes"`
	Redriven     int64  `json:"redriven"`
	LastError    string `json:"last_error,omitempty"`
}

func toGroupJSON(g broker.GroupInfo, withQueues bool) groupJSON {
	out := groupJSON{Name: g.Name, Lag: g.Lag, DeadLetters: g.DeadLetters, HeldPolls: g.HeldPolls, Subscriptions: []subscriptionJSON{},
		OldestUnacked: g.OldestUnacked.Truncate(time.Millisecond).Seconds()}
	for _, s := range g.Subscriptions {
		out.Subscriptions = append(out.Subscriptions, toSubscriptionJSON(s, false))
	}
	if withQueues {
		out.Queues = []queueLagJSON{}
		for _, q := range g.Queues {
			out.Queues = append(out.Queues, queueLagJSON{Topic: q.Topic, QueueID: q.Queue, Offset: q.Offset, MaxOffset: q.MaxOffset, Lag: q.Lag, Expired: q.Expired, InFlight: q.InFlight})
		}
	}
	return out
}

func (s *Server) handleListGroups(w http.ResponseWriter, r *http.Request) {
	limit, perr := queryInt(r, "limit", 100, 1, 1000)
	if perr != nil {
		s.writeError(w, r, perr)
		return
	}
	if s.coordinating(r) {
		s.listEverywhere(w, r, "groups", "name", int(limit), s.handleListGroups, combineGroups)
		return
	}
	cursor := r.URL.Query().Get("cursor")
	groups, err := s.broker.Groups(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	p := principalFrom(r.Context())
	out := struct {
		Groups     []groupJSON `json:"groups"`
		NextCursor string      `json:"next_cursor,omitempty"`
	}{Groups: []groupJSON{}}
	for _, g := range groups {
		if (cursor != "" && g.Name <= cursor) || (p != nil && !p.scopes.canConsume(g.Name)) {
			continue
		}
		if len(out.Groups) == int(limit) {
			out.NextCursor = out.Groups[len(out.Groups)-1].Name
			break
		}
		out.Groups = append(out.Groups, toGroupJSON(g, false))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleGetGroup(w http.ResponseWriter, r *http.Request) {
	if s.coordinating(r) {
		s.getGroupEverywhere(w, r)
		return
	}
	g, err := s.broker.Group(r.Context(), pathParam(r, "group"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := toGroupJSON(g, true)
	for _, sub := range g.Subscriptions {
		if sub.DLQRedrive == nil {
			continue
		}
		st, _, _, err := s.broker.DLQRedriveDue(r.Context(), sub)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		j := dlqRedriveJSON{Subscription: sub.ID, State: st.State, DeadLetters: st.DeadLetters, Probes: st.Probes, Redriven: st.Redriven, LastError: st.LastError}
		if !st.NextProbe.IsZero() {
			j.NextProbeAt = st.NextProbe.UTC().Format(time.RFC3339Nano)
		}
		out.DLQRedrive = append(out.DLQRedrive, j)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleResetOffsets(w http.ResponseWriter, r *http.Request) {
	if s.coordinating(r) {
		s.everywhere(w, r, s.handleResetOffsets)
		return
	}
	var req struct {
		Topic string `json:"topic"`
		To    string `json:"to"`
	}
	if perr := decodeJSONBody(r, maxTopicRequestBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	if req.Topic == "" || req.To == "" {
		field := "topic"
		if req.Topic != "" {
			field = "to"
		}
		writeProblem(w, r, broker.CodeInvalidReset, field, `give the topic and where to move to: {"topic":"orders","to":"earliest"|"latest"|"2026-01-02T15:04:05Z"}`)
		return
	}
	group := pathParam(r, "group")
	if err := s.broker.ResetOffsets(r.Context(), group, req.Topic, req.To); err != nil {
		s.writeError(w, r, err)
		return
	}
	g, err := s.broker.Group(r.Context(), group)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toGroupJSON(g, true))
}

type deadLetterJSON struct {
	messageJSON
	OriginTopic string `json:"origin_topic"`
	Attempts    int    `json:"attempts"`
	LastError   string `json:"last_error"`
	DeadAt      string `json:"dead_at"`
	Cursor      string `json:"cursor"`
}

func (s *Server) handleListDeadLetters(w http.ResponseWriter, r *http.Request) {
	limit, perr := queryInt(r, "limit", 32, 1, 256)
	if perr != nil {
		s.writeError(w, r, perr)
		return
	}
	if s.coordinating(r) {
		s.deadLettersEverywhere(w, r)
		return
	}
	after := int64(-1)
	if c := r.URL.Query().Get("cursor"); c != "" {
		n, err := strconv.ParseInt(c, 10, 64)
		if err != nil || n < 0 {
			writeProblem(w, r, codeInvalidParameter, "cursor", "the cursor is not one this server returned")
			return
		}
		after = n
	}
	dls, err := s.broker.DeadLetters(r.Context(), pathParam(r, "group"), after, int(limit)+1)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := struct {
		Messages   []deadLetterJSON `json:"messages"`
		NextCursor string           `json:"next_cursor,omitempty"`
	}{Messages: []deadLetterJSON{}}
	for i, d := range dls {
		if i == int(limit) {
			out.NextCursor = out.Messages[len(out.Messages)-1].Cursor
			break
		}
		mj := toMessageJSON(d.Message)
		mj.Topic = d.OriginTopic()
		out.Messages = append(out.Messages, deadLetterJSON{messageJSON: mj, OriginTopic: d.OriginTopic(), Attempts: d.Attempt,
			LastError: d.Reason, DeadAt: d.StoredAt.UTC().Format(time.RFC3339Nano), Cursor: strconv.FormatInt(d.DLQOffset, 10)})
	}
	writeJSON(w, http.StatusOK, out)
}

// redriveRate is how fast a redrive puts dead letters back: a redrive of
// many cannot flood the endpoint that failed them.
const redriveRate = 50 // messages a second

func (s *Server) handleRedrive(w http.ResponseWriter, r *http.Request) {
	if s.coordinating(r) {
		s.sumEverywhere(w, r, "redriven", s.handleRedrive)
		return
	}
	var req struct {
		MsgIDs []string `json:"msg_ids"`
		All    bool     `json:"all"`
		Rate   float64  `json:"rate_per_second"`
	}
	if perr := decodeJSONBody(r, maxSubscriptionRequestBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	if req.All == (len(req.MsgIDs) > 0) {
		writeProblem(w, r, codeInvalidParameter, "msg_ids", `give {"msg_ids":[...]} or {"all":true}`)
		return
	}
	if req.Rate == 0 {
		req.Rate = redriveRate
	}
	if req.Rate < 0 || req.Rate > 10000 {
		writeProblem(w, r, codeInvalidParameter, "rate_per_second", "rate_per_second must be between 0 (the default, 50) and 10000")
		return
	}
	start := time.Now()
	n, err := s.broker.Redrive(r.Context(), pathParam(r, "group"), req.MsgIDs, req.All, req.Rate)
	if errors.Is(err, broker.ErrRedriveRate) {
		writeProblem(w, r, codeInvalidParameter, "rate_per_second", err.Error())
		return
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// done_by is when the last is due; the broker checked that it fits.
	last, _ := broker.RedriveOffset(max(n-1, 0), req.Rate, math.MaxInt64)
	writeJSON(w, http.StatusOK, map[string]any{"redriven": n, "rate_per_second": req.Rate,
		"done_by": start.Add(last).UTC().Format(time.RFC3339)})
}

func (s *Server) handlePurgeDeadLetters(w http.ResponseWriter, r *http.Request) {
	if s.coordinating(r) {
		s.sumEverywhere(w, r, "purged", s.handlePurgeDeadLetters)
		return
	}
	n, err := s.broker.PurgeDeadLetters(r.Context(), pathParam(r, "group"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int64{"purged": n})
}

type attemptJSON struct {
	Group        string  `json:"group"`
	Subscription string  `json:"subscription"`
	Attempt      int     `json:"attempt"`
	At           string  `json:"at"`
	Outcome      string  `json:"outcome"`
	Status       int     `json:"status,omitempty"`
	Error        string  `json:"error,omitempty"`
	LatencyMS    float64 `json:"latency_ms"`
}

func (s *Server) handleTrace(w http.ResponseWriter, r *http.Request) {
	if s.coordinating(r) {
		s.findAnywhere(w, r, s.handleTrace)
		return
	}
	m := s.message(w, r)
	if m == nil {
		return
	}
	tr, err := s.broker.MessageTrace(r.Context(), m.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := struct {
		MsgID     string        `json:"msg_id"`
		Topic     string        `json:"topic"`
		StoredAt  string        `json:"stored_at"`
		DeliverAt string        `json:"deliver_at,omitempty"`
		Attempts  []attemptJSON `json:"attempts"`
		// Transaction is a transactional message's life before its
		// delivery: prepared, each check, the decision and why.
		Transaction *txnTraceJSON `json:"transaction,omitempty"`
	}{MsgID: m.ID, Topic: m.Topic, StoredAt: m.StoredAt.UTC().Format(time.RFC3339Nano), Attempts: []attemptJSON{}}
	if tt := tr.Transaction; tt != nil && mayRead(r, m.Topic) {
		out.Transaction = toTxnTraceJSON(tt)
	}
	if !m.DeliverAt.IsZero() && !m.Prepared() {
		out.DeliverAt = m.DeliverAt.UTC().Format(time.RFC3339Nano)
	}
	p := principalFrom(r.Context())
	for _, a := range tr.Attempts {
		// Reading the message does not make its deliveries to every
		// group the token's business: an attempt names a group's
		// subscription and its endpoint's errors (which can name hosts).
		// A token sees the attempts of the groups it could consume this
		// topic as (consume on the group and subscribe on the topic, as a
		// pull needs); admin, and an open API, see them all.
		if p != nil && !(p.scopes.canConsume(a.Group) && p.scopes.canSubscribe(m.Topic)) {
			continue
		}
		out.Attempts = append(out.Attempts, attemptJSON{Group: a.Group, Subscription: a.Subscription, Attempt: a.Attempt,
			At: a.At.UTC().Format(time.RFC3339Nano), Outcome: a.Outcome, Status: a.Status, Error: a.Error,
			LatencyMS: float64(a.Latency.Microseconds()) / 1000})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleJWKS(w http.ResponseWriter, r *http.Request) {
	if s.jwks == nil {
		writeProblem(w, r, codeNotFound, "", "this server signs no deliveries")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	w.Write(s.jwks)
}
