package httpapi

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/postbus/postbus/broker"
)

// AuthConfig says how API tokens are verified. With neither HMACSecret nor
// PublicKeys the API is open (dev).
type AuthConfig struct {
	HMACSecret []byte      // HS256 tokens
	PublicKeys []VerifyKey // RS256, ES256 (P-256) and EdDSA (Ed25519) tokens
	Issuer     string      // if set, tokens must carry this iss
	Audience   string      // if set, tokens must carry this aud
	Leeway     time.Duration
	Now        func() time.Time
}

// VerifyKey is one public key, named by the kid tokens signed with it carry.
type VerifyKey struct {
	ID  string
	Key crypto.PublicKey
}

// MinHMACSecret is the shortest HS256 secret accepted: RFC 7518 asks for at
// least the hash's size.
const MinHMACSecret = 32

// authenticator verifies bearer tokens. One parser with the algorithms fixed
// by the keys configured: no "none", and an HMAC key never verifies an RS/ES
// token or the other way round (algorithm confusion).
type authenticator struct {
	parser *jwt.Parser
	hmac   []byte
	keys   []VerifyKey
}

func newAuthenticator(cfg AuthConfig) (*authenticator, error) {
	if len(cfg.HMACSecret) == 0 && len(cfg.PublicKeys) == 0 {
		return nil, nil
	}
	if len(cfg.HMACSecret) > 0 && len(cfg.HMACSecret) < MinHMACSecret {
		return nil, fmt.Errorf("the JWT secret is %d bytes; at least %d are needed", len(cfg.HMACSecret), MinHMACSecret)
	}
	var methods []string
	if len(cfg.HMACSecret) > 0 {
		methods = append(methods, jwt.SigningMethodHS256.Alg())
	}
	for _, k := range cfg.PublicKeys {
		alg, err := algFor(k.Key)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", k.ID, err)
		}
		methods = append(methods, alg)
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = 30 * time.Second
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(methods),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithStrictDecoding(),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	if cfg.Now != nil {
		opts = append(opts, jwt.WithTimeFunc(cfg.Now))
	}
	return &authenticator{parser: jwt.NewParser(opts...), hmac: cfg.HMACSecret, keys: cfg.PublicKeys}, nil
}

// algFor is the one JWS algorithm a public key verifies.
func algFor(k crypto.PublicKey) (string, error) {
	switch k := k.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return "", fmt.Errorf("RSA key of %d bits: at least 2048 are needed", k.N.BitLen())
		}
		return jwt.SigningMethodRS256.Alg(), nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return "", errors.New("only P-256 EC keys (ES256) are supported")
		}
		return jwt.SigningMethodES256.Alg(), nil
	case ed25519.PublicKey:
		return jwt.SigningMethodEdDSA.Alg(), nil
	}
	return "", fmt.Errorf("unsupported key type %T", k)
}

// keyFor picks the key for a token by its algorithm and kid, so that a key
// only ever verifies the algorithm it is for.
func (a *authenticator) keyFor(t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	if alg == jwt.SigningMethodHS256.Alg() {
		if len(a.hmac) == 0 {
			return nil, errors.New("HS256 is not accepted")
		}
		return a.hmac, nil
	}
	// A kid picks its key; a token without one, or with a kid no key
	// claims, is tried against the keys that have no kid.
	kid, _ := t.Header["kid"].(string)
	var named, unnamed jwt.VerificationKeySet
	for _, k := range a.keys {
		if a, _ := algFor(k.Key); a != alg {
			continue
		}
		switch {
		case k.ID == "":
			unnamed.Keys = append(unnamed.Keys, k.Key)
		case k.ID == kid:
			named.Keys = append(named.Keys, k.Key)
		}
	}
	ks := named
	if len(ks.Keys) == 0 {
		ks = unnamed
	}
	if len(ks.Keys) == 0 {
		return nil, fmt.Errorf("no %s key with kid %q", alg, kid)
	}
	return ks, nil
}

// tokenClaims are the claims postbus reads.
type tokenClaims struct {
	Scope string `json:"scope"`
	jwt.RegisteredClaims
}

// principal is who a request acts as.
type principal struct {
	id     string // sub, or a hash of the token when it has none; for rate limits and logs
	scopes scopes
}

