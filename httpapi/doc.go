// Package httpapi is postbus's HTTP API: the chi router, its handlers and
// middleware. It translates HTTP to calls on package broker and owns no
// durable state: what it holds in memory (the rate limiter's token buckets
// and, in a cluster, the cached routes and which peers answer) is rebuilt
// after a restart.
//
// The dashboard's files (package ui) are served at /ui/ beside the router:
// they are not API routes, need no token to load, and the page calls the
// API like any client. GET /v1/stats serves the series package stats keeps
// in memory, sampled by RunStats while the broker serves.
//
// Every route is listed once, in routes.go, and in openapi.yaml at the
// repository root; a test walks the router and fails on any route the
// document does not describe (or the other way round), and checks recorded
// responses against the document's schemas.
//
// Errors are RFC 9457 problems (application/problem+json) with a stable
// lower_snake "code"; statusOf in problem.go is the one table from codes to
// statuses.
//
// # Request bodies
//
// Every request body is read by body.go: through the route's size limit,
// into a buffer that grows with the bytes that have arrived (an announced
// Content-Length reserves nothing; it holds at most a quarter over what
// arrived), and paid for from one budget shared by all connections
// (Config.MaxBodyMemory) of which each client, a token's sub or an address,
// has a share (Config.MaxBodyMemoryPerClient); a request that would take
// the budget or its client's share over answers 503 server_busy with
// Retry-After, and each request gives back what it took when its handler
// returns. A body must keep arriving at Config.MinBodyRate after
// Config.BodyGrace (408 request_timeout, the connection closed), and a
// request refused by its access check is refused before its body is read,
// its connection closed rather than kept to drain the body. A gzip
// Content-Encoding is decoded (the limit counts decoded bytes) and then
// dropped from the request, so a forward sends the decoded body as it is;
// any other encoding is 415. JSON bodies are decoded by decodeJSONBody
// alone (the batch publish by its own parser, to the same rules): strict
// fields, nothing but whitespace after the value.
//
// Long polls (a pull or a read by offset with a wait) held at once are
// bounded per client and per server before anything is forwarded
// (polls.go): 429 too_many_polls and 503 server_busy beyond. A pull over
// HTTP/1 that has to wait is parked (parked.go): its connection is taken
// from net/http, it keeps no goroutine and no buffers while it waits (about
// 3 KiB a poll instead of 35), and its answer closes the connection.
// CloseParked answers them at a shutdown.
//
// What a request may name besides its body is one table each, checked
// before the handler runs: queryParams (params.go) for query parameters,
// answering invalid_parameter, and postbusHeaders (headers.go) for Postbus-*
// request headers, answering invalid_header; tests hold both to openapi.yaml.
//
// # Clusters
//
// Given a Cluster (a broker started with --namesrv, and dev), a Server
// answers for the whole bus: what it does not hold it forwards to the
// brokers that do, found through the name servers, marking the request
// Postbus-Forwarded-By so that it goes one hop and no further. cluster.go
// holds the mechanics (and the list of which broker does what);
// cluster_publish.go, cluster_pull.go and cluster_routes.go the per-route
// decisions. A handler takes part with one line at its top:
//
//	if s.coordinating(r) { s.findAnywhere(w, r, s.handleGetMessage); return }
//
// and answers for itself when the request was forwarded to it; the local
// share of a fan-out runs the same handler in process.
//
// Every hop has a deadline: the client's own request bounds it, and
// Cluster.HopTimeout (--forward-timeout, 10s) beyond a long poll's wait
// caps it; a broker that lets it pass is marked down (publishes and pulls
// skip it for a while) like one that refuses the connection; merged reads
// (queries by key, a topic's GET) still ask it, so that their 200 does not
// leave out a holder that is back; and fan-outs ask their
// brokers at once, so one hung broker costs a request one hop timeout at
// most. A deadline that fires more than lateSlack late says this broker
// was paused (SIGSTOP) or starved, not the other one: nobody is marked
// down for it. A cross-broker pull takes its wait plus one hop timeout in
// all, and each forward of it carries its deadline (Postbus-Hop-Deadline):
// a holder reading it after that pulls nothing. A message with a placement key (sharding key, else dedup id) is
// never moved off the holder its key picks, skipped or not: that would
// break the key's order and store a retry twice; it is refused (503,
// nothing stored) until the holder answers or leaves the route. Answers
// say what is known: a publish or batch part that got no
// answer "may or may not have been stored"; a holder's 4xx is relayed; a
// receipt of a broker that is not live is 503 broker_unavailable, not
// forged. A publish to a topic this broker does not hold creates it here
// (--auto-create-topics) only when every name server answered and none
// knows it; otherwise 503 broker_unavailable, and a forwarded publish
// never creates one.
//
// Subscriptions have one truth across brokers (cluster_sync.go): the
// broker coordinating a subscription change mints its version and sends
// it to every copy in Postbus-Subscription-Version; each broker pushes
// its records (tombstones too) to the other live holders of its topics
// (POST /v1/internal/subscriptions/sync, with Cluster.Token) at start,
// every Cluster.SyncInterval, when a holder joins a topic's route and
// when a name server registers it anew; per id the record with the
// highest version wins (at equal version a tombstone, then the greater
// broker name). Records carry signing secrets and are only sent to the
// brokers the name servers route the topic to, never answered. A topic's
// DELETE carries its version in Postbus-Topic-Version and leaves a
// tombstone on each holder; the same request exchanges every broker's
// topic tombstones with every other live broker (topic_exchange), so a
// holder that missed the delete drops its copy (see broker/topictomb.go).
//
// A member of a replica group (package broker/replica) serves through a
// Front (replicas.go): the broker's Server while the member leads; else
// a reverse proxy of every request to the leader's HTTP address, one hop
// (Postbus-Replica-Forwarded marks it; a member that does not lead answers
// such a request no_leader rather than send it on). A request that meets
// an election waits up to FrontConfig.LeaderWait for a leader. A forward
// whose connection is refused is 503 no_leader (nothing done); one whose
// leader went away after taking it is 503 unavailable (maybe done).
// /v1/replicas (admin) answers on every member; its changes go to the
// leader. A standalone Server answers /v1/replicas 404 not_replicated.
//
// CloudEvents (cloudevents.go): a single publish with ce-* headers is a
// binary-mode event, one with Content-Type application/cloudevents+json a
// structured one, a batch with application/cloudevents-batch+json a batch
// of structured events. The handler turns each into a message (attributes
// as ce- properties, data as body, datacontenttype as content type, type
// as the default tag) before the broker sees it, so the broker checks it
// as any message (broker.CheckCloudEvent holds the ce- properties to a
// whole event on every path, a plain batch's and a forwarded batch part's
// too). A forwarded single publish is sent on as it came, ce-* headers
// and all, and parsed again by the broker that stores it.
//
// Transactions (transactions.go): a single publish with Postbus-Transaction:
// prepare (and Postbus-Producer-Group, optional Postbus-Transaction-Timeout)
// prepares; a batch cannot (the header is refused as on any batch). A
// transaction id is the message id, after "<broker>~" in a cluster, so a
// decision sent to any broker is forwarded to the one its id names. Its
// route lets any token in and checks publish on the transaction's topic
// once it has read the transaction (403 otherwise); producer groups and
// the list of transactions are admin's. A producer group PUT on a cluster
// reaches every broker with one secret, minted by the broker asked.
package httpapi
