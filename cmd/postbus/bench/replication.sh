#!/usr/bin/env bash
# Replication benchmarks, all on 127.0.0.1: a name server, a standalone
# broker S and a replica group of three (n1, n2, n3, one --broker-name) with
# raft's default timeouts.
#   1. single publish: msgs/s of the group (through its leader) against S, same load
#   2. batch publish (16 a request): the same
#   3. failover: the leader SIGKILLed under a publish loop; the time from the
#      kill to the first 201 from the group, then the killed member restarted
# Runs alternate which side goes first; the figures are medians. Nothing is
# asserted: the numbers are reported.
# Usage: cmd/postbus/bench/replication.sh [runs] [seconds]   (BIN=path to a built postbus)
set -euo pipefail
runs=${1:-3}
secs=${2:-8}
BIN=${BIN:-$(mktemp -d)/postbus}
[ -x "$BIN" ] || go build -o "$BIN" ./cmd/postbus
work=$(mktemp -d)
declare -A pid
cleanup() { kill "${pid[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

ready() { for _ in $(seq 300); do curl -sf "$1/readyz" >/dev/null && return; sleep 0.1; done; echo "$1 not ready" >&2; exit 1; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }

NS=http://127.0.0.1:29876 S=http://127.0.0.1:28090
declare -A url=([n1]=http://127.0.0.1:28091 [n2]=http://127.0.0.1:28092 [n3]=http://127.0.0.1:28093)
peers=n1=127.0.0.1:27001,n2=127.0.0.1:27002,n3=127.0.0.1:27003
secret=bench-replication-secret-0123456789abcdef

"$BIN" namesrv --addr 127.0.0.1:29876 >"$work/ns.log" 2>&1 & pid[ns]=$!
"$BIN" broker --addr 127.0.0.1:28090 --data "$work/s" >"$work/s.log" 2>&1 & pid[s]=$!
member() { # member ID: start it on its data
	"$BIN" broker --addr "${url[$1]#http://}" --data "$work/$1" --broker-name broker-a --namesrv 127.0.0.1:29876 \
		--node-id "$1" --raft-peers "$peers" --raft-secret "$secret" >>"$work/$1.log" 2>&1 &
	pid[$1]=$!
}
for n in n1 n2 n3; do member $n; done
ready $NS; ready $S

# leader prints the id of the member the group names as leader (waits for one).
leader() {
	for _ in $(seq 600); do
		for n in n1 n2 n3; do
			l=$(curl -sf --max-time 1 "${url[$n]}/v1/replicas" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])' 2>/dev/null || true)
			if [ -n "$l" ] && [ -n "${url[$l]:-}" ]; then echo "$l"; return; fi
		done
		sleep 0.05
	done
	echo "no leader" >&2; exit 1
}
L=$(leader); echo "leader: $L"; ready "${url[$L]}"

# rate prints a run's msgs/s.
rate() {
	"$BIN" bench publish "$@" --interval 0 --json | sed -n '/^{/,$p' |
		python3 -c 'import json,sys; t=json.load(sys.stdin)["target"]; print("%.0f" % t["msgs_per_s"])'
}
compare() { # compare NAME ARGS...: alternate runs on S and on the group's leader
	local name=$1; shift
	echo "== $name: group (leader $L) / standalone S, ${secs}s runs"
	for i in $(seq "$runs"); do
		if ((i % 2)); then
			s=$(rate --url $S --topic "$name" --duration "${secs}s" "$@")
			g=$(rate --url "${url[$L]}" --topic "$name" --duration "${secs}s" "$@")
		else
			g=$(rate --url "${url[$L]}" --topic "$name" --duration "${secs}s" "$@")
			s=$(rate --url $S --topic "$name" --duration "${secs}s" "$@")
		fi
		echo "run $i: S $s msgs/s, group $g msgs/s, group/S $(python3 -c "print(round($g/$s,3))")" | tee -a "$work/$name"
	done
	echo "median S $(awk '{print $4}' "$work/$name" | median) msgs/s, group $(awk '{print $7}' "$work/$name" | median) msgs/s, median group/S $(awk '{print $NF}' "$work/$name" | median)"
}
compare single
compare batch --batch 16

echo "== failover: the leader SIGKILLed under a publish loop, default raft timeouts"
curl -sf -X PUT "${url[$L]}/v1/topics/failover" -d '{"queues":4}' >/dev/null || true
for i in $(seq "$runs"); do
	L=$(leader)
	ready "${url[$L]}"
	kill -9 "${pid[$L]}"; wait "${pid[$L]}" 2>/dev/null || true
	t0=$(now)
	got=""
	while [ -z "$got" ]; do
		for n in n1 n2 n3; do
			[ "$n" = "$L" ] && continue
			code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -X POST "${url[$n]}/v1/topics/failover/messages" -d "run $i" || true)
			if [ "$code" = 201 ]; then got=$n; break; fi
		done
	done
	t1=$(now)
	echo "run $i: killed $L, first 201 through $got after $(python3 -c "print(round($t1-$t0,3))") s" | tee -a "$work/failover"
	member "$L"
	# The killed member back and caught up before the next kill.
	for _ in $(seq 600); do
		ok=$(curl -sf --max-time 1 "${url[$L]}/v1/replicas" 2>/dev/null | python3 -c '
import json,sys
s=json.load(sys.stdin); me=[m for m in s["members"] if m["id"]==sys.argv[1]]
print("yes" if s["leader"] and me and me[0]["applied_index"]>0 else "")' "$L" 2>/dev/null || true)
		[ -n "$ok" ] && break
		sleep 0.1
	done
done
echo "median failover $(awk '{print $(NF-1)}' "$work/failover" | median) s, max $(awk '{print $(NF-1)}' "$work/failover" | sort -n | tail -1) s"
