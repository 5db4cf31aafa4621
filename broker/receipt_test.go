package broker

import (
	"strings"
	"testing"
)

func TestReceiptRoundTrip(t *testing.T) {
	key := []byte(strings.Repeat("k", 32))
	r := receipt{Attempt: 3, Timer: 123456789, Group: "workers", Topic: "jobs", MsgID: "abcDEF123"}
	s := r.encode(key, "")
	got, err := decodeReceipt(s, key, "")
	if err != nil || got != r {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if _, err := decodeReceipt(s, []byte(strings.Repeat("x", 32)), ""); err == nil {
		t.Fatal("a receipt verified under another key")
	}
	// Any change to a byte breaks it.
	for i := range s {
		c := []byte(s)
		c[i] ^= 1
		if c[i] == '-' || c[i] == '_' || (c[i] >= '0' && c[i] <= '9') || (c[i] >= 'a' && c[i] <= 'z') || (c[i] >= 'A' && c[i] <= 'Z') {
			if got, err := decodeReceipt(string(c), key, ""); err == nil && got != r {
				t.Fatalf("flipping character %d gave another valid receipt %+v", i, got)
			}
		}
	}
}

// TestReceiptCoversItsBrokerName (pull hostile pass F4, left open): the
// name of the broker before a receipt is covered by its MAC, so a receipt
// under another name, or none, is not one this bus issued; a version 1
// receipt (issued before, out across an upgrade) is still taken under
// this broker's own name or none, and a renamed broker still takes its
// receipts under the name it had.
func TestReceiptCoversItsBrokerName(t *testing.T) {
	key := []byte(strings.Repeat("k", 32))
	r := receipt{Attempt: 1, Timer: 42, Group: "g", Topic: "t", MsgID: "m"}
	named := r.encode(key, "broker-a")
	old := r.encodeVersion(key, "", receiptVersionUnnamed)
	for _, tc := range []struct {
		name, text, self string
		ok               bool
	}{
		{"its issuer's name", "broker-a" + receiptSep + named, "broker-a", true},
		{"its issuer renamed since", "broker-a" + receiptSep + named, "broker-z", true},
		{"another broker's name", "zz" + receiptSep + named, "broker-a", false},
		{"an empty name", receiptSep + named, "broker-a", false},
		{"no name", named, "broker-a", false},
		{"a name and another", "zz" + receiptSep + "broker-a" + receiptSep + named, "broker-a", false},
		{"a standalone broker's, under a name", "zz" + receiptSep + r.encode(key, ""), "", false},
		{"a standalone broker's", r.encode(key, ""), "", true},
		{"version 1 under this broker's name", "broker-a" + receiptSep + old, "broker-a", true},
		{"version 1 with no name", old, "broker-a", true},
		{"version 1 under another name", "zz" + receiptSep + old, "broker-a", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeReceipt(tc.text, key, tc.self)
			switch {
			case tc.ok && (err != nil || got != r):
				t.Fatalf("decode %q as broker %q: %+v, %v; want %+v", tc.text, tc.self, got, err, r)
			case !tc.ok && err == nil:
				t.Fatalf("decode %q as broker %q: taken, want refused", tc.text, tc.self)
			}
		})
	}
}

// FuzzReceipt: any text decodes to a receipt or errBadReceipt; a decoded
// receipt re-encodes to the same text.
func FuzzReceipt(f *testing.F) {
	key := []byte(strings.Repeat("k", 32))
	f.Add(receipt{Attempt: 1, Timer: 5, Group: "g", Topic: "t", MsgID: "m"}.encode(key, ""))
	f.Add("b1" + receiptSep + receipt{Attempt: 1, Timer: 5, Group: "g", Topic: "t", MsgID: "m"}.encode(key, "b1"))
	f.Add(receipt{Attempt: 1, Timer: 5, Group: "g", Topic: "t", MsgID: "m"}.encodeVersion(key, "", receiptVersionUnnamed))
	f.Add(receipt{Kind: receiptOrdered, Attempt: 2, Timer: 7, Queue: 3, Group: "g", Topic: "t", MsgID: "m"}.encode(key, ""))
	f.Add(receipt{Kind: receiptOrderedUntil, Attempt: 2, Timer: 7, Queue: 3, Group: "g", Topic: "t", MsgID: "m", Until: 1767225600000}.encode(key, ""))
	f.Add("")
	f.Add("AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := decodeReceipt(s, key, "b1")
		if err != nil {
			return
		}
		issuer, local, named := strings.Cut(s, receiptSep)
		if !named {
			issuer, local = "", s
		}
		_, body, _, _ := parseReceipt(local)
		if again := r.encodeVersion(key, issuer, body[0]); again != local {
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
		if _, err := decodeReceipt(r.encode(key, ""), key, ""); err != nil {
			b.Fatal(err)
		}
	}
}
