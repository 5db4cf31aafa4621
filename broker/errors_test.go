package broker

import (
	"errors"
	"fmt"
	"testing"

	"github.com/postbus/postbus/broker/commitlog"
)

// TestSentinelsMatchByIdentity: a sentinel matches the errors that carry
// it, not every error with its code. A failed commitlog answers with the
// same code as a closed broker (unavailable), and a caller that retries
// on ErrClosed must not take one for the other.
func TestSentinelsMatchByIdentity(t *testing.T) {
	logFailed := errLogFailed(commitlog.ErrFailed)
	cases := []struct {
		name     string
		err      error
		sentinel error
		want     bool
	}{
		{"closed is closed", ErrClosed, ErrClosed, true},
		{"wrapped closed is closed", fmt.Errorf("publish: %w", ErrClosed), ErrClosed, true},
		{"failed log is not closed", logFailed, ErrClosed, false},
		{"failed log keeps its cause", logFailed, commitlog.ErrFailed, true},
		{"same code, other detail", &Error{Code: CodeUnavailable, Detail: "busy"}, ErrClosed, false},
		{"topic not found carries its sentinel", &Error{Code: CodeTopicNotFound, Err: ErrTopicNotFound, Detail: "x"}, ErrTopicNotFound, true},
		{"topic not found is not message not found", &Error{Code: CodeTopicNotFound, Err: ErrTopicNotFound}, ErrMessageNotFound, false},
		{"disk full with its cause", &Error{Code: CodeDiskFull, Err: errors.Join(ErrDiskFull, commitlog.ErrDiskFull)}, ErrDiskFull, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := errors.Is(tc.err, tc.sentinel); got != tc.want {
				t.Errorf("errors.Is(%v, %v) = %v, want %v", tc.err, tc.sentinel, got, tc.want)
			}
		})
	}
}
