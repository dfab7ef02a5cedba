package kube

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
	"github.com/nexthop-net/nexthop/bgp"
	"github.com/nexthop-net/nexthop/config"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// updateNode applies mut to the Node name.
func (c *cluster) updateNode(name string, mut func(*corev1.Node)) {
	c.t.Helper()
	n, err := c.cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	if n.Annotations == nil {
		n.Annotations = map[string]string{}
	}
	mut(n)
	if _, err := c.cs.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		c.t.Fatalf("update node %s: %v", name, err)
	}
}

// TestDualStackMesh: Nodes with spec.podCIDRs and InternalIPs of both
// families get both blocks and addresses; the mesh has one session per
// family two nodes share; an IPv6-only node speaks IPv6 only with a hashed
// router ID; route reflection works per family; BGPNodeStatus shows both
// blocks and both families' peers.
func TestDualStackMesh(t *testing.T) {
	c := newCluster(t)
	c.mustCreate(nexthopv1.IPPoolsResource, &nexthopv1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "v4"},
		Spec: nexthopv1.IPPoolSpec{CIDR: "10.244.0.0/16", NATOutgoing: true}})
	c.mustCreate(nexthopv1.IPPoolsResource, &nexthopv1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "v6"},
		Spec: nexthopv1.IPPoolSpec{CIDR: "fd00:10:244::/56", NATOutgoing: true}})
	c.addNode("node1", "192.0.2.11,fd00:192::11", "10.244.1.0/24,fd00:10:244:1::/64")
	// Its InternalIPs are not the underlay: the annotation names both.
	c.addNode("node2", "10.0.0.2,fd00:99::2", "10.244.2.0/24,fd00:10:244:2::/64",
		annotated(nexthopv1.AnnotationAddress, "192.0.2.12, fd00:192::12"))
	c.addNode("v4only", "192.0.2.13", "10.244.3.0/24")
	// IPv6-primary spec.podCIDRs order does not matter.
	c.addNode("v6only", "fd00:192::14", "fd00:10:244:4::/64")
	// A dual-stack block without an IPv6 address: an IPv4 member only.
	c.addNode("no-v6-addr", "192.0.2.15", "10.244.5.0/24,fd00:10:244:5::/64")

	w := c.watch("node1", nil)
	d := w.until("dual-stack mesh sessions", hasPeers("192.0.2.12", "fd00:192::12", "192.0.2.13", "fd00:192::14", "192.0.2.15"))
	cfg := d.Config
	if cfg.Address != netip.MustParseAddr("192.0.2.11") || cfg.AddressV6 != netip.MustParseAddr("fd00:192::11") ||
		cfg.RouterID != netip.MustParseAddr("192.0.2.11") ||
		!slices.Equal(cfg.PodCIDRs, prefixes("10.244.1.0/24", "fd00:10:244:1::/64")) {
		t.Fatalf("dual-stack identity: %s routerID %s", describe(d), cfg.RouterID)
	}
	if !cfg.NATOutgoing || !cfg.NATOutgoingV6 || !slices.Equal(cfg.Pools, prefixes("10.244.0.0/16", "fd00:10:244::/56")) ||
		d.Pool == nil || d.Pool.Name != "v4" || d.PoolV6 == nil || d.PoolV6.Name != "v6" {
		t.Fatalf("pools: natOutgoing %v natOutgoingV6 %v pools %v pool %+v poolV6 %+v", cfg.NATOutgoing, cfg.NATOutgoingV6, cfg.Pools, d.Pool, d.PoolV6)
	}
	if p, _ := peer(d, "fd00:192::12"); p.Description != "node node2" || p.Node == nil || !*p.Node || p.AS != nexthopv1.DefaultASNumber {
		t.Fatalf("IPv6 mesh peer: %+v", p)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("dual-stack config does not validate: %v", err)
	}

	six := c.watch("v6only", nil)
	d = six.until("an IPv6-only node peering over IPv6 with the nodes that have IPv6", hasPeers("fd00:192::11", "fd00:192::12"))
	if d.Config.Address != netip.MustParseAddr("fd00:192::14") || d.Config.AddressV6 != d.Config.Address ||
		d.Config.RouterID != config.HashRouterID("v6only") || !slices.Equal(d.Config.PodCIDRs, prefixes("fd00:10:244:4::/64")) {
		t.Fatalf("IPv6-only identity: %s routerID %s", describe(d), d.Config.RouterID)
	}
	if d.Config.NATOutgoing || !d.Config.NATOutgoingV6 || d.Pool != nil || d.PoolV6 == nil {
		t.Fatalf("IPv6-only NAT: natOutgoing %v natOutgoingV6 %v pool %+v poolV6 %+v", d.Config.NATOutgoing, d.Config.NATOutgoingV6, d.Pool, d.PoolV6)
	}
	if err := d.Config.Validate(); err != nil {
		t.Fatalf("IPv6-only config does not validate: %v", err)
	}
	// The router ID annotation wins over the hash.
	c.updateNode("v6only", func(n *corev1.Node) { n.Annotations[nexthopv1.AnnotationRouterID] = "10.255.0.14" })
	six.until("the annotated router ID", func(d *Desired) bool { return d.Config.RouterID == netip.MustParseAddr("10.255.0.14") })

	// The node with an IPv6 block and no IPv6 address is refused, saying why.
	c.watch("no-v6-addr", nil).logUntil("has the IPv6 pod CIDR fd00:10:244:5::/64 but no IPv6 InternalIP")

	// BGPNodeStatus: both blocks, peers of both families.
	ctx := context.Background()
	if err := w.src.PublishStatus(ctx, "node1", []bgp.PeerState{
		{Address: netip.MustParseAddr("192.0.2.12"), AS: 64512, State: "established", Established: true, Uptime: time.Minute},
		{Address: netip.MustParseAddr("fd00:192::12"), AS: 64512, State: "established", Established: true, Uptime: time.Minute, Received: 1, Accepted: 1},
		{Address: netip.MustParseAddr("fd00:192::14"), AS: 64512, State: "active"},
	}); err != nil {
		t.Fatal(err)
	}
	u, err := c.dc.Resource(nexthopv1.BGPNodeStatusesResource).Get(ctx, "node1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var st nexthopv1.BGPNodeStatus
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &st); err != nil {
		t.Fatal(err)
	}
	if s := st.Status; !slices.Equal(s.PodCIDRs, []string{"10.244.1.0/24", "fd00:10:244:1::/64"}) || s.PodCIDR != "10.244.1.0/24" ||
		s.EstablishedPeers != 2 || s.TotalPeers != 3 || len(s.Peers) != 3 || s.Peers[1].Address != "fd00:192::12" || s.Peers[1].PrefixesAccepted != 1 {
		t.Fatalf("dual-stack BGPNodeStatus: %+v", s)
	}
	// kubectl shows both blocks.
	out, err := c.env.Kubectl(ctx, "get", "bgpnodestatus", "node1").CombinedOutput()
	if err != nil || !contains(string(out), "10.244.1.0/24", "fd00:10:244:1::/64") {
		t.Fatalf("kubectl get bgpnodestatus: %v\n%s", err, out)
	}

	// Route reflection, per family: node1 reflects, the mesh is off.
	c.updateNode("node1", func(n *corev1.Node) { n.Labels[nexthopv1.LabelRouteReflector] = "true" })
	c.mustCreate(nexthopv1.BGPConfigurationsResource, &nexthopv1.BGPConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: nexthopv1.BGPConfigurationSpec{NodeToNodeMeshEnabled: ptr(false)}})
	d = w.until("a dual-stack reflector with clients of each family", func(d *Desired) bool {
		return d.Config.RouteReflectorClusterID.IsValid() && hasPeers("192.0.2.12", "fd00:192::12", "192.0.2.13", "fd00:192::14", "192.0.2.15")(d)
	})
	for _, p := range d.Config.Peers {
		if !p.RouteReflectorClient {
			t.Errorf("peer %s is not a route-reflector client", p.Address)
		}
	}
	if d.Config.RouteReflectorClusterID != netip.MustParseAddr("192.0.2.11") {
		t.Errorf("cluster ID %s, want the router ID 192.0.2.11", d.Config.RouteReflectorClusterID)
	}
	six.until("an IPv6-only client peering with the reflector's IPv6 address only", hasPeers("fd00:192::11"))
	// An IPv6-only reflector's cluster ID is its (IPv4-shaped) router ID.
	c.updateNode("v6only", func(n *corev1.Node) { n.Labels[nexthopv1.LabelRouteReflector] = "true" })
	d = six.until("an IPv6-only reflector", func(d *Desired) bool { return d.Config.RouteReflectorClusterID.IsValid() })
	if d.Config.RouteReflectorClusterID != netip.MustParseAddr("10.255.0.14") {
		t.Errorf("IPv6-only reflector cluster ID %s, want its router ID 10.255.0.14", d.Config.RouteReflectorClusterID)
	}
}

