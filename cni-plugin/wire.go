package cniplugin

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nexthop-net/nexthop/ipam"
)

// Gateway is the pod's IPv4 next hop. Nothing owns it: the host veth
// answers ARP for it with proxy_arp, so every pod can use the same
// link-local gateway whatever its address (Calico's trick).
var Gateway = netip.MustParseAddr("169.254.1.1")

// GatewayV6 is the pod's IPv6 next hop: the host veth holds it as its own
// fe80::1/64 (as Calico's), so it answers neighbour solicitations for it
// with no proxy NDP.
var GatewayV6 = netip.MustParseAddr("fe80::1")

// gatewayOf is the pod's next hop for ip's family.
func gatewayOf(ip netip.Addr) netip.Addr {
	if ip.Is4() {
		return Gateway
	}
	return GatewayV6
}

// HostVethName is the host end's name when it is not named after its pod
// (hostVethFor), and every attachment's name before it could be: "nh" + 11
// hex chars of sha1(containerID), stable across retries and within
// IFNAMSIZ. Interfaces other than eth0 hash "containerID/ifName" so a
// multi-interface pod's ends don't collide.
func HostVethName(containerID, ifName string) string {
	key := containerID
	if ifName != "eth0" {
		key += "/" + ifName
	}
	sum := sha1.Sum([]byte(key))
	return "nh" + hex.EncodeToString(sum[:])[:11]
}

// hostVeth is the host end one attachment gets: its name, and the alias
// marking it as the attachment's (ipam.HostVethAlias).
type hostVeth struct {
	att    ipam.Attachment
	name   string
	podKey string // ipam.PodKey when name is the pod's, else ""
	alias  string
}

// hostVethFor names an attachment's host end. A pod's eth0, when the
// runtime names the pod (kubelet's K8S_POD_NAMESPACE and K8S_POD_NAME), is
// named as Calico names it, "nh" + 11 hex chars of sha1("<namespace>.<pod>")
// (ipam.PodHostVethName): Calico's Felix, run for NetworkPolicy with
// FELIX_INTERFACEPREFIX=nh, finds a pod's interface by that name. Other
// interfaces (Felix manages a pod's primary only) and runtimes that name no
// pod keep HostVethName, as does a container ID too long for the alias.
func hostVethFor(containerID, ifName string, k *k8sArgs) hostVeth {
	att := ipam.Attachment{ContainerID: containerID, IfName: ifName}
	if k != nil && ifName == "eth0" && k.K8S_POD_NAMESPACE != "" && k.K8S_POD_NAME != "" {
		key := ipam.PodKey(string(k.K8S_POD_NAMESPACE), string(k.K8S_POD_NAME))
		if alias, ok := ipam.HostVethAlias(att, key); ok {
			return hostVeth{att: att, name: ipam.PodHostVethName(string(k.K8S_POD_NAMESPACE), string(k.K8S_POD_NAME)), podKey: key, alias: alias}
		}
	}
	alias, _ := ipam.HostVethAlias(att, "") // "" if it does not fit: the name says whose it is
	return hostVeth{att: att, name: HostVethName(containerID, ifName), alias: alias}
}

// hostVethNames is every name the attachment's host end may have: its name
// now, then the container-based one it had if it was wired before pods were
// named after themselves (an upgrade) or under another name choice.
func hostVethNames(containerID, ifName string, k *k8sArgs) []string {
	names := []string{hostVethFor(containerID, ifName, k).name}
	if legacy := HostVethName(containerID, ifName); legacy != names[0] {
		names = append(names, legacy)
	}
	return names
}

// ownedBy reports whether l is attachment att's host end: its alias names
// att, or it has none of ours and bears att's container-based name (wired
// before the alias).
func ownedBy(l netlink.Link, att ipam.Attachment) bool {
	if k, _, ok := ipam.ParseHostVethAlias(l.Attrs().Alias); ok {
		return k == att
	}
	return l.Attrs().Name == HostVethName(att.ContainerID, att.IfName)
}

