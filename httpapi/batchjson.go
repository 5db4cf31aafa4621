package httpapi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/postbus/postbus/broker"
)

// parseBatchItems parses the JSON body of a batch publish: a JSON array of
// batchItem objects, or null. It exists because reflection-driven
// encoding/json spent close to half the broker's CPU on batch publishes;
// this parser knows the one schema and makes a single pass over the input.
//
// The result is what
//
//	dec := json.NewDecoder(bytes.NewReader(data))
//	dec.DisallowUnknownFields()
//	err := dec.Decode(&items)
//
// gives, value for value (reflect.DeepEqual), down to encoding/json's odd
// corners, which a differential fuzz test holds it to:
//   - a null field leaves a string or delay_level as it was (so in
//     {"tag":"a","tag":null} the tag stays "a") and sets body, body_base64,
//     keys and properties to nil;
//   - a keys array decoded over no earlier one, so a null element is "";
//   - a null item is the zero batchItem; a null property value is "";
//   - delay_level must be a JSON integer that fits an int: 1.0, 1e2 and
//     9223372036854775808 are errors;
//   - [] is an empty, non-nil slice and a top-level null a nil one.
//
// It differs from that on purpose in four ways:
//  1. Field names must match exactly, after unescaping. encoding/json
//     also takes a name that matches case-insensitively (with Unicode
//     folding, so "\u212Aeys" is "keys"); here "Body" or "TAG" is an
//     unknown field and so an error. The API documents lower-case names
//     and accepting others would make them part of the API.
//  2. Only whitespace may follow the value. Decoder.More reports false
//     for a following ']' or '}', so the Decoder-based check let "[]]"
//     through.
//  3. Invalid UTF-8 in a string, and a UTF-16 surrogate escape that is
//     not half of a pair, are errors; encoding/json puts U+FFFD in their
//     place, which would store a body other than the one sent.
//  4. A field given twice in one item, or a property name given twice in
//     one properties object (after unescaping), is an error.
//     encoding/json lets the last win, or merges; a producer that sends
//     {"tag":"a","tag":"b"} has a bug, and storing either value would
//     hide it (RFC 8259 leaves duplicate names' meaning open).
//
// An error says where: the byte offset and, inside an item, its index and
// field. Callers treat every error alike (invalid_json), so the text is
// for people.
func parseBatchItems(data []byte) ([]batchItem, error) {
	return parseBatchItemsMax(data, 0)
}

// errTooManyItems stops a parse at more than the caller's maximum, before
// a body of {},{},… is decoded into millions of items.
var errTooManyItems = errors.New("too many messages in the batch")

// parseBatchItemsMax is parseBatchItems that gives up with errTooManyItems
// past max items (0: no maximum).
func parseBatchItemsMax(data []byte, max int) ([]batchItem, error) {
	p := batchParser{data: data, item: -1, max: max}
	p.skipSpace()
	var items []batchItem
	var err error
	switch p.peek() {
	case '[':
		items, err = p.array()
	case 'n':
		err = p.null()
	default:
		err = p.unexpected("a JSON array of messages")
	}
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.pos < len(data) {
		return nil, p.errorf("unexpected %s after the JSON array", p.describe())
	}
	return items, nil
}

// Sizes of the parser's allocation chunks (in strings) and string caches.
const (
	minStringChunk = 16
	maxStringChunk = 1024
	propCacheSize  = 8
)

// batchParser is the state of one parseBatchItems call.
type batchParser struct {
	data  []byte
	pos   int    // offset of the next unread byte
	item  int    // index of the item being parsed, or -1
	field string // name of the field being parsed, or ""
	max   int    // most items to parse; 0: no maximum

	// buf holds a string that needed unescaping or UTF-8 repair; what
	// readString returns is valid until its next call.
	buf []byte
	// elems holds the elements of a "keys" array while it is read.
	elems []keyElem
	// strs is a chunk of strings from which body pointers and keys
	// slices are carved, so that those cost no allocation each.
	strs []string
	// Caches of the last strings seen, by field, so that values repeated
	// across a batch (a tag, property names) are allocated once. Sharing
	// a Go string is invisible to the caller.
	contentType, tag, delay, deliverAt string
	propKeys, propVals                 [propCacheSize]string
}

