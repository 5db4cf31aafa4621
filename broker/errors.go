package broker

import (
	"errors"
	"fmt"
)

// Code is a stable, lower_snake identifier for a class of failure. Codes
// appear verbatim in problem+json bodies and in openapi.yaml, so clients can
// branch on them; never rename one.
type Code string

// The codes the broker returns. Each maps to one HTTP status in httpapi.
const (
	CodeInvalidTopic         Code = "invalid_topic"
	CodeSystemTopic          Code = "system_topic"
	CodeTopicNotFound        Code = "topic_not_found"
	CodeInvalidMessage       Code = "invalid_message"
	CodeBodyTooLarge         Code = "body_too_large"
	CodeEmptyBody            Code = "empty_body"
	CodeInvalidTag           Code = "invalid_tag"
	CodeInvalidKeys          Code = "invalid_keys"
	CodeInvalidProperties    Code = "invalid_properties"
	CodeInvalidCloudEvent    Code = "invalid_cloudevent" // a CloudEvent missing or with a bad attribute (cloudevents.go)
	CodeInvalidDelay         Code = "invalid_delay"
	CodeInvalidDedupID       Code = "invalid_dedup_id"
	CodeBatchTooLarge        Code = "batch_too_large"
	CodeInvalidBatch         Code = "invalid_batch"
	CodeInvalidQueues        Code = "invalid_queues"
	CodeInvalidRetention     Code = "invalid_retention"
	CodeMessageNotFound      Code = "message_not_found"
	CodeMessageDamaged       Code = "message_damaged" // its record in the log is damaged and quarantined
	CodeInvalidMessageID     Code = "invalid_message_id"
	CodeInvalidKey           Code = "invalid_key"
	CodeInvalidFilter        Code = "invalid_filter"
	CodeInvalidGroup         Code = "invalid_group"
	CodeInvalidSubscription  Code = "invalid_subscription"
	CodeSubscriptionExists   Code = "subscription_exists"
	CodeSubscriptionNotFound Code = "subscription_not_found"
	CodeGroupNotFound        Code = "group_not_found"
	CodeInvalidPull          Code = "invalid_pull"
	CodeInvalidNack          Code = "invalid_nack"       // a nack's delay
	CodeInvalidVisibility    Code = "invalid_visibility" // a visibility change's visibility
	CodeInvalidReset         Code = "invalid_reset"      // an offset reset's topic or target
	CodeQueueNotFound        Code = "queue_not_found"    // a queue id the topic does not have
	CodeInvalidReceipt       Code = "invalid_receipt"
	CodeStaleReceipt         Code = "stale_receipt"
	// Deferred acknowledgement (POST /v1/acks/{token}): a token this bus
	// did not issue, a body that is no acknowledgement, a token already
	// settled by an earlier call, a token whose delivery is over (its
	// ack_timeout passed, its subscription was deleted or reset).
	CodeInvalidAckToken Code = "invalid_ack_token"
	CodeInvalidAck      Code = "invalid_ack"
	CodeAckTokenUsed    Code = "ack_token_used"
	CodeAckTokenExpired Code = "ack_token_expired"
	CodeDiskFull        Code = "disk_full"
	CodeUnavailable     Code = "unavailable"
)

// Error is a failure the caller caused or can act on. Field names the input
// that was wrong (a header, a JSON field, "batch[3].tag"), when there is one.
type Error struct {
	Code   Code
	Field  string
	Detail string
	Err    error // the cause, when there is one
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s: %s: %s", e.Code, e.Field, e.Detail)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Detail)
}

func (e *Error) Unwrap() error { return e.Err }

// Sentinels to branch on with errors.Is. They match by identity: an error
// with detail carries its sentinel in Err (see Error.Unwrap), so that
// errors.Is(err, ErrClosed) is true only for a closed broker, not for every
// error that shares its code (a failed commitlog is also "unavailable").
var (
	ErrTopicNotFound        = &Error{Code: CodeTopicNotFound}
	ErrMessageNotFound      = &Error{Code: CodeMessageNotFound}
	ErrDiskFull             = &Error{Code: CodeDiskFull}
	ErrSubscriptionNotFound = &Error{Code: CodeSubscriptionNotFound}
	ErrClosed               = &Error{Code: CodeUnavailable}
)

func errf(code Code, field, format string, args ...any) *Error {
	return &Error{Code: code, Field: field, Detail: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of the *Error in err's chain, or "" when there is none.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}
