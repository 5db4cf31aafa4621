package meta

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// at is a point on the timeline the delivery tests share: t0 plus d, in the
// millisecond precision and UTC the store hands back.
func at(d time.Duration) time.Time {
	return time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC).Add(d)
}

func addTimers(tb testing.TB, s *Store, ts ...Timer) {
	tb.Helper()
	if err := s.AddTimers(context.Background(), ts); err != nil {
		tb.Fatalf("AddTimers(%d timers): %v", len(ts), err)
	}
}

func fireTimers(tb testing.TB, s *Store, offs ...int64) {
	tb.Helper()
	if err := s.FireTimers(context.Background(), offs); err != nil {
		tb.Fatalf("FireTimers(%d offsets): %v", len(offs), err)
	}
}

func dueTimers(tb testing.TB, s *Store, now time.Time, limit int) []Timer {
	tb.Helper()
	ts, err := s.DueTimers(context.Background(), now, limit)
	if err != nil {
		tb.Fatalf("DueTimers(%v, %d): %v", now, limit, err)
	}
	return ts
}

func pendingTimers(tb testing.TB, s *Store) int64 {
	tb.Helper()
	n, err := s.PendingTimers(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

func nextTimer(tb testing.TB, s *Store) (time.Time, bool) {
	tb.Helper()
	next, ok, err := s.NextTimer(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return next, ok
}

// storedTimers returns every row of the timers table, fired or not, by log
// offset, as offset -> fired.
func storedTimers(tb testing.TB, s *Store) map[int64]bool {
	tb.Helper()
	rows, err := s.r.Query(`SELECT log_offset, fired FROM timers`)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	out := make(map[int64]bool)
	for rows.Next() {
		var off int64
		var fired int
		if err := rows.Scan(&off, &fired); err != nil {
			tb.Fatal(err)
		}
		out[off] = fired == 1
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}

func timerOffsets(ts []Timer) []int64 {
	out := make([]int64, 0, len(ts))
	for _, t := range ts {
		out = append(out, t.LogOffset)
	}
	return out
}

// far is later than any timer of these tests.
var far = at(1000 * time.Hour)

func TestAddTimersIdempotent(t *testing.T) {
	tests := []struct {
		name  string
		calls [][]Timer
		want  []Timer // every unfired timer, as DueTimers orders them
	}{
		{
			name:  "same offset twice in one call",
			calls: [][]Timer{{{LogOffset: 7, DeliverAt: at(time.Second)}, {LogOffset: 7, DeliverAt: at(9 * time.Second)}}},
			want:  []Timer{{LogOffset: 7, DeliverAt: at(time.Second)}},
		},
		{
			name:  "same offset in a later call",
			calls: [][]Timer{{{LogOffset: 7, DeliverAt: at(time.Second)}}, {{LogOffset: 7, DeliverAt: at(9 * time.Second)}}},
			want:  []Timer{{LogOffset: 7, DeliverAt: at(time.Second)}},
		},
		{
			name:  "an earlier deliver_at does not win either",
			calls: [][]Timer{{{LogOffset: 7, DeliverAt: at(9 * time.Second)}}, {{LogOffset: 7, DeliverAt: at(time.Second)}}},
			want:  []Timer{{LogOffset: 7, DeliverAt: at(9 * time.Second)}},
		},
		{
			name: "replayed batch beside new timers",
			calls: [][]Timer{
				{{LogOffset: 1, DeliverAt: at(3 * time.Second)}, {LogOffset: 2, DeliverAt: at(2 * time.Second)}},
				{{LogOffset: 1, DeliverAt: at(time.Hour)}, {LogOffset: 2, DeliverAt: at(time.Hour)}, {LogOffset: 3, DeliverAt: at(time.Second)}},
			},
			want: []Timer{{LogOffset: 3, DeliverAt: at(time.Second)}, {LogOffset: 2, DeliverAt: at(2 * time.Second)}, {LogOffset: 1, DeliverAt: at(3 * time.Second)}},
		},
		{
			name:  "sub-millisecond part dropped",
			calls: [][]Timer{{{LogOffset: 4, DeliverAt: at(1500 * time.Microsecond)}}},
			want:  []Timer{{LogOffset: 4, DeliverAt: at(time.Millisecond)}},
		},
		{
			name:  "empty call",
			calls: [][]Timer{{}, nil},
			want:  nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, dbPath(t))
			for _, c := range tt.calls {
				addTimers(t, s, c...)
			}
			if got := dueTimers(t, s, far, 100); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("timers = %v, want %v", got, tt.want)
			}
			if got := pendingTimers(t, s); got != int64(len(tt.want)) {
				t.Errorf("PendingTimers = %d, want %d", got, len(tt.want))
			}
		})
	}
}

// TestAddTimersRejectsNegativeOffset: a bad offset must fail the call, not
// vanish as quietly as a replayed timer does.
func TestAddTimersRejectsNegativeOffset(t *testing.T) {
	s := openStore(t, dbPath(t))
	err := s.AddTimers(context.Background(), []Timer{{LogOffset: 1, DeliverAt: at(0)}, {LogOffset: -1, DeliverAt: at(0)}})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("AddTimers with a negative offset: err = %v, want ErrInvalid", err)
	}
	if got := pendingTimers(t, s); got != 0 {
		t.Errorf("PendingTimers after a failed batch = %d, want 0", got)
	}
}

func TestDueTimers(t *testing.T) {
	s := openStore(t, dbPath(t))
	addTimers(t, s,
		Timer{LogOffset: 10, DeliverAt: at(3 * time.Second)},
		Timer{LogOffset: 13, DeliverAt: at(2 * time.Second)},
		Timer{LogOffset: 11, DeliverAt: at(1 * time.Second)},
		Timer{LogOffset: 12, DeliverAt: at(2 * time.Second)},
		Timer{LogOffset: 5, DeliverAt: at(2 * time.Second)},
		Timer{LogOffset: 20, DeliverAt: at(10 * time.Second)},
		Timer{LogOffset: 21, DeliverAt: at(-time.Hour)}, // fired below: never due again
	)
	fireTimers(t, s, 21)
	var (
		t11 = Timer{LogOffset: 11, DeliverAt: at(1 * time.Second)}
		t5  = Timer{LogOffset: 5, DeliverAt: at(2 * time.Second)}
		t12 = Timer{LogOffset: 12, DeliverAt: at(2 * time.Second)}
		t13 = Timer{LogOffset: 13, DeliverAt: at(2 * time.Second)}
		t10 = Timer{LogOffset: 10, DeliverAt: at(3 * time.Second)}
		t20 = Timer{LogOffset: 20, DeliverAt: at(10 * time.Second)}
	)
	tests := []struct {
		name  string
		now   time.Time
		limit int
		want  []Timer
	}{
		{"before every timer", at(0), 100, nil},
		{"one ms before the first", at(999 * time.Millisecond), 100, nil},
		{"exactly at the first", at(time.Second), 100, []Timer{t11}},
		{"one ms before a tie", at(1999 * time.Millisecond), 100, []Timer{t11}},
		{"exactly at a tie, ties by offset", at(2 * time.Second), 100, []Timer{t11, t5, t12, t13}},
		{"now's sub-millisecond part dropped", at(2*time.Second + 999*time.Microsecond), 100, []Timer{t11, t5, t12, t13}},
		{"limit cuts earliest first", far, 2, []Timer{t11, t5}},
		{"limit inside a tie", far, 3, []Timer{t11, t5, t12}},
		{"limit 1", far, 1, []Timer{t11}},
		{"limit equal to the count", far, 6, []Timer{t11, t5, t12, t13, t10, t20}},
		{"everything", far, 100, []Timer{t11, t5, t12, t13, t10, t20}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := dueTimers(t, s, tt.now, tt.limit); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("DueTimers(%v, %d) = %v\nwant %v", tt.now, tt.limit, got, tt.want)
			}
		})
	}
}

