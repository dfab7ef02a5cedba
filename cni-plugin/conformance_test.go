package cniplugin

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/nexthop-net/nexthop/ipam"
)

// Binaries built once per test run: our plugin through its real main, and
// the reference tools it is tested against.
var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func buildPlugins(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "nexthop-cni-bin-")
		if buildErr != nil {
			return
		}
		_, here, _, _ := runtime.Caller(0)
		root := filepath.Dir(filepath.Dir(here))
		for name, pkg := range map[string]string{
			"nexthop":    "./cmd/nexthop",
			"portmap":    "github.com/containernetworking/plugins/plugins/meta/portmap",
			"ptp":        "github.com/containernetworking/plugins/plugins/main/ptp",
			"host-local": "github.com/containernetworking/plugins/plugins/ipam/host-local",
			"cnitool":    "github.com/containernetworking/cni/cnitool",
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, name), pkg)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func requireIptables(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("portmap needs iptables in the host netns: apt-get install iptables")
	}
}

// The shipped conflist says cniVersion 1.0.0, the newest containerd 1.6 and
// 1.7 (libcni v1.1) read, and lists 1.1.0 in cniVersions, which libcni
// v1.2 and later (containerd 2, CRI-O) pick: those get GC and STATUS.
const (
	shippedVersion = "1.0.0"
	newestVersion  = "1.1.0"
)

// shippedConfList is cni-plugin/05-nexthop.conflist pointed at sock.
func shippedConfList(t testing.TB, sock string) []byte {
	t.Helper()
	b, err := os.ReadFile("05-nexthop.conflist")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("05-nexthop.conflist: %v", err)
	}
	// cni-plugin/compat/libcni11 runs this file through libcni v1.1.
	if m["cniVersion"] != shippedVersion {
		t.Fatalf("05-nexthop.conflist: cniVersion %v, want %s", m["cniVersion"], shippedVersion)
	}
	if vs, _ := m["cniVersions"].([]any); !slices.Contains(vs, any(newestVersion)) {
		t.Fatalf("05-nexthop.conflist: cniVersions %v lacks %s", m["cniVersions"], newestVersion)
	}
	plugins := m["plugins"].([]any)
	if mtu, ok := plugins[0].(map[string]any)["mtu"]; ok {
		t.Fatalf("05-nexthop.conflist: sets mtu %v; it must leave it to the daemon", mtu)
	}
	plugins[0].(map[string]any)["ipamSocket"] = sock
	if plugins[1].(map[string]any)["type"] != "portmap" {
		t.Fatal("05-nexthop.conflist: second plugin is not portmap")
	}
	out, _ := json.Marshal(m)
	return out
}

func iptablesNAT(t *testing.T, n ns.NetNS) string {
	t.Helper()
	out, err := in(t, n, func() ([]byte, error) { return exec.Command("iptables", "-w", "-t", "nat", "-S").CombinedOutput() })
	if err != nil {
		t.Fatalf("iptables -t nat -S: %v: %s", err, out)
	}
	return string(out)
}

