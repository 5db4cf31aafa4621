package httpapi

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/postbus/postbus/broker"
)

// Publish headers (DESIGN §4).
const (
	hdrTag         = "Postbus-Tag"
	hdrKeys        = "Postbus-Keys"
	hdrShardingKey = "Postbus-Sharding-Key"
	hdrDelay       = "Postbus-Delay"
	hdrDelayLevel  = "Postbus-Delay-Level"
	hdrDeliverAt   = "Postbus-Deliver-At"
	hdrDedupID     = "Postbus-Dedup-Id"
	hdrPropPrefix  = "Postbus-Prop-"
)

// publishHeaders are the Postbus-* headers a single publish takes, besides
// Postbus-Prop-*; a batch takes only the cluster's own.
var (
	publishHeaders = map[string]bool{hdrTag: true, hdrKeys: true, hdrShardingKey: true, hdrDelay: true,
		hdrDelayLevel: true, hdrDeliverAt: true, hdrDedupID: true, hdrForwardedBy: true,
		hdrTransaction: true, hdrProducerGroup: true, hdrTransactionTimeout: true}
	batchHeaders = map[string]bool{hdrForwardedBy: true}
)

// unknownPostbusHeader refuses a Postbus-* header the request does not
// take: a misspelt Postbus-Tagg or a Postbus-Tag on a batch would
// otherwise be dropped without a word, and the message stored without
// the setting its producer meant.
func unknownPostbusHeader(h http.Header, known map[string]bool, props bool) error {
	for name := range h {
		if !strings.HasPrefix(name, "Postbus-") || known[name] || (props && strings.HasPrefix(name, hdrPropPrefix)) {
			continue
		}
		if props {
			return &headerError{name, "not a publish header: Postbus-Tag, -Keys, -Sharding-Key, -Dedup-Id, -Delay, -Delay-Level, -Deliver-At, -Transaction, -Producer-Group, -Transaction-Timeout and -Prop-<name> are"}
		}
		if name == hdrTransaction || name == hdrProducerGroup || name == hdrTransactionTimeout {
			return &headerError{name, "a batch cannot be transactional: prepare each message with its own publish"}
		}
		return &headerError{name, "a batch takes no Postbus-* headers: each message's settings are fields of its item in the body"}
	}
	return nil
}

// maxBatchRequestBytes bounds a batch request's JSON. Bodies are limited
// to broker.MaxBatchBytes in all; the JSON may be larger by escaping and
// base64 (4/3), plus the other fields.
const maxBatchRequestBytes = broker.MaxBatchBytes*3/2 + 1<<20

// headerError is a malformed Postbus-* header.
type headerError struct {
	header, detail string
}

func (e *headerError) Error() string { return e.header + ": " + e.detail }

