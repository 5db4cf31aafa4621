#!/usr/bin/env python3
"""Publish messages to a postbus topic (Python standard library only).

    POSTBUS_URL=http://localhost:8080 python3 producer.py orders 3

Publishes COUNT JSON messages to TOPIC, each with a tag and a key, and prints
one JSON line per acknowledgement: {"msg_id": ..., "queue_id": ..., ...}.
POSTBUS_TOKEN, if set, is sent as a bearer token.
"""
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

BASE = os.environ.get("POSTBUS_URL", "http://localhost:8080").rstrip("/")
TOKEN = os.environ.get("POSTBUS_TOKEN", "")


def publish(topic, body, tag=None, keys=()):
    headers = {"Content-Type": "application/json"}
    if tag:
        headers["Postbus-Tag"] = tag
    if keys:
        headers["Postbus-Keys"] = ",".join(keys)
    if TOKEN:
        headers["Authorization"] = "Bearer " + TOKEN
    req = urllib.request.Request(
        f"{BASE}/v1/topics/{urllib.parse.quote(topic, safe='')}/messages",
        data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        # Errors are RFC 9457 problems: the stable "code" is what to branch on.
        problem = json.load(e)
        raise SystemExit(f"publish refused: {e.code} {problem.get('code')}: {problem.get('detail')}")


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: producer.py TOPIC COUNT")
    topic, count = sys.argv[1], int(sys.argv[2])
    for i in range(count):
        ack = publish(topic, {"order": i}, tag="created", keys=[f"order-{i}"])
        print(json.dumps(ack), flush=True)


if __name__ == "__main__":
    main()
