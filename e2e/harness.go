// Package e2e builds small nexthop clusters out of network namespaces on
// one machine (an underlay bridge, node namespaces running nexthopd, one
// pod namespace per node, an FRR top-of-rack router) and offers the checks
// a user would make by hand: kernel routes, BGP RIBs, pings, captures.
//
// The harness works from Go tests and from plain programs (e2e/demo): it
// reports through a Logger and is torn down with Cluster.Close.
package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/nexthop-net/nexthop/internal/poll"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nexthop-net/nexthop/config"
)

// Logger is the part of testing.TB the harness needs; *testing.T fits.
type Logger interface {
	Logf(format string, args ...any)
}

// Addresses of the test topology. 192.0.2.0/24 is TEST-NET-1, so nothing
// here can clash with a real network the machine is on.
var (
	UnderlayPrefix = netip.MustParsePrefix("192.0.2.0/24")
	// PodPool holds every node's pod block (10.244.i.0/24).
	PodPool    = netip.MustParsePrefix("10.244.0.0/16")
	ToRAddress = netip.MustParseAddr("192.0.2.254")
)

// AS numbers: nodes share one AS (iBGP full mesh), the ToR is eBGP.
const (
	NodeAS uint32 = 64512
	ToRAS  uint32 = 65000
)

// NodeAddress is node i's underlay address, 192.0.2.(10+i).
func NodeAddress(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)})
}

// NodePodCIDR is node i's default pod block, 10.244.i.0/24.
func NodePodCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)
}

// IPv6 addresses of the test topology, all unique-local (fd00::/8), as
// the IPv4 ones are documentation space: nothing here routes anywhere real.
var (
	UnderlayPrefixV6 = netip.MustParsePrefix("fd00:192::/64")
	// PodPoolV6 holds every node's IPv6 pod block (fd00:10:244:i::/64).
	PodPoolV6    = netip.MustParsePrefix("fd00:10:244::/56")
	ToRAddressV6 = netip.MustParseAddr("fd00:192::254")
)

// NodeAddressV6 is node i's IPv6 underlay address, UnderlayV6 of its
// IPv4 one (node1: fd00:192::11).
func NodeAddressV6(i int) netip.Addr { return UnderlayV6(NodeAddress(i)) }

// UnderlayV6 is the IPv6 underlay address that goes with an IPv4 one:
// fd00:192:: and the last byte's decimal digits read as hex, so that
// 192.0.2.11 is fd00:192::11 and 192.0.2.254 (the ToR) fd00:192::254.
func UnderlayV6(v4 netip.Addr) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:192::%d", v4.As4()[3]))
}

// NodePodCIDRv6 is node i's IPv6 pod block, fd00:10:244:i::/64 (i in
// hex: 256 /64s fit the /56 pool).
func NodePodCIDRv6(i int) netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", i))
}

// Stack is which address families a cluster's underlay, nodes and pods
// have.
type Stack int

const (
	// StackIPv4 is the default: IPv4 only.
	StackIPv4 Stack = iota
	// StackDual gives every node an IPv6 underlay address and block next
	// to its IPv4 ones, and every pod an address of each family; each
	// pair of speakers has one session per family (the design of
	// issue 14: an IPv6 session between the IPv6 addresses).
	StackDual
	// StackIPv6 is IPv6 only: no IPv4 underlay or pod address; a node's
	// Address is its IPv6 one and its router ID is derived from its name.
	StackIPv6
)

func (s Stack) String() string {
	return [...]string{"IPv4", "dual-stack", "IPv6-only"}[s]
}

// Families lists the families the stack has, as the config package's
// v6 flags: IPv4 first.
func (s Stack) Families() []bool {
	switch s {
	case StackDual:
		return []bool{false, true}
	case StackIPv6:
		return []bool{true}
	}
	return []bool{false}
}

// Has says whether the stack has the family.
func (s Stack) Has(v6 bool) bool {
	return s == StackDual || v6 == (s == StackIPv6)
}

// family names a family in messages and FRR/gobgp arguments.
func family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// Options describe the cluster to build.
type Options struct {
	// Nodes is the number of node namespaces (1..200).
	Nodes int
	// Stack chooses the address families; the zero value is IPv4 only.
	Stack Stack
	// ToR adds a namespace running FRR bgpd that peers with every node.
	ToR bool
	// AttachPod wires a pod namespace to its node. Nil means VethPod, the
	// harness's Calico-style stand-in for the CNI plugin; CNIPod runs the
	// real plugin, once the node's daemon is up (see StartDaemon).
	AttachPod PodAttacher
	// NoPods leaves out the one pod per node, for tests that create their
	// own pods (Cluster.AddPodNS, Cluster.CNI).
	NoPods bool
	// Log receives progress messages. Nil discards them.
	Log Logger
	// Bin is where nexthopd and gobgp live. Empty means $NEXTHOP_BIN, then
	// <repo>/bin.
	Bin string
}

