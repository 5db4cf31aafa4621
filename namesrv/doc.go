// Package namesrv is postbus's name server: the registry in which brokers
// register their topics (registry.go), the JSON bodies of its HTTP protocol
// (protocol.go), and the small client with which a broker registers and
// looks up other brokers' topics (client.go). The HTTP routes themselves
// live in package httpapi.
//
// As in RocketMQ, name servers never talk to each other. Each keeps its
// registry in memory only and is complete on its own, because every broker
// heartbeats to every name server; a restarted name server is whole again
// one heartbeat interval later. Nothing here is written to disk. Until
// then its routes would be partial, so it answers none: for Config.WarmUp
// after it starts (postbus namesrv --warm-up, 30s: the brokers' default
// heartbeat interval), Lookup returns ErrWarmingUp (HTTP 503 not_ready).
// The name server inside `postbus dev` has no warm-up: a dev bus answers
// at once after a restart, and what its partial routes miss (a
// subscription created before every broker re-registered) reaches the
// brokers concerned by the brokers' anti-entropy (package httpapi,
// cluster_sync.go) when they re-register.
//
// # The registry
//
// A broker's registration is its name, cluster, base URL, version and the
// topics it holds with their queue counts. Each heartbeat replaces the
// registration whole: a topic the broker no longer lists leaves its routes
// at once. Invariants, all under one RWMutex:
//   - brokers maps a name to its entry; index maps a topic to the entries
//     holding it, sorted by broker name, with each one's queue count. A
//     (topic, broker) pair is in index exactly when the broker's current
//     registration lists the topic, and index has no empty lists, so a
//     route costs O(brokers holding the topic) and an unregistered or
//     expired broker leaves nothing behind.
//   - A broker silent for longer than BrokerExpiry (default 120s) is left
//     out of Route and Brokers at once, and removed by Run, which looks
//     every ScanInterval (default 10s). Unregister removes it at once.
//   - gone remembers, for TopicMemory (24h, at least BrokerExpiry), each
//     topic whose last holder expired or unregistered: Lookup says
//     ErrTopicGone (HTTP 503 broker_unavailable) rather than "nobody holds
//     it" (404), so that no broker takes the place of a topic whose
//     brokers are only down (its copy would have none of the topic's
//     subscriptions). A broker registered anew without a topic it held
//     is taken out of that topic's entry (gone when it was the last).
//   - A heartbeat under the name of a live broker of another Instance at
//     another address is refused (ErrNameTaken, HTTP 409
//     broker_name_taken): two brokers started with one name must not
//     take each other's topics out of the routes. The same instance at a
//     new address (a restart on another port, or another leader of the
//     same replica group: a group registers with an instance made from
//     its id) moves the registration. Refusals are logged at ERROR with
//     both instances and counted (Refusals;
//     postbus_namesrv_registrations_refused_total).
//   - A broker's topics are kept sorted by name and never modified in
//     place, only replaced. So the work that grows with a heartbeat's size
//     (comparing with the last list, sorting, a merge that finds what was
//     added, removed or resized) runs without the write lock, which is held
//     only to apply the difference; if the broker's entry changed meanwhile
//     the heartbeat compares again. An unchanged heartbeat listed in sorted
//     order (Client sorts) is one string comparison per topic.
//
// Names: a broker or cluster name is ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ (an
// empty cluster means DefaultCluster); a topic is a user topic
// (^[A-Za-z0-9][A-Za-z0-9._-]{0,126}$) or a system topic %KIND%rest such
// as %RETRY%group%topic or %DLQ%group, at most 255 bytes. A broker holds at
// most 100,000 topics of 1-1024 queues; its address is an absolute http or
// https URL without user info, query or fragment.
//
// # The protocol
//
//	POST   {ns}/v1/brokers/heartbeat  HeartbeatRequest -> 200 HeartbeatResponse {"expires_in":"120s"}
//	                                  ("registered":true when the broker was not live here: registered anew)
//	                                  400 problem+json when invalid (ErrInvalid)
//	PATCH  {ns}/v1/brokers/{name}     PatchRequest -> 200 HeartbeatResponse; 400 when invalid;
//	                                  404 when not registered at that address (ErrNotRegistered)
//	DELETE {ns}/v1/brokers/{name}     -> 204, or 404 when unknown
//	                                  409 when a live broker of another instance has the name (ErrNameTaken)
//	GET    {ns}/v1/routes/{topic}     -> 200 RouteJSON; 404 when no broker held it within TopicMemory;
//	                                  503 not_ready while warming up, broker_unavailable when its brokers are down
//	GET    {ns}/v1/cluster            -> 200 ClusterJSON (live brokers, topics counted;
//	                                  with ?gone=true also "gone": the brokers expired or
//	                                  unregistered within TopicMemory, not registered since)
//
// {topic} is path-escaped: %DLQ%g travels as %25DLQ%25g.
//
// # The client
//
// Client.Registered receives when a heartbeat's answer says a name server
// registered the broker anew (it restarted, or had expired the broker):
// the broker's peers may have changed what they share with it meanwhile.
//
// Client.Run heartbeats to every name server at once: first at start, then
// every Interval (default 30s) and whenever Changed says the topics
// changed, and unregisters from every one when its context ends. A round
// for a change sends each name server a patch of what differs from the
// registration it last acknowledged (at most 1024 topics; more, or a name
// server that failed or forgot the broker, get the whole registration),
// so creating one topic on a broker holding ten thousand costs the name
// server one topic's work. The periodic rounds send everything, which
// repairs whatever a lost patch left out. Client.Sync waits for a round
// begun after it is called to be acknowledged by one name server: a
// broker answers a topic's PUT or DELETE only once the name servers can
// route it (Route merges, so one that knows is enough). A round ends when
// every name server answered or 200ms after one acknowledged it; a name
// server still busy with an earlier round's heartbeat (hung) is left out
// of the next, so it delays neither rounds nor Sync. A failing
// name server is logged once when it starts failing and once when it
// recovers, never once per round. A broker refused its name is logged as
// an error (Client.Refused says so until a heartbeat is accepted), and
// does not unregister the name's holder when it stops.
//
// Client.Route asks every name server at once (each lookup bounded by
// min(Timeout, 2s)) and merges their routes, so that a partial answer (a
// name server that restarted) is never taken as the whole; once one has
// found the topic the others get 100ms more, so a hung name server does
// not delay a known topic's route. It says nobody holds a topic (ok false, nil error) only when
// every name server answered so, which is what a broker needs before it
// creates a topic of its own. It caches each route for Interval; when
// not every name server answers and none knows the topic, it serves the
// cached route however old, since a stale route is far more useful to a
// broker forwarding a request than none, and without one ErrUnavailable.
// Client.Brokers, the live brokers with their addresses (GET /v1/cluster),
// is merged, cached and served stale the same way.
package namesrv
