package httpapi

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/namesrv"
)

// selfName is this broker's name in a cluster, "" standalone.
func (s *Server) selfName() string {
	if s.cluster == nil {
		return ""
	}
	return s.cluster.self
}

// shardQueue numbers a sharding key's queue across the whole topic. It is
// the hash the broker uses within its own queues (FNV-1a, 64 bits), so when
// every holder has the same queue count a key lands on the same queue
// number it would have standalone.
func shardQueue(key string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	return h.Sum64()
}

// publishHolders returns the brokers a publish to topic may go to, or nil
// when it is this broker's alone to store: it holds the topic and needs no
// other broker's queue, or every name server answered and none knows the
// topic, in which case the broker answers as it would standalone
// (auto-create, or 404). A topic this broker does not hold and whose
// route is not known whole (a name server did not answer, or said its
// brokers are down) is refused with err: creating a copy here would take
// messages that none of the topic's subscriptions ever sees.
//
// all is every holder the route names, live is those not recently skipped
// (all of them when every one is): a message with a placement key goes to
// the holder its key picks among all, and waits for it, so that its
// per-key order holds and a retry with the same dedup id meets the broker
// that may already have stored it. Unkeyed messages go to live ones.
func (s *Server) publishHolders(r *http.Request, topic string, sharded bool) (all, live []peer, err error) {
	local, _ := s.broker.Queues(topic)
	if local > 0 && !sharded {
		return nil, nil, nil
	}
	all, err = s.cluster.route(r.Context(), topic, local)
	if err != nil && local == 0 && len(all) == 0 {
		return nil, nil, err
	}
	if len(all) == 0 || (len(all) == 1 && all[0].local()) {
		return nil, nil, nil
	}
	return all, s.cluster.live(all), nil
}

// writeNoRoute answers a publish or a pull (what it did not do: "stored",
// "pulled") of a topic this broker does not hold and cannot find whole:
// 503, and the topic not created here.
func (s *Server) writeNoRoute(w http.ResponseWriter, r *http.Request, topic string, err error, what string) {
	if bad := broker.ValidateTopicName(topic); bad != nil {
		// Not a topic's name: a 503 would have the client retry a typo
		// for ever.
		s.writeError(w, r, bad)
		return
	}
	detail := fmt.Sprintf("topic %s is not on this broker, and the name servers cannot say where it is (%v); nothing was %s, and it was not created here", topic, err, what)
	if errors.Is(err, namesrv.ErrTopicGone) {
		detail = fmt.Sprintf("topic %s lives on brokers that are down (%v); nothing was %s, and it was not created here", topic, err, what)
	}
	writeProblem(w, r, codeBrokerUnavailable, "", detail)
}

// refuseForwardedCreate answers a forwarded publish to a topic this broker
// does not hold, reporting whether it did: the sender's route was stale
// (the topic was deleted here) or the header is forged. Either way it must
// not create the topic, which only a broker coordinating a client's
// publish may do, once the name servers have said nobody holds it.
func (s *Server) refuseForwardedCreate(w http.ResponseWriter, r *http.Request, topic string) bool {
	if s.cluster == nil || s.coordinating(r) {
		return false
	}
	if n, _ := s.broker.Queues(topic); n > 0 {
		return false
	}
	writeProblem(w, r, broker.CodeTopicNotFound, "topic", fmt.Sprintf("broker %s does not hold topic %s; a publish forwarded by another broker never creates a topic", s.cluster.self, topic))
	return true
}

// placementKey is what ties a message to one broker of a topic held by
// several: its sharding key (its queue's broker), else its dedup id, so
// that a producer's retry through another broker meets the same broker's
// dedup memory rather than storing the message twice.
func placementKey(m *broker.Message) string {
	if m.ShardingKey != "" {
		return m.ShardingKey
	}
	return m.DedupID
}

