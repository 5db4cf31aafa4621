package httpapi

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/go-chi/chi/v5"
	"github.com/golang-jwt/jwt/v5"
	"github.com/postbus/postbus"
	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/httpapi/stats"
	"github.com/postbus/postbus/namesrv"
)

// The tests in this file keep openapi.yaml true: the document is valid, it
// lists exactly the routes the router serves under the handlers' names, its
// problem codes are exactly the ones the code can answer, and real traffic
// through a real broker matches it, request and response.

// loadContract loads the embedded openapi.yaml and validates it as OpenAPI.
func loadContract(tb testing.TB) *openapi3.T {
	tb.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(postbus.OpenAPI)
	if err != nil {
		tb.Fatalf("load openapi.yaml: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		tb.Fatalf("openapi.yaml is not a valid OpenAPI document: %v", err)
	}
	return doc
}

func TestContractDocumentIsValid(t *testing.T) {
	doc := loadContract(t)
	if doc.OpenAPI != "3.0.3" {
		t.Errorf("openapi = %q, want 3.0.3", doc.OpenAPI)
	}
	// Every answer carries X-Request-Id (the requestID middleware wraps
	// every route), so every documented response must say so; in a
	// cluster every answer also carries Postbus-Broker (Server.ServeHTTP
	// sets it before routing), which a standalone broker leaves out.
	brokerName := doc.Components.Schemas["BrokerName"]
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			for status, ref := range op.Responses.Map() {
				h := ref.Value.Headers["X-Request-Id"]
				if h == nil || !h.Value.Required {
					t.Errorf("%s %s: response %s does not declare the required X-Request-Id header", method, path, status)
				}
				h = ref.Value.Headers[hdrBroker]
				switch {
				case h == nil:
					t.Errorf("%s %s: response %s does not declare the %s header", method, path, status, hdrBroker)
				case h.Value.Required:
					t.Errorf("%s %s: response %s requires %s, which a standalone broker never sends", method, path, status, hdrBroker)
				case h.Value.Schema == nil || h.Value.Schema.Value != brokerName.Value:
					t.Errorf("%s %s: response %s: %s is not a BrokerName", method, path, status, hdrBroker)
				}
			}
			// A broker's own routes take a forwarded request (the name
			// server's and the operations endpoints never forward).
			if slices.Contains(op.Tags, "namesrv") || slices.Contains(op.Tags, "operations") {
				continue
			}
			params := append(slices.Clone(item.Parameters), op.Parameters...)
			if p := params.GetByInAndName("header", hdrForwardedBy); p == nil || p.Required {
				t.Errorf("%s %s does not declare the optional %s header", method, path, hdrForwardedBy)
			}
		}
	}
}

// operationIDOf names a route's handler as openapi.yaml must:
// (*Server).handlePublishBatch is publishBatch.
func operationIDOf(h http.Handler) (string, error) {
	hf, ok := h.(http.HandlerFunc)
	if !ok {
		return "", fmt.Errorf("handler is a %T, not a method of Server", h)
	}
	name := runtime.FuncForPC(reflect.ValueOf(hf).Pointer()).Name()
	name = strings.TrimSuffix(name, "-fm")
	name = name[strings.LastIndex(name, ".")+1:]
	rest, ok := strings.CutPrefix(name, "handle")
	if !ok || rest == "" {
		return "", fmt.Errorf("handler %s is not named handleXxx", name)
	}
	r, n := utf8.DecodeRuneInString(rest)
	return string(unicode.ToLower(r)) + rest[n:], nil
}

// newContractRegistry is a name server registry with the default expiry,
// as `postbus namesrv` and `postbus dev` run one.
func newContractRegistry() *namesrv.Registry {
	return namesrv.NewRegistry(namesrv.DefaultConfig())
}

// servedRoutes walks a server's router: "GET /path" -> the operationId its
// handler's name gives.
func servedRoutes(tb testing.TB, s *Server) map[string]string {
	tb.Helper()
	served := make(map[string]string)
	err := chi.Walk(s.Routes(), func(method, route string, h http.Handler, _ ...func(http.Handler) http.Handler) error {
		id, err := operationIDOf(h)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, route, err)
		}
		served[method+" "+route] = id
		return nil
	})
	if err != nil {
		tb.Fatalf("walk routes: %v", err)
	}
	if len(served) == 0 {
		tb.Fatal("the router has no routes")
	}
	return served
}

func TestContractRoutesMatchDocument(t *testing.T) {
	doc := loadContract(t)
	documented := make(map[string]string) // "GET /path" -> operationId
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			documented[method+" "+path] = op.OperationID
		}
	}
	// `postbus dev`: the broker's routes and the name server's.
	served := servedRoutes(t, mustNew(t, Config{NameServer: newContractRegistry()}))

	var missing, extra []string
	for r := range served {
		if _, ok := documented[r]; !ok {
			missing = append(missing, r)
		}
	}
	for r := range documented {
		if _, ok := served[r]; !ok {
			extra = append(extra, r)
		}
	}
	slices.Sort(missing)
	slices.Sort(extra)
	for _, r := range missing {
		t.Errorf("route %s (handler %s) is not in openapi.yaml", r, served[r])
	}
	for _, r := range extra {
		t.Errorf("openapi.yaml documents %s (operationId %s) but no route serves it", r, documented[r])
	}
	for r, id := range served {
		if got, ok := documented[r]; ok && got != id {
			t.Errorf("%s: operationId is %q, want %q after its handler", r, got, id)
		}
	}
}

// nameServerOps are the operations tagged namesrv in the document.
func nameServerOps(tb testing.TB, doc *openapi3.T) map[string]bool {
	tb.Helper()
	ops := make(map[string]bool) // "GET /path"
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			if slices.Contains(op.Tags, "namesrv") {
				ops[method+" "+path] = true
			}
		}
	}
	if len(ops) == 0 {
		tb.Fatal("openapi.yaml tags no operation namesrv")
	}
	return ops
}

// The document says which routes only a name server serves (the namesrv
// tag): `postbus namesrv` serves exactly those and the operations
// endpoints but the JWKS, and a broker without a name server none of them.
func TestContractNameServerRoutes(t *testing.T) {
	doc := loadContract(t)
	nsOps := nameServerOps(t, doc)
	want := maps.Clone(nsOps)
	for _, r := range []string{"GET /healthz", "HEAD /healthz", "GET /readyz", "HEAD /readyz", "GET /metrics", "GET /openapi.yaml"} {
		want[r] = true
	}
	onlyNS := servedRoutes(t, mustNew(t, Config{NameServer: newContractRegistry(), NameServerOnly: true}))
	for _, r := range slices.Sorted(maps.Keys(onlyNS)) {
		if !want[r] {
			t.Errorf("postbus namesrv serves %s, which the document neither tags namesrv nor lists as an operations endpoint", r)
		}
	}
	for _, r := range slices.Sorted(maps.Keys(want)) {
		if _, ok := onlyNS[r]; !ok {
			t.Errorf("postbus namesrv does not serve %s", r)
		}
	}
	plain := servedRoutes(t, mustNew(t, Config{}))
	for _, r := range slices.Sorted(maps.Keys(nsOps)) {
		if _, ok := plain[r]; ok {
			t.Errorf("a broker without a name server serves %s, tagged namesrv", r)
		}
	}
}

// brokerCodes returns the Code constants declared in package broker's
// errors.go, read from the source so that a code added there without being
// documented fails this test.
func brokerCodes(tb testing.TB) []string {
	tb.Helper()
	return codeConstants(tb, "../broker/errors.go")
}

// httpCodes returns the broker.Code constants this package declares in
// problem.go, read from the source so that a code added there without a
// status (it would answer 500) fails this test.
func httpCodes(tb testing.TB) []string {
	tb.Helper()
	return codeConstants(tb, "problem.go")
}

// isCodeType reports whether a constant's declared type is Code or
// broker.Code.
func isCodeType(e ast.Expr) bool {
	switch t := e.(type) {
	case *ast.Ident:
		return t.Name == "Code"
	case *ast.SelectorExpr:
		x, ok := t.X.(*ast.Ident)
		return ok && x.Name == "broker" && t.Sel.Name == "Code"
	}
	return false
}

// codeConstants returns the string values of the constants of type Code
// (or broker.Code) declared in a Go source file.
func codeConstants(tb testing.TB, file string) []string {
	tb.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		tb.Fatalf("parse %s: %v", file, err)
	}
	var codes []string
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			if vs.Type == nil || !isCodeType(vs.Type) {
				continue
			}
			for _, v := range vs.Values {
				lit, ok := v.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					tb.Fatalf("%s: a Code constant is not a string literal", file)
				}
				s, err := strconv.Unquote(lit.Value)
				if err != nil {
					tb.Fatalf("%s: %v", file, err)
				}
				codes = append(codes, s)
			}
		}
	}
	if len(codes) == 0 {
		tb.Fatalf("%s declares no Code constants", file)
	}
	return codes
}

// enumInts returns a schema's enum as ints (JSON numbers decode as float64).
func enumInts(tb testing.TB, s *openapi3.Schema) []int {
	tb.Helper()
	var out []int
	for _, v := range s.Enum {
		switch n := v.(type) {
		case float64:
			out = append(out, int(n))
		case int:
			out = append(out, n)
		default:
			tb.Fatalf("enum value %v is a %T, not a number", v, v)
		}
	}
	return out
}

func TestContractProblemCodes(t *testing.T) {
	doc := loadContract(t)
	problem := doc.Components.Schemas["Problem"]
	if problem == nil {
		t.Fatal("components/schemas/Problem is missing")
	}
	documented := make(map[string]bool)
	for _, v := range problem.Value.Properties["code"].Value.Enum {
		documented[v.(string)] = true
	}
	for code := range statusOf {
		if !documented[string(code)] {
			t.Errorf("code %q (status %d in statusOf) is not in Problem.code's enum", code, statusOf[code])
		}
	}
	for _, code := range brokerCodes(t) {
		if !documented[code] {
			t.Errorf("broker code %q is not in Problem.code's enum", code)
		}
		if _, ok := statusOf[broker.Code(code)]; !ok {
			t.Errorf("broker code %q has no status in statusOf: it would answer 500", code)
		}
	}
	for _, code := range httpCodes(t) {
		if !documented[code] {
			t.Errorf("code %q of problem.go is not in Problem.code's enum", code)
		}
		if _, ok := statusOf[broker.Code(code)]; !ok {
			t.Errorf("code %q of problem.go has no status in statusOf: it would answer 500", code)
		}
	}
	for code := range documented {
		if _, ok := statusOf[broker.Code(code)]; !ok {
			t.Errorf("Problem.code lists %q, which no code in statusOf answers", code)
		}
	}

	// Each status's problem schema (BadRequestProblem, ...) narrows status
	// and code; together they must be statusOf exactly.
	byStatus := make(map[int]map[string]bool)
	for name, ref := range doc.Components.Schemas {
		if name == "Problem" || !strings.HasSuffix(name, "Problem") {
			continue
		}
		s := ref.Value
		if len(s.AllOf) != 2 || s.AllOf[0].Ref != "#/components/schemas/Problem" {
			t.Errorf("schema %s is not allOf [Problem, narrowing]", name)
			continue
		}
		narrow := s.AllOf[1].Value
		st := enumInts(t, narrow.Properties["status"].Value)
		if len(st) != 1 {
			t.Errorf("schema %s: status enum %v, want one status", name, st)
			continue
		}
		if byStatus[st[0]] == nil {
			byStatus[st[0]] = make(map[string]bool)
		}
		for _, v := range narrow.Properties["code"].Value.Enum {
			byStatus[st[0]][v.(string)] = true
		}
	}
	for code, st := range statusOf {
		if !byStatus[st][string(code)] {
			t.Errorf("code %q answers %d, but no problem schema for %d lists it", code, st, st)
		}
	}
	for st, codes := range byStatus {
		for code := range codes {
			if got := statusOf[broker.Code(code)]; got != st {
				t.Errorf("the problem schema for %d lists %q, which answers %d", st, code, got)
			}
		}
	}
}

func TestContractServesEmbeddedDocument(t *testing.T) {
	s := mustNew(t, Config{OpenAPI: postbus.OpenAPI})
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.yaml", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /openapi.yaml: status %d, want 200", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/yaml" {
		t.Errorf("Content-Type = %q, want application/yaml", ct)
	}
	if !bytes.Equal(rec.Body.Bytes(), postbus.OpenAPI) {
		t.Errorf("GET /openapi.yaml served %d bytes that differ from the embedded document (%d bytes)", rec.Body.Len(), len(postbus.OpenAPI))
	}
}

// Requests that match no route cannot be checked against an operation, but
// their problems must still match the schemas the document gives them.
func TestContractUnroutedProblems(t *testing.T) {
	doc := loadContract(t)
	s := mustNew(t, Config{})
	for _, c := range []struct {
		method, path, schema string
		status               int
	}{
		{http.MethodGet, "/v2/nothing", "NotFoundProblem", http.StatusNotFound},
		{http.MethodPatch, "/v1/topics/orders", "MethodNotAllowedProblem", http.StatusMethodNotAllowed},
	} {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, httptest.NewRequest(c.method, c.path, nil))
			if rec.Code != c.status {
				t.Fatalf("status %d, want %d", rec.Code, c.status)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("Content-Type = %q, want application/problem+json", ct)
			}
			var v any
			if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
				t.Fatalf("body is not JSON: %v", err)
			}
			if err := doc.Components.Schemas[c.schema].Value.VisitJSON(v); err != nil {
				t.Errorf("problem does not match %s: %v\n%s", c.schema, err, rec.Body.Bytes())
			}
		})
	}
}

// exchange is one recorded request and what it must answer.
type exchange struct {
	name   string
	strict bool // send to the server with a 16-byte body limit that is not ready
	// metricsAuth sends to the server that puts /metrics behind an admin
	// token (auth traffic only).
	metricsAuth bool
	jwks        bool // send to the server that serves a JWKS (open traffic only)
	// manual sends to the server over a broker that creates no topics on
	// first use (open traffic only).
	manual bool
	// nameServer sends to the server that serves only the name server's
	// routes, as `postbus namesrv` does (open traffic only).
	nameServer bool
	// other sends to the cluster env's second broker (cluster traffic only).
	other bool
	// huge validates the request against the document without its body,
	// which is sent all the same: a body of many MiB costs seconds to
	// validate under the race detector. The request is then invalid.
	huge   bool
	method string
	// In path and body, {name} is replaced by a value saved by an earlier
	// exchange.
	path   string
	header map[string]string
	body   string

	status int
	code   broker.Code // the problem's code, for an error
	// invalid says the request breaks openapi.yaml on purpose: its
	// validation must fail (the response must still match).
	invalid bool
	// save keeps values of the answer: variable -> a JSON path of dotted
	// object fields and array indexes ("messages.0.receipt").
	save  map[string]string
	check func(tb testing.TB, resp *http.Response, body []byte)
	// prepare runs before the request is sent, to put the broker in a
	// state no route can (a dead letter, a delivery attempt).
	prepare func(tb testing.TB, vars map[string]string)
}

// contractEnv is a real broker behind HTTP servers, and a router over
// openapi.yaml that matches their URLs.
type contractEnv struct {
	doc    *openapi3.T
	router routers.Router
	opts   *openapi3filter.Options
	main   *httptest.Server
	strict *httptest.Server // open env: 16-byte body limit, not ready
	// metricsAuth is the auth env's server with Config.MetricsAuth.
	metricsAuth *httptest.Server
	jwks        *httptest.Server // open env: serves jwksDoc
	jwksDoc     []byte
	broker      *broker.Broker // behind every server of the env but manual
	// manual is the open env's server over a broker of its own that
	// creates no topics (nor pull subscriptions) on first use.
	manual *httptest.Server
	// nameServer is the open env's `postbus namesrv`: the name server's
	// routes alone, over the registry main serves as `postbus dev` does.
	nameServer *httptest.Server
	// clock is the open env's registry's clock, moved on to expire brokers.
	clock *contractClock
	// other is the cluster env's second broker; members names the
	// cluster's brokers, which every answer must name in Postbus-Broker
	// (nil: standalone servers, whose answers carry no Postbus-Broker).
	other   *httptest.Server
	members []string
	// mainAPI is the open env's main server, sampled for GET /v1/stats.
	mainAPI *Server
}

// contractClock is the time plus an offset that tests move forward.
type contractClock struct{ offset atomic.Int64 }

func (c *contractClock) now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }

func (c *contractClock) advance(d time.Duration) { c.offset.Add(int64(d)) }

// openContractBroker opens a broker of its own for a contract test; it
// creates topics on first use, as `postbus dev` does, when autoCreate, and
// otherwise creates neither topics nor groups (--auto-create-groups=false).
func openContractBroker(tb testing.TB, autoCreate bool) *broker.Broker {
	tb.Helper()
	cfg := broker.DefaultConfig(tb.TempDir())
	cfg.AutoCreateTopics = autoCreate
	cfg.AutoCreateGroups = autoCreate
	cfg.SegmentSize = 8 << 20
	cfg.MaxMessageBytes = 512 << 10
	b, err := broker.Open(context.Background(), cfg)
	if err != nil {
		tb.Fatalf("open broker: %v", err)
	}
	tb.Cleanup(func() {
		if err := b.Close(); err != nil {
			tb.Errorf("close broker: %v", err)
		}
	})
	return b
}

// serveContract starts cfg's server for the rest of the test.
func serveContract(tb testing.TB, cfg Config) *httptest.Server {
	tb.Helper()
	srv := httptest.NewServer(mustNew(tb, cfg))
	tb.Cleanup(srv.Close)
	return srv
}

// route points the document at the test servers and builds its router.
func (env *contractEnv) route(tb testing.TB, servers ...*httptest.Server) {
	tb.Helper()
	// The document's server is 127.0.0.1:8080; route the test servers' URLs.
	env.doc.Servers = nil
	for _, s := range servers {
		env.doc.Servers = append(env.doc.Servers, &openapi3.Server{URL: s.URL})
	}
	var err error
	if env.router, err = gorillamux.NewRouter(env.doc); err != nil {
		tb.Fatalf("router over openapi.yaml: %v", err)
	}
}

// newContractEnv serves the API open, as `postbus dev` does: the document's
// security requirements are not enforced, so requests validate without a
// token.
func newContractEnv(tb testing.TB) *contractEnv {
	tb.Helper()
	b := openContractBroker(tb, true)
	env := &contractEnv{doc: loadContract(tb), opts: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true,
		AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	env.broker = b
	env.clock = new(contractClock)
	rcfg := namesrv.DefaultConfig()
	rcfg.Now = env.clock.now
	registry := namesrv.NewRegistry(rcfg)
	env.mainAPI = mustNew(tb, Config{Broker: b, OpenAPI: postbus.OpenAPI, NameServer: registry})
	env.main = httptest.NewServer(env.mainAPI)
	tb.Cleanup(env.main.Close)
	env.nameServer = serveContract(tb, Config{OpenAPI: postbus.OpenAPI, NameServer: registry, NameServerOnly: true})
	env.strict = serveContract(tb, Config{Broker: b, OpenAPI: postbus.OpenAPI, MaxMessageBytes: 16,
		Ready: func() error { return errors.New("draining") }})
	env.jwksDoc = contractJWKS(tb)
	env.jwks = serveContract(tb, Config{Broker: b, OpenAPI: postbus.OpenAPI, JWKS: env.jwksDoc})
	env.manual = serveContract(tb, Config{Broker: openContractBroker(tb, false), OpenAPI: postbus.OpenAPI})
	env.route(tb, env.main, env.strict, env.jwks, env.manual, env.nameServer)
	return env
}

// contractJWKS is a JSON Web Key Set of one fresh Ed25519 key, built as the
// bus builds its own (RFC 8037; kid from the key's SHA-256).
func contractJWKS(tb testing.TB) []byte {
	tb.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatalf("generate key: %v", err)
	}
	sum := sha256.Sum256(pub)
	doc, err := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "OKP", "crv": "Ed25519", "x": base64.RawURLEncoding.EncodeToString(pub),
		"kid": base64.RawURLEncoding.EncodeToString(sum[:8]), "alg": "EdDSA", "use": "sig",
	}}})
	if err != nil {
		tb.Fatalf("encode jwks: %v", err)
	}
	return doc
}

// contractSecret is the auth env's HS256 secret.
var contractSecret = []byte(strings.Repeat("k", 32))

// contractPublishRate is the auth env's publish rate, in messages a second.
// It is low enough that no refill between two requests matters, however
// slow the machine running the test.
const contractPublishRate = 0.01

// newAuthContractEnv serves the API with HS256 tokens and a publish rate,
// as `postbus broker --jwt-secret ... --rate-limit 5 --rate-burst 1000` does. A request
// validates only with a bearer token where the document asks for one.
func newAuthContractEnv(tb testing.TB) *contractEnv {
	tb.Helper()
	b := openContractBroker(tb, true)
	env := &contractEnv{doc: loadContract(tb), opts: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true,
		AuthenticationFunc: contractBearer}}
	cfg := Config{Broker: b, OpenAPI: postbus.OpenAPI, Auth: AuthConfig{HMACSecret: contractSecret}, PublishRate: contractPublishRate,
		PublishBurst: broker.MaxBatchMessages, NameServer: newContractRegistry(), MaxHeldPollsPerClient: 1}
	env.broker = b
	env.main = serveContract(tb, cfg)
	cfg.MetricsAuth = true
	env.metricsAuth = serveContract(tb, cfg)
	env.route(tb, env.main, env.metricsAuth)
	return env
}

// contractBearer is what the document can check of the bearerAuth scheme:
// that a bearer token was sent. Whether it is valid is the server's to say.
func contractBearer(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	if s := in.SecurityScheme; s.Type != "http" || !strings.EqualFold(s.Scheme, "bearer") {
		return fmt.Errorf("security scheme %s is %s %s, not http bearer", in.SecuritySchemeName, s.Type, s.Scheme)
	}
	scheme, tok, ok := strings.Cut(in.RequestValidationInput.Request.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return errors.New("no Authorization: Bearer token")
	}
	return nil
}

// sentExchange is a sent exchange, its response read but not yet validated.
type sentExchange struct {
	in   *openapi3filter.RequestValidationInput
	op   string
	resp *http.Response
	body []byte
	// sent is when the request left (after its validation), answered when
	// its answer was read.
	sent, answered time.Time
}

