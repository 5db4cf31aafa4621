package httpapi

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/nats-io/nuid"
	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/namesrv"
)

// The cluster's side of the routes other than publish and pull: each
// handler that answers for the whole bus starts with
//
//	if s.coordinating(r) { s.somethingEverywhere(w, r, s.handleX); return }
//
// and the helpers here ask the brokers concerned, this one through the
// same handler in process (marked forwarded, so it answers for itself).

// newestFound answers r (a subscription by id) from the broker whose copy
// has the highest version: copies differ for a moment after a change
// that missed a broker (down, or hung), until the anti-entropy brings it
// there, and the first copy found could be the stale one. Every broker is
// asked at once. When this broker refuses r (403, 400), or none has it,
// this broker's answer is given.
func (s *Server) newestFound(w http.ResponseWriter, r *http.Request, local http.HandlerFunc) {
	self := s.askOne(r, peer{name: s.cluster.self}, "", nil, local)
	if self.status != http.StatusNotFound && !self.ok() {
		writeAnswer(w, r, self)
		return
	}
	best := self
	for _, a := range s.ask(r, s.cluster.others(r.Context()), "", nil, local) {
		if a.ok() && (!best.ok() || newerCopy(a.body, best.body)) {
			best = a
		}
	}
	writeAnswer(w, r, best)
}

// newerCopy reports whether the JSON object a carries a higher "version"
// than b (see broker.Version); one that cannot be read is not newer.
func newerCopy(a, b []byte) bool {
	var va, vb struct {
		Version string `json:"version"`
	}
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	return versionAbove(va.Version, vb.Version)
}

// versionAbove reports whether version a ("<ms>@<broker>") is above b; an
// unreadable one is below any other.
func versionAbove(a, b string) bool {
	x, errA := broker.ParseVersion(a)
	y, errB := broker.ParseVersion(b)
	switch {
	case errA != nil:
		return false
	case errB != nil:
		return true
	case x.At != y.At:
		return x.At > y.At
	}
	return x.By > y.By
}

// everywhere applies r on every live broker (see broadcast for the
// answer). Without a broker list (no name server answers, nothing cached)
// it changes nothing and answers 503 broker_unavailable: applied here
// only, a change or delete would miss the other brokers' copies, and a
// deleted subscription would go on delivering there.
func (s *Server) everywhere(w http.ResponseWriter, r *http.Request, local http.HandlerFunc) {
	body, ok := fanOutBody(w, r)
	if !ok {
		return
	}
	s.everywhereBody(w, r, body, local)
}

func (s *Server) everywhereBody(w http.ResponseWriter, r *http.Request, body []byte, local http.HandlerFunc) {
	peers, err := s.cluster.brokers(r.Context())
	if err != nil {
		writeProblem(w, r, codeBrokerUnavailable, "", "cannot list the cluster's brokers, so this would reach some of them only; nothing was changed: "+err.Error())
		return
	}
	s.broadcast(w, r, peers, body, local)
}

// onHolders applies r on every broker holding topic, or on this broker
// alone when nobody does (it then answers as standalone: 404, or a create).
func (s *Server) onHolders(w http.ResponseWriter, r *http.Request, topic string, local http.HandlerFunc) {
	body, ok := fanOutBody(w, r)
	if !ok {
		return
	}
	s.broadcast(w, r, s.topicHolders(r, topic), body, local)
}

// topicHolders is every broker holding topic, or this one when none does.
func (s *Server) topicHolders(r *http.Request, topic string) []peer {
	local, _ := s.broker.Queues(topic)
	holders := s.cluster.holders(r.Context(), topic, local)
	if len(holders) == 0 {
		holders = []peer{{name: s.cluster.self}}
	}
	return holders
}

