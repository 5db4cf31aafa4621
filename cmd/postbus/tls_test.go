//go:build unix

package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testCA is a private certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(tb testing.TB) *testCA {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "postbus test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a certificate for 127.0.0.1 signed by the CA, with serial
// and notAfter, to certFile and keyFile (each by a rename, whole).
func (ca *testCA) issue(tb testing.TB, serial int64, notAfter time.Time, certFile, keyFile string) {
	tb.Helper()
	ca.issueFor(tb, serial, notAfter, certFile, keyFile, nil, []net.IP{net.ParseIP("127.0.0.1")})
}

// issueFor is issue for a certificate naming hosts and ips.
func (ca *testCA) issueFor(tb testing.TB, serial int64, notAfter time.Time, certFile, keyFile string, hosts []string, ips []net.IP) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "postbus test " + strconv.FormatInt(serial, 10)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     hosts,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	writeWhole(tb, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeWhole(tb, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
}

func writeWhole(tb testing.TB, name string, data []byte) {
	tb.Helper()
	if err := os.WriteFile(name+".tmp", data, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(name+".tmp", name); err != nil {
		tb.Fatal(err)
	}
}

// startTLS starts postbus with args (which serve TLS) and waits until its
// /readyz answers 200 over https to a client trusting pool.
func startTLS(tb testing.TB, client *http.Client, args ...string) *proc {
	tb.Helper()
	p := launchUnready(tb, args...)
	p.url = "https://" + strings.TrimPrefix(p.url, "http://")
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(p.url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s/readyz did not answer 200 over https within 30s (last error %v)", p.url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// servedSerial is the serial of the certificate a new TLS connection to
// addr gets.
func servedSerial(tb testing.TB, addr string, pool *x509.CertPool) int64 {
	tb.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		tb.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// tlsMetric reads one unlabelled sample from a /metrics page.
func tlsMetric(tb testing.TB, client *http.Client, url, name string) (float64, bool) {
	tb.Helper()
	resp, err := client.Get(url + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				tb.Fatalf("%s: %q: %v", name, v, err)
			}
			return f, true
		}
	}
	return 0, false
}

// TestTLS: a name server and a broker serve HTTPS with a certificate from a
// private CA; the broker's heartbeats reach the name server over https
// trusting the CA (--tls-ca), so it becomes ready; `postbus admin` speaks
// https with --tls-ca and fails without it; SIGHUP takes a renewed
// certificate for new connections, and a broken one is refused, counted,
// and the served certificate kept.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	caFile := filepath.Join(dir, "ca.pem")
	writeWhole(t, caFile, ca.pem)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	nsCert, nsKey := filepath.Join(dir, "ns.pem"), filepath.Join(dir, "ns.key")
	ca.issue(t, 10, time.Now().Add(12*time.Hour), nsCert, nsKey)
	ns := startTLS(t, client, "namesrv", "--warm-up", "0s", "--tls-cert", nsCert, "--tls-key", nsKey)

	cert, key := filepath.Join(dir, "broker.pem"), filepath.Join(dir, "broker.key")
	firstExpiry := time.Now().Add(6 * time.Hour).Truncate(time.Second)
	ca.issue(t, 20, firstExpiry, cert, key)
	b := startTLS(t, client, "broker", "--data", filepath.Join(dir, "data"), "--auto-create-topics",
		"--tls-cert", cert, "--tls-key", key, "--tls-ca", caFile, "--namesrv", ns.url, "--heartbeat-interval", "1s")

	// The name server knows the broker at its https address.
	var cl struct {
		Brokers []struct{ Addr string }
	}
	resp, err := client.Get(ns.url + "/v1/cluster")
	if err != nil {
		t.Fatal(err)
	}
	if err := decodeBody(resp, &cl); err != nil {
		t.Fatal(err)
	}
	if len(cl.Brokers) != 1 || cl.Brokers[0].Addr != b.url {
		t.Fatalf("the name server knows %+v, want the broker at %s", cl.Brokers, b.url)
	}

	resp, err = client.Post(b.url+"/v1/topics/secure/messages", "text/plain", strings.NewReader("over tls"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("publish over https: %d", resp.StatusCode)
	}
	// A second broker forwards to the first over https, trusting the CA:
	// a publish to the topic only the first holds is stored there.
	cert2, key2 := filepath.Join(dir, "broker2.pem"), filepath.Join(dir, "broker2.key")
	ca.issue(t, 30, time.Now().Add(6*time.Hour), cert2, key2)
	b2 := startTLS(t, client, "broker", "--data", filepath.Join(dir, "data2"), "--broker-name", "second",
		"--tls-cert", cert2, "--tls-key", key2, "--tls-ca", caFile, "--namesrv", ns.url, "--heartbeat-interval", "1s")
	resp, err = client.Post(b2.url+"/v1/topics/secure/messages", "text/plain", strings.NewReader("forwarded over tls"))
	if err != nil {
		t.Fatal(err)
	}
	var ack struct{ Broker string }
	if resp.StatusCode != http.StatusCreated {
		resp.Body.Close()
		t.Fatalf("publish through the second broker: %d\n%s", resp.StatusCode, b2.Logs())
	}
	if err := jsonDecode(resp.Body, &ack); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ack.Broker == "second" || ack.Broker == "" {
		t.Fatalf("the publish through the second broker was stored on %q, want the first broker (a forward)", ack.Broker)
	}

	out, stderr, code := adminRun(t, b.url, "topics", "list", "--tls-ca", caFile)
	if code != 0 || !strings.Contains(out, "secure") {
		t.Fatalf("admin over https with --tls-ca: exit %d\n%s%s", code, out, stderr)
	}
	if _, stderr, code := adminRun(t, b.url, "topics", "list"); code != exitUnavailable || !strings.Contains(stderr, "certificate") {
		t.Fatalf("admin over https without --tls-ca: exit %d, want %d with a certificate error: %s", code, exitUnavailable, stderr)
	}
	if got, ok := tlsMetric(t, client, b.url, "postbus_tls_cert_expiry_timestamp_seconds"); !ok || int64(got) != firstExpiry.Unix() {
		t.Fatalf("postbus_tls_cert_expiry_timestamp_seconds %v (%v), want %d", got, ok, firstExpiry.Unix())
	}

	addr := strings.TrimPrefix(b.url, "https://")
	if got := servedSerial(t, addr, pool); got != 20 {
		t.Fatalf("served certificate serial %d, want 20", got)
	}
	// Renewal: a new pair, then SIGHUP.
	renewedExpiry := time.Now().Add(20 * time.Hour).Truncate(time.Second)
	ca.issue(t, 21, renewedExpiry, cert, key)
	if err := b.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "the renewed certificate to be served", func() bool { return servedSerial(t, addr, pool) == 21 })
	if got, _ := tlsMetric(t, client, b.url, "postbus_tls_cert_expiry_timestamp_seconds"); int64(got) != renewedExpiry.Unix() {
		t.Fatalf("after the reload postbus_tls_cert_expiry_timestamp_seconds %v, want %d", got, renewedExpiry.Unix())
	}

	// A broken pair is refused; the renewed certificate keeps serving.
	writeWhole(t, cert, []byte("not a certificate"))
	if err := b.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "the failed reload to be counted", func() bool {
		v, _ := tlsMetric(t, client, b.url, "postbus_tls_reload_failures_total")
		return v == 1
	})
	if got := servedSerial(t, addr, pool); got != 21 {
		t.Fatalf("after a failed reload the served serial is %d, want 21 (kept)", got)
	}
	if !strings.Contains(b.Logs(), "TLS reload failed") {
		t.Errorf("no ERROR line for the failed reload:\n%s", b.Logs())
	}
	// Still alive, and it still serves.
	resp, err = client.Get(b.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// TestTLSFlags: --tls-cert without --tls-key, or a pair that cannot be
// loaded, stops the start with a message naming the flags; a server without
// TLS takes SIGHUP without dying.
func TestTLSFlags(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	writeWhole(t, junk, []byte("junk"))
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"cert without key", []string{"broker", "--data", dir, "--tls-cert", junk}, "--tls-cert and --tls-key go together"},
		{"unreadable pair", []string{"namesrv", "--tls-cert", junk, "--tls-key", junk}, "load --tls-cert"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, code := runBinary(t, tt.args...)
			if code != 1 || !strings.Contains(out, tt.want) {
				t.Errorf("exit %d, want 1 with %q:\n%s", code, tt.want, out)
			}
		})
	}
	p := start(t, "dev", "--data", filepath.Join(dir, "dev"))
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the SIGHUP to be logged", func() bool { return strings.Contains(p.Logs(), "nothing to reload") })
	resp, err := http.Get(p.url + "/healthz")
	if err != nil {
		t.Fatalf("after SIGHUP: %v", err)
	}
	resp.Body.Close()
}

func runBinary(tb testing.TB, args ...string) (string, int) {
	tb.Helper()
	cmd := execCommand(postbusBin, append(args, "--addr", "127.0.0.1:0")...)
	out, _ := cmd.CombinedOutput()
	return string(out), cmd.ProcessState.ExitCode()
}

func decodeBody(resp *http.Response, v any) error {
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %d", resp.Request.URL, resp.StatusCode)
	}
	return jsonDecode(resp.Body, v)
}