// whose describes the owner of a host veth for an error message.
func whose(l netlink.Link) string {
	if k, _, ok := ipam.ParseHostVethAlias(l.Attrs().Alias); ok {
		return "attachment " + k.String()
	}
	if a := l.Attrs().Alias; a != "" {
		return fmt.Sprintf("an interface with alias %q", a)
	}
	return "an interface not marked as nexthop's"
}

// removeStaleHostVeth clears the name for the host end. A link of that name
// is removed only if it is stale: this attachment's own, left by an
// interrupted ADD, or the veth of an older sandbox of the same pod (a pod
// re-created under its name, a StatefulSet's, before the old sandbox's DEL
// ran: Kubernetes runs one pod of a name at a time, and Calico's plugin
// deletes a host veth of the name it wants for the same reason). A link of
// any other pod or owner is never touched: ADD fails instead. replaced is
// the container ID of an older sandbox whose veth was removed.
func (w *wiring) removeStaleHostVeth() (replaced string, err error) {
	l, err := netlinksafe.LinkByName(w.host.name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return "", nil
		}
		return "", fmt.Errorf("look up host veth %s: %w", w.host.name, err)
	}
	k, podKey, ours := ipam.ParseHostVethAlias(l.Attrs().Alias)
	switch {
	case ownedBy(l, w.host.att):
	case ours && w.host.podKey != "" && podKey == w.host.podKey && k.IfName == w.host.att.IfName:
		replaced = k.ContainerID
	default:
		return "", fmt.Errorf("host veth name %s is taken by %s; not removing it", w.host.name, whose(l))
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return "", fmt.Errorf("remove stale host veth %s (%s): %w", w.host.name, whose(l), err)
	}
	return replaced, nil
}

