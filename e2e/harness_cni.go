package e2e

// The real CNI plugin on the netns cluster: the shipped conflist
// (cni-plugin/05-nexthop.conflist: nexthop, then the reference portmap)
// driven through libcni, the library container runtimes use.
//
// A runtime runs plugins in the node's own network namespace; here a node
// is a namespace, so each node gets a CNI bin dir of wrappers,
//
//	#!/bin/sh
//	exec ip netns exec nh-1a2b-node1 /…/bin/nexthop "$@"
//
// and libcni execs those. The alternative, calling libcni from a goroutine
// locked into the node's namespace (ns.WithNetNSPath, as the plugin's
// conformance test does), relies on the child inheriting the namespace of
// whichever OS thread forks it, and on every such goroutine switching back;
// with 50 concurrent ADDs, a daemon killed and restarted underneath and
// the test reading pod state from other namespaces meanwhile, a namespace
// named in the exec line is simpler to trust: the test process never
// leaves the root namespace, a plugin runs exactly where its wrapper says,
// and the wrapper is the command to re-run by hand when a test fails. The
// cost is one sh and one `ip` exec per plugin call (a few ms).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/nexthop-net/nexthop/ipam"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// CNITimeout bounds one CNI call made by the harness (the plugin's own
// bound is 30 s; this is the runtime's).
const CNITimeout = 45 * time.Second

// ErrAttachAfterStart is what a PodAttacher returns when it needs the
// node's daemon and the daemon is not running yet.
var ErrAttachAfterStart = errors.New("pod can only be attached once the node's daemon runs")

// cniBinaries locates the real plugin binaries once per cluster.
type cniBinaries struct {
	once    sync.Once
	nexthop string
	portmap string
	err     error
}

// pluginPaths returns the nexthop plugin from the bin dir (`make build`)
// and portmap from the bin dir if it is there, else built into the
// cluster dir from the version go.mod pins (a `tool` there).
func (c *Cluster) pluginPaths() (nexthop, portmap string, err error) {
	b := &c.cniBin
	b.once.Do(func() {
		if b.nexthop, b.err = c.binary("nexthop"); b.err != nil {
			return
		}
		if p, err := c.binary("portmap"); err == nil {
			b.portmap = p
			return
		}
		b.portmap = filepath.Join(c.Dir, "cni-bin", "portmap")
		cmd := exec.Command("go", "build", "-o", b.portmap, "github.com/containernetworking/plugins/plugins/meta/portmap")
		cmd.Dir = sourceRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("build portmap (not in %s): %w\n%s", c.Bin, err, out)
		}
	})
	return b.nexthop, b.portmap, b.err
}

// sourceRoot is the repository this file was compiled from: where go.mod
// and cni-plugin/ live, whatever $NEXTHOP_BIN says.
func sourceRoot() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "."
	}
	return filepath.Dir(filepath.Dir(file))
}

// writePluginWrappers writes dir/<plugin> scripts that run the real
// plugins inside namespace ns.
func writePluginWrappers(dir, ns string, plugins map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create CNI bin dir: %w", err)
	}
	for name, real := range plugins {
		script := fmt.Sprintf("#!/bin/sh\n# %s plugin as the runtime on node namespace %s runs it\nexec ip netns exec %s %s \"$@\"\n", name, ns, ns, real)
		// Write and rename: a plugin call in flight never execs half a script.
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path+".tmp", []byte(script), 0o755); err != nil {
			return fmt.Errorf("write CNI wrapper %s: %w", name, err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			return fmt.Errorf("install CNI wrapper %s: %w", name, err)
		}
	}
	return nil
}

// ShippedConfList is cni-plugin/05-nexthop.conflist as shipped, with only
// ipamSocket pointed at socket and pendingReleaseDir into stateDir, where
// that node's daemon looks for releases a DEL left while it was down.
func ShippedConfList(socket, stateDir string) (*libcni.NetworkConfigList, error) {
	path := filepath.Join(sourceRoot(), "cni-plugin", "05-nexthop.conflist")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read shipped conflist: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	plugins, _ := m["plugins"].([]any)
	found := false
	for _, p := range plugins {
		if pm, ok := p.(map[string]any); ok && pm["type"] == "nexthop" {
			pm["ipamSocket"] = socket
			pm["pendingReleaseDir"] = filepath.Join(stateDir, ipam.PendingReleaseDirName)
			found = true
		}
	}
	if !found {
		return nil, fmt.Errorf("%s has no plugin of type nexthop", path)
	}
	out, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("re-encode conflist: %w", err)
	}
	list, err := libcni.NetworkConfFromBytes(out)
	if err != nil {
		return nil, fmt.Errorf("load conflist %s: %w", path, err)
	}
	return list, nil
}

