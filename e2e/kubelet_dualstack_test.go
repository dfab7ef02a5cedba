package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestKubeletDualStack is the kubelet cluster made dual-stack, as
// manifests/README.md sets one up: kube-apiserver and
// kube-controller-manager with an IPv4 and an IPv6 range each, kubelets
// with both node addresses, kube-proxy serving both families, kubeadm's
// record of the pod subnets (from which the daemons create an IPPool of
// each family), and the ToR peered over both. The steps are
// TestKubeletCluster's, which check each family the cluster has (the
// client behind the ToR reaches the Services over IPv6 too), plus a
// dual-stack Service reached from a pod. What the IPv4 cluster proves about restarts and
// reboots is the same code for both families and is not repeated here.
func TestKubeletDualStack(t *testing.T) {
	runKubeletSuite(t, StackDual, []kubeletStep{
		{"Install", (*kubeletSuite).install},
		{"PodsAcrossNodes", (*kubeletSuite).podsAcrossNodes},
		{"DualStackService", (*kubeletSuite).dualStackService},
		{"ServicesFromOutside", (*kubeletSuite).servicesFromOutside},
		{"RolloutRestartLosesNothing", (*kubeletSuite).rolloutRestart},
		{"Uninstall", (*kubeletSuite).uninstall},
	})
}

// dualStackStatus checks, after the install of a dual-stack cluster, what
// a user would look at: the daemons created a default IPPool of each
// family from kubeadm's podSubnet (NAT for IPv4 only), every BGPNodeStatus shows both
// of its node's blocks and an established session of each family with
// each other node and the ToR, and the ToR has every node's IPv6 block via
// that node's IPv6 address.
func (s *kubeletSuite) dualStackStatus(t *testing.T) {
	k := s.k
	pools := strings.TrimSpace(s.kubectl(t, "get", "ippools", "-o", `jsonpath={range .items[*]}{.metadata.name} {.spec.cidr} {.spec.natOutgoing}{"\n"}{end}`))
	if want := "default " + ClusterCIDR.String() + " true\ndefault-ipv6 " + ClusterCIDRV6.String(); pools != want {
		t.Errorf("IPPools after install:\n%s\nwant the default pool of each family of kubeadm's podSubnet:\n%s", pools, want)
	}

	cidrs := s.nodeCIDRs(t)
	var list struct {
		Items []struct {
			Metadata struct{ Name string } `json:"metadata"`
			Status   struct {
				PodCIDRs []string `json:"podCIDRs"`
				Peers    []struct {
					Address string `json:"address"`
					State   string `json:"state"`
				} `json:"peers"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(s.kubectl(t, "get", "bgpnodestatuses", "-o", "json")), &list); err != nil {
		t.Fatalf("parse BGPNodeStatuses: %v", err)
	}
	if len(list.Items) != len(k.KNodes) {
		t.Fatalf("%d BGPNodeStatuses for %d nodes", len(list.Items), len(k.KNodes))
	}
	for _, st := range list.Items {
		name := st.Metadata.Name
		var want []string
		for _, c := range cidrs[name] {
			want = append(want, c.String())
		}
		if !slices.Equal(st.Status.PodCIDRs, want) {
			t.Errorf("BGPNodeStatus %s: podCIDRs %v, want the Node's %v", name, st.Status.PodCIDRs, want)
		}
		peers := map[string]string{}
		for _, p := range st.Status.Peers {
			peers[p.Address] = p.State
		}
		wantPeers := []netip.Addr{k.ToR.Address, k.ToR.AddressV6}
		for _, n := range k.KNodes {
			if n.Name != name {
				wantPeers = append(wantPeers, n.Address, n.AddressV6)
			}
		}
		for _, a := range wantPeers {
			if state := peers[a.String()]; !strings.EqualFold(state, "established") {
				t.Errorf("BGPNodeStatus %s: %s session with %s is %q, want established (peers: %v)", name, family(a.Is6()), a, state, peers)
			}
		}
		t.Logf("BGPNodeStatus %s: podCIDRs %v, peers %v", name, st.Status.PodCIDRs, peers)
	}

	waitFor(t, 30*time.Second, "the ToR's `show bgp ipv6 unicast` has every node's IPv6 block via the node's IPv6 address", func() error {
		rib, err := k.ToR.RIBOf(true)
		if err != nil {
			return err
		}
		for _, n := range k.KNodes {
			block := cidrs[n.Name][1]
			if !slices.ContainsFunc(rib, func(p RIBPath) bool { return p.Prefix == block && p.NextHop == n.AddressV6 }) {
				return fmt.Errorf("no path for %s's %s via %s in %v", n.Name, block, n.AddressV6, rib)
			}
		}
		return nil
	})
}

// wideShowsIPv4 checks that `kubectl get pods -o wide` shows each pod's
// IPv4 address, the first of its podIPs, as the IP a user sees.
func (s *kubeletSuite) wideShowsIPv4(t *testing.T, pods []WorkloadPod) {
	out := s.kubectl(t, "get", "pods", "-l", "app=web", "-o", "wide")
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	col := strings.Index(lines[0], " IP ") + 1
	if col == 0 {
		t.Fatalf("kubectl get pods -o wide has no IP column:\n%s", out)
	}
	shown := map[string]string{}
	for _, l := range lines[1:] {
		if len(l) > col {
			shown[strings.Fields(l)[0]] = strings.Fields(l[col:])[0]
		}
	}
	for _, p := range pods {
		if shown[p.Name] != p.IP.String() || !p.IP.Is4() {
			t.Errorf("kubectl get pods -o wide shows %s with IP %q, want its IPv4 address %s (podIPs %v)", p.Name, shown[p.Name], p.IP, p.IPs)
		}
	}
	t.Logf("kubectl get pods -o wide:\n%s", out)
}

// dualStackService: a Service with ipFamilyPolicy RequireDualStack gets a
// cluster IP of each family, and a pod on one node reaches the web pods on
// the others through each of them (kube-proxy's iptables and ip6tables
// rules, then the pod routes nexthop installed).
func (s *kubeletSuite) dualStackService(t *testing.T) {
	k := s.k
	const svc = `apiVersion: v1
kind: Service
metadata: {name: web-dual}
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
`
	if err := k.Apply(s.ctx, svc); err != nil {
		t.Fatalf("Service web-dual: %v", err)
	}
	defer s.kubectl(t, "delete", "svc", "web-dual", "--wait=true")
	out := s.kubectl(t, "get", "svc", "web-dual", "-o", "jsonpath={.spec.clusterIPs[*]}")
	var ips []netip.Addr
	for _, f := range strings.Fields(out) {
		ip, err := netip.ParseAddr(f)
		if err != nil {
			t.Fatalf("Service web-dual: clusterIPs %q: %v", out, err)
		}
		ips = append(ips, ip)
	}
	if len(ips) != 2 || !ServiceCIDR.Contains(ips[0]) || !ServiceCIDRV6.Contains(ips[1]) {
		t.Fatalf("Service web-dual has clusterIPs %v, want one in %s and one in %s", ips, ServiceCIDR, ServiceCIDRV6)
	}
	from := podOn(t, s.pods, "node1")
	for _, ip := range ips {
		s.serviceAnswersAcrossNodes(t, from, "web-dual", ip)
	}
}
