# Sourced by scripts/run, scripts/test, scripts/fuzz and deploy/Dockerfile
# (one package list for all): installs the Debian packages imbox needs, only
# those missing, and runs `apt-get update` only when something is (a fresh
# machine finds nothing before it). Quiet when all is there.
IMBOX_PACKAGES="build-essential cmake pkg-config libgrpc-dev nanopb libnanopb-dev
protobuf-compiler protobuf-compiler-grpc librocksdb-dev libzmq3-dev libcunit1-dev
libssl-dev python3-grpcio python3-protobuf libjwt-dev libjansson-dev libmicrohttpd-dev"
# What the tests need beyond the build (scripts/test installs them, with
# Node.js and npm): TLS certificates, raw HTTP/2, network namespaces, the
# fuzzers and valgrind, yamllint for deploy/k8s. (tests/deploy/test_k8s.py also
# fetches Debian's kubernetes-client with `apt-get download`, unpacked in the
# build tree, not installed: its /usr/bin/kubectl collides with other kubectls.)
IMBOX_TEST_PACKAGES="openssl python3-h2 iproute2 valgrind clang libclang-rt-14-dev yamllint"
# What the binaries load at run time: the container image's runtime stage
# installs exactly these (deploy/Dockerfile); tests/deploy checks that they
# cover every library that build/bin/imbox and imboxctl need.
IMBOX_RUNTIME_PACKAGES="libgrpc29 librocksdb7.8 libzmq5 libssl3 libjwt0 libjansson4 libmicrohttpd12"

# imbox_install_deps [--tests]: IMBOX_PACKAGES, and with --tests also
# IMBOX_TEST_PACKAGES, Node.js and npm.
imbox_install_deps() {
    local missing="" p want="$IMBOX_PACKAGES"
    [ "${1:-}" = "--tests" ] && want="$want $IMBOX_TEST_PACKAGES"
    for p in $want; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing="$missing $p"
    done
    # Node.js and npm, for the Node example (tests/examples): any install of
    # them will do (NodeSource's bundles npm).
    if [ "${1:-}" = "--tests" ]; then
        command -v node >/dev/null && command -v npm >/dev/null || missing="$missing nodejs npm"
    fi
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
