package httpapi

import (
	"net/http"

	"github.com/go-chi/chi/v5"
)

// routes lists every route once, each with its auth decision. openapi.yaml
// must list the same routes with the same decisions: tests walk this router
// and fail on any difference, and on any route without a decision.
func (s *Server) routes() chi.Router {
	r := chi.NewRouter()
	r.Use(s.recoverer, s.requestID, s.instrument, limitBody)
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
	s.handle(r, "GET", "/metrics", metrics, s.handleMetrics)
	s.handle(r, "GET", "/openapi.yaml", accessOpen, s.handleOpenAPI)

	s.handle(r, "POST", "/v1/topics/{topic}/messages", accessPublishTopic, s.handlePublish)
	s.handle(r, "POST", "/v1/topics/{topic}/messages/batch", accessPublishTopic, s.handlePublishBatch)
	s.handle(r, "GET", "/v1/topics/{topic}/messages", accessPublishTopic, s.handleMessagesByKey)
	s.handle(r, "GET", "/v1/messages/{msg_id}", accessAnyToken, s.handleGetMessage)
	s.handle(r, "GET", "/v1/messages/{msg_id}/body", accessAnyToken, s.handleGetMessageBody)

	s.handle(r, "GET", "/v1/topics", accessAnyToken, s.handleListTopics)
	s.handle(r, "PUT", "/v1/topics/{topic}", accessAdmin, s.handlePutTopic)
	s.handle(r, "GET", "/v1/topics/{topic}", accessPublishTopic, s.handleGetTopic)
	s.handle(r, "DELETE", "/v1/topics/{topic}", accessAdmin, s.handleDeleteTopic)
	return r
}

// handle mounts one route behind its access check and records the decision.
func (s *Server) handle(r chi.Router, method, pattern string, a access, h http.HandlerFunc) {
	s.access[method+" "+pattern] = a
	r.Method(method, pattern, s.authorize(a, h))
}

func urlParam(r *http.Request, name string) string { return chi.URLParam(r, name) }
