package push

import (
	"bytes"
	"encoding/json"
)

// duplicateName returns the first member name that an object of data has
// twice (after unescaping), or false. encoding/json keeps the last of the
// two without a word, so an answer an endpoint gives with a member twice
// ({"status":"rollback","status":"commit"}, {"failed":["x"],"failed":[]})
// would be read by whichever came last: a proxy appending a field could
// flip it. Every request body the bus receives refuses such objects
// (httpapi's JSON text check); the answers push parses from endpoints do
// too. data must be JSON that encoding/json decodes.
func duplicateName(data []byte) (string, bool) {
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
			return "", false // the end of the first value
		}
		if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].wantName {
			top := stack[n-1]
			if tok == json.Delim('}') {
				stack = stack[:n-1]
				valueDone()
				if len(stack) == 0 {
					return "", false
				}
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
			if len(stack) == 0 {
				return "", false
			}
		default:
			valueDone()
			if len(stack) == 0 {
				return "", false
			}
		}
	}
}