func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestDualStackPoolsPeersAndFilters: an IPv6 pool decides NATOutgoingV6
// and shares vxlanMode with the IPv4 one (disagreeing pools are refused);
// IPv6 BGPPeers (with an IPv6 source address) and BGPFilter importV6 and
// exportV6 reach the config; a block of a family no pool has is refused.
func TestDualStackPoolsPeersAndFilters(t *testing.T) {
	c := newCluster(t)
	c.mustCreate(nexthopv1.IPPoolsResource, &nexthopv1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "v4"},
		Spec: nexthopv1.IPPoolSpec{CIDR: "10.244.0.0/16", VXLANMode: nexthopv1.EncapNever}})
	c.mustCreate(nexthopv1.IPPoolsResource, &nexthopv1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "v6"},
		Spec: nexthopv1.IPPoolSpec{CIDR: "fd00:10:244::/56", VXLANMode: nexthopv1.EncapAlways}})
	c.addNode("node1", "192.0.2.11,fd00:192::11", "10.244.1.0/24,fd00:10:244:1::/64")
	c.addNode("v6only", "fd00:192::14", "fd00:10:244:4::/64")
	c.addNode("stray", "192.0.2.16,fd00:192::16", "10.244.6.0/24,fd00:99::/64")

	w := c.watch("node1", nil)
	w.logUntil("a node applies one vxlanMode to both families")
	if n := w.emitted(); n != 0 {
		t.Fatalf("a config emitted with disagreeing vxlanModes (%d)", n)
	}
	u, err := c.dc.Resource(nexthopv1.IPPoolsResource).Get(t.Context(), "v4", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u.Object["spec"].(map[string]any)["vxlanMode"] = "Always"
	if _, err := c.dc.Resource(nexthopv1.IPPoolsResource).Update(t.Context(), u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	d := w.until("both pools in VXLAN", func(d *Desired) bool { return d.Config.VXLANMode == config.Always })
	if d.Config.NATOutgoing || d.Config.NATOutgoingV6 || d.Config.IPIPMode != config.Never {
		t.Fatalf("natOutgoing %v natOutgoingV6 %v ipipMode %s", d.Config.NATOutgoing, d.Config.NATOutgoingV6, d.Config.IPIPMode)
	}
	c.watch("stray", nil).logUntil("refusing pod CIDR fd00:99::/64 of node stray: it is outside every enabled IPPool selecting the node (enabled pools: v6=fd00:10:244::/56)")

	c.mustCreate(nexthopv1.BGPFiltersResource, &nexthopv1.BGPFilter{ObjectMeta: metav1.ObjectMeta{Name: "tor"}, Spec: nexthopv1.BGPFilterSpec{
		ImportV4: []nexthopv1.BGPFilterRuleV4{{Action: "Reject", CIDR: "10.0.0.0/8", MatchOperator: "In"}},
		ImportV6: []nexthopv1.BGPFilterRuleV6{{Action: "Accept", CIDR: "fd00:10:244::/56", MatchOperator: "In",
			PrefixLength: &nexthopv1.BGPFilterPrefixLengthV6{Min: ptr[int32](64), Max: ptr[int32](64)}}},
		ExportV6: []nexthopv1.BGPFilterRuleV6{{Action: "Reject", CIDR: "fd00:10:244:1::/64", MatchOperator: "Equal"}},
	}})
	c.mustCreate(nexthopv1.BGPPeersResource, &nexthopv1.BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: "tor-v6"},
		Spec: nexthopv1.BGPPeerSpec{PeerIP: "fd00:192::fe", ASNumber: 65000, Filters: []string{"tor"}}})
	c.mustCreate(nexthopv1.BGPPeersResource, &nexthopv1.BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: "tor-v4"},
		Spec: nexthopv1.BGPPeerSpec{PeerIP: "192.0.2.254", ASNumber: 65000, Filters: []string{"tor"}}})
	c.mustCreate(nexthopv1.BGPPeersResource, &nexthopv1.BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: "loopback-v6"},
		Spec: nexthopv1.BGPPeerSpec{PeerIP: "fd00:1::1", ASNumber: 65001, Node: "node1", SourceAddress: "fd00:192::111",
			EBGPMultihop: &nexthopv1.EBGPMultihop{TTL: 3}}})

	d = w.until("the IPv6 and IPv4 ToRs", hasPeers("fd00:192::14", "192.0.2.16", "fd00:192::16", "192.0.2.254", "fd00:192::fe", "fd00:1::1"))
	tor6, _ := peer(d, "fd00:192::fe")
	if len(tor6.Filters) != 1 {
		t.Fatalf("IPv6 ToR filters: %+v", tor6.Filters)
	}
	f := tor6.Filters[0]
	if len(f.ImportV4) != 1 || len(f.ImportV6) != 1 || len(f.ExportV6) != 1 || len(f.ExportV4) != 0 ||
		f.ImportV6[0].CIDR != netip.MustParsePrefix("fd00:10:244::/56") || f.ImportV6[0].PrefixLength == nil ||
		f.ImportV6[0].PrefixLength.Min != 64 || f.ImportV6[0].PrefixLength.Max != 64 ||
		f.ExportV6[0].MatchOperator != config.MatchEqual || f.ExportV6[0].Action != config.FilterReject {
		t.Fatalf("BGPFilter tor in config: %+v", f)
	}
	// What the filter says, it does: a /64 of the pool passes, a /56 not.
	if !f.ImportV6[0].Matches(netip.MustParsePrefix("fd00:10:244:7::/64")) || f.ImportV6[0].Matches(netip.MustParsePrefix("fd00:10:244::/56")) {
		t.Fatalf("importV6 rule matches the wrong prefixes: %+v", f.ImportV6[0])
	}
	if lo, _ := peer(d, "fd00:1::1"); lo.SourceAddress != netip.MustParseAddr("fd00:192::111") || d.Config.LocalAddressOf(lo) != lo.SourceAddress {
		t.Fatalf("IPv6 peer with an IPv6 source address: %+v", lo)
	}
	if err := d.Config.Validate(); err != nil {
		t.Fatal(err)
	}

	// The IPv6-only node takes the IPv6 ToR and says why the IPv4 one is
	// left out.
	six := c.watch("v6only", nil)
	six.until("the IPv6-only node with the IPv6 ToR", hasPeers("fd00:192::11", "fd00:192::16", "fd00:192::fe"))
	six.logUntil("no IPv4 address to speak from")
}

