#!/bin/sh
# Generates the Python stubs of imbox.v1 into examples/python/gen/ with
# Debian's protoc and gRPC plugin (packages protobuf-compiler and
# protobuf-compiler-grpc). Any language: the same .proto, its own plugin.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/gen"
protoc -I "$here/../../proto" --python_out="$here/gen" --grpc_python_out="$here/gen" \
    --plugin=protoc-gen-grpc_python="$(command -v grpc_python_plugin)" imbox/v1/imbox.proto
echo "stubs in $here/gen"
