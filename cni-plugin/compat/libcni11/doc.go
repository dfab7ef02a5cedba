// Package libcni11 holds only a test: the shipped conflist
// (cni-plugin/*.conflist) driven through libcni v1.1.2, as containerd 1.7
// drives it, against the real nexthop and portmap plugins and a real
// nexthopd. Run it as root:
//
//	cd cni-plugin/compat/libcni11 && go test -count=1 ./...
package libcni11
