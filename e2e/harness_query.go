package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// RouteProtocol is the kernel route protocol nexthopd tags its routes with
// (`proto 201`), so it only ever touches its own.
const RouteProtocol = 201

// Route is one kernel route, reduced to what the tests compare.
type Route struct {
	Dst netip.Prefix
	// Type is "unicast", "blackhole", "unreachable", ...
	Type string
	// Gateways has one entry per next hop (more than one for multipath).
	Gateways []netip.Addr
	Dev      string
}

func (r Route) String() string {
	if r.Type != "unicast" {
		return r.Type + " " + r.Dst.String()
	}
	var gws []string
	for _, g := range r.Gateways {
		gws = append(gws, g.String())
	}
	s := r.Dst.String()
	if len(gws) > 0 {
		s += " via " + strings.Join(gws, ",")
	}
	if r.Dev != "" {
		s += " dev " + r.Dev
	}
	return s
}

// ipRoute is one element of `ip -j route show`.
type ipRoute struct {
	Type     string `json:"type"`
	Dst      string `json:"dst"`
	Gateway  string `json:"gateway"`
	Dev      string `json:"dev"`
	Nexthops []struct {
		Gateway string `json:"gateway"`
		Dev     string `json:"dev"`
	} `json:"nexthops"`
}

// Routes lists the main-table IPv4 routes of namespace ns with the given
// protocol number, sorted by destination.
func Routes(ns string, proto int) ([]Route, error) { return RoutesOf(ns, proto, false) }

// RoutesOf lists the main-table routes of the family (IPv4, or IPv6 when
// v6) of namespace ns with the given protocol number, sorted.
func RoutesOf(ns string, proto int, v6 bool) ([]Route, error) {
	fam, defaultDst, host := "-4", "0.0.0.0/0", "/32"
	if v6 {
		fam, defaultDst, host = "-6", "::/0", "/128"
	}
	out, err := run("ip", "-n", ns, "-j", fam, "route", "show", "table", "main", "proto", fmt.Sprint(proto))
	if err != nil {
		return nil, fmt.Errorf("list routes in %s: %w", ns, err)
	}
	var raw []ipRoute
	if strings.TrimSpace(out) != "" {
		if err := json.Unmarshal([]byte(out), &raw); err != nil {
			return nil, fmt.Errorf("parse routes of %s: %w: %.200s", ns, err, out)
		}
	}
	routes := make([]Route, 0, len(raw))
	for _, r := range raw {
		rt := Route{Type: r.Type, Dev: r.Dev}
		if rt.Type == "" {
			rt.Type = "unicast"
		}
		dst := r.Dst
		if dst == "default" {
			dst = defaultDst
		} else if !strings.Contains(dst, "/") {
			dst += host
		}
		if rt.Dst, err = netip.ParsePrefix(dst); err != nil {
			return nil, fmt.Errorf("parse route dst %q in %s: %w", r.Dst, ns, err)
		}
		if gw, err := netip.ParseAddr(r.Gateway); err == nil {
			rt.Gateways = append(rt.Gateways, gw)
		}
		for _, nh := range r.Nexthops {
			if gw, err := netip.ParseAddr(nh.Gateway); err == nil {
				rt.Gateways = append(rt.Gateways, gw)
			}
			if rt.Dev == "" {
				rt.Dev = nh.Dev
			}
		}
		routes = append(routes, rt)
	}
	sort.Slice(routes, func(i, j int) bool { return routes[i].String() < routes[j].String() })
	return routes, nil
}

// NexthopRoutes lists n's kernel routes owned by nexthopd (proto 201):
// the IPv4 ones and, on a cluster with IPv6, the IPv6 ones too (so an
// IPv6-only node's stray IPv4 route shows as well).
func (c *Cluster) NexthopRoutes(n *Node) ([]Route, error) {
	routes, err := Routes(n.NS, RouteProtocol)
	if err != nil || !c.Stack.Has(true) {
		return routes, err
	}
	v6, err := RoutesOf(n.NS, RouteProtocol, true)
	return append(routes, v6...), err
}

// Ping sends count pings from pod p to dst and fails unless replies came.
// iputils ping speaks ICMPv6 to an IPv6 dst (ping6 is the same program).
func Ping(p *Pod, dst netip.Addr, count int) error {
	out, err := Exec(p.NS, "ping", "-n", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "2", dst.String())
	if err != nil {
		return fmt.Errorf("ping %s from %s (%s): %w\n%s", dst, p.Name, p.IP, err, out)
	}
	return nil
}

// Capture is a tcpdump running on the underlay bridge.
type Capture struct {
	file string
	proc *proc
}

// StartCapture runs tcpdump on the underlay bridge with a pcap filter and
// returns once it is listening. tcpdump puts br0 in promiscuous mode, so
// it also sees unicast frames the bridge forwards between node ports.
func (c *Cluster) StartCapture(name, filter string) (*Capture, error) {
	return c.StartCaptureIn(c.Underlay, bridgeName, name, filter)
}

// StartCaptureIn runs tcpdump on interface iface of namespace ns (a pod's
// eth0, say: what the receiver itself sees) and returns once it listens.
func (c *Cluster) StartCaptureIn(ns, iface, name, filter string) (*Capture, error) {
	file := filepath.Join(c.Dir, name+".pcap")
	logPath := filepath.Join(c.Dir, name+".tcpdump.log")
	// -Z root: tcpdump would otherwise drop to its own user and could not
	// write into the root-owned cluster dir. -U and --immediate-mode: hand
	// each packet to the file at once, so Stop right after a ping loses none.
	argv := []string{"ip", "netns", "exec", ns, "tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-Z", "root", "-w", file}
	if filter != "" {
		argv = append(argv, filter)
	}
	p, err := startProc("tcpdump "+name, logPath, argv...)
	if err != nil {
		return nil, err
	}
	c.track(p)
	err = WaitFor(10*time.Second, 50*time.Millisecond, func() error {
		if done, exitErr := p.exited(); done {
			return Permanent(fmt.Errorf("tcpdump exited (%s): %s", exitString(exitErr), tail(logPath, 5)))
		}
		b, _ := os.ReadFile(logPath)
		if !strings.Contains(string(b), "listening on") {
			return fmt.Errorf("tcpdump not listening yet")
		}
		return nil
	})
	if err != nil {
		p.kill()
		return nil, fmt.Errorf("start capture on %s/%s: %w", ns, iface, err)
	}
	return &Capture{file: file, proc: p}, nil
}

// Stop ends the capture and returns tcpdump's one-line decode of every
// captured packet.
func (cp *Capture) Stop() ([]string, error) {
	_ = cp.proc.signal(syscall.SIGINT)
	if err := cp.proc.wait(10 * time.Second); err != nil {
		cp.proc.kill()
		return nil, fmt.Errorf("stop capture: %w", err)
	}
	out, err := run("tcpdump", "-n", "-r", cp.file)
	if err != nil {
		return nil, fmt.Errorf("read capture %s: %w", cp.file, err)
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return lines, nil
}
