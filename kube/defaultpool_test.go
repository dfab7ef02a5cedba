package kube

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
)

// pools lists the cluster's IPPools as the API server has them.
func (c *cluster) pools() []nexthopv1.IPPool {
	c.t.Helper()
	l, err := c.dc.Resource(nexthopv1.IPPoolsResource).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	var out []nexthopv1.IPPool
	for i := range l.Items {
		var p nexthopv1.IPPool
		if err := fromUnstructured(&l.Items[i], &p); err != nil {
			c.t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func (c *cluster) kubeadmConfig(clusterConfiguration string) {
	c.t.Helper()
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm-config", Namespace: "kube-system"},
		Data:       map[string]string{"ClusterConfiguration": clusterConfiguration},
	}
	if _, err := c.cs.CoreV1().ConfigMaps("kube-system").Create(context.Background(), cm, metav1.CreateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

func hasPool(name string) func(*Desired) bool {
	return func(d *Desired) bool { return d.Pool != nil && d.Pool.Name == name }
}

// A fresh install (no IPPool, no kubeadm-config) gets pool "default" on
// 10.244.0.0/16 with natOutgoing, in the node's very first config.
func TestDefaultPoolCreatedWhenNone(t *testing.T) {
	c := newCluster(t)
	c.addNode("n1", "192.0.2.11", "10.244.1.0/24")
	c.addNode("n2", "192.0.2.12", "") // no block yet: no say in the CIDR

	w := c.watch("n1", nil, WithDefaultPool(DefaultPool{NATOutgoing: true}))
	d := w.until("a config", func(*Desired) bool { return true })
	if d.Pool == nil || d.Pool.Name != "default" || !d.Config.NATOutgoing ||
		!slices.Equal(d.Config.Pools, []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}) {
		t.Fatalf("first config: pool %+v natOutgoing %v pools %v; want pool default 10.244.0.0/16 with natOutgoing",
			d.Pool, d.Config.NATOutgoing, d.Config.Pools)
	}
	w.logUntil("IPPool default 10.244.0.0/16 created from the default")
	ps := c.pools()
	if len(ps) != 1 || ps[0].Spec.CIDR != "10.244.0.0/16" || !ps[0].Spec.NATOutgoing ||
		ps[0].Spec.IPIPMode != nexthopv1.EncapNever || ps[0].Spec.VXLANMode != nexthopv1.EncapNever {
		t.Fatalf("IPPools: %+v", ps)
	}
	if n := w.emitted(); n != 1 {
		t.Fatalf("%d configs emitted; want one, already with the pool (a later pool restarts the daemon)", n)
	}

	// The pool is the user's from now on: turning NAT off reaches the node.
	if _, err := c.dc.Resource(nexthopv1.IPPoolsResource).Patch(context.Background(), "default", "application/merge-patch+json",
		[]byte(`{"spec":{"natOutgoing":false}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	w.until("natOutgoing off", func(d *Desired) bool { return !d.Config.NATOutgoing })
}

// kubeadm's podSubnet is the cluster's pod CIDRs: a dual-stack cluster
// gets pool default from its IPv4 entry and default-ipv6 (never NATed)
// from its IPv6 one, both in the node's first config.
func TestDefaultPoolFromKubeadmConfig(t *testing.T) {
	c := newCluster(t)
	c.kubeadmConfig("apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nnetworking:\n" +
		"  dnsDomain: cluster.local\n  podSubnet: fd00:10::/56,10.32.0.0/12\n  serviceSubnet: 10.96.0.0/12\n")
	c.addNode("n1", "192.0.2.11,fd00:192::11", "10.32.5.0/24,fd00:10:0:5::/64")

	w := c.watch("n1", nil, WithDefaultPool(DefaultPool{NATOutgoing: false}))
	d := w.until("config with pool default", hasPool("default"))
	if d.Pool.CIDR.String() != "10.32.0.0/12" || d.Config.NATOutgoing {
		t.Fatalf("pool %+v natOutgoing %v: want 10.32.0.0/12 without NAT (--default-ippool-nat-outgoing=false)", d.Pool, d.Config.NATOutgoing)
	}
	if d.PoolV6 == nil || d.PoolV6.Name != DefaultPoolNameV6 || d.PoolV6.CIDR.String() != "fd00:10::/56" || d.Config.NATOutgoingV6 {
		t.Fatalf("IPv6 pool %+v natOutgoingV6 %v: want default-ipv6 fd00:10::/56 without NAT", d.PoolV6, d.Config.NATOutgoingV6)
	}
	if n := w.emitted(); n != 1 {
		t.Fatalf("%d configs emitted; want one, already with both pools", n)
	}
	w.logUntil("IPPool default 10.32.0.0/12 created from kubeadm-config")
	w.logUntil("IPPool default-ipv6 fd00:10::/56 created from kubeadm-config")
}

// Any IPPool, even a disabled one, means the user manages pools: nothing
// is created. Disabled pools are still pod addresses, never NATed to.
func TestDefaultPoolNotCreatedOverExistingPools(t *testing.T) {
	c := newCluster(t)
	c.mustCreate(nexthopv1.IPPoolsResource, &nexthopv1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: "retired"},
		Spec:       nexthopv1.IPPoolSpec{CIDR: "10.250.0.0/16", Disabled: true},
	})
	c.addNode("n1", "192.0.2.11", "10.244.1.0/24")

	w := c.watch("n1", nil, WithDefaultPool(DefaultPool{NATOutgoing: true}))
	w.logUntil("refusing pod CIDR 10.244.1.0/24 of node n1")
	if ps := c.pools(); len(ps) != 1 || ps[0].Name != "retired" {
		t.Fatalf("IPPools %+v: want only the user's", ps)
	}

	c.mustCreate(nexthopv1.IPPoolsResource, &nexthopv1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: "mine"},
		Spec:       nexthopv1.IPPoolSpec{CIDR: "10.244.0.0/16", NATOutgoing: true},
	})
	d := w.until("config with pool mine", hasPool("mine"))
	if !d.Config.NATOutgoing || !slices.Equal(d.Config.NATOutgoingExclude, []netip.Prefix{netip.MustParsePrefix("10.250.0.0/16")}) {
		t.Fatalf("natOutgoing %v, natOutgoingExclude %v: want on, excluding the disabled pool", d.Config.NATOutgoing, d.Config.NATOutgoingExclude)
	}
	if strings.Contains(w.log.String(), "created from") || len(c.pools()) != 2 {
		t.Fatalf("a pool was created over the user's: %+v", c.pools())
	}
}

// Without the option (--default-ippool-cidr=none) no pool is created.
func TestDefaultPoolNone(t *testing.T) {
	c := newCluster(t)
	c.addNode("n1", "192.0.2.11", "10.244.1.0/24")
	w := c.watch("n1", nil)
	d := w.until("a config", func(*Desired) bool { return true })
	if d.Pool != nil || d.Config.NATOutgoing || len(c.pools()) != 0 {
		t.Fatalf("pool %+v natOutgoing %v IPPools %+v: want none", d.Pool, d.Config.NATOutgoing, c.pools())
	}
}

// The fallback CIDR is a guess: a node whose block lies outside it means
// it is wrong, and a pool without that block would make the node refuse
// it. Nothing is created and the error names the flag to set.
func TestDefaultPoolFallbackRefusedForNodesOutside(t *testing.T) {
	c := newCluster(t)
	c.addNode("n1", "192.0.2.11", "10.99.1.0/24")
	w := c.watch("n1", nil, WithDefaultPool(DefaultPool{NATOutgoing: true}))
	w.logUntil("not creating IPPool default 10.244.0.0/16 (from the default): node n1 has pod CIDR 10.99.1.0/24 outside it; set nexthopd's --default-ippool-cidr")
	d := w.until("a config", func(*Desired) bool { return true })
	if d.Pool != nil || d.Config.NATOutgoing || len(c.pools()) != 0 {
		t.Fatalf("pool %+v natOutgoing %v IPPools %+v: want none", d.Pool, d.Config.NATOutgoing, c.pools())
	}
}

// Every node's daemon starts at once on a fresh install: one pool results.
func TestDefaultPoolConcurrentCreators(t *testing.T) {
	c := newCluster(t)
	names := []string{"n1", "n2", "n3"}
	for i, n := range names {
		c.addNode(n, fmt.Sprintf("192.0.2.%d", 11+i), fmt.Sprintf("10.244.%d.0/24", 1+i))
	}
	ws := make([]*watcher, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Go(func() {
			ws[i] = c.watch(n, nil, WithDefaultPool(DefaultPool{CIDR: netip.MustParsePrefix("10.244.0.0/16"), NATOutgoing: true}))
		})
	}
	wg.Wait()
	created, lost := 0, 0
	for _, w := range ws {
		w.until("config with pool default", hasPool("default"))
		created += strings.Count(w.log.String(), "created from --default-ippool-cidr")
		lost += strings.Count(w.log.String(), "already created by another node")
	}
	t.Logf("%d daemons lost the creation race (the others found the pool)", lost)
	if ps := c.pools(); len(ps) != 1 || created != 1 {
		t.Fatalf("%d creations logged, IPPools %+v: want one", created, ps)
	}
}

func TestKubeadmPodSubnets(t *testing.T) {
	for in, want := range map[string]string{
		"networking:\n  podSubnet: 10.244.0.0/16\n":               "[10.244.0.0/16 invalid Prefix]",
		"networking:\n  podSubnet: \"fd00::/56, 192.168.0.0/17\"": "[192.168.0.0/17 fd00::/56]",
		"networking:\n  podSubnet: 10.244.1.1/16\n":               "[10.244.0.0/16 invalid Prefix]",
		"networking:\n  podSubnet: fd00::/56\n":                   "[invalid Prefix fd00::/56]",
		"networking:\n  serviceSubnet: 10.96.0.0/12\n":            "",
		"networking:\n  podSubnet: 0.0.0.0/0\n":                   "",
		"networking: [":                                           "",
	} {
		ps, err := kubeadmPodSubnets(in)
		if got := fmt.Sprint(ps); (want == "" && err == nil) || (want != "" && got != want) {
			t.Errorf("kubeadmPodSubnets(%q) = %s, %v; want %q", in, got, err, want)
		}
	}
}
