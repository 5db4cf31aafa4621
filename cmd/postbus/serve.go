package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postbus/postbus"
	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/httpapi"
	"github.com/postbus/postbus/namesrv"
	"github.com/postbus/postbus/push"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// serveConfig is everything `postbus dev` and `postbus broker` take.
type serveConfig struct {
	mode            string
	addr            string
	broker          broker.Config
	flush           flushMode
	segmentSize     byteSize
	maxMessageBytes byteSize
	logLevel        string
	logFormat       string
	shutdownTimeout time.Duration
	debugAddr       string

	auth         authFlags
	allowPrivate bool
	rateLimit    float64
	rateBurst    int
	bodyMemory   byteSize
	bodyShare    byteSize      // per client; 0: an eighth of bodyMemory
	minBodyRate  byteSize      // a second; 0: bodies are not paced
	bodyGrace    time.Duration // before minBodyRate applies
	heldPolls    int           // long polls held at once
	clientPolls  int           // of them, per client

	namesrvAddrs      string
	brokerName        string
	cluster           string
	advertise         string
	heartbeatInterval time.Duration
	forwardTimeout    time.Duration
	namesrvToken      string
	syncInterval      time.Duration

	replica replicaFlags

	tls       tlsFlags
	clientTLS *tls.Config // the bus's own clients' (--tls-ca); nil: the system's roots
}

