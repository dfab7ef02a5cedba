package libcni11

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// The node: one address on an uplink, a pod block, and nexthopd's
// listeners on the node namespace's own loopback.
const (
	nodeAddr    = "10.99.0.1"
	podCIDR     = "10.244.7.0/24"
	gateway     = "169.254.1.1" // what every pod routes to
	metricsAddr = "127.0.0.1:9091"
	hostPort    = 18080
)

// TestShippedConfListLibcni11 is the conflist an operator installs, run by
// the libcni containerd 1.7 runs it with: ADD, CHECK, DEL, a second pod,
// and the same conflist at cniVersion 1.1.0 failing the way it failed on
// such a node, which is what this test exists to catch.
func TestShippedConfListLibcni11(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and runs nexthopd in one")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Fatal("portmap, chained in the shipped conflist, needs iptables (hack/deps.sh installs it)")
	}
	bins := binaries(t)
	dir := t.TempDir()
	host := newNetNS(t, "host")
	setUpNode(t, host)
	sock := filepath.Join(dir, "run", "nexthop.sock")
	startDaemon(t, host, bins["nexthopd"], dir, sock)

	// libcni execs plugins in the caller's namespace; a runtime's is the
	// node's, so each plugin is wrapped to run in the node namespace.
	cniBin := filepath.Join(dir, "cni-bin")
	writeWrappers(t, cniBin, host, bins)
	cni := libcni.NewCNIConfigWithCacheDir([]string{cniBin}, filepath.Join(dir, "cni-cache"), nil)

	raw, file := shippedConfList(t, sock)
	list, err := libcni.ConfListFromBytes(raw)
	if err != nil {
		t.Fatalf("libcni v1.1.2 cannot load %s: %v", file, err)
	}
	var shipped struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal(raw, &shipped); err != nil {
		t.Fatal(err)
	}
	if list.CNIVersion != shipped.CNIVersion {
		t.Fatalf("libcni v1.1.2 reads %s as version %s, the file says %s", file, list.CNIVersion, shipped.CNIVersion)
	}
	ctx := context.Background()
	if _, err := cni.ValidateNetworkList(ctx, list); err != nil {
		t.Fatalf("validate %s: %v", file, err)
	}

	pod := newNetNS(t, "pod")
	rt := runtimeConf("nh11-ctr-a", pod)
	r, err := call(func(ctx context.Context) (types.Result, error) { return cni.AddNetworkList(ctx, list, rt) })
	if err != nil {
		t.Fatalf("ADD with %s (cniVersion %s): %v", file, list.CNIVersion, err)
	}
	ip := assertResult(t, r, list.CNIVersion)
	assertPodWired(t, host, pod, ip)
	if n := allocated(t, host, bins["nexthopd"]); n != 1 {
		t.Fatalf("nexthopd status: %d addresses allocated after ADD, want 1", n)
	}
	if nat := run(t, "ip", "netns", "exec", host, "iptables", "-w", "-t", "nat", "-S"); !strings.Contains(nat, fmt.Sprintf("--dport %d", hostPort)) {
		t.Fatalf("portmap added no rule for host port %d:\n%s", hostPort, nat)
	}
	if _, err := call(func(ctx context.Context) (any, error) { return nil, cni.CheckNetworkList(ctx, list, rt) }); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if _, err := call(func(ctx context.Context) (any, error) { return nil, cni.DelNetworkList(ctx, list, rt) }); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	assertReleased(t, host, pod, bins["nexthopd"], ip)
	if nat := run(t, "ip", "netns", "exec", host, "iptables", "-w", "-t", "nat", "-S"); strings.Contains(nat, fmt.Sprintf("--dport %d", hostPort)) {
		t.Fatalf("portmap rule left after DEL:\n%s", nat)
	}

	// The next pod gets an address as well, and gives it back.
	rt2 := runtimeConf("nh11-ctr-b", pod)
	r, err = call(func(ctx context.Context) (types.Result, error) { return cni.AddNetworkList(ctx, list, rt2) })
	if err != nil {
		t.Fatalf("second ADD: %v", err)
	}
	ip2 := assertResult(t, r, list.CNIVersion)
	assertPodWired(t, host, pod, ip2)
	if _, err := call(func(ctx context.Context) (any, error) { return nil, cni.DelNetworkList(ctx, list, rt2) }); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	assertReleased(t, host, pod, bins["nexthopd"], ip2)

	// The bug: at 1.1.0 the plugin does its work, then libcni v1.1 cannot
	// read the result, and the pod never starts. The runtime's DEL after
	// the failed ADD must still give the address back.
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	m["cniVersion"] = "1.1.0"
	raw110, _ := json.Marshal(m)
	list110, err := libcni.ConfListFromBytes(raw110)
	if err != nil {
		t.Fatal(err)
	}
	rt3 := runtimeConf("nh11-ctr-c", pod)
	_, err = call(func(ctx context.Context) (types.Result, error) { return cni.AddNetworkList(ctx, list110, rt3) })
	if err == nil || !strings.Contains(err.Error(), `unsupported CNI result version "1.1.0"`) {
		t.Fatalf("ADD at cniVersion 1.1.0 through libcni v1.1.2: %v; want it to fail with unsupported CNI result version", err)
	}
	if _, err := call(func(ctx context.Context) (any, error) { return nil, cni.DelNetworkList(ctx, list110, rt3) }); err != nil {
		t.Fatalf("DEL after the failed 1.1.0 ADD: %v", err)
	}
	if n := allocated(t, host, bins["nexthopd"]); n != 0 {
		t.Fatalf("nexthopd status: %d addresses allocated after the DEL of the failed ADD, want 0", n)
	}
}

