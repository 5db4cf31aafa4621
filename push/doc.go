// Package push delivers messages to subscribers' webhooks: the outbound
// HTTP client with its SSRF guard (client.go), one delivery attempt
// (attempt.go), the signatures a receiver checks (sign.go) and the retry
// policy (retry.go). The per-subscription loop (dispatcher.go) is a client
// of the broker's consumer engine: it leases up to max_in_flight messages
// (visibility: the delivery timeout plus a margin), makes one attempt at
// each and settles it with what the retry policy says: Ack when
// delivered, RetryAt when it may be tried again, Dead past max_retries,
// Release when it was never sent (the loop stopped while it waited for
// the rate limiter, or before the request went out), which counts no
// attempt. Cursors, ordered queues, retry copies, dead letters, offsets
// and in-flight counts are the engine's; the loop keeps none of them. The
// other pieces are pure or self-contained and keep no state between
// attempts.
//
// The Dispatcher runs one loop per active push subscription and restarts
// it on any change to the subscription. A loop being stopped (paused,
// changed, rotated, deleted) lets its deliveries in flight finish within
// the grace in the background: other subscriptions' loops start and run
// meanwhile, and the same subscription's new loop starts only once the old
// one is gone, so two loops never deliver one subscription at once.
//
// # The client
//
// One Client, one connection pool, serves every subscription. Its
// invariants:
//   - The SSRF guard runs in the dialer's Control hook, on the IP address
//     about to be connected to, after name resolution: a host name that
//     resolves, or re-resolves (DNS rebinding), to a forbidden address is
//     refused like the address itself. Forbidden: loopback, unspecified,
//     private (RFC 1918, fc00::/7), link-local (so cloud metadata
//     169.254.169.254 and fd00:ec2::254), CGNAT, multicast, broadcast and
//     reserved ranges, judged through IPv4-mapped, NAT64 and 6to4 forms.
//     ClientConfig.AllowPrivate turns the guard off (dev).
//   - No proxy from the environment: the guard must see the real target.
//   - Redirects are never followed; a 3xx is the attempt's result.
//   - At most MaxResponseBytes of a response are read; a longer response's
//     connection is closed rather than drained.
//
// # One attempt
//
// Client.Deliver POSTs the body byte for byte with the message's content
// type and these headers:
//
//	Content-Type             the message's (application/octet-stream if none)
//	User-Agent               postbus/<version>
//	Postbus-Message-Id       message id (also webhook-id: the idempotency key)
//	Postbus-Topic            topic
//	Postbus-Tag              tag, when there is one
//	Postbus-Keys             keys, comma separated, when there are any
//	Postbus-Queue-Id         queue id
//	Postbus-Queue-Offset     offset in that queue
//	Postbus-Attempt          1 on the first delivery
//	Postbus-Subscription     subscription id
//	Postbus-Prop-<Name>      one per user property (header names are case-insensitive)
//	webhook-id               message id
//	webhook-timestamp        unix seconds of the signing time
//	webhook-signature        "v1,<b64 HMAC> [v1,<b64 HMAC>...] v1a,<b64 Ed25519>"
//	Postbus-Signature        EdDSA JWT
//	Postbus-Ack-Token        the delivery's ack token (unordered subscriptions)
//
// A subscription with format cloudevents (Delivery.Format) also sends the
// CloudEvents HTTP binding's binary mode (cloudevents.go): ce-specversion
// 1.0, ce-id = message id (always), and the event's ce-source, ce-type,
// ce-time, ce-subject, ce-dataschema and extensions as kept in its ce-
// properties (those are then not repeated as Postbus-Prop-*), or, for a
// message published without CloudEvents, ce-source = /topics/{topic},
// ce-type = tag (DefaultCEType without one) and ce-time = born time.
// Values are percent-encoded as the binding says. The body and the
// signatures are the same as in format raw. A message whose ce-
// properties are not a whole event (stored before they were checked) is
// sent as one made from the message, logged at ERROR and counted in
// postbus_push_partial_cloudevents_total.
//
// A 202 to a delivery with an ack token is Deferred: the loop has the
// engine hold the delivery (Engine.Defer: a stored retry copy due at the
// subscription's ack_timeout, whose timer the token names) until POST
// /v1/acks/{token} settles it or the timeout brings it back as a failed
// attempt; a 202 echoing another token is Retry. Held deliveries count
// against max_in_flight: the loop reads their number from the engine's
// timers when it starts (those of a loop before it, or of the process
// before a restart) and while any are held, and counts up as it defers.
// Other 2xx are Delivered; 410 is Gone (the subscription is to be disabled);
// anything else — a 3xx, another status, a timeout, a refused or reset
// connection, a body cut short, a refused address — is Retry, since a
// subscription's URL can be fixed while its message waits.
//
// # Batches
//
// A subscription with a batch setting (batch.go) runs runBatched instead:
// it leases up to batch.max_messages messages (within max_in_flight,
// which counts messages), waits at most batch.max_wait after the first
// for more, and POSTs them as one JSON array (several, in order, when the
// body would pass MaxBatchBody) (EncodeBatch: each element
// the message's metadata, its own attempt, and its body as UTF-8 text or
// base64, the pull answer's rule) with Content-Type application/json and
// Postbus-Batch-Size instead of the one-message headers. webhook-id, the
// signed id, is the request's own (NewBatchID), fresh on every request:
// a retry may group other messages, so receivers dedupe by each element's
// msg_id. A 2xx acks every lease; a 207 {"failed":[ids]} (ParsePartial)
// fails those named and acks the rest; a 207 that is not that (an object
// naming a member twice included), or names a message not in the batch, fails the whole batch, at ERROR and in
// postbus_push_batch_invalid_answers_total; anything else fails every
// lease, each settled by the retry policy on its own attempt count. In an
// ordered subscription the leases after a failed one of the same queue
// are released, never acked: they go out again after it, in order. One
// engine call settles the batch (Engine.SettleBatch), so its offsets are
// written once, not once a message. rate_per_second counts requests. The
// loop stops leasing while the bodies it holds out pass maxBytesOut (32
// MiB), whatever max_in_flight allows.
//
// # Self-healing dead letters
//
// A subscription with dlq_redrive has its loop run heal (heal.go) beside
// the deliveries: when the broker says a probe is due (Broker.DLQRedriveDue:
// the group's oldest dead letter of the topic has waited After, or After
// passed since the last failed probe), it delivers that dead letter as the
// attempt after its last, without an ack token, and reports the outcome
// (Broker.DLQProbed), which on a 2xx redrives the rest at the subscription's
// rate. The schedule is stored by the broker, not held by the loop.
//
// # Signatures
//
// Standard Webhooks v1: the signed content is "<msg id>.<timestamp>.<body>".
// A "v1" entry is its HMAC-SHA256 under one of the subscription's secrets
// ("whsec_" + base64 of 32 random bytes); while secrets rotate every
// unexpired one signs, newest first. A "v1a" entry is its Ed25519 signature
// by the bus key, whose public half is "whpk_" + base64.
//
// Postbus-Signature is a JWT (EdDSA, header kid) whose claims bind the
// delivery: iss "postbus", sub the subscription id, jti the message id,
// iat = nbf = signing time, exp = iat + 5m, body = base64url(SHA-256(body)).
// Its key is published at /.well-known/jwks.json (BusKey.JWKS).
// VerifyStandardWebhook and VerifyJWT are the receiver's side.
//
// The bus key lives in one file, written once and never rewritten:
//
//	-----BEGIN PRIVATE KEY-----      PEM, PKCS#8, Ed25519; mode 0600
//	MC4CAQAwBQYDK2VwBCIEI...         created as temp file, fsync,
//	-----END PRIVATE KEY-----        link (or rename) into place, dir fsync
//
// Its kid is base64url of the first 8 bytes of SHA-256(public key).
//
// # Retries
//
// RetryPolicy.Next is a pure function from the number of the attempt that
// failed to the wait before the next one, or "dead": attempt n+1 waits the
// n-th delay of the list (the last repeats) or BackoffMin·2^(n-1) capped at
// BackoffMax with ±10% jitter; a subscriber's Retry-After wins when longer,
// up to 24h; after 1 + MaxRetries attempts the message is dead. The default
// is RocketMQ's sixteen retries over DefaultRetryDelays (10s ... 2h).
//
// # Transaction checks
//
// TxnChecker (txncheck.go) is the broker's check-back of undecided
// transactions: a POST of {"transaction_id","msg_id","topic","tag","keys",
// "check"} to the producer group's check_url through the same Client (SSRF
// guard, no redirects, capped answer), signed as a delivery is with the
// group's secrets, under webhook-id "<msg id>-<check>" (one per check, so
// that a receiver deduping by it never drops a later check). Only a 2xx
// with {"status":"commit"|"rollback"|"unknown"} is an answer; anything else
// is a failed check, described for the trace.
package push
