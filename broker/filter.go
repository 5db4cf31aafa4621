package broker

import (
	"sort"
	"strings"
)

// MaxFilterTags bounds a tag expression.
const MaxFilterTags = 64

// Filter is a subscription's tag expression: "*" (everything) or
// "TagA || TagB", applied on the broker.
type Filter struct {
	all    bool
	tags   map[string]bool
	hashes map[uint64]bool
}

// ParseFilter parses a tag expression. "" and "*" match every message; a
// message without a tag matches only "*".
func ParseFilter(expr string) (Filter, error) {
	expr = strings.TrimSpace(expr)
	if expr == "" || expr == "*" {
		return Filter{all: true}, nil
	}
	parts := strings.Split(expr, "||")
	if len(parts) > MaxFilterTags {
		return Filter{}, errf(CodeInvalidFilter, "filter", "%d tags; a filter names at most %d", len(parts), MaxFilterTags)
	}
	f := Filter{tags: make(map[string]bool, len(parts)), hashes: make(map[uint64]bool, len(parts))}
	for _, p := range parts {
		tag := strings.TrimSpace(p)
		switch {
		case tag == "":
			return Filter{}, errf(CodeInvalidFilter, "filter", "%q has an empty tag: write TagA || TagB, or * for every message", expr)
		case tag == "*":
			return Filter{}, errf(CodeInvalidFilter, "filter", "* stands alone: it cannot be combined with tags")
		case len([]rune(tag)) > MaxTagLen || !printable(tag) || strings.Contains(tag, "|"):
			return Filter{}, errf(CodeInvalidFilter, "filter", "%q is not a valid tag (printable, at most %d characters, no '|')", tag, MaxTagLen)
		}
		f.tags[tag] = true
		f.hashes[TagHash(tag)] = true
	}
	return f, nil
}

// String is the filter in its canonical form.
func (f Filter) String() string {
	if f.all {
		return "*"
	}
	tags := make([]string, 0, len(f.tags))
	for t := range f.tags {
		tags = append(tags, t)
	}
	sort.Strings(tags)
	return strings.Join(tags, " || ")
}

// MatchHash reports whether a consume-queue entry's tag hash may match;
// the tag itself decides (hashes can collide).
func (f Filter) MatchHash(h uint64) bool { return f.all || f.hashes[h] }

// Match reports whether a message with tag matches.
func (f Filter) Match(tag string) bool { return f.all || f.tags[tag] }
