package broker

import (
	"encoding/base64"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits on a message. Body size is configurable (Config.MaxMessageBytes);
// the rest are fixed by the record format and the API contract.
const (
	DefaultMaxMessageBytes = 4 << 20
	MaxTagLen              = 127 // characters
	MaxKeys                = 32
	MaxKeyLen              = 256 // bytes
	MaxProperties          = 64
	MaxPropertyNameLen     = 64
	MaxPropertyValueLen    = 4096
	MaxPropertiesBytes     = 16 << 10 // names and values together, as RocketMQ's proxy
	MaxContentTypeLen      = 255
	MaxDedupIDLen          = 128
	MaxShardingKeyLen      = 256
	DefaultContentType     = "application/octet-stream"
)

// DelayLevels is RocketMQ's table: Postbus-Delay-Level n waits DelayLevels[n-1].
var DelayLevels = [18]time.Duration{
	1 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second,
	1 * time.Minute, 2 * time.Minute, 3 * time.Minute, 4 * time.Minute, 5 * time.Minute,
	6 * time.Minute, 7 * time.Minute, 8 * time.Minute, 9 * time.Minute, 10 * time.Minute,
	20 * time.Minute, 30 * time.Minute, 1 * time.Hour, 2 * time.Hour,
}

// Message is one message: what a producer sends (Tag … DeliverAt) and, once
// stored, where it lives (ID … LogOffset).
type Message struct {
	Tag         string
	Keys        []string
	ShardingKey string
	Properties  map[string]string
	ContentType string
	Body        []byte
	DedupID     string
	// At most one of Delay, DelayLevel and DeliverAt is set by a producer;
	// validation folds them into DeliverAt.
	Delay      time.Duration
	DelayLevel int
	DeliverAt  time.Time

	ID          string
	Topic       string
	QueueID     int
	QueueOffset int64
	BornAt      time.Time
	StoredAt    time.Time
	LogOffset   int64

	// Set on copies the broker makes for retries and dead letters.
	Attempt int    // the delivery attempt this copy is for (0: a producer's message)
	Origin  string // the topic a retry or dead-letter copy came from
	Reason  string // why a dead-lettered message died: the last attempt's error
	flags   uint16
}

// delayed reports whether m has no queue offset: it waits in the timer
// store, or it is a transaction's prepared message (never queued itself).
// EncodeBody puts a body in JSON as text when it is UTF-8, else as
// base64, and names the encoding ("utf8" or "base64"): the one rule of
// the pull and query answers and of batched push deliveries.
func EncodeBody(b []byte) (body, encoding string) {
	if utf8.Valid(b) {
		return string(b), "utf8"
	}
	return base64.StdEncoding.EncodeToString(b), "base64"
}

func (m *Message) delayed() bool {
	return m.flags&(flagDelayed|flagRePut) == flagDelayed || m.flags&flagPrepared != 0
}

// Prepared reports whether m is a transaction's prepared (half) message,
// not committed: Broker.Transaction says whether it still may be.
func (m *Message) Prepared() bool { return m.flags&flagPrepared != 0 }

// Committed reports whether m is a transaction's message as its commit
// stored it.
func (m *Message) Committed() bool { return m.flags&flagCommitted != 0 }

var (
	propNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
)

// ValidateTopicName reports whether name may be used for a user topic.
// Names starting with '%' belong to the system (%RETRY%, %DLQ%, schedules).
func ValidateTopicName(name string) error {
	if strings.HasPrefix(name, "%") {
		return errf(CodeSystemTopic, "topic", "%q is a system topic; producers cannot use names starting with '%%'", name)
	}
	if !validTopicName(name) {
		return errf(CodeInvalidTopic, "topic", "%q is not a valid topic name: 1-127 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit", name)
	}
	return nil
}

// validTopicName reports whether name is 1-127 characters of A-Z a-z 0-9
// . _ -, starting with a letter or digit. Every publish checks it: a loop
// over the bytes costs a tenth of the regular expression it replaces.
func validTopicName(name string) bool {
	if len(name) == 0 || len(name) > 127 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// printable reports whether s is valid UTF-8 without control characters.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// validate checks a producer's message against the limits and folds its
// delay fields into DeliverAt, so that validating twice is harmless. field
// prefixes names in errors ("[3].").
func (m *Message) validate(field string, maxBody int, maxDelay time.Duration, now time.Time) error {
	if len(m.Body) == 0 {
		return errf(CodeEmptyBody, field+"body", "the message body is empty; a message needs at least one byte")
	}
	if len(m.Body) > maxBody {
		return errf(CodeBodyTooLarge, field+"body", "the body is %d bytes; the limit is %d", len(m.Body), maxBody)
	}
	if m.Tag != "" {
		switch {
		case utf8.RuneCountInString(m.Tag) > MaxTagLen:
			return errf(CodeInvalidTag, field+"tag", "the tag is longer than %d characters", MaxTagLen)
		case strings.Contains(m.Tag, "||"):
			return errf(CodeInvalidTag, field+"tag", "a tag cannot contain '||', the filter's separator")
		case !printable(m.Tag) || strings.TrimSpace(m.Tag) == "" || m.Tag == "*":
			return errf(CodeInvalidTag, field+"tag", "a tag must be printable UTF-8, not blank and not '*'")
		}
	}
	if len(m.Keys) > MaxKeys {
		return errf(CodeInvalidKeys, field+"keys", "%d keys; at most %d are allowed", len(m.Keys), MaxKeys)
	}
	for i, k := range m.Keys {
		if k == "" || len(k) > MaxKeyLen || !printable(k) || strings.Contains(k, ",") {
			return errf(CodeInvalidKeys, field+"keys", "key %d is not valid: keys are 1-%d bytes of printable UTF-8 without ','", i, MaxKeyLen)
		}
	}
	if len(m.Properties) > MaxProperties {
		return errf(CodeInvalidProperties, field+"properties", "%d properties; at most %d are allowed", len(m.Properties), MaxProperties)
	}
	total := 0
	for name, v := range m.Properties {
		if len(name) > MaxPropertyNameLen || !propNameRE.MatchString(name) {
			return errf(CodeInvalidProperties, field+"properties", "property name %q is not valid: 1-%d characters of A-Z a-z 0-9 _ . -", name, MaxPropertyNameLen)
		}
		if len(v) > MaxPropertyValueLen || !printable(v) {
			return errf(CodeInvalidProperties, field+"properties", "property %q: values are printable UTF-8 of at most %d bytes", name, MaxPropertyValueLen)
		}
		total += len(name) + len(v)
	}
	if total > MaxPropertiesBytes {
		return errf(CodeInvalidProperties, field+"properties", "properties total %d bytes; the limit is %d", total, MaxPropertiesBytes)
	}
	if err := CheckCloudEvent(field, m.Properties); err != nil {
		return err
	}
	if m.ContentType == "" {
		m.ContentType = DefaultContentType
	}
	if len(m.ContentType) > MaxContentTypeLen || !printable(m.ContentType) {
		return errf(CodeInvalidMessage, field+"content_type", "the content type must be printable and at most %d bytes", MaxContentTypeLen)
	}
	if len(m.DedupID) > MaxDedupIDLen || !printable(m.DedupID) {
		return errf(CodeInvalidDedupID, field+"dedup_id", "a dedup id is at most %d bytes of printable UTF-8", MaxDedupIDLen)
	}
	if len(m.ShardingKey) > MaxShardingKeyLen || !printable(m.ShardingKey) {
		return errf(CodeInvalidMessage, field+"sharding_key", "a sharding key is at most %d bytes of printable UTF-8", MaxShardingKeyLen)
	}
	return m.foldDelay(field, maxDelay, now)
}

func (m *Message) foldDelay(field string, maxDelay time.Duration, now time.Time) error {
	set := 0
	for _, b := range []bool{m.Delay != 0, m.DelayLevel != 0, !m.DeliverAt.IsZero()} {
		if b {
			set++
		}
	}
	if set > 1 {
		return errf(CodeInvalidDelay, field+"delay", "give at most one of delay, delay level and deliver-at")
	}
	switch {
	case m.Delay < 0:
		return errf(CodeInvalidDelay, field+"delay", "the delay %s is negative", m.Delay)
	case m.Delay > 0:
		if m.Delay > maxDelay {
			return errf(CodeInvalidDelay, field+"delay", "the delay %s is longer than the maximum %s", m.Delay, maxDelay)
		}
		m.DeliverAt, m.Delay = now.Add(m.Delay), 0
	case m.DelayLevel != 0:
		if m.DelayLevel < 1 || m.DelayLevel > len(DelayLevels) {
			return errf(CodeInvalidDelay, field+"delay_level", "delay level %d is out of range 1-%d", m.DelayLevel, len(DelayLevels))
		}
		m.DeliverAt, m.DelayLevel = now.Add(DelayLevels[m.DelayLevel-1]), 0
	case !m.DeliverAt.IsZero():
		if m.DeliverAt.After(now.Add(maxDelay)) {
			return errf(CodeInvalidDelay, field+"deliver_at", "%s is more than the maximum delay %s away", m.DeliverAt.Format(time.RFC3339), maxDelay)
		}
		if !m.DeliverAt.After(now) {
			m.DeliverAt = time.Time{} // due already: deliver at once
		}
	}
	return nil
}
