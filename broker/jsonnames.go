package broker

import (
	"bytes"
	"encoding/json"
)

// DuplicateJSONName returns the first member name that an object of data
// has twice (after unescaping), or false. encoding/json keeps the last of
// the two without a word, so a body or an answer with a member twice
// ({"status":"rollback","status":"commit"}) would be read by whichever
// came last: a proxy appending a field could flip it. The HTTP API refuses
// such request bodies and tokens; push refuses such answers from
// endpoints. data must be JSON that encoding/json decodes.
func DuplicateJSONName(data []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		object, wantName bool
		names            map[string]bool
	}
	var stack []*frame
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].object {
			stack[n-1].wantName = true
		}
	}
	for {
		tok, err := dec.Token()
		if err != nil {
			return "", false // the end (data is valid JSON)
		}
		if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].wantName {
			top := stack[n-1]
			if tok == json.Delim('}') {
				stack = stack[:n-1]
				valueDone()
				continue
			}
			name, _ := tok.(string)
			if top.names[name] {
				return name, true
			}
			top.names[name] = true
			top.wantName = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{object: true, wantName: true, names: map[string]bool{}})
		case json.Delim('['):
			stack = append(stack, &frame{})
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
			valueDone()
		default:
			valueDone()
		}
	}
}
