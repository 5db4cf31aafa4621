package push

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/postbus/postbus/broker"
)

// Headers of a transaction check-back, besides the Standard Webhooks ones.
const (
	HeaderTransactionID = "Postbus-Transaction-Id"
	HeaderCheck         = "Postbus-Check"
)

// TxnChecker asks producer groups about their undecided transactions
// (broker.TxnChecker): a POST of {"transaction_id","msg_id","topic","tag",
// "keys","check"} to the group's check_url, through the webhook client
// (its SSRF guard, no redirects, a capped answer), signed as a delivery is:
// Standard Webhooks headers keyed with the group's secrets (and v1a with
// the bus's key). The answer is a 2xx with {"status":"commit"|"rollback"|
// "unknown"}; anything else is a failed check.
type TxnChecker struct {
	c   *Client
	key *BusKey
	now func() time.Time
}

var _ broker.TxnChecker = (*TxnChecker)(nil)

// NewTxnChecker returns a checker sending through c, signing with key too
// when it is not nil.
func NewTxnChecker(c *Client, key *BusKey) *TxnChecker {
	return &TxnChecker{c: c, key: key, now: time.Now}
}

// txnCheckBody is a check's JSON.
type txnCheckBody struct {
	TransactionID string   `json:"transaction_id"`
	MsgID         string   `json:"msg_id"`
	Topic         string   `json:"topic"`
	Tag           string   `json:"tag"`
	Keys          []string `json:"keys"`
	Check         int      `json:"check"`
}

// CheckTransaction makes one check; ctx bounds it.
func (t *TxnChecker) CheckTransaction(ctx context.Context, g broker.ProducerGroup, c broker.TxnCheck) broker.TxnCheckResult {
	keys := c.Keys
	if keys == nil {
		keys = []string{}
	}
	body, err := json.Marshal(txnCheckBody{TransactionID: c.TransactionID, MsgID: c.MsgID, Topic: c.Topic, Tag: c.Tag, Keys: keys, Check: c.Check})
	if err != nil {
		return broker.TxnCheckResult{Err: "encode the check: " + err.Error()}
	}
	if err := broker.ValidateWebhookURL(g.CheckURL); err != nil {
		return broker.TxnCheckResult{Err: "check_url: " + err.Error()}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.CheckURL, bytes.NewReader(body))
	if err != nil {
		return broker.TxnCheckResult{Err: clip("check_url: " + unwrapURLError(err).Error())}
	}
	now := t.now()
	// One id per check: a receiver that dedupes by webhook-id must not
	// take the next check for a replay of this one.
	id := c.MsgID + "-" + strconv.Itoa(c.Check)
	ts := now.Unix()
	sig, err := SignatureHeader(g.SigningSecrets(now), t.key, id, ts, body)
	if err != nil {
		return broker.TxnCheckResult{Err: "sign: " + err.Error()}
	}
	h := req.Header
	h["Content-Type"] = []string{"application/json"}
	h["User-Agent"] = []string{t.c.cfg.UserAgent}
	h[HeaderTransactionID] = []string{c.TransactionID}
	h[HeaderMessageID] = []string{c.MsgID}
	h[HeaderTopic] = []string{c.Topic}
	h[HeaderCheck] = []string{strconv.Itoa(c.Check)}
	h[HeaderWebhookID] = []string{id}
	h[HeaderWebhookTimestamp] = []string{strconv.FormatInt(ts, 10)}
	if sig != "" {
		h[HeaderWebhookSignature] = []string{sig}
	}
	timeout := time.Duration(0)
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d).Round(time.Millisecond)
	}
	start := time.Now()
	resp, err := t.c.hc.Do(req)
	if err != nil {
		return broker.TxnCheckResult{Err: describe(err, context.Background(), timeout), Latency: time.Since(start)}
	}
	data, rerr := readCapped(resp.Body, t.c.cfg.MaxResponseBytes)
	resp.Body.Close()
	res := broker.TxnCheckResult{Status: resp.StatusCode, Latency: time.Since(start)}
	switch {
	case rerr != nil:
		res.Err = clip("response body: " + describe(rerr, context.Background(), timeout))
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		res.Err = "status " + strconv.Itoa(resp.StatusCode)
	default:
		res.Answer, res.Err = parseCheckAnswer(data)
	}
	return res
}

// parseCheckAnswer reads a check's answer: {"status":"commit"|"rollback"|
// "unknown"}, other fields ignored. Anything else is an error naming what
// came instead.
func parseCheckAnswer(data []byte) (answer, errText string) {
	var a struct {
		Status *string `json:"status"`
	}
	if err := json.Unmarshal(data, &a); err != nil {
		return "", clip(fmt.Sprintf("the answer is not JSON {\"status\":\"commit\"|\"rollback\"|\"unknown\"}: %v: %q", err, data))
	}
	if name, dup := broker.DuplicateJSONName(data); dup {
		// Which of the two decides is up to the reader: neither does.
		return "", clip(fmt.Sprintf("the answer gives %q twice in one object: %q", name, data))
	}
	if a.Status == nil {
		return "", clip(fmt.Sprintf("the answer has no status: %q", data))
	}
	switch *a.Status {
	case "commit", "rollback", "unknown":
		return *a.Status, ""
	}
	return "", clip(fmt.Sprintf("the answer's status %q is not commit, rollback or unknown", *a.Status))
}
