package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/httpapi/stats"
)

// statsJSON is GET /v1/stats's answer: points from start, one every
// resolution, null where there was no sample.
type statsJSON struct {
	Resolution   string              `json:"resolution"`
	Start        *time.Time          `json:"start,omitempty"` // absent before the first sample
	InPerSecond  stats.Points        `json:"in_per_second"`
	OutPerSecond stats.Points        `json:"out_per_second"`
	Topics       []stats.TopicSeries `json:"topics"`
	Groups       []stats.GroupSeries `json:"groups"`
	// In a cluster: the brokers whose series are summed, and those that
	// did not answer (their share is missing).
	Brokers     []string `json:"brokers,omitempty"`
	Unavailable []string `json:"unavailable,omitempty"`
}

func toStatsJSON(s stats.Series) statsJSON {
	out := statsJSON{Resolution: s.Resolution.String(), InPerSecond: s.InPerSecond, OutPerSecond: s.OutPerSecond,
		Topics: s.Topics, Groups: s.Groups}
	if !s.Start.IsZero() {
		start := s.Start.UTC()
		out.Start = &start
	}
	return out
}

func fromStatsJSON(j statsJSON) (stats.Series, error) {
	res, err := time.ParseDuration(j.Resolution)
	if err != nil {
		return stats.Series{}, fmt.Errorf("resolution %q: %w", j.Resolution, err)
	}
	s := stats.Series{Resolution: res, InPerSecond: j.InPerSecond, OutPerSecond: j.OutPerSecond, Topics: j.Topics, Groups: j.Groups}
	if j.Start != nil {
		s.Start = *j.Start
	}
	return s, nil
}

// RunStats samples the broker for GET /v1/stats until ctx ends (every
// resolution step; see package stats).
func (s *Server) RunStats(ctx context.Context) {
	if s.stats == nil {
		return
	}
	s.stats.Run(ctx, s.statsSnapshot)
}

// statsSnapshot is package stats's Source: what each user topic stored,
// and each group's consumed offsets, lag, in flight and dead letters.
func (s *Server) statsSnapshot(ctx context.Context) (stats.Snapshot, error) {
	snap := stats.Snapshot{Topics: map[string]int64{}, Groups: map[string]stats.Group{}}
	for _, t := range s.broker.Topics(ctx, "", 0) {
		st, err := s.broker.Topic(ctx, t.Name)
		if err != nil {
			if broker.CodeOf(err) == broker.CodeTopicNotFound {
				continue // deleted since it was listed
			}
			return stats.Snapshot{}, fmt.Errorf("topic %s: %w", t.Name, err)
		}
		var stored int64
		for _, q := range st.Queues {
			stored += q.MaxOffset
		}
		snap.Topics[t.Name] = stored
	}
	groups, err := s.broker.Groups(ctx)
	if err != nil {
		return stats.Snapshot{}, fmt.Errorf("groups: %w", err)
	}
	for _, g := range groups {
		sg := stats.Group{Consumed: map[string]int64{}, Lag: g.Lag, DeadLetters: g.DeadLetters}
		for _, q := range g.Queues {
			sg.InFlight += int64(q.InFlight)
			// Retry and dead-letter topics are the group's own: what
			// it consumes of a user topic is counted there once.
			if !strings.HasPrefix(q.Topic, "%") {
				sg.Consumed[q.Topic] += q.Offset
			}
		}
		snap.Groups[g.Name] = sg
	}
	return snap, nil
}

func (s *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	if s.coordinating(r) {
		s.statsEverywhere(w, r)
		return
	}
	q := r.URL.Query()
	topic, group := q.Get("topic"), q.Get("group")
	if topic != "" {
		if err := broker.ValidateTopicName(topic); err != nil {
			writeProblem(w, r, codeInvalidParameter, "topic", "query parameter topic: "+problemDetail(err))
			return
		}
	}
	if group != "" {
		if err := broker.ValidateGroupName(group); err != nil {
			writeProblem(w, r, codeInvalidParameter, "group", "query parameter group: "+problemDetail(err))
			return
		}
	}
	p := principalFrom(r.Context())
	keepTopic := func(t string) bool { return (topic == "" || t == topic) && mayRead(r, t) }
	keepGroup := func(g string) bool { return (group == "" || g == group) && (p == nil || p.scopes.canConsume(g)) }
	writeJSON(w, http.StatusOK, toStatsJSON(s.stats.Series(keepTopic, keepGroup)))
}

// statsEverywhere sums every broker's series: a topic's queues and a
// group's consumers are spread across them.
func (s *Server) statsEverywhere(w http.ResponseWriter, r *http.Request) {
	answers := s.ask(r, s.everyBroker(r), "", nil, s.handleStats)
	if !answers[0].ok() {
		writeAnswer(w, r, answers[0])
		return
	}
	var parts []stats.Series
	out := statsJSON{Brokers: []string{}}
	for _, a := range answers {
		var j statsJSON
		var part stats.Series
		err := a.err
		if err == nil && !a.ok() {
			err = fmt.Errorf("answered %d", a.status)
		}
		if err == nil {
			if err = json.Unmarshal(a.body, &j); err == nil {
				part, err = fromStatsJSON(j)
			}
		}
		if err != nil {
			s.logger.Error("a broker's series are missing from GET /v1/stats", slog.String("broker", a.peer.name), slog.Any("err", err))
			out.Unavailable = append(out.Unavailable, a.peer.name)
			continue
		}
		parts = append(parts, part)
		out.Brokers = append(out.Brokers, a.peer.name)
	}
	merged, err := stats.Merge(parts, int(stats.DefaultWindow/stats.DefaultResolution))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	m := toStatsJSON(merged)
	m.Brokers, m.Unavailable = out.Brokers, out.Unavailable
	writeJSON(w, http.StatusOK, m)
}

// problemDetail is a broker error's detail alone (its code is the
// problem's), or the error's text.
func problemDetail(err error) string {
	var be *broker.Error
	if errors.As(err, &be) && be.Detail != "" {
		return be.Detail
	}
	return err.Error()
}
