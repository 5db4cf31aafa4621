package httpapi

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/go-chi/chi/v5"
)

// routes lists every route once, each with its auth decision. openapi.yaml
// must list the same routes with the same decisions: tests walk this router
// and fail on any difference, and on any route without a decision.
func (s *Server) routes() chi.Router {
	r := chi.NewRouter()
	r.Use(s.recoverer, s.requestID, s.instrument, s.limitBody)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, r, codeNotFound, "", "no route for "+r.Method+" "+r.URL.Path)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, r, codeMethodNotAllowed, "", r.Method+" is not allowed on "+r.URL.Path)
	})

	metrics := accessOpen
	if s.metricsAuth {
		metrics = accessAdmin
	}
	s.handle(r, "GET", "/healthz", accessOpen, s.handleHealthz)
	s.handle(r, "GET", "/readyz", accessOpen, s.handleReadyz)
	// Probes and load balancers often ask with HEAD: the same answer, no body.
	s.handle(r, "HEAD", "/healthz", accessOpen, s.handleHealthzHead)
	s.handle(r, "HEAD", "/readyz", accessOpen, s.handleReadyzHead)
	s.handle(r, "GET", "/metrics", metrics, s.handleMetrics)
	s.handle(r, "GET", "/openapi.yaml", accessOpen, s.handleOpenAPI)

	if s.registry != nil {
		s.handle(r, "POST", "/v1/brokers/heartbeat", accessAdmin, s.handleHeartbeat)
		s.handle(r, "PATCH", "/v1/brokers/{name}", accessAdmin, s.handlePatchBroker)
		s.handle(r, "DELETE", "/v1/brokers/{name}", accessAdmin, s.handleUnregisterBroker)
		s.handle(r, "GET", "/v1/routes/{topic}", accessAnyToken, s.handleRoute)
		s.handle(r, "GET", "/v1/cluster", accessAnyToken, s.handleCluster)
	}
	if s.brokerless {
		return r
	}

	s.handle(r, "POST", "/v1/topics/{topic}/messages", accessPublishTopic, s.handlePublish)
	s.handle(r, "POST", "/v1/topics/{topic}/messages/batch", accessPublishTopic, s.handlePublishBatch)
	s.handle(r, "GET", "/v1/topics/{topic}/messages", accessReadTopic, s.handleMessagesByKey)
	s.handle(r, "GET", "/v1/messages/{msg_id}", accessAnyToken, s.handleGetMessage)
	s.handle(r, "GET", "/v1/messages/{msg_id}/body", accessAnyToken, s.handleGetMessageBody)

	s.handle(r, "GET", "/v1/topics", accessAnyToken, s.handleListTopics)
	s.handle(r, "PUT", "/v1/topics/{topic}", accessAdmin, s.handlePutTopic)
	s.handle(r, "GET", "/v1/topics/{topic}", accessReadTopic, s.handleGetTopic)
	s.handle(r, "DELETE", "/v1/topics/{topic}", accessAdmin, s.handleDeleteTopic)

	// Subscriptions are narrowed to the token's consume groups by the
	// handlers (the group is in the body, or in the stored subscription);
	// creating one needs subscribe on the body's topic too.
	s.handle(r, "POST", "/v1/subscriptions", accessAnyToken, s.handleCreateSubscription)
	s.handle(r, "GET", "/v1/subscriptions", accessAnyToken, s.handleListSubscriptions)
	s.handle(r, "GET", "/v1/subscriptions/{id}", accessAnyToken, s.handleGetSubscription)
	s.handle(r, "PATCH", "/v1/subscriptions/{id}", accessAnyToken, s.handlePatchSubscription)
	s.handle(r, "DELETE", "/v1/subscriptions/{id}", accessAnyToken, s.handleDeleteSubscription)
	s.handle(r, "POST", "/v1/subscriptions/{id}/pause", accessAnyToken, s.handlePauseSubscription)
	s.handle(r, "POST", "/v1/subscriptions/{id}/resume", accessAnyToken, s.handleResumeSubscription)
	s.handle(r, "POST", "/v1/subscriptions/{id}/rotate-secret", accessAnyToken, s.handleRotateSecret)

	s.handle(r, "GET", "/v1/groups", accessAnyToken, s.handleListGroups)
	s.handle(r, "GET", "/v1/groups/{group}", accessConsumeGroup, s.handleGetGroup)
	s.handle(r, "POST", "/v1/groups/{group}/offsets/reset", accessConsumeGroup, s.handleResetOffsets)
	s.handle(r, "GET", "/v1/groups/{group}/dlq", accessConsumeGroup, s.handleListDeadLetters)
	s.handle(r, "POST", "/v1/groups/{group}/dlq/redrive", accessConsumeGroup, s.handleRedrive)
	s.handle(r, "DELETE", "/v1/groups/{group}/dlq", accessConsumeGroup, s.handlePurgeDeadLetters)

	s.handle(r, "POST", "/v1/groups/{group}/topics/{topic}/pull", accessPullTopic, s.handlePull)
	s.handle(r, "POST", "/v1/groups/{group}/ack", accessConsumeGroup, s.handleAck)
	s.handle(r, "POST", "/v1/groups/{group}/nack", accessConsumeGroup, s.handleNack)
	s.handle(r, "POST", "/v1/groups/{group}/visibility", accessConsumeGroup, s.handleVisibility)
	s.handle(r, "GET", "/v1/topics/{topic}/queues/{queue}/messages", accessSubscribeTopic, s.handleReadQueue)

	// A webhook receiver holds no bus token: its ack token, MAC'd by the
	// broker that issued it, is the capability (acks.go).
	s.handle(r, "POST", "/v1/acks/{token}", accessOpen, s.handleAckToken)

	s.handle(r, "GET", "/v1/messages/{msg_id}/trace", accessAnyToken, s.handleTrace)
	// The series are narrowed to the token's topics and groups by the
	// handler, as GET /v1/topics and /v1/groups are.
	s.handle(r, "GET", "/v1/stats", accessAnyToken, s.handleStats)

	// Deciding a transaction needs publish on its topic, known once the
	// transaction is read (the handlers check it); listing transactions
	// and registering producer groups (whose secret signs the checks) are
	// the operators'.
	s.handle(r, "GET", "/v1/transactions", accessAdmin, s.handleListTransactions)
	s.handle(r, "GET", "/v1/transactions/{transaction_id}", accessAnyToken, s.handleGetTransaction)
	s.handle(r, "POST", "/v1/transactions/{transaction_id}/commit", accessAnyToken, s.handleCommitTransaction)
	s.handle(r, "POST", "/v1/transactions/{transaction_id}/rollback", accessAnyToken, s.handleRollbackTransaction)
	s.handle(r, "PUT", "/v1/producer-groups/{group}", accessAdmin, s.handlePutProducerGroup)
	s.handle(r, "GET", "/v1/producer-groups/{group}", accessAdmin, s.handleGetProducerGroup)
	s.handle(r, "POST", "/v1/producer-groups/{group}/rotate-secret", accessAdmin, s.handleRotateProducerGroupSecret)
	// Internal: brokers of a cluster push each other their subscription
	// records (cluster_sync.go).
	s.handle(r, "POST", "/v1/internal/subscriptions/sync", accessAdmin, s.handleSyncSubscriptions)
	s.handle(r, "GET", "/.well-known/jwks.json", accessOpen, s.handleJWKS)
	// A member of a replica group serves /v1/replicas in its front
	// (replicas.go) before this router is reached; here, on a standalone
	// broker, they answer not_replicated.
	s.handle(r, "GET", "/v1/replicas", accessAdmin, s.handleReplicas)
	s.handle(r, "POST", "/v1/replicas", accessAdmin, s.handleAddReplica)
	s.handle(r, "DELETE", "/v1/replicas/{id}", accessAdmin, s.handleRemoveReplica)
	return r
}