// Token faults the JWT library lets through, found by checks of our own.
var (
	// errCritical: the header's crit names extensions that must be
	// understood (RFC 7515 §4.1.11). postbus implements none, so any crit
	// at all (an empty one is malformed) makes the token unusable.
	errCritical = errors.New("crit header")
	// errTimeNotNumber: exp, nbf or iat is not a JSON number (RFC 7519
	// §2 NumericDate). The library reads "exp":"1700000000" as a number
	// and a null one as absent.
	errTimeNotNumber = errors.New("time claim not a number")
	// errTimeOutOfRange: exp, nbf or iat is a number of seconds outside
	// years 1 to 9999 (see maxClaimSeconds).
	errTimeOutOfRange = errors.New("time claim out of range")
	// errDuplicateMember: the header or the claims give a member twice.
	errDuplicateMember = errors.New("member given twice")
)

func (a *authenticator) authenticate(raw string) (*principal, error) {
	var c tokenClaims
	t, err := a.parser.ParseWithClaims(raw, &c, a.keyFor)
	if err != nil {
		if errors.Is(err, jwt.ErrTokenSignatureInvalid) || errors.Is(err, jwt.ErrTokenUnverifiable) {
			return nil, err
		}
		// The library's own word on a time claim that is not a number
		// ("malformed") or out of range ("expired", for an exp of 1e300)
		// is less exact than ours: say ours when it has one.
		if cerr := checkClaimsText(raw); cerr != nil && !errors.Is(cerr, jwt.ErrTokenMalformed) {
			return nil, cerr
		}
		return nil, err
	}
	if _, ok := t.Header["crit"]; ok {
		return nil, fmt.Errorf("%w: %v is not understood", errCritical, t.Header["crit"])
	}
	if err := checkClaimsText(raw); err != nil {
		return nil, err
	}
	p := &principal{scopes: parseScopes(c.Scope), id: c.Subject}
	if p.id == "" {
		sum := sha256.Sum256([]byte(raw))
		p.id = "token:" + hex.EncodeToString(sum[:8])
	}
	return p, nil
}

// The range of seconds since 1970 a time claim may hold: years 1 to 9999,
// which time.Time holds exactly. The JWT library converts a NumericDate
// with int64(seconds), which for 1e19 or 1e300 is no number of seconds at
// all (on amd64 the most negative int64): an nbf of 1e19 became a date long
// past and let the token in, and an exp of 1e300 was called expired.
const (
	minClaimSeconds = -62135596800 // 0001-01-01T00:00:00Z
	maxClaimSeconds = 253402300799 // 9999-12-31T23:59:59Z
)

// checkClaimsText checks what the JWT library lets through in a token's
// JSON: exp, nbf and iat, if present, must be JSON numbers (RFC 7519 §2
// NumericDate; the library reads "exp":"1700000000" as a number and a null
// one as absent) of seconds within years 1 to 9999; and neither the header
// nor the claims may give a member twice (the library keeps the last, so
// {"scope":"publish:x","scope":"admin"} would be admin to it and
// publish:x to a reader that keeps the first).
func checkClaimsText(raw string) error {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return fmt.Errorf("%w: not three parts", jwt.ErrTokenMalformed)
	}
	header, err := base64.RawURLEncoding.Strict().DecodeString(parts[0])
	if err != nil {
		return fmt.Errorf("%w: header: %w", jwt.ErrTokenMalformed, err)
	}
	payload, err := base64.RawURLEncoding.Strict().DecodeString(parts[1])
	if err != nil {
		return fmt.Errorf("%w: payload: %w", jwt.ErrTokenMalformed, err)
	}
	var claims map[string]json.RawMessage
	if err := json.Unmarshal(payload, &claims); err != nil {
		return fmt.Errorf("%w: payload: %w", jwt.ErrTokenMalformed, err)
	}
	for _, name := range []string{"exp", "nbf", "iat"} {
		v, ok := claims[name]
		if !ok {
			continue
		}
		// A JSON number starts with '-' or a digit; anything else (a
		// string, null, true, an object) is not one. The value is valid
		// JSON, so no other check is needed.
		if len(v) == 0 || (v[0] != '-' && (v[0] < '0' || v[0] > '9')) {
			return fmt.Errorf("%w: %s is %s", errTimeNotNumber, name, v)
		}
		// ParseFloat fails only for a number beyond float64 (1e400),
		// which is out of range too.
		if f, err := strconv.ParseFloat(string(v), 64); err != nil || f < minClaimSeconds || f > maxClaimSeconds {
			return fmt.Errorf("%w: %s is %.40s", errTimeOutOfRange, name, v)
		}
	}
	if json.Valid(header) {
		if name, ok := broker.DuplicateJSONName(header); ok {
			return fmt.Errorf("%w: header member %q", errDuplicateMember, name)
		}
	}
	if name, ok := broker.DuplicateJSONName(payload); ok {
		return fmt.Errorf("%w: claim %q", errDuplicateMember, name)
	}
	return nil
}