// call runs one CNI operation with a runtime's bound on it.
func call[T any](f func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	return f(ctx)
}

func runtimeConf(id, pod string) *libcni.RuntimeConf {
	// What containerd's CRI plugin passes, port mapping included.
	return &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       "/run/netns/" + pod,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"},
			{"K8S_POD_NAME", id}, {"K8S_POD_INFRA_CONTAINER_ID", id},
		},
		CapabilityArgs: map[string]any{"portMappings": []map[string]any{
			{"hostPort": hostPort, "containerPort": 80, "protocol": "tcp"},
		}},
	}
}

// assertResult checks that the result reads back, as a runtime reads the
// plugin's stdout, in the conflist's version, and returns the pod address.
func assertResult(t *testing.T, r types.Result, want string) netip.Addr {
	t.Helper()
	if r.Version() != want {
		t.Fatalf("ADD result is version %s, the conflist's is %s", r.Version(), want)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := version.NewResult(want, b)
	if err != nil {
		t.Fatalf("ADD result does not parse as %s: %v\n%s", want, err, b)
	}
	res, err := current.NewResultFromResult(parsed)
	if err != nil || len(res.IPs) != 1 {
		t.Fatalf("ADD result %s: %v", b, err)
	}
	ip, ok := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	if !ok || !netip.MustParsePrefix(podCIDR).Contains(ip) {
		t.Fatalf("ADD result address %v is outside the node's block %s", res.IPs[0].Address, podCIDR)
	}
	return ip
}

// assertPodWired checks what a user would look at: the pod's eth0 holds
// ip/32, its default route goes via the link-local gateway, and the node
// routes ip/32 to the pod.
func assertPodWired(t *testing.T, host, pod string, ip netip.Addr) {
	t.Helper()
	var addrs []struct {
		AddrInfo []struct {
			Family    string `json:"family"`
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	ipJSON(t, &addrs, "-n", pod, "addr", "show", "dev", "eth0")
	found := false
	for _, l := range addrs {
		for _, a := range l.AddrInfo {
			found = found || (a.Family == "inet" && a.Local == ip.String() && a.PrefixLen == 32)
		}
	}
	if !found {
		t.Fatalf("pod eth0 lacks %s/32: %+v", ip, addrs)
	}
	var routes []struct {
		Gateway string `json:"gateway"`
		Dev     string `json:"dev"`
	}
	ipJSON(t, &routes, "-n", pod, "route", "show", "default")
	if len(routes) != 1 || routes[0].Gateway != gateway || routes[0].Dev != "eth0" {
		t.Fatalf("pod default route %+v, want via %s dev eth0", routes, gateway)
	}
	if hostRoutes(t, host, ip) == 0 {
		t.Fatalf("node has no route to %s/32", ip)
	}
}

// assertReleased checks that the pod's interface, the node's route to it
// and its address in nexthopd's IPAM are all gone.
func assertReleased(t *testing.T, host, pod, nexthopd string, ip netip.Addr) {
	t.Helper()
	if out, err := exec.Command("ip", "-n", pod, "link", "show", "eth0").CombinedOutput(); err == nil {
		t.Fatalf("pod eth0 left after DEL:\n%s", out)
	}
	if n := hostRoutes(t, host, ip); n != 0 {
		t.Fatalf("node route to %s/32 left after DEL", ip)
	}
	if n := allocated(t, host, nexthopd); n != 0 {
		t.Fatalf("nexthopd status: %d addresses allocated after DEL, want 0", n)
	}
}

func hostRoutes(t *testing.T, host string, ip netip.Addr) int {
	t.Helper()
	var routes []json.RawMessage
	ipJSON(t, &routes, "-n", host, "route", "show", "exact", ip.String()+"/32")
	return len(routes)
}

// allocated is the IPAM count `nexthopd status` reports.
func allocated(t *testing.T, host, nexthopd string) int {
	t.Helper()
	var st struct {
		IPAM struct {
			Block     string `json:"block"`
			Allocated int    `json:"allocated"`
		} `json:"ipam"`
	}
	out := run(t, "ip", "netns", "exec", host, nexthopd, "status", "-o", "json", "-addr", metricsAddr)
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.IPAM.Block != podCIDR {
		t.Fatalf("nexthopd status -o json: %v\n%s", err, out)
	}
	return st.IPAM.Allocated
}

func ipJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out := run(t, "ip", append([]string{"-j"}, args...)...)
	if strings.TrimSpace(out) == "" {
		out = "[]"
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("ip -j %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// repoRoot is the main module's root: three levels above this directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.HasPrefix(b, []byte("module github.com/nexthop-net/nexthop\n")) {
		t.Fatalf("%s is not the nexthop repository root: %v", root, err)
	}
	return root
}

// binaries are the plugin, portmap and nexthopd from $NEXTHOP_BIN (which
// `make build` fills and the Makefile exports), else built from the
// repository into a temporary directory.
func binaries(t *testing.T) map[string]string {
	t.Helper()
	pkgs := map[string]string{
		"nexthop":  "./cmd/nexthop",
		"nexthopd": "./cmd/nexthopd",
		"portmap":  "github.com/containernetworking/plugins/plugins/meta/portmap",
	}
	bins := map[string]string{}
	if d := os.Getenv("NEXTHOP_BIN"); d != "" {
		for name := range pkgs {
			bins[name] = filepath.Join(d, name)
			if _, err := os.Stat(bins[name]); err != nil {
				t.Fatalf("%s not in $NEXTHOP_BIN (%s): run `make build` first", name, d)
			}
		}
		return bins
	}
	root, out := repoRoot(t), t.TempDir()
	for name, pkg := range pkgs {
		bins[name] = filepath.Join(out, name)
		cmd := exec.Command("go", "build", "-o", bins[name], pkg)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s (in %s): %v\n%s", pkg, root, err, b)
		}
	}
	return bins
}

// shippedConfList is the one conflist in cni-plugin/, as shipped, with only
// the nexthop plugin's ipamSocket pointed at sock.
func shippedConfList(t *testing.T, sock string) ([]byte, string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "cni-plugin", "*.conflist"))
	if err != nil || len(files) != 1 {
		t.Fatalf("want exactly one conflist in cni-plugin/, found %v (%v)", files, err)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("parse %s: %v", files[0], err)
	}
	found := false
	plugins, _ := m["plugins"].([]any)
	for _, p := range plugins {
		if pm, ok := p.(map[string]any); ok && pm["type"] == "nexthop" {
			pm["ipamSocket"] = sock
			found = true
		}
	}
	if !found {
		t.Fatalf("%s has no plugin of type nexthop", files[0])
	}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out, filepath.Base(files[0])
}

