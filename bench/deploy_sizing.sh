#!/usr/bin/env bash
# bench/deploy_sizing.sh: the figures the Kubernetes manifests are sized from
# (deploy/k8s, docs/DEPLOY.md), on a deploy/local-cluster of 3 shards and 2
# gateways on this machine, loaded by imbox-bench through gateway 0:
#
#   1. load: Sends at RATE/s for SECONDS (CONTENT-byte messages to 10,000
#      receivers): RSS (now and peak) of each process, CPU seconds each
#      process spent per 1,000 Sends, and bytes on disk per stored message
#      (du of the shards' directories, WAL included, before/after);
#   2. drain: the same load again; after 3 s, SIGTERM to gateway 0 (the one
#      the load goes through), then the time until its process is gone;
#      then load through gateway 1 and SIGTERM to shard 0, the same.
#
#   bench/deploy_sizing.sh [RATE 2000] [SECONDS 10] [CONTENT 200]
#
# The cluster's directory is made under the repository (the real disk, not a
# tmpfs /tmp) and removed at the end. Binaries: build/bin.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rate="${1:-2000}" secs="${2:-10}" content="${3:-200}"
bin="$root/build/bin"
dir="$(mktemp -d -p "$root" .deploy-sizing.XXXXXX)"
lc() { "$root/deploy/local-cluster" "$@" --dir "$dir"; }
trap 'lc down >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT

free_base() {  # a base port with N free ports after it
    /usr/bin/python3 - "$1" <<'EOF'
import socket, sys
n = int(sys.argv[1])
for _ in range(200):
    s = socket.socket(); s.bind(('127.0.0.1', 0)); b = s.getsockname()[1]; s.close()
    ok = b + n < 65536
    for p in range(b, b + n):
        t = socket.socket()
        try: t.bind(('127.0.0.1', p))
        except OSError: ok = False
        finally: t.close()
    if ok: print(b); break
EOF
}
sp="$(free_base 3)"; gp="$(free_base 2)"
lc up --shards 3 --gateways 2 --shard-port "$sp" --gateway-port "$gp" >/dev/null
pid() { cat "$dir/pids/$1.pid"; }
procs="shard-0 shard-1 shard-2 gateway-0 gateway-1"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, clock ticks
hz="$(getconf CLK_TCK)"
kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
disk() { du -sb "$dir"/shard-* | awk '{s += $1} END {print s}'; }

bench() {  # bench PORT: the load, its summary line on stdout
    "$bin/imbox-bench" --addr "127.0.0.1:$1" --data-dir "$dir/secret" --workload send \
        --rate "$rate" --seconds "$secs" --receivers 10000 --content "$content" 2>&1
}

echo "== load: $rate Sends/s for $secs s, $content-byte messages, through gateway 0"
declare -A t0
for p in $procs; do t0[$p]="$(ticks "$(pid "$p")")"; done
d0="$(disk)"
out="$(bench "$gp")"
echo "$out" | grep -E '^(calls_ok|errors|checks_failed|calls_per_s|p50|p99)' | tr '\n' ' '; echo
sent="$(echo "$out" | awk -F= '$1 == "calls_ok" {print $2}')"
[ "${sent:-0}" -gt 0 ] || { echo "$out" >&2; exit 1; }
d1="$(disk)"
for p in $procs; do
    i="$(pid "$p")"
    cpu=$(( $(ticks "$i") - ${t0[$p]} ))
    awk -v p="$p" -v r="$(kb "$i" VmRSS)" -v h="$(kb "$i" VmHWM)" -v c="$cpu" -v hz="$hz" -v n="$sent" \
        'BEGIN {printf "%-9s RSS %6.1f MiB (peak %6.1f)  CPU %.3f s per 1k Sends\n", p, r/1024, h/1024, c/hz/n*1000}'
done
awk -v a="$d0" -v b="$d1" -v n="$sent" \
    'BEGIN {printf "disk: %d bytes for %d Sends: %.0f bytes per message\n", b - a, n, (b - a) / n}'

drain() {  # drain NAME PORT: SIGTERM NAME 3 s into a load through PORT
    local i t; i="$(pid "$1")"
    bench "$2" >/dev/null &
    local b=$!
    sleep 3
    t="$(date +%s%N)"
    kill -TERM "$i"
    while [ -d "/proc/$i" ] && ! grep -q '^State:.*Z' "/proc/$i/status" 2>/dev/null; do sleep 0.005; done
    echo "$1: exited $(( ($(date +%s%N) - t) / 1000000 )) ms after SIGTERM (under $rate Sends/s)"
    wait "$b" || true
}
echo "== drain"
drain gateway-0 "$gp"
drain shard-0 "$((gp + 1))"
