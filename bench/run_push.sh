#!/usr/bin/env bash
# Live delivery under load on a loopback cluster: starts 3 `imbox shard`
# (PUSH_SHARDS) and 2 `imbox gateway` (one shared auth.secret) with their data in a fresh
# directory under the current one (a real disk: /tmp may be tmpfs), waits
# until both gateways store a message on every shard, measures the disk's
# fsync rate, runs bench/push_bench.c:
#   - latency at 1,000 and 10,000 pushes/s (Send on gateway 1, Subscribe on
#     gateway 2), the CPU time of all the servers per push;
#   - idle: 10,000 Subscribe streams on gateway 2, its RSS per stream and
#     the Health/Send latency beside them;
#   - churn: 100,000 Subscribes on gateway 2 (100 at a time, each a fresh
#     uid, cancelled once open), the servers' RSS and CPU across that
#     history, Presence offline after the last, Health/Send before and after;
# measures the fsync rate again, then stops everything and removes the data
# (also on failure or Ctrl-C). Needs build/ (scripts/test builds it).
#   bench/run_push.sh
# Knobs (environment): PUSH_RATES ("1000 10000"; empty: no latency run),
# PUSH_SECONDS (10),
# PUSH_SUBSCRIBERS (100, latency mode), PUSH_ACK_MS (100: how often an idle
# subscriber acks what it got), PUSH_IDLE (10000; 0 skips the idle
# run), PUSH_CHURN (100000; 0 skips the churn run), PUSH_CHURN_CANCEL
# (open: each stream cancelled once open; start: at once, HTTP/2's rapid
# reset), PUSH_JSON (set: JSON lines instead of key=value), IMBOX_SERVE_BIN
# (the `imbox` binary of the servers, default build/bin/imbox: for
# alternated rounds of two builds in one run, as in run_imbox_bench.sh),
# PUSH_SERVE (set: one `imbox serve` instead of the cluster, both
# addresses its own: what the hops between processes cost), PUSH_SHARDS
# (3, 1 to 16: the cluster's shards, which share this machine's one disk).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/bin"
imbox="${IMBOX_SERVE_BIN:-$bin/imbox}"
for b in imbox imboxctl push_bench fsync_rate; do
    [ -x "$bin/$b" ] || { echo "run_push.sh: $bin/$b is missing: build first (scripts/test)" >&2; exit 1; }
done
[ -x "$imbox" ] || { echo "run_push.sh: $imbox is missing" >&2; exit 1; }
rates=${PUSH_RATES-1000 10000}
secs=${PUSH_SECONDS:-10}
subs=${PUSH_SUBSCRIBERS:-100}
ack_ms=${PUSH_ACK_MS:-100}
idle=${PUSH_IDLE:-10000}
churn=${PUSH_CHURN:-100000}
churn_cancel=${PUSH_CHURN_CANCEL:-open}
nshards=${PUSH_SHARDS:-3}
case "$nshards" in
    [1-9] | 1[0-6]) ;;
    *) echo "run_push.sh: PUSH_SHARDS must be 1 to 16" >&2; exit 2 ;;
esac
json=()
[ -n "${PUSH_JSON:-}" ] && json=(--json)

data=$(mktemp -d ./bench-push-XXXXXX)
data=$(cd "$data" && pwd)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$data"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports (the shards', then the gateways'), held together
# while chosen so they differ.
read -r -a ports <<<"$(/usr/bin/python3 -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]) + 2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$nshards")"
shards=
for ((i = 0; i < nshards; i++)); do
    shards+="${shards:+,}tcp://127.0.0.1:${ports[$i]}"
done
gw1="127.0.0.1:${ports[$nshards]}"
gw2="127.0.0.1:${ports[$nshards + 1]}"

# One secret for both gateways (they share the directory that holds it) and
# the shards (--secret-file; CURVE keys come from it): created first.
mkdir -p "$data/gw"
"$bin/imbox" token --uid setup --data-dir "$data/gw" >/dev/null

