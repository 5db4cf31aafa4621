package httpapi

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/namesrv"
)

// receiptOut is a receipt as this broker hands it out: in a cluster,
// prefixed with the broker's name so that any broker can route it back.
func (s *Server) receiptOut(receipt string) string {
	if s.cluster == nil {
		return receipt
	}
	return s.cluster.self + receiptSep + receipt
}

// splitReceipt returns the broker a receipt names ("" for none) and the
// receipt itself.
func splitReceipt(r string) (brokerName, receipt string) {
	if name, rest, ok := strings.Cut(r, receiptSep); ok {
		return name, rest
	}
	return "", r
}

// badReceipt finds the first receipt that cannot be one this bus issued
// to group, before anything is settled anywhere: a broker name no broker
// can have (empty, or not a name), or a receipt part without a receipt's
// form (broker.CheckReceiptForm). It returns the problem's field and
// detail, or ok. Otherwise a receipt is routed by its broker name and
// settled, name and all, by the broker whose key its MAC verifies under:
// the MAC covers the name, so a receipt under another name than its
// issuer's is refused there (a broker renamed since still settles its
// receipts under the old name).
func badReceipt(group string, receipts []string) (field, detail string, ok bool) {
	if broker.ValidateGroupName(group) != nil {
		return "", "", true // the broker's answer names the group
	}
	for i, rc := range receipts {
		field := fmt.Sprintf("receipts[%d]", i)
		if name, _, prefixed := strings.Cut(rc, receiptSep); prefixed && !namesrv.ValidBrokerName(name) {
			return field, fmt.Sprintf("not a receipt this bus issued: %q before %q is no broker's name", name, receiptSep), false
		}
		_, local := splitReceipt(rc)
		if err := broker.CheckReceiptForm(group, local, field); err != nil {
			var be *broker.Error
			if errors.As(err, &be) {
				return field, be.Detail, false
			}
			return field, err.Error(), false
		}
	}
	return "", "", true
}

// ownReceipts reports whether every receipt names this broker (or none),
// so an ack or nack is settled here without a look at the cluster.
func (s *Server) ownReceipts(receipts []string) bool {
	for _, rc := range receipts {
		if name, _ := splitReceipt(rc); name != "" && name != s.cluster.self {
			return false
		}
	}
	return true
}

// pollGrace is how long the other long polls of a pull across brokers may
// still answer once one has: long enough to read an answer already sent.
const pollGrace = 20 * time.Millisecond

// pulledPage is a pull's answer as it travels between brokers.
type pulledPage struct {
	Messages []json.RawMessage `json:"messages"`
}

