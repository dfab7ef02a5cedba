package kube

import (
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nexthop-net/nexthop/ipam"
)

func TestReclaimKeepsAddressesOfLivePods(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	c.addNode("node1", "192.0.2.11", "10.244.1.0/24")
	c.addNode("node2", "192.0.2.12", "10.244.2.0/24")
	mkPod := func(ns, name, node string) {
		t.Helper()
		if _, err := c.cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
			if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/none"}}},
		}
		if _, err := c.cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create pod %s/%s: %v", ns, name, err)
		}
	}
	mkPod("default", "alive", "node1")
	mkPod("web", "alive", "node1")
	mkPod("default", "elsewhere", "node2")

	alloc, err := ipam.Open(ctx, filepath.Join(t.TempDir(), "ipam.db"), []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	for _, r := range []ipam.Request{
		{ContainerID: "c-alive", IfName: "eth0", PodNamespace: "default", PodName: "alive"},
		{ContainerID: "c-alive-web", IfName: "eth0", PodNamespace: "web", PodName: "alive"},
		{ContainerID: "c-gone", IfName: "eth0", PodNamespace: "default", PodName: "gone"},
		{ContainerID: "c-elsewhere", IfName: "eth0", PodNamespace: "default", PodName: "elsewhere"},
		{ContainerID: "c-unnamed", IfName: "eth0"},
	} {
		if _, err := alloc.Allocate(ctx, r); err != nil {
			t.Fatal(err)
		}
	}

	pt, err := NewPodTracker(c.env.Config, "node1", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tctx, cancel := context.WithCancel(ctx)
	defer pt.Stop()
	defer cancel()
	if err := pt.Start(tctx); err != nil {
		t.Fatal(err)
	}
	pods, err := pt.PodsOnNode()
	if err != nil || len(pods) != 2 {
		t.Fatalf("PodsOnNode = %d pods (%v), want the 2 on node1", len(pods), err)
	}

	// Within the grace period nothing goes, whatever the pods.
	if rel, err := pt.Reclaim(ctx, alloc, time.Hour); err != nil || len(rel) != 0 {
		t.Fatalf("reclaim inside the grace period released %v (%v)", rel, err)
	}

	// An hour later: the pod that is gone, the one bound to another node and
	// the unnamed one are released; both live pods keep their addresses.
	pt.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	rel, err := pt.Reclaim(ctx, alloc, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, al := range rel {
		ids = append(ids, al.ContainerID)
	}
	slices.Sort(ids)
	if want := []string{"c-elsewhere", "c-gone", "c-unnamed"}; !slices.Equal(ids, want) {
		t.Fatalf("released %v, want %v", ids, want)
	}
	for _, id := range []string{"c-alive", "c-alive-web"} {
		if _, ok := alloc.Get(id, "eth0"); !ok {
			t.Fatalf("allocation of live pod (%s) released", id)
		}
	}

	// A pod created while the tracker runs keeps its address.
	mkPod("default", "late", "node1")
	if _, err := alloc.Allocate(ctx, ipam.Request{ContainerID: "c-late", IfName: "eth0", PodNamespace: "default", PodName: "late"}); err != nil {
		t.Fatal(err)
	}
	// A terminating pod still holds its address (the kubelet's CNI DEL
	// releases it); only once it is gone from the API does Reclaim act.
	// No kubelet runs here, so delete without grace.
	if err := c.cs.CoreV1().Pods("default").Delete(ctx, "alive", metav1.DeleteOptions{GracePeriodSeconds: ptr[int64](0)}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitFor)
	for {
		rel, err = pt.Reclaim(ctx, alloc, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if len(rel) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(rel) != 1 || rel[0].ContainerID != "c-alive" {
		t.Fatalf("after deleting default/alive released %v, want only its allocation", rel)
	}
	if _, ok := alloc.Get("c-late", "eth0"); !ok {
		t.Fatal("allocation of a pod that exists (default/late) released")
	}

	// A cache that lags (here: one that never sees node1's pods) must not
	// cost a live pod its address: the live GET before release keeps it.
	stale, err := NewPodTracker(c.env.Config, "no-such-node", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer stale.Stop()
	if err := stale.Start(tctx); err != nil {
		t.Fatal(err)
	}
	stale.nodeName = "node1"
	stale.now = pt.now
	if _, err := alloc.Allocate(ctx, ipam.Request{ContainerID: "c-gone2", IfName: "eth0", PodNamespace: "default", PodName: "gone2"}); err != nil {
		t.Fatal(err)
	}
	rel, err = stale.Reclaim(ctx, alloc, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(rel) != 1 || rel[0].ContainerID != "c-gone2" {
		t.Fatalf("with a stale cache released %v, want only the allocation of the pod that does not exist", rel)
	}
	for _, id := range []string{"c-alive-web", "c-late"} {
		if _, ok := alloc.Get(id, "eth0"); !ok {
			t.Fatalf("stale cache cost a live pod (%s) its address", id)
		}
	}
}
