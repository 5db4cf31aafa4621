package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/broker/commitlog"
	"github.com/postbus/postbus/broker/meta"
)

// Errors callers branch on.
var (
	// ErrNoLeader: the group has no leader this member knows of.
	ErrNoLeader = errors.New("the replica group has no leader")
	// ErrUnknownMember: no member of that id.
	ErrUnknownMember = errors.New("no such member")
)

// Config configures a Node.
type Config struct {
	// Broker is the configuration the member's broker opens with while it
	// leads: its Dir is the member's data directory and its SegmentSize
	// must be the same on every member (the logs are the same byte for
	// byte).
	Broker broker.Config
	NodeID string
	// Peers are the initial members, id to raft address; a member with no
	// raft state bootstraps the group with them (the same list everywhere).
	Peers map[string]string
	// Bind is the address to listen on for raft (default: this member's
	// entry of Peers); Advertise the one others dial (default: that entry).
	Bind, Advertise string
	// Join: start without bootstrapping, and wait to be added.
	Join bool
	// Secret authenticates every raft connection (see transport.go);
	// empty only in tests of the state machine.
	Secret []byte

	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	SnapshotInterval   time.Duration
	SnapshotThreshold  uint64
	// TrailingLogs is how many entries raft keeps after a snapshot, so a
	// member briefly away catches up from the log; 0: raft's default.
	TrailingLogs uint64

	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Transport replaces the TCP transport (tests: raft's in-memory one).
	Transport raft.Transport
}

// DefaultTimeouts sets the timeouts the flags default to.
func (c *Config) DefaultTimeouts() {
	c.HeartbeatTimeout = time.Second
	c.ElectionTimeout = time.Second
	c.LeaderLeaseTimeout = 500 * time.Millisecond
	c.CommitTimeout = 50 * time.Millisecond
	c.SnapshotInterval = 2 * time.Minute
	c.SnapshotThreshold = 8192
}

// Node is this process's member of a replica group: the raft node, and the
// commitlog and metadata store it applies the group's entries to.
type Node struct {
	cfg      Config
	logger   *slog.Logger
	dir      string
	raftDir  string
	logDir   string
	metaPath string

	// mu guards log and meta, replaced whole by a snapshot restore; the
	// state machine reads them under RLock.
	mu   sync.RWMutex
	log  *commitlog.Log
	meta *meta.Store

	raft       *raft.Raft
	trans      raft.Transport
	closeTrans func() error
	bolt       *fileLog
	leader     atomic.Pointer[leaderInfo]
	leading    atomic.Bool
	epoch      atomic.Uint64          // of the current lead; 0: not leading
	leads      atomic.Uint64          // leads taken by this process
	applied    atomic.Uint64          // the last entry the state machine applied
	untrusted  atomic.Pointer[error]  // why this member must not lead (trust.go)
	diskOver   atomic.Pointer[error]  // why its disk is over the clean watermark (checkDisk)
	groupID    atomic.Pointer[string] // the group's id (group.go); nil until known
	diskSaid   time.Time              // when checkDisk last said so; guard's only
	kick       chan struct{}          // wakes guard
	verified   chan struct{}          // closed when guard checked the sealed segments
	notify     chan bool
	watchers   []chan struct{} // signalled on every leadership change
	watchMu    sync.Mutex
	metrics    *metrics
	done       chan struct{}
	wg         sync.WaitGroup
	closeOnce  sync.Once
	closeErr   error
}

// Open opens the member's files and starts its raft node.
func Open(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("replica: a node id is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	self, ok := cfg.Peers[cfg.NodeID]
	if !ok && !cfg.Join {
		return nil, fmt.Errorf("replica: node id %q is not among the peers", cfg.NodeID)
	}
	if cfg.Bind == "" {
		cfg.Bind = self
	}
	if cfg.Advertise == "" {
		cfg.Advertise = self
		if cfg.Advertise == "" {
			cfg.Advertise = cfg.Bind
		}
	}
	n := &Node{
		cfg: cfg, logger: cfg.Logger.With(slog.String("component", "replica")),
		dir: cfg.Broker.Dir, raftDir: filepath.Join(cfg.Broker.Dir, "raft"),
		logDir: filepath.Join(cfg.Broker.Dir, "commitlog"), metaPath: broker.MetaPath(cfg.Broker.Dir),
		notify: make(chan bool, 16), done: make(chan struct{}),
		kick: make(chan struct{}, 1), verified: make(chan struct{}),
	}
	n.metrics = newMetrics(n)
	if cfg.Registerer != nil {
		for _, c := range n.Collectors() {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("replica metrics: %w", err)
			}
		}
	}
	if err := os.MkdirAll(n.raftDir, 0o755); err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	if err := n.openFiles(ctx); err != nil {
		return nil, err
	}
	if err := n.startRaft(); err != nil {
		_ = n.closeFiles()
		return nil, err
	}
	n.wg.Add(2)
	go n.watchLeadership()
	go n.guard()
	return n, nil
}

// openFiles opens the commitlog and meta.db, the metadata writes going to
// the group from then on.
func (n *Node) openFiles(ctx context.Context) error {
	bc := n.cfg.Broker
	// Raft's log is what a majority fsynced before anything is applied; the
	// commitlog is fsynced at each snapshot (and at each segment roll), and
	// what a crash cuts from its tail the entries after the snapshot write
	// again.
	bc.SyncFlush = false
	lcfg := broker.LogConfig(bc)
	l, err := commitlog.Open(lcfg)
	if err != nil {
		return fmt.Errorf("replica: open commitlog: %w", err)
	}
	opts := []meta.Option{meta.WithLogger(n.cfg.Logger.With(slog.String("component", "meta")))}
	if bc.Now != nil {
		opts = append(opts, meta.WithClock(bc.Now))
	}
	m, err := meta.Open(ctx, n.metaPath, opts...)
	if err != nil {
		_ = l.Close()
		return fmt.Errorf("replica: open metadata: %w", err)
	}
	m.SetReplicator(n)
	n.log, n.meta = l, m
	return nil
}

func (n *Node) closeFiles() error {
	var errs []error
	if n.log != nil {
		errs = append(errs, n.log.Close())
	}
	if n.meta != nil {
		errs = append(errs, n.meta.Close())
	}
	n.log, n.meta = nil, nil
	return errors.Join(errs...)
}

func (n *Node) startRaft() error {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(n.cfg.NodeID)
	c.Logger = newHCLogger(n.cfg.Logger.With(slog.String("component", "raft")))
	if n.cfg.HeartbeatTimeout > 0 {
		c.HeartbeatTimeout = n.cfg.HeartbeatTimeout
	}
	if n.cfg.ElectionTimeout > 0 {
		c.ElectionTimeout = n.cfg.ElectionTimeout
	}
	if n.cfg.LeaderLeaseTimeout > 0 {
		c.LeaderLeaseTimeout = n.cfg.LeaderLeaseTimeout
	}
	if n.cfg.CommitTimeout > 0 {
		c.CommitTimeout = n.cfg.CommitTimeout
	}
	if n.cfg.SnapshotInterval > 0 {
		c.SnapshotInterval = n.cfg.SnapshotInterval
	}
	if n.cfg.SnapshotThreshold > 0 {
		c.SnapshotThreshold = n.cfg.SnapshotThreshold
	}
	if n.cfg.TrailingLogs > 0 {
		c.TrailingLogs = n.cfg.TrailingLogs
	}
	c.NotifyCh = n.notify
	// Proposals of concurrent publishes queue for the leader's loop,
	// which writes and sends them together.
	c.BatchApplyCh = true
	if err := raft.ValidateConfig(c); err != nil {
		return fmt.Errorf("replica: raft timeouts: %w", err)
	}
	bolt, err := openFileLog(filepath.Join(n.raftDir, "log"))
	if err != nil {
		return fmt.Errorf("replica: raft log: %w", err)
	}
	n.bolt = bolt
	logs, err := raft.NewLogCache(1024, bolt)
	if err != nil {
		_ = bolt.Close()
		return fmt.Errorf("replica: raft log: %w", err)
	}
	fss, err := raft.NewFileSnapshotStoreWithLogger(n.raftDir, 2, c.Logger)
	if err != nil {
		_ = bolt.Close()
		return fmt.Errorf("replica: raft snapshots: %w", err)
	}
	snaps := snapshotStore{FileSnapshotStore: fss, n: n}
	trans := n.cfg.Transport
	if trans == nil {
		t, err := newTransport(n.cfg.Bind, n.cfg.Advertise, n.cfg.Secret, c.Logger, n.logger, n.metrics)
		if err != nil {
			_ = bolt.Close()
			return err
		}
		trans = t
		n.closeTrans = t.Close
	}
	n.trans = trans
	existing, err := raft.HasExistingState(logs, bolt, snaps)
	if err != nil {
		_ = bolt.Close()
		return fmt.Errorf("replica: %w", err)
	}
	r, err := raft.NewRaft(c, fsm{n}, logs, bolt, snaps, trans)
	if err != nil {
		_ = bolt.Close()
		return fmt.Errorf("replica: start raft: %w", err)
	}
	n.raft = r
	if existing && len(n.cfg.Peers) > 0 {
		n.warnPeers()
	}
	if !existing && !n.cfg.Join {
		var servers []raft.Server
		for id, addr := range n.cfg.Peers {
			servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(addr)})
		}
		sort.Slice(servers, func(i, j int) bool { return servers[i].ID < servers[j].ID })
		if err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("replica: bootstrap: %w", err)
		}
		n.logger.Info("replica group bootstrapped", slog.Int("members", len(servers)))
	}
	return nil
}

