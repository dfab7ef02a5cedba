package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/nexthop-net/nexthop/config"
)

// Test timings: the minimum hold time so lost sessions show within
// seconds, and a short initial sync so stale-route cleanup after a restart
// happens well inside a test's deadline.
const (
	HoldTime    = 3 * time.Second
	InitialSync = config.DefaultInitialSync
	GRPCPort    = 50051
)

// defaultConfig is node i's daemon config before peers are known. An
// IPv4 node keeps the single-family `podCIDR` spelling (its tests edit
// it); a node with IPv6 has `podCIDRs` (IPv4 first) and `addressV6`, and
// on an IPv6-only node `address` is IPv6 and the router ID is left for
// the daemon to derive.
func (c *Cluster) defaultConfig(n *Node, i int) config.Config {
	cfg := config.Config{
		NodeName:    n.Name,
		Address:     n.Address,
		LocalAS:     NodeAS,
		HoldTime:    config.Duration{Duration: HoldTime},
		GRPCListen:  fmt.Sprintf("127.0.0.1:%d", GRPCPort),
		InitialSync: config.Duration{Duration: InitialSync},
		IPAMSocket:  filepath.Join(n.dir, "nexthop.sock"),
		StateDir:    filepath.Join(n.dir, "state"),
		LogLevel:    "info",
	}
	switch c.Stack {
	case StackDual:
		cfg.AddressV6 = n.AddressV6
		cfg.PodCIDRs = []netip.Prefix{NodePodCIDR(i), NodePodCIDRv6(i)}
		cfg.Pools = []netip.Prefix{PodPool, PodPoolV6}
	case StackIPv6:
		cfg.PodCIDRs = []netip.Prefix{NodePodCIDRv6(i)}
		cfg.Pools = []netip.Prefix{PodPoolV6}
	default:
		cfg.PodCIDR = NodePodCIDR(i)
		cfg.Pools = []netip.Prefix{PodPool}
	}
	return cfg
}

// setPeers gives every node the full iBGP mesh plus the ToR (if any):
// one session per family the cluster has, between the addresses of that
// family (the nodes' IPv4 peers first, as on an IPv4 cluster).
func (c *Cluster) setPeers() {
	for _, n := range c.Nodes {
		n.Config.Peers = nil
		for _, v6 := range c.Stack.Families() {
			for _, m := range c.Nodes {
				if m != n {
					n.Config.Peers = append(n.Config.Peers, config.Peer{
						Address: m.AddressOf(v6), AS: NodeAS, HoldTime: config.Duration{Duration: HoldTime},
						Description: m.Name,
					})
				}
			}
		}
		if c.ToR != nil {
			for _, v6 := range c.Stack.Families() {
				n.Config.Peers = append(n.Config.Peers, config.Peer{
					Address: c.ToR.AddressOf(v6), AS: ToRAS, HoldTime: config.Duration{Duration: HoldTime},
					Description: "tor",
				})
			}
		}
	}
}

// writeConfig writes n.Config as the daemon's YAML file, after checking it
// with the daemon's own validation so a harness mistake shows as such.
func (n *Node) writeConfig() (string, error) {
	check := n.Config
	check.Peers = append([]config.Peer(nil), n.Config.Peers...)
	check.Normalize()
	if err := check.Validate(); err != nil {
		return "", fmt.Errorf("config for %s: %w", n.Name, err)
	}
	b, err := yaml.Marshal(n.Config)
	if err != nil {
		return "", fmt.Errorf("marshal config for %s: %w", n.Name, err)
	}
	path := filepath.Join(n.dir, "nexthopd.yaml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return "", fmt.Errorf("write config for %s: %w", n.Name, err)
	}
	return path, nil
}

// LogPath is the file nexthopd's stdout and stderr go to (all runs).
func (n *Node) LogPath() string { return filepath.Join(n.dir, "nexthopd.log") }

// LogContains reports, as an error when absent, whether the log of the
// daemon's current run (since its last start) contains s.
func (n *Node) LogContains(s string) error {
	b, err := os.ReadFile(n.LogPath())
	if err != nil {
		return err
	}
	if n.logStart <= int64(len(b)) && strings.Contains(string(b[n.logStart:]), s) {
		return nil
	}
	return fmt.Errorf("%s's log (current run) has no %q yet", n.Name, s)
}

// ConfigPath is the YAML file the daemon was last started with.
func (n *Node) ConfigPath() string { return filepath.Join(n.dir, "nexthopd.yaml") }

// Running reports whether the node's daemon process is alive.
func (n *Node) Running() bool {
	if n.daemon == nil {
		return false
	}
	done, _ := n.daemon.exited()
	return !done
}

