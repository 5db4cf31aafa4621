package push

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/postbus/postbus/broker"
)

// Delivery headers (DESIGN §4).
const (
	HeaderMessageID        = "Postbus-Message-Id"
	HeaderTopic            = "Postbus-Topic"
	HeaderTag              = "Postbus-Tag"
	HeaderKeys             = "Postbus-Keys"
	HeaderQueueID          = "Postbus-Queue-Id"
	HeaderQueueOffset      = "Postbus-Queue-Offset"
	HeaderAttempt          = "Postbus-Attempt"
	HeaderSubscription     = "Postbus-Subscription"
	HeaderPropPrefix       = "Postbus-Prop-"
	HeaderPostbusSignature = "Postbus-Signature"
	HeaderBatchSize        = "Postbus-Batch-Size"
	// HeaderAckToken carries the delivery's ack token: an endpoint that
	// answers 202 Accepted acknowledges the delivery later with POST
	// /v1/acks/{token}. Not sent on ordered subscriptions' deliveries.
	HeaderAckToken         = "Postbus-Ack-Token"
	HeaderWebhookID        = "webhook-id"
	HeaderWebhookTimestamp = "webhook-timestamp"
	HeaderWebhookSignature = "webhook-signature"
)

const (
	// DefaultTimeout bounds an attempt whose Delivery has no Timeout.
	DefaultTimeout = 15 * time.Second
	// MaxRetryAfter caps a subscriber's Retry-After.
	MaxRetryAfter = 24 * time.Hour
	// responseKeep is how much of a response body a Result keeps.
	responseKeep = 1 << 10
	// maxErrLen bounds Result.Err, which goes into the attempt log.
	maxErrLen = 200
)

// Delivery is one attempt's input: the message, where it goes and how it is
// signed.
type Delivery struct {
	URL         string
	Body        []byte
	ContentType string // sent as is; application/octet-stream when empty

	MsgID        string
	Topic        string
	Tag          string
	Keys         []string
	QueueID      int
	QueueOffset  int64
	Attempt      int // 1 on the first delivery
	Subscription string
	Properties   map[string]string

	Secrets []string      // active whsec_ secrets, newest first
	Timeout time.Duration // the whole attempt, body read included; DefaultTimeout when 0

	// Format is the subscription's: broker.FormatCloudEvents sends the
	// message as a binary-mode CloudEvent (see cloudEventHeaders).
	Format string
	BornAt time.Time // the message's; a CloudEvent's time when it had none
	// Batch > 0 makes this a batched delivery: Body is a JSON array of
	// Batch messages (EncodeBatch) and MsgID the request's own id. The
	// headers that describe one message are left out and Postbus-Batch-Size
	// is sent; the whole answer (up to MaxResponseBytes) is kept in
	// Result.Response, so that a 207's list of failed messages can be read.
	Batch int
	// AckToken, when set, is sent as Postbus-Ack-Token, and a 202 answer
	// is Deferred rather than Delivered.
	AckToken string
}

// Outcome is what the dispatcher does after an attempt.
type Outcome int

const (
	Delivered Outcome = iota + 1 // a 2xx: done
	Retry                        // anything else: schedule the next attempt
	Gone                         // 410: disable the subscription
	Deferred                     // 202 to a delivery with an ack token: acknowledged later
)

