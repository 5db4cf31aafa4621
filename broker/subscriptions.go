package broker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nuid"
	"github.com/postbus/postbus/broker/consumequeue"
	"github.com/postbus/postbus/broker/meta"
)

// Subscription states.
const (
	StateActive   = "active"
	StatePaused   = "paused"
	StateDisabled = "disabled" // by a 410 from the endpoint; resume re-enables
)

// Subscription is a consumer group's subscription to a topic: push when
// URL is set (the broker POSTs each message there), pull otherwise.
type Subscription struct {
	ID, Group, Topic string
	URL              string
	Filter           string
	Ordered          bool
	MaxRetries       int
	RetryDelays      []time.Duration // nil: the default schedule (unless Backoff)
	BackoffMin       time.Duration   // exponential backoff when > 0
	BackoffMax       time.Duration
	Timeout          time.Duration // per push attempt
	MaxInFlight      int
	RatePerSecond    float64 // push attempts a second; 0: no limit
	Visibility       time.Duration
	StartFrom        string // latest, earliest or an RFC 3339 time
	Secret           string // push: the signing secret (whsec_…)
	// PreviousSecrets are push secrets rotated out that still sign beside
	// Secret, each until its own overlap ends, newest first. A second
	// rotation within the overlap keeps the first one's old secret too.
	PreviousSecrets []PreviousSecret
	State           string
	StateReason     string // why it is disabled
	CreatedAt       time.Time
	UpdatedAt       time.Time
	// Version is the last change's, the same on every broker's copy (see
	// subsync.go).
	Version Version
	// Format is how push delivers: FormatRaw (the body as published, with
	// Postbus-* headers) or FormatCloudEvents (binary-mode CloudEvents:
	// ce-* headers besides those). Pull is not affected.
	Format string
	// Batch, when MaxMessages > 0, has a push subscription deliver up to
	// that many messages per request as one JSON array (DESIGN §4 "Push
	// extras"); the zero value delivers one message per request.
	Batch PushBatch
	// AckTimeout is how long a push delivery answered 202 Accepted is held
	// for its acknowledgement (POST /v1/acks/{token}) before it counts as
	// a failed attempt (deferred.go).
	AckTimeout time.Duration
	// DLQRedrive, when set on a push subscription, has its dead letters
	// redriven on their own once the endpoint answers again (dlqredrive.go).
	DLQRedrive *DLQRedrive
}

// DLQRedrive is a push subscription's self-healing of its dead letters:
// once the group's oldest dead letter of the topic has waited After, the
// endpoint is probed with it; a 2xx redrives the rest at RatePerSecond, a
// failure waits After again.
type DLQRedrive struct {
	After         time.Duration
	RatePerSecond float64
}

// Delivery formats of a push subscription.
const (
	FormatRaw         = "raw"
	FormatCloudEvents = "cloudevents"
)

// PushBatch is a push subscription's batching: up to MaxMessages messages
// a request, a partial batch sent once its first message has waited
// MaxWait for more.
type PushBatch struct {
	MaxMessages int
	MaxWait     time.Duration
}

// Batched reports whether deliveries go out in batches.
func (b PushBatch) Batched() bool { return b.MaxMessages > 0 }

// DefaultMaxInFlightFor is max_in_flight when none is given: 32, or with a
// batch, room for eight batches (max_in_flight counts messages; eight
// requests out, still fewer than an unbatched subscription's 32), so that
// some go out while others are answered and their offsets written: with
// batches of 100, bench push --backlog delivered 10-12k msgs/s with 200
// or 400 out, 15-20k with 1000.
func DefaultMaxInFlightFor(b PushBatch) int {
	if !b.Batched() {
		return DefaultMaxInFlight
	}
	return min(MaxMaxInFlight, max(DefaultMaxInFlight, 8*b.MaxMessages))
}

// PreviousSecret is a rotated-out signing secret, still valid until Until.
type PreviousSecret struct {
	Secret string
	Until  time.Time
}

// SigningSecrets are the secrets a delivery at now is signed with: the
// current one, then every previous one whose overlap has not ended.
func (s *Subscription) SigningSecrets(now time.Time) []string {
	return signingSecrets(s.Secret, s.PreviousSecrets, now)
}

