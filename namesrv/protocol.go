package namesrv

import (
	"fmt"
	"time"
)

// The bodies of the name server's HTTP protocol (see the package doc). The
// name server's handlers and the Client both use these types, so the two
// sides cannot drift apart.

// MaxHeartbeatBytes bounds a heartbeat request body: MaxTopicsPerBroker
// topics with names of MaxTopicNameLen fit, with room to spare.
const MaxHeartbeatBytes = 32 << 20

// maxAnswerBytes bounds what the Client reads of any answer.
const maxAnswerBytes = 4 << 20

// HeartbeatRequest is the body of POST /v1/brokers/heartbeat.
type HeartbeatRequest struct {
	Name    string `json:"name"`
	Cluster string `json:"cluster"`
	Addr    string `json:"addr"`
	Version string `json:"version"`
	// Instance identifies the broker's data; see BrokerInfo.
	Instance string  `json:"instance,omitempty"`
	Topics   []Topic `json:"topics"`
}

// NewHeartbeatRequest is the request that registers info. Topics is shared
// with info, not copied.
func NewHeartbeatRequest(info BrokerInfo) HeartbeatRequest {
	topics := info.Topics
	if topics == nil {
		topics = []Topic{}
	}
	return HeartbeatRequest{Name: info.Name, Cluster: info.Cluster, Addr: info.Addr, Version: info.Version, Instance: info.Instance, Topics: topics}
}

// BrokerInfo is what the request registers, for Registry.Heartbeat.
func (h HeartbeatRequest) BrokerInfo() BrokerInfo {
	return BrokerInfo{Name: h.Name, Cluster: h.Cluster, Addr: h.Addr, Version: h.Version, Instance: h.Instance, Topics: h.Topics}
}

// PatchRequest is the body of PATCH /v1/brokers/{name}: a registered
// broker's topics added or resized (Put) and dropped (Removed), sent in
// place of a whole heartbeat when few changed. The 200 answer is a
// HeartbeatResponse; a name server that does not hold the broker at Addr
// answers 404 broker_not_found, and the broker sends its heartbeat.
type PatchRequest struct {
	Cluster string   `json:"cluster"`
	Addr    string   `json:"addr"`
	Version string   `json:"version"`
	Put     []Topic  `json:"put"`
	Removed []string `json:"removed"`
}

// NewPatchRequest is the patch that turns info's registration, as a name
// server last acknowledged it, into one with put and without removed.
func NewPatchRequest(info BrokerInfo, put []Topic, removed []string) PatchRequest {
	if put == nil {
		put = []Topic{}
	}
	if removed == nil {
		removed = []string{}
	}
	return PatchRequest{Cluster: info.Cluster, Addr: info.Addr, Version: info.Version, Put: put, Removed: removed}
}

// BrokerInfo is the patch's broker, named name, with the topics it puts,
// for Registry.Patch.
func (p PatchRequest) BrokerInfo(name string) BrokerInfo {
	return BrokerInfo{Name: name, Cluster: p.Cluster, Addr: p.Addr, Version: p.Version, Topics: p.Put}
}

// HeartbeatResponse is the 200 answer to a heartbeat: how long the name
// server keeps the broker without hearing from it again.
type HeartbeatResponse struct {
	ExpiresIn string `json:"expires_in"`
	// Registered says that this heartbeat registered the broker anew: the
	// name server did not hold it live (it restarted, or had expired the
	// broker). Brokers that held its topics meanwhile may have changed
	// their subscriptions without it, so it exchanges them at once.
	Registered bool `json:"registered,omitempty"`
}

// NewHeartbeatResponse answers with the registry's expiry, for example
// {"expires_in":"120s"}.
func NewHeartbeatResponse(expiry time.Duration) HeartbeatResponse {
	return HeartbeatResponse{ExpiresIn: formatDuration(expiry)}
}

// formatDuration writes whole seconds as "120s" rather than Go's "2m0s";
// both parse with time.ParseDuration.
func formatDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return d.String()
}

// RouteJSON is the 200 answer of GET /v1/routes/{topic}.
type RouteJSON struct {
	Topic   string            `json:"topic"`
	Brokers []RouteBrokerJSON `json:"brokers"`
}

// RouteBrokerJSON is one broker of a RouteJSON.
type RouteBrokerJSON struct {
	Name    string `json:"name"`
	Cluster string `json:"cluster"`
	Addr    string `json:"addr"`
	Queues  int    `json:"queues"`
}

// NewRouteJSON is the answer for rt.
func NewRouteJSON(rt Route) RouteJSON {
	j := RouteJSON{Topic: rt.Topic, Brokers: make([]RouteBrokerJSON, len(rt.Brokers))}
	for i, b := range rt.Brokers {
		j.Brokers[i] = RouteBrokerJSON(b)
	}
	return j
}

// Route is the route the answer describes.
func (j RouteJSON) Route() Route {
	rt := Route{Topic: j.Topic, Brokers: make([]RouteBroker, len(j.Brokers))}
	for i, b := range j.Brokers {
		rt.Brokers[i] = RouteBroker(b)
	}
	return rt
}

// ClusterJSON is the 200 answer of GET /v1/cluster.
type ClusterJSON struct {
	Brokers []ClusterBrokerJSON `json:"brokers"`
	// Gone names the brokers that expired or unregistered within the
	// name server's topic memory and have not registered since.
	Gone []string `json:"gone,omitempty"`
}

// ClusterBrokerJSON is one broker of a ClusterJSON: its topics are counted,
// not listed, since a broker may hold a hundred thousand.
type ClusterBrokerJSON struct {
	Name          string    `json:"name"`
	Cluster       string    `json:"cluster"`
	Addr          string    `json:"addr"`
	Version       string    `json:"version"`
	Topics        int       `json:"topics"`
	LastHeartbeat time.Time `json:"last_heartbeat"` // RFC 3339, UTC
}

// NewClusterJSON is the answer for brokers (as Registry.Brokers returns
// them).
func NewClusterJSON(brokers []BrokerInfo) ClusterJSON {
	j := ClusterJSON{Brokers: make([]ClusterBrokerJSON, len(brokers))}
	for i, b := range brokers {
		j.Brokers[i] = ClusterBrokerJSON{
			Name: b.Name, Cluster: b.Cluster, Addr: b.Addr, Version: b.Version,
			Topics: len(b.Topics), LastHeartbeat: b.LastHeartbeat.UTC(),
		}
	}
	return j
}
