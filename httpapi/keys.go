package httpapi

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
)

// LoadPublicKeys reads the keys that verify API tokens from a PEM file (one
// or more PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE blocks; a "kid" PEM
// header names a key) or a JWKS file ({"keys":[...]} with RSA, EC P-256 and
// Ed25519 keys). Several keys with their kids allow rotation: tokens name
// the key they were signed with.
func LoadPublicKeys(path string) ([]VerifyKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read public keys: %w", err)
	}
	var keys []VerifyKey
	if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '{' {
		keys, err = parseJWKS(t)
	} else {
		keys, err = parsePEMKeys(data)
	}
	if err != nil {
		return nil, fmt.Errorf("public keys in %s: %w", path, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("public keys in %s: no keys found", path)
	}
	for _, k := range keys {
		if _, err := algFor(k.Key); err != nil {
			return nil, fmt.Errorf("public keys in %s: key %q: %w", path, k.ID, err)
		}
	}
	return keys, nil
}

func parsePEMKeys(data []byte) ([]VerifyKey, error) {
	var keys []VerifyKey
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var key any
		var err error
		switch block.Type {
		case "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				key = cert.PublicKey
			}
		default:
			return nil, fmt.Errorf("PEM block %q: want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE (never a private key)", block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("PEM block %q: %w", block.Type, err)
		}
		keys = append(keys, VerifyKey{ID: block.Headers["kid"], Key: key})
	}
	if len(bytes.TrimSpace(data)) > 0 && len(keys) == 0 {
		return nil, errors.New("not PEM and not a JWKS")
	}
	return keys, nil
}

type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	Crv string `json:"crv"`
	N   string `json:"n"`
	E   string `json:"e"`
	X   string `json:"x"`
	Y   string `json:"y"`
	D   string `json:"d"`
}

func parseJWKS(data []byte) ([]VerifyKey, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	var keys []VerifyKey
	for i, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if k.D != "" {
			return nil, fmt.Errorf("JWKS key %d (%q) holds a private key; give only public keys", i, k.Kid)
		}
		key, err := k.publicKey()
		if err != nil {
			return nil, fmt.Errorf("JWKS key %d (%q): %w", i, k.Kid, err)
		}
		keys = append(keys, VerifyKey{ID: k.Kid, Key: key})
	}
	return keys, nil
}

func (k jwk) publicKey() (any, error) {
	b64 := func(name, s string) ([]byte, error) {
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("%s is not base64url", name)
		}
		return b, nil
	}
	switch k.Kty {
	case "RSA":
		n, err := b64("n", k.N)
		if err != nil {
			return nil, err
		}
		e, err := b64("e", k.E)
		if err != nil {
			return nil, err
		}
		eb := new(big.Int).SetBytes(e)
		if !eb.IsInt64() || eb.Int64() < 3 || eb.Int64() > 1<<31-1 {
			return nil, errors.New("RSA exponent out of range")
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(eb.Int64())}, nil
	case "EC":
		if k.Crv != "P-256" {
			return nil, fmt.Errorf("EC curve %q: only P-256", k.Crv)
		}
		x, err := b64("x", k.X)
		if err != nil {
			return nil, err
		}
		y, err := b64("y", k.Y)
		if err != nil {
			return nil, err
		}
		if len(x) != 32 || len(y) != 32 {
			return nil, errors.New("P-256 coordinates are 32 bytes each")
		}
		// The uncompressed point form, which ecdh parsing validates as on
		// the curve.
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return nil, fmt.Errorf("EC point: %w", err)
		}
		return pub, nil
	case "OKP":
		if k.Crv != "Ed25519" {
			return nil, fmt.Errorf("OKP curve %q: only Ed25519", k.Crv)
		}
		x, err := b64("x", k.X)
		if err != nil {
			return nil, err
		}
		if len(x) != ed25519.PublicKeySize {
			return nil, errors.New("an Ed25519 key is 32 bytes")
		}
		return ed25519.PublicKey(x), nil
	}
	return nil, fmt.Errorf("key type %q: want RSA, EC or OKP", k.Kty)
}
