package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
	"github.com/nexthop-net/nexthop/kubetest"
)

// requireKube fails under CI when the API server binaries are missing (CI
// builds them first with `make kube-bin`; a skip would hide that step
// breaking). Elsewhere kubetest.Start builds them when the test timeout
// allows, or skips saying how.
func requireKube(t *testing.T) {
	t.Helper()
	if os.Getenv("CI") != "true" {
		return
	}
	dir, err := kubetest.BinDir()
	if err != nil {
		t.Fatalf("CI=true: no API server binaries: %v", err)
	}
	for _, b := range []string{"kube-apiserver", "etcd", "kubectl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Fatalf("CI=true: %s missing in %s: run `make kube-bin` before the tests", b, dir)
		}
	}
}

// kubeCluster is the netns cluster driven by a real API server.
type kubeCluster struct {
	t   *testing.T
	c   *Cluster
	env *kubetest.Env
	cs  kubernetes.Interface
	dc  dynamic.Interface
}

// kubectl runs the cached kubectl as admin, with stdin if given, and
// returns its combined output.
func (k *kubeCluster) kubectl(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := k.env.Kubectl(ctx, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (k *kubeCluster) mustKubectl(stdin string, args ...string) string {
	k.t.Helper()
	out, err := k.kubectl(stdin, args...)
	if err != nil {
		k.t.Fatal(err)
	}
	k.t.Logf("kubectl %s: %s", strings.Join(args, " "), strings.TrimSpace(out))
	return out
}

// createNode makes n's Node as the kubelet and kube-controller-manager
// (--allocate-node-cidrs) would leave it: spec.podCIDR, and the underlay
// address as InternalIP, which is status and written through /status.
func (k *kubeCluster) createNode(n *Node) {
	k.t.Helper()
	ctx := context.Background()
	cidr := n.PodCIDR().String()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}, Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}}}
	node, err := k.cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatalf("create Node %s: %v", n.Name, err)
	}
	node.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeHostName, Address: n.Name},
		{Type: corev1.NodeInternalIP, Address: n.Address.String()},
	}
	if _, err := k.cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		k.t.Fatalf("set InternalIP of Node %s: %v", n.Name, err)
	}
}

// status reads n's BGPNodeStatus.
func (k *kubeCluster) status(n *Node) (nexthopv1.BGPNodeStatusStatus, error) {
	var st nexthopv1.BGPNodeStatus
	u, err := k.dc.Resource(nexthopv1.BGPNodeStatusesResource).Get(context.Background(), n.Name, metav1.GetOptions{})
	if err != nil {
		return st.Status, fmt.Errorf("BGPNodeStatus %s: %w", n.Name, err)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &st); err != nil {
		return st.Status, fmt.Errorf("decode BGPNodeStatus %s: %w", n.Name, err)
	}
	return st.Status, nil
}

