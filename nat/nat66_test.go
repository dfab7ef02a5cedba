package nat

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// dual is what daemon/nat.go asks for on a dual-stack node with both
// natOutgoing and natOutgoingV6 on.
var dual = Rules{
	Enabled: true,
	Sources: pfx("10.244.1.0/24", "fd00:10:244:1::/64"),
	Exclude: pfx("10.244.1.0/24", "fd00:10:244:1::/64", "10.244.0.0/16", "fd00:10:244::/56", "10.96.0.0/12", "fd00:96::/108"),
}

func TestSpansIPv6(t *testing.T) {
	checkSpans(t, ipv6, []spanCase{
		{[]string{"fd00:10:244::/56", "fd00:10:244:1::/64"}, "fd00:10:244::/56"},
		{[]string{"fd00:10:245::/48", "fd00:10:244::/48"}, "fd00:10:244::/47"},
		{[]string{"fd00:96::/108", "fd00:10:244::/56", "2001:db8::7/32"}, "2001:db8::/32 fd00:10:244::/56 fd00:96::/108"},
		{[]string{"ffff::/16", "fff0::/12"}, "fff0::/12"},
		{[]string{"::/0", "fd00::/8"}, "::/0"},
	})
	if _, err := spans(ipv6, pfx("10.0.0.0/8")); err == nil {
		t.Error("an IPv4 prefix was accepted in the IPv6 table")
	}
}

// nftList is `nft list table <family> nexthop-nat` in ns, as an admin
// would check, or "" when there is no such table.
func nftList(t *testing.T, ns, family string) string {
	t.Helper()
	out, err := runErr("ip", "netns", "exec", ns, "nft", "list", "table", family, Table)
	if err != nil {
		return ""
	}
	// One line per statement: nft wraps long element lists.
	return strings.Join(strings.Fields(out), " ")
}

