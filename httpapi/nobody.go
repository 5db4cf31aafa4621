package httpapi

import (
	"io"
	"net/http"
	"strings"
)

// bodyRoutes are the routes that take a request body (a requestBody in
// openapi.yaml; a contract test holds the two together). Every other route
// refuses one: a body sent where none is read (a filter on a pull, a JSON
// object on a DELETE) would otherwise be ignored without a word, and the
// client would believe it was applied.
var bodyRoutes = map[string]bool{
	"POST /v1/topics/{topic}/messages":               true,
	"POST /v1/topics/{topic}/messages/batch":         true,
	"PUT /v1/topics/{topic}":                         true,
	"POST /v1/subscriptions":                         true,
	"PATCH /v1/subscriptions/{id}":                   true,
	"POST /v1/subscriptions/{id}/rotate-secret":      true,
	"POST /v1/groups/{group}/offsets/reset":          true,
	"POST /v1/groups/{group}/dlq/redrive":            true,
	"POST /v1/groups/{group}/ack":                    true,
	"POST /v1/groups/{group}/nack":                   true,
	"POST /v1/groups/{group}/visibility":             true,
	"POST /v1/acks/{token}":                          true,
	"POST /v1/brokers/heartbeat":                     true,
	"PATCH /v1/brokers/{name}":                       true,
	"POST /v1/internal/subscriptions/sync":           true,
	"POST /v1/replicas":                              true,
	"PUT /v1/producer-groups/{group}":                true,
	"POST /v1/producer-groups/{group}/rotate-secret": true,
}

// noBodyCheck refuses a request body on a /v1 route that takes none, with
// 400 unexpected_body. A body of unknown length (chunked) is looked at:
// an empty one passes.
func noBodyCheck(route string) func(http.Handler) http.Handler {
	_, path, _ := strings.Cut(route, " ")
	if bodyRoutes[route] || !strings.HasPrefix(path, "/v1/") {
		return func(next http.Handler) http.Handler { return next }
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			has := r.ContentLength > 0
			if r.ContentLength < 0 && r.Body != nil {
				var one [1]byte
				n, _ := io.ReadFull(r.Body, one[:])
				has = n > 0
			}
			if has {
				writeProblem(w, r, codeUnexpectedBody, "", r.Method+" "+path+" takes no request body; nothing was done")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}
