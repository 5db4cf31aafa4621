package namesrv

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrInvalid is returned (wrapped, with what was wrong) by Heartbeat for a
// registration the registry refuses; the HTTP layer answers it with 400.
var ErrInvalid = errors.New("invalid broker registration")

// ErrNotRegistered is returned (wrapped) by Patch for a broker the registry
// does not hold at that address and in that cluster, as after the name
// server restarted: the broker must send its whole registration again.
var ErrNotRegistered = errors.New("broker not registered")

// ErrNameTaken is returned (wrapped) by Heartbeat for a broker whose name
// a live broker of another instance holds at another address: two
// processes started with one --broker-name. The live one keeps the name
// (and its topics their routes) until it stops heartbeating.
var ErrNameTaken = errors.New("broker name taken")

// ErrWarmingUp is returned by Lookup until WarmUp has passed since the
// registry was made: a restarted name server has not yet heard every
// broker's heartbeat, so a route it gives may be partial.
var ErrWarmingUp = errors.New("name server warming up")

// ErrTopicGone is returned (wrapped, naming the brokers) by Lookup for a
// topic no live broker holds now but one did within BrokerExpiry: its
// holders are down, not gone for good, and another broker must not take
// the topic's place.
var ErrTopicGone = errors.New("the brokers holding the topic are not live")

// Limits on a registration. They bound what one broker can make a name
// server hold: MaxTopicsPerBroker topics of at most MaxTopicNameLen bytes.
const (
	MaxBrokerNameLen   = 64
	MaxTopicNameLen    = 255 // "%RETRY%<group>%<topic>": 7 + 120 + 1 + 127
	MaxTopicsPerBroker = 100_000
	MaxQueues          = 1024
	MaxVersionLen      = 128
	MaxAddrLen         = 2048

	// DefaultCluster is the cluster of a broker that names none.
	DefaultCluster = "DefaultCluster"
)

// Topic is a topic as one broker holds it.
type Topic struct {
	Name   string `json:"name"`
	Queues int    `json:"queues"`
}

// BrokerInfo is what a broker registers, and what the registry knows of it.
type BrokerInfo struct {
	Name    string
	Cluster string
	Addr    string // the broker's base URL, http://host:port
	Version string
	// Instance identifies the broker's data (its receipts' key, hashed):
	// the same broker restarted on another port keeps it; another broker
	// given the same name has another. Empty: not told (older brokers).
	Instance string
	Topics   []Topic
	// LastHeartbeat is set by the registry; a caller's value is ignored.
	LastHeartbeat time.Time
}

// Route is where a topic lives: every live broker holding it, sorted by
// name.
type Route struct {
	Topic   string
	Brokers []RouteBroker
}

// RouteBroker is one broker of a Route and how many queues of the topic it
// holds.
type RouteBroker struct {
	Name    string
	Cluster string
	Addr    string
	Queues  int
}

// Config tunes a Registry. Zero (or negative) fields take the defaults.
type Config struct {
	// BrokerExpiry is how long a broker may stay silent before it is
	// dropped (RocketMQ: 120s).
	BrokerExpiry time.Duration
	// ScanInterval is how often Run looks for silent brokers.
	ScanInterval time.Duration
	// TopicMemory is how long a topic whose every holder expired or
	// unregistered is remembered as held by brokers that are down (Lookup:
	// ErrTopicGone), so that no broker creates a copy of its own of a topic
	// whose holders are only away (a copy without the topic's
	// subscriptions, whose messages would never be pushed). It ends early
	// when a holder comes back, with the topic (the route is live again)
	// or without it (it no longer holds it). Default 24h; never below
	// BrokerExpiry.
	TopicMemory time.Duration
	// WarmUp is how long after it starts the registry answers no route
	// (Lookup: ErrWarmingUp), so that a restarted name server, empty, does
	// not give a route before every broker has heartbeated to it. Set it
	// to the brokers' heartbeat interval (postbus namesrv --warm-up: 30s,
	// their default). Zero or negative: none, for a registry that cannot
	// have missed a heartbeat (tests, or one made with its only broker).
	WarmUp time.Duration
	// Now is the clock; tests inject their own.
	Now    func() time.Time
	Logger *slog.Logger
}