// putTopicEverywhere creates or changes a topic on the brokers its body's
// "brokers" names ("all", or a list of names), or, without one, on the
// brokers holding it (this one when none does). The answer is this
// broker's, or the first holder's, with "brokers" listing where it lives
// and 201 when any broker created it.
func (s *Server) putTopicEverywhere(w http.ResponseWriter, r *http.Request, topic string, req topicRequest) {
	var targets []peer
	if req.Brokers == nil {
		targets = s.topicHolders(r, topic)
	} else {
		all, err := s.cluster.brokers(r.Context())
		if err != nil {
			writeProblem(w, r, codeBrokerUnavailable, "brokers", "cannot list the cluster's brokers: "+err.Error())
			return
		}
		if targets = req.Brokers.pick(all); targets == nil {
			names := make([]string, len(all))
			for i, p := range all {
				names[i] = p.name
			}
			writeProblem(w, r, codeUnknownBroker, "brokers", fmt.Sprintf("brokers %v: the live brokers are %v", req.Brokers.names, names))
			return
		}
	}
	local, _ := s.broker.Queues(topic)
	before := s.cluster.holders(r.Context(), topic, local)
	isNew := func(p peer) bool { return !slices.ContainsFunc(before, func(h peer) bool { return h.name == p.name }) }
	if len(before) > 0 && local == 0 && slices.ContainsFunc(targets, isNew) {
		// New brokers join a topic that has subscriptions elsewhere: a
		// holder places it, since it has the subscriptions (with their
		// secrets) to copy to them.
		s.placeThroughHolder(w, r, s.cluster.live(before), req)
		return
	}
	req.Brokers = nil
	body, _ := json.Marshal(req)
	answers := s.ask(r, targets, "", body, s.handlePutTopic)
	s.cluster.names.Forget(topic)
	t := tallyOf(answers)
	failed := append(t.failed, t.missing...)
	placed := t.applied()
	switch {
	case len(failed) > 0 && len(t.ok) == 0 && cmp.Or(t.refusal, t.notFound) != nil:
		writeAnswer(w, r, *cmp.Or(t.refusal, t.notFound))
	case len(failed) > 0:
		writeProblem(w, r, codeClusterPartial, "", fmt.Sprintf("topic %s is on %s; failed on %s; PUT again to finish (it is idempotent)",
			topic, listOrNone(placed), strings.Join(failed, ", ")))
	default:
		var joined []peer
		for _, a := range answers {
			if isNew(a.peer) && !a.peer.local() {
				joined = append(joined, a.peer)
			}
		}
		if len(before) > 0 && len(joined) > 0 {
			if err := s.copySubscriptions(r, topic, joined); err != nil {
				writeProblem(w, r, codeClusterPartial, "", fmt.Sprintf("topic %s is on %s, but its subscriptions could not be copied to every new broker: %v; PUT again to finish", topic, strings.Join(placed, ", "), err))
				return
			}
		}
		var doc map[string]any
		if err := json.Unmarshal(t.best().body, &doc); err != nil || doc == nil {
			s.logger.Error("a broker's answer to a topic PUT is not a JSON object", "err", err)
			writeProblem(w, r, codeClusterPartial, "", fmt.Sprintf("topic %s is on %s, but the answer of a broker could not be read; GET the topic to see it", topic, strings.Join(placed, ", ")))
			return
		}
		doc["brokers"] = placed
		status := http.StatusOK
		if slices.ContainsFunc(t.ok, func(a *answer) bool { return a.status == http.StatusCreated }) {
			status = http.StatusCreated
		}
		writeJSON(w, status, doc)
	}
}

// placeThroughHolder passes a PUT that adds brokers to a topic on to one
// of its holders, as the client's own request, and relays the answer.
func (s *Server) placeThroughHolder(w http.ResponseWriter, r *http.Request, holders []peer, req topicRequest) {
	body, _ := json.Marshal(req)
	var unreachable []string
	for _, p := range holders {
		resp, err := s.cluster.do(r.Context(), r, p, "", body, false)
		switch {
		case err == nil:
			relay(w, resp)
			return
		case notSent(err):
			s.cluster.markDown(p, err)
			unreachable = append(unreachable, p.name)
		default:
			writeProblem(w, r, codeBrokerUnavailable, "", fmt.Sprintf("broker %s did not answer: %v; PUT again (it is idempotent)", p.name, err))
			return
		}
	}
	writeProblem(w, r, codeBrokerUnavailable, "", "no broker holding the topic could be reached: "+strings.Join(unreachable, ", "))
}

