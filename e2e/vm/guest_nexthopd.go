package vm

// Guest side: the real nexthopd on a Topology, one daemon per node
// namespace, iBGP full mesh (sessions cross the router where nodes sit on
// different subnets). Binaries come from GuestBinDir (see NexthopdBinaries).

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/nexthop-net/nexthop/config"
)

// MeshAS is the AS every node shares (iBGP).
const MeshAS = 64512

// NexthopdBinaries are the host packages a nexthopd guest run needs built
// with BuildStatic and passed to the VM (they land in GuestBinDir).
var NexthopdBinaries = []string{"github.com/nexthop-net/nexthop/cmd/nexthopd", "github.com/osrg/gobgp/v3/cmd/gobgp"}

// Daemon is one node's running nexthopd.
type Daemon struct {
	Node       *Node
	ConfigPath string
	LogPath    string
	cmd        *exec.Cmd
	done       chan error
}

// Mesh is nexthopd running on every node of a topology.
type Mesh struct {
	Daemons map[string]*Daemon
	nodes   []*Node
}

// NexthopdConfig is node n's standalone YAML with every other node as an
// iBGP peer. extra is merged over the generated fields, e.g.
// {"ipipMode": "CrossSubnet"}; the result goes through config.Parse (strict:
// unknown fields are errors), so a harness typo fails here, not in the
// daemon.
func NexthopdConfig(n *Node, all []*Node, extra map[string]any) ([]byte, error) {
	var peers []map[string]any
	for _, m := range all {
		if m != n {
			peers = append(peers, map[string]any{"address": m.Address.Addr().String(), "as": MeshAS, "description": m.Name})
		}
	}
	c := map[string]any{
		"nodeName": n.Name,
		"address":  n.Address.Addr().String(),
		"localAS":  MeshAS,
		"podCIDR":  n.PodCIDR.String(),
		// Generous: the emulated CPU must not drop sessions when busy.
		"holdTime":   "9s",
		"grpcListen": "127.0.0.1:50051", // per namespace, so the same everywhere
		"ipamSocket": "/run/nexthop/" + n.Name + "/nexthop.sock",
		"stateDir":   "/tmp/nexthop/" + n.Name,
		"logLevel":   "debug",
		"peers":      peers,
	}
	maps.Copy(c, extra)
	b, err := yaml.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("marshal config of %s: %w", n.Name, err)
	}
	if _, err := config.Parse(b); err != nil {
		return nil, fmt.Errorf("config of %s is invalid: %w\n%s", n.Name, err, b)
	}
	return b, nil
}

// StartNexthopd starts nexthopd on every node with NexthopdConfig(extra)
// and returns once each daemon's gRPC API answers.
func StartNexthopd(topo *Topology, extra map[string]any) (*Mesh, error) {
	m := &Mesh{Daemons: map[string]*Daemon{}, nodes: topo.Nodes}
	for _, n := range topo.Nodes {
		d, err := startDaemon(n, topo.Nodes, extra)
		if err != nil {
			m.Stop()
			return nil, err
		}
		m.Daemons[n.Name] = d
	}
	return m, nil
}