func TestConformanceLibcni(t *testing.T) {
	requireRoot(t)
	requireIptables(t)
	bin := buildPlugins(t)
	// The daemon knows the pod MTU (say IP-in-IP on a 1450 underlay).
	host := newTestHost(t, "10.81.0.0/24", ipam.WithMTU(func() int { return 1430 }))
	pod := newNetNS(t, "pod")
	ctx := context.Background()

	list, err := libcni.ConfListFromBytes(shippedConfList(t, host.sock))
	if err != nil {
		t.Fatal(err)
	}
	if list.CNIVersion != newestVersion {
		t.Fatalf("libcni reads the shipped conflist as version %s, want %s from cniVersions", list.CNIVersion, newestVersion)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{bin}, t.TempDir(), nil)
	info, err := cni.GetVersionInfo(ctx, "nexthop")
	if err != nil || !slices.Contains(info.SupportedVersions(), newestVersion) {
		t.Fatalf("VERSION: %v %v", info, err)
	}
	if _, err := cni.ValidateNetworkList(ctx, list); err != nil {
		t.Fatalf("validate conflist: %v", err)
	}
	rt := portmapPod(pod, "web", 18080)
	res := addList(t, ctx, cni, host, list, rt)
	if res.CNIVersion != newestVersion || len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.81.0.2/32" {
		t.Fatalf("ADD result %s %+v", res.CNIVersion, res.IPs)
	}
	// The shipped conflist has no mtu: the daemon's reaches both ends.
	hostVeth := ipam.PodHostVethName("default", "web")
	if p, h := linkMTU(t, pod, "eth0"), linkMTU(t, host.ns, hostVeth); p != 1430 || h != 1430 {
		t.Fatalf("MTU: pod eth0 %d, host %s %d, want the daemon's 1430", p, hostVeth, h)
	}
	if i := res.Interfaces[1]; i.Name != "eth0" || i.Mtu != 1430 {
		t.Fatalf("ADD result pod interface %+v, want mtu 1430", i)
	}
	if nat := iptablesNAT(t, host.ns); !strings.Contains(nat, "--dport 18080") || !strings.Contains(nat, "10.81.0.2:80") {
		t.Fatalf("portmap rules missing from the host netns:\n%s", nat)
	}
	// The port mapping works: node address :18080 → pod :80.
	assertTCP(t, pod, host.ns, "10.81.0.2:80")
	assertTCPVia(t, pod, ":80", host.ns, net.JoinHostPort(host.addr.String(), "18080"))

	if _, err := in(t, host.ns, func() (any, error) { return nil, cni.CheckNetworkList(ctx, list, rt) }); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	// A changed MTU fails CHECK through the binary.
	setLinkMTU(t, pod, "eth0", 1500)
	_, err = in(t, host.ns, func() (any, error) { return nil, cni.CheckNetworkList(ctx, list, rt) })
	if err == nil || !strings.Contains(err.Error(), "pod interface eth0 has MTU 1500, want 1430") {
		t.Fatalf("CHECK after changing the pod MTU: %v", err)
	}
	setLinkMTU(t, pod, "eth0", 1430)
	if err := cni.GetStatusNetworkList(ctx, list); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	gcKeep := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: rt.ContainerID, IfName: "eth0"}}}
	if _, err := in(t, host.ns, func() (any, error) { return nil, cni.GCNetworkList(ctx, list, gcKeep) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if _, ok := host.alloc.Get(rt.ContainerID, "eth0"); !ok {
		t.Fatal("GC released a valid attachment")
	}

	// Break the pod's gateway route: CHECK through the binary names it.
	err = pod.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		routes, err := netlink.RouteList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Scope == netlink.SCOPE_LINK && r.Dst != nil && r.Dst.String() == "169.254.1.1/32" {
				return netlink.RouteDel(&r)
			}
		}
		return fmt.Errorf("no gateway route in %v", routes)
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = in(t, host.ns, func() (any, error) { return nil, cni.CheckNetworkList(ctx, list, rt) })
	if err == nil || !strings.Contains(err.Error(), "169.254.1.1 dev eth0 scope link missing") {
		t.Fatalf("CHECK after deleting the gateway route: %v", err)
	}

	for i := range 2 { // DEL is idempotent
		if _, err := in(t, host.ns, func() (any, error) { return nil, cni.DelNetworkList(ctx, list, rt) }); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if nat := iptablesNAT(t, host.ns); strings.Contains(nat, "--dport 18080") {
		t.Fatalf("portmap rules left after DEL:\n%s", nat)
	}
	if host.alloc.Used() != 0 {
		t.Fatalf("DEL left %d allocations", host.alloc.Used())
	}
	// GCArgs without a list sends "cni.dev/valid-attachments": null: refused,
	// nothing released. An empty list releases what no attachment holds.
	if _, err := host.alloc.Allocate(ctx, ipam.Request{ContainerID: "leaked", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	_, err = in(t, host.ns, func() (any, error) { return nil, cni.GCNetworkList(ctx, list, &libcni.GCArgs{}) })
	if err == nil || !strings.Contains(err.Error(), "cni.dev/valid-attachments: null") || host.alloc.Used() != 1 {
		t.Fatalf("GC with a null list: %v; %d allocations left, want it refused and 1", err, host.alloc.Used())
	}
	none := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}
	if _, err := in(t, host.ns, func() (any, error) { return nil, cni.GCNetworkList(ctx, list, none) }); err != nil {
		t.Fatalf("GC of nothing: %v", err)
	}
	if host.alloc.Used() != 0 {
		t.Fatalf("GC with an empty list left %d allocations", host.alloc.Used())
	}
}

// assertTCPVia listens on lAddr in srvNS and connects to dAddr from cliNS
// (the two differ when NAT sits between them).
func assertTCPVia(t *testing.T, srvNS ns.NetNS, lAddr string, cliNS ns.NetNS, dAddr string) {
	t.Helper()
	l, err := in(t, srvNS, func() (net.Listener, error) { return net.Listen("tcp4", lAddr) })
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := in(t, cliNS, func() (net.Conn, error) { return net.Dial("tcp4", dAddr) })
	if err != nil {
		t.Fatalf("connect to %s (mapped to %s): %v", dAddr, lAddr, err)
	}
	defer c.Close()
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read via %s: %q %v", dAddr, buf, err)
	}
}

func TestConformanceCnitool(t *testing.T) {
	requireRoot(t)
	requireIptables(t)
	bin := buildPlugins(t)
	host := newTestHost(t, "10.82.0.0/24")
	pod := newNetNS(t, "pod")
	confDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(confDir, "05-nexthop.conflist"), shippedConfList(t, host.sock), 0o644); err != nil {
		t.Fatal(err)
	}
	cnitool := func(args ...string) (string, error) {
		return in(t, host.ns, func() (string, error) {
			cmd := exec.Command(filepath.Join(bin, "cnitool"), args...)
			cmd.Env = append(os.Environ(), "CNI_PATH="+bin, "NETCONFPATH="+confDir,
				`CAP_ARGS={"portMappings":[{"hostPort":18081,"containerPort":80,"protocol":"tcp"}]}`)
			out, err := cmd.CombinedOutput()
			return string(out), err
		})
	}
	out, err := cnitool("add", "nexthop", pod.Path())
	if err != nil {
		t.Fatalf("cnitool add: %v\n%s", err, out)
	}
	res := &current.Result{}
	if err := json.Unmarshal([]byte(out), res); err != nil || len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.82.0.2/32" {
		t.Fatalf("cnitool add printed %s (%v)", out, err)
	}
	// Neither the conflist nor this daemon (no WithMTU) says: 1500.
	if got := linkMTU(t, pod, "eth0"); got != DefaultMTU || len(res.Interfaces) != 2 || res.Interfaces[1].Mtu != DefaultMTU {
		t.Fatalf("pod eth0 MTU %d, result %s: want %d", got, out, DefaultMTU)
	}
	t.Cleanup(func() { cnitool("del", "nexthop", pod.Path()) })
	for _, verb := range []string{"check", "status"} {
		if out, err := cnitool(verb, "nexthop", pod.Path()); err != nil {
			t.Fatalf("cnitool %s: %v\n%s", verb, err, out)
		}
	}
	for range 2 {
		if out, err := cnitool("del", "nexthop", pod.Path()); err != nil {
			t.Fatalf("cnitool del: %v\n%s", err, out)
		}
	}
	if host.alloc.Used() != 0 {
		t.Fatalf("cnitool del left %d allocations", host.alloc.Used())
	}
	// cnitool's gc sends no list of valid attachments at all: refused, so
	// running it on a live node cannot free every pod's address.
	if _, err := host.alloc.Allocate(context.Background(), ipam.Request{ContainerID: "leaked", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	out, err = cnitool("gc", "nexthop", pod.Path())
	if err == nil || !strings.Contains(out, "cni.dev/valid-attachments: missing") {
		t.Fatalf("cnitool gc: %v, want it refused for the missing list\n%s", err, out)
	}
	if host.alloc.Used() != 1 {
		t.Fatalf("refused cnitool gc left %d allocations, want 1", host.alloc.Used())
	}
}

// portmapPod is the runtime's config for pod default/name in netns pod,
// with hostPort mapped to the pod's port 80.
func portmapPod(pod ns.NetNS, name string, hostPort int) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: "nhc-ctr-" + randSuffix(),
		NetNS:       pod.Path(),
		IfName:      "eth0",
		Args:        [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name}},
		CapabilityArgs: map[string]any{"portMappings": []map[string]any{
			{"hostPort": hostPort, "containerPort": 80, "protocol": "tcp"},
		}},
	}
}