// warnPeers says so when --raft-peers does not match the configuration
// this member stored: the flag only bootstraps a member with no raft
// state, so an operator who changed it must learn that it took no effect
// (members change through /v1/replicas).
func (n *Node) warnPeers() {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		n.logger.Warn("could not read the stored raft configuration to compare it with --raft-peers", slog.Any("err", err))
		return
	}
	stored := map[string]string{}
	for _, s := range f.Configuration().Servers {
		stored[string(s.ID)] = string(s.Address)
	}
	if maps.Equal(stored, n.cfg.Peers) {
		return
	}
	n.logger.Warn("--raft-peers differs from this member's stored configuration; the flag is ignored (it only bootstraps a member with no raft state: change members with POST and DELETE /v1/replicas)",
		slog.String("flag", peerList(n.cfg.Peers)), slog.String("stored", peerList(stored)))
}

// peerList writes peers as the flag takes them, sorted by id.
func peerList(peers map[string]string) string {
	ids := slices.Sorted(maps.Keys(peers))
	for i, id := range ids {
		ids[i] = id + "=" + peers[id]
	}
	return strings.Join(ids, ",")
}

// watchLeadership follows raft's leadership notices: metrics, and a signal
// to every watcher.
func (n *Node) watchLeadership() {
	defer n.wg.Done()
	for {
		select {
		case <-n.done:
			return
		case lead := <-n.notify:
			if !lead {
				// Fence first: the broker of the lead just lost may still
				// run for a while; none of its writes may go to raft.
				n.epoch.Store(0)
			}
			n.leading.Store(lead)
			if lead && n.Untrusted() != nil {
				select {
				case n.kick <- struct{}{}:
				default:
				}
			}
			n.metrics.leaderChanges.Inc()
			n.logger.Info("replica leadership changed", slog.Bool("leader", lead), slog.String("node", n.cfg.NodeID))
			n.watchMu.Lock()
			for _, w := range n.watchers {
				select {
				case w <- struct{}{}:
				default:
				}
			}
			n.watchMu.Unlock()
		}
	}
}

