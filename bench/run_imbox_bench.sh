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
# shellcheck source=bench/serve_lib.sh
. "$(dirname "$0")/serve_lib.sh"
serve_lib_init run_imbox_bench.sh bench-imbox TERM
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
