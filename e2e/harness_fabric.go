package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// Building blocks for fabrics beyond one flat underlay: a router
// namespace between the underlay and further namespaces, and FRR speakers
// with a config of the test's own in any namespace.

// PlugNS creates namespace <prefix><name>, plugged into the underlay at
// addr, not forwarding (a ToR that only speaks BGP, like the harness's).
func (c *Cluster) PlugNS(name string, addr netip.Addr) (string, error) {
	ns := c.Prefix + name
	if err := c.addNS(ns); err != nil {
		return "", err
	}
	if err := c.plugUnderlay(ns, name, addr); err != nil {
		return "", err
	}
	return ns, setSysctls(ns, "net.ipv4.ip_forward", "0")
}

// AddRouter is PlugNS, forwarding.
func (c *Cluster) AddRouter(name string, addr netip.Addr) (string, error) {
	ns, err := c.PlugNS(name, addr)
	if err != nil {
		return "", err
	}
	if err := setSysctls(ns, "net.ipv4.ip_forward", "1", "net.ipv4.conf.all.rp_filter", "0", "net.ipv4.conf.default.rp_filter", "0"); err != nil {
		return "", err
	}
	return ns, nil
}

// AddNS creates an empty namespace <prefix><name> with lo up.
func (c *Cluster) AddNS(name string) (string, error) {
	ns := c.Prefix + name
	if err := c.addNS(ns); err != nil {
		return "", err
	}
	return ns, nil
}

// LinkNS joins namespaces a and b with a veth (ifA in a with addrA, ifB in
// b with addrB, both prefixes with their length) and brings it up.
func LinkNS(a, ifA string, addrA netip.Prefix, b, ifB string, addrB netip.Prefix) error {
	if err := ipn(a, "veth "+ifA, "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", b); err != nil {
		return err
	}
	for _, e := range []struct {
		ns, dev string
		addr    netip.Prefix
	}{{a, ifA, addrA}, {b, ifB, addrB}} {
		if err := ipn(e.ns, "address "+e.addr.String(), "addr", "add", e.addr.String(), "dev", e.dev); err != nil {
			return err
		}
		if err := ipn(e.ns, "up "+e.dev, "link", "set", e.dev, "up"); err != nil {
			return err
		}
	}
	return nil
}

// IP runs `ip args...` in namespace ns (routes, loopback addresses).
func IP(ns string, args ...string) error {
	return ipn(ns, fmt.Sprint(args), args...)
}

// StartFRR runs FRR's bgpd with config conf in the existing namespace ns,
// without zebra, as startToRAt does for the harness's ToR. The returned
// ToR's Address is addr (its router ID, for the test's use).
func (c *Cluster) StartFRR(name, ns string, addr netip.Addr, conf string) (*ToR, error) {
	t := &ToR{NS: ns, Address: addr, Dir: filepath.Join(c.Dir, name)}
	t.LogPath = filepath.Join(t.Dir, "bgpd.log")
	if err := os.MkdirAll(filepath.Join(t.Dir, "vty"), 0o755); err != nil {
		return nil, fmt.Errorf("create %s dir: %w", name, err)
	}
	path := filepath.Join(t.Dir, "bgpd.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if err := c.runBgpd(t, name, path); err != nil {
		return nil, err
	}
	return t, nil
}