func execCommand(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }

func jsonDecode(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }

// TestAlertRules: every postbus_ series docs/alerts.yml names is exported
// by a broker serving TLS with a pull group: a rule on a misspelt or
// removed series would never fire.
func TestAlertRules(t *testing.T) {
	rules, err := os.ReadFile(filepath.Join("..", "..", "docs", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := newTestCA(t)
	cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	ca.issue(t, 2, time.Now().Add(time.Hour), cert, key)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	caFile := filepath.Join(dir, "ca.pem")
	writeWhole(t, caFile, ca.pem)
	p := startTLS(t, client, "dev", "--data", filepath.Join(dir, "data"), "--tls-cert", cert, "--tls-key", key, "--tls-ca", caFile)
	resp, err := client.Post(p.url+"/v1/topics/t/messages", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = client.Post(p.url+"/v1/groups/g/topics/t/pull", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = client.Get(p.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	page, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`\bpostbus_[a-z_]+\b`).FindAllString(string(rules), -1)
	if len(names) < 10 {
		t.Fatalf("only %d series named in alerts.yml", len(names))
	}
	for _, n := range names {
		if !strings.Contains(string(page), "# HELP "+n+" ") {
			t.Errorf("docs/alerts.yml names %s, which the broker does not export", n)
		}
	}
}

// TestDevTLSTrustsItself (attack G3): `postbus dev --tls-cert --tls-key`
// with a certificate of a private CA could not reach its own name server
// (x509: unknown authority) without --tls-ca, so /readyz stayed 503 and
// every publish to a new topic answered 503. dev trusts its own
// certificate now.
func TestDevTLSTrustsItself(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	cert, key := filepath.Join(dir, "dev.pem"), filepath.Join(dir, "dev.key")
	ca.issue(t, 30, time.Now().Add(time.Hour), cert, key)
	p := startTLS(t, client, "dev", "--data", filepath.Join(dir, "data"), "--tls-cert", cert, "--tls-key", key)
	resp, err := client.Post(p.url+"/v1/topics/fresh/messages", "text/plain", strings.NewReader("over tls"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("publish to a new topic on dev over https: %d %s", resp.StatusCode, body)
	}
}

// A dev bus listening on a host name with a certificate for that name
// only (the usual dev certificate names localhost and no address) dials
// itself by that name: its own name server and topic creation used to dial
// the resolved 127.0.0.1 and fail the certificate check, so every publish
// to a new topic failed while /readyz said ready.
func TestDevTLSLocalhostCertificate(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	cert, key := filepath.Join(dir, "dev.pem"), filepath.Join(dir, "dev.key")
	ca.issueFor(t, 31, time.Now().Add(time.Hour), cert, key, []string{"localhost"}, nil)
	p := launchUnready(t, "dev", "--data", filepath.Join(dir, "data"), "--tls-cert", cert, "--tls-key", key, "--addr", "localhost:0")
	_, port, err := net.SplitHostPort(strings.TrimPrefix(p.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	url := "https://localhost:" + port
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/readyz did not answer 200 within 30s (last error %v)", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := range 3 {
		resp, err := client.Post(fmt.Sprintf("%s/v1/topics/fresh%d/messages", url, i), "text/plain", strings.NewReader("over tls"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("publish %d to a new topic on dev over https with a localhost certificate: %d %s", i, resp.StatusCode, body)
		}
	}
}
