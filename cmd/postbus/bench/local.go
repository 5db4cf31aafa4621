package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// localServer is an HTTP server in this process on a port of its own on
// 127.0.0.1: the no-op baseline and the webhook sink.
type localServer struct {
	url  string // http://127.0.0.1:port
	what string // names it in errors
	srv  *http.Server
	done chan struct{} // closed when Serve returns

	closeOnce sync.Once
	closeErr  error // guarded by closeOnce
}

// startLocal listens on 127.0.0.1:0 and serves h until Close.
func startLocal(what string, h http.Handler) (*localServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for %s: %w", what, err)
	}
	s := &localServer{
		url:  "http://" + ln.Addr().String(),
		what: what,
		srv:  &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln) // returns http.ErrServerClosed after Close
	}()
	return s, nil
}

// Close stops the server, waiting up to 5s for requests in progress. It is
// idempotent.
func (s *localServer) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.closeErr = fmt.Errorf("close %s: %w", s.what, err)
			s.srv.Close()
		}
		<-s.done
	})
	return s.closeErr
}
