package httpapi

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/namesrv"
	"github.com/postbus/postbus/push"
)

// maxAckTokenRequestBytes bounds the body of POST /v1/acks/{token}.
const maxAckTokenRequestBytes = 1 << 10

// ackRequest is the body of POST /v1/acks/{token}.
type ackRequest struct {
	Status string `json:"status"`          // done or retry
	Delay  string `json:"delay,omitempty"` // retry: when; the retry policy's delay when absent
}

// ackResult is the answer of POST /v1/acks/{token}.
type ackResult struct {
	Status  string `json:"status"` // done, retry or dead
	MsgID   string `json:"msg_id"`
	Attempt int    `json:"attempt"`
	// RetryAt is when the message goes out again, after a retry.
	RetryAt string `json:"retry_at,omitempty"`
}

// handleAckToken settles a push delivery its endpoint answered 202
// Accepted (deferred acknowledgement, broker/deferred.go). The token is
// the capability: a webhook receiver holds no bus token, so the route is
// open, and only a token this bus MAC'd settles anything. In a cluster the
// token names the broker that issued it, and is sent there.
func (s *Server) handleAckToken(w http.ResponseWriter, r *http.Request) {
	token := pathParam(r, "token")
	if len(token) > broker.MaxReceiptLen+65 {
		writeProblem(w, r, broker.CodeInvalidAckToken, "token", "not an ack token this bus issued")
		return
	}
	var req ackRequest
	if perr := decodeJSONBody(r, maxAckTokenRequestBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	var delay time.Duration
	switch req.Status {
	case "done":
		if req.Delay != "" {
			writeProblem(w, r, broker.CodeInvalidAck, "delay", `a delay goes with "status":"retry" only`)
			return
		}
	case "retry":
		if req.Delay != "" {
			d, err := time.ParseDuration(req.Delay)
			if err != nil || d < 0 || d > broker.MaxRetryDelay {
				writeProblem(w, r, broker.CodeInvalidAck, "delay", fmt.Sprintf("%q is not a delay of 0s to %s, like 30s", req.Delay, broker.MaxRetryDelay))
				return
			}
			delay = d
		}
	default:
		writeProblem(w, r, broker.CodeInvalidAck, "status", fmt.Sprintf(`status %q: give "done" or "retry"`, req.Status))
		return
	}
	if name, _ := splitReceipt(token); s.coordinating(r) && name != "" && name != s.cluster.self {
		s.forwardAckToken(w, r, name, req)
		return
	}
	d, err := s.broker.Deferred(r.Context(), token)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	v, res := broker.Ack(), ackResult{Status: "done", MsgID: d.MsgID, Attempt: d.Attempt}
	if req.Status == "retry" {
		if req.Delay == "" {
			// The policy's wait after the attempt that failed, or its
			// end: the attempt answered 202 was the last.
			var dead bool
			delay, dead = push.PolicyOf(d.Subscription).Next(d.Attempt, 0, rand.Float64)
			if dead {
				v, res.Status = broker.Dead(fmt.Sprintf("the endpoint asked for a retry of its last attempt (%d), answered 202 before", d.Attempt)), "dead"
			}
		}
		if res.Status != "dead" {
			at := time.Now().Add(delay)
			v, res.Status, res.RetryAt = broker.RetryAt(at), "retry", at.UTC().Format(time.RFC3339Nano)
		}
	}
	if err := s.broker.SettleDeferred(r.Context(), d, v); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// forwardAckToken sends an acknowledgement to the broker whose name its
// token carries, which alone can check its MAC and holds its delivery.
func (s *Server) forwardAckToken(w http.ResponseWriter, r *http.Request, name string, req ackRequest) {
	if !namesrv.ValidBrokerName(name) {
		writeProblem(w, r, broker.CodeInvalidAckToken, "token", "not an ack token this bus issued")
		return
	}
	all, err := s.cluster.brokers(r.Context())
	if err != nil {
		writeProblem(w, r, codeBrokerUnavailable, "token", fmt.Sprintf("the token was issued by broker %s, and the name servers cannot say where it is now (%v); acknowledge again later", name, err))
		return
	}
	for _, p := range all[1:] {
		if p.name == name {
			body, err := json.Marshal(req)
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			writeAnswer(w, r, s.askOne(r, p, "", body, s.handleAckToken))
			return
		}
	}
	if gone, ok := s.cluster.names.Gone(); ok && !slices.Contains(gone, name) {
		// No name server knows the name, live or gone: no broker of this
		// bus issued the token, and waiting for one would be for ever.
		writeProblem(w, r, broker.CodeInvalidAckToken, "token", fmt.Sprintf("not an ack token this bus issued: no broker %s is known", name))
		return
	}
	writeProblem(w, r, codeBrokerUnavailable, "token", fmt.Sprintf("the token was issued by broker %s, which is not live now; acknowledge again once it is back (its delivery times out meanwhile after the subscription's ack_timeout)", name))
}
