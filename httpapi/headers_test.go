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

// TestContractPostbusHeaders: the Postbus-* request headers each route
// takes (routeHeaders) are those openapi.yaml documents as its header
// parameters; a prefix (Postbus-Prop-) is named in the operation's text.
func TestContractPostbusHeaders(t *testing.T) {
	doc := loadContract(t)
	documented := make(map[string][]string)
	text := make(map[string]string)
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			var names []string
			for _, ref := range append(item.Parameters, op.Parameters...) {
				if ref.Value != nil && ref.Value.In == "header" && strings.HasPrefix(http.CanonicalHeaderKey(ref.Value.Name), "Postbus-") {
					names = append(names, http.CanonicalHeaderKey(ref.Value.Name))
				}
			}
			slices.Sort(names)
			documented[method+" "+path] = names
			text[method+" "+path] = op.Summary + "\n" + op.Description
		}
	}
	served := servedRoutes(t, mustNew(t, Config{NameServer: newContractRegistry()}))
	for route := range served {
		var got []string
		for _, h := range routeHeaders(route) {
			if strings.HasSuffix(h, "-") {
				if !strings.Contains(text[route], h) {
					t.Errorf("%s takes headers %s<name>, which openapi.yaml does not mention", route, h)
				}
				continue
			}
			got = append(got, h)
		}
		slices.Sort(got)
		if want := documented[route]; !slices.Equal(got, want) {
			t.Errorf("%s takes Postbus-* headers %v, openapi.yaml documents %v", route, got, want)
		}
	}
	for route := range postbusHeaders {
		if _, ok := served[route]; !ok {
			t.Errorf("postbusHeaders lists %s, which no route serves", route)
		}
	}
}

// TestUnknownPostbusHeaderRefused sends every route a Postbus-* header it
// does not take: each is a 400 invalid_header naming the header, answered
// before the handler acts (a refused DELETE deletes nothing). Found by the
// hostile pass: every route but publish ignored them. The cluster's
// Postbus-Forwarded-By is taken everywhere, and a publish still takes its
// own headers and properties.
func TestUnknownPostbusHeaderRefused(t *testing.T) {
	srv, b := newTestServer(t, nil)
	if _, data := do(t, "PUT", srv.URL+"/v1/topics/keep", map[string]string{"Content-Type": "application/json"}, strings.NewReader(`{"queues":2}`)); len(data) == 0 {
		t.Fatal("create topic: empty answer")
	}
	vars := strings.NewReplacer("{topic}", "keep", "{queue}", "0", "{group}", "g1", "{msg_id}", "AAAAAAAAAAAAAAAAAAAAAA",
		"{id}", "sub_x", "{name}", "b1")
	type probe struct {
		route, header, field string
	}
	var probes []probe
	err := chi.Walk(mustNew(t, Config{Broker: b, NameServer: newContractRegistry()}).Routes(),
		func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
			key := method + " " + route
			probes = append(probes, probe{key, "Postbus-Bogus", "Postbus-Bogus"})
			// A response header sent back, and a publish header elsewhere.
			probes = append(probes, probe{key, "Postbus-Broker", "Postbus-Broker"})
			if !slices.Contains(postbusHeaders[key], hdrTag) {
				probes = append(probes, probe{key, "postbus-tag", hdrTag})
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(mustNew(t, Config{Broker: b, NameServer: newContractRegistry()}))
	defer api.Close()
	for _, p := range probes {
		method, path, _ := strings.Cut(p.route, " ")
		resp, data := do(t, method, api.URL+vars.Replace(path), map[string]string{p.header: "1"}, nil)
		var got struct {
			Code, Field, Detail string
		}
		_ = json.Unmarshal(data, &got)
		if method == http.MethodHead {
			// The same refusal, without its body.
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Errorf("%s with %s: %d %s, want 400 as a problem", p.route, p.header, resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			continue
		}
		if resp.StatusCode != http.StatusBadRequest || got.Code != "invalid_header" || got.Field != p.field {
			t.Errorf("%s with %s: %d %s, want 400 invalid_header naming %q", p.route, p.header, resp.StatusCode, data, p.field)
		}
	}
	if _, err := b.Topic(t.Context(), "keep"); err != nil {
		t.Errorf("a refused DELETE /v1/topics/keep with Postbus-Bogus acted: %v", err)
	}

	for _, tc := range []struct {
		name, method, path string
		header             map[string]string
		body               string
		status             int
	}{
		{"forwarded read", "GET", "/v1/topics/keep", map[string]string{hdrForwardedBy: "b2"}, "", http.StatusOK},
		{"forwarded to an operations route", "GET", "/healthz", map[string]string{hdrForwardedBy: "b2"}, "", http.StatusBadRequest},
		{"forwarded list", "GET", "/v1/topics", map[string]string{hdrForwardedBy: "b2"}, "", http.StatusOK},
		{"forwarded pull", "POST", "/v1/groups/g1/topics/keep/pull?wait=0s", map[string]string{hdrForwardedBy: "b2"}, "", http.StatusOK},
		{"publish with its headers", "POST", "/v1/topics/keep/messages",
			map[string]string{hdrTag: "t", hdrKeys: "k", hdrDedupID: "d", "Postbus-Prop-Order-Id": "7", hdrForwardedBy: "b2"}, "x", http.StatusCreated},
		{"batch forwarded", "POST", "/v1/topics/keep/messages/batch",
			map[string]string{"Content-Type": "application/json", hdrForwardedBy: "b2"}, `[{"body":"a"}]`, http.StatusCreated},
	} {
		resp, data := do(t, tc.method, api.URL+tc.path, tc.header, strings.NewReader(tc.body))
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.name, resp.StatusCode, data, tc.status)
		}
	}
}
