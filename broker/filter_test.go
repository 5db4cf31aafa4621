package broker

import (
	"strings"
	"testing"
)

func TestParseFilter(t *testing.T) {
	tests := []struct {
		expr    string
		match   []string
		nomatch []string
		canon   string
		bad     bool
	}{
		{expr: "*", match: []string{"a", ""}, canon: "*"},
		{expr: "", match: []string{"a", ""}, canon: "*"},
		{expr: "created", match: []string{"created"}, nomatch: []string{"paid", ""}, canon: "created"},
		{expr: " paid ||created|| refunded ", match: []string{"created", "paid", "refunded"}, nomatch: []string{"x"}, canon: "created || paid || refunded"},
		{expr: "a || ", bad: true},
		{expr: "||", bad: true},
		{expr: "a || *", bad: true},
		{expr: "a | b", bad: true},
		{expr: "a\x00", bad: true},
		{expr: strings.Repeat("t", 128), bad: true},
		{expr: strings.Repeat("a||", 64) + "a", bad: true},
	}
	for _, tt := range tests {
		f, err := ParseFilter(tt.expr)
		if tt.bad {
			if err == nil || CodeOf(err) != CodeInvalidFilter {
				t.Errorf("ParseFilter(%q) err = %v, want invalid_filter", tt.expr, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseFilter(%q): %v", tt.expr, err)
			continue
		}
		for _, tag := range tt.match {
			if !f.Match(tag) || !f.MatchHash(TagHash(tag)) {
				t.Errorf("%q does not match tag %q", tt.expr, tag)
			}
		}
		for _, tag := range tt.nomatch {
			if f.Match(tag) {
				t.Errorf("%q matches tag %q", tt.expr, tag)
			}
		}
		if f.String() != tt.canon {
			t.Errorf("%q canonical form %q, want %q", tt.expr, f.String(), tt.canon)
		}
	}
}

// FuzzTagExpression: any expression parses to a filter or an
// invalid_filter error; a parsed filter matches each of its own tags and
// reparses from its canonical form to the same filter.
func FuzzTagExpression(f *testing.F) {
	for _, s := range []string{"*", "a || b", "créé||paid", "||", "a|b", " x "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		flt, err := ParseFilter(expr)
		if err != nil {
			if CodeOf(err) != CodeInvalidFilter {
				t.Fatalf("error without the invalid_filter code: %v", err)
			}
			return
		}
		for tag := range flt.tags {
			if !flt.Match(tag) || !flt.MatchHash(TagHash(tag)) {
				t.Fatalf("filter %q does not match its own tag %q", expr, tag)
			}
		}
		again, err := ParseFilter(flt.String())
		if err != nil || again.String() != flt.String() {
			t.Fatalf("canonical form %q does not reparse: %v", flt.String(), err)
		}
	})
}