// copySubscriptions gives brokers that have just joined topic its
// subscriptions as this broker holds them: its records (see
// cluster_sync.go), with their ids, versions, secrets (those still
// signing after a rotation too) and states, so that every copy is the
// same record and the exchange has nothing to repair. The push carries
// the client's token (the PUT needed admin), else the broker's own.
func (s *Server) copySubscriptions(r *http.Request, topic string, joined []peer) error {
	var errs []string
	for _, p := range joined {
		if err := s.sync.push(r.Context(), p, []string{topic}, r.Header.Get("Authorization")); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", p.name, err))
		}
	}
	if errs != nil {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// describe says in a few words how a broker failed a request.
func describe(a answer) string {
	if a.err != nil {
		return fmt.Sprintf("%s (%v)", a.peer.name, a.err)
	}
	var p problem
	if json.Unmarshal(a.body, &p) == nil && p.Detail != "" {
		return fmt.Sprintf("%s (%d: %s)", a.peer.name, a.status, p.Detail)
	}
	return fmt.Sprintf("%s (%d)", a.peer.name, a.status)
}

// brokerChoice is a PUT topic's "brokers": "all" or a list of names.
type brokerChoice struct {
	all   bool
	names []string
}

func (c *brokerChoice) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		if s != "all" {
			return fmt.Errorf(`brokers is "all" or a list of broker names, not %q`, s)
		}
		c.all = true
		return nil
	}
	if err := json.Unmarshal(b, &c.names); err != nil || len(c.names) == 0 {
		return fmt.Errorf(`brokers is "all" or a non-empty list of broker names`)
	}
	return nil
}

func (c *brokerChoice) MarshalJSON() ([]byte, error) {
	if c.all {
		return []byte(`"all"`), nil
	}
	return json.Marshal(c.names)
}

// pick returns the chosen brokers among all, or nil when a name is not
// among them.
func (c *brokerChoice) pick(all []peer) []peer {
	if c.all {
		return all
	}
	var out []peer
	for _, n := range c.names {
		i := slices.IndexFunc(all, func(p peer) bool { return p.name == n })
		if i < 0 {
			return nil
		}
		if !slices.ContainsFunc(out, func(p peer) bool { return p.name == n }) {
			out = append(out, all[i])
		}
	}
	return out
}

// getTopicEverywhere answers GET /v1/topics/{topic} for the whole topic:
// its queues on every holder, each queue naming its broker, counts summed.
func (s *Server) getTopicEverywhere(w http.ResponseWriter, r *http.Request, topic string) {
	answers := s.ask(r, s.topicHolders(r, topic), "", nil, s.handleGetTopic)
	var (
		merged map[string]any
		names  []string
	)
	for _, a := range answers {
		if !a.ok() {
			continue
		}
		var t map[string]any
		if json.Unmarshal(a.body, &t) != nil {
			continue
		}
		names = append(names, a.peer.name)
		qs := tagQueues(t, a.peer.name)
		if merged == nil {
			merged = t
			continue
		}
		for _, k := range []string{"queue_count", "messages", "bytes"} {
			x, _ := merged[k].(float64)
			y, _ := t[k].(float64)
			merged[k] = x + y
		}
		mq, _ := merged["queues"].([]any)
		merged["queues"] = append(mq, qs...)
	}
	if merged == nil {
		writeAnswer(w, r, answers[0])
		return
	}
	merged["brokers"] = names
	writeJSON(w, http.StatusOK, merged)
}

