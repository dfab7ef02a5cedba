package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"
	"time"

	"github.com/nexthop-net/nexthop/config"
)

const bgpdPath = "/usr/lib/frr/bgpd"

// ToR is FRR's bgpd in its own namespace: the top-of-rack router every
// node peers with over eBGP.
type ToR struct {
	NS string
	// Address is its underlay address: IPv4, or IPv6 on an IPv6-only
	// cluster.
	Address netip.Addr
	// AddressV6 is its IPv6 underlay address when the cluster has IPv6.
	AddressV6 netip.Addr
	// Dir holds bgpd.conf, the pid file, the log and the vty socket dir.
	Dir     string
	LogPath string
	proc    *proc
}

// A hold time of 3 s (keepalive 1 s) makes lost sessions show quickly;
// connect retry 1 s brings a restarted node back without a long wait.
//
// With BFD (AddBFDToR) every node session also runs BFD, at FRR's default
// timers (300 ms x 3).
//
// On a cluster with IPv6, the ToR has a second session with every node,
// between the IPv6 addresses, carrying IPv6 unicast only (peer group
// NODES6), as issue 14's design has it; the IPv4 sessions carry IPv4
// unicast only. An IPv6-only cluster has only the NODES6 sessions.
var torConfig = template.Must(template.New("bgpd.conf").Parse(`frr defaults datacenter
hostname {{.Name}}
log stdout informational
router bgp {{.AS}}
 bgp router-id {{.RouterID}}
 no bgp ebgp-requires-policy
{{- range $g := .Groups}}
 neighbor {{$g.Name}} peer-group
 neighbor {{$g.Name}} remote-as {{$.NodeAS}}
 neighbor {{$g.Name}} timers 1 3
 neighbor {{$g.Name}} timers connect 1
{{- range $g.Addrs}}
 neighbor {{.}} peer-group {{$g.Name}}
{{- if $.BFD}}
 neighbor {{.}} bfd
{{- end}}
{{- end}}
{{- end}}
 address-family ipv4 unicast
{{- if .Nodes}}
  neighbor NODES activate
{{- end}}
{{- if .Nodes6}}
  no neighbor NODES6 activate
{{- end}}
 exit-address-family
{{- if .Nodes6}}
 address-family ipv6 unicast
  neighbor NODES6 activate
 exit-address-family
{{- end}}
`))

// startToR creates the ToR namespace and runs bgpd there without zebra
// (-Z: it installs nothing into the ToR's kernel; it only speaks BGP), as
// root (-S) with every path under the cluster dir, in the foreground so
// the harness owns the process.
func (c *Cluster) startToR() error {
	t, err := c.startToRAt("tor", ToRAddress)
	if err != nil {
		return err
	}
	c.ToR = t
	return nil
}

// AddToR starts another FRR ToR (same AS as the first, ToRAS), named name,
// at addr on the underlay, and adds it to every node's peers. Call it
// before the daemons start (or restart them): a second ToR is how a test
// shows what a node does towards each of several RFC 4724 routers. addr
// is IPv4; on a cluster with IPv6 the ToR also gets UnderlayV6(addr)
// (and only that one on an IPv6-only cluster).
func (c *Cluster) AddToR(name string, addr netip.Addr) (*ToR, error) {
	t, err := c.startToRAt(name, addr)
	if err != nil {
		return nil, err
	}
	for _, n := range c.Nodes {
		for _, v6 := range c.Stack.Families() {
			n.Config.Peers = append(n.Config.Peers, config.Peer{
				Address: t.AddressOf(v6), AS: ToRAS, HoldTime: config.Duration{Duration: HoldTime}, Description: name,
			})
		}
	}
	c.log.Logf("cluster %s: FRR ToR %s at %s", c.Prefix, name, t.Address)
	return t, nil
}

// AddressOf is the ToR's underlay address of the family, or the zero Addr.
func (t *ToR) AddressOf(v6 bool) netip.Addr {
	return config.AddressOfFamily(t.Address, t.AddressV6, v6)
}

