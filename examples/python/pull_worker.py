#!/usr/bin/env python3
"""A postbus pull worker (Python standard library only).

    POSTBUS_URL=http://localhost:8080 python3 pull_worker.py workers orders [--count N]

Long-polls GROUP's share of TOPIC, processes each message, and acks what it
processed in one batch; a message whose processing fails is nacked, so that it
comes back as the next attempt (and goes to the group's dead-letter queue after
max_retries). An ack whose answer was lost is sent again: acking an acked
receipt answers "acked". Prints one JSON line per message processed; with
--count N it exits after N.
"""
import argparse
import json
import os
import sys
import time
import urllib.parse
import urllib.request

BASE = os.environ.get("POSTBUS_URL", "http://localhost:8080").rstrip("/")
TOKEN = os.environ.get("POSTBUS_TOKEN", "")


def post(path, body=None, timeout=40):
    """POSTs body as JSON (a pull takes none) and returns the JSON answer."""
    headers = {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if TOKEN:
        headers["Authorization"] = "Bearer " + TOKEN
    data = json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(BASE + path, data=data, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


def settle(group, verb, receipts):
    for attempt in range(5):
        try:
            return post(f"/v1/groups/{group}/{verb}", {"receipts": receipts})
        except OSError:
            time.sleep(2 ** attempt)  # the answer was lost: the same call again is safe
    raise SystemExit(f"{verb} failed five times")


def process(msg):
    return json.loads(msg["body"])  # your work here; raise to give the message back


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("group")
    ap.add_argument("topic")
    ap.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    args = ap.parse_args()
    group, topic = urllib.parse.quote(args.group, safe=""), urllib.parse.quote(args.topic, safe="")
    done = 0
    while not args.count or done < args.count:
        got = post(f"/v1/groups/{group}/topics/{topic}/pull?max=16&wait=20s")
        ok, failed = [], []
        for msg in got["messages"]:
            try:
                process(msg)
            except Exception:
                failed.append(msg["receipt"])
                continue
            ok.append(msg["receipt"])
            print(json.dumps({"msg_id": msg["msg_id"], "attempt": msg["attempt"], "body": msg["body"]}), flush=True)
        if ok:
            for r in settle(group, "ack", ok)["results"]:
                if r["status"] != "acked":
                    # stale: the visibility ran out first and the message went out again.
                    print(f"ack {r['receipt'][:12]}…: {r['status']}", file=sys.stderr, flush=True)
        if failed:
            settle(group, "nack", failed)
        done += len(ok)


if __name__ == "__main__":
    main()