// keyElem is one element of a "keys" array: a string or null.
type keyElem struct {
	s    string
	null bool
}

// itemScratch holds *[]batchItem to parse into: the number of items is
// not known until the end, and growing the result by append would
// allocate about twice its size. The items are copied out to a slice of
// the exact size and the scratch is cleared before it goes back, so it
// holds no strings of a finished batch.
var itemScratch = sync.Pool{New: func() any { return new([]batchItem) }}

// maxScratchItems bounds the scratch kept for reuse: a batch holds at most
// broker.MaxBatchMessages, and a bigger slice is left to the collector.
const maxScratchItems = 2 * broker.MaxBatchMessages

// array parses the top-level array; p.pos is at '['.
func (p *batchParser) array() ([]batchItem, error) {
	p.pos++
	p.skipSpace()
	if p.peek() == ']' {
		p.pos++
		return []batchItem{}, nil
	}
	scratch := itemScratch.Get().(*[]batchItem)
	items, err := p.arrayItems((*scratch)[:0])
	if cap(items) > maxScratchItems {
		// Too big to keep (and to copy: the caller rejects it anyway).
		if err != nil {
			return nil, err
		}
		return items, nil
	}
	var out []batchItem
	if err == nil {
		out = make([]batchItem, len(items))
		copy(out, items)
	}
	clear(items)
	*scratch = items[:0]
	itemScratch.Put(scratch)
	return out, err
}

// arrayItems parses the items of a non-empty array, appending to items.
func (p *batchParser) arrayItems(items []batchItem) ([]batchItem, error) {
	for {
		p.item = len(items)
		if p.max > 0 && len(items) >= p.max {
			return items, fmt.Errorf("%w: more than %d", errTooManyItems, p.max)
		}
		p.skipSpace()
		switch p.peek() {
		case '{':
			items = append(items, batchItem{})
			if err := p.object(&items[len(items)-1]); err != nil {
				return items, err
			}
		case 'n':
			if err := p.null(); err != nil {
				return items, err
			}
			items = append(items, batchItem{})
		default:
			return items, p.unexpected("a message object")
		}
		p.item = -1
		p.skipSpace()
		switch p.peek() {
		case ',':
			p.pos++
		case ']':
			p.pos++
			return items, nil
		default:
			p.item = len(items) - 1
			return items, p.unexpected("',' or ']' after a message")
		}
	}
}

// object parses one item; p.pos is at '{'.
func (p *batchParser) object(it *batchItem) error {
	p.pos++
	p.skipSpace()
	if p.peek() == '}' {
		p.pos++
		return nil
	}
	var seen uint32 // bit f: field f was given
	for {
		if p.peek() != '"' {
			return p.unexpected("a field name")
		}
		name, err := p.readString()
		if err != nil {
			return err
		}
		f := fieldIndex(name)
		if f < 0 {
			return p.unknownField(name)
		}
		if seen&(1<<f) != 0 {
			return p.errorf("field %q is given twice", batchFields[f])
		}
		seen |= 1 << f
		p.field = batchFields[f]
		if err := p.colon("field name"); err != nil {
			return err
		}
		if err := p.fieldValue(it, f); err != nil {
			return err
		}
		p.field = ""
		if more, err := p.more('}', "after a field"); !more {
			return err
		}
	}
}

// batchItem's fields, by their JSON names, in the order of batchFields.
const (
	fieldBody = iota
	fieldBodyBase64
	fieldContentType
	fieldTag
	fieldKeys
	fieldShardingKey
	fieldDelay
	fieldDelayLevel
	fieldDeliverAt
	fieldDedupID
	fieldProperties
)

var batchFields = [...]string{
	fieldBody: "body", fieldBodyBase64: "body_base64", fieldContentType: "content_type", fieldTag: "tag",
	fieldKeys: "keys", fieldShardingKey: "sharding_key", fieldDelay: "delay", fieldDelayLevel: "delay_level",
	fieldDeliverAt: "deliver_at", fieldDedupID: "dedup_id", fieldProperties: "properties",
}