// listEverywhere merges a list route's pages from every live broker: items
// under field, unique and ordered by their key, at most limit, with the
// next cursor the last key when any broker had more. combine merges two
// brokers' copies of one item (a topic on several brokers); nil keeps the
// first.
func (s *Server) listEverywhere(w http.ResponseWriter, r *http.Request, field, key string, limit int, local http.HandlerFunc, combine func(into, from map[string]any, broker string)) {
	answers := s.ask(r, s.everyBroker(r), "", nil, local)
	if !answers[0].ok() {
		writeAnswer(w, r, answers[0]) // this broker refused: bad parameters, or no scope
		return
	}
	byKey := map[string]map[string]any{}
	more := false
	for _, a := range answers {
		if !a.ok() {
			s.cluster.logger.Warn("a broker's list is missing from a merged list", "path", r.URL.Path, "broker", describe(a))
			continue
		}
		var page map[string]json.RawMessage
		var items []map[string]any
		if json.Unmarshal(a.body, &page) != nil || json.Unmarshal(page[field], &items) != nil {
			continue
		}
		more = more || len(page["next_cursor"]) > 0
		for _, it := range items {
			k, _ := it[key].(string)
			if prev, ok := byKey[k]; ok {
				if combine != nil {
					combine(prev, it, a.peer.name)
				}
				continue
			}
			if combine != nil {
				combine(it, nil, a.peer.name)
			}
			byKey[k] = it
		}
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range byKey {
			if !yield(k) {
				return
			}
		}
	})
	out := map[string]any{}
	if len(keys) > limit {
		keys, more = keys[:limit], true
	}
	items := make([]map[string]any, len(keys))
	for i, k := range keys {
		items[i] = byKey[k]
	}
	out[field] = items
	if more && len(keys) > 0 {
		out["next_cursor"] = keys[len(keys)-1]
	}
	writeJSON(w, http.StatusOK, out)
}

// tagQueues marks each item of doc's "queues" with the broker it is on,
// and returns them.
func tagQueues(doc map[string]any, broker string) []any { return tagList(doc, "queues", broker) }

// tagList names broker in each object of doc's list key.
func tagList(doc map[string]any, key, broker string) []any {
	qs, _ := doc[key].([]any)
	for _, q := range qs {
		if m, ok := q.(map[string]any); ok {
			m["broker"] = broker
		}
	}
	return qs
}

// combineTopics sums a topic's queue counts across brokers and lists them.
func combineTopics(into, from map[string]any, broker string) {
	brokers, _ := into["brokers"].([]string)
	into["brokers"] = append(brokers, broker)
	if from != nil {
		x, _ := into["queue_count"].(float64)
		y, _ := from["queue_count"].(float64)
		into["queue_count"] = x + y
	}
}

