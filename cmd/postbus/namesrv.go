package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/postbus/postbus"
	"github.com/postbus/postbus/httpapi"
	"github.com/postbus/postbus/namesrv"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// serveNamesrv runs a name server: the registry of brokers, their topics
// and routes, with heartbeats and eviction, over HTTP. Name servers do not
// talk to each other; brokers register with every one.
func serveNamesrv(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("postbus namesrv", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		addr, logLevel, logFormat string
		auth                      authFlags
		tlsf                      tlsFlags
		rcfg                      = namesrv.DefaultConfig()
	)
	fs.StringVar(&addr, "addr", ":9876", "listen address (host:port; port 0 picks a free one)")
	fs.DurationVar(&rcfg.BrokerExpiry, "broker-expiry", rcfg.BrokerExpiry, "a broker silent this long is dropped from routes")
	fs.DurationVar(&rcfg.ScanInterval, "scan-interval", rcfg.ScanInterval, "how often silent brokers are looked for")
	fs.DurationVar(&rcfg.TopicMemory, "topic-memory", rcfg.TopicMemory, "a topic whose every broker is down is answered as down (503 broker_unavailable), not unknown, for this long after they left, so that no broker auto-creates a copy of it (at least --broker-expiry)")
	rcfg.WarmUp = 30 * time.Second
	fs.DurationVar(&rcfg.WarmUp, "warm-up", rcfg.WarmUp, "after starting, answer no route for this long (503 not_ready), until every broker has heartbeated: set it to the brokers' --heartbeat-interval; 0: none")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "text", "text or json")
	auth.register(fs)
	tlsf.register(fs, false)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: postbus namesrv [flags]

A name server: brokers started with --namesrv register with it (every 30s, and at once
when their topics change); clients and brokers ask it which brokers hold a topic
(GET /v1/routes/{topic}) and what the cluster is (GET /v1/cluster). Run one or more;
they do not talk to each other, so any one surviving is enough.

Flags (each also as an environment variable, --broker-expiry as POSTBUS_BROKER_EXPIRY):
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	logger, err := newLogger(stderr, logLevel, logFormat)
	if err != nil {
		return err
	}
	authCfg, err := auth.config(false, addr, logger)
	if err != nil {
		return err
	}
	rcfg.Logger = logger
	registry := namesrv.NewRegistry(rcfg)
	go registry.Run(ctx)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "postbus_namesrv_registrations_refused_total",
		Help: "Broker registrations refused (409 broker_name_taken) because another live broker, or another replica group, holds the name."},
		func() float64 { return float64(registry.Refusals()) }))
	certs, err := tlsf.reloader(logger, reg)
	if err != nil {
		return err
	}
	defer watchSIGHUP(certs, logger)()
	var ready atomic.Bool
	api, err := httpapi.New(httpapi.Config{
		Logger: logger, Registry: reg, OpenAPI: postbus.OpenAPI, Auth: authCfg, MetricsAuth: auth.metricsAuth, Version: version,
		NameServer: registry, NameServerOnly: true,
		Ready: func() error {
			if !ready.Load() {
				return errors.New("starting or shutting down")
			}
			return nil
		},
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute,
		WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	served := make(chan error, 1)
	go func() { served <- serveHTTP(srv, ln, certs) }()
	ready.Store(true)
	logger.Info("postbus listening", slog.String("mode", "namesrv"), slog.String("addr", ln.Addr().String()), slog.String("scheme", tlsf.scheme()), slog.String("version", version))
	select {
	case err := <-served:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	ready.Store(false)
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		logger.Error("stopping the http server", slog.Any("err", err))
	}
	logger.Info("stopped")
	return nil
}
