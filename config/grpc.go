package config

import (
	"net"
	"net/netip"
	"path/filepath"
	"strings"
)

// UnixScheme prefixes a grpcListen that is a unix socket path, as GoBGP and
// the gobgp CLI (--target) write it.
const UnixScheme = "unix://"

// GRPCSocket returns the socket path of a unix:// grpcListen, or "".
func (c *Config) GRPCSocket() string { return GRPCSocket(c.GRPCListen) }

// GRPCRemote reports whether grpcListen is a TCP address reachable from
// other hosts (anything but loopback, a unix socket or "none").
func (c *Config) GRPCRemote() bool { return GRPCRemote(c.GRPCListen) }

// GRPCSocket returns the socket path of a unix:// grpcListen value, or "".
func GRPCSocket(listen string) string {
	if p, ok := strings.CutPrefix(listen, UnixScheme); ok {
		return p
	}
	return ""
}

// GRPCRemote reports whether a grpcListen value is a TCP address reachable
// from other hosts (anything but loopback, a unix socket or "none").
func GRPCRemote(listen string) bool {
	if listen == "none" || strings.HasPrefix(listen, UnixScheme) {
		return false
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false // refused by validateGRPC anyway
	}
	if host == "localhost" {
		return false
	}
	a, err := netip.ParseAddr(host)
	return err != nil || !a.IsLoopback()
}

// validateGRPC checks grpcListen and the two opt-ins that open GoBGP's API
// wider than the default (a root-only unix socket, reads only).
func (c *Config) validateGRPC(bad func(field, format string, a ...any)) {
	switch {
	case c.GRPCListen == "none":
		if c.GRPCAllowWrites {
			bad("grpcAllowWrites", "set, but grpcListen is \"none\": there is no API to write through")
		}
	case strings.HasPrefix(c.GRPCListen, UnixScheme):
		p := c.GRPCSocket()
		switch {
		case !filepath.IsAbs(p) || filepath.Clean(p) != p:
			bad("grpcListen", "%q: the socket path must be absolute and clean, as in unix:///run/nexthop/gobgp.sock", c.GRPCListen)
		case strings.Contains(p, ","):
			// GoBGP would read a comma as a list of addresses.
			bad("grpcListen", "%q: a comma in the socket path is not supported", c.GRPCListen)
		case len(p) > 107:
			bad("grpcListen", "%q: the socket path is longer than the kernel's 107 bytes", c.GRPCListen)
		case p == c.IPAMSocket:
			bad("grpcListen", "%s is also ipamSocket", p)
		}
	default:
		if err := parseListen(c.GRPCListen); err != nil {
			bad("grpcListen", "%v (or unix:///path)", err)
			return
		}
		if c.GRPCRemote() && !c.GRPCAllowRemote {
			bad("grpcListen", "%s is not a loopback address: anyone who can reach it could read the BGP state (and change it with grpcAllowWrites); "+
				"set grpcAllowRemote: true to serve GoBGP's API there anyway", c.GRPCListen)
		}
	}
	if c.GRPCAllowRemote && !c.GRPCRemote() {
		bad("grpcAllowRemote", "set, but grpcListen %q is not a remote TCP address", c.GRPCListen)
	}
}
