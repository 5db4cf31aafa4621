package httpapi

import (
	"fmt"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/postbus/postbus/broker"
)

// checkJSONText refuses what encoding/json accepts but changes or drops
// without a word: invalid UTF-8 and unpaired surrogate escapes (it puts
// U+FFFD in their place), and an object member given twice (the last one
// wins). data must be JSON that encoding/json decodes; the error says
// what is wrong for a problem's detail.
func checkJSONText(data []byte) error {
	if !utf8.Valid(data) {
		i := 0
		for i < len(data) {
			r, size := utf8.DecodeRune(data[i:])
			if r == utf8.RuneError && size == 1 {
				break
			}
			i += size
		}
		return fmt.Errorf("invalid UTF-8 at byte offset %d: JSON is UTF-8 text (send binary bodies as body_base64)", i)
	}
	if at := unpairedSurrogate(data); at >= 0 {
		return fmt.Errorf("unpaired surrogate escape %q at byte offset %d: a string must be Unicode text", data[at:at+6], at)
	}
	if name, ok := broker.DuplicateJSONName(data); ok {
		return fmt.Errorf("%q is given twice in one object", name)
	}
	return nil
}

// unpairedSurrogate returns the offset of the first \u escape in a string
// of data that is half of a UTF-16 surrogate pair without its other half,
// or -1. data is valid JSON, so outside strings there is no backslash.
func unpairedSurrogate(data []byte) int {
	for i := 0; i < len(data); i++ {
		if data[i] != '\\' {
			continue
		}
		if data[i+1] != 'u' {
			i++ // \" \\ and the rest: the escaped byte is not a backslash
			continue
		}
		r := hex4(data[i+2:])
		if !utf16.IsSurrogate(r) {
			i += 5
			continue
		}
		if r < 0xDC00 && i+11 < len(data) && data[i+6] == '\\' && data[i+7] == 'u' {
			if r2 := hex4(data[i+8:]); r2 >= 0xDC00 && r2 <= 0xDFFF {
				i += 11
				continue
			}
		}
		return i
	}
	return -1
}
