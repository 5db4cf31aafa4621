package httpapi

import (
	"net/http"

	"github.com/postbus/postbus/broker"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func (s *Server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	v := s.version
	if v == "" {
		v = "unknown"
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "version": v})
}

// handleHealthzHead and handleReadyzHead answer HEAD as GET, without the
// body (net/http drops it): probes and load balancers often ask with HEAD.
// Each method is its own operation in openapi.yaml, so each has a name.
func (s *Server) handleHealthzHead(w http.ResponseWriter, r *http.Request) { s.handleHealthz(w, r) }

func (s *Server) handleReadyzHead(w http.ResponseWriter, r *http.Request) { s.handleReadyz(w, r) }

// handleReadyz answers 200 once the server takes traffic; load balancers
// and tests wait on it.
func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if err := s.ready(); err != nil {
		writeProblem(w, r, codeNotReady, "", "not ready: "+err.Error())
		return
	}
	if s.cluster != nil && s.cluster.names != nil && !s.cluster.names.Heard() {
		// Until the first heartbeat is answered it cannot be known
		// whether the name servers take this broker's name.
		writeProblem(w, r, codeNotReady, "", "not ready: registering with the name servers")
		return
	}
	if err := s.nameRefused(); err != nil {
		writeProblem(w, r, codeNotReady, "", "not ready: "+err.Error())
		return
	}
	if s.sync != nil {
		if why := s.sync.fence.shutWhy(); why != "" {
			writeProblem(w, r, codeNotReady, "", "not ready: "+why)
			return
		}
	}
	// Damaged records do not make a broker unready (everything else is
	// served), but an operator looking here should see them.
	var damaged []broker.DamagedSpan
	if s.broker != nil {
		damaged = s.broker.Damaged()
	}
	if len(damaged) == 0 {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		return
	}
	type span struct {
		Offset int64  `json:"offset"`
		Next   int64  `json:"next"`
		Reason string `json:"reason"`
	}
	spans := make([]span, len(damaged))
	for i, d := range damaged {
		spans[i] = span{d.Offset, d.Next, d.Reason}
	}
	writeJSON(w, http.StatusOK, struct {
		Status      string `json:"status"`
		Quarantined []span `json:"quarantined"`
	}{"ready", spans})
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

func (s *Server) handleOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(s.openapi)
}