// addList runs ADD of list for rt through the binaries and returns the
// result at the current version.
func addList(t *testing.T, ctx context.Context, cni *libcni.CNIConfig, host *testHost, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) *current.Result {
	t.Helper()
	// Plugins run with the calling thread's netns: the host namespace.
	r, err := in(t, host.ns, func() (types.Result, error) { return cni.AddNetworkList(ctx, list, rt) })
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// addAtVersion runs ADD of a new container's eth0 in pod through the
// binary, with the plugin config at result version v.
func addAtVersion(t *testing.T, ctx context.Context, cni *libcni.CNIConfig, host *testHost, pod ns.NetNS, v string) (*libcni.NetworkConfig, *libcni.RuntimeConf, types.Result) {
	t.Helper()
	conf, err := libcni.ConfFromBytes(netConf(t, host.sock, map[string]any{"cniVersion": v}))
	if err != nil {
		t.Fatal(err)
	}
	rt := &libcni.RuntimeConf{ContainerID: "nhc-ver-" + randSuffix(), NetNS: pod.Path(), IfName: "eth0"}
	r, err := in(t, host.ns, func() (types.Result, error) { return cni.AddNetwork(ctx, conf, rt) })
	if err != nil {
		t.Fatalf("ADD at %s: %v", v, err)
	}
	return conf, rt, r
}

// parseAtVersion is r as the runtime reads it back from the plugin's
// stdout, in version v, and those bytes.
func parseAtVersion(t *testing.T, v string, r types.Result) (types.Result, []byte) {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := version.NewResult(v, b)
	if err != nil {
		t.Fatalf("%s result does not parse as %s: %v\n%s", v, v, err, b)
	}
	return parsed, b
}

// checkDelAtVersion runs CHECK (from 0.4.0, where it exists) and DEL of rt
// through the binary at version v.
func checkDelAtVersion(t *testing.T, ctx context.Context, cni *libcni.CNIConfig, host *testHost, conf *libcni.NetworkConfig, rt *libcni.RuntimeConf, v string) {
	t.Helper()
	if ok, _ := version.GreaterThanOrEqualTo(v, "0.4.0"); ok {
		if _, err := in(t, host.ns, func() (any, error) { return nil, cni.CheckNetwork(ctx, conf, rt) }); err != nil {
			t.Fatalf("CHECK at %s: %v", v, err)
		}
	}
	if _, err := in(t, host.ns, func() (any, error) { return nil, cni.DelNetwork(ctx, conf, rt) }); err != nil {
		t.Fatalf("DEL at %s: %v", v, err)
	}
}

// TestConformanceResultVersions runs ADD, CHECK (from 0.4.0, where it
// exists) and DEL through the real binary at every version the plugin
// claims: a runtime may pin any of them in its conflist (containerd 1.7
// reads results up to 1.0.0 only, older tools 0.3.1 or 0.4.0).
func TestConformanceResultVersions(t *testing.T) {
	requireRoot(t)
	bin := buildPlugins(t)
	host := newTestHost(t, "10.83.0.0/24")
	pod := newNetNS(t, "pod")
	ctx := context.Background()
	cni := libcni.NewCNIConfigWithCacheDir([]string{bin}, t.TempDir(), nil)

	versions := version.All.SupportedVersions()
	for _, want := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		if !slices.Contains(versions, want) {
			t.Fatalf("plugin no longer claims %s: %v", want, versions)
		}
	}
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			conf, rt, r := addAtVersion(t, ctx, cni, host, pod, v)
			if r.Version() != v {
				t.Fatalf("ADD at %s returned a %s result", v, r.Version())
			}
			parsed, b := parseAtVersion(t, v, r)
			res, err := current.NewResultFromResult(parsed)
			if err != nil || len(res.IPs) != 1 || host.alloc.Used() != 1 {
				t.Fatalf("%s result %s (%v)", v, b, err)
			}
			alloc, ok := host.alloc.Get(rt.ContainerID, "eth0")
			if !ok || alloc.IP.String() != res.IPs[0].Address.IP.String() {
				t.Fatalf("%s result names %v, the daemon allocated %+v", v, res.IPs[0].Address, alloc)
			}
			checkDelAtVersion(t, ctx, cni, host, conf, rt, v)
			if host.alloc.Used() != 0 {
				t.Fatalf("DEL at %s left %d allocations", v, host.alloc.Used())
			}
		})
	}
}

