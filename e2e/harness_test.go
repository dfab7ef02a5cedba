package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// requireHarness skips tests this machine cannot run (not root, no FRR,
// no iproute2...), saying what is missing. In CI (CI=true) it fails
// instead: there a skip would hide a missing install step behind a green run.
func requireHarness(t *testing.T) {
	t.Helper()
	if err := CheckTools(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("e2e needs root and system tools (CI=true, so not skipping): %v", err)
		}
		t.Skipf("e2e needs root and system tools: %v", err)
	}
}

// newCluster builds a cluster for one test and removes it when the test
// ends, printing every daemon's log tail first if the test failed.
func newCluster(t *testing.T, o Options) *Cluster {
	t.Helper()
	requireHarness(t)
	o.Log = t
	c, err := New(o)
	if err != nil {
		t.Fatalf("build cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs of cluster %s:\n%s", c.Prefix, c.LogTails(40))
		}
		c.Close()
	})
	return c
}

// requireBinaries fails (not skips: the suite is run through make, which
// builds them) when nexthopd or gobgp are missing.
func requireBinaries(t *testing.T) {
	t.Helper()
	for _, b := range []string{"nexthopd", "gobgp"} {
		if _, err := os.Stat(filepath.Join(BinDir(), b)); err != nil {
			t.Fatalf("%s not found in %s: run `make build` first (or set NEXTHOP_BIN)", b, BinDir())
		}
	}
}

// waitFor polls fn until it succeeds or fails the test with fn's last
// error after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	start := time.Now()
	if err := WaitFor(timeout, 200*time.Millisecond, fn); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	// Logged, never asserted: it shows convergence trends in CI logs.
	t.Logf("%s: ok after %s", what, time.Since(start).Round(100*time.Millisecond))
}

// stays checks fn keeps succeeding for all of d (no flapping, nothing
// removed later by a timer), failing the test at the first error.
func stays(t *testing.T, d time.Duration, what string, fn func() error) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
}

// TestHarnessStaticRouting checks the harness without any daemon: FRR
// answers, and pods on two nodes reach each other over plain static routes
// across the underlay bridge, where tcpdump sees the packets.
func TestHarnessStaticRouting(t *testing.T) { harnessStaticRouting(t, StackIPv4) }

// TestHarnessStaticRoutingDualStack is the same on a dual-stack cluster,
// in both families: the IPv6 underlay, the pods' IPv6 wiring (fe80::1
// gateway, /128 routes) and FRR's IPv6 sessions' config work before any
// daemon is involved. IPv6 forwarding is turned on by hand here (the
// daemon does it otherwise).
func TestHarnessStaticRoutingDualStack(t *testing.T) { harnessStaticRouting(t, StackDual) }