// newNetNS creates namespace "nh11-<role>-<random>" and deletes it when the
// test ends: the test touches no other namespace.
func newNetNS(t *testing.T, role string) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "nh11-" + role + "-" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

// setUpNode gives the node namespace loopback and an uplink holding the
// node address with the default route (a veth pair with both ends here:
// nexthopd finds its underlay by the address, and proxy ARP for pods needs
// a route out).
func setUpNode(t *testing.T, host string) {
	t.Helper()
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p"},
		{"link", "set", "uplink0", "up"},
		{"link", "set", "uplink0p", "up"},
		{"addr", "add", nodeAddr + "/24", "dev", "uplink0"},
		{"route", "add", "default", "dev", "uplink0"},
	} {
		run(t, "ip", append([]string{"-n", host}, args...)...)
	}
}

// startDaemon runs nexthopd standalone in the node namespace, everything it
// writes under dir, and returns once its status reports the IPAM block.
func startDaemon(t *testing.T, host, nexthopd, dir, sock string) {
	t.Helper()
	cfg := filepath.Join(dir, "node.yaml")
	yaml := fmt.Sprintf(`nodeName: compat-node
address: %s
localAS: 64512
pools: [10.244.0.0/16]
podCIDR: %s
ipamSocket: %s
stateDir: %s
grpcListen: 127.0.0.1:50051
metricsListen: %s
`, nodeAddr, podCIDR, sock, filepath.Join(dir, "state"), metricsAddr)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "nexthopd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", host, nexthopd, "-config", cfg, "-health-listen", "127.0.0.1:9099")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nexthopd: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); logf.Close() }()
	logTail := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("nexthopd exited with %v after SIGTERM", err)
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("nexthopd still running 20s after SIGTERM, killed")
		}
		if t.Failed() {
			t.Logf("nexthopd log:\n%s", logTail())
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		select {
		case err := <-done:
			done <- err // for the cleanup
			t.Fatalf("nexthopd exited at start (%v):\n%s", err, logTail())
		default:
		}
		out, err := exec.Command("ip", "netns", "exec", host, nexthopd, "status", "-o", "json", "-addr", metricsAddr).Output()
		if _, serr := os.Stat(sock); err == nil && serr == nil && strings.Contains(string(out), `"block": "`+podCIDR+`"`) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nexthopd not ready after 20s (status: %v %s):\n%s", err, out, logTail())
		}
	}
}

// writeWrappers puts, for each plugin, a script in dir that runs the real
// binary in the node namespace, where a runtime runs it.
func writeWrappers(t *testing.T, dir, host string, bins map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"nexthop", "portmap"} {
		script := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", host, bins[name])
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}