// pullEverywhere answers a pull from every broker holding the topic, and
// reports false when this broker holds it alone (or nobody does). First it
// takes what is ready, asking the holders in turn (starting with a
// different one each time, so no broker's queues starve) without waiting;
// when nothing is ready and the pull may wait, it long-polls every holder
// at once and answers with the first messages to arrive. The other polls
// are cancelled pollGrace later, so that an answer already on its way is
// read rather than cut off; a broker whose poll is cancelled after it took
// messages hands them back itself (see pull), and messages beyond max are
// handed back here (nacked with no delay), so nothing waits out a
// visibility timeout for a puller that never saw it. Only an answer cut
// off in flight at the moment of cancelling is missed, and its messages
// return after their visibility: at least once, late.
//
// The whole pull takes at most wait plus one hop timeout: the asks for
// what is ready come out of the same budget as the long polls, which wait
// only what is left of the client's wait. Each forward carries its
// deadline (hdrHopDeadline), so a holder that reads it only after it
// passed (it was hung) pulls nothing: a message leased for a puller that
// is gone would count an attempt nobody received.
func (s *Server) pullEverywhere(w http.ResponseWriter, r *http.Request, max int, wait, vis time.Duration) bool {
	topic := pathParam(r, "topic")
	local, _ := s.broker.Queues(topic)
	all, err := s.cluster.route(r.Context(), topic, local)
	if err != nil && len(all) == 0 {
		// Pulled here, the topic would be created here (auto-create), a
		// copy without its settings or subscriptions, while its brokers
		// are down or the name servers cannot say where it is.
		s.writeNoRoute(w, r, topic, err, "pulled")
		return true
	}
	holders := s.cluster.live(all)
	if len(holders) == 0 || (len(holders) == 1 && holders[0].local()) {
		return false
	}
	begin := time.Now()
	budget, cancelBudget := context.WithDeadline(r.Context(), begin.Add(wait+s.cluster.hop))
	defer cancelBudget()
	// withDeadline is r for one forward of the pull, its deadline in
	// hdrHopDeadline: the hop's, or the pull's budget when sooner.
	withDeadline := func(r *http.Request, hop time.Duration) *http.Request {
		dl := time.Now().Add(hop)
		if b, _ := budget.Deadline(); b.Before(dl) {
			dl = b
		}
		fr := r.Clone(r.Context())
		fr.Header.Set(hdrHopDeadline, strconv.FormatInt(dl.UnixMilli(), 10))
		return fr
	}
	pathFor := func(n int, wait time.Duration) string {
		q := url.Values{}
		q.Set("max", strconv.Itoa(n))
		q.Set("wait", wait.String())
		if vis > 0 {
			q.Set("visibility", vis.String())
		}
		return r.URL.EscapedPath() + "?" + q.Encode()
	}
	var (
		got    []json.RawMessage
		failed []answer
	)
	start := int(s.cluster.rr.Add(1)-1) % len(holders)
	ready := r.WithContext(budget)
	for k := range holders {
		p := holders[(start+k)%len(holders)]
		if budget.Err() != nil && !p.local() {
			break // the pull's time is up: what this broker holds is still asked
		}
		// This broker's own share is taken on the client's time: it cannot
		// hang, and cut off by the budget it would pull for nobody.
		ask := withDeadline(ready, s.cluster.hop)
		if p.local() {
			ask = r
		}
		a := s.askOne(ask, p, pathFor(max-len(got), 0), nil, s.handlePull)
		page, ok := pageOf(a)
		if !ok {
			if a.peer.local() && a.err == nil && a.status >= 400 && a.status < 500 {
				writeAnswer(w, r, a) // refused here: it would be refused everywhere
				return true
			}
			failed = append(failed, a)
			continue
		}
		if got = append(got, page.Messages...); len(got) >= max {
			break
		}
	}
	// What is left of the client's wait, once the holders were asked.
	left := (wait - time.Since(begin)).Truncate(time.Millisecond)
	if len(got) > 0 || left <= 0 {
		s.writePulled(w, r, got, failed, len(holders))
		return true
	}

	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(left + 30*time.Second))
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	// A holder that could not be asked a moment ago (refused, or let the
	// hop's deadline pass: it is marked down) is not waited on again.
	pollers := slices.DeleteFunc(slices.Clone(holders), func(p peer) bool {
		return slices.ContainsFunc(failed, func(a answer) bool { return a.err != nil && a.peer.name == p.name })
	})
	if len(pollers) == 0 {
		s.writePulled(w, r, got, failed, len(holders))
		return true
	}
	unasked := failed
	polls := make(chan answer, len(pollers))
	// Each poll's deadline: what is left of the wait plus the hop timeout.
	pr := withDeadline(r.WithContext(withHopWait(ctx, left)), left+s.cluster.hop)
	for _, p := range pollers {
		go func() { polls <- s.askOne(pr, p, pathFor(max, left), nil, s.handlePull) }()
	}
	failed = slices.DeleteFunc(slices.Clone(unasked), func(a answer) bool { return a.err == nil })
	var stop *time.Timer
	for range pollers {
		a := <-polls
		page, ok := pageOf(a)
		if !ok {
			if ctx.Err() == nil {
				failed = append(failed, a)
			}
			continue
		}
		if len(page.Messages) > 0 && stop == nil {
			stop = time.AfterFunc(pollGrace, cancel)
			defer stop.Stop()
		}
		got = append(got, page.Messages...)
	}
	if len(got) > max {
		s.handBack(r, got[max:])
		got = got[:max]
	}
	s.writePulled(w, r, got, failed, len(holders))
	return true
}

