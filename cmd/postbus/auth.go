package main

import (
	"flag"
	"fmt"
	"log/slog"

	"github.com/postbus/postbus/httpapi"
)

// authFlags are the API auth flags `broker`, `dev` and `namesrv` share.
type authFlags struct {
	jwtSecret      string
	jwtPublicKeys  string
	jwtIssuer      string
	jwtAudience    string
	insecureNoAuth bool
	metricsAuth    bool
}

func (a *authFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.jwtSecret, "jwt-secret", "", "HS256 secret (at least 32 bytes) that API tokens are signed with; better set as POSTBUS_JWT_SECRET than on the command line")
	fs.StringVar(&a.jwtPublicKeys, "jwt-public-keys", "", "PEM or JWKS file of the public keys (RS256, ES256, EdDSA) API tokens are signed with; a kid per key allows rotation")
	fs.StringVar(&a.jwtIssuer, "jwt-issuer", "", "if set, API tokens must carry this iss")
	fs.StringVar(&a.jwtAudience, "jwt-audience", "", "if set, API tokens must carry this aud")
	fs.BoolVar(&a.insecureNoAuth, "insecure-no-auth", false, "serve the API without auth on a non-loopback address (when something in front does auth)")
	fs.BoolVar(&a.metricsAuth, "metrics-auth", false, "put /metrics behind an admin token")
}

// config builds the token verification from the flags, refusing to serve
// an open API on a non-loopback address unless told to (dev is open).
func (a *authFlags) config(dev bool, addr string, logger *slog.Logger) (httpapi.AuthConfig, error) {
	c := httpapi.AuthConfig{Issuer: a.jwtIssuer, Audience: a.jwtAudience}
	if a.jwtSecret != "" {
		if len(a.jwtSecret) < httpapi.MinHMACSecret {
			return c, fmt.Errorf("--jwt-secret is %d bytes; at least %d are needed (try: openssl rand -base64 32)", len(a.jwtSecret), httpapi.MinHMACSecret)
		}
		c.HMACSecret = []byte(a.jwtSecret)
	}
	if a.jwtPublicKeys != "" {
		keys, err := httpapi.LoadPublicKeys(a.jwtPublicKeys)
		if err != nil {
			return c, fmt.Errorf("--jwt-public-keys: %w", err)
		}
		c.PublicKeys = keys
	}
	if c.HMACSecret == nil && c.PublicKeys == nil {
		switch {
		case dev:
		case !a.insecureNoAuth && !isLoopback(addr):
			return c, fmt.Errorf("refusing to serve the API on %s without auth: give --jwt-secret or --jwt-public-keys, or --insecure-no-auth if something in front of postbus does auth", addr)
		default:
			logger.Warn("the API is open: no --jwt-secret or --jwt-public-keys", slog.String("addr", addr))
		}
	}
	return c, nil
}