// DefaultTopicMemory is how long a topic whose holders are all down is
// remembered (Config.TopicMemory).
const DefaultTopicMemory = 24 * time.Hour

// DefaultConfig is RocketMQ's: brokers expire after 120s of silence,
// checked every 10s; no warm-up. A topic whose holders are all down is
// remembered for DefaultTopicMemory.
func DefaultConfig() Config {
	return Config{
		BrokerExpiry: 120 * time.Second,
		ScanInterval: 10 * time.Second,
		TopicMemory:  DefaultTopicMemory,
		Now:          time.Now,
		Logger:       slog.New(slog.DiscardHandler),
	}
}

// Log attribute keys.
const (
	logKeyBroker    = "broker"
	logKeyCluster   = "cluster"
	logKeyAddr      = "addr"
	logKeyTopics    = "topics"
	logKeySilentFor = "silent_for"
	logKeyNameSrv   = "namesrv"
	logKeyErr       = "err"
	logKeyStatus    = "status"
	logKeyExpiresIn = "expires_in"
	logKeyInterval  = "interval"
)

// Registry is a name server's in-memory registry of brokers and the routes
// of their topics. It is safe for concurrent use.
type Registry struct {
	expiry time.Duration
	memory time.Duration // of gone topics: TopicMemory
	scan   time.Duration
	now    func() time.Time
	log    *slog.Logger

	refusals atomic.Uint64 // registrations refused: the name is another live broker's

	mu sync.RWMutex
	// brokers holds every registered broker by name. An entry's pointer is
	// stable while the broker stays registered, so the index can point at
	// it. Guarded by mu, as are the entries' fields.
	brokers map[string]*brokerEntry
	// index maps a topic to the brokers holding it, sorted by broker name.
	// Invariant: holder h is in index[t] exactly when t is in h.b.info.Topics
	// (with the same queue count), and no slice in index is empty. Guarded
	// by mu.
	index map[string][]holder
	// gone maps a topic whose last live holder expired or unregistered to
	// when, and which brokers held it, for TopicMemory: Lookup answers
	// ErrTopicGone meanwhile. Guarded by mu.
	gone map[string]goneTopic
	// goneBrokers maps a broker that expired or unregistered to when, for
	// TopicMemory: a receipt or a record naming it is a down broker's,
	// not one nobody knows. Guarded by mu.
	goneBrokers map[string]time.Time

	readyAt time.Time // when warm-up ends
}

type goneTopic struct {
	at      time.Time
	brokers []string
}

type brokerEntry struct {
	info BrokerInfo // Topics is sorted by name, never modified in place, only replaced
}

type holder struct {
	b      *brokerEntry
	queues int
}

