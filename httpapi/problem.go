package httpapi

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/postbus/postbus/broker"
)

// Codes of problems the HTTP layer itself raises; the broker's are in
// package broker. All are listed in openapi.yaml.
const (
	codeNotFound          broker.Code = "not_found"
	codeMethodNotAllowed  broker.Code = "method_not_allowed"
	codeInvalidHeader     broker.Code = "invalid_header"
	codeInvalidJSON       broker.Code = "invalid_json"
	codeInvalidParameter  broker.Code = "invalid_parameter"
	codeUnexpectedBody    broker.Code = "unexpected_body"
	codeUnsupportedMedia  broker.Code = "unsupported_media_type"
	codeRequestTooLarge   broker.Code = "request_too_large"
	codeInternal          broker.Code = "internal"
	codeNotReady          broker.Code = "not_ready"
	codeUnauthorized      broker.Code = "unauthorized"
	codeForbidden         broker.Code = "forbidden"
	codeRateLimited       broker.Code = "rate_limited"
	codeInvalidBroker     broker.Code = "invalid_broker"
	codeBrokerNotFound    broker.Code = "broker_not_found"
	codeUnknownBroker     broker.Code = "unknown_broker"
	codeClusterPartial    broker.Code = "cluster_partial"
	codeBrokerUnavailable broker.Code = "broker_unavailable"
	codeServerBusy        broker.Code = "server_busy"
	codeRequestTimeout    broker.Code = "request_timeout"
	codeTooManyPolls      broker.Code = "too_many_polls"
	codeBrokerNameTaken   broker.Code = "broker_name_taken"
)

// statusOf is the one table from error codes to HTTP statuses.
var statusOf = map[broker.Code]int{
	broker.CodeInvalidTopic:          http.StatusBadRequest,
	broker.CodeSystemTopic:           http.StatusBadRequest,
	broker.CodeTopicNotFound:         http.StatusNotFound,
	broker.CodeInvalidMessage:        http.StatusBadRequest,
	broker.CodeBodyTooLarge:          http.StatusRequestEntityTooLarge,
	broker.CodeEmptyBody:             http.StatusBadRequest,
	broker.CodeInvalidTag:            http.StatusBadRequest,
	broker.CodeInvalidKeys:           http.StatusBadRequest,
	broker.CodeInvalidProperties:     http.StatusBadRequest,
	broker.CodeInvalidCloudEvent:     http.StatusBadRequest,
	broker.CodeInvalidDelay:          http.StatusBadRequest,
	broker.CodeInvalidDedupID:        http.StatusBadRequest,
	broker.CodeBatchTooLarge:         http.StatusRequestEntityTooLarge,
	broker.CodeInvalidBatch:          http.StatusBadRequest,
	broker.CodeInvalidQueues:         http.StatusBadRequest,
	broker.CodeInvalidRetention:      http.StatusBadRequest,
	broker.CodeMessageNotFound:       http.StatusNotFound,
	broker.CodeMessageDamaged:        http.StatusInternalServerError,
	broker.CodeInvalidMessageID:      http.StatusBadRequest,
	broker.CodeInvalidKey:            http.StatusBadRequest,
	broker.CodeInvalidFilter:         http.StatusBadRequest,
	broker.CodeInvalidGroup:          http.StatusBadRequest,
	broker.CodeInvalidSubscription:   http.StatusBadRequest,
	broker.CodeSubscriptionExists:    http.StatusConflict,
	broker.CodeSubscriptionNotFound:  http.StatusNotFound,
	broker.CodeGroupNotFound:         http.StatusNotFound,
	broker.CodeInvalidPull:           http.StatusBadRequest,
	broker.CodeInvalidNack:           http.StatusBadRequest,
	broker.CodeInvalidVisibility:     http.StatusBadRequest,
	broker.CodeInvalidReset:          http.StatusBadRequest,
	broker.CodeQueueNotFound:         http.StatusNotFound,
	broker.CodeInvalidReceipt:        http.StatusBadRequest,
	broker.CodeStaleReceipt:          http.StatusConflict,
	broker.CodeInvalidAckToken:       http.StatusBadRequest,
	broker.CodeInvalidAck:            http.StatusBadRequest,
	broker.CodeAckTokenUsed:          http.StatusConflict,
	broker.CodeAckTokenExpired:       http.StatusGone,
	broker.CodeDiskFull:              http.StatusInsufficientStorage,
	broker.CodeUnavailable:           http.StatusServiceUnavailable,
	broker.CodeInvalidTransaction:    http.StatusBadRequest,
	broker.CodeTransactionNotFound:   http.StatusNotFound,
	broker.CodeTransactionDecided:    http.StatusConflict,
	broker.CodeInvalidProducerGroup:  http.StatusBadRequest,
	broker.CodeProducerGroupNotFound: http.StatusNotFound,
	codeNotFound:                     http.StatusNotFound,
	codeMethodNotAllowed:             http.StatusMethodNotAllowed,
	codeInvalidHeader:                http.StatusBadRequest,
	codeInvalidJSON:                  http.StatusBadRequest,
	codeInvalidParameter:             http.StatusBadRequest,
	codeUnexpectedBody:               http.StatusBadRequest,
	codeUnsupportedMedia:             http.StatusUnsupportedMediaType,
	codeRequestTooLarge:              http.StatusRequestEntityTooLarge,
	codeInternal:                     http.StatusInternalServerError,
	codeNotReady:                     http.StatusServiceUnavailable,
	codeUnauthorized:                 http.StatusUnauthorized,
	codeForbidden:                    http.StatusForbidden,
	codeRateLimited:                  http.StatusTooManyRequests,
	codeInvalidBroker:                http.StatusBadRequest,
	codeBrokerNotFound:               http.StatusNotFound,
	codeBrokerNameTaken:              http.StatusConflict,
	codeUnknownBroker:                http.StatusBadRequest,
	codeClusterPartial:               http.StatusBadGateway,
	codeBrokerUnavailable:            http.StatusServiceUnavailable,
	codeServerBusy:                   http.StatusServiceUnavailable,
	codeRequestTimeout:               http.StatusRequestTimeout,
	codeTooManyPolls:                 http.StatusTooManyRequests,
	codeNoLeader:                     http.StatusServiceUnavailable,
	codeNotReplicated:                http.StatusNotFound,
	codeMemberNotFound:               http.StatusNotFound,
	codeInvalidMember:                http.StatusBadRequest,
}