// fieldIndex returns the field named name exactly, or -1.
func fieldIndex(name []byte) int {
	// A switch on string(name) compiles to comparisons, with no
	// conversion.
	switch string(name) {
	case "body":
		return fieldBody
	case "body_base64":
		return fieldBodyBase64
	case "content_type":
		return fieldContentType
	case "tag":
		return fieldTag
	case "keys":
		return fieldKeys
	case "sharding_key":
		return fieldShardingKey
	case "delay":
		return fieldDelay
	case "delay_level":
		return fieldDelayLevel
	case "deliver_at":
		return fieldDeliverAt
	case "dedup_id":
		return fieldDedupID
	case "properties":
		return fieldProperties
	}
	return -1
}

// colon reads the ':' after an object's key (what names the key) and the
// space around it.
func (p *batchParser) colon(what string) error {
	p.skipSpace()
	if p.peek() != ':' {
		return p.unexpected("':' after the " + what)
	}
	p.pos++
	p.skipSpace()
	return nil
}

// more reads what follows a member of an object or an array: ',' and the
// space after it (true: another member follows), or the closing byte
// (false, nil). Anything else is an error saying where it stands.
func (p *batchParser) more(closing byte, where string) (bool, error) {
	p.skipSpace()
	switch p.peek() {
	case ',':
		p.pos++
		p.skipSpace()
		return true, nil
	case closing:
		p.pos++
		return false, nil
	}
	return false, p.unexpected(fmt.Sprintf("',' or '%c' %s", closing, where))
}

func (p *batchParser) unknownField(name []byte) error {
	for _, f := range batchFields {
		if bytes.EqualFold(name, []byte(f)) {
			return p.errorf("unknown field %q: field names are case-sensitive; did you mean %q?", name, f)
		}
	}
	return p.errorf("unknown field %q", name)
}

// fieldValue parses the value of field f into it.
func (p *batchParser) fieldValue(it *batchItem, f int) error {
	var err error
	switch f {
	case fieldBody:
		it.Body, err = p.stringPointer()
	case fieldBodyBase64:
		it.BodyBase64, err = p.stringPointer()
	case fieldContentType:
		err = p.stringField(&it.ContentType, &p.contentType)
	case fieldTag:
		err = p.stringField(&it.Tag, &p.tag)
	case fieldKeys:
		err = p.keys(&it.Keys)
	case fieldShardingKey:
		err = p.stringField(&it.ShardingKey, nil)
	case fieldDelay:
		err = p.stringField(&it.Delay, &p.delay)
	case fieldDelayLevel:
		err = p.intField(&it.DelayLevel)
	case fieldDeliverAt:
		err = p.stringField(&it.DeliverAt, &p.deliverAt)
	case fieldDedupID:
		err = p.stringField(&it.DedupID, nil)
	case fieldProperties:
		err = p.properties(&it.Properties)
	}
	return err
}

// stringPointer parses a string or null for a *string field.
func (p *batchParser) stringPointer() (*string, error) {
	switch p.peek() {
	case '"':
		b, err := p.readString()
		if err != nil {
			return nil, err
		}
		s := &p.carve(1)[0]
		*s = string(b)
		return s, nil
	case 'n':
		return nil, p.null()
	}
	return nil, p.unexpected("a string or null")
}

// stringField parses a string or null for a string field; null leaves the
// field as it was, as encoding/json does. cache, if not nil, holds the
// last string seen for the field.
func (p *batchParser) stringField(dst, cache *string) error {
	switch p.peek() {
	case '"':
		b, err := p.readString()
		if err != nil {
			return err
		}
		*dst = intern(b, cache)
		return nil
	case 'n':
		return p.null()
	}
	return p.unexpected("a string or null")
}

// intern returns b as a string, reusing *cache if it is equal.
func intern(b []byte, cache *string) string {
	if cache == nil {
		return string(b)
	}
	if string(b) != *cache { // compiles to a comparison, no conversion
		*cache = string(b)
	}
	return *cache
}

