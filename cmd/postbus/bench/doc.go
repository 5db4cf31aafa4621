// Package bench is the load tool behind `postbus bench publish`: it drives a
// broker's publish endpoints over plain HTTP/1.1 and reports throughput and
// per-request latency, the way RocketMQ ships its producer benchmark in its
// own distribution.
//
// The package owns the load loop, its HTTP client, the latency histogram, the
// in-process no-op server used as a baseline, and the report. It imports no
// other postbus package: it speaks only the public HTTP API, so it measures
// what a producer would see.
//
// # Invariants
//
//   - Every run is bounded: by --duration, by --count, or by both (whichever
//     comes first). A run with neither is refused before anything is sent.
//   - A --count run sends exactly that many measured messages; the last batch
//     is shortened to fit. Warm-up messages are sent in addition and are never
//     measured.
//   - Only loopback targets are loaded unless --allow-remote is given, so the
//     tool cannot be pointed at a production broker by a slip of the finger.
//     A hostname counts as loopback only if every address it resolves to is.
//   - Memory is bounded by --conns, not by run length: each worker keeps a
//     fixed-size log-linear histogram (see histogram.go) and a small error
//     table, merged when read; no per-sample slice grows.
//   - Bodies are generated once, from printable ASCII without '"' or '\\' so
//     they can be written into a batch's JSON without escaping; messages
//     take different windows of one buffer, so they differ without any
//     per-request randomness.
//   - Responses are read to the end and closed, so keep-alive connections
//     are reused; the transport holds exactly --conns connections.
//
// # Measurement
//
// Closed loop (--rate 0): --conns workers each send a request, wait for its
// answer and send the next; latency runs from send to the end of the answer.
//
// Open loop (--rate R): request i is due at start + i*batch/R, whoever sends
// it. Latency runs from that intended time, not from when a worker got round
// to sending, so a broker stall shows as the queueing delay every producer
// behind it would have seen (no coordinated omission). If all workers are
// busy the schedule slips and the report's achieved rate falls short of R.
//
// Latency is per request (a batch is one request) and covers failed requests
// too, so a stall that ends in a timeout still counts. Requests cut short by
// cancellation (SIGINT) are counted nowhere.
//
// A --count run also reports the rate of the first and last 10% of messages
// and their ratio, which shows whether the broker keeps its pace as the store
// grows. --baseline repeats the same run, with the same client and flags,
// against a handler in this process that reads the body and answers 201; the
// target/baseline ratio says how much of the client's own ceiling the broker
// reaches.
package bench
