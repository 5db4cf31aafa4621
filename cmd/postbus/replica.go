package main

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/postbus/postbus"
	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/broker/meta"
	"github.com/postbus/postbus/broker/replica"
	"github.com/postbus/postbus/httpapi"
	"github.com/postbus/postbus/push"
)

// replicaFlags are the flags of a replica group's member (DESIGN §6).
type replicaFlags struct {
	nodeID    string
	peers     string
	bind      string
	join      bool
	secret    string
	heartbeat time.Duration
	election  time.Duration
	lease     time.Duration
	commit    time.Duration
	snapEvery time.Duration
	snapAfter uint64
	trailing  uint64
}

func (r *replicaFlags) register(fs *flag.FlagSet) {
	var d replica.Config
	d.DefaultTimeouts()
	fs.StringVar(&r.nodeID, "node-id", "", "this member's id in its replica group (required with --raft-peers)")
	fs.StringVar(&r.peers, "raft-peers", "", "the replica group's initial members as id=host:port,... (raft addresses, not HTTP); the same list on every member. Unset: a standalone broker")
	fs.StringVar(&r.bind, "raft-addr", "", "the address to listen on for raft (default: this member's entry of --raft-peers)")
	fs.BoolVar(&r.join, "raft-join", false, "start without bootstrapping the group, and wait to be added by its leader (POST /v1/replicas)")
	fs.StringVar(&r.secret, "raft-secret", "", "shared secret (at least 32 bytes) every raft connection must prove; better set as POSTBUS_RAFT_SECRET. It also derives the group's receipt and delivery signing keys")
	fs.DurationVar(&r.heartbeat, "raft-heartbeat-timeout", d.HeartbeatTimeout, "raft: how long a follower waits without hearing from the leader before it stands for election")
	fs.DurationVar(&r.election, "raft-election-timeout", d.ElectionTimeout, "raft: how long a candidate waits for votes")
	fs.DurationVar(&r.lease, "raft-leader-lease-timeout", d.LeaderLeaseTimeout, "raft: how long a leader stays without hearing from a majority before it steps down")
	fs.DurationVar(&r.commit, "raft-commit-timeout", d.CommitTimeout, "raft: the longest the leader waits before it sends what it has")
	fs.DurationVar(&r.snapEvery, "raft-snapshot-interval", d.SnapshotInterval, "raft: how often to check whether to take a snapshot")
	fs.Uint64Var(&r.snapAfter, "raft-snapshot-threshold", d.SnapshotThreshold, "raft: entries since the last snapshot that make the next one")
	fs.Uint64Var(&r.trailing, "raft-trailing-logs", 10240, "raft: entries kept after a snapshot, so a member briefly away catches up from the log rather than by a whole snapshot")
}

// config checks the flags and turns them into a replica.Config.
func (r *replicaFlags) config(mode string, bc broker.Config, logger *slog.Logger) (replica.Config, error) {
	var c replica.Config
	if r.nodeID == "" {
		return c, errors.New("--raft-peers needs --node-id")
	}
	peers := map[string]string{}
	for _, p := range strings.Split(r.peers, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		id, addr, ok := strings.Cut(p, "=")
		if !ok || id == "" {
			return c, fmt.Errorf("--raft-peers: %q is not id=host:port", p)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return c, fmt.Errorf("--raft-peers: %q: %w", p, err)
		}
		if _, dup := peers[id]; dup {
			return c, fmt.Errorf("--raft-peers: id %q twice", id)
		}
		peers[id] = addr
	}
	if _, ok := peers[r.nodeID]; !ok && !r.join {
		return c, fmt.Errorf("--node-id %q is not among --raft-peers (use --raft-join to join a group as a new member)", r.nodeID)
	}
	if len(r.secret) < replica.MinSecretLen && mode != "dev" {
		return c, fmt.Errorf("--raft-secret (or POSTBUS_RAFT_SECRET) must be at least %d bytes: raft connections are refused without it", replica.MinSecretLen)
	}
	c = replica.Config{Broker: bc, NodeID: r.nodeID, Peers: peers, Bind: r.bind, Join: r.join, Secret: []byte(r.secret),
		HeartbeatTimeout: r.heartbeat, ElectionTimeout: r.election, LeaderLeaseTimeout: r.lease, CommitTimeout: r.commit,
		SnapshotInterval: r.snapEvery, SnapshotThreshold: r.snapAfter, TrailingLogs: r.trailing, Logger: logger}
	return c, nil
}

