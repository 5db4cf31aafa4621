package ui

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	tests := []struct {
		method, path string
		status       int
		ctype        string // prefix; "" not checked
		body         string // a substring; "" not checked
	}{
		{"GET", "/ui/", 200, "text/html", `<script type="module" src="js/app.js">`},
		{"GET", "/ui/index.html", 301, "", ""}, // FileServer's canonical "/ui/"
		{"GET", "/ui", 301, "", ""},
		{"GET", "/ui/js/app.js", 200, "text/javascript", "import"},
		{"GET", "/ui/js/dom.js", 200, "text/javascript", "createTextNode"},
		{"GET", "/ui/style.css", 200, "text/css", ""},
		{"GET", "/ui/js/", 404, "", ""},
		{"GET", "/ui/nothing.js", 404, "", ""},
		{"POST", "/ui/", 405, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, srv.URL+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if got := resp.Header.Get("Content-Type"); tc.ctype != "" && !strings.HasPrefix(got, tc.ctype) {
				t.Errorf("Content-Type %q, want %s", got, tc.ctype)
			}
			if tc.body != "" && !strings.Contains(string(body), tc.body) {
				t.Errorf("body lacks %q", tc.body)
			}
			csp := resp.Header.Get("Content-Security-Policy")
			if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
				t.Errorf("Content-Security-Policy %q", csp)
			}
			if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
				t.Error("no X-Content-Type-Options: nosniff")
			}
		})
	}
}

// TestNoInnerHTML holds the escaping rule: no asset writes markup from a
// string, so nothing from the API can become markup.
func TestNoInnerHTML(t *testing.T) {
	entries, err := assets.ReadDir("assets/js")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 {
		t.Fatal("no scripts embedded")
	}
	for _, e := range entries {
		b, err := assets.ReadFile("assets/js/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
			if strings.Contains(string(b), bad) {
				t.Errorf("%s uses %s", e.Name(), bad)
			}
		}
	}
}

func TestOwns(t *testing.T) {
	for path, want := range map[string]bool{"/ui": true, "/ui/": true, "/ui/js/app.js": true, "/uix": false, "/v1/topics": false} {
		if got := Owns(path); got != want {
			t.Errorf("Owns(%q) = %v, want %v", path, got, want)
		}
	}
}