// scopes is what a token may do: publish:<topic-glob> (write a topic),
// subscribe:<topic-glob> (read a topic: subscribe a group to it, pull it,
// read it by offset or key), consume:<group-glob> (act as a group) and
// admin, space separated in its "scope" claim. As Kafka's READ on both the
// topic and the group, subscribing a group to a topic or pulling it needs
// subscribe on the topic and consume on the group: consume alone lets a
// token act for its groups, never read a topic nobody let it read.
type scopes struct {
	admin     bool
	publish   []string
	subscribe []string
	consume   []string
}

// parseScopes reads a scope claim. Unknown scopes are ignored, so tokens
// minted for a newer postbus still work for what this one knows.
func parseScopes(s string) scopes {
	var sc scopes
	for _, f := range strings.Fields(s) {
		switch kind, glob, _ := strings.Cut(f, ":"); {
		case f == "admin":
			sc.admin = true
		case kind == "publish" && glob != "":
			sc.publish = append(sc.publish, glob)
		case kind == "subscribe" && glob != "":
			sc.subscribe = append(sc.subscribe, glob)
		case kind == "consume" && glob != "":
			sc.consume = append(sc.consume, glob)
		}
	}
	return sc
}

func (s scopes) canPublish(topic string) bool { return s.admin || anyGlob(s.publish, topic) }
func (s scopes) canConsume(group string) bool { return s.admin || anyGlob(s.consume, group) }
func (s scopes) canSubscribe(topic string) bool {
	return s.admin || anyGlob(s.subscribe, topic)
}

// canRead is reading a topic's messages without consuming them (by id, key
// or offset) and its stats: a subscriber may, and so may a producer, to
// check what it sent.
func (s scopes) canRead(topic string) bool { return s.canPublish(topic) || s.canSubscribe(topic) }

func anyGlob(globs []string, name string) bool {
	for _, g := range globs {
		if globMatch(g, name) {
			return true
		}
	}
	return false
}

// globMatch reports whether name matches pattern, where '*' stands for any
// run of characters (topic and group names hold no other pattern syntax).
// It runs in O(len(pattern)*len(name)) at worst: no backtracking blow-up.
func globMatch(pattern, name string) bool {
	px, nx := 0, 0
	starPx, starNx := -1, 0
	for nx < len(name) {
		switch {
		case px < len(pattern) && pattern[px] == '*':
			starPx, starNx = px, nx
			px++
		case px < len(pattern) && pattern[px] == name[nx]:
			px++
			nx++
		case starPx >= 0:
			starNx++
			px, nx = starPx+1, starNx
		default:
			return false
		}
	}
	for px < len(pattern) && pattern[px] == '*' {
		px++
	}
	return px == len(pattern)
}

type principalKey struct{}

func principalFrom(ctx context.Context) *principal {
	p, _ := ctx.Value(principalKey{}).(*principal)
	return p
}

// access is a route's auth decision: who may call it. Every route declares
// one (routes.go); a test fails on a route without.
type access struct {
	name  string                                   // as documented in openapi.yaml
	allow func(p *principal, r *http.Request) bool // nil: no token needed
}