// parsePublishHeaders reads the message settings from a single publish's
// headers. It checks syntax only; the broker checks limits and meaning.
func parsePublishHeaders(h http.Header) (*broker.Message, error) {
	if err := unknownPostbusHeader(h, publishHeaders, true); err != nil {
		return nil, err
	}
	m := &broker.Message{}
	one := func(name string) (string, error) {
		vs := h[name]
		switch len(vs) {
		case 0:
			return "", nil
		case 1:
			return vs[0], nil
		default:
			return "", &headerError{name, "given more than once"}
		}
	}
	var err error
	if m.Tag, err = one(hdrTag); err != nil {
		return nil, err
	}
	keys, err := one(hdrKeys)
	if err != nil {
		return nil, err
	}
	if keys != "" {
		for _, k := range strings.Split(keys, ",") {
			k = strings.TrimSpace(k)
			if k == "" {
				return nil, &headerError{hdrKeys, "an empty key in the comma-separated list"}
			}
			m.Keys = append(m.Keys, k)
		}
	}
	if m.ShardingKey, err = one(hdrShardingKey); err != nil {
		return nil, err
	}
	if m.DedupID, err = one(hdrDedupID); err != nil {
		return nil, err
	}
	if v, err := one(hdrDelay); err != nil {
		return nil, err
	} else if v != "" {
		if m.Delay, err = time.ParseDuration(v); err != nil {
			return nil, &headerError{hdrDelay, fmt.Sprintf("%q is not a duration like 10s or 1h30m", v)}
		}
		if m.Delay <= 0 {
			return nil, &headerError{hdrDelay, fmt.Sprintf("%q must be positive", v)}
		}
	}
	if v, err := one(hdrDelayLevel); err != nil {
		return nil, err
	} else if v != "" {
		// Digits only: strconv.Atoi would also take "+3" and "03".
		if m.DelayLevel, err = strconv.Atoi(v); err != nil || v[0] < '1' || v[0] > '9' || m.DelayLevel > len(broker.DelayLevels) {
			return nil, &headerError{hdrDelayLevel, fmt.Sprintf("%q is not a delay level 1-%d", v, len(broker.DelayLevels))}
		}
	}
	if v, err := one(hdrDeliverAt); err != nil {
		return nil, err
	} else if v != "" {
		if m.DeliverAt, err = time.Parse(time.RFC3339Nano, v); err != nil {
			return nil, &headerError{hdrDeliverAt, fmt.Sprintf("%q is not an RFC 3339 time like 2026-01-02T15:04:05Z", v)}
		}
	}
	for name, vs := range h {
		if !strings.HasPrefix(name, hdrPropPrefix) {
			continue
		}
		prop := name[len(hdrPropPrefix):]
		if prop == "" {
			return nil, &headerError{name, "a property header needs a name after Postbus-Prop-"}
		}
		if strings.HasPrefix(strings.ToLower(prop), broker.CEPropPrefix) {
			// ce- properties are a CloudEvent's attributes: they come
			// whole from the event, never one by one.
			return nil, &headerError{name, "ce-* properties are a CloudEvent's attributes: send them as ce-* headers (binary mode) or as an application/cloudevents+json body"}
		}
		if len(vs) != 1 {
			return nil, &headerError{name, "given more than once"}
		}
		if m.Properties == nil {
			m.Properties = make(map[string]string)
		}
		m.Properties[prop] = vs[0]
	}
	ct, err := contentType(h)
	if err != nil {
		return nil, err
	}
	if ct != "" {
		if err := checkMediaType(ct); err != nil {
			return nil, &headerError{"Content-Type", err.Error()}
		}
		m.ContentType = ct
	}
	return m, nil
}

// contentType is the request's one Content-Type, or "". Two are an error:
// which one the body has is anyone's guess, and storing either would
// hand a consumer a type the producer may not have meant.
func contentType(h http.Header) (string, error) {
	vs := h.Values("Content-Type")
	switch len(vs) {
	case 0:
		return "", nil
	case 1:
		return vs[0], nil
	}
	return "", &headerError{"Content-Type", fmt.Sprintf("given %d times; send one", len(vs))}
}

// publishResult is the JSON of one publish result.
type publishResult struct {
	MsgID       string `json:"msg_id"`
	Topic       string `json:"topic"`
	QueueID     int    `json:"queue_id"`
	QueueOffset int64  `json:"queue_offset"`
	Status      string `json:"status"`
	DeliverAt   string `json:"deliver_at,omitempty"`
	Duplicate   bool   `json:"duplicate,omitempty"`
	Broker      string `json:"broker,omitempty"` // in a cluster: the broker that stored it
}

func toPublishResult(r broker.Result, brokerName string) publishResult {
	out := publishResult{MsgID: r.ID, Topic: r.Topic, QueueID: r.QueueID, QueueOffset: r.QueueOffset,
		Status: "SEND_OK", Duplicate: r.Duplicate, Broker: brokerName}
	if !r.DeliverAt.IsZero() {
		out.DeliverAt = r.DeliverAt.UTC().Format(time.RFC3339Nano)
	}
	return out
}

