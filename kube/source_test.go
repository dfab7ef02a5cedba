package kube

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
	"github.com/nexthop-net/nexthop/config"
)

func TestMeshFollowsNodes(t *testing.T) {
	c := newCluster(t)
	c.addNode("node1", "192.0.2.11", "10.244.1.0/24")
	c.addNode("node2", "192.0.2.12", "10.244.2.0/24")
	// No pod CIDR yet: not a routing member.
	c.addNode("joining", "192.0.2.19", "")

	w := c.watch("node1", nil)
	d := w.until("a mesh peering with node2", hasPeers("192.0.2.12"))
	cfg := d.Config
	if cfg.NodeName != "node1" || cfg.Address != netip.MustParseAddr("192.0.2.11") ||
		cfg.PodCIDROf(false) != netip.MustParsePrefix("10.244.1.0/24") || cfg.LocalAS != nexthopv1.DefaultASNumber {
		t.Fatalf("node identity: %s", describe(d))
	}
	if p, _ := peer(d, "192.0.2.12"); p.AS != nexthopv1.DefaultASNumber || p.Password != "" {
		t.Fatalf("mesh peer: %+v", p)
	}
	if cfg.GRPCListen != "none" || cfg.StateDir != "/nonexistent" {
		t.Fatalf("base settings lost: grpc=%q stateDir=%q", cfg.GRPCListen, cfg.StateDir)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("emitted config does not validate: %v", err)
	}

	// A third node, with its own AS and an address override: peers update.
	c.addNode("node3", "198.51.100.3", "10.244.3.0/24",
		annotated(nexthopv1.AnnotationAddress, "192.0.2.13"), annotated(nexthopv1.AnnotationAS, "64600"))
	d = w.until("node3 joining the mesh", hasPeers("192.0.2.12", "192.0.2.13"))
	if p, _ := peer(d, "192.0.2.13"); p.AS != 64600 {
		t.Fatalf("node3 peer AS = %d, want the annotation's 64600", p.AS)
	}

	// The joining node gets its CIDR: it becomes a peer.
	n, err := c.cs.CoreV1().Nodes().Get(context.Background(), "joining", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.244.9.0/24", []string{"10.244.9.0/24"}
	if _, err := c.cs.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.until("the joining node peering once it has a pod CIDR", hasPeers("192.0.2.12", "192.0.2.13", "192.0.2.19"))

	c.deleteNode("node2")
	w.until("node2's peer removed", hasPeers("192.0.2.13", "192.0.2.19"))
}

func TestClusterASAndMeshOff(t *testing.T) {
	c := newCluster(t)
	c.addNode("node1", "192.0.2.11", "10.244.1.0/24")
	c.addNode("node2", "192.0.2.12", "10.244.2.0/24")
	w := c.watch("node1", nil)
	w.until("mesh", hasPeers("192.0.2.12"))

	c.mustCreate(nexthopv1.BGPConfigurationsResource, &nexthopv1.BGPConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec:       nexthopv1.BGPConfigurationSpec{ASNumber: ptr[int64](65010), ListenPort: ptr[int32](1179)},
	})
	d := w.until("the cluster AS from BGPConfiguration", func(d *Desired) bool { return d.Config.LocalAS == 65010 })
	if p, _ := peer(d, "192.0.2.12"); p.AS != 65010 || d.Config.BGPPort != 1179 {
		t.Fatalf("after BGPConfiguration: %s port %d", describe(d), d.Config.BGPPort)
	}
	u, err := c.dc.Resource(nexthopv1.BGPConfigurationsResource).Get(context.Background(), "default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if mesh, _, _ := unstructuredBool(u.Object, "spec", "nodeToNodeMeshEnabled"); !mesh {
		t.Fatalf("nodeToNodeMeshEnabled did not default to true: %v", u.Object["spec"])
	}
	u.Object["spec"].(map[string]any)["nodeToNodeMeshEnabled"] = false
	if _, err := c.dc.Resource(nexthopv1.BGPConfigurationsResource).Update(context.Background(), u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.until("no peers with the mesh off and no reflectors", hasPeers())
}

func TestBGPPeerSelection(t *testing.T) {
	c := newCluster(t)
	c.addNode("a1", "192.0.2.11", "10.244.1.0/24", labelled("rack", "a"))
	c.addNode("b1", "192.0.2.21", "10.244.2.0/24", labelled("rack", "b"))
	wa := c.watch("a1", nil)
	wb := c.watch("b1", nil)
	wa.until("mesh", hasPeers("192.0.2.21"))
	wb.until("mesh", hasPeers("192.0.2.11"))

	c.mustCreate(nexthopv1.BGPPeersResource, &nexthopv1.BGPPeer{
		ObjectMeta: metav1.ObjectMeta{Name: "tor-a"},
		Spec: nexthopv1.BGPPeerSpec{
			PeerIP: "192.0.2.254", ASNumber: 65000,
			NodeSelector:    &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "a"}},
			HoldTime:        &metav1.Duration{Duration: 6 * time.Second},
			GracefulRestart: &nexthopv1.GracefulRestart{Enabled: true},
			MaxPrefixes:     ptr[int64](1000),
			BFD:             &nexthopv1.BFD{Enabled: true, MinTx: &metav1.Duration{Duration: 100 * time.Millisecond}},
		},
	})
	c.mustCreate(nexthopv1.BGPPeersResource, &nexthopv1.BGPPeer{
		ObjectMeta: metav1.ObjectMeta{Name: "only-b1"},
		Spec:       nexthopv1.BGPPeerSpec{PeerIP: "198.51.100.1", ASNumber: 65001, Node: "b1"},
	})
	c.mustCreate(nexthopv1.BGPPeersResource, &nexthopv1.BGPPeer{
		ObjectMeta: metav1.ObjectMeta{Name: "everyone"},
		Spec:       nexthopv1.BGPPeerSpec{PeerIP: "198.51.100.2", ASNumber: 65002},
	})
	d := wa.until("a1 with the rack-a ToR and the global peer", hasPeers("192.0.2.21", "192.0.2.254", "198.51.100.2"))
	tor, _ := peer(d, "192.0.2.254")
	if tor.AS != 65000 || tor.HoldTime.Duration != 6*time.Second || tor.Keepalive.Duration != 2*time.Second {
		t.Fatalf("ToR peer: %+v", tor)
	}
	if gr := tor.GracefulRestart; !gr.On() || gr.RestartTime.Duration != 120*time.Second {
		t.Fatalf("ToR graceful restart: %+v", gr)
	}
	if tor.MaxPrefixes != 1000 {
		t.Fatalf("ToR max prefixes: %d", tor.MaxPrefixes)
	}
	// BFD as asked, defaults for what is unset.
	if b := tor.BFD; !b.Enabled || b.MinTx.Duration != 100*time.Millisecond || b.MinRx.Duration != config.DefaultBFDInterval || b.Multiplier != 3 {
		t.Fatalf("ToR BFD: %+v", b)
	}
	d = wb.until("b1 with its node-specific and the global peer", hasPeers("192.0.2.11", "198.51.100.1", "198.51.100.2"))
	// Unset in the BGPPeer: config's defaults.
	if p, _ := peer(d, "198.51.100.1"); !p.GracefulRestart.On() || p.GracefulRestart.RestartTime.Duration != config.DefaultRestartTime ||
		p.MaxPrefixes != config.DefaultMaxPrefixes || p.BFD.Enabled {
		t.Fatalf("BGPPeer without graceful restart, prefix or BFD settings: %+v", p)
	}

	// Relabelling a node moves the ToR peering with it.
	n, err := c.cs.CoreV1().Nodes().Get(context.Background(), "b1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Labels["rack"] = "a"
	if _, err := c.cs.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wb.until("b1 selected by the rack-a ToR after relabelling", hasPeers("192.0.2.11", "192.0.2.254", "198.51.100.1", "198.51.100.2"))

	c.mustDelete(nexthopv1.BGPPeersResource, "tor-a")
	wa.until("the ToR peer removed", hasPeers("192.0.2.21", "198.51.100.2"))
	wb.until("the ToR peer removed", hasPeers("192.0.2.11", "198.51.100.1", "198.51.100.2"))
}