// PodAttacher creates pod p's namespace plumbing on node n. It must give
// the pod p.IP and a route to the rest of the world through the node. An
// attacher that needs the node's daemon returns ErrAttachAfterStart while
// it is not running; StartDaemon then attaches the pod.
type PodAttacher func(c *Cluster, n *Node, p *Pod) error

// Cluster is one built topology. All of it is removed by Close.
type Cluster struct {
	// Prefix starts every namespace name, e.g. "nh-1a2b-".
	Prefix string
	// Dir holds configs, logs and captures for this cluster.
	Dir string
	// Underlay is the namespace holding the bridge "br0".
	Underlay string
	Nodes    []*Node
	ToR      *ToR
	Bin      string
	// Stack is the address families of the underlay, nodes and pods.
	Stack Stack

	log Logger
	// cniBin finds (or builds) the reference portmap plugin once.
	cniBin cniBinaries

	// tors are every FRR router on the underlay (ToR and any added).
	tors []*ToR

	mu         sync.Mutex
	namespaces []string
	procs      []*proc
	closers    []io.Closer
	closed     bool
}

// Node is one node namespace and, while running, its nexthopd.
type Node struct {
	Index int
	// Name is the short name ("node1"), NS the namespace name.
	Name string
	NS   string
	// Address is the node's underlay address: IPv4, or IPv6 on an
	// IPv6-only cluster (as config.Config.Address).
	Address netip.Addr
	// AddressV6 is its IPv6 underlay address (dual-stack and IPv6-only).
	AddressV6 netip.Addr
	Pod       *Pod
	// Config is what the next StartDaemon writes; RestartDaemon edits it.
	Config config.Config

	dir    string
	daemon *proc
	// attachPending is the attacher StartDaemon must still run for Pod.
	attachPending PodAttacher
	// cni is the node's default CNI runtime (Cluster.CNI).
	cni *CNI
	// logStart is the log's size when the current daemon run started.
	logStart int64
	// kubeconfig, once set by UseKubernetes, runs the daemon in
	// Kubernetes mode.
	kubeconfig string
}

// PodCIDR is the block the node's daemon is configured to announce: the
// IPv4 one, or the IPv6 one on an IPv6-only node.
func (n *Node) PodCIDR() netip.Prefix {
	if p := n.PodCIDROf(false); p.IsValid() {
		return p
	}
	return n.PodCIDROf(true)
}

// PodCIDROf is the node's configured block of the family, or the zero
// Prefix.
func (n *Node) PodCIDROf(v6 bool) netip.Prefix {
	if !v6 && n.Config.PodCIDR.IsValid() {
		return n.Config.PodCIDR // the single-family spelling IPv4 tests edit
	}
	return n.Config.PodCIDROf(v6)
}