// forwardPublish sends a single publish on to the broker that should store
// it, and reports whether it answered the request; false leaves it to this
// broker. Without a placement key a broker that cannot be reached is
// skipped and the next holder tried, so publishes keep flowing while a
// dead broker ages out of the routes. With one (a sharding key or a dedup
// id) the message goes to the holder the key picks or nowhere: a holder
// that is skipped or cannot be reached answers 503 broker_unavailable,
// nothing stored, since moving the message would break the key's order
// and store a retried message twice (its first try may sit on the
// skipped holder, which alone remembers its dedup id).
func (s *Server) forwardPublish(w http.ResponseWriter, r *http.Request, topic, key string, body []byte) bool {
	all, holders, err := s.publishHolders(r, topic, key != "")
	if err != nil {
		s.writeNoRoute(w, r, topic, err, "stored")
		return true
	}
	if all == nil {
		return false
	}
	if key != "" {
		p := pick(all, shardQueue(key))
		if p.local() {
			return false
		}
		if s.cluster.isDown(p.addr) {
			s.writeKeyedUnavailable(w, r, topic, p, "it did not answer a moment ago and is skipped for a while")
			return true
		}
		if !s.publishOn(w, r, p, body) {
			s.writeKeyedUnavailable(w, r, topic, p, "it cannot be reached")
		}
		return true
	}
	var unreachable []string
	for len(holders) > 0 {
		p := pick(holders, s.cluster.rr.Add(1)-1)
		if p.local() {
			return false
		}
		if s.publishOn(w, r, p, body) {
			return true
		}
		unreachable = append(unreachable, p.name)
		holders = slices.DeleteFunc(holders, func(h peer) bool { return h.name == p.name })
	}
	if unreachable != nil {
		writeUnreachable(w, r, topic, unreachable)
		return true
	}
	return false
}

// writeKeyedUnavailable answers a publish whose placement key ties it to
// holder p, which is not answering: 503, nothing stored, and not moved.
func (s *Server) writeKeyedUnavailable(w http.ResponseWriter, r *http.Request, topic string, p peer, why string) {
	s.cluster.keyedRefused.WithLabelValues(p.name).Inc()
	writeProblem(w, r, codeBrokerUnavailable, "", fmt.Sprintf("topic %s: the message's sharding key or dedup id ties it to broker %s, and %s; nothing was stored, and it was not sent to another holder (that would break the key's order, and a retry could be stored twice); publish it again, with the same Postbus-Dedup-Id, once %s is back",
		topic, p.name, why, p.name))
}

// writeUnreachable answers a publish none of whose brokers could be
// reached: 503, and nothing was stored.
func writeUnreachable(w http.ResponseWriter, r *http.Request, topic string, brokers []string) {
	writeProblem(w, r, codeBrokerUnavailable, "", fmt.Sprintf("topic %s lives on %s, which cannot be reached; nothing was stored",
		topic, strings.Join(brokers, ", ")))
}

// publishOn forwards a publish (single or batch) to p and relays its
// answer, reporting true. When p cannot be reached (nothing was sent) it is
// marked down and publishOn reports false, for the caller to try another
// holder; a forward that may have arrived is not retried elsewhere, since
// the messages might then be stored twice.
func (s *Server) publishOn(w http.ResponseWriter, r *http.Request, p peer, body []byte) bool {
	resp, err := s.cluster.send(r.Context(), r, p, "", body)
	switch {
	case err == nil:
		relay(w, resp)
	case notSent(err):
		s.cluster.markDown(p, err)
		return false
	default:
		if unresponsive(err) {
			s.cluster.markDown(p, err)
		}
		writeProblem(w, r, codeBrokerUnavailable, "", fmt.Sprintf("broker %s did not answer: %v; what was published may or may not have been stored (publish again with a Postbus-Dedup-Id to be sure)", p.name, err))
	}
	return true
}

