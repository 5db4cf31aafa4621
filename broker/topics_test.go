package broker

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestTopicsListing: Topics lists the user topics in name order, pages by
// name, leaves system topics out and forgets deleted ones, whatever order
// they were created in, and again after the broker reopens.
func TestTopicsListing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := Open(ctx, testConfig(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, i := range rand.New(rand.NewPCG(3, 4)).Perm(60) {
		name := fmt.Sprintf("t-%02d", i)
		if _, _, err := b.PutTopic(ctx, name, TopicSettings{}); err != nil {
			t.Fatal(err)
		}
		want = append(want, name)
	}
	// Resizing keeps one entry with the new count.
	if _, _, err := b.PutTopic(ctx, "t-07", TopicSettings{Queues: 9}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"t-00", "t-31", "t-59"} {
		if err := b.DeleteTopic(ctx, name); err != nil {
			t.Fatal(err)
		}
		want = slices.DeleteFunc(want, func(n string) bool { return n == name })
	}
	if _, err := b.topicOrSystem(ctx, "%RETRY%billing%t-01"); err != nil {
		t.Fatal(err)
	}
	slices.Sort(want)

	check := func(b *Broker, when string) {
		t.Helper()
		var got []string
		for _, tp := range b.Topics(ctx, "", 0) {
			got = append(got, tp.Name)
			if tp.Name == "t-07" && tp.Queues != 9 {
				t.Errorf("%s: t-07 has %d queues, want 9", when, tp.Queues)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: Topics = %v\nwant %v", when, got, want)
		}
		// Pages of 7, each starting after the last name of the one before
		// (which may be a name that no longer exists).
		var paged []string
		for after := ""; ; {
			page := b.Topics(ctx, after, 7)
			if len(page) == 0 {
				break
			}
			if len(page) > 7 {
				t.Fatalf("%s: page of %d, limit 7", when, len(page))
			}
			for _, tp := range page {
				paged = append(paged, tp.Name)
			}
			after = page[len(page)-1].Name
		}
		if !slices.Equal(paged, want) {
			t.Fatalf("%s: paged %v\nwant %v", when, paged, want)
		}
		if got := b.Topics(ctx, "t-30", 2); len(got) != 2 || got[0].Name != "t-32" || got[1].Name != "t-33" {
			t.Errorf("%s: after t-30 (deleted t-31 between): %v", when, got)
		}
	}
	check(b, "open")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	check(openBroker(t, testConfig(t, dir)), "reopened")
}
