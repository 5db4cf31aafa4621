package httpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/push"
)

// pushServer is newTestServer with push deliveries running.
func pushServer(tb testing.TB) (*httptest.Server, *broker.Broker) {
	tb.Helper()
	srv, b := newTestServer(tb, nil)
	client := push.NewClient(push.ClientConfig{AllowPrivate: true})
	d := push.NewDispatcher(push.DispatcherConfig{Broker: b, Client: client})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	// Cleanups run last first: the dispatcher stops before the broker
	// closes.
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && err != context.Canceled {
			tb.Errorf("dispatcher: %v", err)
		}
		client.Close()
	})
	return srv, b
}

// ceReceiver is a push endpoint that reads each delivery with the
// CloudEvents SDK, after checking its Standard Webhooks signature.
type ceReceiver struct {
	mu     sync.Mutex
	secret string
	events map[string]cloudevents.Event // by ce-id
	faults []string
	got    chan struct{}
}

func (rc *ceReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if err := push.VerifyStandardWebhook(rc.secret, r.Header, body, time.Minute, time.Now()); err != nil {
		rc.faults = append(rc.faults, "signature: "+err.Error())
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	ev, err := cehttp.NewEventFromHTTPRequest(r)
	if err != nil {
		rc.faults = append(rc.faults, "the SDK cannot read a delivery: "+err.Error())
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if err := ev.Validate(); err != nil {
		rc.faults = append(rc.faults, "the SDK finds a delivery invalid: "+err.Error())
	}
	if _, dup := rc.events[ev.ID()]; !dup {
		rc.events[ev.ID()] = *ev
		rc.got <- struct{}{}
	}
	w.WriteHeader(http.StatusNoContent)
}

// TestCloudEventsThroughSDK publishes events with the CloudEvents SDK's
// HTTP client, in binary and structured mode, to a real server, and has a
// subscription with format cloudevents push them to an endpoint that reads
// them with the SDK: every attribute, extension and the data come back as
// sent. A message published without CloudEvents comes as an event made
// from the message.
func TestCloudEventsThroughSDK(t *testing.T) {
	srv, _ := pushServer(t)
	rc := &ceReceiver{events: map[string]cloudevents.Event{}, got: make(chan struct{}, 16)}
	sink := httptest.NewServer(rc)
	defer sink.Close()

	resp, body := do(t, "POST", srv.URL+"/v1/subscriptions", map[string]string{"Content-Type": "application/json"},
		strings.NewReader(`{"group":"ce","topic":"orders","url":"`+sink.URL+`/hook","format":"cloudevents","start_from":"earliest"}`))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create subscription: %d %s", resp.StatusCode, body)
	}
	sub := jsonOf(t, body)
	if sub["format"] != "cloudevents" {
		t.Fatalf("subscription format = %v, want cloudevents", sub["format"])
	}
	rc.mu.Lock()
	rc.secret, _ = sub["secret"].(string)
	rc.mu.Unlock()

	at := time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.UTC)
	binary := cloudevents.NewEvent()
	binary.SetID("order-42-created")
	binary.SetSource("https://shop.example.com/orders")
	binary.SetType("com.example.order.created")
	binary.SetSubject("orders/42")
	binary.SetTime(at)
	binary.SetDataSchema("https://shop.example.com/schemas/order.json")
	binary.SetExtension("tenant", "acme")
	binary.SetExtension("priority", 7)
	binary.SetExtension("urgent", true)
	if err := binary.SetData("application/json", map[string]any{"order": 42, "total": "9.99"}); err != nil {
		t.Fatal(err)
	}

	structured := cloudevents.NewEvent()
	structured.SetID("note-1")
	structured.SetSource("/notes")
	structured.SetType("com.example.note")
	structured.SetSubject("notes/1")
	structured.SetTime(at.Add(time.Second))
	structured.SetExtension("tenant", "globex")
	if err := structured.SetData("text/plain", "plain text, not JSON"); err != nil {
		t.Fatal(err)
	}

	bin := cloudevents.NewEvent()
	bin.SetID("blob-1")
	bin.SetSource("urn:example:blobs")
	bin.SetType("com.example.blob")
	if err := bin.SetData("application/octet-stream", []byte{0, 1, 2, 0xff, 0xfe}); err != nil {
		t.Fatal(err)
	}

	client, err := cloudevents.NewClientHTTP()
	if err != nil {
		t.Fatal(err)
	}
	target := cloudevents.ContextWithTarget(context.Background(), srv.URL+"/v1/topics/orders/messages")
	for _, tc := range []struct {
		ev   cloudevents.Event
		ctx  context.Context
		mode string
	}{
		{binary, cloudevents.WithEncodingBinary(target), "binary"},
		{structured, cloudevents.WithEncodingStructured(target), "structured"},
		{bin, cloudevents.WithEncodingStructured(target), "structured"},
	} {
		if res := client.Send(tc.ctx, tc.ev); !cloudevents.IsACK(res) {
			t.Fatalf("publish %s in %s mode: %v", tc.ev.ID(), tc.mode, res)
		}
	}
	// A message published without CloudEvents.
	resp, body = do(t, "POST", srv.URL+"/v1/topics/orders/messages", map[string]string{"Postbus-Tag": "shipped", "Content-Type": "application/json"},
		strings.NewReader(`{"order":41}`))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("raw publish: %d %s", resp.StatusCode, body)
	}
	rawID, _ := jsonOf(t, body)["msg_id"].(string)

	deadline := time.After(20 * time.Second)
	for range 4 {
		select {
		case <-rc.got:
		case <-deadline:
			rc.mu.Lock()
			t.Fatalf("deliveries: got %d of 4 in 20s (faults %v)", len(rc.events), rc.faults)
		}
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.faults) > 0 {
		t.Fatalf("the endpoint found faults: %v", rc.faults)
	}
	// ce-id is the message id (DESIGN §4); the event's own id is kept as
	// the message's ce-id property.
	for _, want := range []cloudevents.Event{binary, structured, bin} {
		var got cloudevents.Event
		for _, ev := range rc.events {
			if ev.Source() == want.Source() && ev.Type() == want.Type() {
				got = ev
			}
		}
		if got.ID() == "" {
			t.Errorf("event %s not delivered (got %v)", want.ID(), rc.events)
			continue
		}
		resp, body := do(t, "GET", srv.URL+"/v1/messages/"+got.ID(), nil, nil)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("event %s delivered with ce-id %s, which is no message id: %d %s", want.ID(), got.ID(), resp.StatusCode, body)
			continue
		}
		if props, _ := jsonOf(t, body)["properties"].(map[string]any); props["ce-id"] != want.ID() {
			t.Errorf("message %s keeps ce-id %v, want the event's own id %s", got.ID(), props["ce-id"], want.ID())
		}
		want.SetID(got.ID())
		sameEvent(t, got, want)
	}
	raw, ok := rc.events[rawID]
	if !ok {
		t.Fatalf("the raw message %s was not delivered as an event with its message id", rawID)
	}
	if raw.Source() != "/topics/orders" || raw.Type() != "shipped" || raw.SpecVersion() != "1.0" || raw.Time().IsZero() ||
		raw.DataContentType() != "application/json" || string(raw.Data()) != `{"order":41}` {
		t.Errorf("the raw message as an event: %s", raw)
	}
}

