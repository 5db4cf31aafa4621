package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/postbus/postbus"
	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/httpapi"
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

	jwtSecret      string
	jwtPublicKeys  string
	jwtIssuer      string
	jwtAudience    string
	insecureNoAuth bool
	allowPrivate   bool
	metricsAuth    bool
	rateLimit      float64
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
	fs.Var(&c.segmentSize, "segment-size", "commitlog segment file size (preallocated)")
	fs.Var(&c.maxMessageBytes, "max-message-bytes", "largest message body accepted")
	fs.DurationVar(&b.MaxDelay, "max-delay", b.MaxDelay, "longest delay a producer may ask for")
	fs.IntVar(&b.DefaultQueues, "default-queues", b.DefaultQueues, "queues of a topic created without a queue count")
	fs.BoolVar(&b.AutoCreateTopics, "auto-create-topics", b.AutoCreateTopics, "create a topic on its first publish")
	fs.DurationVar(&b.DedupWindow, "dedup-window", b.DedupWindow, "how long a Postbus-Dedup-Id is remembered")
	fs.DurationVar(&b.Retention, "retention", b.Retention, "how long messages are kept")
	fs.DurationVar(&b.RetentionInterval, "retention-check-interval", b.RetentionInterval, "how often retention runs")
	fs.DurationVar(&b.CheckpointInterval, "checkpoint-interval", b.CheckpointInterval, "how often consume queues and the key index are flushed and checkpointed")
	fs.Var((*byteSize)(&b.CheckpointBytes), "checkpoint-bytes", "checkpoint sooner once this much log is indexed since the last one (bounds the re-indexing after a crash)")
	fs.DurationVar(&b.OffsetInterval, "offset-interval", b.OffsetInterval, "how often consumer offsets and the delivery attempt log are persisted")
	fs.Float64Var(&b.DiskCleanRatio, "disk-clean-ratio", b.DiskCleanRatio, "disk use above which the oldest segments are deleted before their retention")
	fs.Float64Var(&b.DiskFullRatio, "disk-full-ratio", b.DiskFullRatio, "disk use above which publishes are refused with 507")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long SIGTERM waits for in-flight requests")
	fs.StringVar(&c.debugAddr, "debug-addr", "", "if set, serve Go's pprof profiles on this address (keep it on loopback)")
	fs.StringVar(&c.jwtSecret, "jwt-secret", "", "HS256 secret (at least 32 bytes) that API tokens are signed with; better set as POSTBUS_JWT_SECRET than on the command line")
	fs.StringVar(&c.jwtPublicKeys, "jwt-public-keys", "", "PEM or JWKS file of the public keys (RS256, ES256, EdDSA) API tokens are signed with; a kid per key allows rotation")
	fs.StringVar(&c.jwtIssuer, "jwt-issuer", "", "if set, API tokens must carry this iss")
	fs.StringVar(&c.jwtAudience, "jwt-audience", "", "if set, API tokens must carry this aud")
	fs.BoolVar(&c.insecureNoAuth, "insecure-no-auth", false, "let a broker on a non-loopback address run without API auth")
	fs.BoolVar(&c.allowPrivate, "allow-private-webhooks", mode == "dev", "let push subscriptions deliver to loopback, private and link-local addresses (refused by default outside dev: SSRF)")
	fs.BoolVar(&c.metricsAuth, "metrics-auth", false, "put /metrics behind an admin token")
	fs.Float64Var(&c.rateLimit, "rate-limit", 0, "messages a second each token (or client address, without auth) may publish; 0: no limit")
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: postbus %s [flags]\n\n", mode)
		if mode == "dev" {
			fmt.Fprint(out, "An all-in-one bus for a laptop or a test: listens on 127.0.0.1:8080, keeps data in\n./data, creates topics on first publish and asks for no auth.\n\n")
		} else {
			fmt.Fprint(out, "A postbus broker. Topics must be created (PUT /v1/topics/{topic}) unless\n--auto-create-topics is given.\n\n")
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
	auth, err := c.authConfig()
	if err != nil {
		return err
	}
	if auth.HMACSecret == nil && auth.PublicKeys == nil {
		switch {
		case c.mode == "dev":
		case !c.insecureNoAuth && !isLoopback(c.addr):
			return fmt.Errorf("refusing to serve the API on %s without auth: give --jwt-secret or --jwt-public-keys, or --insecure-no-auth if something in front of postbus does auth", c.addr)
		default:
			logger.Warn("the API is open: no --jwt-secret or --jwt-public-keys", slog.String("addr", c.addr))
		}
	}
	c.broker.SyncFlush = bool(c.flush)
	c.broker.SegmentSize = int64(c.segmentSize)
	c.broker.MaxMessageBytes = int(c.maxMessageBytes)
	c.broker.Logger = logger

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	c.broker.Registerer = reg

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
	dispatcher := push.NewDispatcher(push.DispatcherConfig{Broker: b, Client: client, Key: key,
		Logger: logger.With(slog.String("component", "push")), Registerer: reg})
	dctx, stopDispatch := context.WithCancel(context.Background())
	dispatched := make(chan struct{})
	go func() {
		defer close(dispatched)
		dispatcher.Run(dctx)
	}()
	// Deliveries stop before the broker closes, so their offsets are in
	// the broker's last flush.
	defer func() {
		stopDispatch()
		<-dispatched
	}()

	var ready atomic.Bool
	api, err := httpapi.New(httpapi.Config{
		Broker: b, Logger: logger, Registry: reg, OpenAPI: postbus.OpenAPI,
		Auth: auth, MetricsAuth: c.metricsAuth, PublishRate: c.rateLimit, JWKS: key.JWKS(),
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
	srv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
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
		go http.Serve(dln, mux)
		logger.Info("pprof listening", slog.String("addr", dln.Addr().String()))
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	ready.Store(true)
	logger.Info("postbus listening", slog.String("mode", mode), slog.String("addr", ln.Addr().String()),
		slog.String("data", c.broker.Dir), slog.String("flush", c.flush.String()),
		slog.Bool("auth", auth.HMACSecret != nil || auth.PublicKeys != nil), slog.String("version", version))

	select {
	case err := <-served:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	ready.Store(false)
	logger.Info("shutting down", slog.Duration("timeout", c.shutdownTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		logger.Warn("in-flight requests did not finish in time", slog.Any("err", err))
	}
	stopDispatch()
	<-dispatched
	if err := b.Close(); err != nil {
		return fmt.Errorf("close broker: %w", err)
	}
	logger.Info("stopped")
	return nil
}

// authConfig builds the API's token verification from the flags.
func (c *serveConfig) authConfig() (httpapi.AuthConfig, error) {
	a := httpapi.AuthConfig{Issuer: c.jwtIssuer, Audience: c.jwtAudience}
	if c.jwtSecret != "" {
		if len(c.jwtSecret) < httpapi.MinHMACSecret {
			return a, fmt.Errorf("--jwt-secret is %d bytes; at least %d are needed (try: openssl rand -base64 32)", len(c.jwtSecret), httpapi.MinHMACSecret)
		}
		a.HMACSecret = []byte(c.jwtSecret)
	}
	if c.jwtPublicKeys != "" {
		keys, err := httpapi.LoadPublicKeys(c.jwtPublicKeys)
		if err != nil {
			return a, fmt.Errorf("--jwt-public-keys: %w", err)
		}
		a.PublicKeys = keys
	}
	return a, nil
}

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
