package httpapi

import (
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/httpapi/stats"
	"github.com/postbus/postbus/httpapi/ui"
	"github.com/postbus/postbus/namesrv"
	"github.com/prometheus/client_golang/prometheus"
)

// Config is what a Server needs.
type Config struct {
	Broker   *broker.Broker
	Logger   *slog.Logger
	Registry *prometheus.Registry // serves /metrics, and HTTP metrics are registered in it; nil: a fresh one
	OpenAPI  []byte               // served at /openapi.yaml
	// Ready reports whether the process takes traffic (answered by /readyz);
	// nil: the broker's own readiness.
	Ready func() error
	// MaxMessageBytes bounds a single publish's body before the broker
	// sees it; 0: the broker's own limit.
	MaxMessageBytes int
	// Auth verifies API tokens; the zero value leaves the API open.
	Auth AuthConfig
	// MetricsAuth puts /metrics behind an admin token.
	MetricsAuth bool
	// Version is this build's version, answered by /healthz so that an
	// operator (or an upgrade script) sees what each process runs.
	Version string
	// JWKS is the bus's public signing keys, served at
	// /.well-known/jwks.json so receivers can verify deliveries.
	JWKS []byte
	// NameServer, when set, mounts the name server's routes (heartbeat,
	// routes, cluster) over this registry: `postbus namesrv`, and `postbus
	// dev`'s embedded one.
	NameServer *namesrv.Registry
	// NameServerOnly leaves the broker's routes out (`postbus namesrv`).
	NameServerOnly bool
	// Cluster, when set, makes this broker answer for the whole bus,
	// forwarding what it does not hold (see cluster.go).
	Cluster *Cluster
	// PublishRate limits each token (or, open, each client address) to this
	// many published messages a second; 0: no limit.
	PublishRate float64
	// PublishBurst is how many messages a token may publish at once above
	// PublishRate; 0: one second's worth.
	PublishBurst int
	// MaxBodyMemory bounds the bytes request bodies in flight hold, across
	// all connections (see body.go); 0: DefaultMaxBodyMemory.
	MaxBodyMemory int64
	// MaxBodyMemoryPerClient bounds the part of MaxBodyMemory the bodies
	// of one client (a token's sub, or an address when the API is open)
	// hold; 0: DefaultBodyMemoryShare.
	MaxBodyMemoryPerClient int64
	// MinBodyRate is the least average rate, in bytes a second, at which a
	// request body must arrive once BodyGrace has passed (408 otherwise);
	// 0: DefaultMinBodyRate, negative: none.
	MinBodyRate int64
	// BodyGrace is how long a body may take before MinBodyRate applies;
	// 0: DefaultBodyGrace.
	BodyGrace time.Duration
	// MaxHeldPolls bounds the long polls held at once (see polls.go);
	// 0: DefaultMaxHeldPolls.
	MaxHeldPolls int
	// MaxHeldPollsPerClient bounds those of one client; 0:
	// DefaultMaxHeldPollsPerClient (at most MaxHeldPolls).
	MaxHeldPollsPerClient int
}

// Server is the HTTP face of a broker. It owns no state of its own.
type Server struct {
	broker  *broker.Broker
	logger  *slog.Logger
	reg     *prometheus.Registry
	openapi []byte
	ready   func() error
	maxBody int
	metrics *httpMetrics
	router  chi.Router

	jwks        []byte
	registry    *namesrv.Registry // nil: no name server routes
	brokerless  bool              // only the name server's routes
	auth        *authenticator    // nil: open
	metricsAuth bool
	version     string
	limiter     *publishLimiter // nil: no limit
	bodies      *bodyBudget     // request bodies in flight
	minBodyRate int64           // bytes a second; 0: bodies are not paced
	bodyGrace   time.Duration
	polls       *pollLimiter      // long polls held
	parked      parking           // long polls parked off their goroutines (parked.go)
	cluster     *cluster          // nil: a standalone broker
	sync        *syncer           // the cluster's anti-entropy of subscriptions; nil standalone
	access      map[string]access // "METHOD /pattern" -> its auth decision
	stats       *stats.Recorder   // GET /v1/stats's series; nil without a broker
	dashboard   http.Handler      // the /ui/ files
}

