# nexthop — every entry point. Network targets (demo, e2e, test, bench) need root.
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin
export NEXTHOP_BIN := $(BIN)

.PHONY: all build deps generate generate-kube kube-bin image image-tar cluster test unit e2e demo bench bench-routes bench-convergence bench-cni bench-scale profile-scale vet fmt clean fuzz fuzz-short soak

all: build

# Test timeouts: the kube/ and manifests/ tests start real API servers, and
# the e2e suite runs every netns cluster one after another (about 17 min
# with the dual-stack and IPv6 clusters, two real Kubernetes clusters among
# them: the timeout leaves room for a loaded machine).
UNIT_TIMEOUT ?= 20m
E2E_TIMEOUT  ?= 35m
IMAGE        ?= nexthop-net/nexthop:dev

## build: the node daemon, its installer, the CNI plugin and the stock gobgp CLI into bin/
build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/nexthopd ./cmd/nexthopd
	$(GO) build -o $(BIN)/nexthop-install ./cmd/nexthop-install
	$(GO) build -o $(BIN)/nexthop ./cmd/nexthop
	$(GO) build -o $(BIN)/portmap github.com/containernetworking/plugins/plugins/meta/portmap
	$(GO) build -o $(BIN)/gobgp github.com/osrg/gobgp/v3/cmd/gobgp

## deps: system packages the e2e suite and the demo use (idempotent)
deps:
	@bash hack/deps.sh

## kube-bin: etcd and the Kubernetes binaries (API server, controllers, kubelet, kube-proxy, kubectl), built once per machine (~12 min cold)
kube-bin:
	bash hack/kube/build.sh >/dev/null

## test: unit tests, then the e2e suite (root)
test: deps build vet kube-bin
	$(GO) test -count=1 -timeout $(UNIT_TIMEOUT) $$($(GO) list ./... | grep -v /e2e)
	cd cni-plugin/compat/libcni11 && $(GO) test -count=1 ./...
	$(MAKE) fuzz-short
	$(MAKE) e2e

unit:
	$(GO) test -count=1 -timeout $(UNIT_TIMEOUT) $$($(GO) list ./... | grep -v /e2e)

e2e: deps build kube-bin image-tar
	$(GO) test -count=1 -v -timeout $(E2E_TIMEOUT) ./e2e/...

## cluster: a local Kubernetes cluster (control plane, 3 containerd + kubelet + kube-proxy nodes, FRR ToR) in network namespaces, nexthop installed with kubectl apply -k; CLUSTER_CHECK=1: non-interactive
cluster: deps build image-tar
	$(GO) build -o $(BIN)/cluster ./e2e/cluster
	$(BIN)/cluster

## demo: a 3-node cluster with an FRR ToR in network namespaces (DEMO_CHECK=1: non-interactive)
demo: deps build
	$(GO) build -o $(BIN)/demo ./e2e/demo
	$(BIN)/demo

## bench: every benchmark, one after another (root); rewrites docs/benchmarks.md from hack/benchreport/template.md
bench: deps build
	$(GO) run ./hack/benchreport

## bench-routes: 10,000 routes, then 1,000 single-prefix updates at 10,000 (native, tunnel), each vs bare netlink in the same run
bench-routes: build
	$(GO) test -run '^$$' -bench 'Program10k|Churn10k' -benchtime 5x -count 1 ./routes/

## bench-convergence: a node joins; session established -> its block in a peer's kernel (100 runs: a real p99)
bench-convergence: build
	$(GO) test -run '^$$' -bench Convergence -benchtime 100x -count 1 -timeout 30m ./e2e/
	$(GO) test -run '^$$' -bench Throughput -benchtime 1x -count 1 ./e2e/

## bench-scale: N-node iBGP mesh, 2 reflectors + clients, a node joining: nexthop vs BIRD 2 side by side (NEXTHOP_SCALE_N=10,30,60,100; NEXTHOP_SCALE_PAIRS=3)
bench-scale: deps build
	$(GO) test -run '^$$' -bench '^BenchmarkScale$$' -benchtime 1x -count 1 -timeout 90m ./e2e/

## profile-scale: where nexthopd's CPU goes in a 100-node mesh (needs perf: apt-get install linux-perf); one pair of runs under perf record -a
profile-scale: deps build
	@command -v perf >/dev/null || { echo "profile-scale needs perf: apt-get install linux-perf"; exit 1; }
	$(GO) test -c -o $(BIN)/e2e.test ./e2e/
	cd e2e && NEXTHOP_SCALE_N=$${NEXTHOP_SCALE_N:-100} NEXTHOP_SCALE_PAIRS=1 perf record -q -F 199 -g -a -o $(BIN)/scale.perf -- \
		$(BIN)/e2e.test -test.run '^$$' -test.bench 'BenchmarkScale/mesh[0-9]+$$' -test.benchtime 1x
	perf script -i $(BIN)/scale.perf 2>/dev/null | $(GO) run ./hack/perfsummary -comm nexthopd

## bench-cni: ADD/DEL latency of nexthop vs the reference ptp + host-local, same run
bench-cni: build
	$(GO) test -run '^$$' -bench 'AddDel$$' -benchtime 100x -count 1 ./cni-plugin/
	$(GO) test -run '^$$' -bench AddDelParallel50 -benchtime 6x -count 1 ./cni-plugin/

## generate: the IPAM gRPC code (needs protobuf-compiler)
generate:
	bash ipam/ipampb/generate.sh

## generate-kube: api/v1 deepcopy and the CRDs in manifests/base/crds, from the Go types
generate-kube:
	bash hack/kube/generate.sh

## image-tar: the DaemonSet's image as a tarball, without Docker (bin/nexthop-image.tar; `ctr -n k8s.io images import`, `docker load -i` or `crane push`)
image-tar:
	@mkdir -p $(BIN)
	$(GO) run ./hack/image -o $(BIN)/nexthop-image.tar

## image: the DaemonSet's image (IMAGE=…), with docker or podman
image:
	@if command -v docker >/dev/null 2>&1; then b=docker; \
	elif command -v podman >/dev/null 2>&1; then b=podman; \
	else echo "make image: no docker or podman on this machine; build elsewhere with: docker build -f manifests/Dockerfile -t $(IMAGE) ." >&2; exit 1; fi; \
	set -x; $$b build -f manifests/Dockerfile -t $(IMAGE) .

vet:
	$(GO) vet ./...
	cd cni-plugin/compat/libcni11 && $(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN)

## fuzz: every Go fuzz target for FUZZTIME seconds each; fails on any finding
FUZZTIME ?= 30
fuzz:
	bash hack/fuzz.sh $(FUZZTIME)

## fuzz-short: 5 s per target (plain go test already replays the seed corpora)
fuzz-short:
	bash hack/fuzz.sh 5

## soak: 500 pod ADD/DEL cycles on 3 nodes while daemons are SIGKILLed at random (root)
soak: deps build
	NEXTHOP_SOAK=1 $(GO) test -count=1 -v -timeout 20m -run Soak ./e2e/
