package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// noopServer is the baseline: an HTTP server in this process that reads each
// publish body to the end and answers 201 with a result shaped like the
// broker's, storing nothing. Loading it with the same client and flags shows
// the ceiling the client and this machine put on any broker.
type noopServer struct {
	url  string
	srv  *http.Server
	done chan struct{} // closed when Serve returns

	closeOnce sync.Once
	closeErr  error // guarded by closeOnce
}

// noopResult is a publish result of a realistic size; the id is nuid-sized.
const noopResult = `{"msg_id":"NOOPNOOPNOOPNOOPNOOPNO","topic":"%s","queue_id":0,"queue_offset":0,"status":"SEND_OK"}`

// batchElem is what appendBatch starts every message with; counting it is
// enough to answer a batch from this package's own client.
var batchElem = []byte(`{"body":`)

// startNoop starts the no-op server on 127.0.0.1:0.
func startNoop(topic string) (*noopServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for no-op server: %w", err)
	}
	one := []byte(fmt.Sprintf(noopResult, topic))
	bufs := sync.Pool{New: func() any { return new(bytes.Buffer) }}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/topics/{topic}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		fmt.Fprintf(w, `{"name":"%s","queues":4}`, topic)
	})
	mux.HandleFunc("POST /v1/topics/{topic}/messages", func(w http.ResponseWriter, r *http.Request) {
		buf := bufs.Get().(*bytes.Buffer)
		buf.Reset()
		_, err := buf.ReadFrom(r.Body)
		bufs.Put(buf)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		w.Write(one)
	})
	mux.HandleFunc("POST /v1/topics/{topic}/messages/batch", func(w http.ResponseWriter, r *http.Request) {
		buf := bufs.Get().(*bytes.Buffer)
		defer bufs.Put(buf)
		buf.Reset()
		if _, err := buf.ReadFrom(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		n := bytes.Count(buf.Bytes(), batchElem)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		buf.Reset()
		buf.WriteByte('[')
		for i := range n {
			if i > 0 {
				buf.WriteByte(',')
			}
			buf.Write(one)
		}
		buf.WriteByte(']')
		w.Write(buf.Bytes())
	})
	s := &noopServer{
		url:  "http://" + ln.Addr().String(),
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		s.srv.Serve(ln) // returns http.ErrServerClosed after Close
	}()
	return s, nil
}

// Close stops the server, waiting up to 5s for in-flight requests. It is
// idempotent.
func (s *noopServer) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.closeErr = fmt.Errorf("close no-op server: %w", err)
			s.srv.Close()
		}
		<-s.done
	})
	return s.closeErr
}
