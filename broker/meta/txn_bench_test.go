package meta

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkTxnCheckLoop measures what one pass of the check-back loop costs
// the metadata store with many transactions prepared and undecided: the
// read that finds nothing due (every pass), and a claim of a batch of due
// ones, among undecided=N rows.
func BenchmarkTxnCheckLoop(b *testing.B) {
	ctx := context.Background()
	for _, undecided := range []int{1000, 100_000} {
		// 200 claims of 256 need 51,200 rows: fewer are claimed on the
		// smaller table once it runs out, which only makes it cheaper.
		s := openStore(b, dbPath(b))
		now := time.Now()
		ts := make([]Txn, 0, 1000)
		for i := 0; i < undecided; i++ {
			ts = append(ts, Txn{MsgID: fmt.Sprintf("m%09d", i), Topic: "orders", ProducerGroup: "shop", LogOffset: int64(i) * 300,
				PreparedAt: now, NextCheck: now.Add(time.Hour + time.Duration(i)*time.Millisecond)})
			if len(ts) == cap(ts) {
				if err := s.AddTxns(ctx, ts, nil); err != nil {
					b.Fatal(err)
				}
				ts = ts[:0]
			}
		}
		b.Run(fmt.Sprintf("undecided=%d/next_check", undecided), func(b *testing.B) {
			for b.Loop() {
				if _, ok, err := s.NextTxnCheck(ctx); err != nil || !ok {
					b.Fatal(ok, err)
				}
			}
		})
		b.Run(fmt.Sprintf("undecided=%d/claim_256_due", undecided), func(b *testing.B) {
			at := now.Add(time.Hour)
			for b.Loop() {
				// Each claim moves 256 rows an hour on: the next finds
				// the following 256 due.
				at = at.Add(256 * time.Millisecond)
				if _, err := s.ClaimDueTxns(ctx, at, 2*time.Hour, 256); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