// sameEvent fails unless got carries every attribute, extension and the
// data of want. Extensions travel as strings in binary mode, so they are
// compared as the SDK formats them.
func sameEvent(tb testing.TB, got, want cloudevents.Event) {
	tb.Helper()
	type attrs struct{ ID, Source, Type, Subject, Schema, CT, Spec string }
	g := attrs{got.ID(), got.Source(), got.Type(), got.Subject(), got.DataSchema(), got.DataContentType(), got.SpecVersion()}
	w := attrs{want.ID(), want.Source(), want.Type(), want.Subject(), want.DataSchema(), want.DataContentType(), want.SpecVersion()}
	if g != w {
		tb.Errorf("event %s: attributes %+v, want %+v", want.ID(), g, w)
	}
	// An event without a time gets the message's born time.
	if wt := want.Time(); !got.Time().Equal(wt) && (!wt.IsZero() || got.Time().IsZero()) {
		tb.Errorf("event %s: time %s, want %s", want.ID(), got.Time(), wt)
	}
	if len(got.Extensions()) != len(want.Extensions()) {
		tb.Errorf("event %s: extensions %v, want %v", want.ID(), got.Extensions(), want.Extensions())
	}
	for name, v := range want.Extensions() {
		if gv, ok := got.Extensions()[name]; !ok || fmt.Sprint(gv) != fmt.Sprint(v) {
			tb.Errorf("event %s: extension %s = %v, want %v", want.ID(), name, gv, v)
		}
	}
	if !bytes.Equal(got.Data(), want.Data()) {
		tb.Errorf("event %s: data %q, want %q", want.ID(), got.Data(), want.Data())
	}
}

