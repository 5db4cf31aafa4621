package httpapi

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/namesrv"
)

// Name server routes (DESIGN §4 "Name server"): served by `postbus
// namesrv`, and inside `postbus dev` beside the broker's.

const maxHeartbeatBytes = namesrv.MaxHeartbeatBytes

func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request) {
	var req namesrv.HeartbeatRequest
	if perr := decodeJSONBody(r, maxHeartbeatBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	info := req.BrokerInfo()
	anew := !s.registry.Live(info.Name, info.Addr)
	if err := s.registry.Heartbeat(info); err != nil {
		if errors.Is(err, namesrv.ErrInvalid) {
			writeProblem(w, r, codeInvalidBroker, "", err.Error())
			return
		}
		if errors.Is(err, namesrv.ErrNameTaken) {
			writeProblem(w, r, codeBrokerNameTaken, "name", err.Error())
			return
		}
		s.writeError(w, r, err)
		return
	}
	ans := namesrv.NewHeartbeatResponse(s.registry.BrokerExpiry())
	ans.Registered = anew
	writeJSON(w, http.StatusOK, ans)
}

func (s *Server) handlePatchBroker(w http.ResponseWriter, r *http.Request) {
	var req namesrv.PatchRequest
	if perr := decodeJSONBody(r, maxHeartbeatBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	switch err := s.registry.Patch(req.BrokerInfo(pathParam(r, "name")), req.Removed); {
	case errors.Is(err, namesrv.ErrNotRegistered):
		writeProblem(w, r, codeBrokerNotFound, "name", err.Error())
		return
	case errors.Is(err, namesrv.ErrInvalid):
		writeProblem(w, r, codeInvalidBroker, "", err.Error())
		return
	case err != nil:
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, namesrv.NewHeartbeatResponse(s.registry.BrokerExpiry()))
}

func (s *Server) handleUnregisterBroker(w http.ResponseWriter, r *http.Request) {
	if !s.registry.Unregister(pathParam(r, "name")) {
		writeProblem(w, r, codeBrokerNotFound, "name", "no broker of that name is registered")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleRoute(w http.ResponseWriter, r *http.Request) {
	topic := pathParam(r, "topic")
	// System topics (%RETRY%..., %DLQ%...) are registered like any other.
	if !namesrv.ValidTopicName(topic) {
		writeProblem(w, r, broker.CodeInvalidTopic, "topic", fmt.Sprintf("%q is not a topic name: 1-127 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit, or a system topic such as %%DLQ%%group", topic))
		return
	}
	route, ok, err := s.registry.Lookup(topic)
	switch {
	case errors.Is(err, namesrv.ErrWarmingUp):
		w.Header().Set("Retry-After", "1")
		writeProblem(w, r, codeNotReady, "", err.Error())
		return
	case errors.Is(err, namesrv.ErrTopicGone):
		writeProblem(w, r, codeBrokerUnavailable, "topic", err.Error())
		return
	case err != nil:
		s.writeError(w, r, err)
		return
	case !ok:
		writeProblem(w, r, broker.CodeTopicNotFound, "topic", "no live broker holds topic "+topic)
		return
	}
	writeJSON(w, http.StatusOK, namesrv.NewRouteJSON(route))
}

func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) {
	// A name server warming up lists only the brokers heard since it
	// started: brokers change subscriptions on every broker it lists.
	if err := s.registry.Warm(); err != nil {
		w.Header().Set("Retry-After", "1")
		writeProblem(w, r, codeNotReady, "", err.Error())
		return
	}
	j := namesrv.NewClusterJSON(s.registry.Brokers())
	if r.URL.Query().Get("gone") == "true" {
		j.Gone = s.registry.GoneBrokers()
	}
	writeJSON(w, http.StatusOK, j)
}
