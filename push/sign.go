package push

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/postbus/postbus/broker/fsync"
)

// Signing constants. Secrets and key forms follow Standard Webhooks v1.
const (
	SecretPrefix    = "whsec_" // a subscription's HMAC secret
	PublicKeyPrefix = "whpk_"  // the bus's Ed25519 public key, Standard Webhooks form
	SecretBytes     = 32       // random bytes in a secret NewSecret makes

	// Standard Webhooks accepts secrets of 24 to 64 bytes.
	minSecretBytes = 24
	maxSecretBytes = 64

	// maxSignatures bounds the entries ParseSignatureHeader accepts: a
	// sender signs with a few rotated secrets, never dozens.
	maxSignatures = 32

	JWTIssuer   = "postbus"
	JWTLifetime = 5 * time.Minute
	// jwtLeeway absorbs clock skew between the bus and a receiver.
	jwtLeeway = 30 * time.Second

	// DefaultTolerance is how far a webhook-timestamp may be from the
	// receiver's clock when VerifyStandardWebhook is given no tolerance.
	DefaultTolerance = 5 * time.Minute
)

var (
	ErrInvalidSecret    = errors.New("invalid webhook secret")
	ErrInvalidSignature = errors.New("invalid webhook signature")
	ErrTimestamp        = errors.New("webhook timestamp outside tolerance")
)

// NewSecret returns a new subscription secret: "whsec_" and the standard
// base64 of 32 random bytes.
func NewSecret() string {
	b := make([]byte, SecretBytes)
	rand.Read(b) // never fails: crypto/rand aborts the process instead
	return SecretPrefix + base64.StdEncoding.EncodeToString(b)
}

// ParseSecret returns the key bytes of a "whsec_" secret. The prefix may be
// left out, as Standard Webhooks libraries allow.
func ParseSecret(s string) ([]byte, error) {
	b64 := strings.TrimPrefix(s, SecretPrefix)
	if len(b64) > base64.StdEncoding.EncodedLen(maxSecretBytes) {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrInvalidSecret, maxSecretBytes)
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64", ErrInvalidSecret)
	}
	if len(key) < minSecretBytes || len(key) > maxSecretBytes {
		return nil, fmt.Errorf("%w: %d bytes; want %d to %d", ErrInvalidSecret, len(key), minSecretBytes, maxSecretBytes)
	}
	return key, nil
}

// signedContent is what both v1 and v1a sign: "id.timestamp.body".
func signedContent(msgID string, timestamp int64, body []byte) []byte {
	c := make([]byte, 0, len(msgID)+22+len(body))
	c = append(c, msgID...)
	c = append(c, '.')
	c = strconv.AppendInt(c, timestamp, 10)
	c = append(c, '.')
	return append(c, body...)
}

func hmacSHA256(key, content []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(content)
	return m.Sum(nil)
}

// SignatureHeader returns the webhook-signature value for a delivery: a
// "v1,<base64 HMAC-SHA256>" per secret, in the order given (newest first),
// then "v1a,<base64 Ed25519>" by key, space separated. A nil key leaves out
// the v1a entry.
func SignatureHeader(secrets []string, key *BusKey, msgID string, timestamp int64, body []byte) (string, error) {
	content := signedContent(msgID, timestamp, body)
	var sb strings.Builder
	sb.Grow((len(secrets) + 1) * 92)
	for i, s := range secrets {
		k, err := ParseSecret(s)
		if err != nil {
			return "", fmt.Errorf("secret %d: %w", i, err)
		}
		if sb.Len() > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString("v1,")
		sb.WriteString(base64.StdEncoding.EncodeToString(hmacSHA256(k, content)))
	}
	if key != nil {
		if sb.Len() > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString("v1a,")
		sb.WriteString(key.signV1a(timestamp, content))
	}
	return sb.String(), nil
}