if [ -n "${PUSH_SERVE:-}" ]; then
    "$imbox" serve --listen "$gw1" --data-dir "$data/gw" --send-rate 0 2>"$data/gw1.log" &
    pids+=($!)
    gw1_pid=$! gw2_pid=$! gw2=$gw1
fi
for ((i = 0; i < nshards; i++)); do
    [ -n "${PUSH_SERVE:-}" ] && break
    "$imbox" shard --index "$i" --count "$nshards" --listen "tcp://127.0.0.1:${ports[$i]}" \
        --data-dir "$data/shard-$i" --secret-file "$data/gw/auth.secret" \
        2>"$data/shard-$i.log" &
    pids+=($!)
done
if [ -z "${PUSH_SERVE:-}" ]; then
    "$imbox" gateway --listen "$gw1" --shards "$shards" --data-dir "$data/gw" --send-rate 0 2>"$data/gw1.log" &
    pids+=($!)
    gw1_pid=$!
    "$imbox" gateway --listen "$gw2" --shards "$shards" --data-dir "$data/gw" --send-rate 0 2>"$data/gw2.log" &
    pids+=($!)
    gw2_pid=$!
fi
all_pids=$(IFS=,; echo "${pids[*]}")

# Readiness (bounded: 15 s): each gateway stores one message for 200 uids,
# which the hash spreads over every shard (imboxctl exits 0 only when every
# receiver has it).
ready_to=$(printf 'r%d,' $(seq 0 199))
ready_to=${ready_to%,}
token=$("$bin/imbox" token --uid ready --data-dir "$data/gw" | tail -1)
for gw in "$gw1" "$gw2"; do
    ok=
    for n in $(seq 150); do
        for p in "${pids[@]}"; do
            kill -0 "$p" 2>/dev/null || { tail -n 5 "$data"/*.log >&2; echo "run_push.sh: a server died" >&2; exit 1; }
        done
        if "$bin/imboxctl" --addr "$gw" --token "$token" --timeout 1 send \
            --to "$ready_to" --id "ready-$gw-$n" ready >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 0.1
    done
    [ -n "$ok" ] || { tail -n 5 "$data"/*.log >&2; echo "run_push.sh: $gw not ready after 15 s" >&2; exit 1; }
done
if [ -n "${PUSH_SERVE:-}" ]; then
    echo "serve: $gw1 (pid $gw1_pid), sends and subscribes both there"
else
    echo "cluster: shards $shards, gateway 1 $gw1 (pid $gw1_pid), gateway 2 $gw2 (pid $gw2_pid)"
fi

"$bin/fsync_rate" --dir "$data" | head -1
rc=0
for r in $rates; do
    where="send on gateway 1, subscribe on gateway 2"
    [ -n "${PUSH_SERVE:-}" ] && where="send and subscribe on one imbox serve"
    echo "# latency: $r pushes/s for $secs s, $subs subscribers ($where)"
    "$bin/push_bench" --mode latency --send-addr "$gw1" --sub-addr "$gw2" --data-dir "$data/gw" \
        --subscribers "$subs" --rate "$r" --seconds "$secs" --ack-ms "$ack_ms" \
        --server-pids "$all_pids" \
        "${json[@]}" || rc=1
done
if [ "$idle" != 0 ]; then
    echo "# idle: $idle Subscribe streams on gateway 2"
    "$bin/push_bench" --mode idle --sub-addr "$gw2" --data-dir "$data/gw" --subscribers "$idle" \
        --gateway-pid "$gw2_pid" --seconds "$secs" "${json[@]}" || rc=1
fi
if [ "$churn" != 0 ]; then
    echo "# churn: $churn Subscribes on gateway 2, 100 at a time, each cancelled at $churn_cancel"
    "$bin/push_bench" --mode churn --sub-addr "$gw2" --data-dir "$data/gw" --cycles "$churn" \
        --cancel-at "$churn_cancel" \
        --gateway-pid "$gw2_pid" --server-pids "$all_pids" --seconds "$secs" "${json[@]}" || rc=1
fi
"$bin/fsync_rate" --dir "$data" | head -1
exit $rc