// PodCIDRs are the node's configured blocks, IPv4 first.
func (n *Node) PodCIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, v6 := range []bool{false, true} {
		if p := n.PodCIDROf(v6); p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// AddressOf is the node's underlay address of the family, or the zero
// Addr.
func (n *Node) AddressOf(v6 bool) netip.Addr {
	return config.AddressOfFamily(n.Address, n.AddressV6, v6)
}

// Pod is one pod namespace, attached to a node.
type Pod struct {
	Name string
	NS   string
	// IP is the pod's address: IPv4, or IPv6 on an IPv6-only cluster.
	IP netip.Addr
	// IPv6 is its IPv6 address on a dual-stack or IPv6-only cluster.
	IPv6 netip.Addr
	// HostVeth is the node-side interface (set by the attacher).
	HostVeth string
	// ContainerID is the CNI container ID (CNIPod only).
	ContainerID string
}

// IPOf is the pod's address of the family, or the zero Addr.
func (p *Pod) IPOf(v6 bool) netip.Addr {
	return config.AddressOfFamily(p.IP, p.IPv6, v6)
}

var nsPattern = regexp.MustCompile(`^nh-[0-9a-f]{4}-`)

// registryDir records which live process owns which namespace prefix, so a
// sweep removes only what a dead run left behind and never a cluster that
// a concurrent test or demo is still using.
const registryDir = "/run/nexthop-e2e"

type registration struct {
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"` // /proc/<pid>/stat starttime: guards against pid reuse
	Dir   string `json:"dir"`
}

// New builds a cluster: underlay bridge, nodes, pods and (if asked) the
// FRR ToR. Daemons are not started. On error everything built so far is
// removed again.
func New(o Options) (c *Cluster, err error) {
	if o.Nodes < 1 || o.Nodes > 200 {
		return nil, fmt.Errorf("options: Nodes %d out of range 1..200", o.Nodes)
	}
	if o.Log == nil {
		o.Log = discard{}
	}
	if o.AttachPod == nil {
		o.AttachPod = VethPod
	}
	if err := CheckTools(); err != nil {
		return nil, err
	}
	if err := Sweep(o.Log); err != nil {
		o.Log.Logf("sweep of earlier runs: %v", err)
	}
	if o.Stack < StackIPv4 || o.Stack > StackIPv6 {
		return nil, fmt.Errorf("options: unknown Stack %d", o.Stack)
	}
	c = &Cluster{log: o.Log, Bin: o.Bin, Stack: o.Stack}
	if c.Bin == "" {
		c.Bin = BinDir()
	}
	if err := c.register(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Close()
			c = nil
		}
	}()
	c.Underlay = c.Prefix + "ul"
	if err := c.buildUnderlay(); err != nil {
		return c, err
	}
	for i := 1; i <= o.Nodes; i++ {
		n, err := c.addNode(i)
		if err != nil {
			return c, err
		}
		if o.NoPods {
			continue
		}
		if err := c.addPod(n, o.AttachPod); err != nil {
			return c, err
		}
	}
	if o.ToR {
		if err := c.startToR(); err != nil {
			return c, err
		}
	}
	c.setPeers()
	if err := c.pinUnderlayV6(); err != nil {
		return c, err
	}
	tor := ""
	if o.ToR {
		tor = " + FRR ToR"
	}
	c.log.Logf("cluster %s: %d nodes%s, %s, files in %s", c.Prefix, o.Nodes, tor, c.Stack, c.Dir)
	return c, nil
}

type discard struct{}

func (discard) Logf(string, ...any) {}

// BinDir is where the harness finds nexthopd and gobgp: $NEXTHOP_BIN (set
// by the Makefile), else the repository's bin/.
func BinDir() string {
	if d := os.Getenv("NEXTHOP_BIN"); d != "" {
		return d
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "bin"
	}
	return filepath.Join(filepath.Dir(filepath.Dir(file)), "bin")
}

// binary returns the path of a built binary or says how to build it.
func (c *Cluster) binary(name string) (string, error) {
	p := filepath.Join(c.Bin, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not found in %s: run `make build` first (or set NEXTHOP_BIN)", name, c.Bin)
	}
	return p, nil
}

// CheckTools reports what stops the harness from running on this machine:
// root, iproute2, FRR's bgpd, tcpdump, ping.
func CheckTools() error {
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, errors.New("must run as root (network namespaces)"))
	}
	for _, t := range []string{"ip", "ping", "tcpdump", "vtysh"} {
		if _, err := lookPath(t); err != nil {
			errs = append(errs, fmt.Errorf("%s not installed (run `make deps`)", t))
		}
	}
	if _, err := os.Stat(bgpdPath); err != nil {
		errs = append(errs, fmt.Errorf("%s not installed (run `make deps` for the frr package)", bgpdPath))
	}
	return errors.Join(errs...)
}

// register picks an unused prefix and records this process as its owner
// before any namespace exists, so a crash at any point is sweepable.
func (c *Cluster) register() error {
	if err := os.MkdirAll(registryDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", registryDir, err)
	}
	start, err := procStartTime(os.Getpid())
	if err != nil {
		return err
	}
	for try := 0; try < 20; try++ {
		var b [2]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("random prefix: %w", err)
		}
		prefix := "nh-" + hex.EncodeToString(b[:]) + "-"
		if nsWithPrefix(prefix) != nil {
			continue
		}
		f, err := os.OpenFile(filepath.Join(registryDir, prefix+".json"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("register cluster %s: %w", prefix, err)
		}
		dir, err := os.MkdirTemp("", prefix)
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			return fmt.Errorf("create cluster dir: %w", err)
		}
		err = json.NewEncoder(f).Encode(registration{Pid: os.Getpid(), Start: start, Dir: dir})
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(f.Name())
			os.RemoveAll(dir)
			return fmt.Errorf("register cluster %s: %w", prefix, err)
		}
		c.Prefix, c.Dir = prefix, dir
		return nil
	}
	return errors.New("no free cluster prefix after 20 tries")
}

// addNS creates a namespace with lo up and remembers it for Close.
func (c *Cluster) addNS(name string) error {
	c.mu.Lock()
	c.namespaces = append(c.namespaces, name)
	c.mu.Unlock()
	if _, err := run("ip", "netns", "add", name); err != nil {
		return fmt.Errorf("add netns %s: %w", name, err)
	}
	if _, err := run("ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		return fmt.Errorf("lo up in %s: %w", name, err)
	}
	return nil
}