// send validates x's request against the document and sends it.
func (env *contractEnv) send(tb testing.TB, x exchange, vars map[string]string) *sentExchange {
	tb.Helper()
	srv := env.main
	switch {
	case x.strict:
		srv = env.strict
	case x.metricsAuth:
		srv = env.metricsAuth
	case x.jwks:
		srv = env.jwks
	case x.manual:
		srv = env.manual
	case x.nameServer:
		srv = env.nameServer
	case x.other:
		srv = env.other
	}
	if srv == nil {
		tb.Fatalf("%s: this environment has no such server", x.name)
	}
	path, reqBody := x.path, x.body
	for k, v := range vars {
		path = strings.ReplaceAll(path, "{"+k+"}", v)
		reqBody = strings.ReplaceAll(reqBody, "{"+k+"}", v)
	}
	newReq := func() *http.Request {
		var body io.Reader
		if reqBody != "" {
			body = strings.NewReader(reqBody)
		}
		req, err := http.NewRequest(x.method, srv.URL+path, body)
		if err != nil {
			tb.Fatalf("new request: %v", err)
		}
		for k, v := range x.header {
			req.Header.Set(k, v)
		}
		return req
	}

	vreq := newReq()
	if x.huge {
		vreq.Body, vreq.ContentLength = http.NoBody, 0
	}
	route, params, err := env.router.FindRoute(vreq)
	if err != nil {
		tb.Fatalf("%s %s matches no operation in openapi.yaml: %v", x.method, path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route, Options: env.opts}
	err = openapi3filter.ValidateRequest(context.Background(), in)
	switch {
	case x.invalid && err == nil:
		tb.Errorf("the request was meant to break openapi.yaml, but it validates: the document is looser than the server")
	case !x.invalid && err != nil:
		tb.Errorf("the request does not validate against openapi.yaml: %v", err)
	}

	req := newReq()
	client := srv.Client()
	if x.huge || x.status == http.StatusRequestEntityTooLarge {
		// The server refuses a body over its limit unread and closes the
		// connection: a client still writing it may meet a broken pipe
		// before it reads the answer. With Expect: 100-continue it sends
		// nothing until the server has answered.
		req.Header.Set("Expect", "100-continue")
		tr := client.Transport.(*http.Transport).Clone()
		tr.ExpectContinueTimeout = time.Minute
		client = &http.Client{Transport: tr}
		defer tr.CloseIdleConnections()
	}
	sent := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", x.method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("read the answer: %v", err)
	}
	return &sentExchange{in: in, op: route.Operation.OperationID, resp: resp, body: body, sent: sent, answered: time.Now()}
}

// verify validates a sent exchange's response against the document.
func (env *contractEnv) verify(tb testing.TB, a *sentExchange) {
	tb.Helper()
	rin := &openapi3filter.ResponseValidationInput{RequestValidationInput: a.in, Status: a.resp.StatusCode,
		Header: a.resp.Header, Options: env.opts}
	rin.SetBodyBytes(a.body)
	if err := openapi3filter.ValidateResponse(context.Background(), rin); err != nil {
		tb.Errorf("the answer (%d %s) does not match openapi.yaml: %v\n%s", a.resp.StatusCode, a.resp.Header.Get("Content-Type"), err, clip(a.body))
	}
}

// do sends x, validates the request and the response against the document,
// and returns the operation and the answer.
func (env *contractEnv) do(tb testing.TB, x exchange, vars map[string]string) (string, *http.Response, []byte) {
	tb.Helper()
	a := env.send(tb, x, vars)
	env.verify(tb, a)
	return a.op, a.resp, a.body
}

// contractSeen records, by operationId, the statuses answered.
type contractSeen map[string]map[int]bool

func (s contractSeen) add(op string, status int) {
	if s[op] == nil {
		s[op] = make(map[int]bool)
	}
	s[op][status] = true
}

// expectExchange checks an answer against what x says it must be, and keeps the
// values x saves.
func expectExchange(tb testing.TB, x exchange, resp *http.Response, body []byte, vars map[string]string) {
	tb.Helper()
	if resp.StatusCode != x.status {
		tb.Fatalf("status %d, want %d\n%s", resp.StatusCode, x.status, clip(body))
	}
	if x.code != "" {
		if got := jsonField(tb, body, "code"); got != string(x.code) {
			tb.Errorf("code %v, want %s\n%s", got, x.code, clip(body))
		}
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") && len(body) > 0 {
		// A detail is a sentence about what was wrong: one built from an
		// empty name and a ": " says nothing first.
		if d, _ := jsonField(tb, body, "detail").(string); d == "" || strings.HasPrefix(d, ":") || strings.HasPrefix(d, " ") {
			tb.Errorf("problem detail %q\n%s", d, clip(body))
		}
	}
	for name, path := range x.save {
		v, ok := jsonAt(tb, body, path).(string)
		if !ok || v == "" {
			tb.Fatalf("the answer has no %s to keep\n%s", path, clip(body))
		}
		vars[name] = v
	}
	if x.check != nil {
		x.check(tb, resp, body)
	}
}

// run sends the exchanges in order, each as a subtest.
func (env *contractEnv) run(t *testing.T, exchanges []exchange, vars map[string]string, seen contractSeen) {
	for _, x := range exchanges {
		t.Run(x.name, func(t *testing.T) {
			if x.prepare != nil {
				x.prepare(t, vars)
			}
			op, resp, body := env.do(t, x, vars)
			seen.add(op, resp.StatusCode)
			env.checkBrokerHeader(t, resp)
			expectExchange(t, x, resp, body, vars)
		})
	}
}

// checkBrokerHeader checks an answer's Postbus-Broker: a broker of the
// cluster in a cluster env, none from a standalone server.
func (env *contractEnv) checkBrokerHeader(tb testing.TB, resp *http.Response) {
	tb.Helper()
	got, ok := resp.Header[hdrBroker]
	switch {
	case env.members == nil && ok:
		tb.Errorf("a standalone server answered %s: %q", hdrBroker, got)
	case env.members != nil && (len(got) != 1 || !slices.Contains(env.members, got[0])):
		tb.Errorf("%s: %q, want one of %v", hdrBroker, got, env.members)
	}
}

func clip(b []byte) []byte {
	if len(b) > 600 {
		return append(b[:600:600], "…"...)
	}
	return b
}

// jsonField returns a top-level field of a JSON object, or nil.
func jsonField(tb testing.TB, body []byte, field string) any {
	tb.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		tb.Fatalf("answer is not a JSON object: %v\n%s", err, clip(body))
	}
	return m[field]
}

// jsonAt returns the value at a dotted path of object fields and array
// indexes ("messages.0.receipt") in a JSON answer, or nil.
func jsonAt(tb testing.TB, body []byte, path string) any {
	tb.Helper()
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		tb.Fatalf("answer is not JSON: %v\n%s", err, clip(body))
	}
	for _, step := range strings.Split(path, ".") {
		switch c := v.(type) {
		case map[string]any:
			v = c[step]
		case []any:
			i, err := strconv.Atoi(step)
			if err != nil || i < 0 || i >= len(c) {
				return nil
			}
			v = c[i]
		default:
			return nil
		}
	}
	return v
}

func TestContractRecordedTraffic(t *testing.T) {
	env := newContractEnv(t)
	batch := func(items ...string) string { return "[" + strings.Join(items, ",") + "]" }
	json1001 := batch(slices.Repeat([]string{`{"body":"x"}`}, 1001)...)
	big := strings.Repeat("a", 500<<10)
	overTotal := batch(slices.Repeat([]string{`{"body":"` + big + `"}`}, 9)...) // 4.4 MiB of bodies
	manyKeys := strings.TrimSuffix(strings.Repeat("k,", 33), ",")
	jsonCT := map[string]string{"Content-Type": "application/json"}
	noDuplicate := func(tb testing.TB, _ *http.Response, body []byte) {
		if d := jsonField(tb, body, "duplicate"); d != nil {
			tb.Errorf("duplicate = %v in a first publish", d)
		}
		if b := jsonField(tb, body, "broker"); b != nil {
			tb.Errorf("a standalone broker answered broker %v", b)
		}
	}

	exchanges := []exchange{
		// Operations.
		{name: "healthz", method: "GET", path: "/healthz", status: 200},
		{name: "sync/standalone", method: "POST", path: "/v1/internal/subscriptions/sync", header: jsonCT,
			body: `{"from":"broker-b","topics":{}}`, status: 404, code: codeNotFound},
		{name: "readyz", method: "GET", path: "/readyz", status: 200},
		{name: "readyz/not ready", strict: true, method: "GET", path: "/readyz", status: 503, code: codeNotReady},
		{name: "healthz/head", method: "HEAD", path: "/healthz", status: 200},
		{name: "readyz/head", method: "HEAD", path: "/readyz", status: 200},
		{name: "readyz/head not ready", strict: true, method: "HEAD", path: "/readyz", status: 503},
		{name: "metrics", method: "GET", path: "/metrics", status: 200},
		// A standalone broker is no replica group's member.
		{name: "replicas/standalone", method: "GET", path: "/v1/replicas", status: 404, code: codeNotReplicated},
		{name: "add replica/standalone", method: "POST", path: "/v1/replicas", header: jsonCT,
			body: `{"id":"n4","addr":"127.0.0.1:7004"}`, status: 404, code: codeNotReplicated},
		{name: "remove replica/standalone", method: "DELETE", path: "/v1/replicas/n2", status: 404, code: codeNotReplicated},
		{name: "openapi.yaml", method: "GET", path: "/openapi.yaml", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if !bytes.Equal(body, postbus.OpenAPI) {
					tb.Error("/openapi.yaml is not the embedded document")
				}
			}},

		// Topics.
		{name: "put topic/create", method: "PUT", path: "/v1/topics/orders", header: jsonCT,
			body: `{"queues":2,"retention":"1h"}`, status: 201,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got topicJSON
				if err := json.Unmarshal(body, &got); err != nil {
					t.Fatalf("decode: %v", err)
				}
				if got.QueueCount != 2 || len(got.Queues) != 2 || got.Retention != "1h0m0s" {
					tb.Errorf("created topic = %+v, want 2 queues and retention 1h0m0s", got)
				}
			}},
		{name: "put topic/update", method: "PUT", path: "/v1/topics/orders", header: jsonCT,
			body: `{"queues":4,"retention":"2h"}`, status: 200},
		// A standalone broker is the whole bus: it takes brokers "all", and
		// no list of names (the topic keeps its 4 queues: see get topic).
		{name: "put topic/on all brokers", method: "PUT", path: "/v1/topics/orders", header: jsonCT,
			body: `{"queues":4,"brokers":"all"}`, status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if b := jsonField(tb, body, "brokers"); b != nil {
					tb.Errorf("a standalone broker answered brokers %v", b)
				}
			}},
		{name: "put topic/named broker", method: "PUT", path: "/v1/topics/orders", header: jsonCT,
			body: `{"queues":8,"brokers":["broker-a"]}`, status: 400, code: codeUnknownBroker,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if f := jsonField(tb, body, "field"); f != "brokers" {
					tb.Errorf("field %v, want brokers", f)
				}
			}},
		{name: "put topic/brokers not all", method: "PUT", path: "/v1/topics/orders", header: jsonCT,
			body: `{"brokers":"some"}`, status: 400, code: codeInvalidJSON, invalid: true},
		{name: "put topic/no brokers", method: "PUT", path: "/v1/topics/orders", header: jsonCT,
			body: `{"brokers":[]}`, status: 400, code: codeInvalidJSON, invalid: true},
		{name: "put topic/shrink", method: "PUT", path: "/v1/topics/orders", header: jsonCT,
			body: `{"queues":3,"retention":"2h"}`, status: 400, code: broker.CodeInvalidQueues},
		{name: "put topic/negative queues", method: "PUT", path: "/v1/topics/orders", header: jsonCT,
			body: `{"queues":-1}`, status: 400, code: broker.CodeInvalidQueues, invalid: true},
		{name: "put topic/too many queues", method: "PUT", path: "/v1/topics/orders", header: jsonCT,
			body: `{"queues":5000}`, status: 400, code: broker.CodeInvalidQueues, invalid: true},
		{name: "put topic/bad retention", method: "PUT", path: "/v1/topics/orders", header: jsonCT,
			body: `{"queues":4,"retention":"soon"}`, status: 400, code: broker.CodeInvalidRetention, invalid: true},
		{name: "put topic/bad json", method: "PUT", path: "/v1/topics/orders", header: jsonCT,
			body: `{"queues":`, status: 400, code: codeInvalidJSON, invalid: true},
		{name: "put topic/unknown field", method: "PUT", path: "/v1/topics/orders", header: jsonCT,
			body: `{"partitions":4}`, status: 400, code: codeInvalidJSON, invalid: true},
		{name: "put topic/not json", method: "PUT", path: "/v1/topics/orders",
			header: map[string]string{"Content-Type": "text/plain"}, body: "queues=4",
			status: 415, code: codeUnsupportedMedia, invalid: true},
		{name: "put topic/too large", method: "PUT", path: "/v1/topics/orders", header: jsonCT,
			body: `{"retention":"` + strings.Repeat("1", 70<<10) + `h"}`, status: 413, code: codeRequestTooLarge},
		{name: "put topic/defaults", method: "PUT", path: "/v1/topics/scratch", status: 201},
		{name: "get topic", method: "GET", path: "/v1/topics/orders", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if got := jsonField(tb, body, "queue_count"); got != float64(4) {
					tb.Errorf("queue_count = %v, want 4", got)
				}
			}},
		{name: "get topic/not found", method: "GET", path: "/v1/topics/nope", status: 404, code: broker.CodeTopicNotFound},
		// A standalone broker answers a forwarded request as any other.
		{name: "get topic/forwarded", method: "GET", path: "/v1/topics/orders",
			header: map[string]string{hdrForwardedBy: "broker-b"}, status: 200},
		{name: "get topic/forwarded by no broker", method: "GET", path: "/v1/topics/orders",
			header: map[string]string{hdrForwardedBy: "not a broker!"}, status: 200, invalid: true},
		{name: "get topic/invalid name", method: "GET", path: "/v1/topics/bad!name", status: 400,
			code: broker.CodeInvalidTopic, invalid: true},
		{name: "delete topic/invalid name", method: "DELETE", path: "/v1/topics/bad!name", status: 400,
			code: broker.CodeInvalidTopic, invalid: true},
		{name: "list topics", method: "GET", path: "/v1/topics", status: 200},
		{name: "list topics/page", method: "GET", path: "/v1/topics?limit=1", status: 200,
			save: map[string]string{"topics": "next_cursor"}},
		{name: "list topics/next page", method: "GET", path: "/v1/topics?limit=1&cursor={topics}", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got struct{ Topics []topicJSON }
				if err := json.Unmarshal(body, &got); err != nil {
					t.Fatalf("decode: %v", err)
				}
				if len(got.Topics) != 1 || got.Topics[0].Name != "scratch" {
					tb.Errorf("second page = %+v, want the topic scratch", got.Topics)
				}
			}},
		{name: "list topics/bad limit", method: "GET", path: "/v1/topics?limit=0", status: 400,
			code: codeInvalidParameter, invalid: true},

		// Publish.
		{name: "publish", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Content-Type": "text/plain; charset=utf-8", "Postbus-Tag": "order.created",
				"Postbus-Keys": "order-42, customer-7", "Postbus-Sharding-Key": "customer-7",
				"Postbus-Dedup-Id": "d-1", "Postbus-Prop-Source": "web"},
			body: "order 42 created", status: 201, save: map[string]string{"id": "msg_id"}, check: noDuplicate},
		{name: "publish/duplicate", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Postbus-Dedup-Id": "d-1"}, body: "again", status: 200,
			check: func(tb testing.TB, resp *http.Response, body []byte) {
				if d := jsonField(tb, body, "duplicate"); d != true {
					tb.Errorf("duplicate = %v, want true", d)
				}
				id, _ := jsonField(tb, body, "msg_id").(string)
				if loc := resp.Header.Get("Location"); loc != "/v1/messages/"+id {
					tb.Errorf("Location = %q, want /v1/messages/%s", loc, id)
				}
			}},
		{name: "publish/delayed", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Postbus-Delay": "10s", "Postbus-Keys": "order-42"}, body: "later", status: 201,
			save: map[string]string{"delayed": "msg_id"},
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if jsonField(tb, body, "deliver_at") == nil {
					tb.Error("a delayed publish answered no deliver_at")
				}
			}},
		{name: "publish/delay level", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Postbus-Delay-Level": "3", "Postbus-Keys": "order-42"}, body: "later", status: 201},
		{name: "publish/deliver at", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Postbus-Deliver-At": "2000-01-01T00:00:00Z"}, body: "now", status: 201},
		{name: "publish/binary", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Content-Type": "application/octet-stream"}, body: "\xff\x00\xfe",
			status: 201, save: map[string]string{"bin": "msg_id"}},
		{name: "publish/cloudevent binary", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"ce-specversion": "1.0", "ce-id": "e1", "ce-source": "/shop", "ce-type": "order.created",
				"ce-tenant": "acme", "Content-Type": "application/json"}, body: `{"order":42}`, status: 201},
		{name: "publish/cloudevent structured", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Content-Type": "application/cloudevents+json"},
			body:   `{"specversion":"1.0","id":"e2","source":"/shop","type":"order.paid","time":"2026-01-02T15:04:05Z","tenant":"acme","data":{"order":42}}`, status: 201},
		{name: "publish/cloudevent without source", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Content-Type": "application/cloudevents+json"},
			body:   `{"specversion":"1.0","id":"e3","type":"order.paid","data":1}`, status: 400, code: broker.CodeInvalidCloudEvent, invalid: true},
		{name: "publish/cloudevents batch", method: "POST", path: "/v1/topics/orders/messages/batch",
			header: map[string]string{"Content-Type": "application/cloudevents-batch+json"},
			body:   `[{"specversion":"1.0","id":"e4","source":"/shop","type":"order.created","data_base64":"AAE="}]`, status: 201},
		{name: "publish/auto-create", method: "POST", path: "/v1/topics/fresh/messages", body: "hi",
			status: 201, save: map[string]string{"fresh": "msg_id"}},
		{name: "publish/invalid tag", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Postbus-Tag": "a||b"}, body: "x", status: 400, code: broker.CodeInvalidTag, invalid: true},
		{name: "publish/long tag", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Postbus-Tag": strings.Repeat("t", 128)}, body: "x", status: 400,
			code: broker.CodeInvalidTag, invalid: true},
		{name: "publish/too many keys", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Postbus-Keys": manyKeys}, body: "x", status: 400, code: broker.CodeInvalidKeys, invalid: true},
		{name: "publish/bad property name", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Postbus-Prop-Bad!": "v"}, body: "x", status: 400, code: broker.CodeInvalidProperties},
		{name: "publish/bad delay", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Postbus-Delay": "soon"}, body: "x", status: 400, code: codeInvalidHeader, invalid: true},
		{name: "publish/bad delay level", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Postbus-Delay-Level": "19"}, body: "x", status: 400, code: codeInvalidHeader, invalid: true},
		{name: "publish/two delays", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Postbus-Delay": "10s", "Postbus-Delay-Level": "2"}, body: "x",
			status: 400, code: broker.CodeInvalidDelay},
		{name: "publish/delay too long", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Postbus-Delay": "1000h"}, body: "x", status: 400, code: broker.CodeInvalidDelay},
		{name: "publish/empty body", method: "POST", path: "/v1/topics/orders/messages",
			status: 400, code: broker.CodeEmptyBody, invalid: true},
		{name: "publish/invalid topic", method: "POST", path: "/v1/topics/bad!topic/messages", body: "x",
			status: 400, code: broker.CodeInvalidTopic, invalid: true},
		{name: "publish/too large for the server", strict: true, method: "POST", path: "/v1/topics/orders/messages",
			body: strings.Repeat("b", 17), status: 413, code: broker.CodeBodyTooLarge},
		{name: "publish/too large for the broker", method: "POST", path: "/v1/topics/orders/messages",
			body: strings.Repeat("b", 600<<10), status: 413, code: broker.CodeBodyTooLarge},

		// Batch.
		{name: "batch", method: "POST", path: "/v1/topics/orders/messages/batch", header: jsonCT,
			body: batch(`{"body":"one","tag":"t","keys":["order-42"],"properties":{"source":"api"}}`,
				`{"body_base64":"AAEC","content_type":"application/octet-stream","delay":"1m"}`,
				`{"body":"two","dedup_id":"b-1"}`, `{"body":"three","dedup_id":"b-1"}`),
			status: 201,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got []publishResult
				if err := json.Unmarshal(body, &got); err != nil {
					t.Fatalf("decode: %v", err)
				}
				if len(got) != 4 || got[2].Duplicate || !got[3].Duplicate || got[3].MsgID != got[2].MsgID {
					tb.Errorf("batch results = %+v, want 4 with the last a duplicate of the third", got)
				}
			}},
		{name: "batch/bad json", method: "POST", path: "/v1/topics/orders/messages/batch", header: jsonCT,
			body: `[{"body":`, status: 400, code: codeInvalidJSON, invalid: true},
		{name: "batch/not an array", method: "POST", path: "/v1/topics/orders/messages/batch", header: jsonCT,
			body: `{"body":"x"}`, status: 400, code: codeInvalidJSON, invalid: true},
		{name: "batch/unknown field", method: "POST", path: "/v1/topics/orders/messages/batch", header: jsonCT,
			body: batch(`{"body":"x","colour":"red"}`), status: 400, code: codeInvalidJSON, invalid: true},
		{name: "batch/both bodies", method: "POST", path: "/v1/topics/orders/messages/batch", header: jsonCT,
			body: batch(`{"body":"x","body_base64":"eA=="}`), status: 400, code: broker.CodeInvalidMessage, invalid: true},
		{name: "batch/no body", method: "POST", path: "/v1/topics/orders/messages/batch", header: jsonCT,
			body: batch(`{"tag":"t"}`), status: 400, code: broker.CodeEmptyBody, invalid: true},
		{name: "batch/empty", method: "POST", path: "/v1/topics/orders/messages/batch", header: jsonCT,
			body: `[]`, status: 400, code: broker.CodeInvalidBatch, invalid: true},
		{name: "batch/bad delay", method: "POST", path: "/v1/topics/orders/messages/batch", header: jsonCT,
			body: batch(`{"body":"x","delay":"soon"}`), status: 400, code: broker.CodeInvalidDelay, invalid: true},
		{name: "batch/invalid tag", method: "POST", path: "/v1/topics/orders/messages/batch", header: jsonCT,
			body: batch(`{"body":"x"}`, `{"body":"y","tag":"a||b"}`), status: 400, code: broker.CodeInvalidTag, invalid: true},
		{name: "batch/too many", method: "POST", path: "/v1/topics/orders/messages/batch", header: jsonCT,
			body: json1001, status: 413, code: broker.CodeBatchTooLarge, invalid: true},
		{name: "batch/bodies too large", method: "POST", path: "/v1/topics/orders/messages/batch", header: jsonCT,
			body: overTotal, status: 413, code: broker.CodeBatchTooLarge},
		{name: "batch/not json", method: "POST", path: "/v1/topics/orders/messages/batch",
			header: map[string]string{"Content-Type": "text/plain"}, body: "x", status: 415,
			code: codeUnsupportedMedia, invalid: true},

		// Query.
		{name: "get message", method: "GET", path: "/v1/messages/{id}", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got messageJSON
				if err := json.Unmarshal(body, &got); err != nil {
					t.Fatalf("decode: %v", err)
				}
				want := messageJSON{Tag: "order.created", Keys: []string{"order-42", "customer-7"}, ShardingKey: "customer-7",
					DedupID: "d-1", Properties: map[string]string{"Source": "web"}, ContentType: "text/plain; charset=utf-8",
					Body: "order 42 created", Encoding: "utf8", Size: len("order 42 created")}
				got.MsgID, got.Topic, got.QueueID, got.QueueOffset, got.BornAt, got.StoredAt = "", "", 0, 0, "", ""
				if !reflect.DeepEqual(got, want) {
					tb.Errorf("message = %+v\nwant %+v", got, want)
				}
			}},
		{name: "get message/binary", method: "GET", path: "/v1/messages/{bin}", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if e, b := jsonField(tb, body, "encoding"), jsonField(tb, body, "body"); e != "base64" || b != "/wD+" {
					tb.Errorf("encoding %v body %v, want base64 /wD+", e, b)
				}
			}},
		{name: "get message/not found", method: "GET", path: "/v1/messages/AAAAAAAAAAAAAAAAAAAAAA", status: 404,
			code: broker.CodeMessageNotFound},
		{name: "get message/bad id", method: "GET", path: "/v1/messages/not-an-id", status: 400,
			code: broker.CodeInvalidMessageID, invalid: true},
		{name: "get body", method: "GET", path: "/v1/messages/{id}/body", status: 200,
			check: func(tb testing.TB, resp *http.Response, body []byte) {
				if string(body) != "order 42 created" || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
					tb.Errorf("body %q with Content-Type %q, want the published ones", body, resp.Header.Get("Content-Type"))
				}
			}},
		{name: "get body/binary", method: "GET", path: "/v1/messages/{bin}/body", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if string(body) != "\xff\x00\xfe" {
					tb.Errorf("body %q, want the published bytes", body)
				}
			}},
		{name: "get body/not found", method: "GET", path: "/v1/messages/AAAAAAAAAAAAAAAAAAAAAA/body", status: 404,
			code: broker.CodeMessageNotFound},
		{name: "get body/bad id", method: "GET", path: "/v1/messages/not-an-id/body", status: 400,
			code: broker.CodeInvalidMessageID, invalid: true},
		{name: "by key", method: "GET", path: "/v1/topics/orders/messages?key=customer-7", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if msgs, _ := jsonField(tb, body, "messages").([]any); len(msgs) != 1 {
					tb.Errorf("%d messages with key customer-7, want 1", len(msgs))
				}
			}},
		{name: "by key/page", method: "GET", path: "/v1/topics/orders/messages?key=order-42&limit=2", status: 200,
			save: map[string]string{"cursor": "next_cursor"}},
		{name: "by key/next page", method: "GET", path: "/v1/topics/orders/messages?key=order-42&limit=2&cursor={cursor}",
			status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				// order-42 is on the first publish, the delayed two and the batch's first.
				if msgs, _ := jsonField(tb, body, "messages").([]any); len(msgs) != 2 {
					tb.Errorf("%d messages on the second page, want 2", len(msgs))
				}
				if c := jsonField(tb, body, "next_cursor"); c != nil {
					tb.Errorf("next_cursor = %v on the last page", c)
				}
			}},
		{name: "by key/no key", method: "GET", path: "/v1/topics/orders/messages", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "by key/bad limit", method: "GET", path: "/v1/topics/orders/messages?key=k&limit=0", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "by key/bad cursor", method: "GET", path: "/v1/topics/orders/messages?key=k&cursor=abc", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "by key/long key", method: "GET", path: "/v1/topics/orders/messages?key=" + strings.Repeat("k", 257),
			status: 400, code: broker.CodeInvalidKey, invalid: true},
		{name: "by key/unknown topic", method: "GET", path: "/v1/topics/nope/messages?key=k", status: 404,
			code: broker.CodeTopicNotFound},
	}
	exchanges = append(exchanges, consumeExchanges(env)...)
	exchanges = append(exchanges, pullExchanges(env)...)
	exchanges = append(exchanges, txnExchanges()...)
	exchanges = append(exchanges, ackTokenExchanges()...)
	exchanges = append(exchanges, nameServerExchanges(env)...)
	exchanges = append(exchanges, []exchange{
		// Delete.
		{name: "delete topic", method: "DELETE", path: "/v1/topics/fresh", status: 204},
		{name: "delete topic/again", method: "DELETE", path: "/v1/topics/fresh", status: 404, code: broker.CodeTopicNotFound},
		{name: "get message/of a deleted topic", method: "GET", path: "/v1/messages/{fresh}", status: 404,
			code: broker.CodeMessageNotFound},
	}...)

	seen := make(contractSeen)
	env.run(t, exchanges, make(map[string]string), seen)

	// Every operation was exercised; statuses documented but never seen
	// are reported, since they are the ones the contract cannot vouch for.
	// Refusals (401, 403, 429) are TestContractAuthTraffic's to answer.
	for path, item := range env.doc.Paths.Map() {
		for method, op := range item.Operations() {
			if seen[op.OperationID] == nil {
				t.Errorf("%s %s (%s) was never exercised", method, path, op.OperationID)
				continue
			}
			var unseen []string
			for status := range op.Responses.Map() {
				n, err := strconv.Atoi(status)
				if err == nil && !seen[op.OperationID][n] && n != 401 && n != 403 && n != 429 {
					unseen = append(unseen, status)
				}
			}
			slices.Sort(unseen)
			if len(unseen) > 0 {
				t.Logf("%s: documented but not exercised: %s", op.OperationID, strings.Join(unseen, " "))
			}
		}
	}
}

