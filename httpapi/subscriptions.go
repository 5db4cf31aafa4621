package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/namesrv"
)

const maxSubscriptionRequestBytes = 64 << 10

// hdrSubscriptionVersion carries, on a subscription change a broker
// forwards to the others, the version it minted for the change, so that
// every broker's copy has the same (see cluster_sync.go).
const hdrSubscriptionVersion = "Postbus-Subscription-Version"

// mintVersion gives the subscription change r, which this broker
// coordinates, its version: in r's context for this broker, in its header
// for the brokers it is forwarded to.
func (s *Server) mintVersion(r *http.Request) *http.Request {
	v := s.broker.NextVersion()
	r.Header.Set(hdrSubscriptionVersion, v.String())
	return r.WithContext(broker.WithVersion(r.Context(), v))
}

// takeVersion puts the version a coordinator gave the forwarded change r
// into its context; outside a cluster, or without one, the broker mints
// its own. A malformed version, or one too far ahead of this broker's
// clock, is refused.
func (s *Server) takeVersion(w http.ResponseWriter, r *http.Request) (*http.Request, bool) {
	return s.takeVersionOf(w, r, hdrSubscriptionVersion)
}

// takeVersionOf is takeVersion for the version carried in header hdr.
func (s *Server) takeVersionOf(w http.ResponseWriter, r *http.Request, hdr string) (*http.Request, bool) {
	raw := r.Header.Get(hdr)
	if s.cluster == nil || raw == "" || r.Header.Get(hdrForwardedBy) == "" {
		return r, true
	}
	v, err := broker.ParseVersion(raw)
	if err != nil {
		writeProblem(w, r, codeInvalidHeader, hdr, err.Error())
		return nil, false
	}
	if !namesrv.ValidBrokerName(v.By) {
		// Minted by a broker, so after the @ is a broker's name: 1-64
		// letters, digits, '.', '_' and '-'.
		writeProblem(w, r, codeInvalidHeader, hdr, fmt.Sprintf("version %q: after the @ comes the broker name that minted it (1-%d characters of A-Z a-z 0-9 . _ -)", raw, namesrv.MaxBrokerNameLen))
		return nil, false
	}
	if err := s.broker.CheckVersion(v); err != nil {
		s.writeError(w, r, err)
		return nil, false
	}
	return r.WithContext(broker.WithVersion(r.Context(), v)), true
}

// subscriptionRequest is the body of POST /v1/subscriptions and PATCH
// /v1/subscriptions/{id}; in a PATCH, a field left out is kept.
type subscriptionRequest struct {
	Group       *string   `json:"group"`
	Topic       *string   `json:"topic"`
	URL         *string   `json:"url"`
	Filter      *string   `json:"filter"`
	Ordered     *bool     `json:"ordered"`
	MaxRetries  *int      `json:"max_retries"`
	RetryDelays *[]string `json:"retry_delays"`
	Backoff     *struct {
		Min string `json:"min"`
		Max string `json:"max"`
	} `json:"backoff"`
	Timeout       *string  `json:"timeout"`
	MaxInFlight   *int     `json:"max_in_flight"`
	RatePerSecond *float64 `json:"rate_per_second"`
	Visibility    *string  `json:"visibility"`
	StartFrom     *string  `json:"start_from"`
	AckTimeout    *string  `json:"ack_timeout"`
	// DLQRedrive is null (in a PATCH) to turn it off.
	DLQRedrive presentJSON `json:"dlq_redrive"`
	// ID and Secret may be given at creation only: a cluster gives every
	// broker the same ones, and a user may bring their own secret.
	ID     *string `json:"id,omitempty"`
	Secret *string `json:"secret,omitempty"`
	Format *string `json:"format"`
	// Batch, in a PATCH, changes the members given; "batch": null turns
	// batching off (batchOff).
	Batch    *batchRequest `json:"batch"`
	batchOff bool
}

type batchRequest struct {
	MaxMessages *int    `json:"max_messages"`
	MaxWait     *string `json:"max_wait"`
}

