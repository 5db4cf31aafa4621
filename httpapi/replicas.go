package httpapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/postbus/postbus/broker"
)

// Codes of a replica group's front.
const (
	codeNoLeader       broker.Code = "no_leader"
	codeNotReplicated  broker.Code = "not_replicated"
	codeMemberNotFound broker.Code = "member_not_found"
	codeInvalidMember  broker.Code = "invalid_member"
)

// Replicas is a replica group's membership (package broker/replica) as the
// /v1/replicas routes use it. Add and Remove run on the leader only; the
// front forwards them there. Their errors: ErrMemberNotFound, ErrInvalidMember,
// anything else is a 503.
type Replicas interface {
	Status() (any, error)
	Add(id, addr string) error
	Remove(id string) error
	// Leader is the leader's HTTP address when it is another member, and
	// whether this member leads.
	Leader() (httpAddr string, self bool, ok bool)
}

// Errors a Replicas returns that the routes answer as 4xx.
var (
	ErrMemberNotFound = errors.New("no such member")
	ErrInvalidMember  = errors.New("invalid member")
)

// FrontConfig configures a replica group member's HTTP front.
type FrontConfig struct {
	Auth     AuthConfig
	Logger   *slog.Logger
	Replicas Replicas
	// Metrics serves /metrics while the member follows (the leader's API
	// serves its own).
	Metrics     http.Handler
	MetricsAuth bool // /metrics needs an admin token
	// HopTimeout bounds a request forwarded to the leader beyond its own
	// long-poll wait.
	HopTimeout time.Duration
	// LeaderWait is how long a request waits for a leader to forward to
	// (DefaultLeaderWait) before it is answered no_leader.
	LeaderWait time.Duration
	// Untrusted, if set, says why this member's files may no longer match
	// its group's, or why it is otherwise not ready (replica.Node.NotReady);
	// while it does, /readyz answers 503 with that reason, whether the
	// member leads or follows.
	Untrusted func() error
	// TLS configures https to the leader (a private CA in its RootCAs);
	// nil: the system's roots.
	TLS *tls.Config
	// Version is answered by /healthz while the member follows.
	Version string
}

// DefaultLeaderWait is FrontConfig.LeaderWait's default: a failover with
// default raft timeouts takes a few seconds.
const DefaultLeaderWait = 5 * time.Second

// forwardedHeader marks a request a follower sent to the leader: a member
// that is not the leader answers it no_leader rather than send it on, so a
// request makes one hop at most.
const forwardedHeader = "Postbus-Replica-Forwarded"

// Front is a member of a replica group's HTTP handler: the leader's API
// (SetLeader) while this member leads; else a forward of every request to
// the leader, one hop, or 503 no_leader while there is none. /v1/replicas
// is served here on every member.
type Front struct {
	cfg    FrontConfig
	s      *Server // for auth and problems
	api    atomic.Pointer[http.Handler]
	router chi.Router
	proxy  *httputil.ReverseProxy
}

// NewFront builds a member's front.
func NewFront(cfg FrontConfig) (*Front, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HopTimeout <= 0 {
		cfg.HopTimeout = DefaultHopTimeout
	}
	if cfg.LeaderWait <= 0 {
		cfg.LeaderWait = DefaultLeaderWait
	}
	a, err := newAuthenticator(cfg.Auth)
	if err != nil {
		return nil, err
	}
	f := &Front{cfg: cfg, s: &Server{logger: cfg.Logger, auth: a}}
	if cfg.Metrics != nil && cfg.MetricsAuth {
		f.cfg.Metrics = f.s.authorize(accessAdmin, cfg.Metrics.ServeHTTP)
	}
	r := chi.NewRouter()
	r.Get("/v1/replicas", f.s.authorize(accessAdmin, f.status))
	r.Post("/v1/replicas", f.s.authorize(accessAdmin, f.add))
	r.Delete("/v1/replicas/{id}", f.s.authorize(accessAdmin, f.remove))
	r.NotFound(f.other)
	r.MethodNotAllowed(f.other)
	f.router = r
	f.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			target, _ := pr.In.Context().Value(leaderURLKey{}).(*url.URL)
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.Out.Header.Set(forwardedHeader, "1")
			pr.SetXForwarded()
		},
		Transport:     frontTransport(cfg.TLS),
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			w.Header().Set("Retry-After", "1")
			var oe *net.OpError
			if errors.As(err, &oe) && oe.Op == "dial" {
				// Nothing reached the leader: nothing was done.
				cfg.Logger.Warn("the replica group's leader refused a forwarded request's connection", slog.String("path", r.URL.Path), slog.Any("err", err))
				writeProblem(w, r, codeNoLeader, "", "the replica group's leader could not be reached (it may be failing over); nothing was done, retry: "+err.Error())
				return
			}
			// The request (or part of it) reached the leader, which went
			// away before its answer: a write may or may not be done.
			cfg.Logger.Error("a request forwarded to the replica group's leader got no answer; whether it was done is unknown", slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Any("err", err))
			writeProblem(w, r, broker.CodeUnavailable, "", "the replica group's leader went away before it answered (a failover); "+
				"a write may or may not have been done: retry a publish with the same Postbus-Dedup-Id to be sure it is stored once ("+err.Error()+")")
		},
	}
	return f, nil
}

type leaderURLKey struct{}

// SetLeader makes h (the broker's API) serve every request but
// /v1/replicas, or, with nil, forwards them to the leader.
func (f *Front) SetLeader(h http.Handler) {
	if h == nil {
		f.api.Store(nil)
		return
	}
	f.api.Store(&h)
}