func TestBGPPeerPasswordFromSecret(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DefaultNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.addNode("node1", "192.0.2.11", "10.244.1.0/24")
	w := c.watch("node1", nil, WithNamespace(DefaultNamespace))
	w.until("no peers", hasPeers())

	c.mustCreate(nexthopv1.BGPPeersResource, &nexthopv1.BGPPeer{
		ObjectMeta: metav1.ObjectMeta{Name: "tor"},
		Spec: nexthopv1.BGPPeerSpec{
			PeerIP: "192.0.2.254", ASNumber: 65000,
			Password: &nexthopv1.BGPPassword{SecretKeyRef: nexthopv1.SecretKeyRef{Name: "bgp-secrets", Key: "tor"}},
		},
	})
	// Without the Secret the peer is left out (a session without the key
	// would only be refused by the router) and the reason is logged.
	w.logUntil(`Secret nexthop-system/bgp-secrets`)
	if d := w.src.Last(); d == nil || len(d.Config.Peers) != 0 {
		t.Fatalf("peer configured without its password: %v", d)
	}

	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bgp-secrets", Namespace: DefaultNamespace},
		Data:       map[string][]byte{"tor": []byte("s3cret\n")},
	}
	if _, err := c.cs.CoreV1().Secrets(DefaultNamespace).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d := w.until("the ToR peer with its password", hasPeers("192.0.2.254"))
	if p, _ := peer(d, "192.0.2.254"); p.Password != "s3cret" {
		t.Fatalf("password = %q, want the Secret's value without the trailing newline", p.Password)
	}

	// Rotating the key reaches the config.
	sec.Data["tor"] = []byte("n3w")
	if _, err := c.cs.CoreV1().Secrets(DefaultNamespace).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.until("the rotated password", func(d *Desired) bool { p, ok := peer(d, "192.0.2.254"); return ok && p.Password == "n3w" })
	if strings.Contains(w.log.String(), "n3w") || strings.Contains(w.log.String(), "s3cret") {
		t.Fatalf("a password reached the log:\n%s", w.log.String())
	}
}