// problem is an RFC 9457 problem detail with postbus's stable code.
type problem struct {
	Type     string      `json:"type"`
	Title    string      `json:"title"`
	Status   int         `json:"status"`
	Detail   string      `json:"detail"`
	Code     broker.Code `json:"code"`
	Field    string      `json:"field,omitempty"`
	Instance string      `json:"instance,omitempty"`
}

func writeProblem(w http.ResponseWriter, r *http.Request, code broker.Code, field, detail string) {
	status, ok := statusOf[code]
	if !ok {
		status = http.StatusInternalServerError
	}
	p := problem{
		Type:     "urn:postbus:problem:" + string(code),
		Title:    http.StatusText(status),
		Status:   status,
		Detail:   detail,
		Code:     code,
		Field:    field,
		Instance: r.URL.Path,
	}
	if pb, ok := r.Body.(*pacedBody); ok && r.ContentLength != 0 && !pb.ended() {
		// Refused with its body unread (a body where none is taken, a bad
		// header or parameter, a fenced write): the server would wait for
		// the rest of it before answering, forever for a client that
		// stops sending.
		defer refuseUnreadBody(w, r)()
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(p) // a client gone has nobody to tell
}

// writeError answers err: a broker *Error as its problem; anything else as
// a 500 that is logged but not shown, since it may say too much.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var be *broker.Error
	if errors.As(err, &be) {
		if statusOf[be.Code] >= 500 {
			s.logger.Error("request failed", slog.String("path", r.URL.Path), slog.Any("err", err))
		}
		if be.Code == codeServerBusy || be.Code == codeRequestTimeout {
			writeBodyProblem(w, r, be)
			return
		}
		detail := be.Detail
		if detail == "" {
			detail = string(be.Code)
		}
		writeProblem(w, r, be.Code, be.Field, detail)
		return
	}
	if errors.Is(err, broker.ErrNotLeader) {
		// A replica group's leader lost the lead under the request: a
		// write in it may or may not be done; the next leader answers a
		// retry.
		s.logger.Error("request failed: this replica lost the lead of its group under it", slog.String("path", r.URL.Path), slog.Any("err", err))
		w.Header().Set("Retry-After", "1")
		writeProblem(w, r, broker.CodeUnavailable, "", "this member lost the lead of its replica group while answering; what the request wrote may or may not be done: retry (a publish with the same Postbus-Dedup-Id)")
		return
	}
	s.logger.Error("request failed", slog.String("path", r.URL.Path), slog.Any("err", err))
	writeProblem(w, r, codeInternal, "", "an internal error occurred; the server log has the details")
}

// writeJSON answers v as JSON. It is encoded before the status is sent,
// so that a value that cannot be encoded (a fault here) answers 500
// instead of a success with a cut body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		slog.Error("an answer could not be encoded", slog.Any("err", err))
		w.Header().Set("Content-Type", "application/problem+json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write([]byte(`{"type":"urn:postbus:problem:internal","title":"Internal Server Error","status":500,"detail":"an internal error occurred; the server log has the details","code":"internal"}` + "\n"))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n')) // a client gone has nobody to tell
}