// UnmarshalJSON decodes a subscription request whose member names are
// exactly the documented ones: encoding/json matches names without regard
// to case, so "MAX_RETRIES" beside "max_retries" was a second value for one
// field (the last won) and "Max_Retries" was taken for it.
func (req *subscriptionRequest) UnmarshalJSON(data []byte) error {
	type plain subscriptionRequest
	if err := exactNames(data, reflect.TypeFor[plain]()); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode((*plain)(req)); err != nil {
		return err
	}
	// A null leaves a pointer nil, as if the member were absent: look for
	// the one null that means something.
	var members map[string]json.RawMessage
	if err := json.Unmarshal(data, &members); err == nil {
		if raw, ok := members["batch"]; ok && bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			req.batchOff = true
		}
	}
	return nil
}

// exactNames checks that every member name of the JSON object data, and of
// the objects in its struct-typed fields, is a json tag of t as written.
func exactNames(data []byte, t reflect.Type) error {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(data, &members); err != nil || members == nil {
		return nil // not an object: the decoder says what is wrong
	}
	fields := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		fields[name] = ft
	}
	for name, raw := range members {
		ft, ok := fields[name]
		if !ok {
			return fmt.Errorf("json: unknown field %q", name)
		}
		if ft.Kind() == reflect.Struct {
			if err := exactNames(raw, ft); err != nil {
				return err
			}
		}
	}
	return nil
}

// apply copies the request's fields onto s, parsing durations.
func (req *subscriptionRequest) apply(s *broker.Subscription) *broker.Error {
	bad := func(field, format string, args ...any) *broker.Error {
		return &broker.Error{Code: broker.CodeInvalidSubscription, Field: field, Detail: fmt.Sprintf(format, args...)}
	}
	dur := func(field, v string) (time.Duration, *broker.Error) {
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, bad(field, "%q is not a duration like 15s or 1m30s", v)
		}
		return d, nil
	}
	var perr *broker.Error
	set := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	set(&s.Group, req.Group)
	set(&s.Topic, req.Topic)
	set(&s.URL, req.URL)
	set(&s.Filter, req.Filter)
	set(&s.StartFrom, req.StartFrom)
	set(&s.Format, req.Format)
	if req.Ordered != nil {
		s.Ordered = *req.Ordered
	}
	// An explicit zero or negative is refused here: left as it is, the
	// defaults of a create would replace it without a word.
	if req.MaxRetries != nil {
		if *req.MaxRetries < 0 {
			return bad("max_retries", "max_retries %d must be 0-%d", *req.MaxRetries, broker.MaxMaxRetries)
		}
		s.MaxRetries = *req.MaxRetries
	}
	if req.RetryDelays != nil {
		s.RetryDelays, s.BackoffMin, s.BackoffMax = nil, 0, 0
		for i, v := range *req.RetryDelays {
			d, perr := dur(fmt.Sprintf("retry_delays[%d]", i), v)
			if perr != nil {
				return perr
			}
			s.RetryDelays = append(s.RetryDelays, d)
		}
	}
	if req.Backoff != nil {
		if req.RetryDelays != nil {
			return bad("backoff", "give retry_delays or backoff, not both")
		}
		s.RetryDelays = nil
		if s.BackoffMin, perr = dur("backoff.min", req.Backoff.Min); perr != nil {
			return perr
		}
		if s.BackoffMax, perr = dur("backoff.max", req.Backoff.Max); perr != nil {
			return perr
		}
	}
	if req.Timeout != nil {
		if s.Timeout, perr = dur("timeout", *req.Timeout); perr != nil {
			return perr
		}
		if s.Timeout <= 0 {
			return bad("timeout", "timeout %s must be between 1ms and %s", s.Timeout, broker.MaxTimeout)
		}
	}
	if req.Visibility != nil {
		if s.Visibility, perr = dur("visibility", *req.Visibility); perr != nil {
			return perr
		}
		if s.Visibility <= 0 {
			return bad("visibility", "visibility %s must be between 1s and %s", s.Visibility, broker.MaxVisibility)
		}
	}
	if req.AckTimeout != nil {
		if s.AckTimeout, perr = dur("ack_timeout", *req.AckTimeout); perr != nil {
			return perr
		}
		if s.AckTimeout <= 0 {
			return bad("ack_timeout", "ack_timeout %s must be between %s and %s", s.AckTimeout, broker.MinAckTimeout, broker.MaxAckTimeout)
		}
	}
	if len(req.DLQRedrive) > 0 {
		if perr := applyDLQRedrive(s, json.RawMessage(req.DLQRedrive)); perr != nil {
			return perr
		}
	}
	if req.MaxInFlight != nil {
		if *req.MaxInFlight < 1 {
			return bad("max_in_flight", "max_in_flight %d must be 1-%d", *req.MaxInFlight, broker.MaxMaxInFlight)
		}
		s.MaxInFlight = *req.MaxInFlight
	}
	if req.RatePerSecond != nil {
		s.RatePerSecond = *req.RatePerSecond
	}
	// A max_in_flight that is the default for the batch setting follows
	// a change of it (unless the request gives one): turning batching off
	// must not leave a thousand requests in flight, nor turning it on
	// refuse a batch larger than a default the user never chose.
	oldBatch := s.Batch
	inFlightDefault := s.MaxInFlight == broker.DefaultMaxInFlightFor(oldBatch)
	defer func() {
		if req.MaxInFlight == nil && inFlightDefault && s.Batch != oldBatch {
			s.MaxInFlight = broker.DefaultMaxInFlightFor(s.Batch)
		}
	}()
	if req.batchOff {
		s.Batch = broker.PushBatch{}
	}
	if b := req.Batch; b != nil {
		if b.MaxMessages != nil {
			// Zero is refused rather than taken for "off", which is null.
			if *b.MaxMessages < 1 || *b.MaxMessages > broker.MaxPushBatch {
				return bad("batch.max_messages", "batch.max_messages %d must be 1-%d (\"batch\": null turns batching off)", *b.MaxMessages, broker.MaxPushBatch)
			}
			s.Batch.MaxMessages = *b.MaxMessages
		}
		if b.MaxWait != nil {
			if s.Batch.MaxWait, perr = dur("batch.max_wait", *b.MaxWait); perr != nil {
				return perr
			}
		}
		if s.Batch.MaxMessages == 0 {
			return bad("batch.max_messages", "batch needs max_messages, 1-%d", broker.MaxPushBatch)
		}
	}
	return nil
}

