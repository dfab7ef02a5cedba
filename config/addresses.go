package config

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"time"
)

// Martians are ranges that are never a destination reachable through a
// BGP peer. IPv4: "this network", loopback, link-local (the pods' gateway
// 169.254.1.1 included), multicast, reserved and limited broadcast. IPv6:
// the unspecified and loopback addresses, IPv4-mapped addresses,
// link-local (the pods' gateway fe80::1 included) and multicast. The
// import policy refuses them and their more-specifics from every peer, and
// no pod block may overlap them.
var Martians = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("255.255.255.255/32"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("::ffff:0:0/96"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("ff00::/8"),
}

// Documentation are the IPv6 documentation ranges (RFC 3849, RFC 9637).
// They are martians too, except inside a pool: labs and examples number
// their pods from them.
var Documentation = []netip.Prefix{
	netip.MustParsePrefix("2001:db8::/32"),
	netip.MustParsePrefix("3fff::/20"),
}

// MartianOf returns the martian range p overlaps, if any.
func MartianOf(p netip.Prefix) (netip.Prefix, bool) {
	for _, m := range Martians {
		if m.Overlaps(p) {
			return m, true
		}
	}
	return netip.Prefix{}, false
}

// MartiansFor is Martians plus the documentation ranges that no pool
// covers: what the import policy refuses given these pools.
func MartiansFor(pools []netip.Prefix) []netip.Prefix {
	out := slices.Clone(Martians)
	for _, d := range Documentation {
		if !slices.ContainsFunc(pools, func(p netip.Prefix) bool { return p.Overlaps(d) }) {
			out = append(out, d)
		}
	}
	return out
}

// unusableHost says why a is no address to speak BGP with, or "".
// IPv4 link-local peers stay allowed: some providers peer on
// 169.254.0.0/16. IPv6 link-local ones would need a zone, which the
// sessions do not carry.
func unusableHost(a netip.Addr) string {
	switch {
	case a.Is4In6():
		return "an IPv4-mapped IPv6 address (write the IPv4 address)"
	case a.Is6() && a.IsUnspecified():
		return "the unspecified address"
	case a.Is6() && a.IsLinkLocalUnicast():
		return "an IPv6 link-local address (sessions use global or unique-local addresses)"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the limited broadcast address"
	case netip.MustParsePrefix("0.0.0.0/8").Contains(a):
		return "in 0.0.0.0/8 (\"this network\")"
	case a.IsLoopback():
		return "a loopback address"
	case a.IsMulticast():
		return "a multicast address"
	}
	return ""
}

// peerProblem says why a is no address to peer with from node, or "". A
// loopback peer is this host itself, which only makes sense in a lab where
// the node's own address is loopback too (several speakers on one host).
func peerProblem(a, node netip.Addr) string {
	if a.IsLoopback() && node.IsLoopback() {
		return ""
	}
	if why := unusableHost(a); why != "" {
		return why + ", not a usable peer address"
	}
	return ""
}

// parseListen checks a listen address as net.Listen("tcp", s) will read
// it: host:port with an IP address (or "localhost", or empty for every
// address) and a port 1-65535. Port 0 would pick a random port nobody
// could find.
func parseListen(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port (or \"none\"): %v", s, err)
	}
	if host != "" && host != "localhost" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%q: host %q is not an IP address", s, host)
		}
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("%q: port %q is not a number 1-65535", s, port)
	}
	return nil
}

// ValidateListen checks a listen address given on the command line (such
// as nexthopd's --health-listen; "" or "none" disables it) by the same
// rules as the config's.
func ValidateListen(s string) error {
	if s == "" || s == "none" {
		return nil
	}
	return parseListen(s)
}

// holdTimeProblem says what is wrong with a BGP hold time, or "". The OPEN
// message carries it as whole seconds in 16 bits: more would wrap.
func holdTimeProblem(d time.Duration) string {
	switch {
	case d < MinHoldTime:
		return fmt.Sprintf("is below the minimum %s", MinHoldTime)
	case d > MaxHoldTime:
		return fmt.Sprintf("is above the maximum %s (65535 seconds, the OPEN message's limit)", MaxHoldTime)
	case d%time.Second != 0:
		return "is not a whole number of seconds (BGP carries seconds)"
	}
	return ""
}