// NewRegistry returns an empty registry.
func NewRegistry(cfg Config) *Registry {
	def := DefaultConfig()
	if cfg.BrokerExpiry <= 0 {
		cfg.BrokerExpiry = def.BrokerExpiry
	}
	if cfg.ScanInterval <= 0 {
		cfg.ScanInterval = def.ScanInterval
	}
	if cfg.Now == nil {
		cfg.Now = def.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	if cfg.TopicMemory <= 0 {
		cfg.TopicMemory = def.TopicMemory
	}
	return &Registry{
		memory:      max(cfg.TopicMemory, cfg.BrokerExpiry),
		readyAt:     cfg.Now().Add(max(cfg.WarmUp, 0)),
		gone:        make(map[string]goneTopic),
		goneBrokers: make(map[string]time.Time),
		expiry:      cfg.BrokerExpiry,
		scan:        cfg.ScanInterval,
		now:         cfg.Now,
		log:         cfg.Logger,
		brokers:     make(map[string]*brokerEntry),
		index:       make(map[string][]holder),
	}
}

// Live reports whether a broker of that name is registered at addr and
// has been heard from within the expiry: a heartbeat from a broker that is
// not registers it anew (the name server restarted, or had expired it).
func (r *Registry) Live(name, addr string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e := r.brokers[name]
	return e != nil && e.info.Addr == addr && r.alive(e.info.LastHeartbeat, r.now())
}

// BrokerExpiry is how long a broker may stay silent before it is dropped;
// a name server tells brokers so in its heartbeat answer.
func (r *Registry) BrokerExpiry() time.Duration { return r.expiry }

// Refusals counts the registrations refused because another live broker
// (another instance: another broker's data, or another replica group)
// holds the name (ErrNameTaken).
func (r *Registry) Refusals() uint64 { return r.refusals.Load() }

// Heartbeat registers a broker or refreshes its registration. The
// registration replaces the previous one whole: a topic the broker no
// longer lists leaves its routes at once. An invalid registration changes
// nothing and returns an error wrapping ErrInvalid.
//
// The registry keeps each broker's topics sorted by name. The work that
// grows with the number of topics (comparing, sorting, diffing the new
// list against the old) is done without the write lock, which is held only
// to apply the difference. An unchanged heartbeat that lists its topics
// sorted, as Client does, costs one comparison per topic.
func (r *Registry) Heartbeat(info BrokerInfo) error {
	if info.Cluster == "" {
		info.Cluster = DefaultCluster
	}
	if err := validateInfo(info); err != nil {
		return err
	}
	var (
		topics []Topic // info.Topics sorted, once needed
		sorted bool
	)
	for {
		r.mu.RLock()
		e := r.brokers[info.Name]
		var old []Topic // never modified in place, so readable unlocked
		if e != nil {
			old = e.info.Topics
		}
		r.mu.RUnlock()

		var c change
		if e == nil || !slices.Equal(old, info.Topics) {
			if !sorted {
				var err error
				if topics, err = sortedTopics(info.Topics); err != nil {
					return err
				}
				sorted = true
			}
			c = diffTopics(old, topics)
		}
		applied, err := r.apply(info, e, old, c)
		if err != nil {
			return err
		}
		if applied {
			if e == nil {
				r.log.Info("broker registered", slog.String(logKeyBroker, info.Name),
					slog.String(logKeyCluster, info.Cluster), slog.String(logKeyAddr, info.Addr),
					slog.Int(logKeyTopics, len(topics)))
			}
			return nil
		}
		// The broker's entry changed while we compared: compare again.
	}
}

// Patch changes a registered broker's topics without its sending them
// all again: put adds topics or changes their queue counts, removed drops
// topics (one it does not hold is ignored). info names the broker as its
// heartbeat does, with the topics to put in Topics. Like a heartbeat, it
// counts as hearing from the broker. A broker not registered at info's
// address and cluster gets ErrNotRegistered and must send a heartbeat; an
// invalid patch (as Heartbeat judges a registration, or a topic both put
// and removed) returns ErrInvalid. Either way nothing changes.
//
// A broker patches when a topic is created or deleted, so that it can tell
// the name servers before it answers the client without resending, and
// making them decode, every one of its topics each time.
func (r *Registry) Patch(info BrokerInfo, removed []string) error {
	if info.Cluster == "" {
		info.Cluster = DefaultCluster
	}
	if err := validateInfo(info); err != nil {
		return err
	}
	put, err := sortedTopics(info.Topics)
	if err != nil {
		return err
	}
	if len(removed) > MaxTopicsPerBroker {
		return fmt.Errorf("%w: %d topics removed; a broker registers at most %d", ErrInvalid, len(removed), MaxTopicsPerBroker)
	}
	gone := make(map[string]bool, len(removed))
	for i, name := range removed {
		if !validTopic(name) {
			return fmt.Errorf("%w: removed[%d]: %q is not a topic name", ErrInvalid, i, clip(name))
		}
		gone[name] = true
	}
	for _, t := range put {
		if gone[t.Name] {
			return fmt.Errorf("%w: topic %q is both put and removed", ErrInvalid, t.Name)
		}
	}
	for {
		r.mu.RLock()
		e := r.brokers[info.Name]
		var old []Topic
		registered := e != nil && e.info.Addr == info.Addr && e.info.Cluster == info.Cluster
		if registered {
			old = e.info.Topics
		}
		r.mu.RUnlock()
		if !registered {
			return fmt.Errorf("%w: no broker %s at %s in cluster %s; send a heartbeat", ErrNotRegistered, info.Name, clip(info.Addr), info.Cluster)
		}
		topics := old
		if len(put) > 0 || len(gone) > 0 {
			topics = patchTopics(old, put, gone)
		}
		if len(topics) > MaxTopicsPerBroker {
			return fmt.Errorf("%w: %d topics; a broker registers at most %d", ErrInvalid, len(topics), MaxTopicsPerBroker)
		}
		if applied, err := r.apply(info, e, old, diffTopics(old, topics)); err != nil || applied {
			return err
		}
	}
}

// patchTopics is old, sorted, with put (sorted) merged in, put winning on
// a name both list, and the names in gone left out.
func patchTopics(old, put []Topic, gone map[string]bool) []Topic {
	out := make([]Topic, 0, len(old)+len(put))
	i, j := 0, 0
	for i < len(old) || j < len(put) {
		var t Topic
		switch {
		case j == len(put) || i < len(old) && old[i].Name < put[j].Name:
			t = old[i]
			i++
		case i == len(old) || put[j].Name < old[i].Name:
			t = put[j]
			j++
		default:
			t = put[j]
			i++
			j++
		}
		if !gone[t.Name] {
			out = append(out, t)
		}
	}
	return out
}

// change is how a broker's sorted topic list differs from the one it
// replaces.
type change struct {
	topics  []Topic  // the new list
	removed []string // topics no longer held
	put     []Topic  // topics new or with a new queue count
	replace bool     // the sets differ: topics replaces the old list
}

// diffTopics merges two lists sorted by name.
func diffTopics(old, topics []Topic) change {
	c := change{topics: topics}
	if len(old) == 0 {
		c.put = topics
	} else {
		i, j := 0, 0
		for i < len(old) || j < len(topics) {
			switch {
			case j == len(topics) || i < len(old) && old[i].Name < topics[j].Name:
				c.removed = append(c.removed, old[i].Name)
				i++
			case i == len(old) || topics[j].Name < old[i].Name:
				c.put = append(c.put, topics[j])
				j++
			default:
				if old[i].Queues != topics[j].Queues {
					c.put = append(c.put, topics[j])
				}
				i++
				j++
			}
		}
	}
	// The same set listed in another order changes nothing.
	c.replace = len(c.removed) > 0 || len(c.put) > 0
	return c
}

// sortedTopics returns a sorted copy of ts (the caller keeps its slice),
// refusing duplicates.
func sortedTopics(ts []Topic) ([]Topic, error) {
	out := slices.Clone(ts)
	if !slices.IsSortedFunc(out, compareTopics) {
		slices.SortFunc(out, compareTopics)
	}
	for i := 1; i < len(out); i++ {
		if out[i].Name == out[i-1].Name {
			return nil, fmt.Errorf("%w: topic %q is listed twice", ErrInvalid, out[i].Name)
		}
	}
	return out, nil
}

func compareTopics(a, b Topic) int { return strings.Compare(a.Name, b.Name) }

// apply makes c the broker's registration, provided its entry is still e
// holding old (e nil: not registered), and refreshes the rest of it. It
// reports false, changing nothing, if the entry changed since it was read.
func (r *Registry) apply(info BrokerInfo, e *brokerEntry, old []Topic, c change) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.brokers[info.Name] != e || e != nil && !sameSlice(e.info.Topics, old) {
		return false, nil
	}
	now := r.now()
	if e != nil && e.info.Addr != info.Addr && e.info.Instance != "" && e.info.Instance != info.Instance &&
		r.alive(e.info.LastHeartbeat, now) {
		// Another broker claims a live broker's name: replacing the
		// registration would take the live one's topics out of the routes.
		// A broker that moved (restarted on another port) has the same
		// instance, and is let in.
		r.refusals.Add(1)
		r.log.Error("broker name claimed by another broker while its holder is live; refused",
			slog.String(logKeyBroker, info.Name), slog.String(logKeyAddr, info.Addr),
			slog.String("instance", info.Instance), slog.String("holder_instance", e.info.Instance),
			slog.String("holder_addr", e.info.Addr), slog.Duration("holder_silent_for", now.Sub(e.info.LastHeartbeat)))
		return false, fmt.Errorf("%w: broker %s is live at %s (another instance, heard %s ago); start this one under another --broker-name, or stop that one (its name is free %s after its last heartbeat)",
			ErrNameTaken, info.Name, clip(e.info.Addr), now.Sub(e.info.LastHeartbeat).Round(time.Millisecond), r.expiry)
	}
	if e == nil {
		e = &brokerEntry{info: BrokerInfo{Name: info.Name}}
		r.brokers[info.Name] = e
		r.backLocked(info.Name, c.put)
		delete(r.goneBrokers, info.Name)
	}
	for _, name := range c.removed {
		r.removeHolderLocked(name, e)
	}
	for _, t := range c.put {
		r.putHolderLocked(t.Name, e, t.Queues, info.Name)
	}
	if c.replace {
		e.info.Topics = c.topics
	}
	for _, t := range c.put {
		delete(r.gone, t.Name)
	}
	r.refreshLocked(e, info, now)
	return true, nil
}