func (c *Cluster) startToRAt(name string, addr netip.Addr) (*ToR, error) {
	t := &ToR{NS: c.Prefix + name, Address: addr, Dir: filepath.Join(c.Dir, name)}
	t.LogPath = filepath.Join(t.Dir, "bgpd.log")
	if err := c.plugToR(t, name); err != nil {
		return nil, err
	}
	conf := filepath.Join(t.Dir, "bgpd.conf")
	if err := writeTemplate(conf, torConfig, c.torConfigData(t, name, false)); err != nil {
		return nil, err
	}
	if err := c.runBgpd(t, name, conf); err != nil {
		return nil, err
	}
	return t, nil
}

// torConfigData is what torConfig needs: the ToR peers with every node,
// once per family. Its router ID is its IPv4 address, or one derived from
// its name on an IPv6-only cluster (as the nodes derive theirs).
func (c *Cluster) torConfigData(t *ToR, name string, bfd bool) map[string]any {
	var nodes, nodes6 []string
	for _, n := range c.Nodes {
		if a := n.AddressOf(false); a.IsValid() {
			nodes = append(nodes, a.String())
		}
		if n.AddressV6.IsValid() {
			nodes6 = append(nodes6, n.AddressV6.String())
		}
	}
	routerID := t.AddressOf(false)
	if !routerID.IsValid() {
		routerID = config.HashRouterID(name)
	}
	// One peer group per family the nodes have: NODES (IPv4), NODES6.
	var groups []torPeerGroup
	for _, g := range []torPeerGroup{{"NODES", nodes}, {"NODES6", nodes6}} {
		if len(g.Addrs) > 0 {
			groups = append(groups, g)
		}
	}
	return map[string]any{"Name": name, "AS": ToRAS, "RouterID": routerID, "NodeAS": NodeAS, "Nodes": nodes, "Nodes6": nodes6, "Groups": groups, "BFD": bfd}
}

// torPeerGroup is one of the ToR's peer groups of nodes and its members.
type torPeerGroup struct {
	Name  string
	Addrs []string
}

// plugToR makes t's directory and namespace, plugs it into the underlay at
// t.Address, and turns forwarding off. The ToR only speaks BGP here. Were
// it to forward, a node missing a route would still reach pods through
// the ToR via its default route and a broken daemon would pass the ping
// tests.
//
// t.Address comes in as IPv4; on a cluster with IPv6 the ToR gets
// UnderlayV6 of it as well (instead, on an IPv6-only cluster).
func (c *Cluster) plugToR(t *ToR, name string) error {
	if c.Stack.Has(true) && !t.AddressV6.IsValid() {
		t.AddressV6 = UnderlayV6(t.Address)
	}
	if c.Stack == StackIPv6 {
		t.Address = t.AddressV6
	}
	if err := os.MkdirAll(filepath.Join(t.Dir, "vty"), 0o755); err != nil {
		return fmt.Errorf("create %s dir: %w", name, err)
	}
	if err := c.addNS(t.NS); err != nil {
		return err
	}
	if err := c.plugUnderlay(t.NS, name, t.AddressOf(false), t.AddressV6); err != nil {
		return err
	}
	if err := setSysctls(t.NS, "net.ipv4.ip_forward", "0", "net.ipv6.conf.all.forwarding", "0"); err != nil {
		return err
	}
	c.tors = append(c.tors, t)
	return c.pinUnderlayV6()
}

// runBgpd starts FRR's bgpd without zebra (-Z, no kernel routes) in
// t.NS with config conf, and waits until vtysh gets an answer through its
// socket.
func (c *Cluster) runBgpd(t *ToR, name, conf string) error {
	p, err := startProc("bgpd "+name, t.LogPath, "ip", "netns", "exec", t.NS, bgpdPath,
		"-Z", "-S", "-f", conf, "-i", filepath.Join(t.Dir, "bgpd.pid"),
		"--vty_socket", filepath.Join(t.Dir, "vty"), "-A", "127.0.0.1", "-P", "0", "--log", "stdout")
	if err != nil {
		return err
	}
	c.track(p)
	t.proc = p
	err = WaitFor(15*time.Second, 100*time.Millisecond, func() error {
		if done, exitErr := p.exited(); done {
			return Permanent(fmt.Errorf("bgpd exited (%s); log:\n%s", exitString(exitErr), tail(t.LogPath, 20, bgpdNoise)))
		}
		_, err := t.Vtysh("show bgp summary json")
		return err
	})
	if err != nil {
		return fmt.Errorf("start bgpd %s in %s: %w", name, t.NS, err)
	}
	return nil
}

