//go:build unix

package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// The Jepsen-style loop of issue 13: a replica group of three whose raft
// traffic runs through proxies, publishers with dedup ids through every
// member, a push sink and pullers, and a seeded random schedule of
// faults, one per round (some messages sharded, some delayed, the
// webhook failing one first attempt in 16): any member (the leader half the time) SIGKILLed
// and restarted on its data, hung with SIGSTOP and continued, its
// incoming raft traffic dropped, cut or delayed, or, now and then, a
// follower restarted with its data directory deleted, or every member
// SIGKILLed at once and restarted. Members snapshot every 64 entries and
// keep 16 behind, so a member away for long is restored by a snapshot. After each fault
// the group must elect a leader and answer a publish 201 again. After
// the rounds every member is brought back and the run checks:
//
//   - lost: a message answered 201 that a member does not read back by
//     id byte for byte once caught up (must be 0);
//
//   - undelivered / unpulled: one never delivered to the webhook, or
//     never pulled, within the bound (must be 0);
//
//   - stored twice: a message retried with its dedup id and stored under
//     two ids, or a dedup id answered with two ids (must be 0);
//
//   - moved: a sharding key answered with another queue than before;
//
//   - acked again: a message pulled by a pull sent after an ack of it was
//     answered "acked" (committed: no failover may bring it back; must
//     be 0);
//
//   - counted, not failed: push and pull repeats (delivery is at least
//     once), messages given up (no 201 within 30s of retries), and the
//     failover times: from a leader's SIGKILL (or any fault of the
//     leader) to the first 201 to a publish sent after it.
//
//     go test -run TestReplicaChaos ./cmd/postbus/                          # CI: one seed, a few rounds
//     go test -run TestReplicaChaos ./cmd/postbus/ -timeout 60m \
//     -repl.seeds=5 -repl.first=100 -repl.rounds=25                     # the long form
var (
	flagReplSeeds  = flag.Int("repl.seeds", 0, "run the long form of the replication fault loop with this many seeds (0: the short form)")
	flagReplFirst  = flag.Uint64("repl.first", 1, "the long form's first seed")
	flagReplRounds = flag.Int("repl.rounds", 0, "faults in each run (0: 5 short, 25 long)")
)

// replChaosShortSeeds are the seeds of the short form.
var replChaosShortSeeds = []uint64{1}

// replChaosCounts is what one run found.
type replChaosCounts struct {
	rounds, leaderFaults         int
	acked, lost, gaveUp          int
	undelivered, unpulled, twice int
	ackedAgain                   int
	pushRepeats, pullRepeats     int
	failovers, disruptions       []time.Duration
	noLeader, noPublish          int
	faults                       map[string]int
}

const replChaosHeader = "rounds leader-faults acked lost gave-up undelivered unpulled stored-twice acked-again push-rep pull-rep no-leader no-201 kill-failover(n p50 max) leader-fault(n p50 max)"

func (c replChaosCounts) row() string {
	return fmt.Sprintf("%6d %13d %5d %4d %7d %11d %8d %12d %11d %8d %8d %9d %6d %4d %6s %6s %6d %6s %6s",
		c.rounds, c.leaderFaults, c.acked, c.lost, c.gaveUp, c.undelivered, c.unpulled, c.twice, c.ackedAgain, c.pushRepeats, c.pullRepeats,
		c.noLeader, c.noPublish,
		len(c.failovers), percentile(c.failovers, 50).Round(10*time.Millisecond), percentile(c.failovers, 100).Round(10*time.Millisecond),
		len(c.disruptions), percentile(c.disruptions, 50).Round(10*time.Millisecond), percentile(c.disruptions, 100).Round(10*time.Millisecond))
}

func TestReplicaChaos(t *testing.T) {
	seeds, rounds := replChaosShortSeeds, 5
	if *flagReplSeeds > 0 {
		seeds = nil
		for i := range *flagReplSeeds {
			seeds = append(seeds, *flagReplFirst+uint64(i))
		}
		rounds = 25
	}
	if *flagReplRounds > 0 {
		rounds = *flagReplRounds
	}
	var rows []string
	var kills, disruptions []time.Duration
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			c := runReplChaos(t, seed, rounds)
			rows = append(rows, fmt.Sprintf("%6d %s", seed, c.row()))
			kills = append(kills, c.failovers...)
			disruptions = append(disruptions, c.disruptions...)
		})
	}
	t.Logf("replication fault loop, %d rounds a seed:\n  seed %s\n%s", rounds, replChaosHeader, strings.Join(rows, "\n"))
	t.Logf("over every seed: leader SIGKILL to the first 201 after it: n=%d p50=%s max=%s; any fault of the leader to the first 201 after it: n=%d p50=%s max=%s",
		len(kills), percentile(kills, 50), percentile(kills, 100), len(disruptions), percentile(disruptions, 50), percentile(disruptions, 100))
}