// sameSlice reports whether a and b are the same slice, not merely equal.
func sameSlice(a, b []Topic) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// refreshLocked updates everything but the topics. r.mu must be held.
func (r *Registry) refreshLocked(e *brokerEntry, info BrokerInfo, now time.Time) {
	if e.info.Addr != "" && e.info.Addr != info.Addr {
		r.log.Info("broker moved", slog.String(logKeyBroker, info.Name),
			slog.String(logKeyAddr, info.Addr), slog.String("previous_addr", e.info.Addr))
	}
	e.info.Name = info.Name
	e.info.Cluster = info.Cluster
	e.info.Addr = info.Addr
	e.info.Version = info.Version
	if info.Instance != "" { // a patch does not carry it
		e.info.Instance = info.Instance
	}
	e.info.LastHeartbeat = now
}

// putHolderLocked sets e's queue count for topic, keeping the topic's
// holders sorted by broker name. r.mu must be held.
func (r *Registry) putHolderLocked(topic string, e *brokerEntry, queues int, name string) {
	hs := r.index[topic]
	i, found := sort.Find(len(hs), func(i int) int { return cmp.Compare(name, hs[i].b.info.Name) })
	if found {
		hs[i].queues = queues
		return
	}
	r.index[topic] = slices.Insert(hs, i, holder{b: e, queues: queues})
}

