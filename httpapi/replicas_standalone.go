package httpapi

import "net/http"

// The replica routes of a standalone broker (no --raft-peers): openapi.yaml
// documents them for every broker, and one outside a replica group says
// so rather than answering a bare not_found. A member of a group serves
// them in its Front before this router is reached.

func (s *Server) handleReplicas(w http.ResponseWriter, r *http.Request) { notReplicated(w, r) }

// handleAddReplica reads the body as every JSON route does, so that a
// malformed request is told so (400) wherever it is sent.
func (s *Server) handleAddReplica(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID   string `json:"id"`
		Addr string `json:"addr"`
	}
	if perr := decodeJSONBody(r, 64<<10, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	notReplicated(w, r)
}

func (s *Server) handleRemoveReplica(w http.ResponseWriter, r *http.Request) { notReplicated(w, r) }
