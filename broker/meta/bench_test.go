package meta

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkCommitOffsets measures a batched offset flush: each op is one
// CommitOffsets call (one fsynced transaction) upserting rows offsets that
// already exist, as a periodic flush does. rows/s is the figure that matters;
// SetBytes is left out because a row's size says nothing useful here.
func BenchmarkCommitOffsets(b *testing.B) {
	ctx := context.Background()
	for _, rows := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("rows=%d/sync=full", rows), func(b *testing.B) {
			s := openStore(b, dbPath(b))
			offs := make([]Offset, rows)
			for i := range offs {
				offs[i] = Offset{Group: fmt.Sprintf("g%d", i%4), Topic: fmt.Sprintf("topic-%d", i/4%64), Queue: i / 256}
			}
			if err := s.CommitOffsets(ctx, offs); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for n := 0; b.Loop(); n++ {
				for i := range offs {
					offs[i].Next = int64(n)
				}
				if err := s.CommitOffsets(ctx, offs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(rows*b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// BenchmarkTopic measures a topic lookup through the read-only pool, alone
// and from parallel goroutines.
func BenchmarkTopic(b *testing.B) {
	ctx := context.Background()
	s := openStore(b, dbPath(b))
	const topics = 100
	for i := range topics {
		if _, err := s.CreateTopic(ctx, Topic{Name: fmt.Sprintf("topic-%03d", i), Queues: 8}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("read=serial", func(b *testing.B) {
		b.ReportAllocs()
		for n := 0; b.Loop(); n++ {
			if _, err := s.Topic(ctx, fmt.Sprintf("topic-%03d", n%topics)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("read=parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			n := 0
			for pb.Next() {
				if _, err := s.Topic(ctx, fmt.Sprintf("topic-%03d", n%topics)); err != nil {
					b.Error(err)
					return
				}
				n++
			}
		})
	})
}