func pageOf(a answer) (pulledPage, bool) {
	var p pulledPage
	return p, a.ok() && json.Unmarshal(a.body, &p) == nil
}

// writePulled answers a merged pull. Holders that failed are logged, not
// fatal, unless every holder failed.
func (s *Server) writePulled(w http.ResponseWriter, r *http.Request, got []json.RawMessage, failed []answer, holders int) {
	if len(failed) == holders {
		// A holder's refusal (404 subscription_not_found, 400, 403) is
		// the answer the client needs, not "unavailable".
		for _, a := range failed {
			if a.err == nil && a.status >= 400 && a.status < 500 {
				writeAnswer(w, r, a)
				return
			}
		}
		writeProblem(w, r, codeBrokerUnavailable, "", "no broker holding the topic answered: "+describe(failed[0]))
		return
	}
	for _, a := range failed {
		s.cluster.logger.Warn("a broker's messages are missing from a pull", "broker", describe(a))
	}
	if got == nil {
		got = []json.RawMessage{}
	}
	writeJSON(w, http.StatusOK, pulledPage{Messages: got})
}

// handBack nacks, with no delay, messages pulled beyond what the puller
// asked for.
func (s *Server) handBack(r *http.Request, extra []json.RawMessage) {
	receipts := make([]string, 0, len(extra))
	for _, m := range extra {
		var p struct {
			Receipt string `json:"receipt"`
		}
		if json.Unmarshal(m, &p) == nil && p.Receipt != "" {
			receipts = append(receipts, p.Receipt)
		}
	}
	body, _ := json.Marshal(map[string]any{"receipts": receipts, "delay": "0s"})
	nack := r.Clone(context.WithoutCancel(r.Context()))
	nack.Method = http.MethodPost
	path := "/v1/groups/" + url.PathEscape(pathParam(r, "group")) + "/nack"
	for _, a := range s.settleEverywhere(nack, path, receipts, body, s.handleNack) {
		if !a.ok() {
			s.cluster.logger.Warn("handing back extra pulled messages failed; they return after their visibility", "broker", describe(a))
		}
	}
}

// settleEverywhere sends an ack or nack's receipts to the brokers that
// issued them, each its own share (body with receipts replaced).
func (s *Server) settleEverywhere(r *http.Request, path string, receipts []string, body []byte, local http.HandlerFunc) []answer {
	addrs := map[string]string{}
	// gone is the brokers the name servers say are down (expired or
	// unregistered lately); nil when they could not be asked.
	var gone []string
	if slices.ContainsFunc(receipts, func(rc string) bool {
		name, _ := splitReceipt(rc)
		return name != "" && name != s.cluster.self
	}) {
		if all, err := s.cluster.brokers(r.Context()); err == nil {
			for _, p := range all[1:] {
				addrs[p.name] = p.addr
			}
			if g, ok := s.cluster.names.Gone(); ok {
				gone = append(g, "") // non-nil: the name servers answered
			}
		}
	}
	// A receipt naming no broker, this one, or one the cluster does not
	// know is settled here: its MAC decides. One naming a broker that is
	// not live (expired, or the name servers cannot be asked) is tried
	// here too, since this broker may have been renamed, but its own share:
	// refused here, it is the other broker's genuine receipt as likely as
	// not, and the answer says that broker is unavailable rather than that
	// the receipt is forged, so that the client does not drop it. One
	// naming a broker that no name server knows, live or gone (within
	// their topic memory), refused here, is refused as invalid: waiting
	// for that broker would be waiting forever.
	// What is settled here is checked before anything is settled
	// anywhere: a receipt under this broker's name (or none), or under a
	// name no name server knows, that this broker did not issue (its MAC
	// covers the name) fails the whole request, as a forged receipt does
	// on one broker. One under the name of a broker that is down may be
	// that broker's: it is left to the share's answer below.
	for i, rc := range receipts {
		name, _ := splitReceipt(rc)
		if _, live := addrs[name]; live || (name != "" && name != s.cluster.self && (gone == nil || slices.Contains(gone, name))) {
			continue
		}
		if err := s.broker.CheckReceipt(pathParam(r, "group"), rc, fmt.Sprintf("receipts[%d]", i)); err != nil {
			rec := &recorder{header: make(http.Header)}
			s.writeError(rec, r, err)
			return []answer{{peer: peer{name: s.cluster.self}, status: rec.status, header: rec.header, body: rec.buf.Bytes()}}
		}
	}
	shares := map[string][]string{}
	var order []string
	for _, rc := range receipts {
		name, _ := splitReceipt(rc)
		if _, known := addrs[name]; !known && name == "" {
			name = s.cluster.self
		}
		if _, ok := shares[name]; !ok {
			order = append(order, name)
		}
		shares[name] = append(shares[name], rc)
	}
	var req map[string]json.RawMessage
	_ = json.Unmarshal(body, &req) // decoded and checked by the handler already
	out := make([]answer, len(order))
	done := make(chan struct{}, len(order))
	for i, name := range order {
		go func() {
			defer func() { done <- struct{}{} }()
			share := map[string]json.RawMessage{}
			for k, v := range req {
				share[k] = v
			}
			share["receipts"], _ = json.Marshal(shares[name])
			b, _ := json.Marshal(share)
			p := peer{name: name, addr: addrs[name]}
			out[i] = s.askOne(r, p, path, b, local)
			if _, known := addrs[name]; !known && name != s.cluster.self && out[i].err == nil && out[i].status == http.StatusBadRequest &&
				problemCodeOf(out[i].body) == broker.CodeInvalidReceipt && (gone == nil || slices.Contains(gone, name)) {
				out[i] = answer{peer: p, err: fmt.Errorf("receipts %s were issued by broker %s, which is not live now (or the name servers cannot be asked); settle them again once it is back, or they are delivered again after their visibility", strings.Join(shares[name], ", "), name)}
			}
		}()
	}
	for range order {
		<-done
	}
	return out
}