// signingSecrets is current, then each of previous whose overlap has not
// ended at now: what a delivery or a transaction check is signed with.
func signingSecrets(current string, previous []PreviousSecret, now time.Time) []string {
	out := []string{current}
	for _, p := range previous {
		if now.Before(p.Until) {
			out = append(out, p.Secret)
		}
	}
	return out
}

// Subscription limits and defaults (DESIGN §4, RocketMQ's retry defaults).
const (
	DefaultMaxRetries  = 16
	MaxMaxRetries      = 100
	DefaultTimeout     = 15 * time.Second
	MaxTimeout         = 5 * time.Minute
	DefaultMaxInFlight = 32
	MaxMaxInFlight     = 1024
	DefaultVisibility  = 30 * time.Second
	MaxVisibility      = 12 * time.Hour
	MaxRetryDelay      = 24 * time.Hour
	MaxRetryDelays     = 100
	MaxURLLen          = 2048
	MinRatePerSecond   = 1.0 / 86400
	MinDLQRedriveAfter = time.Second
	MaxDLQRedriveAfter = 7 * 24 * time.Hour
	// MinDLQRedriveRate is one a minute: slower, a redrive of many would
	// not fit the longest delay.
	MinDLQRedriveRate     = 1.0 / 60
	DefaultDLQRedriveRate = 5
	DefaultAckTimeout     = 5 * time.Minute
	MinAckTimeout         = time.Second
	MaxAckTimeout         = 12 * time.Hour
	// SecretOverlap is how long the previous secret keeps signing after a
	// rotation, so receivers can switch without dropping deliveries.
	SecretOverlap = 24 * time.Hour
	// MaxPreviousSecrets bounds the secrets still signing beside the
	// current one (each adds a v1 entry to every delivery's signature
	// header): a rotation beyond it within the overlap is refused.
	MaxPreviousSecrets = 10
	// MaxPushBatch and MaxBatchWait bound a push batch: a request of
	// a thousand 4 MiB bodies is already more than an endpoint should be
	// sent at once, and a ready message held longer than ten seconds is
	// no longer "pushed".
	MaxPushBatch = 1000
	MaxBatchWait = 10 * time.Second
)

var groupRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$`)

// ValidateGroupName reports whether name may name a consumer group.
func ValidateGroupName(name string) error {
	if !groupRE.MatchString(name) {
		return errf(CodeInvalidGroup, "group", "%q is not a valid group name: 1-120 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit", name)
	}
	return nil
}

// subscriptionConfig is the JSON kept in the subscriptions table's config
// column: the settings that have no column of their own.
type subscriptionConfig struct {
	MaxRetries    int     `json:"max_retries"`
	RetryDelaysMS []int64 `json:"retry_delays_ms,omitempty"`
	BackoffMinMS  int64   `json:"backoff_min_ms,omitempty"`
	BackoffMaxMS  int64   `json:"backoff_max_ms,omitempty"`
	TimeoutMS     int64   `json:"timeout_ms"`
	MaxInFlight   int     `json:"max_in_flight"`
	RatePerSecond float64 `json:"rate_per_second,omitempty"`
	VisibilityMS  int64   `json:"visibility_ms"`
	StartFrom     string  `json:"start_from"`
	// PreviousSecrets replaced PreviousSecret/PreviousUntil, which held
	// only the last rotation's old secret; those are still read, from
	// subscriptions stored before.
	PreviousSecrets []previousSecretConfig `json:"previous_secrets,omitempty"`
	PreviousSecret  string                 `json:"previous_secret,omitempty"`
	PreviousUntil   int64                  `json:"previous_until_ms,omitempty"`
	StateReason     string                 `json:"state_reason,omitempty"`
	// Format is left out when raw, as subscriptions stored before it
	// have it.
	Format      string `json:"format,omitempty"`
	BatchMax    int    `json:"batch_max_messages,omitempty"`
	BatchWaitMS int64  `json:"batch_max_wait_ms,omitempty"`
	// AckTimeoutMS is absent from subscriptions stored before deferred
	// acknowledgement: the default.
	AckTimeoutMS int64 `json:"ack_timeout_ms,omitempty"`
	// DLQRedrive is absent when the subscription has none.
	DLQRedrive *dlqRedriveConfig `json:"dlq_redrive,omitempty"`
}

type dlqRedriveConfig struct {
	AfterMS       int64   `json:"after_ms"`
	RatePerSecond float64 `json:"rate_per_second"`
}

type previousSecretConfig struct {
	Secret  string `json:"secret"`
	UntilMS int64  `json:"until_ms"`
}

func (s *Subscription) toMeta() (meta.Subscription, error) {
	c := subscriptionConfig{
		MaxRetries: s.MaxRetries, BackoffMinMS: s.BackoffMin.Milliseconds(), BackoffMaxMS: s.BackoffMax.Milliseconds(),
		TimeoutMS: s.Timeout.Milliseconds(), MaxInFlight: s.MaxInFlight, RatePerSecond: s.RatePerSecond,
		VisibilityMS: s.Visibility.Milliseconds(), StartFrom: s.StartFrom, StateReason: s.StateReason,
		BatchMax: s.Batch.MaxMessages, BatchWaitMS: s.Batch.MaxWait.Milliseconds(),
		AckTimeoutMS: s.AckTimeout.Milliseconds(),
	}
	if s.Format != FormatRaw {
		c.Format = s.Format
	}
	if r := s.DLQRedrive; r != nil {
		c.DLQRedrive = &dlqRedriveConfig{AfterMS: r.After.Milliseconds(), RatePerSecond: r.RatePerSecond}
	}
	for _, p := range s.PreviousSecrets {
		c.PreviousSecrets = append(c.PreviousSecrets, previousSecretConfig{Secret: p.Secret, UntilMS: p.Until.UnixMilli()})
	}
	for _, d := range s.RetryDelays {
		c.RetryDelaysMS = append(c.RetryDelaysMS, d.Milliseconds())
	}
	data, err := json.Marshal(c)
	if err != nil {
		return meta.Subscription{}, err
	}
	return meta.Subscription{ID: s.ID, Group: s.Group, Topic: s.Topic, URL: s.URL, Filter: s.Filter,
		Ordered: s.Ordered, Config: string(data), Secret: s.Secret, State: s.State,
		CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt, Version: s.Version}, nil
}

func subscriptionFromMeta(m meta.Subscription) (Subscription, error) {
	var c subscriptionConfig
	if err := json.Unmarshal([]byte(m.Config), &c); err != nil {
		return Subscription{}, fmt.Errorf("subscription %s config: %w", m.ID, err)
	}
	s := Subscription{ID: m.ID, Group: m.Group, Topic: m.Topic, URL: m.URL, Filter: m.Filter, Ordered: m.Ordered,
		MaxRetries: c.MaxRetries, BackoffMin: time.Duration(c.BackoffMinMS) * time.Millisecond,
		BackoffMax: time.Duration(c.BackoffMaxMS) * time.Millisecond, Timeout: time.Duration(c.TimeoutMS) * time.Millisecond,
		MaxInFlight: c.MaxInFlight, RatePerSecond: c.RatePerSecond, Visibility: time.Duration(c.VisibilityMS) * time.Millisecond,
		StartFrom: c.StartFrom, Secret: m.Secret, State: m.State,
		StateReason: c.StateReason, CreatedAt: m.CreatedAt, UpdatedAt: m.UpdatedAt, Version: m.Version, Format: c.Format,
		Batch:      PushBatch{MaxMessages: c.BatchMax, MaxWait: time.Duration(c.BatchWaitMS) * time.Millisecond},
		AckTimeout: time.Duration(c.AckTimeoutMS) * time.Millisecond}
	if s.AckTimeout == 0 {
		s.AckTimeout = DefaultAckTimeout
	}
	if s.Format == "" {
		s.Format = FormatRaw
	}
	if r := c.DLQRedrive; r != nil {
		s.DLQRedrive = &DLQRedrive{After: time.Duration(r.AfterMS) * time.Millisecond, RatePerSecond: r.RatePerSecond}
	}
	for _, ms := range c.RetryDelaysMS {
		s.RetryDelays = append(s.RetryDelays, time.Duration(ms)*time.Millisecond)
	}
	for _, p := range c.PreviousSecrets {
		s.PreviousSecrets = append(s.PreviousSecrets, PreviousSecret{Secret: p.Secret, Until: time.UnixMilli(p.UntilMS)})
	}
	if c.PreviousSecret != "" && c.PreviousUntil != 0 {
		s.PreviousSecrets = append(s.PreviousSecrets, PreviousSecret{Secret: c.PreviousSecret, Until: time.UnixMilli(c.PreviousUntil)})
	}
	return s, nil
}

// applyDefaults fills what a create left out.
func (s *Subscription) applyDefaults() {
	if s.Filter == "" {
		s.Filter = "*"
	}
	if s.MaxRetries < 0 {
		s.MaxRetries = DefaultMaxRetries
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultTimeout
	}
	if s.MaxInFlight == 0 {
		s.MaxInFlight = DefaultMaxInFlightFor(s.Batch)
	}
	if s.Visibility == 0 {
		s.Visibility = DefaultVisibility
	}
	if s.StartFrom == "" {
		s.StartFrom = "latest"
	}
	if s.AckTimeout == 0 {
		s.AckTimeout = DefaultAckTimeout
	}
	if s.State == "" {
		s.State = StateActive
	}
	if s.Format == "" {
		s.Format = FormatRaw
	}
}

// validate checks every setting; field names are the API's.
func (s *Subscription) validate() error {
	if err := ValidateGroupName(s.Group); err != nil {
		return err
	}
	if err := ValidateTopicName(s.Topic); err != nil {
		return err
	}
	if s.URL != "" {
		if err := ValidateWebhookURL(s.URL); err != nil {
			return err
		}
	}
	f, err := ParseFilter(s.Filter)
	if err != nil {
		return err
	}
	s.Filter = f.String()
	bad := func(field, format string, args ...any) error {
		return errf(CodeInvalidSubscription, field, format, args...)
	}
	switch {
	case s.MaxRetries < 0 || s.MaxRetries > MaxMaxRetries:
		return bad("max_retries", "max_retries %d must be 0-%d", s.MaxRetries, MaxMaxRetries)
	case len(s.RetryDelays) > 0 && s.BackoffMin > 0:
		return bad("retry_delays", "give retry_delays or backoff, not both")
	case len(s.RetryDelays) > MaxRetryDelays:
		return bad("retry_delays", "%d retry delays; at most %d", len(s.RetryDelays), MaxRetryDelays)
	case s.BackoffMin < 0 || s.BackoffMax < 0 || (s.BackoffMin == 0) != (s.BackoffMax == 0) || s.BackoffMin > s.BackoffMax || s.BackoffMax > MaxRetryDelay:
		return bad("backoff", "backoff needs 0 < min <= max <= %s", MaxRetryDelay)
	case s.Timeout <= 0 || s.Timeout > MaxTimeout:
		return bad("timeout", "timeout %s must be between 1ms and %s", s.Timeout, MaxTimeout)
	case s.MaxInFlight < 1 || s.MaxInFlight > MaxMaxInFlight:
		return bad("max_in_flight", "max_in_flight %d must be 1-%d", s.MaxInFlight, MaxMaxInFlight)
	case s.RatePerSecond < 0 || s.RatePerSecond > 1e6 || (s.RatePerSecond > 0 && s.RatePerSecond < MinRatePerSecond):
		// Below one a day the limiter's wait for the next message is
		// longer than any subscription lives (1e-300: never).
		return bad("rate_per_second", "rate_per_second %g must be 0 (no limit) or from %g (one a day) to 1000000", s.RatePerSecond, MinRatePerSecond)
	case s.Visibility < time.Second || s.Visibility > MaxVisibility:
		return bad("visibility", "visibility %s must be between 1s and %s", s.Visibility, MaxVisibility)
	case s.Format != FormatRaw && s.Format != FormatCloudEvents:
		return bad("format", "format %q must be %s or %s", s.Format, FormatRaw, FormatCloudEvents)
	case s.Format != FormatRaw && s.URL == "":
		return bad("format", "format %s is how push delivers; a pull subscription has no format (a pulled event's attributes are its ce-* properties)", s.Format)
	case s.Format == FormatCloudEvents && s.Batch.Batched():
		// A batch is one JSON array of postbus's own elements; binary-mode
		// CloudEvents describe one event a request in headers.
		return bad("batch", "batch and format cloudevents cannot be combined: binary-mode CloudEvents carry one event a request")
	case s.Batch != PushBatch{} && s.URL == "":
		return bad("batch", "batch is a push setting; a pull subscription takes up to max messages a pull")
	case s.Batch != PushBatch{} && (s.Batch.MaxMessages < 1 || s.Batch.MaxMessages > MaxPushBatch):
		return bad("batch.max_messages", "batch.max_messages %d must be 1-%d", s.Batch.MaxMessages, MaxPushBatch)
	case s.Batch.MaxWait < 0 || s.Batch.MaxWait > MaxBatchWait:
		return bad("batch.max_wait", "batch.max_wait %s must be between 0 and %s", s.Batch.MaxWait, MaxBatchWait)
	case s.Batch.MaxMessages > s.MaxInFlight:
		// max_in_flight counts messages, so a batch larger than it could
		// never fill; saying so beats sending smaller batches unasked.
		return bad("batch.max_messages", "batch.max_messages %d is more than max_in_flight %d, which counts messages: raise max_in_flight too", s.Batch.MaxMessages, s.MaxInFlight)
	case s.AckTimeout < MinAckTimeout || s.AckTimeout > MaxAckTimeout:
		return bad("ack_timeout", "ack_timeout %s must be between %s and %s", s.AckTimeout, MinAckTimeout, MaxAckTimeout)
	case s.DLQRedrive != nil && s.URL == "":
		return bad("dlq_redrive", "dlq_redrive probes a push subscription's endpoint; a pull subscription has none")
	case s.DLQRedrive != nil && (s.DLQRedrive.After < MinDLQRedriveAfter || s.DLQRedrive.After > MaxDLQRedriveAfter || s.DLQRedrive.After%time.Millisecond != 0):
		return bad("dlq_redrive.after", "dlq_redrive.after %s must be between %s and %s, in milliseconds", s.DLQRedrive.After, MinDLQRedriveAfter, MaxDLQRedriveAfter)
	case s.DLQRedrive != nil && !(s.DLQRedrive.RatePerSecond >= MinDLQRedriveRate && s.DLQRedrive.RatePerSecond <= 1e6):
		return bad("dlq_redrive.rate_per_second", "dlq_redrive.rate_per_second %g must be from %g to 1000000", s.DLQRedrive.RatePerSecond, MinDLQRedriveRate)
	}
	for i, d := range s.RetryDelays {
		if d <= 0 || d > MaxRetryDelay {
			return bad("retry_delays", "retry_delays[%d] = %s must be positive and at most %s", i, d, MaxRetryDelay)
		}
		if d%time.Millisecond != 0 {
			return bad("retry_delays", "retry_delays[%d] = %s: durations are kept to the millisecond", i, d)
		}
	}
	// Durations are stored in milliseconds: a finer one would be changed
	// on the way (1ns to 0, 1.5ms to 1ms) without a word.
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"timeout", s.Timeout}, {"visibility", s.Visibility}, {"backoff", s.BackoffMin}, {"backoff", s.BackoffMax}, {"batch.max_wait", s.Batch.MaxWait}, {"ack_timeout", s.AckTimeout}} {
		if d.v%time.Millisecond != 0 {
			return bad(d.field, "%s %s: durations are kept to the millisecond", d.field, d.v)
		}
	}
	if s.StartFrom != "latest" && s.StartFrom != "earliest" {
		if _, err := time.Parse(time.RFC3339Nano, s.StartFrom); err != nil {
			return bad("start_from", "start_from %q must be latest, earliest or an RFC 3339 time", s.StartFrom)
		}
	}
	return nil
}

// ValidateWebhookURL is the one check of a push URL's form, made when a
// subscription is created or changed and again before every delivery: an
// absolute http(s) URL with a host, a port (when given) of 1-65535, no
// credentials, no fragment, at most MaxURLLen bytes. A URL that passes can
// be dialled; which addresses it may reach is checked when connecting.
func ValidateWebhookURL(raw string) error {
	bad := func(why string) error {
		return errf(CodeInvalidSubscription, "url", "%q is not a webhook URL: %s", raw, why)
	}
	if raw == "" {
		return bad("empty")
	}
	if len(raw) > MaxURLLen {
		return errf(CodeInvalidSubscription, "url", "the webhook URL is %d bytes; at most %d", len(raw), MaxURLLen)
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return bad("invalid: " + err.Error())
	}
	switch {
	case !u.IsAbs():
		return bad("not absolute")
	case u.Scheme != "http" && u.Scheme != "https":
		return bad("the scheme must be http or https")
	case u.Opaque != "" || u.Hostname() == "":
		return bad("no host")
	case u.User != nil:
		return bad("credentials (userinfo) in the URL are not allowed; the delivery is signed instead")
	case u.Fragment != "":
		return bad("a fragment means nothing to the endpoint")
	}
	if p := u.Port(); p != "" {
		// Digits only, 1-65535 (url.Parse takes any digits, 0 and 99999
		// too, which nothing can dial).
		n, ok := 0, true
		for _, c := range []byte(p) {
			if c < '0' || c > '9' {
				ok = false
				break
			}
			if n = n*10 + int(c-'0'); n > 65535 {
				break
			}
		}
		if !ok || n < 1 || n > 65535 {
			return bad(fmt.Sprintf("port %q: a port is 1-65535", p))
		}
	}
	return nil
}

// ValidateSecret reports whether secret is a Standard Webhooks signing
// secret postbus accepts from a caller: whsec_ and the standard base64 of
// 24 to 64 random bytes.
func ValidateSecret(secret string) error {
	raw, ok := strings.CutPrefix(secret, "whsec_")
	b, err := base64.StdEncoding.DecodeString(raw)
	if !ok || err != nil || len(b) < 24 || len(b) > 64 {
		return errf(CodeInvalidSubscription, "secret", "a secret is whsec_ and the standard base64 of 24 to 64 random bytes")
	}
	return nil
}

var subscriptionIDRE = regexp.MustCompile(`^[A-Za-z0-9]{1,64}$`)

var autoPullIDRE = regexp.MustCompile(`^[0-9a-f]{24}$`)

// newSecret returns a Standard Webhooks signing secret.
func NewSecret() string {
	b := make([]byte, 32)
	rand.Read(b)
	return "whsec_" + base64.StdEncoding.EncodeToString(b)
}

// CreateSubscription creates a subscription and positions the group on
// the topic as start_from says: latest (messages published from now on),
// earliest (everything retained) or a time. With auto-creation on, a
// subscription to a topic that does not exist yet creates it.
//
// s.ID and s.Secret are made up when empty. A cluster gives them, so that
// one subscription has the same id and signing secret on every broker
// holding its topic.
func (b *Broker) CreateSubscription(ctx context.Context, s Subscription) (Subscription, error) {
	s.applyDefaults()
	if err := s.validate(); err != nil {
		return Subscription{}, err
	}
	if s.ID != "" && !subscriptionIDRE.MatchString(s.ID) {
		return Subscription{}, errf(CodeInvalidSubscription, "id", "%q is not a subscription id: 1-64 letters and digits", s.ID)
	}
	// Ids of 24 hex digits are those of the pull subscriptions first pulls
	// create (autoPullID): one given for another group or topic would take
	// that group's id away before its first pull.
	if autoPullIDRE.MatchString(s.ID) && s.ID != autoPullID(s.Group, s.Topic) {
		return Subscription{}, errf(CodeInvalidSubscription, "id", "%q is kept for the pull subscription a first pull creates (24 hex digits); choose another id", s.ID)
	}
	if s.Secret != "" {
		if s.URL == "" {
			return Subscription{}, errf(CodeInvalidSubscription, "secret", "a pull subscription has no signing secret")
		}
		if err := ValidateSecret(s.Secret); err != nil {
			return Subscription{}, err
		}
	}
	// Where topics are created on first publish, a subscription may come
	// first too.
	ts, err := b.topicForPublish(ctx, s.Topic)
	if err != nil {
		return Subscription{}, err
	}
	if s.ID == "" {
		s.ID = nuid.Next()
	}
	if s.URL != "" && s.Secret == "" {
		s.Secret = NewSecret()
	}
	s.Version = b.versionFor(ctx)
	ms, err := s.toMeta()
	if err != nil {
		return Subscription{}, err
	}
	// The group's position is set before the subscription exists, so a
	// consumer never starts from nowhere.
	if err := b.positionGroup(ctx, s.Group, ts, s.StartFrom); err != nil {
		return Subscription{}, err
	}
	stored, err := b.meta.CreateSubscription(ctx, ms)
	if errors.Is(err, meta.ErrExists) {
		return Subscription{}, errf(CodeSubscriptionExists, "group", "group %q already subscribes to topic %q (change that subscription with PATCH instead), or subscription id %q is taken", s.Group, s.Topic, s.ID)
	}
	if errors.Is(err, meta.ErrStale) {
		return Subscription{}, errf(CodeSubscriptionExists, "id", "subscription id %q was deleted by a later change; choose another id", s.ID)
	}
	if err != nil {
		return Subscription{}, fmt.Errorf("store subscription: %w", err)
	}
	s.CreatedAt, s.UpdatedAt = stored.CreatedAt, stored.UpdatedAt
	b.logger.Info("subscription created", slog.String("id", s.ID), slog.String("group", s.Group),
		slog.String("topic", s.Topic), slog.Bool("push", s.URL != ""))
	b.eng.drop(func(g, t string) bool { return g == s.Group && t == s.Topic })
	b.subsSig.fire()
	return s, nil
}

// positionGroup sets the group's offsets on each queue of the topic (and
// its retry topic) from start_from, unless the group has offsets there.
func (b *Broker) positionGroup(ctx context.Context, group string, ts *topicState, from string) error {
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		return err
	}
	t := ts.info.Load()
	queues := t.Queues
	r := b.retentionOf(t, b.now())
	var at time.Time
	if from != "latest" && from != "earliest" {
		at, _ = time.Parse(time.RFC3339Nano, from)
	}
	for q := 0; q < queues; q++ {
		if _, ok := b.Offset(group, ts.name, q); ok {
			continue
		}
		lo, hi, err := b.retainedBounds(t, q, r)
		if err != nil {
			return err
		}
		next := hi
		switch {
		case from == "earliest":
			next = lo
		case !at.IsZero():
			var err error
			if next, err = b.offsetAt(ts.name, q, at); err != nil {
				return err
			}
		}
		b.setOffset(group, ts.name, q, next)
	}
	return b.flushOffsets(ctx)
}

// offsetAt is the first queue offset stored at or after t.
func (b *Broker) offsetAt(topic string, queue int, t time.Time) (int64, error) {
	ms := t.UnixMilli()
	return b.cq.SearchOffset(topic, queue, func(e consumequeue.Entry) (bool, error) {
		if e.Size == holeSize {
			return false, nil // a lost record: no time to tell; its neighbours decide
		}
		rec, _, err := b.log.ReadAt(e.Offset, nil)
		if err != nil {
			return true, nil // gone with retention: older than anything left
		}
		h, err := decodeHeader(rec)
		if err != nil {
			return false, err
		}
		return h.StoredAt >= ms, nil
	})
}

// Subscription returns one subscription.
func (b *Broker) Subscription(ctx context.Context, id string) (Subscription, error) {
	m, err := b.meta.Subscription(ctx, id)
	if errors.Is(err, meta.ErrNotFound) {
		return Subscription{}, &Error{Code: CodeSubscriptionNotFound, Field: "id", Err: ErrSubscriptionNotFound, Detail: fmt.Sprintf("no subscription %q", id)}
	}
	if err != nil {
		return Subscription{}, err
	}
	return subscriptionFromMeta(m)
}

// Subscriptions returns every subscription, by group and topic.
func (b *Broker) Subscriptions(ctx context.Context) ([]Subscription, error) {
	ms, err := b.meta.Subscriptions(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Subscription, 0, len(ms))
	for _, m := range ms {
		s, err := subscriptionFromMeta(m)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// UpdateSubscription stores changed settings of an existing subscription
// (the caller applies the changes to what Subscription returned). Group,
// topic and start_from cannot change; push cannot turn into pull or back.
func (b *Broker) UpdateSubscription(ctx context.Context, s Subscription) (Subscription, error) {
	old, err := b.Subscription(ctx, s.ID)
	if err != nil {
		return Subscription{}, err
	}
	switch {
	case s.Group != old.Group || s.Topic != old.Topic:
		return Subscription{}, errf(CodeInvalidSubscription, "group", "a subscription's group and topic cannot change; create another")
	case (s.URL == "") != (old.URL == ""):
		return Subscription{}, errf(CodeInvalidSubscription, "url", "a pull subscription cannot become push or the other way round; create another")
	}
	s.StartFrom, s.CreatedAt = old.StartFrom, old.CreatedAt
	if err := s.validate(); err != nil {
		return Subscription{}, err
	}
	s.Version = b.versionFor(ctx)
	ms, err := s.toMeta()
	if err != nil {
		return Subscription{}, err
	}
	stored, err := b.meta.UpdateSubscription(ctx, ms)
	if errors.Is(err, meta.ErrStale) {
		// A later change of the subscription, from another broker, is
		// stored already: it stands, as if it had come after this one.
		b.logger.Info("subscription change superseded by a later one", slog.String("id", s.ID),
			slog.String("version", s.Version.String()), slog.String("stored", stored.Version.String()))
		return subscriptionFromMeta(stored)
	}
	if err != nil {
		return Subscription{}, fmt.Errorf("update subscription: %w", err)
	}
	s.UpdatedAt = stored.UpdatedAt
	b.eng.subscriptionChanged(ctx, s, false)
	b.subsSig.fire()
	return s, nil
}

// RotateSecret gives a push subscription a new signing secret; the old one
// keeps signing beside it for SecretOverlap, and so does every earlier one
// until its own overlap ends (a second rotation within a day does not cut
// the first one's short). Secrets whose overlap has ended are dropped.
// The new secret is secret when given (a cluster rotates every broker's
// copy to the same one), else made up.
func (b *Broker) RotateSecret(ctx context.Context, id, secret string) (Subscription, error) {
	s, err := b.Subscription(ctx, id)
	if err != nil {
		return Subscription{}, err
	}
	if s.URL == "" {
		return Subscription{}, errf(CodeInvalidSubscription, "url", "a pull subscription has no signing secret")
	}
	if secret == "" {
		secret = NewSecret()
	} else if err := ValidateSecret(secret); err != nil {
		return Subscription{}, err
	}
	if secret == s.Secret {
		return Subscription{}, errf(CodeInvalidSubscription, "secret", "the new secret is the current one")
	}
	now := b.now()
	prev := []PreviousSecret{{Secret: s.Secret, Until: now.Add(SecretOverlap)}}
	for _, p := range s.PreviousSecrets {
		if now.Before(p.Until) && p.Secret != secret {
			prev = append(prev, p)
		}
	}
	if len(prev) > MaxPreviousSecrets {
		return Subscription{}, errf(CodeInvalidSubscription, "secret",
			"%d earlier secrets still sign beside the current one (each for %s after its rotation); at most %d: wait until %s for the oldest to expire",
			len(prev)-1, SecretOverlap, MaxPreviousSecrets, prev[len(prev)-1].Until.UTC().Format(time.RFC3339))
	}
	s.PreviousSecrets, s.Secret = prev, secret
	return b.UpdateSubscription(ctx, s)
}

// SetSubscriptionState pauses, resumes or disables a subscription.
func (b *Broker) SetSubscriptionState(ctx context.Context, id, state, reason string) (Subscription, error) {
	s, err := b.Subscription(ctx, id)
	if err != nil {
		return Subscription{}, err
	}
	s.State, s.StateReason = state, reason
	if state == StateDisabled {
		b.logger.Warn("subscription disabled", slog.String("id", id), slog.String("reason", reason))
	}
	return b.UpdateSubscription(ctx, s)
}

// DeleteSubscription removes a subscription, leaving a tombstone at the
// delete's version for the brokers that missed it (see subsync.go). The
// group keeps its offsets, so subscribing again resumes where it stopped.
func (b *Broker) DeleteSubscription(ctx context.Context, id string) error {
	v := b.versionFor(ctx)
	m, err := b.meta.DeleteSubscriptionAt(ctx, id, v)
	if errors.Is(err, meta.ErrNotFound) {
		return &Error{Code: CodeSubscriptionNotFound, Field: "id", Err: ErrSubscriptionNotFound, Detail: fmt.Sprintf("no subscription %q", id)}
	}
	if errors.Is(err, meta.ErrStale) {
		// Changed by a later change from another broker, stored already:
		// that one stands, as if the delete had come before it.
		b.logger.Info("subscription delete superseded by a later change", slog.String("id", id), slog.String("version", v.String()))
		return nil
	}
	if err != nil {
		return err
	}
	old, err := subscriptionFromMeta(m)
	if err != nil {
		return err
	}
	b.eng.subscriptionChanged(ctx, old, true)
	b.subsSig.fire()
	return nil
}

// SubscriptionsChanged returns a channel closed at the next change to any
// subscription, for the dispatchers to reconcile.
func (b *Broker) SubscriptionsChanged() <-chan struct{} { return b.subsSig.wait() }
