package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/containernetworking/plugins/pkg/ns"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nexthop-net/nexthop/internal/ociimage"
	"github.com/nexthop-net/nexthop/kubetest"
)

// A kubelet cluster is what a user runs: every node a namespace with its
// own containerd, runc, kubelet and kube-proxy, and nexthop installed from
// manifests/ as a DaemonSet whose image the nodes imported. The recipe
// this follows, with every pitfall of running several kubelets on one
// machine, is shared/recipes/kubelet-containerd.md; in short:
//
//   - each node is a netns plus a private mount namespace (a "holder"
//     process owns it; `ip netns exec` would hide the cgroup mounts), in
//     which /var/lib, /run, /var/log, /etc/cni and /opt/cni are the node's
//     own directories: the kubelet's, containerd's and the DaemonSet's host
//     paths are then per node without configuring each of them, and a
//     "reboot" is wiping the node's /run;
//   - the kubelet writes four machine-wide sysctls unless they already
//     read as it wants: the node sees files with those values instead;
//   - no CAP_SYS_RESOURCE here: containerd's restrict_oom_score_adj;
//   - the kernel's ARP table is shared by every namespace on the machine
//     and may be full: the harness pins neighbours as permanent entries.

// KubeOptions describe a kubelet cluster.
type KubeOptions struct {
	// Nodes is the number of worker nodes (default 3).
	Nodes int
	// Log receives progress messages.
	Log Logger
	// Progress receives the output of builds that take minutes (the
	// Kubernetes binaries the first time on a machine); nil discards it.
	Progress io.Writer
	// Image is the nexthop image tarball (`make image-tar`); empty means
	// nexthop-image.tar in the binaries directory.
	Image string
	// Stack is StackIPv4 (the zero value) or StackDual: every node then
	// has an IPv6 underlay address too (kubelet --node-ip with both), the
	// control plane hands out a pod CIDR and Service addresses of each
	// family, and kube-proxy serves both.
	Stack Stack
}

// KubeCluster is a running kubelet cluster; Close removes all of it.
type KubeCluster struct {
	*Cluster
	// Kubeconfig is an admin kubeconfig for the host: it reaches the API
	// server through a relay on 127.0.0.1.
	Kubeconfig string
	KNodes     []*KubeNode
	// Internet is the namespace of a server behind the ToR
	// (InternetServer), standing in for everything outside the cluster.
	Internet string
	// ImageRef is the nexthop image the nodes have imported, from
	// ImageTar.
	ImageRef, ImageTar string
	// ClusterCIDRs and ServiceCIDRs are kube-controller-manager's
	// --cluster-cidr and the API server's --service-cluster-ip-range: one
	// prefix per family, IPv4 first.
	ClusterCIDRs, ServiceCIDRs []netip.Prefix

	cp     *controlPlane
	images []string // tarballs every node imports
	// hostDirs are the mountpoints this cluster created on the machine,
	// removed again by Close when empty.
	hostDirs []string
}

// KubeNode is one node of a KubeCluster.
type KubeNode struct {
	*Node
	// Root holds the node's own /var/lib, /run, /var/log, /etc/cni and
	// /opt/cni (as var-lib, run, log, etc-cni, opt-cni).
	Root string

	k                                  *KubeCluster
	holder, containerd, kubelet, proxy *proc
}

// HostPath is where the node's path p (one of the per-node trees) lives on
// the machine.
func (n *KubeNode) HostPath(p string) string {
	for _, m := range nodeMounts {
		if p == m.target || strings.HasPrefix(p, m.target+"/") {
			return filepath.Join(n.Root, m.dir, strings.TrimPrefix(p, m.target))
		}
	}
	panic("HostPath: " + p + " is not a per-node path")
}

// nodeMounts are the node's own trees, bind-mounted in its mount
// namespace.
var nodeMounts = []struct{ dir, target string }{
	{"var-lib", "/var/lib"},
	{"run", "/run"},
	{"log", "/var/log"},
	{"etc-cni", "/etc/cni"},
	{"opt-cni", "/opt/cni"},
}

// kubeletSysctls are what the kubelet would otherwise write machine-wide.
var kubeletSysctls = map[string]string{
	"vm/overcommit_memory": "1", "vm/panic_on_oom": "0", "kernel/panic": "10", "kernel/panic_on_oops": "1",
}

// The "internet": a server namespace behind the ToR, which routes between
// the underlay and 203.0.113.0/24 (TEST-NET-3); see AddInternet.
var (
	InternetGateway = netip.MustParseAddr("203.0.113.254")
	InternetServer  = netip.MustParseAddr("203.0.113.10")
	// On a cluster with IPv6, the link has these too (unique-local, as the
	// IPv6 underlay), in fd00:203::/64.
	InternetGatewayV6 = netip.MustParseAddr("fd00:203::254")
	InternetServerV6  = netip.MustParseAddr("fd00:203::10")
)

// InternetServerOf is the server's address of the family (v6: IPv6).
func InternetServerOf(v6 bool) netip.Addr {
	if v6 {
		return InternetServerV6
	}
	return InternetServer
}

// InternetGatewayOf is the ToR's address on the server's link, of the
// family.
func InternetGatewayOf(v6 bool) netip.Addr {
	if v6 {
		return InternetGatewayV6
	}
	return InternetGateway
}