// intField parses delay_level: a JSON integer that fits an int, or null,
// which leaves it as it was. encoding/json rejects a fraction or exponent
// even when the value is whole (1.0, 1e2), and so does this.
func (p *batchParser) intField(dst *int) error {
	c := p.peek()
	if c == 'n' {
		return p.null()
	}
	if c != '-' && (c < '0' || c > '9') {
		return p.unexpected("an integer or null")
	}
	start := p.pos
	neg := c == '-'
	if neg {
		p.pos++
	}
	d := p.data
	if p.pos >= len(d) || d[p.pos] < '0' || d[p.pos] > '9' {
		return p.unexpected("a digit")
	}
	limit := uint64(1)<<(strconv.IntSize-1) - 1
	if neg {
		limit++
	}
	var n uint64
	if d[p.pos] == '0' {
		p.pos++
	} else {
		for p.pos < len(d) && d[p.pos] >= '0' && d[p.pos] <= '9' {
			digit := uint64(d[p.pos] - '0')
			if n > (limit-digit)/10 {
				p.pos = start
				return p.errorf("the number is out of range for an int")
			}
			n = n*10 + digit
			p.pos++
		}
	}
	if c := p.peek(); c == '.' || c == 'e' || c == 'E' {
		p.pos = start
		return p.errorf("expected an integer, found a number with a fraction or exponent")
	}
	if neg {
		*dst = int(-int64(n)) // -(1<<63) survives: the negation wraps to itself
	} else {
		*dst = int(n)
	}
	return nil
}

// keys parses "keys": an array of strings (a null element is "") or null.
// A second non-empty "keys" array is decoded into the slice the first
// left, as encoding/json does: elements beyond the new length stay in the
// backing array, and a null element keeps the string already at its index.
func (p *batchParser) keys(dst *[]string) error {
	switch p.peek() {
	case 'n':
		if err := p.null(); err != nil {
			return err
		}
		*dst = nil
		return nil
	case '[':
	default:
		return p.unexpected("an array of strings or null")
	}
	p.pos++
	elems := p.elems[:0]
	p.skipSpace()
	if p.peek() == ']' {
		p.pos++
	} else {
		for {
			p.skipSpace()
			switch p.peek() {
			case '"':
				b, err := p.readString()
				if err != nil {
					return err
				}
				elems = append(elems, keyElem{s: string(b)})
			case 'n':
				if err := p.null(); err != nil {
					return err
				}
				elems = append(elems, keyElem{null: true})
			default:
				return p.unexpected(fmt.Sprintf("a string or null as element %d", len(elems)))
			}
			more, err := p.more(']', "in the array")
			if err != nil {
				return err
			}
			if !more {
				break
			}
		}
	}
	p.elems = elems

	if len(elems) == 0 {
		*dst = []string{} // [] is an empty slice, not nil
		return nil
	}
	// A field is given once per item, so there is no earlier array to
	// decode over.
	s := p.carve(len(elems))
	for i, e := range elems {
		if !e.null {
			s[i] = e.s
		}
	}
	*dst = s
	return nil
}

// carve returns n zeroed strings from the current chunk, with capacity n
// so that appending to the result never reaches a neighbour's. Chunks
// double, from a few strings for a small batch to a few per item of a big
// one.
func (p *batchParser) carve(n int) []string {
	if cap(p.strs)-len(p.strs) < n {
		size := min(max(2*cap(p.strs), minStringChunk), maxStringChunk)
		p.strs = make([]string, 0, max(n, size))
	}
	l := len(p.strs)
	p.strs = p.strs[:l+n]
	return p.strs[l : l+n : l+n]
}

