package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// writeReport prints the human report of target and, if run, baseline.
func writeReport(out io.Writer, cfg *config, target, base *result) {
	fmt.Fprintln(out)
	writeRun(out, cfg, "target", target)
	if base != nil {
		fmt.Fprintln(out)
		writeRun(out, cfg, "baseline (in-process no-op server)", base)
		fmt.Fprintln(out)
		fmt.Fprintf(out, "target %.0f msgs/s  baseline %.0f msgs/s  target/baseline %s\n",
			target.msgsPerSec(), base.msgsPerSec(), fmtRatio(target.msgsPerSec(), base.msgsPerSec()))
	}
}

func writeRun(out io.Writer, cfg *config, label string, r *result) {
	fmt.Fprintf(out, "%s %s%s\n", label, r.url, interruptedMark(r.interrupted))
	fmt.Fprintf(out, "  elapsed   %s\n", r.elapsed.Round(time.Millisecond))
	fmt.Fprintf(out, "  requests  %d (%d ok, %d failed)\n", r.requests, r.okRequests, r.errRequests)
	fmt.Fprintf(out, "  messages  %d sent, %d acknowledged, %d in failed requests\n", r.sentMsgs, r.okMsgs, r.errMsgs)
	fmt.Fprintf(out, "  rate      %.1f msgs/s  %.2f MB/s of bodies", r.msgsPerSec(), mbPerSec(r))
	if cfg.rate > 0 {
		fmt.Fprintf(out, "  (target %g msgs/s)", cfg.rate)
	}
	fmt.Fprintln(out)
	fmt.Fprintf(out, "  latency   per request: %s\n", r.hist.summary())
	writeRSS(out, r.rss)
	if r.first10 > 0 && r.last10 > 0 {
		fmt.Fprintf(out, "  count run first 10%% %.1f msgs/s  last 10%% %.1f msgs/s  last/first %s\n",
			r.first10, r.last10, fmtRatio(r.last10, r.first10))
	}
	if len(r.errs) > 0 {
		fmt.Fprintln(out, "  errors (status code: requests, messages, first seen)")
		for _, e := range r.errs {
			fmt.Fprintf(out, "    %-28s %d requests, %d messages  first: %s\n", e.key, e.requests, e.messages, e.first)
		}
	}
}

func mbPerSec(r *result) float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.bodyBytes) / 1e6 / r.elapsed.Seconds()
}

// interruptedMark is what a report's heading adds for a run cut short.
func interruptedMark(interrupted bool) string {
	if interrupted {
		return " (interrupted)"
	}
	return ""
}

// summary is the latency line every report prints: p50, p90, p99, max and
// mean.
func (h *histogram) summary() string {
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s  mean %s",
		fmtDur(h.quantile(0.50)), fmtDur(h.quantile(0.90)), fmtDur(h.quantile(0.99)), fmtDur(h.maxValue()), fmtDur(h.mean()))
}

func fmtRatio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.3f", a/b)
}

// fmtDur rounds d to about three significant digits.
func fmtDur(d time.Duration) string {
	unit := time.Duration(1)
	for lim := time.Duration(1000); d >= lim && unit < time.Millisecond; lim *= 10 {
		unit *= 10
	}
	return d.Round(unit).String()
}

// jsonReport is the --json form of the report. Latencies are milliseconds
// and rates per second, as numbers, so they plot without parsing.
type jsonReport struct {
	URL         string   `json:"url"`
	Topic       string   `json:"topic"`
	Conns       int      `json:"conns"`
	Size        int      `json:"size"`
	Batch       int      `json:"batch"`
	Rate        float64  `json:"rate"`
	Count       int64    `json:"count"`
	DurationSec float64  `json:"duration_s"`
	Target      jsonRun  `json:"target"`
	Baseline    *jsonRun `json:"baseline,omitempty"`
	// TargetOverBaseline is the ratio of msgs/s; present with baseline.
	TargetOverBaseline *float64 `json:"target_over_baseline,omitempty"`
}

type jsonRun struct {
	URL           string      `json:"url"`
	Interrupted   bool        `json:"interrupted"`
	ElapsedSec    float64     `json:"elapsed_s"`
	Requests      int64       `json:"requests"`
	OKRequests    int64       `json:"ok_requests"`
	ErrorRequests int64       `json:"error_requests"`
	MessagesSent  int64       `json:"messages_sent"`
	Messages      int64       `json:"messages"`
	ErrorMessages int64       `json:"error_messages"`
	MsgsPerSec    float64     `json:"msgs_per_s"`
	MBPerSec      float64     `json:"mb_per_s"`
	LatencyMs     jsonLatency `json:"latency_ms"`
	First10       *float64    `json:"first_10pct_msgs_per_s,omitempty"`
	Last10        *float64    `json:"last_10pct_msgs_per_s,omitempty"`
	LastOverFirst *float64    `json:"last_over_first,omitempty"`
	Errors        []jsonError `json:"errors"`
	// BrokerRSSMax is the largest VmRSS sampled, with --broker-pid.
	BrokerRSSMax *int64 `json:"broker_rss_max_bytes,omitempty"`
}

type jsonLatency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

type jsonError struct {
	Kind     string `json:"kind"`
	Requests int64  `json:"requests"`
	Messages int64  `json:"messages"`
	First    string `json:"first"`
}

func toJSONRun(r *result) jsonRun {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	j := jsonRun{
		URL: r.url, Interrupted: r.interrupted, ElapsedSec: r.elapsed.Seconds(),
		Requests: r.requests, OKRequests: r.okRequests, ErrorRequests: r.errRequests,
		MessagesSent: r.sentMsgs, Messages: r.okMsgs, ErrorMessages: r.errMsgs,
		MsgsPerSec: r.msgsPerSec(), MBPerSec: mbPerSec(r),
		LatencyMs: jsonLatency{
			P50: ms(r.hist.quantile(0.5)), P90: ms(r.hist.quantile(0.9)), P99: ms(r.hist.quantile(0.99)),
			Max: ms(r.hist.maxValue()), Mean: ms(r.hist.mean()),
		},
		Errors: []jsonError{},
	}
	if r.first10 > 0 && r.last10 > 0 {
		f, l, q := r.first10, r.last10, r.last10/r.first10
		j.First10, j.Last10, j.LastOverFirst = &f, &l, &q
	}
	if r.rss != nil {
		m := r.rss.max
		j.BrokerRSSMax = &m
	}
	for _, e := range r.errs {
		j.Errors = append(j.Errors, jsonError{Kind: e.key, Requests: e.requests, Messages: e.messages, First: e.first})
	}
	return j
}

func writeJSON(out io.Writer, cfg *config, target, base *result) error {
	rep := jsonReport{
		URL: cfg.url, Topic: cfg.topic, Conns: cfg.conns, Size: cfg.size, Batch: cfg.batch,
		Rate: cfg.rate, Count: cfg.count, DurationSec: cfg.duration.Seconds(),
		Target: toJSONRun(target),
	}
	if base != nil {
		b := toJSONRun(base)
		rep.Baseline = &b
		if bm := base.msgsPerSec(); bm > 0 {
			q := target.msgsPerSec() / bm
			rep.TargetOverBaseline = &q
		}
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}