// createSubscriptionEverywhere creates a subscription on every broker
// holding its topic, with one id and (push) one secret, so that each
// broker delivers its own queues. It is all or nothing: when a broker
// fails, the brokers that created it delete it again. It reports false
// when the topic has no holder but this broker, leaving it to the caller.
func (s *Server) createSubscriptionEverywhere(w http.ResponseWriter, r *http.Request, req subscriptionRequest, push bool) bool {
	local, _ := s.broker.Queues(*req.Topic)
	holders, err := s.cluster.route(r.Context(), *req.Topic, local)
	if errors.Is(err, namesrv.ErrWarmingUp) || errors.Is(err, namesrv.ErrTopicGone) {
		// A name server that restarted knows only some of the holders,
		// and a topic whose brokers are down has holders nobody can reach:
		// created on some holders only, the subscription would miss the
		// others' messages for good.
		writeProblem(w, r, codeBrokerUnavailable, "", fmt.Sprintf("cannot tell every broker holding topic %s (%v); the subscription was not created", *req.Topic, err))
		return true
	}
	if err != nil {
		// No name server answers at all: this broker serves its own
		// topics as it would standalone, and says so.
		s.cluster.logger.Warn("no name server answers; the subscription is created on this broker only", "topic", *req.Topic, "err", err)
	}
	if len(holders) == 0 || (len(holders) == 1 && holders[0].local()) {
		return false
	}
	if req.ID == nil {
		id := nuid.Next()
		req.ID = &id
	}
	if push && req.Secret == nil {
		secret := broker.NewSecret()
		req.Secret = &secret
	}
	body, _ := json.Marshal(req)
	answers := s.ask(r, holders, "", body, s.handleCreateSubscription)
	t := tallyOf(answers)
	failed := append(t.failed, t.missing...)
	if len(failed) == 0 {
		writeAnswer(w, r, *t.best())
		return true
	}
	// Undo it with a tombstone at a version of its own, stored on every
	// holder (as the anti-entropy's records are, so even where the create
	// has not arrived yet, or never will): a holder that created it and
	// is out of reach now loses its copy when it meets one of them.
	v := s.broker.NextVersion()
	tomb := broker.SubscriptionRecord{ID: *req.ID, Group: *req.Group, Topic: *req.Topic, Version: v.At, VersionBy: v.By, Deleted: true}
	var undone, unsure, told []string
	for _, a := range answers {
		p := a.peer
		created := a.ok()
		maybe := !created && (a.err != nil && !notSent(a.err) || a.err == nil && a.status >= 500)
		var err error
		if p.local() {
			_, err = s.broker.ApplySubscriptionRecords(r.Context(), []broker.SubscriptionRecord{tomb})
		} else {
			_, err = s.sync.send(r.Context(), p, syncRequest{From: s.cluster.self, Topics: map[string][]broker.SubscriptionRecord{*req.Topic: {tomb}}}, "")
		}
		if err == nil {
			told = append(told, p.name)
		}
		switch {
		case err == nil && (created || maybe):
			undone = append(undone, p.name)
		case err != nil && (created || maybe):
			s.cluster.logger.Error("undoing a half-created subscription failed; it is deleted there when that broker meets another's tombstone of it, or delete it by hand",
				"id", *req.ID, "broker", p.name, "err", err)
			unsure = append(unsure, p.name)
		}
	}
	if refusal := cmp.Or(t.refusal, t.notFound); refusal != nil && len(unsure) == 0 {
		writeAnswer(w, r, *refusal)
		return true
	}
	if len(unsure) == 0 {
		writeProblem(w, r, codeClusterPartial, "", fmt.Sprintf("the subscription could not be created on every broker holding %s: %s; it was created nowhere (undone on %s); retry",
			*req.Topic, strings.Join(failed, ", "), listOrNone(undone)))
		return true
	}
	// Some holder may keep it: say so, with its id, rather than "nowhere".
	after := "delete it (DELETE /v1/subscriptions/" + *req.ID + ") once they answer"
	if len(told) > 0 {
		after = fmt.Sprintf("they drop it when they next exchange subscriptions with %s, which keep its delete; or delete it (DELETE /v1/subscriptions/%s)", listOrNone(told), *req.ID)
	}
	writeProblem(w, r, codeClusterPartial, "", fmt.Sprintf("the subscription could not be created on every broker holding %s: %s; subscription %s may or may not have been created on %s (no answer to the create or its undo): %s",
		*req.Topic, strings.Join(failed, ", "), *req.ID, strings.Join(unsure, ", "), after))
	return true
}

