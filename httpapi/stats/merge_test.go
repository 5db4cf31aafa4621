package stats

import (
	"encoding/json"
	"testing"
	"time"
)

func TestMergeLinesUpAndSums(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 20, 0, 0, 0, time.UTC)
	a := Series{Start: t0, Resolution: 10 * time.Second,
		InPerSecond: Points{1, 2, 3}, OutPerSecond: Points{null, 1, 1},
		Topics: []TopicSeries{{Topic: "orders", InPerSecond: Points{1, 2, 3}, OutPerSecond: Points{null, 1, 1}}},
		Groups: []GroupSeries{{Group: "g", OutPerSecond: Points{null, 1, 1}, Lag: Points{5, 5, 5}, InFlight: Points{0, 0, 0}, DeadLetters: Points{0, 0, 1}}}}
	// b started 10 s later and has one point more.
	b := Series{Start: t0.Add(10 * time.Second), Resolution: 10 * time.Second,
		InPerSecond: Points{10, null, 10}, OutPerSecond: Points{0, 0, 0},
		Topics: []TopicSeries{{Topic: "orders", InPerSecond: Points{10, null, 10}, OutPerSecond: Points{0, 0, 0}},
			{Topic: "audit", InPerSecond: Points{0, 0, 0}, OutPerSecond: Points{0, 0, 0}}},
		Groups: []GroupSeries{{Group: "g", OutPerSecond: Points{0, 0, 0}, Lag: Points{1, 1, 1}, InFlight: Points{2, 2, 2}, DeadLetters: Points{0, 0, 0}}}}
	empty := Series{Resolution: 10 * time.Second, InPerSecond: Points{}, OutPerSecond: Points{}}
	m, err := Merge([]Series{a, empty, b}, 360)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Start.Equal(t0) {
		t.Fatalf("start %s, want %s", m.Start, t0)
	}
	if want := (Points{1, 12, 3, 10}); !pointsEqual(m.InPerSecond, want) {
		t.Fatalf("in %v, want %v", m.InPerSecond, want)
	}
	if want := (Points{null, 1, 1, 0}); !pointsEqual(m.OutPerSecond, want) {
		t.Fatalf("out %v, want %v", m.OutPerSecond, want)
	}
	if len(m.Topics) != 2 || m.Topics[0].Topic != "audit" || m.Topics[1].Topic != "orders" {
		t.Fatalf("topics %+v", m.Topics)
	}
	if want := (Points{null, 0, 0, 0}); !pointsEqual(m.Topics[0].InPerSecond, want) {
		t.Fatalf("audit %v, want %v", m.Topics[0].InPerSecond, want)
	}
	if want := (Points{5, 6, 6, 1}); !pointsEqual(m.Groups[0].Lag, want) {
		t.Fatalf("lag %v, want %v", m.Groups[0].Lag, want)
	}
	// Capped: the newest points are kept.
	m, err = Merge([]Series{a, b}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Points{3, 10}); !pointsEqual(m.InPerSecond, want) || !m.Start.Equal(t0.Add(20*time.Second)) {
		t.Fatalf("capped: %v from %s, want %v from +20s", m.InPerSecond, m.Start, want)
	}
	if _, err := Merge([]Series{a, {Resolution: time.Second}}, 360); err == nil {
		t.Fatal("series at different resolutions merged")
	}
}

func TestPointsRoundTrip(t *testing.T) {
	b, err := json.Marshal(Points{null, 2.5, 0})
	if err != nil {
		t.Fatal(err)
	}
	var p Points
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	if !pointsEqual(p, Points{null, 2.5, 0}) {
		t.Fatalf("got %v", p)
	}
	if err := json.Unmarshal([]byte(`{"a":1}`), &p); err == nil {
		t.Fatal("an object read as points")
	}
}