// TestCloudEventProperties: an event's attributes are kept as ce-*
// properties (what a pull or a read by id shows), its type is the tag
// unless Postbus-Tag gives one, and its data is the body with its
// datacontenttype.
func TestCloudEventProperties(t *testing.T) {
	srv, _ := newTestServer(t, nil)
	for _, tc := range []struct {
		name    string
		hdr     map[string]string
		body    string
		tag, ct string
		data    string
		props   map[string]string
	}{
		{"binary", map[string]string{"ce-specversion": "1.0", "ce-id": "a1", "ce-source": "/src", "ce-type": "t.created",
			"ce-time": "2026-01-02T03:04:05.5Z", "ce-subject": "s 1%25 \"é\"", "ce-tenant": "acme", "Content-Type": "text/plain"},
			"hi", "t.created", "text/plain", "hi",
			map[string]string{"ce-specversion": "1.0", "ce-id": "a1", "ce-source": "/src", "ce-type": "t.created",
				"ce-time": "2026-01-02T03:04:05.5Z", "ce-subject": "s 1% \"é\"", "ce-tenant": "acme"}},
		{"binary percent-encoded and quoted", map[string]string{"ce-specversion": "1.0", "ce-id": `"a\"2"`, "ce-source": "/src",
			"ce-type": "t", "ce-subject": "caf%C3%A9%20au%20lait", "Postbus-Tag": "mine"},
			"x", "mine", broker.DefaultContentType, "x",
			map[string]string{"ce-specversion": "1.0", "ce-id": `a"2`, "ce-source": "/src", "ce-type": "t", "ce-subject": "café au lait"}},
		{"structured json data", map[string]string{"Content-Type": "application/cloudevents+json; charset=utf-8"},
			`{"specversion":"1.0","id":"b1","source":"/s","type":"t.json","count":3,"ok":false,"datacontenttype":"application/vnd.x+json","data":{"a":[1,2]}}`,
			"t.json", "application/vnd.x+json", `{"a":[1,2]}`,
			map[string]string{"ce-specversion": "1.0", "ce-id": "b1", "ce-source": "/s", "ce-type": "t.json", "ce-count": "3", "ce-ok": "false"}},
		{"structured no datacontenttype means JSON", map[string]string{"Content-Type": "application/cloudevents+json"},
			`{"specversion":"1.0","id":"b2","source":"/s","type":"t","data":"a JSON string"}`,
			"t", "application/json", `"a JSON string"`,
			map[string]string{"ce-specversion": "1.0", "ce-id": "b2", "ce-source": "/s", "ce-type": "t"}},
		{"structured base64", map[string]string{"Content-Type": "application/cloudevents+json"},
			`{"specversion":"1.0","id":"b3","source":"/s","type":"t","subject":null,"datacontenttype":"image/png","data_base64":"AAH/"}`,
			"t", "image/png", "\x00\x01\xff",
			map[string]string{"ce-specversion": "1.0", "ce-id": "b3", "ce-source": "/s", "ce-type": "t"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, "POST", srv.URL+"/v1/topics/events/messages", tc.hdr, strings.NewReader(tc.body))
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("publish: %d %s", resp.StatusCode, body)
			}
			id, _ := jsonOf(t, body)["msg_id"].(string)
			resp, body = do(t, "GET", srv.URL+"/v1/messages/"+id, nil, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("get: %d %s", resp.StatusCode, body)
			}
			var m struct {
				Tag         string            `json:"tag"`
				ContentType string            `json:"content_type"`
				Properties  map[string]string `json:"properties"`
				Body        string            `json:"body"`
				Encoding    string            `json:"encoding"`
			}
			if err := json.Unmarshal(body, &m); err != nil {
				t.Fatalf("decode %s: %v", body, err)
			}
			data := m.Body
			if m.Encoding == "base64" {
				b, err := base64.StdEncoding.DecodeString(m.Body)
				if err != nil {
					t.Fatal(err)
				}
				data = string(b)
			}
			if m.Tag != tc.tag || m.ContentType != tc.ct || data != tc.data {
				t.Errorf("tag %q content type %q data %q, want %q %q %q", m.Tag, m.ContentType, data, tc.tag, tc.ct, tc.data)
			}
			if fmt.Sprint(m.Properties) != fmt.Sprint(tc.props) {
				t.Errorf("properties %v\nwant       %v", m.Properties, tc.props)
			}
		})
	}
}

