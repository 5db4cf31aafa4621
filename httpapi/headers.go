package httpapi

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// postbusHeaders lists the Postbus-* request headers each route takes
// besides the cluster's (see routeHeaders), exactly as openapi.yaml
// documents them (TestContractPostbusHeaders holds the two together). A
// name ending in "-" stands for every header that starts with it
// (Postbus-Prop-<name>). A route not listed takes none of its own.
//
// A request carrying any other Postbus-* header is refused with 400
// invalid_header before its handler runs: a misspelt or misplaced one (a
// Postbus-Tag on a pull, meant as a filter) would otherwise be ignored
// without a word.
var postbusHeaders = map[string][]string{
	"POST /v1/topics/{topic}/messages": {hdrTag, hdrKeys, hdrShardingKey, hdrDelay, hdrDelayLevel, hdrDeliverAt, hdrDedupID, hdrPropPrefix,
		hdrTransaction, hdrProducerGroup, hdrTransactionTimeout},
	// A subscription change forwarded by the broker coordinating it
	// carries the version it minted for every copy.
	"POST /v1/subscriptions":                    {hdrSubscriptionVersion},
	"PATCH /v1/subscriptions/{id}":              {hdrSubscriptionVersion},
	"DELETE /v1/subscriptions/{id}":             {hdrSubscriptionVersion},
	"POST /v1/subscriptions/{id}/pause":         {hdrSubscriptionVersion},
	"POST /v1/subscriptions/{id}/resume":        {hdrSubscriptionVersion},
	"POST /v1/subscriptions/{id}/rotate-secret": {hdrSubscriptionVersion},
	// So does a topic's delete, for the tombstone it leaves.
	"DELETE /v1/topics/{topic}": {hdrTopicVersion},
	// A pull forwarded by another broker carries its deadline.
	"POST /v1/groups/{group}/topics/{topic}/pull": {hdrHopDeadline},
}

// nameServerPaths start the routes a name server serves: brokers call them
// (heartbeats, route lookups) but never forward them.
var nameServerPaths = []string{"/v1/brokers", "/v1/routes/", "/v1/cluster"}

// routeHeaders is what a route takes: its own Postbus-* headers, and on
// the broker's API (every /v1 route but the name server's) the header a
// broker sets on a request it forwards to another, Postbus-Forwarded-By.
func routeHeaders(route string) []string {
	taken := slices.Clone(postbusHeaders[route])
	_, path, _ := strings.Cut(route, " ")
	if strings.HasPrefix(path, "/v1/") && !slices.ContainsFunc(nameServerPaths, func(p string) bool { return strings.HasPrefix(path, p) }) {
		taken = append(taken, hdrForwardedBy)
	}
	return taken
}

// takesHeader reports whether a route taking allowed takes the header name
// (in canonical form).
func takesHeader(allowed []string, name string) bool {
	if slices.Contains(allowed, name) {
		return true
	}
	for _, a := range allowed {
		if strings.HasSuffix(a, "-") && strings.HasPrefix(name, a) && len(name) > len(a) {
			return true
		}
	}
	return false
}

// checkPostbusHeaders refuses, as a problem naming the header, a request
// with a Postbus-* header its route does not take.
func checkPostbusHeaders(w http.ResponseWriter, r *http.Request, allowed []string) bool {
	var unknown []string
	for name := range r.Header {
		if strings.HasPrefix(name, "Postbus-") && !takesHeader(allowed, name) {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) == 0 {
		return true
	}
	// Sorted so that of several the answer always names the same.
	slices.Sort(unknown)
	var names []string
	for _, a := range allowed {
		switch {
		case a == hdrForwardedBy:
			// Brokers' own: not worth naming to a client.
		case strings.HasSuffix(a, "-"):
			names = append(names, a+"<name>")
		default:
			names = append(names, a)
		}
	}
	detail := fmt.Sprintf("header %q is not taken by this request, which takes no Postbus-* header", unknown[0])
	if len(names) > 0 {
		detail = fmt.Sprintf("header %q is not taken by this request, which takes %s", unknown[0], strings.Join(names, ", "))
	}
	writeProblem(w, r, codeInvalidHeader, unknown[0], detail)
	return false
}

// headerCheck is the middleware that runs a route's handler only for
// requests whose Postbus-* headers the route takes.
func headerCheck(route string) func(http.Handler) http.Handler {
	allowed := routeHeaders(route)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if checkPostbusHeaders(w, r, allowed) {
				next.ServeHTTP(w, r)
			}
		})
	}
}