// The access kinds the router knows, and whether each can refuse a valid
// token (403). A "token" route lets any valid token in and narrows its
// answer instead: a message outside the token's scope is a 404, not a 403.
func refusesValidTokens(tb testing.TB, access string) bool {
	tb.Helper()
	switch {
	case access == "open", access == "token":
		return false
	case access == "admin", strings.HasPrefix(access, "publish:"), strings.HasPrefix(access, "publish|subscribe:"), strings.HasPrefix(access, "subscribe:"), strings.HasPrefix(access, "consume:"):
		return true
	}
	tb.Errorf("unknown access %q: say here whether it can answer 403", access)
	return true
}

// refusedByHandler lists the routes whose handler, not their access
// check, can refuse a valid token, with the 403 response they document.
// POST /v1/subscriptions lets any token in because the group it needs
// consume on and the topic it needs subscribe on are in the body: it
// answers 403 once it has read the body,
// without the access check's WWW-Authenticate.
var refusedByHandler = map[string]string{
	"POST /v1/subscriptions": "#/components/responses/ForbiddenGroup",
	// Deciding a transaction needs publish on its topic, known once the
	// transaction is read.
	"POST /v1/transactions/{transaction_id}/commit":   "#/components/responses/ForbiddenTransaction",
	"POST /v1/transactions/{transaction_id}/rollback": "#/components/responses/ForbiddenTransaction",
}

// securityOf renders an operation's security requirements, nil when it
// declares none: "[]" for explicitly none, "[{} {bearerAuth}]" for optional.
func securityOf(op *openapi3.Operation) []string {
	if op.Security == nil {
		return nil
	}
	out := []string{}
	for _, req := range *op.Security {
		names := slices.Sorted(maps.Keys(req))
		out = append(out, "{"+strings.Join(names, " ")+"}")
	}
	return out
}

func TestContractAccess(t *testing.T) {
	doc := loadContract(t)
	type documented struct {
		access string
		op     *openapi3.Operation
	}
	ops := make(map[string]documented) // "GET /path" -> its operation
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			a, ok := op.Extensions["x-postbus-access"].(string)
			if !ok {
				t.Errorf("%s %s: x-postbus-access is %v (%T), want a string", method, path, op.Extensions["x-postbus-access"], op.Extensions["x-postbus-access"])
			}
			ops[method+" "+path] = documented{a, op}
		}
	}
	// `postbus dev`'s routes: the broker's and the name server's.
	plain := mustNew(t, Config{NameServer: newContractRegistry()}).Access()
	guarded := mustNew(t, Config{NameServer: newContractRegistry(), MetricsAuth: true}).Access()
	if len(plain) == 0 || len(plain) != len(ops) {
		t.Fatalf("the router decides access for %d routes, the document lists %d operations", len(plain), len(ops))
	}
	if got := guarded["GET /metrics"]; got != "admin" {
		t.Errorf("with MetricsAuth, GET /metrics needs %q, want admin", got)
	}
	for route := range refusedByHandler {
		if _, ok := plain[route]; !ok {
			t.Errorf("refusedByHandler lists %s, which no route serves", route)
		}
	}

	for route, access := range plain {
		t.Run(route, func(t *testing.T) {
			d, ok := ops[route]
			if !ok {
				t.Fatalf("not in openapi.yaml")
			}
			if d.access != access {
				t.Errorf("x-postbus-access is %q, the router's decision is %q", d.access, access)
			}
			// A route whose access depends on the configuration (/metrics)
			// is documented as it is by default, with the token optional.
			optional := guarded[route] != access
			wantSecurity := []string{"{bearerAuth}"}
			switch {
			case optional:
				wantSecurity = []string{"{}", "{bearerAuth}"}
			case access == "open":
				wantSecurity = []string{}
			}
			if got := securityOf(d.op); !slices.Equal(got, wantSecurity) {
				t.Errorf("security is %v, want %v", got, wantSecurity)
			}
			forbidden, byHandler := refusedByHandler[route]
			if !byHandler {
				forbidden = "#/components/responses/Forbidden"
			}
			for _, want := range []struct {
				status   int
				ref      string
				declared bool
			}{
				{401, "#/components/responses/Unauthorized", access != "open" || optional},
				{403, forbidden, byHandler || refusesValidTokens(t, access) || refusesValidTokens(t, guarded[route])},
			} {
				resp := d.op.Responses.Status(want.status)
				switch {
				case want.declared && resp == nil:
					t.Errorf("no %d response: the route can answer it", want.status)
				case want.declared && resp.Ref != want.ref:
					t.Errorf("the %d response is %q, want %s", want.status, resp.Ref, want.ref)
				case !want.declared && resp != nil:
					t.Errorf("a %d response is documented, but the route never answers it", want.status)
				}
			}
		})
	}
}

// contractToken mints an HS256 token with the auth env's secret.
func contractToken(tb testing.TB, claims jwt.MapClaims) string {
	tb.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(contractSecret)
	if err != nil {
		tb.Fatalf("sign token: %v", err)
	}
	return tok
}

// mergeHeaders merges header sets; later ones win.
func mergeHeaders(hs ...map[string]string) map[string]string {
	out := make(map[string]string)
	for _, h := range hs {
		maps.Copy(out, h)
	}
	return out
}

func bearerHeader(tok string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + tok}
}

// refusedWith checks a 401 or 403's WWW-Authenticate and detail.
func refusedWith(wwwAuth, detail string) func(tb testing.TB, resp *http.Response, body []byte) {
	return func(tb testing.TB, resp *http.Response, body []byte) {
		if got := resp.Header.Get("WWW-Authenticate"); got != wwwAuth {
			tb.Errorf("WWW-Authenticate = %q, want %q", got, wwwAuth)
		}
		if d, _ := jsonField(tb, body, "detail").(string); !strings.Contains(d, detail) {
			tb.Errorf("detail %q does not say %q", d, detail)
		}
	}
}

// wantListed checks the field of each item of a list answer's array.
func wantListed(array, field string, want ...string) func(tb testing.TB, resp *http.Response, body []byte) {
	return func(tb testing.TB, _ *http.Response, body []byte) {
		items, ok := jsonField(tb, body, array).([]any)
		if !ok {
			tb.Fatalf("the answer has no array %s\n%s", array, clip(body))
		}
		got := []string{}
		for _, it := range items {
			v, _ := it.(map[string]any)[field].(string)
			got = append(got, v)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			tb.Errorf("%s with %s %v, want %v", array, field, got, want)
		}
	}
}

// wantTopics checks a topic list's names.
func wantTopics(want ...string) func(tb testing.TB, resp *http.Response, body []byte) {
	return func(tb testing.TB, _ *http.Response, body []byte) {
		var got struct{ Topics []topicJSON }
		if err := json.Unmarshal(body, &got); err != nil {
			tb.Fatalf("topic list: %v", err)
		}
		names := []string{}
		for _, tp := range got.Topics {
			names = append(names, tp.Name)
		}
		if !slices.Equal(names, want) {
			tb.Errorf("topics %v, want %v", names, want)
		}
	}
}

