# nexthop — every entry point. Network targets (demo, e2e, test, bench) need root.
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin
export NEXTHOP_BIN := $(BIN)

.PHONY: all build deps generate test unit e2e demo bench bench-routes bench-convergence bench-cni vet fmt clean

all: build

## build: the node daemon, the CNI plugin and the stock gobgp CLI into bin/
build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/nexthopd ./cmd/nexthopd
	$(GO) build -o $(BIN)/nexthop ./cmd/nexthop
	$(GO) build -o $(BIN)/portmap github.com/containernetworking/plugins/plugins/meta/portmap
	$(GO) build -o $(BIN)/gobgp github.com/osrg/gobgp/v3/cmd/gobgp

## deps: system packages the e2e suite and the demo use (idempotent)
deps:
	@bash hack/deps.sh

## test: unit tests, then the e2e suite (root)
test: deps build vet
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /e2e)
	$(MAKE) e2e

unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /e2e)

e2e: deps build
	$(GO) test -count=1 -v -timeout 15m ./e2e/...

## demo: a 3-node cluster with an FRR ToR in network namespaces (DEMO_CHECK=1: non-interactive)
demo: deps build
	$(GO) build -o $(BIN)/demo ./e2e/demo
	$(BIN)/demo

## bench: every benchmark (root); docs/benchmarks.md records the figures
bench: deps build bench-routes bench-convergence bench-cni

## bench-routes: 10,000 routes through routes/ vs a bare netlink loop, same run
bench-routes: build
	$(GO) test -run '^$$' -bench Program10k -benchtime 5x -count 1 ./routes/

## bench-convergence: a node joins; session established -> its block in a peer's kernel
bench-convergence: build
	$(GO) test -run '^$$' -bench Convergence -benchtime 20x -count 1 -timeout 20m ./e2e/
	$(GO) test -run '^$$' -bench Throughput -benchtime 1x -count 1 ./e2e/

## bench-cni: ADD/DEL latency of nexthop vs the reference ptp + host-local, same run
bench-cni: build
	$(GO) test -run '^$$' -bench 'AddDel$$' -benchtime 100x -count 1 ./cni-plugin/
	$(GO) test -run '^$$' -bench AddDelParallel50 -benchtime 2x -count 1 ./cni-plugin/

## generate: the IPAM gRPC code (needs protobuf-compiler)
generate:
	bash ipam/ipampb/generate.sh

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN)