// forwardBatch routes a batch: whole to one broker when its messages all
// belong to one (no placement keys, or keys that land on one broker), else
// split by broker, the parts sent at once and the results put back in the
// batch's order. Unkeyed messages whose broker cannot be reached go to the
// other holders, as a single publish does; keyed ones stay on the holder
// their key picks (see forwardPublish) and are not stored while it is
// skipped or unreachable. A split batch is not atomic across brokers: when
// a part fails, the answer is 502 cluster_partial saying which messages
// were stored.
func (s *Server) forwardBatch(w http.ResponseWriter, r *http.Request, topic string, msgs []*broker.Message, data []byte) bool {
	keyed := slices.ContainsFunc(msgs, func(m *broker.Message) bool { return placementKey(m) != "" })
	all, holders, err := s.publishHolders(r, topic, keyed)
	if err != nil {
		s.writeNoRoute(w, r, topic, err, "stored")
		return true
	}
	if all == nil {
		return false
	}
	results := make([]json.RawMessage, len(msgs))
	pending := make([]int, len(msgs))
	for i := range pending {
		pending[i] = i
	}
	// failed: parts a broker refused (nothing of them stored); unknown:
	// parts whose answer was lost, which may or may not have been stored.
	var stored, failed, unknown, unreachable []string
	// held: keyed messages whose holder is skipped or unreachable, by
	// holder; not stored, and not moved.
	held := map[string][]int{}
	var stranded []int // unkeyed messages placed on a skipped holder
	holdKeyed := func(p peer, idx []int) (rest []int) {
		for _, k := range idx {
			if placementKey(msgs[k]) != "" {
				held[p.name] = append(held[p.name], k)
			} else {
				rest = append(rest, k)
			}
		}
		if len(idx) > len(rest) {
			s.cluster.keyedRefused.WithLabelValues(p.name).Inc()
		}
		return rest
	}
	for len(pending) > 0 && len(holders) > 0 {
		parts := placeBatch(msgs, pending, all, pick(holders, s.cluster.rr.Add(1)-1))
		// Keyed messages of a holder skipped a moment ago wait for it.
		parts = slices.DeleteFunc(parts, func(bp batchPart) bool {
			if bp.peer.local() || !s.cluster.isDown(bp.peer.addr) {
				return false
			}
			if rest := holdKeyed(bp.peer, bp.idx); len(rest) > 0 {
				// Unkeyed ones placed there (every holder is skipped)
				// have nowhere better to go.
				unreachable = append(unreachable, bp.peer.name)
				stranded = append(stranded, rest...)
			}
			return true
		})
		if len(parts) == 1 && len(pending) == len(msgs) && len(held) == 0 {
			p := parts[0].peer
			if p.local() {
				return false // all of it is this broker's
			}
			if s.publishOn(w, r, p, data) {
				return true
			}
			unreachable = append(unreachable, p.name)
			holders = slices.DeleteFunc(holders, func(h peer) bool { return h.name == p.name })
			pending = holdKeyed(p, pending)
			continue
		}
		answers := make([]answer, len(parts))
		var wg sync.WaitGroup
		for i, part := range parts {
			wg.Go(func() { answers[i] = s.publishPart(r, topic, msgs, part) })
		}
		wg.Wait()
		pending = pending[:0]
		for i, a := range answers {
			idx := parts[i].idx
			var got []json.RawMessage
			switch {
			case a.ok() && json.Unmarshal(a.body, &got) == nil && len(got) == len(idx):
				for j, k := range idx {
					results[k] = got[j]
				}
				stored = append(stored, fmt.Sprintf("messages %v on %s", idx, a.peer.name))
			case a.err != nil && notSent(a.err):
				unreachable = append(unreachable, a.peer.name)
				holders = slices.DeleteFunc(holders, func(h peer) bool { return h.name == a.peer.name })
				pending = append(pending, holdKeyed(a.peer, idx)...)
			case a.err != nil || a.status >= 500:
				// Sent, and no answer came back (or the broker failed
				// midway): the part may have been stored.
				unknown = append(unknown, fmt.Sprintf("messages %v on %s", idx, describe(a)))
			default:
				failed = append(failed, fmt.Sprintf("messages %v on %s", idx, describe(a)))
			}
		}
		slices.Sort(pending)
	}
	pending = append(pending, stranded...)
	slices.Sort(pending)
	if len(stored) == 0 && len(unknown) == 0 && len(failed) == 0 && (len(pending) > 0 || len(held) > 0) {
		// Nothing stored anywhere: one 503, as for a single publish.
		names := slices.Sorted(maps.Keys(held))
		for _, n := range unreachable {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
		writeProblem(w, r, codeBrokerUnavailable, "", fmt.Sprintf("topic %s: the batch's brokers %s cannot be reached or are skipped for a while; nothing was stored (keyed messages wait for the holder their sharding key or dedup id picks); publish it again, with the same dedup ids, once they are back",
			topic, strings.Join(names, ", ")))
		return true
	}
	for _, name := range slices.Sorted(maps.Keys(held)) {
		idx := held[name]
		slices.Sort(idx)
		failed = append(failed, fmt.Sprintf("messages %v: their sharding keys or dedup ids tie them to %s, which is not answering (they were not sent to another holder)", idx, name))
	}
	if len(pending) > 0 {
		failed = append(failed, fmt.Sprintf("messages %v: no holder could be reached (%s)", pending, strings.Join(unreachable, ", ")))
	}
	if len(failed) > 0 || len(unknown) > 0 {
		detail := fmt.Sprintf("the batch spans brokers; stored %s", listOrNone(stored))
		if len(failed) > 0 {
			detail += fmt.Sprintf("; not stored %s", strings.Join(failed, "; "))
		}
		if len(unknown) > 0 {
			detail += fmt.Sprintf("; may or may not have been stored %s", strings.Join(unknown, "; "))
		}
		switch {
		case len(unknown) == 0:
			detail += "; publish the messages not stored again"
		default:
			detail += "; publish the messages not stored again, and those that may have been with the same Postbus-Dedup-Id (dedup_id) to be sure they are stored once"
		}
		writeProblem(w, r, codeClusterPartial, "", detail)
		return true
	}
	out, _ := json.Marshal(results)
	writeRawJSON(w, http.StatusCreated, append(out, '\n'))
	return true
}

// batchPart is the messages of a batch (indexes into it) one broker stores.
type batchPart struct {
	peer peer
	idx  []int
}

// placeBatch groups the pending messages by the holder each belongs to:
// its placement key's, or unkeyed's.
func placeBatch(msgs []*broker.Message, pending []int, holders []peer, unkeyed peer) []batchPart {
	var parts []batchPart
	for _, i := range pending {
		p := unkeyed
		if k := placementKey(msgs[i]); k != "" {
			p = pick(holders, shardQueue(k))
		}
		j := slices.IndexFunc(parts, func(bp batchPart) bool { return bp.peer.name == p.name })
		if j < 0 {
			parts = append(parts, batchPart{peer: p})
			j = len(parts) - 1
		}
		parts[j].idx = append(parts[j].idx, i)
	}
	return parts
}

// publishPart stores one part of a split batch on its broker.
func (s *Server) publishPart(r *http.Request, topic string, msgs []*broker.Message, part batchPart) answer {
	if part.peer.local() {
		return s.publishLocalPart(r, topic, msgs, part.idx)
	}
	items := make([]batchItemOut, len(part.idx))
	for j, k := range part.idx {
		items[j] = batchItemOf(msgs[k])
	}
	body, _ := json.Marshal(items) // strings and maps: cannot fail
	return s.askOne(r, part.peer, "", body, nil)
}

// publishLocalPart stores this broker's share of a split batch, answering
// as a forwarded part would.
func (s *Server) publishLocalPart(r *http.Request, topic string, msgs []*broker.Message, idx []int) answer {
	self := peer{name: s.cluster.self}
	part := make([]*broker.Message, len(idx))
	for j, k := range idx {
		part[j] = msgs[k]
	}
	res, err := s.broker.Publish(r.Context(), topic, part)
	if err != nil {
		rec := &recorder{header: make(http.Header)}
		s.writeError(rec, r, err)
		return answer{peer: self, status: rec.status, header: rec.header, body: rec.buf.Bytes()}
	}
	body := []byte{'['}
	for i, x := range res {
		if i > 0 {
			body = append(body, ',')
		}
		body = appendPublishResult(body, toPublishResult(x, s.cluster.self))
	}
	return answer{peer: self, status: http.StatusCreated, body: append(body, ']')}
}

// batchItemOut is a batch item as sent on to another broker.
type batchItemOut struct {
	BodyBase64  string            `json:"body_base64"`
	ContentType string            `json:"content_type,omitempty"`
	Tag         string            `json:"tag,omitempty"`
	Keys        []string          `json:"keys,omitempty"`
	ShardingKey string            `json:"sharding_key,omitempty"`
	Delay       string            `json:"delay,omitempty"`
	DelayLevel  int               `json:"delay_level,omitempty"`
	DeliverAt   string            `json:"deliver_at,omitempty"`
	DedupID     string            `json:"dedup_id,omitempty"`
	Properties  map[string]string `json:"properties,omitempty"`
}

// batchItemOf is m as a batch item again, for the part of a split batch
// another broker stores. The body travels as base64, whatever it holds.
func batchItemOf(m *broker.Message) batchItemOut {
	it := batchItemOut{BodyBase64: base64.StdEncoding.EncodeToString(m.Body), ContentType: m.ContentType, Tag: m.Tag, Keys: m.Keys,
		ShardingKey: m.ShardingKey, DelayLevel: m.DelayLevel, DedupID: m.DedupID, Properties: m.Properties}
	if m.Delay > 0 {
		it.Delay = m.Delay.String()
	}
	if !m.DeliverAt.IsZero() {
		it.DeliverAt = m.DeliverAt.Format(time.RFC3339Nano)
	}
	return it
}
