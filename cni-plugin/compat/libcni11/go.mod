// A module of its own so that its test runs the shipped conflist through
// libcni v1.1, the library containerd 1.6 and 1.7 call plugins with: in
// the main module, minimal version selection would lift it to the v1.3
// that module requires. It must never import the main module, for the
// same reason; it execs the binaries built from it instead.
module github.com/nexthop-net/nexthop/cni-plugin/compat/libcni11

go 1.26

require github.com/containernetworking/cni v1.1.2