// TestCloudEventBatch: a batch of structured events
// (application/cloudevents-batch+json) stores each as a message.
func TestCloudEventBatch(t *testing.T) {
	srv, b := newTestServer(t, nil)
	resp, body := do(t, "POST", srv.URL+"/v1/topics/events/messages/batch", map[string]string{"Content-Type": "application/cloudevents-batch+json"},
		strings.NewReader(`[{"specversion":"1.0","id":"1","source":"/s","type":"one","data":{"n":1}},
		{"specversion":"1.0","id":"2","source":"/s","type":"two","datacontenttype":"text/plain","data":"two","ext1":"x"}]`))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("batch: %d %s", resp.StatusCode, body)
	}
	var res []publishResult
	if err := json.Unmarshal(body, &res); err != nil || len(res) != 2 {
		t.Fatalf("batch answer %s: %v", body, err)
	}
	for i, want := range []struct{ tag, ct, body, ext string }{{"one", "application/json", `{"n":1}`, ""}, {"two", "text/plain", "two", "x"}} {
		m, err := b.Message(context.Background(), res[i].MsgID)
		if err != nil {
			t.Fatal(err)
		}
		if m.Tag != want.tag || m.ContentType != want.ct || string(m.Body) != want.body || m.Properties["ce-ext1"] != want.ext || m.Properties["ce-id"] != fmt.Sprint(i+1) {
			t.Errorf("message %d: tag %q ct %q body %q props %v", i, m.Tag, m.ContentType, m.Body, m.Properties)
		}
	}
}