// removeHolderLocked takes e out of topic's holders. r.mu must be held.
func (r *Registry) removeHolderLocked(topic string, e *brokerEntry) {
	hs := r.index[topic]
	i := slices.IndexFunc(hs, func(h holder) bool { return h.b == e })
	if i < 0 {
		return
	}
	if len(hs) == 1 {
		delete(r.index, topic)
		return
	}
	r.index[topic] = slices.Delete(hs, i, i+1)
}

// backLocked takes a broker registered anew, listing topics, out of the
// gone topics it no longer holds: it is back, and they were deleted or
// lost while it was away, so it is not a holder the bus waits for. (Those
// it lists leave gone as their routes come back, in apply.) It costs
// O(gone topics), once per registration anew. r.mu must be held.
func (r *Registry) backLocked(name string, topics []Topic) {
	for t, g := range r.gone {
		i := slices.Index(g.brokers, name)
		if i < 0 {
			continue
		}
		if _, found := slices.BinarySearchFunc(topics, t, func(x Topic, t string) int { return strings.Compare(x.Name, t) }); found {
			continue
		}
		g.brokers = slices.Delete(slices.Clone(g.brokers), i, i+1)
		if len(g.brokers) == 0 {
			delete(r.gone, t)
			r.log.Info("a broker back without a topic it held while away; the topic is forgotten",
				slog.String(logKeyBroker, name), slog.String("topic", t))
			continue
		}
		r.gone[t] = g
	}
}