func (f *Front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/v1/replicas") {
		f.router.ServeHTTP(w, r)
		return
	}
	f.other(w, r)
}

// other is every route but /v1/replicas.
func (f *Front) other(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/readyz" && f.cfg.Untrusted != nil {
		if err := f.cfg.Untrusted(); err != nil {
			// Checked before the leader's API: a member distrusted while
			// it leads is not ready even before its broker closes.
			w.Header().Set("Retry-After", "1")
			writeProblem(w, r, codeNotReady, "", err.Error())
			return
		}
	}
	if h := f.api.Load(); h != nil {
		// The hop's mark is the front's, not a header of the API's.
		r.Header.Del(forwardedHeader)
		(*h).ServeHTTP(w, r)
		return
	}
	switch r.URL.Path {
	case "/metrics":
		if f.cfg.Metrics != nil {
			f.cfg.Metrics.ServeHTTP(w, r)
			return
		}
	case "/healthz":
		// As the API's /healthz (the Health schema), also while following.
		v := f.cfg.Version
		if v == "" {
			v = "unknown"
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "version": v})
		return
	case "/readyz":
		// A follower takes requests (it forwards them) once a leader is known.
		if _, _, ok := f.cfg.Replicas.Leader(); ok {
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, "ok\n")
			return
		}
		w.Header().Set("Retry-After", "1")
		writeProblem(w, r, codeNotReady, "", "this member follows, and the replica group has no leader yet")
		return
	}
	f.forward(w, r)
}

// forward sends r to the leader, once. While there is none (an election,
// or the new leader still opening its broker) it waits up to LeaderWait,
// so a request that meets a failover is answered by the new leader rather
// than refused.
func (f *Front) forward(w http.ResponseWriter, r *http.Request) {
	addr, self, ok := f.cfg.Replicas.Leader()
	if (!ok || self) && r.Header.Get(forwardedHeader) == "" {
		deadline := time.NewTimer(f.cfg.LeaderWait)
		defer deadline.Stop()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
	wait:
		for !ok || self {
			select {
			case <-r.Context().Done():
				return
			case <-deadline.C:
				break wait
			case <-tick.C:
			}
			if h := f.api.Load(); h != nil {
				// This member took the lead meanwhile.
				f.other(w, r)
				return
			}
			addr, self, ok = f.cfg.Replicas.Leader()
		}
	}
	if !ok || self || r.Header.Get(forwardedHeader) != "" {
		// self: this member was just elected and its broker is not open
		// yet; forwarded: sent here by a member that thought this one led.
		defer refuseUnreadBody(w, r)()
		w.Header().Set("Retry-After", "1")
		writeProblem(w, r, codeNoLeader, "", "the replica group has no leader this member can forward to (an election or a failover is under way); retry")
		return
	}
	target, err := url.Parse(addr)
	if err != nil || target.Host == "" {
		target = &url.URL{Scheme: "http", Host: addr}
	}
	ctx := context.WithValue(r.Context(), leaderURLKey{}, target)
	f.proxy.ServeHTTP(w, r.WithContext(ctx))
}

func (f *Front) status(w http.ResponseWriter, r *http.Request) {
	st, err := f.cfg.Replicas.Status()
	if err != nil {
		w.Header().Set("Retry-After", "1")
		writeProblem(w, r, broker.CodeUnavailable, "", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// leaderOnly forwards a membership change to the leader unless this member
// leads; it reports whether the caller goes on here.
func (f *Front) leaderOnly(w http.ResponseWriter, r *http.Request) bool {
	if _, self, ok := f.cfg.Replicas.Leader(); ok && self {
		return true
	}
	f.forward(w, r)
	return false
}

func (f *Front) add(w http.ResponseWriter, r *http.Request) {
	if !f.leaderOnly(w, r) {
		return
	}
	var in struct {
		ID   string `json:"id"`
		Addr string `json:"addr"`
	}
	// Read as every JSON body of the API is: one value, no trailing data,
	// no key twice, valid UTF-8, application/json.
	if perr := decodeJSONBody(r, 64<<10, &in); perr != nil {
		f.s.writeError(w, r, perr)
		return
	}
	if in.ID == "" || in.Addr == "" {
		writeProblem(w, r, codeInvalidMember, "id", "a member needs an id and a raft address (host:port)")
		return
	}
	f.change(w, r, f.cfg.Replicas.Add(in.ID, in.Addr))
}

func (f *Front) remove(w http.ResponseWriter, r *http.Request) {
	if !f.leaderOnly(w, r) {
		return
	}
	f.change(w, r, f.cfg.Replicas.Remove(pathParam(r, "id")))
}

func (f *Front) change(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrMemberNotFound):
		writeProblem(w, r, codeMemberNotFound, "id", err.Error())
		return
	case errors.Is(err, ErrInvalidMember):
		writeProblem(w, r, codeInvalidMember, "", err.Error())
		return
	case err != nil:
		w.Header().Set("Retry-After", "1")
		writeProblem(w, r, broker.CodeUnavailable, "", fmt.Sprintf("the membership change did not commit: %v", err))
		return
	}
	f.status(w, r)
}

// NotReplicated answers /v1/replicas on a standalone broker.
func notReplicated(w http.ResponseWriter, r *http.Request) {
	writeProblem(w, r, codeNotReplicated, "", "this broker is not a member of a replica group (started without --raft-peers)")
}

// frontTransport is what a follower forwards to the leader with: the
// default transport, trusting cfg's roots when given.
func frontTransport(cfg *tls.Config) http.RoundTripper {
	if cfg == nil {
		return http.DefaultTransport
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return tr
}