// settle answers an ack, a nack or a change of visibility in a cluster:
// each broker settles its own receipts, each on its own, and the answer
// is every receipt's result in the request's order. A broker that refuses
// its share (a receipt it did not issue) or cannot be asked fails the
// request: with which brokers answered and which did not when some did,
// since those settled their share.
func (s *Server) settle(w http.ResponseWriter, r *http.Request, receipts []string, body []byte, local http.HandlerFunc) {
	answers := s.settleEverywhere(r, "", receipts, body, local)
	t := tallyOf(answers)
	failed := append(t.failed, t.missing...)
	// A receipt is answered by one broker, in the order of its share;
	// the same receipt twice goes to the same broker, so its results are
	// taken in turn.
	byReceipt := map[string][]receiptResultJSON{}
	settled := make([]string, len(t.ok))
	for i, a := range t.ok {
		var res receiptResultsJSON
		if err := json.Unmarshal(a.body, &res); err != nil {
			// Its receipts then have no result: reported below.
			s.logger.Error("a broker's answer to a settle does not decode", "broker", a.peer.name, "err", err)
		}
		for _, rr := range res.Results {
			byReceipt[rr.Receipt] = append(byReceipt[rr.Receipt], rr)
		}
		settled[i] = fmt.Sprintf("%d receipts on %s", len(res.Results), a.peer.name)
	}
	switch {
	case len(failed) == 0:
		out := receiptResultsJSON{Results: make([]receiptResultJSON, len(receipts))}
		for i, rc := range receipts {
			q := byReceipt[rc]
			if len(q) == 0 {
				// Not answered by the broker it went to (one of an
				// older version, answering counts): a fault of that
				// broker's answer, not the receipt's, and not to be
				// guessed at.
				s.logger.Error("a broker's answer to a settle lacks a receipt's result", "receipt_index", i)
				writeProblem(w, r, codeClusterPartial, fmt.Sprintf("receipts[%d]", i), fmt.Sprintf("answered %s, without this receipt's result", listOrNone(settled)))
				return
			}
			out.Results[i], byReceipt[rc] = q[0], q[1:]
		}
		writeJSON(w, http.StatusOK, out)
	case len(answers) == 1:
		writeAnswer(w, r, answers[0])
	case len(t.ok) == 0 && cmp.Or(t.refusal, t.notFound) != nil:
		writeAnswer(w, r, *cmp.Or(t.refusal, t.notFound)) // nothing settled anywhere: the first broker's reason
	default:
		// Each answered receipt's own result is kept (acked and stale
		// differ: stale may be processed twice), and a share that was
		// sent but got no answer may or may not have been settled.
		var results []string
		for _, rc := range receipts {
			if q := byReceipt[rc]; len(q) > 0 {
				results = append(results, q[0].Receipt+" "+q[0].Status)
				byReceipt[rc] = q[1:]
			}
		}
		detail := fmt.Sprintf("answered %s", listOrNone(settled))
		if len(results) > 0 {
			detail += " (" + strings.Join(results, ", ") + ")"
		}
		if len(t.refused)+len(t.missing) > 0 {
			detail += "; failed on " + strings.Join(append(slices.Clone(t.refused), t.missing...), ", ")
		}
		if len(t.unknown) > 0 {
			detail += "; may or may not have been settled on " + strings.Join(t.unknown, ", ") + " (settle those receipts again)"
		}
		writeProblem(w, r, codeClusterPartial, "receipts", detail)
	}
}

