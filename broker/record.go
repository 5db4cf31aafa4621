package broker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"time"
)

// A record is the payload of one commitlog frame: one message, encoded by
// encodeRecord. The commitlog adds length, magic and CRC-32C around it.
//
//	off  size  field
//	0    1     version (1)
//	1    2     flags (reserved, 0)
//	3    8     stored at, unix ms   } patched under the append lock,
//	11   8     born at, unix ms     } with the queue offset, just before
//	19   4     queue id             } the append, so that queue order
//	23   8     queue offset         } and log order agree
//	31   8     deliver at, unix ms (0: not delayed)
//	39   ...   topic u16+bytes, id u8+bytes, tag u16+bytes, sharding key
//	           u16+bytes, content type u16+bytes, dedup id u16+bytes,
//	           attempt u16, origin topic u16+bytes, reason u16+bytes,
//	           keys u8 count (u16+bytes each), properties u8 count
//	           (u8+name, u16+value each, sorted by name), body u32+bytes
//
// Flags: flagDelayed marks a message that waits for its deliver-at time in
// the timer store rather than on its queue; flagRePut the copy the timer
// puts on the queue when due; flagRetry a copy in a group's retry topic and
// flagDead one in its dead-letter topic; flagLeased a pull lease's
// visibility copy, whose timer the lease stores itself, with the offsets
// past its message (dispatch adds none, so a copy whose lease never
// committed stays in the log without one); flagPrepared a transaction's
// prepared message, which takes no queue offset and whose origin field
// holds its producer group and deliver-at its first check (txn.go), and
// flagCommitted the copy its commit stores on its queue. Attempt is the delivery attempt
// the copy is for (0 for a producer's message); origin the topic a retry or
// dead-letter copy came from; reason why a message was dead-lettered.
//
// All integers are big-endian.
const (
	recordVersion  = 1
	posStoredAt    = 3
	posBornAt      = 11
	posQueueID     = 19
	posQueueOffset = 23
	posDeliverAt   = 31
	recordFixedLen = 39
)

var errBadRecord = errors.New("malformed record")

// Record flags.
const (
	flagDelayed uint16 = 1 << iota // waits in the timer store, with no queue offset yet
	flagRePut                      // put on its queue by the timer: never delayed again
	flagRetry
	flagDead
	flagLeased    // a pull lease's visibility copy: its timer is the lease's to store
	flagPrepared  // a transaction's prepared (half) message: no queue offset, never queued (txn.go)
	flagCommitted // a transaction's message as committed, on its queue, after its prepared record
	// flagRolledBack, with flagPrepared: a transaction's rollback, kept in
	// the log (no body, never queued, its id not indexed) so that a
	// meta.db rebuilt from the log knows it (txn.go).
	flagRolledBack
)

func encodeRecord(dst []byte, m *Message) []byte {
	var fixed [recordFixedLen]byte
	fixed[0] = recordVersion
	binary.BigEndian.PutUint16(fixed[1:], m.flags)
	binary.BigEndian.PutUint64(fixed[posBornAt:], uint64(m.BornAt.UnixMilli()))
	binary.BigEndian.PutUint32(fixed[posQueueID:], uint32(m.QueueID))
	if !m.DeliverAt.IsZero() {
		binary.BigEndian.PutUint64(fixed[posDeliverAt:], uint64(m.DeliverAt.UnixMilli()))
	}
	dst = append(dst, fixed[:]...)
	dst = appendStr16(dst, m.Topic)
	dst = append(dst, byte(len(m.ID)))
	dst = append(dst, m.ID...)
	dst = appendStr16(dst, m.Tag)
	dst = appendStr16(dst, m.ShardingKey)
	dst = appendStr16(dst, m.ContentType)
	dst = appendStr16(dst, m.DedupID)
	dst = binary.BigEndian.AppendUint16(dst, uint16(m.Attempt))
	dst = appendStr16(dst, m.Origin)
	dst = appendStr16(dst, m.Reason)
	dst = append(dst, byte(len(m.Keys)))
	for _, k := range m.Keys {
		dst = appendStr16(dst, k)
	}
	names := make([]string, 0, len(m.Properties))
	for n := range m.Properties {
		names = append(names, n)
	}
	sort.Strings(names)
	dst = append(dst, byte(len(names)))
	for _, n := range names {
		dst = append(dst, byte(len(n)))
		dst = append(dst, n...)
		dst = appendStr16(dst, m.Properties[n])
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(m.Body)))
	return append(dst, m.Body...)
}

// recordLen is len(encodeRecord(nil, m)), without encoding it.
func recordLen(m *Message) int {
	n := recordFixedLen + 2 + len(m.Topic) + 1 + len(m.ID) + 2 + len(m.Tag) + 2 + len(m.ShardingKey) +
		2 + len(m.ContentType) + 2 + len(m.DedupID) + 2 + 2 + len(m.Origin) + 2 + len(m.Reason) + 1
	for _, k := range m.Keys {
		n += 2 + len(k)
	}
	n++
	for name, v := range m.Properties {
		n += 1 + len(name) + 2 + len(v)
	}
	return n + 4 + len(m.Body)
}