// appendPublishResult appends r as JSON, the same as encoding/json would
// give for publishResult, without reflection: a batch answers up to 1000 of
// these, on the publish hot path. Ids and topics are alphanumeric-safe
// (nuids; topic names are validated), and times are RFC 3339, so nothing
// needs escaping; strconv.AppendQuote guards the rest anyway.
func appendPublishResult(dst []byte, r publishResult) []byte {
	dst = append(dst, `{"msg_id":`...)
	dst = strconv.AppendQuote(dst, r.MsgID)
	dst = append(dst, `,"topic":`...)
	dst = strconv.AppendQuote(dst, r.Topic)
	dst = append(dst, `,"queue_id":`...)
	dst = strconv.AppendInt(dst, int64(r.QueueID), 10)
	dst = append(dst, `,"queue_offset":`...)
	dst = strconv.AppendInt(dst, r.QueueOffset, 10)
	dst = append(dst, `,"status":`...)
	dst = strconv.AppendQuote(dst, r.Status)
	if r.DeliverAt != "" {
		dst = append(dst, `,"deliver_at":`...)
		dst = strconv.AppendQuote(dst, r.DeliverAt)
	}
	if r.Duplicate {
		dst = append(dst, `,"duplicate":true`...)
	}
	if r.Broker != "" {
		dst = append(dst, `,"broker":`...)
		dst = strconv.AppendQuote(dst, r.Broker)
	}
	return append(dst, '}')
}

func writeRawJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

// allowPublish applies the per-principal publish rate to a publish the
// broker would take, answering its problem if it would not, and 429 with
// Retry-After when the bucket is short of its messages. A refused publish
// costs no rate.
func (s *Server) allowPublish(w http.ResponseWriter, r *http.Request, topic string, msgs []*broker.Message) bool {
	if s.limiter == nil {
		return true
	}
	if err := s.broker.Check(topic, msgs); err != nil {
		s.writeError(w, r, err)
		return false
	}
	if len(msgs) > s.limiter.burst {
		writeProblem(w, r, broker.CodeBatchTooLarge, "", fmt.Sprintf("a batch of %d messages is more than the publish burst of %d (--rate-burst): each message counts, so send at most %d at once", len(msgs), s.limiter.burst, s.limiter.burst))
		return false
	}
	key := clientAddr(r)
	if p := principalFrom(r.Context()); p != nil {
		key = p.id
	}
	ok, wait := s.limiter.take(key, len(msgs), time.Now())
	if !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		writeProblem(w, r, codeRateLimited, "", fmt.Sprintf("over the publish rate of %g messages a second; retry in %s", float64(s.limiter.limit), wait.Round(time.Millisecond)))
		return false
	}
	return true
}

// clientAddr is the client's IP without the port.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// firstCEHeader is the first (in name order) ce-* header of h, or "".
func firstCEHeader(h http.Header) string {
	first := ""
	for name := range h {
		if strings.HasPrefix(name, ceHeaderPrefix) && (first == "" || name < first) {
			first = name
		}
	}
	return strings.ToLower(first)
}

func (s *Server) handlePublish(w http.ResponseWriter, r *http.Request) {
	topic := pathParam(r, "topic")
	m, err := parsePublishHeaders(r.Header)
	var th txnHeaders
	if err == nil {
		th, err = parseTxnHeaders(r.Header)
	}
	if err != nil {
		var he *headerError
		errors.As(err, &he)
		writeProblem(w, r, codeInvalidHeader, he.header, he.Error())
		return
	}
	mode := cloudEventMode(r.Header, m.ContentType)
	switch mode {
	case ceBatch:
		writeProblem(w, r, codeUnsupportedMedia, "Content-Type", "application/cloudevents-batch+json is a batch of events: POST it to /v1/topics/{topic}/messages/batch")
		return
	case ceStructured:
		if h := firstCEHeader(r.Header); h != "" {
			writeProblem(w, r, broker.CodeInvalidCloudEvent, h, fmt.Sprintf("a structured event (application/cloudevents+json) carries its attributes in the body; header %s would be a second, different place for one", h))
			return
		}
	case ceBinary:
		props, perr := binaryEvent(r.Header)
		if perr == nil {
			perr = applyEvent(m, props, broker.CEPropPrefix)
		}
		if perr != nil {
			s.writeError(w, r, perr)
			return
		}
	}
	limit, tooLarge := s.maxBody, fmt.Sprintf("the body is larger than the limit of %d bytes", s.maxBody)
	if mode == ceStructured {
		// The limit is the data's, as for any message: the event around
		// it, and base64 or JSON escaping, may take the request past it.
		limit = structuredLimit(s.maxBody)
		tooLarge = fmt.Sprintf("the event is larger than %d bytes; its data may be up to %d bytes", limit, s.maxBody)
	}
	body, err := readBody(r, limit)
	if err != nil {
		s.writeError(w, r, bodyProblem(err, &broker.Error{Code: broker.CodeBodyTooLarge, Field: "body", Detail: tooLarge}))
		return
	}
	m.Body = body
	if mode == ceStructured {
		props, data, ct, perr := structuredEvent(body, "")
		if perr == nil {
			perr = applyEvent(m, props, "")
		}
		if perr == nil {
			perr = checkEventData(data, s.maxBody, "")
		}
		if perr != nil {
			s.writeError(w, r, perr)
			return
		}
		m.Body, m.ContentType = data, ct
	}
	if s.coordinating(r) && s.forwardPublish(w, r, topic, placementKey(m), body) || s.refuseForwardedCreate(w, r, topic) {
		return
	}
	msgs := []*broker.Message{m}
	if !s.allowPublish(w, r, topic, msgs) {
		return
	}
	if th.prepare {
		s.handlePrepare(w, r, topic, m, th)
		return
	}
	res, err := s.broker.Publish(r.Context(), topic, msgs)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status := http.StatusCreated
	if res[0].Duplicate {
		status = http.StatusOK
	}
	w.Header().Set("Location", "/v1/messages/"+res[0].ID)
	out := appendPublishResult(make([]byte, 0, 160), toPublishResult(res[0], s.selfName()))
	writeRawJSON(w, status, append(out, '\n'))
}