// removeLocked drops a broker and its routes, remembering for
// TopicMemory the topics it leaves with no live holder. r.mu must be held.
func (r *Registry) removeLocked(e *brokerEntry, now time.Time) {
	for _, t := range e.info.Topics {
		r.removeHolderLocked(t.Name, e)
		if !slices.ContainsFunc(r.index[t.Name], func(h holder) bool { return r.alive(h.b.info.LastHeartbeat, now) }) {
			g := r.gone[t.Name]
			if now.Sub(g.at) > r.memory {
				g.brokers = nil
			}
			g.at = now
			if !slices.Contains(g.brokers, e.info.Name) {
				g.brokers = append(g.brokers, e.info.Name)
			}
			r.gone[t.Name] = g
		}
	}
	delete(r.brokers, e.info.Name)
	r.goneBrokers[e.info.Name] = now
}

// Unregister removes a broker at once, as on its clean shutdown. It reports
// whether the broker was registered.
func (r *Registry) Unregister(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.brokers[name]
	if e == nil {
		return false
	}
	r.removeLocked(e, r.now())
	r.log.Info("broker unregistered", slog.String(logKeyBroker, name), slog.String(logKeyAddr, e.info.Addr))
	return true
}

// alive reports whether a broker last heard at last still counts at now. A
// broker past its expiry is left out of answers even before Run evicts it,
// so answers do not depend on when the scan runs.
func (r *Registry) alive(last, now time.Time) bool { return now.Sub(last) <= r.expiry }

// Route returns the live brokers holding topic, sorted by name, and false
// when there are none. It costs O(brokers holding the topic).
func (r *Registry) Route(topic string) (Route, bool) {
	now := r.now()
	r.mu.RLock()
	defer r.mu.RUnlock()
	hs := r.index[topic]
	if len(hs) == 0 {
		return Route{}, false
	}
	rt := Route{Topic: topic, Brokers: make([]RouteBroker, 0, len(hs))}
	for _, h := range hs {
		if !r.alive(h.b.info.LastHeartbeat, now) {
			continue
		}
		rt.Brokers = append(rt.Brokers, RouteBroker{
			Name: h.b.info.Name, Cluster: h.b.info.Cluster, Addr: h.b.info.Addr, Queues: h.queues,
		})
	}
	if len(rt.Brokers) == 0 {
		return Route{}, false
	}
	return rt, true
}

// Warm returns ErrWarmingUp (wrapped, saying for how long) during the
// warm-up after the registry was made, when its routes and broker list
// may be partial, and nil after.
func (r *Registry) Warm() error {
	if now := r.now(); now.Before(r.readyAt) {
		return fmt.Errorf("%w: it started less than its warm-up ago and answers in %s, once every broker has heartbeated to it",
			ErrWarmingUp, r.readyAt.Sub(now).Round(time.Millisecond))
	}
	return nil
}

