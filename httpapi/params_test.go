package httpapi

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
)

// TestContractQueryParameters holds queryParams and openapi.yaml together:
// every route takes exactly the query parameters its operation documents.
func TestContractQueryParameters(t *testing.T) {
	doc := loadContract(t)
	documented := make(map[string][]string)
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			var names []string
			for _, ref := range append(item.Parameters, op.Parameters...) {
				if ref.Value != nil && ref.Value.In == "query" {
					names = append(names, ref.Value.Name)
				}
			}
			slices.Sort(names)
			documented[method+" "+path] = names
		}
	}
	served := servedRoutes(t, mustNew(t, Config{NameServer: newContractRegistry()}))
	for route := range served {
		got := slices.Clone(queryParams[route])
		slices.Sort(got)
		if want := documented[route]; !slices.Equal(got, want) {
			t.Errorf("%s takes query parameters %v, openapi.yaml documents %v", route, got, want)
		}
	}
	for route := range queryParams {
		if _, ok := served[route]; !ok {
			t.Errorf("queryParams lists %s, which no route serves", route)
		}
	}
}

// TestUnknownOrRepeatedQueryParameterRefused sends every route a parameter
// it does not take, and each parameter it takes twice: each is a 400
// invalid_parameter naming the parameter, answered before the handler acts
// (a refused DELETE deletes nothing).
func TestUnknownOrRepeatedQueryParameterRefused(t *testing.T) {
	srv, b := newTestServer(t, nil)
	if _, data := do(t, "PUT", srv.URL+"/v1/topics/keep", map[string]string{"Content-Type": "application/json"}, strings.NewReader(`{"queues":2}`)); len(data) == 0 {
		t.Fatal("create topic: empty answer")
	}
	vars := strings.NewReplacer("{topic}", "keep", "{queue}", "0", "{group}", "g1", "{msg_id}", "AAAAAAAAAAAAAAAAAAAAAA",
		"{id}", "sub_x", "{name}", "b1")
	type probe struct {
		route, query, field string
	}
	var probes []probe
	err := chi.Walk(mustNew(t, Config{Broker: b, NameServer: newContractRegistry()}).Routes(),
		func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
			key := method + " " + route
			probes = append(probes, probe{key, "bogus=1", "bogus"})
			for _, p := range queryParams[key] {
				probes = append(probes, probe{key, p + "=1&" + p + "=2", p})
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	// The misspelling that used to be taken silently, with the default.
	probes = append(probes, probe{"POST /v1/groups/{group}/topics/{topic}/pull", "wait=0s&vsibility=1s", "vsibility"})
	api := httptest.NewServer(mustNew(t, Config{Broker: b, NameServer: newContractRegistry()}))
	defer api.Close()
	for _, p := range probes {
		method, path, _ := strings.Cut(p.route, " ")
		resp, data := do(t, method, api.URL+vars.Replace(path)+"?"+p.query, nil, nil)
		var got struct {
			Code, Field, Detail string
		}
		_ = json.Unmarshal(data, &got)
		if method == http.MethodHead {
			// The same refusal, without its body.
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Errorf("%s with %s: %d %s, want 400 as a problem", p.route, p.query, resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			continue
		}
		if resp.StatusCode != http.StatusBadRequest || got.Code != "invalid_parameter" || got.Field != p.field {
			t.Errorf("%s ?%s: %d %s, want 400 invalid_parameter naming %q", p.route, p.query, resp.StatusCode, data, p.field)
		}
	}
	if _, err := b.Topic(t.Context(), "keep"); err != nil {
		t.Errorf("a refused DELETE /v1/topics/keep?bogus=1 acted: %v", err)
	}
}
