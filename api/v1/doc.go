// Package v1 holds nexthop's Kubernetes API types (group nexthop.io, version
// v1): cluster BGP settings, BGP peers, IP pools and per-node BGP status.
//
// The CRD manifests in manifests/base/crds and zz_generated.deepcopy.go are
// generated from the kubebuilder markers here by hack/kube/generate.sh; the
// validation that matters to users (CEL rules with their messages) lives on
// the types so the API server rejects a bad object before any node sees it.
//
// +kubebuilder:object:generate=true
// +groupName=nexthop.io
package v1