// properties parses "properties": an object of strings (a null value is
// "") or null. A second object is merged into the first's map.
func (p *batchParser) properties(dst *map[string]string) error {
	switch p.peek() {
	case 'n':
		if err := p.null(); err != nil {
			return err
		}
		*dst = nil
		return nil
	case '{':
	default:
		return p.unexpected("an object of strings or null")
	}
	p.pos++
	m := *dst
	if m == nil {
		m = make(map[string]string)
		*dst = m
	}
	p.skipSpace()
	if p.peek() == '}' {
		p.pos++
		return nil
	}
	for i := 0; ; i++ {
		if p.peek() != '"' {
			return p.unexpected("a property name")
		}
		b, err := p.readString()
		if err != nil {
			return err
		}
		var k string
		if i < propCacheSize {
			k = intern(b, &p.propKeys[i])
		} else {
			k = string(b)
		}
		if err := p.colon("property name"); err != nil {
			return err
		}
		var v string
		switch p.peek() {
		case '"':
			b, err := p.readString()
			if err != nil {
				return err
			}
			if i < propCacheSize {
				v = intern(b, &p.propVals[i])
			} else {
				v = string(b)
			}
		case 'n':
			if err := p.null(); err != nil {
				return err
			}
		default:
			return p.unexpected(fmt.Sprintf("a string or null as the value of property %q", k))
		}
		if _, dup := m[k]; dup {
			return p.errorf("property %q is given twice", k)
		}
		m[k] = v
		if more, err := p.more('}', "after a property"); !more {
			return err
		}
	}
}

// strPlain marks the bytes a string can hold as they are: printable ASCII
// but '"' and '\\'. Control characters must be escaped, and bytes from
// 0x80 on are checked as UTF-8.
var strPlain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// readString reads the string at p.pos, which is at its opening quote.
// It returns the decoded bytes: a slice of the input if it needed no
// decoding, else of p.buf, valid until the next call.
func (p *batchParser) readString() ([]byte, error) {
	d := p.data
	start := p.pos + 1
	i := skipPlain(d, start)
	if i < len(d) && d[i] == '"' {
		p.pos = i + 1
		return d[start:i], nil
	}
	return p.readStringSlow(start, i)
}

// skipPlain returns the offset of the first byte from i that a string
// cannot hold as it is: '"', '\\', a control character, or the start of
// invalid UTF-8; or len(d).
func skipPlain(d []byte, i int) int {
	for i < len(d) {
		// Skip eight plain bytes at a time; most of a batch is bodies.
		for i+8 <= len(d) && !hasSpecialByte(binary.LittleEndian.Uint64(d[i:])) {
			i += 8
		}
		if i >= len(d) {
			break
		}
		c := d[i]
		if strPlain[c] {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			return i
		}
		r, size := utf8.DecodeRune(d[i:])
		if r == utf8.RuneError && size == 1 {
			return i
		}
		i += size
	}
	return len(d)
}

// hasSpecialByte reports whether any byte of w is not plain in a string:
// a control character, '"', '\\' or from 0x80 on. Each term is the
// classic bit trick that sets a byte's high bit when that byte is below a
// bound (the borrow can also mark a byte above a marked one, which is
// harmless: only whether any is marked matters).
func hasSpecialByte(w uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	quote := w ^ (ones * '"')
	backslash := w ^ (ones * '\\')
	return ((w-ones*0x20)|(quote-ones)|(backslash-ones)|w)&highs != 0
}

// simpleEscape maps the byte after a backslash to what it stands for, for
// every escape but \u; 0 marks the rest.
var simpleEscape = [256]byte{'"': '"', '\\': '\\', '/': '/', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}