// StartDaemon writes n's config and runs nexthopd in n's namespace
// (standalone, or in Kubernetes mode after UseKubernetes). It returns once
// the daemon's gRPC API answers, or with the log tail if the daemon exits
// first.
func (c *Cluster) StartDaemon(n *Node) error {
	if n.Running() {
		return fmt.Errorf("start nexthopd on %s: already running (pid %d)", n.Name, n.daemon.Pid())
	}
	bin, err := c.binary("nexthopd")
	if err != nil {
		return err
	}
	if _, err := c.binary("gobgp"); err != nil {
		return err
	}
	args, err := n.daemonArgs()
	if err != nil {
		return err
	}
	n.logStart = 0
	if fi, err := os.Stat(n.LogPath()); err == nil {
		n.logStart = fi.Size()
	}
	p, err := startProc("nexthopd "+n.Name, n.LogPath(), append([]string{"ip", "netns", "exec", n.NS, bin}, args...)...)
	if err != nil {
		return fmt.Errorf("start nexthopd on %s: %w", n.Name, err)
	}
	c.track(p)
	n.daemon = p
	err = WaitFor(20*time.Second, 100*time.Millisecond, func() error {
		if done, exitErr := p.exited(); done {
			return Permanent(fmt.Errorf("nexthopd exited (%s)", exitString(exitErr)))
		}
		_, err := c.Gobgp(n, "global")
		return err
	})
	if err != nil {
		return fmt.Errorf("start nexthopd on %s: %w\n%s", n.Name, err, tail(n.LogPath(), 30))
	}
	c.log.Logf("%s: nexthopd running (pid %d, podCIDRs %v)", n.Name, p.Pid(), n.PodCIDRs())
	return c.attachPendingPod(n)
}

// StartDaemons starts nexthopd on every node.
func (c *Cluster) StartDaemons() error {
	for _, n := range c.Nodes {
		if err := c.StartDaemon(n); err != nil {
			return err
		}
	}
	return nil
}

// StopDaemon sends SIGTERM and waits for the daemon to exit. The contract
// is exit status 0; anything else is returned as an error.
func (c *Cluster) StopDaemon(n *Node) error {
	if n.daemon == nil {
		return fmt.Errorf("stop nexthopd on %s: never started", n.Name)
	}
	p := n.daemon
	if err := p.signal(syscall.SIGTERM); err != nil {
		return err
	}
	err := p.wait(20 * time.Second)
	if done, _ := p.exited(); !done {
		p.kill()
		return fmt.Errorf("stop nexthopd on %s: no exit 20s after SIGTERM, killed", n.Name)
	}
	if err != nil {
		return fmt.Errorf("stop nexthopd on %s: want exit 0 after SIGTERM, got %w\n%s", n.Name, err, tail(n.LogPath(), 20))
	}
	c.log.Logf("%s: nexthopd stopped (SIGTERM)", n.Name)
	return nil
}

// KillDaemon SIGKILLs the daemon: no chance to withdraw anything, as in a
// node crash or OOM kill.
func (c *Cluster) KillDaemon(n *Node) error {
	if n.daemon == nil {
		return fmt.Errorf("kill nexthopd on %s: never started", n.Name)
	}
	if err := n.daemon.signal(syscall.SIGKILL); err != nil {
		return err
	}
	_ = n.daemon.wait(10 * time.Second) // the exit status of a killed process says nothing
	if done, _ := n.daemon.exited(); !done {
		return fmt.Errorf("kill nexthopd on %s: pid %d still running 10s after SIGKILL", n.Name, n.daemon.Pid())
	}
	c.log.Logf("%s: nexthopd killed (SIGKILL)", n.Name)
	return nil
}

// RestartDaemon stops the daemon with SIGTERM, lets change edit its config
// (nil keeps it) and starts it again.
func (c *Cluster) RestartDaemon(n *Node, change func(*config.Config)) error {
	if n.Running() {
		if err := c.StopDaemon(n); err != nil {
			return err
		}
	}
	if change != nil {
		change(&n.Config)
	}
	return c.StartDaemon(n)
}

// LogTails returns the last lines of every daemon's and bgpd's log, for
// failure output.
func (c *Cluster) LogTails(lines int) string {
	var b strings.Builder
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "----- %s nexthopd log (%s), last %d lines -----\n%s", n.Name, n.LogPath(), lines, tail(n.LogPath(), lines))
	}
	if c.ToR != nil {
		fmt.Fprintf(&b, "----- tor bgpd log (%s), last %d lines -----\n%s", c.ToR.LogPath, lines, tail(c.ToR.LogPath, lines, bgpdNoise))
	}
	return b.String()
}

// bgpdNoise is what bgpd without zebra logs every second (nexthop
// tracking has no zebra to talk to); it would push everything else out of
// a log tail.
const bgpdNoise = "zclient_send_message() failed"