func TestRouteReflectorsWithMeshOff(t *testing.T) {
	c := newCluster(t)
	c.mustCreate(nexthopv1.BGPConfigurationsResource, &nexthopv1.BGPConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec:       nexthopv1.BGPConfigurationSpec{NodeToNodeMeshEnabled: ptr(false), RouteReflectorClusterID: "224.0.0.1"},
	})
	c.addNode("rr1", "192.0.2.1", "10.244.100.0/24", labelled(nexthopv1.LabelRouteReflector, "true"))
	c.addNode("rr2", "192.0.2.2", "10.244.101.0/24", labelled(nexthopv1.LabelRouteReflector, "true"))
	c.addNode("c1", "192.0.2.11", "10.244.1.0/24")
	c.addNode("c2", "192.0.2.12", "10.244.2.0/24")

	client := c.watch("c1", nil)
	d := client.until("a client peering with the reflectors only", hasPeers("192.0.2.1", "192.0.2.2"))
	if d.Config.RouteReflectorClusterID.IsValid() || slices.ContainsFunc(d.Config.Peers, func(p config.Peer) bool { return p.RouteReflectorClient }) {
		t.Fatalf("a client acting as a reflector: %s", describe(d))
	}

	rr := c.watch("rr1", nil)
	d = rr.until("a reflector peering with everyone", hasPeers("192.0.2.2", "192.0.2.11", "192.0.2.12"))
	if d.Config.RouteReflectorClusterID != netip.MustParseAddr("224.0.0.1") {
		t.Fatalf("cluster ID = %v, want 224.0.0.1", d.Config.RouteReflectorClusterID)
	}
	if err := d.Config.Validate(); err != nil {
		t.Fatalf("reflector config does not validate: %v", err)
	}
	for addr, want := range map[string]bool{"192.0.2.2": false, "192.0.2.11": true, "192.0.2.12": true} {
		if got, _ := peer(d, addr); got.RouteReflectorClient != want {
			t.Errorf("peer %s route-reflector client = %v, want %v", addr, got.RouteReflectorClient, want)
		}
	}

	// A new client joins: the reflector learns of it without a restart.
	c.addNode("c3", "192.0.2.13", "10.244.3.0/24")
	rr.until("the new client", hasPeers("192.0.2.2", "192.0.2.11", "192.0.2.12", "192.0.2.13"))
	client.until("clients still peering only with reflectors", hasPeers("192.0.2.1", "192.0.2.2"))
}

