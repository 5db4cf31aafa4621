//go:build unix

package push

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
)

// BenchmarkPushDelivery measures push delivery end to end in one process:
// a backlog of b.N messages (256 bytes of text each) on a topic of four
// queues, published before the timer starts, delivered by the dispatcher (lease, sign, POST,
// settle) to a sink on 127.0.0.1 that answers 200 at once, max_in_flight
// 32. One op is one message delivered. cpu-us/msg is the process's CPU
// time (user and system, the sink's too) per delivery, which says more
// than the wall time on a busy machine. batch=100 delivers the same
// backlog 100 messages a request (max_in_flight 800, eight times the
// batch, the default with a batch).
//
//	go test -run '^$' -bench 'BenchmarkPushDelivery' -benchtime 20000x -count 3 ./push/
func BenchmarkPushDelivery(b *testing.B) {
	b.Run("unbatched", func(b *testing.B) { benchPushDelivery(b, 0, 32) })
	b.Run("batch=100", func(b *testing.B) { benchPushDelivery(b, 100, 800) })
}

func benchPushDelivery(b *testing.B, batch, maxInFlight int) {
	ctx := context.Background()
	dir := b.TempDir()
	cfg := broker.DefaultConfig(dir)
	cfg.SegmentSize = 64 << 20
	br, err := broker.Open(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	var got atomic.Int64
	all := make(chan struct{})
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		n := int64(1)
		if v := r.Header.Get(HeaderBatchSize); v != "" {
			n, _ = strconv.ParseInt(v, 10, 64)
		}
		if before := got.Add(n) - n; before < int64(b.N) && before+n >= int64(b.N) {
			close(all)
		}
	}))
	defer sink.Close()
	if _, _, err := br.PutTopic(ctx, "t", broker.TopicSettings{Queues: 4}); err != nil {
		b.Fatal(err)
	}
	for left := b.N; left > 0; {
		batch := make([]*broker.Message, min(left, 100))
		for i := range batch {
			batch[i] = &broker.Message{Body: bytes.Repeat([]byte("x"), 256)}
		}
		if _, err := br.Publish(ctx, "t", batch); err != nil {
			b.Fatal(err)
		}
		left -= len(batch)
	}
	key, err := LoadOrCreateBusKey(filepath.Join(dir, "signing.key"))
	if err != nil {
		b.Fatal(err)
	}
	client := NewClient(ClientConfig{AllowPrivate: true})
	defer client.Close()
	d := NewDispatcher(DispatcherConfig{Broker: br, Client: client, Key: key})
	sub := broker.Subscription{Group: "g", Topic: "t", URL: sink.URL, MaxInFlight: maxInFlight, StartFrom: "earliest"}
	if batch > 0 {
		sub.Batch = broker.PushBatch{MaxMessages: batch, MaxWait: 50 * time.Millisecond}
	}
	if _, err := br.CreateSubscription(ctx, sub); err != nil {
		b.Fatal(err)
	}
	var before syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	b.ResetTimer()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); d.Run(runCtx) }()
	select {
	case <-all:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%d of %d delivered in 5 minutes", got.Load(), b.N)
	}
	b.StopTimer()
	var after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	stop()
	<-done
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/msg")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