// Vtysh runs one vtysh command against this ToR's bgpd. vtysh talks over
// the unix socket, so it needs no namespace.
func (t *ToR) Vtysh(command string) (string, error) {
	return run("vtysh", "--vty_socket", filepath.Join(t.Dir, "vty"), "-c", command)
}

// RIBPath is one path for a prefix, as FRR or GoBGP shows it.
type RIBPath struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
	Best    bool
	// From is the peer the path was learned from (invalid for local ones).
	From netip.Addr
	// ASPath is the AS path as a string, e.g. "64512".
	ASPath string
}

func (p RIBPath) String() string {
	best := ""
	if p.Best {
		best = " best"
	}
	return fmt.Sprintf("%s via %s from %s path [%s]%s", p.Prefix, p.NextHop, p.From, p.ASPath, best)
}

// frrRIB is the part of `show ip bgp json` we read.
type frrRIB struct {
	Routes map[string][]struct {
		Valid    bool   `json:"valid"`
		Bestpath bool   `json:"bestpath"`
		PeerID   string `json:"peerId"`
		Path     string `json:"path"`
		Nexthops []struct {
			IP string `json:"ip"`
		} `json:"nexthops"`
	} `json:"routes"`
}

// RIB returns FRR's IPv4 unicast table (`show ip bgp json`), sorted.
func (t *ToR) RIB() ([]RIBPath, error) { return t.RIBOf(false) }

// RIBOf returns FRR's unicast table of the family (`show ip bgp json`,
// `show bgp ipv6 unicast json`), sorted. An IPv6 path's next hop is its
// global one (FRR also lists the link-local one it received).
func (t *ToR) RIBOf(v6 bool) ([]RIBPath, error) {
	cmd := "show ip bgp json"
	if v6 {
		cmd = "show bgp ipv6 unicast json"
	}
	out, err := t.Vtysh(cmd)
	if err != nil {
		return nil, err
	}
	var rib frrRIB
	if err := json.Unmarshal([]byte(out), &rib); err != nil {
		return nil, fmt.Errorf("parse FRR %s: %w: %.200s", cmd, err, out)
	}
	var paths []RIBPath
	for pfx, ps := range rib.Routes {
		prefix, err := netip.ParsePrefix(pfx)
		if err != nil {
			return nil, fmt.Errorf("parse FRR prefix %q: %w", pfx, err)
		}
		for _, p := range ps {
			rp := RIBPath{Prefix: prefix, Best: p.Bestpath, ASPath: p.Path}
			// FRR names the peer of its own paths "::" in IPv6 tables.
			if from, err := netip.ParseAddr(p.PeerID); err == nil && !from.IsUnspecified() {
				rp.From = from
			}
			for _, nh := range p.Nexthops {
				if a, err := netip.ParseAddr(nh.IP); err == nil && !a.IsLinkLocalUnicast() {
					rp.NextHop = a
					break
				}
			}
			paths = append(paths, rp)
		}
	}
	sortPaths(paths)
	return paths, nil
}

// Established lists the peers FRR has an established session with, in
// every family it speaks.
func (t *ToR) Established() ([]netip.Addr, error) {
	peers, err := t.Peers()
	if err != nil {
		return nil, err
	}
	var up []netip.Addr
	for a, p := range peers {
		if p.State == "Established" {
			up = append(up, a)
		}
	}
	sort.Slice(up, func(i, j int) bool { return up[i].Less(up[j]) })
	return up, nil
}

// FRRPeer is one neighbour in FRR's `show bgp ... summary json`.
type FRRPeer struct {
	State                  string `json:"state"`
	ConnectionsEstablished int    `json:"connectionsEstablished"`
	ConnectionsDropped     int    `json:"connectionsDropped"`
}