// replFault is one kind of fault and how often it is drawn.
type replFault struct {
	name   string
	weight int
}

var replFaults = []replFault{
	{"kill", 4}, {"stop", 3}, {"drop", 2}, {"cut", 2}, {"delay", 1}, {"wipe", 1}, {"killall", 1},
}

func pickFault(rng *rand.Rand) string {
	total := 0
	for _, f := range replFaults {
		total += f.weight
	}
	n := rng.IntN(total)
	for _, f := range replFaults {
		if n < f.weight {
			return f.name
		}
		n -= f.weight
	}
	return replFaults[0].name
}

func runReplChaos(t *testing.T, seed uint64, rounds int) replChaosCounts {
	replay := fmt.Sprintf("go test -run 'TestReplicaChaos' ./cmd/postbus/ -repl.seeds=1 -repl.first=%d -repl.rounds=%d", seed, rounds)
	t.Logf("seed %d (replay: %s)", seed, replay)
	defer func() {
		if t.Failed() {
			t.Logf("seed %d failed (replay: %s)", seed, replay)
		}
	}()
	rng := rand.New(rand.NewPCG(seed, 13))
	began := time.Now()
	var events []string
	logf := func(format string, args ...any) {
		events = append(events, fmt.Sprintf("%7.2fs ", time.Since(began).Seconds())+fmt.Sprintf(format, args...))
	}
	defer func() {
		if t.Failed() {
			t.Logf("seed %d: events:\n  %s", seed, strings.Join(events, "\n  "))
		}
	}()

	// Snapshots often, so that they are taken while entries are applied.
	g := startReplGroup(t, replOpts{proxied: true, extra: []string{"--raft-snapshot-interval", "1s", "--raft-snapshot-threshold", "64", "--raft-trailing-logs", "16"}})
	sink := newReplSink(t)
	const topic = "chaos"
	replSetup(t, g, sink, topic)
	l := newReplLoad(g, topic, "pull-"+topic, seed)

	stopAll := l.start(4, 2)
	defer stopAll()

	c := replChaosCounts{faults: map[string]int{}}
	for round := range rounds {
		leader, _, err := g.waitLeader(replWait)
		if err != nil {
			t.Fatalf("seed %d round %d: %v", seed, round, err)
		}
		target := leader
		if rng.IntN(2) == 0 {
			target = g.members[rng.IntN(len(g.members))]
		}
		kind := pickFault(rng)
		if kind == "wipe" && target == leader { // a wiped leader is a kill and a wipe; keep the two apart
			target = g.members[(indexOf(g.members, leader)+1+rng.IntN(len(g.members)-1))%len(g.members)]
		}
		hold := time.Duration(500+rng.IntN(2500)) * time.Millisecond
		c.rounds++
		c.faults[kind]++
		hitLeader := target == leader
		if hitLeader {
			c.leaderFaults++
		}
		logf("round %d: %s %s (leader %s) for %s", round, kind, target.id, leader.id, hold)
		at := time.Now()
		switch kind {
		case "kill":
			g.kill(target)
			time.Sleep(hold)
			g.restart(target)
		case "stop":
			g.stop(target)
			time.Sleep(hold)
			g.cont(target)
		case "drop":
			target.proxy.set(proxyDrop, 0)
			time.Sleep(hold)
			target.proxy.set(proxyPass, 0)
		case "cut":
			target.proxy.set(proxyCut, 0)
			time.Sleep(hold)
			target.proxy.set(proxyPass, 0)
		case "delay":
			target.proxy.set(proxyPass, time.Duration(50+rng.IntN(200))*time.Millisecond)
			time.Sleep(hold)
			target.proxy.set(proxyPass, 0)
		case "wipe":
			g.wipe(target)
		case "killall": // the whole group loses power
			for _, m := range g.members {
				g.kill(m)
			}
			time.Sleep(hold)
			for _, m := range g.members {
				g.restart(m)
			}
		}
		// The group leads again, and takes a publish sent after the fault.
		if l2, took, err := g.waitLeader(replWait); err != nil {
			c.noLeader++
			t.Errorf("seed %d round %d: after %s of %s: %v", seed, round, kind, target.id, err)
		} else {
			logf("round %d: leader %s, %s after the fault ended", round, l2.id, took.Round(time.Millisecond))
		}
		deadline := time.Now().Add(replWait)
		for {
			if first, ok := l.firstAckAfter(at); ok {
				d := first.Sub(at)
				logf("round %d: the first 201 to a publish sent after the fault came %s after it began", round, d.Round(time.Millisecond))
				if hitLeader && kind == "kill" {
					c.failovers = append(c.failovers, d)
				}
				if hitLeader && kind != "delay" && kind != "wipe" && kind != "killall" {
					c.disruptions = append(c.disruptions, d)
				}
				break
			}
			if time.Now().After(deadline) {
				c.noPublish++
				t.Errorf("seed %d round %d: no publish answered 201 within %s after %s of %s", seed, round, replWait, kind, target.id)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(time.Duration(200+rng.IntN(800)) * time.Millisecond)
	}
	logf("faults over")
	stopAll()

	// Every member up, caught up; then what was acknowledged must be
	// everywhere.
	for _, m := range g.members {
		if m.proc() == nil {
			t.Fatalf("seed %d: %s is not running after the faults", seed, m.id)
		}
	}
	want := l.ackedBodies()
	c.acked = len(want)
	lostIDs := map[string]bool{}
	for _, m := range g.members {
		if _, err := g.waitCaughtUp(m, replWait); err != nil {
			t.Errorf("seed %d: %v", seed, err)
		}
		bad := l.unreadable(m.url)
		for _, b := range bad {
			id, _, _ := strings.Cut(b, ":")
			lostIDs[id] = true
		}
		if len(bad) > 0 {
			t.Errorf("seed %d: %d acknowledged messages not read back from %s; the first: %s", seed, len(bad), m.id, strings.Join(bad[:min(len(bad), 10)], "; "))
		}
	}
	c.lost = len(lostIDs)

	deadline := time.Now().Add(replWait)
	for {
		missing, _ := sink.missing(want)
		if len(missing) == 0 || time.Now().After(deadline) {
			c.undelivered = len(missing)
			if len(missing) > 0 {
				t.Errorf("seed %d: %d acknowledged messages never delivered to the webhook; e.g. %v", seed, len(missing), missing[:min(len(missing), 5)])
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, c.pushRepeats = sink.missing(want)

	stopPull2 := make(chan struct{})
	var pullers2 sync.WaitGroup
	for n := range 2 {
		pullers2.Go(func() { l.puller(10+n, stopPull2) })
	}
	deadline = time.Now().Add(replWait)
	for {
		missing, _ := l.unpulled()
		if len(missing) == 0 || time.Now().After(deadline) {
			c.unpulled = len(missing)
			if len(missing) > 0 {
				t.Errorf("seed %d: %d acknowledged messages never pulled; e.g. %v", seed, len(missing), missing[:min(len(missing), 5)])
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	close(stopPull2)
	pullers2.Wait()
	_, c.pullRepeats = l.unpulled()

	twice := l.storedTwice()
	l.mu.Lock()
	c.gaveUp = l.gaveUp
	conflicts, refused, again, pullBad, moved := l.conflicts, l.refused, l.again, l.pullBad, l.shardMoved
	l.mu.Unlock()
	if len(moved) > 0 {
		t.Errorf("seed %d: %d sharding keys answered with another queue; the first: %s", seed, len(moved), strings.Join(moved[:min(len(moved), 5)], "; "))
	}
	c.ackedAgain = len(again)
	if len(again) > 0 {
		t.Errorf("seed %d: %d messages pulled again after an ack answered \"acked\"; the first: %s", seed, len(again), strings.Join(again[:min(len(again), 5)], "; "))
	}
	if len(pullBad) > 0 {
		t.Errorf("seed %d: %d pulls or acks answered 200 with a wrong body; the first: %s", seed, len(pullBad), pullBad[0])
	}
	c.twice = len(twice) + len(conflicts)
	if c.twice > 0 {
		t.Errorf("seed %d: stored twice despite one dedup id: %v %v", seed, twice[:min(len(twice), 5)], conflicts[:min(len(conflicts), 5)])
	}
	if len(refused) > 0 {
		t.Errorf("seed %d: %d publishes refused with a 4xx; the first: %s", seed, len(refused), refused[0])
	}
	sink.mu.Lock()
	if len(sink.bad) > 0 {
		t.Errorf("seed %d: %d deliveries whose webhook-id is not their message id; the first: %s", seed, len(sink.bad), sink.bad[0])
	}
	sink.mu.Unlock()
	if n := checkCopies(t, g, l); n > c.lost {
		c.lost = n
	}
	if errs := g.errorLines(); len(errs) > 0 {
		t.Logf("seed %d: ERROR lines the members logged (how many, what):\n  %s", seed, strings.Join(errs, "\n  "))
	}
	t.Logf("seed %d: faults %v in %s; counts:\n  %s\n  %s", seed, c.faults, time.Since(began).Round(time.Second), replChaosHeader, c.row())
	return c
}

func indexOf(ms []*replMember, m *replMember) int {
	for i, x := range ms {
		if x == m {
			return i
		}
	}
	return -1
}