type batchJSON struct {
	MaxMessages int    `json:"max_messages"`
	MaxWait     string `json:"max_wait"`
}

// presentJSON is a member's JSON text, null included: empty when the
// member is absent (a pointer cannot tell null from absent).
type presentJSON []byte

func (p *presentJSON) UnmarshalJSON(b []byte) error {
	*p = append((*p)[:0], b...)
	return nil
}

// dlqRedriveSetting is dlq_redrive as a subscription takes and shows it.
type dlqRedriveSetting struct {
	After         string   `json:"after"`
	RatePerSecond *float64 `json:"rate_per_second,omitempty"`
}

// applyDLQRedrive sets (or, for null, removes) s's dlq_redrive.
func applyDLQRedrive(s *broker.Subscription, raw json.RawMessage) *broker.Error {
	if string(bytes.TrimSpace(raw)) == "null" {
		s.DLQRedrive = nil
		return nil
	}
	if err := exactNames(raw, reflect.TypeFor[dlqRedriveSetting]()); err != nil {
		return &broker.Error{Code: broker.CodeInvalidSubscription, Field: "dlq_redrive", Detail: err.Error()}
	}
	var v dlqRedriveSetting
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return &broker.Error{Code: broker.CodeInvalidSubscription, Field: "dlq_redrive", Detail: `give {"after":"10m","rate_per_second":5}: ` + err.Error()}
	}
	after, err := time.ParseDuration(v.After)
	if err != nil {
		return &broker.Error{Code: broker.CodeInvalidSubscription, Field: "dlq_redrive.after", Detail: fmt.Sprintf("%q is not a duration like 10m", v.After)}
	}
	rate := float64(broker.DefaultDLQRedriveRate)
	if v.RatePerSecond != nil {
		rate = *v.RatePerSecond
	}
	s.DLQRedrive = &broker.DLQRedrive{After: after, RatePerSecond: rate}
	return nil
}