// patchRecord sets the fields only known under the append lock.
func patchRecord(rec []byte, storedAt time.Time, queueOffset int64) {
	binary.BigEndian.PutUint64(rec[posStoredAt:], uint64(storedAt.UnixMilli()))
	binary.BigEndian.PutUint64(rec[posQueueOffset:], uint64(queueOffset))
}

func appendStr16(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

// recordHeader is what dispatch needs of a record; its byte slices alias
// the record and are valid only as long as it is.
type recordHeader struct {
	Flags       uint16
	StoredAt    int64
	QueueID     int
	QueueOffset int64
	DeliverAt   int64
	Topic       []byte
	ID          []byte
	Tag         []byte
	DedupID     []byte
	keys        []byte // the encoded key list, walked by eachKey
	nkeys       int
}

// recordReader walks a record's variable part, remembering the first error.
type recordReader struct {
	p   []byte
	err error
}

func (r *recordReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.p) {
		r.err = errBadRecord
		return nil
	}
	b := r.p[:n:n]
	r.p = r.p[n:]
	return b
}

func (r *recordReader) u8() int {
	b := r.take(1)
	if b == nil {
		return 0
	}
	return int(b[0])
}

func (r *recordReader) u16() int {
	b := r.take(2)
	if b == nil {
		return 0
	}
	return int(binary.BigEndian.Uint16(b))
}

func (r *recordReader) str8() []byte  { return r.take(r.u8()) }
func (r *recordReader) str16() []byte { return r.take(r.u16()) }

func decodeHeader(p []byte) (recordHeader, error) {
	var h recordHeader
	if len(p) < recordFixedLen || p[0] != recordVersion {
		return h, fmt.Errorf("%w: short record or unknown version", errBadRecord)
	}
	h.Flags = binary.BigEndian.Uint16(p[1:])
	h.StoredAt = int64(binary.BigEndian.Uint64(p[posStoredAt:]))
	h.QueueID = int(binary.BigEndian.Uint32(p[posQueueID:]))
	h.QueueOffset = int64(binary.BigEndian.Uint64(p[posQueueOffset:]))
	h.DeliverAt = int64(binary.BigEndian.Uint64(p[posDeliverAt:]))
	r := recordReader{p: p[recordFixedLen:]}
	h.Topic = r.str16()
	h.ID = r.str8()
	h.Tag = r.str16()
	r.str16() // sharding key
	r.str16() // content type
	h.DedupID = r.str16()
	r.u16()   // attempt
	r.str16() // origin
	r.str16() // reason
	h.nkeys = r.u8()
	start := r.p
	for i := 0; i < h.nkeys; i++ {
		r.str16()
	}
	if r.err != nil {
		return h, r.err
	}
	h.keys = start[:len(start)-len(r.p)]
	return h, nil
}

// eachKey calls fn with each of the record's keys.
func (h *recordHeader) eachKey(fn func(key []byte)) {
	r := recordReader{p: h.keys}
	for i := 0; i < h.nkeys; i++ {
		fn(r.str16())
	}
}

// decodeRecord decodes a whole record into m. m.Body aliases p.
func decodeRecord(p []byte, m *Message) error {
	h, err := decodeHeader(p)
	if err != nil {
		return err
	}
	r := recordReader{p: p[recordFixedLen:]}
	m.Topic = string(r.str16())
	m.ID = string(r.str8())
	m.Tag = string(r.str16())
	m.ShardingKey = string(r.str16())
	m.ContentType = string(r.str16())
	m.DedupID = string(r.str16())
	m.Attempt = r.u16()
	m.Origin = string(r.str16())
	m.Reason = string(r.str16())
	m.Keys = nil
	if n := r.u8(); n > 0 {
		m.Keys = make([]string, n)
		for i := range m.Keys {
			m.Keys[i] = string(r.str16())
		}
	}
	m.Properties = nil
	if n := r.u8(); n > 0 {
		m.Properties = make(map[string]string, n)
		for i := 0; i < n && r.err == nil; i++ {
			name := string(r.str8())
			m.Properties[name] = string(r.str16())
		}
	}
	bodyLen := 0
	if b := r.take(4); b != nil {
		bodyLen = int(binary.BigEndian.Uint32(b))
	}
	m.Body = r.take(bodyLen)
	if r.err != nil {
		return r.err
	}
	if len(r.p) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", errBadRecord, len(r.p))
	}
	m.flags = h.Flags
	m.StoredAt = time.UnixMilli(h.StoredAt)
	m.BornAt = time.UnixMilli(int64(binary.BigEndian.Uint64(p[posBornAt:])))
	m.QueueID = h.QueueID
	m.QueueOffset = h.QueueOffset
	if m.delayed() {
		// Waiting in the timer store, it has no queue offset yet: the
		// record's field is a placeholder. -1, as its publish answered.
		m.QueueOffset = -1
	}
	m.DeliverAt = time.Time{}
	if h.DeliverAt != 0 {
		m.DeliverAt = time.UnixMilli(h.DeliverAt)
	}
	m.Delay, m.DelayLevel = 0, 0
	return nil
}