// hostPrefix is a as a /32 or a /128.
func hostPrefix(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// hostVethGateway is the address the host veth holds to be the pod's IPv6
// gateway.
func hostVethGateway() *net.IPNet {
	return &net.IPNet{IP: GatewayV6.AsSlice(), Mask: net.CIDRMask(64, 128)}
}

// wiring describes one pod attachment.
type wiring struct {
	hostNS ns.NetNS // where the host end lives (the current netns)
	podNS  ns.NetNS
	ifName string // pod end, normally eth0
	host   hostVeth
	mtu    int
	podIP  netip.Addr // IPv4, zero on an IPv6-only node
	podIP6 netip.Addr // IPv6, zero on an IPv4-only node
	// replaced: set by setup to the container ID of an older sandbox of
	// the same pod whose host veth it removed.
	replaced string
	// secondary: set by setup when the pod already had a default route;
	// the gateway and default routes are then in table, not main (see
	// secondary.go).
	secondary bool
	table     int
}

// setup creates the veth pair and configures both ends. On error it leaves
// nothing behind.
func (w *wiring) setup() (hostIf, podIf net.Interface, err error) {
	if w.replaced, err = w.removeStaleHostVeth(); err != nil {
		return hostIf, podIf, err
	}
	created := false
	defer func() {
		if err != nil && created {
			_ = ip.DelLinkByName(w.host.name) // takes the pod end with it
			if w.secondary {
				// Its routes went with the link; its rule did not.
				_ = w.podNS.Do(func(ns.NetNS) error { return deleteSourceRules(-1) })
			}
		}
	}()
	err = w.podNS.Do(func(ns.NetNS) error {
		if _, err := netlinksafe.LinkByName(w.ifName); err == nil {
			return fmt.Errorf("interface %s already exists in %s", w.ifName, w.podNS.Path())
		}
		hostIf, podIf, err = ip.SetupVethWithName(w.ifName, w.host.name, w.mtu, "", w.hostNS)
		if err != nil {
			return fmt.Errorf("create veth pair %s/%s: %w", w.ifName, w.host.name, err)
		}
		created = true
		return w.configurePod()
	})
	if err != nil {
		return hostIf, podIf, err
	}
	return hostIf, podIf, w.configureHost()
}

// addrs is the pod's addresses, IPv4 first.
func (w *wiring) addrs() []netip.Addr {
	var out []netip.Addr
	for _, ip := range []netip.Addr{w.podIP, w.podIP6} {
		if ip.IsValid() {
			out = append(out, ip)
		}
	}
	return out
}

// podSysctls are set on the pod interface for its IPv6 address: IPv6 on,
// and no duplicate address detection (the address is the pod's alone; DAD
// would hold it "tentative", unusable, for a second or two).
func podSysctls(ifName string) []sysctlSetting {
	return []sysctlSetting{
		{"net/ipv6/conf/" + ifName + "/disable_ipv6", "0"},
		{"net/ipv6/conf/" + ifName + "/accept_dad", "0"},
	}
}

// configurePod runs in the pod netns: each address as a /32 or /128, and
// per family the default route via the gateway (169.254.1.1, with a
// link-scope route to it; fe80::1, on-link as any link-local address): in
// the main table for the pod's primary interface, in a table of its own
// behind source rules for a secondary one.
func (w *wiring) configurePod() error {
	link, err := netlinksafe.LinkByName(w.ifName)
	if err != nil {
		return fmt.Errorf("look up %s: %w", w.ifName, err)
	}
	if w.podIP6.IsValid() {
		for _, s := range podSysctls(w.ifName) {
			if _, err := sysctl.Sysctl(s.key, s.val); err != nil {
				return fmt.Errorf("set sysctl %s=%s in the pod: %w", s.key, s.val, err)
			}
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", w.ifName, err)
	}
	for _, ip := range w.addrs() {
		a := &netlink.Addr{IPNet: hostPrefix(ip)}
		if ip.Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, a); err != nil {
			return fmt.Errorf("add address %s to %s: %w", hostPrefix(ip), w.ifName, err)
		}
	}
	if w.secondary, err = hasDefaultRoute(w.addrs()); err != nil {
		return err
	}
	if w.secondary {
		w.table = podTable(link.Attrs().Index)
	}
	for _, ip := range w.addrs() {
		for _, r := range gatewayRoutes(link.Attrs().Index, w.table, ip.Is6()) {
			if err := netlink.RouteAdd(r); err != nil {
				return fmt.Errorf("add route %s dev %s table %s: %w", routeString(r), w.ifName, tableName(w.table), err)
			}
		}
	}
	if w.secondary {
		// An interrupted earlier ADD may have left a rule whose interface
		// is gone (deleting a link takes its routes, not its rule).
		if err := deleteSourceRules(-1); err != nil {
			return err
		}
		for _, ip := range w.addrs() {
			if err := addSourceRule(ip, w.table); err != nil {
				return err
			}
		}
	}
	return nil
}

// routeString is r as `ip route` shows its destination and next hop.
func routeString(r *netlink.Route) string {
	dst := "default"
	if !isDefault(r.Dst) {
		dst = r.Dst.String()
	}
	if r.Gw != nil {
		return dst + " via " + r.Gw.String()
	}
	return dst
}

func tableName(t int) string {
	if t == 0 {
		return "main"
	}
	return fmt.Sprint(t)
}

// configureHost runs in the host netns: proxy ARP so the host end answers
// for the IPv4 gateway, fe80::1 on it as the IPv6 gateway, and the /32 and
// /128 routes that bring the pod's traffic home.
func (w *wiring) configureHost() error {
	// Only on our own interface: never touch the node's other sysctls.
	for _, s := range hostSysctls(w.host.name, w.podIP.IsValid(), w.podIP6.IsValid()) {
		if _, err := sysctl.Sysctl(s.key, s.val); err != nil {
			return fmt.Errorf("set sysctl %s=%s: %w", s.key, s.val, err)
		}
	}
	link, err := netlinksafe.LinkByName(w.host.name)
	if err != nil {
		return fmt.Errorf("look up %s: %w", w.host.name, err)
	}
	// Before the route: a veth the allocator finds routing a pod's address
	// (ipam.KernelPodRoutes) always says whose it is.
	if w.host.alias != "" {
		if err := netlink.LinkSetAlias(link, w.host.alias); err != nil {
			return fmt.Errorf("set alias %q on %s: %w", w.host.alias, w.host.name, err)
		}
	}
	if w.podIP6.IsValid() {
		gw := &netlink.Addr{IPNet: hostVethGateway(), Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrReplace(link, gw); err != nil {
			return fmt.Errorf("add address %s to %s: %w", gw.IPNet, w.host.name, err)
		}
	}
	for _, ip := range w.addrs() {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostPrefix(ip), Scope: netlink.SCOPE_LINK}
		if ip.Is6() {
			r.Scope = netlink.SCOPE_UNIVERSE // the kernel keeps IPv6 routes at universe scope
		}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("add route %s dev %s: %w", hostPrefix(ip), w.host.name, err)
		}
	}
	return nil
}