type backoffJSON struct {
	Min string `json:"min"`
	Max string `json:"max"`
}

// subscriptionJSON is a subscription as the API shows it. Secret is set
// only in the answers to a create and a rotation.
type subscriptionJSON struct {
	ID            string       `json:"id"`
	Group         string       `json:"group"`
	Topic         string       `json:"topic"`
	Type          string       `json:"type"` // push or pull
	URL           string       `json:"url,omitempty"`
	Filter        string       `json:"filter"`
	Ordered       bool         `json:"ordered"`
	MaxRetries    int          `json:"max_retries"`
	RetryDelays   []string     `json:"retry_delays,omitempty"`
	Backoff       *backoffJSON `json:"backoff,omitempty"`
	Timeout       string       `json:"timeout"`
	MaxInFlight   int          `json:"max_in_flight"`
	RatePerSecond float64      `json:"rate_per_second"`
	Visibility    string       `json:"visibility"`
	StartFrom     string       `json:"start_from"`
	State         string       `json:"state"`
	StateReason   string       `json:"state_reason,omitempty"`
	Secret        string       `json:"secret,omitempty"`
	CreatedAt     string       `json:"created_at"`
	UpdatedAt     string       `json:"updated_at"`
	// Version is the last change's, the same on every broker's copy.
	Version string    `json:"version"`
	Format  string    `json:"format"`
	Batch   batchJSON `json:"batch,omitzero"`
	// AckTimeout is a push subscription's: a pull one has no 202.
	AckTimeout string             `json:"ack_timeout,omitempty"`
	DLQRedrive *dlqRedriveSetting `json:"dlq_redrive,omitempty"`
}

func toSubscriptionJSON(s broker.Subscription, withSecret bool) subscriptionJSON {
	out := subscriptionJSON{ID: s.ID, Group: s.Group, Topic: s.Topic, Type: "pull", URL: s.URL, Filter: s.Filter,
		Ordered: s.Ordered, MaxRetries: s.MaxRetries, Timeout: s.Timeout.String(), MaxInFlight: s.MaxInFlight,
		RatePerSecond: s.RatePerSecond, Visibility: s.Visibility.String(), StartFrom: s.StartFrom, State: s.State,
		StateReason: s.StateReason, CreatedAt: s.CreatedAt.UTC().Format(time.RFC3339Nano), UpdatedAt: s.UpdatedAt.UTC().Format(time.RFC3339Nano),
		Version: s.Version.String(), Format: s.Format}
	if s.URL != "" {
		out.Type = "push"
		out.AckTimeout = s.AckTimeout.String()
	}
	if r := s.DLQRedrive; r != nil {
		rate := r.RatePerSecond
		out.DLQRedrive = &dlqRedriveSetting{After: r.After.String(), RatePerSecond: &rate}
	}
	for _, d := range s.RetryDelays {
		out.RetryDelays = append(out.RetryDelays, d.String())
	}
	if s.BackoffMin > 0 {
		out.Backoff = &backoffJSON{Min: s.BackoffMin.String(), Max: s.BackoffMax.String()}
	}
	if withSecret {
		out.Secret = s.Secret
	}
	if s.Batch.Batched() {
		out.Batch = batchJSON{MaxMessages: s.Batch.MaxMessages, MaxWait: s.Batch.MaxWait.String()}
	}
	return out
}

