package vm

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// thisPkg is built with BuildTest and booted: the outer (host) tests run
// the inner (guest) tests of this same package in the VM.
const thisPkg = "github.com/nexthop-net/nexthop/e2e/vm"

// verdict is the line an inner test prints last; outer tests assert on it
// so an inner test that was skipped or never ran cannot pass for it.
func verdict(name string, passed bool) string {
	if passed {
		return fmt.Sprintf("NHVM-GUEST %s: PASS", name)
	}
	return fmt.Sprintf("NHVM-GUEST %s: FAIL", name)
}

// requireGuest skips an inner test outside the VM and prints its verdict
// when it ends.
func requireGuest(t *testing.T) {
	t.Helper()
	if !InGuest() {
		t.Skipf("runs inside the VM only (%s=1); the host-side test boots it", EnvInVM)
	}
	t.Cleanup(func() { fmt.Println(verdict(t.Name(), !t.Failed())) })
}

// bootGuestTest builds this package's test binary, boots it with the
// given static binaries and files, runs inner test name with IN_VM=1, and
// fails the outer test (with the console tail) unless it printed PASS.
func bootGuestTest(t testing.TB, name string, bins []string, files ...File) *Result {
	t.Helper()
	if InGuest() {
		t.Skip("host-side test")
	}
	a := Require(t)
	ctx := context.Background()
	dir := t.TempDir()
	bin := buildOnce(t, "test", func(out string) ([]string, error) {
		t.Logf("building %s test binary (static) for the guest", thisPkg)
		b, err := BuildTest(ctx, out, thisPkg)
		return []string{b}, err
	})[0]
	for _, b := range bins {
		files = append(files, File{Path: GuestBinDir + "/" + baseName(b), Source: b, Mode: 0o755})
	}
	res, err := Run(ctx, Options{
		Assets: a, Dir: dir, Log: t, Echo: testing.Verbose(), Files: files,
		Commands: []Command{{Name: name, Binary: bin, Args: []string{"-test.v", "-test.count=1", "-test.run", "^" + name + "$"}, Env: []string{EnvInVM + "=1"}}},
	})
	if err != nil {
		t.Fatalf("VM run: %v", err)
	}
	if res.ExitCode != 0 || !strings.Contains(res.Console, verdict(name, true)+"\n") {
		t.Fatalf("%s failed in the VM (exit code %d); its log:\n%s\nconsole tail:\n%s", name, res.ExitCode, testLog(res.Console, 40), res.Tail(60))
	}
	t.Logf("%s passed in the VM (kernel %s, VM run %s)", name, a.KernelVersion, res.Duration.Round(100*time.Millisecond))
	return res
}

// Binaries built for the guest, shared by the tests of one go test run:
// building and linking them again for every boot costs seconds each.
var builds struct {
	sync.Mutex
	dir  string // removed by TestMain
	bins map[string][]string
}

// buildOnce returns what build(dir) made for key earlier in this run, or
// runs it now. A failed build is not remembered, so a tree that was
// briefly broken fails one test, not all that follow.
func buildOnce(t testing.TB, key string, build func(dir string) ([]string, error)) []string {
	t.Helper()
	builds.Lock()
	defer builds.Unlock()
	if b, ok := builds.bins[key]; ok {
		return b
	}
	if builds.dir == "" {
		d, err := os.MkdirTemp("", "nhvm-build-")
		if err != nil {
			t.Fatal(err)
		}
		builds.dir, builds.bins = d, map[string][]string{}
	}
	b, err := build(filepath.Join(builds.dir, key))
	if err != nil {
		t.Fatal(err)
	}
	builds.bins[key] = b
	return b
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builds.dir != "" {
		os.RemoveAll(builds.dir)
	}
	os.Exit(code)
}

// testLogLine is a t.Log/t.Error line of a guest test; dumps that follow
// (daemon logs) can push the one that says what failed out of any tail.
var testLogLine = regexp.MustCompile(`(?m)^ +[\w.]+_test\.go:\d+: .*$`)

// testLog returns the last n of the guest test's own log lines.
func testLog(console string, n int) string {
	return lastLines(strings.Join(testLogLine.FindAllString(console, -1), "\n"), n)
}

