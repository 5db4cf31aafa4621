package httpapi

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// signRawHS256 signs header and payload, given as JSON text exactly as
// they are to be sent (a JWT library would not send a member twice).
func signRawHS256(header, payload string) string {
	enc := base64.RawURLEncoding
	in := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload))
	mac := hmac.New(sha256.New, testSecret)
	mac.Write([]byte(in))
	return in + "." + enc.EncodeToString(mac.Sum(nil))
}

// TestTimeClaimsBounded: exp, nbf and iat beyond what a time holds used to
// wrap around in the JWT library's int64 conversion: an nbf or iat of 1e19
// or 1e300 let an admin token in, and an exp of 1e300 was "expired". Each
// is refused now, saying why; so is a claim or header member given twice,
// and a time claim that is not a number gets the same word for iat as for
// exp and nbf.
func TestTimeClaimsBounded(t *testing.T) {
	srv, _ := newAuthServer(t, Config{}, nil)
	now := time.Now().Unix()
	exp := strconv.FormatInt(now+3600, 10)
	const hs = `{"alg":"HS256","typ":"JWT"}`
	const outOfRange = "must be seconds since 1970 from -62135596800 to 253402300799"
	const notNumber = "exp, nbf and iat must be numbers"
	tests := []struct {
		name, header, claims, detail string
	}{
		{"nbf 1e19", hs, `{"scope":"admin","exp":` + exp + `,"nbf":1e19}`, outOfRange},
		{"nbf 9.3e18", hs, `{"scope":"admin","exp":` + exp + `,"nbf":9.3e18}`, outOfRange},
		{"nbf 1e300", hs, `{"scope":"admin","exp":` + exp + `,"nbf":1e300}`, outOfRange},
		{"nbf -1e300", hs, `{"scope":"admin","exp":` + exp + `,"nbf":-1e300}`, outOfRange},
		{"iat 1e20", hs, `{"scope":"admin","exp":` + exp + `,"iat":1e20}`, outOfRange},
		{"iat 1e300", hs, `{"scope":"admin","exp":` + exp + `,"iat":1e300}`, outOfRange},
		{"iat 1e400", hs, `{"scope":"admin","exp":` + exp + `,"iat":1e400}`, outOfRange},
		{"exp 1e300", hs, `{"scope":"admin","exp":1e300}`, outOfRange},
		{"exp 1e19", hs, `{"scope":"admin","exp":1e19}`, outOfRange},
		{"exp past year 9999", hs, `{"scope":"admin","exp":253402300800}`, outOfRange},
		{"iat a string", hs, `{"scope":"admin","exp":` + exp + `,"iat":"x"}`, notNumber},
		{"exp a string", hs, `{"scope":"admin","exp":"x"}`, notNumber},
		{"nbf a string", hs, `{"scope":"admin","exp":` + exp + `,"nbf":"x"}`, notNumber},
		{"scope twice", hs, `{"scope":"publish:x","scope":"admin","exp":` + exp + `}`, "give a member twice"},
		{"exp twice", hs, `{"scope":"admin","exp":1,"exp":` + exp + `}`, "give a member twice"},
		{"escaped duplicate", hs, `{"scope":"publish:x","sc\u006fpe":"admin","exp":` + exp + `}`, "give a member twice"},
		{"header alg twice", `{"alg":"none","alg":"HS256"}`, `{"scope":"admin","exp":` + exp + `}`, "give a member twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, data := do(t, "PUT", srv.URL+"/v1/topics/t", withToken(signRawHS256(tt.header, tt.claims)), strings.NewReader(`{}`))
			if resp.StatusCode != http.StatusUnauthorized || codeOf(data) != string(codeUnauthorized) || !strings.Contains(string(data), tt.detail) {
				t.Fatalf("want 401 unauthorized saying %q; got %d %s", tt.detail, resp.StatusCode, data)
			}
		})
	}
	// The bounds themselves, and ordinary times, are fine.
	for _, claims := range []string{
		`{"scope":"admin","exp":253402300799}`,
		`{"scope":"admin","exp":` + exp + `,"nbf":-62135596800,"iat":` + strconv.FormatInt(now, 10) + `}`,
		`{"scope":"admin","exp":` + exp + `.25,"nbf":1.5e9}`,
	} {
		if resp, data := do(t, "PUT", srv.URL+"/v1/topics/t", withToken(signRawHS256(hs, claims)), strings.NewReader(`{}`)); resp.StatusCode >= 400 {
			t.Fatalf("%s: %d %s", claims, resp.StatusCode, data)
		}
	}
}

// TestTwoAuthorizationHeadersRefused: the first of two Authorization
// headers was used and the second ignored, while every other header given
// twice is refused; a proxy checking the last one would disagree with the
// server on who the caller is.
func TestTwoAuthorizationHeadersRefused(t *testing.T) {
	srv, _ := newAuthServer(t, Config{}, nil)
	admin := hsToken(t, scoped("admin"))
	for _, second := range []string{"Bearer x", "Bearer " + admin} {
		req, err := http.NewRequest("PUT", srv.URL+"/v1/topics/t", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Add("Authorization", "Bearer "+admin)
		req.Header.Add("Authorization", second)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusBadRequest || codeOf(data) != string(codeInvalidHeader) || !strings.Contains(string(data), `"field":"Authorization"`) {
			t.Fatalf("two Authorization headers: want 400 invalid_header; got %d %s", resp.StatusCode, data)
		}
	}
	// One is fine.
	if resp, data := do(t, "PUT", srv.URL+"/v1/topics/t", withToken(admin), strings.NewReader(`{}`)); resp.StatusCode >= 400 {
		t.Fatalf("one Authorization header: %d %s", resp.StatusCode, data)
	}
}
