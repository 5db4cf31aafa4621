package broker

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Self-healing dead letters (DESIGN §4 "Push extras"): a push subscription
// with dlq_redrive has the push loop probe its endpoint with the group's
// oldest dead letter of its topic, once that has waited After (or, after a
// failed probe, After from that probe). A probe is a normal signed
// delivery; a 2xx settles the probed message (removed from the dead-letter
// queue) and redrives the rest of the topic's dead letters at
// RatePerSecond through the existing redrive (Redrive); anything else
// waits After again. Where it stands is stored (table dlq_redrives), so a
// restart keeps the wait after a failed probe, and the group's view shows
// it.

// DLQRedriveState is where a subscription's self-healing stands.
type DLQRedriveState struct {
	Subscription string
	// State is idle (no dead letters of the topic), waiting (for the
	// oldest to have waited After), probe_failed (the last probe failed;
	// the next at NextProbe) or redriven (the last probe succeeded and
	// the rest were redriven).
	State     string
	NextProbe time.Time // zero when idle
	Probes    int64
	Redriven  int64
	LastError string
	// DeadLetters counts the group's dead letters of the topic now.
	DeadLetters int
}

// deadLettersOfTopic returns the group's dead letters of topic, oldest
// first, at most limit.
func (b *Broker) deadLettersOfTopic(ctx context.Context, group, topic string, limit int) ([]DeadLetter, int, error) {
	var out []DeadLetter
	n := 0
	for after := int64(-1); ; {
		page, err := b.DeadLetters(ctx, group, after, 256)
		if err != nil {
			return nil, 0, err
		}
		if len(page) == 0 {
			return out, n, nil
		}
		for _, d := range page {
			after = d.DLQOffset
			if d.OriginTopic() != topic {
				continue
			}
			n++
			if len(out) < limit {
				out = append(out, d)
			}
		}
	}
}

// DLQRedriveDue says where s's self-healing stands, and returns the dead
// letter the next probe delivers (ok false when there is none).
func (b *Broker) DLQRedriveDue(ctx context.Context, s Subscription) (DLQRedriveState, DeadLetter, bool, error) {
	st := DLQRedriveState{Subscription: s.ID, State: "idle"}
	if s.DLQRedrive == nil {
		return st, DeadLetter{}, false, nil
	}
	row, _, err := b.meta.GetDLQRedrive(ctx, s.ID)
	if err != nil {
		return st, DeadLetter{}, false, err
	}
	st.Probes, st.Redriven, st.LastError = row.Probes, row.Redriven, row.LastError
	oldest, n, err := b.deadLettersOfTopic(ctx, s.Group, s.Topic, 1)
	if err != nil {
		return st, DeadLetter{}, false, err
	}
	st.DeadLetters = n
	if len(oldest) == 0 {
		return st, DeadLetter{}, false, nil
	}
	d := oldest[0]
	st.State, st.NextProbe = "waiting", d.StoredAt.Add(s.DLQRedrive.After)
	if row.State == "probe_failed" || row.State == "redriven" {
		st.State = row.State
	}
	if row.NextProbe.After(st.NextProbe) {
		st.NextProbe = row.NextProbe
	}
	return st, d, true, nil
}

// DLQProbed records a probe of s's endpoint with dead letter d: on
// success (delivered) d leaves the dead-letter queue and the rest of the
// topic's dead letters are redriven at the subscription's rate; on failure
// (why says how it failed) the next probe waits After. It returns how many
// were redriven.
func (b *Broker) DLQProbed(ctx context.Context, s Subscription, d DeadLetter, delivered bool, why string) (int, error) {
	if s.DLQRedrive == nil {
		return 0, nil
	}
	row, _, err := b.meta.GetDLQRedrive(ctx, s.ID)
	if err != nil {
		return 0, err
	}
	now := b.now()
	row.Subscription, row.UpdatedAt = s.ID, now
	row.Probes++
	if !delivered {
		row.State, row.NextProbe, row.LastError = "probe_failed", now.Add(s.DLQRedrive.After), why
		b.deferred.probes.WithLabelValues("failed").Inc()
		return 0, b.meta.PutDLQRedrive(ctx, row)
	}
	b.deferred.probes.WithLabelValues("delivered").Inc()
	if err := b.meta.RemoveDeadLetters(ctx, s.Group, []int64{d.DLQOffset}); err != nil {
		return 0, fmt.Errorf("settle the probed dead letter %s: %w", d.ID, err)
	}
	// As many as the rate fits within the longest delay go now; any
	// beyond wait for the next probe.
	most := int(s.DLQRedrive.RatePerSecond*b.cfg.MaxDelay.Seconds()) + 1
	rest, _, err := b.deadLettersOfTopic(ctx, s.Group, s.Topic, most)
	if err != nil {
		return 0, err
	}
	ids := make([]string, 0, len(rest))
	for _, r := range rest {
		if r.DLQOffset != d.DLQOffset {
			ids = append(ids, r.ID)
		}
	}
	n := 0
	if len(ids) > 0 {
		if n, err = b.Redrive(ctx, s.Group, ids, false, s.DLQRedrive.RatePerSecond); err != nil {
			b.logger.Error("redriving dead letters after a probe succeeded failed; the next probe tries again",
				slog.String("subscription", s.ID), slog.String("group", s.Group), slog.Int("redriven", n), slog.Any("err", err))
		}
	}
	b.deferred.redriven.Add(float64(n))
	row.State, row.NextProbe, row.LastError, row.Redriven = "redriven", time.Time{}, "", row.Redriven+int64(n)
	if perr := b.meta.PutDLQRedrive(ctx, row); perr != nil && err == nil {
		err = perr
	}
	return n, err
}