// TestServicePrefixesDualStack: a dual-stack Service's IPv6 cluster IP is
// announced from the IPv6 range, and as a /128 by the nodes running a
// ready endpoint of its IPv6 EndpointSlice when its policy is Local.
func TestServicePrefixesDualStack(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	c.addNode("node1", "192.0.2.11,fd00:192::11", "10.244.1.0/24,fd00:10:244:1::/64")
	c.addNode("node2", "192.0.2.12,fd00:192::12", "10.244.2.0/24,fd00:10:244:2::/64")
	w1, w2 := c.watch("node1", nil), c.watch("node2", nil)
	c.mustCreate(nexthopv1.BGPConfigurationsResource, &nexthopv1.BGPConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec: nexthopv1.BGPConfigurationSpec{
			ServiceClusterIPs:      []nexthopv1.ServiceIPBlock{{CIDR: "10.96.0.0/16"}, {CIDR: "fd00:10:96::/112"}},
			ServiceLoadBalancerIPs: []nexthopv1.ServiceIPBlock{{CIDR: "fd00:200::/120"}},
		},
	})
	ranges := []string{"10.96.0.0/16", "fd00:10:96::/112", "fd00:200::/120"}
	w1.until("both families' ranges", services(ranges...))

	local := corev1.ServiceInternalTrafficPolicyLocal
	dual := corev1.IPFamilyPolicyRequireDualStack
	svc, err := c.cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, IPFamilyPolicy: &dual,
			IPFamilies:            []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
			InternalTrafficPolicy: &local, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("dual-stack Service got cluster IPs %v", svc.Spec.ClusterIPs)
	}
	v4, v6 := svc.Spec.ClusterIPs[0], svc.Spec.ClusterIPs[1]
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "fd00:200::7"}}
	if _, err = c.cs.CoreV1().Services("default").UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	node, ready := "node1", true
	for _, es := range []*discoveryv1.EndpointSlice{
		{ObjectMeta: metav1.ObjectMeta{Name: "web-v4", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.9"}, NodeName: &node, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "web-v6", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv6,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"fd00:10:244:1::9"}, NodeName: &node, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}}},
	} {
		if _, err := c.cs.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	all := []string{"10.96.0.0/16", v4 + "/32", "fd00:10:96::/112", v6 + "/128", "fd00:200::/120", "fd00:200::7/128"}
	d := w1.until("node1 announcing the Local Service's IPv4 and IPv6 addresses", services(sortedPrefixes(all)...))
	if err := d.Config.Validate(); err != nil {
		t.Fatal(err)
	}
	w2.until("node2, without endpoints, announcing the ranges only", services(ranges...))

	// The IPv6 endpoint not ready: the IPv6 host routes go, the IPv4 one stays.
	es, err := c.cs.DiscoveryV1().EndpointSlices("default").Get(ctx, "web-v6", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	es.Endpoints[0].Conditions.Ready = ptr(false)
	if _, err := c.cs.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	w1.until("node1 without the IPv6 /128s", services(sortedPrefixes([]string{"10.96.0.0/16", v4 + "/32", "fd00:10:96::/112", "fd00:200::/120"})...))
}

// sortedPrefixes orders prefixes as servicePrefixes does.
func sortedPrefixes(ss []string) []string {
	ps := prefixes(ss...)
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
