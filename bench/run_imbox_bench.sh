#!/usr/bin/env bash
# Starts `imbox serve` (IMBOX_SHARDS shards, default 1) on a free loopback
# port with its data in a fresh directory under the current one (a real
# disk: /tmp may be tmpfs), measures the disk's fsync rate, runs imbox-bench
# against it with --addr, --data-dir and --server-pid filled in (every
# argument is passed on), measures the fsync rate again, then stops the
# server and removes the data (also on failure or Ctrl-C). The report goes
# to stdout (so --json stays one object), the fsync rates to stderr.
#   bench/run_imbox_bench.sh --workload send --inflight 64 --seconds 5
#   bench/run_imbox_bench.sh --workload drain --receivers 100 --backlog 1000
# IMBOX_SERVE_BIN: the `imbox` binary to serve (default build/bin/imbox),
# for alternated rounds of two builds in one run, e.g.
#   for r in 1 2 3; do for b in /tmp/before build/bin; do
#     IMBOX_SERVE_BIN=$b/imbox bench/run_imbox_bench.sh --workload send; done; done
# Exit: imbox-bench's (0 ok, 1 a check failed or no server, 2 usage).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/bin"
serve="${IMBOX_SERVE_BIN:-$bin/imbox}"
for b in "$serve" "$bin/imbox-bench" "$bin/fsync_rate"; do
    [ -x "$b" ] || { echo "run_imbox_bench.sh: $b is missing: build first" >&2; exit 1; }
done
data=$(mktemp -d ./bench-imbox-XXXXXX)
data=$(cd "$data" && pwd)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$data"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$serve" serve --listen "127.0.0.1:$port" --data-dir "$data/d" --send-rate 0 2>"$data/serve.log" &
pid=$!
ready=
for _ in $(seq 100); do  # readiness: the port accepts (bounded: 10 s)
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then ready=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$ready" ] || { cat "$data/serve.log" >&2; echo "run_imbox_bench.sh: imbox serve did not listen" >&2; exit 1; }
"$bin/fsync_rate" --dir "$data" | head -1 | sed 's/^/before: /' >&2
rc=0
"$bin/imbox-bench" --addr "127.0.0.1:$port" --data-dir "$data/d" --server-pid "$pid" "$@" || rc=$?
"$bin/fsync_rate" --dir "$data" | head -1 | sed 's/^/after: /' >&2
exit $rc