// tail returns the last n lines of a file (or why it cannot), leaving out
// lines containing skip, if given.
func tail(path string, n int, skip ...string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)\n", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	lines = slices.DeleteFunc(lines, func(l []byte) bool {
		return slices.ContainsFunc(skip, func(s string) bool { return bytes.Contains(l, []byte(s)) })
	})
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n"))) + "\n"
}

// gobgpRIB is `gobgp global rib -j`: prefix → paths.
type gobgpRIB map[string][]struct {
	Best       bool              `json:"best"`
	NeighborIP string            `json:"neighbor-ip"`
	Attrs      []json.RawMessage `json:"attrs"`
}

// Gobgp runs the stock gobgp CLI against n's daemon inside n's namespace.
func (c *Cluster) Gobgp(n *Node, args ...string) (string, error) {
	bin, err := c.binary("gobgp")
	if err != nil {
		return "", err
	}
	return Exec(n.NS, append([]string{bin, "-p", fmt.Sprint(GRPCPort)}, args...)...)
}

// GobgpRIB returns n's daemon's global RIB as `gobgp global rib -j` shows it.
func (c *Cluster) GobgpRIB(n *Node) ([]RIBPath, error) { return c.GobgpRIBOf(n, false) }

// GobgpRIBOf returns n's daemon's global RIB of the family: `gobgp global
// rib -j`, or `gobgp global rib -a ipv6 -j`.
func (c *Cluster) GobgpRIBOf(n *Node, v6 bool) ([]RIBPath, error) {
	args := []string{"global", "rib", "-j"}
	if v6 {
		args = []string{"global", "rib", "-a", "ipv6", "-j"}
	}
	out, err := c.Gobgp(n, args...)
	if err != nil {
		return nil, err
	}
	var rib gobgpRIB
	if strings.TrimSpace(out) == "" || strings.TrimSpace(out) == "null" {
		return nil, nil
	}
	if err := json.Unmarshal([]byte(out), &rib); err != nil {
		return nil, fmt.Errorf("parse gobgp %s on %s: %w: %.200s", strings.Join(args, " "), n.Name, err, out)
	}
	var paths []RIBPath
	for pfx, ps := range rib {
		prefix, err := netip.ParsePrefix(pfx)
		if err != nil {
			return nil, fmt.Errorf("parse gobgp prefix %q: %w", pfx, err)
		}
		for _, p := range ps {
			rp := RIBPath{Prefix: prefix, Best: p.Best}
			rp.From, _ = netip.ParseAddr(p.NeighborIP)
			for _, a := range p.Attrs {
				var attr struct {
					Type    int    `json:"type"`
					Nexthop string `json:"nexthop"`
					AsPaths []struct {
						ASNs []uint32 `json:"asns"`
					} `json:"as_paths"`
				}
				if json.Unmarshal(a, &attr) != nil {
					continue
				}
				switch attr.Type {
				case 3, 14: // NEXT_HOP, MP_REACH_NLRI
					if nh, err := netip.ParseAddr(attr.Nexthop); err == nil {
						rp.NextHop = nh
					}
				case 2: // AS_PATH
					var asns []string
					for _, seg := range attr.AsPaths {
						for _, as := range seg.ASNs {
							asns = append(asns, fmt.Sprint(as))
						}
					}
					rp.ASPath = strings.Join(asns, " ")
				}
			}
			paths = append(paths, rp)
		}
	}
	sortPaths(paths)
	return paths, nil
}

// GobgpEstablished lists the peers n's daemon has an established session
// with.
func (c *Cluster) GobgpEstablished(n *Node) ([]netip.Addr, error) {
	states, err := c.GobgpSessionStates(n)
	if err != nil {
		return nil, err
	}
	var up []netip.Addr
	for a, st := range states {
		if st == SessionEstablished {
			up = append(up, a)
		}
	}
	slices.SortFunc(up, netip.Addr.Compare)
	return up, nil
}

// GoBGP's session_state numbers in `gobgp neighbor -j`.
const (
	SessionIdle        = 1
	SessionActive      = 3
	SessionEstablished = 6
)

// GobgpSessionStates maps each of n's peers to its session state.
func (c *Cluster) GobgpSessionStates(n *Node) (map[netip.Addr]int, error) {
	out, err := c.Gobgp(n, "neighbor", "-j")
	if err != nil {
		return nil, err
	}
	var peers []struct {
		State struct {
			NeighborAddress string `json:"neighbor_address"`
			SessionState    int    `json:"session_state"`
		} `json:"state"`
	}
	if err := json.Unmarshal([]byte(out), &peers); err != nil {
		return nil, fmt.Errorf("parse gobgp neighbor -j on %s: %w: %.200s", n.Name, err, out)
	}
	states := map[netip.Addr]int{}
	for _, p := range peers {
		if a, err := netip.ParseAddr(p.State.NeighborAddress); err == nil {
			states[a] = p.State.SessionState
		}
	}
	return states, nil
}