// Lookup is Route for a client that must tell "no broker holds the topic"
// from "its brokers are down" and "this name server cannot say yet": it
// returns ErrWarmingUp during the warm-up after the registry starts, and
// an error wrapping ErrTopicGone when no live broker holds the topic but
// one did within TopicMemory (expired, or unregistered). ok false with a
// nil error means no broker has held the topic within TopicMemory.
func (r *Registry) Lookup(topic string) (Route, bool, error) {
	if err := r.Warm(); err != nil {
		return Route{}, false, err
	}
	now := r.now()
	if rt, ok := r.Route(topic); ok {
		return rt, true, nil
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	var down []string
	var last time.Time
	for _, h := range r.index[topic] { // expired, not yet evicted
		down = append(down, h.b.info.Name)
		if h.b.info.LastHeartbeat.After(last) {
			last = h.b.info.LastHeartbeat
		}
	}
	if g, ok := r.gone[topic]; ok && now.Sub(g.at) <= r.memory {
		for _, b := range g.brokers {
			if !slices.Contains(down, b) {
				down = append(down, b)
			}
		}
		if g.at.After(last) {
			last = g.at
		}
	}
	if len(down) == 0 {
		return Route{}, false, nil
	}
	slices.Sort(down)
	return Route{}, false, fmt.Errorf("%w: topic %s was held by %s, last live %s ago",
		ErrTopicGone, topic, strings.Join(down, ", "), now.Sub(last).Round(time.Millisecond))
}

// Brokers returns the live brokers sorted by name. Each BrokerInfo is a
// copy, Topics included (sorted by name, whatever order they were sent in).
func (r *Registry) Brokers() []BrokerInfo {
	now := r.now()
	r.mu.RLock()
	out := make([]BrokerInfo, 0, len(r.brokers))
	for _, e := range r.brokers {
		if !r.alive(e.info.LastHeartbeat, now) {
			continue
		}
		bi := e.info
		bi.Topics = slices.Clone(e.info.Topics)
		out = append(out, bi)
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b BrokerInfo) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// GoneBrokers returns, sorted, the brokers that expired or unregistered
// within TopicMemory and have not registered since.
func (r *Registry) GoneBrokers() []string {
	now := r.now()
	r.mu.RLock()
	out := make([]string, 0, len(r.goneBrokers))
	for name, at := range r.goneBrokers {
		if now.Sub(at) <= r.memory {
			out = append(out, name)
		}
	}
	for name, e := range r.brokers { // expired, not yet evicted
		if !r.alive(e.info.LastHeartbeat, now) {
			out = append(out, name)
		}
	}
	r.mu.RUnlock()
	slices.Sort(out)
	return out
}

// Run drops brokers silent for longer than BrokerExpiry, looking every
// ScanInterval, until ctx ends.
func (r *Registry) Run(ctx context.Context) {
	t := time.NewTicker(r.scan)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.evict(r.now())
		}
	}
}

