package kube

import (
	"net/netip"
	"reflect"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
	"github.com/nexthop-net/nexthop/config"
)

// TestBGPPeerFabricOptions: every fabric option of a BGPPeer reaches the
// node's config.Peer; its BGPFilters are resolved by name and follow their
// objects; a BGPPeer naming a missing BGPFilter, or with options that do
// not fit the node, is left out while the node keeps its other peers.
func TestBGPPeerFabricOptions(t *testing.T) {
	c := newCluster(t)
	c.addNode("a1", "192.0.2.11", "10.244.1.0/24")
	w := c.watch("a1", nil)
	w.until("the node alone", hasPeers())

	c.mustCreate(nexthopv1.BGPFiltersResource, &nexthopv1.BGPFilter{
		ObjectMeta: metav1.ObjectMeta{Name: "tor-in"},
		Spec: nexthopv1.BGPFilterSpec{ImportV4: []nexthopv1.BGPFilterRuleV4{
			{Action: "Reject", CIDR: "10.244.3.0/24", MatchOperator: "Equal"},
			{Action: "Accept", CIDR: "10.0.0.0/8", MatchOperator: "In", PrefixLength: &nexthopv1.BGPFilterPrefixLengthV4{Min: ptr[int32](16), Max: ptr[int32](24)}},
		}, ExportV4: []nexthopv1.BGPFilterRuleV4{{Action: "Reject"}}},
	})
	c.mustCreate(nexthopv1.BGPPeersResource, &nexthopv1.BGPPeer{
		ObjectMeta: metav1.ObjectMeta{Name: "tor"},
		Spec: nexthopv1.BGPPeerSpec{
			PeerIP: "198.51.100.100", ASNumber: 65100, Node: "a1",
			EBGPMultihop:             &nexthopv1.EBGPMultihop{TTL: 2},
			SourceAddress:            "203.0.113.10",
			KeepOriginalNextHop:      true,
			NumAllowedLocalASNumbers: ptr[int32](1),
			AcceptPodBlocks:          true,
			ASPathPrepend:            ptr[int32](2),
			Filters:                  []string{"tor-in"},
		},
	})
	c.mustCreate(nexthopv1.BGPPeersResource, &nexthopv1.BGPPeer{
		ObjectMeta: metav1.ObjectMeta{Name: "gtsm"},
		Spec:       nexthopv1.BGPPeerSpec{PeerIP: "192.0.2.254", ASNumber: 65000, TTLSecurity: ptr[int32](1)},
	})
	d := w.until("both peers", hasPeers("192.0.2.254", "198.51.100.100"))
	p, _ := peer(d, "198.51.100.100")
	want := config.Peer{
		EBGPMultihop: &config.Multihop{TTL: 2}, SourceAddress: netip.MustParseAddr("203.0.113.10"), KeepOriginalNextHop: true,
		NumAllowedLocalASNumbers: 1, AcceptPodBlocks: true, ASPathPrepend: 2,
		Filters: []config.Filter{{Name: "tor-in", ImportV4: []config.FilterRule{
			{Action: "Reject", CIDR: netip.MustParsePrefix("10.244.3.0/24"), MatchOperator: "Equal"},
			{Action: "Accept", CIDR: netip.MustParsePrefix("10.0.0.0/8"), MatchOperator: "In", PrefixLength: &config.PrefixLength{Min: 16, Max: 24}},
		}, ExportV4: []config.FilterRule{{Action: "Reject"}}}},
	}
	got := config.Peer{EBGPMultihop: p.EBGPMultihop, SourceAddress: p.SourceAddress, KeepOriginalNextHop: p.KeepOriginalNextHop,
		NumAllowedLocalASNumbers: p.NumAllowedLocalASNumbers, AcceptPodBlocks: p.AcceptPodBlocks, ASPathPrepend: p.ASPathPrepend, Filters: p.Filters}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("fabric options:\n got %+v\nwant %+v", got, want)
	}
	if g, _ := peer(d, "192.0.2.254"); g.TTLSecurity != 1 {
		t.Fatalf("ttlSecurity: %+v", g)
	}

	// The filter's object changes: the peer follows.
	c.mustDelete(nexthopv1.BGPFiltersResource, "tor-in")
	w.logUntil(`BGPFilter \"tor-in\" not found`)
	w.until("the peer naming a missing filter left out", hasPeers("192.0.2.254"))
	c.mustCreate(nexthopv1.BGPFiltersResource, &nexthopv1.BGPFilter{
		ObjectMeta: metav1.ObjectMeta{Name: "tor-in"},
		Spec:       nexthopv1.BGPFilterSpec{ImportV4: []nexthopv1.BGPFilterRuleV4{{Action: "Accept"}}},
	})
	d = w.until("the peer back with the new filter", func(d *Desired) bool {
		p, ok := peer(d, "198.51.100.100")
		return ok && len(p.Filters) == 1 && len(p.Filters[0].ImportV4) == 1 && p.Filters[0].ImportV4[0].Action == "Accept"
	})

	// A BGPPeer whose options do not fit this node (prepend towards iBGP).
	c.mustCreate(nexthopv1.BGPPeersResource, &nexthopv1.BGPPeer{
		ObjectMeta: metav1.ObjectMeta{Name: "ibgp-prepend"},
		Spec:       nexthopv1.BGPPeerSpec{PeerIP: "192.0.2.99", ASNumber: int64(nexthopv1.DefaultASNumber), ASPathPrepend: ptr[int32](1)},
	})
	w.logUntil("asPathPrepend: only for eBGP peers")
	if _, ok := peer(w.src.Last(), "192.0.2.99"); ok {
		t.Fatal("a BGPPeer prepending towards iBGP was taken")
	}
	if _, ok := peer(w.src.Last(), "198.51.100.100"); !ok {
		t.Fatal("the other peers were lost over one bad BGPPeer")
	}
}