// CheckKubeTools reports what a kubelet cluster needs beyond CheckTools.
func CheckKubeTools() error {
	var errs []error
	for _, t := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables", "nsenter", "unshare"} {
		if _, err := lookPath(t); err != nil {
			errs = append(errs, fmt.Errorf("%s not installed (run `make deps`: containerd, runc, iptables)", t))
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		errs = append(errs, errors.New("/bin/busybox not installed (run `make deps`: busybox-static)"))
	}
	return errors.Join(errs...)
}

// NewKubeCluster builds the namespaces, starts the control plane and the
// nodes, and returns once every node has registered and has a pod CIDR.
// nexthop is not installed yet: see Install.
func NewKubeCluster(ctx context.Context, o KubeOptions) (k *KubeCluster, err error) {
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Log == nil {
		o.Log = discard{}
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Stack != StackIPv4 && o.Stack != StackDual {
		return nil, fmt.Errorf("kubelet cluster: %s is not supported (IPv4 or dual-stack)", o.Stack)
	}
	if err := errors.Join(CheckTools(), CheckKubeTools()); err != nil {
		return nil, err
	}
	bin, err := kubetest.EnsureClusterBinaries(o.Progress)
	if err != nil {
		return nil, err
	}
	c, err := New(Options{Nodes: o.Nodes, ToR: true, NoPods: true, Log: o.Log, Stack: o.Stack})
	if err != nil {
		return nil, err
	}
	k = &KubeCluster{Cluster: c, ClusterCIDRs: []netip.Prefix{ClusterCIDR}, ServiceCIDRs: []netip.Prefix{ServiceCIDR}}
	if o.Stack == StackDual {
		k.ClusterCIDRs = append(k.ClusterCIDRs, ClusterCIDRV6)
		k.ServiceCIDRs = append(k.ServiceCIDRs, ServiceCIDRV6)
	}
	defer func() {
		if err != nil {
			k.Close()
			k = nil
		}
	}()
	if o.Image == "" {
		o.Image = filepath.Join(c.Bin, "nexthop-image.tar")
	}
	if k.ImageRef, err = imageRef(o.Image); err != nil {
		return k, fmt.Errorf("the nexthop image (run `make image-tar`): %w", err)
	}
	if k.Internet, err = c.AddInternet(); err != nil {
		return k, err
	}
	c.log.Logf("kube: control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) in %s", c.Prefix+"cp")
	if k.cp, err = c.startControlPlane(cpOptions{bin: bin, clusterCIDRs: k.ClusterCIDRs, serviceCIDRs: k.ServiceCIDRs}); err != nil {
		return k, err
	}
	k.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := k.cp.writeKubeconfig(k.Kubeconfig, "https://"+k.cp.relay.Addr(), "admin"); err != nil {
		return k, err
	}
	if err := k.pinUnderlay(); err != nil {
		return k, err
	}
	if k.images, err = k.testImages(); err != nil {
		return k, err
	}
	k.images = append(k.images, o.Image)
	k.ImageTar = o.Image
	if err := k.hostMountpoints(); err != nil {
		return k, err
	}
	for _, n := range c.Nodes {
		kn := &KubeNode{Node: n, Root: filepath.Join(n.dir, "root"), k: k}
		k.KNodes = append(k.KNodes, kn)
		c.log.Logf("kube: %s: containerd, kubelet, kube-proxy", n.Name)
		if err := kn.start(); err != nil {
			return k, err
		}
	}
	err = WaitFor(2*time.Minute, time.Second, func() error {
		cidrs, err := k.NodePodCIDRs(ctx)
		if err != nil {
			return err
		}
		if len(cidrs) != len(k.KNodes) {
			return fmt.Errorf("%d of %d nodes registered: %v", len(cidrs), len(k.KNodes), cidrs)
		}
		for name, c := range cidrs {
			if len(c) != len(k.ClusterCIDRs) {
				return fmt.Errorf("node %s has pod CIDRs %v, want one of each of %v", name, c, k.ClusterCIDRs)
			}
		}
		return nil
	})
	if err != nil {
		return k, fmt.Errorf("nodes registering: %w", err)
	}
	return k, nil
}

// NodePodCIDRs maps each registered Node to its spec.podCIDRs.
func (k *KubeCluster) NodePodCIDRs(ctx context.Context) (map[string][]netip.Prefix, error) {
	out, err := k.Kubectl(ctx, "get", "nodes", "-o", `jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDRs[*]}{"\n"}{end}`)
	if err != nil {
		return nil, err
	}
	cidrs := map[string][]netip.Prefix{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		name, list, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		cidrs[name] = nil
		for _, f := range strings.Fields(list) {
			p, err := netip.ParsePrefix(f)
			if err != nil {
				return nil, fmt.Errorf("node %s: spec.podCIDRs: %w", name, err)
			}
			cidrs[name] = append(cidrs[name], p)
		}
	}
	return cidrs, nil
}

// imageRef reads the reference an image tarball carries (manifest.json's
// RepoTags, as docker save writes it).
func imageRef(tarPath string) (string, error) {
	out, err := run("tar", "-xOf", tarPath, "manifest.json")
	if err != nil {
		return "", err
	}
	var m []struct{ RepoTags []string }
	if err := json.Unmarshal([]byte(out), &m); err != nil || len(m) != 1 || len(m[0].RepoTags) != 1 {
		return "", fmt.Errorf("%s: manifest.json does not name one image (%v)", tarPath, err)
	}
	return m[0].RepoTags[0], nil
}

// Test images: a sandbox (pause) image, since registry.k8s.io cannot be
// reached, and busybox for workloads.
const (
	PauseImage   = "nexthop.test/pause:1"
	BusyboxImage = "nexthop.test/busybox:1"
)

func (k *KubeCluster) testImages() ([]string, error) {
	dir := filepath.Join(k.Dir, "images")
	if err := os.MkdirAll(filepath.Join(dir, "www"), 0o755); err != nil {
		return nil, err
	}
	pause := filepath.Join(dir, "pause")
	if _, err := run("go", "build", "-C", sourceRoot(), "-trimpath", "-o", pause, "./e2e/testimage/pause"); err != nil {
		return nil, fmt.Errorf("build the pause binary: %w", err)
	}
	pauseTar, bbTar := filepath.Join(dir, "pause.tar"), filepath.Join(dir, "busybox.tar")
	if _, err := ociimage.Write(pauseTar, PauseImage, []ociimage.File{ociimage.Copy(pause, "/pause", 0o755)},
		ociimage.Config{Entrypoint: []string{"/pause"}}); err != nil {
		return nil, fmt.Errorf("pause image: %w", err)
	}
	bb, err := ociimage.Busybox("/bin/busybox")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "passwd"), []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644); err != nil {
		return nil, err
	}
	bb = append(bb, ociimage.Copy(filepath.Join(dir, "passwd"), "/etc/passwd", 0o644),
		ociimage.Dir("/tmp", 0o1777), ociimage.Dir("/www", 0o755))
	if _, err := ociimage.Write(bbTar, BusyboxImage, bb, ociimage.Config{Cmd: []string{"sh"}}); err != nil {
		return nil, fmt.Errorf("busybox image: %w", err)
	}
	return []string{pauseTar, bbTar}, nil
}