// TestCloudEventBadInput: an event that is not one (a required attribute
// missing, another specversion, a bad time, a bad extension name, data
// that does not fit its type...) is a 400 naming the attribute, and
// nothing is stored.
func TestCloudEventBadInput(t *testing.T) {
	srv, b := newTestServer(t, nil)
	if _, _, err := b.PutTopic(context.Background(), "events", broker.TopicSettings{Queues: 4}); err != nil {
		t.Fatal(err)
	}
	good := map[string]string{"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
	with := func(kv ...string) map[string]string {
		h := map[string]string{}
		for k, v := range good {
			h[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(h, kv[i])
			} else {
				h[kv[i]] = kv[i+1]
			}
		}
		return h
	}
	const ceJSON = "application/cloudevents+json"
	structured := map[string]string{"Content-Type": ceJSON}
	// The test server's messages hold up to 1 MiB.
	overLimit := `{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"` +
		base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xab}, 1<<20+1)) + `"}`
	for _, tc := range []struct {
		name   string
		path   string
		hdr    map[string]string
		body   string
		status int
		code   string
		field  string
	}{
		{"binary no id", "", with("ce-id", ""), "x", 400, "invalid_cloudevent", "ce-id"},
		{"binary no source", "", with("ce-source", ""), "x", 400, "invalid_cloudevent", "ce-source"},
		{"binary no type", "", with("ce-type", ""), "x", 400, "invalid_cloudevent", "ce-type"},
		{"binary no specversion", "", with("ce-specversion", ""), "x", 400, "invalid_cloudevent", "ce-specversion"},
		{"binary specversion 0.3", "", with("ce-specversion", "0.3"), "x", 400, "invalid_cloudevent", "ce-specversion"},
		{"binary bad time", "", with("ce-time", "yesterday"), "x", 400, "invalid_cloudevent", "ce-time"},
		{"binary time without zone", "", with("ce-time", "2026-01-02T03:04:05"), "x", 400, "invalid_cloudevent", "ce-time"},
		{"binary extension name with _", "", with("ce-my_ext", "v"), "x", 400, "invalid_cloudevent", "ce-my_ext"},
		{"binary extension name too long", "", with("ce-abcdefghijklmnopqrstu", "v"), "x", 400, "invalid_cloudevent", "ce-abcdefghijklmnopqrstu"},
		{"binary datacontenttype header", "", with("ce-datacontenttype", "text/plain"), "x", 400, "invalid_cloudevent", "ce-datacontenttype"},
		{"binary bad percent-encoding", "", with("ce-subject", "100%"), "x", 400, "invalid_cloudevent", "ce-subject"},
		{"binary empty subject", "", with("ce-subject", `""`), "x", 400, "invalid_cloudevent", "ce-subject"},
		{"binary type cannot be a tag", "", with("ce-type", "a||b"), "x", 400, "invalid_cloudevent", "ce-type"},
		{"binary no data", "", good, "", 400, "empty_body", "body"},
		{"Postbus-Prop-ce-id", "", map[string]string{"Postbus-Prop-ce-id": "1"}, "x", 400, "invalid_header", "Postbus-Prop-Ce-Id"},
		{"structured not an object", "", structured, `[1]`, 400, "invalid_cloudevent", ""},
		{"structured not JSON", "", structured, `{"id":`, 400, "invalid_cloudevent", ""},
		{"structured duplicate member", "", structured, `{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"t","data":1}`, 400, "invalid_cloudevent", ""},
		{"structured no id", "", structured, `{"specversion":"1.0","source":"/s","type":"t","data":1}`, 400, "invalid_cloudevent", "id"},
		{"structured empty type", "", structured, `{"specversion":"1.0","id":"1","source":"/s","type":"","data":1}`, 400, "invalid_cloudevent", "type"},
		{"structured specversion 1", "", structured, `{"specversion":"1","id":"1","source":"/s","type":"t","data":1}`, 400, "invalid_cloudevent", "specversion"},
		{"structured id a number", "", structured, `{"specversion":"1.0","id":1,"source":"/s","type":"t","data":1}`, 400, "invalid_cloudevent", "id"},
		{"structured bad time", "", structured, `{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2026-13-01T00:00:00Z","data":1}`, 400, "invalid_cloudevent", "time"},
		{"structured upper-case extension", "", structured, `{"specversion":"1.0","id":"1","source":"/s","type":"t","Tenant":"x","data":1}`, 400, "invalid_cloudevent", "Tenant"},
		{"structured object extension", "", structured, `{"specversion":"1.0","id":"1","source":"/s","type":"t","tenant":{"a":1},"data":1}`, 400, "invalid_cloudevent", "tenant"},
		{"structured float extension", "", structured, `{"specversion":"1.0","id":"1","source":"/s","type":"t","n":1.5,"data":1}`, 400, "invalid_cloudevent", "n"},
		{"structured data and data_base64", "", structured, `{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}`, 400, "invalid_cloudevent", "data"},
		{"structured bad base64", "", structured, `{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"%%%"}`, 400, "invalid_cloudevent", "data_base64"},
		{"structured text data not a string", "", structured, `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":{"a":1}}`, 400, "invalid_cloudevent", "data"},
		{"structured bad datacontenttype", "", structured, `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text","data":"x"}`, 400, "invalid_cloudevent", "datacontenttype"},
		{"structured no data", "", structured, `{"specversion":"1.0","id":"1","source":"/s","type":"t"}`, 400, "empty_body", "data"},
		{"structured data over the limit", "", structured, overLimit, 413, "body_too_large", "data"},
		{"structured with ce- headers", "", map[string]string{"Content-Type": ceJSON, "ce-id": "2"}, `{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1}`, 400, "invalid_cloudevent", "ce-id"},
		{"event batch to a single publish", "", map[string]string{"Content-Type": "application/cloudevents-batch+json"}, `[]`, 415, "unsupported_media_type", "Content-Type"},
		{"one event to the batch route", "/batch", structured, `{}`, 415, "unsupported_media_type", "Content-Type"},
		{"ce- headers on a batch", "/batch", map[string]string{"Content-Type": "application/json", "ce-id": "1"}, `[{"body":"x"}]`, 400, "invalid_cloudevent", "ce-id"},
		{"event batch with a bad event", "/batch", map[string]string{"Content-Type": "application/cloudevents-batch+json"},
			`[{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1},{"specversion":"1.0","id":"2","source":"/s","data":1}]`, 400, "invalid_cloudevent", "[1].type"},
		{"event batch item without data", "/batch", map[string]string{"Content-Type": "application/cloudevents-batch+json"},
			`[{"specversion":"1.0","id":"1","source":"/s","type":"t"}]`, 400, "empty_body", "[0].data"},
		{"event batch empty", "/batch", map[string]string{"Content-Type": "application/cloudevents-batch+json"}, `[]`, 400, "invalid_batch", ""},
		{"plain batch with a partial event", "/batch", map[string]string{"Content-Type": "application/json"},
			`[{"body":"x"},{"body":"x","properties":{"ce-id":"1"}}]`, 400, "invalid_cloudevent", "[1].properties.ce-specversion"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, "POST", srv.URL+"/v1/topics/events/messages"+tc.path, tc.hdr, strings.NewReader(tc.body))
			code, field := problemCode(t, body)
			if resp.StatusCode != tc.status || code != tc.code || field != tc.field {
				t.Fatalf("got %d %s field %q, want %d %s field %q: %s", resp.StatusCode, code, field, tc.status, tc.code, tc.field, body)
			}
			if detail := jsonOf(t, body)["detail"].(string); strings.HasPrefix(detail, ": ") || detail == "" {
				t.Errorf("detail %q", detail)
			}
		})
	}
	st, err := b.Topic(context.Background(), "events")
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != 0 {
		t.Fatalf("%d messages stored from bad events", st.Messages)
	}
}

