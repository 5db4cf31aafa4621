package httpapi

import (
	"net/http"

	"github.com/go-chi/chi/v5"
)

// routes lists every route once. openapi.yaml must list the same ones: a
// test walks this router and fails on any difference.
func (s *Server) routes() chi.Router {
	r := chi.NewRouter()
	r.Use(s.recoverer, s.requestID, s.instrument)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, r, codeNotFound, "", "no route for "+r.Method+" "+r.URL.Path)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, r, codeMethodNotAllowed, "", r.Method+" is not allowed on "+r.URL.Path)
	})

	r.Get("/healthz", s.handleHealthz)
	r.Get("/readyz", s.handleReadyz)
	r.Get("/metrics", s.handleMetrics)
	r.Get("/openapi.yaml", s.handleOpenAPI)

	r.Route("/v1", func(r chi.Router) {
		r.Post("/topics/{topic}/messages", s.handlePublish)
		r.Post("/topics/{topic}/messages/batch", s.handlePublishBatch)
		r.Get("/topics/{topic}/messages", s.handleMessagesByKey)
		r.Get("/messages/{msg_id}", s.handleGetMessage)
		r.Get("/messages/{msg_id}/body", s.handleGetMessageBody)

		r.Get("/topics", s.handleListTopics)
		r.Put("/topics/{topic}", s.handlePutTopic)
		r.Get("/topics/{topic}", s.handleGetTopic)
		r.Delete("/topics/{topic}", s.handleDeleteTopic)
	})
	return r
}