// CNI is a container runtime's view of one node: the shipped conflist
// pointed at the node's IPAM socket, plugins run inside the node's
// namespace, results cached like /var/lib/cni.
type CNI struct {
	Node     *Node
	List     *libcni.NetworkConfigList
	CacheDir string
	// LogPath collects the plugins' stderr (their own log lines).
	LogPath string

	cfg *libcni.CNIConfig
}

// CNI returns node n's CNI runtime, creating it on first use.
func (c *Cluster) CNI(n *Node) (*CNI, error) {
	c.mu.Lock()
	k := n.cni
	c.mu.Unlock()
	if k != nil {
		return k, nil
	}
	k, err := c.NewCNI(n, filepath.Join(n.dir, "cni-cache"))
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if n.cni == nil {
		n.cni = k
	}
	return n.cni, nil
}

// NewCNI returns a CNI runtime for node n with its own result cache: a
// second runtime, or the same one after losing /var/lib/cni.
func (c *Cluster) NewCNI(n *Node, cacheDir string) (*CNI, error) {
	nexthop, portmap, err := c.pluginPaths()
	if err != nil {
		return nil, err
	}
	binDir := filepath.Join(n.dir, "cni-bin")
	if err := writePluginWrappers(binDir, n.NS, map[string]string{"nexthop": nexthop, "portmap": portmap}); err != nil {
		return nil, err
	}
	list, err := ShippedConfList(n.Config.IPAMSocket, n.Config.StateDir)
	if err != nil {
		return nil, err
	}
	k := &CNI{Node: n, List: list, CacheDir: cacheDir, LogPath: filepath.Join(n.dir, "cni.log")}
	logFile, err := os.OpenFile(k.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open CNI log: %w", err)
	}
	// Appends from concurrent plugins interleave by line, fine for a log.
	c.closeLater(logFile)
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: logFile}, PluginDecoder: version.PluginDecoder{}}
	k.cfg = libcni.NewCNIConfigWithCacheDir([]string{binDir}, cacheDir, exec)
	return k, nil
}

// Runtime is the RuntimeConf a kubelet would pass for a pod sandbox:
// eth0 in namespace netns, Kubernetes pod args.
func (k *CNI) Runtime(containerID, netns, podName string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: containerID,
		NetNS:       NetNSPath(netns),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "default"},
			{"K8S_POD_NAME", podName},
			{"K8S_POD_INFRA_CONTAINER_ID", containerID},
		},
	}
}

// NetNSPath is where `ip netns add` pins a named namespace.
func NetNSPath(name string) string { return filepath.Join("/run/netns", name) }

// Add runs ADD through the whole chain and returns the final result.
func (k *CNI) Add(ctx context.Context, rt *libcni.RuntimeConf) (*current.Result, error) {
	r, err := k.cfg.AddNetworkList(ctx, k.List, rt)
	if err != nil {
		return nil, fmt.Errorf("CNI ADD %s on %s: %w", rt.ContainerID, k.Node.Name, err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("CNI ADD %s on %s: convert result: %w", rt.ContainerID, k.Node.Name, err)
	}
	return res, nil
}

// Check runs CHECK against the cached ADD result.
func (k *CNI) Check(ctx context.Context, rt *libcni.RuntimeConf) error {
	if err := k.cfg.CheckNetworkList(ctx, k.List, rt); err != nil {
		return fmt.Errorf("CNI CHECK %s on %s: %w", rt.ContainerID, k.Node.Name, err)
	}
	return nil
}

// Del runs DEL (plugins in reverse order) and drops the cached result.
func (k *CNI) Del(ctx context.Context, rt *libcni.RuntimeConf) error {
	if err := k.cfg.DelNetworkList(ctx, k.List, rt); err != nil {
		return fmt.Errorf("CNI DEL %s on %s: %w", rt.ContainerID, k.Node.Name, err)
	}
	return nil
}

// GC runs libcni's GC: DEL for every cached attachment not in valid, then
// the plugins' own GC with valid as cni.dev/valid-attachments.
func (k *CNI) GC(ctx context.Context, valid []types.GCAttachment) error {
	if err := k.cfg.GCNetworkList(ctx, k.List, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		return fmt.Errorf("CNI GC on %s: %w", k.Node.Name, err)
	}
	return nil
}

// CNIErrorCode returns the code of the CNI error inside err, if any.
func CNIErrorCode(err error) (uint, bool) {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code, true
	}
	return 0, false
}

