package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/internal/ociimage"
	"github.com/nexthop-net/nexthop/ipam"
)

// TestKubeletCluster installs nexthop from manifests/ on a real cluster:
// a control plane, 3 nodes each running containerd, runc, kubelet and
// kube-proxy, and an FRR ToR; then runs what a user does to it, one step
// after another on the same cluster.
func TestKubeletCluster(t *testing.T) {
	runKubeletSuite(t, StackIPv4, []kubeletStep{
		{"Install", (*kubeletSuite).install},
		{"PodsAcrossNodes", (*kubeletSuite).podsAcrossNodes},
		{"ServicesFromOutside", (*kubeletSuite).servicesFromOutside},
		{"RolloutRestartLosesNothing", (*kubeletSuite).rolloutRestart},
		{"PodDeletedWhileDaemonAway", (*kubeletSuite).podDeletedWhileDaemonAway},
		{"NodeReboot", (*kubeletSuite).nodeReboot},
		{"Uninstall", (*kubeletSuite).uninstall},
	})
}

// kubeletStep is one step of a kubelet suite; each builds on the ones
// before, on the same cluster.
type kubeletStep struct {
	name string
	fn   func(s *kubeletSuite, t *testing.T)
}

// runKubeletSuite builds a kubelet cluster of the given families and runs
// steps on it in order, stopping at the first that fails.
func runKubeletSuite(t *testing.T, stack Stack, steps []kubeletStep) {
	requireHarness(t)
	if err := CheckKubeTools(); err != nil {
		t.Fatalf("kubelet cluster: %v (make deps installs them)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	k, err := NewKubeCluster(ctx, KubeOptions{Nodes: 3, Log: t, Progress: testWriter{t}, Stack: stack})
	if err != nil {
		t.Fatalf("kubelet cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nexthopd logs:\n%s", k.DaemonLogs(context.Background(), 40))
			t.Logf("node logs:\n%s", k.NodeLogTails(25))
		}
		k.Close()
	})
	s := &kubeletSuite{k: k, ctx: ctx}
	for _, step := range steps {
		if !t.Run(step.name, func(t *testing.T) { step.fn(s, t) }) {
			t.FailNow() // each step builds on the one before
		}
	}
}

type kubeletSuite struct {
	k   *KubeCluster
	ctx context.Context
	// pods is the web Deployment as last seen Ready.
	pods []WorkloadPod
}

// families are the cluster's address families, as v6 flags: IPv4 first.
func (s *kubeletSuite) families() []bool { return s.k.Stack.Families() }

