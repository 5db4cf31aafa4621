package httpapi

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/postbus/postbus/broker"
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
// when it is this broker's alone to store (it holds the topic and needs no
// other broker's queue, or nobody else holds it either, in which case the
// broker answers as it would standalone: auto-create or 404).
func (s *Server) publishHolders(r *http.Request, topic string, sharded bool) []peer {
	local, _ := s.broker.Queues(topic)
	if local > 0 && !sharded {
		return nil
	}
	holders := s.cluster.holders(r.Context(), topic, local)
	if len(holders) == 0 || (len(holders) == 1 && holders[0].local()) {
		return nil
	}
	return holders
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
// broker. A broker that cannot be reached is skipped and the next holder
// tried, so publishes keep flowing while a dead broker ages out of the
// routes. A forward that may have reached its broker is not retried
// elsewhere: the message might be stored twice.
func (s *Server) forwardPublish(w http.ResponseWriter, r *http.Request, topic, key string, body []byte) bool {
	holders := s.publishHolders(r, topic, key != "")
	var unreachable []string
	for len(holders) > 0 {
		var p peer
		if key != "" {
			p = pick(holders, shardQueue(key))
		} else {
			p = pick(holders, s.cluster.rr.Add(1)-1)
		}
		if p.local() {
			return false
		}
		resp, err := s.cluster.send(r.Context(), r, p, "", body)
		if err == nil {
			relay(w, resp)
			return true
		}
		if !notSent(err) {
			writeProblem(w, r, codeBrokerUnavailable, "", fmt.Sprintf("broker %s did not answer: %v; the message may or may not have been stored (publish again with a Postbus-Dedup-Id to be sure)", p.name, err))
			return true
		}
		s.cluster.markDown(p, err)
		unreachable = append(unreachable, p.name)
		holders = slices.DeleteFunc(holders, func(h peer) bool { return h.name == p.name })
	}
	if unreachable != nil {
		writeProblem(w, r, codeBrokerUnavailable, "", fmt.Sprintf("topic %s lives on %s, which cannot be reached; nothing was stored",
			topic, strings.Join(unreachable, ", ")))
		return true
	}
	return false
}

// forwardBatch routes a batch: whole to one broker when its messages all
// belong to one (no sharding keys, or keys that land on one broker), else
// split by broker, sent at once, and the results put back in the batch's
// order. A split batch is not atomic across brokers: when a part fails the
// answer is 502 cluster_partial saying which messages were stored.
func (s *Server) forwardBatch(w http.ResponseWriter, r *http.Request, topic string, msgs []*broker.Message, data []byte) bool {
	sharded := slices.ContainsFunc(msgs, func(m *broker.Message) bool { return placementKey(m) != "" })
	holders := s.publishHolders(r, topic, sharded)
	if holders == nil {
		return false
	}
	unkeyed := pick(holders, s.cluster.rr.Add(1)-1)
	parts := map[string][]int{} // broker name -> indexes into msgs
	byName := map[string]peer{}
	for i, m := range msgs {
		p := unkeyed
		if k := placementKey(m); k != "" {
			p = pick(holders, shardQueue(k))
		}
		parts[p.name] = append(parts[p.name], i)
		byName[p.name] = p
	}
	if len(parts) == 1 {
		for _, p := range byName {
			if p.local() {
				return false
			}
			s.forwardToOne(w, r, []peer{p}, data)
		}
		return true
	}
	s.splitBatch(w, r, topic, msgs, parts, byName)
	return true
}

// splitBatch publishes each broker's part of a batch at once and answers
// with the results in the batch's order.
func (s *Server) splitBatch(w http.ResponseWriter, r *http.Request, topic string, msgs []*broker.Message, parts map[string][]int, byName map[string]peer) {
	names := slices.Sorted(maps.Keys(parts))
	peers := make([]peer, len(names))
	bodies := make([][]byte, len(names))
	for i, name := range names {
		peers[i] = byName[name]
		items := make([]batchItemOut, len(parts[name]))
		for j, k := range parts[name] {
			items[j] = batchItemOf(msgs[k])
		}
		bodies[i], _ = json.Marshal(items) // plain strings and maps: cannot fail
	}
	answers := make([]answer, len(peers))
	done := make(chan struct{})
	for i, p := range peers {
		go func() {
			defer func() { done <- struct{}{} }()
			if p.local() {
				answers[i] = s.publishLocalPart(r, topic, msgs, parts[p.name])
				return
			}
			answers[i] = s.askOne(r, p, "", bodies[i], nil)
		}()
	}
	for range peers {
		<-done
	}
	results := make([]json.RawMessage, len(msgs))
	var stored, failed []string
	for i, a := range answers {
		idx := parts[names[i]]
		var got []json.RawMessage
		if a.ok() && json.Unmarshal(a.body, &got) == nil && len(got) == len(idx) {
			for j, k := range idx {
				results[k] = got[j]
			}
			stored = append(stored, fmt.Sprintf("messages %v on %s", idx, names[i]))
			continue
		}
		why := fmt.Sprint(a.err)
		if a.err == nil {
			why = fmt.Sprintf("status %d: %s", a.status, strings.TrimSpace(string(a.body)))
		}
		failed = append(failed, fmt.Sprintf("messages %v on %s (%s)", idx, names[i], why))
	}
	if len(failed) > 0 {
		writeProblem(w, r, codeClusterPartial, "", fmt.Sprintf("the batch's sharding keys span brokers; stored %s; not stored %s; publish the messages not stored again",
			listOrNone(stored), strings.Join(failed, "; ")))
		return
	}
	out, _ := json.Marshal(results)
	writeRawJSON(w, http.StatusCreated, append(out, '\n'))
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