// TestContractAuthTraffic records traffic through a broker that checks
// tokens and limits the publish rate: refusals (401, 403, 429) must match
// the document as the answers to authorized requests do.
func TestContractAuthTraffic(t *testing.T) {
	env := newAuthContractEnv(t)
	now := time.Now()
	exp := now.Add(time.Hour).Unix()
	admin := bearerHeader(contractToken(t, jwt.MapClaims{"sub": "ops", "scope": "admin", "exp": exp}))
	orders := bearerHeader(contractToken(t, jwt.MapClaims{"sub": "checkout", "scope": "publish:orders*", "exp": exp}))
	payments := bearerHeader(contractToken(t, jwt.MapClaims{"sub": "billing", "scope": "publish:payments consume:*", "exp": exp}))
	consumer := bearerHeader(contractToken(t, jwt.MapClaims{"sub": "reader", "scope": "consume:*", "exp": exp}))
	billing := bearerHeader(contractToken(t, jwt.MapClaims{"sub": "ledger", "scope": "consume:billing*", "exp": exp}))
	// A consumer that may read orders: subscribe on the topic as well as
	// consume on its groups.
	reader := bearerHeader(contractToken(t, jwt.MapClaims{"sub": "ledger", "scope": "consume:billing* subscribe:orders", "exp": exp}))
	subscriber := bearerHeader(contractToken(t, jwt.MapClaims{"sub": "audit", "scope": "subscribe:orders", "exp": exp}))
	otherKey, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"scope": "admin", "exp": exp}).
		SignedString([]byte(strings.Repeat("z", 32)))
	if err != nil {
		t.Fatal(err)
	}
	unsigned, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"scope": "admin", "exp": exp}).
		SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	jsonCT := map[string]string{"Content-Type": "application/json"}
	const heartbeat = `{"name":"broker-a","addr":"http://10.0.0.7:8080","topics":[{"name":"orders","queues":2}]}`
	const patch = `{"addr":"http://10.0.0.7:8080","put":[{"name":"invoices","queues":1}],"removed":[]}`
	const (
		noToken   = `Bearer realm="postbus"`
		badToken  = `Bearer realm="postbus", error="invalid_token"`
		badScope  = `Bearer realm="postbus", error="insufficient_scope"`
		needToken = "needs a bearer token"
	)
	unauthorized := func(name, method, path string, hdr map[string]string, body string) exchange {
		// Without a bearer token the request breaks the document's security.
		return exchange{name: name, method: method, path: path, header: hdr, body: body, status: 401,
			code: codeUnauthorized, invalid: true, check: refusedWith(noToken, needToken)}
	}
	forbidden := func(name, method, path string, hdr map[string]string, body, needed string) exchange {
		return exchange{name: name, method: method, path: path, header: hdr, body: body, status: 403,
			code: codeForbidden, check: refusedWith(badScope, needed+" is needed")}
	}
	invalidToken := func(name, tok, why string) exchange {
		return exchange{name: name, method: "POST", path: "/v1/topics/orders/messages", header: bearerHeader(tok), body: "x",
			status: 401, code: codeUnauthorized, check: refusedWith(badToken, why)}
	}

	exchanges := []exchange{
		// Open routes need no token.
		{name: "healthz", method: "GET", path: "/healthz", status: 200},
		{name: "readyz", method: "GET", path: "/readyz", status: 200},
		{name: "metrics", method: "GET", path: "/metrics", status: 200},
		{name: "openapi.yaml", method: "GET", path: "/openapi.yaml", status: 200},
		// --metrics-auth: the token is optional in the document, so a
		// request without one is valid; the server wants admin.
		{name: "metrics-auth/no token", metricsAuth: true, method: "GET", path: "/metrics", status: 401,
			code: codeUnauthorized, check: refusedWith(noToken, needToken)},
		{name: "metrics-auth/publish token", metricsAuth: true, method: "GET", path: "/metrics", header: orders,
			status: 403, code: codeForbidden, check: refusedWith(badScope, "admin is needed")},
		{name: "metrics-auth/admin", metricsAuth: true, method: "GET", path: "/metrics", header: admin, status: 200},

		// Topics: admin creates and deletes; publish on a topic inspects it.
		unauthorized("put topic/no token", "PUT", "/v1/topics/orders", jsonCT, `{"queues":2}`),
		unauthorized("sync/no token", "POST", "/v1/internal/subscriptions/sync", jsonCT, `{"from":"b","topics":{}}`),
		forbidden("sync/consume token", "POST", "/v1/internal/subscriptions/sync", mergeHeaders(jsonCT, consumer), `{"from":"b","topics":{}}`, "admin"),
		forbidden("put topic/publish token", "PUT", "/v1/topics/orders", mergeHeaders(jsonCT, orders), `{"queues":2}`, "admin"),
		{name: "put topic/admin", method: "PUT", path: "/v1/topics/orders", header: mergeHeaders(jsonCT, admin),
			body: `{"queues":2}`, status: 201},
		{name: "put topic/admin again", method: "PUT", path: "/v1/topics/payments", header: admin, status: 201},
		unauthorized("get topic/no token", "GET", "/v1/topics/orders", nil, ""),
		forbidden("get topic/other topic", "GET", "/v1/topics/orders", payments, "", "publish|subscribe:{topic}"),
		// A refusal comes before the lookup: it says nothing of existence.
		forbidden("get topic/other missing topic", "GET", "/v1/topics/nope", payments, "", "publish|subscribe:{topic}"),
		forbidden("get topic/consume token", "GET", "/v1/topics/orders", billing, "", "publish|subscribe:{topic}"),
		{name: "get topic/in scope", method: "GET", path: "/v1/topics/orders", header: orders, status: 200},
		{name: "get topic/subscribe token", method: "GET", path: "/v1/topics/orders", header: subscriber, status: 200},
		{name: "get topic/glob", method: "GET", path: "/v1/topics/orders.eu", header: orders, status: 404,
			code: broker.CodeTopicNotFound},
		unauthorized("list topics/no token", "GET", "/v1/topics", nil, ""),
		{name: "list topics/admin", method: "GET", path: "/v1/topics", header: admin, status: 200,
			check: wantTopics("orders", "payments")},
		{name: "list topics/publish token", method: "GET", path: "/v1/topics", header: payments, status: 200,
			check: wantTopics("payments")},
		{name: "list topics/consume token", method: "GET", path: "/v1/topics", header: consumer, status: 200,
			check: wantTopics()},
		unauthorized("delete topic/no token", "DELETE", "/v1/topics/payments", nil, ""),
		forbidden("delete topic/publish token", "DELETE", "/v1/topics/payments", payments, "", "admin"),

		// Publish.
		unauthorized("publish/no token", "POST", "/v1/topics/orders/messages", nil, "x"),
		unauthorized("publish/basic auth", "POST", "/v1/topics/orders/messages",
			map[string]string{"Authorization": "Basic dXNlcjpwYXNz"}, "x"),
		invalidToken("publish/malformed token", "not-a-jwt", "malformed"),
		invalidToken("publish/other key", otherKey, "signature does not verify"),
		invalidToken("publish/alg none", unsigned, "signature does not verify"),
		invalidToken("publish/expired", contractToken(t, jwt.MapClaims{"scope": "admin", "exp": now.Add(-time.Hour).Unix()}), "expired"),
		invalidToken("publish/not valid yet", contractToken(t, jwt.MapClaims{"scope": "admin", "exp": exp, "nbf": now.Add(time.Hour).Unix()}), "not valid yet"),
		invalidToken("publish/no exp", contractToken(t, jwt.MapClaims{"scope": "admin"}), "no exp"),
		forbidden("publish/other topic", "POST", "/v1/topics/orders/messages", payments, "x", "publish:{topic}"),
		forbidden("publish/consume token", "POST", "/v1/topics/orders/messages", consumer, "x", "publish:{topic}"),
		{name: "publish/in scope", method: "POST", path: "/v1/topics/orders/messages",
			header: mergeHeaders(orders, map[string]string{"Postbus-Keys": "k-1"}), body: "x", status: 201,
			save: map[string]string{"id": "msg_id"}},
		{name: "publish/admin", method: "POST", path: "/v1/topics/payments/messages", header: admin, body: "x", status: 201},
		unauthorized("batch/no token", "POST", "/v1/topics/orders/messages/batch", jsonCT, `[{"body":"x"}]`),
		forbidden("batch/other topic", "POST", "/v1/topics/orders/messages/batch", mergeHeaders(jsonCT, payments), `[{"body":"x"}]`, "publish:{topic}"),
		{name: "batch/in scope", method: "POST", path: "/v1/topics/orders/messages/batch", header: mergeHeaders(jsonCT, orders),
			body: `[{"body":"x","keys":["k-1"]}]`, status: 201},

		// Query: a message outside the token's scope is as good as missing.
		unauthorized("by key/no token", "GET", "/v1/topics/orders/messages?key=k-1", nil, ""),
		forbidden("by key/other topic", "GET", "/v1/topics/orders/messages?key=k-1", payments, "", "publish|subscribe:{topic}"),
		forbidden("by key/consume token", "GET", "/v1/topics/orders/messages?key=k-1", billing, "", "publish|subscribe:{topic}"),
		{name: "by key/subscribe token", method: "GET", path: "/v1/topics/orders/messages?key=k-1", header: subscriber, status: 200},
		{name: "by key/in scope", method: "GET", path: "/v1/topics/orders/messages?key=k-1", header: orders, status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if msgs, _ := jsonField(tb, body, "messages").([]any); len(msgs) != 2 {
					tb.Errorf("%d messages with key k-1, want 2 (nothing refused was stored)", len(msgs))
				}
			}},
		unauthorized("get message/no token", "GET", "/v1/messages/{id}", nil, ""),
		{name: "get message/other topic", method: "GET", path: "/v1/messages/{id}", header: payments, status: 404,
			code: broker.CodeMessageNotFound},
		{name: "get message/in scope", method: "GET", path: "/v1/messages/{id}", header: orders, status: 200},
		{name: "get message/subscribe token", method: "GET", path: "/v1/messages/{id}", header: subscriber, status: 200},
		{name: "get message/admin", method: "GET", path: "/v1/messages/{id}", header: admin, status: 200},
		unauthorized("get body/no token", "GET", "/v1/messages/{id}/body", nil, ""),
		{name: "get body/other topic", method: "GET", path: "/v1/messages/{id}/body", header: payments, status: 404,
			code: broker.CodeMessageNotFound},
		{name: "get body/in scope", method: "GET", path: "/v1/messages/{id}/body", header: orders, status: 200},

		// Subscriptions: any token may ask, and sees only the groups it may
		// consume as; creating one needs consume on the body's group.
		unauthorized("create subscription/no token", "POST", "/v1/subscriptions", jsonCT, `{"group":"billing","topic":"orders"}`),
		{name: "create subscription/publish token", method: "POST", path: "/v1/subscriptions", header: mergeHeaders(jsonCT, orders),
			body: `{"group":"billing","topic":"orders"}`, status: 403, code: codeForbidden,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				// Refused before its body is read: the token may consume
				// as no group at all.
				if f, d := jsonField(tb, body, "field"), jsonField(tb, body, "detail"); f != "group" || !strings.Contains(d.(string), "consume:") {
					tb.Errorf("field %v detail %v, want the group's scope named", f, d)
				}
			}},
		{name: "create subscription/other group", method: "POST", path: "/v1/subscriptions", header: mergeHeaders(jsonCT, billing),
			body: `{"group":"audit","topic":"nope"}`, status: 403, code: codeForbidden},
		// consume on the group alone does not let a token read a topic.
		{name: "create subscription/consume token", method: "POST", path: "/v1/subscriptions", header: mergeHeaders(jsonCT, billing),
			body: `{"group":"billing","topic":"orders","url":"http://127.0.0.1:9/hook"}`, status: 403, code: codeForbidden,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				// Refused before its body is read: the token may subscribe
				// to no topic at all.
				if f, d := jsonField(tb, body, "field"), jsonField(tb, body, "detail"); f != "topic" || !strings.Contains(d.(string), "subscribe:") {
					tb.Errorf("field %v detail %v, want the topic's scope named", f, d)
				}
			}},
		{name: "create subscription/subscribe token", method: "POST", path: "/v1/subscriptions", header: mergeHeaders(jsonCT, subscriber),
			body: `{"group":"billing","topic":"orders"}`, status: 403, code: codeForbidden},
		{name: "create subscription/in scope", method: "POST", path: "/v1/subscriptions", header: mergeHeaders(jsonCT, reader),
			body: `{"group":"billing","topic":"orders","url":"http://127.0.0.1:9/hook"}`, status: 201, save: map[string]string{"sub": "id"}},
		{name: "create subscription/admin", method: "POST", path: "/v1/subscriptions", header: mergeHeaders(jsonCT, admin),
			body: `{"group":"audit","topic":"orders"}`, status: 201},
		unauthorized("list subscriptions/no token", "GET", "/v1/subscriptions", nil, ""),
		{name: "list subscriptions/consume token", method: "GET", path: "/v1/subscriptions", header: billing, status: 200,
			check: wantListed("subscriptions", "group", "billing")},
		{name: "list subscriptions/admin", method: "GET", path: "/v1/subscriptions", header: admin, status: 200,
			check: wantListed("subscriptions", "group", "audit", "billing")},
		{name: "list subscriptions/publish token", method: "GET", path: "/v1/subscriptions", header: orders, status: 200,
			check: wantListed("subscriptions", "group")},
		unauthorized("get subscription/no token", "GET", "/v1/subscriptions/{sub}", nil, ""),
		{name: "get subscription/in scope", method: "GET", path: "/v1/subscriptions/{sub}", header: billing, status: 200},
		{name: "get subscription/other group", method: "GET", path: "/v1/subscriptions/{sub}", header: orders, status: 404,
			code: broker.CodeSubscriptionNotFound},
		unauthorized("patch subscription/no token", "PATCH", "/v1/subscriptions/{sub}", jsonCT, `{"ordered":true}`),
		{name: "patch subscription/consume all", method: "PATCH", path: "/v1/subscriptions/{sub}", header: mergeHeaders(jsonCT, payments),
			body: `{"ordered":true}`, status: 200},
		{name: "patch subscription/not consuming", method: "PATCH", path: "/v1/subscriptions/{sub}", header: mergeHeaders(jsonCT, orders),
			body: `{"ordered":true}`, status: 404, code: broker.CodeSubscriptionNotFound},
		unauthorized("pause/no token", "POST", "/v1/subscriptions/{sub}/pause", nil, ""),
		{name: "pause/not consuming", method: "POST", path: "/v1/subscriptions/{sub}/pause", header: orders, status: 404,
			code: broker.CodeSubscriptionNotFound},
		{name: "pause/in scope", method: "POST", path: "/v1/subscriptions/{sub}/pause", header: billing, status: 200},
		unauthorized("resume/no token", "POST", "/v1/subscriptions/{sub}/resume", nil, ""),
		{name: "resume/not consuming", method: "POST", path: "/v1/subscriptions/{sub}/resume", header: orders, status: 404,
			code: broker.CodeSubscriptionNotFound},
		{name: "resume/in scope", method: "POST", path: "/v1/subscriptions/{sub}/resume", header: billing, status: 200},
		unauthorized("rotate secret/no token", "POST", "/v1/subscriptions/{sub}/rotate-secret", nil, ""),
		{name: "rotate secret/not consuming", method: "POST", path: "/v1/subscriptions/{sub}/rotate-secret", header: orders,
			status: 404, code: broker.CodeSubscriptionNotFound},
		{name: "rotate secret/in scope", method: "POST", path: "/v1/subscriptions/{sub}/rotate-secret", header: billing, status: 200},

		// Groups: consume on the path's group.
		unauthorized("list groups/no token", "GET", "/v1/groups", nil, ""),
		{name: "list groups/consume token", method: "GET", path: "/v1/groups", header: billing, status: 200,
			check: wantListed("groups", "name", "billing")},
		{name: "list groups/admin", method: "GET", path: "/v1/groups", header: admin, status: 200,
			check: wantListed("groups", "name", "audit", "billing")},
		unauthorized("get group/no token", "GET", "/v1/groups/billing", nil, ""),
		forbidden("get group/other group", "GET", "/v1/groups/audit", billing, "", "consume:{group}"),
		forbidden("get group/publish token", "GET", "/v1/groups/billing", orders, "", "consume:{group}"),
		// A refusal comes before the lookup: it says nothing of existence.
		forbidden("get group/other missing group", "GET", "/v1/groups/ghost", billing, "", "consume:{group}"),
		{name: "get group/in scope", method: "GET", path: "/v1/groups/billing", header: billing, status: 200},
		{name: "get group/glob", method: "GET", path: "/v1/groups/billing.eu", header: billing, status: 404,
			code: broker.CodeGroupNotFound},
		unauthorized("reset offsets/no token", "POST", "/v1/groups/billing/offsets/reset", jsonCT, `{"topic":"orders","to":"earliest"}`),
		forbidden("reset offsets/other group", "POST", "/v1/groups/audit/offsets/reset", mergeHeaders(jsonCT, billing),
			`{"topic":"orders","to":"earliest"}`, "consume:{group}"),
		{name: "reset offsets/in scope", method: "POST", path: "/v1/groups/billing/offsets/reset", header: mergeHeaders(jsonCT, billing),
			body: `{"topic":"orders","to":"earliest"}`, status: 200},
		unauthorized("dlq/no token", "GET", "/v1/groups/billing/dlq", nil, ""),
		forbidden("dlq/other group", "GET", "/v1/groups/audit/dlq", billing, "", "consume:{group}"),
		{name: "dlq/in scope", method: "GET", path: "/v1/groups/billing/dlq", header: billing, status: 200},
		unauthorized("redrive/no token", "POST", "/v1/groups/billing/dlq/redrive", jsonCT, `{"all":true}`),
		forbidden("redrive/other group", "POST", "/v1/groups/audit/dlq/redrive", mergeHeaders(jsonCT, billing), `{"all":true}`,
			"consume:{group}"),
		{name: "redrive/in scope", method: "POST", path: "/v1/groups/billing/dlq/redrive", header: mergeHeaders(jsonCT, billing),
			body: `{"all":true}`, status: 200},
		unauthorized("purge/no token", "DELETE", "/v1/groups/billing/dlq", nil, ""),
		forbidden("purge/publish token", "DELETE", "/v1/groups/billing/dlq", orders, "", "consume:{group}"),
		{name: "purge/admin", method: "DELETE", path: "/v1/groups/billing/dlq", header: admin, status: 200},

		// Traces are narrowed as messages are: by publish scope.
		unauthorized("trace/no token", "GET", "/v1/messages/{id}/trace", nil, ""),
		{name: "trace/consume token", method: "GET", path: "/v1/messages/{id}/trace", header: billing, status: 404,
			code: broker.CodeMessageNotFound},
		{name: "trace/in scope", method: "GET", path: "/v1/messages/{id}/trace", header: orders, status: 200},
		{name: "jwks/no token", method: "GET", path: "/.well-known/jwks.json", status: 404, code: codeNotFound},

		// Pulls: consume on the path's group and subscribe on its topic;
		// acks and nacks: consume on the path's group.
		unauthorized("pull/no token", "POST", "/v1/groups/billing.pull/topics/orders/pull", nil, ""),
		forbidden("pull/other group", "POST", "/v1/groups/audit/topics/orders/pull", reader, "", "consume:{group} subscribe:{topic}"),
		forbidden("pull/publish token", "POST", "/v1/groups/billing.pull/topics/orders/pull", orders, "", "consume:{group} subscribe:{topic}"),
		forbidden("pull/consume token", "POST", "/v1/groups/billing.pull/topics/orders/pull", billing, "", "consume:{group} subscribe:{topic}"),
		forbidden("pull/subscribe token", "POST", "/v1/groups/billing.pull/topics/orders/pull", subscriber, "", "consume:{group} subscribe:{topic}"),
		{name: "pull/in scope", method: "POST", path: "/v1/groups/billing.pull/topics/orders/pull?max=2", header: reader,
			status: 200, save: map[string]string{"a1": "messages.0.receipt", "a2": "messages.1.receipt"}},
		unauthorized("ack/no token", "POST", "/v1/groups/billing.pull/ack", jsonCT, `{"receipts":["{a1}"]}`),
		forbidden("ack/other group", "POST", "/v1/groups/audit/ack", mergeHeaders(jsonCT, billing), `{"receipts":["{a1}"]}`,
			"consume:{group}"),
		{name: "ack/in scope", method: "POST", path: "/v1/groups/billing.pull/ack", header: mergeHeaders(jsonCT, billing),
			body: `{"receipts":["{a1}"]}`, status: 200},
		// A change of visibility: as an ack.
		unauthorized("visibility/no token", "POST", "/v1/groups/billing.pull/visibility", jsonCT, `{"receipts":["{a2}"],"visibility":"1m"}`),
		forbidden("visibility/other group", "POST", "/v1/groups/audit/visibility", mergeHeaders(jsonCT, billing),
			`{"receipts":["{a2}"],"visibility":"1m"}`, "consume:{group}"),
		{name: "visibility/in scope", method: "POST", path: "/v1/groups/billing.pull/visibility", header: mergeHeaders(jsonCT, billing),
			body: `{"receipts":["{a2}"],"visibility":"1m"}`, status: 200},
		unauthorized("nack/no token", "POST", "/v1/groups/billing.pull/nack", jsonCT, `{"receipts":["{a2}"]}`),
		forbidden("nack/other group", "POST", "/v1/groups/audit/nack", mergeHeaders(jsonCT, billing), `{"receipts":["{a2}"]}`,
			"consume:{group}"),
		{name: "nack/in scope", method: "POST", path: "/v1/groups/billing.pull/nack", header: mergeHeaders(jsonCT, billing),
			body: `{"receipts":["{a2}"],"delay":"1m"}`, status: 200},
		// Reading a queue by offset: subscribe on the path's topic.
		unauthorized("read queue/no token", "GET", "/v1/topics/orders/queues/0/messages", nil, ""),
		forbidden("read queue/other topic", "GET", "/v1/topics/orders/queues/0/messages", payments, "", "subscribe:{topic}"),
		forbidden("read queue/consume token", "GET", "/v1/topics/orders/queues/0/messages", billing, "", "subscribe:{topic}"),
		forbidden("read queue/publish token", "GET", "/v1/topics/orders/queues/0/messages", orders, "", "subscribe:{topic}"),
		{name: "read queue/subscribe token", method: "GET", path: "/v1/topics/orders/queues/0/messages", header: subscriber, status: 200},

		unauthorized("delete subscription/no token", "DELETE", "/v1/subscriptions/{sub}", nil, ""),
		{name: "delete subscription/not consuming", method: "DELETE", path: "/v1/subscriptions/{sub}", header: orders,
			status: 404, code: broker.CodeSubscriptionNotFound},
		{name: "delete subscription/in scope", method: "DELETE", path: "/v1/subscriptions/{sub}", header: billing, status: 204},

		// The name server: admin registers and unregisters brokers (as a
		// broker does with --namesrv-token); any token looks routes up.
		unauthorized("heartbeat/no token", "POST", "/v1/brokers/heartbeat", jsonCT, heartbeat),
		forbidden("heartbeat/publish token", "POST", "/v1/brokers/heartbeat", mergeHeaders(jsonCT, orders), heartbeat, "admin"),
		{name: "heartbeat/admin", method: "POST", path: "/v1/brokers/heartbeat", header: mergeHeaders(jsonCT, admin),
			body: heartbeat, status: 200},
		unauthorized("patch broker/no token", "PATCH", "/v1/brokers/broker-a", jsonCT, patch),
		forbidden("patch broker/publish token", "PATCH", "/v1/brokers/broker-a", mergeHeaders(jsonCT, orders), patch, "admin"),
		{name: "patch broker/admin", method: "PATCH", path: "/v1/brokers/broker-a", header: mergeHeaders(jsonCT, admin),
			body: patch, status: 200},
		unauthorized("route/no token", "GET", "/v1/routes/orders", nil, ""),
		{name: "route/consume token", method: "GET", path: "/v1/routes/orders", header: consumer, status: 200},
		unauthorized("cluster/no token", "GET", "/v1/cluster", nil, ""),
		unauthorized("stats/no token", "GET", "/v1/stats", nil, ""),
		{name: "stats/publish token", method: "GET", path: "/v1/stats", header: payments, status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got statsJSON
				decodeAnswer(tb, body, &got)
				for _, ts := range got.Topics {
					if ts.Topic != "payments" {
						tb.Errorf("a payments token sees topic %s's series", ts.Topic)
					}
				}
			}},
		{name: "cluster/publish token", method: "GET", path: "/v1/cluster", header: payments, status: 200,
			check: wantListed("brokers", "name", "broker-a")},
		unauthorized("unregister/no token", "DELETE", "/v1/brokers/broker-a", nil, ""),
		forbidden("unregister/consume token", "DELETE", "/v1/brokers/broker-a", consumer, "", "admin"),
		// A refusal comes before the lookup: it says nothing of existence.
		forbidden("unregister/unknown broker", "DELETE", "/v1/brokers/ghost", orders, "", "admin"),
		{name: "unregister/admin", method: "DELETE", path: "/v1/brokers/broker-a", header: admin, status: 204},

		// A replica group's membership needs admin (a standalone broker
		// then says it is in none).
		unauthorized("replicas/no token", "GET", "/v1/replicas", nil, ""),
		forbidden("replicas/publish token", "GET", "/v1/replicas", orders, "", "admin"),
		{name: "replicas/admin", method: "GET", path: "/v1/replicas", header: admin, status: 404, code: codeNotReplicated},
		unauthorized("add replica/no token", "POST", "/v1/replicas", jsonCT, `{"id":"n4","addr":"127.0.0.1:7004"}`),
		forbidden("add replica/consume token", "POST", "/v1/replicas", mergeHeaders(jsonCT, consumer), `{"id":"n4","addr":"127.0.0.1:7004"}`, "admin"),
		unauthorized("remove replica/no token", "DELETE", "/v1/replicas/n2", nil, ""),
		forbidden("remove replica/publish token", "DELETE", "/v1/replicas/n2", orders, "", "admin"),

		{name: "delete topic/admin", method: "DELETE", path: "/v1/topics/payments", header: admin, status: 204},

		// Producer groups and the list of transactions are the operators';
		// a decision needs publish on the transaction's topic.
		unauthorized("put producer group/no token", "PUT", "/v1/producer-groups/orders-svc", jsonCT, `{"check_url":"https://orders.example/check"}`),
		forbidden("put producer group/publish token", "PUT", "/v1/producer-groups/orders-svc", mergeHeaders(jsonCT, orders),
			`{"check_url":"https://orders.example/check"}`, "admin"),
		{name: "put producer group/admin", method: "PUT", path: "/v1/producer-groups/orders-svc", header: mergeHeaders(jsonCT, admin),
			body: `{"check_url":"https://orders.example/check"}`, status: 201},
		unauthorized("get producer group/no token", "GET", "/v1/producer-groups/orders-svc", nil, ""),
		forbidden("get producer group/publish token", "GET", "/v1/producer-groups/orders-svc", orders, "", "admin"),
		unauthorized("rotate producer group/no token", "POST", "/v1/producer-groups/orders-svc/rotate-secret", nil, ""),
		forbidden("rotate producer group/publish token", "POST", "/v1/producer-groups/orders-svc/rotate-secret", orders, "", "admin"),
		{name: "prepare/in scope", method: "POST", path: "/v1/topics/orders/messages", body: "txn",
			header: mergeHeaders(orders, map[string]string{"Postbus-Transaction": "prepare", "Postbus-Producer-Group": "orders-svc"}),
			status: 201, save: map[string]string{"txn": "transaction_id"}},
		unauthorized("list transactions/no token", "GET", "/v1/transactions", nil, ""),
		forbidden("list transactions/publish token", "GET", "/v1/transactions", orders, "", "admin"),
		unauthorized("get transaction/no token", "GET", "/v1/transactions/{txn}", nil, ""),
		{name: "get transaction/other topic", method: "GET", path: "/v1/transactions/{txn}", header: payments, status: 404,
			code: broker.CodeTransactionNotFound},
		unauthorized("commit/no token", "POST", "/v1/transactions/{txn}/commit", nil, ""),
		// A token that may not read the transaction is told it is not
		// found, as GET tells it (attack s8 F13: a 403 named its topic);
		// one that may read but not publish is refused.
		{name: "commit/other topic", method: "POST", path: "/v1/transactions/{txn}/commit", header: payments, status: 404,
			code: broker.CodeTransactionNotFound},
		{name: "commit/subscriber", method: "POST", path: "/v1/transactions/{txn}/commit", header: subscriber, status: 403,
			code: codeForbidden, check: refusedWith("", "publish:orders is needed")},
		unauthorized("rollback/no token", "POST", "/v1/transactions/{txn}/rollback", nil, ""),
		{name: "rollback/other topic", method: "POST", path: "/v1/transactions/{txn}/rollback", header: subscriber, status: 403,
			code: codeForbidden, check: refusedWith("", "publish:orders is needed")},
		{name: "commit/in scope", method: "POST", path: "/v1/transactions/{txn}/commit", header: orders, status: 200},
	}
	seen := make(contractSeen)
	env.run(t, exchanges, make(map[string]string), seen)
	t.Run("rate limited", func(t *testing.T) { contractRateLimit(t, env, seen) })
	t.Run("too many polls", func(t *testing.T) { contractHeldPolls(t, env, seen) })

	// Every refusal the document promises was answered and matched it.
	for path, item := range env.doc.Paths.Map() {
		for method, op := range item.Operations() {
			for _, st := range []int{401, 403, 429} {
				if op.Responses.Status(st) != nil && !seen[op.OperationID][st] {
					t.Errorf("%s %s (%s): %d is documented but was never answered", method, path, op.OperationID, st)
				}
			}
		}
	}
}

// contractRateLimit drains a token's publish burst with a full batch, then
// asks for one message and for another full batch: both answer 429.
func contractRateLimit(t *testing.T, env *contractEnv, seen contractSeen) {
	batch := "[" + strings.Join(slices.Repeat([]string{`{"body":"x"}`}, broker.MaxBatchMessages), ",") + "]"
	retryAfter := func(lo, hi int) func(tb testing.TB, resp *http.Response, _ []byte) {
		return func(tb testing.TB, resp *http.Response, _ []byte) {
			n, err := strconv.Atoi(resp.Header.Get("Retry-After"))
			if err != nil || n < lo || n > hi {
				tb.Errorf("Retry-After = %q, want %d to %d seconds", resp.Header.Get("Retry-After"), lo, hi)
			}
		}
	}
	// The bucket refills contractPublishRate messages a second, so the
	// single publish is refused only if it follows the draining batch
	// within 1/rate: both are sent before either answer is validated, and
	// a run too slow for that (a loaded machine) is tried again with a
	// fresh bucket. A run within the window must see the 429.
	window := time.Duration(float64(time.Second) / contractPublishRate)
	for attempt := 1; ; attempt++ {
		hdr := bearerHeader(contractToken(t, jwt.MapClaims{"sub": fmt.Sprintf("burst-%d", attempt), "scope": "publish:burst",
			"exp": time.Now().Add(time.Hour).Unix()}))
		xs := []exchange{
			{name: "full burst", method: "POST", path: "/v1/topics/burst/messages/batch",
				header: mergeHeaders(hdr, map[string]string{"Content-Type": "application/json"}), body: batch, status: 201},
			{name: "one more", method: "POST", path: "/v1/topics/burst/messages", header: hdr, body: "x",
				status: 429, code: codeRateLimited, check: retryAfter(1, int(1/contractPublishRate))},
			{name: "another batch", method: "POST", path: "/v1/topics/burst/messages/batch",
				header: mergeHeaders(hdr, map[string]string{"Content-Type": "application/json"}), body: batch, status: 429,
				code: codeRateLimited, check: retryAfter(1, int(broker.MaxBatchMessages/contractPublishRate))},
		}
		drained := env.send(t, xs[0], nil)
		one := env.send(t, xs[1], nil)
		took := one.answered.Sub(drained.sent)
		if one.resp.StatusCode != http.StatusTooManyRequests && took >= window && attempt < 3 {
			t.Logf("attempt %d: the publish after the burst came %v later, over %v: trying again", attempt, took, window)
			continue
		}
		again := env.send(t, xs[2], nil)
		for i, a := range []*sentExchange{drained, one, again} {
			t.Run(xs[i].name, func(t *testing.T) {
				env.verify(t, a)
				seen.add(a.op, a.resp.StatusCode)
				expectExchange(t, xs[i], a.resp, a.body, nil)
			})
		}
		return
	}
}

// decodeAnswer decodes a JSON answer into v.
func decodeAnswer(tb testing.TB, body []byte, v any) {
	tb.Helper()
	if err := json.Unmarshal(body, v); err != nil {
		tb.Fatalf("answer: %v\n%s", err, clip(body))
	}
}

// wantSubscription checks a subscription answer with f.
func wantSubscription(f func(tb testing.TB, got subscriptionJSON)) func(tb testing.TB, resp *http.Response, body []byte) {
	return func(tb testing.TB, _ *http.Response, body []byte) {
		var got subscriptionJSON
		decodeAnswer(tb, body, &got)
		f(tb, got)
	}
}

// wantGroup checks a group answer with f.
func wantGroup(f func(tb testing.TB, got groupJSON)) func(tb testing.TB, resp *http.Response, body []byte) {
	return func(tb testing.TB, _ *http.Response, body []byte) {
		var got groupJSON
		decodeAnswer(tb, body, &got)
		f(tb, got)
	}
}

// wantDeadLetters checks a dead-letter page: its cursors, that each dead
// letter is at its cursor, what each says of its death, and whether there
// is a next page.
func wantDeadLetters(cursors []string, more bool) func(tb testing.TB, resp *http.Response, body []byte) {
	return func(tb testing.TB, _ *http.Response, body []byte) {
		var got struct {
			Messages   []deadLetterJSON
			NextCursor *string `json:"next_cursor"`
		}
		decodeAnswer(tb, body, &got)
		gotCursors := []string{}
		for _, d := range got.Messages {
			gotCursors = append(gotCursors, d.Cursor)
			if strconv.FormatInt(d.QueueOffset, 10) != d.Cursor {
				tb.Errorf("dead letter %s: queue_offset %d, cursor %s", d.MsgID, d.QueueOffset, d.Cursor)
			}
			if d.Topic != "orders" || d.OriginTopic != "orders" || d.Attempts != 17 || d.LastError != "status 500" {
				tb.Errorf("dead letter %s: topic %q origin_topic %q attempts %d last_error %q, want orders, orders, 17, status 500",
					d.MsgID, d.Topic, d.OriginTopic, d.Attempts, d.LastError)
			}
		}
		if !slices.Equal(gotCursors, cursors) {
			tb.Errorf("dead letters at cursors %v, want %v", gotCursors, cursors)
		}
		if (got.NextCursor != nil) != more {
			tb.Errorf("next_cursor = %v, want one: %v", got.NextCursor, more)
		}
	}
}

