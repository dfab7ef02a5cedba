#!/usr/bin/env bash
# Builds the Kubernetes binaries the tests and `make cluster` run, from the Go
# module proxy (no release downloads, no containers), into a per-version cache
# directory that survives between runs on the same machine. Does nothing when
# the binaries are already there. The control plane (etcd, kube-apiserver,
# kubectl, kube-controller-manager, kube-scheduler) and the node's (kubelet,
# kube-proxy) come from one module, so shared packages compile once.
#
#   hack/kube/build.sh          # build if missing; prints the directory last
#   NEXTHOP_KUBE_BIN=/some/dir hack/kube/build.sh
#
# The first build takes about 12 minutes on 2 cores; later runs are instant.
set -euo pipefail

K8S_VERSION=v1.34.2      # kube-apiserver and kubectl; k8s.io/* staging modules are v0.34.2
ETCD_VERSION=v3.6.5
STAGING_VERSION=v0${K8S_VERSION#v1}   # v1.34.2 -> v0.34.2

GO=${GO:-go}
dir=${NEXTHOP_KUBE_BIN:-}
if [ -z "$dir" ]; then
  # A sibling of the Go build cache: kept as long as the machine keeps its
  # caches, and not wiped by `go clean -cache`.
  dir="$(dirname "$($GO env GOCACHE)")/nexthop-kube/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}"
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

k8s_cmds=(kubectl kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
have_k8s() { local c; for c in "${k8s_cmds[@]}"; do [ -x "$dir/$c" ] || return 1; done; }
have() { [ -x "$dir/etcd" ] && have_k8s; }
if have; then
  echo "kube: binaries present in $dir" >&2
  echo "$dir"
  exit 0
fi

# Several test packages may ask at once: one builds, the others wait.
exec 9>"$dir/.lock"
echo "kube: waiting for the build lock on $dir/.lock" >&2
flock 9
if have; then
  echo "kube: binaries present in $dir (built by another run)" >&2
  echo "$dir"
  exit 0
fi

work=$(mktemp -d "$dir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS
step() { echo "kube: [$((SECONDS - start))s] $*" >&2; }

export GOFLAGS=-mod=mod
# Stripped binaries: less disk, same behaviour.
ldflags_k8s="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags_k8s+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
done

if [ ! -x "$dir/etcd" ]; then
  step "etcd $ETCD_VERSION: resolving modules"
  mkdir -p "$work/etcd"
  (
    cd "$work/etcd"
    printf 'module local/etcd\n\ngo 1.25\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
    $GO mod tidy >&2
    step "etcd $ETCD_VERSION: compiling"
    $GO build -trimpath -ldflags "-s -w" -o "$work/etcd.bin" go.etcd.io/etcd/server/v3
  )
  mv "$work/etcd.bin" "$dir/etcd"
  step "etcd done: $dir/etcd"
fi

if ! have_k8s; then
  # k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every
  # staging module with ./staging/src/…. A helper module maps each of those
  # to its published version instead.
  step "kubernetes $K8S_VERSION: downloading k8s.io/kubernetes"
  $GO mod download k8s.io/kubernetes@"$K8S_VERSION" >&2
  gm="$($GO env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
  mkdir -p "$work/k8s" "$work/out"
  (
    cd "$work/k8s"
    {
      echo "module local/kube"; echo; echo "go 1.25"; echo
      echo "require k8s.io/kubernetes $K8S_VERSION"; echo
      echo "replace ("
      grep -E "=> ./staging" "$gm" | awk -v v="$STAGING_VERSION" '{print "\t"$1" => "$1" "v}'
      echo ")"
    } > go.mod
    {
      printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for c in "${k8s_cmds[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
      printf ')\n'
    } > tools.go
    step "kubernetes $K8S_VERSION: resolving modules (go mod tidy)"
    $GO mod tidy >&2
    # One by one, so that progress shows; each reuses what the ones before
    # compiled. kube-apiserver first: the kube/ tests wait only for it.
    for c in kube-apiserver kubectl kube-controller-manager kube-scheduler kubelet kube-proxy; do
      [ -x "$dir/$c" ] && continue
      step "$c $K8S_VERSION: compiling"
      $GO build -trimpath -ldflags "$ldflags_k8s" -o "$work/out/$c" "k8s.io/kubernetes/cmd/$c"
      mv "$work/out/$c" "$dir/$c"
    done
  )
  step "kubernetes binaries done"
fi

step "all built in $dir"
echo "$dir"