// New returns a Server with every route mounted. It fails only on a
// configuration that cannot work (auth, or a body memory bound too small).
func New(cfg Config) (*Server, error) {
	auth, err := newAuthenticator(cfg.Auth)
	if err != nil {
		return nil, err
	}
	if cfg.MaxBodyMemory == 0 {
		cfg.MaxBodyMemory = DefaultMaxBodyMemory
	}
	if least := MinBodyMemory(cfg.NameServer != nil); cfg.MaxBodyMemory < least {
		return nil, fmt.Errorf("the body memory bound is %d bytes; at least %d are needed, for the largest request body", cfg.MaxBodyMemory, least)
	}
	if cfg.MaxBodyMemoryPerClient == 0 {
		cfg.MaxBodyMemoryPerClient = DefaultBodyMemoryShare(cfg.MaxBodyMemory, cfg.NameServer != nil)
	}
	if least := MinBodyMemory(cfg.NameServer != nil); cfg.MaxBodyMemoryPerClient < least || cfg.MaxBodyMemoryPerClient > cfg.MaxBodyMemory {
		return nil, fmt.Errorf("the body memory share of a client is %d bytes; it must be from %d (the largest request body) to the whole bound, %d", cfg.MaxBodyMemoryPerClient, least, cfg.MaxBodyMemory)
	}
	switch {
	case cfg.MinBodyRate == 0:
		cfg.MinBodyRate = DefaultMinBodyRate
	case cfg.MinBodyRate < 0:
		cfg.MinBodyRate = 0
	}
	if cfg.BodyGrace == 0 {
		cfg.BodyGrace = DefaultBodyGrace
	}
	if cfg.BodyGrace < 0 {
		return nil, fmt.Errorf("the body grace %s is negative", cfg.BodyGrace)
	}
	if cfg.MaxHeldPolls == 0 {
		cfg.MaxHeldPolls = DefaultMaxHeldPolls
	}
	if cfg.MaxHeldPollsPerClient == 0 {
		cfg.MaxHeldPollsPerClient = min(DefaultMaxHeldPollsPerClient, cfg.MaxHeldPolls)
	}
	if cfg.MaxHeldPolls < 0 || cfg.MaxHeldPollsPerClient < 0 || cfg.MaxHeldPollsPerClient > cfg.MaxHeldPolls {
		return nil, fmt.Errorf("held polls: %d per client and %d in all; want positive numbers, the first at most the second", cfg.MaxHeldPollsPerClient, cfg.MaxHeldPolls)
	}
	s := &Server{
		broker:  cfg.Broker,
		logger:  cfg.Logger,
		reg:     cfg.Registry,
		openapi: cfg.OpenAPI,
		ready:   cfg.Ready,
		maxBody: cfg.MaxMessageBytes,

		auth:        auth,
		jwks:        cfg.JWKS,
		registry:    cfg.NameServer,
		brokerless:  cfg.NameServerOnly,
		metricsAuth: cfg.MetricsAuth,
		version:     cfg.Version,
		limiter:     newPublishLimiter(cfg.PublishRate, cfg.PublishBurst),
		access:      make(map[string]access),
		minBodyRate: cfg.MinBodyRate,
		bodyGrace:   cfg.BodyGrace,
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if s.reg == nil {
		s.reg = prometheus.NewRegistry()
	}
	if s.ready == nil {
		s.ready = func() error { return nil }
		if s.broker != nil {
			s.ready = s.broker.Ready
		}
	}
	if s.maxBody <= 0 && s.broker != nil {
		s.maxBody = s.broker.MaxMessageBytes()
	}
	if cfg.Cluster != nil && cfg.Broker != nil {
		s.cluster = newCluster(cfg.Cluster, s.logger.With(slog.String("component", "cluster")), s.reg)
		s.sync = newSyncer(s, cfg.Cluster, s.reg)
		cfg.Broker.SetName(cfg.Cluster.Self)
	}
	s.metrics = newHTTPMetrics(s.reg)
	if cfg.Broker != nil && !cfg.NameServerOnly {
		s.stats, err = stats.New(stats.Config{Logger: s.logger.With(slog.String("component", "stats")), Registerer: s.reg})
		if err != nil {
			return nil, err
		}
	}
	s.bodies = newBodyBudget(cfg.MaxBodyMemory, cfg.MaxBodyMemoryPerClient, s.reg)
	s.polls = newPollLimiter(cfg.MaxHeldPolls, cfg.MaxHeldPollsPerClient, s.logger, s.reg)
	s.router = s.routes()
	s.dashboard = ui.Handler()
	return s, nil
}

// Access returns each route's auth decision by "METHOD /pattern", as
// openapi.yaml documents them: open, admin, token, publish:{topic}.
func (s *Server) Access() map[string]string {
	out := make(map[string]string, len(s.access))
	for k, a := range s.access {
		out[k] = a.name
	}
	return out
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.cluster != nil {
		w.Header().Set(hdrBroker, s.cluster.self)
	}
	// The dashboard's files are not API routes (nothing in openapi.yaml,
	// no token needed to load them: the page asks for one and calls the
	// API with it), so they are served beside the router.
	if ui.Owns(r.URL.Path) {
		s.dashboard.ServeHTTP(w, r)
		return
	}
	s.router.ServeHTTP(w, r)
}

// Routes exposes the router so tests can walk every route.
func (s *Server) Routes() chi.Routes { return s.router }