// consumeExchanges exercises subscriptions, groups, dead letters, traces
// and the JWKS. It expects the topic orders with 4 queues and the messages
// saved as id (text) and bin (binary) and delayed.
func consumeExchanges(env *contractEnv) []exchange {
	jsonCT := map[string]string{"Content-Type": "application/json"}
	const unknownID = "AAAAAAAAAAAAAAAAAAAAAA"
	ctx := context.Background()
	var firstSecret string // the push subscription's, from its creation

	// deadLetter moves the saved messages to group's dead-letter queue, as
	// a dispatcher does once the last retry failed.
	deadLetter := func(group string, names ...string) func(tb testing.TB, vars map[string]string) {
		return func(tb testing.TB, vars map[string]string) {
			for _, n := range names {
				m, err := env.broker.Message(ctx, vars[n])
				if err != nil {
					tb.Fatalf("message %s: %v", n, err)
				}
				if err := env.broker.DeadLetter(ctx, group, m, 17, "status 500"); err != nil {
					tb.Fatalf("dead-letter %s: %v", n, err)
				}
			}
		}
	}
	redriven := func(n int, rate float64) func(tb testing.TB, resp *http.Response, body []byte) {
		return func(tb testing.TB, _ *http.Response, body []byte) {
			var got struct {
				Redriven      int       `json:"redriven"`
				RatePerSecond float64   `json:"rate_per_second"`
				DoneBy        time.Time `json:"done_by"`
			}
			decodeAnswer(tb, body, &got)
			if got.Redriven != n || got.RatePerSecond != rate {
				tb.Errorf("redriven %d at %g a second, want %d at %g", got.Redriven, got.RatePerSecond, n, rate)
			}
			// done_by is in whole seconds: the last is due n/rate seconds on.
			now := time.Now()
			if lo, hi := now.Add(-time.Minute), now.Add(time.Minute+time.Duration(float64(n)/rate*float64(time.Second))); got.DoneBy.Before(lo) || got.DoneBy.After(hi) {
				tb.Errorf("done_by %v, want about %v", got.DoneBy, now)
			}
		}
	}
	purged := func(n float64) func(tb testing.TB, resp *http.Response, body []byte) {
		return func(tb testing.TB, _ *http.Response, body []byte) {
			if got := jsonField(tb, body, "purged"); got != n {
				tb.Errorf("purged %v, want %v", got, n)
			}
		}
	}
	deadLetterCount := func(n int64) func(tb testing.TB, resp *http.Response, body []byte) {
		return wantGroup(func(tb testing.TB, got groupJSON) {
			if got.DeadLetters != n {
				tb.Errorf("dead_letters %d, want %d", got.DeadLetters, n)
			}
		})
	}
	manyTags := strings.TrimSuffix(strings.Repeat("t || ", broker.MaxFilterTags+1), " || ")

	return []exchange{
		// Subscriptions.
		{name: "create push subscription", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"billing","topic":"orders","url":"http://127.0.0.1:9/hook","filter":"order.paid||order.created",
				"max_retries":3,"retry_delays":["1s","500ms"],"timeout":"5s","max_in_flight":4,"rate_per_second":10,
				"start_from":"earliest"}`,
			status: 201, save: map[string]string{"push": "id"},
			check: func(tb testing.TB, resp *http.Response, body []byte) {
				var got subscriptionJSON
				decodeAnswer(tb, body, &got)
				if loc := resp.Header.Get("Location"); loc != "/v1/subscriptions/"+got.ID {
					tb.Errorf("Location = %q, want /v1/subscriptions/%s", loc, got.ID)
				}
				if got.Type != "push" || !strings.HasPrefix(got.Secret, "whsec_") || got.State != "active" {
					tb.Errorf("type %q secret %q state %q, want push, a whsec_ secret, active", got.Type, got.Secret, got.State)
				}
				if got.Filter != "order.created || order.paid" || !slices.Equal(got.RetryDelays, []string{"1s", "500ms"}) ||
					got.Backoff != nil || got.Timeout != "5s" || got.MaxRetries != 3 || got.StartFrom != "earliest" {
					tb.Errorf("created %+v, not as asked (filter in canonical form)", got)
				}
				firstSecret = got.Secret
			}},
		{name: "create pull subscription", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body:   `{"group":"audit","topic":"orders","ordered":true,"backoff":{"min":"1s","max":"1m"},"visibility":"1m"}`,
			status: 201, save: map[string]string{"pull": "id"},
			check: wantSubscription(func(tb testing.TB, got subscriptionJSON) {
				want := subscriptionJSON{Group: "audit", Topic: "orders", Type: "pull", Filter: "*", Ordered: true,
					MaxRetries: broker.DefaultMaxRetries, Backoff: &backoffJSON{Min: "1s", Max: "1m0s"}, Timeout: "15s",
					MaxInFlight: broker.DefaultMaxInFlight, Visibility: "1m0s", StartFrom: "latest", State: "active", Format: broker.FormatRaw}
				if got.Version == "" {
					tb.Errorf("created %+v without a version", got)
				}
				got.ID, got.CreatedAt, got.UpdatedAt, got.Version = "", "", "", ""
				if !reflect.DeepEqual(got, want) {
					tb.Errorf("created %+v\nwant %+v (the defaults, no secret)", got, want)
				}
			})},
		{name: "create/duplicate", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"billing","topic":"orders"}`, status: 409, code: broker.CodeSubscriptionExists},
		{name: "create/bad scheme", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"orders","url":"ftp://127.0.0.1/hook"}`, status: 400,
			code: broker.CodeInvalidSubscription, invalid: true},
		{name: "create/credentials in the url", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"orders","url":"http://user:pw@127.0.0.1:9/hook"}`, status: 400,
			code: broker.CodeInvalidSubscription, invalid: true},
		{name: "create/url without host", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"orders","url":"http://:9/hook"}`, status: 400,
			code: broker.CodeInvalidSubscription},
		{name: "create/bad filter", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"orders","filter":"order.created ||"}`, status: 400,
			code: broker.CodeInvalidFilter, invalid: true},
		{name: "create/filter of too many tags", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"orders","filter":"` + manyTags + `"}`, status: 400, code: broker.CodeInvalidFilter},
		{name: "create/bad duration", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"orders","timeout":"soon"}`, status: 400,
			code: broker.CodeInvalidSubscription, invalid: true},
		{name: "create/timeout too long", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"orders","timeout":"10m"}`, status: 400, code: broker.CodeInvalidSubscription},
		{name: "create/bad retry delay", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"orders","retry_delays":["1s","0s"]}`, status: 400, code: broker.CodeInvalidSubscription},
		{name: "create/bad backoff", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"orders","backoff":{"min":"1m","max":"1s"}}`, status: 400,
			code: broker.CodeInvalidSubscription},
		{name: "create/both schedules", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body:   `{"group":"g1","topic":"orders","retry_delays":["1s"],"backoff":{"min":"1s","max":"1m"}}`,
			status: 400, code: broker.CodeInvalidSubscription, invalid: true},
		{name: "create/bad start", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"orders","start_from":"yesterday"}`, status: 400,
			code: broker.CodeInvalidSubscription, invalid: true},
		{name: "create/no group", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"topic":"orders"}`, status: 400, code: broker.CodeInvalidSubscription, invalid: true},
		{name: "create/empty body", method: "POST", path: "/v1/subscriptions", status: 400,
			code: broker.CodeInvalidSubscription, invalid: true},
		{name: "create/bad group", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"bad!group","topic":"orders"}`, status: 400, code: broker.CodeInvalidGroup, invalid: true},
		{name: "create/system topic", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"%DLQ%billing"}`, status: 400, code: broker.CodeSystemTopic, invalid: true},
		// The test broker creates topics on first use, so a subscription
		// to a topic it does not know creates it; a bad name is refused.
		{name: "create/invalid topic", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"bad!topic"}`, status: 400, code: broker.CodeInvalidTopic, invalid: true},
		{name: "create/unknown field", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"orders","colour":"red"}`, status: 400, code: codeInvalidJSON, invalid: true},
		{name: "create/not json", method: "POST", path: "/v1/subscriptions",
			header: map[string]string{"Content-Type": "text/plain"}, body: "group=g1", status: 415,
			code: codeUnsupportedMedia, invalid: true},
		{name: "create/too large", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"orders","filter":"` + strings.Repeat("t", 70<<10) + `"}`, status: 413,
			code: codeRequestTooLarge},

		{name: "get subscription", method: "GET", path: "/v1/subscriptions/{push}", status: 200,
			check: wantSubscription(func(tb testing.TB, got subscriptionJSON) {
				if got.URL != "http://127.0.0.1:9/hook" || got.Secret != "" {
					tb.Errorf("url %q secret %q, want the url and no secret", got.URL, got.Secret)
				}
			})},
		{name: "get subscription/unknown", method: "GET", path: "/v1/subscriptions/" + unknownID, status: 404,
			code: broker.CodeSubscriptionNotFound},
		{name: "list subscriptions", method: "GET", path: "/v1/subscriptions", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got struct{ Subscriptions []subscriptionJSON }
				decodeAnswer(tb, body, &got)
				var groups []string
				for _, s := range got.Subscriptions {
					groups = append(groups, s.Group)
					if s.Secret != "" {
						tb.Errorf("subscription %s listed with its secret", s.ID)
					}
				}
				if slices.Sort(groups); !slices.Equal(groups, []string{"audit", "billing"}) {
					tb.Errorf("subscriptions of groups %v, want audit and billing", groups)
				}
			}},
		{name: "list subscriptions/page", method: "GET", path: "/v1/subscriptions?limit=1", status: 200,
			save: map[string]string{"subs": "next_cursor"}},
		{name: "list subscriptions/next page", method: "GET", path: "/v1/subscriptions?limit=1&cursor={subs}", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if subs, _ := jsonField(tb, body, "subscriptions").([]any); len(subs) != 1 || jsonField(tb, body, "next_cursor") != nil {
					tb.Errorf("last page %s, want one subscription and no next_cursor", body)
				}
			}},
		{name: "list subscriptions/bad limit", method: "GET", path: "/v1/subscriptions?limit=0", status: 400,
			code: codeInvalidParameter, invalid: true},

		{name: "patch subscription", method: "PATCH", path: "/v1/subscriptions/{push}", header: jsonCT,
			body: `{"filter":"*","max_retries":5,"backoff":{"min":"2s","max":"30s"}}`, status: 200,
			check: wantSubscription(func(tb testing.TB, got subscriptionJSON) {
				if got.Filter != "*" || got.MaxRetries != 5 || got.RetryDelays != nil || got.Backoff == nil ||
					got.URL != "http://127.0.0.1:9/hook" || got.Timeout != "5s" || got.Secret != "" {
					tb.Errorf("patched %+v: want filter *, 5 retries on a backoff, the rest kept, no secret", got)
				}
			})},
		{name: "patch subscription/format", method: "PATCH", path: "/v1/subscriptions/{push}", header: jsonCT,
			body: `{"format":"cloudevents"}`, status: 200,
			check: wantSubscription(func(tb testing.TB, got subscriptionJSON) {
				if got.Format != broker.FormatCloudEvents || got.MaxRetries != 5 {
					tb.Errorf("patched %+v: want format cloudevents, the rest kept", got)
				}
			})},
		{name: "patch subscription/bad format", method: "PATCH", path: "/v1/subscriptions/{push}", header: jsonCT,
			body: `{"format":"cloudevent"}`, status: 400, code: broker.CodeInvalidSubscription, invalid: true},
		{name: "patch subscription/format back", method: "PATCH", path: "/v1/subscriptions/{push}", header: jsonCT,
			body: `{"format":"raw"}`, status: 200},
		{name: "patch subscription/empty body", method: "PATCH", path: "/v1/subscriptions/{push}", status: 200,
			check: wantSubscription(func(tb testing.TB, got subscriptionJSON) {
				if got.MaxRetries != 5 {
					tb.Errorf("max_retries %d after an empty patch, want 5 kept", got.MaxRetries)
				}
			})},
		{name: "patch subscription/start_from", method: "PATCH", path: "/v1/subscriptions/{push}", header: jsonCT,
			body: `{"start_from":"earliest"}`, status: 400, code: broker.CodeInvalidSubscription, invalid: true},
		{name: "patch subscription/other group", method: "PATCH", path: "/v1/subscriptions/{push}", header: jsonCT,
			body: `{"group":"audit"}`, status: 400, code: broker.CodeInvalidSubscription, invalid: true},
		{name: "patch subscription/push to pull", method: "PATCH", path: "/v1/subscriptions/{push}", header: jsonCT,
			body: `{"url":""}`, status: 400, code: broker.CodeInvalidSubscription, invalid: true},
		{name: "patch subscription/pull to push", method: "PATCH", path: "/v1/subscriptions/{pull}", header: jsonCT,
			body: `{"url":"http://127.0.0.1:9/hook"}`, status: 400, code: broker.CodeInvalidSubscription},
		{name: "patch subscription/short visibility", method: "PATCH", path: "/v1/subscriptions/{pull}", header: jsonCT,
			body: `{"visibility":"500ms"}`, status: 400, code: broker.CodeInvalidSubscription},
		{name: "patch subscription/bad filter", method: "PATCH", path: "/v1/subscriptions/{pull}", header: jsonCT,
			body: `{"filter":"a|b"}`, status: 400, code: broker.CodeInvalidFilter, invalid: true},
		{name: "patch subscription/unknown", method: "PATCH", path: "/v1/subscriptions/" + unknownID, header: jsonCT,
			body: `{"ordered":true}`, status: 404, code: broker.CodeSubscriptionNotFound},
		{name: "patch subscription/not json", method: "PATCH", path: "/v1/subscriptions/{pull}",
			header: map[string]string{"Content-Type": "text/plain"}, body: "ordered", status: 415,
			code: codeUnsupportedMedia, invalid: true},
		{name: "patch subscription/too large", method: "PATCH", path: "/v1/subscriptions/{pull}", header: jsonCT,
			body: `{"filter":"` + strings.Repeat("t", 70<<10) + `"}`, status: 413, code: codeRequestTooLarge},

		{name: "pause", method: "POST", path: "/v1/subscriptions/{push}/pause", status: 200,
			check: wantSubscription(func(tb testing.TB, got subscriptionJSON) {
				if got.State != "paused" {
					tb.Errorf("state %q, want paused", got.State)
				}
			})},
		{name: "pause/unknown", method: "POST", path: "/v1/subscriptions/" + unknownID + "/pause", status: 404,
			code: broker.CodeSubscriptionNotFound},
		{name: "resume", method: "POST", path: "/v1/subscriptions/{push}/resume", status: 200,
			check: wantSubscription(func(tb testing.TB, got subscriptionJSON) {
				if got.State != "active" {
					tb.Errorf("state %q, want active", got.State)
				}
			})},
		{name: "resume/unknown", method: "POST", path: "/v1/subscriptions/" + unknownID + "/resume", status: 404,
			code: broker.CodeSubscriptionNotFound},
		{name: "rotate secret", method: "POST", path: "/v1/subscriptions/{push}/rotate-secret", status: 200,
			check: wantSubscription(func(tb testing.TB, got subscriptionJSON) {
				if !strings.HasPrefix(got.Secret, "whsec_") || got.Secret == firstSecret {
					tb.Errorf("secret %q after rotation, want a new one (the first was %q)", got.Secret, firstSecret)
				}
			})},
		{name: "rotate secret/pull", method: "POST", path: "/v1/subscriptions/{pull}/rotate-secret", status: 400,
			code: broker.CodeInvalidSubscription},
		{name: "rotate secret/unknown", method: "POST", path: "/v1/subscriptions/" + unknownID + "/rotate-secret",
			status: 404, code: broker.CodeSubscriptionNotFound},

		// Groups.
		{name: "list groups", method: "GET", path: "/v1/groups", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got struct{ Groups []groupJSON }
				decodeAnswer(tb, body, &got)
				var names []string
				for _, g := range got.Groups {
					names = append(names, g.Name)
					if len(g.Subscriptions) != 1 || g.Queues != nil {
						tb.Errorf("group %s: %d subscriptions and queues %v, want 1 and no queues", g.Name, len(g.Subscriptions), g.Queues)
					}
				}
				if !slices.Equal(names, []string{"audit", "billing"}) {
					tb.Errorf("groups %v, want audit and billing", names)
				}
			}},
		{name: "list groups/page", method: "GET", path: "/v1/groups?limit=1", status: 200,
			save: map[string]string{"groups": "next_cursor"}},
		{name: "list groups/next page", method: "GET", path: "/v1/groups?limit=1&cursor={groups}", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got struct {
					Groups     []groupJSON
					NextCursor *string `json:"next_cursor"`
				}
				decodeAnswer(tb, body, &got)
				if len(got.Groups) != 1 || got.Groups[0].Name != "billing" || got.NextCursor != nil {
					tb.Errorf("last page %s, want the group billing and no next_cursor", body)
				}
			}},
		{name: "list groups/bad limit", method: "GET", path: "/v1/groups?limit=1001", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "stats", method: "GET", path: "/v1/stats", status: 200,
			// Two samples a step apart, as RunStats takes them.
			prepare: func(tb testing.TB, _ map[string]string) {
				at := time.Now().Truncate(time.Hour).Add(-time.Hour)
				sampleStats(tb, env.mainAPI, at)
				sampleStats(tb, env.mainAPI, at.Add(stats.DefaultResolution))
			},
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got statsJSON
				decodeAnswer(tb, body, &got)
				if got.Start == nil || len(got.InPerSecond) != 2 || len(got.Topics) == 0 || len(got.Groups) == 0 {
					tb.Errorf("stats %s, want two points of the topics and groups", body)
				}
			}},
		{name: "stats/one topic", method: "GET", path: "/v1/stats?topic=orders&group=billing", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got statsJSON
				decodeAnswer(tb, body, &got)
				if len(got.Topics) != 1 || got.Topics[0].Topic != "orders" || len(got.Groups) != 1 || got.Groups[0].Group != "billing" {
					tb.Errorf("stats %s, want orders and billing alone", body)
				}
			}},
		{name: "stats/unknown parameter", method: "GET", path: "/v1/stats?window=2h", status: 400, code: codeInvalidParameter},
		{name: "stats/bad topic name", method: "GET", path: "/v1/stats?topic=a%20b", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "get group", method: "GET", path: "/v1/groups/billing", status: 200,
			check: wantGroup(func(tb testing.TB, got groupJSON) {
				// billing started from the earliest message on orders' 4
				// queues, and its retry topic is listed too.
				if len(got.Queues) != 5 || got.Queues[0].Topic != "%RETRY%billing%orders" || got.Lag == 0 || len(got.Subscriptions) != 1 {
					tb.Errorf("group %+v: want the retry queue and 4 queues of orders, a lag, one subscription", got)
				}
			})},
		{name: "get group/unknown", method: "GET", path: "/v1/groups/ghost", status: 404, code: broker.CodeGroupNotFound},
		{name: "get group/bad name", method: "GET", path: "/v1/groups/bad!name", status: 400,
			code: broker.CodeInvalidGroup, invalid: true},
		{name: "reset offsets/latest", method: "POST", path: "/v1/groups/billing/offsets/reset", header: jsonCT,
			body: `{"topic":"orders","to":"latest"}`, status: 200,
			check: wantGroup(func(tb testing.TB, got groupJSON) {
				if got.Lag != 0 || len(got.Queues) != 5 {
					tb.Errorf("lag %d on %d queues after a reset to latest, want 0 on 5 (4 and the retry queue)", got.Lag, len(got.Queues))
				}
			})},
		{name: "reset offsets/time", method: "POST", path: "/v1/groups/billing/offsets/reset", header: jsonCT,
			body: `{"topic":"orders","to":"2000-01-01T00:00:00Z"}`, status: 200,
			check: wantGroup(func(tb testing.TB, got groupJSON) {
				if got.Lag == 0 {
					tb.Error("no lag after a reset to 2000")
				}
			})},
		{name: "reset offsets/new group", method: "POST", path: "/v1/groups/replay/offsets/reset", header: jsonCT,
			body: `{"topic":"orders","to":"earliest"}`, status: 200,
			check: wantGroup(func(tb testing.TB, got groupJSON) {
				if len(got.Subscriptions) != 0 || len(got.Queues) != 4 {
					tb.Errorf("group %+v: want offsets on 4 queues and no subscription", got)
				}
			})},
		{name: "reset offsets/bad target", method: "POST", path: "/v1/groups/billing/offsets/reset", header: jsonCT,
			body: `{"topic":"orders","to":"yesterday"}`, status: 400, code: broker.CodeInvalidReset, invalid: true},
		{name: "reset offsets/no topic", method: "POST", path: "/v1/groups/billing/offsets/reset", header: jsonCT,
			body: `{"to":"latest"}`, status: 400, code: broker.CodeInvalidReset, invalid: true},
		{name: "reset offsets/unknown topic", method: "POST", path: "/v1/groups/billing/offsets/reset", header: jsonCT,
			body: `{"topic":"nope","to":"latest"}`, status: 404, code: broker.CodeTopicNotFound},
		{name: "reset offsets/bad group", method: "POST", path: "/v1/groups/bad!name/offsets/reset", header: jsonCT,
			body: `{"topic":"orders","to":"latest"}`, status: 400, code: broker.CodeInvalidGroup, invalid: true},
		{name: "reset offsets/not json", method: "POST", path: "/v1/groups/billing/offsets/reset",
			header: map[string]string{"Content-Type": "text/plain"}, body: "latest", status: 415,
			code: codeUnsupportedMedia, invalid: true},
		{name: "reset offsets/too large", method: "POST", path: "/v1/groups/billing/offsets/reset", header: jsonCT,
			body: `{"topic":"orders","to":"` + strings.Repeat("9", 70<<10) + `"}`, status: 413, code: codeRequestTooLarge,
			invalid: true},

		// Dead letters.
		{name: "dlq/empty", method: "GET", path: "/v1/groups/billing/dlq", status: 200,
			check: wantDeadLetters([]string{}, false)},
		{name: "dlq", method: "GET", path: "/v1/groups/billing/dlq", status: 200, prepare: deadLetter("billing", "id", "bin"),
			check: func(tb testing.TB, resp *http.Response, body []byte) {
				wantDeadLetters([]string{"0", "1"}, false)(tb, resp, body)
				var got struct{ Messages []deadLetterJSON }
				decodeAnswer(tb, body, &got)
				if len(got.Messages) != 2 || got.Messages[0].Body != "order 42 created" || got.Messages[1].Encoding != "base64" {
					tb.Errorf("dead letters %+v, want the text message then the binary one", got.Messages)
				}
			}},
		{name: "dlq/page", method: "GET", path: "/v1/groups/billing/dlq?limit=1", status: 200,
			save: map[string]string{"dlq": "next_cursor"}, check: wantDeadLetters([]string{"0"}, true)},
		{name: "dlq/next page", method: "GET", path: "/v1/groups/billing/dlq?limit=1&cursor={dlq}", status: 200,
			check: wantDeadLetters([]string{"1"}, false)},
		{name: "dlq/bad cursor", method: "GET", path: "/v1/groups/billing/dlq?cursor=abc", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "dlq/bad limit", method: "GET", path: "/v1/groups/billing/dlq?limit=257", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "dlq/bad group", method: "GET", path: "/v1/groups/bad!name/dlq", status: 400,
			code: broker.CodeInvalidGroup, invalid: true},
		{name: "group with dead letters", method: "GET", path: "/v1/groups/billing", status: 200, check: deadLetterCount(2)},
		{name: "redrive/by id", method: "POST", path: "/v1/groups/billing/dlq/redrive", header: jsonCT,
			body: `{"msg_ids":["{id}"]}`, status: 200, check: redriven(1, 50)},
		{name: "redrive/left", method: "GET", path: "/v1/groups/billing", status: 200, check: deadLetterCount(1)},
		{name: "redrive/all", method: "POST", path: "/v1/groups/billing/dlq/redrive", header: jsonCT,
			body: `{"all":true,"rate_per_second":100}`, status: 200, check: redriven(1, 100)},
		{name: "redrive/none left", method: "POST", path: "/v1/groups/billing/dlq/redrive", header: jsonCT,
			body: `{"all":true}`, status: 200, check: redriven(0, 50)},
		{name: "redrive/neither", method: "POST", path: "/v1/groups/billing/dlq/redrive", header: jsonCT,
			body: `{}`, status: 400, code: codeInvalidParameter, invalid: true},
		{name: "redrive/both", method: "POST", path: "/v1/groups/billing/dlq/redrive", header: jsonCT,
			body: `{"msg_ids":["{id}"],"all":true}`, status: 400, code: codeInvalidParameter, invalid: true},
		{name: "redrive/too fast", method: "POST", path: "/v1/groups/billing/dlq/redrive", header: jsonCT,
			body: `{"all":true,"rate_per_second":20000}`, status: 400, code: codeInvalidParameter, invalid: true},
		{name: "redrive/bad group", method: "POST", path: "/v1/groups/bad!name/dlq/redrive", header: jsonCT,
			body: `{"all":true}`, status: 400, code: broker.CodeInvalidGroup, invalid: true},
		{name: "redrive/not json", method: "POST", path: "/v1/groups/billing/dlq/redrive",
			header: map[string]string{"Content-Type": "text/plain"}, body: "all", status: 415,
			code: codeUnsupportedMedia, invalid: true},
		{name: "redrive/too large", method: "POST", path: "/v1/groups/billing/dlq/redrive", header: jsonCT,
			body: `{"msg_ids":["` + strings.Repeat("a", 70<<10) + `"]}`, status: 413, code: codeRequestTooLarge, invalid: true},
		// bin, which has no dedup id: a second dead-lettering of id within
		// the dedup window is dropped by the broker.
		{name: "purge", method: "DELETE", path: "/v1/groups/billing/dlq", status: 200,
			prepare: deadLetter("billing", "bin"), check: purged(1)},
		{name: "purge/empty", method: "DELETE", path: "/v1/groups/billing/dlq", status: 200, check: purged(0)},
		{name: "purge/bad group", method: "DELETE", path: "/v1/groups/bad!name/dlq", status: 400,
			code: broker.CodeInvalidGroup, invalid: true},
		{name: "purged", method: "GET", path: "/v1/groups/billing/dlq", status: 200, check: wantDeadLetters([]string{}, false)},

		// Traces.
		{name: "trace", method: "GET", path: "/v1/messages/{id}/trace", status: 200,
			prepare: func(tb testing.TB, vars map[string]string) {
				at := time.Now().Add(-time.Minute)
				env.broker.LogAttempt(broker.Attempt{MsgID: vars["id"], Group: "billing", Subscription: vars["push"], Attempt: 1,
					At: at, Outcome: "retry", Status: 500, Error: "status 500", Latency: 12 * time.Millisecond})
				env.broker.LogAttempt(broker.Attempt{MsgID: vars["id"], Group: "billing", Subscription: vars["push"], Attempt: 2,
					At: at.Add(10 * time.Second), Outcome: "delivered", Status: 204, Latency: 1500 * time.Microsecond})
			},
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got struct {
					Topic     string
					DeliverAt *string `json:"deliver_at"`
					Attempts  []attemptJSON
				}
				decodeAnswer(tb, body, &got)
				if got.Topic != "orders" || got.DeliverAt != nil || len(got.Attempts) != 2 {
					tb.Fatalf("trace %s: want topic orders, no deliver_at, 2 attempts", body)
				}
				if a := got.Attempts[1]; a.Attempt != 2 || a.Outcome != "delivered" || a.Status != 204 || a.LatencyMS != 1.5 {
					tb.Errorf("second attempt %+v, want attempt 2 delivered with 204 in 1.5 ms", a)
				}
			}},
		{name: "trace/delayed", method: "GET", path: "/v1/messages/{delayed}/trace", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if jsonField(tb, body, "deliver_at") == nil {
					tb.Errorf("trace of a delayed message without deliver_at: %s", body)
				}
			}},
		{name: "trace/unknown", method: "GET", path: "/v1/messages/" + unknownID + "/trace", status: 404,
			code: broker.CodeMessageNotFound},
		{name: "trace/bad id", method: "GET", path: "/v1/messages/not-an-id/trace", status: 400,
			code: broker.CodeInvalidMessageID, invalid: true},

		// The bus's keys.
		{name: "jwks/none", method: "GET", path: "/.well-known/jwks.json", status: 404, code: codeNotFound},
		{name: "jwks", jwks: true, method: "GET", path: "/.well-known/jwks.json", status: 200,
			check: func(tb testing.TB, resp *http.Response, body []byte) {
				if !bytes.Equal(body, env.jwksDoc) {
					tb.Errorf("served %s, want the configured %s", body, env.jwksDoc)
				}
			}},

		// A subscription may bring its own id and secret (a cluster gives
		// every broker the same ones): from 24 to 64 bytes of secret.
		{name: "create/own id and secret", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"id":"ledger1","group":"ledger","topic":"orders","url":"http://127.0.0.1:9/hook","secret":"` +
				webhookSecret(24) + `"}`, status: 201,
			check: func(tb testing.TB, resp *http.Response, body []byte) {
				var got subscriptionJSON
				decodeAnswer(tb, body, &got)
				if got.ID != "ledger1" || got.Secret != webhookSecret(24) || resp.Header.Get("Location") != "/v1/subscriptions/ledger1" {
					tb.Errorf("id %q secret %q Location %q, want the ones given", got.ID, got.Secret, resp.Header.Get("Location"))
				}
			}},
		{name: "create/id in use", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"id":"ledger1","group":"ledger2","topic":"orders"}`, status: 409, code: broker.CodeSubscriptionExists},
		{name: "create/bad id", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"id":"ledger-1","group":"g1","topic":"orders"}`, status: 400, code: broker.CodeInvalidSubscription, invalid: true},
		{name: "create/long id", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"id":"` + strings.Repeat("a", 65) + `","group":"g1","topic":"orders"}`, status: 400,
			code: broker.CodeInvalidSubscription, invalid: true},
		{name: "create/pull with a secret", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"orders","secret":"` + webhookSecret(32) + `"}`, status: 400,
			code: broker.CodeInvalidSubscription, invalid: true},
		{name: "create/short secret", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body:   `{"group":"g1","topic":"orders","url":"http://127.0.0.1:9/hook","secret":"` + webhookSecret(23) + `"}`,
			status: 400, code: broker.CodeInvalidSubscription, invalid: true},
		{name: "create/long secret", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body:   `{"group":"g1","topic":"orders","url":"http://127.0.0.1:9/hook","secret":"` + webhookSecret(65) + `"}`,
			status: 400, code: broker.CodeInvalidSubscription, invalid: true},
		{name: "create/secret not whsec", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"g1","topic":"orders","url":"http://127.0.0.1:9/hook","secret":"` +
				strings.TrimPrefix(webhookSecret(32), "whsec_") + `"}`, status: 400, code: broker.CodeInvalidSubscription, invalid: true},
		{name: "get subscription/own id", method: "GET", path: "/v1/subscriptions/ledger1", status: 200,
			check: wantSubscription(func(tb testing.TB, got subscriptionJSON) {
				if got.Group != "ledger" || got.Secret != "" {
					tb.Errorf("group %q secret %q, want ledger and no secret", got.Group, got.Secret)
				}
			})},
		{name: "patch subscription/secret", method: "PATCH", path: "/v1/subscriptions/ledger1", header: jsonCT,
			body: `{"secret":"` + webhookSecret(32) + `"}`, status: 400, code: broker.CodeInvalidSubscription, invalid: true},
		{name: "patch subscription/id", method: "PATCH", path: "/v1/subscriptions/ledger1", header: jsonCT,
			body: `{"id":"ledger2"}`, status: 400, code: broker.CodeInvalidSubscription, invalid: true},
		{name: "rotate secret/given", method: "POST", path: "/v1/subscriptions/ledger1/rotate-secret", header: jsonCT,
			body: `{"secret":"` + webhookSecret(64) + `"}`, status: 200,
			check: wantSubscription(func(tb testing.TB, got subscriptionJSON) {
				if got.Secret != webhookSecret(64) {
					tb.Errorf("secret %q after a rotation to %q", got.Secret, webhookSecret(64))
				}
			})},
		{name: "rotate secret/made up", method: "POST", path: "/v1/subscriptions/ledger1/rotate-secret", header: jsonCT,
			body: `{}`, status: 200,
			check: wantSubscription(func(tb testing.TB, got subscriptionJSON) {
				if !strings.HasPrefix(got.Secret, "whsec_") || got.Secret == webhookSecret(64) {
					tb.Errorf("secret %q after a rotation without one, want a new one", got.Secret)
				}
			})},
		{name: "rotate secret/bad secret", method: "POST", path: "/v1/subscriptions/ledger1/rotate-secret", header: jsonCT,
			body: `{"secret":"` + webhookSecret(16) + `"}`, status: 400, code: broker.CodeInvalidSubscription, invalid: true},
		{name: "rotate secret/unknown field", method: "POST", path: "/v1/subscriptions/ledger1/rotate-secret", header: jsonCT,
			body: `{"key":"whsec_x"}`, status: 400, code: codeInvalidJSON, invalid: true},
		{name: "rotate secret/bad json", method: "POST", path: "/v1/subscriptions/ledger1/rotate-secret", header: jsonCT,
			body: `{"secret":`, status: 400, code: codeInvalidJSON, invalid: true},
		{name: "delete subscription/own id", method: "DELETE", path: "/v1/subscriptions/ledger1", status: 204},

		{name: "delete subscription", method: "DELETE", path: "/v1/subscriptions/{pull}", status: 204},
		{name: "delete subscription/again", method: "DELETE", path: "/v1/subscriptions/{pull}", status: 404,
			code: broker.CodeSubscriptionNotFound},
		{name: "group without its subscription", method: "GET", path: "/v1/groups/audit", status: 200,
			check: wantGroup(func(tb testing.TB, got groupJSON) {
				if len(got.Subscriptions) != 0 || len(got.Queues) != 4 {
					tb.Errorf("group %+v: want its offsets kept and no subscription", got)
				}
			})},
	}
}