// testWriter sends build progress to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func (s *kubeletSuite) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := s.k.Kubectl(s.ctx, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (s *kubeletSuite) install(t *testing.T) {
	k := s.k
	if err := k.Install(s.ctx); err != nil {
		t.Fatal(err)
	}
	shipped, err := os.ReadFile(filepath.Join(sourceRoot(), "cni-plugin", "05-nexthop.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range k.KNodes {
		// The init container's work, in the node's own directories.
		got, err := os.ReadFile(n.HostPath("/etc/cni/net.d/05-nexthop.conflist"))
		if err != nil || !bytes.Equal(got, shipped) {
			t.Errorf("%s: /etc/cni/net.d/05-nexthop.conflist is not the shipped conflist (%v)", n.Name, err)
		}
		for _, b := range []string{"nexthop", "portmap", "loopback"} {
			if fi, err := os.Stat(n.HostPath("/opt/cni/bin/" + b)); err != nil || fi.Mode()&0o111 == 0 {
				t.Errorf("%s: /opt/cni/bin/%s not installed (%v)", n.Name, b, err)
			}
		}
		// The DaemonSet's capabilities are what the daemon runs with.
		pid, err := nexthopdPid(n)
		if err != nil {
			t.Fatal(err)
		}
		if capEff := procStatus(t, pid, "CapEff"); capEff != "0000000000001400" {
			t.Errorf("%s: nexthopd runs with CapEff %s, want NET_BIND_SERVICE+NET_ADMIN only (0000000000001400)", n.Name, capEff)
		}
		// The daemon cannot write /proc/sys: the init container turned on
		// IPv6 forwarding for the node's IPv6 block, and left an IPv4-only
		// node's alone.
		want := map[bool]string{false: "0", true: "1"}[k.Stack == StackDual]
		if got, err := Exec(n.NS, "cat", "/proc/sys/net/ipv6/conf/all/forwarding"); err != nil || strings.TrimSpace(got) != want {
			t.Errorf("%s: net.ipv6.conf.all.forwarding is %q (%v), want %s", n.Name, strings.TrimSpace(got), err, want)
		}
	}
	// The daemons authenticate with their service account (in-cluster
	// config) and write their node's status through it.
	logs := k.DaemonLogs(s.ctx, 400)
	if c := strings.Count(logs, `apiServer=https://10.96.0.1:443`); c != len(k.KNodes) {
		t.Errorf("%d of %d daemons use the in-cluster API address (the kubernetes Service through kube-proxy)", c, len(k.KNodes))
	}
	// The ToR and the other nodes, once per family.
	sessions := len(k.KNodes) * len(s.families())
	waitFor(t, time.Minute, fmt.Sprintf("every node's BGPNodeStatus shows its %d ToR and mesh sessions established", sessions), func() error {
		out, err := k.Kubectl(s.ctx, "get", "bgpnodestatuses", "-o", `jsonpath={range .items[*]}{.metadata.name}={.status.establishedPeers}/{.status.totalPeers} {end}`)
		if err != nil {
			return err
		}
		got := strings.Fields(out)
		if len(got) != len(k.KNodes) {
			return fmt.Errorf("statuses: %q", out)
		}
		for _, g := range got {
			if !strings.HasSuffix(g, fmt.Sprintf("=%d/%d", sessions, sessions)) {
				return fmt.Errorf("statuses: %q", out)
			}
		}
		return nil
	})
	if k.Stack == StackDual {
		s.dualStackStatus(t)
		return
	}
	// A fresh install gets a pool with NAT, as Calico's does.
	if out := s.kubectl(t, "get", "ippools", "-o", `jsonpath={range .items[*]}{.metadata.name} {.spec.cidr} {.spec.natOutgoing}{"\n"}{end}`); strings.TrimSpace(out) != "default "+ClusterCIDR.String()+" true" {
		t.Errorf("IPPools after install: %q, want the default pool %s with natOutgoing", out, ClusterCIDR)
	}
}

// nexthopdPid finds the daemon container's process among the node
// namespace's processes (it runs hostNetwork).
func nexthopdPid(n *KubeNode) (int, error) {
	out, err := run("ip", "netns", "pids", n.NS)
	if err != nil {
		return 0, err
	}
	for _, f := range strings.Fields(out) {
		cmd, _ := os.ReadFile("/proc/" + f + "/cmdline")
		if strings.HasPrefix(string(cmd), "/usr/local/bin/nexthopd\x00") {
			return strconv.Atoi(f)
		}
	}
	return 0, fmt.Errorf("%s: no nexthopd process in the node's namespace", n.Name)
}

func procStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + field + `:\s*(\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	return string(m[1])
}

func (s *kubeletSuite) podsAcrossNodes(t *testing.T) {
	k := s.k
	pods, err := k.DeployWeb(s.ctx, 6)
	if err != nil {
		t.Fatal(err)
	}
	s.pods = pods
	cidrs := s.nodeCIDRs(t)
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.Node]++
		if len(p.IPs) != len(s.families()) {
			t.Errorf("pod %s on %s has status.podIPs %v, want one address of each of the cluster's families (%v)", p.Name, p.Node, p.IPs, k.ClusterCIDRs)
		}
		for i, v6 := range s.families() {
			ip := p.IPOf(v6)
			if i >= len(cidrs[p.Node]) || !cidrs[p.Node][i].Contains(ip) {
				t.Errorf("pod %s on %s has %s address %q, outside the node's podCIDRs %v", p.Name, p.Node, family(v6), ip, cidrs[p.Node])
			}
		}
	}
	if len(perNode) != len(k.KNodes) {
		t.Fatalf("web pods on %d of %d nodes: %v", len(perNode), len(k.KNodes), perNode)
	}
	sandboxes, err := k.Sandboxes()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		// What the runtime reported is what the pod has.
		if sb, ok := sandboxes[p.IP]; !ok || sb.IPv6 != p.IPv6 {
			t.Errorf("pod %s: the API says %v, the pod's eth0 has %s and %s", p.Name, p.IPs, sb.IP, sb.IPv6)
		}
	}
	if k.Stack == StackDual {
		s.wideShowsIPv4(t, pods)
	}
	waitFor(t, time.Minute, "kubectl exec: pods ping pods on every other node, at each of their addresses", func() error {
		lines, err := k.CrossNodePings(s.ctx, pods)
		if err == nil {
			t.Logf("pings:\n%s", strings.Join(lines, "\n"))
		}
		return err
	})

	// Pod to pod is routed, never NATed: node2 sees pod1's own address,
	// in each family.
	from, to := podOn(t, pods, "node1"), podOn(t, pods, "node2")
	for _, v6 := range s.families() {
		proto := map[bool]string{false: "icmp", true: "icmp6"}[v6]
		capture, err := k.StartCaptureIn(k.KNodes[1].NS, underlayLink, "pod-to-pod-"+proto, proto+" and dst host "+to.IPOf(v6).String())
		if err != nil {
			t.Fatal(err)
		}
		if out, err := k.KubectlPing(s.ctx, from.Name, to.IPOf(v6), 2); err != nil {
			capture.Stop()
			t.Fatalf("%v\n%s", err, out)
		}
		lines, err := capture.Stop()
		if err != nil {
			t.Fatal(err)
		}
		if want := from.IPOf(v6).String() + " > " + to.IPOf(v6).String(); !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, want) }) {
			t.Errorf("node2's underlay did not show %s (pod addresses, no NAT, no tunnel):\n%s", want, strings.Join(lines, "\n"))
		}
	}

	// A ClusterIP Service answers from a pod on another node.
	clusterIP := strings.TrimSpace(s.kubectl(t, "get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"))
	s.serviceAnswersAcrossNodes(t, from, "web", netip.MustParseAddr(clusterIP))

	// A server outside the cluster sees the node's address: the default
	// pool's natOutgoing.
	srv, err := k.ServeInternet(8080)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	node1 := k.KNodes[0]
	out, err := k.Kubectl(s.ctx, "exec", from.Name, "--", "nc", "-w", "3", InternetServer.String(), "8080")
	if err != nil {
		t.Fatalf("pod %s to %s:8080 behind the ToR: %v\n%s", from.Name, InternetServer, err, out)
	}
	if got := strings.TrimSpace(out); got != node1.Address.String() {
		t.Errorf("the server behind the ToR saw %q, want node1's address %s (outgoing NAT)", got, node1.Address)
	}
}

// serviceAnswersAcrossNodes waits until Service svc, at clusterIP:80,
// answers from's request with the name of a web pod on another node than
// from's.
func (s *kubeletSuite) serviceAnswersAcrossNodes(t *testing.T, from WorkloadPod, svc string, clusterIP netip.Addr) {
	t.Helper()
	names := map[string]string{}
	for _, p := range s.pods {
		names[p.Name] = p.Node
	}
	waitFor(t, time.Minute, fmt.Sprintf("Service %s answers at %s from a pod on another node than the client's", svc, clusterIP), func() error {
		out, err := s.k.Kubectl(s.ctx, "exec", from.Name, "--", "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 "+clusterIP.String()+" 80")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		answerer := strings.TrimSpace(lines[len(lines)-1])
		node, ok := names[answerer]
		if !ok {
			return fmt.Errorf("answer %q is not a web pod's name", answerer)
		}
		if node == from.Node {
			return fmt.Errorf("%s answered, on the client's own node %s", answerer, node)
		}
		t.Logf("%s (%s) -> Service %s %s:80 answered by %s (%s)", from.Name, from.Node, svc, clusterIP, answerer, node)
		return nil
	})
}

func podOn(t *testing.T, pods []WorkloadPod, node string) WorkloadPod {
	t.Helper()
	for _, p := range pods {
		if p.Node == node {
			return p
		}
	}
	t.Fatalf("no web pod on %s", node)
	return WorkloadPod{}
}

// nodeCIDRs maps node name to its spec.podCIDRs (IPv4 first).
func (s *kubeletSuite) nodeCIDRs(t *testing.T) map[string][]netip.Prefix {
	t.Helper()
	cidrs, err := s.k.NodePodCIDRs(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	return cidrs
}

// sandboxOf finds the node-side view of a workload pod.
func (s *kubeletSuite) sandboxOf(t *testing.T, p WorkloadPod) PodSandbox {
	t.Helper()
	all, err := s.k.Sandboxes()
	if err != nil {
		t.Fatal(err)
	}
	sb, ok := all[p.IP]
	if !ok {
		t.Fatalf("no sandbox with %s (pod %s) on any node", p.IP, p.Name)
	}
	return sb
}

// daemonPods maps node name to the name of the nexthop pod on it.
func (s *kubeletSuite) daemonPods(t *testing.T) map[string]string {
	t.Helper()
	out := s.kubectl(t, "-n", "nexthop-system", "get", "pods", "-l", "app.kubernetes.io/name=nexthop",
		"-o", "jsonpath={range .items[*]}{.spec.nodeName}={.metadata.name} {end}")
	m := map[string]string{}
	for _, f := range strings.Fields(out) {
		node, name, _ := strings.Cut(f, "=")
		m[node] = name
	}
	return m
}

func (s *kubeletSuite) rolloutRestart(t *testing.T) {
	from, to := s.sandboxOf(t, podOn(t, s.pods, "node1")), s.sandboxOf(t, podOn(t, s.pods, "node2"))
	before := s.daemonPods(t)
	// 20 pings a second from one pod to the other (at each of its
	// addresses), through the whole rolling restart of every node's daemon.
	type pinger struct {
		cmd *exec.Cmd
		out bytes.Buffer
		dst netip.Addr
	}
	var pings []*pinger
	for _, dst := range []netip.Addr{to.IP, to.IPv6} {
		if !dst.IsValid() {
			continue
		}
		p := &pinger{cmd: exec.Command("nsenter", "-t", strconv.Itoa(from.Pid), "-n", "ping", "-n", "-i", "0.05", "-W", "1", dst.String()), dst: dst}
		p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pings = append(pings, p)
	}
	start := time.Now()
	s.kubectl(t, "-n", "nexthop-system", "rollout", "restart", "ds/nexthop")
	s.kubectl(t, "-n", "nexthop-system", "rollout", "status", "ds/nexthop", "--timeout=5m")
	// Past the last restart: the new daemons' sessions and initial sync.
	time.Sleep(10 * time.Second)
	for _, p := range pings {
		p.cmd.Process.Signal(syscall.SIGINT)
		p.cmd.Wait()
	}
	after := s.daemonPods(t)
	for node, name := range before {
		if after[node] == name {
			t.Errorf("%s: daemon pod %s was not replaced", node, name)
		}
	}
	for _, p := range pings {
		m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`).FindStringSubmatch(p.out.String())
		if m == nil {
			t.Fatalf("no ping summary:\n%s", p.out.String())
		}
		sent, got := m[1], m[2]
		t.Logf("rollout restart over %s: %s sent, %s received (%s -> %s)", time.Since(start).Round(time.Second), sent, got, from.IPOf(p.dst.Is6()), p.dst)
		if n, _ := strconv.Atoi(sent); n < 100 {
			t.Errorf("only %s pings to %s sent: the restart was not covered", sent, p.dst)
		}
		if sent != got {
			t.Errorf("pings to %s lost during the rollout restart: %s sent, %s received", p.dst, sent, got)
		}
	}
}