func baseName(p string) string { return p[strings.LastIndex(p, "/")+1:] }

// TestIPIPInVM boots TestGuestIPIP: tunl0 plus onlink routes carry pod
// traffic between nodes on different subnets, on a kernel with ipip.
func TestIPIPInVM(t *testing.T) {
	bootGuestTest(t, "TestGuestIPIP", nil)
}

// Two subnets joined by a router, one node on each: the IPIP topology.
var (
	subnetA = Subnet{Router: netip.MustParsePrefix("192.0.2.1/24")}
	subnetB = Subnet{Router: netip.MustParsePrefix("198.51.100.1/24")}
	nodeA   = NodeSpec{Name: "nodeA", Subnet: 0, Address: netip.MustParsePrefix("192.0.2.10/24"),
		PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), Pod: netip.MustParseAddr("10.244.1.2")}
	nodeB = NodeSpec{Name: "nodeB", Subnet: 1, Address: netip.MustParsePrefix("198.51.100.10/24"),
		PodCIDR: netip.MustParsePrefix("10.244.2.0/24"), Pod: netip.MustParseAddr("10.244.2.2")}
)

func TestGuestIPIP(t *testing.T) {
	requireGuest(t)
	t.Logf("guest kernel %s", KernelRelease())
	topo := buildTopology(t, []Subnet{subnetA, subnetB}, []NodeSpec{nodeA, nodeB})
	a, b := topo.Node("nodeA"), topo.Node("nodeB")
	for _, n := range topo.Nodes {
		if !n.HasLink("tunl0") {
			t.Fatalf("%s has no tunl0: the ipip module should create it in every namespace", n.Name)
		}
	}
	t.Logf("tunl0 exists in every namespace after loading ipip")
	if err := a.Ping(b.Address.Addr()); err != nil {
		t.Fatalf("underlay: nodeA cannot reach nodeB through the router: %v", err)
	}

	// Negative controls: without a route the router drops pod traffic, and
	// a plain route via a node on another subnet is refused by the kernel
	// (the failure nexthopd hits without encapsulation).
	if err := a.PodPing(b.Pod, 1); err == nil {
		t.Fatalf("negative control: podA reached podB with no pod route installed")
	}
	if _, err := a.IP("route", "add", b.PodCIDR.String(), "via", b.Address.Addr().String()); err == nil {
		t.Fatalf("negative control: kernel accepted %s via off-subnet %s without onlink", b.PodCIDR, b.Address.Addr())
	} else {
		t.Logf("as expected, no plain route across subnets: %v", err)
	}

	rx0, err := a.Counter("tunl0", "rx_packets")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range [][2]*Node{{a, b}, {b, a}} {
		src, dst := p[0], p[1]
		if err := src.TunnelUp(); err != nil {
			t.Fatal(err)
		}
		if _, err := src.IP("route", "add", dst.PodCIDR.String(), "via", dst.Address.Addr().String(), "dev", "tunl0", "onlink"); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.PodPing(b.Pod, 3); err != nil {
		t.Fatalf("podA -> podB over tunl0: %v", err)
	}
	if err := b.PodPing(a.Pod, 3); err != nil {
		t.Fatalf("podB -> podA over tunl0: %v", err)
	}
	rx, err := a.Counter("tunl0", "rx_packets")
	if err != nil {
		t.Fatal(err)
	}
	if rx < rx0+3 {
		t.Fatalf("nodeA tunl0 rx_packets %d -> %d: pod traffic did not arrive encapsulated", rx0, rx)
	}
	t.Logf("pod <-> pod over tunl0 with onlink routes: OK (nodeA tunl0 rx_packets %d -> %d)", rx0, rx)
}

// buildTopology builds the namespaces and removes them when the test ends,
// so inner tests can share one VM boot.
func buildTopology(t *testing.T, subnets []Subnet, nodes []NodeSpec) *Topology {
	t.Helper()
	topo, err := BuildTopology(subnets, nodes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("remove namespaces: %v", err)
		}
	})
	return topo
}