// groupKeys derives the receipt key and the delivery signing key from the
// raft secret and the group's name, so every member has the same: a receipt
// handed out by one leader is taken by the next, the group keeps one
// identity at the name servers (broker.InstanceID is made from the receipt
// key), and webhook signatures verify with one public key across a failover.
// The cost: a new --raft-secret makes new keys (receipts out then fail).
func groupKeys(secret, group string) (receiptKey []byte, signing ed25519.PrivateKey) {
	derive := func(purpose string) []byte {
		h := hmac.New(sha256.New, []byte(secret))
		h.Write([]byte("postbus " + purpose + "\x00" + group))
		return h.Sum(nil)
	}
	return derive("receipt key"), ed25519.NewKeyFromSeed(derive("delivery signing key"))
}

// groupInstance is the identity a group's leader registers with at the
// name servers: the same for every leader of the group (its receipt key
// and its id are), another for a group started apart under the same
// broker name (a member wiped and started with another --raft-peers),
// which the name servers then refuse while this group is live (409
// broker_name_taken) instead of moving the name between the two.
func groupInstance(brokerInstance, groupID string) string {
	sum := sha256.Sum256([]byte("postbus group instance\x00" + brokerInstance + "\x00" + groupID))
	return "g" + hex.EncodeToString(sum[:12])
}

// replicaMember is a running member: the raft node, and while it leads,
// its broker with the push dispatcher and the API.
type replicaMember struct {
	c       *serveConfig
	mode    string
	logger  *slog.Logger
	node    *replica.Node
	front   *httpapi.Front
	httpURL string
	auth    httpapi.AuthConfig
	key     *push.BusKey
	client  *push.Client
	member  *membership

	mu   sync.Mutex
	term *leaderTerm // nil while following
}

// leaderTerm is what runs while this member leads.
type leaderTerm struct {
	epoch      uint64 // the lead it was opened for
	b          *broker.Broker
	stopPush   func()
	stopSync   func()
	unregister func()
}

