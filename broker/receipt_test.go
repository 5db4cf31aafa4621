package broker

import (
	"strings"
	"testing"
)

func TestReceiptRoundTrip(t *testing.T) {
	key := []byte(strings.Repeat("k", 32))
	r := receipt{Attempt: 3, Timer: 123456789, Group: "workers", Topic: "jobs", MsgID: "abcDEF123"}
	s := r.encode(key)
	got, err := decodeReceipt(s, key)
	if err != nil || got != r {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if _, err := decodeReceipt(s, []byte(strings.Repeat("x", 32))); err == nil {
		t.Fatal("a receipt verified under another key")
	}
	// Any change to a byte breaks it.
	for i := range s {
		c := []byte(s)
		c[i] ^= 1
		if c[i] == '-' || c[i] == '_' || (c[i] >= '0' && c[i] <= '9') || (c[i] >= 'a' && c[i] <= 'z') || (c[i] >= 'A' && c[i] <= 'Z') {
			if got, err := decodeReceipt(string(c), key); err == nil && got != r {
				t.Fatalf("flipping character %d gave another valid receipt %+v", i, got)
			}
		}
	}
}

// FuzzReceipt: any text decodes to a receipt or errBadReceipt; a decoded
// receipt re-encodes to the same text.
func FuzzReceipt(f *testing.F) {
	key := []byte(strings.Repeat("k", 32))
	f.Add(receipt{Attempt: 1, Timer: 5, Group: "g", Topic: "t", MsgID: "m"}.encode(key))
	f.Add(receipt{Kind: receiptOrdered, Attempt: 2, Timer: 7, Queue: 3, Group: "g", Topic: "t", MsgID: "m"}.encode(key))
	f.Add(receipt{Kind: receiptOrderedUntil, Attempt: 2, Timer: 7, Queue: 3, Group: "g", Topic: "t", MsgID: "m", Until: 1767225600000}.encode(key))
	f.Add("")
	f.Add("AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := decodeReceipt(s, key)
		if err != nil {
			return
		}
		if again := r.encode(key); again != s {
			t.Fatalf("decoded %+v from %q re-encodes to %q", r, s, again)
		}
	})
}

// BenchmarkReceipt measures what a push delivery spends on its receipt:
// one made at the lease, one checked at the settle.
func BenchmarkReceipt(b *testing.B) {
	key := make([]byte, 32)
	r := receipt{Kind: receiptPush, Attempt: 1, Timer: 12345, Queue: 3, Group: "group", Topic: "topic", MsgID: "01JCXAMPLEMESSAGEID0000000"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeReceipt(r.encode(key), key); err != nil {
			b.Fatal(err)
		}
	}
}
