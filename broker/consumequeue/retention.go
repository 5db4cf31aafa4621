package consumequeue

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/postbus/postbus/broker/internal/durable"
)

// search returns the first i in [lo, hi) for which pred is true, assuming
// pred is false...false true...true over the range; hi when none is.
func search(lo, hi int64, pred func(int64) (bool, error)) (int64, error) {
	for lo < hi {
		mid := lo + (hi-lo)/2
		ok, err := pred(mid)
		if err != nil {
			return 0, err
		}
		if ok {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, nil
}

// entryW returns entry i of q for the writer, which may read q unlocked.
func (s *Store) entryW(q *queue, i int64) (Entry, error) {
	if i >= q.written {
		return q.buf[i-q.written], nil
	}
	var one [1]Entry
	err := s.readDisk(q, q.files, q.written, i, i+1, one[:])
	return one[0], err
}

// first returns the index of the oldest entry q still holds, dead or alive.
func (q *queue) first() int64 {
	if len(q.files) > 0 {
		return q.files[0]
	}
	return q.written
}

func (s *Store) snapshot() []*queue {
	s.mu.RLock()
	defer s.mu.RUnlock()
	qs := make([]*queue, 0, len(s.queues))
	for _, q := range s.queues {
		qs = append(qs, q)
	}
	return qs
}

// TruncateFrom removes every entry whose commitlog offset is >= logOff, and
// any garbage a crash left in their place. It is the crash-recovery step:
// entries past the broker's dispatch checkpoint are dropped and dispatched
// again. Truncated files are fsynced before it returns.
func (s *Store) TruncateFrom(logOff int64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	var errs []error
	for _, q := range s.snapshot() {
		if err := s.truncateQueue(q, logOff); err != nil {
			errs = append(errs, fmt.Errorf("truncate %s from %d: %w", q.id, logOff, err))
		}
	}
	return errors.Join(errs...)
}

func (s *Store) truncateQueue(q *queue, logOff int64) error {
	k, err := search(q.min, q.max, func(i int64) (bool, error) {
		e, err := s.entryW(q, i)
		return garbage(e) || e.Offset >= logOff, err
	})
	if err != nil {
		return err
	}
	if k == q.max {
		return nil
	}
	lastOff := int64(-1)
	if k-1 >= q.first() {
		e, err := s.entryW(q, k-1)
		if err != nil {
			return err
		}
		lastOff = e.Offset
	}
	if k >= q.written {
		keep := k - q.written
		s.buffered.Add(-(int64(len(q.buf)) - keep))
		q.mu.Lock()
		q.buf = q.buf[:keep]
		q.max, q.lastOff = k, lastOff
		q.mu.Unlock()
		if keep == 0 {
			delete(s.dirty, q)
		}
		return nil
	}

	fi, found := slices.BinarySearch(q.files, k)
	if !found {
		fi--
	}
	base := q.files[fi] // k >= min >= files[0], so fi >= 0
	dead := slices.Clone(q.files[fi+1:])
	s.buffered.Add(-int64(len(q.buf)))
	delete(s.dirty, q)
	q.mu.Lock()
	// A copy: readers may still hold the old slice, and appends must not
	// overwrite the elements they see.
	q.files = slices.Clone(q.files[:fi+1])
	q.buf = q.buf[:0]
	q.max, q.written, q.lastOff = k, k, lastOff
	q.gen++
	q.mu.Unlock()

	err = s.removeFiles(q, dead)
	key := fileKey{q, base}
	h, aerr := s.files.acquire(key, false)
	if aerr != nil {
		return errors.Join(err, fmt.Errorf("truncate file %020d: %w", base, aerr))
	}
	terr := s.cfg.FS.Truncate(h.f, (k-base)*EntrySize)
	if terr == nil {
		terr = s.cfg.FS.Sync(h.f)
	}
	s.files.release(h)
	if terr != nil {
		return errors.Join(err, fmt.Errorf("truncate file %020d: %w", base, terr))
	}
	delete(s.dirtyFiles, key)
	if len(dead) > 0 {
		err = errors.Join(err, durable.SyncDir(s.cfg.FS, q.dir))
	}
	return err
}

// SetFloor persists the retention floor (never lowering it) without
// touching any queue: the broker records it before it deletes the log
// segments below it, so that segments found missing at a later open
// without the floor having passed them were lost, not retired (Floor).
// Open and DropBefore then move each queue's Min past the entries below.
func (s *Store) SetFloor(logMin int64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.setFloor(logMin)
}

// Floor is the retention floor: the commitlog offset below which every
// entry is dead.
func (s *Store) Floor() int64 {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.logMin
}

// setFloor is SetFloor with wmu held.
func (s *Store) setFloor(logMin int64) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if logMin <= s.logMin {
		return nil
	}
	if err := writeLogMin(s.cfg.FS, s.cfg.Dir, logMin); err != nil {
		return fmt.Errorf("set retention floor %d: %w", logMin, err)
	}
	s.logMin = logMin
	return nil
}

// DropBefore applies retention: entries whose commitlog offset is < logMin
// are dead. Each queue's Min moves past them (binary search) and files whose
// entries are all dead are deleted, except a queue's last file, which keeps
// Max across restarts. logMin is persisted first, and Open derives Min from
// it again.
func (s *Store) DropBefore(logMin int64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.setFloor(logMin); err != nil {
		return fmt.Errorf("drop before %d: %w", logMin, err)
	}
	var errs []error
	for _, q := range s.snapshot() {
		if err := s.advanceMin(q, logMin); err != nil {
			errs = append(errs, fmt.Errorf("drop %s before %d: %w", q.id, logMin, err))
		}
	}
	return errors.Join(errs...)
}

// advanceMin moves q's Min to its first entry with offset >= logMin and
// deletes the files before it (never the last one). Garbage counts as live
// so that Min never passes entries TruncateFrom has yet to judge.
func (s *Store) advanceMin(q *queue, logMin int64) error {
	k, err := search(q.min, q.max, func(i int64) (bool, error) {
		e, err := s.entryW(q, i)
		return garbage(e) || e.Offset >= logMin, err
	})
	if err != nil {
		return err
	}
	j := 0
	for j < len(q.files)-1 && q.files[j+1] <= k {
		j++
	}
	if k == q.min && j == 0 {
		return nil
	}
	dead := slices.Clone(q.files[:j])
	q.mu.Lock()
	q.min = k
	q.files = q.files[j:]
	if j > 0 {
		q.gen++
	}
	q.mu.Unlock()
	// Deletions are not dir-fsynced: a file that reappears after a crash is
	// dead by the persisted floor and Open deletes it again.
	return s.removeFiles(q, dead)
}

// DeleteTopic removes every queue of topic, on disk and in memory.
func (s *Store) DeleteTopic(topic string) error {
	if !ValidTopic(topic) {
		return fmt.Errorf("delete topic %q: %w", topic, ErrInvalidTopic)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	var qs []*queue
	s.mu.Lock()
	for id, q := range s.queues {
		if id.Topic == topic {
			qs = append(qs, q)
			delete(s.queues, id)
		}
	}
	s.mu.Unlock()
	for _, q := range qs {
		s.buffered.Add(-int64(len(q.buf)))
		delete(s.dirty, q)
		q.mu.Lock()
		q.deleted = true
		q.gen++
		q.buf = nil
		q.mu.Unlock()
		s.files.evictQueue(q)
		for key := range s.dirtyFiles {
			if key.q == q {
				delete(s.dirtyFiles, key)
			}
		}
	}
	topicDir := filepath.Join(s.cfg.Dir, topic)
	for dir := range s.dirtyDirs {
		if dir == topicDir || strings.HasPrefix(dir, topicDir+string(filepath.Separator)) {
			delete(s.dirtyDirs, dir)
		}
	}
	if err := s.cfg.FS.RemoveAll(topicDir); err != nil {
		return fmt.Errorf("delete topic %s: %w", topic, err)
	}
	if err := durable.SyncDir(s.cfg.FS, s.cfg.Dir); err != nil {
		return fmt.Errorf("delete topic %s: %w", topic, err)
	}
	return nil
}

// SearchOffset returns the first queue offset in [Min, Max) whose entry
// satisfies pred, assuming pred is monotonic (false...false true...true),
// or Max when none does. The broker uses it to reset a consumer offset to a
// timestamp with a predicate that reads the commitlog. An unknown queue
// gives 0.
func (s *Store) SearchOffset(topic string, queue int, pred func(Entry) (bool, error)) (int64, error) {
	if s.closed.Load() {
		return 0, ErrClosed
	}
	q := s.lookup(topic, queue)
	if q == nil {
		return 0, nil
	}
	q.mu.RLock()
	lo, hi := q.min, q.max
	if q.deleted {
		lo, hi = 0, 0
	}
	q.mu.RUnlock()
	var one [1]Entry
	k, err := search(lo, hi, func(i int64) (bool, error) {
		es, err := s.readQueue(q, i, 1, one[:0])
		switch {
		case errors.Is(err, ErrOutOfRange):
			return false, nil // dropped meanwhile: it lies before the answer
		case err != nil:
			return false, err
		case len(es) == 0:
			return true, nil // truncated meanwhile: past the answer
		}
		return pred(es[0])
	})
	if err != nil {
		return 0, fmt.Errorf("search %s: %w", q.id, err)
	}
	if lo, _ := s.Bounds(topic, queue); k < lo {
		k = lo
	}
	return k, nil
}