// hostMountpoints creates the machine-side mountpoints of nodeMounts that
// do not exist (the node's bind mounts need them; they stay empty).
func (k *KubeCluster) hostMountpoints() error {
	for _, m := range nodeMounts {
		if _, err := os.Stat(m.target); err == nil {
			continue
		}
		if err := os.Mkdir(m.target, 0o755); err != nil {
			return fmt.Errorf("create mountpoint %s: %w", m.target, err)
		}
		k.hostDirs = append(k.hostDirs, m.target)
	}
	return nil
}

// AddInternet puts a namespace with InternetServer behind the ToR, which
// routes for it, and returns its name. The ToR still learns no pod routes
// (its bgpd runs without zebra), so the server's replies reach a pod only
// when they are addressed to a node: untranslated pod traffic arrives but
// is never answered. On a cluster with IPv6 the link, and the ToR's
// forwarding, have IPv6 too (InternetServerV6).
func (c *Cluster) AddInternet() (string, error) {
	inet := c.Prefix + "inet"
	if err := c.addNS(inet); err != nil {
		return "", err
	}
	for _, s := range [][]string{
		{"ip", "-n", c.ToR.NS, "link", "add", "inet0", "type", "veth", "peer", "name", "eth0", "netns", inet},
		{"ip", "-n", c.ToR.NS, "addr", "add", InternetGateway.String() + "/24", "dev", "inet0"},
		{"ip", "-n", c.ToR.NS, "link", "set", "inet0", "up"},
		{"ip", "netns", "exec", c.ToR.NS, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"ip", "-n", inet, "addr", "add", InternetServer.String() + "/24", "dev", "eth0"},
		{"ip", "-n", inet, "link", "set", "eth0", "up"},
		{"ip", "-n", inet, "route", "add", "default", "via", InternetGateway.String()},
	} {
		if _, err := run(s...); err != nil {
			return "", fmt.Errorf("internet behind the ToR: %w", err)
		}
	}
	if !c.Stack.Has(true) {
		return inet, nil
	}
	for _, s := range [][]string{
		{"ip", "-n", c.ToR.NS, "addr", "add", InternetGatewayV6.String() + "/64", "dev", "inet0", "nodad"},
		{"ip", "netns", "exec", c.ToR.NS, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
		{"ip", "-n", inet, "addr", "add", InternetServerV6.String() + "/64", "dev", "eth0", "nodad"},
		{"ip", "-n", inet, "-6", "route", "add", "default", "via", InternetGatewayV6.String()},
		// Flow label 0 on the server's packets: the ToR's IPv6 multipath
		// hash covers it, and `ip route get` (which cannot set one) then
		// shows the next hop the ToR really picks.
		{"ip", "netns", "exec", inet, "sysctl", "-qw", "net.ipv6.auto_flowlabels=0"},
	} {
		if _, err := run(s...); err != nil {
			return "", fmt.Errorf("internet behind the ToR, IPv6: %w", err)
		}
	}
	// The machine's neighbour tables are shared: no discovery on this link.
	torMAC, err := linkMAC(c.ToR.NS, "inet0")
	if err != nil {
		return "", err
	}
	inetMAC, err := linkMAC(inet, "eth0")
	if err != nil {
		return "", err
	}
	if err := ipn(c.ToR.NS, "pin "+InternetServerV6.String(), "neigh", "replace", InternetServerV6.String(), "lladdr", inetMAC, "dev", "inet0", "nud", "permanent"); err != nil {
		return "", err
	}
	if err := ipn(inet, "pin "+InternetGatewayV6.String(), "neigh", "replace", InternetGatewayV6.String(), "lladdr", torMAC, "dev", "eth0", "nud", "permanent"); err != nil {
		return "", err
	}
	return inet, nil
}

// pinUnderlay makes every underlay neighbour entry (control plane, nodes,
// ToR) permanent in every one of them.
func (k *KubeCluster) pinUnderlay() error {
	hosts := []underlayHost{{ns: k.cp.ns, addr: ControlPlaneAddress}, {ns: k.ToR.NS, addr: k.ToR.Address}}
	for _, n := range k.Nodes {
		hosts = append(hosts, underlayHost{ns: n.NS, addr: n.Address})
	}
	return pinNeighbours(hosts)
}

// underlayHost is a namespace on the underlay and its address there.
type underlayHost struct {
	ns   string
	addr netip.Addr
}

// pinNeighbours makes each host's underlay address a permanent neighbour
// entry in every other host (hosts without an address are skipped).
func pinNeighbours(hosts []underlayHost) error {
	macs := make([]string, len(hosts))
	for i, h := range hosts {
		mac, err := linkMAC(h.ns, underlayLink)
		if err != nil {
			return err
		}
		macs[i] = mac
	}
	for _, a := range hosts {
		for j, b := range hosts {
			if a.ns == b.ns || !b.addr.IsValid() {
				continue
			}
			if err := ipn(a.ns, "pin neighbour "+b.addr.String(), "neigh", "replace", b.addr.String(), "lladdr", macs[j], "dev", underlayLink, "nud", "permanent"); err != nil {
				return err
			}
		}
	}
	return nil
}

// linkMAC is the hardware address of dev in namespace ns.
func linkMAC(ns, dev string) (string, error) {
	return parseLinkMAC(run("ip", "-n", ns, "-j", "link", "show", "dev", dev))
}

// linkMAC is the hardware address of the pod's dev. (Not from
// /sys/class/net: that shows the namespace sysfs was mounted from.)
func (p PodSandbox) linkMAC(dev string) (string, error) {
	return parseLinkMAC(p.Exec("ip", "-j", "link", "show", "dev", dev))
}

func parseLinkMAC(out string, err error) (string, error) {
	if err != nil {
		return "", err
	}
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		return "", fmt.Errorf("parse ip link show: %v: %.200s", err, out)
	}
	return links[0].Address, nil
}