// Changes returns a channel signalled (coalesced) whenever this member
// gains or loses the lead; IsLeader says which it is now.
func (n *Node) Changes() <-chan struct{} {
	ch := make(chan struct{}, 1)
	n.watchMu.Lock()
	n.watchers = append(n.watchers, ch)
	n.watchMu.Unlock()
	ch <- struct{}{}
	return ch
}

// IsLeader reports whether raft says this member leads now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// ID is this member's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// BecomeLeader readies a new leader: it waits until every entry committed
// before its term is applied here, then announces its HTTP address to the
// group, so that followers forward to it. It returns the broker
// configuration the leader's broker opens with.
//
// A member that is not trusted (Untrusted) never leads: BecomeLeader
// refuses, and the lead is handed to another member. It waits for the
// check of the sealed commitlog segments that starts with the member.
func (n *Node) BecomeLeader(ctx context.Context, httpAddr string) (broker.Config, error) {
	select {
	case <-n.verified:
	case <-ctx.Done():
		return broker.Config{}, fmt.Errorf("replica: check the commitlog before leading: %w", ctx.Err())
	case <-n.done:
		return broker.Config{}, fmt.Errorf("replica: %w", raft.ErrRaftShutdown)
	}
	n.checkQuarantine()
	if err := n.Untrusted(); err != nil {
		return broker.Config{}, fmt.Errorf("replica: refusing to lead: %w", err)
	}
	if err := n.raft.Barrier(10 * time.Second).Error(); err != nil {
		return broker.Config{}, fmt.Errorf("replica: catch up before leading: %w", wrapRaft(err))
	}
	if err := n.ensureGroupID(); err != nil {
		return broker.Config{}, err
	}
	term := n.raft.CurrentTerm()
	epoch := term<<20 | n.leads.Add(1)&(1<<20-1)
	li := leaderInfo{ID: n.cfg.NodeID, HTTP: httpAddr, Term: term, Epoch: epoch}
	f := n.raft.Apply(encodeLeader(li), 10*time.Second)
	if err := f.Error(); err != nil {
		return broker.Config{}, fmt.Errorf("replica: announce the leader: %w", wrapRaft(err))
	}
	// From here this member's proposals carry epoch, until it loses the
	// lead (watchLeadership) or takes it again, or is no longer trusted.
	n.epoch.Store(epoch)
	if err := n.Untrusted(); err != nil {
		// Distrusted since the check above: distrust's fence may have
		// run before this store.
		n.epoch.Store(0)
		return broker.Config{}, fmt.Errorf("replica: refusing to lead: %w", err)
	}
	n.mu.RLock()
	defer n.mu.RUnlock()
	// Marks of queue offsets handed out in an earlier term of this member's
	// lead say nothing of the group's log: the raft log, not this file,
	// tells what was stored.
	_ = os.Remove(filepath.Join(n.dir, "queuemarks.json"))
	bc := n.cfg.Broker
	bc.Replica = &broker.Replicated{Log: n.log, Meta: n.meta, Epoch: epoch,
		Propose: func(start int64, recs [][]byte) func() error { return n.propose(epoch, start, recs) },
		Trim:    func(off int64) (int, error) { return n.trim(epoch, off) }}
	return bc, nil
}