type sysctlSetting struct{ key, val string }

// hostSysctls are set on the host veth only. For IPv4 (v4): proxy_arp
// makes it answer ARP for the gateway, proxy_delay=0 without the default
// random delay of up to 0.8 s. forwarding=1 on this interface is needed
// too: the kernel proxies ARP only for targets it could forward to from the
// asking interface, and it forwards the pod's traffic (Calico sets the same
// three). For IPv6 (v6): IPv6 on for it (it holds fe80::1, the pod's
// gateway), without DAD for its addresses.
func hostSysctls(hostVeth string, v4, v6 bool) []sysctlSetting {
	var out []sysctlSetting
	if v4 {
		out = append(out,
			sysctlSetting{"net/ipv4/conf/" + hostVeth + "/forwarding", "1"},
			sysctlSetting{"net/ipv4/conf/" + hostVeth + "/proxy_arp", "1"},
			sysctlSetting{"net/ipv4/neigh/" + hostVeth + "/proxy_delay", "0"})
	}
	if v6 {
		out = append(out,
			sysctlSetting{"net/ipv6/conf/" + hostVeth + "/disable_ipv6", "0"},
			sysctlSetting{"net/ipv6/conf/" + hostVeth + "/accept_dad", "0"})
	}
	return out
}

// teardown removes both ends, and a secondary interface's source rule;
// whatever is already gone is not an error. A netnsPath naming the node's
// own netns (an ADD there was refused) has nothing of ours in it: ifName
// there is the node's, and is never touched. Of the host links named
// hostVeths (every name the attachment's host end may have), only those
// that are att's are removed: a pod re-created under its name may already
// have a veth of that name, a newer sandbox's.
func teardown(netnsPath, ifName string, att ipam.Attachment, hostVeths []string) error {
	if netnsPath != "" {
		err := unwirePod(netnsPath, ifName)
		var gone ns.NSPathNotExistErr
		if err != nil && !errors.As(err, &gone) {
			return fmt.Errorf("in netns %s: %w", netnsPath, err)
		}
	}
	// Usually gone with its peer; not if the pod end was moved or the netns
	// is unknown to us.
	for _, name := range hostVeths {
		l, err := netlinksafe.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				continue
			}
			return fmt.Errorf("look up host veth %s: %w", name, err)
		}
		if !ownedBy(l, att) {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("delete host veth %s: %w", name, err)
		}
	}
	return nil
}

// findHostVeth is the name of the attachment's host end among names (see
// hostVethNames): the first that exists and is att's, else names[0].
func findHostVeth(att ipam.Attachment, names []string) string {
	for _, name := range names {
		if l, err := netlinksafe.LinkByName(name); err == nil && ownedBy(l, att) {
			return name
		}
	}
	return names[0]
}