// ipamState is what node n's daemon has allocated, by IP (each of an
// allocation's addresses: IPv4 and, on a dual-stack node, IPv6).
func ipamState(t *testing.T, n *KubeNode) map[netip.Addr]ipam.Allocation {
	t.Helper()
	c, err := ipam.NewClient(n.HostPath("/run/nexthop/nexthop.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, allocs, err := c.List(ctx)
	if err != nil {
		t.Fatalf("%s: IPAM list: %v", n.Name, err)
	}
	m := map[netip.Addr]ipam.Allocation{}
	for _, a := range allocs {
		for _, ip := range a.Addrs() {
			if prev, dup := m[ip]; dup {
				t.Errorf("%s: %s allocated twice: %s and %s", n.Name, ip, prev.ContainerID, a.ContainerID)
			}
			m[ip] = a
		}
	}
	return m
}

// ipamMatchesPods waits until node n's allocations are exactly the
// addresses of its running pod sandboxes, of every family: nothing
// leaked, nothing doubled, no family held without the other.
func (s *kubeletSuite) ipamMatchesPods(t *testing.T, n *KubeNode) {
	t.Helper()
	waitFor(t, 2*time.Minute, n.Name+": IPAM holds exactly the addresses of the node's pods", func() error {
		sbs, err := n.Sandboxes()
		if err != nil {
			return err
		}
		var pods, allocated []string
		for _, sb := range sbs {
			for _, ip := range []netip.Addr{sb.IP, sb.IPv6} {
				if ip.IsValid() {
					pods = append(pods, ip.String())
				}
			}
		}
		for ip := range ipamState(t, n) {
			allocated = append(allocated, ip.String())
		}
		slices.Sort(pods)
		slices.Sort(allocated)
		if !slices.Equal(pods, allocated) {
			return fmt.Errorf("pods %v, allocated %v", pods, allocated)
		}
		return nil
	})
}

func (s *kubeletSuite) podDeletedWhileDaemonAway(t *testing.T) {
	k := s.k
	n := k.KNodes[2]
	victim := podOn(t, s.pods, n.Name)
	daemon := s.daemonPods(t)[n.Name]
	// Keep the daemon away for as long as the test needs, as an image that
	// cannot be pulled during an upgrade would: the node loses the image,
	// then the daemon's pod goes.
	full, _, err := ociimage.Names(k.ImageRef)
	if err != nil {
		t.Fatal(err)
	}
	sandboxID := strings.TrimSpace(mustOK(t)(n.Ctr("containers", "ls", "-q",
		`labels."io.kubernetes.pod.name"==`+victim.Name+`,labels."io.cri-containerd.kind"==sandbox`)))
	if sandboxID == "" || strings.Contains(sandboxID, "\n") {
		t.Fatalf("sandbox of %s: %q", victim.Name, sandboxID)
	}
	if out, err := n.Ctr("images", "rm", full); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	s.kubectl(t, "-n", "nexthop-system", "delete", "pod", daemon, "--wait=true", "--timeout=60s")
	if _, err := nexthopdPid(n); err == nil {
		t.Fatalf("%s: nexthopd still runs after its pod was deleted", n.Name)
	}
	// The pod terminates without the daemon: CNI DEL succeeds.
	s.kubectl(t, "delete", "pod", victim.Name, "--wait=true", "--timeout=60s")
	// Its release is recorded (beside those of the replacement pod's
	// failed ADDs, which the runtime undoes with DEL).
	spool := n.HostPath("/var/lib/nexthop/pending-release")
	records, err := filepath.Glob(filepath.Join(spool, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range records {
		b, _ := os.ReadFile(r)
		found = found || bytes.Contains(b, []byte(sandboxID))
	}
	if !found {
		t.Fatalf("%s: no pending release for %s's sandbox %s among %d records in %s", n.Name, victim.Name, sandboxID, len(records), spool)
	}
	if _, err := nexthopdPid(n); err == nil {
		t.Fatalf("%s: a daemon came back before the pod was gone: the test proved nothing", n.Name)
	}
	t.Logf("pod %s (%s) deleted on %s with no daemon there: its release recorded (%d records)", victim.Name, victim.IP, n.Name, len(records))

	// The daemon comes back (the image is there again; a new pod skips
	// the pull back-off).
	if out, err := n.Ctr("images", "import", k.ImageTar); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	s.kubectl(t, "-n", "nexthop-system", "delete", "pod", "--field-selector", "spec.nodeName="+n.Name, "-l", "app.kubernetes.io/name=nexthop", "--wait=true")
	s.kubectl(t, "-n", "nexthop-system", "rollout", "status", "ds/nexthop", "--timeout=3m")
	pods, err := k.WaitWeb(s.ctx, 6)
	if err != nil {
		t.Fatal(err)
	}
	s.pods = pods
	s.ipamMatchesPods(t, n)
	if left, _ := os.ReadDir(spool); len(left) != 0 {
		t.Errorf("%s: %d pending releases left after the daemon came back", n.Name, len(left))
	}
	if logs := k.DaemonLogs(s.ctx, 400); !strings.Contains(logs, victim.IP.String()) {
		t.Errorf("the new daemon on %s does not log the release of %s", n.Name, victim.IP)
	}
}

func (s *kubeletSuite) nodeReboot(t *testing.T) {
	k := s.k
	n := k.KNodes[1]
	before := ipamState(t, n)
	t.Logf("%s: rebooting with %d addresses allocated", n.Name, len(before))
	if err := n.Reboot(); err != nil {
		t.Fatal(err)
	}
	s.kubectl(t, "wait", "--for=condition=Ready", "node/"+n.Name, "--timeout=3m")
	s.kubectl(t, "-n", "nexthop-system", "rollout", "status", "ds/nexthop", "--timeout=3m")
	var pods []WorkloadPod
	waitFor(t, 3*time.Minute, "web pods Running again after the reboot, with new sandboxes on "+n.Name, func() error {
		var err error
		if pods, err = k.WaitWeb(s.ctx, 6); err != nil {
			return err
		}
		sbs, err := n.Sandboxes()
		if err != nil {
			return err
		}
		onNode := 0
		for _, p := range pods {
			if p.Node == n.Name {
				onNode++
			}
		}
		if len(sbs) != onNode {
			return fmt.Errorf("%d sandboxes for %d web pods on %s", len(sbs), onNode, n.Name)
		}
		return nil
	})
	s.pods = pods
	if _, err := k.Sandboxes(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "kubectl exec: pods ping pods on every other node after the reboot", func() error {
		_, err := k.CrossNodePings(s.ctx, pods)
		return err
	})
	s.ipamMatchesPods(t, n)
}

func (s *kubeletSuite) uninstall(t *testing.T) {
	k := s.k
	s.kubectl(t, "delete", "-k", k.Overlay(), "--wait=true", "--timeout=3m")
	waitFor(t, 2*time.Minute, "no nexthopd left on any node", func() error {
		for _, n := range k.KNodes {
			if pid, err := nexthopdPid(n); err == nil {
				return fmt.Errorf("%s: nexthopd still runs (pid %d)", n.Name, pid)
			}
		}
		return nil
	})
	// Pods deleted with nexthop gone still terminate (CNI DEL without the
	// daemon).
	s.kubectl(t, "delete", "deployment", "web", "--wait=true", "--timeout=60s")
	s.kubectl(t, "wait", "--for=delete", "pod", "-l", "app=web", "--timeout=90s")
	for _, n := range k.KNodes {
		// The command removes itself: a copy runs it the second time.
		again := filepath.Join(t.TempDir(), "nexthop")
		if _, err := run("cp", n.HostPath("/opt/cni/bin/nexthop"), again); err != nil {
			t.Fatal(err)
		}
		out, err := n.RunUninstall("/opt/cni/bin/nexthop")
		if err != nil {
			t.Fatalf("%s: nexthop uninstall: %v\n%s", n.Name, err, out)
		}
		t.Logf("%s: nexthop uninstall:\n%s", n.Name, out)
		if out, err := n.RunUninstall(again); err != nil || !strings.Contains(out, "nothing to do") {
			t.Errorf("%s: a second nexthop uninstall: %v\n%s", n.Name, err, out)
		}
		for _, v6 := range s.families() {
			fam := map[bool]string{false: "-4", true: "-6"}[v6]
			if out, _ := run("ip", fam, "-n", n.NS, "route", "show", "table", "all", "proto", "201"); strings.TrimSpace(out) != "" {
				t.Errorf("%s: %s proto 201 routes left:\n%s", n.Name, family(v6), out)
			}
		}
		if out, _ := run("ip", "-n", n.NS, "-o", "link", "show"); strings.Contains(out, ": nh") {
			t.Errorf("%s: nexthop links left:\n%s", n.Name, out)
		}
		if out, _ := Exec(n.NS, "nft", "list", "tables"); strings.Contains(out, "nexthop") {
			t.Errorf("%s: nftables tables left: %s", n.Name, out)
		}
		for _, p := range []string{"/etc/cni/net.d/05-nexthop.conflist", "/opt/cni/bin/nexthop", "/opt/cni/bin/portmap",
			"/opt/cni/bin/loopback", "/opt/cni/bin/.nexthop-owned", "/var/lib/nexthop", "/run/nexthop"} {
			if _, err := os.Lstat(n.HostPath(p)); err == nil {
				t.Errorf("%s: %s left behind", n.Name, p)
			}
		}
	}
}

// mustOK turns a (stdout, error) pair into stdout, failing the test on an
// error.
func mustOK(t *testing.T) func(string, error) string {
	return func(out string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return out
	}
}
