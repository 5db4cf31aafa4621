package broker

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// CloudEvents (https://cloudevents.io, spec 1.0) kept as message
// properties. A message published as a CloudEvent (binary or structured
// mode, see httpapi) carries its context attributes as properties named
// "ce-" + the attribute's name: ce-specversion, ce-id, ce-source, ce-type,
// and when the event had them ce-subject, ce-time, ce-dataschema and one
// ce-<name> per extension. Its data is the message body and its
// datacontenttype the message's content type. The names are the binary
// mode's header names, so a pull consumer reads the event back from a
// message's properties as it would from a binary-mode request, and a
// subscription with format "cloudevents" sends them back as those headers.
//
// The "ce-" prefix is the events' alone: a message with any ce- property
// must carry a whole, valid event (CheckCloudEvent), whichever way it was
// published, so that what a consumer reads as an event always is one.
const (
	CEPropPrefix      = "ce-"
	CESpecVersion     = "1.0"
	PropCESpecVersion = CEPropPrefix + "specversion"
	PropCEID          = CEPropPrefix + "id"
	PropCESource      = CEPropPrefix + "source"
	PropCEType        = CEPropPrefix + "type"
	PropCESubject     = CEPropPrefix + "subject"
	PropCETime        = CEPropPrefix + "time"
	PropCEDataSchema  = CEPropPrefix + "dataschema"
	// MaxCEExtensionNameLen is the spec's advice (attribute names SHOULD
	// NOT exceed 20 characters), taken as a limit so that every event
	// stored here can be sent on through any SDK.
	MaxCEExtensionNameLen = 20
)

// ceReserved are the attribute names that are not extensions: the
// context attributes, and the JSON format's data members, which no
// extension may take.
var ceReserved = map[string]bool{"specversion": true, "id": true, "source": true, "type": true,
	"subject": true, "time": true, "dataschema": true, "datacontenttype": true, "data": true, "data_base64": true}

// IsCloudEvent reports whether properties hold a CloudEvent.
func IsCloudEvent(props map[string]string) bool {
	_, ok := props[PropCESpecVersion]
	return ok
}

// ValidCEAttributeName reports whether name may name an extension
// attribute: 1-20 of a-z 0-9 and not a context attribute's name.
func ValidCEAttributeName(name string) bool {
	if name == "" || len(name) > MaxCEExtensionNameLen || ceReserved[name] {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// CheckCloudEvent checks the ce- properties of a message: none, or a
// whole CloudEvent 1.0 (see CloudEventFault). field prefixes the error's
// field ("[3]."). The error is a CodeInvalidCloudEvent *Error naming the
// property at fault.
func CheckCloudEvent(field string, props map[string]string) error {
	if attr, detail := CloudEventFault(props); detail != "" {
		return errf(CodeInvalidCloudEvent, field+"properties."+CEPropPrefix+attr, "%s", detail)
	}
	return nil
}

// CloudEventFault says what is wrong with the CloudEvent in props (its
// ce- properties): the attribute at fault and why, or "", "" when there
// are no ce- properties or they are a whole event: specversion 1.0, a
// non-empty id, source and type, an RFC 3339 time, a non-empty subject
// and dataschema when given, and extension names of a-z 0-9.
func CloudEventFault(props map[string]string) (attr, detail string) {
	found := false
	for name := range props {
		if strings.HasPrefix(name, CEPropPrefix) {
			found = true
			break
		}
	}
	if !found {
		return "", ""
	}
	switch v, ok := props[PropCESpecVersion]; {
	case !ok:
		return "specversion", "a CloudEvent (a message with ce-* attributes) needs specversion " + CESpecVersion
	case v != CESpecVersion:
		return "specversion", fmt.Sprintf("specversion %q is not supported: only %s is", v, CESpecVersion)
	}
	for _, attr := range []string{"id", "source", "type"} {
		if props[CEPropPrefix+attr] == "" {
			return attr, "a CloudEvent needs a non-empty " + attr
		}
	}
	// In name order, so that of several faults the answer always names
	// the same.
	for _, name := range slices.Sorted(maps.Keys(props)) {
		attr, ok := strings.CutPrefix(name, CEPropPrefix)
		if !ok {
			continue
		}
		v := props[name]
		switch attr {
		case "specversion", "id", "source", "type":
		case "time":
			if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
				return attr, fmt.Sprintf("time %q is not an RFC 3339 timestamp like 2026-01-02T15:04:05Z", v)
			}
		case "subject", "dataschema":
			if v == "" {
				return attr, attr + ", when given, must not be empty"
			}
		default:
			if !ValidCEAttributeName(attr) {
				return attr, fmt.Sprintf("%q is not a CloudEvents extension name: 1-%d characters of a-z 0-9, not a context attribute's name", attr, MaxCEExtensionNameLen)
			}
		}
	}
	return "", ""
}
