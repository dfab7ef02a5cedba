#!/usr/bin/env bash
# Regenerates ipam.pb.go and ipam_grpc.pb.go from ipam.proto.
# Needs protoc (Debian: protobuf-compiler). The Go generators are built from
# the module proxy at versions matching go.mod's protobuf and grpc.
set -euo pipefail
cd "$(dirname "$0")"
PROTOC_GEN_GO=google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.7
PROTOC_GEN_GO_GRPC=google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
command -v protoc >/dev/null || { echo "generate: protoc missing (apt-get install protobuf-compiler)" >&2; exit 1; }
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOBIN=$bin GOFLAGS= go install "$PROTOC_GEN_GO"
GOBIN=$bin GOFLAGS= go install "$PROTOC_GEN_GO_GRPC"
PATH=$bin:$PATH protoc -I . \
  --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative \
  ipam.proto
