package httpapi

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/golang-jwt/jwt/v5"
	"github.com/postbus/postbus/broker"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

func hsToken(tb testing.TB, claims jwt.MapClaims) string {
	tb.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(testSecret)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func scoped(scope string) jwt.MapClaims {
	return jwt.MapClaims{"scope": scope, "exp": time.Now().Add(time.Hour).Unix(), "sub": "test"}
}

func newAuthServer(tb testing.TB, cfg Config, logs *bytes.Buffer) (*httptest.Server, *broker.Broker) {
	tb.Helper()
	bc := broker.DefaultConfig(tb.TempDir())
	bc.AutoCreateTopics = true
	bc.SegmentSize = 8 << 20
	bc.MaxMessageBytes = 1 << 20
	b, err := broker.Open(context.Background(), bc)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.Broker = b
	if cfg.Auth.HMACSecret == nil && cfg.Auth.PublicKeys == nil {
		cfg.Auth.HMACSecret = testSecret
	}
	if logs != nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv := httptest.NewServer(mustNew(tb, cfg))
	tb.Cleanup(func() { srv.Close(); b.Close() })
	return srv, b
}

func withToken(tok string) map[string]string {
	if tok == "" {
		return nil
	}
	return map[string]string{"Authorization": "Bearer " + tok, "Content-Type": "application/json"}
}

// TestEveryRouteHasAnAuthDecision walks the router: a route added without
// an access decision fails here.
func TestEveryRouteHasAnAuthDecision(t *testing.T) {
	s := mustNew(t, Config{Auth: AuthConfig{HMACSecret: testSecret}})
	access := s.Access()
	walked := 0
	err := walkRoutes(s, func(method, route string) {
		walked++
		if _, ok := access[method+" "+route]; !ok {
			t.Errorf("%s %s has no auth decision: mount it with Server.handle", method, route)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if walked != len(access) {
		t.Errorf("router has %d routes, %d auth decisions", walked, len(access))
	}
}

// TestAuthEveryRoute: for every route, no token is 401 (unless open), a
// token without the needed scope is 403 (for admin and publish routes), and
// an admin token gets through.
func TestAuthEveryRoute(t *testing.T) {
	srv, b := newAuthServer(t, Config{}, nil)
	res, err := b.Publish(context.Background(), "orders", []*broker.Message{{Body: []byte("x"), Keys: []string{"k"}}})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := b.CreateSubscription(context.Background(), broker.Subscription{Group: "billing", Topic: "orders", MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	s := mustNew(t, Config{Auth: AuthConfig{HMACSecret: testSecret}})
	admin := hsToken(t, scoped("admin"))
	outsider := hsToken(t, scoped("publish:other consume:nobody"))
	for route, decision := range s.Access() {
		method, pattern, _ := strings.Cut(route, " ")
		path := strings.NewReplacer("{topic}", "orders", "{msg_id}", res[0].ID, "{group}", "billing", "{id}", sub.ID, "{queue}", "0").Replace(pattern)
		if route == "GET /v1/topics/{topic}/messages" {
			path += "?key=k"
		}
		body := func() *strings.Reader {
			switch {
			case strings.HasSuffix(pattern, "/batch"):
				return strings.NewReader(`[{"body":"x"}]`)
			case method == "PUT":
				return strings.NewReader(`{"queues":4}`)
			case pattern == "/v1/subscriptions":
				return strings.NewReader(`{"group":"billing2","topic":"orders"}`)
			case strings.HasSuffix(pattern, "/reset"):
				return strings.NewReader(`{"topic":"orders","to":"latest"}`)
			case strings.HasSuffix(pattern, "/ack"), strings.HasSuffix(pattern, "/nack"):
				return strings.NewReader(`{"receipts":["x"]}`)
			case strings.HasSuffix(pattern, "/redrive"):
				return strings.NewReader(`{"all":true}`)
			case method == "PATCH":
				return strings.NewReader(`{}`)
			}
			return strings.NewReader("x")
		}
		t.Run(route, func(t *testing.T) {
			resp, data := do(t, method, srv.URL+path, nil, body())
			if decision == "open" {
				if resp.StatusCode == 401 || resp.StatusCode == 403 {
					t.Fatalf("open route answered %d without a token: %s", resp.StatusCode, data)
				}
				return
			}
			if resp.StatusCode != 401 || !strings.Contains(string(data), `"code":"unauthorized"`) || resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatalf("no token: %d %s", resp.StatusCode, data)
			}
			resp, data = do(t, method, srv.URL+path, withToken(outsider), body())
			switch decision {
			case "admin", "publish:{topic}", "publish|subscribe:{topic}", "subscribe:{topic}", "consume:{group}", "consume:{group} subscribe:{topic}":
				if resp.StatusCode != 403 || !strings.Contains(string(data), `"code":"forbidden"`) {
					t.Fatalf("out-of-scope token: %d %s", resp.StatusCode, data)
				}
			case "token":
				// Any valid token gets in; creating a subscription then
				// checks the body's group.
				if resp.StatusCode == 401 || (resp.StatusCode == 403 && pattern != "/v1/subscriptions") {
					t.Fatalf("any valid token should get in: %d %s", resp.StatusCode, data)
				}
			default:
				t.Fatalf("unknown decision %q", decision)
			}
			resp, data = do(t, method, srv.URL+path, withToken(admin), body())
			if resp.StatusCode == 401 || resp.StatusCode == 403 {
				t.Fatalf("admin token refused: %d %s", resp.StatusCode, data)
			}
			if method == "DELETE" && pattern == "/v1/topics/{topic}" { // put it back for the other routes
				do(t, "PUT", srv.URL+path, withToken(admin), strings.NewReader(`{}`))
				if _, err := b.Publish(context.Background(), "orders", []*broker.Message{{Body: []byte("x")}}); err != nil {
					t.Fatalf("publish: %v", err)
				}
			}
		})
	}
}

// TestRefusedTokens: each bad token is a 401, and the answer does not echo it.
func TestRefusedTokens(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaPub, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPub})
	srvHS, _ := newAuthServer(t, Config{}, nil)
	srvRS, _ := newAuthServer(t, Config{Auth: AuthConfig{PublicKeys: []VerifyKey{{Key: &rsaKey.PublicKey}}}}, nil)
	now := time.Now()
	sign := func(m jwt.SigningMethod, key any, c jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	good := jwt.MapClaims{"scope": "admin", "exp": now.Add(time.Hour).Unix()}
	with := func(k string, v any) jwt.MapClaims {
		c := jwt.MapClaims{}
		for a, b := range good {
			c[a] = b
		}
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, good).SignedString(jwt.UnsafeAllowNoneSignatureType)
	// critical signs good with extra header fields.
	critical := func(m jwt.SigningMethod, key any, header map[string]any) string {
		tok := jwt.NewWithClaims(m, good)
		for k, v := range header {
			tok.Header[k] = v
		}
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	exp := now.Add(time.Hour).Unix()
	tests := []struct {
		name  string
		srv   *httptest.Server
		token string
	}{
		{"wrong HMAC key", srvHS, sign(jwt.SigningMethodHS256, []byte("another secret that is long enough!"), good)},
		{"alg none", srvHS, none},
		{"alg none on RS", srvRS, none},
		{"HS/RS confusion: HS256 keyed with the RSA public key", srvRS, sign(jwt.SigningMethodHS256, rsaPEM, good)},
		{"RS256 to an HS-only server", srvHS, sign(jwt.SigningMethodRS256, rsaKey, good)},
		{"expired", srvHS, sign(jwt.SigningMethodHS256, testSecret, with("exp", now.Add(-time.Hour).Unix()))},
		{"no exp", srvHS, sign(jwt.SigningMethodHS256, testSecret, with("exp", nil))},
		{"not valid yet", srvHS, sign(jwt.SigningMethodHS256, testSecret, with("nbf", now.Add(time.Hour).Unix()))},
		{"issued in the future", srvHS, sign(jwt.SigningMethodHS256, testSecret, with("iat", now.Add(time.Hour).Unix()))},
		{"garbage", srvHS, "not.a.jwt"},
		{"tampered payload", srvHS, tamper(sign(jwt.SigningMethodHS256, testSecret, with("scope", "publish:x")))},
		// RFC 7515 §4.1.11: an extension named in crit that the server
		// does not understand makes the token invalid.
		{"crit naming an unknown extension", srvHS, critical(jwt.SigningMethodHS256, testSecret, map[string]any{"crit": []string{"x-bind"}, "x-bind": "tls"})},
		{"crit naming a missing extension", srvHS, critical(jwt.SigningMethodHS256, testSecret, map[string]any{"crit": []string{"b64"}})},
		{"crit empty", srvHS, critical(jwt.SigningMethodHS256, testSecret, map[string]any{"crit": []string{}})},
		{"crit not a list", srvHS, critical(jwt.SigningMethodHS256, testSecret, map[string]any{"crit": "exp"})},
		{"crit on RS256", srvRS, critical(jwt.SigningMethodRS256, rsaKey, map[string]any{"crit": []string{"x-bind"}, "x-bind": 1})},
		// RFC 7519: exp, nbf and iat are NumericDates, JSON numbers.
		{"exp a numeric string", srvHS, sign(jwt.SigningMethodHS256, testSecret, with("exp", strconv.FormatInt(exp, 10)))},
		{"exp null", srvHS, sign(jwt.SigningMethodHS256, testSecret, with("exp", json.RawMessage("null")))},
		{"exp true", srvHS, sign(jwt.SigningMethodHS256, testSecret, with("exp", true))},
		{"nbf a numeric string", srvHS, sign(jwt.SigningMethodHS256, testSecret, with("nbf", strconv.FormatInt(now.Unix(), 10)))},
		{"nbf null", srvHS, sign(jwt.SigningMethodHS256, testSecret, with("nbf", json.RawMessage("null")))},
		{"iat a numeric string", srvHS, sign(jwt.SigningMethodHS256, testSecret, with("iat", strconv.FormatInt(now.Unix(), 10)))},
		{"iat null", srvHS, sign(jwt.SigningMethodHS256, testSecret, with("iat", json.RawMessage("null")))},
		{"iat an object", srvHS, sign(jwt.SigningMethodHS256, testSecret, with("iat", map[string]int{"s": 1}))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, data := do(t, "PUT", tt.srv.URL+"/v1/topics/t", withToken(tt.token), strings.NewReader(`{}`))
			if resp.StatusCode != 401 || !strings.Contains(string(data), `"code":"unauthorized"`) {
				t.Fatalf("%d %s", resp.StatusCode, data)
			}
			if strings.Contains(string(data), tt.token) {
				t.Fatal("the problem echoes the token")
			}
		})
	}
	// Within the leeway is fine; the good RS token is fine.
	if resp, data := do(t, "PUT", srvHS.URL+"/v1/topics/t", withToken(sign(jwt.SigningMethodHS256, testSecret, with("nbf", now.Add(10*time.Second).Unix()))), nil); resp.StatusCode >= 400 {
		t.Fatalf("nbf within leeway: %d %s", resp.StatusCode, data)
	}
	if resp, data := do(t, "PUT", srvRS.URL+"/v1/topics/t", withToken(sign(jwt.SigningMethodRS256, rsaKey, good)), nil); resp.StatusCode >= 400 {
		t.Fatalf("good RS256 token: %d %s", resp.StatusCode, data)
	}
	// Numbers in every form JSON has are numbers.
	numeric := with("exp", json.RawMessage(strconv.FormatInt(exp, 10)+".5e0"))
	numeric["nbf"], numeric["iat"] = json.RawMessage(strconv.FormatInt(now.Unix()-5, 10)), now.Unix()-1
	if resp, data := do(t, "PUT", srvHS.URL+"/v1/topics/t", withToken(sign(jwt.SigningMethodHS256, testSecret, numeric)), nil); resp.StatusCode >= 400 {
		t.Fatalf("numeric exp, nbf, iat: %d %s", resp.StatusCode, data)
	}
}

// tamper swaps the payload for one granting admin, keeping the signature.
func tamper(tok string) string {
	parts := strings.Split(tok, ".")
	parts[1] = jwtRaw([]byte(`{"scope":"admin","exp":9999999999}`))
	return strings.Join(parts, ".")
}

func jwtRaw(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// walkRoutes calls fn with each route of the server's router.
func walkRoutes(s *Server, fn func(method, route string)) error {
	return chi.Walk(s.Routes(), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		fn(method, route)
		return nil
	})
}

// TestPublicKeysFromFiles: PEM with kids and a JWKS, RS256, ES256 and
// EdDSA, with key rotation by kid.
func TestPublicKeysFromFiles(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edPub, edKey, _ := ed25519.GenerateKey(rand.Reader)
	oldEd, oldEdKey, _ := ed25519.GenerateKey(rand.Reader)
	dir := t.TempDir()

	var pemFile bytes.Buffer
	for _, k := range []struct {
		kid string
		pub any
	}{{"rsa-1", &rsaKey.PublicKey}, {"ec-1", &ecKey.PublicKey}, {"ed-new", edPub}, {"ed-old", oldEd}} {
		der, err := x509.MarshalPKIXPublicKey(k.pub)
		if err != nil {
			t.Fatal(err)
		}
		if err := pem.Encode(&pemFile, &pem.Block{Type: "PUBLIC KEY", Headers: map[string]string{"kid": k.kid}, Bytes: der}); err != nil {
			t.Fatal(err)
		}
	}
	pemPath := filepath.Join(dir, "keys.pem")
	if err := os.WriteFile(pemPath, pemFile.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}

	b64 := func(b []byte) string { return jwtRaw(b) }
	ecPoint, err := ecKey.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	ecX, ecY := ecPoint[1:33], ecPoint[33:65]
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{
		{"kty": "RSA", "kid": "rsa-1", "n": b64(rsaKey.PublicKey.N.Bytes()), "e": b64([]byte{1, 0, 1})},
		{"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": b64(ecX), "y": b64(ecY)},
		{"kty": "OKP", "kid": "ed-new", "crv": "Ed25519", "x": b64(edPub)},
		{"kty": "OKP", "kid": "ed-old", "crv": "Ed25519", "x": b64(oldEd)},
		{"kty": "OKP", "kid": "enc", "crv": "Ed25519", "x": b64(oldEd), "use": "enc"},
	}})
	jwksPath := filepath.Join(dir, "keys.json")
	if err := os.WriteFile(jwksPath, jwks, 0o600); err != nil {
		t.Fatal(err)
	}

	sign := func(m jwt.SigningMethod, kid string, key any) string {
		tok := jwt.NewWithClaims(m, scoped("admin"))
		tok.Header["kid"] = kid
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, path := range []string{pemPath, jwksPath} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			keys, err := LoadPublicKeys(path)
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != 4 {
				t.Fatalf("%d keys loaded, want 4", len(keys))
			}
			srv, _ := newAuthServer(t, Config{Auth: AuthConfig{PublicKeys: keys}}, nil)
			for _, c := range []struct {
				name string
				tok  string
				ok   bool
			}{
				{"RS256", sign(jwt.SigningMethodRS256, "rsa-1", rsaKey), true},
				{"ES256", sign(jwt.SigningMethodES256, "ec-1", ecKey), true},
				{"EdDSA new key", sign(jwt.SigningMethodEdDSA, "ed-new", edKey), true},
				{"EdDSA old key during rotation", sign(jwt.SigningMethodEdDSA, "ed-old", oldEdKey), true},
				{"EdDSA signed by old key but naming the new", sign(jwt.SigningMethodEdDSA, "ed-new", oldEdKey), false},
				{"unknown kid", sign(jwt.SigningMethodEdDSA, "ed-gone", edKey), false},
			} {
				resp, data := do(t, "GET", srv.URL+"/v1/topics", withToken(c.tok), nil)
				if got := resp.StatusCode == 200; got != c.ok {
					t.Errorf("%s: %d %s", c.name, resp.StatusCode, data)
				}
			}
		})
	}
	for name, content := range map[string]string{
		"private key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})),
		"empty":        "",
		"garbage":      "hello",
		"jwks private": `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + b64(edPub) + `","d":"secret"}]}`,
		"small rsa":    `{"keys":[{"kty":"RSA","n":"` + b64([]byte{0xc3, 0x51}) + `","e":"AQAB"}]}`,
		"wrong curve":  `{"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}]}`,
	} {
		p := filepath.Join(dir, "bad-"+strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadPublicKeys(p); err == nil {
			t.Errorf("%s: loaded without error", name)
		}
	}
}

// TestScopesNarrowReads: a token reads only messages and topics it may
// publish to; the rest look absent.
func TestScopesNarrowReads(t *testing.T) {
	srv, b := newAuthServer(t, Config{}, nil)
	ctx := context.Background()
	alpha, _ := b.Publish(ctx, "alpha", []*broker.Message{{Body: []byte("a")}})
	beta, _ := b.Publish(ctx, "beta", []*broker.Message{{Body: []byte("b")}})
	tok := hsToken(t, scoped("publish:al*"))
	if resp, data := do(t, "GET", srv.URL+"/v1/messages/"+alpha[0].ID, withToken(tok), nil); resp.StatusCode != 200 {
		t.Fatalf("own topic's message: %d %s", resp.StatusCode, data)
	}
	for _, path := range []string{"/v1/messages/" + beta[0].ID, "/v1/messages/" + beta[0].ID + "/body"} {
		if resp, data := do(t, "GET", srv.URL+path, withToken(tok), nil); resp.StatusCode != 404 || !strings.Contains(string(data), "message_not_found") {
			t.Fatalf("%s of another topic: %d %s", path, resp.StatusCode, data)
		}
	}
	_, data := do(t, "GET", srv.URL+"/v1/topics", withToken(tok), nil)
	var list struct {
		Topics []topicJSON `json:"topics"`
	}
	if json.Unmarshal(data, &list) != nil || len(list.Topics) != 1 || list.Topics[0].Name != "alpha" {
		t.Fatalf("topic list for publish:al*: %s", data)
	}
	// 403 for an unknown topic and a known one alike: nothing revealed.
	r1, _ := do(t, "GET", srv.URL+"/v1/topics/beta", withToken(tok), nil)
	r2, _ := do(t, "GET", srv.URL+"/v1/topics/nonexistent", withToken(tok), nil)
	if r1.StatusCode != 403 || r2.StatusCode != 403 {
		t.Fatalf("out-of-scope topics: %d and %d, want 403 for both", r1.StatusCode, r2.StatusCode)
	}
}

func TestPublishRateLimit(t *testing.T) {
	srv, _ := newAuthServer(t, Config{PublishRate: 0.01, PublishBurst: broker.MaxBatchMessages}, nil)
	a, b := hsToken(t, jwt.MapClaims{"scope": "publish:*", "sub": "a", "exp": time.Now().Add(time.Hour).Unix()}),
		hsToken(t, jwt.MapClaims{"scope": "publish:*", "sub": "b", "exp": time.Now().Add(time.Hour).Unix()})
	batch := "[" + strings.Repeat(`{"body":"x"},`, 999) + `{"body":"x"}]`
	// A batch the broker refuses gives its messages back.
	bad := "[" + strings.Repeat(`{"body":"x"},`, 999) + `{"body":"x","tag":"a||b"}]`
	if resp, data := do(t, "POST", srv.URL+"/v1/topics/t/messages/batch", withToken(a), strings.NewReader(bad)); resp.StatusCode != 400 {
		t.Fatalf("a refused batch: %d %s", resp.StatusCode, data)
	}
	if resp, data := do(t, "POST", srv.URL+"/v1/topics/t/messages/batch", withToken(a), strings.NewReader(batch)); resp.StatusCode != 201 {
		t.Fatalf("a batch within the burst: %d %s", resp.StatusCode, data)
	}
	resp, data := do(t, "POST", srv.URL+"/v1/topics/t/messages", withToken(a), strings.NewReader("x"))
	if resp.StatusCode != 429 || !strings.Contains(string(data), "rate_limited") || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("over the rate: %d %s (Retry-After %q)", resp.StatusCode, data, resp.Header.Get("Retry-After"))
	}
	if resp, data := do(t, "POST", srv.URL+"/v1/topics/t/messages", withToken(b), strings.NewReader("x")); resp.StatusCode != 201 {
		t.Fatalf("another token has its own bucket: %d %s", resp.StatusCode, data)
	}
}

