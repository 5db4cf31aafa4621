package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
)

// tlsFlags are --tls-cert, --tls-key and --tls-ca, taken by every server.
type tlsFlags struct {
	cert, key, ca string
}

// register adds the flags; withCA for a server whose own clients talk to
// other servers (a broker, not a name server).
func (f *tlsFlags) register(fs *flag.FlagSet, withCA bool) {
	fs.StringVar(&f.cert, "tls-cert", "", "serve HTTPS with this PEM certificate (the chain may follow the leaf); with --tls-key; both are read again on SIGHUP")
	fs.StringVar(&f.key, "tls-key", "", "the PEM private key of --tls-cert")
	if withCA {
		fs.StringVar(&f.ca, "tls-ca", "", "PEM certificates the broker's own clients (heartbeats to name servers, forwards and pushes to other brokers) trust for https addresses, beside the system's roots: for a private CA")
	}
}

// scheme is the URL scheme this server is reached with.
func (f *tlsFlags) scheme() string {
	if f.cert != "" {
		return "https"
	}
	return "http"
}

// clientConfig is the TLS configuration of the bus's own clients: the
// system's roots and --tls-ca's certificates; nil without --tls-ca.
func (f *tlsFlags) clientConfig() (*tls.Config, error) {
	if f.ca == "" {
		return nil, nil
	}
	pool, err := loadCAPool(f.ca)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca: %w", err)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// reloader loads the flags' certificate: nil without TLS; an error when
// only one of --tls-cert and --tls-key is given or the pair cannot be used.
func (f *tlsFlags) reloader(logger *slog.Logger, reg prometheus.Registerer) (*certReloader, error) {
	switch {
	case f.cert == "" && f.key == "":
		return nil, nil
	case f.cert == "" || f.key == "":
		return nil, errors.New("--tls-cert and --tls-key go together: give both or neither")
	}
	r := &certReloader{certFile: f.cert, keyFile: f.key, logger: logger}
	if reg != nil {
		r.failures = prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postbus_tls_reload_failures_total",
			Help: "SIGHUP reloads of --tls-cert and --tls-key that failed; the certificate loaded before keeps serving.",
		})
		r.expiry = prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "postbus_tls_cert_expiry_timestamp_seconds",
			Help: "When the served certificate expires (its NotAfter), as Unix seconds.",
		})
		if err := reg.Register(r.failures); err != nil {
			return nil, err
		}
		if err := reg.Register(r.expiry); err != nil {
			return nil, err
		}
	}
	if err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// certReloader serves the certificate last loaded, and loads it again on
// reload: a renewed certificate is taken without a restart. New
// connections get the new one; open connections keep theirs.
type certReloader struct {
	certFile, keyFile string
	logger            *slog.Logger
	cert              atomic.Pointer[tls.Certificate]
	failures          prometheus.Counter // nil without a registry
	expiry            prometheus.Gauge   // nil without a registry
}

// reload reads the pair again. On failure the old certificate stays.
func (r *certReloader) reload() error {
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("load --tls-cert %s and --tls-key %s: %w", r.certFile, r.keyFile, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return fmt.Errorf("parse --tls-cert %s: %w", r.certFile, err)
	}
	cert.Leaf = leaf
	r.cert.Store(&cert)
	if r.expiry != nil {
		r.expiry.Set(float64(leaf.NotAfter.Unix()))
	}
	r.logger.Info("TLS certificate loaded", slog.String("cert", r.certFile), slog.String("subject", leaf.Subject.String()),
		slog.Time("not_after", leaf.NotAfter))
	return nil
}

func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

// watchSIGHUP reloads r on every SIGHUP until the returned stop is called.
// A server without TLS takes SIGHUP too (systemd's reload), and says there
// is nothing to reload instead of dying of it.
func watchSIGHUP(r *certReloader, logger *slog.Logger) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ch:
			case <-ctx.Done():
				return
			}
			if r == nil {
				logger.Info("SIGHUP: nothing to reload (no --tls-cert)")
				continue
			}
			if err := r.reload(); err != nil {
				if r.failures != nil {
					r.failures.Inc()
				}
				logger.Error("SIGHUP: TLS reload failed; the certificate loaded before keeps serving", slog.Any("err", err))
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		cancel()
		<-done
	}
}

// serveHTTP serves srv on ln, over TLS when r is not nil. HTTP/2 is left
// off: a parked long poll takes its connection over (Hijack), which only
// HTTP/1 allows.
func serveHTTP(srv *http.Server, ln net.Listener, r *certReloader) error {
	if r == nil {
		return srv.Serve(ln)
	}
	srv.TLSConfig = &tls.Config{GetCertificate: r.getCertificate, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	return srv.ServeTLS(ln, "", "")
}

// clientTransport is http.DefaultTransport with the bus's TLS client
// configuration (nil: the system's roots).
func clientTransport(cfg *tls.Config) http.RoundTripper {
	if cfg == nil {
		return http.DefaultTransport
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return tr
}
