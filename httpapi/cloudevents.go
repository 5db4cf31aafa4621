package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/postbus/postbus/broker"
)

// CloudEvents 1.0 over HTTP, publish side (DESIGN §4 "CloudEvents"). A
// publish is an event in binary mode when it carries ce-* headers, in
// structured mode when its Content-Type is application/cloudevents+json;
// a batch publish takes application/cloudevents-batch+json. The event's
// attributes become the message's ce-* properties (see broker's
// cloudevents.go), its data the body and its datacontenttype the content
// type; its type is the tag unless Postbus-Tag names one.
const (
	mediaCloudEvent      = "application/cloudevents+json"
	mediaCloudEventBatch = "application/cloudevents-batch+json"
	ceHeaderPrefix       = "Ce-" // canonical form of the binary mode's ce- headers
)

// ceMode says how a request carries a CloudEvent.
type ceMode int

const (
	ceNone ceMode = iota
	ceBinary
	ceStructured
	ceBatch
)

// cloudEventMode is how the request with headers h and media type ct
// (its Content-Type, "" when none) carries events.
func cloudEventMode(h http.Header, ct string) ceMode {
	if ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err == nil {
			switch mt {
			case mediaCloudEvent:
				return ceStructured
			case mediaCloudEventBatch:
				return ceBatch
			}
		}
	}
	for name := range h {
		if strings.HasPrefix(name, ceHeaderPrefix) {
			return ceBinary
		}
	}
	return ceNone
}

// ceError is an invalid event: a 400 invalid_cloudevent naming the header
// (binary mode) or member (structured mode) at fault.
func ceError(field, format string, args ...any) *broker.Error {
	return &broker.Error{Code: broker.CodeInvalidCloudEvent, Field: field, Detail: fmt.Sprintf(format, args...)}
}

// binaryEvent reads a binary-mode event's attributes from its ce-*
// headers into ce- properties. Header names are case-insensitive, so
// they are taken in lower case; values are unquoted and percent-decoded
// as the HTTP binding (3.1.3.2) says.
func binaryEvent(h http.Header) (map[string]string, *broker.Error) {
	props := map[string]string{}
	for name, vs := range h {
		if !strings.HasPrefix(name, ceHeaderPrefix) {
			continue
		}
		attr := strings.ToLower(name[len(ceHeaderPrefix):])
		header := broker.CEPropPrefix + attr
		if len(vs) != 1 {
			return nil, ceError(header, "header %s is given %d times; an attribute has one value", header, len(vs))
		}
		switch {
		case attr == "datacontenttype":
			return nil, ceError(header, "in binary mode the datacontenttype is the Content-Type header, not %s", header)
		case !knownCEAttr(attr) && !broker.ValidCEAttributeName(attr):
			return nil, ceError(header, "header %s: %q is not a CloudEvents extension name: 1-%d characters of a-z 0-9, not a reserved name", header, attr, broker.MaxCEExtensionNameLen)
		}
		v, err := decodeCEHeader(vs[0])
		if err != nil {
			return nil, ceError(header, "header %s: %v", header, err)
		}
		props[header] = v
	}
	if perr := checkCEProps(props, func(attr string) string { return broker.CEPropPrefix + attr }); perr != nil {
		return nil, perr
	}
	return props, nil
}

// knownCEAttr reports whether attr is a context attribute a ce- header
// may carry (datacontenttype is Content-Type in binary mode).
func knownCEAttr(attr string) bool {
	switch attr {
	case "specversion", "id", "source", "type", "subject", "time", "dataschema":
		return true
	}
	return false
}

// decodeCEHeader undoes a ce- header value's encoding: a quoted string is
// unquoted (RFC 9110 5.6.4), then one round of percent-decoding (RFC
// 3986) is made; the result must be UTF-8.
func decodeCEHeader(v string) (string, error) {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		var b strings.Builder
		in := v[1 : len(v)-1]
		for i := 0; i < len(in); i++ {
			c := in[i]
			if c == '\\' {
				if i+1 == len(in) {
					return "", fmt.Errorf("%q ends in a lone backslash", v)
				}
				i++
				c = in[i]
			} else if c == '"' {
				return "", fmt.Errorf("%q has an unescaped quote inside its quoted string", v)
			}
			b.WriteByte(c)
		}
		v = b.String()
	}
	if strings.IndexByte(v, '%') >= 0 {
		d, err := url.PathUnescape(v)
		if err != nil {
			return "", fmt.Errorf("%q is not percent-encoded as the CloudEvents HTTP binding says (%%XX, with %% itself sent as %%25)", v)
		}
		v = d
	}
	if !utf8.ValidString(v) {
		return "", fmt.Errorf("the value is not UTF-8 once percent-decoded")
	}
	return v, nil
}

