package kube

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
	"github.com/nexthop-net/nexthop/bfd"
	"github.com/nexthop-net/nexthop/bgp"
)

func TestPublishStatus(t *testing.T) {
	c := newCluster(t)
	node := c.addNode("node1", "192.0.2.11", "10.244.1.0/24")
	c.addNode("node2", "192.0.2.12", "10.244.2.0/24")
	w := c.watch("node1", nil)
	w.until("mesh", hasPeers("192.0.2.12"))

	peers := []bgp.PeerState{
		{Address: netip.MustParseAddr("192.0.2.12"), AS: 64512, State: "established", Established: true, Uptime: 90 * time.Second, Received: 3, Accepted: 2},
		{Address: netip.MustParseAddr("192.0.2.254"), AS: 65000, State: "active"},
	}
	ctx := context.Background()
	if err := w.src.PublishStatus(ctx, "node1", peers); err != nil {
		t.Fatal(err)
	}
	// A second write goes through the update path.
	peers[1].State = "connect"
	if err := w.src.PublishStatus(ctx, "node1", peers); err != nil {
		t.Fatal(err)
	}

	// Deleted by hand: the next publish recreates it.
	c.mustDelete(nexthopv1.BGPNodeStatusesResource, "node1")
	if err := w.src.PublishStatus(ctx, "node1", peers); err != nil {
		t.Fatalf("publish after the status was deleted: %v", err)
	}

	u, err := c.dc.Resource(nexthopv1.BGPNodeStatusesResource).Get(ctx, "node1", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("read BGPNodeStatus back: %v", err)
	}
	var got nexthopv1.BGPNodeStatus
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &got); err != nil {
		t.Fatal(err)
	}
	st := got.Status
	if st.ASNumber != 64512 || st.RouterID != "192.0.2.11" || st.PodCIDR != "10.244.1.0/24" ||
		st.EstablishedPeers != 1 || st.TotalPeers != 2 || len(st.Peers) != 2 || st.LastUpdated.IsZero() {
		t.Fatalf("status: %+v", st)
	}
	p0, p1 := st.Peers[0], st.Peers[1]
	if p0.Address != "192.0.2.12" || p0.AS != 64512 || p0.State != "established" || p0.PrefixesReceived != 3 || p0.PrefixesAccepted != 2 || p0.Since == nil {
		t.Fatalf("established peer: %+v", p0)
	}
	if age := time.Since(p0.Since.Time); age < 80*time.Second || age > 10*time.Minute {
		t.Fatalf("established since %s ago, want about 90s", age)
	}
	if p1.State != "connect" || p1.Since != nil {
		t.Fatalf("down peer: %+v", p1)
	}
	if refs := got.OwnerReferences; len(refs) != 1 || refs[0].Kind != "Node" || refs[0].UID != node.UID {
		t.Fatalf("owner references: %+v, want the Node", refs)
	}

	// BFD sessions show under their peers.
	if err := w.src.PublishStatusInfo(ctx, "node1", StatusInfo{AS: 64512, RouterID: "192.0.2.11", PodCIDRs: []string{"10.244.1.0/24"}, BFD: []bfd.Status{{
		Peer: netip.MustParseAddr("192.0.2.254"), State: bfd.Down, RemoteState: bfd.Up,
		Diag: bfd.DiagControlDetectExpired, DetectTime: 900 * time.Millisecond,
	}}}, peers); err != nil {
		t.Fatal(err)
	}
	u, err = c.dc.Resource(nexthopv1.BGPNodeStatusesResource).Get(ctx, "node1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got = nexthopv1.BGPNodeStatus{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &got); err != nil {
		t.Fatal(err)
	}
	if b := got.Status.Peers[1].BFD; b == nil || b.State != "Down" || b.RemoteState != "Up" ||
		b.Diag != "control detection time expired" || b.DetectTime.Duration != 900*time.Millisecond || got.Status.Peers[0].BFD != nil {
		t.Fatalf("BFD in the status: %+v, %+v", got.Status.Peers[1].BFD, got.Status.Peers[0].BFD)
	}

	// What an operator sees.
	out, err := c.env.Kubectl(ctx, "get", "bgpnodestatuses").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get bgpnodestatuses: %v\n%s", err, out)
	}
	t.Logf("kubectl get bgpnodestatuses:\n%s", out)
	for _, want := range []string{"ESTABLISHED", "PEERS", "node1", "64512", "10.244.1.0/24"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("kubectl output lacks %q", want)
		}
	}
}

// The daemon's identity may write its status only through the status
// subresource once RBAC allows it; without a Source it still works.
func TestPublishStatusWithoutConfig(t *testing.T) {
	c := newCluster(t)
	c.addNode("node9", "192.0.2.19", "10.244.9.0/24")
	src, err := NewSource(c.env.Config, "node9", base(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := src.PublishStatus(context.Background(), "node9", nil); err != nil {
		t.Fatal(err)
	}
	u, err := c.dc.Resource(nexthopv1.BGPNodeStatusesResource).Get(context.Background(), "node9", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n, _, _ := unstructuredInt(u.Object, "status", "totalPeers"); n != 0 {
		t.Fatalf("totalPeers = %d", n)
	}
}

func unstructuredInt(obj map[string]any, path ...string) (int64, bool, error) {
	m := obj
	for _, p := range path[:len(path)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			return 0, false, nil
		}
		m = next
	}
	v, ok := m[path[len(path)-1]].(int64)
	return v, ok, nil
}
