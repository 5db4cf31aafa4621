#!/usr/bin/env bash
# Cluster benchmarks, all on 127.0.0.1: a name server, a standalone broker S
# and two brokers A and B in a cluster.
#   1. direct:    publish to A (in the cluster) against S (standalone), same load
#   2. forwarded: a topic held only by B, published through A against B directly
#   3. topics:    A and S each hold 10,000 topics; A heartbeats every 2s; per-second
#                 publish rates of both, to see whether heartbeats dent A's
# Usage: cmd/postbus/bench/cluster.sh [runs]   (BIN=path to a built postbus)
set -euo pipefail
runs=${1:-3}
BIN=${BIN:-$(mktemp -d)/postbus}
[ -x "$BIN" ] || go build -o "$BIN" ./cmd/postbus
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

run() { "$BIN" "$@" >"$work/$1-$$-${#pids[@]}.log" 2>&1 & pids+=($!); }
ready() { for _ in $(seq 100); do curl -sf "$1/readyz" >/dev/null && return; sleep 0.1; done; echo "$1 not ready" >&2; exit 1; }

NS=http://127.0.0.1:19876 S=http://127.0.0.1:18090 A=http://127.0.0.1:18091 B=http://127.0.0.1:18092
run namesrv --addr 127.0.0.1:19876
run broker --addr 127.0.0.1:18090 --data "$work/s"
run broker --addr 127.0.0.1:18091 --data "$work/a" --broker-name broker-a --namesrv 127.0.0.1:19876 --heartbeat-interval 2s
run broker --addr 127.0.0.1:18092 --data "$work/b" --broker-name broker-b --namesrv 127.0.0.1:19876 --heartbeat-interval 2s
for u in $NS $S $A $B; do ready "$u"; done

# rate prints a run's msgs/s and p50 latency in ms.
rate() {
	"$BIN" bench publish "$@" --interval 0 --json | sed -n '/^{/,$p' |
		python3 -c 'import json,sys; t=json.load(sys.stdin)["target"]; print("%.0f %.3f" % (t["msgs_per_s"], t["latency_ms"]["p50"]))'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "== 1. direct publish, 64 conns, 256 B, 8s: cluster broker A / standalone S"
for i in $(seq "$runs"); do
	# Alternate which goes first, so that neither always runs on a warmer machine.
	if ((i % 2)); then
		s=$(rate --url $S --topic direct --duration 8s | cut -d' ' -f1)
		a=$(rate --url $A --topic direct --duration 8s | cut -d' ' -f1)
	else
		a=$(rate --url $A --topic direct --duration 8s | cut -d' ' -f1)
		s=$(rate --url $S --topic direct --duration 8s | cut -d' ' -f1)
	fi
	echo "run $i: S $s msgs/s, A $a msgs/s, A/S $(python3 -c "print(round($a/$s,3))")" | tee -a "$work/direct"
done
echo "median A/S: $(awk '{print $NF}' "$work/direct" | median)"

echo "== 2. forwarded publish, 1000 msgs/s open loop, 10s: through A to B / to B directly (p50 ms)"
curl -sf -X PUT "$B/v1/topics/fwd" -d '{"queues":4,"brokers":["broker-b"]}' >/dev/null
sleep 3 # a heartbeat, so the name servers know fwd
for i in $(seq "$runs"); do
	if ((i % 2)); then
		b=$(rate --url $B --topic fwd --create=false --rate 1000 --conns 16 --duration 10s | cut -d' ' -f2)
		a=$(rate --url $A --topic fwd --create=false --rate 1000 --conns 16 --duration 10s | cut -d' ' -f2)
	else
		a=$(rate --url $A --topic fwd --create=false --rate 1000 --conns 16 --duration 10s | cut -d' ' -f2)
		b=$(rate --url $B --topic fwd --create=false --rate 1000 --conns 16 --duration 10s | cut -d' ' -f2)
	fi
	echo "run $i: direct p50 $b ms, forwarded p50 $a ms, added $(python3 -c "print(round($a-$b,3))") ms" | tee -a "$work/fwd"
done
echo "median added p50: $(awk '{print $(NF-1)}' "$work/fwd" | median) ms"

echo "== 3. 10,000 topics on A and on S; A heartbeats every 2s; 20s runs, per-second msgs/s"
for u in $S $A; do
	python3 - "$u" <<'PY'
import http.client, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
c = http.client.HTTPConnection(u.hostname, u.port)
for i in range(10000):
    c.request("PUT", "/v1/topics/t%d" % i, body="{}", headers={"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    if r.status not in (200, 201):
        sys.exit("PUT t%d: %d" % (i, r.status))
PY
done
sleep 3
curl -sf "$NS/v1/cluster" | python3 -c 'import json,sys; print({b["name"]: b["topics"] for b in json.load(sys.stdin)["brokers"]})'
for u in $S $A; do
	"$BIN" bench publish --url "$u" --topic t42 --create=false --duration 20s --interval 1s 2>&1 |
		awk '$1 ~ /^[0-9]+s$/ && $3 == "msgs/s" {print $2}' | sort -n |
		awk -v u="$u" '{r[NR]=$1} END {m=r[int((NR+1)/2)]; printf "%s: %d intervals, min %d, median %d msgs/s, min/median %.3f\n", u, NR, r[1], m, r[1]/m}'
done
