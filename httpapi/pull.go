package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/postbus/postbus/broker"
)

// maxAckRequestBytes bounds an ack, nack or visibility body: up to 1024 receipts of at
// most broker.MaxReceiptLen characters, in a cluster prefixed with a broker
// name of up to 64 and a separator, JSON-quoted.
const maxAckRequestBytes = 1024*(broker.MaxReceiptLen+65+4) + 1024

type pulledJSON struct {
	messageJSON
	Receipt string `json:"receipt"`
	Attempt int    `json:"attempt"`
}

// queryDuration reads an optional duration query parameter.
func queryDuration(r *http.Request, name string, def time.Duration) (time.Duration, *broker.Error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, &broker.Error{Code: codeInvalidParameter, Field: name, Detail: fmt.Sprintf("%s %q is not a duration like 20s", name, v)}
	}
	return d, nil
}

func (s *Server) handlePull(w http.ResponseWriter, r *http.Request) {
	max, perr := queryInt(r, "max", 32, 1, broker.MaxPullMessages)
	if perr == nil {
		var wait, vis time.Duration
		if wait, perr = queryDuration(r, "wait", 0); perr == nil {
			if vis, perr = queryDuration(r, "visibility", 0); perr == nil {
				if perr = checkPullTimes(wait, vis); perr == nil {
					var release func()
					if wait > 0 {
						var ok bool
						if release, ok = s.holdPoll(w, r); !ok {
							return
						}
					}
					if !s.pull(w, r, int(max), wait, vis, release) && release != nil {
						release()
					}
					return
				}
			}
		}
	}
	s.writeError(w, r, perr)
}

// checkPullTimes refuses a wait or visibility the broker would refuse, as
// it words it, before anything is asked of anyone: a cluster pull asks the
// holders for ready messages without waiting first, so a wait out of range
// was refused only when no message was ready, and accepted otherwise.
func checkPullTimes(wait, vis time.Duration) *broker.Error {
	switch {
	case wait > broker.MaxPullWait:
		return &broker.Error{Code: broker.CodeInvalidPull, Field: "wait", Detail: fmt.Sprintf("wait %s must be 0-%s", wait, broker.MaxPullWait)}
	case vis != 0 && (vis < time.Second || vis > broker.MaxVisibility):
		return &broker.Error{Code: broker.CodeInvalidPull, Field: "visibility", Detail: fmt.Sprintf("visibility %s must be between 1s and %s", vis, broker.MaxVisibility)}
	}
	return nil
}

// pull answers a pull. It reports whether it parked the poll (parked.go),
// which then owns release; otherwise the caller releases.
func (s *Server) pull(w http.ResponseWriter, r *http.Request, max int, wait, vis time.Duration, release func()) bool {
	if s.coordinating(r) && s.pullEverywhere(w, r, max, wait, vis) {
		return false
	}
	if !s.coordinating(r) && s.forwardExpired(w, r) {
		return false
	}
	group, topic := pathParam(r, "group"), pathParam(r, "topic")
	if wait > 0 && s.parkable(r) {
		// A look without waiting first: a pull that finds messages
		// answers on its connection as usual, one that must wait parks.
		got, err := s.broker.Pull(r.Context(), group, topic, max, 0, vis)
		switch {
		case err != nil:
			s.writeError(w, r, err)
			return false
		case len(got) > 0:
			s.answerPull(w, r, group, got)
			return false
		case s.park(w, r, group, topic, max, wait, vis, release):
			return true
		}
	}
	if wait > 0 {
		// A long poll may outlast the server's write timeout.
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + 30*time.Second))
	}
	got, err := s.broker.Pull(r.Context(), group, topic, max, wait, vis)
	if err != nil {
		s.writeError(w, r, err)
		return false
	}
	s.answerPull(w, r, group, got)
	return false
}

// answerPull answers with what a pull handed out, or gives it back when
// the puller is gone.
func (s *Server) answerPull(w http.ResponseWriter, r *http.Request, group string, got []broker.Pulled) {
	if len(got) > 0 && r.Context().Err() != nil {
		// The puller is gone (in a cluster: another broker answered it
		// first). Hand the messages back now rather than let them wait out
		// their visibility.
		s.giveBack(group, got)
		return
	}
	s.writePull(w, got)
}

// writePull writes a pull's answer.
func (s *Server) writePull(w http.ResponseWriter, got []broker.Pulled) {
	out := struct {
		Messages []pulledJSON `json:"messages"`
	}{Messages: make([]pulledJSON, len(got))}
	for i, p := range got {
		out.Messages[i] = pulledJSON{messageJSON: toMessageJSON(p.Message), Receipt: s.receiptOut(p.Receipt), Attempt: p.Attempt}
		out.Messages[i].Topic = p.OriginTopic()
	}
	writeJSON(w, http.StatusOK, out)
}

// receiptResultJSON is one receipt's answer to an ack, a nack or a change
// of visibility: the receipt as the client sent it, and what became of it.
type receiptResultJSON struct {
	Receipt string `json:"receipt"`
	Status  string `json:"status"`
}

type receiptResultsJSON struct {
	Results []receiptResultJSON `json:"results"`
}

// writeResults answers a per-receipt request, naming each receipt as the
// client sent it.
func writeResults(w http.ResponseWriter, sent []string, res []broker.ReceiptResult) {
	out := receiptResultsJSON{Results: make([]receiptResultJSON, len(res))}
	for i, r := range res {
		out.Results[i] = receiptResultJSON{Receipt: sent[i], Status: string(r.Status)}
	}
	writeJSON(w, http.StatusOK, out)
}