// TestConformanceDualStack runs the shipped conflist (nexthop, then
// portmap) through libcni on a dual-stack node: ADD's result lists both
// addresses, the port mapping answers over both families, CHECK through the
// binary verifies both, and DEL and GC free both. Then ADD, CHECK and DEL
// at every result version the plugin claims: a 0.3.x/0.4.0 result carries
// both addresses too.
func TestConformanceDualStack(t *testing.T) {
	requireRoot(t)
	requireIptables(t)
	if _, err := exec.LookPath("ip6tables"); err != nil {
		t.Skip("portmap needs ip6tables in the host netns: apt-get install iptables")
	}
	bin := buildPlugins(t)
	host := newTestHost(t, "10.87.0.0/24,fd00:10:87::/64")
	addHostV6(t, host)
	pod := newNetNS(t, "pod")
	ctx := context.Background()
	list, err := libcni.ConfListFromBytes(shippedConfList(t, host.sock))
	if err != nil {
		t.Fatal(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{bin}, t.TempDir(), nil)
	rt := portmapPod(pod, "dual", 18082)
	res := addList(t, ctx, cni, host, list, rt)
	wantResult(t, res, []string{"10.87.0.2/32 gw 169.254.1.1 if 1", "fd00:10:87::2/128 gw fe80::1 if 1"}, []string{"0.0.0.0/0 via 169.254.1.1", "::/0 via fe80::1"})
	// portmap read both addresses from the result: the mapping answers
	// over IPv6 as over IPv4.
	assertTCP6(t, pod, host.ns, "[fd00:10:87::2]:80")
	assertTCPVia(t, pod, ":80", host.ns, net.JoinHostPort(host.addr.String(), "18082"))
	l6, err := in(t, pod, func() (net.Listener, error) { return net.Listen("tcp6", "[::]:80") })
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		if c, err := l6.Accept(); err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := in(t, host.ns, func() (net.Conn, error) {
		return net.Dial("tcp6", net.JoinHostPort(hostAddrV6.String(), "18082"))
	})
	if err != nil {
		out, _ := in(t, host.ns, func() ([]byte, error) { return exec.Command("ip6tables", "-w", "-t", "nat", "-S").CombinedOutput() })
		t.Fatalf("connect to the port mapping over IPv6: %v\nip6tables:\n%s", err, out)
	}
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read via the IPv6 port mapping: %q %v", buf, err)
	}
	c.Close()
	l6.Close()

	if _, err := in(t, host.ns, func() (any, error) { return nil, cni.CheckNetworkList(ctx, list, rt) }); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := cni.GetStatusNetworkList(ctx, list); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	// The pod loses its IPv6 address: CHECK through the binary names it.
	err = pod.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.AddrDel(l, &netlink.Addr{IPNet: hostPrefix(netip.MustParseAddr("fd00:10:87::2"))})
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = in(t, host.ns, func() (any, error) { return nil, cni.CheckNetworkList(ctx, list, rt) })
	if err == nil || !strings.Contains(err.Error(), "address fd00:10:87::2/128 missing") {
		t.Fatalf("CHECK after deleting the pod's IPv6 address: %v", err)
	}
	if _, err := in(t, host.ns, func() (any, error) { return nil, cni.DelNetworkList(ctx, list, rt) }); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if n := host.alloc.UsedOf(false) + host.alloc.UsedOf(true); n != 0 {
		t.Fatalf("DEL left %d addresses", n)
	}
	// GC frees both families of an attachment no runtime lists.
	if _, err := host.alloc.Allocate(ctx, ipam.Request{ContainerID: "leaked", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	none := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}
	if _, err := in(t, host.ns, func() (any, error) { return nil, cni.GCNetworkList(ctx, list, none) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if n := host.alloc.UsedOf(false) + host.alloc.UsedOf(true); n != 0 {
		t.Fatalf("GC left %d addresses", n)
	}

	for _, v := range version.All.SupportedVersions() {
		t.Run(v, func(t *testing.T) {
			conf, rt, r := addAtVersion(t, ctx, cni, host, pod, v)
			parsed, b := parseAtVersion(t, v, r)
			res, err := current.NewResultFromResult(parsed)
			if err != nil {
				t.Fatal(err)
			}
			al, _ := host.alloc.Get(rt.ContainerID, "eth0")
			var got []string
			for _, c := range res.IPs {
				got = append(got, c.Address.IP.String())
			}
			if want := []string{al.IP.String(), al.IPv6.String()}; !slices.Equal(got, want) {
				t.Fatalf("%s result names %q, the daemon allocated %q\n%s", v, got, want, b)
			}
			checkDelAtVersion(t, ctx, cni, host, conf, rt, v)
			if _, ok := host.alloc.Get(rt.ContainerID, "eth0"); ok {
				t.Fatalf("DEL at %s left the allocation", v)
			}
		})
	}
}
