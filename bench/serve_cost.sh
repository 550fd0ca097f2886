#!/usr/bin/env bash
# Instructions per Send of a whole `imbox serve` process (valgrind
# callgrind): the server runs under callgrind in a fresh temp dir, takes N
# Sends from imbox-bench (16 in flight), stops; again with 2N; prints the
# difference / N, so start-up and shutdown cancel out. Deterministic to
# about 1.5%, where wall-clock rounds on this machine swing by 20%: the
# measure for a change to the Send path. Extra arguments go to imbox-bench
# (e.g. --receivers 100). The callgrind files stay in OUT_DIR (default: a
# temp dir, removed) for callgrind_annotate. Blind spots: N = 4,000 Sends
# never fill a 16 MiB memtable, so RocksDB's flush (and compaction) are not
# in the count, and neither is the kernel: compare CPU time too
# (docs/BENCHMARKS.md, "The memtable, measured again").
#   bench/serve_cost.sh [BIN_DIR] [N] [imbox-bench args...]   (build/bin, 2000)
#   OUT_DIR=/tmp/cg bench/serve_cost.sh build/bin 4000 --receivers 100
set -euo pipefail
bin="${1:-build/bin}"
n="${2:-2000}"
shift $(( $# > 2 ? 2 : $# ))
for b in imbox imbox-bench; do
    [ -x "$bin/$b" ] || { echo "serve_cost.sh: $bin/$b is missing (BIN_DIR needs both)" >&2; exit 1; }
done
root=$(mktemp -d /tmp/imbox-serve-cost-XXXXXX)
out="${OUT_DIR:-$root}"
mkdir -p "$out"
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$root"
}
trap cleanup EXIT

run() { # run COUNT [args]: prints the server's total instructions
    local count="$1" d="$root/run-$1"
    shift
    mkdir -p "$d"
    local port
    port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    valgrind --tool=callgrind --callgrind-out-file="$out/serve-$count.out" "$bin/imbox" serve \
        --listen "127.0.0.1:$port" --data-dir "$d/data" --send-rate 0 >/dev/null 2>"$d/serve.log" &
    pid=$! # run() is a $(...) subshell: its own failures stop the server (no EXIT trap here)
    local up=
    for _ in $(seq 600); do # bounded: 600 x 0.1 s (valgrind starts slowly)
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$up" ] || { kill "$pid" 2>/dev/null; cat "$d/serve.log" >&2; echo "serve_cost.sh: the server did not listen" >&2; exit 1; }
    "$bin/imbox-bench" --addr "127.0.0.1:$port" --data-dir "$d/data" --workload send \
        --count "$count" --inflight 16 "$@" >"$d/bench.out" ||
        { kill "$pid"; wait "$pid" || true; cat "$d/bench.out" >&2; echo "serve_cost.sh: imbox-bench failed" >&2; exit 1; }
    kill "$pid"
    wait "$pid" || true
    pid=
    grep -m1 '^summary:' "$out/serve-$count.out" | awk '{print $2}'
}

a=$(run "$n" "$@")
b=$(run $((2 * n)) "$@")
echo "serve instructions: $n Sends $a, $((2 * n)) Sends $b, per Send $(( (b - a) / n ))"
