package broker

import (
	"bytes"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestRecordRoundTrip(t *testing.T) {
	born := time.UnixMilli(1_700_000_000_123)
	stored := time.UnixMilli(1_700_000_000_456)
	tests := []struct {
		name string
		m    Message
	}{
		{"minimal", Message{ID: "abc", Topic: "t", ContentType: DefaultContentType, Body: []byte("x")}},
		{"everything", Message{
			ID: "NUID0123456789abcdefgh", Topic: "orders", Tag: "created", ShardingKey: "customer-7",
			ContentType: "application/json", DedupID: "dedup-1", Keys: []string{"order-1001", "customer-7"},
			Properties: map[string]string{"Region": "eu", "Trace-Id": "t1", "empty": ""},
			Body:       bytes.Repeat([]byte{0, 1, 2, 255}, 1000), QueueID: 3, DeliverAt: time.UnixMilli(1_700_000_060_000),
		}},
		{"unicode tag", Message{ID: "u", Topic: "t", Tag: "créé", ContentType: "text/plain; charset=utf-8", Body: []byte("é")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.m
			in.BornAt = born
			rec := encodeRecord(nil, &in)
			patchRecord(rec, stored, 42)
			var got Message
			if err := decodeRecord(rec, &got); err != nil {
				t.Fatalf("decode: %v", err)
			}
			want := in
			want.StoredAt, want.QueueOffset = stored, 42
			if len(want.Keys) == 0 {
				want.Keys = nil
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
			}
			h, err := decodeHeader(rec)
			if err != nil {
				t.Fatalf("decode header: %v", err)
			}
			if string(h.Topic) != in.Topic || string(h.ID) != in.ID || string(h.Tag) != in.Tag ||
				h.QueueID != in.QueueID || h.QueueOffset != 42 || string(h.DedupID) != in.DedupID {
				t.Errorf("header %+v does not match %+v", h, in)
			}
			var keys []string
			h.eachKey(func(k []byte) { keys = append(keys, string(k)) })
			if !reflect.DeepEqual(keys, want.Keys) {
				t.Errorf("keys = %q, want %q", keys, want.Keys)
			}
		})
	}
}

func TestDecodeRecordRejectsTruncation(t *testing.T) {
	m := Message{ID: "id", Topic: "t", Tag: "a", Keys: []string{"k"}, ContentType: "c", Body: []byte("body"), BornAt: time.Now()}
	rec := encodeRecord(nil, &m)
	for n := 0; n < len(rec); n++ {
		var got Message
		if err := decodeRecord(rec[:n], &got); err == nil {
			t.Fatalf("decodeRecord accepted a record cut to %d of %d bytes", n, len(rec))
		}
	}
	var got Message
	if err := decodeRecord(append(rec, 0), &got); err == nil {
		t.Fatal("decodeRecord accepted trailing bytes")
	}
}

// FuzzDecodeRecord: any bytes decode to a message or an error, never a
// panic, and a decoded message survives another encode/decode unchanged.
func FuzzDecodeRecord(f *testing.F) {
	m := Message{ID: "id", Topic: "t", Tag: "a", Keys: []string{"k1", "k2"}, Properties: map[string]string{"p": "v"},
		ContentType: "c", Body: []byte("body"), BornAt: time.UnixMilli(5)}
	f.Add(encodeRecord(nil, &m))
	f.Add([]byte{recordVersion})
	f.Add(make([]byte, recordFixedLen+20))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = decodeHeader(data) // must not panic; decodeRecord below says whether it is valid
		var got Message
		if err := decodeRecord(data, &got); err != nil {
			return
		}
		again := encodeRecord(nil, &got)
		patchRecord(again, got.StoredAt, got.QueueOffset)
		var back Message
		if err := decodeRecord(again, &back); err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if !reflect.DeepEqual(back, got) {
			t.Fatalf("re-encoding changed the message:\n got %+v\nwant %+v", back, got)
		}
	})
}

func TestHashesAgree(t *testing.T) {
	for _, c := range []struct{ topic, key string }{{"t", "k"}, {"orders", ""}, {"", "x"}, {"a\x00b", "c"}} {
		if a, b := hashKey(keyKey, c.topic+"\x00"+c.key), hashKeyBytes(keyKey, []byte(c.topic), []byte(c.key)); a != b {
			t.Errorf("hashKey(%q, %q) = %x, hashKeyBytes = %x", c.topic, c.key, a, b)
		}
	}
	if TagHash("") != 0 || TagHash("a") == 0 || TagHash("a") != tagHashBytes([]byte("a")) || TagHash("a") == TagHash("b") {
		t.Error("tag hashes disagree")
	}
}

// TestValidTopicName: the byte loop that checks topic names on every
// publish agrees with the rule it replaced, as a regular expression, at
// every edge (length 127 and 128, a first character that may only follow,
// non-ASCII letters).
func TestValidTopicName(t *testing.T) {
	rule := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,126}$`)
	names := []string{"", "a", "A9", "9", "orders.eu-1_x", ".a", "_a", "-a", "a.", "a b", "a/b", "a%", "é", "aé",
		"a\x00", strings.Repeat("a", 127), strings.Repeat("a", 128), "a" + strings.Repeat("-", 126), "Ⅻ", "a\u212a"}
	for _, name := range names {
		if got, want := validTopicName(name), rule.MatchString(name); got != want {
			t.Errorf("validTopicName(%q) = %v, want %v", name, got, want)
		}
	}
}
