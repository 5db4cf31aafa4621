package httpapi

import (
	"fmt"
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/postbus/postbus/broker"
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
	limiter     *publishLimiter   // nil: no limit
	bodies      *bodyBudget       // request bodies in flight
	cluster     *cluster          // nil: a standalone broker
	sync        *syncer           // the cluster's anti-entropy of subscriptions; nil standalone
	access      map[string]access // "METHOD /pattern" -> its auth decision
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
		limiter:     newPublishLimiter(cfg.PublishRate, cfg.PublishBurst),
		access:      make(map[string]access),
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
	s.bodies = newBodyBudget(cfg.MaxBodyMemory, s.reg)
	s.router = s.routes()
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
	s.router.ServeHTTP(w, r)
}

// Routes exposes the router so tests can walk every route.
func (s *Server) Routes() chi.Routes { return s.router }