func startDaemon(n *Node, all []*Node, extra map[string]any) (*Daemon, error) {
	conf, err := NexthopdConfig(n, all, extra)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join("/tmp/nexthop", n.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	d := &Daemon{Node: n, ConfigPath: filepath.Join(dir, "nexthopd.yaml"), LogPath: filepath.Join(dir, "nexthopd.log"), done: make(chan error, 1)}
	if err := os.WriteFile(d.ConfigPath, conf, 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(d.LogPath)
	if err != nil {
		return nil, err
	}
	d.cmd = exec.Command(IPPath, "netns", "exec", n.Name, filepath.Join(GuestBinDir, "nexthopd"), "--config", d.ConfigPath)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start nexthopd on %s: %w", n.Name, err)
	}
	go func() { d.done <- d.cmd.Wait(); logf.Close() }()
	err = Poll(60*time.Second, 200*time.Millisecond, func() error {
		select {
		case err := <-d.done:
			d.done <- err
			return Permanent(fmt.Errorf("nexthopd exited: %v", err))
		default:
		}
		_, err := d.Gobgp("global")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("start nexthopd on %s: %w\nlog:\n%s", n.Name, err, lastLines(d.Log(), 30))
	}
	return d, nil
}

// Gobgp runs the gobgp CLI against this node's daemon.
func (d *Daemon) Gobgp(args ...string) (string, error) {
	return NSExec(d.Node.Name, append([]string{filepath.Join(GuestBinDir, "gobgp")}, args...)...)
}

// Log is everything the daemon printed so far.
func (d *Daemon) Log() string {
	b, _ := os.ReadFile(d.LogPath)
	return string(b)
}

// LogLines returns the log lines containing all of subs.
func (d *Daemon) LogLines(subs ...string) []string {
	var out []string
	for _, l := range strings.Split(d.Log(), "\n") {
		if containsAll(l, subs) {
			out = append(out, l)
		}
	}
	return out
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// Stop sends SIGTERM to every daemon and waits; a daemon that does not
// exit with status 0 is an error (the daemon's contract).
func (m *Mesh) Stop() error {
	var errs []string
	for _, d := range m.Daemons {
		if err := d.Stop(); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("stop nexthopd: %s", strings.Join(errs, "; "))
	}
	return nil
}

// Stop sends the daemon SIGTERM and waits for it; anything but exit
// status 0 is an error. Stopping a stopped daemon returns how it ended.
func (d *Daemon) Stop() error {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		d.done <- err
		if err != nil {
			return fmt.Errorf("%s: %v; log tail:\n%s", d.Node.Name, err, lastLines(d.Log(), 15))
		}
		return nil
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		return fmt.Errorf("%s: no exit 30s after SIGTERM, killed", d.Node.Name)
	}
}

// Restart stops node name's daemon and starts it again with a config made
// with extra instead (a mode change is a restart in standalone mode). The
// old run's log is kept beside the new one as nexthopd.log.1; kernel
// routes stay in place across the restart, as the daemon leaves them.
func (m *Mesh) Restart(name string, extra map[string]any) (*Daemon, error) {
	d := m.Daemons[name]
	if d == nil {
		return nil, fmt.Errorf("no daemon on %s", name)
	}
	if err := d.Stop(); err != nil {
		return nil, err
	}
	if err := os.Rename(d.LogPath, d.LogPath+".1"); err != nil {
		return nil, err
	}
	nd, err := startDaemon(d.Node, m.nodes, extra)
	if err != nil {
		return nil, err
	}
	m.Daemons[name] = nd
	return nd, nil
}

// Neighbors summarises a node's BGP sessions as gobgp prints them.
func (d *Daemon) Neighbors() string {
	out, err := d.Gobgp("neighbor")
	if err != nil {
		return err.Error()
	}
	return out
}

// Established reports whether every configured peer is Established, from
// gobgp's JSON (stable across versions, unlike its table).
func (d *Daemon) Established() error {
	out, err := d.Gobgp("neighbor", "-j")
	if err != nil {
		return err
	}
	var peers []struct {
		Conf struct {
			NeighborAddress string `json:"neighbor_address"`
		} `json:"conf"`
		State struct {
			SessionState any `json:"session_state"`
		} `json:"state"`
	}
	if err := json.Unmarshal([]byte(out), &peers); err != nil {
		return fmt.Errorf("parse gobgp neighbor -j: %w", err)
	}
	for _, p := range peers {
		s := fmt.Sprint(p.State.SessionState)
		if s != "6" && !strings.EqualFold(s, "established") {
			return fmt.Errorf("%s: session with %s is %s", d.Node.Name, p.Conf.NeighborAddress, s)
		}
	}
	return nil
}
