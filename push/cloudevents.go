package push

import (
	"net/http"
	"strings"
	"time"

	"github.com/postbus/postbus/broker"
)

// DefaultCEType is the ce-type of a message that was not published as a
// CloudEvent and has no tag.
const DefaultCEType = "postbus.message"

// cloudEventHeaders sets the ce-* headers of a binary-mode CloudEvents
// delivery (HTTP protocol binding 1.0) of d; its Content-Type is the
// datacontenttype. The id is always the message id. A message published
// as a CloudEvent goes out as that event otherwise: its source, type,
// time, subject, dataschema and extensions, as kept in its ce-
// properties, with the message's born time as its time when it had none.
// Any other message is made one: /topics/{topic} as the source, its tag
// (or DefaultCEType) as the type and its born time as the time.
//
// The body and the signatures are those of any delivery: the ce-*
// headers are not signed, as no header is.
func cloudEventHeaders(h http.Header, d Delivery, event bool) {
	set := func(attr, v string) { h[broker.CEPropPrefix+attr] = []string{encodeCEHeader(v)} }
	set("specversion", broker.CESpecVersion)
	if event {
		for name, v := range d.Properties {
			if attr, ok := strings.CutPrefix(name, broker.CEPropPrefix); ok && attr != "specversion" && attr != "id" {
				set(attr, v)
			}
		}
	} else {
		set("source", "/topics/"+d.Topic)
		typ := d.Tag
		if typ == "" {
			typ = DefaultCEType
		}
		set("type", typ)
	}
	// The id is the message's (DESIGN §4), for an event too: the same on
	// every delivery of this message, and one a publish retried under the
	// event's own id does not share; the event's own id stays in its ce-id
	// property (pull, GET /v1/messages/{id}).
	set("id", d.MsgID)
	if _, ok := d.Properties[broker.PropCETime]; (!event || !ok) && !d.BornAt.IsZero() {
		set("time", d.BornAt.UTC().Format(time.RFC3339Nano))
	}
}

// wholeEvent reports whether props hold a whole CloudEvent, as every
// message published since ce- properties are checked does. A message
// stored before (a batch's properties were not checked) may have ce-
// properties that are not one: it goes out as an event made from the
// message, its ce- properties as Postbus-Prop-* (the dispatcher logs
// and counts it, see partialEvent).
func wholeEvent(props map[string]string) bool {
	if !broker.IsCloudEvent(props) {
		return false
	}
	_, detail := broker.CloudEventFault(props)
	return detail == ""
}

// partialEvent reports whether m has ce- properties that are not a whole
// CloudEvent.
func partialEvent(props map[string]string) (attr, detail string) {
	return broker.CloudEventFault(props)
}

// encodeCEHeader percent-encodes a ce- header value as the HTTP binding
// (3.1.3.2) says: space, '"', '%' and every byte outside printable ASCII.
func encodeCEHeader(v string) string {
	n := 0
	for i := 0; i < len(v); i++ {
		if ceEscape(v[i]) {
			n++
		}
	}
	if n == 0 {
		return v
	}
	const hex = "0123456789ABCDEF"
	out := make([]byte, 0, len(v)+2*n)
	for i := 0; i < len(v); i++ {
		c := v[i]
		if ceEscape(c) {
			out = append(out, '%', hex[c>>4], hex[c&15])
			continue
		}
		out = append(out, c)
	}
	return string(out)
}

func ceEscape(c byte) bool { return c <= ' ' || c >= 0x7f || c == '"' || c == '%' }
