# Sourced by scripts/run and scripts/test: installs the Debian packages imbox
# needs, only those missing, and runs `apt-get update` only when something is
# (a fresh machine finds nothing before it). Quiet when all is there.
IMBOX_PACKAGES="build-essential cmake pkg-config libgrpc-dev nanopb libnanopb-dev
protobuf-compiler protobuf-compiler-grpc librocksdb-dev libzmq3-dev libcunit1-dev
libssl-dev python3-grpcio python3-protobuf valgrind clang libclang-rt-14-dev"

imbox_install_deps() {
    local missing="" p
    for p in $IMBOX_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    echo "imbox: installing missing packages:$missing"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# imbox_build BUILD_DIR [cmake args...]: configure once, then build.
imbox_build() {
    local dir="$1"; shift
    if [ ! -f "$dir/CMakeCache.txt" ]; then
        cmake -S . -B "$dir" "$@" >/dev/null
    fi
    cmake --build "$dir" -j "$(nproc)" -- --no-print-directory >/dev/null
}
