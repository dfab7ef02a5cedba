package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// torAllNodesYAML peers every node with the ToR.
const torAllNodesYAML = `apiVersion: nexthop.io/v1
kind: BGPPeer
metadata:
  name: tor
spec:
  peerIP: 192.0.2.254
  asNumber: 65000
  holdTime: 3s
`

// servicesConfYAML advertises the cluster IP range, one external-IP and
// one load-balancer range, with a standard and a large community on
// everything and one more on the load-balancer range.
const servicesConfYAML = `apiVersion: nexthop.io/v1
kind: BGPConfiguration
metadata:
  name: default
spec:
  serviceClusterIPs:
  - cidr: 10.96.0.0/16
  serviceExternalIPs:
  - cidr: 203.0.113.0/24
  serviceLoadBalancerIPs:
  - cidr: 198.51.100.0/24
  communities: ["65000:100", "65000:1:2"]
  prefixAdvertisements:
  - cidr: 198.51.100.0/24
    communities: ["65000:200"]
`

// frrPath is one path of `show ip bgp <prefix> json`.
type frrPath struct {
	From        netip.Addr
	Best, Multi bool
	Communities string
	Large       string
}

func (p frrPath) String() string {
	return fmt.Sprintf("from %s best=%v multipath=%v communities=[%s] large=[%s]", p.From, p.Best, p.Multi, p.Communities, p.Large)
}

// frrShowPrefix is the vtysh command showing FRR's paths for pfx, in the
// unicast table of its family.
func frrShowPrefix(pfx netip.Prefix) string {
	if pfx.Addr().Is6() {
		return "show bgp ipv6 unicast " + pfx.String()
	}
	return "show ip bgp " + pfx.String()
}