// webhookSecret is a Standard Webhooks secret of n bytes.
func webhookSecret(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*37 + n)
	}
	return "whsec_" + base64.StdEncoding.EncodeToString(b)
}

// pulled decodes a pull's answer and checks it with f.
func pulled(f func(tb testing.TB, got []pulledJSON)) func(tb testing.TB, resp *http.Response, body []byte) {
	return func(tb testing.TB, _ *http.Response, body []byte) {
		var got pullAnswer
		decodeAnswer(tb, body, &got)
		f(tb, got.Messages)
	}
}

// pulledBodies checks a pull's bodies and attempts, in order.
func pulledBodies(attempt int, bodies ...string) func(tb testing.TB, resp *http.Response, body []byte) {
	return pulled(func(tb testing.TB, got []pulledJSON) {
		gotBodies := []string{}
		for _, m := range got {
			gotBodies = append(gotBodies, m.Body)
			if m.Attempt != attempt || m.Topic != "jobs" {
				tb.Errorf("pulled %s of topic %s as attempt %d, want topic jobs, attempt %d", m.MsgID, m.Topic, m.Attempt, attempt)
			}
		}
		if !slices.Equal(gotBodies, bodies) {
			tb.Errorf("pulled %q, want %q", gotBodies, bodies)
		}
	})
}

// queueRead checks a read by offset: its bodies, in order, and next_offset.
func queueRead(next int64, bodies ...string) func(tb testing.TB, resp *http.Response, body []byte) {
	return func(tb testing.TB, _ *http.Response, body []byte) {
		var got struct {
			Messages   []messageJSON `json:"messages"`
			NextOffset int64         `json:"next_offset"`
		}
		decodeAnswer(tb, body, &got)
		gotBodies := []string{}
		for i, m := range got.Messages {
			gotBodies = append(gotBodies, m.Body)
			if i > 0 && m.QueueOffset != got.Messages[i-1].QueueOffset+1 {
				tb.Errorf("queue offsets %d then %d: not in queue order", got.Messages[i-1].QueueOffset, m.QueueOffset)
			}
		}
		if !slices.Equal(gotBodies, bodies) || got.NextOffset != next {
			tb.Errorf("read %q up to %d, want %q up to %d", gotBodies, got.NextOffset, bodies, next)
		}
	}
}

