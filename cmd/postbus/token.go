package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/postbus/postbus/httpapi"
)

// minTokenTTL is the shortest --ttl postbus token mints.
const minTokenTTL = time.Minute

// token mints an API token: `postbus token --scope 'publish:orders*' --ttl 1h`.
func token(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("postbus token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		scope, secret, keyFile, kid, sub, iss, aud string
		ttl                                        time.Duration
	)
	fs.StringVar(&scope, "scope", "", "space-separated scopes: publish:<topic-glob>, subscribe:<topic-glob>, consume:<group-glob>, admin ('*' matches any run of characters)")
	fs.DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid, at least 1m")
	fs.StringVar(&secret, "jwt-secret", "", "HS256 secret, the broker's --jwt-secret; better set as POSTBUS_JWT_SECRET")
	fs.StringVar(&keyFile, "private-key", "", "PEM private key (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA) whose public key the broker has in --jwt-public-keys")
	fs.StringVar(&kid, "kid", "", "key id to put in the token header, naming the broker's key to verify it with")
	fs.StringVar(&sub, "sub", "", "subject: who the token is for (shown in logs and used for rate limits)")
	fs.StringVar(&iss, "iss", "", "issuer, if the broker checks --jwt-issuer")
	fs.StringVar(&aud, "aud", "", "audience, if the broker checks --jwt-audience")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: postbus token --scope SCOPES [--ttl 1h] (--jwt-secret S | --private-key FILE) [flags]

Mints an API token and prints it. Examples:
  export POSTBUS_JWT_SECRET=$(openssl rand -base64 32)   # the broker runs with the same
  postbus token --scope 'publish:orders*' --ttl 24h --sub checkout
  postbus token --scope 'consume:billing publish:invoices' --sub billing
  postbus token --scope 'subscribe:orders consume:workers' --sub worker   # pull orders as workers
  postbus token --scope admin --ttl 15m --private-key ops-ed25519.pem --kid ops-2026

Flags (each also as an environment variable, --jwt-secret as POSTBUS_JWT_SECRET):
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if strings.TrimSpace(scope) == "" {
		fmt.Fprintln(stderr, "--scope is required: publish:<topic-glob>, subscribe:<topic-glob>, consume:<group-glob> or admin")
		return errUsage
	}
	if err := checkScopes(scope); err != nil {
		fmt.Fprintln(stderr, "--scope:", err)
		return errUsage
	}
	if ttl < minTokenTTL {
		// A token valid for seconds expires before most clients first use
		// it (brokers also allow clock skew of about that much): such a
		// TTL is almost always a mistake.
		fmt.Fprintf(stderr, "--ttl %s is under the minimum of 1m: tokens always expire, and one valid for less would expire before it is used\n", ttl)
		return errUsage
	}
	if (secret == "") == (keyFile == "") {
		fmt.Fprintln(stderr, "give exactly one of --jwt-secret (or POSTBUS_JWT_SECRET) and --private-key")
		return errUsage
	}
	now := time.Now()
	claims := jwt.MapClaims{"scope": scope, "iat": now.Unix(), "exp": now.Add(ttl).Unix()}
	for name, v := range map[string]string{"sub": sub, "iss": iss, "aud": aud} {
		if v != "" {
			claims[name] = v
		}
	}
	var method jwt.SigningMethod
	var key any
	if secret != "" {
		if len(secret) < httpapi.MinHMACSecret {
			return fmt.Errorf("--jwt-secret is %d bytes; at least %d are needed", len(secret), httpapi.MinHMACSecret)
		}
		method, key = jwt.SigningMethodHS256, []byte(secret)
	} else {
		var err error
		if method, key, err = loadSigningKey(keyFile); err != nil {
			return err
		}
	}
	t := jwt.NewWithClaims(method, claims)
	if kid != "" {
		t.Header["kid"] = kid
	}
	signed, err := t.SignedString(key)
	if err != nil {
		return fmt.Errorf("sign token: %w", err)
	}
	fmt.Fprintln(stdout, signed)
	return nil
}

// checkScopes refuses a scope this postbus does not know (a broker ignores
// those, so a typo would mint a token that can do nothing).
func checkScopes(scope string) error {
	for _, f := range strings.Fields(scope) {
		kind, glob, ok := strings.Cut(f, ":")
		switch {
		case f == "admin":
		case ok && glob != "" && (kind == "publish" || kind == "subscribe" || kind == "consume"):
		default:
			return fmt.Errorf("%q is not a scope: want publish:<topic-glob>, subscribe:<topic-glob>, consume:<group-glob> or admin", f)
		}
	}
	return nil
}

// loadSigningKey reads a PEM private key and picks the algorithm for it.
func loadSigningKey(path string) (jwt.SigningMethod, crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("--private-key: %w", err)
	}
	if k, err := jwt.ParseEdPrivateKeyFromPEM(data); err == nil {
		if ed, ok := k.(ed25519.PrivateKey); ok {
			return jwt.SigningMethodEdDSA, ed, nil
		}
	}
	if k, err := jwt.ParseECPrivateKeyFromPEM(data); err == nil {
		if k.Curve.Params().Name != "P-256" {
			return nil, nil, errors.New("--private-key: only P-256 EC keys (ES256) are supported")
		}
		return jwt.SigningMethodES256, (*ecdsa.PrivateKey)(k), nil
	}
	if k, err := jwt.ParseRSAPrivateKeyFromPEM(data); err == nil {
		return jwt.SigningMethodRS256, (*rsa.PrivateKey)(k), nil
	}
	return nil, nil, fmt.Errorf("--private-key %s: not a PEM RSA, EC P-256 or Ed25519 private key", path)
}