// checkCEProps checks a decoded event's attributes as the broker will
// (broker.CloudEventFault), naming the attribute at fault as the mode
// spells it: name maps an attribute to its header or member name.
func checkCEProps(props map[string]string, name func(attr string) string) *broker.Error {
	if attr, detail := broker.CloudEventFault(props); detail != "" {
		return ceError(name(attr), "%s", detail)
	}
	return nil
}

// structuredEvent decodes a structured-mode event (the JSON event format)
// into its ce- properties, its data and the data's content type. field
// prefixes member names in errors ("[3]." in a batch).
func structuredEvent(data []byte, field string) (props map[string]string, body []byte, ct string, perr *broker.Error) {
	member := func(attr string) string { return field + attr }
	// checkJSONText reads only what encoding/json takes.
	if !json.Valid(data) {
		return nil, nil, "", ceError(strings.TrimSuffix(field, "."), "a structured CloudEvent is a JSON object (the JSON event format); this is not JSON")
	}
	if err := checkJSONText(data); err != nil {
		return nil, nil, "", ceError(strings.TrimSuffix(field, "."), "the event's JSON: %v", err)
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(data, &members); err != nil || members == nil {
		return nil, nil, "", ceError(strings.TrimSuffix(field, "."), "a structured CloudEvent is a JSON object (the JSON event format)")
	}
	props = map[string]string{}
	var dataRaw, data64 json.RawMessage
	for name, raw := range members {
		isNull := bytes.Equal(raw, []byte("null"))
		switch name {
		case "data":
			if !isNull {
				dataRaw = raw
			}
			continue
		case "data_base64":
			if !isNull {
				data64 = raw
			}
			continue
		}
		if !knownCEAttr(name) && name != "datacontenttype" && !broker.ValidCEAttributeName(name) {
			return nil, nil, "", ceError(member(name), "%q is not a CloudEvents attribute: extension names are 1-%d characters of a-z 0-9", name, broker.MaxCEExtensionNameLen)
		}
		if isNull {
			continue // an attribute without a value is not set
		}
		var v string
		if knownCEAttr(name) || name == "datacontenttype" {
			if err := json.Unmarshal(raw, &v); err != nil {
				return nil, nil, "", ceError(member(name), "%s must be a JSON string", name)
			}
		} else {
			var ok bool
			if v, ok = extensionValue(raw); !ok {
				return nil, nil, "", ceError(member(name), "extension %s must be a string, a boolean or an integer (-2147483648 to 2147483647)", name)
			}
		}
		if name == "datacontenttype" {
			ct = v
			continue
		}
		props[broker.CEPropPrefix+name] = v
	}
	if perr := checkCEProps(props, member); perr != nil {
		return nil, nil, "", perr
	}
	if ct != "" {
		if err := checkMediaType(ct); err != nil {
			return nil, nil, "", ceError(member("datacontenttype"), "%v", err)
		}
	}
	switch {
	case dataRaw != nil && data64 != nil:
		return nil, nil, "", ceError(member("data"), "give data or data_base64, not both")
	case data64 != nil:
		var s string
		if err := json.Unmarshal(data64, &s); err != nil {
			return nil, nil, "", ceError(member("data_base64"), "data_base64 must be a JSON string")
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, nil, "", ceError(member("data_base64"), "data_base64 is not standard base64: %v", err)
		}
		body = b
	case dataRaw != nil:
		// The JSON format: data is the JSON value itself when the
		// content type is JSON (or not given, which means JSON), else a
		// string holding the data.
		if ct == "" {
			ct = "application/json"
		}
		if jsonMedia(ct) {
			body = dataRaw
			break
		}
		var s string
		if err := json.Unmarshal(dataRaw, &s); err != nil {
			return nil, nil, "", ceError(member("data"), "datacontenttype %s is not JSON, so data must be a JSON string holding it (or give data_base64)", ct)
		}
		body = []byte(s)
	}
	return props, body, ct, nil
}

// extensionValue is an extension member's value as a string: the JSON
// event format maps the CloudEvents types to strings, booleans and
// integers.
func extensionValue(raw json.RawMessage) (string, bool) {
	switch raw[0] {
	case '"':
		var s string
		return s, json.Unmarshal(raw, &s) == nil
	case 't', 'f':
		return string(raw), true
	case '{', '[':
		return "", false
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil || n < math.MinInt32 || n > math.MaxInt32 {
		return "", false
	}
	return strconv.FormatInt(n, 10), true
}

// jsonMedia reports whether media type ct is JSON: application/json,
// */json or */*+json, as the JSON event format reads datacontenttype.
func jsonMedia(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	_, sub, _ := strings.Cut(mt, "/")
	return sub == "json" || strings.HasSuffix(sub, "+json")
}

// applyEvent makes m the event with attributes props: its properties, and
// its type as the tag unless the publish named one.
func applyEvent(m *broker.Message, props map[string]string, field string) *broker.Error {
	for name, v := range props {
		if m.Properties == nil {
			m.Properties = make(map[string]string, len(props))
		}
		m.Properties[name] = v
	}
	if m.Tag == "" {
		typ := props[broker.PropCEType]
		if utf8.RuneCountInString(typ) > broker.MaxTagLen || strings.Contains(typ, "||") || typ == "*" {
			return ceError(field+"type", "type %q cannot be the message's tag (at most %d characters, no '||', not '*'): give the tag yourself", typ, broker.MaxTagLen)
		}
		m.Tag = typ
	}
	return nil
}

// structuredLimit is how large a structured event may be whose data may
// take up to maxBody bytes: base64 (4/3) or JSON escaping, plus the
// attributes (at most 16 KiB as properties) and the JSON around them.
func structuredLimit(maxBody int) int { return maxBody*3/2 + 1<<20 }

// checkEventData refuses an event's data that a message cannot hold: none
// (a message holds at least one byte), or more than maxBody bytes. field
// prefixes the member ("[3]." in a batch).
func checkEventData(data []byte, maxBody int, field string) *broker.Error {
	switch {
	case len(data) == 0:
		return &broker.Error{Code: broker.CodeEmptyBody, Field: field + "data", Detail: "the event has no data (neither data nor data_base64), and a message needs at least one byte"}
	case maxBody > 0 && len(data) > maxBody:
		return &broker.Error{Code: broker.CodeBodyTooLarge, Field: field + "data", Detail: fmt.Sprintf("the event's data is %d bytes; the limit is %d", len(data), maxBody)}
	}
	return nil
}

// decodeEventBatch parses a batch of structured events (the JSON batch
// format: an array of events) into messages.
func decodeEventBatch(data []byte) ([]*broker.Message, error) {
	var items []json.RawMessage
	if !json.Valid(data) {
		return nil, &batchError{codeInvalidJSON, "", "a batch of CloudEvents is a JSON array of events; this is not JSON"}
	}
	if err := checkJSONText(data); err != nil {
		return nil, &batchError{broker.CodeInvalidCloudEvent, "", "the batch's JSON: " + err.Error()}
	}
	if err := json.Unmarshal(data, &items); err != nil {
		return nil, &batchError{codeInvalidJSON, "", "a batch of CloudEvents is a JSON array of events: " + err.Error()}
	}
	switch {
	case len(items) == 0:
		return nil, &batchError{broker.CodeInvalidBatch, "", "the batch is empty"}
	case len(items) > broker.MaxBatchMessages:
		return nil, &batchError{broker.CodeBatchTooLarge, "", fmt.Sprintf("a batch holds at most %d messages", broker.MaxBatchMessages)}
	}
	msgs := make([]*broker.Message, len(items))
	for i, raw := range items {
		field := fmt.Sprintf("[%d].", i)
		props, body, ct, perr := structuredEvent(raw, field)
		if perr == nil {
			// The size is the broker's to check, against the whole batch.
			perr = checkEventData(body, 0, field)
		}
		if perr != nil {
			return nil, &batchError{perr.Code, perr.Field, perr.Detail}
		}
		m := &broker.Message{Body: body, ContentType: ct}
		if perr := applyEvent(m, props, field); perr != nil {
			return nil, &batchError{perr.Code, perr.Field, perr.Detail}
		}
		msgs[i] = m
	}
	return msgs, nil
}
