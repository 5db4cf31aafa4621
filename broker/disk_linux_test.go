//go:build linux

package broker

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestDiskUsageIsDfUse (attack F6): the used fraction the watermarks
// compare is what df shows as Use% (used / (used + available)); it
// counted the blocks reserved for root as used, so on a host with a large
// reserve every broker with the default --disk-clean-ratio deleted
// acknowledged messages from a disk df showed at 59 %.
func TestDiskUsageIsDfUse(t *testing.T) {
	dir := t.TempDir()
	out, err := exec.Command("df", "--output=pcent", dir).Output()
	if err != nil {
		t.Fatalf("df: %v", err)
	}
	lines := strings.Fields(string(out))
	pct, err := strconv.Atoi(strings.TrimSuffix(lines[len(lines)-1], "%"))
	if err != nil {
		t.Fatalf("df's Use%%: %q: %v", out, err)
	}
	used, err := DiskUsage(dir)
	if err != nil {
		t.Fatal(err)
	}
	// df rounds up; other writers on the disk move it a little between
	// the two reads.
	if got := used * 100; got < float64(pct)-2 || got > float64(pct)+1 {
		t.Fatalf("DiskUsage = %.2f%%, df says %d%%", got, pct)
	}
}