// rotateEverywhere gives a subscription one new secret on every broker.
func (s *Server) rotateEverywhere(w http.ResponseWriter, r *http.Request) {
	var req rotateRequest
	if perr := decodeJSONBody(r, maxSubscriptionRequestBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	if req.Secret == "" {
		req.Secret = broker.NewSecret()
	}
	body, _ := json.Marshal(req)
	r.Header.Set("Content-Type", "application/json")
	s.everywhereBody(w, r, body, s.handleRotateSecret)
}

// rotateRequest is rotate-secret's optional body.
type rotateRequest struct {
	Secret string `json:"secret,omitempty"`
}

// sumEverywhere applies r on every live broker and answers with the sum of
// the counts in their answers (field), e.g. {"purged": 12}: a group's dead
// letters live on the brokers that delivered them.
func (s *Server) sumEverywhere(w http.ResponseWriter, r *http.Request, field string, local http.HandlerFunc) {
	body, ok := fanOutBody(w, r)
	if !ok {
		return
	}
	t := tallyOf(s.ask(r, s.everyBroker(r), "", body, local))
	var (
		out   map[string]any
		total float64
	)
	for _, a := range t.ok {
		var m map[string]any
		if json.Unmarshal(a.body, &m) != nil {
			continue
		}
		n, _ := m[field].(float64)
		total += n
		if out == nil {
			out = m
		}
	}
	switch {
	case len(t.failed) > 0 && len(t.ok) == 0 && t.refusal != nil:
		writeAnswer(w, r, *t.refusal)
	case len(t.failed) > 0:
		writeProblem(w, r, codeClusterPartial, "", fmt.Sprintf("done on some brokers (%s %g); failed on %s; retrying is safe",
			field, total, strings.Join(t.failed, ", ")))
	case out == nil && t.notFound != nil:
		writeAnswer(w, r, *t.notFound) // no broker knows the group
	case out == nil:
		writeAnswer(w, r, *t.best())
	default:
		out[field] = total
		writeJSON(w, http.StatusOK, out)
	}
}

// getGroupEverywhere answers GET /v1/groups/{group} for the whole bus: the
// group's queues on every broker, each naming its broker, lag and dead
// letters summed, each subscription once.
func (s *Server) getGroupEverywhere(w http.ResponseWriter, r *http.Request) {
	peers := s.everyBroker(r)
	var merged map[string]any
	var first answer
	for i, a := range s.ask(r, peers, "", nil, s.handleGetGroup) {
		if i == 0 {
			first = a
		}
		var g map[string]any
		if !a.ok() || json.Unmarshal(a.body, &g) != nil {
			continue
		}
		qs := tagQueues(g, a.peer.name)
		// Each broker heals the dead letters it holds: its dlq_redrive
		// states are listed, each naming it, as its queues are.
		rd := tagList(g, "dlq_redrive", a.peer.name)
		if merged == nil {
			merged = g
			continue
		}
		combineGroups(merged, g, a.peer.name)
		mq, _ := merged["queues"].([]any)
		merged["queues"] = append(mq, qs...)
		if mr, _ := merged["dlq_redrive"].([]any); len(rd) > 0 {
			merged["dlq_redrive"] = append(mr, rd...)
		}
	}
	if merged == nil {
		writeAnswer(w, r, first)
		return
	}
	writeJSON(w, http.StatusOK, merged)
}

// combineGroups merges one broker's view of a group into another's: lag,
// dead letters and held polls summed, the oldest unacked age the greatest,
// each subscription listed once, as the copy with the highest version.
func combineGroups(into, from map[string]any, _ string) {
	if from == nil {
		return
	}
	for _, k := range []string{"lag", "dead_letters", "held_polls"} {
		x, _ := into[k].(float64)
		y, _ := from[k].(float64)
		into[k] = x + y
	}
	oldest, _ := into["oldest_unacked_seconds"].(float64)
	theirs, _ := from["oldest_unacked_seconds"].(float64)
	into["oldest_unacked_seconds"] = max(oldest, theirs)
	subs, _ := into["subscriptions"].([]any)
	at := map[any]int{}
	for i, sub := range subs {
		if m, ok := sub.(map[string]any); ok {
			at[m["id"]] = i
		}
	}
	more, _ := from["subscriptions"].([]any)
	for _, sub := range more {
		m, ok := sub.(map[string]any)
		if !ok {
			continue
		}
		i, seen := at[m["id"]]
		switch {
		case !seen:
			at[m["id"]] = len(subs)
			subs = append(subs, sub)
		case versionAbove(fmt.Sprint(m["version"]), fmt.Sprint(subs[i].(map[string]any)["version"])):
			subs[i] = sub
		}
	}
	into["subscriptions"] = subs
}
