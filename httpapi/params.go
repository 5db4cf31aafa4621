package httpapi

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// queryParams lists the query parameters each route takes, exactly as
// openapi.yaml documents them (TestContractQueryParameters holds the two
// together). A route not listed takes none.
//
// A request naming any other parameter, or one of these twice, is refused
// with 400 invalid_parameter before its handler runs: a misspelt
// ?vsibility=1s would otherwise be ignored and the 30 s default used
// without a word, and of ?max=1&max=2 only the first would count.
var queryParams = map[string][]string{
	"GET /v1/topics":                                 {"limit", "cursor"},
	"GET /v1/topics/{topic}/messages":                {"key", "limit", "cursor"},
	"GET /v1/topics/{topic}/queues/{queue}/messages": {"offset", "max", "wait"},
	"GET /v1/subscriptions":                          {"limit", "cursor", "group", "topic"},
	"GET /v1/groups":                                 {"limit", "cursor"},
	"GET /v1/groups/{group}/dlq":                     {"limit", "cursor"},
	"POST /v1/groups/{group}/topics/{topic}/pull":    {"max", "wait", "visibility"},
	"GET /v1/cluster":                                {"gone"},
	"GET /v1/stats":                                  {"topic", "group"},
	"GET /v1/transactions":                           {"state", "limit", "cursor"},
}

// checkQuery refuses, as a problem naming the parameter, a query with a
// parameter the route does not take or with one given more than once.
func checkQuery(w http.ResponseWriter, r *http.Request, allowed []string) bool {
	if r.URL.RawQuery == "" {
		return true
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		writeProblem(w, r, codeInvalidParameter, "", "the query string is malformed: "+err.Error())
		return false
	}
	// Sorted so that of several faults the answer always names the same.
	names := make([]string, 0, len(q))
	for name := range q {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if !slices.Contains(allowed, name) {
			writeProblem(w, r, codeInvalidParameter, name, unknownParamDetail(name, allowed))
			return false
		}
		if len(q[name]) > 1 {
			writeProblem(w, r, codeInvalidParameter, name, fmt.Sprintf("query parameter %q is given %d times; give it once", name, len(q[name])))
			return false
		}
	}
	return true
}

func unknownParamDetail(name string, allowed []string) string {
	if len(allowed) == 0 {
		return fmt.Sprintf("unknown query parameter %q: this request takes none", name)
	}
	return fmt.Sprintf("unknown query parameter %q: this request takes %s", name, strings.Join(allowed, ", "))
}

// queryCheck is the middleware that runs a route's handler only for
// requests whose query the route takes.
func queryCheck(route string) func(http.Handler) http.Handler {
	allowed := queryParams[route]
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if checkQuery(w, r, allowed) {
				next.ServeHTTP(w, r)
			}
		})
	}
}