func unwirePod(netnsPath, ifName string) error {
	podNS, err := ns.GetNS(netnsPath)
	if err != nil {
		return err
	}
	defer podNS.Close()
	if node, err := isNodeNetNS(podNS); err != nil || node {
		return err
	}
	return podNS.Do(func(ns.NetNS) error {
		ifindex := -1
		if l, err := netlinksafe.LinkByName(ifName); err == nil {
			ifindex = l.Attrs().Index
		}
		if err := deleteSourceRules(ifindex); err != nil {
			return err
		}
		if err := ip.DelLinkByName(ifName); err != nil && !errors.Is(err, ip.ErrLinkNotFound) {
			return fmt.Errorf("delete %s: %w", ifName, err)
		}
		return nil
	})
}

// check compares the attachment with what setup makes and returns every
// difference, each a short sentence naming the interface and the object.
func (w *wiring) check() []string {
	var problems []string
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	peerIndex := -1
	err := w.podNS.Do(func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(w.ifName)
		if err != nil {
			bad("pod interface %s: %v", w.ifName, err)
			return nil
		}
		if _, ok := link.(*netlink.Veth); !ok {
			bad("pod interface %s is a %s, not a veth", w.ifName, link.Type())
			return nil
		}
		peerIndex = link.Attrs().ParentIndex
		checkLink(bad, "pod", link, w.mtu)
		w.checkPodAddrs(bad, link)
		if w.podIP6.IsValid() {
			checkSysctls(bad, "pod ", podSysctls(w.ifName))
		}
		table, secondary, err := secondaryTable(link.Attrs().Index, w.addrs())
		if err != nil {
			bad("pod interface %s: %v", w.ifName, err)
			return nil
		}
		where := ""
		filter := &netlink.Route{LinkIndex: link.Attrs().Index} // main table
		mask := netlink.RT_FILTER_OIF
		if secondary {
			where = fmt.Sprintf(" table %d", table)
			filter.Table = table
			mask |= netlink.RT_FILTER_TABLE
			for _, ip := range w.addrs() {
				problems = append(problems, checkSourceRule(w.ifName, ip, table)...)
			}
		}
		for _, ip := range w.addrs() {
			family := netlink.FAMILY_V4
			if ip.Is6() {
				family = netlink.FAMILY_V6
			}
			routes, err := netlinksafe.RouteListFiltered(family, filter, mask)
			if err != nil {
				bad("pod interface %s: list routes%s: %v", w.ifName, where, err)
				continue
			}
			gw := gatewayOf(ip)
			haveGW, haveDefault := ip.Is6(), false // fe80::1 is on-link: no route to it
			for _, r := range routes {
				switch {
				case isDefault(r.Dst) && gw.Compare(addrOf(r.Gw)) == 0:
					haveDefault = true
				case r.Dst != nil && r.Dst.String() == gw.String()+"/32" && r.Scope == netlink.SCOPE_LINK && r.Gw == nil:
					haveGW = true
				}
			}
			if !haveGW {
				bad("pod route %s dev %s scope link%s missing", gw, w.ifName, where)
			}
			if !haveDefault {
				bad("pod route default via %s dev %s%s missing", gw, w.ifName, where)
			}
		}
		return nil
	})
	if err != nil {
		bad("enter pod netns %s: %v", w.podNS.Path(), err)
	}

	hv := w.host.name
	link, err := netlinksafe.LinkByName(hv)
	if err != nil {
		bad("host veth %s: %v", hv, err)
		return problems
	}
	if _, ok := link.(*netlink.Veth); !ok {
		bad("host interface %s is a %s, not a veth", hv, link.Type())
		return problems
	}
	if !ownedBy(link, w.host.att) {
		bad("host veth %s is %s's, not %s's", hv, whose(link), w.host.att)
		return problems
	}
	if peerIndex > 0 && link.Attrs().Index != peerIndex {
		bad("host veth %s (index %d) is not the peer of pod %s (peer index %d)", hv, link.Attrs().Index, w.ifName, peerIndex)
	}
	checkLink(bad, "host", link, w.mtu)
	w.checkHostAddrs(bad, link)
	checkSysctls(bad, "", hostSysctls(hv, w.podIP.IsValid(), w.podIP6.IsValid()))
	for _, ip := range w.addrs() {
		family := netlink.FAMILY_V4
		if ip.Is6() {
			family = netlink.FAMILY_V6
		}
		routes, err := netlinksafe.RouteListFiltered(family, &netlink.Route{Dst: hostPrefix(ip)}, netlink.RT_FILTER_DST)
		if err != nil {
			bad("host: list routes to %s: %v", ip, err)
			continue
		}
		ok := false
		for _, r := range routes {
			if r.LinkIndex == link.Attrs().Index && (r.Scope == netlink.SCOPE_LINK || ip.Is6()) && r.Gw == nil {
				ok = true
			}
		}
		if !ok {
			if ip.Is6() {
				bad("host route %s dev %s missing", hostPrefix(ip), hv)
			} else {
				bad("host route %s dev %s scope link missing", hostPrefix(ip), hv)
			}
		}
	}
	return problems
}

