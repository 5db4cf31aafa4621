package broker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkPullAck is `postbus bench pull` without HTTP and without a
// producer racing the pullers: the topic is filled first, then 8 pullers
// take up to 32 messages a pull and ack each answer with one request, as
// the bench's pullers do. Reports received and acked msgs/s. Where the
// time goes: pullers of one group lease one at a time, each lease with an
// fsync of the log (its redelivery copies) and a SQLite transaction, and
// each ack request is a SQLite transaction with its own fsync.
func BenchmarkPullAck(b *testing.B) {
	const pullers, max = 8, 32
	cfg := testConfig(b, b.TempDir())
	cfg.CheckpointInterval = DefaultConfig(cfg.Dir).CheckpointInterval
	br := openBroker(b, cfg)
	ctx := context.Background()
	pullN(b, br, "g", "t", 1, 0, 0) // subscribes
	batch := make([]*Message, 0, 500)
	for i := range b.N {
		batch = append(batch, msg(fmt.Sprint("m", i)))
		if len(batch) == cap(batch) || i == b.N-1 {
			publish(b, br, "t", batch...)
			batch = batch[:0]
		}
	}
	var got atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range pullers {
		wg.Go(func() {
			for got.Load() < int64(b.N) {
				ps, err := br.Pull(ctx, "g", "t", max, 100*time.Millisecond, 30*time.Second)
				if err != nil {
					b.Error(err)
					return
				}
				if len(ps) == 0 {
					continue
				}
				res, err := br.AckEach(ctx, "g", receipts(ps))
				if err != nil {
					b.Error(err)
					return
				}
				for _, r := range res {
					if r.Status != ReceiptAcked {
						b.Errorf("ack: %s", r.Status)
						return
					}
				}
				got.Add(int64(len(ps)))
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(got.Load())/time.Since(start).Seconds(), "msgs/s")
}