func harnessStaticRouting(t *testing.T, stack Stack) {
	c := newCluster(t, Options{Nodes: 2, ToR: true, Stack: stack})
	n1, n2 := c.Nodes[0], c.Nodes[1]

	for _, v6 := range stack.Families() {
		rib, err := c.ToR.RIBOf(v6)
		if err != nil {
			t.Fatalf("query FRR: %v", err)
		}
		if len(rib) != 0 {
			t.Errorf("FRR %s RIB with no daemons running: want empty, got\n%s", family(v6), FormatPaths(rib))
		}
	}
	for _, n := range c.Nodes {
		if stack.Has(true) {
			if err := setSysctls(n.NS, "net.ipv6.conf.all.forwarding", "1"); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, v6 := range stack.Families() {
		to := n2.Pod.IPOf(v6)
		if err := Ping(n1.Pod, to, 1); err == nil {
			t.Fatalf("ping %s → %s worked before any route existed: the harness leaks a path", n1.Pod.IPOf(v6), to)
		}
		if err := n1.AddStaticRoute(n2.PodCIDROf(v6), n2.AddressOf(v6)); err != nil {
			t.Fatal(err)
		}
		if err := n2.AddStaticRoute(n1.PodCIDROf(v6), n1.AddressOf(v6)); err != nil {
			t.Fatal(err)
		}
	}
	capture, err := c.StartCapture("static", "icmp or (icmp6 and ip6[40] <= 129)")
	if err != nil {
		t.Fatal(err)
	}
	for _, v6 := range stack.Families() {
		if err := Ping(n1.Pod, n2.Pod.IPOf(v6), 3); err != nil {
			t.Fatal(err)
		}
	}
	lines, err := capture.Stop()
	if err != nil {
		t.Fatal(err)
	}
	for _, v6 := range stack.Families() {
		want := fmt.Sprintf("IP %s > %s: ICMP echo request", n1.Pod.IP, n2.Pod.IP)
		if v6 {
			want = fmt.Sprintf("IP6 %s > %s: ICMP6, echo request", n1.Pod.IPv6, n2.Pod.IPv6)
		}
		if !containsLine(lines, want) {
			t.Errorf("capture on the underlay bridge has no %q; got:\n%s", want, strings.Join(lines, "\n"))
		}
	}
	// No proto 201 routes exist without a daemon.
	for _, n := range c.Nodes {
		rs, err := c.NexthopRoutes(n)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != 0 {
			t.Errorf("%s has proto %d routes without a daemon: %v", n.Name, RouteProtocol, rs)
		}
	}
}

func containsLine(lines []string, substr string) bool {
	for _, l := range lines {
		if strings.Contains(l, substr) {
			return true
		}
	}
	return false
}

// TestHarnessCleanup checks that Close leaves nothing behind: no
// namespaces, no processes, no files, no registration.
func TestHarnessCleanup(t *testing.T) {
	requireHarness(t)
	c, err := New(Options{Nodes: 2, ToR: true, Log: t})
	if err != nil {
		t.Fatalf("build cluster: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			c.Close()
		}
	})
	names := c.Namespaces()
	if len(names) != 6 { // ul, node1, node2, pod1, pod2, tor
		t.Errorf("want 6 namespaces, got %v", names)
	}
	for _, ns := range names {
		if !strings.HasPrefix(ns, c.Prefix) || !nsPattern.MatchString(ns) {
			t.Errorf("namespace %q does not carry the cluster prefix %q", ns, c.Prefix)
		}
	}
	bgpd := c.ToR.proc.Pid()

	c.Close()
	closed = true
	c.Close() // twice is fine

	if left := nsWithPrefix(c.Prefix); len(left) != 0 {
		t.Errorf("namespaces left after Close: %v", left)
	}
	if err := syscall.Kill(bgpd, 0); err == nil {
		t.Errorf("bgpd (pid %d) still running after Close", bgpd)
	}
	if _, err := os.Stat(c.Dir); err == nil {
		t.Errorf("cluster dir %s left after Close", c.Dir)
	}
	if _, err := os.Stat(filepath.Join(registryDir, c.Prefix+".json")); err == nil {
		t.Errorf("registration of %s left after Close", c.Prefix)
	}
}

// TestHarnessSweep fakes the remains of a crashed run (a registration
// whose owner is dead, its namespace with a process still inside) and
// checks Sweep removes them, while leaving alone a look-alike namespace
// nobody registered.
func TestHarnessSweep(t *testing.T) {
	requireHarness(t)
	// A pid that certainly belonged to a process which has exited.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	const crashed, foreign = "nh-dead-", "nh-f00d-"
	for _, p := range []string{crashed, foreign} {
		if len(nsWithPrefix(p)) != 0 {
			t.Skipf("namespaces with prefix %s already exist; not touching them", p)
		}
	}
	if err := os.MkdirAll(registryDir, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	reg, _ := json.Marshal(registration{Pid: dead.Process.Pid, Start: 1, Dir: filepath.Join(dir, crashed+"x")})
	regPath := filepath.Join(registryDir, crashed+".json")
	if err := os.WriteFile(regPath, reg, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(regPath)
		removeNamespaces(append(nsWithPrefix(crashed), nsWithPrefix(foreign)...))
	})
	for _, ns := range []string{crashed + "ul", foreign + "ul"} {
		if _, err := run("ip", "netns", "add", ns); err != nil {
			t.Fatal(err)
		}
	}
	// A process left running inside the crashed run's namespace.
	sleeper, err := startProc("sleeper", filepath.Join(dir, "sleep.log"), "ip", "netns", "exec", crashed+"ul", "sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	defer sleeper.kill()
	waitFor(t, 5*time.Second, "sleeper in namespace", func() error {
		out, err := run("ip", "netns", "pids", crashed+"ul")
		if err != nil || strings.TrimSpace(out) == "" {
			return fmt.Errorf("no pids in %sul yet (%v)", crashed, err)
		}
		return nil
	})

	if err := Sweep(t); err != nil {
		t.Fatalf("sweep: %v", err)
	}
	if left := nsWithPrefix(crashed); len(left) != 0 {
		t.Errorf("sweep left the crashed run's namespaces: %v", left)
	}
	if err := sleeper.wait(5 * time.Second); err == nil {
		t.Errorf("process in the crashed run's namespace was not killed")
	}
	if _, err := os.Stat(regPath); err == nil {
		t.Errorf("sweep left the crashed run's registration")
	}
	if len(nsWithPrefix(foreign)) != 1 {
		t.Errorf("sweep removed an unregistered namespace %sul it does not own", foreign)
	}
}

// helperEnv makes this test binary, run again as a child, play a test that
// fails or crashes while holding a cluster.
const helperEnv = "NEXTHOP_E2E_HELPER"

// TestHelperCluster is not a test on its own: it only runs when
// TestHarnessCleanupAfterFailure starts it in a child process.
func TestHelperCluster(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper for TestHarnessCleanupAfterFailure")
	}
	c := newCluster(t, Options{Nodes: 1, ToR: true})
	report := fmt.Sprintf("%s %d\n", c.Prefix, c.ToR.proc.Pid())
	if err := os.WriteFile(os.Getenv(helperEnv+"_OUT"), []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
	switch mode {
	case "fail":
		t.Fatal("failing on purpose with a cluster up")
	case "crash":
		// No cleanup runs: as if the test binary were OOM-killed or hit
		// go test's timeout.
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

// TestHarnessCleanupAfterFailure runs a test that fails with a cluster up
// and one that is killed outright, each in a child process: after the
// failure nothing is left; after the crash its processes are gone and the
// next Sweep removes its namespaces.
func TestHarnessCleanupAfterFailure(t *testing.T) {
	requireHarness(t)
	for _, mode := range []string{"fail", "crash"} {
		t.Run(mode, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "helper.out")
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperCluster$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperEnv+"_OUT="+out)
			log, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("helper test should have failed; output:\n%s", log)
			}
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("helper wrote no report (%v); output:\n%s", err, log)
			}
			var prefix string
			var bgpd int
			if _, err := fmt.Sscan(string(b), &prefix, &bgpd); err != nil || !nsPattern.MatchString(prefix) {
				t.Fatalf("bad helper report %q: %v", b, err)
			}
			t.Cleanup(func() { removeNamespaces(nsWithPrefix(prefix)) })

			// bgpd dies with its parent either way (Pdeathsig on crash).
			waitFor(t, 10*time.Second, "bgpd of the helper gone", func() error {
				if syscall.Kill(bgpd, 0) == nil {
					return fmt.Errorf("bgpd pid %d still running", bgpd)
				}
				return nil
			})
			if mode == "crash" {
				// The crash happened as staged: the helper died of SIGKILL,
				// so nothing of its own cleanup ran.
				ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
				if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
					t.Fatalf("helper did not die of SIGKILL (%v): the crash did not happen as staged", cmd.ProcessState)
				}
				if len(nsWithPrefix(prefix)) == 0 {
					// Any harness run sweeps dead owners' clusters when it
					// starts; a concurrent one (make demo, say) got here first.
					t.Logf("another run's sweep removed the crashed helper's namespaces first")
				} else if err := Sweep(t); err != nil {
					t.Fatalf("sweep: %v", err)
				}
			}
			if left := nsWithPrefix(prefix); len(left) != 0 {
				t.Errorf("namespaces left behind: %v", left)
			}
			if _, err := os.Stat(filepath.Join(registryDir, prefix+".json")); err == nil {
				t.Errorf("registration %s left behind", prefix)
			}
		})
	}
}