// Leader is the leader's id and HTTP address as last announced, and
// whether one is known. It may name this member.
func (n *Node) Leader() (id, httpAddr string, ok bool) {
	_, lid := n.raft.LeaderWithID()
	li := n.leader.Load()
	if lid == "" || li == nil || li.ID != string(lid) {
		return string(lid), "", false
	}
	return li.ID, li.HTTP, true
}

// applyTimeout bounds how long a proposal waits to be taken by raft.
const applyTimeout = 10 * time.Second

// Epoch is the epoch of this member's current lead, 0 while it does not
// lead (or lost the lead since its broker was opened).
func (n *Node) Epoch() uint64 { return n.epoch.Load() }

// errFenced: a proposal of a broker whose lead is over.
var errFenced = errors.New("the broker's lead is over (this member lost the lead since it was opened)")

// propose hands raft a batch of records (broker.Replicated.Propose) of
// the broker opened for epoch.
func (n *Node) propose(epoch uint64, start int64, recs [][]byte) func() error {
	if n.epoch.Load() != epoch {
		err := fmt.Errorf("replicate %d records: %w (%w)", len(recs), errFenced, broker.ErrNotLeader)
		return func() error { return err }
	}
	t := time.Now()
	f := n.raft.Apply(encodeRecords(epoch, start, recs), applyTimeout)
	return sync.OnceValue(func() error {
		if err := f.Error(); err != nil {
			return fmt.Errorf("replicate %d records: %w", len(recs), wrapRaft(err))
		}
		n.metrics.proposeSeconds.Observe(time.Since(t).Seconds())
		res, ok := f.Response().(recordsResult)
		if !ok {
			return fmt.Errorf("replicate %d records: unexpected answer %T", len(recs), f.Response())
		}
		if res.err != nil {
			return fmt.Errorf("replicate %d records: %w", len(recs), res.err)
		}
		if len(res.offs) == 0 || res.offs[0] != start {
			return fmt.Errorf("replicate %d records: applied at %v, proposed at %d: %w", len(recs), res.offs, start, errDiverged)
		}
		return nil
	})
}