// TestTokensStayOutOfLogs: at debug level, with failures and successes,
// no log line holds the token.
func TestTokensStayOutOfLogs(t *testing.T) {
	var logs bytes.Buffer
	srv, _ := newAuthServer(t, Config{}, &logs)
	tok := hsToken(t, scoped("admin"))
	expired := hsToken(t, jwt.MapClaims{"scope": "admin", "exp": time.Now().Add(-time.Hour).Unix()})
	for _, tk := range []string{tok, expired, tok + "x"} {
		do(t, "PUT", srv.URL+"/v1/topics/t", withToken(tk), nil)
		do(t, "POST", srv.URL+"/v1/topics/t/messages", withToken(tk), strings.NewReader("x"))
	}
	if logs.Len() == 0 {
		t.Fatal("nothing was logged at debug level; the test would prove nothing")
	}
	for _, tk := range []string{tok, expired, strings.Split(tok, ".")[2]} {
		if strings.Contains(logs.String(), tk) {
			t.Fatalf("a log line holds a token:\n%s", logs.String())
		}
	}
}

func TestGlobMatch(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"orders", "orders", true}, {"orders", "orders2", false}, {"orders*", "orders", true},
		{"orders*", "orders.eu", true}, {"*", "", true}, {"*", "anything", true}, {"*.eu", "orders.eu", true},
		{"*.eu", "orders.us", false}, {"a*b*c", "abc", true}, {"a*b*c", "aXbYc", true}, {"a*b*c", "aXbY", false},
		{"", "", true}, {"", "a", false}, {"a**", "a", true}, {"*a", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", false},
	}
	for _, tt := range tests {
		if got := globMatch(tt.pattern, tt.name); got != tt.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
}

// FuzzScopeMatch checks the glob matcher against a regexp oracle and the
// scope parser against panics.
func FuzzScopeMatch(f *testing.F) {
	f.Add("orders*", "orders.eu")
	f.Add("a*b*c", "aXbYc")
	f.Add("publish:x* admin consume:", "x")
	f.Fuzz(func(t *testing.T, pattern, name string) {
		parts := strings.Split(pattern, "*")
		for i := range parts {
			parts[i] = regexp.QuoteMeta(parts[i])
		}
		re, err := regexp.Compile(`^(?s:` + strings.Join(parts, ".*") + `)$`)
		if err != nil {
			t.Skip()
		}
		// The regexp works on runes, the matcher on bytes; they agree on
		// valid UTF-8, which is all topic and group names can be.
		if want := re.MatchString(name); strings.ToValidUTF8(pattern, "") == pattern && strings.ToValidUTF8(name, "") == name && globMatch(pattern, name) != want {
			t.Fatalf("globMatch(%q, %q) = %v, regexp says %v", pattern, name, !want, want)
		}
		sc := parseScopes(pattern + " " + name)
		_ = sc.canPublish(name) || sc.canConsume(name)
	})
}