// TestTimerLimitInvalid: SQLite reads LIMIT -1 as no limit, so a bad limit
// would return every timer rather than fail.
func TestTimerLimitInvalid(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, dbPath(t))
	addTimers(t, s, Timer{LogOffset: 1, DeliverAt: at(0)}, Timer{LogOffset: 2, DeliverAt: at(0)})
	for _, limit := range []int{0, -1} {
		t.Run(fmt.Sprintf("limit=%d", limit), func(t *testing.T) {
			if ts, err := s.DueTimers(ctx, far, limit); !errors.Is(err, ErrInvalid) {
				t.Errorf("DueTimers = %v, %v; want ErrInvalid", ts, err)
			}
			if ts, err := s.PendingTimersBefore(ctx, 100, limit); !errors.Is(err, ErrInvalid) {
				t.Errorf("PendingTimersBefore = %v, %v; want ErrInvalid", ts, err)
			}
		})
	}
}

func TestNextTimer(t *testing.T) {
	tests := []struct {
		name   string
		add    []Timer
		fire   []int64
		want   time.Time
		wantOK bool
	}{
		{name: "empty store"},
		{name: "one timer", add: []Timer{{LogOffset: 1, DeliverAt: at(time.Minute)}}, want: at(time.Minute), wantOK: true},
		{
			name:   "earliest of several, not lowest offset",
			add:    []Timer{{LogOffset: 1, DeliverAt: at(time.Minute)}, {LogOffset: 2, DeliverAt: at(time.Second)}, {LogOffset: 3, DeliverAt: at(time.Hour)}},
			want:   at(time.Second),
			wantOK: true,
		},
		{
			name:   "earliest fired: the next one",
			add:    []Timer{{LogOffset: 1, DeliverAt: at(time.Minute)}, {LogOffset: 2, DeliverAt: at(time.Second)}, {LogOffset: 3, DeliverAt: at(time.Hour)}},
			fire:   []int64{2},
			want:   at(time.Minute),
			wantOK: true,
		},
		{
			name: "all fired",
			add:  []Timer{{LogOffset: 1, DeliverAt: at(time.Minute)}, {LogOffset: 2, DeliverAt: at(time.Second)}},
			fire: []int64{1, 2},
		},
		{
			name:   "already due still counts",
			add:    []Timer{{LogOffset: 1, DeliverAt: at(-time.Hour)}},
			want:   at(-time.Hour),
			wantOK: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, dbPath(t))
			addTimers(t, s, tt.add...)
			fireTimers(t, s, tt.fire...)
			got, ok := nextTimer(t, s)
			if ok != tt.wantOK || !got.Equal(tt.want) {
				t.Errorf("NextTimer = %v, %t; want %v, %t", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// TestFireTimers checks that a fired timer is gone from every read, stays
// gone when dispatch replays its record, and that firing is idempotent.
func TestFireTimers(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, dbPath(t))
	all := []Timer{{LogOffset: 0, DeliverAt: at(5 * time.Second)}, {LogOffset: 1, DeliverAt: at(1 * time.Second)}, {LogOffset: 2, DeliverAt: at(2 * time.Second)}, {LogOffset: 3, DeliverAt: at(3 * time.Second)}, {LogOffset: 4, DeliverAt: at(4 * time.Second)}}
	addTimers(t, s, all...)

	steps := []struct {
		name     string
		run      func(t *testing.T)
		wantDue  []int64 // unfired, in due order
		wantNext time.Time
	}{
		{"before firing", func(*testing.T) {}, []int64{1, 2, 3, 4, 0}, at(time.Second)},
		{"fire the earliest and one more", func(t *testing.T) { fireTimers(t, s, 1, 3) }, []int64{2, 4, 0}, at(2 * time.Second)},
		{"fire again", func(t *testing.T) { fireTimers(t, s, 1, 3) }, []int64{2, 4, 0}, at(2 * time.Second)},
		{"fire an unknown offset", func(t *testing.T) { fireTimers(t, s, 99) }, []int64{2, 4, 0}, at(2 * time.Second)},
		{"fire nothing", func(t *testing.T) {
			if err := s.FireTimers(ctx, nil); err != nil {
				t.Fatal(err)
			}
		}, []int64{2, 4, 0}, at(2 * time.Second)},
		{"replay does not revive", func(t *testing.T) { addTimers(t, s, all...) }, []int64{2, 4, 0}, at(2 * time.Second)},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.run(t)
			if got := timerOffsets(dueTimers(t, s, far, 100)); !slices.Equal(got, st.wantDue) {
				t.Errorf("due = %v, want %v", got, st.wantDue)
			}
			if got := pendingTimers(t, s); got != int64(len(st.wantDue)) {
				t.Errorf("PendingTimers = %d, want %d", got, len(st.wantDue))
			}
			pending, err := s.PendingTimersBefore(ctx, 100, 100)
			if err != nil {
				t.Fatal(err)
			}
			want := slices.Sorted(slices.Values(st.wantDue))
			if got := timerOffsets(pending); !slices.Equal(got, want) {
				t.Errorf("PendingTimersBefore = %v, want %v", got, want)
			}
			if next, ok := nextTimer(t, s); !ok || !next.Equal(st.wantNext) {
				t.Errorf("NextTimer = %v, %t; want %v", next, ok, st.wantNext)
			}
		})
	}
}

func TestPendingTimersBefore(t *testing.T) {
	s := openStore(t, dbPath(t))
	// Due times run against offsets so that ordering by time would show.
	addTimers(t, s,
		Timer{LogOffset: 20, DeliverAt: at(1 * time.Second)},
		Timer{LogOffset: 15, DeliverAt: at(2 * time.Second)},
		Timer{LogOffset: 10, DeliverAt: at(3 * time.Second)},
		Timer{LogOffset: 5, DeliverAt: at(4 * time.Second)},
		Timer{LogOffset: 0, DeliverAt: at(5 * time.Second)},
	)
	fireTimers(t, s, 10)
	tests := []struct {
		name   string
		logOff int64
		limit  int
		want   []Timer
	}{
		{"below everything", 0, 100, nil},
		{"bound is exclusive", 5, 100, []Timer{{LogOffset: 0, DeliverAt: at(5 * time.Second)}}},
		{"just past a timer", 6, 100, []Timer{{LogOffset: 0, DeliverAt: at(5 * time.Second)}, {LogOffset: 5, DeliverAt: at(4 * time.Second)}}},
		{"fired timer skipped", 16, 100, []Timer{{LogOffset: 0, DeliverAt: at(5 * time.Second)}, {LogOffset: 5, DeliverAt: at(4 * time.Second)}, {LogOffset: 15, DeliverAt: at(2 * time.Second)}}},
		{"all, by offset", 1 << 62, 100, []Timer{{LogOffset: 0, DeliverAt: at(5 * time.Second)}, {LogOffset: 5, DeliverAt: at(4 * time.Second)}, {LogOffset: 15, DeliverAt: at(2 * time.Second)}, {LogOffset: 20, DeliverAt: at(time.Second)}}},
		{"limit keeps the lowest offsets", 1 << 62, 2, []Timer{{LogOffset: 0, DeliverAt: at(5 * time.Second)}, {LogOffset: 5, DeliverAt: at(4 * time.Second)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.PendingTimersBefore(context.Background(), tt.logOff, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("PendingTimersBefore(%d, %d) = %v\nwant %v", tt.logOff, tt.limit, got, tt.want)
			}
		})
	}
}

// TestPurgeFiredTimers runs purges in order against one store: fired rows
// below the offset go, fired rows at or above it and unfired rows stay.
func TestPurgeFiredTimers(t *testing.T) {
	s := openStore(t, dbPath(t))
	for off := range int64(10) {
		addTimers(t, s, Timer{LogOffset: off, DeliverAt: at(time.Duration(off) * time.Second)})
	}
	fireTimers(t, s, 0, 1, 2, 5, 8)
	steps := []struct {
		logOff int64
		wantN  int64
		want   map[int64]bool // offset -> fired
	}{
		{0, 0, map[int64]bool{0: true, 1: true, 2: true, 3: false, 4: false, 5: true, 6: false, 7: false, 8: true, 9: false}},
		{5, 3, map[int64]bool{3: false, 4: false, 5: true, 6: false, 7: false, 8: true, 9: false}},
		{5, 0, map[int64]bool{3: false, 4: false, 5: true, 6: false, 7: false, 8: true, 9: false}},
		{6, 1, map[int64]bool{3: false, 4: false, 6: false, 7: false, 8: true, 9: false}},
		{1 << 62, 1, map[int64]bool{3: false, 4: false, 6: false, 7: false, 9: false}},
	}
	for _, st := range steps {
		t.Run(fmt.Sprintf("below=%d", st.logOff), func(t *testing.T) {
			n, err := s.PurgeFiredTimers(context.Background(), st.logOff)
			if err != nil {
				t.Fatal(err)
			}
			if n != st.wantN {
				t.Errorf("purged %d, want %d", n, st.wantN)
			}
			if got := storedTimers(t, s); !reflect.DeepEqual(got, st.want) {
				t.Errorf("rows = %v\nwant %v", got, st.want)
			}
		})
	}
	if got := pendingTimers(t, s); got != 5 {
		t.Errorf("PendingTimers = %d, want 5", got)
	}
}

// TestTimersChunked adds and fires more rows in one call than one statement
// carries (rowChunk), at and around the chunk boundaries.
func TestTimersChunked(t *testing.T) {
	tests := []struct{ add, fire int }{
		{add: rowChunk, fire: rowChunk},
		{add: rowChunk + 1, fire: 1},
		{add: 2*rowChunk + 1, fire: rowChunk + 1},
		{add: 1000, fire: 700},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("add=%d/fire=%d", tt.add, tt.fire), func(t *testing.T) {
			s := openStore(t, dbPath(t))
			ts := make([]Timer, tt.add)
			for i := range ts {
				// Offsets descend while due times ascend, so order is checked too.
				ts[i] = Timer{LogOffset: int64(10 * (tt.add - i)), DeliverAt: at(time.Duration(i) * time.Millisecond)}
			}
			addTimers(t, s, ts...)
			if got := pendingTimers(t, s); got != int64(tt.add) {
				t.Fatalf("PendingTimers after add = %d, want %d", got, tt.add)
			}
			due := dueTimers(t, s, far, 2*tt.add)
			if !reflect.DeepEqual(due, ts) {
				t.Fatalf("DueTimers returned %d timers, not the %d added in due order", len(due), len(ts))
			}

			// Fire every other timer from the end of the list, then what
			// is still needed from the start: a spread, not one range.
			var fire []int64
			left := make(map[int64]bool)
			for i := len(ts) - 1; i >= 0; i -= 2 {
				if len(fire) < tt.fire {
					fire = append(fire, ts[i].LogOffset)
				}
			}
			for i := 0; len(fire) < tt.fire; i += 2 {
				fire = append(fire, ts[i].LogOffset)
			}
			fired := make(map[int64]bool)
			for _, o := range fire {
				fired[o] = true
			}
			var wantDue []Timer
			for _, tm := range ts {
				if !fired[tm.LogOffset] {
					wantDue = append(wantDue, tm)
					left[tm.LogOffset] = true
				}
			}
			fireTimers(t, s, fire...)
			if got := pendingTimers(t, s); got != int64(tt.add-tt.fire) {
				t.Errorf("PendingTimers after fire = %d, want %d", got, tt.add-tt.fire)
			}
			if got := dueTimers(t, s, far, 2*tt.add); !reflect.DeepEqual(got, wantDue) {
				t.Errorf("DueTimers after fire: %d timers, want %d (%v...)", len(got), len(wantDue), timerOffsets(got)[:min(5, len(got))])
			}

			// Replaying all of them in one call revives none.
			addTimers(t, s, ts...)
			if got := pendingTimers(t, s); got != int64(tt.add-tt.fire) {
				t.Errorf("PendingTimers after replay = %d, want %d", got, tt.add-tt.fire)
			}
			rows := storedTimers(t, s)
			if len(rows) != tt.add {
				t.Errorf("%d rows after replay, want %d", len(rows), tt.add)
			}
			for off, f := range rows {
				if f == left[off] {
					t.Errorf("timer %d: fired = %t, want %t", off, f, !left[off])
				}
			}
		})
	}
}

func attempts(tb testing.TB, s *Store, msgID string) []Attempt {
	tb.Helper()
	as, err := s.Attempts(context.Background(), msgID)
	if err != nil {
		tb.Fatal(err)
	}
	return as
}

func attemptNumbers(as []Attempt) []int {
	out := make([]int, 0, len(as))
	for _, a := range as {
		out = append(out, a.Attempt)
	}
	return out
}

func TestAttempts(t *testing.T) {
	ctx := context.Background()
	a := func(msg string, n int, d time.Duration) Attempt {
		return Attempt{MsgID: msg, Group: "billing", Subscription: "sub-1", Attempt: n, At: at(d), Outcome: "retry", Status: 503}
	}
	many := make([]Attempt, 2*rowChunk+44)
	for i := range many {
		many[i] = a("m", i+1, time.Second) // one millisecond: insertion order alone
	}
	tests := []struct {
		name  string
		calls [][]Attempt
		msg   string
		want  []int // attempt numbers in the order returned
	}{
		{"none", nil, "m", nil},
		{"by time", [][]Attempt{{a("m", 3, 3*time.Second), a("m", 1, time.Second), a("m", 2, 2*time.Second)}}, "m", []int{1, 2, 3}},
		{"same time in insertion order", [][]Attempt{{a("m", 3, time.Second), a("m", 1, time.Second), a("m", 2, time.Second)}}, "m", []int{3, 1, 2}},
		{"same time across calls", [][]Attempt{{a("m", 2, time.Second)}, {a("m", 1, time.Second)}}, "m", []int{2, 1}},
		{"later call, earlier time", [][]Attempt{{a("m", 2, 2*time.Second)}, {a("m", 1, time.Second)}}, "m", []int{1, 2}},
		{"only the message asked for", [][]Attempt{{a("m", 1, time.Second), a("other", 7, 0), a("m", 2, 2*time.Second)}}, "m", []int{1, 2}},
		{"more than a chunk in one call", [][]Attempt{many}, "m", attemptNumbers(many)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, dbPath(t))
			for _, c := range tt.calls {
				if err := s.AddAttempts(ctx, c); err != nil {
					t.Fatal(err)
				}
			}
			if got := attemptNumbers(attempts(t, s, tt.msg)); !slices.Equal(got, tt.want) {
				t.Errorf("attempts = %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestAttemptRoundTrip(t *testing.T) {
	s := openStore(t, dbPath(t))
	in := []Attempt{
		{MsgID: "m", Group: "billing", Subscription: "sub-1", Attempt: 1, At: at(time.Second), Outcome: "retry", Status: 503, Error: "upstream said no", Latency: 1500 * time.Microsecond},
		{MsgID: "m", Group: "billing", Subscription: "sub-1", Attempt: 2, At: at(2*time.Second + 700*time.Microsecond), Outcome: "delivered", Status: 200, Latency: 2*time.Millisecond + 999},
		{MsgID: "m", Group: "search", Subscription: "", Attempt: 1, At: at(3 * time.Second), Outcome: "acked"},
	}
	if err := s.AddAttempts(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(in)
	want[1].At = at(2 * time.Second)       // milliseconds
	want[1].Latency = 2 * time.Millisecond // microseconds
	if got := attempts(t, s, "m"); !reflect.DeepEqual(got, want) {
		t.Errorf("Attempts =\n%+v\nwant\n%+v", got, want)
	}
}

func TestAddAttemptsInvalidRejectsBatch(t *testing.T) {
	ok := Attempt{MsgID: "m", Group: "g", Subscription: "s", Attempt: 1, At: at(0), Outcome: "delivered"}
	bad := map[string]func(*Attempt){
		"unknown outcome": func(a *Attempt) { a.Outcome = "exploded" },
		"attempt zero":    func(a *Attempt) { a.Attempt = 0 },
	}
	for name, spoil := range bad {
		t.Run(name, func(t *testing.T) {
			s := openStore(t, dbPath(t))
			b := ok
			spoil(&b)
			// The bad row sits in the second chunk: the first must not stay.
			batch := slices.Repeat([]Attempt{ok}, rowChunk+1)
			batch = append(batch, b)
			if err := s.AddAttempts(context.Background(), batch); err == nil {
				t.Fatal("AddAttempts with a bad row succeeded")
			}
			if got := attempts(t, s, "m"); len(got) != 0 {
				t.Errorf("%d attempts kept from a failed batch", len(got))
			}
		})
	}
}

func TestAttemptsCapped(t *testing.T) {
	s := openStore(t, dbPath(t))
	as := make([]Attempt, maxAttempts+5)
	for i := range as {
		as[i] = Attempt{MsgID: "loop", Group: "g", Subscription: "s", Attempt: i + 1, At: at(time.Duration(i) * time.Millisecond), Outcome: "retry"}
	}
	if err := s.AddAttempts(context.Background(), as); err != nil {
		t.Fatal(err)
	}
	got := attempts(t, s, "loop")
	if len(got) != maxAttempts {
		t.Fatalf("Attempts returned %d, want %d", len(got), maxAttempts)
	}
	if got[0].Attempt != 1 || got[len(got)-1].Attempt != maxAttempts {
		t.Errorf("Attempts returned attempts %d..%d, want the first: 1..%d", got[0].Attempt, got[len(got)-1].Attempt, maxAttempts)
	}
}

func TestPurgeAttempts(t *testing.T) {
	tests := []struct {
		name   string
		before time.Time
		want   []int
	}{
		{"before all", at(0), []int{1, 2, 3}},
		{"one ms past the first", at(time.Millisecond), []int{2, 3}},
		{"bound is exclusive", at(time.Second), []int{2, 3}},
		{"one ms past the second", at(time.Second + time.Millisecond), []int{3}},
		{"all", far, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s := openStore(t, dbPath(t))
			var as []Attempt
			for i, d := range []time.Duration{0, time.Second, 2 * time.Second} {
				as = append(as, Attempt{MsgID: "m", Group: "g", Subscription: "s", Attempt: i + 1, At: at(d), Outcome: "retry"})
			}
			if err := s.AddAttempts(ctx, as); err != nil {
				t.Fatal(err)
			}
			if err := s.PurgeAttempts(ctx, tt.before); err != nil {
				t.Fatal(err)
			}
			if got := attemptNumbers(attempts(t, s, "m")); !slices.Equal(got, tt.want) {
				t.Errorf("after PurgeAttempts(%v): %v, want %v", tt.before, got, tt.want)
			}
		})
	}
}

func offsetSet(offs ...int64) map[int64]bool {
	m := make(map[int64]bool, len(offs))
	for _, o := range offs {
		m[o] = true
	}
	return m
}

func TestDeadLetters(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, dbPath(t))
	for _, call := range [][]int64{{3, 5, 7}, {3, 5, 7}, {5, 9}, {}} {
		if err := s.RemoveDeadLetters(ctx, "billing", call); err != nil {
			t.Fatalf("RemoveDeadLetters(%v): %v", call, err)
		}
	}
	if err := s.RemoveDeadLetters(ctx, "search", []int64{4}); err != nil {
		t.Fatal(err)
	}
	big := make([]int64, 2*rowChunk+3)
	for i := range big {
		big[i] = int64(i)
	}
	if err := s.RemoveDeadLetters(ctx, "big", big); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		group    string
		from, to int64
		want     map[int64]bool
	}{
		{"below", "billing", 0, 3, offsetSet()},
		{"from is inclusive", "billing", 3, 4, offsetSet(3)},
		{"to is exclusive", "billing", 3, 7, offsetSet(3, 5)},
		{"middle", "billing", 4, 10, offsetSet(5, 7, 9)},
		{"all, once each", "billing", 0, 1 << 62, offsetSet(3, 5, 7, 9)},
		{"empty range", "billing", 7, 7, offsetSet()},
		{"reversed range", "billing", 10, 0, offsetSet()},
		{"other group", "search", 0, 100, offsetSet(4)},
		{"unknown group", "nobody", 0, 100, offsetSet()},
		{"more than a chunk", "big", 0, 1 << 62, offsetSet(big...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.RemovedDeadLetters(ctx, tt.group, tt.from, tt.to)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("RemovedDeadLetters(%s, %d, %d) = %v, want %v", tt.group, tt.from, tt.to, got, tt.want)
			}
		})
	}
}

func orderedRetries(tb testing.TB, s *Store, sub string) map[int]OrderedRetry {
	tb.Helper()
	got, err := s.OrderedRetries(context.Background(), sub)
	if err != nil {
		tb.Fatal(err)
	}
	return got
}

// TestOrderedRetries runs its steps in order against one store.
func TestOrderedRetries(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, dbPath(t))
	for _, id := range []string{"sub-a", "sub-b"} {
		if _, err := s.CreateSubscription(ctx, Subscription{ID: id, Group: "g-" + id, Topic: "orders", Ordered: true}); err != nil {
			t.Fatal(err)
		}
	}
	a0 := OrderedRetry{Subscription: "sub-a", Queue: 0, QueueOffset: 41, Attempt: 2, NextAt: at(time.Minute)}
	a3 := OrderedRetry{Subscription: "sub-a", Queue: 3, QueueOffset: 7, Attempt: 5, NextAt: at(time.Hour)}
	b0 := OrderedRetry{Subscription: "sub-b", Queue: 0, QueueOffset: 9, Attempt: 1, NextAt: at(time.Second)}
	a0next := OrderedRetry{Subscription: "sub-a", Queue: 0, QueueOffset: 42, Attempt: 1, NextAt: at(2*time.Minute + 300*time.Microsecond)}
	a0nextStored := a0next
	a0nextStored.NextAt = at(2 * time.Minute)

	set := func(r OrderedRetry) func(t *testing.T) {
		return func(t *testing.T) {
			if err := s.SetOrderedRetry(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
	}
	unblock := func(sub string, q int) func(t *testing.T) {
		return func(t *testing.T) {
			if err := s.ClearOrderedRetry(ctx, sub, q); err != nil {
				t.Fatal(err)
			}
		}
	}
	steps := []struct {
		name  string
		run   func(t *testing.T)
		wantA map[int]OrderedRetry
		wantB map[int]OrderedRetry
	}{
		{"none yet", func(*testing.T) {}, map[int]OrderedRetry{}, map[int]OrderedRetry{}},
		{"set", func(t *testing.T) { set(a0)(t); set(a3)(t); set(b0)(t) }, map[int]OrderedRetry{0: a0, 3: a3}, map[int]OrderedRetry{0: b0}},
		{"replace", set(a0next), map[int]OrderedRetry{0: a0nextStored, 3: a3}, map[int]OrderedRetry{0: b0}},
		{"clear", unblock("sub-a", 3), map[int]OrderedRetry{0: a0nextStored}, map[int]OrderedRetry{0: b0}},
		{"clear again", unblock("sub-a", 3), map[int]OrderedRetry{0: a0nextStored}, map[int]OrderedRetry{0: b0}},
		{"clear an unknown queue", unblock("nobody", 0), map[int]OrderedRetry{0: a0nextStored}, map[int]OrderedRetry{0: b0}},
		{"set after clear", set(a3), map[int]OrderedRetry{0: a0nextStored, 3: a3}, map[int]OrderedRetry{0: b0}},
		{"delete subscription clears its blocks only", func(t *testing.T) {
			if err := s.DeleteSubscription(ctx, "sub-a"); err != nil {
				t.Fatal(err)
			}
		}, map[int]OrderedRetry{}, map[int]OrderedRetry{0: b0}},
		{"failed delete leaves blocks", func(t *testing.T) {
			set(a0)(t)
			if err := s.DeleteSubscription(ctx, "sub-a"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("second delete: %v, want ErrNotFound", err)
			}
		}, map[int]OrderedRetry{0: a0}, map[int]OrderedRetry{0: b0}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.run(t)
			if got := orderedRetries(t, s, "sub-a"); !reflect.DeepEqual(got, st.wantA) {
				t.Errorf("sub-a = %+v\nwant %+v", got, st.wantA)
			}
			if got := orderedRetries(t, s, "sub-b"); !reflect.DeepEqual(got, st.wantB) {
				t.Errorf("sub-b = %+v\nwant %+v", got, st.wantB)
			}
		})
	}
}

func subscription(tb testing.TB, s *Store, id string) Subscription {
	tb.Helper()
	sub, err := s.Subscription(context.Background(), id)
	if err != nil {
		tb.Fatal(err)
	}
	return sub
}

// nullColumns reports whether a subscription's url and secret are SQL NULL.
func nullColumns(tb testing.TB, s *Store, id string) (url, secret bool) {
	tb.Helper()
	if err := s.r.QueryRow(`SELECT url IS NULL, secret IS NULL FROM subscriptions WHERE id = ?`, id).Scan(&url, &secret); err != nil {
		tb.Fatal(err)
	}
	return url, secret
}

// TestSubscriptionCRUD runs its steps in order against one store: each step
// sees what the previous ones left.
func TestSubscriptionCRUD(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	s := openStore(t, dbPath(t), withClock(clk))
	t0 := clk.Now()
	t1 := t0.Add(time.Minute)

	push := Subscription{ID: "sub-push", Group: "billing", Topic: "orders", URL: "https://example.test/hook",
		Filter: "created || paid", Ordered: true, Config: `{"max_retries":3}`, Secret: "whsec_abc", State: "active"}
	pushStored := push
	pushStored.CreatedAt, pushStored.UpdatedAt = t0, t0
	pull := Subscription{ID: "sub-pull", Group: "search", Topic: "orders", Filter: "*", Config: `{}`, State: "paused"}
	pullStored := pull
	pullStored.CreatedAt, pullStored.UpdatedAt = t0, t0
	var pushUpdated Subscription

	ids := func(subs []Subscription) []string {
		var out []string
		for _, sub := range subs {
			out = append(out, sub.ID)
		}
		return out
	}

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"create push", func(t *testing.T) {
			got, err := s.CreateSubscription(ctx, push)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, pushStored) {
				t.Errorf("CreateSubscription = %+v\nwant %+v", got, pushStored)
			}
			if got := subscription(t, s, push.ID); !reflect.DeepEqual(got, pushStored) {
				t.Errorf("Subscription = %+v\nwant %+v", got, pushStored)
			}
			if u, sec := nullColumns(t, s, push.ID); u || sec {
				t.Errorf("push url, secret NULL = %t, %t; want stored", u, sec)
			}
		}},
		{"create pull: url and secret NULL, read back as empty", func(t *testing.T) {
			got, err := s.CreateSubscription(ctx, pull)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, pullStored) {
				t.Errorf("CreateSubscription = %+v\nwant %+v", got, pullStored)
			}
			if got := subscription(t, s, pull.ID); !reflect.DeepEqual(got, pullStored) {
				t.Errorf("Subscription = %+v\nwant %+v", got, pullStored)
			}
			if u, sec := nullColumns(t, s, pull.ID); !u || !sec {
				t.Errorf("pull url, secret NULL = %t, %t; want NULL", u, sec)
			}
		}},
		{"create duplicate group and topic", func(t *testing.T) {
			dup := push
			dup.ID, dup.URL = "sub-other", "https://elsewhere.test/"
			if _, err := s.CreateSubscription(ctx, dup); !errors.Is(err, ErrExists) {
				t.Fatalf("err = %v, want ErrExists", err)
			}
			if _, err := s.Subscription(ctx, dup.ID); !errors.Is(err, ErrNotFound) {
				t.Errorf("duplicate stored anyway: %v", err)
			}
			if got := subscription(t, s, push.ID); !reflect.DeepEqual(got, pushStored) {
				t.Errorf("original changed to %+v", got)
			}
		}},
		{"create duplicate id", func(t *testing.T) {
			dup := Subscription{ID: push.ID, Group: "audit", Topic: "payments"}
			if _, err := s.CreateSubscription(ctx, dup); !errors.Is(err, ErrExists) {
				t.Fatalf("err = %v, want ErrExists", err)
			}
			if got := subscription(t, s, push.ID); !reflect.DeepEqual(got, pushStored) {
				t.Errorf("original changed to %+v", got)
			}
		}},
		{"create invalid", func(t *testing.T) {
			for _, sub := range []Subscription{
				{ID: "", Group: "g", Topic: "t"},
				{ID: "x", Group: "", Topic: "t"},
				{ID: "x", Group: "g", Topic: ""},
				{ID: "x", Group: "g\x00", Topic: "t"},
			} {
				if _, err := s.CreateSubscription(ctx, sub); !errors.Is(err, ErrInvalid) {
					t.Errorf("CreateSubscription(%+v) err = %v, want ErrInvalid", sub, err)
				}
			}
			for _, sub := range []Subscription{
				{ID: "x", Group: "g", Topic: "t", Config: `[1]`},
				{ID: "x", Group: "g", Topic: "t", Config: `{`},
				{ID: "x", Group: "g", Topic: "t", State: "asleep"},
			} {
				if _, err := s.CreateSubscription(ctx, sub); err == nil {
					t.Errorf("CreateSubscription(%+v) succeeded", sub)
				}
			}
			if _, err := s.Subscription(ctx, "x"); !errors.Is(err, ErrNotFound) {
				t.Errorf("invalid subscription stored: %v", err)
			}
		}},
		{"create with zero settings takes the schema defaults", func(t *testing.T) {
			got, err := s.CreateSubscription(ctx, Subscription{ID: "sub-bare", Group: "audit", Topic: "payments"})
			if err != nil {
				t.Fatal(err)
			}
			want := Subscription{ID: "sub-bare", Group: "audit", Topic: "payments", Filter: "*", Config: "{}", State: "active", CreatedAt: t0, UpdatedAt: t0}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("CreateSubscription = %+v\nwant %+v", got, want)
			}
			if got := subscription(t, s, "sub-bare"); !reflect.DeepEqual(got, want) {
				t.Errorf("Subscription = %+v\nwant %+v", got, want)
			}
		}},
		{"get unknown", func(t *testing.T) {
			if _, err := s.Subscription(ctx, "nope"); !errors.Is(err, ErrNotFound) {
				t.Errorf("err = %v, want ErrNotFound", err)
			}
		}},
		{"list by group then topic", func(t *testing.T) {
			if _, err := s.CreateSubscription(ctx, Subscription{ID: "sub-billing-audit", Group: "billing", Topic: "audit"}); err != nil {
				t.Fatal(err)
			}
			subs, err := s.Subscriptions(ctx)
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"sub-bare", "sub-billing-audit", "sub-push", "sub-pull"} // audit, billing/audit, billing/orders, search
			if got := ids(subs); !slices.Equal(got, want) {
				t.Errorf("Subscriptions = %v, want %v", got, want)
			}
			if !reflect.DeepEqual(subs[2], pushStored) || !reflect.DeepEqual(subs[3], pullStored) {
				t.Errorf("listed %+v, %+v; want %+v, %+v", subs[2], subs[3], pushStored, pullStored)
			}
		}},
		{"update", func(t *testing.T) {
			clk.Advance(time.Minute)
			// Group, topic and CreatedAt cannot change: what the caller
			// passes for them is ignored, and the result says so.
			in := Subscription{ID: push.ID, Group: "ignored", URL: "https://example.test/v2", Filter: "paid",
				Config: `{"max_retries":9}`, Secret: "whsec_new", State: "disabled", CreatedAt: t1.Add(time.Hour)}
			got, err := s.UpdateSubscription(ctx, in)
			if err != nil {
				t.Fatal(err)
			}
			pushUpdated = Subscription{ID: push.ID, Group: push.Group, Topic: push.Topic, URL: in.URL, Filter: in.Filter,
				Ordered: false, Config: in.Config, Secret: in.Secret, State: in.State, CreatedAt: t0, UpdatedAt: t1}
			if !reflect.DeepEqual(got, pushUpdated) {
				t.Errorf("UpdateSubscription = %+v\nwant %+v", got, pushUpdated)
			}
			if got := subscription(t, s, push.ID); !reflect.DeepEqual(got, pushUpdated) {
				t.Errorf("Subscription = %+v\nwant %+v", got, pushUpdated)
			}
		}},
		{"update to pull stores NULL", func(t *testing.T) {
			in := pushUpdated
			in.URL, in.Secret = "", ""
			got, err := s.UpdateSubscription(ctx, in)
			if err != nil {
				t.Fatal(err)
			}
			if got.URL != "" || got.Secret != "" {
				t.Errorf("UpdateSubscription = %+v, want empty url and secret", got)
			}
			if u, sec := nullColumns(t, s, push.ID); !u || !sec {
				t.Errorf("url, secret NULL = %t, %t; want NULL", u, sec)
			}
			// Back to push for the steps after.
			if pushUpdated, err = s.UpdateSubscription(ctx, pushUpdated); err != nil {
				t.Fatal(err)
			}
		}},
		{"update unknown", func(t *testing.T) {
			if _, err := s.UpdateSubscription(ctx, Subscription{ID: "nope", Group: "g", Topic: "t"}); !errors.Is(err, ErrNotFound) {
				t.Errorf("err = %v, want ErrNotFound", err)
			}
			if _, err := s.Subscription(ctx, "nope"); !errors.Is(err, ErrNotFound) {
				t.Errorf("update created it: %v", err)
			}
		}},
		{"update invalid changes nothing", func(t *testing.T) {
			bad := pushUpdated
			bad.State = "asleep"
			_, err := s.UpdateSubscription(ctx, bad)
			if err == nil || errors.Is(err, ErrNotFound) {
				t.Fatalf("err = %v, want a constraint error", err)
			}
			if got := subscription(t, s, push.ID); !reflect.DeepEqual(got, pushUpdated) {
				t.Errorf("Subscription = %+v\nwant %+v", got, pushUpdated)
			}
		}},
		{"delete", func(t *testing.T) {
			if err := s.DeleteSubscription(ctx, push.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Subscription(ctx, push.ID); !errors.Is(err, ErrNotFound) {
				t.Errorf("after delete: err = %v, want ErrNotFound", err)
			}
			if err := s.DeleteSubscription(ctx, push.ID); !errors.Is(err, ErrNotFound) {
				t.Errorf("second delete: err = %v, want ErrNotFound", err)
			}
			if got := subscription(t, s, pull.ID); !reflect.DeepEqual(got, pullStored) {
				t.Errorf("delete touched another subscription: %+v", got)
			}
		}},
		{"group may subscribe again after delete", func(t *testing.T) {
			again := push
			again.ID = "sub-push-2"
			if _, err := s.CreateSubscription(ctx, again); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, st := range steps {
		if !t.Run(st.name, st.run) {
			t.FailNow() // later steps build on this one
		}
	}
}

// deliveryState is every read of the delivery tables, for comparing a store
// before and after a reopen.
type deliveryState struct {
	Due       []Timer
	Pending   int64
	Next      time.Time
	Before    []Timer
	Rows      map[int64]bool
	Attempts  []Attempt
	Removed   map[int64]bool
	Retries   map[int]OrderedRetry
	Subs      []Subscription
	SubsByID  Subscription
	SchemaVer int
}

func readDeliveryState(tb testing.TB, s *Store) deliveryState {
	tb.Helper()
	ctx := context.Background()
	var st deliveryState
	var err error
	st.Due = dueTimers(tb, s, far, 100)
	st.Pending = pendingTimers(tb, s)
	st.Next, _ = nextTimer(tb, s)
	if st.Before, err = s.PendingTimersBefore(ctx, 1<<62, 100); err != nil {
		tb.Fatal(err)
	}
	st.Rows = storedTimers(tb, s)
	st.Attempts = attempts(tb, s, "m1")
	if st.Removed, err = s.RemovedDeadLetters(ctx, "billing", 0, 1<<62); err != nil {
		tb.Fatal(err)
	}
	st.Retries = orderedRetries(tb, s, "sub-1")
	if st.Subs, err = s.Subscriptions(ctx); err != nil {
		tb.Fatal(err)
	}
	st.SubsByID = subscription(tb, s, "sub-1")
	if st.SchemaVer, err = s.SchemaVersion(ctx); err != nil {
		tb.Fatal(err)
	}
	return st
}

func TestDeliveryReopen(t *testing.T) {
	ctx := context.Background()
	path := dbPath(t)
	clk := newClock()
	s := openStore(t, path, withClock(clk))

	addTimers(t, s, Timer{LogOffset: 100, DeliverAt: at(time.Second)}, Timer{LogOffset: 200, DeliverAt: at(2 * time.Second)}, Timer{LogOffset: 300, DeliverAt: at(3 * time.Second)})
	fireTimers(t, s, 100)
	if err := s.AddAttempts(ctx, []Attempt{
		{MsgID: "m1", Group: "billing", Subscription: "sub-1", Attempt: 1, At: at(time.Second), Outcome: "retry", Status: 500, Error: "boom", Latency: 12 * time.Millisecond},
		{MsgID: "m1", Group: "billing", Subscription: "sub-1", Attempt: 2, At: at(2 * time.Second), Outcome: "dead"},
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveDeadLetters(ctx, "billing", []int64{0, 2}); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []Subscription{
		{ID: "sub-1", Group: "billing", Topic: "orders", URL: "https://example.test/", Secret: "whsec_x", Ordered: true, Config: `{"a":1}`},
		{ID: "sub-2", Group: "search", Topic: "orders"},
	} {
		if _, err := s.CreateSubscription(ctx, sub); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetOrderedRetry(ctx, OrderedRetry{Subscription: "sub-1", Queue: 2, QueueOffset: 5, Attempt: 3, NextAt: at(time.Minute)}); err != nil {
		t.Fatal(err)
	}

	before := readDeliveryState(t, s)
	// Guard against comparing two empty states.
	if len(before.Due) != 2 || len(before.Rows) != 3 || len(before.Attempts) != 2 || len(before.Removed) != 2 ||
		len(before.Retries) != 1 || len(before.Subs) != 2 || before.SubsByID.Secret != "whsec_x" {
		t.Fatalf("state before reopen is not what was written: %+v", before)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	clk.Advance(time.Hour)
	s2 := openStore(t, path, withClock(clk))
	if after := readDeliveryState(t, s2); !reflect.DeepEqual(after, before) {
		t.Errorf("after reopen:\n%+v\nwant\n%+v", after, before)
	}
}

// TestDeliveryMigration checks what 0002_delivery.sql leaves: version 2
// recorded under its name, its tables STRICT, its indexes present.
func TestDeliveryMigration(t *testing.T) {
	s := openStore(t, dbPath(t))
	rows := migrationRows(t, s.r)
	if len(rows) < 2 || rows[1].Version != 2 || rows[1].Name != "0002_delivery.sql" {
		t.Fatalf("schema_migrations = %+v, want version 2 = 0002_delivery.sql", rows)
	}
	if v, err := s.SchemaVersion(context.Background()); err != nil || v < 2 {
		t.Fatalf("SchemaVersion = %d, %v; want at least 2", v, err)
	}
	for _, table := range []string{"timers", "attempts", "dlq_removed", "ordered_retries"} {
		t.Run(table, func(t *testing.T) {
			var strict int
			if err := s.r.QueryRow(`SELECT strict FROM pragma_table_list WHERE name = ?`, table).Scan(&strict); err != nil {
				t.Fatalf("table %s: %v", table, err)
			}
			if strict != 1 {
				t.Errorf("table %s is not STRICT", table)
			}
		})
	}
	for _, index := range []string{"timers_due", "attempts_by_msg", "attempts_by_time"} {
		var n int
		if err := s.r.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name = ?`, index).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("index %s missing", index)
		}
	}
}

// TestDeliveryMigrationKeepsData opens a version-1 database with the full
// migrations: 0002 applies, and what version 1 held stays.
func TestDeliveryMigrationKeepsData(t *testing.T) {
	ctx := context.Background()
	path := dbPath(t)
	v1 := withFiles(t, nil)
	for name := range v1 {
		if !strings.HasPrefix(name, "0001_") {
			delete(v1, name)
		}
	}
	s1 := openStoreFS(t, path, v1)
	// Written as version 1's code did: its columns only.
	created := s1.stamp(time.Time{})
	sub := Subscription{ID: "sub-1", Group: "billing", Topic: "orders", Filter: "*", Config: "{}", State: "active", CreatedAt: created, UpdatedAt: created}
	if err := s1.write(ctx, func(tx Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO subscriptions (id, group_name, topic, created_at, updated_at) VALUES (?,?,?,?,?)`,
			sub.ID, sub.Group, sub.Topic, created.UnixMilli(), created.UnixMilli())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if v, err := s1.SchemaVersion(ctx); err != nil || v != 1 {
		t.Fatalf("SchemaVersion of the old database = %d, %v; want 1", v, err)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	s := openStore(t, path)
	if v, err := s.SchemaVersion(ctx); err != nil || v != latestVersion(t) {
		t.Fatalf("SchemaVersion after upgrade = %d, %v; want %d", v, err, latestVersion(t))
	}
	if got := subscription(t, s, "sub-1"); !reflect.DeepEqual(got, sub) {
		t.Errorf("subscription after upgrade = %+v, want %+v", got, sub)
	}
	addTimers(t, s, Timer{LogOffset: 1, DeliverAt: at(0)})
	if got := pendingTimers(t, s); got != 1 {
		t.Errorf("PendingTimers after upgrade = %d, want 1", got)
	}
}

// TestDeliveryQueryPlans keeps the timer and attempt reads on their indexes:
// they run on every dispatch tick and trace request, over tables that grow
// with traffic, so a full scan or a sort would grow with them.
func TestDeliveryQueryPlans(t *testing.T) {
	s := openStore(t, dbPath(t))
	tests := []struct {
		name, query string
		args        []any
		want        string // in the plan
	}{
		{"due timers", dueTimersQuery, []any{0, 1}, "USING COVERING INDEX timers_due"},
		{"next timer", nextTimerQuery, nil, "USING COVERING INDEX timers_due"},
		{"pending before", pendingTimersBeforeQuery, []any{0, 1}, "USING INTEGER PRIMARY KEY"},
		{"attempts", attemptsQuery, []any{"m", 1}, "USING INDEX attempts_by_msg"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rows, err := s.r.Query(`EXPLAIN QUERY PLAN `+tt.query, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			var plan []string
			for rows.Next() {
				var id, parent, notused int
				var detail string
				if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
					t.Fatal(err)
				}
				plan = append(plan, detail)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			joined := strings.Join(plan, "; ")
			if !strings.Contains(joined, tt.want) {
				t.Errorf("plan %q does not use %q", joined, tt.want)
			}
			if strings.Contains(joined, "TEMP B-TREE") {
				t.Errorf("plan %q sorts", joined)
			}
		})
	}
}

// BenchmarkAddTimers measures recording delayed records as dispatch does:
// each op is one AddTimers call (one fsynced transaction) of rows new
// timers. Bytes are the 16 bytes a timer carries (offset and due time).
func BenchmarkAddTimers(b *testing.B) {
	ctx := context.Background()
	for _, rows := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("rows=%d/sync=full", rows), func(b *testing.B) {
			s := openStore(b, dbPath(b))
			ts := make([]Timer, rows)
			b.ReportAllocs()
			b.SetBytes(int64(16 * rows))
			var next int64
			for b.Loop() {
				for i := range ts {
					ts[i] = Timer{LogOffset: next, DeliverAt: at(time.Duration(next%3600) * time.Second)}
					next++
				}
				if err := s.AddTimers(ctx, ts); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(rows*b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

func TestCancelTimers(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "meta.db"))
	now := time.Now()
	later := now.Add(time.Minute)
	if err := s.AddTimers(ctx, []Timer{{LogOffset: 1, DeliverAt: later}, {LogOffset: 2, DeliverAt: later}, {LogOffset: 4, DeliverAt: now}}); err != nil {
		t.Fatal(err)
	}
	if err := s.FireTimers(ctx, []int64{2}); err != nil {
		t.Fatal(err)
	}
	stale, err := s.CancelTimers(ctx, []int64{1, 2, 3, 4})
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 2, 3}; !reflect.DeepEqual(stale, want) {
		t.Fatalf("stale = %v, want %v (fired, unknown, due)", stale, want)
	}
	if n, _ := s.PendingTimers(ctx); n != 2 {
		t.Fatalf("%d pending after a refused cancel, want 2: nothing may change", n)
	}
	if stale, err := s.CancelTimers(ctx, []int64{1}); err != nil || stale != nil {
		t.Fatalf("cancel of a pending timer: %v, %v", stale, err)
	}
	if stale, _ := s.CancelTimers(ctx, []int64{1}); len(stale) != 1 {
		t.Fatal("a timer was cancelled twice")
	}
}

// TestSwapTimers: a nack swaps the visibility timer for its replacement's
// in one transaction; a stale one changes nothing but drops the replacement.
func TestSwapTimers(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "meta.db"))
	later := time.Now().Add(time.Minute)
	if err := s.AddTimers(ctx, []Timer{{LogOffset: 1, DeliverAt: later}, {LogOffset: 2, DeliverAt: later}, {LogOffset: 10, DeliverAt: later}, {LogOffset: 20, DeliverAt: later}}); err != nil {
		t.Fatal(err)
	}
	if stale, err := s.SwapTimers(ctx, []int64{1}, []int64{10}); err != nil || stale != nil {
		t.Fatalf("swap of a pending timer: %v, %v", stale, err)
	}
	// 1 is cancelled now: swapping it again is stale, and 20 is dropped.
	stale, err := s.SwapTimers(ctx, []int64{2, 1}, []int64{20})
	if err != nil || !reflect.DeepEqual(stale, []int{1}) {
		t.Fatalf("stale swap: %v, %v; want [1]", stale, err)
	}
	due, err := s.DueTimers(ctx, later.Add(time.Second), 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for _, d := range due {
		got = append(got, d.LogOffset)
	}
	if want := []int64{2, 10}; !reflect.DeepEqual(got, want) {
		t.Fatalf("pending timers %v, want %v (2 kept by the refused swap, 10 the first replacement)", got, want)
	}
}

// TestAckRacingTheTimerLoopIsDecidedOnce (attack F1): an ack whose
// transaction has read its clock before the visibility deadline, but not
// yet committed, while the timer loop looks for due timers past it: one of
// the two wins. The timer loop used to read the due timers outside the
// writer, from a snapshot without the ack, and put the message back while
// the ack was answered OK.
func TestAckRacingTheTimerLoopIsDecidedOnce(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	deadline := at(time.Minute)
	now := deadline.Add(-10 * time.Millisecond)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := openStore(t, dbPath(t), WithClock(clock))
	if err := s.AddTimers(ctx, []Timer{{LogOffset: 1, DeliverAt: deadline}}); err != nil {
		t.Fatal(err)
	}
	inSwap, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	swapHook = func() { once.Do(func() { close(inSwap); <-release }) }
	t.Cleanup(func() { swapHook = nil })

	type cancelled struct {
		stale []int
		err   error
	}
	ack := make(chan cancelled, 1)
	go func() {
		stale, err := s.CancelTimers(ctx, []int64{1})
		ack <- cancelled{stale, err}
	}()
	<-inSwap // the ack read its clock before the deadline
	mu.Lock()
	now = deadline.Add(10 * time.Millisecond)
	mu.Unlock()
	type claimed struct {
		due []Timer
		err error
	}
	loop := make(chan claimed, 1)
	go func() {
		due, err := s.ClaimDueTimers(ctx, 10)
		loop <- claimed{due, err}
	}()
	var c claimed
	select {
	case c = <-loop: // decided while the ack is open: only right if the ack then loses
		close(release)
	case <-time.After(300 * time.Millisecond): // waiting for the writer, as it should
		close(release)
		c = <-loop
	}
	a := <-ack
	if a.err != nil || c.err != nil {
		t.Fatalf("cancel: %v; claim: %v", a.err, c.err)
	}
	acked := len(a.stale) == 0
	fired := len(c.due) == 1
	if acked == fired {
		t.Fatalf("ack answered OK: %v, timer loop took the timer: %v; exactly one must win", acked, fired)
	}
	// A claimed timer is past cancelling, whatever the clock says.
	if fired {
		mu.Lock()
		now = deadline.Add(-time.Hour)
		mu.Unlock()
		if stale, err := s.CancelTimers(ctx, []int64{1}); err != nil || len(stale) != 1 {
			t.Fatalf("cancel of a claimed timer with the clock stepped back: stale %v, %v; want stale", stale, err)
		}
	}
}

// TestReserveTimers: a reserved timer is not due at its old time; a batch
// with a due or unknown timer reserves none.
func TestReserveTimers(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := at(0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := openStore(t, dbPath(t), WithClock(clock))
	if err := s.AddTimers(ctx, []Timer{{LogOffset: 1, DeliverAt: at(time.Second)}, {LogOffset: 2, DeliverAt: at(-time.Second)}}); err != nil {
		t.Fatal(err)
	}
	if stale, err := s.ReserveTimers(ctx, []int64{1, 2, 3}, at(time.Minute)); err != nil || !slices.Equal(stale, []int{1, 2}) {
		t.Fatalf("reserve with a due and an unknown timer: stale %v, %v; want [1 2]", stale, err)
	}
	if stale, err := s.ReserveTimers(ctx, []int64{1}, at(time.Minute)); err != nil || len(stale) != 0 {
		t.Fatalf("reserve: stale %v, %v", stale, err)
	}
	mu.Lock()
	now = at(2 * time.Second)
	mu.Unlock()
	due, err := s.ClaimDueTimers(ctx, 10)
	if err != nil || len(due) != 1 || due[0].LogOffset != 2 {
		t.Fatalf("claimed %v, %v; want only timer 2 (1 is reserved)", due, err)
	}
	if stale, err := s.SwapTimers(ctx, []int64{1}, nil); err != nil || len(stale) != 0 {
		t.Fatalf("swap of a reserved timer: stale %v, %v; want none", stale, err)
	}
}
