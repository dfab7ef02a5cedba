package kube

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
)

const (
	// DefaultPoolName names the IPPool created when the cluster has none;
	// DefaultPoolNameV6 the IPv6 one of a dual-stack or IPv6-only cluster.
	DefaultPoolName   = "default"
	DefaultPoolNameV6 = "default-ipv6"
	// FallbackPoolCIDR is the pool's range when the cluster's pod CIDR
	// cannot be read: kubeadm's and flannel's conventional one.
	FallbackPoolCIDR = "10.244.0.0/16"
	// kubeadm keeps its ClusterConfiguration (networking.podSubnet, which
	// it passes to kube-controller-manager as --cluster-cidr) here.
	kubeadmNamespace, kubeadmConfigMap = "kube-system", "kubeadm-config"
	// poolVisible bounds the wait for the created pool to reach the
	// informer: without it the first config would lack the pool, and its
	// arrival a moment later would restart the daemon.
	poolVisible = 30 * time.Second
)

// DefaultPool is the IPPool a fresh install gets, as calico-node creates
// one from CALICO_IPV4POOL_CIDR: pods reach destinations outside the
// cluster through NAT from the start.
type DefaultPool struct {
	// CIDR of the pool; the zero value means the cluster's pod CIDR
	// (kubeadm-config's networking.podSubnet, else FallbackPoolCIDR).
	CIDR netip.Prefix
	// NATOutgoing applies to the IPv4 pool. The IPv6 pool (created when
	// podSubnet has an IPv6 entry) never masquerades, as Calico's default
	// IPv6 pool does not: IPv6 pods are routable.
	NATOutgoing bool
}

// WithDefaultPool makes Run create IPPool "default" as p describes before
// its first config, when the cluster has no IPPool at all (disabled ones
// count: the user's pools rule). Every node's daemon may try; one wins.
func WithDefaultPool(p DefaultPool) Option { return func(s *Source) { s.defaultPool = &p } }

// ensureDefaultPool creates the default pool if no IPPool exists. It
// logs, rather than returns, what goes wrong: the node then runs as it
// would without pools.
func (s *Source) ensureDefaultPool(ctx context.Context) {
	created, err := s.createDefaultPool(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("no default IPPool: pods get no natOutgoing until an IPPool exists", "err", err)
		}
		return
	}
	if created == 0 {
		return
	}
	// Wait for the informer so the first config already has the pools; if
	// they do not come, their arrival restarts the daemon later.
	_ = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, poolVisible, true, func(context.Context) (bool, error) {
		return len(s.pools.List()) >= created, nil
	})
}

// createDefaultPool creates the default pool of each family the cluster's
// pod CIDRs have and returns how many exist afterwards that did not before
// (ours, or another node's that won the race).
func (s *Source) createDefaultPool(ctx context.Context) (int, error) {
	res := s.dyn.Resource(nexthopv1.IPPoolsResource)
	// The informer's list may come from the API server's cache: ask for a
	// consistent read before deciding the cluster has no pools.
	existing, err := res.List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		return 0, fmt.Errorf("list IPPools: %w", err)
	}
	if len(existing.Items) > 0 {
		return 0, nil
	}

	cidrs, from := s.clusterPodCIDRs(ctx)
	if c := s.defaultPool.CIDR; c.IsValid() {
		cidrs[0], from = c.Masked(), "--default-ippool-cidr"
	}
	// A pool that leaves out a node's block would make that node refuse
	// it: better no pool than a broken one.
	nodes, err := s.nodes.List(labels.Everything())
	if err != nil {
		return 0, fmt.Errorf("list nodes: %w", err)
	}
	for _, n := range nodes {
		for _, p := range podCIDRsOf(n) {
			cidr := cidrs[fam(p.Addr().Is6())]
			switch {
			case !cidr.IsValid():
				return 0, fmt.Errorf("not creating IPPool %s (from %s): node %s has the IPv6 pod CIDR %s and no IPv6 pod CIDR of the cluster is known; "+
					"create an IPv4 and an IPv6 IPPool holding the cluster's pod CIDRs (kube-controller-manager --cluster-cidr)",
					DefaultPoolName, from, n.Name, p)
			case p.Bits() < cidr.Bits() || !cidr.Contains(p.Addr()):
				return 0, fmt.Errorf("not creating IPPool %s %s (from %s): node %s has pod CIDR %s outside it; "+
					"set nexthopd's --default-ippool-cidr to the cluster's pod CIDR (kube-controller-manager --cluster-cidr), or create an IPPool",
					DefaultPoolName, cidr, from, n.Name, p)
			}
		}
	}

	created := 0
	for i, cidr := range cidrs {
		if !cidr.IsValid() {
			continue
		}
		name, nat := DefaultPoolName, s.defaultPool.NATOutgoing
		if i == 1 {
			name, nat = DefaultPoolNameV6, false
		}
		if err := s.createPool(ctx, name, cidr, from, nat); err != nil {
			return created, err
		}
		created++
	}
	return created, nil
}

