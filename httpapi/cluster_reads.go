package httpapi

import (
	"fmt"
	"net/http"
	"strings"
)

// findAnywhere answers a read of one message (by id, its body or its
// trace) from this broker, or, when this broker answers 404, from the
// first other broker that has it. When none has it but some broker did
// not answer (hung, down but still listed, or failing), the answer is 503
// broker_unavailable naming them, not 404: the message may be stored
// there, and a producer told "not found" may publish it again. Brokers
// the name servers have expired are not asked and not named: past the
// broker expiry the bus no longer knows them.
func (s *Server) findAnywhere(w http.ResponseWriter, r *http.Request, local http.HandlerFunc) {
	self := s.askOne(r, peer{name: s.cluster.self}, "", nil, local)
	if self.status != http.StatusNotFound {
		writeAnswer(w, r, self)
		return
	}
	var silent []string
	for _, a := range s.ask(r, s.cluster.others(r.Context()), "", nil, local) {
		switch {
		case a.ok():
			writeAnswer(w, r, a)
			return
		case a.err != nil || a.status >= 500:
			silent = append(silent, describe(a))
		}
	}
	if len(silent) > 0 {
		s.cluster.partial.WithLabelValues("message").Inc()
		writeProblem(w, r, codeBrokerUnavailable, "", fmt.Sprintf("the message is not on the brokers that answered, and %s did not; it may be stored there: ask again once they answer",
			strings.Join(silent, ", ")))
		return
	}
	writeAnswer(w, r, self)
}
