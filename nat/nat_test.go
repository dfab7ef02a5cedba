package nat

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
)

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// node1 is what daemon/nat.go asks for on e2e's node1.
var node1 = Rules{
	Enabled: true,
	Sources: pfx("10.244.1.0/24"),
	Exclude: pfx("10.244.0.0/16", "10.244.1.0/24", "10.96.0.0/12"),
}

// spanCase is a list of prefixes and the spans they fold into, written
// out as spanStrings does.
type spanCase struct {
	in   []string
	want string
}

// checkSpans folds each case's prefixes in family f and checks that what
// we write reads back the same.
func checkSpans(t *testing.T, f family, cases []spanCase) {
	t.Helper()
	for _, c := range cases {
		ss, err := spans(f, pfx(c.in...))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(spanStrings(ss), " "); got != c.want {
			t.Errorf("spans(%v) = %q, want %q", c.in, got, c.want)
		}
		// What we write must read back the same, in any order.
		es := toElements(f, ss)
		slices.Reverse(es)
		back, err := fromElements(f, es)
		if err != nil || !slices.Equal(back, ss) {
			t.Errorf("elements of %v read back as %v (%v)", c.in, spanStrings(back), err)
		}
	}
}

func TestSpans(t *testing.T) {
	checkSpans(t, ipv4, []spanCase{
		{nil, ""},
		{[]string{"10.244.0.0/16", "10.244.1.0/24"}, "10.244.0.0/16"},
		{[]string{"10.245.0.0/16", "10.244.0.0/16"}, "10.244.0.0/15"},
		{[]string{"10.246.0.0/16", "10.245.0.0/16", "10.244.0.0/16"}, "10.244.0.0-10.246.255.255"},
		{[]string{"10.96.0.0/12", "10.244.0.0/16", "192.0.2.7/24"}, "10.96.0.0/12 10.244.0.0/16 192.0.2.0/24"},
		{[]string{"255.255.255.255/32", "128.0.0.0/1"}, "128.0.0.0/1"},
		{[]string{"0.0.0.0/0", "10.0.0.0/8"}, "0.0.0.0/0"},
	})
	if _, err := spans(ipv4, pfx("2001:db8::/32")); err == nil {
		t.Error("an IPv6 prefix was accepted")
	}
	if _, err := fromElements(ipv4, []nftables.SetElement{{Key: []byte{10, 0, 0, 0}}, {Key: []byte{11, 0, 0, 0}}}); err == nil {
		t.Error("two starts without an end were accepted")
	}
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNS creates namespaces nhn-<hex>-<name> (removed after the test) and
// returns their names.
func newNS(t *testing.T, names ...string) []string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	b := make([]byte, 3)
	rand.Read(b)
	var out []string
	for _, n := range names {
		ns := "nhn-" + hex.EncodeToString(b) + "-" + n
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
		out = append(out, ns)
	}
	return out
}

