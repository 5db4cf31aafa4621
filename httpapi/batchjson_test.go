package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// stdDecodeBatch is the reference parseBatchItems replaces: encoding/json
// as decodeBatch used it.
func stdDecodeBatch(data []byte) ([]batchItem, error) {
	var items []batchItem
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&items); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("data after the array")
	}
	return items, nil
}

// batchJSONOracle says what parseBatchItems must do with data: accept it
// and return want, or reject it. It is encoding/json's verdict (the same
// Decoder calls as decodeBatch), narrowed by parseBatchItems' two
// deliberate differences, each checked here by independent means: an
// item's field name that is not byte-equal to a json tag of batchItem (so
// accepted by encoding/json only through case folding), and anything but
// whitespace after the value (Decoder.More lets ']' and '}' through).
func batchJSONOracle(tb testing.TB, data []byte) (want []batchItem, accept bool) {
	tb.Helper()
	var items []batchItem
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&items); err != nil {
		return nil, false
	}
	if dec.More() {
		return nil, false
	}
	if rest := data[dec.InputOffset():]; len(bytes.TrimLeft(rest, " \t\r\n")) != 0 {
		return nil, false
	}
	if !exactFieldNames(tb, data) || checkJSONText(data) != nil {
		return nil, false
	}
	return items, true
}

// batchItemNames are batchItem's json tags, read by reflection so that
// they do not come from the parser under test.
var batchItemNames = func() map[string]bool {
	names := make(map[string]bool)
	t := reflect.TypeFor[batchItem]()
	for i := range t.NumField() {
		names[strings.Split(t.Field(i).Tag.Get("json"), ",")[0]] = true
	}
	return names
}()

// batchItemNameList is batchItemNames in order, for reproducible choices.
var batchItemNameList = slices.Sorted(maps.Keys(batchItemNames))

// exactFieldNames reports whether every item's field names, unescaped,
// are byte-equal to batchItem's json tags. data must be a batch that
// encoding/json accepted; its tokenizer does the walking.
func exactFieldNames(tb testing.TB, data []byte) bool {
	tb.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	token := func() json.Token {
		tok, err := dec.Token()
		if err != nil {
			tb.Fatalf("tokenizing %q, which encoding/json decoded: %v", data, err)
		}
		return tok
	}
	if token() != json.Delim('[') {
		return true // null
	}
	for dec.More() {
		if token() != json.Delim('{') {
			continue // a null item
		}
		for dec.More() {
			name, _ := token().(string)
			if !batchItemNames[name] {
				return false
			}
			// Skip the value.
			for depth := 0; ; {
				switch token() {
				case json.Delim('['), json.Delim('{'):
					depth++
				case json.Delim(']'), json.Delim('}'):
					depth--
				}
				if depth == 0 {
					break
				}
			}
		}
		token() // }
	}
	return true
}

// checkAgainstStd fails tb unless parseBatchItems does with data what the
// oracle says, and reports whether that was to accept it.
func checkAgainstStd(tb testing.TB, data []byte) bool {
	tb.Helper()
	want, accept := batchJSONOracle(tb, data)
	got, err := parseBatchItems(data)
	switch {
	case accept && err != nil:
		tb.Fatalf("input %q: encoding/json gives %s, parseBatchItems fails: %v", data, dumpItems(want), err)
	case !accept && err == nil:
		_, stdErr := stdDecodeBatch(data)
		tb.Fatalf("input %q: parseBatchItems gives %s, want an error (encoding/json: %v)", data, dumpItems(got), stdErr)
	case accept && !reflect.DeepEqual(got, want):
		tb.Fatalf("input %q:\nparseBatchItems gives %s\nencoding/json gives  %s", data, dumpItems(got), dumpItems(want))
	}
	return accept
}

// dumpItems shows items with nil and empty told apart (unlike %v) and
// pointers followed (unlike %#v).
func dumpItems(items []batchItem) string {
	if items == nil {
		return "nil"
	}
	var b strings.Builder
	b.WriteString("[")
	for _, it := range items {
		ptr := func(p *string) string {
			if p == nil {
				return "nil"
			}
			return fmt.Sprintf("%q", *p)
		}
		fmt.Fprintf(&b, "{body=%s body_base64=%s content_type=%q tag=%q keys=%#v sharding_key=%q delay=%q delay_level=%d deliver_at=%q dedup_id=%q properties=%#v}",
			ptr(it.Body), ptr(it.BodyBase64), it.ContentType, it.Tag, it.Keys, it.ShardingKey, it.Delay, it.DelayLevel,
			it.DeliverAt, it.DedupID, it.Properties)
	}
	b.WriteString("]")
	return b.String()
}