// FuzzStructuredEvent: any body is an event or an invalid_cloudevent (or
// empty_body) error, never a panic; what is taken passes the broker's own
// check of ce- properties.
func FuzzStructuredEvent(f *testing.F) {
	for _, seed := range []string{
		`{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":1}}`,
		`{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"x","ext":7}`,
		`{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AAE="}`,
		`"\`, `{"a":"\ud800"}`, `[`, `{}`, `null`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		props, _, _, perr := structuredEvent(data, "")
		if perr != nil {
			if perr.Code != broker.CodeInvalidCloudEvent {
				t.Fatalf("code %s for %q", perr.Code, data)
			}
			return
		}
		if err := broker.CheckCloudEvent("", props); err != nil {
			t.Fatalf("taken %q, but the broker refuses it: %v", data, err)
		}
	})
}

// TestCloudEventAtTheLimit: a structured event whose data is as large as a
// message may be is taken, though the request around it is larger (its
// base64 and attributes); the limit is the data's, as for any message.
func TestCloudEventAtTheLimit(t *testing.T) {
	srv, b := newTestServer(t, nil)
	data := bytes.Repeat([]byte{0xcd}, 1<<20) // the test server's limit
	for _, tc := range []struct{ name, body string }{
		{"data_base64", `{"specversion":"1.0","id":"big","source":"/s","type":"t","data_base64":"` + base64.StdEncoding.EncodeToString(data) + `"}`},
		{"escaped text", `{"specversion":"1.0","id":"big","source":"/s","type":"t","datacontenttype":"text/plain","data":"` +
			strings.Repeat(`\"`, 1<<20) + `"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, "POST", srv.URL+"/v1/topics/big/messages", map[string]string{"Content-Type": "application/cloudevents+json"},
				strings.NewReader(tc.body))
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("an event with %d bytes of data in a %d-byte request: %d %.300s", len(data), len(tc.body), resp.StatusCode, body)
			}
			id, _ := jsonOf(t, body)["msg_id"].(string)
			m, err := b.Message(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Body) != 1<<20 {
				t.Fatalf("stored %d bytes of data, want %d", len(m.Body), 1<<20)
			}
		})
	}
}
