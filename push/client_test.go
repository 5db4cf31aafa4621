package push

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestForbiddenAddresses(t *testing.T) {
	tests := []struct {
		ip        string
		forbidden bool
	}{
		{"127.0.0.1", true},
		{"127.255.255.254", true},
		{"::1", true},
		{"0.0.0.0", true},
		{"0.1.2.3", true},
		{"::", true},
		{"10.0.0.1", true},
		{"10.255.255.255", true},
		{"172.16.0.1", true},
		{"172.31.255.255", true},
		{"192.168.1.1", true},
		{"169.254.169.254", true}, // cloud metadata
		{"169.254.0.1", true},
		{"100.64.0.1", true},
		{"100.127.255.255", true},
		{"224.0.0.1", true},
		{"239.255.255.250", true},
		{"255.255.255.255", true},
		{"240.0.0.1", true},
		{"198.18.0.1", true},
		{"fc00::1", true},
		{"fd12:3456::1", true},
		{"fd00:ec2::254", true}, // AWS metadata over IPv6
		{"fe80::1", true},
		{"fe80::1%eth0", true},
		{"ff02::1", true},
		{"::ffff:127.0.0.1", true}, // IPv4-mapped forms
		{"::ffff:10.0.0.1", true},
		{"::ffff:169.254.169.254", true},
		{"::ffff:192.168.0.1", true},
		{"::127.0.0.1", true},           // IPv4-compatible (deprecated)
		{"::ffff:0:a00:1", true},        // IPv4-translated 10.0.0.1
		{"64:ff9b::a9fe:a9fe", true},    // NAT64 of 169.254.169.254
		{"64:ff9b::7f00:1", true},       // NAT64 of 127.0.0.1
		{"2002:7f00:1::1", true},        // 6to4 of 127.0.0.1
		{"2002:a00:1::1", true},         // 6to4 of 10.0.0.1
		{"2001:db8::1", true},           // documentation
		{"8.8.8.8", false},              // public
		{"1.1.1.1", false},              // public
		{"172.15.255.255", false},       // just below 172.16/12
		{"172.32.0.0", false},           // just above
		{"100.63.255.255", false},       // just below CGNAT
		{"100.128.0.0", false},          // just above
		{"169.253.255.255", false},      // just below link-local
		{"11.0.0.1", false},             // just above 10/8
		{"::ffff:8.8.8.8", false},       // mapped public
		{"2606:4700:4700::1111", false}, // public IPv6
		{"64:ff9b::808:808", false},     // NAT64 of 8.8.8.8
		{"2002:808:808::1", false},      // 6to4 of 8.8.8.8
	}
	for _, tt := range tests {
		t.Run(tt.ip, func(t *testing.T) {
			addr := netip.MustParseAddr(tt.ip)
			if got := forbidden(addr); got != tt.forbidden {
				t.Fatalf("forbidden(%s) = %v, want %v", tt.ip, got, tt.forbidden)
			}
			err := guardControl("tcp", netip.AddrPortFrom(addr, 443).String(), nil)
			if got := errors.Is(err, ErrForbiddenAddress); got != tt.forbidden {
				t.Fatalf("guardControl(%s) = %v, want refused=%v", tt.ip, err, tt.forbidden)
			}
		})
	}
	if !forbidden(netip.Addr{}) {
		t.Error("the zero Addr is allowed")
	}
	if err := guardControl("tcp", "not-an-address", nil); !errors.Is(err, ErrForbiddenAddress) {
		t.Errorf("guardControl(unparsable) = %v, want ErrForbiddenAddress", err)
	}
}

// countingServer is a real server on 127.0.0.1 that counts requests and new
// connections.
type countingServer struct {
	*httptest.Server
	requests atomic.Int64
	conns    atomic.Int64
}

func newCountingServer(tb testing.TB, h http.HandlerFunc) *countingServer {
	tb.Helper()
	s := &countingServer{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		h(w, r)
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.Start()
	tb.Cleanup(s.Close)
	return s
}

func TestGuardRefusesAtDial(t *testing.T) {
	srv := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) {})
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())

	guarded := newTestClient(t, ClientConfig{})
	for _, u := range []string{srv.URL, "http://localhost:" + port + "/"} {
		t.Run(u, func(t *testing.T) {
			// Straight through the http.Client: the dial error must carry
			// the sentinel.
			resp, err := guarded.hc.Post(u, "text/plain", strings.NewReader("x"))
			if err == nil {
				resp.Body.Close()
				t.Fatalf("POST %s: got status %d, want a refused dial", u, resp.StatusCode)
			}
			if !errors.Is(err, ErrForbiddenAddress) {
				t.Fatalf("POST %s: %v, want ErrForbiddenAddress", u, err)
			}
			var op *net.OpError
			if !errors.As(err, &op) || op.Op != "dial" {
				t.Fatalf("POST %s: %v, want a dial error", u, err)
			}
			res := guarded.Deliver(context.Background(), testDelivery(u), nil, time.Now())
			if res.Outcome != Retry || !strings.HasPrefix(res.Err, "forbidden address ") || res.Status != 0 {
				t.Fatalf("Deliver: %+v, want Retry with a forbidden address", res)
			}
		})
	}
	if n := srv.requests.Load() + srv.conns.Load(); n != 0 {
		t.Fatalf("the server saw %d requests and connections; the guard let one through", n)
	}
	res := guarded.Deliver(context.Background(), testDelivery(srv.URL), nil, time.Now())
	if res.Err != "forbidden address 127.0.0.1" {
		t.Fatalf("Err = %q, want %q", res.Err, "forbidden address 127.0.0.1")
	}

	open := newTestClient(t, ClientConfig{AllowPrivate: true})
	if res := open.Deliver(context.Background(), testDelivery(srv.URL), nil, time.Now()); res.Outcome != Delivered {
		t.Fatalf("AllowPrivate: %+v, want Delivered", res)
	}
	if srv.requests.Load() != 1 {
		t.Fatalf("server saw %d requests, want 1", srv.requests.Load())
	}
}