// serveReplica is serve for a member of a replica group.
func serveReplica(ctx context.Context, c *serveConfig, mode string, logger *slog.Logger, auth httpapi.AuthConfig, ln net.Listener) error {
	baseReg := prometheus.NewRegistry()
	rcfg, err := c.replica.config(mode, c.broker, logger)
	if err != nil {
		return err
	}
	certs, err := c.tls.reloader(logger, baseReg)
	if err != nil {
		return err
	}
	defer watchSIGHUP(certs, logger)()
	if err := os.MkdirAll(c.broker.Dir, 0o755); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	group := c.brokerName
	if group == "" {
		return errors.New("--raft-peers needs --broker-name (the replica group's name, the same on every member)")
	}
	receiptKey, signing := groupKeys(c.replica.secret, group)
	if err := writeReceiptKey(c.broker.Dir, receiptKey); err != nil {
		return err
	}
	key, err := push.NewBusKey(signing)
	if err != nil {
		return fmt.Errorf("delivery signing key: %w", err)
	}
	node, err := replica.Open(ctx, rcfg)
	if err != nil {
		return err
	}
	defer func() {
		if err := node.Close(); err != nil {
			logger.Error("closing the raft node", slog.Any("err", err))
		}
	}()
	member, err := c.membership(ln.Addr().String(), reachableAt(c.addr, ln.Addr().String()), logger)
	if err != nil {
		return err
	}
	httpURL := c.advertise
	if httpURL == "" {
		httpURL = c.tls.scheme() + "://" + dialable(ln.Addr().String())
	}
	for _, col := range node.Collectors() {
		baseReg.MustRegister(col)
	}
	baseReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &replicaMember{c: c, mode: mode, logger: logger, node: node, httpURL: httpURL, auth: auth, key: key, member: member,
		client: push.NewClient(push.ClientConfig{AllowPrivate: c.allowPrivate, UserAgent: "postbus/" + version})}
	defer m.client.Close()
	m.front, err = httpapi.NewFront(httpapi.FrontConfig{Auth: auth, Logger: logger, Replicas: replicasOf{m: m, group: group},
		Metrics: promhttp.HandlerFor(baseReg, promhttp.HandlerOpts{}), MetricsAuth: c.auth.metricsAuth, HopTimeout: c.forwardTimeout,
		Untrusted: node.NotReady, TLS: c.clientTLS, Version: version})
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           m.front,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- serveHTTP(srv, ln, certs) }()
	logger.Info("postbus listening", slog.String("mode", mode), slog.String("addr", ln.Addr().String()), slog.String("node", rcfg.NodeID),
		slog.String("group", group), slog.String("data", c.broker.Dir), slog.String("version", version))

	roles := node.Changes()
	loopDone := make(chan struct{})
	loopCtx, stopLoop := context.WithCancel(context.Background())
	go func() {
		defer close(loopDone)
		for {
			select {
			case <-loopCtx.Done():
				return
			case <-roles:
			case <-time.After(time.Second):
				// A notice may come while a step of the last one failed:
				// look again now and then.
			}
			m.follow(loopCtx)
		}
	}()

	select {
	case err = <-served:
		err = fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	stopLoop()
	<-loopDone
	logger.Info("shutting down", slog.Duration("timeout", c.shutdownTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer cancel()
	m.mu.Lock()
	if m.term != nil {
		m.term.unregister()
	}
	m.mu.Unlock()
	if serr := srv.Shutdown(sctx); serr != nil {
		logger.Warn("in-flight requests did not finish in time", slog.Any("err", serr))
	}
	m.stepDown("shutting down")
	logger.Info("stopped")
	return err
}

// follow makes what runs match raft's view: a broker while this member
// leads, none while it follows.
func (m *replicaMember) follow(ctx context.Context) {
	leading := m.node.IsLeader()
	m.mu.Lock()
	have := m.term != nil
	var broken error
	stale := false
	if have {
		broken = m.term.b.ReplicationBroken()
		// The lead it was opened for ended, even if this member leads
		// again now: what it remembers (queue offsets, what is out) may
		// be behind the log.
		stale = m.term.epoch != m.node.Epoch()
	}
	m.mu.Unlock()
	switch {
	case leading && broken != nil:
		// Its offsets may not match the group's: open it again, as a
		// restart would, from what was committed.
		m.stepDown("a replicated append failed: " + broken.Error())
		have = false
	case leading && stale:
		m.stepDown("the lead it was opened for ended")
		have = false
	}
	switch {
	case leading && !have:
		if err := m.lead(ctx); err != nil {
			m.logger.Error("could not take up the lead; trying again", slog.Any("err", err))
		}
	case !leading && have:
		m.stepDown("lost the lead")
	}
}

// lead opens this member's broker on its replicated files (the recovery a
// restart runs, so timers, offsets and receipts resume from what the group
// committed) and starts delivery and the API.
func (m *replicaMember) lead(ctx context.Context) error {
	start := time.Now()
	bc, err := m.node.BecomeLeader(ctx, m.httpURL)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	for _, col := range m.node.Collectors() {
		reg.MustRegister(col)
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bc.Registerer = reg
	b, err := broker.Open(ctx, bc)
	if err != nil {
		return fmt.Errorf("open the broker as leader: %w", err)
	}
	b.SetTxnChecker(push.NewTxnChecker(m.client, m.key))
	dispatcher := push.NewDispatcher(push.DispatcherConfig{Broker: b, Client: m.client, Key: m.key,
		Logger: m.logger.With(slog.String("component", "push")), Registerer: reg})
	dctx, stopDispatch := context.WithCancel(context.Background())
	dispatched := make(chan struct{})
	go func() {
		defer close(dispatched)
		if err := dispatcher.Run(dctx); err != nil && !errors.Is(err, context.Canceled) {
			m.logger.Error("push dispatcher stopped", slog.Any("err", err))
		}
	}()
	c := m.c
	var cluster *httpapi.Cluster
	if m.member != nil {
		cluster = &httpapi.Cluster{Self: m.member.name, Names: m.member.client, HopTimeout: c.forwardTimeout,
			SyncInterval: c.syncInterval, Token: c.namesrvToken, TLS: c.clientTLS}
	}
	api, err := httpapi.New(httpapi.Config{
		Broker: b, Logger: m.logger, Registry: reg, OpenAPI: postbus.OpenAPI,
		Auth: m.auth, MetricsAuth: c.auth.metricsAuth, Version: version, PublishRate: c.rateLimit, PublishBurst: c.rateBurst, JWKS: m.key.JWKS(),
		Cluster: cluster, MaxBodyMemory: int64(c.bodyMemory),
		MaxBodyMemoryPerClient: int64(c.bodyShare), MinBodyRate: c.minBodyRateConfig(), BodyGrace: c.bodyGrace,
		MaxHeldPolls: c.heldPolls, MaxHeldPollsPerClient: c.clientPolls,
		Ready: b.Ready,
	})
	if err != nil {
		stopDispatch()
		<-dispatched
		_ = b.Close()
		return err
	}
	api.FenceWrites() // lifted by RunSync once topic deletes are exchanged
	t := &leaderTerm{epoch: bc.Replica.Epoch, b: b,
		stopPush:   func() { stopDispatch(); <-dispatched },
		stopSync:   runBackground(api),
		unregister: m.member.register(b, groupInstance(b.InstanceID(), m.node.GroupID()), c.cluster, m.logger),
	}
	m.mu.Lock()
	m.term = t
	m.mu.Unlock()
	m.front.SetLeader(api)
	m.logger.Info("leading the replica group", slog.String("node", m.node.ID()), slog.Duration("took", time.Since(start)))
	return nil
}

// stepDown stops what runs while leading: requests are forwarded again at
// once, deliveries stop, and the broker closes (its last writes fail, as
// this member no longer leads; what was committed is the group's).
func (m *replicaMember) stepDown(why string) {
	m.mu.Lock()
	t := m.term
	m.term = nil
	m.mu.Unlock()
	if t == nil {
		return
	}
	m.front.SetLeader(nil)
	m.logger.Warn("no longer leading the replica group", slog.String("why", why))
	t.unregister()
	t.stopSync()
	t.stopPush()
	if err := t.b.Close(); err != nil {
		m.logger.Warn("closing the broker after leading", slog.Any("err", err))
	}
}

// writeReceiptKey makes the data directory's receipt key the group's.
func writeReceiptKey(dir string, key []byte) error {
	path := filepath.Join(dir, "receipt.key")
	if have, err := os.ReadFile(path); err == nil && string(have) == string(key) {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, key, 0o600); err != nil {
		return fmt.Errorf("receipt key: %w", err)
	}
	f, err := os.Open(tmp)
	if err == nil {
		err = f.Sync()
		_ = f.Close()
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("receipt key: %w", err)
	}
	return nil
}

// replicasOf is the member as httpapi.Replicas.
type replicasOf struct {
	m     *replicaMember
	group string
}

func (r replicasOf) Status() (any, error) { return r.m.node.Status(r.group) }

func (r replicasOf) Add(id, addr string) error {
	err := r.m.node.AddMember(id, addr)
	if errors.Is(err, replica.ErrUnknownMember) {
		return fmt.Errorf("%w: %w", httpapi.ErrMemberNotFound, err)
	}
	if errors.Is(err, meta.ErrInvalid) || errors.Is(err, replica.ErrMemberConflict) {
		return fmt.Errorf("%w: %w", httpapi.ErrInvalidMember, err)
	}
	return err
}

func (r replicasOf) Remove(id string) error {
	err := r.m.node.RemoveMember(id)
	if errors.Is(err, replica.ErrUnknownMember) {
		return fmt.Errorf("%w: %w", httpapi.ErrMemberNotFound, err)
	}
	return err
}

func (r replicasOf) Leader() (string, bool, bool) {
	id, addr, ok := r.m.node.Leader()
	if id == r.m.node.ID() {
		r.m.mu.Lock()
		leading := r.m.term != nil
		r.m.mu.Unlock()
		return addr, leading, leading
	}
	return addr, false, ok
}