// trim proposes the retention cut of the broker opened for epoch
// (broker.Replicated.Trim) and waits until it is applied here.
func (n *Node) trim(epoch uint64, off int64) (int, error) {
	if n.epoch.Load() != epoch {
		return 0, fmt.Errorf("replicate the retention cut before %d: %w (%w)", off, errFenced, broker.ErrNotLeader)
	}
	f := n.raft.Apply(encodeTrim(epoch, off), applyTimeout)
	if err := f.Error(); err != nil {
		return 0, fmt.Errorf("replicate the retention cut before %d: %w", off, wrapRaft(err))
	}
	res, ok := f.Response().(trimResult)
	if !ok {
		return 0, fmt.Errorf("replicate the retention cut before %d: unexpected answer %T", off, f.Response())
	}
	if res.err != nil {
		return res.dropped, fmt.Errorf("replicate the retention cut before %d: %w", off, res.err)
	}
	return res.dropped, nil
}

// ReplicateMeta proposes the statements of one metadata write
// (meta.Replicator).
func (n *Node) ReplicateMeta(ctx context.Context, stmts []meta.Stmt) error {
	epoch := n.epoch.Load()
	if epoch == 0 {
		return fmt.Errorf("replicate a metadata write: %w (%w; %w)", errFenced, meta.ErrNotLeader, broker.ErrNotLeader)
	}
	data, err := encodeMeta(epoch, stmts)
	if err != nil {
		return err
	}
	t := time.Now()
	f := n.raft.Apply(data, applyTimeout)
	if err := f.Error(); err != nil {
		return fmt.Errorf("replicate a metadata write: %w", wrapRaft(err))
	}
	n.metrics.proposeSeconds.Observe(time.Since(t).Seconds())
	if err, ok := f.Response().(error); ok && err != nil {
		return fmt.Errorf("replicate a metadata write: %w", err)
	}
	return nil
}

// wrapRaft marks raft's leadership errors as broker.ErrNotLeader and
// meta.ErrNotLeader, which callers branch on.
func wrapRaft(err error) error {
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
		return fmt.Errorf("%w (%w; %w)", err, broker.ErrNotLeader, meta.ErrNotLeader)
	}
	return err
}

// Member is one member of the group as Status reports it.
type Member struct {
	ID           string `json:"id"`
	Addr         string `json:"addr"`
	Role         string `json:"role"` // "leader", "follower" (or "nonvoter")
	LastIndex    uint64 `json:"last_index"`
	AppliedIndex uint64 `json:"applied_index"`
}

// Status is GET /v1/replicas.
type Status struct {
	Broker  string   `json:"broker"`
	Leader  string   `json:"leader"`
	Members []Member `json:"members"`
}

