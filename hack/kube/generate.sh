#!/usr/bin/env bash
# Regenerates what is derived from api/v1's kubebuilder markers: the deepcopy
# methods and the CRD manifests in manifests/base/crds. controller-gen is a
# `tool` of our go.mod, so its version is pinned there.
set -euo pipefail
cd "$(dirname "$0")/../.."
go tool controller-gen object paths=./api/...
go tool controller-gen crd:crdVersions=v1 paths=./api/... output:crd:artifacts:config=manifests/base/crds
echo "generate: deepcopy in api/v1, CRDs in manifests/base/crds"
