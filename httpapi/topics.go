package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/postbus/postbus/broker"
)

const maxTopicRequestBytes = 64 << 10

type queueJSON struct {
	QueueID   int   `json:"queue_id"`
	MinOffset int64 `json:"min_offset"`
	MaxOffset int64 `json:"max_offset"`
	Messages  int64 `json:"messages"`
	Bytes     int64 `json:"bytes"`
}

// topicJSON is a topic as the API shows it. queue_count is the setting
// (the "queues" of a PUT); queues lists each queue when the answer is about
// one topic.
type topicJSON struct {
	Name       string      `json:"name"`
	QueueCount int         `json:"queue_count"`
	Retention  string      `json:"retention,omitempty"`
	CreatedAt  string      `json:"created_at"`
	Messages   *int64      `json:"messages,omitempty"`
	Bytes      *int64      `json:"bytes,omitempty"`
	Queues     []queueJSON `json:"queues,omitempty"`
}

func toTopicJSON(t broker.Topic) topicJSON {
	out := topicJSON{Name: t.Name, QueueCount: t.Queues, CreatedAt: t.CreatedAt.UTC().Format(time.RFC3339Nano)}
	if t.Retention > 0 {
		out.Retention = t.Retention.String()
	}
	return out
}

func toTopicStatsJSON(st broker.TopicStats) topicJSON {
	out := toTopicJSON(st.Topic)
	out.Messages, out.Bytes = &st.Messages, &st.Bytes
	out.Queues = make([]queueJSON, len(st.Queues))
	for i, q := range st.Queues {
		out.Queues[i] = queueJSON{QueueID: q.ID, MinOffset: q.MinOffset, MaxOffset: q.MaxOffset, Messages: q.Messages, Bytes: q.Bytes}
	}
	return out
}

// jsonSpace is the whitespace JSON allows between tokens (RFC 8259 §2);
// bytes.TrimSpace would also take U+0085 and U+00A0.
const jsonSpace = " \t\r\n"

// decodeJSONBody decodes a small JSON request body strictly: unknown fields,
// anything but whitespace after the value, a member given twice and text
// that is not Unicode are errors; an empty body is the zero value. It is
// the one way a handler reads a JSON body (the batch publish has its own
// parser, held to the same rules, for speed).
func decodeJSONBody(r *http.Request, limit int, v any) *broker.Error {
	data, err := readBody(r, limit)
	if err != nil {
		return bodyProblem(err, &broker.Error{Code: codeRequestTooLarge, Field: "body", Detail: fmt.Sprintf("the request body is larger than %d bytes", limit)})
	}
	if len(bytes.TrimLeft(data, jsonSpace)) == 0 {
		return nil
	}
	if !isJSON(r.Header.Get("Content-Type")) {
		return &broker.Error{Code: codeUnsupportedMedia, Field: "Content-Type", Detail: "send Content-Type: application/json"}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &broker.Error{Code: codeInvalidJSON, Field: "body", Detail: "the body is not valid JSON for this request: " + err.Error()}
	}
	// Only whitespace may follow the value. Decoder.More is no test of
	// that: it says false before a ']' or '}', so {"queues":2}]]]} passed.
	if rest := bytes.TrimLeft(data[dec.InputOffset():], jsonSpace); len(rest) > 0 {
		return &broker.Error{Code: codeInvalidJSON, Field: "body", Detail: fmt.Sprintf("unexpected %q at byte offset %d, after the JSON value", rest[:min(len(rest), 8)], len(data)-len(rest))}
	}
	if err := checkJSONText(data); err != nil {
		return &broker.Error{Code: codeInvalidJSON, Field: "body", Detail: err.Error()}
	}
	return nil
}

// topicRequest is the body of PUT /v1/topics/{topic}.
type topicRequest struct {
	Queues    *int    `json:"queues"`
	Retention *string `json:"retention"`
	// Brokers places the topic in a cluster: "all" or a list of names.
	Brokers *brokerChoice `json:"brokers,omitempty"`
}