func TestNAT66Table(t *testing.T) {
	ns := newNS(t, "node")[0]
	m := manager(t, ns)
	mustSync(t, m, dual)
	if m.last != "create,create" {
		t.Errorf("first Sync did %q, want a create of each table", m.last)
	}
	v6 := nftList(t, ns, "ip6")
	for _, want := range []string{
		"type ipv6_addr flags interval",
		"elements = { fd00:10:244:1::/64 }",
		"elements = { fd00:10:244::/56, fd00:96::/108 }",
		"type nat hook postrouting priority srcnat; policy accept;",
		"ip6 saddr @pods ip6 daddr != @excluded counter packets 0 bytes 0 masquerade",
	} {
		if !strings.Contains(v6, want) {
			t.Errorf("table ip6 %s lacks %q:\n%s", Table, want, v6)
		}
	}
	v4 := nftList(t, ns, "ip")
	if !strings.Contains(v4, "ip saddr @pods ip daddr != @excluded counter") || strings.Contains(v4, "fd00") {
		t.Errorf("table ip %s:\n%s", Table, v4)
	}
	handle4 := readState(t, m).rules[0].Handle

	// Nothing to do the second time, nor for a restarted daemon.
	w := m.writes
	mustSync(t, m, dual)
	mustSync(t, manager(t, ns), dual)
	if m.writes != w || m.last != "" {
		t.Errorf("second Sync wrote %d batches (%q), want none", m.writes-w, m.last)
	}

	// Drift in the IPv6 table is repaired there alone.
	c := conn(t, ns)
	t6 := ipv6.table()
	rs, err := c.GetRules(t6, &nftables.Chain{Table: t6, Name: Chain})
	if err != nil || len(rs) != 1 {
		t.Fatalf("ip6 rules: %v %v", rs, err)
	}
	c.ReplaceRule(&nftables.Rule{Table: t6, Chain: &nftables.Chain{Table: t6, Name: Chain}, Handle: rs[0].Handle,
		UserData: rs[0].UserData, Exprs: []expr.Any{&expr.Counter{}, &expr.Masq{}}})
	flush(t, c)
	if d, _ := m.Check(dual); len(d) == 0 || !strings.HasPrefix(d[0], "ip6 "+Table+": ") {
		t.Errorf("Check after tampering with the ip6 rule: %q", d)
	}
	mustSync(t, m, dual)
	if m.last != "rebuild" || readState(t, m).rules[0].Handle != handle4 {
		t.Errorf("repair did %q; the IPv4 rule must stay as it was", m.last)
	}

	// natOutgoingV6 turned off: the IPv6 table goes, the IPv4 one stays.
	v4only := Rules{Enabled: true, Sources: pfx("10.244.1.0/24"), Exclude: dual.Exclude}
	mustSync(t, m, v4only)
	if m.last != "remove" || nftList(t, ns, "ip6") != "" {
		t.Errorf("IPv6 NAT off: Sync did %q, ip6 table:\n%s", m.last, nftList(t, ns, "ip6"))
	}
	if readState(t, m).rules[0].Handle != handle4 {
		t.Error("the IPv4 rule was rewritten when IPv6 NAT went off")
	}
	// Only IPv6 NAT: the IPv4 table goes.
	v6only := Rules{Enabled: true, Sources: pfx("fd00:10:244:1::/64"), Exclude: dual.Exclude}
	mustSync(t, m, v6only)
	if nftList(t, ns, "ip") != "" || nftList(t, ns, "ip6") == "" {
		t.Errorf("IPv6 NAT only: ip table %q, ip6 table %q", nftList(t, ns, "ip"), nftList(t, ns, "ip6"))
	}
	// Remove, as uninstall does, takes both.
	mustSync(t, m, dual)
	if d, err := m.Check(Rules{}); err != nil || !slices.Equal(d, []string{"table ip " + Table + " present", "table ip6 " + Table + " present"}) {
		t.Errorf("Check(off) = %q, %v", d, err)
	}
	if err := m.Remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	if nftList(t, ns, "ip") != "" || nftList(t, ns, "ip6") != "" {
		t.Error("Remove left a table")
	}
}

// TestMasquerades66 sends real IPv6 traffic, as TestMasqueradesOnlyOutside
// does for IPv4: only pod → outside is translated.
func TestMasquerades66(t *testing.T) {
	checkMasquerades(t, masqNet{fam: ipv6, rules: dual,
		pod: "fd00:10:244:1::2", otherPod: "fd00:10:244:2::2", outside: "fd00:203::10",
		setup: func(node, pod, srv string) [][]string {
			return [][]string{
				{node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
				{node, "ip", "addr", "add", "fd00:10:244:1::1/64", "dev", "vp", "nodad"},
				{node, "ip", "addr", "add", "fd00:192::11/64", "dev", "ul0", "nodad"},
				{node, "ip", "link", "set", "vp", "up"},
				{node, "ip", "link", "set", "ul0", "up"},
				{node, "ip", "-6", "route", "add", "default", "via", "fd00:192::99"},
				{pod, "ip", "addr", "add", "fd00:10:244:1::2/64", "dev", "eth0", "nodad"},
				{pod, "ip", "link", "set", "eth0", "up"},
				{pod, "ip", "-6", "route", "add", "default", "via", "fd00:10:244:1::1"},
				{srv, "ip", "addr", "add", "fd00:192::99/64", "dev", "ul0", "nodad"},
				{srv, "ip", "addr", "add", "fd00:203::10/128", "dev", "lo"},
				{srv, "ip", "addr", "add", "fd00:10:244:2::2/128", "dev", "lo"},
				{srv, "ip", "link", "set", "ul0", "up"},
				{srv, "ip", "-6", "route", "add", "fd00:10:244:1::/64", "via", "fd00:192::11"},
			}
		}})
}

func runErr(args ...string) (string, error) {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	return string(out), err
}