// handle mounts one route behind its access check and records the decision.
func (s *Server) handle(r chi.Router, method, pattern string, a access, h http.HandlerFunc) {
	route := method + " " + pattern
	s.access[route] = a
	// Authentication first: a request without a valid token learns nothing
	// of the route, not even which parameters or headers it takes.
	mw := []func(http.Handler) http.Handler{s.authMiddleware(a), queryCheck(route), headerCheck(route), noBodyCheck(route)}
	if method != http.MethodGet && strings.HasPrefix(pattern, "/v1/") && !strings.HasPrefix(pattern, "/v1/brokers") {
		mw = append(mw, s.refusedCheck, s.fenceCheck)
	}
	r.With(mw...).Method(method, pattern, h)
}

// nameRefused is why the name servers refuse this broker's name (another
// live broker holds it), nil when they do not or outside a cluster.
func (s *Server) nameRefused() error {
	if s.cluster == nil || s.cluster.names == nil {
		return nil
	}
	if err := s.cluster.names.Refused(); err != nil {
		return fmt.Errorf("the name servers refuse this broker's name %s (another live broker holds it), so nothing routes here and what it stored is outside the bus: %w", s.cluster.self, err)
	}
	return nil
}

// refusedCheck refuses a change (publish, topic, subscription, ack…) on a
// broker the name servers refuse: it would be acknowledged here and never
// seen by the bus. Reads still answer.
func (s *Server) refusedCheck(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.nameRefused(); err != nil {
			s.cluster.refusedWrites.Inc()
			writeProblem(w, r, codeNotReady, "", err.Error()+"; nothing was done")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// pathParam is the path parameter name of r, percent-decoded. The router
// matches the escaped path (an escaped '/' stays inside one segment) and
// hands the parameter over still escaped; a client may escape any
// character, as Java's URLEncoder does the '~' of every transaction id and
// ack token, and RFC 3986 (6.2.2.2) makes an escaped unreserved character
// the character itself. Access checks and handlers read the same value.
// A malformed escape is left as sent, for the name's check to refuse.
func pathParam(r *http.Request, name string) string {
	v := r.PathValue(name)
	if !strings.Contains(v, "%") {
		return v
	}
	if u, err := url.PathUnescape(v); err == nil {
		return u
	}
	return v
}