// batchItem is one message of a batch publish.
type batchItem struct {
	Body        *string           `json:"body"`
	BodyBase64  *string           `json:"body_base64"`
	ContentType string            `json:"content_type"`
	Tag         string            `json:"tag"`
	Keys        []string          `json:"keys"`
	ShardingKey string            `json:"sharding_key"`
	Delay       string            `json:"delay"`
	DelayLevel  int               `json:"delay_level"`
	DeliverAt   string            `json:"deliver_at"`
	DedupID     string            `json:"dedup_id"`
	Properties  map[string]string `json:"properties"`
}

// batchError is a malformed batch: which item and field, and why.
type batchError struct {
	code          broker.Code
	field, detail string
}

func (e *batchError) Error() string {
	if e.field == "" {
		return e.detail
	}
	return e.field + ": " + e.detail
}

// decodeBatch parses a batch request body into messages. It checks syntax
// and shape; the broker checks limits and meaning.
func decodeBatch(data []byte) ([]*broker.Message, error) {
	items, err := parseBatchItemsMax(data, broker.MaxBatchMessages)
	switch {
	case errors.Is(err, errTooManyItems):
		return nil, &batchError{broker.CodeBatchTooLarge, "", fmt.Sprintf("a batch holds at most %d messages", broker.MaxBatchMessages)}
	case err != nil:
		return nil, &batchError{codeInvalidJSON, "", "the batch must be a JSON array of messages: " + err.Error()}
	case len(items) == 0:
		return nil, &batchError{broker.CodeInvalidBatch, "", "the batch is empty"}
	}
	msgs := make([]*broker.Message, len(items))
	for i, it := range items {
		f := func(name string) string { return fmt.Sprintf("[%d].%s", i, name) }
		m := &broker.Message{ContentType: it.ContentType, Tag: it.Tag, Keys: it.Keys, ShardingKey: it.ShardingKey,
			DelayLevel: it.DelayLevel, DedupID: it.DedupID, Properties: it.Properties}
		switch {
		case it.Body != nil && it.BodyBase64 != nil:
			return nil, &batchError{broker.CodeInvalidMessage, f("body"), "give body or body_base64, not both"}
		case it.Body != nil:
			m.Body = []byte(*it.Body)
		case it.BodyBase64 != nil:
			b, err := base64.StdEncoding.DecodeString(*it.BodyBase64)
			if err != nil {
				return nil, &batchError{broker.CodeInvalidMessage, f("body_base64"), "not standard base64: " + err.Error()}
			}
			m.Body = b
		default:
			return nil, &batchError{broker.CodeEmptyBody, f("body"), "each message needs body or body_base64"}
		}
		if it.Delay != "" {
			d, err := time.ParseDuration(it.Delay)
			if err != nil || d <= 0 {
				return nil, &batchError{broker.CodeInvalidDelay, f("delay"), fmt.Sprintf("%q is not a positive duration like 10s", it.Delay)}
			}
			m.Delay = d
		}
		if it.DeliverAt != "" {
			t, err := time.Parse(time.RFC3339Nano, it.DeliverAt)
			if err != nil {
				return nil, &batchError{broker.CodeInvalidDelay, f("deliver_at"), fmt.Sprintf("%q is not an RFC 3339 time", it.DeliverAt)}
			}
			m.DeliverAt = t
		}
		if it.ContentType != "" {
			if err := checkMediaType(it.ContentType); err != nil {
				return nil, &batchError{broker.CodeInvalidMessage, f("content_type"), err.Error()}
			}
		}
		msgs[i] = m
	}
	return msgs, nil
}