// pullExchanges exercises pulls, acks, nacks and reads by offset, on a
// topic jobs of its own with one queue, so that the order is known. It
// expects the group billing to push the topic orders.
func pullExchanges(env *contractEnv) []exchange {
	jsonCT := map[string]string{"Content-Type": "application/json"}
	// A receipt of the right form that this bus did not issue.
	const forged = "AQAAAQAAAAAAAAPoAAAHd29ya2VycwRqb2JzFjZacUJOdlJteGtVTlBZaGRMblZtU09Tx1cpw5O5cqgmsA0A8w"
	// results checks a per-receipt answer's statuses, in order.
	results := func(want ...string) func(tb testing.TB, resp *http.Response, body []byte) {
		return func(tb testing.TB, _ *http.Response, body []byte) {
			var got receiptResultsJSON
			decodeAnswer(tb, body, &got)
			var statuses []string
			for _, r := range got.Results {
				statuses = append(statuses, r.Status)
			}
			if !slices.Equal(statuses, want) {
				tb.Errorf("results %v, want %v", statuses, want)
			}
		}
	}
	// waited times a long poll that must run its whole wait: from its
	// prepare to its check.
	var waitStart time.Time
	startWait := func(testing.TB, map[string]string) { waitStart = time.Now() }
	waitedAtLeast := func(d time.Duration) func(tb testing.TB, resp *http.Response, body []byte) {
		return func(tb testing.TB, _ *http.Response, _ []byte) {
			if took := time.Since(waitStart); took < d {
				tb.Errorf("answered after %v, before its wait of %v", took, d)
			}
		}
	}
	// queued waits until queue 0 of topic holds n messages. A publish is
	// answered once stored; its message reaches its queue just after.
	queued := func(topic string, n int64) func(tb testing.TB, vars map[string]string) {
		return func(tb testing.TB, _ map[string]string) {
			deadline := time.NewTimer(20 * time.Second)
			defer deadline.Stop()
			for {
				arrived := env.broker.Dispatched()
				if _, hi := env.broker.QueueBounds(topic, 0); hi >= n {
					return
				}
				select {
				case <-arrived:
				case <-deadline.C:
					tb.Fatalf("queue 0 of %s holds fewer than %d messages after 20s", topic, n)
				}
			}
		}
	}
	bigReceipts := `{"receipts":["` + strings.Repeat("a", maxAckRequestBytes) + `"]}`

	return []exchange{
		{name: "pull/topic", method: "PUT", path: "/v1/topics/jobs", header: jsonCT, body: `{"queues":1}`, status: 201},
		{name: "pull/publish 1", method: "POST", path: "/v1/topics/jobs/messages", header: map[string]string{"Postbus-Tag": "urgent"},
			body: "job 1", status: 201, save: map[string]string{"job1": "msg_id"}},
		{name: "pull/publish 2", method: "POST", path: "/v1/topics/jobs/messages", body: "job 2", status: 201},
		{name: "pull/publish 3", method: "POST", path: "/v1/topics/jobs/messages", body: "job 3", status: 201,
			save: map[string]string{"job3": "msg_id"}},

		// The group once gives up at the first visibility that runs out;
		// its visibility timer runs while the group workers is exercised.
		{name: "pull/once subscription", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body:   `{"group":"once","topic":"jobs","filter":"urgent","max_retries":0,"visibility":"1s","start_from":"earliest"}`,
			status: 201},
		{name: "pull/once", method: "POST", path: "/v1/groups/once/topics/jobs/pull", status: 200,
			prepare: queued("jobs", 3), save: map[string]string{"once": "messages.0.receipt"}, check: pulledBodies(1, "job 1")},

		// The first pull of workers subscribes it from the earliest message.
		{name: "pull", method: "POST", path: "/v1/groups/workers/topics/jobs/pull?max=2&visibility=1m", status: 200,
			save:  map[string]string{"r1": "messages.0.receipt", "r2": "messages.1.receipt"},
			check: pulledBodies(1, "job 1", "job 2")},
		{name: "pull/subscribed", method: "GET", path: "/v1/groups/workers", status: 200,
			save: map[string]string{"workers": "subscriptions.0.id"},
			check: wantGroup(func(tb testing.TB, got groupJSON) {
				if len(got.Subscriptions) != 1 || got.Subscriptions[0].Type != "pull" || got.Subscriptions[0].StartFrom != "earliest" {
					tb.Errorf("group %+v: want one pull subscription from earliest", got)
				}
			})},
		{name: "ack", method: "POST", path: "/v1/groups/workers/ack", header: jsonCT, body: `{"receipts":["{r1}"]}`,
			status: 200, check: results("acked")},
		// A retried ack (its answer lost) is acked again.
		{name: "ack/again", method: "POST", path: "/v1/groups/workers/ack", header: jsonCT, body: `{"receipts":["{r1}"]}`,
			status: 200, check: results("acked")},
		{name: "ack/a forged one among them", method: "POST", path: "/v1/groups/workers/ack", header: jsonCT,
			body: `{"receipts":["{r2}","` + forged + `"]}`, status: 400, code: broker.CodeInvalidReceipt},
		{name: "ack/another group's", method: "POST", path: "/v1/groups/others/ack", header: jsonCT,
			body: `{"receipts":["{r2}"]}`, status: 400, code: broker.CodeInvalidReceipt},
		{name: "ack/forged", method: "POST", path: "/v1/groups/workers/ack", header: jsonCT,
			body: `{"receipts":["` + forged + `"]}`, status: 400, code: broker.CodeInvalidReceipt},
		{name: "ack/garbage", method: "POST", path: "/v1/groups/workers/ack", header: jsonCT,
			body: `{"receipts":["not a receipt!"]}`, status: 400, code: broker.CodeInvalidReceipt, invalid: true},
		{name: "ack/none", method: "POST", path: "/v1/groups/workers/ack", header: jsonCT,
			body: `{"receipts":[]}`, status: 400, code: broker.CodeInvalidReceipt, invalid: true},
		{name: "ack/empty body", method: "POST", path: "/v1/groups/workers/ack", status: 400,
			code: broker.CodeInvalidReceipt, invalid: true},
		{name: "ack/unknown field", method: "POST", path: "/v1/groups/workers/ack", header: jsonCT,
			body: `{"receipts":["{r2}"],"delay":"1s"}`, status: 400, code: codeInvalidJSON, invalid: true},
		{name: "ack/not json", method: "POST", path: "/v1/groups/workers/ack",
			header: map[string]string{"Content-Type": "text/plain"}, body: "{r2}", status: 415,
			code: codeUnsupportedMedia, invalid: true},
		{name: "ack/too large", method: "POST", path: "/v1/groups/workers/ack", header: jsonCT, body: bigReceipts,
			status: 413, code: codeRequestTooLarge, invalid: true},
		{name: "ack/bad group", method: "POST", path: "/v1/groups/bad!name/ack", header: jsonCT,
			body: `{"receipts":["{r2}"]}`, status: 400, code: broker.CodeInvalidGroup, invalid: true},
		// The refused requests changed nothing: r2 is still good.
		{name: "ack/after refusals", method: "POST", path: "/v1/groups/workers/ack", header: jsonCT,
			body: `{"receipts":["{r2}"]}`, status: 200, check: results("acked")},

		{name: "pull/the rest", method: "POST", path: "/v1/groups/workers/topics/jobs/pull?max=5", status: 200,
			save: map[string]string{"r3": "messages.0.receipt"}, check: pulledBodies(1, "job 3")},
		{name: "visibility", method: "POST", path: "/v1/groups/workers/visibility", header: jsonCT,
			body: `{"receipts":["{r3}"],"visibility":"60s"}`, status: 200, check: results("extended")},
		{name: "visibility/over 12h", method: "POST", path: "/v1/groups/workers/visibility", header: jsonCT,
			body: `{"receipts":["{r3}"],"visibility":"13h"}`, status: 400, code: broker.CodeInvalidVisibility},
		{name: "visibility/missing", method: "POST", path: "/v1/groups/workers/visibility", header: jsonCT,
			body: `{"receipts":["{r3}"]}`, status: 400, code: broker.CodeInvalidVisibility, invalid: true},
		{name: "visibility/not a duration", method: "POST", path: "/v1/groups/workers/visibility", header: jsonCT,
			body: `{"receipts":["{r3}"],"visibility":"later"}`, status: 400, code: broker.CodeInvalidVisibility, invalid: true},
		{name: "visibility/garbage", method: "POST", path: "/v1/groups/workers/visibility", header: jsonCT,
			body: `{"receipts":["not a receipt!"],"visibility":"1s"}`, status: 400, code: broker.CodeInvalidReceipt, invalid: true},
		{name: "visibility/another group's", method: "POST", path: "/v1/groups/others/visibility", header: jsonCT,
			body: `{"receipts":["{r3}"],"visibility":"1s"}`, status: 400, code: broker.CodeInvalidReceipt},
		{name: "visibility/acked", method: "POST", path: "/v1/groups/workers/visibility", header: jsonCT,
			body: `{"receipts":["{r2}","{r3}"],"visibility":"60s"}`, status: 200, check: results("stale", "extended")},
		{name: "nack", method: "POST", path: "/v1/groups/workers/nack", header: jsonCT,
			body: `{"receipts":["{r3}"],"delay":"1s"}`, status: 200, check: results("nacked")},
		// A retried nack is nacked again, and changes nothing.
		{name: "nack/again", method: "POST", path: "/v1/groups/workers/nack", header: jsonCT,
			body: `{"receipts":["{r3}"]}`, status: 200, check: results("nacked")},
		{name: "ack/nacked", method: "POST", path: "/v1/groups/workers/ack", header: jsonCT,
			body: `{"receipts":["{r3}"]}`, status: 200, check: results("stale")},
		{name: "nack/bad delay", method: "POST", path: "/v1/groups/workers/nack", header: jsonCT,
			body: `{"receipts":["{r3}"],"delay":"later"}`, status: 400, code: broker.CodeInvalidNack, invalid: true},
		{name: "nack/delay too long", method: "POST", path: "/v1/groups/workers/nack", header: jsonCT,
			body: `{"receipts":["{r3}"],"delay":"25h"}`, status: 400, code: broker.CodeInvalidNack},
		{name: "nack/garbage", method: "POST", path: "/v1/groups/workers/nack", header: jsonCT,
			body: `{"receipts":["not a receipt!"]}`, status: 400, code: broker.CodeInvalidReceipt, invalid: true},
		{name: "nack/another group's", method: "POST", path: "/v1/groups/others/nack", header: jsonCT,
			body: `{"receipts":["{r3}"]}`, status: 400, code: broker.CodeInvalidReceipt},
		{name: "nack/not json", method: "POST", path: "/v1/groups/workers/nack",
			header: map[string]string{"Content-Type": "text/plain"}, body: "{r3}", status: 415,
			code: codeUnsupportedMedia, invalid: true},
		{name: "nack/too large", method: "POST", path: "/v1/groups/workers/nack", header: jsonCT, body: bigReceipts,
			status: 413, code: codeRequestTooLarge, invalid: true},
		// The nacked message comes back after its delay as attempt 2, under
		// a new receipt; this time its visibility runs out.
		{name: "pull/after the nack", method: "POST", path: "/v1/groups/workers/topics/jobs/pull?wait=20s&visibility=1s",
			status: 200, save: map[string]string{"r3b": "messages.0.receipt"},
			check: pulled(func(tb testing.TB, got []pulledJSON) {
				if len(got) != 1 || got[0].Body != "job 3" || got[0].Attempt != 2 || got[0].Topic != "jobs" {
					tb.Fatalf("pulled %+v, want job 3 of jobs as attempt 2", got)
				}
			})},
		{name: "pull/after the visibility", method: "POST", path: "/v1/groups/workers/topics/jobs/pull?wait=20s", status: 200,
			save: map[string]string{"r3c": "messages.0.receipt"}, check: pulledBodies(3, "job 3")},
		// The stale receipt of a batch does not keep the good one from
		// being acked.
		{name: "ack/after redelivery", method: "POST", path: "/v1/groups/workers/ack", header: jsonCT,
			body: `{"receipts":["{r3b}","{r3c}"]}`, status: 200, check: results("stale", "acked")},
		{name: "ack/redelivered", method: "POST", path: "/v1/groups/workers/ack", header: jsonCT,
			body: `{"receipts":["{r3c}"]}`, status: 200, check: results("acked")},
		{name: "pull/wait passes", method: "POST", path: "/v1/groups/workers/topics/jobs/pull?wait=1s", status: 200,
			prepare: startWait, check: func(tb testing.TB, resp *http.Response, body []byte) {
				pulledBodies(1)(tb, resp, body)
				waitedAtLeast(time.Second)(tb, resp, body)
			}},

		// once's attempt ran out of visibility long ago; past max_retries,
		// its timer dead-lettered it, with no pull needed, and a pull no
		// longer hands it out.
		{name: "pull/past max_retries", method: "POST", path: "/v1/groups/once/topics/jobs/pull", status: 200,
			prepare: queued(broker.DeadLetterTopic("once"), 1), check: pulledBodies(1)},
		{name: "pull/dead letter", method: "GET", path: "/v1/groups/once/dlq", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got struct{ Messages []deadLetterJSON }
				decodeAnswer(tb, body, &got)
				if len(got.Messages) != 1 || got.Messages[0].Body != "job 1" || got.Messages[0].OriginTopic != "jobs" ||
					got.Messages[0].Attempts != 1 {
					tb.Errorf("dead letters %+v, want job 1 of jobs after 1 attempt", got.Messages)
				}
			}},
		{name: "ack/dead", method: "POST", path: "/v1/groups/once/ack", header: jsonCT,
			body: `{"receipts":["{once}"]}`, status: 200, check: results("stale")},

		// An ordered group has one message of a queue out at a time.
		{name: "pull/ordered subscription", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"group":"inorder","topic":"jobs","ordered":true,"start_from":"earliest"}`, status: 201},
		{name: "pull/ordered", method: "POST", path: "/v1/groups/inorder/topics/jobs/pull?max=5", status: 200,
			save: map[string]string{"o1": "messages.0.receipt"}, check: pulledBodies(1, "job 1")},
		{name: "pull/ordered, one out", method: "POST", path: "/v1/groups/inorder/topics/jobs/pull?max=5", status: 200,
			check: pulledBodies(1)},
		{name: "ack/ordered", method: "POST", path: "/v1/groups/inorder/ack", header: jsonCT,
			body: `{"receipts":["{o1}"]}`, status: 200, check: results("acked")},
		{name: "ack/ordered again", method: "POST", path: "/v1/groups/inorder/ack", header: jsonCT,
			body: `{"receipts":["{o1}"]}`, status: 200, check: results("acked")},
		{name: "pull/ordered, next", method: "POST", path: "/v1/groups/inorder/topics/jobs/pull?max=5", status: 200,
			check: pulledBodies(1, "job 2")},

		// Bad pulls.
		{name: "pull/max 0", method: "POST", path: "/v1/groups/workers/topics/jobs/pull?max=0", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "pull/max 257", method: "POST", path: "/v1/groups/workers/topics/jobs/pull?max=257", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "pull/malformed wait", method: "POST", path: "/v1/groups/workers/topics/jobs/pull?wait=soon", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "pull/wait too long", method: "POST", path: "/v1/groups/workers/topics/jobs/pull?wait=31s", status: 400,
			code: broker.CodeInvalidPull},
		{name: "pull/short visibility", method: "POST", path: "/v1/groups/workers/topics/jobs/pull?visibility=500ms",
			status: 400, code: broker.CodeInvalidPull},
		{name: "pull/long visibility", method: "POST", path: "/v1/groups/workers/topics/jobs/pull?visibility=13h",
			status: 400, code: broker.CodeInvalidPull},
		{name: "pull/negative visibility", method: "POST", path: "/v1/groups/workers/topics/jobs/pull?visibility=-1s",
			status: 400, code: codeInvalidParameter, invalid: true},
		{name: "pull/bad group", method: "POST", path: "/v1/groups/bad!name/topics/jobs/pull", status: 400,
			code: broker.CodeInvalidGroup, invalid: true},
		{name: "pull/bad topic", method: "POST", path: "/v1/groups/workers/topics/bad!name/pull", status: 400,
			code: broker.CodeInvalidTopic, invalid: true},
		{name: "pull/system topic", method: "POST", path: "/v1/groups/workers/topics/%25DLQ%25workers/pull", status: 400,
			code: broker.CodeSystemTopic, invalid: true},
		{name: "pull/pushed", method: "POST", path: "/v1/groups/billing/topics/orders/pull", status: 400,
			code: broker.CodeInvalidSubscription},
		{name: "pull/pause", method: "POST", path: "/v1/subscriptions/{workers}/pause", status: 200},
		{name: "pull/paused", method: "POST", path: "/v1/groups/workers/topics/jobs/pull", status: 400,
			code: broker.CodeInvalidSubscription},
		{name: "pull/resume", method: "POST", path: "/v1/subscriptions/{workers}/resume", status: 200},
		{name: "pull/resumed", method: "POST", path: "/v1/groups/workers/topics/jobs/pull", status: 200, check: pulledBodies(1)},
		// A broker started with --auto-create-groups=false creates no
		// subscriptions on a first pull.
		{name: "pull/manual topic", manual: true, method: "PUT", path: "/v1/topics/jobs", status: 201},
		{name: "pull/no subscription", manual: true, method: "POST", path: "/v1/groups/workers/topics/jobs/pull", status: 404,
			code: broker.CodeSubscriptionNotFound},
		{name: "pull/no topic", manual: true, method: "POST", path: "/v1/groups/workers/topics/nope/pull", status: 404,
			code: broker.CodeTopicNotFound},

		// Reads by offset.
		{name: "read queue", method: "GET", path: "/v1/topics/jobs/queues/0/messages", status: 200,
			check: queueRead(3, "job 1", "job 2", "job 3")},
		{name: "read queue/from offset", method: "GET", path: "/v1/topics/jobs/queues/0/messages?offset=1&max=1", status: 200,
			check: queueRead(2, "job 2")},
		{name: "read queue/wait passes", method: "GET", path: "/v1/topics/jobs/queues/0/messages?offset=3&wait=500ms",
			status: 200, prepare: startWait, check: func(tb testing.TB, resp *http.Response, body []byte) {
				queueRead(3)(tb, resp, body)
				waitedAtLeast(500*time.Millisecond)(tb, resp, body)
			}},
		{name: "read queue/past the end", method: "GET", path: "/v1/topics/jobs/queues/0/messages?offset=1000", status: 200,
			check: queueRead(3)},
		{name: "read queue/no such queue", method: "GET", path: "/v1/topics/jobs/queues/1/messages", status: 404,
			code: broker.CodeQueueNotFound},
		{name: "read queue/bad queue", method: "GET", path: "/v1/topics/jobs/queues/x/messages", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "read queue/negative offset", method: "GET", path: "/v1/topics/jobs/queues/0/messages?offset=-1", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "read queue/max 0", method: "GET", path: "/v1/topics/jobs/queues/0/messages?max=0", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "read queue/malformed wait", method: "GET", path: "/v1/topics/jobs/queues/0/messages?wait=soon", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "read queue/wait too long", method: "GET", path: "/v1/topics/jobs/queues/0/messages?wait=31s", status: 400,
			code: codeInvalidParameter},
		{name: "read queue/unknown topic", method: "GET", path: "/v1/topics/nope/queues/0/messages", status: 404,
			code: broker.CodeTopicNotFound},
		{name: "read queue/bad topic", method: "GET", path: "/v1/topics/bad!name/queues/0/messages", status: 400,
			code: broker.CodeInvalidTopic, invalid: true},
		{name: "read queue/system topic", method: "GET", path: "/v1/topics/%25DLQ%25once/queues/0/messages", status: 400,
			code: broker.CodeSystemTopic, invalid: true},

		{name: "pull/trace", method: "GET", path: "/v1/messages/{job3}/trace", status: 200,
			prepare: func(tb testing.TB, vars map[string]string) {
				// Skipped, not loosened, while the broker logs pull events
				// without their subscription: the answer would then carry
				// "subscription": "", which the document rightly refuses.
				tr, err := env.broker.MessageTrace(context.Background(), vars["job3"])
				if err != nil {
					tb.Fatalf("trace: %v", err)
				}
				for _, a := range tr.Attempts {
					if a.Subscription == "" {
						tb.Skipf("the broker logged the %s of attempt %d without its subscription", a.Outcome, a.Attempt)
					}
				}
			},
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got struct{ Attempts []attemptJSON }
				decodeAnswer(tb, body, &got)
				var outcomes []string
				for _, a := range got.Attempts {
					outcomes = append(outcomes, fmt.Sprintf("%s %d %s", a.Group, a.Attempt, a.Outcome))
				}
				// Attempt 2's visibility ran out: the trace says so (the
				// expired outcome of openapi.yaml).
				if want := []string{"workers 1 nacked", "workers 2 expired", "workers 3 acked"}; !slices.Equal(outcomes, want) {
					tb.Errorf("trace %q, want %q", outcomes, want)
				}
			}},
	}
}

// wantRoute checks a route answer.
func wantRoute(topic string, brokers ...namesrv.RouteBrokerJSON) func(tb testing.TB, resp *http.Response, body []byte) {
	return func(tb testing.TB, _ *http.Response, body []byte) {
		var got namesrv.RouteJSON
		decodeAnswer(tb, body, &got)
		if got.Topic != topic || !slices.Equal(got.Brokers, brokers) {
			tb.Errorf("route = %+v, want topic %s on %+v", got, topic, brokers)
		}
	}
}

// wantCluster checks a cluster answer, each broker's last heartbeat aside
// but for being set.
func wantCluster(brokers ...namesrv.ClusterBrokerJSON) func(tb testing.TB, resp *http.Response, body []byte) {
	return func(tb testing.TB, _ *http.Response, body []byte) {
		var got namesrv.ClusterJSON
		decodeAnswer(tb, body, &got)
		if got.Brokers == nil {
			tb.Fatalf("brokers is not a list\n%s", clip(body))
		}
		for i := range got.Brokers {
			if got.Brokers[i].LastHeartbeat.IsZero() {
				tb.Errorf("broker %s has no last_heartbeat", got.Brokers[i].Name)
			}
			got.Brokers[i].LastHeartbeat = time.Time{}
		}
		if !slices.Equal(got.Brokers, brokers) {
			tb.Errorf("cluster = %+v, want %+v", got.Brokers, brokers)
		}
	}
}

// nameServerExchanges exercises the name server's routes, on the server
// that serves them alone and on the one that serves them beside the
// broker's, over one registry. It moves the registry's clock on.
func nameServerExchanges(env *contractEnv) []exchange {
	jsonCT := map[string]string{"Content-Type": "application/json"}
	const (
		brokerA = `{"name":"broker-a","cluster":"east","addr":"http://10.0.0.7:8080","version":"0.1.0",` +
			`"topics":[{"name":"orders","queues":4},{"name":"payments","queues":2},{"name":"%DLQ%billing","queues":1}]}`
		brokerB = `{"name":"broker-b","addr":"https://b.example:8443/bus","topics":[{"name":"orders","queues":2}]}`
		// broker-a holds only orders now, with more queues.
		brokerAResized = `{"name":"broker-a","cluster":"east","addr":"http://10.0.0.7:8080","version":"0.1.0",` +
			`"topics":[{"name":"orders","queues":8}]}`
	)
	a := namesrv.RouteBrokerJSON{Name: "broker-a", Cluster: "east", Addr: "http://10.0.0.7:8080", Queues: 4}
	b := namesrv.RouteBrokerJSON{Name: "broker-b", Cluster: namesrv.DefaultCluster, Addr: "https://b.example:8443/bus", Queues: 2}
	a8 := a
	a8.Queues = 8
	clusterA := namesrv.ClusterBrokerJSON{Name: "broker-a", Cluster: "east", Addr: "http://10.0.0.7:8080", Version: "0.1.0", Topics: 3}
	clusterA1 := clusterA
	clusterA1.Topics = 1
	clusterB := namesrv.ClusterBrokerJSON{Name: "broker-b", Cluster: namesrv.DefaultCluster, Addr: "https://b.example:8443/bus", Topics: 1}
	expiresIn := func(tb testing.TB, _ *http.Response, body []byte) {
		if got := jsonField(tb, body, "expires_in"); got != "120s" {
			tb.Errorf("expires_in = %v, want 120s", got)
		}
	}
	invalidBroker := func(name, body, says string, invalid bool) exchange {
		return exchange{name: name, nameServer: true, method: "POST", path: "/v1/brokers/heartbeat", header: jsonCT, body: body,
			status: 400, code: codeInvalidBroker, invalid: invalid,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if d, _ := jsonField(tb, body, "detail").(string); !strings.Contains(d, says) {
					tb.Errorf("detail %q does not say %q", d, says)
				}
			}}
	}
	return []exchange{
		{name: "namesrv/healthz", nameServer: true, method: "GET", path: "/healthz", status: 200},
		{name: "namesrv/readyz", nameServer: true, method: "GET", path: "/readyz", status: 200},
		{name: "heartbeat", nameServer: true, method: "POST", path: "/v1/brokers/heartbeat", header: jsonCT, body: brokerA,
			status: 200, check: expiresIn},
		// `postbus dev` serves the same routes beside the broker's.
		{name: "heartbeat/dev", method: "POST", path: "/v1/brokers/heartbeat", header: jsonCT, body: brokerB,
			status: 200, check: expiresIn},
		{name: "route", nameServer: true, method: "GET", path: "/v1/routes/orders", status: 200, check: wantRoute("orders", a, b)},
		{name: "route/dev", method: "GET", path: "/v1/routes/payments", status: 200,
			check: wantRoute("payments", namesrv.RouteBrokerJSON{Name: "broker-a", Cluster: "east", Addr: "http://10.0.0.7:8080", Queues: 2})},
		{name: "cluster", nameServer: true, method: "GET", path: "/v1/cluster", status: 200, check: wantCluster(clusterA, clusterB)},
		// A heartbeat replaces the registration whole: payments leaves at once.
		{name: "heartbeat/resized", nameServer: true, method: "POST", path: "/v1/brokers/heartbeat", header: jsonCT,
			body: brokerAResized, status: 200, check: expiresIn},
		{name: "route/resized", nameServer: true, method: "GET", path: "/v1/routes/orders", status: 200, check: wantRoute("orders", a8, b)},
		{name: "route/dropped topic", nameServer: true, method: "GET", path: "/v1/routes/payments", status: 404,
			code: broker.CodeTopicNotFound},
		{name: "route/not found", nameServer: true, method: "GET", path: "/v1/routes/nope", status: 404, code: broker.CodeTopicNotFound},

		// A patch changes just the topics it names.
		{name: "patch broker", nameServer: true, method: "PATCH", path: "/v1/brokers/broker-a", header: jsonCT,
			body:   `{"cluster":"east","addr":"http://10.0.0.7:8080","version":"0.1.0","put":[{"name":"invoices","queues":3}]}`,
			status: 200, check: expiresIn},
		{name: "route/patched in", nameServer: true, method: "GET", path: "/v1/routes/invoices", status: 200,
			check: wantRoute("invoices", namesrv.RouteBrokerJSON{Name: "broker-a", Cluster: "east", Addr: "http://10.0.0.7:8080", Queues: 3})},
		{name: "route/patch kept the rest", nameServer: true, method: "GET", path: "/v1/routes/orders", status: 200, check: wantRoute("orders", a8, b)},
		{name: "patch broker/removed", method: "PATCH", path: "/v1/brokers/broker-a", header: jsonCT,
			body:   `{"cluster":"east","addr":"http://10.0.0.7:8080","version":"0.1.0","put":[],"removed":["invoices","never-held"]}`,
			status: 200, check: expiresIn},
		{name: "route/patched out", nameServer: true, method: "GET", path: "/v1/routes/invoices", status: 404, code: broker.CodeTopicNotFound},
		{name: "patch broker/not registered", nameServer: true, method: "PATCH", path: "/v1/brokers/broker-z", header: jsonCT,
			body: `{"addr":"http://10.0.0.9:8080","put":[{"name":"t","queues":1}]}`, status: 404, code: codeBrokerNotFound},
		{name: "patch broker/moved", nameServer: true, method: "PATCH", path: "/v1/brokers/broker-a", header: jsonCT,
			body: `{"cluster":"east","addr":"http://10.0.0.8:8080","put":[{"name":"t","queues":1}]}`, status: 404, code: codeBrokerNotFound},
		{name: "patch broker/put and removed", nameServer: true, method: "PATCH", path: "/v1/brokers/broker-a", header: jsonCT,
			body:   `{"cluster":"east","addr":"http://10.0.0.7:8080","put":[{"name":"t","queues":1}],"removed":["t"]}`,
			status: 400, code: codeInvalidBroker},
		{name: "patch broker/bad topic", nameServer: true, method: "PATCH", path: "/v1/brokers/broker-a", header: jsonCT,
			body:   `{"cluster":"east","addr":"http://10.0.0.7:8080","put":[{"name":"bad!","queues":1}]}`,
			status: 400, code: codeInvalidBroker, invalid: true},
		{name: "patch broker/unknown field", nameServer: true, method: "PATCH", path: "/v1/brokers/broker-a", header: jsonCT,
			body: `{"addr":"http://10.0.0.7:8080","topics":[]}`, status: 400, code: codeInvalidJSON, invalid: true},
		{name: "route/patches refused", nameServer: true, method: "GET", path: "/v1/routes/t", status: 404, code: broker.CodeTopicNotFound},
		// System topics are registered like others (none holds this one).
		{name: "route/system topic", nameServer: true, method: "GET", path: "/v1/routes/%25DLQ%25billing", status: 404,
			code: broker.CodeTopicNotFound},
		{name: "route/invalid name", nameServer: true, method: "GET", path: "/v1/routes/bad!name", status: 400,
			code: broker.CodeInvalidTopic, invalid: true},

		// Refused registrations change nothing.
		invalidBroker("heartbeat/no body", "", "broker name", true),
		invalidBroker("heartbeat/bad name", `{"name":"-a","addr":"http://10.0.0.9:8080"}`, "broker name", true),
		invalidBroker("heartbeat/bad cluster", `{"name":"c","cluster":"a b","addr":"http://10.0.0.9:8080"}`, "cluster", true),
		invalidBroker("heartbeat/no addr", `{"name":"c"}`, "addr", true),
		invalidBroker("heartbeat/bad addr", `{"name":"c","addr":"ftp://10.0.0.9"}`, "addr", true),
		invalidBroker("heartbeat/addr with user", `{"name":"c","addr":"http://u:p@10.0.0.9:8080"}`, "user info", true),
		invalidBroker("heartbeat/bad version", `{"name":"c","addr":"http://10.0.0.9:8080","version":"1\u00e9"}`, "version", true),
		invalidBroker("heartbeat/bad topic", `{"name":"c","addr":"http://10.0.0.9:8080","topics":[{"name":"bad!","queues":1}]}`,
			"topics[0]", true),
		invalidBroker("heartbeat/no queues", `{"name":"c","addr":"http://10.0.0.9:8080","topics":[{"name":"t"}]}`, "queues", true),
		invalidBroker("heartbeat/too many queues", `{"name":"c","addr":"http://10.0.0.9:8080","topics":[{"name":"t","queues":1025}]}`,
			"queues", true),
		// The document cannot say that names are unique: this one validates.
		invalidBroker("heartbeat/topic twice",
			`{"name":"c","addr":"http://10.0.0.9:8080","topics":[{"name":"t","queues":1},{"name":"t","queues":2}]}`, "listed twice", false),
		{name: "heartbeat/bad json", nameServer: true, method: "POST", path: "/v1/brokers/heartbeat", header: jsonCT,
			body: `{"name":`, status: 400, code: codeInvalidJSON, invalid: true},
		{name: "heartbeat/unknown field", nameServer: true, method: "POST", path: "/v1/brokers/heartbeat", header: jsonCT,
			body: `{"name":"c","addr":"http://10.0.0.9:8080","port":8080}`, status: 400, code: codeInvalidJSON, invalid: true},
		{name: "heartbeat/not json", nameServer: true, method: "POST", path: "/v1/brokers/heartbeat",
			header: map[string]string{"Content-Type": "text/plain"}, body: brokerB, status: 415, code: codeUnsupportedMedia, invalid: true},
		{name: "heartbeat/too large", nameServer: true, method: "POST", path: "/v1/brokers/heartbeat", header: jsonCT,
			body: `{"name":"broker-z","addr":"http://10.0.0.9:8080","version":"` + strings.Repeat("v", maxHeartbeatBytes) + `"}`,
			huge: true, status: 413, code: codeRequestTooLarge, invalid: true},
		{name: "cluster/unchanged", nameServer: true, method: "GET", path: "/v1/cluster", status: 200, check: wantCluster(clusterA1, clusterB)},

		{name: "unregister", nameServer: true, method: "DELETE", path: "/v1/brokers/broker-a", status: 204},
		{name: "unregister/unknown", nameServer: true, method: "DELETE", path: "/v1/brokers/broker-a", status: 404,
			code: codeBrokerNotFound},
		{name: "route/unregistered", method: "GET", path: "/v1/routes/orders", status: 200, check: wantRoute("orders", b)},
		// broker-b falls silent for longer than the expiry: it leaves every
		// answer at once, before any scan drops it.
		// Its topics' routes say their brokers are down (not that nobody
		// holds them) for one expiry.
		{name: "route/expired", nameServer: true, method: "GET", path: "/v1/routes/orders", status: 503, code: codeBrokerUnavailable,
			prepare: func(testing.TB, map[string]string) { env.clock.advance(121 * time.Second) }},
		{name: "cluster/expired", nameServer: true, method: "GET", path: "/v1/cluster", status: 200, check: wantCluster()},
		{name: "heartbeat/after expiry", nameServer: true, method: "POST", path: "/v1/brokers/heartbeat", header: jsonCT,
			body: brokerB, status: 200, check: expiresIn},
		{name: "cluster/back", method: "GET", path: "/v1/cluster", status: 200, check: wantCluster(clusterB)},
		// Another instance under broker-b's name, at another address, while
		// broker-b is live: refused, and broker-b keeps its registration.
		{name: "heartbeat/name taken", nameServer: true, method: "POST", path: "/v1/brokers/heartbeat", header: jsonCT,
			body: `{"name":"broker-q","addr":"http://10.0.0.20:8080","instance":"one"}`, status: 200, check: expiresIn},
		{name: "heartbeat/name taken/refused", nameServer: true, method: "POST", path: "/v1/brokers/heartbeat", header: jsonCT,
			body: `{"name":"broker-q","addr":"http://10.0.0.21:8080","instance":"two"}`, status: 409, code: codeBrokerNameTaken},
	}
}

// contractMember is one broker of the cluster env.
type contractMember struct {
	name   string
	broker *broker.Broker
	srv    *httptest.Server
	api    *Server
}

// contractCluster is the cluster env's brokers and their name server.
type contractCluster struct {
	registry *namesrv.Registry
	members  []contractMember
}

// beat registers every member's topics with the name server, as each
// broker's heartbeat does when its topics change.
func (c *contractCluster) beat(tb testing.TB) {
	tb.Helper()
	for _, m := range c.members {
		info := namesrv.BrokerInfo{Name: m.name, Cluster: namesrv.DefaultCluster, Addr: m.srv.URL}
		for _, tp := range m.broker.Topics(context.Background(), "", 0) {
			info.Topics = append(info.Topics, namesrv.Topic{Name: tp.Name, Queues: tp.Queues})
		}
		if err := c.registry.Heartbeat(info); err != nil {
			tb.Fatalf("heartbeat of %s: %v", m.name, err)
		}
	}
}

// dispatched waits until every member has dispatched all it stored of
// topic: n[i] messages on member i's queues. A message reaches its queue
// (and the key index) just after its publish is answered.
func (c *contractCluster) dispatched(topic string, n ...int64) func(tb testing.TB, vars map[string]string) {
	return func(tb testing.TB, _ map[string]string) {
		tb.Helper()
		deadline := time.NewTimer(20 * time.Second)
		defer deadline.Stop()
		for i, m := range c.members {
			for {
				arrived := m.broker.Dispatched()
				queues, _ := m.broker.Queues(topic)
				var got int64
				for q := range queues {
					_, hi := m.broker.QueueBounds(topic, q)
					got += hi
				}
				if got >= n[i] {
					break
				}
				select {
				case <-arrived:
				case <-deadline.C:
					tb.Fatalf("%s holds %d messages of %s after 20s, want %d", m.name, got, topic, n[i])
				}
			}
		}
	}
}

// newClusterContractEnv serves two brokers of one cluster, broker-a (the
// env's main server) and broker-b (other), with a name server, as
// `postbus broker --namesrv` runs them, open.
func newClusterContractEnv(tb testing.TB) (*contractEnv, *contractCluster) {
	tb.Helper()
	c := &contractCluster{registry: newContractRegistry()}
	ns := serveContract(tb, Config{OpenAPI: postbus.OpenAPI, NameServer: c.registry, NameServerOnly: true})
	env := &contractEnv{doc: loadContract(tb), opts: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true,
		AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	for _, name := range []string{"broker-a", "broker-b"} {
		b := openContractBroker(tb, true)
		// An interval of 1ns caches nothing: every lookup asks the name
		// server, so a broker is routed to as soon as it has beaten.
		names := namesrv.NewClient(namesrv.ClientConfig{Addrs: []string{ns.URL}, Interval: time.Nanosecond})
		api := mustNew(tb, Config{Broker: b, OpenAPI: postbus.OpenAPI, Cluster: &Cluster{Self: name, Names: names}})
		srv := httptest.NewServer(api)
		tb.Cleanup(srv.Close)
		c.members = append(c.members, contractMember{name: name, broker: b, srv: srv, api: api})
		env.members = append(env.members, name)
	}
	env.main, env.other, env.broker = c.members[0].srv, c.members[1].srv, c.members[0].broker
	env.route(tb, env.main, env.other)
	return env, c
}

// answeredBy checks an answer's Postbus-Broker.
func answeredBy(name string) func(tb testing.TB, resp *http.Response, body []byte) {
	return func(tb testing.TB, resp *http.Response, _ []byte) {
		if got := resp.Header.Get(hdrBroker); got != name {
			tb.Errorf("%s: %q, want %q", hdrBroker, got, name)
		}
	}
}

// checks runs several checks on one answer.
func checks(fs ...func(tb testing.TB, resp *http.Response, body []byte)) func(tb testing.TB, resp *http.Response, body []byte) {
	return func(tb testing.TB, resp *http.Response, body []byte) {
		for _, f := range fs {
			f(tb, resp, body)
		}
	}
}

// TestContractClusterTraffic records traffic through two brokers of a
// cluster: the answers only a cluster gives (placement, merged topics,
// results and receipts naming brokers, composite cursors, Postbus-Broker
// on every answer, 502 and 503) must match the document as a standalone
// broker's do.
func TestContractClusterTraffic(t *testing.T) {
	env, c := newClusterContractEnv(t)
	jsonCT := map[string]string{"Content-Type": "application/json"}
	// orders has 2 queues on each broker: a sharding key whose queue
	// number over the whole topic is 0 or 1 lands on broker-a, 2 or 3 on
	// broker-b (holders are numbered in name order).
	keyOn := func(a bool) string {
		for i := 0; ; i++ {
			if k := fmt.Sprintf("key-%d", i); (shardQueue(k)%4 < 2) == a {
				return k
			}
		}
	}
	keyA, keyB := keyOn(true), keyOn(false)
	wantTopic := func(queueCount int, brokers ...string) func(tb testing.TB, resp *http.Response, body []byte) {
		return func(tb testing.TB, _ *http.Response, body []byte) {
			var got struct {
				QueueCount int      `json:"queue_count"`
				Brokers    []string `json:"brokers"`
				Queues     []struct {
					Broker string `json:"broker"`
				} `json:"queues"`
			}
			decodeAnswer(tb, body, &got)
			slices.Sort(got.Brokers)
			if got.QueueCount != queueCount || !slices.Equal(got.Brokers, brokers) {
				tb.Errorf("queue_count %d on brokers %v, want %d on %v", got.QueueCount, got.Brokers, queueCount, brokers)
			}
		}
	}
	storedOn := func(names ...string) func(tb testing.TB, resp *http.Response, body []byte) {
		return func(tb testing.TB, _ *http.Response, body []byte) {
			var got []publishResult
			if body[0] != '[' {
				body = []byte("[" + string(body) + "]")
			}
			decodeAnswer(tb, body, &got)
			var brokers []string
			for _, r := range got {
				brokers = append(brokers, r.Broker)
			}
			if !slices.Equal(brokers, names) {
				tb.Errorf("stored on %q, want %q", brokers, names)
			}
		}
	}
	var secret string
	// broker-c is registered but cannot be reached: the name server
	// lists it until it expires.
	unreachable := func(tb testing.TB, _ map[string]string) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		addr := "http://" + ln.Addr().String()
		ln.Close()
		if err := c.registry.Heartbeat(namesrv.BrokerInfo{Name: "broker-c", Addr: addr,
			Topics: []namesrv.Topic{{Name: "ghost", Queues: 1}}}); err != nil {
			tb.Fatal(err)
		}
	}

	exchanges := []exchange{
		// Topics: placed by "brokers", merged over their holders.
		{name: "put topic/on all brokers", method: "PUT", path: "/v1/topics/orders", header: jsonCT,
			body: `{"queues":2,"brokers":"all"}`, status: 201,
			check: checks(answeredBy("broker-a"), wantTopic(2, "broker-a", "broker-b"))},
		{name: "put topic/on one broker", method: "PUT", path: "/v1/topics/solo", header: jsonCT,
			body: `{"queues":1,"brokers":["broker-b"]}`, status: 201, check: wantTopic(1, "broker-b")},
		{name: "put topic/unknown broker", method: "PUT", path: "/v1/topics/nowhere", header: jsonCT,
			body: `{"brokers":["broker-a","broker-z"]}`, status: 400, code: codeUnknownBroker},
		{name: "get topic/merged", method: "GET", path: "/v1/topics/orders", status: 200,
			check: func(tb testing.TB, resp *http.Response, body []byte) {
				wantTopic(4, "broker-a", "broker-b")(tb, resp, body)
				var got struct {
					Queues []struct {
						Broker  string `json:"broker"`
						QueueID int    `json:"queue_id"`
					} `json:"queues"`
				}
				decodeAnswer(tb, body, &got)
				var where []string
				for _, q := range got.Queues {
					where = append(where, fmt.Sprintf("%s/%d", q.Broker, q.QueueID))
				}
				if want := []string{"broker-a/0", "broker-a/1", "broker-b/0", "broker-b/1"}; !slices.Equal(where, want) {
					tb.Errorf("queues %v, want %v", where, want)
				}
			}},
		{name: "get topic/forwarded", method: "GET", path: "/v1/topics/orders", header: map[string]string{hdrForwardedBy: "broker-b"},
			status: 200, check: func(tb testing.TB, resp *http.Response, body []byte) {
				if b := jsonField(tb, body, "brokers"); b != nil || jsonField(tb, body, "queue_count") != float64(2) {
					tb.Errorf("a forwarded request answered %s, want broker-a's 2 queues alone", clip(body))
				}
			}},
		{name: "list topics/merged", other: true, method: "GET", path: "/v1/topics", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got struct{ Topics []topicJSON }
				var brokers struct {
					Topics []struct{ Brokers []string }
				}
				decodeAnswer(tb, body, &got)
				decodeAnswer(tb, body, &brokers)
				var summary []string
				for i, tp := range got.Topics {
					slices.Sort(brokers.Topics[i].Brokers)
					summary = append(summary, fmt.Sprintf("%s %d %v", tp.Name, tp.QueueCount, brokers.Topics[i].Brokers))
				}
				if want := []string{"orders 4 [broker-a broker-b]", "solo 1 [broker-b]"}; !slices.Equal(summary, want) {
					tb.Errorf("topics %q, want %q", summary, want)
				}
			}},

		// Publish: stored by a holder, which the result names.
		{name: "publish/forwarded", method: "POST", path: "/v1/topics/solo/messages", body: "x", status: 201,
			check: checks(answeredBy("broker-b"), storedOn("broker-b"))},
		{name: "publish/here", method: "POST", path: "/v1/topics/orders/messages", header: map[string]string{"Postbus-Keys": "k"},
			body: "on a", status: 201, check: checks(answeredBy("broker-a"), storedOn("broker-a"))},
		{name: "publish/there", other: true, method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Postbus-Keys": "k"}, body: "on b", status: 201, check: storedOn("broker-b")},
		{name: "publish/sharded", method: "POST", path: "/v1/topics/orders/messages",
			header: map[string]string{"Postbus-Keys": "k", "Postbus-Sharding-Key": keyB}, body: "sharded", status: 201,
			check: checks(answeredBy("broker-b"), storedOn("broker-b"))},
		{name: "batch/split", method: "POST", path: "/v1/topics/orders/messages/batch", header: jsonCT,
			body:   `[{"body":"one","keys":["k"],"sharding_key":"` + keyA + `"},{"body":"two","sharding_key":"` + keyB + `"}]`,
			status: 201, check: checks(answeredBy("broker-a"), storedOn("broker-a", "broker-b"))},

		// Queries by key page each broker's index under one cursor.
		{name: "by key/merged", method: "GET", path: "/v1/topics/orders/messages?key=k&limit=1", status: 200,
			prepare: c.dispatched("orders", 2, 3),
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got struct {
					Messages   []messageJSON
					NextCursor string `json:"next_cursor"`
				}
				decodeAnswer(tb, body, &got)
				var parts []string
				for _, p := range strings.Split(got.NextCursor, ",") {
					name, _, _ := strings.Cut(p, "~")
					parts = append(parts, name)
				}
				if len(got.Messages) != 2 || !slices.Equal(parts, []string{"broker-a", "broker-b"}) {
					tb.Errorf("%d messages, next_cursor %q: want one from each broker, and a cursor naming both", len(got.Messages), got.NextCursor)
				}
			}},

		// Pull from every holder; ack through any broker.
		{name: "pull/everywhere", method: "POST", path: "/v1/groups/workers/topics/orders/pull?max=32", status: 200,
			save: map[string]string{"r0": "messages.0.receipt", "r1": "messages.1.receipt", "r2": "messages.2.receipt",
				"r3": "messages.3.receipt", "r4": "messages.4.receipt"},
			check: pulled(func(tb testing.TB, got []pulledJSON) {
				issuers := map[string]int{}
				for _, m := range got {
					name, _, _ := strings.Cut(m.Receipt, "~")
					issuers[name]++
				}
				if len(got) != 5 || issuers["broker-a"] != 2 || issuers["broker-b"] != 3 {
					tb.Errorf("pulled %d messages with receipts of %v, want 2 of broker-a's and 3 of broker-b's", len(got), issuers)
				}
			})},
		{name: "ack/anywhere", other: true, method: "POST", path: "/v1/groups/workers/ack", header: jsonCT,
			body: `{"receipts":["{r0}","{r1}","{r2}","{r3}","{r4}"]}`, status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got receiptResultsJSON
				decodeAnswer(tb, body, &got)
				if len(got.Results) != 5 {
					tb.Fatalf("results %+v, want 5", got.Results)
				}
				for i, r := range got.Results {
					// In the request's order, named as the client sent them.
					if r.Status != "acked" || !strings.Contains(r.Receipt, "~") {
						tb.Errorf("results[%d] = %+v, want acked, its broker named", i, r)
					}
				}
			}},

		// A group's position on every holder's queues, each naming its
		// broker (openapi.yaml once left `broker` out of QueueLag).
		{name: "get group/merged", method: "GET", path: "/v1/groups/workers", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got struct {
					Queues []struct {
						Broker string `json:"broker"`
						Topic  string `json:"topic"`
					} `json:"queues"`
				}
				decodeAnswer(tb, body, &got)
				brokers := map[string]int{}
				for _, q := range got.Queues {
					if q.Topic == "orders" {
						brokers[q.Broker]++
					}
				}
				if brokers["broker-a"] != 2 || brokers["broker-b"] != 2 || len(brokers) != 2 {
					tb.Errorf("queues of orders by broker %v, want 2 on each of broker-a and broker-b", brokers)
				}
			}},

		// Subscriptions: one id and secret on every holder.
		{name: "create subscription/everywhere", method: "POST", path: "/v1/subscriptions", header: jsonCT,
			body: `{"id":"ledger1","group":"ledger","topic":"orders","url":"http://127.0.0.1:9/hook"}`, status: 201,
			check: wantSubscription(func(tb testing.TB, got subscriptionJSON) {
				if got.ID != "ledger1" || !strings.HasPrefix(got.Secret, "whsec_") {
					tb.Errorf("id %q secret %q, want ledger1 and a secret", got.ID, got.Secret)
				}
				secret = got.Secret
			})},
		{name: "get subscription/the other copy", other: true, method: "GET", path: "/v1/subscriptions/ledger1",
			header: map[string]string{hdrForwardedBy: "broker-a"}, status: 200, check: answeredBy("broker-b")},
		{name: "rotate secret/everywhere", method: "POST", path: "/v1/subscriptions/ledger1/rotate-secret", header: jsonCT,
			body: `{"secret":"` + webhookSecret(40) + `"}`, status: 200,
			check: wantSubscription(func(tb testing.TB, got subscriptionJSON) {
				if got.Secret != webhookSecret(40) || got.Secret == secret {
					tb.Errorf("secret %q after a rotation to %q", got.Secret, webhookSecret(40))
				}
			})},
		{name: "list subscriptions/merged", other: true, method: "GET", path: "/v1/subscriptions", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got struct{ Subscriptions []subscriptionJSON }
				decodeAnswer(tb, body, &got)
				n := 0
				for _, s := range got.Subscriptions {
					if s.ID == "ledger1" {
						n++
					}
				}
				if n != 1 {
					tb.Errorf("ledger1 listed %d times, want once", n)
				}
			}},

		// The stats of both brokers, summed point by point.
		{name: "stats/summed", method: "GET", path: "/v1/stats?topic=orders", status: 200,
			prepare: func(tb testing.TB, _ map[string]string) {
				at := time.Now().Truncate(time.Hour).Add(-time.Hour)
				for _, m := range c.members {
					sampleStats(tb, m.api, at)
				}
				// What each stored meanwhile makes the second point's rate.
				for _, k := range []string{keyA, keyB, keyB} {
					req, err := http.NewRequest("POST", env.main.URL+"/v1/topics/orders/messages", strings.NewReader("x"))
					if err != nil {
						tb.Fatal(err)
					}
					req.Header.Set(hdrShardingKey, k)
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						tb.Fatal(err)
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusCreated {
						tb.Fatalf("publish: %d", resp.StatusCode)
					}
				}
				for _, m := range c.members {
					sampleStats(tb, m.api, at.Add(stats.DefaultResolution))
				}
			},
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got statsJSON
				decodeAnswer(tb, body, &got)
				if !slices.Equal(got.Brokers, []string{"broker-a", "broker-b"}) || len(got.Unavailable) != 0 {
					tb.Errorf("brokers %v and unavailable %v, want both and none", got.Brokers, got.Unavailable)
				}
				// 1 on broker-a and 2 on broker-b in a 10 s step.
				if len(got.Topics) != 1 || len(got.Topics[0].InPerSecond) != 2 || got.Topics[0].InPerSecond[1] != 0.3 {
					tb.Errorf("orders %s, want 0.3 a second summed over both brokers", body)
				}
			}},

		// A broker that cannot be reached: 503 for what only it holds, 502
		// for what was applied on the others.
		{name: "publish/unreachable", method: "POST", path: "/v1/topics/ghost/messages", body: "x", status: 503,
			code: codeBrokerUnavailable, prepare: unreachable},
		{name: "delete subscription/partly", method: "DELETE", path: "/v1/subscriptions/ledger1", status: 502,
			code: codeClusterPartial},
		{name: "stats/a broker unreachable", method: "GET", path: "/v1/stats", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				var got statsJSON
				decodeAnswer(tb, body, &got)
				if !slices.Equal(got.Brokers, []string{"broker-a", "broker-b"}) || !slices.Equal(got.Unavailable, []string{"broker-c"}) {
					tb.Errorf("brokers %v and unavailable %v, want broker-c unavailable", got.Brokers, got.Unavailable)
				}
			}},
		{name: "delete subscription/gone", method: "DELETE", path: "/v1/subscriptions/ledger1", status: 404,
			code:    broker.CodeSubscriptionNotFound,
			prepare: func(tb testing.TB, _ map[string]string) { c.registry.Unregister("broker-c") }},

		// Internal: another broker pushes its subscription records.
		{name: "sync/records", method: "POST", path: "/v1/internal/subscriptions/sync", header: mergeHeaders(jsonCT, map[string]string{hdrForwardedBy: "broker-b"}),
			body:   `{"from":"broker-b","topics":{"orders":[{"id":"gone1","group":"g","topic":"orders","version":1,"version_by":"broker-b","deleted":true}]}}`,
			status: 200},
		{name: "sync/from itself", method: "POST", path: "/v1/internal/subscriptions/sync", header: jsonCT,
			body: `{"from":"broker-a","topics":{}}`, status: 400, code: codeInvalidParameter},
	}
	// Each broker heartbeats as soon as its topics change.
	for i := range exchanges {
		prepare := exchanges[i].prepare
		exchanges[i].prepare = func(tb testing.TB, vars map[string]string) {
			c.beat(tb)
			if prepare != nil {
				prepare(tb, vars)
			}
		}
	}
	env.run(t, exchanges, make(map[string]string), make(contractSeen))
}

// contractHeldPolls holds one long poll for a client whose bound is one
// (the auth env's MaxHeldPollsPerClient) and checks that its next long
// polls, a pull and a read by offset, answer 429 too_many_polls.
func contractHeldPolls(t *testing.T, env *contractEnv, seen contractSeen) {
	hdr := bearerHeader(contractToken(t, jwt.MapClaims{"sub": "poller", "scope": "consume:* subscribe:*",
		"exp": time.Now().Add(time.Hour).Unix()}))
	ctx, cancel := context.WithCancel(context.Background())
	held := make(chan struct{})
	go func() {
		defer close(held)
		// Past the queue's end: held until its wait passes or it is
		// cancelled.
		req, _ := http.NewRequestWithContext(ctx, "GET", env.main.URL+"/v1/topics/orders/queues/0/messages?offset=1099511627776&wait=30s", nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	defer func() { cancel(); <-held }()
	waitUntil(t, "the long poll to be held", func() (bool, string) {
		_, m := do(t, "GET", env.main.URL+"/metrics", nil, nil)
		return bytes.Contains(m, []byte("\npostbus_http_held_polls 1\n")), grepLines(m, "postbus_http_held_polls")
	})
	retryAfter := func(tb testing.TB, resp *http.Response, _ []byte) {
		if resp.Header.Get("Retry-After") != "1" {
			tb.Errorf("Retry-After = %q, want 1", resp.Header.Get("Retry-After"))
		}
	}
	for _, x := range []exchange{
		{name: "pull", method: "POST", path: "/v1/groups/pollers/topics/orders/pull?wait=1s", header: hdr,
			status: 429, code: codeTooManyPolls, check: retryAfter},
		{name: "read queue", method: "GET", path: "/v1/topics/orders/queues/0/messages?offset=0&wait=1s", header: hdr,
			status: 429, code: codeTooManyPolls, check: retryAfter},
	} {
		t.Run(x.name, func(t *testing.T) {
			a := env.send(t, x, nil)
			env.verify(t, a)
			seen.add(a.op, a.resp.StatusCode)
			expectExchange(t, x, a.resp, a.body, nil)
		})
	}
}