func (s *Server) handleCreateSubscription(w http.ResponseWriter, r *http.Request) {
	var ok bool
	// A token that may consume as no group, or subscribe to no topic, can
	// create no subscription: refused before its body is read, so that it
	// cannot hold body memory with slow bodies it has no right to send.
	// (Which group and topic it may use is checked once the body is read.)
	if p := principalFrom(r.Context()); p != nil && !p.scopes.admin && (len(p.scopes.consume) == 0 || len(p.scopes.subscribe) == 0) {
		field, why := "group", "the token's scope allows consuming as no group (consume:<group> is needed), so it can create no subscription"
		if len(p.scopes.consume) > 0 {
			field, why = "topic", "the token's scope allows subscribing to no topic (subscribe:<topic> is needed), so it can create no subscription"
		}
		then := refuseUnreadBody(w, r)
		w.Header().Set("WWW-Authenticate", `Bearer realm="postbus", error="insufficient_scope"`)
		writeProblem(w, r, codeForbidden, field, why)
		then()
		return
	}
	var req subscriptionRequest
	if perr := decodeJSONBody(r, maxSubscriptionRequestBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	sub := broker.Subscription{MaxRetries: -1} // -1: the default, unless given
	if perr := req.apply(&sub); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	if req.Group == nil || req.Topic == nil {
		writeProblem(w, r, broker.CodeInvalidSubscription, "group", "a subscription needs a group and a topic")
		return
	}
	// As a pull: consume on the group and subscribe on the topic, or a
	// token for its own group could subscribe it to any topic and have its
	// bodies pushed or pulled away.
	if p := principalFrom(r.Context()); p != nil {
		field, why := "", ""
		switch {
		case !p.scopes.canConsume(sub.Group):
			field, why = "group", "the token's scope does not allow consuming as group "+sub.Group+" (consume:"+sub.Group+" is needed)"
		case !p.scopes.canSubscribe(sub.Topic):
			field, why = "topic", "the token's scope does not allow subscribing to topic "+sub.Topic+" (subscribe:"+sub.Topic+" is needed)"
		}
		if why != "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="postbus", error="insufficient_scope"`)
			writeProblem(w, r, codeForbidden, field, why)
			return
		}
	}
	if req.ID != nil {
		sub.ID = *req.ID
	}
	if req.Secret != nil {
		sub.Secret = *req.Secret
	}
	if s.coordinating(r) {
		r = s.mintVersion(r)
		if s.createSubscriptionEverywhere(w, r, req, sub.URL != "") {
			return
		}
	} else if r, ok = s.takeVersion(w, r); !ok {
		return
	}
	created, err := s.broker.CreateSubscription(r.Context(), sub)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/subscriptions/"+created.ID)
	writeJSON(w, http.StatusCreated, toSubscriptionJSON(created, true))
}

// subscription loads the path's subscription if the token may see it:
// one of a group outside its scope is answered as not found.
func (s *Server) subscription(w http.ResponseWriter, r *http.Request) (broker.Subscription, bool) {
	id := pathParam(r, "id")
	sub, err := s.broker.Subscription(r.Context(), id)
	if err == nil {
		if p := principalFrom(r.Context()); p != nil && !p.scopes.canConsume(sub.Group) {
			err = &broker.Error{Code: broker.CodeSubscriptionNotFound, Field: "id", Err: broker.ErrSubscriptionNotFound, Detail: fmt.Sprintf("no subscription %q", id)}
		}
	}
	if err != nil {
		s.writeError(w, r, err)
		return broker.Subscription{}, false
	}
	return sub, true
}

func (s *Server) handleGetSubscription(w http.ResponseWriter, r *http.Request) {
	if s.coordinating(r) {
		s.newestFound(w, r, s.handleGetSubscription)
		return
	}
	if sub, ok := s.subscription(w, r); ok {
		writeJSON(w, http.StatusOK, toSubscriptionJSON(sub, false))
	}
}