// ResultPod returns the pod address (/32 on the sandbox interface) and the
// host-side veth from an ADD result.
func ResultPod(res *current.Result) (ip netip.Addr, hostVeth string, err error) {
	ip, _, hostVeth, err = ResultPodAddrs(res)
	if err == nil && !ip.IsValid() {
		b, _ := json.Marshal(res)
		err = fmt.Errorf("ADD result lacks a /32 pod address: %s", b)
	}
	return ip, hostVeth, err
}

// ResultPodAddrs returns the pod's IPv4 address (/32 on the sandbox
// interface) and IPv6 address (/128), either zero if the result has none,
// and the host-side veth from an ADD result.
func ResultPodAddrs(res *current.Result) (ip, ip6 netip.Addr, hostVeth string, err error) {
	for _, c := range res.IPs {
		if c.Interface == nil || *c.Interface < 0 || *c.Interface >= len(res.Interfaces) || res.Interfaces[*c.Interface].Sandbox == "" {
			continue
		}
		a, ok := netip.AddrFromSlice(c.Address.IP)
		ones, _ := c.Address.Mask.Size()
		switch {
		case ok && ones == 32 && a.Unmap().Is4():
			ip = a.Unmap()
		case ok && ones == 128 && a.Is6() && !a.Is4In6():
			ip6 = a
		}
	}
	for _, i := range res.Interfaces {
		if i.Sandbox == "" {
			hostVeth = i.Name
		}
	}
	if (!ip.IsValid() && !ip6.IsValid()) || hostVeth == "" {
		b, _ := json.Marshal(res)
		return ip, ip6, hostVeth, fmt.Errorf("ADD result lacks a pod address (/32 or /128) or a host interface: %s", b)
	}
	return ip, ip6, hostVeth, nil
}

// NodeBlocks is the node's pod blocks (one per family): its podCIDRs, or
// the legacy podCIDR.
func NodeBlocks(n *Node) []netip.Prefix {
	if len(n.Config.PodCIDRs) > 0 {
		return n.Config.PodCIDRs
	}
	if n.Config.PodCIDR.IsValid() {
		return []netip.Prefix{n.Config.PodCIDR}
	}
	return nil
}

// AddPodNS creates pod namespace c.Prefix+name (lo up) and returns its
// name; Close removes it with the rest of the cluster.
func (c *Cluster) AddPodNS(name string) (string, error) {
	ns := c.Prefix + name
	if err := c.addNS(ns); err != nil {
		return "", err
	}
	return ns, nil
}

// DelNS deletes one of the cluster's namespaces, as a runtime removes a
// pod sandbox after DEL.
func (c *Cluster) DelNS(ns string) error {
	if !strings.HasPrefix(ns, c.Prefix) {
		return fmt.Errorf("delete netns %s: not one of cluster %s", ns, c.Prefix)
	}
	if _, err := run("ip", "netns", "del", ns); err != nil {
		return fmt.Errorf("delete netns %s: %w", ns, err)
	}
	return nil
}

// IfAddrs lists the IPv4 addresses (with prefix length) of iface in ns, as
// `ip -n ns addr show dev iface` shows them.
func IfAddrs(ns, iface string) ([]netip.Prefix, error) {
	return ifAddrs(ns, iface, "addresses", "-4", "addr", "show", "dev", iface)
}

// IfAddrs6 lists the global IPv6 addresses (with prefix length) of iface
// in ns, as `ip -n ns -6 addr show dev iface scope global` shows them: not
// the kernel's own link-local one.
func IfAddrs6(ns, iface string) ([]netip.Prefix, error) {
	return ifAddrs(ns, iface, "IPv6 addresses", "-6", "addr", "show", "dev", iface, "scope", "global")
}

