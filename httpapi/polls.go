package httpapi

import (
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"

	"github.com/postbus/postbus/broker"
	"github.com/prometheus/client_golang/prometheus"
)

// A long poll (a pull or a read by offset with a wait) holds a connection,
// a goroutine and, through a broker that does not hold the topic, a
// forwarded request and the holder's connection too, for up to 30 s. Nine
// thousand of them from one token stalled a broker for everyone. So the
// polls held at once are bounded per client (a token's sub, or an address
// when the API is open; Config.MaxHeldPollsPerClient) and per server
// (Config.MaxHeldPolls), checked before anything is asked of any broker.
// Beyond the client's bound a poll answers 429 too_many_polls, beyond the
// server's 503 server_busy, both with Retry-After. A pull without a wait is
// not held and not counted.

// Defaults of the held poll bounds.
const (
	DefaultMaxHeldPolls          = 4096
	DefaultMaxHeldPollsPerClient = 512
	// pollRetryAfter is the Retry-After of a refused poll, in seconds.
	pollRetryAfter = 1
)

// pollLimiter counts the long polls held, per client and in all.
type pollLimiter struct {
	total, perClient int

	mu      sync.Mutex
	held    int            // guarded by mu
	clients map[string]int // guarded by mu; no zero entries

	inUse   prometheus.GaugeFunc
	refused *prometheus.CounterVec
	logger  *slog.Logger
}

func newPollLimiter(total, perClient int, logger *slog.Logger, reg prometheus.Registerer) *pollLimiter {
	l := &pollLimiter{total: total, perClient: perClient, clients: make(map[string]int), logger: logger}
	l.inUse = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "postbus_http_held_polls",
		Help: "Long polls (pulls and reads by offset with a wait) held at once (at most --max-held-polls).",
	}, func() float64 {
		l.mu.Lock()
		defer l.mu.Unlock()
		return float64(l.held)
	})
	l.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postbus_http_polls_refused_total",
		Help: "Long polls refused: bound=client (429 too_many_polls, over --max-held-polls-per-client) or bound=server (503 server_busy, over --max-held-polls).",
	}, []string{"bound"})
	reg.MustRegister(l.inUse, l.refused)
	return l
}

// acquire holds a poll for client, or refuses it with the problem to
// answer. release gives it back; call it once the poll is answered.
func (l *pollLimiter) acquire(client string) (release func(), perr *broker.Error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.clients[client] >= l.perClient:
		l.refused.WithLabelValues("client").Inc()
		return nil, &broker.Error{Code: codeTooManyPolls, Field: "wait", Detail: fmt.Sprintf("this client holds %d long polls, the most one may (--max-held-polls-per-client); retry in %d s, or poll with fewer connections", l.perClient, pollRetryAfter)}
	case l.held >= l.total:
		l.refused.WithLabelValues("server").Inc()
		// Every client is refused now: the operator must hear of it.
		l.logger.Error("long polls held reach the server's bound; refusing more with 503 server_busy",
			slog.Int("max_held_polls", l.total), slog.String("client", client))
		return nil, &broker.Error{Code: codeServerBusy, Field: "wait", Detail: fmt.Sprintf("this server holds %d long polls, the most it may (--max-held-polls); retry in %d s", l.total, pollRetryAfter)}
	}
	l.held++
	l.clients[client]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.held--
			if l.clients[client]--; l.clients[client] <= 0 {
				delete(l.clients, client)
			}
		})
	}, nil
}

// holdPoll holds a long poll of wait for the request's client; false when
// it was refused and answered.
func (s *Server) holdPoll(w http.ResponseWriter, r *http.Request) (release func(), ok bool) {
	client := "addr:" + clientAddr(r)
	if p := principalFrom(r.Context()); p != nil {
		client = "token:" + p.id
	}
	release, perr := s.polls.acquire(client)
	if perr != nil {
		w.Header().Set("Retry-After", strconv.Itoa(pollRetryAfter))
		writeProblem(w, r, perr.Code, perr.Field, perr.Detail)
		return nil, false
	}
	return release, true
}