// Ack, nack and visibility answer per receipt (DESIGN §4), as SQS's batch
// calls do: 200 with each receipt's status whenever the request is well
// formed. A malformed request (bad JSON, no receipts or too many, a bad
// delay or visibility, a receipt this bus did not issue to the group) is a
// 4xx problem and changes nothing: a client sending those has a fault to
// fix, not a race to retry.

func (s *Server) handleAck(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Receipts []string `json:"receipts"`
	}
	if perr := decodeJSONBody(r, maxAckRequestBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	if field, detail, ok := badReceipt(pathParam(r, "group"), req.Receipts); !ok {
		writeProblem(w, r, broker.CodeInvalidReceipt, field, detail)
		return
	}
	if s.coordinating(r) && !s.ownReceipts(req.Receipts) {
		body, _ := json.Marshal(req)
		s.settle(w, r, req.Receipts, body, s.handleAck)
		return
	}
	res, err := s.broker.AckEach(r.Context(), pathParam(r, "group"), req.Receipts)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeResults(w, req.Receipts, res)
}

func (s *Server) handleNack(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Receipts []string `json:"receipts"`
		Delay    string   `json:"delay,omitempty"`
	}
	if perr := decodeJSONBody(r, maxAckRequestBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	var delay time.Duration
	if req.Delay != "" {
		d, err := time.ParseDuration(req.Delay)
		if err != nil {
			writeProblem(w, r, broker.CodeInvalidNack, "delay", fmt.Sprintf("%q is not a duration like 10s", req.Delay))
			return
		}
		delay = d
	}
	if field, detail, ok := badReceipt(pathParam(r, "group"), req.Receipts); !ok {
		writeProblem(w, r, broker.CodeInvalidReceipt, field, detail)
		return
	}
	if s.coordinating(r) && !s.ownReceipts(req.Receipts) {
		body, _ := json.Marshal(req)
		s.settle(w, r, req.Receipts, body, s.handleNack)
		return
	}
	res, err := s.broker.NackEach(r.Context(), pathParam(r, "group"), req.Receipts, delay)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeResults(w, req.Receipts, res)
}

// handleVisibility extends or shortens the visibility of held receipts
// (SQS's ChangeMessageVisibility): from now, 0 to the pull's maximum.
func (s *Server) handleVisibility(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Receipts   []string `json:"receipts"`
		Visibility *string  `json:"visibility"`
	}
	if perr := decodeJSONBody(r, maxAckRequestBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	if req.Visibility == nil {
		writeProblem(w, r, broker.CodeInvalidVisibility, "visibility", `visibility is required, a duration like "60s" ("0s" makes the messages visible now)`)
		return
	}
	vis, err := time.ParseDuration(*req.Visibility)
	if err != nil {
		writeProblem(w, r, broker.CodeInvalidVisibility, "visibility", fmt.Sprintf("%q is not a duration like 60s", *req.Visibility))
		return
	}
	if field, detail, ok := badReceipt(pathParam(r, "group"), req.Receipts); !ok {
		writeProblem(w, r, broker.CodeInvalidReceipt, field, detail)
		return
	}
	if s.coordinating(r) && !s.ownReceipts(req.Receipts) {
		body, _ := json.Marshal(req)
		s.settle(w, r, req.Receipts, body, s.handleVisibility)
		return
	}
	res, err := s.broker.ChangeVisibility(r.Context(), pathParam(r, "group"), req.Receipts, vis)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeResults(w, req.Receipts, res)
}

func (s *Server) handleReadQueue(w http.ResponseWriter, r *http.Request) {
	queue, err := strconv.Atoi(pathParam(r, "queue"))
	if err != nil || queue < 0 {
		writeProblem(w, r, codeInvalidParameter, "queue", "the queue is a number from 0")
		return
	}
	offset, perr := queryInt(r, "offset", 0, 0, 1<<62)
	if perr != nil {
		s.writeError(w, r, perr)
		return
	}
	max, perr := queryInt(r, "max", 32, 1, broker.MaxPullMessages)
	if perr != nil {
		s.writeError(w, r, perr)
		return
	}
	wait, perr := queryDuration(r, "wait", 0)
	if perr == nil && wait > broker.MaxPullWait {
		perr = &broker.Error{Code: codeInvalidParameter, Field: "wait", Detail: "wait is at most 30s"}
	}
	if perr != nil {
		s.writeError(w, r, perr)
		return
	}
	topic := pathParam(r, "topic")
	if err := broker.ValidateTopicName(topic); err != nil {
		s.writeError(w, r, err)
		return
	}
	if wait > 0 {
		release, ok := s.holdPoll(w, r)
		if !ok {
			return
		}
		defer release()
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + 30*time.Second))
	}
	msgs, next, err := s.broker.ReadQueueWait(r.Context(), topic, queue, offset, int(max), wait)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	type lostJSON struct {
		From int64 `json:"from"`
		To   int64 `json:"to"`
	}
	out := struct {
		Messages   []messageJSON `json:"messages"`
		NextOffset int64         `json:"next_offset"`
		Lost       []lostJSON    `json:"lost,omitempty"`
	}{Messages: make([]messageJSON, len(msgs)), NextOffset: next}
	have := make([]int64, len(msgs))
	for i, m := range msgs {
		out.Messages[i] = toMessageJSON(m)
		have[i] = m.QueueOffset
	}
	// Offsets the read stepped over because their messages are lost
	// (damaged or missing from the log) are named, so that a consumer
	// keeping its own position does not take the next message for the one
	// it asked for.
	for _, l := range s.broker.LostIn(topic, queue, offset, next, have) {
		out.Lost = append(out.Lost, lostJSON{From: l.From, To: l.To})
	}
	writeJSON(w, http.StatusOK, out)
}