// createPool creates one default IPPool, unless another node just did.
func (s *Source) createPool(ctx context.Context, name string, cidr netip.Prefix, from string, nat bool) error {
	res := s.dyn.Resource(nexthopv1.IPPoolsResource)
	pool := &nexthopv1.IPPool{
		TypeMeta:   metav1.TypeMeta{APIVersion: nexthopv1.SchemeGroupVersion.String(), Kind: "IPPool"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: nexthopv1.IPPoolSpec{
			CIDR:        cidr.String(),
			IPIPMode:    nexthopv1.EncapNever,
			VXLANMode:   nexthopv1.EncapNever,
			NATOutgoing: nat,
		},
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(pool)
	if err != nil {
		return fmt.Errorf("IPPool %s: %w", name, err)
	}
	_, err = res.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{FieldManager: "nexthopd"})
	switch {
	case apierrors.IsAlreadyExists(err):
		s.log.Info("IPPool "+name+" already created by another node", "node", s.nodeName)
		return nil
	case err != nil:
		return fmt.Errorf("create IPPool %s %s (from %s): %w", name, cidr, from, err)
	}
	s.log.Info(fmt.Sprintf("IPPool %s %s created from %s", name, cidr, from),
		"natOutgoing", pool.Spec.NATOutgoing, "change", "kubectl edit ippool "+name)
	return nil
}

// clusterPodCIDRs are the cluster's pod CIDRs as kubeadm recorded them
// (IPv4, IPv6; either may be zero), or FallbackPoolCIDR; from says which.
func (s *Source) clusterPodCIDRs(ctx context.Context) (cidrs [2]netip.Prefix, from string) {
	fallback := [2]netip.Prefix{netip.MustParsePrefix(FallbackPoolCIDR)}
	cm, err := s.client.CoreV1().ConfigMaps(kubeadmNamespace).Get(ctx, kubeadmConfigMap, metav1.GetOptions{})
	if err != nil {
		s.log.Info("cluster pod CIDR not read from kubeadm; the default IPPool gets the fallback", "configMap", kubeadmNamespace+"/"+kubeadmConfigMap,
			"reason", err, "fallback", fallback)
		return fallback, "the default"
	}
	ps, err := kubeadmPodSubnets(cm.Data["ClusterConfiguration"])
	if err != nil {
		s.log.Warn("cluster pod CIDR not read from kubeadm; the default IPPool gets the fallback", "configMap", kubeadmNamespace+"/"+kubeadmConfigMap,
			"reason", err, "fallback", fallback)
		return fallback, "the default"
	}
	return ps, "kubeadm-config"
}

// kubeadmPodSubnets reads networking.podSubnet from a kubeadm
// ClusterConfiguration: its IPv4 and IPv6 entries (a dual-stack cluster
// lists both, comma-separated), either of which may be zero.
func kubeadmPodSubnets(clusterConfiguration string) ([2]netip.Prefix, error) {
	var ps [2]netip.Prefix
	var cc struct {
		Networking struct {
			PodSubnet string `json:"podSubnet"`
		} `json:"networking"`
	}
	if err := yaml.Unmarshal([]byte(clusterConfiguration), &cc); err != nil {
		return ps, fmt.Errorf("ClusterConfiguration: %w", err)
	}
	subnets := cc.Networking.PodSubnet
	if strings.TrimSpace(subnets) == "" {
		return ps, fmt.Errorf("ClusterConfiguration has no networking.podSubnet (kubeadm init --pod-network-cidr)")
	}
	for s := range strings.SplitSeq(subnets, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil || p.Addr().Is4In6() || p.Bits() == 0 {
			continue
		}
		if i := fam(p.Addr().Is6()); !ps[i].IsValid() {
			ps[i] = p.Masked()
		}
	}
	if !ps[0].IsValid() && !ps[1].IsValid() {
		return ps, fmt.Errorf("networking.podSubnet %q has no IPv4 or IPv6 CIDR", subnets)
	}
	return ps, nil
}
