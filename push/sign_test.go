package push

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The published example of the Standard Webhooks spec.
const (
	specSecret  = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	specMsgID   = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	specTS      = 1614265330
	specPayload = `{"test": 2432232314}`
	specSig     = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func webhookHeaders(id string, ts int64, sig string) http.Header {
	h := http.Header{}
	h.Set("webhook-id", id)
	h.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	h.Set("webhook-signature", sig)
	return h
}

func TestStandardWebhooksVector(t *testing.T) {
	got, err := SignatureHeader([]string{specSecret}, nil, specMsgID, specTS, []byte(specPayload))
	if err != nil {
		t.Fatal(err)
	}
	if got != specSig {
		t.Fatalf("SignatureHeader = %q, want %q", got, specSig)
	}
	h := webhookHeaders(specMsgID, specTS, specSig)
	if err := VerifyStandardWebhook(specSecret, h, []byte(specPayload), 5*time.Minute, time.Unix(specTS, 0)); err != nil {
		t.Fatalf("VerifyStandardWebhook(spec example) = %v", err)
	}
	// Without the prefix, as the spec's libraries also accept.
	if err := VerifyStandardWebhook(strings.TrimPrefix(specSecret, "whsec_"), h, []byte(specPayload), 0, time.Unix(specTS, 0)); err != nil {
		t.Fatalf("VerifyStandardWebhook(bare secret) = %v", err)
	}
}

func TestNewSecret(t *testing.T) {
	a, b := NewSecret(), NewSecret()
	if a == b {
		t.Fatal("two secrets are equal")
	}
	if !strings.HasPrefix(a, "whsec_") {
		t.Fatalf("secret %q lacks whsec_", a)
	}
	key, err := ParseSecret(a)
	if err != nil || len(key) != 32 {
		t.Fatalf("ParseSecret(NewSecret()) = %d bytes, %v; want 32", len(key), err)
	}
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(a, "whsec_"))
	if !bytes.Equal(raw, key) {
		t.Fatal("ParseSecret does not return the encoded bytes")
	}
}

func TestParseSecret(t *testing.T) {
	b64 := func(n int) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, n)) }
	tests := []struct {
		name, secret string
		wantLen      int // 0: invalid
	}{
		{"spec example 24 bytes", specSecret, 24},
		{"32 bytes", "whsec_" + b64(32), 32},
		{"64 bytes", "whsec_" + b64(64), 64},
		{"no prefix", b64(32), 32},
		{"23 bytes", "whsec_" + b64(23), 0},
		{"65 bytes", "whsec_" + b64(65), 0},
		{"huge", "whsec_" + b64(1<<16), 0},
		{"not base64", "whsec_!!!!" + b64(30), 0},
		{"url alphabet", "whsec_" + strings.Repeat("-_", 22), 0},
		{"empty", "", 0},
		{"prefix only", "whsec_", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := ParseSecret(tt.secret)
			if tt.wantLen == 0 {
				if !errors.Is(err, ErrInvalidSecret) {
					t.Fatalf("ParseSecret = %d bytes, %v; want ErrInvalidSecret", len(key), err)
				}
				return
			}
			if err != nil || len(key) != tt.wantLen {
				t.Fatalf("ParseSecret = %d bytes, %v; want %d", len(key), err, tt.wantLen)
			}
		})
	}
}