// checkPodAddrs checks, in the pod netns, that the pod interface holds its
// addresses (as /32 and /128) and no other, but for the kernel's own IPv6
// link-local one.
func (w *wiring) checkPodAddrs(bad func(string, ...any), link netlink.Link) {
	addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		bad("pod interface %s: list addresses: %v", w.ifName, err)
		return
	}
	found := map[netip.Addr]bool{}
	for _, a := range addrs {
		p, _ := netip.AddrFromSlice(a.IP)
		p = p.Unmap()
		ones, bits := a.Mask.Size()
		switch {
		case p.IsLinkLocalUnicast() && p.Is6():
			// The kernel's own (addrgenmode eui64): harmless, unused.
		case (p == w.podIP || p == w.podIP6) && ones == bits:
			found[p] = true
		default:
			bad("pod interface %s: unexpected address %s", w.ifName, a.IPNet)
		}
	}
	for _, ip := range w.addrs() {
		if !found[ip] {
			bad("pod interface %s: address %s missing", w.ifName, hostPrefix(ip))
		}
	}
}

// checkHostAddrs checks that the host veth holds no IPv4 address, and holds
// fe80::1/64 (the pod's IPv6 gateway) exactly when the pod has IPv6.
func (w *wiring) checkHostAddrs(bad func(string, ...any), link netlink.Link) {
	hv := link.Attrs().Name
	addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		bad("host veth %s: list addresses: %v", hv, err)
		return
	}
	haveGW := false
	for _, a := range addrs {
		p, _ := netip.AddrFromSlice(a.IP)
		p = p.Unmap()
		ones, _ := a.Mask.Size()
		switch {
		case p == GatewayV6 && ones == 64 && w.podIP6.IsValid():
			haveGW = true
		case p.Is6() && p.IsLinkLocalUnicast() && p != GatewayV6:
			// The kernel's own link-local address.
		default:
			bad("host veth %s: unexpected address %s", hv, a.IPNet)
		}
	}
	if w.podIP6.IsValid() && !haveGW {
		bad("host veth %s: address %s missing (the pod's IPv6 gateway)", hv, hostVethGateway())
	}
}

// checkSysctls reports each setting that does not have its value.
func checkSysctls(bad func(string, ...any), where string, settings []sysctlSetting) {
	for _, s := range settings {
		if got, err := sysctl.Sysctl(s.key); err != nil {
			bad("%ssysctl %s: %v", where, s.key, err)
		} else if strings.TrimSpace(got) != s.val {
			bad("%ssysctl %s is %s, want %s", where, s.key, strings.TrimSpace(got), s.val)
		}
	}
}

func checkLink(bad func(string, ...any), side string, l netlink.Link, mtu int) {
	a := l.Attrs()
	if a.Flags&net.FlagUp == 0 {
		bad("%s interface %s is down", side, a.Name)
	}
	if a.MTU != mtu {
		bad("%s interface %s has MTU %d, want %d", side, a.Name, a.MTU, mtu)
	}
}

func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0
}

func addrOf(b net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a.Unmap()
}
