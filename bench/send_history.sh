#!/usr/bin/env bash
# A long history of Sends through one `imbox serve` (1 shard, data in a
# fresh directory under the current one, removed on exit):
#   1. a measured Send run on the fresh database (`fresh:`);
#   2. FILL Sends at 64 in flight over 100,000 receivers, nothing pulled
#      (`fill:`), then the CPU time each kind of thread has used since the
#      start (`threads_ms:` RocksDB's compaction threads are
#      `rocksdb:low`, its flushes `rocksdb:high`);
#   3. the same measured Send run on the aged database (`aged:`), and a
#      drain of 200 new inboxes of 1,000 (`aged_drain:`);
#   4. kill -9, a restart on the same data: exec to the first answered
#      Health/Check (`restart_s`), the restarted process's RSS and peak, and
#      the measured Send run once more (`restarted:`).
#   bench/send_history.sh [FILL]      (default 2000000)
# Each measured run: imbox-bench --workload send --inflight 64 --seconds 8
# --receivers 100000 (calls/s, p99, max, server CPU per Send). Prints the
# fsync rate before and after. IMBOX_SERVE_BIN: the `imbox` binary to
# serve (default build/bin/imbox), for alternated rounds of two builds.
set -euo pipefail
fill=${1:-2000000}
# shellcheck source=bench/serve_lib.sh
. "$(dirname "$0")/serve_lib.sh"
serve_lib_init send_history.sh bench-history KILL
addr="127.0.0.1:$port"
bench() { "$bin/imbox-bench" --addr "$addr" --data-dir "$data/d" --server-pid "$pid" "$@"; }
pick() { grep -E "^($1)=" | tr '\n' ' '; }
measured() {
    bench --workload send --inflight 64 --seconds 8 --receivers 100000 |
        pick 'calls_per_s|latency_p99_us|latency_max_us|server_cpu_us_per_call|ok'
}

# Starts the server and waits (bounded: 60 s, a replay included) until a
# Health/Check is answered; the seconds that took go to $took. (Not called
# in $(...): the server would hold the substitution's pipe open.)
took=
start() {
    local t0 t1
    t0=$(date +%s.%N)
    "$serve" serve --listen "$addr" --data-dir "$data/d" --send-rate 0 \
        >/dev/null 2>>"$data/serve.log" &
    pid=$!
    for _ in $(seq 1200); do
        kill -0 "$pid" 2>/dev/null || break
        if "$bin/imbox-bench" --addr "$addr" --data-dir "$data/d" --workload noop --count 1 \
            >/dev/null 2>&1; then
            t1=$(date +%s.%N)
            took=$(echo "$t1 - $t0" | bc)
            return 0
        fi
        sleep 0.05
    done
    cat "$data/serve.log" >&2
    echo "send_history.sh: imbox serve did not answer" >&2
    exit 1
}

"$bin/fsync_rate" --dir "$data" | head -1 | sed 's/^/before: /'
start
echo "fresh: $(measured)"
echo "fill: $fill Sends: $(bench --workload send --inflight 64 --count "$fill" --receivers 100000 |
    pick 'calls_per_s|latency_p99_us|latency_max_us|server_cpu_us_per_call|ok')"
echo "threads_ms: $(for t in /proc/"$pid"/task/*; do
    echo "$(tr ' ' _ <"$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
done | awk -v hz="$(getconf CLK_TCK)" '{n[$1] += $2} END {for (k in n) if (n[k]) printf "%s=%d ", k, n[k] * 1000 / hz}')"
echo "aged: $(measured)"
echo "aged_drain: $(bench --workload drain --receivers 200 --backlog 1000 --page 100 |
    pick 'drain_msgs_per_s|server_cpu_us_per_call|ok')"
echo "rss_before_kill_kib: $(awk '/VmRSS/{print $2}' /proc/"$pid"/status)"
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true
start
echo "restart_s=$took restarted_rss_kib=$(awk '/VmRSS/{print $2}' /proc/"$pid"/status) restarted_peak_kib=$(awk '/VmHWM/{print $2}' /proc/"$pid"/status)"
echo "restarted: $(measured)"
"$bin/fsync_rate" --dir "$data" | head -1 | sed 's/^/after: /'
