package broker

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkPublish measures Broker.Publish without HTTP: validation,
// encoding, the append and (with sync) the shared fsync.
func BenchmarkPublish(b *testing.B) {
	for _, sync := range []bool{false, true} {
		for _, batch := range []int{1, 100} {
			name := fmt.Sprintf("size=256/batch=%d/sync=%v", batch, map[bool]string{false: "none", true: "group"}[sync])
			b.Run(name, func(b *testing.B) {
				cfg := testConfig(b, b.TempDir())
				cfg.SegmentSize = 64 << 20
				cfg.SyncFlush = sync
				br := openBroker(b, cfg)
				b.SetBytes(int64(256 * batch))
				b.ReportAllocs()
				b.SetParallelism(32) // many concurrent publishers, as over HTTP
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					msgs := make([]*Message, batch)
					for pb.Next() {
						for i := range msgs {
							msgs[i] = &Message{Body: make([]byte, 256), Tag: "t"}
						}
						if _, err := br.Publish(context.Background(), "bench", msgs); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}