// Status reports the group as this member knows it: its own indexes are
// exact, the others' are 0 (raft keeps no public record of them).
func (n *Node) Status(brokerName string) (Status, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return Status{}, fmt.Errorf("replica status: %w", err)
	}
	_, lid := n.raft.LeaderWithID()
	st := Status{Broker: brokerName, Leader: string(lid), Members: []Member{}}
	for _, s := range f.Configuration().Servers {
		m := Member{ID: string(s.ID), Addr: string(s.Address), Role: "follower"}
		if s.Suffrage != raft.Voter {
			m.Role = "nonvoter"
		}
		if s.ID == lid {
			m.Role = "leader"
		}
		if string(s.ID) == n.cfg.NodeID {
			m.LastIndex, m.AppliedIndex = n.raft.LastIndex(), n.AppliedIndex()
		}
		st.Members = append(st.Members, m)
	}
	return st, nil
}

// validMemberID is what a member's id may be: it names the member in
// paths (DELETE /v1/replicas/{id}) and flags.
var validMemberID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ErrMemberConflict: the id or the address is a member's already.
var ErrMemberConflict = errors.New("conflicts with a member")

// AddMember adds a voting member (raft AddVoter); on the leader only.
// Adding a member again with its own address changes nothing; an id
// already there with another address, or an address another member has,
// is refused (remove the member first).
func (n *Node) AddMember(id, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	p, perr := strconv.Atoi(port)
	if err != nil || perr != nil || host == "" || p < 1 || p > 65535 || !validMemberID.MatchString(id) {
		return fmt.Errorf("add member %q at %q: want an id of letters, digits, '.', '_' or '-' and a host:port: %w", id, addr, meta.ErrInvalid)
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("add member %s: %w", id, wrapRaft(err))
	}
	for _, s := range f.Configuration().Servers {
		switch {
		case string(s.ID) == id && string(s.Address) == addr:
			return nil
		case string(s.ID) == id:
			return fmt.Errorf("add member %s at %s: it is a member at %s; remove it first: %w", id, addr, s.Address, ErrMemberConflict)
		case string(s.Address) == addr:
			return fmt.Errorf("add member %s at %s: member %s has that address: %w", id, addr, s.ID, ErrMemberConflict)
		}
	}
	if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 30*time.Second).Error(); err != nil {
		return fmt.Errorf("add member %s: %w", id, wrapRaft(err))
	}
	return nil
}

// RemoveMember removes a member (raft RemoveServer); on the leader only.
func (n *Node) RemoveMember(id string) error {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("remove member %s: %w", id, err)
	}
	found := false
	for _, s := range f.Configuration().Servers {
		found = found || string(s.ID) == id
	}
	if !found {
		return fmt.Errorf("remove member %s: %w", id, ErrUnknownMember)
	}
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, 30*time.Second).Error(); err != nil {
		return fmt.Errorf("remove member %s: %w", id, wrapRaft(err))
	}
	return nil
}

// Snapshot takes a snapshot now (tests, and operators before a backup).
func (n *Node) Snapshot() error { return n.raft.Snapshot().Error() }

// AppliedIndex is the index of the last entry applied to this member's
// files: of the last command the state machine applied, or of the snapshot
// it started from. (Raft's own AppliedIndex counts entries handed to the
// state machine, before it applied them, and entries it never sees.)
func (n *Node) AppliedIndex() uint64 {
	a := n.applied.Load()
	if s, err := strconv.ParseUint(n.raft.Stats()["last_snapshot_index"], 10, 64); err == nil && s > a {
		return s
	}
	return a
}

// LastIndex is the index of the last entry in this member's raft log.
func (n *Node) LastIndex() uint64 { return n.raft.LastIndex() }

// Files returns the commitlog and metadata store the member applies to
// (tests read them; a broker gets them from BecomeLeader).
func (n *Node) Files() (*commitlog.Log, *meta.Store) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.log, n.meta
}

// Close stops the raft node and closes the files.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		if n.raft != nil {
			errs = append(errs, n.raft.Shutdown().Error())
		}
		close(n.done)
		n.wg.Wait()
		if n.closeTrans != nil {
			errs = append(errs, n.closeTrans())
		}
		if n.bolt != nil {
			errs = append(errs, n.bolt.Close())
		}
		n.mu.Lock()
		errs = append(errs, n.closeFiles())
		n.mu.Unlock()
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}
