package httpapi

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
)

func TestParsePublishHeaders(t *testing.T) {
	at := "2030-01-02T03:04:05Z"
	tests := []struct {
		name    string
		h       http.Header
		want    *broker.Message
		wantErr string // the header named in the error
	}{
		{"none", http.Header{}, &broker.Message{}, ""},
		{"all", http.Header{
			"Postbus-Tag": {"created"}, "Postbus-Keys": {"a, b ,c"}, "Postbus-Sharding-Key": {"s"},
			"Postbus-Dedup-Id": {"d"}, "Postbus-Delay-Level": {"3"}, "Content-Type": {"application/json"},
			"Postbus-Prop-Region": {"eu"}, "Postbus-Prop-Trace-Id": {"t1"},
		}, &broker.Message{Tag: "created", Keys: []string{"a", "b", "c"}, ShardingKey: "s", DedupID: "d", DelayLevel: 3,
			ContentType: "application/json", Properties: map[string]string{"Region": "eu", "Trace-Id": "t1"}}, ""},
		{"delay", http.Header{"Postbus-Delay": {"1m30s"}}, &broker.Message{Delay: 90 * time.Second}, ""},
		{"deliver at", http.Header{"Postbus-Deliver-At": {at}}, &broker.Message{DeliverAt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}, ""},
		{"two tags", http.Header{"Postbus-Tag": {"a", "b"}}, nil, "Postbus-Tag"},
		{"empty key", http.Header{"Postbus-Keys": {"a,,b"}}, nil, "Postbus-Keys"},
		{"bad delay", http.Header{"Postbus-Delay": {"soon"}}, nil, "Postbus-Delay"},
		{"negative delay", http.Header{"Postbus-Delay": {"-5s"}}, nil, "Postbus-Delay"},
		{"delay level 0", http.Header{"Postbus-Delay-Level": {"0"}}, nil, "Postbus-Delay-Level"},
		{"delay level 19", http.Header{"Postbus-Delay-Level": {"19"}}, nil, "Postbus-Delay-Level"},
		{"delay level word", http.Header{"Postbus-Delay-Level": {"three"}}, nil, "Postbus-Delay-Level"},
		{"bad deliver at", http.Header{"Postbus-Deliver-At": {"tomorrow"}}, nil, "Postbus-Deliver-At"},
		{"bad content type", http.Header{"Content-Type": {"what/ever/x;;"}}, nil, "Content-Type"},
		{"nameless property", http.Header{"Postbus-Prop-": {"x"}}, nil, "Postbus-Prop-"},
		{"repeated property", http.Header{"Postbus-Prop-A": {"1", "2"}}, nil, "Postbus-Prop-A"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePublishHeaders(tt.h)
			if tt.wantErr != "" {
				he, ok := err.(*headerError)
				if !ok || he.header != tt.wantErr {
					t.Fatalf("err = %v, want an error naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestDecodeBatch(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		wantCode broker.Code
		want     int
	}{
		{"ok", `[{"body":"a","tag":"t","keys":["k"],"properties":{"p":"v"}},{"body_base64":"AAE="}]`, "", 2},
		{"not json", `[{"body":`, codeInvalidJSON, 0},
		{"object", `{"body":"a"}`, codeInvalidJSON, 0},
		{"unknown field", `[{"body":"a","colour":"red"}]`, codeInvalidJSON, 0},
		{"trailing", `[{"body":"a"}] []`, codeInvalidJSON, 0},
		{"empty", `[]`, broker.CodeInvalidBatch, 0},
		{"no body", `[{"tag":"t"}]`, broker.CodeEmptyBody, 0},
		{"both bodies", `[{"body":"a","body_base64":"AA=="}]`, broker.CodeInvalidMessage, 0},
		{"bad base64", `[{"body_base64":"!!"}]`, broker.CodeInvalidMessage, 0},
		{"bad delay", `[{"body":"a","delay":"later"}]`, broker.CodeInvalidDelay, 0},
		{"bad deliver_at", `[{"body":"a","deliver_at":"noon"}]`, broker.CodeInvalidDelay, 0},
		{"over 1000", "[" + strings.Repeat(`{"body":"a"},`, 1000) + `{"body":"a"}]`, broker.CodeBatchTooLarge, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msgs, err := decodeBatch([]byte(tt.body))
			if tt.wantCode != "" {
				be, ok := err.(*batchError)
				if !ok || be.code != tt.wantCode {
					t.Fatalf("err = %v, want code %s", err, tt.wantCode)
				}
				return
			}
			if err != nil || len(msgs) != tt.want {
				t.Fatalf("got %d messages, err %v; want %d", len(msgs), err, tt.want)
			}
		})
	}
}

// FuzzPublishHeaders: any header values parse to a message or a
// headerError, never a panic.
func FuzzPublishHeaders(f *testing.F) {
	f.Add("created", "a,b", "s", "10s", "3", "2030-01-02T03:04:05Z", "d", "application/json", "Region", "eu")
	f.Add("", ",", "", "-1h", "99", "x", "", ";;", "", "")
	f.Fuzz(func(t *testing.T, tag, keys, shard, delay, level, at, dedup, ct, propName, propVal string) {
		h := http.Header{}
		for name, v := range map[string]string{hdrTag: tag, hdrKeys: keys, hdrShardingKey: shard, hdrDelay: delay,
			hdrDelayLevel: level, hdrDeliverAt: at, hdrDedupID: dedup, "Content-Type": ct, hdrPropPrefix + propName: propVal} {
			if v != "" {
				h.Set(name, v)
			}
		}
		m, err := parsePublishHeaders(h)
		if err != nil {
			if _, ok := err.(*headerError); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		for _, k := range m.Keys {
			if k == "" || k != strings.TrimSpace(k) {
				t.Fatalf("parsed key %q", k)
			}
		}
		if m.DelayLevel < 0 || m.DelayLevel > len(broker.DelayLevels) || m.Delay < 0 {
			t.Fatalf("parsed delay out of range: %+v", m)
		}
	})
}

// FuzzDecodeBatch: any request body decodes to messages or a batchError.
func FuzzDecodeBatch(f *testing.F) {
	f.Add([]byte(`[{"body":"a","tag":"t","keys":["k"],"delay":"1s","properties":{"p":"v"}}]`))
	f.Add([]byte(`[{"body_base64":"AAE=","deliver_at":"2030-01-02T03:04:05Z","delay_level":3}]`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, data []byte) {
		msgs, err := decodeBatch(data)
		if err != nil {
			if _, ok := err.(*batchError); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if len(msgs) == 0 || len(msgs) > broker.MaxBatchMessages {
			t.Fatalf("%d messages decoded without error", len(msgs))
		}
	})
}

func TestAppendPublishResultMatchesEncodingJSON(t *testing.T) {
	for _, r := range []publishResult{
		{MsgID: "abc", Topic: "orders", QueueID: 3, QueueOffset: 1 << 40, Status: "SEND_OK"},
		{MsgID: "x", Topic: "t.1_-", QueueID: 0, QueueOffset: 0, Status: "SEND_OK", DeliverAt: "2030-01-02T03:04:05.123Z", Duplicate: true},
	} {
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendPublishResult(nil, r); string(got) != string(want) {
			t.Errorf("appendPublishResult = %s\nencoding/json     = %s", got, want)
		}
	}
}