func (s *Server) handlePutTopic(w http.ResponseWriter, r *http.Request) {
	var req topicRequest
	if perr := decodeJSONBody(r, maxTopicRequestBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	if s.coordinating(r) {
		s.putTopicEverywhere(w, r, pathParam(r, "topic"), req)
		return
	}
	if req.Brokers != nil && s.cluster == nil && !req.Brokers.all {
		writeProblem(w, r, codeUnknownBroker, "brokers", "this broker is not in a cluster: leave brokers out, or give \"all\"")
		return
	}
	var settings broker.TopicSettings
	if req.Queues != nil {
		if *req.Queues < 1 {
			writeProblem(w, r, broker.CodeInvalidQueues, "queues", fmt.Sprintf("%d queues: a topic has at least 1", *req.Queues))
			return
		}
		settings.Queues = *req.Queues
	}
	if req.Retention != nil {
		d, err := time.ParseDuration(*req.Retention)
		if err != nil {
			writeProblem(w, r, broker.CodeInvalidRetention, "retention", fmt.Sprintf("%q is not a duration like 72h", *req.Retention))
			return
		}
		settings.Retention = &d
	}
	had, _ := s.broker.Queues(pathParam(r, "topic"))
	nt, created, err := s.broker.PutTopic(r.Context(), pathParam(r, "topic"), settings)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if created || nt.Queues != had {
		s.registerTopics(r)
	}
	st, err := s.broker.Topic(r.Context(), nt.Name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, toTopicStatsJSON(st))
}

// registerTopics tells the name servers of a topic this broker has just
// created, resized or deleted before the client hears of it, so that the
// bus's routes agree with the answer from the moment it is given: a
// publish through another broker an instant later finds the topic where
// it now lives (rather than, with auto-creation on, creating a second
// topic of the same name there). A name server that cannot be reached
// does not fail the request; the heartbeats carry the change later.
//
// The wait is bounded by half the hop timeout: a broker applying a change
// forwarded by another must answer within that broker's forward deadline
// (the same --forward-timeout across a cluster), or it is taken for hung
// and the change reported as failed where it was applied. One name
// server's acknowledgement ends the wait (see namesrv.Client.Sync).
func (s *Server) registerTopics(r *http.Request) {
	if s.cluster == nil {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cluster.hop/2)
	defer cancel()
	if err := s.cluster.names.Sync(ctx); err != nil {
		s.cluster.logger.Warn("the name servers have not yet heard of the topic change; the next heartbeat tells them",
			slog.String("topic", pathParam(r, "topic")), slog.Any("err", err))
	}
}

func (s *Server) handleGetTopic(w http.ResponseWriter, r *http.Request) {
	if s.coordinating(r) {
		s.getTopicEverywhere(w, r, pathParam(r, "topic"))
		return
	}
	st, err := s.broker.Topic(r.Context(), pathParam(r, "topic"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toTopicStatsJSON(st))
}

func (s *Server) handleListTopics(w http.ResponseWriter, r *http.Request) {
	limit, perr := queryInt(r, "limit", 100, 1, 1000)
	if perr != nil {
		s.writeError(w, r, perr)
		return
	}
	if s.coordinating(r) {
		s.listEverywhere(w, r, "topics", "name", int(limit), s.handleListTopics, combineTopics)
		return
	}
	cursor := r.URL.Query().Get("cursor")
	// A token sees the topics it may publish to; admin sees all.
	var topics []broker.Topic
	for _, t := range s.broker.Topics(r.Context(), cursor, 0) {
		if mayRead(r, t.Name) {
			topics = append(topics, t)
			if len(topics) > int(limit) {
				break
			}
		}
	}
	out := struct {
		Topics     []topicJSON `json:"topics"`
		NextCursor string      `json:"next_cursor,omitempty"`
	}{Topics: make([]topicJSON, 0, len(topics))}
	if len(topics) > int(limit) {
		topics = topics[:limit]
		out.NextCursor = topics[len(topics)-1].Name
	}
	for _, t := range topics {
		out.Topics = append(out.Topics, toTopicJSON(t))
	}
	writeJSON(w, http.StatusOK, out)
}

// hdrTopicVersion carries, on a topic delete a broker forwards to the
// topic's other holders, the version it minted for the delete, which each
// holder's tombstone of the topic keeps (see broker/topictomb.go).
const hdrTopicVersion = "Postbus-Topic-Version"

func (s *Server) handleDeleteTopic(w http.ResponseWriter, r *http.Request) {
	if s.coordinating(r) {
		v := s.broker.NextVersion()
		r.Header.Set(hdrTopicVersion, v.String())
		r = r.WithContext(broker.WithVersion(r.Context(), v))
		s.onHolders(w, r, pathParam(r, "topic"), s.handleDeleteTopic)
		s.cluster.names.Forget(pathParam(r, "topic"))
		return
	}
	r, ok := s.takeVersionOf(w, r, hdrTopicVersion)
	if !ok {
		return
	}
	if err := s.broker.DeleteTopic(r.Context(), pathParam(r, "topic")); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.registerTopics(r)
	w.WriteHeader(http.StatusNoContent)
}
