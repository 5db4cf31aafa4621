#!/usr/bin/env python3
"""A postbus webhook receiver that checks Standard Webhooks signatures by hand
(Python standard library only).

    WEBHOOK_SECRET=whsec_... python3 webhook_receiver.py --port 9000 [--count N]

Each delivery is signed: webhook-signature holds one or more "v1,<base64>"
entries, each an HMAC-SHA256 over "<webhook-id>.<webhook-timestamp>.<body>"
keyed with the base64-decoded part of the subscription's "whsec_" secret (two
or more entries while an older secret is still in its rotation overlap). A
request whose signature does not match, or whose timestamp is more than five
minutes off, is answered 401 and not processed. Delivery is at least once:
a webhook-id already seen is answered 200 and not processed again.

Prints "listening on HOST:PORT", then one JSON line per message processed.
With --count N it exits after N messages.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

TOLERANCE = 5 * 60  # seconds a webhook-timestamp may be off


def verify(secret, headers, body, now=None):
    """Returns None if the delivery is authentic, else why not."""
    msg_id = headers.get("webhook-id")
    ts = headers.get("webhook-timestamp")
    sig = headers.get("webhook-signature")
    if not (msg_id and ts and sig):
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    try:
        ts_int = int(ts)
    except ValueError:
        return "webhook-timestamp is not unix seconds"
    now = time.time() if now is None else now
    if abs(now - ts_int) > TOLERANCE:
        return "webhook-timestamp too far from now (a replay?)"
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = msg_id.encode() + b"." + ts.encode() + b"." + body
    want = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for entry in sig.split():
        version, _, value = entry.partition(",")
        # v1a entries are Ed25519 with the bus key: not checked here.
        if version == "v1" and hmac.compare_digest(value, want):
            return None
    return "no v1 signature matches"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    args = ap.parse_args()
    secret = os.environ.get("WEBHOOK_SECRET")
    if not secret:
        raise SystemExit("set WEBHOOK_SECRET to the subscription's whsec_ secret")
    seen = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            why = verify(secret, self.headers, body)
            if why:
                print(f"refused: {why}", file=sys.stderr, flush=True)
                self.send_response(401)
                self.end_headers()
                return
            msg_id = self.headers["webhook-id"]
            first = msg_id not in seen
            seen.add(msg_id)
            self.send_response(200)
            self.end_headers()
            if first:
                print(json.dumps({"msg_id": self.headers.get("Postbus-Message-Id"),
                                  "topic": self.headers.get("Postbus-Topic"),
                                  "tag": self.headers.get("Postbus-Tag"),
                                  "attempt": int(self.headers.get("Postbus-Attempt", "1")),
                                  "body": body.decode("utf-8", "replace")}), flush=True)
                if args.count and len(seen) >= args.count:
                    server.shutdown_requested = True

        def log_message(self, *a):
            pass  # one JSON line per message is the output

    server = HTTPServer(("127.0.0.1", args.port), Handler)
    server.shutdown_requested = False
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    while not server.shutdown_requested:
        server.handle_request()


if __name__ == "__main__":
    main()
