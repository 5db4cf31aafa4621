package broker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkRebuildFromScratch measures a start with no consume queues, key
// index or checkpoint (size= the log's size), plain and with
// --rebuild-metadata (meta.db gone too): the survey of the log's topics and
// the re-dispatch, i.e. how long such a start keeps a broker down.
func BenchmarkRebuildFromScratch(b *testing.B) {
	for _, size := range []int64{64 << 20} {
		for _, rebuildMeta := range []bool{false, true} {
			b.Run(fmt.Sprintf("size=%dMiB/rebuild-metadata=%v", size>>20, rebuildMeta), func(b *testing.B) {
				cfg := DefaultConfig(b.TempDir())
				cfg.AutoCreateTopics = true
				cfg.SyncFlush = false
				br, err := Open(context.Background(), cfg)
				if err != nil {
					b.Fatal(err)
				}
				body := make([]byte, 1024)
				var written int64
				for i := 0; written < size; i++ {
					batch := make([]*Message, 100)
					for j := range batch {
						batch[j] = &Message{Body: body, Keys: []string{fmt.Sprint("k", i%1000)}}
					}
					if _, err := br.Publish(context.Background(), fmt.Sprint("topic-", i%8), batch); err != nil {
						b.Fatal(err)
					}
					written += int64(len(batch) * len(body))
				}
				if err := br.Close(); err != nil {
					b.Fatal(err)
				}
				b.SetBytes(written)
				b.ResetTimer()
				for range b.N {
					b.StopTimer()
					lose := []string{"index", "consumequeue", checkpointFile}
					if rebuildMeta {
						lose = append(lose, metaFile)
					}
					for _, d := range lose {
						if err := os.RemoveAll(filepath.Join(cfg.Dir, d)); err != nil {
							b.Fatal(err)
						}
					}
					c := cfg
					c.RebuildMetadata = rebuildMeta
					b.StartTimer()
					br, err := Open(context.Background(), c)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					br.Close()
					b.StartTimer()
				}
			})
		}
	}
}