func (o Outcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case Retry:
		return "retry"
	case Gone:
		return "gone"
	case Deferred:
		return "deferred"
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// Result is one attempt's outcome, for the dispatcher and the attempt log.
type Result struct {
	Outcome    Outcome
	Status     int           // HTTP status, 0 when none
	Err        string        // short reason when not Delivered: "status 500", "timeout after 15s"...
	RetryAfter time.Duration // the subscriber's Retry-After, within [0, 24h]; 0 if none
	Latency    time.Duration // request sent to response body read
	Response   []byte        // the first bytes (at most 1 KiB) of the response body
}

// Deliver makes one attempt: POST d.Body to d.URL with the postbus and
// Standard Webhooks headers, signed with d.Secrets and key (a nil key sends
// neither the v1a signature nor Postbus-Signature). now is the signing time;
// latency is measured on the real clock. A 2xx is Delivered, a 410 Gone,
// anything else, and any failure to get a whole response, Retry.
func (c *Client) Deliver(ctx context.Context, d Delivery, key *BusKey, now time.Time) Result {
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	req, err := c.newRequest(d, key, now)
	if err != nil {
		return Result{Outcome: Retry, Err: clip(err.Error())}
	}
	// Taken before the deadline is set, so that a delivery cut by its
	// timeout never reports less than the timeout.
	start := time.Now()
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req = req.WithContext(actx)

	resp, err := c.hc.Do(req)
	if err != nil {
		return Result{Outcome: Retry, Err: describe(err, ctx, timeout), Latency: time.Since(start)}
	}
	res := Result{Status: resp.StatusCode}
	keep := int64(responseKeep)
	if d.Batch > 0 {
		keep = c.cfg.MaxResponseBytes
	}
	res.Response, err = readCappedKeep(resp.Body, c.cfg.MaxResponseBytes, keep)
	// Closing a body that was not read to its end drops the connection
	// instead of draining the rest into the pool.
	resp.Body.Close()
	res.Latency = time.Since(start)
	switch {
	case err != nil:
		// A response cut short is no acknowledgement, even under a 2xx.
		res.Outcome = Retry
		res.Err = clip("response body: " + describe(err, ctx, timeout))
	case resp.StatusCode == http.StatusAccepted && d.AckToken != "":
		// The endpoint may echo the token; one that names another
		// delivery is a confused endpoint, and the delivery is not held
		// on a promise made about something else.
		if echo := resp.Header.Get(HeaderAckToken); echo != "" && echo != d.AckToken {
			res.Outcome = Retry
			res.Err = "202 with a " + HeaderAckToken + " that is not this delivery's"
		} else {
			res.Outcome = Deferred
		}
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		res.Outcome = Delivered
	case resp.StatusCode == http.StatusGone:
		res.Outcome = Gone
		res.Err = "status 410"
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		res.Outcome = Retry
		res.Err = "redirect " + strconv.Itoa(resp.StatusCode) + " not followed"
	default:
		res.Outcome = Retry
		res.Err = "status " + strconv.Itoa(resp.StatusCode)
	}
	if res.Outcome == Retry {
		if v := resp.Header.Get("Retry-After"); v != "" {
			res.RetryAfter, _ = parseRetryAfter(v, now.Add(res.Latency))
		}
	}
	return res
}

func (c *Client) newRequest(d Delivery, key *BusKey, now time.Time) (*http.Request, error) {
	if err := broker.ValidateWebhookURL(d.URL); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidURL, err)
	}
	// The request gets its context in Deliver; Background here only
	// satisfies the constructor.
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, d.URL, bytes.NewReader(d.Body))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidURL, unwrapURLError(err))
	}
	h := req.Header
	ct := d.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	set := func(k, v string) { h[k] = []string{v} } // names below are canonical already
	set("User-Agent", c.cfg.UserAgent)
	if d.Batch > 0 {
		// Each element carries its own message's metadata.
		set("Content-Type", "application/json")
		set(HeaderBatchSize, strconv.Itoa(d.Batch))
	} else {
		set("Content-Type", ct)
		set(HeaderMessageID, d.MsgID)
		set(HeaderTopic, d.Topic)
		if d.Tag != "" {
			set(HeaderTag, d.Tag)
		}
		if len(d.Keys) > 0 {
			set(HeaderKeys, strings.Join(d.Keys, ","))
		}
		set(HeaderQueueID, strconv.Itoa(d.QueueID))
		set(HeaderQueueOffset, strconv.FormatInt(d.QueueOffset, 10))
		set(HeaderAttempt, strconv.Itoa(d.Attempt))
		ce := d.Format == broker.FormatCloudEvents
		event := ce && wholeEvent(d.Properties)
		for name, v := range d.Properties {
			if event && strings.HasPrefix(name, broker.CEPropPrefix) {
				continue // sent as the event's own ce-* headers below
			}
			h.Set(HeaderPropPrefix+name, v)
		}
		if ce {
			cloudEventHeaders(h, d, event)
		}
	}
	set(HeaderSubscription, d.Subscription)
	if d.AckToken != "" {
		set(HeaderAckToken, d.AckToken)
	}
	ts := now.Unix()
	sig, err := SignatureHeader(d.Secrets, key, d.MsgID, ts, d.Body)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	// Standard Webhooks spells its headers in lower case; HTTP/1.1 sends
	// them as written, HTTP/2 lowers every name anyway.
	h[HeaderWebhookID] = []string{d.MsgID}
	// Marks the POST idempotent for net/http, which then sends it again on
	// a new connection when a reused keep-alive connection turns out to be
	// closed (an endpoint's idle timeout ending as the delivery went out);
	// otherwise that costs an attempt that never reached the endpoint. A
	// nil value is not sent. Deliveries are at least once, and the endpoint
	// dedupes by webhook-id anyway.
	h["Idempotency-Key"] = nil
	h[HeaderWebhookTimestamp] = []string{strconv.FormatInt(ts, 10)}
	if sig != "" {
		h[HeaderWebhookSignature] = []string{sig}
	}
	if key != nil {
		tok, err := key.DeliveryJWT(d.Subscription, d.MsgID, d.Body, now)
		if err != nil {
			return nil, err
		}
		set(HeaderPostbusSignature, tok)
	}
	return req, nil
}

