package kube

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
	"github.com/nexthop-net/nexthop/config"
)

func services(want ...string) func(*Desired) bool {
	return func(d *Desired) bool { return fmt.Sprint(d.Config.ServiceCIDRs) == fmt.Sprint(want) }
}

// TestServicePrefixes: each node announces the service ranges, the /32s
// of Local Services only where a ready endpoint runs, the /32 ranges only
// while a Service uses them, and nothing outside the ranges; communities
// come along; a node excluded from load balancers announces none.
func TestServicePrefixes(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	c.addNode("node1", "192.0.2.11", "10.244.1.0/24")
	c.addNode("node2", "192.0.2.12", "10.244.2.0/24")
	w1, w2 := c.watch("node1", nil), c.watch("node2", nil)
	w1.until("node1's first config", func(*Desired) bool { return true })

	c.mustCreate(nexthopv1.BGPConfigurationsResource, &nexthopv1.BGPConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec: nexthopv1.BGPConfigurationSpec{
			ServiceClusterIPs:      []nexthopv1.ServiceIPBlock{{CIDR: "10.96.0.0/16"}},
			ServiceExternalIPs:     []nexthopv1.ServiceIPBlock{{CIDR: "203.0.113.0/24"}},
			ServiceLoadBalancerIPs: []nexthopv1.ServiceIPBlock{{CIDR: "198.51.100.0/25"}, {CIDR: "198.51.100.200/32"}},
			Communities:            []nexthopv1.Community{"65000:100", "65000:1:2"},
			PrefixAdvertisements:   []nexthopv1.PrefixAdvertisement{{CIDR: "198.51.100.0/24", Communities: []nexthopv1.Community{"65000:200"}}},
		},
	})
	ranges := []string{"10.96.0.0/16", "198.51.100.0/25", "203.0.113.0/24"}
	d := w1.until("the ranges, not the unused /32", services(ranges...))
	if fmt.Sprint(d.Config.Communities) != "[65000:100 65000:1:2]" ||
		fmt.Sprint(d.Config.PrefixAdvertisements) != fmt.Sprint([]config.PrefixAdvertisement{{CIDR: netip.MustParsePrefix("198.51.100.0/24"), Communities: []string{"65000:200"}}}) {
		t.Fatalf("communities %v, prefix advertisements %v", d.Config.Communities, d.Config.PrefixAdvertisements)
	}
	if err := d.Config.Validate(); err != nil {
		t.Fatal(err)
	}

	// Local for external traffic, its endpoint on node1: node1 alone
	// announces the ingress /32 and the external IP's; neither the cluster
	// IP (cluster traffic is not Local) nor what lies outside the ranges.
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.5.5",
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			ExternalIPs:           []string{"203.0.113.9", "100.64.0.9"},
			Ports:                 []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	svc, err := c.cs.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.7"}, {IP: "198.51.100.130"}}
	if svc, err = c.cs.CoreV1().Services("default").UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	node, ready := "node1", true
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.9"}, NodeName: &node, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
	}
	if es, err = c.cs.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	withLocal := []string{"10.96.0.0/16", "198.51.100.0/25", "198.51.100.7/32", "203.0.113.0/24", "203.0.113.9/32"}
	w1.until("node1 announcing the Local Service's /32s", services(withLocal...))
	w2.until("node2 announcing the ranges only", services(ranges...))

	// The endpoint not ready: withdrawn.
	es.Endpoints[0].Conditions.Ready = ptr(false)
	if es, err = c.cs.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	w1.until("node1 without the /32s once the endpoint is not ready", services(ranges...))

	// A Cluster-policy Service on the /32 range: every node announces it.
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	if svc, err = c.cs.CoreV1().Services("default").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.200"}}
	if _, err = c.cs.CoreV1().Services("default").UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	withSingle := []string{"10.96.0.0/16", "198.51.100.0/25", "198.51.100.200/32", "203.0.113.0/24"}
	w1.until("node1 announcing the /32 range a Cluster Service uses", services(withSingle...))
	w2.until("node2 announcing the /32 range a Cluster Service uses", services(withSingle...))

	// Excluded from load balancers: nothing at all.
	n2, err := c.cs.CoreV1().Nodes().Get(ctx, "node2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n2.Labels == nil {
		n2.Labels = map[string]string{}
	}
	n2.Labels[LabelExcludeFromLoadBalancers] = ""
	if _, err := c.cs.CoreV1().Nodes().Update(ctx, n2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	w2.until("node2 excluded from load balancers", services())
	if got := w1.src.Last().Config.ServiceCIDRs; fmt.Sprint(got) != fmt.Sprint(withSingle) {
		t.Fatalf("node1 changed with node2's label: %v", got)
	}
}