func manager(t *testing.T, ns string) *Manager {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close() // New keeps its own copy
	m, err := New(h, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func mustSync(t *testing.T, m *Manager, r Rules) {
	t.Helper()
	if err := m.Sync(context.Background(), r); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if d, err := m.Check(r); err != nil || len(d) > 0 {
		t.Fatalf("after Sync the kernel still differs: %v (%v)", d, err)
	}
}

func readState(t *testing.T, m *Manager) *state {
	t.Helper()
	st, err := m.read(ipv4)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestSyncCreatesTable(t *testing.T) {
	ns := newNS(t, "node")[0]
	m := manager(t, ns)
	if d, err := m.Check(node1); err != nil || !slices.Equal(d, []string{"table ip nexthop-nat missing"}) {
		t.Fatalf("Check before Sync: %v %v", d, err)
	}
	mustSync(t, m, node1)
	st := readState(t, m)
	if !st.exists || len(st.chains) != 1 || len(st.sets) != 2 || len(st.rules) != 1 {
		t.Fatalf("table: exists %v, %d chains, %d sets, %d rules; want 1 chain, 2 sets, 1 rule", st.exists, len(st.chains), len(st.sets), len(st.rules))
	}
	c := st.chains[0]
	if c.Name != Chain || c.Type != nftables.ChainTypeNAT || *c.Hooknum != *nftables.ChainHookPostrouting || *c.Priority != 100 {
		t.Errorf("chain %s type %s hook %d priority %d: want postrouting nat hook postrouting priority srcnat", c.Name, c.Type, *c.Hooknum, *c.Priority)
	}
	if got := strings.Join(spanStrings(st.elems[PodsSet]), " "); got != "10.244.1.0/24" {
		t.Errorf("set pods = %q", got)
	}
	if got := strings.Join(spanStrings(st.elems[ExcludedSet]), " "); got != "10.96.0.0/12 10.244.0.0/16" {
		t.Errorf("set excluded = %q", got)
	}
	r := st.rules[0]
	var lookups []string
	masq := false
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Lookup:
			lookups = append(lookups, map[bool]string{false: "@", true: "!= @"}[e.Invert]+e.SetName)
		case *expr.Masq:
			masq = true
		}
	}
	if !slices.Equal(lookups, []string{"@pods", "!= @excluded"}) || !masq {
		t.Errorf("rule: lookups %v masquerade %v; want ip saddr @pods ip daddr != @excluded masquerade", lookups, masq)
	}
}

func TestSyncTwiceWritesNothing(t *testing.T) {
	ns := newNS(t, "node")[0]
	m := manager(t, ns)
	mustSync(t, m, node1)
	handle := readState(t, m).rules[0].Handle
	mustSync(t, m, node1)
	// A second Manager (a restarted daemon) finds nothing to do either.
	m2 := manager(t, ns)
	mustSync(t, m2, node1)
	if m.writes != 1 || m2.writes != 0 {
		t.Errorf("write batches: first manager %d (want 1), restarted %d (want 0)", m.writes, m2.writes)
	}
	if h := readState(t, m).rules[0].Handle; h != handle {
		t.Errorf("rule handle changed %d → %d: the rule was rewritten", handle, h)
	}
}

func TestAddressChangeRefillsSetsOnly(t *testing.T) {
	ns := newNS(t, "node")[0]
	m := manager(t, ns)
	mustSync(t, m, node1)
	handle := readState(t, m).rules[0].Handle
	r := node1
	r.Exclude = append(r.Exclude, pfx("10.245.0.0/16", "10.245.7.0/24")...) // adjacent and overlapping
	mustSync(t, m, r)
	if got := strings.Join(spanStrings(readState(t, m).elems[ExcludedSet]), " "); got != "10.96.0.0/12 10.244.0.0/15" {
		t.Errorf("set excluded = %q", got)
	}
	r.Exclude = pfx("10.244.0.0/16", "10.245.0.0/16", "172.16.0.0/12")
	mustSync(t, m, r)
	st := readState(t, m)
	if m.last != "refill" || st.rules[0].Handle != handle {
		t.Errorf("an address change did %q (rule handle %d → %d), want only a refill of the sets", m.last, handle, st.rules[0].Handle)
	}
	if got := strings.Join(spanStrings(st.elems[ExcludedSet]), " "); got != "10.244.0.0/15 172.16.0.0/12" {
		t.Errorf("set excluded = %q", got)
	}
	r.Exclude = nil // an empty set: everything outside the pods is translated
	mustSync(t, m, r)
	if n := len(readState(t, m).elems[ExcludedSet]); n != 0 {
		t.Errorf("set excluded has %d ranges, want none", n)
	}
}

// conn returns a raw nftables connection in ns, to change things behind
// the Manager's back as an admin with nft would.
func conn(t *testing.T, ns string) *nftables.Conn {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func flush(t *testing.T, c *nftables.Conn) {
	t.Helper()
	if err := c.Flush(); err != nil {
		t.Fatalf("tamper: %v", err)
	}
}

func TestDriftRepaired(t *testing.T) {
	ns := newNS(t, "node")[0]
	m := manager(t, ns)
	c := conn(t, ns)
	tbl := table()
	chain := &nftables.Chain{Table: tbl, Name: Chain}
	pods := &nftables.Set{Table: tbl, Name: PodsSet, KeyType: nftables.TypeIPAddr, Interval: true}
	excl := &nftables.Set{Table: tbl, Name: ExcludedSet, KeyType: nftables.TypeIPAddr, Interval: true}
	for _, d := range []struct {
		name   string
		tamper func()
		// repair is what Sync must do: "rebuild" the table, or only
		// "refill" the sets.
		repair string
	}{
		{"table deleted", func() { c.DelTable(tbl) }, "create"},
		{"rule deleted", func() {
			rs, err := c.GetRules(tbl, chain)
			if err != nil || len(rs) != 1 {
				t.Fatalf("rules: %v %v", rs, err)
			}
			if err := c.DelRule(rs[0]); err != nil {
				t.Fatal(err)
			}
		}, "rebuild"},
		{"rule inserted before ours", func() {
			c.InsertRule(&nftables.Rule{Table: tbl, Chain: chain, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}})
		}, "rebuild"},
		{"rule replaced", func() {
			rs, err := c.GetRules(tbl, chain)
			if err != nil || len(rs) != 1 {
				t.Fatalf("rules: %v %v", rs, err)
			}
			c.ReplaceRule(&nftables.Rule{Table: tbl, Chain: chain, Handle: rs[0].Handle, UserData: rs[0].UserData,
				Exprs: []expr.Any{&expr.Counter{}, &expr.Masq{}}}) // masquerade everything
		}, "rebuild"},
		{"chain policy drop", func() {
			c.AddChain(&nftables.Chain{Table: tbl, Name: Chain, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting,
				Priority: nftables.ChainPriorityNATSource, Policy: ptr(nftables.ChainPolicyDrop)})
		}, "rebuild"},
		{"chain flushed", func() { c.FlushChain(chain) }, "rebuild"},
		{"extra chain", func() { c.AddChain(&nftables.Chain{Table: tbl, Name: "mine"}) }, "rebuild"},
		{"pods set emptied", func() { c.FlushSet(pods) }, "refill"},
		{"foreign element in excluded", func() {
			if err := c.SetAddElements(excl, []nftables.SetElement{{Key: []byte{203, 0, 113, 0}}, {Key: []byte{203, 0, 114, 0}, IntervalEnd: true}}); err != nil {
				t.Fatal(err)
			}
		}, "refill"},
		{"excluded range removed", func() {
			if err := c.SetDeleteElements(excl, []nftables.SetElement{{Key: []byte{10, 96, 0, 0}}, {Key: []byte{10, 112, 0, 0}, IntervalEnd: true}}); err != nil {
				t.Fatal(err)
			}
		}, "refill"},
	} {
		t.Run(strings.ReplaceAll(d.name, " ", "_"), func(t *testing.T) {
			mustSync(t, m, node1)
			d.tamper()
			flush(t, c)
			diffs, err := m.Check(node1)
			if err != nil || len(diffs) == 0 {
				t.Fatalf("Check saw no drift after %q: %v", d.name, err)
			}
			t.Logf("drift seen: %v", diffs)
			mustSync(t, m, node1)
			if m.last != d.repair {
				t.Errorf("Sync did %q, want %q", m.last, d.repair)
			}
		})
	}
}

// otherTables adds what other software keeps in the same kernel: an ip
// nat table with its own postrouting chain, and a table with our name in
// another family.
func otherTables(t *testing.T, c *nftables.Conn) {
	t.Helper()
	for _, tb := range []*nftables.Table{
		{Name: "nat", Family: nftables.TableFamilyIPv4},
		{Name: Table, Family: nftables.TableFamilyINet},
	} {
		c.AddTable(tb)
		ch := c.AddChain(&nftables.Chain{Table: tb, Name: "POSTROUTING", Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
		c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{&expr.Counter{}}})
	}
	flush(t, c)
}

func listOthers(t *testing.T, c *nftables.Conn) string {
	t.Helper()
	ts, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, tb := range ts {
		if tb.Name == Table && tb.Family == nftables.TableFamilyIPv4 {
			continue
		}
		chains, err := c.ListChains()
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range chains {
			if ch.Table.Name != tb.Name || ch.Table.Family != tb.Family {
				continue
			}
			rs, err := c.GetRules(tb, ch)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, tb.Name+"/"+ch.Name+"/"+string(rune('0'+len(rs))))
		}
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

func TestRemoveLeavesOtherTables(t *testing.T) {
	ns := newNS(t, "node")[0]
	m := manager(t, ns)
	c := conn(t, ns)
	otherTables(t, c)
	before := listOthers(t, c)
	if before != "nat/POSTROUTING/1 nexthop-nat/POSTROUTING/1" {
		t.Fatalf("test setup: other tables %q", before)
	}
	mustSync(t, m, node1)
	for i := 0; i < 2; i++ { // Remove is idempotent
		if err := m.Remove(context.Background()); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
	if st := readState(t, m); st.exists {
		t.Error("table ip nexthop-nat still there after Remove")
	}
	if after := listOthers(t, c); after != before {
		t.Errorf("other tables changed: %q → %q", before, after)
	}
	// Disabled rules mean the same as Remove.
	mustSync(t, m, node1)
	mustSync(t, m, Rules{})
	if st := readState(t, m); st.exists {
		t.Error("Sync with Enabled false left the table")
	}
	if after := listOthers(t, c); after != before {
		t.Errorf("other tables changed: %q → %q", before, after)
	}
}

// masqNet is one family's side of checkMasquerades: a pod namespace
// behind a node namespace, and a "server" namespace holding an outside
// address and a pod address of another node.
type masqNet struct {
	fam   family
	rules Rules
	// setup is run in the namespaces once the veths vp/eth0 (node/pod)
	// and ul0 (node/srv) exist, one command a line: the namespace, then
	// the command.
	setup func(node, pod, srv string) [][]string
	// pod is the pod's address, otherPod another node's pod (on srv),
	// outside an address outside the cluster (on srv).
	pod, otherPod, outside string
}

// checkMasquerades sends real traffic through n's namespaces. Only the
// first packet of a flow passes nat chains, so the rule's counter counts
// translated flows: only pod → outside may be translated.
func checkMasquerades(t *testing.T, n masqNet) {
	t.Helper()
	names := newNS(t, "node", "pod", "srv")
	node, pod, srv := names[0], names[1], names[2]
	run(t, "ip", "link", "add", "vp", "netns", node, "type", "veth", "peer", "name", "eth0", "netns", pod)
	run(t, "ip", "link", "add", "ul0", "netns", node, "type", "veth", "peer", "name", "ul0", "netns", srv)
	for _, c := range n.setup(node, pod, srv) {
		run(t, append([]string{"ip", "netns", "exec"}, c...)...)
	}
	m := manager(t, node)
	mustSync(t, m, n.rules)
	counter := func() uint64 {
		st, err := m.read(n.fam)
		if err != nil || len(st.rules) != 1 {
			t.Fatalf("%s table: %v", n.fam.name, err)
		}
		for _, e := range st.rules[0].Exprs {
			if c, ok := e.(*expr.Counter); ok {
				return c.Packets
			}
		}
		t.Fatalf("no counter in the %s rule", n.fam.name)
		return 0
	}
	ping := func(ns string, args ...string) {
		t.Helper()
		cmd := []string{"ip", "netns", "exec", ns, "ping"}
		if n.fam.v6 {
			cmd = append(cmd, "-6")
		}
		run(t, append(cmd, args...)...)
	}
	ping(pod, "-n", "-c", "2", "-i", "0.2", "-W", "2", n.otherPod) // another node's pod: excluded
	if n := counter(); n != 0 {
		t.Errorf("pod → pod translated: counter %d, want 0", n)
	}
	ping(srv, "-n", "-c", "1", "-W", "2", n.pod) // outside → pod
	if n := counter(); n != 0 {
		t.Errorf("connection into the pod translated: counter %d, want 0", n)
	}
	ping(pod, "-n", "-c", "2", "-i", "0.2", "-W", "2", n.outside) // the outside
	if n := counter(); n != 1 {
		t.Errorf("pod → outside: counter %d, want 1 translated flow", n)
	}
}

func TestMasqueradesOnlyOutside(t *testing.T) {
	checkMasquerades(t, masqNet{fam: ipv4, rules: node1,
		pod: "10.244.1.2", otherPod: "10.244.2.2", outside: "203.0.113.10",
		setup: func(node, pod, srv string) [][]string {
			return [][]string{
				{node, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
				{node, "ip", "addr", "add", "10.244.1.1/24", "dev", "vp"},
				{node, "ip", "addr", "add", "192.0.2.11/24", "dev", "ul0"},
				{node, "ip", "link", "set", "vp", "up"},
				{node, "ip", "link", "set", "ul0", "up"},
				{node, "ip", "route", "add", "default", "via", "192.0.2.99"},
				{pod, "ip", "addr", "add", "10.244.1.2/24", "dev", "eth0"},
				{pod, "ip", "link", "set", "eth0", "up"},
				{pod, "ip", "route", "add", "default", "via", "10.244.1.1"},
				{srv, "ip", "addr", "add", "192.0.2.99/24", "dev", "ul0"},
				{srv, "ip", "addr", "add", "203.0.113.10/32", "dev", "lo"},
				{srv, "ip", "addr", "add", "10.244.2.2/32", "dev", "lo"},
				{srv, "ip", "link", "set", "ul0", "up"},
				// Untranslated replies find their way back too: the counter, not
				// reachability, tells translated from not.
				{srv, "ip", "route", "add", "10.244.1.0/24", "via", "192.0.2.11"},
			}
		}})
}