func TestSignatureRotation(t *testing.T) {
	newer, older, stranger := NewSecret(), NewSecret(), NewSecret()
	key := testKey(t, 1)
	body := []byte(`{"a":1}`)
	const ts = 1_800_000_000
	now := time.Unix(ts, 0)
	sig, err := SignatureHeader([]string{newer, older}, key, "msg_1", ts, body)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := ParseSignatureHeader(sig)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 || entries[0].Version != "v1" || entries[1].Version != "v1" || entries[2].Version != "v1a" {
		t.Fatalf("entries %+v, want v1 v1 v1a", entries)
	}
	if bytes.Equal(entries[0].Value, entries[1].Value) {
		t.Fatal("both secrets gave the same signature")
	}
	h := webhookHeaders("msg_1", ts, sig)
	for name, secret := range map[string]string{"newer": newer, "older": older, "bus key": key.PublicKeyStandardWebhooks()} {
		if err := VerifyStandardWebhook(secret, h, body, 0, now); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := VerifyStandardWebhook(stranger, h, body, 0, now); !errors.Is(err, ErrInvalidSignature) {
		t.Errorf("unrelated secret: %v, want ErrInvalidSignature", err)
	}
	if err := VerifyStandardWebhook(testKey(t, 2).PublicKeyStandardWebhooks(), h, body, 0, now); !errors.Is(err, ErrInvalidSignature) {
		t.Errorf("another bus key: %v, want ErrInvalidSignature", err)
	}
}

func TestVerifyStandardWebhook(t *testing.T) {
	secret := NewSecret()
	key := testKey(t, 1)
	body := []byte(`{"order":1001}`)
	const ts = 1_800_000_000
	now := time.Unix(ts, 0)
	sig, err := SignatureHeader([]string{secret}, key, "msg_1", ts, body)
	if err != nil {
		t.Fatal(err)
	}
	v1Only, _, _ := strings.Cut(sig, " ")
	_, v1aOnly, _ := strings.Cut(sig, " ")

	tests := []struct {
		name    string
		secret  string
		header  http.Header
		body    []byte
		now     time.Time
		wantErr error
	}{
		{"valid", secret, webhookHeaders("msg_1", ts, sig), body, now, nil},
		{"valid v1a", key.PublicKeyStandardWebhooks(), webhookHeaders("msg_1", ts, sig), body, now, nil},
		{"valid 4m late", secret, webhookHeaders("msg_1", ts, sig), body, now.Add(4 * time.Minute), nil},
		{"tampered body", secret, webhookHeaders("msg_1", ts, sig), []byte(`{"order":1002}`), now, ErrInvalidSignature},
		{"tampered body v1a", key.PublicKeyStandardWebhooks(), webhookHeaders("msg_1", ts, sig), []byte(`{"order":1002}`), now, ErrInvalidSignature},
		{"other id", secret, webhookHeaders("msg_2", ts, sig), body, now, ErrInvalidSignature},
		{"other timestamp", secret, webhookHeaders("msg_1", ts+1, sig), body, now, ErrInvalidSignature},
		{"too old", secret, webhookHeaders("msg_1", ts, sig), body, now.Add(6 * time.Minute), ErrTimestamp},
		{"too new", secret, webhookHeaders("msg_1", ts, sig), body, now.Add(-6 * time.Minute), ErrTimestamp},
		{"no v1 for a secret", secret, webhookHeaders("msg_1", ts, v1aOnly), body, now, ErrInvalidSignature},
		{"no v1a for a key", key.PublicKeyStandardWebhooks(), webhookHeaders("msg_1", ts, v1Only), body, now, ErrInvalidSignature},
		{"v1 signature under v2", secret, webhookHeaders("msg_1", ts, strings.Replace(v1Only, "v1,", "v2,", 1)), body, now, ErrInvalidSignature},
		{"missing id", secret, webhookHeaders("", ts, sig), body, now, ErrInvalidSignature},
		{"missing signature", secret, webhookHeaders("msg_1", ts, ""), body, now, ErrInvalidSignature},
		{"timestamp not a number", secret, http.Header{"Webhook-Id": {"msg_1"}, "Webhook-Timestamp": {"soon"}, "Webhook-Signature": {sig}}, body, now, ErrInvalidSignature},
		{"malformed signature", secret, webhookHeaders("msg_1", ts, "v1,###"), body, now, ErrInvalidSignature},
		{"bad secret", "whsec_abc", webhookHeaders("msg_1", ts, sig), body, now, ErrInvalidSecret},
		{"bad public key", "whpk_abc", webhookHeaders("msg_1", ts, sig), body, now, ErrInvalidSecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyStandardWebhook(tt.secret, tt.header, tt.body, 5*time.Minute, tt.now)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("VerifyStandardWebhook = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestParseSignatureHeader(t *testing.T) {
	sig := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	tests := []struct {
		name, in string
		want     []string // versions; nil for an error
	}{
		{"one", "v1," + sig, []string{"v1"}},
		{"rotation", "v1," + sig + " v1," + sig + " v1a," + sig, []string{"v1", "v1", "v1a"}},
		{"extra spaces", "  v1," + sig + "   v1a," + sig + " ", []string{"v1", "v1a"}},
		{"unknown version kept", "v9," + sig, []string{"v9"}},
		{"empty", "", nil},
		{"blank", "   ", nil},
		{"no comma", "v1" + sig, nil},
		{"no version", "," + sig, nil},
		{"no value", "v1,", nil},
		{"not base64", "v1,@@@", nil},
		{"too many", strings.Repeat("v1,"+sig+" ", maxSignatures+1), nil},
		{"as many as allowed", strings.Repeat("v1,"+sig+" ", maxSignatures), slicesRepeat("v1", maxSignatures)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSignatureHeader(tt.in)
			if tt.want == nil {
				if !errors.Is(err, ErrInvalidSignature) {
					t.Fatalf("ParseSignatureHeader = %+v, %v; want ErrInvalidSignature", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var vs []string
			for _, s := range got {
				vs = append(vs, s.Version)
				if string(s.Value) != "0123456789abcdef0123456789abcdef" {
					t.Errorf("value %q", s.Value)
				}
			}
			if strings.Join(vs, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("versions %v, want %v", vs, tt.want)
			}
		})
	}
}

func slicesRepeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func FuzzSignatureHeader(f *testing.F) {
	key := testKey(f, 1)
	valid, _ := SignatureHeader([]string{specSecret, NewSecret()}, key, specMsgID, specTS, []byte(specPayload))
	for _, s := range []string{specSig, valid, "", " ", "v1,", ",", "v1,=", "v1a,AAAA v1,BBBB", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE"} {
		f.Add(s)
	}
	pk := key.PublicKeyStandardWebhooks()
	secretKey, _ := ParseSecret(specSecret)
	want := hmacSHA256(secretKey, signedContent(specMsgID, specTS, []byte(specPayload)))
	f.Fuzz(func(t *testing.T, v string) {
		sigs, err := ParseSignatureHeader(v)
		if err != nil {
			if sigs != nil || !errors.Is(err, ErrInvalidSignature) {
				t.Fatalf("ParseSignatureHeader(%q) = %v, %v", v, sigs, err)
			}
		} else {
			if len(sigs) == 0 || len(sigs) > maxSignatures {
				t.Fatalf("ParseSignatureHeader(%q) gave %d entries", v, len(sigs))
			}
			for _, s := range sigs {
				if s.Version == "" || len(s.Value) == 0 || len(s.Value) > len(v) {
					t.Fatalf("ParseSignatureHeader(%q) gave entry %+v", v, s)
				}
			}
		}
		// Whatever the header, verification answers without panicking, and
		// only the real signatures pass.
		h := webhookHeaders(specMsgID, specTS, v)
		now := time.Unix(specTS, 0)
		var hasV1, hasV1a bool
		for _, s := range sigs {
			hasV1 = hasV1 || s.Version == "v1" && bytes.Equal(s.Value, want)
			hasV1a = hasV1a || s.Version == "v1a"
		}
		if err := VerifyStandardWebhook(specSecret, h, []byte(specPayload), 0, now); (err == nil) != hasV1 {
			t.Fatalf("header %q: verify = %v, but holds the real v1 signature: %v", v, err, hasV1)
		}
		if err := VerifyStandardWebhook(pk, h, []byte(specPayload), 0, now); err == nil && !hasV1a {
			t.Fatalf("header %q verified with the bus key without a v1a entry", v)
		}
	})
}

func TestDeliveryJWT(t *testing.T) {
	key := testKey(t, 1)
	body := []byte(`{"order":1001}`)
	now := time.Unix(1_800_000_000, 0)
	tok, err := key.DeliveryJWT("sub_1", "msg_1", body, now)
	if err != nil {
		t.Fatal(err)
	}
	claims, err := VerifyJWT(key.JWKS(), tok, body, now.Add(time.Minute))
	if err != nil {
		t.Fatalf("VerifyJWT = %v", err)
	}
	if claims.Issuer != "postbus" || claims.Subject != "sub_1" || claims.ID != "msg_1" ||
		!claims.IssuedAt.Equal(now) || !claims.NotBefore.Equal(now) || !claims.ExpiresAt.Equal(now.Add(5*time.Minute)) {
		t.Fatalf("claims %+v", claims)
	}
	if sum := sha256.Sum256(body); claims.Body != base64.RawURLEncoding.EncodeToString(sum[:]) {
		t.Fatalf("body claim %q is not base64url(SHA-256(body))", claims.Body)
	}
	// Header and claims as a generic JWT library sees them.
	parts := strings.Split(tok, ".")
	hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
	var h map[string]any
	if err := json.Unmarshal(hdr, &h); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if h["alg"] != "EdDSA" || h["kid"] != key.KeyID() {
		t.Fatalf("JWT header %s", hdr)
	}

	other := testKey(t, 2)
	hsToken := func() string {
		// Algorithm confusion: HS256 keyed with the public key's bytes.
		t := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
		t.Header["kid"] = key.KeyID()
		s, _ := t.SignedString([]byte(key.PublicKey()))
		return s
	}()
	otherTok, _ := other.DeliveryJWT("sub_1", "msg_1", body, now)
	forgedKid := func() string {
		t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
		t.Header["kid"] = key.KeyID()
		s, _ := t.SignedString(other.priv)
		return s
	}()
	foreignIss := func() string {
		c := *claims
		c.Issuer = "someone"
		t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
		t.Header["kid"] = key.KeyID()
		s, _ := t.SignedString(key.priv)
		return s
	}()
	tests := []struct {
		name  string
		jwks  []byte
		token string
		body  []byte
		now   time.Time
	}{
		{"another bus's key set", other.JWKS(), tok, body, now},
		{"signed by another key", key.JWKS(), otherTok, body, now},
		{"kid of ours, signed by another key", key.JWKS(), forgedKid, body, now},
		{"after exp", key.JWKS(), tok, body, now.Add(5*time.Minute + time.Minute)},
		{"before nbf", key.JWKS(), tok, body, now.Add(-time.Minute)},
		{"different body", key.JWKS(), tok, []byte(`{"order":1002}`), now},
		{"HS256 with the public key", key.JWKS(), hsToken, body, now},
		{"foreign issuer", key.JWKS(), foreignIss, body, now},
		{"tampered payload", key.JWKS(), parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"postbus"}`)) + "." + parts[2], body, now},
		{"garbage", key.JWKS(), "not.a.jwt", body, now},
		{"bad jwks", []byte("{"), tok, body, now},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if c, err := VerifyJWT(tt.jwks, tt.token, tt.body, tt.now); !errors.Is(err, ErrInvalidSignature) {
				t.Fatalf("VerifyJWT = %+v, %v; want ErrInvalidSignature", c, err)
			}
		})
	}
	// Within the leeway for clock skew.
	if _, err := VerifyJWT(key.JWKS(), tok, body, now.Add(-10*time.Second)); err != nil {
		t.Fatalf("10s of clock skew: %v", err)
	}
}

func TestJWKS(t *testing.T) {
	key := testKey(t, 1)
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(key.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 1 {
		t.Fatalf("%d keys", len(set.Keys))
	}
	k := set.Keys[0]
	x, err := base64.RawURLEncoding.DecodeString(k["x"])
	if err != nil || !bytes.Equal(x, key.PublicKey()) {
		t.Fatalf("x %q does not encode the public key (%v)", k["x"], err)
	}
	want := map[string]string{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": key.KeyID(), "x": k["x"]}
	if fmt.Sprint(k) != fmt.Sprint(want) {
		t.Fatalf("jwk %v, want %v", k, want)
	}
	if len(key.KeyID()) != 11 {
		t.Fatalf("kid %q: want 11 characters of base64url", key.KeyID())
	}
	if key.KeyID() == testKey(t, 2).KeyID() {
		t.Fatal("two keys share a kid")
	}
	pk, ok := strings.CutPrefix(key.PublicKeyStandardWebhooks(), "whpk_")
	raw, err := base64.StdEncoding.DecodeString(pk)
	if !ok || err != nil || !bytes.Equal(raw, key.PublicKey()) {
		t.Fatalf("PublicKeyStandardWebhooks = %q", key.PublicKeyStandardWebhooks())
	}
	// The JWKS is the caller's to keep: changing it leaves the key alone.
	j := key.JWKS()
	j[0] = 'x'
	if key.JWKS()[0] != '{' {
		t.Fatal("JWKS shares its bytes")
	}
}

func TestLoadOrCreateBusKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys", "bus-key.pem")
	k1, err := LoadOrCreateBusKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("key directory holds %d entries, want the key alone", len(entries))
	}
	data, _ := os.ReadFile(path)
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("key file is not a PRIVATE KEY PEM:\n%s", data)
	}
	if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
		t.Fatalf("not PKCS#8: %v", err)
	}

	k2, err := LoadOrCreateBusKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1.KeyID() != k2.KeyID() || !k1.PublicKey().Equal(k2.PublicKey()) {
		t.Fatal("reloading gave another key")
	}
	// What the first signs, the second's public half verifies.
	tok, _ := k1.DeliveryJWT("s", "m", nil, time.Now())
	if _, err := VerifyJWT(k2.JWKS(), tok, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	if other, _ := LoadOrCreateBusKey(filepath.Join(dir, "other.pem")); other.KeyID() == k1.KeyID() {
		t.Fatal("two new keys are the same")
	}
}

func TestLoadBusKeyBadFiles(t *testing.T) {
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(edKey)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"not PEM", []byte("hello")},
		{"public key block", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})},
		{"corrupt DER", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der[:20]})},
		{"P-256 key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bus-key.pem")
			if err := os.WriteFile(path, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			if k, err := LoadOrCreateBusKey(path); err == nil {
				t.Fatalf("LoadOrCreateBusKey = %s, want an error", k.KeyID())
			}
			// Never replaced: receivers trust the key that was there.
			if got, _ := os.ReadFile(path); !bytes.Equal(got, tt.data) {
				t.Fatal("the bad key file was overwritten")
			}
		})
	}
	if _, err := NewBusKey(ed25519.PrivateKey{1, 2, 3}); err == nil {
		t.Fatal("NewBusKey(3 bytes) succeeded")
	}
}

func BenchmarkSign(b *testing.B) {
	key := testKey(b, 1)
	for _, size := range []int{256, 16 << 10, 1 << 20} {
		body := bytes.Repeat([]byte("a"), size)
		for _, secrets := range []int{1, 2} {
			ss := make([]string, secrets)
			for i := range ss {
				ss[i] = NewSecret()
			}
			b.Run(fmt.Sprintf("what=webhook-signature/body=%d/secrets=%d", size, secrets), func(b *testing.B) {
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := SignatureHeader(ss, key, "msg_1", 1_800_000_000, body); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		b.Run(fmt.Sprintf("what=jwt/body=%d", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			now := time.Now()
			for b.Loop() {
				if _, err := key.DeliveryJWT("sub_1", "msg_1", body, now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestV1aSignatureCache: the cached v1a signature is the one a fresh
// signing gives, for the same content only, at every size.
func TestV1aSignatureCache(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key, err := NewBusKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	v1a := func(msgID string, ts int64, body []byte) []byte {
		t.Helper()
		h, err := SignatureHeader(nil, key, msgID, ts, body)
		if err != nil {
			t.Fatal(err)
		}
		sigs, err := ParseSignatureHeader(h)
		if err != nil || len(sigs) != 1 || sigs[0].Version != "v1a" {
			t.Fatalf("header %q: %v, %v", h, sigs, err)
		}
		if !ed25519.Verify(key.PublicKey(), signedContent(msgID, ts, body), sigs[0].Value) {
			t.Fatalf("v1a of %s at %d does not verify", msgID, ts)
		}
		return sigs[0].Value
	}
	for _, size := range []int{0, 256, sigCacheMaxContent + 1} {
		body := bytes.Repeat([]byte("x"), size)
		first := v1a("m1", 100, body)
		if again := v1a("m1", 100, bytes.Clone(body)); !bytes.Equal(first, again) {
			t.Errorf("size %d: the same content signed twice differs", size)
		}
		if other := v1a("m2", 100, body); bytes.Equal(first, other) {
			t.Errorf("size %d: another message id got the same signature", size)
		}
		if later := v1a("m1", 101, body); bytes.Equal(first, later) {
			t.Errorf("size %d: another second got the same signature", size)
		}
		if back := v1a("m1", 100, body); !bytes.Equal(first, back) {
			t.Errorf("size %d: signing again after the cache moved on differs", size)
		}
	}
	// The cache is bounded: filling it past its limit starts it afresh.
	body := bytes.Repeat([]byte("y"), 32<<10)
	for i := range 2 * sigCacheMaxBytes / len(body) {
		v1a(fmt.Sprint("fill-", i), 200, body)
	}
	if key.sigBytes > sigCacheMaxBytes+len(body)+64 {
		t.Errorf("the cache holds %d bytes, over its bound of %d", key.sigBytes, sigCacheMaxBytes)
	}
}

// BenchmarkSignatureHeader: one message fanned out to many subscriptions
// (the same content each time) against a new message every time.
func BenchmarkSignatureHeader(b *testing.B) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := NewBusKey(priv)
	secrets := []string{NewSecret()}
	body := bytes.Repeat([]byte("b"), 256)
	b.Run("fan-out", func(b *testing.B) {
		for b.Loop() {
			if _, err := SignatureHeader(secrets, key, "msg", 1700000000, body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("distinct", func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			if _, err := SignatureHeader(secrets, key, strconv.Itoa(i), 1700000000, body); err != nil {
				b.Fatal(err)
			}
		}
	})
}