func TestClientTransport(t *testing.T) {
	c := NewClient(ClientConfig{})
	defer c.Close()
	if c.transport.Proxy != nil {
		t.Error("the transport takes a proxy (from the environment?); the guard would only see the proxy")
	}
	if v := c.transport.TLSClientConfig.MinVersion; v != tls.VersionTLS12 {
		t.Errorf("TLS MinVersion = %x, want TLS 1.2", v)
	}
	if c.cfg.MaxResponseBytes != DefaultMaxResponseBytes || c.cfg.UserAgent != DefaultUserAgent {
		t.Errorf("defaults not applied: %+v", c.cfg)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestKeepAlive(t *testing.T) {
	srv := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("ok", 3000))) // longer than what a Result keeps
	})
	c := newTestClient(t, ClientConfig{AllowPrivate: true})
	for i := range 5 {
		if res := c.Deliver(context.Background(), testDelivery(srv.URL), nil, time.Now()); res.Outcome != Delivered {
			t.Fatalf("delivery %d: %+v", i, res)
		}
	}
	if n := srv.conns.Load(); n != 1 {
		t.Fatalf("5 sequential deliveries opened %d connections, want 1 (keep-alive)", n)
	}
}

func TestHTTPS(t *testing.T) {
	tests := []struct {
		name       string
		maxVersion uint16
		want       Outcome
	}{
		{"tls1.3", 0, Delivered},
		{"tls1.1 refused", tls.VersionTLS11, Retry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
			srv.TLS = &tls.Config{MaxVersion: tt.maxVersion, MinVersion: tls.VersionTLS10}
			srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
			srv.StartTLS()
			defer srv.Close()
			c := newTestClient(t, ClientConfig{AllowPrivate: true})
			pool := x509.NewCertPool()
			pool.AddCert(srv.Certificate())
			c.transport.TLSClientConfig.RootCAs = pool
			res := c.Deliver(context.Background(), testDelivery(srv.URL), nil, time.Now())
			if res.Outcome != tt.want {
				t.Fatalf("%+v, want %v", res, tt.want)
			}
		})
	}
}

// TestClientReusesConnectionsUnderFanOut: many deliveries in flight to one
// host at once, twice over: the second round reuses the first round's
// connections instead of dialing anew.
func TestClientReusesConnectionsUnderFanOut(t *testing.T) {
	const inFlight = 300 // beyond the transport's old idle pool of 64 per host
	var (
		dials   atomic.Int64
		arrived sync.WaitGroup
		release = make(chan struct{})
	)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		arrived.Done()
		<-release // hold every request until all are in flight
		w.WriteHeader(http.StatusNoContent)
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			dials.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	c := newTestClient(t, ClientConfig{AllowPrivate: true})
	// Every request is held until all are in flight: on a loaded machine
	// that can take longer than a webhook's usual timeout, and a delivery
	// cut short by it would close its connection, which is not what this
	// test is about.
	d := testDelivery(srv.URL)
	d.Timeout = 2 * time.Minute
	round := func() {
		arrived.Add(inFlight)
		release = make(chan struct{})
		var wg sync.WaitGroup
		for range inFlight {
			wg.Go(func() {
				if res := c.Deliver(context.Background(), d, nil, time.Now()); res.Outcome != Delivered {
					t.Errorf("delivery: %+v", res)
				}
			})
		}
		arrived.Wait()
		close(release)
		wg.Wait()
	}
	round()
	first := dials.Load()
	round()
	if again := dials.Load() - first; again > inFlight/10 {
		t.Errorf("the second round of %d concurrent deliveries dialed %d new connections (the first dialed %d); want them reused", inFlight, again, first)
	}
}

// TestIdleConnectionClosedAsReused (push model seed 10): an endpoint that
// closes a keep-alive connection just as the client sends the next
// delivery on it (an idle timeout ending then) does not cost an attempt:
// the delivery goes again on a new connection. It used to fail as
// "connection closed without a response", a failed attempt, and a few in a
// row dead-lettered a message that no request had carried to the endpoint
// (net/http resends a POST on a reused connection only when the request
// is marked idempotent).
func TestIdleConnectionClosedAsReused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var answered, dropped atomic.Int64
	go func() {
		for first := true; ; first = false {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func(conn net.Conn, first bool) {
				defer conn.Close()
				br := bufio.NewReader(conn)
				for n := 0; ; n++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if first && n == 1 {
						dropped.Add(1)
						return // the first connection closes when reused
					}
					answered.Add(1)
					if _, err := io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"); err != nil {
						return
					}
				}
			}(conn, first)
		}
	}()
	c := newTestClient(t, ClientConfig{AllowPrivate: true})
	url := "http://" + ln.Addr().String() + "/hook"
	for i := range 3 {
		if res := c.Deliver(context.Background(), testDelivery(url), nil, time.Now()); res.Outcome != Delivered {
			t.Fatalf("delivery %d: %+v (the endpoint answered %d, dropped %d on a reused connection)", i, res, answered.Load(), dropped.Load())
		}
	}
	if a, d := answered.Load(), dropped.Load(); a != 3 || d != 1 {
		t.Fatalf("the endpoint answered %d and dropped %d, want 3 and 1", a, d)
	}
}
