package push

import (
	"context"
	"log/slog"
	"time"

	"github.com/postbus/postbus/broker"
)

// heal runs a push subscription's dlq_redrive while its loop runs: it
// probes the endpoint with the group's oldest dead letter of the topic
// when the broker says the probe is due (Broker.DLQRedriveDue), and
// reports how the probe went (Broker.DLQProbed), which redrives the rest
// on a 2xx. The schedule is the broker's, stored: a loop started again
// (a change, a restart) picks it up where it was.
func (l *loop) heal(ctx, dctx context.Context) {
	b := l.d.b
	for {
		wait := min(l.sub.DLQRedrive.After, 5*time.Second) // dead letters arrive without a signal
		st, d, ok, err := b.DLQRedriveDue(ctx, l.sub)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			l.log.Error("reading the dead letters to probe with failed", slog.Any("err", err))
		case ok:
			if due := st.NextProbe.Sub(l.d.cfg.Now()); due > 0 {
				wait = min(wait, due)
				break
			}
			l.probe(ctx, dctx, d)
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// probe delivers dead letter d to the endpoint, signed as any delivery,
// as the attempt after its last, and records the outcome in the trace and
// with the broker.
func (l *loop) probe(ctx, dctx context.Context, d broker.DeadLetter) {
	m := d.Message
	res, sent := l.attempt(ctx, dctx, m, m.Attempt+1, "", "dlq_redrive probe")
	if !sent {
		return // stopping: the next loop probes
	}
	// A 202 is a 2xx here: the probe carries no ack token.
	delivered := res.Outcome == Delivered
	why := res.Err
	n, err := l.d.b.DLQProbed(context.WithoutCancel(dctx), l.sub, d, delivered, why)
	if err != nil {
		l.log.Error("recording a dlq_redrive probe failed", slog.String("msg_id", m.ID), slog.Any("err", err))
		return
	}
	l.log.Info("dlq_redrive probed the endpoint", slog.String("msg_id", m.ID), slog.Bool("delivered", delivered),
		slog.String("error", why), slog.Int("redriven", n))
}