var (
	accessOpen  = access{name: "open"}
	accessAdmin = access{name: "admin", allow: func(p *principal, r *http.Request) bool { return p.scopes.admin }}
	// accessPublishTopic needs publish on the {topic} of the path.
	accessPublishTopic = access{name: "publish:{topic}", allow: func(p *principal, r *http.Request) bool {
		return p.scopes.canPublish(pathParam(r, "topic"))
	}}
	// accessReadTopic needs publish or subscribe on the {topic} of the path.
	accessReadTopic = access{name: "publish|subscribe:{topic}", allow: func(p *principal, r *http.Request) bool {
		return p.scopes.canRead(pathParam(r, "topic"))
	}}
	// accessSubscribeTopic needs subscribe on the {topic} of the path:
	// reading a queue by offset is consuming the topic's stream, which a
	// producer's publish scope does not give (DESIGN §5: publish reads by
	// id and key only).
	accessSubscribeTopic = access{name: "subscribe:{topic}", allow: func(p *principal, r *http.Request) bool {
		return p.scopes.canSubscribe(pathParam(r, "topic"))
	}}
	// accessConsumeGroup needs consume on the {group} of the path.
	accessConsumeGroup = access{name: "consume:{group}", allow: func(p *principal, r *http.Request) bool {
		return p.scopes.canConsume(pathParam(r, "group"))
	}}
	// accessPullTopic needs consume on the {group} and subscribe on the
	// {topic} of the path: a pull reads the topic as the group (and a first
	// pull subscribes the group to it).
	accessPullTopic = access{name: "consume:{group} subscribe:{topic}", allow: func(p *principal, r *http.Request) bool {
		return p.scopes.canConsume(pathParam(r, "group")) && p.scopes.canSubscribe(pathParam(r, "topic"))
	}}
	// accessAnyToken lets any valid token in; the handler narrows what it
	// shows to the token's scopes (a list, a message whose topic is only
	// known once it is read).
	accessAnyToken = access{name: "token", allow: func(p *principal, r *http.Request) bool { return true }}
)

// authorize wraps h with the route's access check. Checks come before the
// handler, so a refusal never says whether the topic or message exists.
// authMiddleware is authorize as a middleware of one route.
func (s *Server) authMiddleware(a access) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler { return s.authorize(a, next.ServeHTTP) }
}

func (s *Server) authorize(a access, h http.HandlerFunc) http.HandlerFunc {
	if a.allow == nil || s.auth == nil {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if n := len(r.Header.Values("Authorization")); n > 1 {
			// Which one counts? A proxy in front that checks the last and
			// this server the first would disagree on who the caller is.
			defer refuseUnreadBody(w, r)()
			writeProblem(w, r, codeInvalidHeader, "Authorization", fmt.Sprintf("header \"Authorization\" is given %d times; send one bearer token", n))
			return
		}
		raw, ok := bearerToken(r)
		if !ok {
			defer refuseUnreadBody(w, r)()
			w.Header().Set("WWW-Authenticate", `Bearer realm="postbus"`)
			writeProblem(w, r, codeUnauthorized, "Authorization", "this route needs a bearer token: Authorization: Bearer <JWT>")
			return
		}
		p, err := s.auth.authenticate(raw)
		if err != nil {
			defer refuseUnreadBody(w, r)()
			w.Header().Set("WWW-Authenticate", `Bearer realm="postbus", error="invalid_token"`)
			writeProblem(w, r, codeUnauthorized, "Authorization", "the token is not valid: "+tokenProblem(err))
			return
		}
		if !a.allow(p, r) {
			defer refuseUnreadBody(w, r)()
			w.Header().Set("WWW-Authenticate", `Bearer realm="postbus", error="insufficient_scope"`)
			writeProblem(w, r, codeForbidden, "", "the token's scope does not allow this ("+a.name+" is needed)")
			return
		}
		// Its bodies are charged to its token from here on.
		leaseFrom(r.Context()).setClient("token:" + p.id)
		h(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	}
}

// tokenProblem says why a token was refused, without echoing any of it.
func tokenProblem(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "it has expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "it is not valid yet"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "it has no exp claim"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "wrong issuer"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong audience"
	case errors.Is(err, errCritical):
		return "its header has crit, naming extensions this server does not implement"
	case errors.Is(err, errTimeNotNumber):
		return "exp, nbf and iat must be numbers (seconds since 1970)"
	case errors.Is(err, errTimeOutOfRange):
		return fmt.Sprintf("exp, nbf and iat must be seconds since 1970 from %d to %d (years 1 to 9999)", int64(minClaimSeconds), int64(maxClaimSeconds))
	case errors.Is(err, errDuplicateMember):
		return "its header or claims give a member twice"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return "its signature does not verify with any configured key"
	}
	return "it cannot be verified"
}

func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// mayRead says whether the request may read a message of topic: open mode,
// admin, or publish or subscribe on the topic. Callers answer "not found"
// otherwise, so a token learns nothing about topics outside its scope.
func mayRead(r *http.Request, topic string) bool {
	p := principalFrom(r.Context())
	return p == nil || p.scopes.canRead(topic)
}
