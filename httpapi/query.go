package httpapi

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/postbus/postbus/broker"
)

// messageJSON is a stored message as the query API shows it.
type messageJSON struct {
	MsgID       string            `json:"msg_id"`
	Topic       string            `json:"topic"`
	QueueID     int               `json:"queue_id"`
	QueueOffset int64             `json:"queue_offset"`
	Tag         string            `json:"tag,omitempty"`
	Keys        []string          `json:"keys,omitempty"`
	ShardingKey string            `json:"sharding_key,omitempty"`
	DedupID     string            `json:"dedup_id,omitempty"`
	Properties  map[string]string `json:"properties,omitempty"`
	ContentType string            `json:"content_type"`
	BornAt      string            `json:"born_at"`
	StoredAt    string            `json:"stored_at"`
	DeliverAt   string            `json:"deliver_at,omitempty"`
	Size        int               `json:"size"`
	Body        string            `json:"body"`
	Encoding    string            `json:"encoding"`
	// State is a transactional message's: PREPARED, COMMITTED or
	// ROLLED_BACK; absent for a plain one.
	State string `json:"state,omitempty"`
}

func toMessageJSON(m *broker.Message) messageJSON {
	out := messageJSON{
		MsgID: m.ID, Topic: m.Topic, QueueID: m.QueueID, QueueOffset: m.QueueOffset,
		Tag: m.Tag, Keys: m.Keys, ShardingKey: m.ShardingKey, DedupID: m.DedupID,
		Properties: m.Properties, ContentType: m.ContentType,
		BornAt:   m.BornAt.UTC().Format(time.RFC3339Nano),
		StoredAt: m.StoredAt.UTC().Format(time.RFC3339Nano),
		Size:     len(m.Body),
	}
	if !m.DeliverAt.IsZero() {
		out.DeliverAt = m.DeliverAt.UTC().Format(time.RFC3339Nano)
	}
	out.Body, out.Encoding = encodeBody(m.Body)
	return out
}

// encodeBody puts a body in JSON as text when it is UTF-8, else as base64.
func encodeBody(b []byte) (string, string) { return broker.EncodeBody(b) }

// message finds a message the request may read: one of a topic outside the
// token's scope is answered as not found, so a token learns nothing of it.
func (s *Server) message(w http.ResponseWriter, r *http.Request) *broker.Message {
	id := pathParam(r, "msg_id")
	m, err := s.broker.Message(r.Context(), id)
	if err == nil && !mayRead(r, m.Topic) {
		err = &broker.Error{Code: broker.CodeMessageNotFound, Field: "msg_id", Err: broker.ErrMessageNotFound, Detail: fmt.Sprintf("no message with id %q (it may have expired)", id)}
	}
	if err != nil {
		s.writeError(w, r, err)
		return nil
	}
	return m
}

func (s *Server) handleGetMessage(w http.ResponseWriter, r *http.Request) {
	if s.coordinating(r) {
		s.findAnywhere(w, r, s.handleGetMessage)
		return
	}
	m := s.message(w, r)
	if m == nil {
		return
	}
	out := toMessageJSON(m)
	state, err := s.txnState(r, m)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out.State = state
	if m.Prepared() {
		// Its record's deliver-at is its first check, not a delivery
		// time, and its queue offset comes at commit.
		out.DeliverAt, out.QueueOffset = "", -1
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleGetMessageBody(w http.ResponseWriter, r *http.Request) {
	if s.coordinating(r) {
		s.findAnywhere(w, r, s.handleGetMessageBody)
		return
	}
	m := s.message(w, r)
	if m == nil {
		return
	}
	h := w.Header()
	h.Set("Content-Type", m.ContentType)
	h.Set("Content-Length", strconv.Itoa(len(m.Body)))
	h.Set("Postbus-Message-Id", m.ID)
	h.Set("Postbus-Topic", m.Topic)
	if m.Tag != "" {
		h.Set("Postbus-Tag", m.Tag)
	}
	w.WriteHeader(http.StatusOK)
	w.Write(m.Body)
}

// queryInt reads an optional integer query parameter within [lo, hi].
func queryInt(r *http.Request, name string, def, lo, hi int64) (int64, *broker.Error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, &broker.Error{Code: codeInvalidParameter, Field: name,
			Detail: name + " must be an integer from " + strconv.FormatInt(lo, 10) + " to " + strconv.FormatInt(hi, 10)}
	}
	return n, nil
}

func (s *Server) handleMessagesByKey(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Query().Get("key")
	if key == "" {
		writeProblem(w, r, codeInvalidParameter, "key", "give the key to look up: ?key=K")
		return
	}
	limit, perr := queryInt(r, "limit", broker.DefaultQueryLimit, 1, broker.MaxQueryLimit)
	if perr != nil {
		s.writeError(w, r, perr)
		return
	}
	if s.coordinating(r) && s.messagesByKeyEverywhere(w, r) {
		return
	}
	var before int64
	if c := r.URL.Query().Get("cursor"); c != "" {
		n, err := strconv.ParseInt(c, 10, 64)
		if err != nil || n <= 0 {
			writeProblem(w, r, codeInvalidParameter, "cursor", "the cursor is not one this server returned")
			return
		}
		before = n
	}
	msgs, next, err := s.broker.MessagesByKey(r.Context(), pathParam(r, "topic"), key, before, int(limit))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := struct {
		Messages   []messageJSON `json:"messages"`
		NextCursor string        `json:"next_cursor,omitempty"`
	}{Messages: make([]messageJSON, len(msgs))}
	for i, m := range msgs {
		out.Messages[i] = toMessageJSON(m)
	}
	if next > 0 {
		out.NextCursor = strconv.FormatInt(next, 10)
	}
	writeJSON(w, http.StatusOK, out)
}