func (s *Server) handleListSubscriptions(w http.ResponseWriter, r *http.Request) {
	limit, perr := queryInt(r, "limit", 100, 1, 1000)
	if perr != nil {
		s.writeError(w, r, perr)
		return
	}
	if s.coordinating(r) {
		s.listEverywhere(w, r, "subscriptions", "id", int(limit), s.handleListSubscriptions, nil)
		return
	}
	q := r.URL.Query()
	cursor, group, topic := q.Get("cursor"), q.Get("group"), q.Get("topic")
	for _, f := range []string{"group", "topic"} {
		if q.Has(f) && q.Get(f) == "" {
			writeProblem(w, r, codeInvalidParameter, f, f+" must not be empty: leave it out to list every "+f+"'s subscriptions")
			return
		}
	}
	subs, err := s.broker.Subscriptions(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	p := principalFrom(r.Context())
	out := struct {
		Subscriptions []subscriptionJSON `json:"subscriptions"`
		NextCursor    string             `json:"next_cursor,omitempty"`
	}{Subscriptions: []subscriptionJSON{}}
	// Listed by id: the cursor is the last id of the page.
	sort.Slice(subs, func(i, j int) bool { return subs[i].ID < subs[j].ID })
	for _, sub := range subs {
		if cursor != "" && sub.ID <= cursor {
			continue
		}
		if p != nil && !p.scopes.canConsume(sub.Group) {
			continue
		}
		if (group != "" && sub.Group != group) || (topic != "" && sub.Topic != topic) {
			continue
		}
		if len(out.Subscriptions) == int(limit) {
			out.NextCursor = out.Subscriptions[len(out.Subscriptions)-1].ID
			break
		}
		out.Subscriptions = append(out.Subscriptions, toSubscriptionJSON(sub, false))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handlePatchSubscription(w http.ResponseWriter, r *http.Request) {
	if s.coordinating(r) {
		s.everywhere(w, s.mintVersion(r), s.handlePatchSubscription)
		return
	}
	r, ok := s.takeVersion(w, r)
	if !ok {
		return
	}
	sub, ok := s.subscription(w, r)
	if !ok {
		return
	}
	var req subscriptionRequest
	if perr := decodeJSONBody(r, maxSubscriptionRequestBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	if req.ID != nil || req.Secret != nil {
		writeProblem(w, r, broker.CodeInvalidSubscription, "secret", "the id and secret cannot be changed by PATCH; rotate the secret with POST /v1/subscriptions/{id}/rotate-secret")
		return
	}
	if req.StartFrom != nil {
		writeProblem(w, r, broker.CodeInvalidSubscription, "start_from", "start_from only applies at creation; move the group with POST /v1/groups/{group}/offsets/reset")
		return
	}
	if perr := req.apply(&sub); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	updated, err := s.broker.UpdateSubscription(r.Context(), sub)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toSubscriptionJSON(updated, false))
}

func (s *Server) handleDeleteSubscription(w http.ResponseWriter, r *http.Request) {
	if s.coordinating(r) {
		s.everywhere(w, s.mintVersion(r), s.handleDeleteSubscription)
		return
	}
	r, ok := s.takeVersion(w, r)
	if !ok {
		return
	}
	sub, ok := s.subscription(w, r)
	if !ok {
		return
	}
	if err := s.broker.DeleteSubscription(r.Context(), sub.ID); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) setState(state string) http.HandlerFunc {
	var h http.HandlerFunc
	h = func(w http.ResponseWriter, r *http.Request) {
		if s.coordinating(r) {
			s.everywhere(w, s.mintVersion(r), h)
			return
		}
		r, ok := s.takeVersion(w, r)
		if !ok {
			return
		}
		sub, ok := s.subscription(w, r)
		if !ok {
			return
		}
		updated, err := s.broker.SetSubscriptionState(r.Context(), sub.ID, state, "")
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, toSubscriptionJSON(updated, false))
	}
	return h
}

func (s *Server) handlePauseSubscription(w http.ResponseWriter, r *http.Request) {
	s.setState(broker.StatePaused)(w, r)
}

func (s *Server) handleResumeSubscription(w http.ResponseWriter, r *http.Request) {
	s.setState(broker.StateActive)(w, r)
}

// handleRotateSecret takes an optional body {"secret":"whsec_..."}: the
// new secret, else one is made up.
func (s *Server) handleRotateSecret(w http.ResponseWriter, r *http.Request) {
	if s.coordinating(r) {
		s.rotateEverywhere(w, s.mintVersion(r))
		return
	}
	r, ok := s.takeVersion(w, r)
	if !ok {
		return
	}
	sub, ok := s.subscription(w, r)
	if !ok {
		return
	}
	var req rotateRequest
	if perr := decodeJSONBody(r, maxSubscriptionRequestBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	updated, err := s.broker.RotateSecret(r.Context(), sub.ID, req.Secret)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toSubscriptionJSON(updated, true))
}