// cgroupName is the node's cgroup parent in every hierarchy.
func (n *KubeNode) cgroupName() string { return n.NS }

// start brings the node up: holder, mounts, containerd (with the images),
// kubelet and kube-proxy.
func (n *KubeNode) start() error {
	for _, m := range nodeMounts {
		if err := os.MkdirAll(filepath.Join(n.Root, m.dir), 0o755); err != nil {
			return err
		}
	}
	for _, d := range []string{"/etc/cni/net.d", "/opt/cni/bin", "/var/log/pods"} {
		if err := os.MkdirAll(n.HostPath(d), 0o755); err != nil {
			return err
		}
	}
	holder, err := startProc("holder", filepath.Join(n.dir, "holder.log"),
		"nsenter", "--net="+NetNSPath(n.NS), "unshare", "--mount", "--uts", "--propagation", "slave", "sleep", "infinity")
	if err != nil {
		return err
	}
	n.k.track(holder)
	n.holder = holder
	self, _ := os.Readlink("/proc/self/ns/mnt")
	err = WaitFor(5*time.Second, 20*time.Millisecond, func() error {
		if mnt, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", holder.Pid())); mnt == "" || mnt == self {
			return errors.New("holder has no mount namespace of its own yet")
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	if _, err := n.enter("-u", "hostname", n.Name); err != nil {
		return err
	}
	for _, m := range nodeMounts {
		if _, err := n.enter("-m", "mount", "--bind", filepath.Join(n.Root, m.dir), m.target); err != nil {
			return err
		}
	}
	sysctlDir := filepath.Join(n.dir, "sysctl")
	if err := os.MkdirAll(sysctlDir, 0o755); err != nil {
		return err
	}
	for key, val := range kubeletSysctls {
		f := filepath.Join(sysctlDir, strings.ReplaceAll(key, "/", "_"))
		if err := os.WriteFile(f, []byte(val+"\n"), 0o644); err != nil {
			return err
		}
		if _, err := n.enter("-m", "mount", "--bind", f, "/proc/sys/"+key); err != nil {
			return err
		}
	}
	if err := n.makeCgroups(); err != nil {
		return err
	}
	if err := n.startContainerd(); err != nil {
		return err
	}
	if err := n.startKubelet(); err != nil {
		return err
	}
	return n.startKubeProxy()
}

// enter runs a command in the node's namespaces (nsenter flags: -m mount,
// -u UTS, -n network).
func (n *KubeNode) enter(nsFlags string, argv ...string) (string, error) {
	return run(append([]string{"nsenter", "-t", strconv.Itoa(n.holder.Pid()), nsFlags}, argv...)...)
}

// daemon starts a long-running process in all of the node's namespaces.
func (n *KubeNode) daemon(name string, argv ...string) (*proc, error) {
	p, err := startProc(name, filepath.Join(n.dir, name+".log"),
		append([]string{"nsenter", "-t", strconv.Itoa(n.holder.Pid()), "-m", "-u", "-n"}, argv...)...)
	if err != nil {
		return nil, err
	}
	n.k.track(p)
	return p, nil
}

func (n *KubeNode) cgroupHierarchies() []string {
	hs, _ := filepath.Glob("/sys/fs/cgroup/*")
	var out []string
	for _, h := range hs {
		if fi, err := os.Stat(h); err == nil && fi.IsDir() {
			out = append(out, h)
		}
	}
	return out
}

// makeCgroups creates the node's cgroup parent in every v1 hierarchy (the
// kubelet checks they exist); a new cpuset needs its cpus and mems.
func (n *KubeNode) makeCgroups() error {
	for _, h := range n.cgroupHierarchies() {
		if filepath.Base(h) == "unified" {
			continue
		}
		if err := os.MkdirAll(filepath.Join(h, n.cgroupName()), 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", h, err)
		}
	}
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/cpuset", f))
		if err != nil {
			continue // no cpuset hierarchy
		}
		if err := os.WriteFile(filepath.Join("/sys/fs/cgroup/cpuset", n.cgroupName(), f), b, 0o644); err != nil {
			return fmt.Errorf("cpuset %s: %w", f, err)
		}
	}
	return nil
}

// containerdSocket is the node's containerd socket as the machine sees it.
func (n *KubeNode) containerdSocket() string { return n.HostPath("/run/containerd/containerd.sock") }

const containerdConfig = `version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # Pod netns under the state dir, not as cni-* entries in the machine's
  # /run/netns.
  netns_mounts_under_state_dir = true
  # No CAP_SYS_RESOURCE here: runc cannot set the sandbox's -998.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
`

func (n *KubeNode) startContainerd() error {
	conf := filepath.Join(n.dir, "containerd.toml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(containerdConfig, PauseImage)), 0o644); err != nil {
		return err
	}
	p, err := n.daemon("containerd", "containerd", "--config", conf)
	if err != nil {
		return err
	}
	n.containerd = p
	err = WaitFor(20*time.Second, 100*time.Millisecond, func() error {
		if done, err := p.exited(); done {
			return Permanent(fmt.Errorf("containerd exited (%s):\n%s", exitString(err), tail(p.logPath, 20)))
		}
		_, err := n.Ctr("version")
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: containerd: %w", n.Name, err)
	}
	for _, img := range n.k.images {
		if _, err := n.Ctr("images", "import", img); err != nil {
			return fmt.Errorf("%s: import %s: %w", n.Name, filepath.Base(img), err)
		}
	}
	return nil
}

// Ctr runs containerd's CLI against the node's containerd, in the CRI's
// namespace.
func (n *KubeNode) Ctr(args ...string) (string, error) {
	return run(append([]string{"ctr", "-a", n.containerdSocket(), "-n", "k8s.io"}, args...)...)
}

const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /%s
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
volumePluginDir: /var/lib/kubelet/volume-plugins
resolvConf: /etc/resolv.conf
# The API server calls exec and logs without a client certificate: a test
# cluster only (a real one gives it --kubelet-client-certificate).
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
`

// nodeIPs is the kubelet's --node-ip: the node's underlay address of each
// family, IPv4 first (the Node's InternalIPs, which nexthop takes as the
// node's addresses).
func (n *KubeNode) nodeIPs() string {
	ips := []string{n.Address.String()}
	if n.AddressV6.IsValid() {
		ips = append(ips, n.AddressV6.String())
	}
	return strings.Join(ips, ",")
}

func (n *KubeNode) startKubelet() error {
	conf, kc := filepath.Join(n.dir, "kubelet.yaml"), filepath.Join(n.dir, "kubelet.kubeconfig")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(kubeletConfig, n.cgroupName(), n.Address)), 0o644); err != nil {
		return err
	}
	if err := n.k.cp.writeKubeconfig(kc, fmt.Sprintf("https://%s:%d", ControlPlaneAddress, apiServerPort), "system:node:"+n.Name); err != nil {
		return err
	}
	p, err := n.daemon("kubelet", filepath.Join(n.k.cp.bin, "kubelet"), "--config="+conf, "--kubeconfig="+kc,
		"--hostname-override="+n.Name, "--node-ip="+n.nodeIPs(), "--v=1")
	if err != nil {
		return err
	}
	n.kubelet = p
	return nil
}

const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %s}
mode: iptables
clusterCIDR: %s
hostnameOverride: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# nf_conntrack_max and the conntrack timeouts are machine-wide here: leave
# them alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`

// startKubeProxy runs kube-proxy as a process, standing in for the
// DaemonSet a kubeadm cluster runs it as.
func (n *KubeNode) startKubeProxy() error {
	conf, kc := filepath.Join(n.dir, "kube-proxy.yaml"), filepath.Join(n.dir, "kube-proxy.kubeconfig")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(kubeProxyConfig, kc, joinPrefixes(n.k.ClusterCIDRs), n.Name)), 0o644); err != nil {
		return err
	}
	if err := n.k.cp.writeKubeconfig(kc, fmt.Sprintf("https://%s:%d", ControlPlaneAddress, apiServerPort), "system:kube-proxy"); err != nil {
		return err
	}
	p, err := n.daemon("kube-proxy", filepath.Join(n.k.cp.bin, "kube-proxy"), "--config="+conf, "--v=1")
	if err != nil {
		return err
	}
	n.proxy = p
	return nil
}