func TestPodCIDROutsidePoolsRefused(t *testing.T) {
	c := newCluster(t)
	c.mustCreate(nexthopv1.IPPoolsResource, &nexthopv1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: "default-pool"},
		Spec:       nexthopv1.IPPoolSpec{CIDR: "10.244.0.0/16", NATOutgoing: true},
	})
	c.addNode("inside", "192.0.2.11", "10.244.1.0/24")
	c.addNode("outside", "192.0.2.12", "10.99.0.0/24")

	in := c.watch("inside", nil)
	d := in.until("config for a node inside the pool", func(*Desired) bool { return true })
	if d.Pool == nil || d.Pool.Name != "default-pool" || !d.Pool.NATOutgoing || d.Pool.IPIPMode != nexthopv1.EncapNever {
		t.Fatalf("pool of the inside node: %+v", d.Pool)
	}
	if !d.Config.NATOutgoing || !slices.Equal(d.Config.Pools, []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}) {
		t.Fatalf("the pool did not reach the config: natOutgoing %v pools %v", d.Config.NATOutgoing, d.Config.Pools)
	}

	out := c.watch("outside", nil)
	out.logUntil("refusing pod CIDR 10.99.0.0/24 of node outside: it is outside every enabled IPPool")
	if n := out.emitted(); n != 0 {
		t.Fatalf("a node outside every pool got %d configs", n)
	}

	// A pool covering it makes it acceptable.
	c.mustCreate(nexthopv1.IPPoolsResource, &nexthopv1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: "extra"},
		Spec:       nexthopv1.IPPoolSpec{CIDR: "10.99.0.0/16", IPIPMode: nexthopv1.EncapCrossSubnet},
	})
	d = out.until("config once a pool contains the CIDR", func(*Desired) bool { return true })
	if d.Pool == nil || d.Pool.Name != "extra" || d.Pool.IPIPMode != nexthopv1.EncapCrossSubnet {
		t.Fatalf("pool: %+v", d.Pool)
	}
	if d.Config.IPIPMode != config.CrossSubnet || d.Config.VXLANMode != config.Never || d.Config.NATOutgoing {
		t.Fatalf("the pool's encapsulation and NAT did not reach the config: ipipMode %s vxlanMode %s natOutgoing %v",
			d.Config.IPIPMode, d.Config.VXLANMode, d.Config.NATOutgoing)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16"), netip.MustParsePrefix("10.244.0.0/16")}; !slices.Equal(d.Config.Pools, want) {
		t.Fatalf("import policy pools = %v, want every enabled pool %v", d.Config.Pools, want)
	}
}

func unstructuredBool(obj map[string]any, path ...string) (bool, bool, error) {
	m := obj
	for _, p := range path[:len(path)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			return false, false, nil
		}
		m = next
	}
	v, ok := m[path[len(path)-1]].(bool)
	return v, ok, nil
}