// ifAddrs reads the addresses `ip -n ns -j <args>` lists for iface; what
// names them in errors.
func ifAddrs(ns, iface, what string, args ...string) ([]netip.Prefix, error) {
	out, err := run(append([]string{"ip", "-n", ns, "-j"}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("list %s of %s in %s: %w", what, iface, ns, err)
	}
	var links []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return nil, fmt.Errorf("parse %s of %s in %s: %w: %.200s", what, iface, ns, err, out)
	}
	var addrs []netip.Prefix
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if a.Local == "" {
				continue // iproute2 ends a filtered list with an empty {}
			}
			ip, err := netip.ParseAddr(a.Local)
			if err != nil {
				return nil, fmt.Errorf("parse address %q of %s in %s: %w", a.Local, iface, ns, err)
			}
			addrs = append(addrs, netip.PrefixFrom(ip, a.PrefixLen))
		}
	}
	return addrs, nil
}

// ipRoutes lists the routes `ip -n ns -j <args>` shows; what names them in
// errors.
func ipRoutes(ns, what string, args ...string) ([]ipRoute, error) {
	out, err := run(append([]string{"ip", "-n", ns, "-j"}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("list %s in %s: %w", what, ns, err)
	}
	var raw []ipRoute
	if strings.TrimSpace(out) != "" {
		if err := json.Unmarshal([]byte(out), &raw); err != nil {
			return nil, fmt.Errorf("parse %s of %s: %w: %.200s", what, ns, err, out)
		}
	}
	return raw, nil
}

// HostRoutes6 maps each /128 route of the main table in ns to the devices
// it points at: the plugin's `podIP6 dev nhXXXX` routes.
func HostRoutes6(ns string) (map[netip.Addr][]string, error) {
	raw, err := ipRoutes(ns, "IPv6 routes", "-6", "route", "show", "table", "main")
	if err != nil {
		return nil, err
	}
	routes := map[netip.Addr][]string{}
	for _, r := range raw {
		dst := strings.TrimSuffix(r.Dst, "/128") // a host route shows without its length
		if strings.Contains(dst, "/") || r.Dst == "default" || r.Gateway != "" || r.Type == "blackhole" {
			continue
		}
		a, err := netip.ParseAddr(dst)
		if err != nil || a.IsLinkLocalUnicast() || a.IsMulticast() {
			continue
		}
		routes[a] = append(routes[a], r.Dev)
	}
	return routes, nil
}

// HostRoutes maps each /32 route of the main table in ns to the devices it
// points at: the plugin's `podIP dev nhXXXX scope link` routes.
func HostRoutes(ns string) (map[netip.Addr][]string, error) {
	raw, err := ipRoutes(ns, "routes", "-4", "route", "show", "table", "main", "scope", "link")
	if err != nil {
		return nil, err
	}
	routes := map[netip.Addr][]string{}
	for _, r := range raw {
		if strings.Contains(r.Dst, "/") || r.Dst == "default" {
			continue
		}
		a, err := netip.ParseAddr(r.Dst)
		if err != nil {
			continue
		}
		routes[a] = append(routes[a], r.Dev)
	}
	return routes, nil
}

// CNIPod is the PodAttacher that wires pods with the real plugin chain on
// the node, through the node's CNI runtime. The daemon must run, so New
// leaves the pod for StartDaemon to attach.
func CNIPod(c *Cluster, n *Node, p *Pod) error {
	if !n.Running() {
		return ErrAttachAfterStart
	}
	k, err := c.CNI(n)
	if err != nil {
		return err
	}
	// The namespace name is unique per cluster and a valid container ID.
	p.ContainerID = p.NS
	ctx, cancel := context.WithTimeout(context.Background(), CNITimeout)
	defer cancel()
	res, err := k.Add(ctx, k.Runtime(p.ContainerID, p.NS, p.Name))
	if err != nil {
		return err
	}
	ip, ip6, veth, err := ResultPodAddrs(res)
	if err != nil {
		return err
	}
	// Pod.IP is the IPv4 address, or the IPv6 one on an IPv6-only pod.
	p.IP, p.IPv6, p.HostVeth = ip, ip6, veth
	if !p.IP.IsValid() {
		p.IP = ip6
	}
	return nil
}
