package broker

import (
	"context"
	"testing"
)

// BenchmarkTxnPublish measures a prepare and its commit against a plain
// publish without HTTP, with 32 concurrent producers and the shared fsync:
// the cost of a transaction in publishes (issue 14's target: at most about
// two).
func BenchmarkTxnPublish(b *testing.B) {
	for _, txn := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "prepare+commit"}[txn]
		b.Run(name, func(b *testing.B) {
			cfg := testConfig(b, b.TempDir())
			cfg.SegmentSize = 64 << 20
			cfg.SyncFlush = true
			br := openBroker(b, cfg)
			if _, _, err := br.PutProducerGroup(context.Background(), "bench", "https://bench.example/check", ""); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetParallelism(16) // 32 producers on 2 cores, as bench publish --conns 32
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					m := &Message{Body: make([]byte, 256), Tag: "t"}
					if !txn {
						if _, err := br.Publish(ctx, "bench", []*Message{m}); err != nil {
							b.Error(err)
							return
						}
						continue
					}
					res, err := br.Prepare(ctx, "bench", m, "bench", 0)
					if err != nil {
						b.Error(err)
						return
					}
					if _, err := br.Commit(ctx, res.ID); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