// messagesByKeyEverywhere merges every holder's answer to a query by key,
// newest first; see pagedEverywhere. Every holder is asked, those skipped
// as down for publishes included: a holder back from a hang would
// otherwise be left out of the answer, a 200 that does not say it is
// partial, for as long as it stays marked (downFor). A holder still down
// costs a refused connection, or one hop's deadline, as a merged GET of
// the topic does.
func (s *Server) messagesByKeyEverywhere(w http.ResponseWriter, r *http.Request) bool {
	topic := pathParam(r, "topic")
	local, _ := s.broker.Queues(topic)
	holders := s.cluster.holders(r.Context(), topic, local)
	if len(holders) == 0 || (len(holders) == 1 && holders[0].local()) {
		return false
	}
	// A holder that does not answer is named in the answer's
	// "incomplete": an empty list must not read as "none".
	s.pagedEverywhere(w, r, holders, s.handleMessagesByKey, "stored_at", true)
	return true
}

// deadLettersEverywhere lists a group's dead letters on every broker,
// oldest first; see pagedEverywhere.
func (s *Server) deadLettersEverywhere(w http.ResponseWriter, r *http.Request) {
	s.pagedEverywhere(w, r, s.everyBroker(r), s.handleListDeadLetters, "dead_at", false)
}

// pagedEverywhere merges a paged list of messages ({"messages":[...],
// "next_cursor"}) from peers, each paging its own store. The cursor is
// composite (broker~cursor,...; a broker left out of it has no more), a
// page holds up to limit messages from each peer, ordered by timeField,
// and each message names its broker.
//
// A broker that did not answer (or was skipped, named in incomplete)
// leaves its messages out; the answer then lists it in "incomplete", and
// the list is not the whole truth.
func (s *Server) pagedEverywhere(w http.ResponseWriter, r *http.Request, peers []peer, local http.HandlerFunc, timeField string, newestFirst bool, incomplete ...string) {
	s.pagedListEverywhere(w, r, "messages", peers, local, timeField, newestFirst, incomplete...)
}