// evict drops every broker silent at now for longer than the expiry and
// returns how many it dropped.
func (r *Registry) evict(now time.Time) int {
	r.mu.RLock()
	var expired bool
	for _, e := range r.brokers {
		if !r.alive(e.info.LastHeartbeat, now) {
			expired = true
			break
		}
	}
	for _, g := range r.gone {
		if now.Sub(g.at) > r.memory {
			expired = true
			break
		}
	}
	r.mu.RUnlock()
	if !expired {
		return 0 // the usual case takes only the read lock
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	for t, g := range r.gone {
		if now.Sub(g.at) > r.memory {
			delete(r.gone, t)
		}
	}
	for name, at := range r.goneBrokers {
		if now.Sub(at) > r.memory {
			delete(r.goneBrokers, name)
		}
	}
	n := 0
	for _, e := range r.brokers {
		if r.alive(e.info.LastHeartbeat, now) {
			continue // heard from since the look above
		}
		r.removeLocked(e, now)
		n++
		r.log.Warn("broker expired; its routes are removed",
			slog.String(logKeyBroker, e.info.Name), slog.String(logKeyAddr, e.info.Addr),
			slog.Duration(logKeySilentFor, now.Sub(e.info.LastHeartbeat)),
			slog.Int(logKeyTopics, len(e.info.Topics)))
	}
	return n
}

// validateInfo checks everything but duplicate topics. info.Cluster has
// had its default applied.
func validateInfo(info BrokerInfo) error {
	if !validName(info.Name) {
		return fmt.Errorf("%w: broker name %q: want 1-%d characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
			ErrInvalid, clip(info.Name), MaxBrokerNameLen)
	}
	if !validName(info.Cluster) {
		return fmt.Errorf("%w: cluster %q: want 1-%d characters of A-Z a-z 0-9 . _ -, starting with a letter or digit (or none, for %s)",
			ErrInvalid, clip(info.Cluster), MaxBrokerNameLen, DefaultCluster)
	}
	if err := validateAddr(info.Addr); err != nil {
		return fmt.Errorf("%w: addr %q: %v", ErrInvalid, clip(info.Addr), err)
	}
	if len(info.Version) > MaxVersionLen || !printable(info.Version) {
		return fmt.Errorf("%w: version %q: want at most %d printable ASCII characters", ErrInvalid, clip(info.Version), MaxVersionLen)
	}
	if len(info.Instance) > MaxVersionLen || !printable(info.Instance) {
		return fmt.Errorf("%w: instance %q: want at most %d printable ASCII characters", ErrInvalid, clip(info.Instance), MaxVersionLen)
	}
	if len(info.Topics) > MaxTopicsPerBroker {
		return fmt.Errorf("%w: %d topics; a broker registers at most %d", ErrInvalid, len(info.Topics), MaxTopicsPerBroker)
	}
	for i, t := range info.Topics {
		if !validTopic(t.Name) {
			return fmt.Errorf("%w: topics[%d]: %q is not a topic name (1-127 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit, or a system topic %%KIND%%name of at most %d)",
				ErrInvalid, i, clip(t.Name), MaxTopicNameLen)
		}
		if t.Queues < 1 || t.Queues > MaxQueues {
			return fmt.Errorf("%w: topics[%d] %q: %d queues; want 1-%d", ErrInvalid, i, t.Name, t.Queues, MaxQueues)
		}
	}
	return nil
}

// validateAddr accepts an absolute http or https URL with a host and
// nothing a base URL cannot carry.
func validateAddr(s string) error {
	if s == "" {
		return errors.New("empty; want the broker's base URL, http://host:port")
	}
	if len(s) > MaxAddrLen {
		return fmt.Errorf("longer than %d bytes", MaxAddrLen)
	}
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return errors.New("want an absolute http:// or https:// URL")
	case u.Host == "" || u.Opaque != "":
		return errors.New("no host")
	case u.User != nil:
		return errors.New("user info is not allowed")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return errors.New("a base URL has no query or fragment")
	}
	return nil
}

// validName matches ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ without a regexp,
// since a heartbeat checks many names.
func validName(s string) bool { return plainName(s, MaxBrokerNameLen) }

// ValidBrokerName reports whether s is a name a broker may register with.
func ValidBrokerName(s string) bool { return validName(s) }

// ValidTopicName reports whether s is a topic name a broker may register:
// a user topic, or a system topic such as %DLQ%group.
func ValidTopicName(s string) bool { return validTopic(s) }

// validTopic accepts a user topic (DESIGN §3: ^[A-Za-z0-9][A-Za-z0-9._-]{0,126}$)
// or a system topic: '%', upper-case letters, '%', then at least one of
// A-Za-z0-9._-%, as in %RETRY%<group>%<topic> and %DLQ%<group>.
func validTopic(s string) bool {
	if len(s) == 0 || s[0] != '%' {
		return plainName(s, 127)
	}
	if len(s) > MaxTopicNameLen {
		return false
	}
	i := 1
	for i < len(s) && s[i] >= 'A' && s[i] <= 'Z' {
		i++
	}
	if i == 1 || i >= len(s) || s[i] != '%' || i+1 == len(s) {
		return false
	}
	for _, c := range []byte(s[i+1:]) {
		if !nameByte(c) && c != '%' {
			return false
		}
	}
	return true
}

func plainName(s string, max int) bool {
	if len(s) == 0 || len(s) > max || !alnum(s[0]) {
		return false
	}
	for _, c := range []byte(s) {
		if !nameByte(c) {
			return false
		}
	}
	return true
}

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func nameByte(c byte) bool { return alnum(c) || c == '.' || c == '_' || c == '-' }

func printable(s string) bool {
	for _, c := range []byte(s) {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// clip keeps error messages short whatever the input.
func clip(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
