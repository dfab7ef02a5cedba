package kube

import (
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
)

// Service advertisement, as Calico's route generator does it: each range
// of BGPConfiguration (serviceClusterIPs, serviceExternalIPs,
// serviceLoadBalancerIPs) is announced whole by every node, and the ToR
// spreads it over them by ECMP. A Service whose traffic policy is Local
// for an address (internalTrafficPolicy for its cluster IP,
// externalTrafficPolicy for its external and load-balancer IPs) must only
// reach nodes that run one of its endpoints: those nodes alone announce
// the address as a /32, which the ToR prefers to the range. A /32 entry in
// a range is announced only for the Services using it (every node for a
// Cluster policy, the endpoints' nodes for Local), so that a single
// address can serve a Local Service. Addresses outside the ranges are
// never announced. Both families work alike: IPv6 ranges, a dual-stack
// Service's IPv6 cluster IP (spec.clusterIPs) and its IPv6 external and
// load-balancer addresses are announced as IPv6 prefixes (/128 for one
// address), the Local ones where an endpoint of the IPv6 EndpointSlice
// runs.

// LabelExcludeFromLoadBalancers on a Node keeps it from announcing any
// service address, as Calico and cloud load balancers honour it.
const LabelExcludeFromLoadBalancers = "node.kubernetes.io/exclude-from-external-load-balancers"

// sliceServiceIndex indexes EndpointSlices by their Service's
// namespace/name.
const sliceServiceIndex = "service"

func sliceService(obj any) ([]string, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := es.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{es.Namespace + "/" + name}, nil
}

// trimMeta drops what the service advertisement never reads.
func trimMeta(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Service:
		o.ManagedFields = nil
		o.Annotations = nil
	case *discoveryv1.EndpointSlice:
		o.ManagedFields = nil
		o.Annotations = nil
	}
	return obj, nil
}

// serviceRanges are BGPConfiguration's service CIDRs, by kind.
type serviceRanges struct {
	cluster, external, lb []netip.Prefix
}

func (r serviceRanges) empty() bool {
	return len(r.cluster) == 0 && len(r.external) == 0 && len(r.lb) == 0
}

// rangesOf reads bc's service CIDRs; the API server has checked them.
func rangesOf(bc *nexthopv1.BGPConfiguration) (serviceRanges, error) {
	var r serviceRanges
	for _, l := range []struct {
		field string
		in    []nexthopv1.ServiceIPBlock
		out   *[]netip.Prefix
	}{
		{"serviceClusterIPs", bc.Spec.ServiceClusterIPs, &r.cluster},
		{"serviceExternalIPs", bc.Spec.ServiceExternalIPs, &r.external},
		{"serviceLoadBalancerIPs", bc.Spec.ServiceLoadBalancerIPs, &r.lb},
	} {
		for i, b := range l.in {
			p, err := netip.ParsePrefix(b.CIDR)
			if err != nil || p.Addr().Is4In6() {
				return r, fmt.Errorf("BGPConfiguration %s[%d]: %q is not an IPv4 or IPv6 CIDR", l.field, i, b.CIDR)
			}
			*l.out = append(*l.out, p.Masked())
		}
	}
	return r, nil
}

// servicePrefixes is what this node announces for r: every range that is
// not a single address, and the /32s and /128s its Services call for.
func (s *Source) servicePrefixes(self *corev1.Node, r serviceRanges) []netip.Prefix {
	if r.empty() {
		return nil
	}
	if _, ok := self.Labels[LabelExcludeFromLoadBalancers]; ok {
		s.warn("node is labelled "+LabelExcludeFromLoadBalancers+": announcing no service address", "node", self.Name)
		return nil
	}
	var out []netip.Prefix
	for _, l := range [][]netip.Prefix{r.cluster, r.external, r.lb} {
		for _, p := range l {
			if !p.IsSingleIP() {
				out = append(out, p)
			}
		}
	}
	svcs, err := s.services.List(labels.Everything())
	if err != nil {
		s.warn("list Services", "err", err)
	}
	for _, svc := range svcs {
		out = append(out, s.serviceAddresses(svc, r)...)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

// serviceAddresses are the host prefixes (/32, /128) this node announces
// for svc.
func (s *Source) serviceAddresses(svc *corev1.Service, r serviceRanges) []netip.Prefix {
	if svc.Spec.Type == corev1.ServiceTypeExternalName || svc.Spec.ClusterIP == corev1.ClusterIPNone || svc.Spec.ClusterIP == "" {
		return nil
	}
	var out []netip.Prefix
	// Does this node run a ready endpoint of the family? Asked once each.
	var local [2]*bool
	hasLocal := func(v6 bool) bool {
		if local[fam(v6)] == nil {
			v := s.hasLocalEndpoint(svc, v6)
			local[fam(v6)] = &v
		}
		return *local[fam(v6)]
	}
	consider := func(ip string, ranges []netip.Prefix, localPolicy bool) {
		a, err := netip.ParseAddr(ip)
		if err != nil || a.Is4In6() || a.Zone() != "" {
			return
		}
		var in netip.Prefix
		for _, p := range ranges {
			if p.Contains(a) && (!in.IsValid() || p.Bits() > in.Bits()) {
				in = p
			}
		}
		switch {
		case !in.IsValid(): // outside every range: never announced
		case localPolicy:
			if hasLocal(a.Is6()) {
				out = append(out, netip.PrefixFrom(a, a.BitLen()))
			}
		case in.IsSingleIP():
			out = append(out, in) // the range itself, while a Service uses it
		}
	}
	clusterIPs := svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 {
		clusterIPs = []string{svc.Spec.ClusterIP}
	}
	iLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	for _, ip := range clusterIPs {
		consider(ip, r.cluster, iLocal)
	}
	eLocal := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	for _, ip := range svc.Spec.ExternalIPs {
		consider(ip, r.external, eLocal)
	}
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			consider(ing.IP, r.lb, eLocal)
		}
	}
	return out
}

// hasLocalEndpoint reports whether svc has a ready endpoint of the family
// (v6 or IPv4) on this node in any of its EndpointSlices of that family (a
// not-ready one in one slice must not withdraw what another justifies; a
// dual-stack Service has a slice per family). Ready unset means ready, per
// the API.
func (s *Source) hasLocalEndpoint(svc *corev1.Service, v6 bool) bool {
	want := discoveryv1.AddressTypeIPv4
	if v6 {
		want = discoveryv1.AddressTypeIPv6
	}
	objs, err := s.slices.ByIndex(sliceServiceIndex, svc.Namespace+"/"+svc.Name)
	if err != nil {
		return false
	}
	for _, obj := range objs {
		es, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok || es.AddressType != want {
			continue
		}
		for _, ep := range es.Endpoints {
			if ep.NodeName != nil && *ep.NodeName == s.nodeName && (ep.Conditions.Ready == nil || *ep.Conditions.Ready) {
				return true
			}
		}
	}
	return false
}

var _ cache.IndexFunc = sliceService
