package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/internal/syncbuf"
	"github.com/nexthop-net/nexthop/kubetest"
)

// waitFor bounds how long eventual consistency may take. It is a failure
// deadline, not a speed assertion: watches normally deliver in milliseconds.
const waitFor = 30 * time.Second

type cluster struct {
	t   *testing.T
	env *kubetest.Env
	cs  kubernetes.Interface
	dc  dynamic.Interface
}

func newCluster(t *testing.T) *cluster {
	// Each test has its own API server (~300 MB); go test runs -parallel
	// (GOMAXPROCS) of them at once. Startup is most of each test's time.
	t.Parallel()
	env := kubetest.Start(t)
	return &cluster{t: t, env: env, cs: kubernetes.NewForConfigOrDie(env.Config), dc: dynamic.NewForConfigOrDie(env.Config)}
}

type nodeOpt func(*corev1.Node)

func labelled(k, v string) nodeOpt { return func(n *corev1.Node) { n.Labels[k] = v } }
func annotated(k, v string) nodeOpt {
	return func(n *corev1.Node) { n.Annotations[k] = v }
}

// addNode creates a Node as the kubelet and the node IPAM controller would
// leave it: spec.podCIDR(s) set, InternalIPs in status. A dual-stack node
// gets comma-separated lists of both, as kubelet's --node-ip and
// kube-controller-manager's --cluster-cidr take them.
func (c *cluster) addNode(name, ip, podCIDR string, opts ...nodeOpt) *corev1.Node {
	c.t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}, Annotations: map[string]string{}}}
	if podCIDR != "" {
		n.Spec.PodCIDRs = strings.Split(podCIDR, ",")
		n.Spec.PodCIDR = n.Spec.PodCIDRs[0]
	}
	for _, o := range opts {
		o(n)
	}
	ctx := context.Background()
	n, err := c.cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatalf("create node %s: %v", name, err)
	}
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}}
		for a := range strings.SplitSeq(ip, ",") {
			n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
		}
		if n, err = c.cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			c.t.Fatalf("set addresses of node %s: %v", name, err)
		}
	}
	return n
}

func (c *cluster) deleteNode(name string) {
	c.t.Helper()
	if err := c.cs.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		c.t.Fatalf("delete node %s: %v", name, err)
	}
}

// create writes a nexthop object given as YAML-ish Go values.
func (c *cluster) create(gvr schema.GroupVersionResource, obj runtime.Object) error {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		c.t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetAPIVersion(nexthopv1.SchemeGroupVersion.String())
	kind := map[string]string{"bgppeers": "BGPPeer", "ippools": "IPPool", "bgpconfigurations": "BGPConfiguration", "bgpnodestatuses": "BGPNodeStatus", "bgpfilters": "BGPFilter"}[gvr.Resource]
	u.SetKind(kind)
	_, err = c.dc.Resource(gvr).Create(context.Background(), u, metav1.CreateOptions{})
	return err
}

func (c *cluster) mustCreate(gvr schema.GroupVersionResource, obj runtime.Object) {
	c.t.Helper()
	if err := c.create(gvr, obj); err != nil {
		c.t.Fatalf("create %s: %v", gvr.Resource, err)
	}
}

func (c *cluster) mustDelete(gvr schema.GroupVersionResource, name string) {
	c.t.Helper()
	if err := c.dc.Resource(gvr).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		c.t.Fatalf("delete %s %s: %v", gvr.Resource, name, err)
	}
}

// watcher runs a Source and keeps what it emits.
type watcher struct {
	t   *testing.T
	src *Source
	mu  sync.Mutex
	cur *Desired
	n   int
	ch  chan struct{}
	log *syncbuf.Buffer
}

func base() config.Config {
	return config.Config{GRPCListen: "none", StateDir: "/nonexistent", LogLevel: "debug"}
}

func (c *cluster) watch(node string, rc *rest.Config, opts ...Option) *watcher {
	c.t.Helper()
	if rc == nil {
		rc = c.env.Config
	}
	w := &watcher{t: c.t, ch: make(chan struct{}, 1), log: &syncbuf.Buffer{}}
	h := slog.NewTextHandler(w.log, &slog.HandlerOptions{Level: slog.LevelDebug})
	src, err := NewSource(rc, node, base(), slog.New(h), opts...)
	if err != nil {
		c.t.Fatal(err)
	}
	w.src = src
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- src.RunDesired(ctx, func(d *Desired) {
			w.mu.Lock()
			w.cur, w.n = d, w.n+1
			w.mu.Unlock()
			select {
			case w.ch <- struct{}{}:
			default:
			}
		})
	}()
	c.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			c.t.Errorf("source for %s: %v", node, err)
		}
		if c.t.Failed() {
			c.t.Logf("source %s log:\n%s", node, w.log.String())
		}
	})
	return w
}

// until waits for an emitted config satisfying ok.
func (w *watcher) until(what string, ok func(*Desired) bool) *Desired {
	w.t.Helper()
	deadline := time.After(waitFor)
	for {
		w.mu.Lock()
		d := w.cur
		w.mu.Unlock()
		if d != nil && ok(d) {
			return d
		}
		select {
		case <-w.ch:
		case <-deadline:
			got := "nothing"
			if d != nil {
				got = describe(d)
			}
			w.t.Fatalf("waited %s for %s; last emitted: %s", waitFor, what, got)
		}
	}
}

// logUntil waits for the Source to log a line containing s.
func (w *watcher) logUntil(s string) {
	w.t.Helper()
	deadline := time.Now().Add(waitFor)
	for !strings.Contains(w.log.String(), s) {
		if time.Now().After(deadline) {
			w.t.Fatalf("waited %s for log line %q; log:\n%s", waitFor, s, w.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *watcher) emitted() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// peerAddrs is the sorted list of peer addresses.
func peerAddrs(d *Desired) []string {
	var out []string
	for _, p := range d.Config.Peers {
		out = append(out, p.Address.String())
	}
	slices.Sort(out)
	return out
}

func hasPeers(want ...string) func(*Desired) bool {
	slices.Sort(want)
	return func(d *Desired) bool { return slices.Equal(peerAddrs(d), want) }
}

func peer(d *Desired, addr string) (config.Peer, bool) {
	a := netip.MustParseAddr(addr)
	for _, p := range d.Config.Peers {
		if p.Address == a {
			return p, true
		}
	}
	return config.Peer{}, false
}

func describe(d *Desired) string {
	var ps []string
	for _, p := range d.Config.Peers {
		s := fmt.Sprintf("%s/AS%d", p.Address, p.AS)
		if p.RouteReflectorClient {
			s += "(rr-client)"
		}
		ps = append(ps, s)
	}
	return fmt.Sprintf("node=%s addr=%s addrV6=%s as=%d podCIDRs=%s rrCluster=%v peers=[%s]",
		d.Config.NodeName, d.Config.Address, d.Config.AddressV6, d.Config.LocalAS, d.Config.PodCIDRs, d.Config.RouteReflectorClusterID, strings.Join(ps, " "))
}

func ptr[T any](v T) *T { return &v }