// readStringSlow decodes a string whose bytes from i, where skipPlain
// stopped, are not its closing quote, into p.buf. Invalid UTF-8 and an
// unpaired surrogate escape are errors, where encoding/json would put
// U+FFFD in their place: a body would be stored other than it was sent.
func (p *batchParser) readStringSlow(start, i int) ([]byte, error) {
	d := p.data
	b := append(p.buf[:0], d[start:i]...)
	for {
		if i >= len(d) {
			p.pos = len(d)
			return nil, p.errorf("unterminated string")
		}
		switch c := d[i]; {
		case c == '"':
			p.buf = b
			p.pos = i + 1
			return b, nil
		case c == '\\':
			if i+1 >= len(d) {
				p.pos = len(d)
				return nil, p.errorf("unterminated string")
			}
			switch e := d[i+1]; {
			case simpleEscape[e] != 0:
				b = append(b, simpleEscape[e])
				i += 2
			case e == 'u':
				r := hex4(d[i+2:])
				if r < 0 {
					p.pos = i
					return nil, p.errorf(`invalid \u escape: it needs four hex digits`)
				}
				i += 6
				if utf16.IsSurrogate(r) {
					// Only a pair stands for a character; one alone
					// would have to be stored as something else.
					r2 := rune(-1)
					if i+1 < len(d) && d[i] == '\\' && d[i+1] == 'u' {
						if r2 = hex4(d[i+2:]); r2 < 0 {
							p.pos = i
							return nil, p.errorf(`invalid \u escape: it needs four hex digits`)
						}
					}
					pr := utf16.DecodeRune(r, r2)
					if pr == utf8.RuneError {
						p.pos = i - 6
						return nil, p.errorf(`unpaired surrogate escape %q: a string must be Unicode text (send binary bodies as body_base64)`, d[i-6:i])
					}
					r = pr
					i += 6
				}
				b = utf8.AppendRune(b, r)
			default:
				p.pos = i
				return nil, p.errorf("invalid escape %q in a string", d[i:i+2])
			}
		case c < 0x20:
			p.pos = i
			return nil, p.errorf("control character %#02x in a string: it must be escaped", c)
		case c < utf8.RuneSelf:
			// Plain ASCII: copy the run at once. Runs between escapes
			// are short in a body that is itself JSON, too short to
			// gain from skipPlain.
			j := i + 1
			for j < len(d) && strPlain[d[j]] {
				j++
			}
			b = append(b, d[i:j]...)
			i = j
		default:
			r, size := utf8.DecodeRune(d[i:])
			if r == utf8.RuneError && size == 1 {
				p.pos = i
				return nil, p.errorf("invalid UTF-8 (byte %#02x) in a string: JSON is UTF-8 text (send binary bodies as body_base64)", c)
			}
			b = append(b, d[i:i+size]...)
			i += size
		}
	}
}

// hex4 returns the value of the four hex digits at the start of b, or -1.
func hex4(b []byte) rune {
	if len(b) < 4 {
		return -1
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}

// null reads the literal null at p.pos.
func (p *batchParser) null() error {
	if !bytes.HasPrefix(p.data[p.pos:], []byte("null")) {
		return p.unexpected("null")
	}
	p.pos += 4
	return nil
}

func (p *batchParser) skipSpace() {
	d := p.data
	i := p.pos
	for i < len(d) && (d[i] == ' ' || d[i] == '\n' || d[i] == '\r' || d[i] == '\t') {
		i++
	}
	p.pos = i
}

// peek returns the byte at p.pos, or 0 at the end of the input (a 0 byte
// is never valid where peek is used, so the two need not be told apart).
func (p *batchParser) peek() byte {
	if p.pos < len(p.data) {
		return p.data[p.pos]
	}
	return 0
}

// describe names what is at p.pos, for error messages.
func (p *batchParser) describe() string {
	if p.pos >= len(p.data) {
		return "end of input"
	}
	switch c := p.data[p.pos]; {
	case c == '"':
		return "a string"
	case c == '-' || '0' <= c && c <= '9':
		return "a number"
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case bytes.HasPrefix(p.data[p.pos:], []byte("true")):
		return "true"
	case bytes.HasPrefix(p.data[p.pos:], []byte("false")):
		return "false"
	case bytes.HasPrefix(p.data[p.pos:], []byte("null")):
		return "null"
	case c >= 0x20 && c < utf8.RuneSelf:
		return fmt.Sprintf("%q", c)
	default:
		return fmt.Sprintf("byte %#02x", c)
	}
}

func (p *batchParser) unexpected(want string) error {
	return p.errorf("expected %s, found %s", want, p.describe())
}

// errorf makes an error naming the item, field and offset at hand.
func (p *batchParser) errorf(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	switch {
	case p.item >= 0 && p.field != "":
		msg = fmt.Sprintf("item %d: field %q: %s", p.item, p.field, msg)
	case p.item >= 0:
		msg = fmt.Sprintf("item %d: %s", p.item, msg)
	}
	return errors.New(msg + " (at byte offset " + strconv.Itoa(p.pos) + ")")
}
