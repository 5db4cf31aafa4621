package meta

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func compareOffsets(a, b Offset) int {
	if c := strings.Compare(a.Group, b.Group); c != 0 {
		return c
	}
	if c := strings.Compare(a.Topic, b.Topic); c != 0 {
		return c
	}
	return a.Queue - b.Queue
}

// manyOffsets returns n distinct offsets spread over groups, topics and
// queues, stamped with at.
func manyOffsets(n int, at time.Time) []Offset {
	offs := make([]Offset, n)
	for i := range offs {
		offs[i] = Offset{
			Group:     fmt.Sprintf("group-%02d", i%7),
			Topic:     fmt.Sprintf("topic-%03d", i/7%100),
			Queue:     i / 700,
			Next:      int64(i) * 1000,
			UpdatedAt: at,
		}
		if i%3 == 0 {
			offs[i].Progress = []byte{byte(i), 1, 2}
		}
	}
	return offs
}

func TestCommitOffsets10k(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	s := openStore(t, dbPath(t), withClock(clk))
	in := manyOffsets(10_000, time.Time{}) // UpdatedAt from the store's clock
	if err := s.CommitOffsets(ctx, in); err != nil {
		t.Fatal(err)
	}

	want := slices.Clone(in)
	for i := range want {
		want[i].UpdatedAt = clk.Now()
	}
	slices.SortFunc(want, compareOffsets)
	got, err := s.AllOffsets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("AllOffsets returned %d rows, want %d", len(got), len(want))
	}
	if !reflect.DeepEqual(got, want) {
		for i := range got {
			if !reflect.DeepEqual(got[i], want[i]) {
				t.Fatalf("row %d = %+v, want %+v", i, got[i], want[i])
			}
		}
	}

	g3, err := s.Offsets(ctx, "group-03")
	if err != nil {
		t.Fatal(err)
	}
	var want3 []Offset
	for _, o := range want {
		if o.Group == "group-03" {
			want3 = append(want3, o)
		}
	}
	if !reflect.DeepEqual(g3, want3) {
		t.Errorf("Offsets(group-03): %d rows, want %d", len(g3), len(want3))
	}
	if none, err := s.Offsets(ctx, "nobody"); err != nil || len(none) != 0 {
		t.Errorf("Offsets(nobody) = %v, %v; want none", none, err)
	}
}

func TestCommitOffsetsUpsert(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	s := openStore(t, dbPath(t), withClock(clk))
	key := func(q int, next int64) Offset { return Offset{Group: "g", Topic: "t", Queue: q, Next: next} }

	first := key(0, 100)
	first.Progress = []byte{3, 1}
	if err := s.CommitOffsets(ctx, []Offset{first, key(1, 200)}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	// Queue 0 moves backwards (a reset), its progress cleared; queue 1
	// appears twice in one batch, once in each of two INSERT chunks: the
	// later entry wins, progress too.
	batch := []Offset{key(0, 5), key(1, 1)}
	for i := range offsetChunk {
		batch = append(batch, Offset{Group: "filler", Topic: "t", Queue: i % MaxQueues, Next: 1})
	}
	last := key(1, 300)
	last.Progress = []byte{7}
	batch = append(batch, last)
	if err := s.CommitOffsets(ctx, batch); err != nil {
		t.Fatal(err)
	}
	got, err := s.Offsets(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	at := clk.Now()
	want := []Offset{
		{Group: "g", Topic: "t", Queue: 0, Next: 5, UpdatedAt: at},
		{Group: "g", Topic: "t", Queue: 1, Next: 300, Progress: []byte{7}, UpdatedAt: at},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Offsets = %+v\nwant %+v", got, want)
	}
}

func TestCommitOffsetsEmpty(t *testing.T) {
	s := openStore(t, dbPath(t))
	for _, offs := range [][]Offset{nil, {}} {
		if err := s.CommitOffsets(context.Background(), offs); err != nil {
			t.Errorf("CommitOffsets(%v) = %v", offs, err)
		}
	}
}

func TestCommitOffsetsInvalidRejectsBatch(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, dbPath(t))
	good := Offset{Group: "g", Topic: "t", Queue: 0, Next: 1}
	tests := []struct {
		name string
		bad  Offset
	}{
		{"empty group", Offset{Topic: "t"}},
		{"empty topic", Offset{Group: "g"}},
		{"negative queue", Offset{Group: "g", Topic: "t", Queue: -1}},
		{"queue past limit", Offset{Group: "g", Topic: "t", Queue: MaxQueues}},
		{"negative offset", Offset{Group: "g", Topic: "t", Queue: 1, Next: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.CommitOffsets(ctx, []Offset{good, tt.bad})
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if offs, err := s.AllOffsets(ctx); err != nil || len(offs) != 0 {
				t.Errorf("after rejected batch AllOffsets = %+v, %v; want none", offs, err)
			}
		})
	}
}

// TestCommitOffsetsAtomic makes the database itself fail the last row of a
// batch spanning several INSERT chunks, after the earlier chunks have been
// executed: the transaction must take them back.
func TestCommitOffsetsAtomic(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, dbPath(t))
	if _, err := s.w.Exec(`CREATE TEMP TRIGGER poison BEFORE INSERT ON consumer_offsets
		WHEN NEW.group_name = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END`); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitOffsets(ctx, []Offset{{Group: "kept", Topic: "t", Next: 1}}); err != nil {
		t.Fatal(err)
	}
	batch := manyOffsets(3*offsetChunk, time.Time{})
	batch = append(batch, Offset{Group: "poison", Topic: "t", Next: 1})
	err := s.CommitOffsets(ctx, batch)
	if err == nil || !strings.Contains(err.Error(), "poisoned row") {
		t.Fatalf("err = %v, want the trigger's error", err)
	}
	offs, err := s.AllOffsets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(offs) != 1 || offs[0].Group != "kept" {
		t.Errorf("after failed batch AllOffsets has %d rows, want only the earlier one", len(offs))
	}
}
