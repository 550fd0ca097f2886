# shellcheck shell=bash disable=SC2034  # the variables set here are the sourcing script's
# bench/serve_lib.sh - sourced by the scripts that run one `imbox serve`
# for imbox-bench (run_imbox_bench.sh, send_history.sh). serve_lib_init
# NAME PREFIX SIGNAL checks the binaries, makes a data directory under the
# current one (a real disk: /tmp may be tmpfs) that is removed on exit,
# after the server (if $pid is set) is sent SIGNAL and waited for, and
# picks a free loopback port. It sets root, bin, serve (IMBOX_SERVE_BIN,
# default build/bin/imbox), data, port and pid (empty: the caller sets it
# when it starts the server).
serve_lib_init() {
    local name=$1 prefix=$2 b
    serve_lib_signal=$3
    root="$(cd "$(dirname "$0")/.." && pwd)"
    bin="$root/build/bin"
    serve="${IMBOX_SERVE_BIN:-$bin/imbox}"
    for b in "$serve" "$bin/imbox-bench" "$bin/fsync_rate"; do
        [ -x "$b" ] || { echo "$name: $b is missing: build first" >&2; exit 1; }
    done
    data=$(mktemp -d "./$prefix-XXXXXX")
    data=$(cd "$data" && pwd)
    pid=
    trap serve_lib_cleanup EXIT
    trap 'exit 130' INT TERM
    port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
}

serve_lib_cleanup() {
    if [ -n "$pid" ]; then
        kill -"$serve_lib_signal" "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$data"
}
