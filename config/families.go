package config

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net/netip"
)

// A dual-stack node has an address and a pod block in each family; a
// single-stack node in one. Everything that depends on the family (the
// session's source, the block's next hop, the blackhole) asks for it by
// family through these methods, never by reading Address or PodCIDRs[0].

// AddressOf is the node's underlay address of the family (v6 or IPv4), or
// the zero Addr if it has none.
func (c *Config) AddressOf(v6 bool) netip.Addr {
	return AddressOfFamily(c.Address, c.AddressV6, v6)
}

// AddressOfFamily picks, from a host's primary address (IPv4, or IPv6 on
// an IPv6-only host) and its IPv6 address, the one of the family (v6 or
// IPv4), or the zero Addr: the one rule every dual-stack pair of
// addresses here follows (node, speaker, and the tests' hosts and pods).
func AddressOfFamily(primary, v6addr netip.Addr, v6 bool) netip.Addr {
	switch {
	case v6 && v6addr.IsValid():
		return v6addr
	case primary.IsValid() && primary.Is6() == v6:
		return primary
	}
	return netip.Addr{}
}

// PodCIDROf is the node's block of the family, or the zero Prefix.
func (c *Config) PodCIDROf(v6 bool) netip.Prefix {
	for _, p := range c.PodCIDRs {
		if p.Addr().Is6() == v6 {
			return p
		}
	}
	return netip.Prefix{}
}

// LocalAddressOf is the source address of the session with p: its
// sourceAddress, or the node's address of p's family.
func (c *Config) LocalAddressOf(p Peer) netip.Addr {
	return p.LocalAddress(c.AddressOf(p.Address.Is6()))
}

// PassiveWith resolves p.Passive against this node's address of p's family.
func (c *Config) PassiveWith(p Peer) bool {
	return p.IsPassive(c.LocalAddressOf(p), c.LocalAS)
}

// HashRouterID derives a BGP router ID for a node without an IPv4 address
// from its name, as Calico's CALICO_ROUTER_ID=hash does: stable across
// restarts, and distinct between nodes but for a 1 in 2^32 collision.
// It avoids 0.0.0.0/8 and 240.0.0.0/4 only to stay readable in logs.
func HashRouterID(nodeName string) netip.Addr {
	h := fnv.New32a()
	h.Write([]byte(nodeName))
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], h.Sum32())
	b[0] = 1 + b[0]%223
	return netip.AddrFrom4(b)
}

// badPrefix says why p is no prefix to configure, or "". IPv4-mapped
// IPv6 prefixes are refused: written as IPv6 they would never match the
// IPv4 routes they stand for (and GoBGP's prefix sets cannot hold them).
func badPrefix(p netip.Prefix) string {
	switch {
	case !p.IsValid():
		return fmt.Sprintf("%s is not a prefix", p)
	case p.Addr().Is4In6():
		return fmt.Sprintf("%s is an IPv4-mapped IPv6 prefix: write the IPv4 prefix", p)
	}
	return ""
}

func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// validateFamilies checks the node's addresses and pod blocks.
func (c *Config) validateFamilies(bad func(field, format string, a ...any)) {
	switch a := c.Address; {
	case !a.IsValid():
		bad("address", "required (the node's underlay address: IPv4, or IPv6 on an IPv6-only node)")
	case unusableHost(a) != "" && !a.IsLoopback():
		bad("address", "%s is %s, not a usable underlay address", a, unusableHost(a))
	}
	switch a := c.AddressV6; {
	case !a.IsValid():
	case !a.Is6() || a.Is4In6():
		bad("addressV6", "%s is not IPv6", a)
	case c.Address.Is6() && a != c.Address:
		bad("addressV6", "%s differs from the IPv6 address %s: an IPv6-only node has one address", a, c.Address)
	case unusableHost(a) != "" && !a.IsLoopback():
		bad("addressV6", "%s is %s, not a usable underlay address", a, unusableHost(a))
	}
	if !c.RouterID.Is4() {
		bad("routerID", "must be an IPv4-style (32-bit) ID, also on an IPv6-only node")
	}
	if len(c.PodCIDRs) == 0 {
		bad("podCIDRs", "required (the node's pod blocks, e.g. [10.244.1.0/24, fd00:10:244:1::/64])")
	}
	if c.PodCIDR.IsValid() {
		bad("podCIDR", "set together with podCIDRs: use podCIDRs only")
	}
	if len(c.PodCIDRs) > 2 {
		bad("podCIDRs", "%v: at most one block per family", c.PodCIDRs)
	}
	seen := map[bool]bool{}
	for i, p := range c.PodCIDRs {
		f := fmt.Sprintf("podCIDRs[%d]", i)
		if why := badPrefix(p); why != "" {
			bad(f, "%s", why)
			continue
		}
		v6 := p.Addr().Is6()
		if seen[v6] {
			bad(f, "%s: a second %s block (at most one per family)", p, familyName(v6))
			continue
		}
		seen[v6] = true
		lo, hi := 8, 30
		if v6 {
			lo, hi = 48, 126
		}
		addr := c.AddressOf(v6)
		switch {
		case p.Bits() < lo || p.Bits() > hi:
			bad(f, "%s: an %s block's length must be between /%d and /%d", p, familyName(v6), lo, hi)
		case !addr.IsValid():
			bad(f, "%s is %s but the node has no %s address to be its next hop (set %s)", p, familyName(v6), familyName(v6), map[bool]string{false: "address", true: "addressV6"}[v6])
		case p.Contains(c.Address) || (c.AddressV6.IsValid() && p.Contains(c.AddressV6)):
			bad(f, "%s contains the node address %s", p, addr)
		default:
			if m, ok := MartianOf(p); ok {
				bad(f, "%s overlaps the reserved range %s, which no peer may route", p, m)
			}
		}
		inPool := len(c.Pools) == 0
		for _, pool := range c.Pools {
			if pool.Addr().Is6() == v6 && pool.Bits() <= p.Bits() && pool.Contains(p.Addr()) {
				inPool = true
			}
		}
		if !inPool {
			bad(f, "%s is outside every pool %v", p, c.Pools)
		}
	}
	for i, p := range c.Pools {
		if why := badPrefix(p); why != "" {
			bad(fmt.Sprintf("pools[%d]", i), "%s", why)
		}
	}
}

// inPodCIDRs returns the node's block that contains a, if any.
func (c *Config) inPodCIDRs(a netip.Addr) (netip.Prefix, bool) {
	for _, p := range c.PodCIDRs {
		if p.Contains(a) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}
