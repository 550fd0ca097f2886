#!/usr/bin/env bash
# Starts `imbox serve` (IMBOX_SHARDS shards, default 1) on a free loopback
# port with its data in a fresh directory under the current one (a real
# disk: /tmp may be tmpfs), measures the disk's fsync rate, runs e2e_bench
# against the server, stops it and removes the data. Arguments are passed
# to e2e_bench.
#   bench/run_e2e.sh [--threads 1,16,64] [--seconds 3] [--drain 20000] ...
set -euo pipefail
bin="$(cd "$(dirname "$0")/.." && pwd)/build/bin"
data=$(mktemp -d ./bench-e2e-XXXXXX)
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin/imbox" serve --listen "127.0.0.1:$port" --data-dir "$data" 2>"$data.log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data" "$data.log"' EXIT
for _ in $(seq 100); do  # readiness: the port accepts (bounded: 10 s)
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    kill -0 $pid 2>/dev/null || { cat "$data.log"; exit 1; }
    sleep 0.1
done
"$bin/fsync_rate" --dir "$data" | head -1
"$bin/e2e_bench" --addr "127.0.0.1:$port" --data-dir "$data" "$@"
"$bin/fsync_rate" --dir "$data" | head -1
