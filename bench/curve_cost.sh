#!/usr/bin/env bash
# The cost of CURVE on the shard: instructions (valgrind callgrind) of one
# `imbox shard` process serving N Sends from imbox-bench through one
# gateway, on loopback, in fresh temp dirs (removed at exit). Run twice,
# with N and 2N Sends, and print the difference / N: instructions per Send,
# start-up and shutdown cancelled out.
#   bench/curve_cost.sh [BIN_DIR] [N]      (default build/bin, 2000)
set -euo pipefail
bin="${1:-build/bin}"
n="${2:-2000}"
root=$(mktemp -d /tmp/imbox-curve-cost-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$root"
}
trap cleanup EXIT

run() { # run COUNT: prints the shard's total instructions
    local count="$1" d="$root/run-$1"
    mkdir -p "$d"
    read -r sp gp <<<"$(/usr/bin/python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')"
    "$bin/imbox" token --uid setup --data-dir "$d/gw" >/dev/null
    valgrind --tool=callgrind --callgrind-out-file="$d/cg.out" "$bin/imbox" shard \
        --index 0 --count 1 --listen "tcp://127.0.0.1:$sp" --data-dir "$d/s0" \
        --secret-file "$d/gw/auth.secret" 2>"$d/shard.log" &
    local shard=$!
    pids+=("$shard")
    "$bin/imbox" gateway --listen "127.0.0.1:$gp" --shards "tcp://127.0.0.1:$sp" \
        --data-dir "$d/gw" 2>"$d/gw.log" &
    local gw=$!
    pids+=("$gw")
    local token
    token=$("$bin/imbox" token --uid ready --data-dir "$d/gw" | tail -1)
    for _ in $(seq 600); do # bounded: 600 x 0.1 s
        "$bin/imboxctl" --addr "127.0.0.1:$gp" --token "$token" --timeout 1 send \
            --to probe --id probe "x" >/dev/null 2>&1 && break
        sleep 0.1
    done
    "$bin/imbox-bench" --addr "127.0.0.1:$gp" --data-dir "$d/gw" --workload send \
        --count "$count" --inflight 16 >/dev/null
    kill "$gw" "$shard"
    wait "$gw" "$shard" || true
    grep -m1 '^summary:' "$d/cg.out" | awk '{print $2}'
}

a=$(run "$n")
b=$(run $((2 * n)))
echo "shard instructions: $n Sends $a, $((2 * n)) Sends $b, per Send $(( (b - a) / n ))"