// Signature is one entry of a webhook-signature header.
type Signature struct {
	Version string // "v1" (HMAC-SHA256), "v1a" (Ed25519), or one unknown to us
	Value   []byte // the decoded signature
}

// ParseSignatureHeader splits a webhook-signature value into its entries.
// Entries of versions other than v1 and v1a are kept, so a verifier can skip
// them; a malformed entry fails the whole header.
func ParseSignatureHeader(v string) ([]Signature, error) {
	fields := strings.Fields(v)
	if len(fields) == 0 {
		return nil, fmt.Errorf("%w: empty header", ErrInvalidSignature)
	}
	if len(fields) > maxSignatures {
		return nil, fmt.Errorf("%w: %d entries; at most %d", ErrInvalidSignature, len(fields), maxSignatures)
	}
	sigs := make([]Signature, 0, len(fields))
	for i, f := range fields {
		ver, val, ok := strings.Cut(f, ",")
		if !ok || ver == "" || val == "" {
			return nil, fmt.Errorf("%w: entry %d is not version,signature", ErrInvalidSignature, i)
		}
		b, err := base64.StdEncoding.DecodeString(val)
		if err != nil {
			return nil, fmt.Errorf("%w: entry %d (%.8s) is not base64", ErrInvalidSignature, i, ver)
		}
		sigs = append(sigs, Signature{Version: ver, Value: b})
	}
	return sigs, nil
}

// VerifyStandardWebhook checks a delivery's Standard Webhooks headers the way
// a receiver should. secret is a subscription's "whsec_" secret, checked
// against the v1 entries, or the bus's "whpk_" public key, checked against
// the v1a entries. The webhook-timestamp must be within tolerance of now
// (DefaultTolerance when tolerance <= 0), which bounds replays.
func VerifyStandardWebhook(secret string, headers http.Header, body []byte, tolerance time.Duration, now time.Time) error {
	msgID := headers.Get("webhook-id")
	tsRaw := headers.Get("webhook-timestamp")
	sigRaw := headers.Get("webhook-signature")
	if msgID == "" || tsRaw == "" || sigRaw == "" {
		return fmt.Errorf("%w: webhook-id, webhook-timestamp and webhook-signature are required", ErrInvalidSignature)
	}
	ts, err := strconv.ParseInt(tsRaw, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: webhook-timestamp %q is not unix seconds", ErrInvalidSignature, tsRaw)
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: %s off", ErrTimestamp, d.Round(time.Second))
	}
	sigs, err := ParseSignatureHeader(sigRaw)
	if err != nil {
		return err
	}
	content := signedContent(msgID, ts, body)
	if pk, ok := strings.CutPrefix(secret, PublicKeyPrefix); ok {
		pub, err := base64.StdEncoding.DecodeString(pk)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return fmt.Errorf("%w: not a whpk_ Ed25519 public key", ErrInvalidSecret)
		}
		for _, s := range sigs {
			if s.Version == "v1a" && ed25519.Verify(ed25519.PublicKey(pub), content, s.Value) {
				return nil
			}
		}
		return fmt.Errorf("%w: no v1a signature matches", ErrInvalidSignature)
	}
	key, err := ParseSecret(secret)
	if err != nil {
		return err
	}
	want := hmacSHA256(key, content)
	for _, s := range sigs {
		if s.Version == "v1" && hmac.Equal(s.Value, want) {
			return nil
		}
	}
	return fmt.Errorf("%w: no v1 signature matches", ErrInvalidSignature)
}

// BusKey is the bus's Ed25519 signing key: it makes the v1a signatures and
// the Postbus-Signature JWTs, and its public half is published as a JWKS.
type BusKey struct {
	priv ed25519.PrivateKey
	pub  ed25519.PublicKey
	kid  string
	jwks []byte

	// The v1a signatures of the current second, by signed content: a
	// message fanned out to many subscriptions has the same id, timestamp
	// and body for each, so it is signed once rather than once a delivery
	// (an Ed25519 signature costs tens of microseconds; a map lookup of a
	// few hundred bytes, well under one).
	sigMu    sync.Mutex
	sigAt    int64             // the timestamp of the entries in sigs
	sigs     map[string]string // guarded by sigMu
	sigBytes int               // content bytes held in sigs
}