// closeLater remembers a file (a log) for Close to close.
func (c *Cluster) closeLater(f io.Closer) {
	c.mu.Lock()
	c.closers = append(c.closers, f)
	c.mu.Unlock()
}

// track remembers a child so Close kills it.
func (c *Cluster) track(p *proc) {
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
}

// Close kills every process the cluster started, deletes its namespaces
// and files. It is safe to call more than once and after a partial New.
func (c *Cluster) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	procs, closers := c.procs, c.closers
	c.mu.Unlock()

	for _, p := range procs {
		p.kill()
	}
	for _, f := range closers {
		f.Close()
	}
	if err := removeNamespaces(nsWithPrefix(c.Prefix)); err != nil {
		c.log.Logf("cleanup %s: %v", c.Prefix, err)
	}
	if keep := os.Getenv("NEXTHOP_E2E_KEEP"); keep == "" && c.Dir != "" {
		os.RemoveAll(c.Dir)
	} else if c.Dir != "" {
		c.log.Logf("NEXTHOP_E2E_KEEP set: logs kept in %s", c.Dir)
	}
	if c.Prefix != "" {
		os.Remove(filepath.Join(registryDir, c.Prefix+".json"))
	}
}

// Namespaces lists the cluster's namespaces that currently exist.
func (c *Cluster) Namespaces() []string { return nsWithPrefix(c.Prefix) }

// nsWithPrefix lists existing named namespaces starting with prefix.
func nsWithPrefix(prefix string) []string {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// removeNamespaces kills whatever still runs inside each namespace (a
// netns with live processes outlives `ip netns del`) and deletes it.
func removeNamespaces(names []string) error {
	var errs []error
	for _, ns := range names {
		if out, err := run("ip", "netns", "pids", ns); err == nil {
			for _, f := range strings.Fields(out) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
	for _, ns := range names {
		if _, err := run("ip", "netns", "del", ns); err != nil {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", ns, err))
		}
	}
	return errors.Join(errs...)
}

// Sweep removes clusters left behind by harness runs that died without
// cleaning up: only prefixes registered by a process that no longer exists.
// Namespaces that look like ours but were never registered are reported,
// not touched.
func Sweep(log Logger) error {
	if log == nil {
		log = discard{}
	}
	entries, err := os.ReadDir(registryDir)
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", registryDir, err)
	}
	registered := map[string]bool{}
	var errs []error
	for _, e := range entries {
		prefix, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !nsPattern.MatchString(prefix) {
			continue
		}
		registered[prefix] = true
		path := filepath.Join(registryDir, e.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", path, err))
			continue
		}
		var r registration
		if err := json.Unmarshal(b, &r); err != nil {
			// A run that crashed mid-write: nothing was built yet.
			os.Remove(path)
			continue
		}
		if alive(r.Pid, r.Start) {
			continue
		}
		stale := nsWithPrefix(prefix)
		log.Logf("sweep: removing %d namespaces of dead run %s (pid %d)", len(stale), prefix, r.Pid)
		// A kubelet cluster's pods live in cgroups named after their node
		// (and in namespaces of their own, which removing ours misses).
		sweepCgroups(prefix)
		if err := removeNamespaces(stale); err != nil {
			errs = append(errs, err)
			continue
		}
		if r.Dir != "" && strings.HasPrefix(filepath.Base(r.Dir), prefix) {
			os.RemoveAll(r.Dir)
		}
		os.Remove(path)
	}
	var unknown []string
	for _, ns := range nsWithPrefix("nh-") {
		if m := nsPattern.FindString(ns); m != "" && !registered[m] {
			unknown = append(unknown, ns)
		}
	}
	if len(unknown) > 0 {
		log.Logf("sweep: leaving unregistered namespaces alone (not made by this harness?): %s", strings.Join(unknown, " "))
	}
	return errors.Join(errs...)
}

// alive reports whether pid is still the process that registered.
func alive(pid int, start uint64) bool {
	got, err := procStartTime(pid)
	return err == nil && got == start
}

// procStartTime reads field 22 of /proc/<pid>/stat (start time in ticks).
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	// The command name may contain spaces; fields restart after its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse stat of pid %d", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("parse stat of pid %d: %d fields", pid, len(f))
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// WaitFor polls fn every interval until it returns nil or timeout passes,
// and then returns fn's last error. An error wrapped with Permanent ends
// the wait at once: there is no point polling a process that has exited.
func WaitFor(timeout, interval time.Duration, fn func() error) error {
	return poll.Until(timeout, interval, fn)
}

// Permanent marks an error that WaitFor should not retry.
func Permanent(err error) error { return poll.Permanent(err) }
