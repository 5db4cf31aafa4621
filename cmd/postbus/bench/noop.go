package bench

import (
	"bytes"
	"fmt"
	"net/http"
	"sync"
)

// noopResult is a publish result of a realistic size; the id is nuid-sized.
const noopResult = `{"msg_id":"NOOPNOOPNOOPNOOPNOOPNO","topic":"%s","queue_id":0,"queue_offset":0,"status":"SEND_OK"}`

// batchElem is what appendBatch starts every message with; counting it is
// enough to answer a batch from this package's own client.
var batchElem = []byte(`{"body":`)

// startNoop starts the baseline on 127.0.0.1:0: a server that reads each
// publish body to the end and answers 201 with a result shaped like the
// broker's, storing nothing. Loading it with the same client and flags shows
// the ceiling the client and this machine put on any broker.
func startNoop(topic string) (*localServer, error) {
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
	return startLocal("no-op server", mux)
}
