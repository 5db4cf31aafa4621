// Package bench holds the load tools behind `postbus bench publish`,
// `postbus bench push` and `postbus bench pull`. The first drives a broker's
// publish endpoints over plain HTTP/1.1 and reports throughput and
// per-request latency, the way RocketMQ ships its producer benchmark in its
// own distribution; the second measures push delivery end to end, from
// publish to webhook; the third, long-poll pull and ack, from publish to a
// puller.
//
// The package owns the load loops, their HTTP client, the latency histogram,
// the in-process no-op server and webhook sink used as baselines, the broker
// memory sampler (--broker-pid, from /proc/<pid>/status) and the reports. It
// imports no other postbus package: it speaks only the public HTTP API, so it
// measures what a producer and a subscriber would see. The three tools share
// the flags they have in common (flags.go: one definition, default and rule
// each; a tool words their help its own way), the client, the open- and
// closed-loop pacing, the API calls (api.go), the in-process servers
// (local.go) and the error table; each adds its own flags, loop and report.
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
//
// # Push
//
// `bench push` starts a webhook sink on 127.0.0.1:0, creates --subscriptions
// push subscriptions to it (group bench-<run>-<i>, URL /hook/<i>, so fan-out
// copies are not mistaken for duplicates), publishes, then waits up to --drain
// for every delivery, and deletes the subscriptions however the run ends.
// Every body starts with a stamp the sink reads back:
//
//	offset  size  content
//	     0     4  "pb1 "
//	     4    19  send time, unix ns, zero-padded decimal
//	    23     1  ' '
//	    24    19  deliver-at, unix ns, whole milliseconds; all zeros if none
//	    43     1  ' '
//	    44     8  run id ([0-9a-z], zero-padded)
//	    52     1  ' '
//	    53     …  filler from the shared body buffer, up to --size
//
// Publisher and sink share one clock, wall time at the start plus the
// monotonic time since, so a clock step mid-run is not read as latency.
// Deliver-at times are whole milliseconds because the broker keeps them to
// the millisecond; a finer one could fire a fraction of one early.
//
// Invariants of the push tool:
//   - Expected deliveries are acknowledged publishes × subscriptions; missing
//     is counted per subscription as acknowledged − first deliveries, so a
//     duplicate cannot hide a loss.
//   - Duplicates are deliveries of a Postbus-Message-Id already seen on the
//     same subscription. The ids are kept as 64-bit hashes, so memory grows
//     by some 20 bytes per first delivery: bounded by the run's length, not
//     by --conns as the publish tool's is.
//   - Latency (publish to webhook) and lateness (receipt − deliver-at, or −
//     send time for a message sent after it was due) are recorded for first
//     deliveries only; a delivery before its deliver-at is counted as early,
//     which fails the run (ErrDelivery), as do missing deliveries.
//   - Bodies without this run's stamp and deliveries without a message id
//     are answered 200 and counted apart, never as deliveries.
//   - --baseline POSTs the same stamped bodies, with the same client, straight
//     at a fresh sink, closed loop, for --duration: the ceiling the client and
//     sink put on any broker.
//
// # Pull
//
// `bench pull` creates a pull subscription (no url) for group bench-<run>, or
// --group, from the latest message, so what earlier runs left in the topic
// is not handed to this one; then --pullers goroutines long-poll the topic
// as that group while the producer publishes stamped bodies (the push
// stamp), singly or in --batch, for --duration; then it waits up to --drain
// for the rest and deletes the subscription (one that existed is kept).
//
// Invariants of the pull tool:
//   - Each puller acks every non-empty answer with one request before it
//     pulls again. At the end the pulls still waiting are cut off, but an
//     answer already read is still acked, so every receipt handed out is
//     acked unless the run is interrupted; one that is not fails the run.
//   - Missing is acknowledged publishes − first receipts, so a duplicate (a
//     message id received again: at-least-once allows it) cannot hide a
//     loss. Ids are kept as 64-bit hashes, as the push sink keeps them.
//   - Latency runs from the stamp's send time to when the pull answer had
//     been read, before it is decoded, and is recorded for first receipts
//     only. Messages without this run's stamp are acked and counted apart.
//   - The transport holds --pullers + --conns connections: a puller's acks
//     follow its pulls on its own connection, so no pull queues for one.
//
// --idle N is the memory and timeout check: N pollers each hold one long
// poll on the group, which has nothing to receive. The transport holds N
// connections, so all N are open at once; the broker's RSS is sampled from
// when all are written until the first comes back, and a poll counts as on
// time if it came back empty within --wait ± 1s. Then --wakeups times one
// publish each, 100 ms apart and with every poller waiting again, from the
// publish until some poller's answer holds it: every poller wakes for it,
// and one gets it.
package bench
