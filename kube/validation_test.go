package kube

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
)

// The API server itself must refuse bad objects, with a message that says
// what is wrong: nodes never see them.
func TestAPIServerRejectsInvalidObjects(t *testing.T) {
	c := newCluster(t)
	dur := func(s string) *metav1.Duration {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		return &metav1.Duration{Duration: d}
	}
	peer := func(name string, mut func(*nexthopv1.BGPPeerSpec)) runtime.Object {
		p := &nexthopv1.BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: nexthopv1.BGPPeerSpec{PeerIP: "192.0.2.254", ASNumber: 65000}}
		mut(&p.Spec)
		return p
	}
	filter := func(name string, rules ...nexthopv1.BGPFilterRuleV4) runtime.Object {
		return &nexthopv1.BGPFilter{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: nexthopv1.BGPFilterSpec{ImportV4: rules}}
	}
	pool := func(name string, mut func(*nexthopv1.IPPoolSpec)) runtime.Object {
		p := &nexthopv1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: nexthopv1.IPPoolSpec{CIDR: "10.244.0.0/16"}}
		mut(&p.Spec)
		return p
	}
	bgpConf := func(mut func(*nexthopv1.BGPConfigurationSpec)) runtime.Object {
		bc := &nexthopv1.BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
		mut(&bc.Spec)
		return bc
	}
	for _, tc := range []struct {
		name string
		gvr  schema.GroupVersionResource
		obj  runtime.Object
		want string // "" means accepted
	}{
		{"valid peer", nexthopv1.BGPPeersResource, peer("ok", func(s *nexthopv1.BGPPeerSpec) { s.HoldTime = dur("9s"); s.KeepaliveTime = dur("3s") }), ""},
		{"hold time 1s", nexthopv1.BGPPeersResource, peer("hold", func(s *nexthopv1.BGPPeerSpec) { s.HoldTime = dur("1s") }), "holdTime must be at least 3s"},
		{"keepalive over a third", nexthopv1.BGPPeersResource, peer("ka", func(s *nexthopv1.BGPPeerSpec) { s.HoldTime = dur("9s"); s.KeepaliveTime = dur("4s") }), "keepaliveTime must be at most a third of holdTime"},
		{"bad peer IP", nexthopv1.BGPPeersResource, peer("badip", func(s *nexthopv1.BGPPeerSpec) { s.PeerIP = "192.0.2.300" }), "peerIP must be a valid IPv4 or IPv6 address"},
		{"node and nodeSelector", nexthopv1.BGPPeersResource, peer("both", func(s *nexthopv1.BGPPeerSpec) {
			s.Node = "node1"
			s.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "a"}}
		}), "node and nodeSelector are mutually exclusive"},
		{"AS 0", nexthopv1.BGPPeersResource, peer("as0", func(s *nexthopv1.BGPPeerSpec) { s.ASNumber = 0 }), "spec.asNumber"},
		{"AS 2^32-1", nexthopv1.BGPPeersResource, peer("asmax", func(s *nexthopv1.BGPPeerSpec) { s.ASNumber = 4294967295 }), "spec.asNumber"},
		{"valid BFD", nexthopv1.BGPPeersResource, peer("bfd", func(s *nexthopv1.BGPPeerSpec) {
			s.BFD = &nexthopv1.BFD{Enabled: true, MinTx: dur("100ms"), MinRx: dur("1s"), Multiplier: ptr[int32](5)}
		}), ""},
		{"BFD interval too short", nexthopv1.BGPPeersResource, peer("bfdtx", func(s *nexthopv1.BGPPeerSpec) {
			s.BFD = &nexthopv1.BFD{Enabled: true, MinTx: dur("5ms")}
		}), "bfd.minTx must be between 10ms and 60s"},
		{"BFD receive interval too long", nexthopv1.BGPPeersResource, peer("bfdrx", func(s *nexthopv1.BGPPeerSpec) {
			s.BFD = &nexthopv1.BFD{Enabled: true, MinRx: dur("2m")}
		}), "bfd.minRx must be between 10ms and 60s"},
		{"BFD multiplier 0", nexthopv1.BGPPeersResource, peer("bfdmult", func(s *nexthopv1.BGPPeerSpec) {
			s.BFD = &nexthopv1.BFD{Enabled: true, Multiplier: ptr[int32](0)}
		}), "spec.bfd.multiplier"},
		{"graceful restart too long", nexthopv1.BGPPeersResource, peer("gr", func(s *nexthopv1.BGPPeerSpec) {
			s.GracefulRestart = &nexthopv1.GracefulRestart{Enabled: true, RestartTime: dur("2h")}
		}), "restartTime must be between 1s and 4095s"},

		{"valid fabric options", nexthopv1.BGPPeersResource, peer("fabric", func(s *nexthopv1.BGPPeerSpec) {
			s.Node, s.SourceAddress, s.KeepOriginalNextHop = "node1", "203.0.113.10", true
			s.EBGPMultihop = &nexthopv1.EBGPMultihop{TTL: 2}
			s.NumAllowedLocalASNumbers, s.ASPathPrepend, s.AcceptPodBlocks = ptr[int32](1), ptr[int32](3), true
			s.Filters = []string{"tor-in"}
		}), ""},
		{"multihop and GTSM", nexthopv1.BGPPeersResource, peer("mhgtsm", func(s *nexthopv1.BGPPeerSpec) {
			s.EBGPMultihop, s.TTLSecurity = &nexthopv1.EBGPMultihop{TTL: 2}, ptr[int32](2)
		}), "ebgpMultihop and ttlSecurity are mutually exclusive"},
		{"source address for every node", nexthopv1.BGPPeersResource, peer("srcall", func(s *nexthopv1.BGPPeerSpec) { s.SourceAddress = "203.0.113.10" }), "sourceAddress as an address needs node"},
		{"bad source address", nexthopv1.BGPPeersResource, peer("srcbad", func(s *nexthopv1.BGPPeerSpec) { s.Node, s.SourceAddress = "node1", "loopback" }), "sourceAddress must be UseNodeIP or an IPv4 or IPv6 address"},
		{"keep next hop without source", nexthopv1.BGPPeersResource, peer("keepnh", func(s *nexthopv1.BGPPeerSpec) { s.KeepOriginalNextHop = true }), "keepOriginalNextHop needs a sourceAddress"},
		{"ttlSecurity 255", nexthopv1.BGPPeersResource, peer("ttl255", func(s *nexthopv1.BGPPeerSpec) { s.TTLSecurity = ptr[int32](255) }), "spec.ttlSecurity"},
		{"prepend 11", nexthopv1.BGPPeersResource, peer("prep", func(s *nexthopv1.BGPPeerSpec) { s.ASPathPrepend = ptr[int32](11) }), "spec.asPathPrepend"},
		{"valid filter", nexthopv1.BGPFiltersResource, filter("ok", nexthopv1.BGPFilterRuleV4{Action: "Accept", CIDR: "10.0.0.0/8", MatchOperator: "In",
			PrefixLength: &nexthopv1.BGPFilterPrefixLengthV4{Min: ptr[int32](16), Max: ptr[int32](24)}}), ""},
		{"filter cidr without operator", nexthopv1.BGPFiltersResource, filter("noop", nexthopv1.BGPFilterRuleV4{Action: "Accept", CIDR: "10.0.0.0/8"}), "cidr and matchOperator go together"},
		{"filter bad action", nexthopv1.BGPFiltersResource, filter("act", nexthopv1.BGPFilterRuleV4{Action: "Drop"}), `supported values: "Accept", "Reject"`},
		{"filter bad cidr", nexthopv1.BGPFiltersResource, filter("cidr", nexthopv1.BGPFilterRuleV4{Action: "Accept", CIDR: "10.0.0.0", MatchOperator: "In"}), "cidr must be an IPv4 CIDR"},
		{"filter lengths with Equal", nexthopv1.BGPFiltersResource, filter("eqlen", nexthopv1.BGPFilterRuleV4{Action: "Accept", CIDR: "10.0.0.0/8", MatchOperator: "Equal",
			PrefixLength: &nexthopv1.BGPFilterPrefixLengthV4{Max: ptr[int32](24)}}), "prefixLength applies to In, NotIn"},
		{"filter min above max", nexthopv1.BGPFiltersResource, filter("minmax", nexthopv1.BGPFilterRuleV4{Action: "Reject",
			PrefixLength: &nexthopv1.BGPFilterPrefixLengthV4{Min: ptr[int32](25), Max: ptr[int32](24)}}), "prefixLength.min must not exceed max"},

		{"valid pool", nexthopv1.IPPoolsResource, pool("ok", func(*nexthopv1.IPPoolSpec) {}), ""},
		{"IPIP and VXLAN", nexthopv1.IPPoolsResource, pool("both", func(s *nexthopv1.IPPoolSpec) {
			s.IPIPMode, s.VXLANMode = nexthopv1.EncapAlways, nexthopv1.EncapCrossSubnet
		}), "ipipMode and vxlanMode cannot both be enabled"},
		{"host bits", nexthopv1.IPPoolsResource, pool("hostbits", func(s *nexthopv1.IPPoolSpec) { s.CIDR = "10.244.1.1/16" }), "cidr must be a network address"},
		{"not a CIDR", nexthopv1.IPPoolsResource, pool("garbage", func(s *nexthopv1.IPPoolSpec) { s.CIDR = "10.244.0.0" }), "cidr must be an IPv4 or IPv6 CIDR"},
		{"block larger than pool", nexthopv1.IPPoolsResource, pool("block", func(s *nexthopv1.IPPoolSpec) { s.CIDR = "10.244.0.0/24"; s.BlockSize = ptr[int32](22) }), "blockSize must not be shorter"},
		{"bad mode", nexthopv1.IPPoolsResource, pool("mode", func(s *nexthopv1.IPPoolSpec) { s.IPIPMode = "Sometimes" }), `supported values: "Never", "CrossSubnet", "Always"`},

		// IPv6 and dual-stack.
		{"valid IPv6 peer", nexthopv1.BGPPeersResource, peer("v6", func(s *nexthopv1.BGPPeerSpec) { s.PeerIP = "fd00:192::fe" }), ""},
		{"valid IPv6 peer with an IPv6 source", nexthopv1.BGPPeersResource, peer("v6src", func(s *nexthopv1.BGPPeerSpec) {
			s.PeerIP, s.Node, s.SourceAddress = "fd00:192::fe", "node1", "fd00:192::10"
		}), ""},
		{"link-local IPv6 peer", nexthopv1.BGPPeersResource, peer("v6ll", func(s *nexthopv1.BGPPeerSpec) { s.PeerIP = "fe80::1" }), "peerIP must not be link-local"},
		{"IPv4-mapped IPv6 peer", nexthopv1.BGPPeersResource, peer("v4mapped", func(s *nexthopv1.BGPPeerSpec) { s.PeerIP = "::ffff:192.0.2.1" }), "peerIP must be a valid IPv4 or IPv6 address"},
		{"IPv4 source for an IPv6 peer", nexthopv1.BGPPeersResource, peer("v6src4", func(s *nexthopv1.BGPPeerSpec) {
			s.PeerIP, s.Node, s.SourceAddress = "fd00:192::fe", "node1", "203.0.113.10"
		}), "sourceAddress must be of the peerIP's family"},
		{"valid IPv6 pool", nexthopv1.IPPoolsResource, pool("v6", func(s *nexthopv1.IPPoolSpec) {
			s.CIDR, s.NATOutgoing, s.VXLANMode, s.BlockSize = "fd00:10:244::/56", true, nexthopv1.EncapAlways, ptr[int32](64)
		}), ""},
		{"IP-in-IP in an IPv6 pool", nexthopv1.IPPoolsResource, pool("v6ipip", func(s *nexthopv1.IPPoolSpec) {
			s.CIDR, s.IPIPMode = "fd00:10:245::/56", nexthopv1.EncapCrossSubnet
		}), "ipipMode must be Never in an IPv6 pool"},
		{"IPv6 pool host bits", nexthopv1.IPPoolsResource, pool("v6hostbits", func(s *nexthopv1.IPPoolSpec) { s.CIDR = "fd00:10:244::1/56" }), "cidr must be a network address"},
		{"IPv4 block size in an IPv6 pool", nexthopv1.IPPoolsResource, pool("v6block", func(s *nexthopv1.IPPoolSpec) {
			s.CIDR, s.BlockSize = "fd00:10:246::/56", ptr[int32](26)
		}), "blockSize must be 20-30 in an IPv4 pool and 48-126 in an IPv6 pool"},
		{"IPv6 block size in an IPv4 pool", nexthopv1.IPPoolsResource, pool("v4block64", func(s *nexthopv1.IPPoolSpec) { s.BlockSize = ptr[int32](64) }),
			"blockSize must be 20-30 in an IPv4 pool and 48-126 in an IPv6 pool"},
		{"valid IPv6 filter", nexthopv1.BGPFiltersResource, &nexthopv1.BGPFilter{ObjectMeta: metav1.ObjectMeta{Name: "v6"}, Spec: nexthopv1.BGPFilterSpec{
			ImportV6: []nexthopv1.BGPFilterRuleV6{{Action: "Accept", CIDR: "fd00:10:244::/56", MatchOperator: "In",
				PrefixLength: &nexthopv1.BGPFilterPrefixLengthV6{Min: ptr[int32](64), Max: ptr[int32](128)}}},
			ExportV6: []nexthopv1.BGPFilterRuleV6{{Action: "Reject", PrefixLength: &nexthopv1.BGPFilterPrefixLengthV6{Max: ptr[int32](47)}}},
		}}, ""},
		{"IPv4 cidr in an IPv6 filter rule", nexthopv1.BGPFiltersResource, &nexthopv1.BGPFilter{ObjectMeta: metav1.ObjectMeta{Name: "v6cidr4"}, Spec: nexthopv1.BGPFilterSpec{
			ImportV6: []nexthopv1.BGPFilterRuleV6{{Action: "Accept", CIDR: "10.0.0.0/8", MatchOperator: "In"}},
		}}, "cidr must be an IPv6 CIDR"},
		{"IPv6 cidr in an IPv4 filter rule", nexthopv1.BGPFiltersResource, filter("v4cidr6", nexthopv1.BGPFilterRuleV4{Action: "Accept", CIDR: "fd00::/8", MatchOperator: "In"}),
			"cidr must be an IPv4 CIDR"},
		{"IPv6 prefix length over 128", nexthopv1.BGPFiltersResource, &nexthopv1.BGPFilter{ObjectMeta: metav1.ObjectMeta{Name: "v6len"}, Spec: nexthopv1.BGPFilterSpec{
			ExportV6: []nexthopv1.BGPFilterRuleV6{{Action: "Reject", PrefixLength: &nexthopv1.BGPFilterPrefixLengthV6{Max: ptr[int32](129)}}},
		}}, "spec.exportV6[0].prefixLength.max"},

		{"BGPConfiguration not named default", nexthopv1.BGPConfigurationsResource, &nexthopv1.BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "mine"}}, `its name must be "default"`},
		{"bad cluster ID", nexthopv1.BGPConfigurationsResource, &nexthopv1.BGPConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "default"},
			Spec:       nexthopv1.BGPConfigurationSpec{RouteReflectorClusterID: "cluster-1"},
		}, "routeReflectorClusterID must be written as an IPv4 address"},
		{"bad service CIDR", nexthopv1.BGPConfigurationsResource, &nexthopv1.BGPConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "default"},
			Spec:       nexthopv1.BGPConfigurationSpec{ServiceClusterIPs: []nexthopv1.ServiceIPBlock{{CIDR: "10.96.0.1/12"}}},
		}, "cidr must be an IPv4 or IPv6 network address in CIDR notation"},
		{"IPv6 load-balancer CIDR with host bits", nexthopv1.BGPConfigurationsResource, bgpConf(func(s *nexthopv1.BGPConfigurationSpec) {
			s.ServiceLoadBalancerIPs = []nexthopv1.ServiceIPBlock{{CIDR: "2001:db8::1/64"}}
		}), "cidr must be an IPv4 or IPv6 network address"},
		{"IPv6 external IPs everywhere", nexthopv1.BGPConfigurationsResource, bgpConf(func(s *nexthopv1.BGPConfigurationSpec) {
			s.ServiceExternalIPs = []nexthopv1.ServiceIPBlock{{CIDR: "::/0"}}
		}), "other than 0.0.0.0/0 or ::/0"},
		{"external IPs everywhere", nexthopv1.BGPConfigurationsResource, bgpConf(func(s *nexthopv1.BGPConfigurationSpec) {
			s.ServiceExternalIPs = []nexthopv1.ServiceIPBlock{{CIDR: "0.0.0.0/0"}}
		}), "other than 0.0.0.0/0"},
		{"standard community part over 65535", nexthopv1.BGPConfigurationsResource, bgpConf(func(s *nexthopv1.BGPConfigurationSpec) {
			s.Communities = []nexthopv1.Community{"65000:70000"}
		}), "a standard community is AS:value with each part 0-65535"},
		{"large community part over 2^32-1", nexthopv1.BGPConfigurationsResource, bgpConf(func(s *nexthopv1.BGPConfigurationSpec) {
			s.Communities = []nexthopv1.Community{"65000:1:4294967296"}
		}), "a large one AS:value:value with each part 0-4294967295"},
		{"community not a number", nexthopv1.BGPConfigurationsResource, bgpConf(func(s *nexthopv1.BGPConfigurationSpec) {
			s.Communities = []nexthopv1.Community{"no-export"}
		}), "spec.communities[0]"},
		{"prefix advertisement without communities", nexthopv1.BGPConfigurationsResource, bgpConf(func(s *nexthopv1.BGPConfigurationSpec) {
			s.PrefixAdvertisements = []nexthopv1.PrefixAdvertisement{{CIDR: "10.244.0.0/16"}}
		}), "spec.prefixAdvertisements[0].communities"},
		{"prefix advertisement host bits", nexthopv1.BGPConfigurationsResource, bgpConf(func(s *nexthopv1.BGPConfigurationSpec) {
			s.PrefixAdvertisements = []nexthopv1.PrefixAdvertisement{{CIDR: "10.244.0.1/16", Communities: []nexthopv1.Community{"65000:1"}}}
		}), "cidr must be an IPv4 or IPv6 network address"},
		{"valid BGPConfiguration", nexthopv1.BGPConfigurationsResource, bgpConf(func(s *nexthopv1.BGPConfigurationSpec) {
			s.ASNumber, s.RouteReflectorClusterID = ptr[int64](64512), "224.0.0.1"
			s.ServiceClusterIPs = []nexthopv1.ServiceIPBlock{{CIDR: "10.96.0.0/12"}}
			s.ServiceClusterIPs = append(s.ServiceClusterIPs, nexthopv1.ServiceIPBlock{CIDR: "fd00:10:96::/112"})
			s.ServiceExternalIPs = []nexthopv1.ServiceIPBlock{{CIDR: "203.0.113.0/24"}, {CIDR: "198.51.100.7/32"}, {CIDR: "2001:db8:1::/64"}, {CIDR: "2001:db8:2::7/128"}}
			s.ServiceLoadBalancerIPs = []nexthopv1.ServiceIPBlock{{CIDR: "198.51.100.0/25"}}
			s.Communities = []nexthopv1.Community{"64512:100", "65535:65535", "4294967295:0:4294967295"}
			s.PrefixAdvertisements = []nexthopv1.PrefixAdvertisement{{CIDR: "10.244.0.0/16", Communities: []nexthopv1.Community{"64512:200"}},
				{CIDR: "fd00:10:244::/56", Communities: []nexthopv1.Community{"64512:206"}}}
		}), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.create(tc.gvr, tc.obj)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid object rejected: %v", err)
			case tc.want == "":
			case err == nil:
				t.Fatalf("invalid object accepted; want an error containing %q", tc.want)
			case !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q\ndoes not contain %q", err, tc.want)
			default:
				t.Logf("rejected: %v", err)
			}
		})
	}

	// The pool CIDR cannot change under running pods.
	u, err := c.dc.Resource(nexthopv1.IPPoolsResource).Get(t.Context(), "ok", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u.Object["spec"].(map[string]any)["cidr"] = "10.245.0.0/16"
	_, err = c.dc.Resource(nexthopv1.IPPoolsResource).Update(t.Context(), u, metav1.UpdateOptions{})
	if err == nil || !strings.Contains(err.Error(), "cidr is immutable") {
		t.Fatalf("changing a pool's cidr: %v, want the immutability message", err)
	}
	// No schema default: 26 in an IPv4 pool would be wrong in an IPv6 one.
	if bs, ok := u.Object["spec"].(map[string]any)["blockSize"]; ok {
		t.Fatalf("blockSize defaulted to %v", bs)
	}
}