// stop ends everything running on the node, pods included, the way a
// power cut would: the mounts go with the holder's mount namespace.
func (n *KubeNode) stop() {
	for _, p := range []*proc{n.kubelet, n.proxy} {
		if p != nil {
			p.kill()
		}
	}
	// Pods: every process in the node's cgroups. Shims and hostNetwork
	// containers: every process in the node's netns.
	killCgroupTree(n.cgroupName())
	if out, err := run("ip", "netns", "pids", n.NS); err == nil {
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	for _, p := range []*proc{n.containerd, n.holder} {
		if p != nil {
			p.kill()
		}
	}
	killCgroupTree(n.cgroupName())
	removeCgroupTree(n.cgroupName())
	n.kubelet, n.proxy, n.containerd, n.holder = nil, nil, nil, nil
}

// killCgroupTree SIGKILLs every process in cgroup name (any hierarchy).
func killCgroupTree(name string) {
	for try := 0; try < 20; try++ {
		var pids []int
		for _, h := range []string{"/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"} {
			filepath.WalkDir(filepath.Join(h, name), func(p string, d os.DirEntry, err error) error {
				if err != nil || d.Name() != "cgroup.procs" {
					return nil
				}
				b, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						pids = append(pids, pid)
					}
				}
				return nil
			})
		}
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sweepCgroups kills and removes the node cgroups of a dead run's kubelet
// cluster.
func sweepCgroups(prefix string) {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/pids/" + prefix + "*")
	for _, d := range dirs {
		killCgroupTree(filepath.Base(d))
		removeCgroupTree(filepath.Base(d))
	}
}

// removeCgroupTree removes cgroup name, deepest first, in every hierarchy.
func removeCgroupTree(name string) {
	hs, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hs {
		var dirs []string
		filepath.WalkDir(filepath.Join(h, name), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Remove(dirs[i])
		}
	}
}

// Reboot stops the node as a power cut would, wipes what does not survive
// a reboot (the kernel's network state: the netns is made anew; /run) and
// starts it again. /var/lib (IPAM store, containerd's images and
// metadata, the kubelet's state) survives, as on disk.
func (n *KubeNode) Reboot() error {
	n.stop()
	if _, err := run("ip", "netns", "del", n.NS); err != nil {
		return fmt.Errorf("reboot %s: %w", n.Name, err)
	}
	// The kernel dismantles a namespace asynchronously: its veth's bridge
	// end goes a moment later.
	err := WaitFor(30*time.Second, 100*time.Millisecond, func() error {
		if _, err := run("ip", "-n", n.k.Underlay, "link", "show", "dev", n.Name); err == nil {
			return fmt.Errorf("%s's old underlay port is still there", n.Name)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reboot %s: %w", n.Name, err)
	}
	if err := os.RemoveAll(filepath.Join(n.Root, "run")); err != nil {
		return fmt.Errorf("reboot %s: wipe /run: %w", n.Name, err)
	}
	if err := n.k.wireNode(n.Node); err != nil {
		return err
	}
	if err := n.k.pinUnderlay(); err != nil {
		return err
	}
	if err := n.k.pinUnderlayV6(); err != nil {
		return err
	}
	return n.start()
}

// Close stops every node (pods included) and removes everything.
func (k *KubeCluster) Close() {
	if k == nil {
		return
	}
	for _, n := range k.KNodes {
		n.stop()
	}
	k.Cluster.Close()
	for _, d := range k.hostDirs {
		os.Remove(d) // only if still empty
	}
}

// Install applies manifests/ through an overlay that changes only the
// image, peers the nodes with the ToR (a BGPPeer per family), and waits
// until the DaemonSet has rolled out and every node is Ready. A dual-stack
// cluster first gets what kubeadm would have left (see kubeadmConfig).
func (k *KubeCluster) Install(ctx context.Context) error {
	if err := k.writeOverlay(); err != nil {
		return err
	}
	if k.Stack == StackDual {
		if err := k.Apply(ctx, k.kubeadmConfig()); err != nil {
			return fmt.Errorf("kubeadm-config ConfigMap: %w", err)
		}
	}
	k.log.Logf("kube: kubectl apply -k %s (image %s)", k.Overlay(), k.ImageRef)
	if out, err := k.Kubectl(ctx, "apply", "-k", k.Overlay()); err != nil {
		return fmt.Errorf("install: %w\n%s", err, out)
	}
	peers := map[string]netip.Addr{"tor": k.ToR.Address}
	if k.Stack == StackDual {
		// One session per family: a BGPPeer per address of the ToR.
		peers["tor-v6"] = k.ToR.AddressV6
	}
	for name, addr := range peers {
		peer := fmt.Sprintf(`{"apiVersion":"nexthop.io/v1","kind":"BGPPeer","metadata":{"name":%q},"spec":{"peerIP":%q,"asNumber":%d}}`, name, addr, ToRAS)
		if err := k.applyJSON(ctx, peer); err != nil {
			return fmt.Errorf("BGPPeer %s for the ToR: %w", name, err)
		}
	}
	if out, err := k.Kubectl(ctx, "-n", "nexthop-system", "rollout", "status", "ds/nexthop", "--timeout=5m"); err != nil {
		return fmt.Errorf("DaemonSet rollout: %w\n%s", err, out)
	}
	if out, err := k.Kubectl(ctx, "wait", "--for=condition=Ready", "node", "--all", "--timeout=3m"); err != nil {
		return fmt.Errorf("nodes Ready: %w\n%s", err, out)
	}
	return nil
}

// kubeadmConfig is the ConfigMap kube-system/kubeadm-config as kubeadm
// init writes it for this cluster (networking as kubeadm's
// --pod-network-cidr and --service-cidr; the rest left out). The daemons
// read its podSubnet to create the default IPPools: on a dual-stack
// cluster one per family, which is what a kubeadm user gets.
func (k *KubeCluster) kubeadmConfig() string {
	return fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata: {name: kubeadm-config, namespace: kube-system}
data:
  ClusterConfiguration: |
    apiVersion: kubeadm.k8s.io/v1beta4
    kind: ClusterConfiguration
    kubernetesVersion: v1.34.2
    controlPlaneEndpoint: %s:%d
    networking:
      dnsDomain: cluster.local
      podSubnet: %s
      serviceSubnet: %s
`, ControlPlaneAddress, apiServerPort, joinPrefixes(k.ClusterCIDRs), joinPrefixes(k.ServiceCIDRs))
}

// Overlay is the kustomize overlay Install applies.
func (k *KubeCluster) Overlay() string { return filepath.Join(k.Dir, "overlay") }

// writeOverlay writes an overlay of the repository's manifests/ that only
// sets the image, as the README tells users to.
func (k *KubeCluster) writeOverlay() error {
	name, tag, ok := strings.Cut(k.ImageRef[strings.LastIndex(k.ImageRef, "/")+1:], ":")
	if !ok {
		return fmt.Errorf("image %s has no tag", k.ImageRef)
	}
	repo := k.ImageRef[:strings.LastIndex(k.ImageRef, "/")+1] + name
	if err := os.MkdirAll(k.Overlay(), 0o755); err != nil {
		return err
	}
	rel, err := filepath.Rel(k.Overlay(), filepath.Join(sourceRoot(), "manifests"))
	if err != nil {
		return err
	}
	kust := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- %s\nimages:\n- name: nexthop-net/nexthop\n  newName: %s\n  newTag: %q\n", rel, repo, tag)
	return os.WriteFile(filepath.Join(k.Overlay(), "kustomization.yaml"), []byte(kust), 0o644)
}

// applyJSON applies one object given as JSON.
func (k *KubeCluster) applyJSON(ctx context.Context, obj string) error {
	f := filepath.Join(k.Dir, "apply-"+randToken()[:8]+".json")
	if err := os.WriteFile(f, []byte(obj), 0o644); err != nil {
		return err
	}
	defer os.Remove(f)
	_, err := k.Kubectl(ctx, "apply", "-f", f)
	return err
}

// Apply applies a manifest (YAML or JSON).
func (k *KubeCluster) Apply(ctx context.Context, manifest string) error {
	return k.applyJSON(ctx, manifest)
}

// PodSandbox is a running pod as its node sees it.
type PodSandbox struct {
	Node *KubeNode
	// Pid is the sandbox's pause process: nsenter -t Pid -n enters the
	// pod's network namespace.
	Pid int
	IP  netip.Addr
	// IPv6 is the pod's global IPv6 address on a dual-stack cluster.
	IPv6     netip.Addr
	HostVeth string
}

// Sandboxes lists the node's pod sandboxes that have a network of their
// own (hostNetwork pods have none).
func (n *KubeNode) Sandboxes() ([]PodSandbox, error) {
	out, err := n.Ctr("tasks", "ls")
	if err != nil {
		return nil, err
	}
	var pods []PodSandbox
	for _, line := range strings.Split(out, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 3 || f[2] != "RUNNING" {
			continue
		}
		pid, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.TrimRight(string(cmd), "\x00") != "/pause" {
			continue
		}
		ip, err := sandboxAddr(pid, "-4")
		if err != nil {
			continue // hostNetwork: the node's netns has no eth0
		}
		p := PodSandbox{Node: n, Pid: pid, IP: ip}
		if n.AddressV6.IsValid() {
			if p.IPv6, err = sandboxAddr(pid, "-6"); err != nil {
				return nil, fmt.Errorf("%s: pod sandbox %d (%s) has no IPv6 address on a dual-stack node: %w", n.Name, pid, ip, err)
			}
		}
		if r, err := run("ip", "-n", n.NS, "-j", "route", "get", ip.String()); err == nil {
			var routes []struct {
				Dev string `json:"dev"`
			}
			if json.Unmarshal([]byte(r), &routes) == nil && len(routes) == 1 {
				p.HostVeth = routes[0].Dev
			}
		}
		pods = append(pods, p)
	}
	return pods, nil
}

// IPOf is the pod's address of the family (v6: IPv6), zero if none.
func (p PodSandbox) IPOf(v6 bool) netip.Addr {
	if v6 {
		return p.IPv6
	}
	return p.IP
}

// sandboxAddr is the global address of family ("-4" or "-6") on eth0 in
// the network namespace of process pid.
func sandboxAddr(pid int, family string) (netip.Addr, error) {
	out, err := run("nsenter", "-t", strconv.Itoa(pid), "-n", "ip", "-j", family, "addr", "show", "dev", "eth0", "scope", "global")
	if err != nil {
		return netip.Addr{}, err
	}
	var addrs []struct {
		AddrInfo []struct {
			Local string `json:"local"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &addrs); err != nil || len(addrs) != 1 {
		return netip.Addr{}, fmt.Errorf("parse ip %s addr show dev eth0: %v: %.300s", family, err, out)
	}
	// The scope filter leaves an empty object where it dropped an address.
	var local []string
	for _, a := range addrs[0].AddrInfo {
		if a.Local != "" {
			local = append(local, a.Local)
		}
	}
	if len(local) != 1 {
		return netip.Addr{}, fmt.Errorf("want one global %s address on eth0, have %v", family, local)
	}
	return netip.ParseAddr(local[0])
}

// Pin makes the pod's and its node's neighbour entries for each other
// permanent (the machine's ARP table may be full), for IPv6 too.
func (p PodSandbox) Pin() error {
	if p.HostVeth == "" {
		return fmt.Errorf("pod %s on %s: no host route", p.IP, p.Node.Name)
	}
	podMAC, err := p.linkMAC("eth0")
	if err != nil {
		return err
	}
	vethMAC, err := linkMAC(p.Node.NS, p.HostVeth)
	if err != nil {
		return err
	}
	gateways := map[netip.Addr]string{p.IP: podGateway}
	if p.IPv6.IsValid() {
		gateways[p.IPv6] = podGatewayV6
	}
	for ip, gw := range gateways {
		if _, err := p.Exec("ip", "neigh", "replace", gw, "lladdr", vethMAC, "dev", "eth0", "nud", "permanent"); err != nil {
			return fmt.Errorf("pod %s on %s: pin gateway %s: %w", p.IP, p.Node.Name, gw, err)
		}
		if err := ipn(p.Node.NS, "pin pod "+ip.String(), "neigh", "replace", ip.String(), "lladdr", podMAC, "dev", p.HostVeth, "nud", "permanent"); err != nil {
			return err
		}
	}
	return nil
}

// Exec runs a command of the machine's inside the pod's network namespace.
func (p PodSandbox) Exec(argv ...string) (string, error) {
	return run(append([]string{"nsenter", "-t", strconv.Itoa(p.Pid), "-n"}, argv...)...)
}

// Sandboxes lists every node's pod sandboxes and pins their neighbours.
func (k *KubeCluster) Sandboxes() (map[netip.Addr]PodSandbox, error) {
	all := map[netip.Addr]PodSandbox{}
	for _, n := range k.KNodes {
		pods, err := n.Sandboxes()
		if err != nil {
			return nil, err
		}
		for _, p := range pods {
			if err := p.Pin(); err != nil {
				return nil, err
			}
			all[p.IP] = p
		}
	}
	return all, nil
}

// RunUninstall runs the documented cleanup command on the node as root:
// `/opt/cni/bin/nexthop uninstall`, the plugin binary the DaemonSet
// installed, or another copy of it.
func (n *KubeNode) RunUninstall(binary string) (string, error) {
	return n.enter("-m", "-n", binary, "uninstall")
}

func randToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// kubeletLogs helps a failing test: the tail of every node's kubelet and
// containerd logs.
func (k *KubeCluster) NodeLogTails(lines int) string {
	var b strings.Builder
	for _, n := range k.KNodes {
		for _, name := range []string{"kubelet", "containerd", "kube-proxy"} {
			fmt.Fprintf(&b, "--- %s %s:\n%s\n", n.Name, name, tail(filepath.Join(n.dir, name+".log"), lines))
		}
	}
	return b.String()
}

// ServeInternet runs a TCP server on InternetServer:port, inside the
// Internet namespace, that answers every connection with the address it
// came from: what the outside world sees of a pod. Close stops it.
func (k *KubeCluster) ServeInternet(port int) (io.Closer, error) {
	var l net.Listener
	err := ns.WithNetNSPath(NetNSPath(k.Internet), func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", netip.AddrPortFrom(InternetServer, uint16(port)).String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen in %s: %w", k.Internet, err)
	}
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(conn.RemoteAddr().String())
			fmt.Fprintf(conn, "%s\n", host)
			conn.Close()
		}
	}()
	return l, nil
}

// DaemonLogs is the tail of every nexthopd container's log, for a failing
// test.
func (k *KubeCluster) DaemonLogs(ctx context.Context, lines int) string {
	out, err := k.Kubectl(ctx, "-n", "nexthop-system", "logs", "-l", "app.kubernetes.io/name=nexthop", "-c", "nexthopd",
		"--prefix", "--tail", strconv.Itoa(lines))
	if err != nil {
		return fmt.Sprintf("(kubectl logs: %v)", err)
	}
	return out
}