// Peers is FRR's summary of each neighbour, over the families the ToR
// speaks: IPv4 unicast for IPv4 neighbours, IPv6 unicast for IPv6 ones.
func (t *ToR) Peers() (map[netip.Addr]FRRPeer, error) {
	fams := []bool{false}
	switch {
	case t.Address.Is6():
		fams = []bool{true}
	case t.AddressV6.IsValid():
		fams = []bool{false, true}
	}
	m := map[netip.Addr]FRRPeer{}
	for _, v6 := range fams {
		cmd := "show bgp ipv4 unicast summary json"
		if v6 {
			cmd = "show bgp ipv6 unicast summary json"
		}
		out, err := t.Vtysh(cmd)
		if err != nil {
			return nil, err
		}
		var sum struct {
			Peers map[string]FRRPeer `json:"peers"`
		}
		if err := json.Unmarshal([]byte(out), &sum); err != nil {
			return nil, fmt.Errorf("parse FRR %s: %w: %.200s", cmd, err, out)
		}
		for a, p := range sum.Peers {
			if ip, err := netip.ParseAddr(a); err == nil && ip.Is6() == v6 {
				m[ip] = p
			}
		}
	}
	return m, nil
}

func sortPaths(paths []RIBPath) {
	sort.Slice(paths, func(i, j int) bool {
		a, b := paths[i], paths[j]
		if a.Prefix != b.Prefix {
			if a.Prefix.Addr() != b.Prefix.Addr() {
				return a.Prefix.Addr().Less(b.Prefix.Addr())
			}
			return a.Prefix.Bits() < b.Prefix.Bits()
		}
		return a.From.Less(b.From)
	})
}

// FormatPaths renders paths one per line, for logs and the demo.
func FormatPaths(paths []RIBPath) string {
	var b strings.Builder
	for _, p := range paths {
		b.WriteString("  " + p.String() + "\n")
	}
	if len(paths) == 0 {
		b.WriteString("  (empty)\n")
	}
	return b.String()
}

// Configure enters lines into the running bgpd's configuration, as an
// operator would after `vtysh` → `configure terminal`: one command per
// line, in order, so "router bgp 65000" selects that context for the lines
// after it. The change is live (nothing is written to bgpd.conf); the
// error carries vtysh's complaint if a line is refused.
func (t *ToR) Configure(lines ...string) error {
	args := []string{"vtysh", "--vty_socket", filepath.Join(t.Dir, "vty"), "-c", "configure terminal"}
	for _, l := range lines {
		args = append(args, "-c", l)
	}
	out, err := run(args...)
	if err != nil {
		return fmt.Errorf("configure FRR: %w", err)
	}
	// vtysh does not fail on every refused line; it prints why.
	if strings.Contains(out, "% ") {
		return fmt.Errorf("configure FRR %q: %s", lines, strings.TrimSpace(out))
	}
	return nil
}

// Announce makes the ToR originate prefixes towards every node. bgpd runs
// without zebra, so there is no RIB to check them against: `network` with
// import-check off announces them as they are (next hop: the ToR itself).
// IPv6 prefixes go out over the IPv6 sessions.
func (t *ToR) Announce(prefixes ...netip.Prefix) error {
	return t.Configure(networkLines(true, prefixes)...)
}

// Withdraw stops originating prefixes announced by Announce.
func (t *ToR) Withdraw(prefixes ...netip.Prefix) error {
	return t.Configure(networkLines(false, prefixes)...)
}

// networkLines are the vtysh lines that add (or remove) `network`
// statements, each in the address family of its prefix.
func networkLines(add bool, prefixes []netip.Prefix) []string {
	lines := []string{fmt.Sprintf("router bgp %d", ToRAS)}
	if add {
		lines = append(lines, "no bgp network import-check")
	}
	for _, v6 := range []bool{false, true} {
		af := "address-family ipv4 unicast"
		if v6 {
			af = "address-family ipv6 unicast"
		}
		started := false
		for _, p := range prefixes {
			if p.Addr().Is6() != v6 {
				continue
			}
			if !started {
				lines = append(lines, af)
				started = true
			}
			if add {
				lines = append(lines, "network "+p.String())
			} else {
				lines = append(lines, "no network "+p.String())
			}
		}
		if started {
			lines = append(lines, "exit-address-family")
		}
	}
	return lines
}

// SetPassword sets the TCP MD5 password (RFC 2385) FRR uses with one node;
// "" removes it. FRR resets the session.
func (t *ToR) SetPassword(node netip.Addr, password string) error {
	line := fmt.Sprintf("neighbor %s password %s", node, password)
	if password == "" {
		line = fmt.Sprintf("no neighbor %s password", node)
	}
	return t.Configure(fmt.Sprintf("router bgp %d", ToRAS), line)
}