func sp(s string) *string { return &s }

// batchJSONCases are tricky inputs: the table test's cases and the fuzz
// target's seeds.
var batchJSONCases = []struct {
	name string
	in   string
	want []batchItem // when wantErr is ""
	// wantErr is a part of the error message, for inputs to reject.
	wantErr string
	// stdAccepts marks a deliberate difference: encoding/json, as
	// decodeBatch used it, accepts the input.
	stdAccepts bool
}{
	// Shapes.
	{name: "empty array", in: `[]`, want: []batchItem{}},
	{name: "top-level null", in: `null`, want: nil},
	{name: "null item", in: `[null,{}]`, want: []batchItem{{}, {}}},
	{name: "whitespace everywhere", in: " \t\r\n[ \n{ \"body\" :\t\"a\" ,\r\"keys\" : [ \"k\" , null ] ,\"properties\":{ \"p\" : \"v\" } } , null\n] \r\n\t",
		want: []batchItem{{Body: sp("a"), Keys: []string{"k", ""}, Properties: map[string]string{"p": "v"}}, {}}},
	{name: "every field", in: `[{"body":"b","body_base64":"AA==","content_type":"text/plain","tag":"t","keys":["k1","k2"],` +
		`"sharding_key":"s","delay":"10s","delay_level":3,"deliver_at":"2030-01-02T03:04:05Z","dedup_id":"d","properties":{"a":"1","b":"2"}}]`,
		want: []batchItem{{Body: sp("b"), BodyBase64: sp("AA=="), ContentType: "text/plain", Tag: "t", Keys: []string{"k1", "k2"},
			ShardingKey: "s", Delay: "10s", DelayLevel: 3, DeliverAt: "2030-01-02T03:04:05Z", DedupID: "d",
			Properties: map[string]string{"a": "1", "b": "2"}}}},
	{name: "empty strings", in: `[{"body":"","tag":"","keys":[""],"properties":{"":""}}]`,
		want: []batchItem{{Body: sp(""), Keys: []string{""}, Properties: map[string]string{"": ""}}}},

	// Strings.
	{name: "each short escape", in: `[{"body":"\"\\\/\b\f\n\r\t"}]`, want: []batchItem{{Body: sp("\"\\/\b\f\n\r\t")}}},
	{name: "escapes amid text", in: `[{"body":"a\nb\"c"}]`, want: []batchItem{{Body: sp("a\nb\"c")}}},
	{name: "u escapes", in: `[{"body":"\u0041\u00e9\u4E2D\u0000\u001f"}]`, want: []batchItem{{Body: sp("Aé中\x00\x1f")}}},
	{name: "surrogate pair", in: `[{"body":"\ud83d\ude00 \uD83D\uDE00"}]`, want: []batchItem{{Body: sp("😀 😀")}}},
	{name: "lone high surrogate", in: `[{"body":"\ud83d"}]`, wantErr: "unpaired surrogate escape", stdAccepts: true},
	{name: "high surrogate then text", in: `[{"body":"\ud83dx"}]`, wantErr: "unpaired surrogate escape", stdAccepts: true},
	{name: "lone low surrogate", in: `[{"body":"\ude00"}]`, wantErr: "unpaired surrogate escape", stdAccepts: true},
	{name: "surrogates reversed", in: `[{"body":"\ude00\ud83d"}]`, wantErr: "unpaired surrogate escape", stdAccepts: true},
	{name: "high high low", in: `[{"body":"\ud83d\ud83d\ude00"}]`, wantErr: "unpaired surrogate escape", stdAccepts: true},
	{name: "high then BMP escape", in: `[{"body":"\ud83d\u0041"}]`, wantErr: "unpaired surrogate escape", stdAccepts: true},
	{name: "high then short escape", in: `[{"body":"\ud83d\n"}]`, wantErr: "unpaired surrogate escape", stdAccepts: true},
	{name: "raw UTF-8", in: "[{\"body\":\"é中😀\u2028\x7f\"}]", want: []batchItem{{Body: sp("é中😀\u2028\x7f")}}},
	{name: "invalid UTF-8 byte", in: "[{\"body\":\"a\xffb\"}]", wantErr: "invalid UTF-8", stdAccepts: true},
	{name: "truncated UTF-8", in: "[{\"body\":\"a\xc3\"}]", wantErr: "invalid UTF-8", stdAccepts: true},
	{name: "UTF-8 surrogate", in: "[{\"body\":\"\xed\xa0\x80\"}]", wantErr: "invalid UTF-8", stdAccepts: true},
	{name: "overlong UTF-8", in: "[{\"body\":\"\xc0\xaf\"}]", wantErr: "invalid UTF-8", stdAccepts: true},
	{name: "invalid UTF-8 after escape", in: "[{\"body\":\"\\n\xff\xc3\xa9\"}]", wantErr: "invalid UTF-8", stdAccepts: true},
	{name: "invalid UTF-8 in keys", in: "[{\"keys\":[\"\xff\"]}]", wantErr: `field "keys": invalid UTF-8`, stdAccepts: true},
	{name: "invalid UTF-8 in a property", in: "[{\"properties\":{\"a\":\"\xfd\"}}]", wantErr: `field "properties": invalid UTF-8`, stdAccepts: true},
	{name: "escaped field name", in: `[{"b\u006fdy":"x","t\u0061g":"y"}]`, want: []batchItem{{Body: sp("x"), Tag: "y"}}},
	{name: "escaped property name", in: `[{"properties":{"a\tb\u00e9":"\"v\""}}]`, want: []batchItem{{Properties: map[string]string{"a\tbé": `"v"`}}}},

	// Nulls and repeats.
	{name: "every field null", in: `[{"body":null,"body_base64":null,"content_type":null,"tag":null,"keys":null,"sharding_key":null,` +
		`"delay":null,"delay_level":null,"deliver_at":null,"dedup_id":null,"properties":null}]`, want: []batchItem{{}}},
	{name: "repeated tag", in: `[{"tag":"a","tag":"b"}]`, wantErr: `item 0: field "tag" is given twice`, stdAccepts: true},
	{name: "repeated tag null", in: `[{"tag":"a","tag":null}]`, wantErr: `field "tag" is given twice`, stdAccepts: true},
	{name: "repeated body", in: `[{"body":"a","body":null}]`, wantErr: `field "body" is given twice`, stdAccepts: true},
	{name: "repeated body escaped", in: `[{"body":"a","b\u006fdy":"b"}]`, wantErr: `field "body" is given twice`, stdAccepts: true},
	{name: "repeated keys", in: `[{"keys":["a"],"keys":null}]`, wantErr: `field "keys" is given twice`, stdAccepts: true},
	{name: "repeated properties", in: `[{"properties":{"a":"1"},"properties":{"b":"2"}}]`, wantErr: `field "properties" is given twice`, stdAccepts: true},
	{name: "repeated delay level", in: `[{"delay_level":1,"delay_level":2}]`, wantErr: `field "delay_level" is given twice`, stdAccepts: true},
	{name: "repeated in second item", in: `[{"tag":"a"},{"dedup_id":"x","tag":"b","dedup_id":"y"}]`, wantErr: `item 1: field "dedup_id" is given twice`, stdAccepts: true},
	{name: "fields repeat across items", in: `[{"tag":"a"},{"tag":"b"}]`, want: []batchItem{{Tag: "a"}, {Tag: "b"}}},
	{name: "repeated property", in: `[{"properties":{"a":"1","a":"2"}}]`, wantErr: `property "a" is given twice`, stdAccepts: true},
	{name: "repeated property null", in: `[{"properties":{"a":"1","a":null}}]`, wantErr: `property "a" is given twice`, stdAccepts: true},
	{name: "repeated property after unescaping", in: `[{"properties":{"a":"1","\u0061":"2"}}]`, wantErr: `property "a" is given twice`, stdAccepts: true},
	{name: "null key element", in: `[{"keys":["a",null]}]`, want: []batchItem{{Keys: []string{"a", ""}}}},
	{name: "empty keys", in: `[{"keys":[]}]`, want: []batchItem{{Keys: []string{}}}},
	{name: "repeated key values", in: `[{"keys":["a","a"]}]`, want: []batchItem{{Keys: []string{"a", "a"}}}},
	{name: "null property value", in: `[{"properties":{"a":null}}]`, want: []batchItem{{Properties: map[string]string{"a": ""}}}},
	{name: "empty properties", in: `[{"properties":{}}]`, want: []batchItem{{Properties: map[string]string{}}}},
	{name: "items do not share", in: `[{"keys":["a","b"],"properties":{"p":"1"}},{"keys":[null,null]},{"properties":{}}]`,
		want: []batchItem{{Keys: []string{"a", "b"}, Properties: map[string]string{"p": "1"}}, {Keys: []string{"", ""}}, {Properties: map[string]string{}}}},

	// delay_level.
	{name: "delay level zero", in: `[{"delay_level":0}]`, want: []batchItem{{}}},
	{name: "delay level minus zero", in: `[{"delay_level":-0}]`, want: []batchItem{{}}},
	{name: "delay level negative", in: `[{"delay_level":-18}]`, want: []batchItem{{DelayLevel: -18}}},
	{name: "delay level max", in: `[{"delay_level":9223372036854775807}]`, want: []batchItem{{DelayLevel: 9223372036854775807}}},
	{name: "delay level min", in: `[{"delay_level":-9223372036854775808}]`, want: []batchItem{{DelayLevel: -9223372036854775808}}},
	{name: "delay level over max", in: `[{"delay_level":9223372036854775808}]`, wantErr: `item 0: field "delay_level": the number is out of range`},
	{name: "delay level under min", in: `[{"delay_level":-9223372036854775809}]`, wantErr: "out of range"},
	{name: "delay level huge", in: `[{"delay_level":123456789012345678901234567890}]`, wantErr: "out of range"},
	{name: "delay level fraction", in: `[{"delay_level":1.5}]`, wantErr: "fraction or exponent"},
	{name: "delay level whole fraction", in: `[{"delay_level":1.0}]`, wantErr: "fraction or exponent"},
	{name: "delay level exponent", in: `[{"delay_level":1e2}]`, wantErr: "fraction or exponent"},
	{name: "delay level leading zero", in: `[{"delay_level":01}]`, wantErr: "expected ',' or '}'"},
	{name: "delay level minus alone", in: `[{"delay_level":-}]`, wantErr: "expected a digit"},
	{name: "delay level string", in: `[{"delay_level":"3"}]`, wantErr: `field "delay_level": expected an integer or null, found a string`},
	{name: "delay level bool", in: `[{"delay_level":true}]`, wantErr: "found true"},

	// Wrong types.
	{name: "body number", in: `[{"body":1}]`, wantErr: `item 0: field "body": expected a string or null, found a number`},
	{name: "body bool", in: `[{"body":false}]`, wantErr: "found false"},
	{name: "body object", in: `[{"body":{}}]`, wantErr: "found an object"},
	{name: "body array", in: `[{"body":["a"]}]`, wantErr: "found an array"},
	{name: "body_base64 number", in: `[{"body_base64":1}]`, wantErr: `field "body_base64"`},
	{name: "content_type number", in: `[{"content_type":1}]`, wantErr: `field "content_type"`},
	{name: "tag number", in: `[{},{},{},{"tag":1}]`, wantErr: `item 3: field "tag": expected a string`},
	{name: "sharding_key array", in: `[{"sharding_key":[]}]`, wantErr: `field "sharding_key"`},
	{name: "delay number", in: `[{"delay":10}]`, wantErr: `field "delay"`},
	{name: "deliver_at number", in: `[{"deliver_at":1}]`, wantErr: `field "deliver_at"`},
	{name: "dedup_id object", in: `[{"dedup_id":{}}]`, wantErr: `field "dedup_id"`},
	{name: "keys string", in: `[{"keys":"a"}]`, wantErr: `field "keys": expected an array`},
	{name: "keys number element", in: `[{"keys":["a",1]}]`, wantErr: "as element 1"},
	{name: "keys nested array", in: `[{"keys":[["a"]]}]`, wantErr: "found an array"},
	{name: "keys object", in: `[{"keys":{}}]`, wantErr: `field "keys"`},
	{name: "properties array", in: `[{"properties":[]}]`, wantErr: `field "properties": expected an object`},
	{name: "properties number value", in: `[{"properties":{"a":1}}]`, wantErr: `value of property "a"`},
	{name: "properties nested object", in: `[{"properties":{"a":{}}}]`, wantErr: "found an object"},
	{name: "item number", in: `[1]`, wantErr: "item 0: expected a message object, found a number"},
	{name: "item string", in: `[{},"x"]`, wantErr: "item 1: expected a message object"},
	{name: "item array", in: `[[]]`, wantErr: "found an array"},
	{name: "item bool", in: `[true]`, wantErr: "found true"},
	{name: "top-level object", in: `{"body":"a"}`, wantErr: "expected a JSON array of messages, found an object"},
	{name: "top-level string", in: `"x"`, wantErr: "expected a JSON array"},
	{name: "top-level number", in: `1`, wantErr: "expected a JSON array"},

	// Unknown fields.
	{name: "unknown field", in: `[{"body":"a","colour":"red"}]`, wantErr: `item 0: unknown field "colour"`},
	{name: "unknown field with nested value", in: `[{"x":{"y":[1,2,{"z":null}]}}]`, wantErr: `unknown field "x"`},
	{name: "unknown field null", in: `[{"x":null}]`, wantErr: `unknown field "x"`},
	{name: "Body", in: `[{"Body":"a"}]`, wantErr: `unknown field "Body": field names are case-sensitive; did you mean "body"?`, stdAccepts: true},
	{name: "TAG", in: `[{"body":"a","TAG":"t"}]`, wantErr: `unknown field "TAG"`, stdAccepts: true},
	{name: "Kelvin sign", in: `[{"\u212Aeys":["a"]}]`, wantErr: "unknown field", stdAccepts: true},
	{name: "long s", in: `[{"body":"a","\u017Fharding_key":"x"}]`, wantErr: "unknown field", stdAccepts: true},
	{name: "field name with space", in: `[{"body ":"a"}]`, wantErr: "unknown field"},

	// Syntax.
	{name: "empty input", in: ``, wantErr: "expected a JSON array of messages, found end of input"},
	{name: "only whitespace", in: " \n\t ", wantErr: "found end of input"},
	{name: "open array", in: `[`, wantErr: "found end of input"},
	{name: "open item", in: `[{`, wantErr: "expected a field name, found end of input"},
	{name: "unclosed array", in: `[{}`, wantErr: "expected ',' or ']'"},
	{name: "unclosed null", in: `[null`, wantErr: "expected ',' or ']'"},
	{name: "trailing comma", in: `[{"body":"a"},]`, wantErr: "item 1: expected a message object, found ']'"},
	{name: "trailing comma in item", in: `[{"body":"a",}]`, wantErr: "expected a field name, found '}'"},
	{name: "trailing comma in keys", in: `[{"keys":["a",]}]`, wantErr: "found ']'"},
	{name: "trailing comma in properties", in: `[{"properties":{"a":"b",}}]`, wantErr: "expected a property name"},
	{name: "leading comma", in: `[,{}]`, wantErr: "found ','"},
	{name: "missing colon", in: `[{"body" "a"}]`, wantErr: "expected ':'"},
	{name: "missing comma", in: `[{"body":"a" "tag":"t"}]`, wantErr: "expected ',' or '}'"},
	{name: "unquoted name", in: `[{body:"a"}]`, wantErr: "expected a field name"},
	{name: "single quotes", in: `[{'body':'a'}]`, wantErr: "expected a field name"},
	{name: "trailing garbage", in: `[{"body":"a"}] x`, wantErr: "unexpected 'x' after the JSON array (at byte offset 15)"},
	{name: "second array", in: `[] []`, wantErr: "after the JSON array"},
	{name: "trailing null", in: `null null`, wantErr: "after the JSON array"},
	{name: "trailing bracket", in: `[]]`, wantErr: "unexpected ']' after the JSON array", stdAccepts: true},
	{name: "trailing brace", in: "[{\"body\":\"a\"}]\n}", wantErr: "unexpected '}'", stdAccepts: true},
	{name: "trailing NUL", in: "[]\x00", wantErr: "byte 0x00"},
	{name: "unterminated string", in: `[{"body":"abc`, wantErr: "unterminated string"},
	{name: "unterminated escape", in: `[{"body":"abc\`, wantErr: "unterminated string"},
	{name: "unterminated name", in: `[{"bo`, wantErr: "unterminated string"},
	{name: "control character", in: "[{\"body\":\"a\x01b\"}]", wantErr: "control character 0x01"},
	{name: "raw newline", in: "[{\"body\":\"a\nb\"}]", wantErr: "control character"},
	{name: "control character after escape", in: "[{\"body\":\"\\n\x1f\"}]", wantErr: "control character"},
	{name: "bad escape", in: `[{"body":"\x41"}]`, wantErr: `invalid escape "\\x"`},
	{name: "single-quote escape", in: `[{"body":"\'"}]`, wantErr: "invalid escape"},
	{name: "short u escape", in: `[{"body":"\u12"}]`, wantErr: `invalid \u escape`},
	{name: "bad hex", in: `[{"body":"\u12G4"}]`, wantErr: `invalid \u escape`},
	{name: "bad second surrogate hex", in: `[{"body":"\ud83d\uDE0G"}]`, wantErr: `invalid \u escape`},
	{name: "truncated null", in: `[nul]`, wantErr: "item 0: expected null, found 'n'"},
	{name: "null with tail", in: `[nulll]`, wantErr: "expected ',' or ']'"},
	{name: "NULL", in: `[{"body":NULL}]`, wantErr: "found 'N'"},
	{name: "invalid UTF-8 outside strings", in: "[\xff]", wantErr: "byte 0xff"},
	{name: "byte order mark", in: "\xef\xbb\xbf[]", wantErr: "byte 0xef"},
	{name: "comment", in: `[/* */]`, wantErr: "found '/'"},
	{name: "NaN", in: `[{"delay_level":NaN}]`, wantErr: "found 'N'"},
	{name: "plus sign", in: `[{"delay_level":+1}]`, wantErr: "found '+'"},
}

func TestParseBatchItems(t *testing.T) {
	for _, tt := range batchJSONCases {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseBatchItems([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("got %s, want an error with %q", dumpItems(got), tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q, want it to contain %q", err, tt.wantErr)
				}
				_, stdErr := stdDecodeBatch([]byte(tt.in))
				if tt.stdAccepts != (stdErr == nil) {
					t.Errorf("encoding/json's error: %v; the case says it accepts: %v", stdErr, tt.stdAccepts)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("got  %s\nwant %s", dumpItems(got), dumpItems(tt.want))
				}
			}
			// The expectations above are encoding/json's too.
			checkAgainstStd(t, []byte(tt.in))
		})
	}
}

// TestParseBatchItemsFieldNames checks that the parser knows batchItem's
// fields by their json tags, and no others.
func TestParseBatchItemsFieldNames(t *testing.T) {
	if len(batchFields) != len(batchItemNames) {
		t.Errorf("the parser knows %d fields, batchItem has %d", len(batchFields), len(batchItemNames))
	}
	for name := range batchItemNames {
		if f := fieldIndex([]byte(name)); f < 0 || batchFields[f] != name {
			t.Errorf("fieldIndex(%q) = %d", name, f)
		}
	}
}

// TestParseBatchItemsSpecialByte checks the eight-byte string scan
// against the byte table: each byte value at each position among plain
// bytes, then random words.
func TestParseBatchItemsSpecialByte(t *testing.T) {
	want := func(w uint64) bool {
		for i := range 8 {
			if !strPlain[byte(w>>(8*i))] {
				return true
			}
		}
		return false
	}
	for c := range 256 {
		for pos := range 8 {
			for _, filler := range []byte{' ', '#', '[', ']', 0x7f, '!', '#'} {
				w := uint64(filler) * 0x0101010101010101
				w = w&^(0xff<<(8*pos)) | uint64(c)<<(8*pos)
				if got := hasSpecialByte(w); got != want(w) {
					t.Fatalf("hasSpecialByte(%#016x) = %v, want %v", w, got, want(w))
				}
			}
		}
	}
	r := rand.New(rand.NewPCG(5, 6))
	for range 100000 {
		w := r.Uint64()
		if r.IntN(2) == 0 {
			w &= 0x7f7f7f7f7f7f7f7f // mostly ASCII
		}
		if got := hasSpecialByte(w); got != want(w) {
			t.Fatalf("hasSpecialByte(%#016x) = %v, want %v", w, got, want(w))
		}
	}
}

// TestParseBatchItemsAllocs checks that an unescaped string costs one
// allocation: a batch of n bodies takes n, plus the items and a few
// chunks of body pointers.
func TestParseBatchItemsAllocs(t *testing.T) {
	data := []byte("[" + strings.Repeat(`{"body":"`+strings.Repeat("x", 200)+`","tag":"t"},`, 99) + `{"body":"y","tag":"t"}]`)
	allocs := testing.AllocsPerRun(20, func() {
		if _, err := parseBatchItems(data); err != nil {
			t.Fatal(err)
		}
	})
	// A few over n: the items, chunks of body pointers, and the pooled
	// scratch slice, which the race detector's sync.Pool sometimes drops.
	if allocs > 100+12 {
		t.Errorf("%v allocations for 100 bodies, want at most 112", allocs)
	}
}

// TestParseBatchItemsLarge compares with encoding/json on batches around
// the size the parser stops reusing its scratch at, one after another.
func TestParseBatchItemsLarge(t *testing.T) {
	for _, n := range []int{1, maxScratchItems, maxScratchItems + 1, 3 * maxScratchItems, 7} {
		items := make([]string, n)
		for i := range items {
			items[i] = fmt.Sprintf(`{"body":"m%d","keys":["k%d",null],"properties":{"i":"%d"}}`, i, i, i)
			if i%3 == 0 {
				items[i] = "null"
			}
		}
		data := []byte("[" + strings.Join(items, ",") + "]")
		if !checkAgainstStd(t, data) {
			t.Fatalf("a batch of %d was rejected", n)
		}
		if _, err := parseBatchItems(data[:len(data)-1]); err == nil {
			t.Fatalf("a batch of %d without its closing bracket was accepted", n)
		}
	}
}

// TestParseBatchItemsOffset checks that errors say where.
func TestParseBatchItemsOffset(t *testing.T) {
	in := `[{"body":"a"}, {"body":"b","keys":["k", 7]}]`
	_, err := parseBatchItems([]byte(in))
	want := fmt.Sprintf(`item 1: field "keys": expected a string or null as element 1, found a number (at byte offset %d)`, strings.Index(in, "7"))
	if err == nil || err.Error() != want {
		t.Errorf("error %v, want %s", err, want)
	}
}

// randomBatchString returns a string mixing the characters that make JSON
// strings interesting: escapes, control characters, HTML characters that
// encoding/json escapes, multi-byte runes, U+2028 and invalid UTF-8.
func randomBatchString(r *rand.Rand) string {
	pieces := []string{"a", "Z", "0", " ", `"`, `\`, "/", "\b", "\f", "\n", "\r", "\t", "\x00", "\x1f", "\x7f", "<", ">", "&",
		"é", "中", "😀", "\u2028", "\uFFFD", "\xff", "\xed\xa0\x80", "body", "{", "}", "[", "]", ",", ":"}
	var b strings.Builder
	for range r.IntN(12) {
		b.WriteString(pieces[r.IntN(len(pieces))])
	}
	return b.String()
}

// randomBatchJSON returns a batch as a client might write it: encoded by
// encoding/json, sometimes indented, sometimes with fields null or (to
// be refused) repeated.
func randomBatchJSON(r *rand.Rand) []byte {
	var b bytes.Buffer
	str := func() {
		s, _ := json.Marshal(randomBatchString(r))
		b.Write(s)
	}
	b.WriteString("[")
	for i := range r.IntN(4) {
		if i > 0 {
			b.WriteString(",")
		}
		if r.IntN(8) == 0 {
			b.WriteString("null")
			continue
		}
		b.WriteString("{")
		// Distinct fields, but now and then one given twice, which
		// must be refused.
		names := r.Perm(len(batchItemNameList))[:r.IntN(6)]
		if len(names) > 1 && r.IntN(16) == 0 {
			names[len(names)-1] = names[0]
		}
		for j, f := range names {
			if j > 0 {
				b.WriteString(",")
			}
			name := batchItemNameList[f]
			fmt.Fprintf(&b, "%q:", name)
			switch {
			case r.IntN(6) == 0:
				b.WriteString("null")
			case name == "delay_level":
				hi, lo := r.Int64()>>r.IntN(64), r.Int64()>>r.IntN(64)
				fmt.Fprint(&b, hi-lo)
			case name == "keys":
				b.WriteString("[")
				for k := range r.IntN(4) {
					if k > 0 {
						b.WriteString(",")
					}
					if r.IntN(4) == 0 {
						b.WriteString("null")
					} else {
						str()
					}
				}
				b.WriteString("]")
			case name == "properties":
				b.WriteString("{")
				for k := range r.IntN(4) {
					if k > 0 {
						b.WriteString(",")
					}
					str()
					b.WriteString(":")
					if r.IntN(4) == 0 {
						b.WriteString("null")
					} else {
						str()
					}
				}
				b.WriteString("}")
			default:
				str()
			}
		}
		b.WriteString("}")
	}
	b.WriteString("]")
	if r.IntN(3) == 0 {
		var ind bytes.Buffer
		if err := json.Indent(&ind, b.Bytes(), "\r", " \t"); err == nil {
			return ind.Bytes()
		}
	}
	return b.Bytes()
}

// mutateBatchJSON damages data a little: a byte changed, dropped or
// duplicated, or one of JSON's structural bytes put in.
func mutateBatchJSON(r *rand.Rand, data []byte) []byte {
	data = bytes.Clone(data)
	if len(data) == 0 {
		return data
	}
	i := r.IntN(len(data))
	switch r.IntN(4) {
	case 0:
		data[i] = byte(r.IntN(256))
	case 1:
		data = append(data[:i], data[i+1:]...)
	case 2:
		data = append(data[:i+1], data[i:]...)
	default:
		const special = `[]{}",:\nu0 tfe-.`
		data = append(data[:i], append([]byte{special[r.IntN(len(special))]}, data[i:]...)...)
	}
	return data
}

// TestParseBatchItemsRandom compares with encoding/json on generated
// batches and on damaged copies of them, so that plain go test covers
// more than the fuzz seeds.
func TestParseBatchItemsRandom(t *testing.T) {
	const n = 3000
	r := rand.New(rand.NewPCG(1, 2))
	accepted, mutantsAccepted := 0, 0
	for range n {
		data := randomBatchJSON(r)
		if checkAgainstStd(t, data) {
			accepted++
		}
		for range 2 {
			data = mutateBatchJSON(r, data)
			if checkAgainstStd(t, data) {
				mutantsAccepted++
			}
		}
	}
	// Both verdicts must be well exercised for the comparison to mean much.
	if accepted < n*9/10 || mutantsAccepted < n/10 || mutantsAccepted > n*2*9/10 {
		t.Errorf("accepted %d of %d batches and %d of %d damaged ones", accepted, n, mutantsAccepted, 2*n)
	}
	t.Logf("accepted %d of %d batches and %d of %d damaged ones", accepted, n, mutantsAccepted, 2*n)
}

// FuzzBatchJSONDifferential holds parseBatchItems to encoding/json: where
// the oracle accepts, the same items; where it rejects, an error.
func FuzzBatchJSONDifferential(f *testing.F) {
	for _, tt := range batchJSONCases {
		f.Add([]byte(tt.in))
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		f.Add(randomBatchJSON(r))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkAgainstStd(t, data)
	})
}

// benchBatchJSON returns a batch of n messages with bodies of size bytes,
// each also with a tag, a key and a property: plain text bodies, or JSON
// documents, whose quotes are escaped.
func benchBatchJSON(tb testing.TB, n, size int, jsonBody bool) []byte {
	tb.Helper()
	type item struct {
		Body       string            `json:"body"`
		Tag        string            `json:"tag"`
		Keys       []string          `json:"keys"`
		Properties map[string]string `json:"properties"`
	}
	items := make([]item, n)
	for i := range items {
		var body string
		if jsonBody {
			var b strings.Builder
			for j := 0; b.Len() < size; j++ {
				fmt.Fprintf(&b, `{"id":%d,"name":"item %d"},`, j, i)
			}
			body = b.String()[:size]
		} else {
			body = strings.Repeat(fmt.Sprintf("message %d of the batch; ", i), size)[:size]
		}
		items[i] = item{Body: body, Tag: "created", Keys: []string{fmt.Sprintf("order-%06d", i)},
			Properties: map[string]string{"region": "eu-west-1"}}
	}
	data, err := json.Marshal(items)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

func BenchmarkDecodeBatch(b *testing.B) {
	decoders := []struct {
		name   string
		decode func([]byte) ([]batchItem, error)
	}{
		{"std", stdDecodeBatch},
		{"fast", parseBatchItems},
	}
	bodies := []struct {
		name     string
		size     int
		jsonBody bool
	}{
		{"256", 256, false},
		{"256json", 256, true},
		{"4096", 4096, false},
	}
	for _, d := range decoders {
		for _, n := range []int{100, 1000} {
			for _, body := range bodies {
				b.Run(fmt.Sprintf("decoder=%s/items=%d/body=%s", d.name, n, body.name), func(b *testing.B) {
					data := benchBatchJSON(b, n, body.size, body.jsonBody)
					b.SetBytes(int64(len(data)))
					b.ReportAllocs()
					for b.Loop() {
						items, err := d.decode(data)
						if err != nil || len(items) != n {
							b.Fatalf("%d items, error %v", len(items), err)
						}
					}
					b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
				})
			}
		}
	}
}
