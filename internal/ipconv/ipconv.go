// Package ipconv converts the net.IP values netlink hands out into
// netip.Addr, for the packages that read the kernel (routes, tunnel).
package ipconv

import (
	"net"
	"net/netip"
)

// Addr converts a netlink address of either family: an IPv4 one may come
// in 16-byte form, and becomes a 4-byte netip.Addr.
func Addr(ip net.IP) (netip.Addr, bool) {
	if ip4 := ip.To4(); ip4 != nil {
		return netip.AddrFrom4([4]byte(ip4)), true
	}
	if len(ip) == net.IPv6len {
		return netip.AddrFrom16([16]byte(ip)), true
	}
	return netip.Addr{}, false
}