// frrPrefix is what the ToR holds for exactly pfx, as an operator reads it.
func frrPrefix(t *ToR, pfx netip.Prefix) ([]frrPath, error) {
	out, err := t.Vtysh(frrShowPrefix(pfx) + " json")
	if err != nil {
		return nil, err
	}
	var r struct {
		Prefix string `json:"prefix"`
		Paths  []struct {
			Multipath bool `json:"multipath"`
			Bestpath  *struct {
				Overall bool `json:"overall"`
			} `json:"bestpath"`
			Community *struct {
				String string `json:"string"`
			} `json:"community"`
			LargeCommunity *struct {
				String string `json:"string"`
			} `json:"largeCommunity"`
			Peer struct {
				PeerID string `json:"peerId"`
			} `json:"peer"`
		} `json:"paths"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return nil, fmt.Errorf("parse FRR %s json: %w: %.300s", frrShowPrefix(pfx), err, out)
	}
	if r.Prefix != "" && r.Prefix != pfx.String() {
		return nil, nil // FRR answers with the covering route: none for pfx itself
	}
	var paths []frrPath
	for _, p := range r.Paths {
		fp := frrPath{Multi: p.Multipath, Best: p.Bestpath != nil && p.Bestpath.Overall}
		fp.From, _ = netip.ParseAddr(p.Peer.PeerID)
		if p.Community != nil {
			fp.Communities = p.Community.String
		}
		if p.LargeCommunity != nil {
			fp.Large = p.LargeCommunity.String
		}
		paths = append(paths, fp)
	}
	slices.SortFunc(paths, func(a, b frrPath) int { return a.From.Compare(b.From) })
	return paths, nil
}

// frrFrom checks the ToR has pfx from exactly the nodes in from (their
// sessions of pfx's family), each path carrying the communities.
func frrFrom(t *ToR, pfx netip.Prefix, from []*Node, communities, large string) error {
	paths, err := frrPrefix(t, pfx)
	if err != nil {
		return err
	}
	var got, want []netip.Addr
	for _, p := range paths {
		got = append(got, p.From)
	}
	for _, n := range from {
		want = append(want, n.AddressOf(pfx.Addr().Is6()))
	}
	slices.SortFunc(want, netip.Addr.Compare)
	if !slices.Equal(got, want) {
		return fmt.Errorf("FRR has %s from %v, want from %v (paths %v)", pfx, got, want, paths)
	}
	for _, p := range paths {
		if p.Communities != communities || p.Large != large {
			return fmt.Errorf("FRR path for %s %s: want communities [%s] and large [%s]", pfx, p, communities, large)
		}
	}
	if len(paths) > 1 {
		// ECMP: the best path and every other one used together.
		for _, p := range paths {
			if !p.Best && !p.Multi {
				return fmt.Errorf("FRR path for %s %s is neither best nor multipath: no ECMP", pfx, p)
			}
		}
	}
	return nil
}

// TestServiceAdvertisement: BGPConfiguration's service ranges reach the
// ToR from every node (ECMP) with the configured communities; a
// LoadBalancer Service with externalTrafficPolicy Local, and a Service
// with internalTrafficPolicy Local, are announced as /32s only by the node
// running a ready endpoint, and follow it within 5 s when it moves;
// addresses outside the ranges are never announced; nothing of it reaches
// the other nodes; and no daemon restarts for any of it.
func TestServiceAdvertisement(t *testing.T) {
	k := startKube(t)
	k.mustKubectl(torAllNodesYAML, "apply", "-f", "-")

	c := newCluster(t, Options{Nodes: 3, ToR: true, NoPods: true})
	k.c = c
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	all := c.Nodes
	apiAddr := strings.TrimPrefix(k.env.URL, "https://")
	for _, n := range all {
		k.createNode(n)
		if err := c.UseKubernetes(n, apiAddr, k.env.DaemonConfig().BearerToken); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "the mesh and the ToR sessions", func() error {
		up, err := c.ToR.Established()
		if err != nil {
			return err
		}
		if len(up) != len(all) {
			return fmt.Errorf("FRR established with %v, want every node", up)
		}
		return kernelsConverged(c, all)
	})
	pids := map[*Node]int{}
	for _, n := range all {
		pids[n] = n.DaemonPid()
	}

	// The service ranges and communities arrive while the daemons run.
	k.mustKubectl(servicesConfYAML, "apply", "-f", "-")
	clusterRange := netip.MustParsePrefix("10.96.0.0/16")
	const comm, large = "65000:100", "65000:1:2"
	waitFor(t, convergeTimeout, "the ranges at the ToR from every node, with the communities", func() error {
		return errors.Join(
			frrFrom(c.ToR, clusterRange, all, comm, large),
			frrFrom(c.ToR, netip.MustParsePrefix("203.0.113.0/24"), all, comm, large),
			frrFrom(c.ToR, netip.MustParsePrefix("198.51.100.0/24"), all, comm+" 65000:200", large),
		)
	})
	out, err := c.ToR.Vtysh("show ip bgp " + clusterRange.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FRR show ip bgp %s:\n%s", clusterRange, out)
	waitFor(t, convergeTimeout, "the communities on every node's pod block at the ToR", func() error {
		var errs []error
		for _, n := range all {
			errs = append(errs, frrFrom(c.ToR, n.PodCIDR(), []*Node{n}, comm, large))
		}
		return errors.Join(errs...)
	})

	// A LoadBalancer Service with externalTrafficPolicy Local, its one
	// ready endpoint on node2; one of its ingress addresses and one
	// external IP are outside every range. A Service with
	// internalTrafficPolicy Local, its endpoint on node3.
	ctx := context.Background()
	lbIP, extIP := netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("203.0.113.7")
	outside := []netip.Addr{netip.MustParseAddr("100.64.0.10"), netip.MustParseAddr("100.64.0.11")}
	local := corev1.ServiceInternalTrafficPolicyLocal
	lb := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "lb-local", Namespace: "default"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.1.10", ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			ExternalIPs: []string{extIP.String(), outside[1].String()},
			Ports:       []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	lb, err = k.cs.CoreV1().Services("default").Create(ctx, lb, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP.String()}, {IP: outside[0].String()}}
	if _, err := k.cs.CoreV1().Services("default").UpdateStatus(ctx, lb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	itp := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "itp-local", Namespace: "default"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.1.20", InternalTrafficPolicy: &local,
			Ports: []corev1.ServicePort{{Port: 53, TargetPort: intstr.FromInt32(5353)}}},
	}
	if _, err := k.cs.CoreV1().Services("default").Create(ctx, itp, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	slice := func(svc string, on *Node, ip string, ready bool) *discoveryv1.EndpointSlice {
		name := on.Name
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: svc + "-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, NodeName: &name, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
			Ports:       []discoveryv1.EndpointPort{{Port: new(int32(8080))}},
		}
	}
	slices1 := k.cs.DiscoveryV1().EndpointSlices("default")
	lbSlice, err := slices1.Create(ctx, slice("lb-local", n2, "10.244.2.5", true), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := slices1.Create(ctx, slice("itp-local", n3, "10.244.3.5", true), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	host := func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, 32) }
	lbComm := comm + " 65000:200"
	waitFor(t, convergeTimeout, "the Local Services' /32s from the endpoints' nodes only", func() error {
		return errors.Join(
			frrFrom(c.ToR, host(lbIP), []*Node{n2}, lbComm, large),
			frrFrom(c.ToR, host(extIP), []*Node{n2}, comm, large),
			frrFrom(c.ToR, netip.MustParsePrefix("10.96.1.20/32"), []*Node{n3}, comm, large),
			// eTP Local says nothing of the cluster IP: the range covers it.
			frrFrom(c.ToR, netip.MustParsePrefix("10.96.1.10/32"), nil, "", ""),
		)
	})

	// The endpoint moves to node1: so does the route, within 5 s.
	lbSlice.Endpoints[0].NodeName = &n1.Name
	lbSlice.Endpoints[0].Addresses = []string{"10.244.1.5"}
	start := time.Now()
	if lbSlice, err = slices1.Update(ctx, lbSlice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := WaitFor(5*time.Second, 100*time.Millisecond, func() error {
		return errors.Join(frrFrom(c.ToR, host(lbIP), []*Node{n1}, lbComm, large), frrFrom(c.ToR, host(extIP), []*Node{n1}, comm, large))
	}); err != nil {
		t.Fatalf("the endpoint moved to node1: the /32s did not follow within 5 s: %v", err)
	}
	t.Logf("the /32s followed the endpoint to node1 in %s", time.Since(start).Round(10*time.Millisecond))

	// Not ready: no node announces it; the range still covers it.
	lbSlice.Endpoints[0].Conditions.Ready = new(false)
	if _, err = slices1.Update(ctx, lbSlice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the /32s withdrawn once the endpoint is not ready", func() error {
		return errors.Join(frrFrom(c.ToR, host(lbIP), nil, "", ""), frrFrom(c.ToR, host(extIP), nil, "", ""))
	})

	// Never announced: the addresses outside every range.
	rib, err := c.ToR.RIB()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rib {
		for _, a := range outside {
			if p.Prefix.Contains(a) {
				t.Errorf("FRR has a route covering %s, which is outside every service range: %s", a, p)
			}
		}
	}

	// The service routes never go into the mesh: every node's GoBGP has
	// learned nothing but the other nodes' blocks.
	blocks := map[netip.Prefix]bool{}
	for _, n := range all {
		blocks[n.PodCIDR()] = true
	}
	for _, n := range all {
		rib, err := c.GobgpRIB(n)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range rib {
			if p.From.IsValid() && !blocks[p.Prefix] {
				t.Errorf("%s's GoBGP learned %s: service routes must not reach other nodes", n.Name, p)
			}
		}
	}
	if err := kernelsConverged(c, all); err != nil {
		t.Error(err)
	}

	// The ranges go with the BGPConfiguration; still no restart.
	k.mustKubectl("", "delete", "bgpconfiguration", "default")
	waitFor(t, convergeTimeout, "the ranges and the /32 withdrawn, the blocks without communities", func() error {
		errs := []error{
			frrFrom(c.ToR, clusterRange, nil, "", ""),
			frrFrom(c.ToR, netip.MustParsePrefix("10.96.1.20/32"), nil, "", ""),
		}
		for _, n := range all {
			errs = append(errs, frrFrom(c.ToR, n.PodCIDR(), []*Node{n}, "", ""))
		}
		return errors.Join(errs...)
	})
	for _, n := range all {
		if n.DaemonPid() != pids[n] || !n.Running() {
			t.Fatalf("%s's daemon restarted (pid %d, was %d) for a service or BGPConfiguration change", n.Name, n.DaemonPid(), pids[n])
		}
		if err := n.LogContains("exiting to be restarted"); err == nil {
			t.Fatalf("%s's daemon scheduled a restart for a service or BGPConfiguration change", n.Name)
		}
	}
}