// Bounds of the v1a signature cache: contents larger than sigCacheMaxContent
// are signed each time, and the cache empties once it holds
// sigCacheMaxBytes of contents, so it never holds more than a few MiB.
const (
	sigCacheMaxContent = 64 << 10
	sigCacheMaxBytes   = 4 << 20
)

// signV1a returns the base64 Ed25519 signature of content, signed at
// timestamp ts (seconds), from the cache when this second has signed it.
func (k *BusKey) signV1a(ts int64, content []byte) string {
	if len(content) > sigCacheMaxContent {
		return base64.StdEncoding.EncodeToString(ed25519.Sign(k.priv, content))
	}
	k.sigMu.Lock()
	if k.sigAt != ts || k.sigBytes > sigCacheMaxBytes {
		k.sigAt, k.sigs, k.sigBytes = ts, make(map[string]string), 0
	}
	sig, ok := k.sigs[string(content)]
	k.sigMu.Unlock()
	if ok {
		return sig
	}
	sig = base64.StdEncoding.EncodeToString(ed25519.Sign(k.priv, content))
	k.sigMu.Lock()
	if k.sigAt == ts {
		k.sigs[string(content)] = sig
		k.sigBytes += len(content)
	}
	k.sigMu.Unlock()
	return sig
}

const busKeyPEMType = "PRIVATE KEY"

// NewBusKey wraps an Ed25519 private key.
func NewBusKey(priv ed25519.PrivateKey) (*BusKey, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("bus key: %d bytes; an Ed25519 private key is %d", len(priv), ed25519.PrivateKeySize)
	}
	pub := priv.Public().(ed25519.PublicKey)
	sum := sha256.Sum256(pub)
	k := &BusKey{priv: priv, pub: pub, kid: base64.RawURLEncoding.EncodeToString(sum[:8])}
	jwks, err := json.Marshal(jwkSet{Keys: []jwk{{
		Kty: "OKP", Crv: "Ed25519", X: base64.RawURLEncoding.EncodeToString(pub),
		Kid: k.kid, Alg: "EdDSA", Use: "sig",
	}}})
	if err != nil {
		return nil, fmt.Errorf("bus key: jwks: %w", err)
	}
	k.jwks = jwks
	return k, nil
}

// LoadOrCreateBusKey reads the bus key from path (PEM, PKCS#8), creating it
// first if the file does not exist. A file that exists but does not hold an
// Ed25519 key is an error, never replaced: receivers trust its public half.
func LoadOrCreateBusKey(path string) (*BusKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := createBusKey(path); err != nil {
			return nil, err
		}
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("bus key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != busKeyPEMType {
		return nil, fmt.Errorf("bus key %s: no %q PEM block", path, busKeyPEMType)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("bus key %s: %w", path, err)
	}
	priv, ok := parsed.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("bus key %s: %T is not an Ed25519 key", path, parsed)
	}
	return NewBusKey(priv)
}

// createBusKey writes a new key to path atomically: a temp file, fsynced,
// then linked into place (which, unlike rename, fails if another process
// created the key meanwhile, and then that key wins), then the directory
// fsynced.
func createBusKey(path string) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("bus key: generate: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return fmt.Errorf("bus key: encode: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("bus key: %w", err)
	}
	f, err := os.CreateTemp(dir, ".bus-key-*.tmp") // mode 0600
	if err != nil {
		return fmt.Errorf("bus key: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	err = pem.Encode(f, &pem.Block{Type: busKeyPEMType, Bytes: der})
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("bus key: write %s: %w", tmp, err)
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
		// A file system without hard links: rename, which is atomic but
		// would replace a key created in the same instant.
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("bus key: %w", err)
		}
	}
	if err := fsync.Dir(dir); err != nil {
		return fmt.Errorf("bus key: %w", err)
	}
	return nil
}