// checkMediaType accepts a media type as RFC 9110 writes it: type "/"
// subtype, then parameters. mime.ParseMediaType alone also takes a bare
// token ("text"), which no consumer can dispatch on, while refusing a
// malformed parameter: one rule for both.
func checkMediaType(ct string) error {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return fmt.Errorf("%q is not a media type", ct)
	}
	typ, sub, ok := strings.Cut(mt, "/")
	if !ok || typ == "" || sub == "" || strings.Contains(sub, "/") {
		return fmt.Errorf("%q is not a media type: it needs a type and a subtype, as in text/plain", ct)
	}
	return nil
}

// isJSON reports whether a request body with content type ct may be read
// as JSON: no type, a JSON type, or application/x-www-form-urlencoded,
// which is what `curl -d` sends unless told otherwise (a JSON body sent
// that way is still JSON; a real form fails to parse and gets
// invalid_json).
func isJSON(ct string) bool {
	if ct == "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json") || mt == "application/x-www-form-urlencoded")
}

func (s *Server) handlePublishBatch(w http.ResponseWriter, r *http.Request) {
	topic := pathParam(r, "topic")
	if err := unknownPostbusHeader(r.Header, batchHeaders, false); err != nil {
		he := err.(*headerError)
		writeProblem(w, r, codeInvalidHeader, he.header, he.Error())
		return
	}
	ct, err := contentType(r.Header)
	if err != nil {
		writeProblem(w, r, codeInvalidHeader, "Content-Type", err.Error())
		return
	}
	if h := firstCEHeader(r.Header); h != "" {
		writeProblem(w, r, broker.CodeInvalidCloudEvent, h, fmt.Sprintf("a batch takes no ce-* headers (header %s): send its events as application/cloudevents-batch+json, each with its own attributes", h))
		return
	}
	mode := cloudEventMode(r.Header, ct)
	if mode == ceStructured {
		writeProblem(w, r, codeUnsupportedMedia, "Content-Type", "a batch of CloudEvents is application/cloudevents-batch+json (a JSON array of events); application/cloudevents+json is one event, published to /v1/topics/{topic}/messages")
		return
	}
	if mode != ceBatch && !isJSON(ct) {
		writeProblem(w, r, codeUnsupportedMedia, "Content-Type", "a batch is a JSON array: send Content-Type: application/json")
		return
	}
	data, err := readBody(r, maxBatchRequestBytes)
	if err != nil {
		s.writeError(w, r, bodyProblem(err, &broker.Error{Code: broker.CodeBatchTooLarge, Field: "body",
			Detail: fmt.Sprintf("the batch request is larger than %d bytes (bodies may total %d)", maxBatchRequestBytes, broker.MaxBatchBytes)}))
		return
	}
	var msgs []*broker.Message
	if mode == ceBatch {
		msgs, err = decodeEventBatch(data)
	} else {
		msgs, err = decodeBatch(data)
	}
	if err != nil {
		var be *batchError
		errors.As(err, &be)
		writeProblem(w, r, be.code, be.field, be.Error())
		return
	}
	if s.coordinating(r) && s.forwardBatch(w, r, topic, msgs, data) || s.refuseForwardedCreate(w, r, topic) {
		return
	}
	if !s.allowPublish(w, r, topic, msgs) {
		return
	}
	res, err := s.broker.Publish(r.Context(), topic, msgs)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	body := make([]byte, 0, 2+len(res)*128)
	body = append(body, '[')
	for i, x := range res {
		if i > 0 {
			body = append(body, ',')
		}
		body = appendPublishResult(body, toPublishResult(x, s.selfName()))
	}
	body = append(body, ']', '\n')
	writeRawJSON(w, http.StatusCreated, body)
}
