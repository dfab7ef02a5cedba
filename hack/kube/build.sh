#!/usr/bin/env bash
# Builds the kube-apiserver, kubectl and etcd that kubetest/ runs, from the Go
# module proxy (no release downloads, no containers), into a per-version cache
# directory that survives between runs on the same machine. Does nothing when
# the binaries are already there.
#
#   hack/kube/build.sh          # build if missing; prints the directory last
#   NEXTHOP_KUBE_BIN=/some/dir hack/kube/build.sh
#
# The first build takes several minutes on 2 cores (most of it compiling
# kube-apiserver); later runs are instant.
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

have() { [ -x "$dir/kube-apiserver" ] && [ -x "$dir/kubectl" ] && [ -x "$dir/etcd" ]; }
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

if [ ! -x "$dir/kube-apiserver" ] || [ ! -x "$dir/kubectl" ]; then
  # k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every
  # staging module with ./staging/src/…. A helper module maps each of those
  # to its published version instead.
  step "kubernetes $K8S_VERSION: downloading k8s.io/kubernetes"
  $GO mod download k8s.io/kubernetes@"$K8S_VERSION" >&2
  gm="$($GO env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
  mkdir -p "$work/k8s"
  (
    cd "$work/k8s"
    {
      echo "module local/apiserver"; echo; echo "go 1.25"; echo
      echo "require k8s.io/kubernetes $K8S_VERSION"; echo
      echo "replace ("
      grep -E "=> ./staging" "$gm" | awk -v v="$STAGING_VERSION" '{print "\t"$1" => "$1" "v}'
      echo ")"
    } > go.mod
    printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n\t_ "k8s.io/kubernetes/cmd/kubectl"\n)\n' > tools.go
    step "kubernetes $K8S_VERSION: resolving modules (go mod tidy)"
    $GO mod tidy >&2
    step "kubectl $K8S_VERSION: compiling"
    $GO build -trimpath -ldflags "$ldflags_k8s" -o "$work/kubectl.bin" k8s.io/kubernetes/cmd/kubectl
    step "kube-apiserver $K8S_VERSION: compiling (the long part)"
    $GO build -trimpath -ldflags "$ldflags_k8s" -o "$work/kube-apiserver.bin" k8s.io/kubernetes/cmd/kube-apiserver
  )
  mv "$work/kubectl.bin" "$dir/kubectl"
  mv "$work/kube-apiserver.bin" "$dir/kube-apiserver"
  step "kube-apiserver and kubectl done"
fi

step "all built in $dir"
echo "$dir"