// readCapped reads at most limit bytes of r and returns the first
// responseKeep of them.
func readCapped(r io.Reader, limit int64) ([]byte, error) {
	return readCappedKeep(r, limit, responseKeep)
}

// readCappedKeep reads at most limit bytes of r and returns the first
// keepMax of them. It reads past what it keeps so that a short body is
// read to its end and the connection can be reused.
func readCappedKeep(r io.Reader, limit, keepMax int64) ([]byte, error) {
	var keep []byte
	buf := make([]byte, 4<<10)
	lr := &io.LimitedReader{R: r, N: limit}
	for {
		n, err := lr.Read(buf)
		if room := int(keepMax) - len(keep); room > 0 && n > 0 {
			keep = append(keep, buf[:min(n, room)]...)
		}
		if err == io.EOF {
			return keep, nil
		}
		if err != nil {
			return keep, err
		}
	}
}

// describe turns a transport error into a short reason for the attempt log,
// without the URL (its query may hold a subscriber's credentials).
func describe(err error, parent context.Context, timeout time.Duration) string {
	var fe *forbiddenAddrError
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &fe):
		return fe.Error()
	case errors.Is(err, ErrForbiddenAddress):
		return ErrForbiddenAddress.Error()
	case parent.Err() != nil:
		return "canceled: " + parent.Err().Error()
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout after " + timeout.String()
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed mid-response"
	case errors.Is(err, io.EOF):
		return "connection closed without a response"
	case errors.As(err, &dnsErr):
		return clip("dns: " + dnsErr.Err)
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "host unreachable"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return clip(err.Error())
}

func clip(s string) string {
	if len(s) > maxErrLen {
		s = s[:maxErrLen]
	}
	return strings.ToValidUTF8(s, "")
}

// parseRetryAfter reads a Retry-After value, delay-seconds or an HTTP-date
// (taken relative to now), clamped to [0, MaxRetryAfter]. ok is false for a
// value that is neither.
func parseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		var secs int64
		for i := 0; i < len(v); i++ {
			c := v[i]
			if c < '0' || c > '9' {
				return 0, false
			}
			if secs <= int64(MaxRetryAfter/time.Second) {
				secs = secs*10 + int64(c-'0')
			}
		}
		return min(time.Duration(secs)*time.Second, MaxRetryAfter), true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return min(max(t.Sub(now), 0), MaxRetryAfter), true
}