// pagedListEverywhere is pagedEverywhere for a list under key (messages,
// transactions).
func (s *Server) pagedListEverywhere(w http.ResponseWriter, r *http.Request, key string, peers []peer, local http.HandlerFunc, timeField string, newestFirst bool, incomplete ...string) {
	cursors := map[string]string{}
	c := r.URL.Query().Get("cursor")
	if c != "" {
		for _, part := range strings.Split(c, ",") {
			name, cur, ok := strings.Cut(part, receiptSep)
			if !ok {
				writeProblem(w, r, codeInvalidParameter, "cursor", "the cursor is not one this bus returned")
				return
			}
			cursors[name] = cur
		}
	}
	var ask []peer
	var paths []string
	for _, p := range peers {
		q := r.URL.Query()
		q.Del("cursor")
		if c != "" {
			cur, ok := cursors[p.name]
			if !ok {
				continue // that broker has no more
			}
			q.Set("cursor", cur)
		}
		ask = append(ask, p)
		paths = append(paths, r.URL.EscapedPath()+"?"+q.Encode())
	}
	answers := make([]answer, len(ask))
	var wg sync.WaitGroup
	for i, p := range ask {
		wg.Go(func() { answers[i] = s.askOne(r, p, paths[i], nil, local) })
	}
	wg.Wait()
	type stamped struct {
		msg map[string]any
		at  time.Time
	}
	var (
		all  []stamped
		next []string
	)
	for _, a := range answers {
		var pg struct {
			Messages   []map[string]any
			NextCursor string `json:"next_cursor"`
		}
		var raw map[string]json.RawMessage
		ok := a.ok() && json.Unmarshal(a.body, &raw) == nil && json.Unmarshal(raw[key], &pg.Messages) == nil &&
			(raw["next_cursor"] == nil || json.Unmarshal(raw["next_cursor"], &pg.NextCursor) == nil)
		if !ok {
			if a.peer.local() && a.err == nil && a.status < 500 && a.status != http.StatusNotFound {
				writeAnswer(w, r, a) // refused here: bad parameters, or no scope
				return
			}
			if a.status != http.StatusNotFound {
				s.cluster.logger.Error("a broker's messages are missing from a merged list; the answer says so (incomplete)", "path", r.URL.Path, "broker", describe(a))
				incomplete = append(incomplete, describe(a))
			}
			continue
		}
		for _, m := range pg.Messages {
			m["broker"] = a.peer.name
			at, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(m[timeField]))
			all = append(all, stamped{m, at})
		}
		if pg.NextCursor != "" {
			next = append(next, a.peer.name+receiptSep+pg.NextCursor)
		}
	}
	slices.SortStableFunc(all, func(a, b stamped) int {
		if newestFirst {
			return b.at.Compare(a.at)
		}
		return a.at.Compare(b.at)
	})
	if len(incomplete) > 0 {
		s.cluster.partial.WithLabelValues(key).Inc()
	}
	list := make([]map[string]any, len(all))
	for i, m := range all {
		list[i] = m.msg
	}
	out := map[string]any{key: list}
	if len(next) > 0 {
		out["next_cursor"] = strings.Join(next, ",")
	}
	if len(incomplete) > 0 {
		out["incomplete"] = incomplete
	}
	writeJSON(w, http.StatusOK, out)
}

// hdrHopDeadline carries, on a pull one broker forwards to another, when
// the forwarding broker stops waiting for the answer, in Unix
// milliseconds.
const hdrHopDeadline = "Postbus-Hop-Deadline"

// hopDeadlineSkew is how far past its deadline a forwarded pull is still
// taken: room for the brokers' clocks to differ.
const hopDeadlineSkew = 250 * time.Millisecond

// forwardExpired answers a forwarded pull that reached this broker after
// the forwarding broker's deadline (this broker was hung, or the request
// sat in a queue) without pulling anything, and reports whether it did:
// the forwarding broker has answered its client already, and a message
// leased now would count an attempt nobody received and stay invisible
// for its visibility. Logged at WARN, counted in
// postbus_cluster_expired_forwards_total.
func (s *Server) forwardExpired(w http.ResponseWriter, r *http.Request) bool {
	raw := r.Header.Get(hdrHopDeadline)
	if s.cluster == nil || raw == "" {
		return false
	}
	ms, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || ms <= 0 {
		writeProblem(w, r, codeInvalidHeader, hdrHopDeadline, fmt.Sprintf("%q: want the forward's deadline in Unix milliseconds", raw))
		return true
	}
	late := time.Since(time.UnixMilli(ms))
	if late <= hopDeadlineSkew {
		return false
	}
	s.cluster.expiredForwards.Inc()
	s.cluster.logger.Warn("a forwarded pull arrived after its deadline; nothing was pulled (this broker was hung or overloaded)",
		slog.String("from", r.Header.Get(hdrForwardedBy)), slog.Duration("late", late.Round(time.Millisecond)))
	writeProblem(w, r, codeBrokerUnavailable, "", fmt.Sprintf("this pull reached broker %s %s after the forwarding broker's deadline; nothing was pulled", s.cluster.self, late.Round(time.Millisecond)))
	return true
}
