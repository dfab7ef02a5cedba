package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Community is a BGP community as written in the config: standard
// "AS:value" (RFC 1997, each part 0-65535) or large "AS:value:value"
// (RFC 8092, each part 0-4294967295).
type Community struct {
	Large bool
	// Parts holds the two (standard) or three (large) numbers.
	Parts [3]uint32
}

// ParseCommunity reads "65000:100" or "65000:1:2".
func ParseCommunity(s string) (Community, error) {
	fields := strings.Split(s, ":")
	var c Community
	switch len(fields) {
	case 2:
	case 3:
		c.Large = true
	default:
		return c, fmt.Errorf("community %q: want AS:value (standard) or AS:value:value (large)", s)
	}
	limit := uint64(65535)
	if c.Large {
		limit = 1<<32 - 1
	}
	for i, f := range fields {
		v, err := strconv.ParseUint(f, 10, 32)
		if err != nil || uint64(v) > limit {
			return c, fmt.Errorf("community %q: part %q is not a number from 0 to %d", s, f, limit)
		}
		c.Parts[i] = uint32(v)
	}
	return c, nil
}

// Standard is a standard community's 32-bit value.
func (c Community) Standard() uint32 { return c.Parts[0]<<16 | c.Parts[1] }

func (c Community) String() string {
	if c.Large {
		return fmt.Sprintf("%d:%d:%d", c.Parts[0], c.Parts[1], c.Parts[2])
	}
	return fmt.Sprintf("%d:%d", c.Parts[0], c.Parts[1])
}

// PrefixAdvertisement adds communities to the routes the node advertises
// inside one CIDR (Calico's prefixAdvertisements): its pod block, or
// service routes.
type PrefixAdvertisement struct {
	CIDR        netip.Prefix `json:"cidr"`
	Communities []string     `json:"communities"`
}

// validateAdvertisement checks serviceCIDRs, communities and
// prefixAdvertisements.
func (c *Config) validateAdvertisement(bad func(field, format string, a ...any)) {
	for i, p := range c.ServiceCIDRs {
		f := fmt.Sprintf("serviceCIDRs[%d]", i)
		switch {
		case badPrefix(p) != "":
			bad(f, "%s", badPrefix(p))
		case !c.AddressOf(p.Addr().Is6()).IsValid():
			bad(f, "%s is %s but the node has no %s address to be its next hop", p, familyName(p.Addr().Is6()), familyName(p.Addr().Is6()))
		case p.Bits() == 0:
			bad(f, "%s would announce a default route", p)
		case c.PodCIDROf(p.Addr().Is6()).Overlaps(p):
			bad(f, "%s overlaps this node's podCIDR %s", p, c.PodCIDROf(p.Addr().Is6()))
		default:
			if m, ok := MartianOf(p); ok {
				bad(f, "%s overlaps the reserved range %s, which no peer may route", p, m)
			}
			for _, pool := range c.Pools {
				if p.Overlaps(pool) {
					bad(f, "%s overlaps the pod pool %s: service addresses must be outside the pod pools", p, pool)
				}
			}
		}
	}
	for i, s := range c.Communities {
		if _, err := ParseCommunity(s); err != nil {
			bad(fmt.Sprintf("communities[%d]", i), "%v", err)
		}
	}
	for i, pa := range c.PrefixAdvertisements {
		f := fmt.Sprintf("prefixAdvertisements[%d]", i)
		if why := badPrefix(pa.CIDR); why != "" {
			bad(f+".cidr", "%s", why)
		}
		if len(pa.Communities) == 0 {
			bad(f+".communities", "required: the communities to add to routes inside %s", pa.CIDR)
		}
		for j, s := range pa.Communities {
			if _, err := ParseCommunity(s); err != nil {
				bad(fmt.Sprintf("%s.communities[%d]", f, j), "%v", err)
			}
		}
	}
}