func newServeFlags(mode string, out io.Writer) (*flag.FlagSet, *serveConfig) {
	c := &serveConfig{mode: mode, broker: broker.DefaultConfig("./data")}
	c.flush = flushMode(c.broker.SyncFlush)
	c.segmentSize = byteSize(c.broker.SegmentSize)
	c.maxMessageBytes = byteSize(c.broker.MaxMessageBytes)
	addr := ":8080"
	if mode == "dev" {
		addr = "127.0.0.1:8080"
		c.broker.AutoCreateTopics = true
	}
	fs := flag.NewFlagSet("postbus "+mode, flag.ContinueOnError)
	fs.SetOutput(out)
	b := &c.broker
	fs.StringVar(&c.addr, "addr", addr, "listen address (host:port; port 0 picks a free one)")
	fs.StringVar(&b.Dir, "data", b.Dir, "data directory: commitlog, indexes and the SQLite metadata")
	fs.Var(&c.flush, "flush", "sync: acknowledge a publish only after fsync (group commit); async: after the write, fsync every --flush-interval")
	fs.DurationVar(&b.FlushInterval, "flush-interval", b.FlushInterval, "fsync period with --flush async")
	fs.Var(&c.segmentSize, "segment-size", "commitlog segment file size (preallocated; at least 1MiB; a batch larger than a segment gets a segment of its own)")
	fs.Var(&c.maxMessageBytes, "max-message-bytes", "largest message body accepted (at most 4MiB, the batch limit)")
	fs.DurationVar(&b.MaxDelay, "max-delay", b.MaxDelay, "longest delay a producer may ask for")
	fs.IntVar(&b.DefaultQueues, "default-queues", b.DefaultQueues, "queues of a topic created without a queue count")
	fs.BoolVar(&b.AutoCreateTopics, "auto-create-topics", b.AutoCreateTopics, "create a topic on its first publish")
	fs.BoolVar(&b.AutoCreateGroups, "auto-create-groups", b.AutoCreateGroups, "create a group's pull subscription on its first pull of an existing topic (--auto-create-groups=false: only groups subscribed beforehand may pull)")
	fs.DurationVar(&b.DedupWindow, "dedup-window", b.DedupWindow, "how long a Postbus-Dedup-Id is remembered")
	fs.DurationVar(&b.Retention, "retention", b.Retention, "how long messages are kept")
	fs.DurationVar(&b.RetentionInterval, "retention-check-interval", b.RetentionInterval, "how often retention runs")
	fs.DurationVar(&b.CheckpointInterval, "checkpoint-interval", b.CheckpointInterval, "how often consume queues and the key index are flushed and checkpointed")
	fs.Var((*byteSize)(&b.CheckpointBytes), "checkpoint-bytes", "checkpoint sooner once this much log is indexed since the last one (bounds the re-indexing after a crash)")
	fs.BoolVar(&b.RebuildMetadata, "rebuild-metadata", false, "recreate in meta.db the topics the commitlog holds but meta.db does not know (it is missing, unusable or older than the log); "+
		"subscriptions, consumer offsets, secrets and topic settings cannot be recovered and are logged as lost. Use once, then start without it")
	fs.DurationVar(&b.OffsetInterval, "offset-interval", b.OffsetInterval, "how often consumer offsets and the delivery attempt log are persisted")
	fs.Float64Var(&b.DiskCleanRatio, "disk-clean-ratio", b.DiskCleanRatio, "disk use (as df's Use%) above which the oldest segments are deleted before their retention")
	fs.Float64Var(&b.DiskFullRatio, "disk-full-ratio", b.DiskFullRatio, "disk use (as df's Use%) above which publishes are refused with 507")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long SIGTERM waits for in-flight requests")
	fs.IntVar(&b.MetricsTopics, "metrics-topics", broker.DefaultMetricsTopics, "how many topics get a topic label of their own on postbus_topic_published_*; publishes to later ones are counted under topic=\"other\" (bounds /metrics)")
	fs.StringVar(&c.debugAddr, "debug-addr", "", "if set, serve Go's pprof profiles on this address (keep it on loopback)")
	c.auth.register(fs)
	fs.BoolVar(&c.allowPrivate, "allow-private-webhooks", mode == "dev", "let push subscriptions deliver to loopback, private and link-local addresses (refused by default outside dev: SSRF)")
	fs.Float64Var(&c.rateLimit, "rate-limit", 0, "messages a second each token (or client address, without auth) may publish; 0: no limit")
	fs.IntVar(&c.rateBurst, "rate-burst", 0, "with --rate-limit, how many messages a token may publish at once (each message of a batch counts; a larger batch is refused); 0: one second's worth")
	c.bodyMemory = httpapi.DefaultMaxBodyMemory
	fs.Var(&c.bodyMemory, "max-body-memory", "most memory request bodies being read or handled may hold at once, across all connections; beyond it requests answer 503 server_busy with Retry-After")
	fs.Var(&c.bodyShare, "max-body-memory-per-client", "most of --max-body-memory the bodies of one client (a token's sub, or an address without auth) may hold; 0: an eighth of it, at least the largest body")
	c.minBodyRate = httpapi.DefaultMinBodyRate
	fs.Var(&c.minBodyRate, "min-body-rate", "least average rate, a second, at which a request body must arrive once --body-grace has passed (else 408 request_timeout and the connection closed); 0: none")
	fs.DurationVar(&c.bodyGrace, "body-grace", httpapi.DefaultBodyGrace, "how long a request body may take before --min-body-rate applies")
	fs.IntVar(&c.heldPolls, "max-held-polls", httpapi.DefaultMaxHeldPolls, "most long polls (pulls and reads with a wait) held at once; beyond: 503 server_busy with Retry-After")
	fs.IntVar(&c.clientPolls, "max-held-polls-per-client", httpapi.DefaultMaxHeldPollsPerClient, "most long polls one client (a token's sub, or an address without auth) may hold at once; beyond: 429 too_many_polls with Retry-After")
	fs.StringVar(&c.namesrvAddrs, "namesrv", "", "name servers to register with, ';'-separated (host:port or URLs); dev registers with its own embedded one")
	fs.StringVar(&c.brokerName, "broker-name", "", "this broker's name in the cluster (default: the host name and port)")
	fs.StringVar(&c.cluster, "cluster", "DefaultCluster", "the cluster this broker belongs to")
	fs.StringVar(&c.advertise, "advertise-addr", "", "the URL name servers give clients for this broker (default: http:// and the listen address)")
	fs.DurationVar(&c.heartbeatInterval, "heartbeat-interval", 30*time.Second, "how often the broker re-registers with the name servers (and at once when its topics change)")
	fs.DurationVar(&c.forwardTimeout, "forward-timeout", httpapi.DefaultHopTimeout, "in a cluster, how long a request forwarded to another broker may take beyond a long poll's wait; a broker that does not answer within it is skipped for a while, like one that refuses connections")
	fs.DurationVar(&c.syncInterval, "subscription-sync-interval", httpapi.DefaultSyncInterval, "in a cluster, how often the broker pushes its subscription records (tombstones of deleted ones too) to the other brokers holding their topics; also at start and at once when a broker joins a topic")
	fs.DurationVar(&b.TxnCheckInterval, "transaction-check-interval", b.TxnCheckInterval, "how often an undecided transaction is checked again (its producer group's check_url asked) after its first check, which comes at its Postbus-Transaction-Timeout")
	fs.IntVar(&b.TxnCheckMax, "transaction-check-max", b.TxnCheckMax, "checks an undecided transaction gets; after the last one answers unknown or fails, it is rolled back and its trace says why")
	fs.DurationVar(&b.TxnCheckTimeout, "transaction-check-timeout", b.TxnCheckTimeout, "how long one check of a transaction may take before it counts as failed")
	fs.DurationVar(&b.TombstoneTTL, "subscription-tombstone-ttl", b.TombstoneTTL, "how long a deleted subscription's tombstone is kept, so that a broker that missed the delete (down, expired) drops its copy when it is back; keep it far above --broker-expiry and any outage")
	fs.StringVar(&c.namesrvToken, "namesrv-token", "", "bearer token (admin scope) for the name servers, and for the pushes of subscription records to other brokers, when they check tokens; better set as POSTBUS_NAMESRV_TOKEN")
	c.tls.register(fs, true)
	if mode == "broker" {
		c.replica.register(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: postbus %s [flags]\n\n", mode)
		if mode == "dev" {
			fmt.Fprint(out, "An all-in-one bus for a laptop or a test: listens on 127.0.0.1:8080, keeps data in\n./data, creates topics on first publish and asks for no auth.\n\n")
		} else {
			fmt.Fprint(out, "A postbus broker. Topics must be created (PUT /v1/topics/{topic}) unless\n--auto-create-topics is given; a group's first pull of a topic creates its\npull subscription unless --auto-create-groups=false.\n\n")
		}
		fmt.Fprint(out, "Flags (each also as an environment variable, --flush-interval as POSTBUS_FLUSH_INTERVAL):\n")
		fs.PrintDefaults()
	}
	return fs, c
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// serve runs a broker with its HTTP API until ctx ends (SIGINT/SIGTERM),
// then shuts down cleanly: the listener closes, in-flight requests finish,
// the broker checkpoints and closes its files.
func serve(ctx context.Context, mode string, args []string, stderr io.Writer) error {
	fs, c := newServeFlags(mode, stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	logger, err := newLogger(stderr, c.logLevel, c.logFormat)
	if err != nil {
		return err
	}
	auth, err := c.auth.config(c.mode == "dev", c.addr, logger)
	if err != nil {
		return err
	}
	c.broker.SyncFlush = bool(c.flush)
	c.broker.SegmentSize = int64(c.segmentSize)
	c.broker.MaxMessageBytes = int(c.maxMessageBytes)
	c.broker.Logger = logger
	if err := checkSizeFlags(c.broker.SegmentSize, c.broker.MaxMessageBytes); err != nil {
		return err
	}
	if err := c.checkEdgeFlags(); err != nil {
		return err
	}
	if c.mode == "dev" && c.tls.cert != "" && c.tls.ca == "" {
		// dev heartbeats to its own name server over https: it trusts its
		// own certificate (often self-signed on a laptop), or it could not
		// reach itself and would refuse every publish to a new topic.
		c.tls.ca = c.tls.cert
	}
	if c.clientTLS, err = c.tls.clientConfig(); err != nil {
		return err
	}

	if c.replica.peers != "" || c.replica.join {
		ln, err := net.Listen("tcp", c.addr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", c.addr, err)
		}
		defer ln.Close()
		return serveReplica(ctx, c, mode, logger, auth, ln)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	c.broker.Registerer = reg
	certs, err := c.tls.reloader(logger, reg)
	if err != nil {
		return err
	}
	defer watchSIGHUP(certs, logger)()

	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.addr, err)
	}
	defer ln.Close()

	b, err := broker.Open(ctx, c.broker)
	if err != nil {
		return err
	}
	defer b.Close()

	key, err := push.LoadOrCreateBusKey(filepath.Join(c.broker.Dir, "signing.key"))
	if err != nil {
		return fmt.Errorf("delivery signing key: %w", err)
	}
	client := push.NewClient(push.ClientConfig{AllowPrivate: c.allowPrivate, UserAgent: "postbus/" + version})
	defer client.Close()
	b.SetTxnChecker(push.NewTxnChecker(client, key))
	dispatcher := push.NewDispatcher(push.DispatcherConfig{Broker: b, Client: client, Key: key,
		Logger: logger.With(slog.String("component", "push")), Registerer: reg})
	dctx, stopDispatch := context.WithCancel(context.Background())
	dispatched := make(chan struct{})
	// In a cluster, pushes start once the broker has heard from the others
	// what was deleted while it was away (see startPushes below).
	startPushes := make(chan struct{})
	go func() {
		defer close(dispatched)
		select {
		case <-startPushes:
		case <-dctx.Done():
			return
		}
		if err := dispatcher.Run(dctx); err != nil && !errors.Is(err, context.Canceled) {
			logger.Error("push dispatcher stopped", slog.Any("err", err))
		}
	}()
	// Deliveries stop before the broker closes, so their offsets are in
	// the broker's last flush.
	defer func() {
		stopDispatch()
		<-dispatched
	}()

	// dev embeds a name server, so another broker can join the dev bus
	// with --namesrv 127.0.0.1:8080.
	var registry *namesrv.Registry
	if c.mode == "dev" {
		rcfg := namesrv.DefaultConfig()
		rcfg.Logger = logger.With(slog.String("component", "namesrv"))
		registry = namesrv.NewRegistry(rcfg)
		go registry.Run(dctx)
	}

	membership, err := c.membership(ln.Addr().String(), reachableAt(c.addr, ln.Addr().String()), logger)
	if err != nil {
		return err
	}
	var cluster *httpapi.Cluster
	if membership != nil {
		cluster = &httpapi.Cluster{Self: membership.name, Names: membership.client, HopTimeout: c.forwardTimeout,
			SyncInterval: c.syncInterval, Token: c.namesrvToken, TLS: c.clientTLS}
	}

	var ready atomic.Bool
	api, err := httpapi.New(httpapi.Config{
		Broker: b, Logger: logger, Registry: reg, OpenAPI: postbus.OpenAPI,
		Auth: auth, MetricsAuth: c.auth.metricsAuth, Version: version, PublishRate: c.rateLimit, PublishBurst: c.rateBurst, JWKS: key.JWKS(),
		NameServer: registry, Cluster: cluster, MaxBodyMemory: int64(c.bodyMemory),
		MaxBodyMemoryPerClient: int64(c.bodyShare), MinBodyRate: c.minBodyRateConfig(), BodyGrace: c.bodyGrace,
		MaxHeldPolls: c.heldPolls, MaxHeldPollsPerClient: c.clientPolls,
		Ready: func() error {
			if !ready.Load() {
				return errors.New("starting or shutting down")
			}
			return b.Ready()
		},
	})
	if err != nil {
		return err
	}
	// Writes wait until RunSync's first exchange of topic deletes: a
	// broker back from an outage may hold a topic deleted meanwhile.
	api.FenceWrites()
	srv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	// Parked long polls are not net/http's to wait for: answered (empty)
	// when the shutdown starts.
	srv.RegisterOnShutdown(api.CloseParked)
	if c.debugAddr != "" {
		dln, err := net.Listen("tcp", c.debugAddr)
		if err != nil {
			return fmt.Errorf("listen on --debug-addr %s: %w", c.debugAddr, err)
		}
		defer dln.Close()
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		go func() {
			if err := http.Serve(dln, mux); err != nil && !errors.Is(err, net.ErrClosed) {
				logger.Error("pprof server stopped", slog.Any("err", err))
			}
		}()
		logger.Info("pprof listening", slog.String("addr", dln.Addr().String()))
	}
	served := make(chan error, 1)
	go func() { served <- serveHTTP(srv, ln, certs) }()
	ready.Store(true)
	logger.Info("postbus listening", slog.String("mode", mode), slog.String("addr", ln.Addr().String()),
		slog.String("scheme", c.tls.scheme()), slog.String("data", c.broker.Dir), slog.String("flush", c.flush.String()),
		slog.Bool("auth", auth.HMACSecret != nil || auth.PublicKeys != nil), slog.String("version", version))

	stopRegistering := membership.register(b, b.InstanceID(), c.cluster, logger)
	defer stopRegistering()
	stopSync := runBackground(api)
	defer stopSync()
	// Pushes start after the first exchange, so that a broker back from
	// an outage does not deliver, for a moment, a subscription (or topic)
	// deleted meanwhile; at most --forward-timeout plus pushStartGrace after start, whatever the
	// exchange (a name server or a broker that does not answer).
	go func() {
		bound := time.NewTimer(c.forwardTimeout + pushStartGrace)
		defer bound.Stop()
		select {
		case <-api.FirstSyncDone():
		case <-bound.C:
			logger.Warn("pushes start before the first exchange with the other brokers is over: a subscription deleted while this broker was away may deliver until it is", slog.Duration("waited", c.forwardTimeout+pushStartGrace))
		case <-dctx.Done():
		}
		close(startPushes)
	}()

	select {
	case err := <-served:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	// Unregister first, so routes stop sending clients here while the
	// in-flight requests finish.
	stopRegistering()
	ready.Store(false)
	logger.Info("shutting down", slog.Duration("timeout", c.shutdownTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		logger.Warn("in-flight requests did not finish in time", slog.Any("err", err))
	}
	stopSync()
	stopDispatch()
	<-dispatched
	if err := b.Close(); err != nil {
		return fmt.Errorf("close broker: %w", err)
	}
	logger.Info("stopped")
	return nil
}

// pushStartGrace is how long, beyond --forward-timeout, a broker in a
// cluster waits at start for its first exchange with the other brokers
// before it starts pushing anyway.
const pushStartGrace = 2 * time.Second

// isLoopback reports whether a listen address only accepts local clients.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// membership is how this broker is known in its cluster.
type membership struct {
	name, advertise string
	namesrv         []string
	client          *namesrv.Client
}

// membership reads --namesrv (or dev's own name server), --broker-name and
// --advertise-addr; nil when the broker is in no cluster.
//
// listen is the bound address (it names the broker when --broker-name is
// not given, as it always has); reach is where this process is dialled.
func (c *serveConfig) membership(listen, reach string, logger *slog.Logger) (*membership, error) {
	addrs := c.namesrvAddrs
	if addrs == "" && c.mode == "dev" {
		addrs = c.tls.scheme() + "://" + reach
	}
	if addrs == "" {
		return nil, nil
	}
	list, err := namesrv.ParseAddrs(addrs)
	if err != nil {
		return nil, fmt.Errorf("--namesrv: %w", err)
	}
	advertise := c.advertise
	if advertise == "" {
		advertise = c.tls.scheme() + "://" + dialable(reach)
	}
	name := c.brokerName
	if name == "" {
		name = strings.Trim(strings.NewReplacer(":", "-", "[", "", "]", "", "%", "-").Replace(dialable(listen)), "-.")
		if !namesrv.ValidBrokerName(name) {
			return nil, fmt.Errorf("the broker name %q made from the listen address is not a valid name (1-%d characters of A-Z a-z 0-9 . _ -): give --broker-name", name, namesrv.MaxBrokerNameLen)
		}
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: clientTransport(c.clientTLS)}
	if c.namesrvToken != "" {
		hc.Transport = bearerTransport{token: c.namesrvToken, next: hc.Transport}
	}
	client := namesrv.NewClient(namesrv.ClientConfig{Addrs: list, Interval: c.heartbeatInterval,
		Logger: logger.With(slog.String("component", "namesrv-client")), HTTPClient: hc})
	return &membership{name: name, advertise: advertise, namesrv: list, client: client}, nil
}

// register starts heartbeats to the name servers and returns what stops
// them, unregistering this broker. Outside a cluster it does nothing.
func (m *membership) register(b *broker.Broker, instance, cluster string, logger *slog.Logger) func() {
	if m == nil {
		return func() {}
	}
	name, advertise, client := m.name, m.advertise, m.client
	info := func() namesrv.BrokerInfo {
		in := namesrv.BrokerInfo{Name: name, Cluster: cluster, Addr: advertise, Version: version, Instance: instance}
		// System topics are registered too, so that their routes answer
		// (GET /v1/routes/%25DLQ%25group).
		topics := append(b.Topics(context.Background(), "", 0), b.SystemTopics()...)
		in.Topics = make([]namesrv.Topic, len(topics))
		for i, t := range topics {
			in.Topics[i] = namesrv.Topic{Name: t.Name, Queues: t.Queues}
		}
		return in
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		client.Run(ctx, info)
	}()
	go func() {
		for {
			changed := b.TopicsChanged()
			select {
			case <-changed:
				client.Changed()
			case <-ctx.Done():
				return
			}
		}
	}()
	logger.Info("registering with name servers", slog.String("broker", name), slog.String("addr", advertise), slog.Any("namesrv", m.namesrv))
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}

// dialable turns a listen address into one others can dial: an
// unspecified host becomes this machine's name.
func dialable(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if h, err := os.Hostname(); err == nil {
			host = h
		}
	}
	return net.JoinHostPort(host, port)
}

// reachableAt is the address this process is dialled at, by its own
// embedded name server's clients and by other brokers: the host named in
// --addr when it is a name (a TLS certificate for "localhost" names
// localhost, not 127.0.0.1, so dialling the resolved address would fail
// its check), with the port the listener got (--addr's may be 0).
func reachableAt(flag, bound string) string {
	host, _, err := net.SplitHostPort(flag)
	_, port, berr := net.SplitHostPort(bound)
	if err != nil || berr != nil || host == "" || net.ParseIP(host) != nil {
		return bound
	}
	return net.JoinHostPort(host, port)
}

// bearerTransport adds a bearer token to every request.
type bearerTransport struct {
	token string
	next  http.RoundTripper
}

func (t bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+t.token)
	return t.next.RoundTrip(r)
}

// checkSizeFlags says, in terms of the flags, why --segment-size and
// --max-message-bytes cannot be used (broker.CheckSizes decides).
func checkSizeFlags(segmentSize int64, maxMessageBytes int) error {
	if err := broker.CheckSizes(segmentSize, maxMessageBytes); err == nil {
		return nil
	}
	if maxMessageBytes <= 0 || maxMessageBytes > broker.MaxBatchBytes {
		return fmt.Errorf("--max-message-bytes %s: must be from 1 byte to %s, the most the bodies of one publish may total",
			formatBytes(int64(maxMessageBytes)), formatBytes(broker.MaxBatchBytes))
	}
	if segmentSize > broker.MaxSegmentSize {
		return fmt.Errorf("--segment-size %s is too large: it must be at most %s (the default is %s); "+
			"each segment and the next one are reserved whole on disk, and retention deletes whole segments",
			formatBytes(segmentSize), formatBytes(broker.MaxSegmentSize), formatBytes(broker.DefaultConfig("").SegmentSize))
	}
	return fmt.Errorf("--segment-size %s is too small: it must be at least %s (the default is %s); "+
		"any size from there holds every publish, since a batch larger than a segment gets a segment of its own",
		formatBytes(segmentSize), formatBytes(broker.MinSegmentSize(maxMessageBytes)), formatBytes(broker.DefaultConfig("").SegmentSize))
}

// checkEdgeFlags refuses rate, body-memory and name flags that cannot work.
func (c *serveConfig) checkEdgeFlags() error {
	switch {
	case c.rateLimit < 0 || math.IsNaN(c.rateLimit) || math.IsInf(c.rateLimit, 0):
		return fmt.Errorf("--rate-limit %g: want a number of messages a second, or 0 for no limit", c.rateLimit)
	case c.rateBurst < 0:
		return fmt.Errorf("--rate-burst %d: want a number of messages, or 0 for one second's worth", c.rateBurst)
	case c.syncInterval <= 0:
		return fmt.Errorf("--subscription-sync-interval %s: want a positive duration", c.syncInterval)
	case c.rateBurst > 0 && c.rateLimit == 0:
		return fmt.Errorf("--rate-burst %d needs --rate-limit", c.rateBurst)
	case int64(c.bodyMemory) < httpapi.MinBodyMemory(c.mode == "dev"):
		return fmt.Errorf("--max-body-memory %s: at least %s is needed, for the largest request body", formatBytes(int64(c.bodyMemory)), formatBytes(httpapi.MinBodyMemory(c.mode == "dev")))
	case c.bodyShare != 0 && (int64(c.bodyShare) < httpapi.MinBodyMemory(c.mode == "dev") || c.bodyShare > c.bodyMemory):
		return fmt.Errorf("--max-body-memory-per-client %s: want from %s (the largest request body) to --max-body-memory (%s), or 0 for an eighth of it", formatBytes(int64(c.bodyShare)), formatBytes(httpapi.MinBodyMemory(c.mode == "dev")), formatBytes(int64(c.bodyMemory)))
	case c.bodyGrace <= 0:
		return fmt.Errorf("--body-grace %s: want a positive duration", c.bodyGrace)
	case c.brokerName != "" && !namesrv.ValidBrokerName(c.brokerName):
		// Transaction ids and receipts carry the name before a '~', and
		// name servers refuse any other: a broker started under such a
		// name took publishes and prepares it could never register or
		// commit.
		return fmt.Errorf("--broker-name %q: want 1-%d characters of A-Z a-z 0-9 . _ -, starting with a letter or digit", c.brokerName, namesrv.MaxBrokerNameLen)
	case c.heldPolls < 1 || c.clientPolls < 1 || c.clientPolls > c.heldPolls:
		return fmt.Errorf("--max-held-polls %d, --max-held-polls-per-client %d: want at least 1 each, the second at most the first", c.heldPolls, c.clientPolls)
	}
	return nil
}

// minBodyRateConfig is --min-body-rate as httpapi.Config takes it: there
// 0 is the default and a negative rate none.
func (c *serveConfig) minBodyRateConfig() int64 {
	if c.minBodyRate == 0 {
		return -1
	}
	return int64(c.minBodyRate)
}

// runBackground runs an API server's background work while the broker
// serves: the anti-entropy of subscriptions (which lifts FenceWrites) and
// the sampling of the dashboard's series (GET /v1/stats). The function it
// returns stops both and waits for them, before the broker closes.
func runBackground(api *httpapi.Server) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	synced, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(synced)
		api.RunSync(ctx)
	}()
	go func() {
		defer close(sampled)
		api.RunStats(ctx)
	}()
	return func() {
		cancel()
		<-synced
		<-sampled
	}
}