// statusShows checks n's BGPNodeStatus lists exactly the peers in want
// with their established state.
func (k *kubeCluster) statusShows(n *Node, want map[netip.Addr]bool) error {
	st, err := k.status(n)
	if err != nil {
		return err
	}
	got := map[netip.Addr]bool{}
	established := int32(0)
	for _, p := range st.Peers {
		a, _ := netip.ParseAddr(p.Address)
		got[a] = p.State == "established"
		if got[a] {
			established++
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || st.EstablishedPeers != established || st.TotalPeers != int32(len(want)) ||
		st.PodCIDR != n.PodCIDR().String() || st.ASNumber != int64(NodeAS) {
		return fmt.Errorf("BGPNodeStatus %s: %+v; want peers (established?) %v", n.Name, st, want)
	}
	return nil
}

// meshPeers is every other node, established.
func meshPeers(n *Node, live []*Node) map[netip.Addr]bool {
	m := map[netip.Addr]bool{}
	for _, o := range live {
		if o != n {
			m[o.Address] = true
		}
	}
	return m
}

// kernelsConverged checks every node of live has exactly the routes to the
// other live nodes' blocks (plus its own blackhole).
func kernelsConverged(c *Cluster, live []*Node) error {
	var errs []error
	for _, n := range live {
		errs = append(errs, checkKernel(c, n, live))
	}
	return errors.Join(errs...)
}

// meshConverged adds each node's GoBGP RIB: every block learned from its
// owner.
func meshConverged(c *Cluster, live []*Node) error {
	errs := []error{kernelsConverged(c, live)}
	for _, n := range live {
		errs = append(errs, checkGobgp(c, n, live))
	}
	return errors.Join(errs...)
}

// hasNeighbor reports whether n's speaker has addr configured at all.
func hasNeighbor(c *Cluster, n *Node, addr netip.Addr) (bool, error) {
	states, err := c.GobgpSessionStates(n)
	if err != nil {
		return false, err
	}
	_, ok := states[addr]
	return ok, nil
}

// poolYAML is the cluster's pod pool: every node's block is inside it, and
// it is all nodes may announce to each other.
const poolYAML = `apiVersion: nexthop.io/v1
kind: IPPool
metadata:
  name: default
spec:
  cidr: 10.244.0.0/16
`

const torPeerYAML = `apiVersion: nexthop.io/v1
kind: BGPPeer
metadata:
  name: tor-rack-a
spec:
  peerIP: 192.0.2.254
  asNumber: 65000
  holdTime: 3s
  nodeSelector:
    matchLabels:
      rack: a
`

const invalidPeerYAML = `apiVersion: nexthop.io/v1
kind: BGPPeer
metadata:
  name: too-fast
spec:
  peerIP: 192.0.2.253
  asNumber: 65000
  holdTime: 1s
`

const meshOffYAML = `apiVersion: nexthop.io/v1
kind: BGPConfiguration
metadata:
  name: default
spec:
  nodeToNodeMeshEnabled: false
`

// startKube starts a real API server and installs what a user installs
// first: the manifests with `kubectl apply -k` (the README's install line;
// no kubelet or controllers run, so the DaemonSet stays an object and its
// RBAC is what the daemons use) and an IPPool. The caller makes the
// cluster of namespaces and sets k.c.
func startKube(t *testing.T) *kubeCluster {
	t.Helper()
	requireHarness(t)
	requireBinaries(t)
	requireKube(t)
	env := kubetest.Start(t)
	k := &kubeCluster{t: t, env: env, cs: kubernetes.NewForConfigOrDie(env.Config), dc: dynamic.NewForConfigOrDie(env.Config)}
	k.mustKubectl("", "apply", "-k", filepath.Join(sourceRoot(), "manifests"))
	k.mustKubectl(poolYAML, "apply", "-f", "-")
	return k
}

// TestKubernetes runs the daemons in Kubernetes mode against a real API
// server: the manifests installed with `kubectl apply -k`, Node objects
// with pod CIDRs, and everything after that done through the API while the
// daemons run, as an operator would.
func TestKubernetes(t *testing.T) {
	k := startKube(t)

	c := newCluster(t, Options{Nodes: 3, ToR: true, NoPods: true})
	k.c = c
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	apiAddr := strings.TrimPrefix(k.env.URL, "https://")
	for _, n := range c.Nodes {
		k.createNode(n)
		// The DaemonSet's service account: the manifests' RBAC must be
		// enough for everything the daemons do below.
		if err := c.UseKubernetes(n, apiAddr, k.env.DaemonConfig().BearerToken); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	all := c.Nodes
	waitFor(t, convergeTimeout, "the mesh from the API: every block in every kernel and RIB", func() error { return meshConverged(c, all) })
	waitFor(t, convergeTimeout, "every daemon ready (/readyz)", func() error {
		for _, n := range all {
			code, body, err := NodeHTTPGet(n, fmt.Sprintf("http://127.0.0.1:%d/readyz", NodeHealthPort))
			if err != nil {
				return err
			}
			if code != http.StatusOK {
				return fmt.Errorf("%s /readyz: %d %s", n.Name, code, body)
			}
		}
		return nil
	})
	waitFor(t, convergeTimeout, "BGPNodeStatus of every node: two established sessions", func() error {
		for _, n := range all {
			if err := k.statusShows(n, meshPeers(n, all)); err != nil {
				return err
			}
		}
		return nil
	})
	k.mustKubectl("", "get", "bgpnodestatuses")
	pids := map[*Node]int{}
	for _, n := range all {
		pids[n] = n.DaemonPid()
	}

	// Pods through the real CNI plugin get addresses from their node's
	// spec.podCIDR, and reach each other across nodes.
	pods := map[*Node]*Pod{}
	for _, n := range all {
		cni, err := c.CNI(n)
		if err != nil {
			t.Fatal(err)
		}
		name := "kpod" + strings.TrimPrefix(n.Name, "node")
		podNS, err := c.AddPodNS(name)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), CNITimeout)
		res, err := cni.Add(ctx, cni.Runtime(podNS, podNS, name))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		ip, veth, err := ResultPod(res)
		if err != nil {
			t.Fatal(err)
		}
		if !n.PodCIDR().Contains(ip) {
			t.Fatalf("pod on %s got %s, outside the Node's spec.podCIDR %s", n.Name, ip, n.PodCIDR())
		}
		pods[n] = &Pod{Name: name, NS: podNS, IP: ip, HostVeth: veth, ContainerID: podNS}
		t.Logf("%s: pod %s got %s from spec.podCIDR %s", n.Name, name, ip, n.PodCIDR())
	}
	pingAll := func(what string, nodes []*Node) {
		t.Helper()
		for _, a := range nodes {
			for _, b := range nodes {
				if a == b {
					continue
				}
				if err := WaitFor(20*time.Second, 500*time.Millisecond, func() error { return Ping(pods[a], pods[b].IP, 1) }); err != nil {
					t.Fatalf("%s: pod on %s -> pod on %s: %v", what, a.Name, b.Name, err)
				}
			}
		}
	}
	pingAll("mesh", all)

	// The API server refuses an invalid BGPPeer, with the CEL rule's message.
	out, err := k.kubectl(invalidPeerYAML, "apply", "-f", "-")
	if err == nil || !strings.Contains(out, "holdTime must be at least 3s") {
		t.Fatalf("a BGPPeer with holdTime 1s: want it rejected with \"holdTime must be at least 3s\", got err=%v:\n%s", err, out)
	}
	t.Logf("invalid BGPPeer rejected: %s", strings.TrimSpace(out))

	// A BGPPeer for the ToR selecting rack a: sessions on node1 and node2
	// only; FRR learns exactly their blocks.
	k.mustKubectl("", "label", "node", n1.Name, n2.Name, "rack=a")
	k.mustKubectl(torPeerYAML, "apply", "-f", "-")
	rackA := []*Node{n1, n2}
	waitFor(t, convergeTimeout, "ToR sessions with the rack-a nodes only", func() error {
		up, err := c.ToR.Established()
		if err != nil {
			return err
		}
		if want := []netip.Addr{n1.Address, n2.Address}; !slices.Equal(up, want) {
			return fmt.Errorf("FRR established with %v, want %v", up, want)
		}
		if has, err := hasNeighbor(c, n3, ToRAddress); err != nil || has {
			return fmt.Errorf("node3 (not in rack a) has the ToR as a neighbour (%v)", err)
		}
		return checkFRR(c, rackA)
	})
	waitFor(t, convergeTimeout, "the ToR session in node1's BGPNodeStatus", func() error {
		want := meshPeers(n1, all)
		want[ToRAddress] = true
		return k.statusShows(n1, want)
	})
	k.mustKubectl("", "delete", "bgppeer", "tor-rack-a")
	waitFor(t, convergeTimeout, "the ToR sessions gone with the BGPPeer", func() error {
		up, err := c.ToR.Established()
		if err != nil {
			return err
		}
		if len(up) != 0 {
			return fmt.Errorf("FRR still established with %v", up)
		}
		for _, n := range rackA {
			if has, err := hasNeighbor(c, n, ToRAddress); err != nil || has {
				return fmt.Errorf("%s still has the ToR as a neighbour (%v)", n.Name, err)
			}
		}
		return meshConverged(c, all)
	})

	// A Node deleted: its block leaves every other kernel. Created again,
	// it rejoins. Nothing restarts for either.
	k.mustKubectl("", "delete", "node", n3.Name)
	waitFor(t, convergeTimeout, "node3's routes gone from every other node", func() error {
		return meshConverged(c, []*Node{n1, n2})
	})
	k.createNode(n3)
	waitFor(t, convergeTimeout, "node3 back in every kernel after its Node is recreated", func() error { return meshConverged(c, all) })
	for _, n := range all {
		if n.DaemonPid() != pids[n] || !n.Running() {
			t.Fatalf("%s's daemon restarted (pid %d, was %d) for a peer change", n.Name, n.DaemonPid(), pids[n])
		}
	}

	k.poolChangesApplyLive(n1, n2, all, pids)

	// The mesh off, node1 a route reflector: routes still reach every node.
	// Becoming a reflector changes node1's own BGP identity (cluster ID),
	// which needs a restart: its daemon exits non-zero and, as the kubelet
	// would, the test starts it again.
	k.mustKubectl("", "label", "node", n1.Name, nexthopv1.LabelRouteReflector+"=true")
	k.mustKubectl(meshOffYAML, "apply", "-f", "-")
	// Each node waits a random 1-30 s (daemon.DefaultRestartSpread) before
	// it exits, so that nodes do not all restart at once.
	waitFor(t, convergeTimeout+30*time.Second, "node1's daemon exiting to become a route reflector", func() error {
		exited, code := n1.DaemonExit()
		if !exited {
			return errors.New("still running")
		}
		if code != 3 {
			return Permanent(fmt.Errorf("exit code %d, want 3 (restart to apply)", code))
		}
		return n1.LogContains("routeReflectorClusterID")
	})
	if err := c.StartDaemon(n1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "every block in every kernel through the reflector", func() error {
		if err := kernelsConverged(c, all); err != nil {
			return err
		}
		for _, n := range []*Node{n2, n3} {
			up, err := c.GobgpEstablished(n)
			if err != nil {
				return err
			}
			if !slices.Equal(up, []netip.Addr{n1.Address}) {
				return fmt.Errorf("%s has sessions with %v, want the reflector %s only", n.Name, up, n1.Address)
			}
		}
		return k.statusShows(n1, meshPeers(n1, all))
	})
	for _, n := range []*Node{n2, n3} {
		if n.DaemonPid() != pids[n] {
			t.Fatalf("%s's daemon restarted when the mesh went off; only peers changed for it", n.Name)
		}
	}
	pingAll("route reflector", all)
	reflectorTopology := func() error {
		for _, n := range all {
			want := map[netip.Addr]bool{n1.Address: true}
			if n == n1 {
				want = meshPeers(n1, all)
			}
			if err := k.statusShows(n, want); err != nil {
				return err
			}
		}
		return nil
	}
	waitFor(t, convergeTimeout, "every BGPNodeStatus showing the reflector topology", reflectorTopology)

	// A new client: node3's Node goes and comes back. The reflector takes
	// it on as a client live, and every other client learns its block
	// through the reflector; no daemon restarts, the reflector included.
	pids = map[*Node]int{}
	for _, n := range all {
		pids[n] = n.DaemonPid()
	}
	k.mustKubectl("", "delete", "node", n3.Name)
	waitFor(t, convergeTimeout, "node3's block gone from the other kernels, reflector topology", func() error {
		return kernelsConverged(c, []*Node{n1, n2})
	})
	k.createNode(n3)
	waitFor(t, convergeTimeout, "the new client's block in every kernel through the reflector", func() error {
		if err := kernelsConverged(c, all); err != nil {
			return err
		}
		return reflectorTopology()
	})
	for _, n := range all {
		if n.DaemonPid() != pids[n] || !n.Running() {
			t.Fatalf("%s's daemon restarted (pid %d, was %d) when a client joined the reflector", n.Name, n.DaemonPid(), pids[n])
		}
	}
	pingAll("route reflector, new client", all)
	k.mustKubectl("", "get", "bgpnodestatuses")
}

// secondPoolYAML is a pool holding no node's block, disabled or not.
func secondPoolYAML(disabled bool) string {
	return fmt.Sprintf(`apiVersion: nexthop.io/v1
kind: IPPool
metadata:
  name: second
spec:
  cidr: 10.250.0.0/16
  disabled: %v
`, disabled)
}

// poolChangesApplyLive: IPPools created, disabled and changed while the
// daemons run restart none of them, and the import scope follows. The ToR
// (a BGPPeer of the rack-a nodes n1 and n2) sends 10.250.1.0/24: outside
// every pool, an external route the rack-a nodes install. A second pool
// covering it makes it a pod range, which only nodes may send: it leaves
// their kernels. The pool disabled, the route is back. natOutgoing turned
// on and off in the nodes' pool applies live too.
func (k *kubeCluster) poolChangesApplyLive(n1, n2 *Node, all []*Node, pids map[*Node]int) {
	t, c := k.t, k.c
	t.Helper()
	ext := netip.MustParsePrefix("10.250.1.0/24")
	rackA := []*Node{n1, n2}
	hasExt := func(want bool) func() error {
		return func() error {
			for _, n := range rackA {
				rs, err := c.NexthopRoutes(n)
				if err != nil {
					return err
				}
				has := slices.ContainsFunc(rs, func(r Route) bool { return r.Dst == ext })
				if has != want {
					return fmt.Errorf("%s has a route to %s: %v, want %v (routes %v)", n.Name, ext, has, want, rs)
				}
			}
			return nil
		}
	}
	k.mustKubectl(torPeerYAML, "apply", "-f", "-")
	if err := c.ToR.Announce(ext); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "the ToR's 10.250.1.0/24, outside every pool, in the rack-a kernels", hasExt(true))

	k.mustKubectl(secondPoolYAML(false), "apply", "-f", "-")
	waitFor(t, convergeTimeout, "10.250.1.0/24 refused from the ToR once a pool holds it", hasExt(false))
	k.mustKubectl(secondPoolYAML(true), "apply", "-f", "-")
	waitFor(t, convergeTimeout, "10.250.1.0/24 accepted from the ToR again once its pool is disabled", hasExt(true))
	for _, n := range rackA {
		if err := n.LogContains("import scope applied live"); err != nil {
			t.Error(err)
		}
	}

	// natOutgoing in the nodes' own pool.
	for _, on := range []bool{true, false} {
		k.mustKubectl("", "patch", "ippool", "default", "--type=merge", "-p", fmt.Sprintf(`{"spec":{"natOutgoing":%v}}`, on))
		want := "natOutgoing off (applied live)"
		if on {
			want = "natOutgoing on (applied live)"
		}
		waitFor(t, convergeTimeout, "every node: "+want, func() error {
			var errs []error
			for _, n := range all {
				errs = append(errs, n.LogContains(want))
			}
			return errors.Join(errs...)
		})
	}

	if err := c.ToR.Withdraw(ext); err != nil {
		t.Fatal(err)
	}
	k.mustKubectl("", "delete", "bgppeer", "tor-rack-a")
	k.mustKubectl("", "delete", "ippool", "second")
	waitFor(t, convergeTimeout, "the mesh alone again", func() error { return meshConverged(c, all) })
	for _, n := range all {
		if n.DaemonPid() != pids[n] || !n.Running() {
			exited, code := n.DaemonExit()
			t.Fatalf("%s's daemon restarted for IPPool changes (pid %d, was %d; exited %v, code %d)", n.Name, n.DaemonPid(), pids[n], exited, code)
		}
		if err := n.LogContains("exiting to be restarted"); err == nil {
			t.Fatalf("%s's daemon scheduled a restart for IPPool changes", n.Name)
		}
	}
}
