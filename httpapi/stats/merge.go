package stats

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// UnmarshalJSON reads what MarshalJSON writes: null is NaN.
func (p *Points) UnmarshalJSON(b []byte) error {
	var raw []*float64
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("stats points: %w", err)
	}
	out := make(Points, len(raw))
	for i, v := range raw {
		out[i] = math.NaN()
		if v != nil {
			out[i] = *v
		}
	}
	*p = out
	return nil
}

// Merge sums the series of several brokers, point by point on their
// common timeline (points are at multiples of the resolution, so they line
// up): a topic spread across brokers, a group consuming from several, and
// the totals. A point is null where every part is null. The parts must
// have the same resolution and together span at most maxPoints.
func Merge(parts []Series, maxPoints int) (Series, error) {
	out := Series{Topics: []TopicSeries{}, Groups: []GroupSeries{}}
	var end time.Time
	for _, p := range parts {
		if out.Resolution == 0 {
			out.Resolution = p.Resolution
		}
		if p.Resolution != out.Resolution {
			return Series{}, fmt.Errorf("stats: cannot merge series at %s and at %s", out.Resolution, p.Resolution)
		}
		if len(p.InPerSecond) == 0 {
			continue
		}
		last := p.Start.Add(time.Duration(len(p.InPerSecond)-1) * p.Resolution)
		if out.Start.IsZero() || p.Start.Before(out.Start) {
			out.Start = p.Start
		}
		if last.After(end) {
			end = last
		}
	}
	if out.Start.IsZero() {
		out.InPerSecond, out.OutPerSecond = Points{}, Points{}
		return out, nil
	}
	n := int(end.Sub(out.Start)/out.Resolution) + 1
	if n > maxPoints {
		// Keep the newest points: clocks that disagree by more than the
		// window would otherwise make the answer grow without bound.
		out.Start = end.Add(-time.Duration(maxPoints-1) * out.Resolution)
		n = maxPoints
	}
	// place adds p, starting at start, into sum, a series on out's timeline.
	place := func(sum Points, start time.Time, p Points) {
		off := int(start.Sub(out.Start) / out.Resolution)
		for i, v := range p {
			j := off + i
			if j < 0 || j >= n || math.IsNaN(v) {
				continue
			}
			if math.IsNaN(sum[j]) {
				sum[j] = 0
			}
			sum[j] += v
		}
	}
	out.InPerSecond, out.OutPerSecond = nanPoints(n), nanPoints(n)
	topics := map[string]*TopicSeries{}
	groups := map[string]*GroupSeries{}
	for _, p := range parts {
		place(out.InPerSecond, p.Start, p.InPerSecond)
		place(out.OutPerSecond, p.Start, p.OutPerSecond)
		for _, t := range p.Topics {
			m := topics[t.Topic]
			if m == nil {
				m = &TopicSeries{Topic: t.Topic, InPerSecond: nanPoints(n), OutPerSecond: nanPoints(n)}
				topics[t.Topic] = m
			}
			place(m.InPerSecond, p.Start, t.InPerSecond)
			place(m.OutPerSecond, p.Start, t.OutPerSecond)
		}
		for _, g := range p.Groups {
			m := groups[g.Group]
			if m == nil {
				m = &GroupSeries{Group: g.Group, OutPerSecond: nanPoints(n), Lag: nanPoints(n), InFlight: nanPoints(n), DeadLetters: nanPoints(n)}
				groups[g.Group] = m
			}
			place(m.OutPerSecond, p.Start, g.OutPerSecond)
			place(m.Lag, p.Start, g.Lag)
			place(m.InFlight, p.Start, g.InFlight)
			place(m.DeadLetters, p.Start, g.DeadLetters)
		}
	}
	for _, t := range topics {
		out.Topics = append(out.Topics, *t)
	}
	for _, g := range groups {
		out.Groups = append(out.Groups, *g)
	}
	slices.SortFunc(out.Topics, func(a, b TopicSeries) int { return strings.Compare(a.Topic, b.Topic) })
	slices.SortFunc(out.Groups, func(a, b GroupSeries) int { return strings.Compare(a.Group, b.Group) })
	return out, nil
}
