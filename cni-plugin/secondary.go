package cniplugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// A pod can have more than one nexthop interface (Multus adds net1, net2,
// ... next to eth0). Only one can own the main table's default route and
// the 169.254.1.1 link route: the first one added to a pod that has no
// default route yet in a family it has an address of (normally eth0), the
// primary. Any later one, or one
// added to a pod whose default route another plugin made, is secondary: its
// gateway and default routes go into a table of its own, podTable(its
// ifindex), chosen by a rule "from <its address> lookup <table>" (one per
// address, IPv4 and IPv6) at SecondaryRulePriority. Traffic from a secondary address leaves by its own
// interface (source-based routing, as the reference sbr plugin does); all
// other traffic follows the primary's default route.
const (
	// SecondaryRulePriority is the priority of the source rules of
	// secondary interfaces: before the main table (32766).
	SecondaryRulePriority = 32000
	// secondaryTableBase + the pod interface's ifindex is its table.
	secondaryTableBase = 1000
)

func podTable(ifindex int) int { return secondaryTableBase + ifindex }

var (
	defaultDst   = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	defaultDstV6 = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
)

func familyOf(ip netip.Addr) int {
	if ip.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// hasDefaultRoute reports whether the current netns's main table has a
// default route, whoever made it, in the family of any of addrs.
func hasDefaultRoute(addrs []netip.Addr) (bool, error) {
	for _, ip := range addrs {
		dst := defaultDst
		if ip.Is6() {
			dst = defaultDstV6
		}
		routes, err := netlinksafe.RouteListFiltered(familyOf(ip), &netlink.Route{Dst: dst}, netlink.RT_FILTER_DST)
		if err != nil {
			return false, fmt.Errorf("list default routes: %w", err)
		}
		if len(routes) > 0 {
			return true, nil
		}
	}
	return false, nil
}

// gatewayRoutes are the pod's routes of a family for interface ifindex in
// table (0: main): IPv4, the gateway on the link and the default route
// through it; IPv6, the default route via fe80::1 (on-link, as every
// link-local address).
func gatewayRoutes(ifindex, table int, v6 bool) []*netlink.Route {
	if v6 {
		return []*netlink.Route{{LinkIndex: ifindex, Dst: defaultDstV6, Gw: GatewayV6.AsSlice(), Table: table}}
	}
	return []*netlink.Route{
		{LinkIndex: ifindex, Dst: hostPrefix(Gateway), Scope: netlink.SCOPE_LINK, Table: table},
		{LinkIndex: ifindex, Dst: defaultDst, Gw: Gateway.AsSlice(), Table: table},
	}
}

// sourceRule is the rule that sends traffic from a secondary interface's
// address to its table.
func sourceRule(podIP netip.Addr, table int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = familyOf(podIP)
	r.Src = hostPrefix(podIP)
	r.Table = table
	r.Priority = SecondaryRulePriority
	return r
}

// addSourceRule adds sourceRule; runs in the pod netns.
func addSourceRule(podIP netip.Addr, table int) error {
	if err := netlink.RuleAdd(sourceRule(podIP, table)); err != nil {
		return fmt.Errorf("add rule from %s lookup %d: %w", podIP, table, err)
	}
	return nil
}

// ourRules are the rules at SecondaryRulePriority in the current netns,
// of both families.
func ourRules() ([]netlink.Rule, error) {
	var out []netlink.Rule
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := netlinksafe.RuleListFiltered(family,
			&netlink.Rule{Priority: SecondaryRulePriority}, netlink.RT_FILTER_PRIORITY)
		if err != nil {
			return nil, fmt.Errorf("list rules: %w", err)
		}
		for i := range rules {
			rules[i].Family = family // RuleDel needs it
		}
		out = append(out, rules...)
	}
	return out, nil
}

// deleteSourceRules removes, in the pod netns, the rule of the interface at
// ifindex (-1: none known) and those left by secondary interfaces that no
// longer exist. Routes in their tables went with their interfaces.
func deleteSourceRules(ifindex int) error {
	rules, err := ourRules()
	if err != nil {
		return err
	}
	for _, r := range rules {
		idx := r.Table - secondaryTableBase
		if idx <= 0 {
			continue // not a table of ours
		}
		if idx != ifindex {
			if _, err := netlink.LinkByIndex(idx); err == nil || !isNoDevice(err) {
				continue // another interface's, alive (or unknown: keep)
			}
		}
		if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete rule from %v lookup %d: %w", r.Src, r.Table, err)
		}
	}
	return nil
}

func isNoDevice(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// secondaryTable reports, in the pod netns, whether the interface at
// ifindex with podIPs is wired as secondary: a source rule of it or any
// route in its table is there.
func secondaryTable(ifindex int, podIPs []netip.Addr) (table int, secondary bool, err error) {
	table = podTable(ifindex)
	rules, err := ourRules()
	if err != nil {
		return table, false, err
	}
	for _, r := range rules {
		if r.Table == table {
			return table, true, nil
		}
		for _, ip := range podIPs {
			if r.Src != nil && r.Src.String() == hostPrefix(ip).String() {
				return table, true, nil
			}
		}
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlinksafe.RouteListFiltered(family, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return table, false, fmt.Errorf("list routes in table %d: %w", table, err)
		}
		if len(routes) > 0 {
			return table, true, nil
		}
	}
	return table, false, nil
}

// checkSourceRule reports, in the pod netns, what is wrong with the source
// rule of a secondary interface.
func checkSourceRule(ifName string, podIP netip.Addr, table int) []string {
	rules, err := ourRules()
	if err != nil {
		return []string{fmt.Sprintf("pod interface %s: %v", ifName, err)}
	}
	var problems []string
	found := false
	for _, r := range rules {
		if r.Family != familyOf(podIP) {
			continue // the other family's rule, checked with its address
		}
		fromUs := r.Src != nil && r.Src.String() == hostPrefix(podIP).String()
		switch {
		case fromUs && r.Table == table:
			found = true
		case fromUs || r.Table == table:
			problems = append(problems, fmt.Sprintf("pod rule from %v lookup %d (priority %d) is not from %s lookup %d", r.Src, r.Table, r.Priority, podIP, table))
		}
	}
	if !found {
		problems = append(problems, fmt.Sprintf("pod rule from %s lookup %d (priority %d, for %s) missing", podIP, table, SecondaryRulePriority, ifName))
	}
	return problems
}
