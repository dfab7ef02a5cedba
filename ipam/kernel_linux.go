package ipam

import (
	"fmt"
	"net/netip"
	"regexp"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// hostVethRE matches the CNI plugin's host veth names (HostVethName).
var hostVethRE = regexp.MustCompile(`^nh[0-9a-f]{11}$`)

// KernelPodRoutes is the Kernel of the network namespace the caller runs
// in: every /32 and /128 route of the main table through one of the
// plugin's host veths (`<podIP> dev nhXXXXXXXXXXX`), as the plugin wires
// pods.
var KernelPodRoutes Kernel = KernelFunc(kernelPodRoutes)

func kernelPodRoutes() ([]PodRoute, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	veths := map[int]netlink.Link{}
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); ok && hostVethRE.MatchString(l.Attrs().Name) {
			veths[l.Attrs().Index] = l
		}
	}
	if len(veths) == 0 {
		return nil, nil
	}
	var out []PodRoute
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := netlinksafe.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list %s routes: %w", familyName(family), err)
		}
		for _, r := range rs {
			l, ok := veths[r.LinkIndex]
			if !ok || r.Dst == nil || r.Gw != nil || len(r.MultiPath) > 0 {
				continue
			}
			ones, bits := r.Dst.Mask.Size()
			if ones != bits || (bits != 32 && bits != 128) {
				continue
			}
			ip, ok := netip.AddrFromSlice(r.Dst.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			if ip.Is6() && (ip.IsLinkLocalUnicast() || ip.IsMulticast()) {
				continue // the veth's own fe80::1, never a pod's
			}
			pr := PodRoute{IP: ip, HostVeth: l.Attrs().Name}
			if k, _, ok := ParseHostVethAlias(l.Attrs().Alias); ok {
				pr.Attachment = k
			}
			out = append(out, pr)
		}
	}
	return out, nil
}

func familyName(family int) string {
	if family == netlink.FAMILY_V6 {
		return "IPv6"
	}
	return "IPv4"
}
