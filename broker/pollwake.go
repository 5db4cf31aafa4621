package broker

import (
	"sync"
	"time"
)

// Wake-ups of held long polls (DESIGN §4). A poll that found nothing arms
// a one-shot waiter on what could give it something:
//
//   - its topic, whose new records any group may pull, and the retry
//     queue of its group on that topic (RetryTopic), where nacked and
//     expired messages come back: a dispatch round wakes only the waiters
//     of the queue topics it put records in, so the cost of a publish does
//     not grow with the polls held on other topics or by other groups;
//   - the group's consumer on the topic being dropped (an offset reset, a
//     subscription paused, changed or deleted, the topic deleted): the
//     poll looks again at once, and answers what the subscription is now
//     rather than waiting out its wait on a consumer that is gone.
//
// A poll arms its waiter before it looks for messages again, so a wake-up
// between that look and the wait is not lost; a waiter fires once and is
// then disarmed.

// PollWaiter is one armed wake-up of a held long poll (ArmPoll).
type PollWaiter struct {
	keys  [2]string // the queue topics it waits on; "" for none
	fire  func()
	timer *time.Timer // an ordered group's look again (see ArmPoll); nil otherwise
	set   *pollWaiters
	armed bool // guarded by set.mu
}

// Cancel disarms the waiter; it reports whether it was still armed (false:
// it fired, or fires now).
func (w *PollWaiter) Cancel() bool {
	if w.timer != nil {
		w.timer.Stop()
	}
	return w.set.remove(w)
}

// pollWaiters are the armed waiters, by the queue topic they wait on.
type pollWaiters struct {
	mu sync.Mutex
	by map[string]map[*PollWaiter]struct{} // guarded by mu; no empty sets
	n  int                                 // waiters armed; guarded by mu
}

func (s *pollWaiters) add(w *PollWaiter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.by == nil {
		s.by = make(map[string]map[*PollWaiter]struct{})
	}
	for _, k := range w.keys {
		if k == "" {
			continue
		}
		set := s.by[k]
		if set == nil {
			set = make(map[*PollWaiter]struct{})
			s.by[k] = set
		}
		set[w] = struct{}{}
	}
	w.armed = true
	s.n++
}

// remove disarms w; false when it was not armed.
func (s *pollWaiters) remove(w *PollWaiter) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removeLocked(w)
}

func (s *pollWaiters) removeLocked(w *PollWaiter) bool {
	if !w.armed {
		return false
	}
	w.armed = false
	s.n--
	for _, k := range w.keys {
		if set := s.by[k]; set != nil {
			delete(set, w)
			if len(set) == 0 {
				delete(s.by, k)
			}
		}
	}
	return true
}

// wake fires every waiter on one of the queue topics, outside the lock.
func (s *pollWaiters) wake(topics ...string) {
	var fire []func()
	s.mu.Lock()
	for _, t := range topics {
		for w := range s.by[t] {
			if s.removeLocked(w) {
				fire = append(fire, w.fire)
			}
		}
	}
	s.mu.Unlock()
	for _, f := range fire {
		f()
	}
}

// armed is how many waiters are armed, for tests and benchmarks.
func (s *pollWaiters) armed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// fireOnce disarms w and runs its fire, unless it was disarmed already.
func (s *pollWaiters) fireOnce(w *PollWaiter) {
	if s.remove(w) {
		w.fire()
	}
}

// orderedRecheck is how often a held poll of an ordered group looks again
// without a wake-up: a queue's block ends when its visibility runs out,
// which no dispatch announces.
const orderedRecheck = 250 * time.Millisecond

// arm arms a waiter for a poll of group on topic (group "" for a read by
// offset, woken by the topic only). fire runs once, on the waker's
// goroutine: it must not block.
func (b *Broker) arm(group, topic string, ordered bool, fire func()) *PollWaiter {
	w := &PollWaiter{keys: [2]string{topic, ""}, fire: fire, set: &b.waiters}
	if group != "" {
		w.keys[1] = RetryTopic(group, topic)
	}
	b.waiters.add(w)
	if ordered {
		w.timer = time.AfterFunc(orderedRecheck, func() { b.waiters.fireOnce(w) })
	}
	return w
}

// wakePolls wakes the held polls of group on topic: its consumer there
// was dropped.
func (b *Broker) wakePolls(group, topic string) {
	b.waiters.wake(RetryTopic(group, topic))
}