// KeyID is the key's kid: base64url of the first 8 bytes of the SHA-256 of
// the public key.
func (k *BusKey) KeyID() string { return k.kid }

// PublicKey returns the public half.
func (k *BusKey) PublicKey() ed25519.PublicKey { return k.pub }

// JWKS returns the JSON Web Key Set served at /.well-known/jwks.json.
func (k *BusKey) JWKS() []byte { return append([]byte(nil), k.jwks...) }

// PublicKeyStandardWebhooks returns the public key as Standard Webhooks
// writes it, "whpk_" and standard base64, for verifying v1a signatures.
func (k *BusKey) PublicKeyStandardWebhooks() string {
	return PublicKeyPrefix + base64.StdEncoding.EncodeToString(k.pub)
}

type jwkSet struct {
	Keys []jwk `json:"keys"`
}

type jwk struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Kid string `json:"kid"`
	Alg string `json:"alg,omitempty"`
	Use string `json:"use,omitempty"`
}

// DeliveryClaims are the claims of a Postbus-Signature JWT: iss "postbus",
// sub the subscription id, jti the message id, iat, nbf, exp, and body, the
// base64url SHA-256 of the delivered body.
type DeliveryClaims struct {
	jwt.RegisteredClaims
	Body string `json:"body"`
}

func bodyHash(body []byte) string {
	sum := sha256.Sum256(body)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// DeliveryJWT returns the Postbus-Signature token for one delivery, valid
// for JWTLifetime from now.
func (k *BusKey) DeliveryJWT(subscription, msgID string, body []byte, now time.Time) (string, error) {
	now = now.Truncate(time.Second)
	claims := DeliveryClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    JWTIssuer,
			Subject:   subscription,
			ID:        msgID,
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(JWTLifetime)),
		},
		Body: bodyHash(body),
	}
	t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
	t.Header["kid"] = k.kid
	s, err := t.SignedString(k.priv)
	if err != nil {
		return "", fmt.Errorf("sign delivery jwt: %w", err)
	}
	return s, nil
}

// VerifyJWT checks a Postbus-Signature token against a JWKS (as served at
// /.well-known/jwks.json) and the received body, the way a receiver should:
// EdDSA only, the kid must name a key of the set, iss must be "postbus",
// the token must be current at now (with 30s of leeway for clock skew), and
// its body claim must be the body's hash. The caller should also compare
// sub with its subscription id.
func VerifyJWT(jwks []byte, token string, body []byte, now time.Time) (*DeliveryClaims, error) {
	var set jwkSet
	if err := json.Unmarshal(jwks, &set); err != nil {
		return nil, fmt.Errorf("%w: jwks: %v", ErrInvalidSignature, err)
	}
	keys := make(map[string]ed25519.PublicKey, len(set.Keys))
	for _, k := range set.Keys {
		if k.Kty != "OKP" || k.Crv != "Ed25519" {
			continue
		}
		x, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(k.X, "="))
		if err != nil || len(x) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("%w: jwks key %q is not an Ed25519 key", ErrInvalidSignature, k.Kid)
		}
		keys[k.Kid] = ed25519.PublicKey(x)
	}
	claims := new(DeliveryClaims)
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg()}),
		jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithLeeway(jwtLeeway),
		jwt.WithIssuer(JWTIssuer),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	)
	_, err := p.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		k, ok := keys[kid]
		if !ok {
			return nil, fmt.Errorf("kid %q is not in the key set", kid)
		}
		return k, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidSignature, err)
	}
	if subtle.ConstantTimeCompare([]byte(claims.Body), []byte(bodyHash(body))) != 1 {
		return nil, fmt.Errorf("%w: body does not match the token's hash", ErrInvalidSignature)
	}
	return claims, nil
}
