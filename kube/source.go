// Package kube is nexthopd's Kubernetes mode: it watches Nodes, Secrets and
// nexthop's CRDs through client-go informers and turns them into the same
// config.Config the standalone YAML file produces, recomputed whenever this
// node's desired state changes. It also writes the node's BGPNodeStatus and
// tells the IPAM which pod addresses are still in use.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
	"github.com/nexthop-net/nexthop/config"
)

// DefaultNamespace is where the DaemonSet runs and BGP password Secrets live.
const DefaultNamespace = "nexthop-system"

// settle is how long Run waits after an event for more to arrive before it
// recomputes: a node joining updates several objects in a burst.
const settle = 100 * time.Millisecond

// Desired is one node's complete desired state: the config.Config every
// consumer understands (service prefixes and communities included), plus
// the pool the node's block belongs to.
type Desired struct {
	Config config.Config
	// Pool is the enabled IPPool that contains the node's pod CIDR; nil
	// when the cluster has no pools. Its encapsulation modes are already
	// in Config.
	Pool *Pool
}

// Pool is the part of an IPPool a node applies to its block.
type Pool struct {
	Name        string
	CIDR        netip.Prefix
	IPIPMode    nexthopv1.EncapMode
	VXLANMode   nexthopv1.EncapMode
	NATOutgoing bool
}

// Option adjusts a Source.
type Option func(*Source)

// WithNamespace sets the namespace BGP password Secrets are read from
// (default: $POD_NAMESPACE, the service account's namespace, or
// nexthop-system).
func WithNamespace(ns string) Option { return func(s *Source) { s.namespace = ns } }

// Source watches the API and produces this node's desired config.
type Source struct {
	nodeName  string
	namespace string
	base      config.Config
	log       *slog.Logger
	client    kubernetes.Interface
	dyn       dynamic.Interface

	nodes    listersv1.NodeLister
	secrets  listersv1.SecretLister
	services listersv1.ServiceLister
	slices   cache.Indexer // EndpointSlices, indexed by Service (services.go)
	bgpConfs cache.Store
	peers    cache.Store
	pools    cache.Store
	filters  cache.Store

	// defaultPool, when set, is created before the first config if the
	// cluster has no IPPool at all (see WithDefaultPool).
	defaultPool *DefaultPool

	core    informers.SharedInformerFactory
	secretF informers.SharedInformerFactory
	crds    dynamicinformer.DynamicSharedInformerFactory
	kick    chan struct{}

	// lastLog suppresses repeating the same refusal on every event;
	// warned does the same for per-object warnings.
	lastLog string
	warned  map[string]bool
	warns   map[string]bool

	mu   sync.Mutex
	last *Desired

	// statusObj caches each BGPNodeStatus as last written.
	statusMu  sync.Mutex
	statusObj map[string]*unstructured.Unstructured
}

// Last returns the most recent desired state handed to onChange, or nil.
func (s *Source) Last() *Desired {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// warn logs a problem with one object once, until it goes away: Compute
// runs on every Node update and would otherwise repeat it all day.
func (s *Source) warn(msg string, args ...any) {
	key := fmt.Sprint(append([]any{msg}, args...)...)
	if s.warns == nil {
		s.warns = map[string]bool{}
	}
	s.warns[key] = true
	if !s.warned[key] {
		s.log.Warn(msg, args...)
	}
}

// endWarnings forgets warnings that were not repeated in the last Compute.
func (s *Source) endWarnings() {
	s.warned, s.warns = s.warns, nil
}

// NewSource prepares a Source for nodeName. base supplies everything the API
// does not (gRPC listen address, state directory, timers, log level); its
// node-specific fields are overwritten.
func NewSource(rc *rest.Config, nodeName string, base config.Config, log *slog.Logger, opts ...Option) (*Source, error) {
	if nodeName == "" {
		return nil, errors.New("kube: node name required (--node-name or $NODE_NAME)")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kube: create client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kube: create dynamic client: %w", err)
	}
	s := &Source{
		nodeName:  nodeName,
		namespace: ownNamespace(),
		base:      base,
		log:       log,
		client:    client,
		dyn:       dyn,
		kick:      make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(s)
	}

	s.core = informers.NewSharedInformerFactory(client, 0)
	nodeInf := s.core.Core().V1().Nodes()
	// Every node keeps every Node in memory: drop what we never read
	// (images and managed fields are most of a Node's size).
	if err := nodeInf.Informer().SetTransform(trimNode); err != nil {
		return nil, fmt.Errorf("kube: set node transform: %w", err)
	}
	s.nodes = nodeInf.Lister()
	// Services and their EndpointSlices: which service addresses this node
	// announces (services.go).
	svcInf := s.core.Core().V1().Services()
	sliceInf := s.core.Discovery().V1().EndpointSlices()
	for _, inf := range []cache.SharedIndexInformer{svcInf.Informer(), sliceInf.Informer()} {
		if err := inf.SetTransform(trimMeta); err != nil {
			return nil, fmt.Errorf("kube: set service transform: %w", err)
		}
	}
	if err := sliceInf.Informer().AddIndexers(cache.Indexers{sliceServiceIndex: sliceService}); err != nil {
		return nil, fmt.Errorf("kube: index EndpointSlices by Service: %w", err)
	}
	s.services = svcInf.Lister()
	s.slices = sliceInf.Informer().GetIndexer()
	s.secretF = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(s.namespace))
	s.secrets = s.secretF.Core().V1().Secrets().Lister()
	s.crds = dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)

	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.trigger() },
		UpdateFunc: func(any, any) { s.trigger() },
		DeleteFunc: func(any) { s.trigger() },
	}
	infs := []cache.SharedIndexInformer{nodeInf.Informer(), s.secretF.Core().V1().Secrets().Informer(), svcInf.Informer(), sliceInf.Informer()}
	for _, r := range []struct {
		gvr   schema.GroupVersionResource
		store *cache.Store
	}{
		{nexthopv1.BGPConfigurationsResource, &s.bgpConfs},
		{nexthopv1.BGPPeersResource, &s.peers},
		{nexthopv1.IPPoolsResource, &s.pools},
		{nexthopv1.BGPFiltersResource, &s.filters},
	} {
		inf := s.crds.ForResource(r.gvr).Informer()
		*r.store = inf.GetStore()
		infs = append(infs, inf)
	}
	for _, inf := range infs {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return nil, fmt.Errorf("kube: add event handler: %w", err)
		}
	}
	return s, nil
}

// ownNamespace is the namespace the daemon runs in.
func ownNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
		if ns := strings.TrimSpace(string(b)); ns != "" {
			return ns
		}
	}
	return DefaultNamespace
}

func trimNode(obj any) (any, error) {
	if n, ok := obj.(*corev1.Node); ok {
		n.ManagedFields = nil
		n.Status.Images = nil
		n.Status.Conditions = nil
		n.Status.VolumesAttached = nil
		n.Status.VolumesInUse = nil
	}
	return obj, nil
}

func (s *Source) trigger() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run calls onChange with a complete, validated config each time the node's
// desired state changes, until ctx ends.
func (s *Source) Run(ctx context.Context, onChange func(*config.Config)) error {
	return s.RunDesired(ctx, func(d *Desired) {
		// The caller owns its copy; ours is compared with the next one.
		c := d.Config
		c.Peers = slices.Clone(c.Peers)
		onChange(&c)
	})
}

// RunDesired is Run with the extras config.Config does not carry.
// onChange runs on Run's goroutine, never concurrently with itself, and must
// not modify d.
func (s *Source) RunDesired(ctx context.Context, onChange func(*Desired)) error {
	s.core.Start(ctx.Done())
	s.secretF.Start(ctx.Done())
	s.crds.Start(ctx.Done())
	defer s.core.Shutdown()
	defer s.secretF.Shutdown()
	defer s.crds.Shutdown()

	s.log.Info("waiting for the Kubernetes caches", "node", s.nodeName, "secretsNamespace", s.namespace)
	// A list that keeps failing (CRDs not installed, RBAC missing) makes the
	// wait below block with only client-go's own logging: say what to check.
	waiting := time.AfterFunc(30*time.Second, func() {
		s.log.Warn("Kubernetes caches still not synced after 30s: are the nexthop CRDs installed and the RBAC of manifests/ applied?", "node", s.nodeName)
	})
	defer waiting.Stop()
	synced := map[string]bool{}
	for t, ok := range s.core.WaitForCacheSync(ctx.Done()) {
		synced[t.String()] = ok
	}
	for t, ok := range s.secretF.WaitForCacheSync(ctx.Done()) {
		synced["secrets "+t.String()] = ok
	}
	for r, ok := range s.crds.WaitForCacheSync(ctx.Done()) {
		synced[r.Resource] = ok
	}
	for what, ok := range synced {
		if !ok {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("kube: cache for %s did not sync (are the nexthop CRDs installed?)", what)
		}
	}

	if s.defaultPool != nil && len(s.pools.List()) == 0 {
		s.ensureDefaultPool(ctx)
	}

	var last *Desired
	for {
		d, err := s.compute()
		s.endWarnings()
		if err != nil {
			if msg := err.Error(); msg != s.lastLog {
				s.log.Error("no usable config for this node; keeping the previous one", "node", s.nodeName, "err", err)
				s.lastLog = msg
			}
		} else {
			s.lastLog = ""
			if last == nil || !reflect.DeepEqual(*last, *d) {
				s.log.Info("desired config changed", "node", s.nodeName, "address", d.Config.Address,
					"as", d.Config.LocalAS, "podCIDRs", d.Config.PodCIDRs, "peers", len(d.Config.Peers),
					"routeReflector", d.Config.RouteReflectorClusterID.IsValid())
				last = d
				s.mu.Lock()
				s.last = d
				s.mu.Unlock()
				onChange(d)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		}
		// Let a burst of events settle into one recomputation.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(settle):
		}
	}
}

// nodeInfo is what the mesh needs to know about one node.
type nodeInfo struct {
	name    string
	address netip.Addr
	as      uint32
	podCIDR netip.Prefix
	rr      bool
}

// compute builds the node's desired state from the informer caches. An
// error means the API does not yet (or no longer) describe a usable node;
// the message says what to fix.
func (s *Source) compute() (*Desired, error) {
	self, err := s.nodes.Get(s.nodeName)
	if err != nil {
		return nil, fmt.Errorf("node %q: %w", s.nodeName, err)
	}
	bc := s.bgpConfiguration()
	clusterAS := uint32(nexthopv1.DefaultASNumber)
	if bc.Spec.ASNumber != nil {
		clusterAS = uint32(*bc.Spec.ASNumber)
	}
	mesh := bc.Spec.NodeToNodeMeshEnabled == nil || *bc.Spec.NodeToNodeMeshEnabled

	me, err := describeNode(self, clusterAS)
	if err != nil {
		return nil, err
	}
	if !me.podCIDR.IsValid() {
		return nil, fmt.Errorf("node %s has no IPv4 spec.podCIDR yet (kube-controller-manager --allocate-node-cidrs assigns it)", me.name)
	}
	pool, err := s.poolFor(self, me.podCIDR)
	if err != nil {
		return nil, err
	}

	d := &Desired{
		Config: s.base,
		Pool:   pool,
	}
	c := &d.Config
	c.NodeName = me.name
	c.Address = me.address
	c.RouterID = netip.Addr{} // Normalize: the node address
	c.LocalAS = me.as
	c.PodCIDRs = []netip.Prefix{me.podCIDR}
	c.RouteReflectorClusterID = netip.Addr{}
	c.Peers = nil
	if pool != nil {
		// The pool decides encapsulation and NAT, as Calico's do; without
		// pools the base config's settings stand.
		c.IPIPMode, c.VXLANMode = config.EncapMode(pool.IPIPMode), config.EncapMode(pool.VXLANMode)
		c.NATOutgoing = pool.NATOutgoing
	}
	if pools := s.poolCIDRs(false); len(pools) > 0 {
		// Nodes may announce only these (the import policy).
		c.Pools = pools
	}
	if disabled := s.poolCIDRs(true); c.NATOutgoing && len(disabled) > 0 {
		// Pods may still hold addresses of a disabled pool: traffic to
		// them is pod to pod too. (Enabled pools are excluded as Pools.)
		ex := slices.Clone(c.NATOutgoingExclude) // not base's array
		for _, p := range disabled {
			if p.Bits() > 0 && !slices.Contains(ex, p) {
				ex = append(ex, p)
			}
		}
		c.NATOutgoingExclude = ex
	}
	if bc.Spec.ListenPort != nil {
		c.BGPPort = *bc.Spec.ListenPort
	}
	ranges, err := rangesOf(&bc)
	if err != nil {
		return nil, err
	}
	c.ServiceCIDRs = s.servicePrefixes(self, ranges)
	c.Communities = nil
	for _, cm := range bc.Spec.Communities {
		c.Communities = append(c.Communities, string(cm))
	}
	c.PrefixAdvertisements = nil
	for i, pa := range bc.Spec.PrefixAdvertisements {
		cidr, err := netip.ParsePrefix(pa.CIDR)
		if err != nil {
			return nil, fmt.Errorf("BGPConfiguration prefixAdvertisements[%d]: %w", i, err)
		}
		a := config.PrefixAdvertisement{CIDR: cidr.Masked()}
		for _, cm := range pa.Communities {
			a.Communities = append(a.Communities, string(cm))
		}
		c.PrefixAdvertisements = append(c.PrefixAdvertisements, a)
	}
	if me.rr && !mesh {
		id := me.address
		if bc.Spec.RouteReflectorClusterID != "" {
			if a, err := netip.ParseAddr(bc.Spec.RouteReflectorClusterID); err == nil {
				id = a
			}
		}
		c.RouteReflectorClusterID = id
	}

	peers := map[netip.Addr]config.Peer{}
	// Node-to-node sessions: the full mesh, or route reflection without it.
	nodes, err := s.nodes.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	for _, n := range nodes {
		if n.Name == me.name {
			continue
		}
		other, err := describeNode(n, clusterAS)
		if err != nil || !other.podCIDR.IsValid() {
			// Not (yet) a routing member; its own daemon logs why.
			continue
		}
		if other.address == me.address {
			s.warn("node has the same address as this node; not peering", "other", other.name, "address", other.address)
			continue
		}
		p := config.Peer{
			Address:     other.address,
			AS:          other.as,
			Description: "node " + other.name,
			// A node, whatever its AS: the import policy lets it send
			// pod-pool prefixes only.
			Node: ptrTo(true),
		}
		switch {
		case mesh: // every node peers with every node; reflector labels do not matter
		case me.rr: // a reflector peers with every node
			if other.rr {
				break // reflectors peer as ordinary iBGP neighbours
			}
			if other.as != me.as {
				// Reflection is within one AS; a node in another AS is
				// an ordinary eBGP neighbour of the reflector.
				s.warn("node in another AS peers with this route reflector as a plain eBGP neighbour, not a client",
					"other", other.name, "as", other.as, "reflectorAS", me.as)
				break
			}
			p.RouteReflectorClient = true
		case other.rr: // a client peers with the reflectors only
		default:
			continue
		}
		peers[other.address] = p
	}

	// Explicit BGPPeers selecting this node; they win over a node session to
	// the same address.
	var bgpPeers []nexthopv1.BGPPeer
	for _, obj := range s.peers.List() {
		var bp nexthopv1.BGPPeer
		if err := fromUnstructured(obj, &bp); err != nil {
			s.warn("ignoring unreadable BGPPeer", "err", err)
			continue
		}
		bgpPeers = append(bgpPeers, bp)
	}
	slices.SortFunc(bgpPeers, func(a, b nexthopv1.BGPPeer) int { return strings.Compare(a.Name, b.Name) })
	explicit := map[netip.Addr]string{}
	for i := range bgpPeers {
		bp := &bgpPeers[i]
		sel, err := selects(bp.Spec.Node, bp.Spec.NodeSelector, self)
		if err != nil {
			s.warn("ignoring BGPPeer with a bad nodeSelector", "bgppeer", bp.Name, "err", err)
			continue
		}
		if !sel {
			continue
		}
		p, err := s.peerFrom(bp)
		if err != nil {
			s.warn("ignoring BGPPeer", "bgppeer", bp.Name, "err", err)
			continue
		}
		if p.Address == me.address {
			continue
		}
		if err := c.PeerProblems(p); err != nil {
			// One bad BGPPeer must not cost the node its other sessions.
			s.warn("ignoring BGPPeer", "bgppeer", bp.Name, "err", err)
			continue
		}
		if prev, ok := explicit[p.Address]; ok {
			s.warn("two BGPPeers select this node for the same address; keeping the first by name",
				"address", p.Address, "kept", prev, "ignored", bp.Name)
			continue
		}
		explicit[p.Address] = bp.Name
		peers[p.Address] = p
	}
	for _, p := range peers {
		c.Peers = append(c.Peers, p)
	}
	slices.SortFunc(c.Peers, func(a, b config.Peer) int { return a.Address.Compare(b.Address) })

	c.Normalize()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config for node %s is invalid: %w", me.name, err)
	}
	return d, nil
}

// describeNode reads a Node's routing identity. podCIDR is left invalid
// when the node has none yet.
func describeNode(n *corev1.Node, clusterAS uint32) (nodeInfo, error) {
	ni := nodeInfo{name: n.Name, as: clusterAS, rr: n.Labels[nexthopv1.LabelRouteReflector] == "true"}
	if a, ok := n.Annotations[nexthopv1.AnnotationAddress]; ok {
		addr, err := netip.ParseAddr(strings.TrimSpace(a))
		if err != nil || !addr.Is4() {
			return ni, fmt.Errorf("node %s: annotation %s=%q is not an IPv4 address", n.Name, nexthopv1.AnnotationAddress, a)
		}
		ni.address = addr
	} else {
		for _, na := range n.Status.Addresses {
			if na.Type != corev1.NodeInternalIP {
				continue
			}
			if addr, err := netip.ParseAddr(na.Address); err == nil && addr.Is4() {
				ni.address = addr
				break
			}
		}
		if !ni.address.IsValid() {
			return ni, fmt.Errorf("node %s has no IPv4 InternalIP in status.addresses (set annotation %s to choose one)", n.Name, nexthopv1.AnnotationAddress)
		}
	}
	if a, ok := n.Annotations[nexthopv1.AnnotationAS]; ok {
		as, err := strconv.ParseUint(strings.TrimSpace(a), 10, 32)
		if err != nil || as == 0 {
			return ni, fmt.Errorf("node %s: annotation %s=%q is not an AS number", n.Name, nexthopv1.AnnotationAS, a)
		}
		ni.as = uint32(as)
	}
	ni.podCIDR = podCIDROf(n)
	return ni, nil
}

// podCIDROf is the Node's IPv4 pod CIDR; invalid when it has none yet.
func podCIDROf(n *corev1.Node) netip.Prefix {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, s := range cidrs {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
			return p.Masked()
		}
	}
	return netip.Prefix{}
}

// selects reports whether a node/nodeSelector pair picks n; neither picks
// every node.
func selects(node string, ls *metav1.LabelSelector, n *corev1.Node) (bool, error) {
	if node != "" {
		return node == n.Name, nil
	}
	if ls == nil {
		return true, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return false, err
	}
	return sel.Matches(labels.Set(n.Labels)), nil
}

func (s *Source) bgpConfiguration() nexthopv1.BGPConfiguration {
	var bc nexthopv1.BGPConfiguration
	obj, ok, err := s.bgpConfs.GetByKey(nexthopv1.DefaultBGPConfigurationName)
	if err != nil || !ok {
		return bc
	}
	if err := fromUnstructured(obj, &bc); err != nil {
		s.warn("ignoring unreadable BGPConfiguration", "err", err)
		return nexthopv1.BGPConfiguration{}
	}
	return bc
}

// poolFor finds the enabled IPPool selecting node that contains podCIDR.
// With no pools at all every pod CIDR is accepted.
func (s *Source) poolFor(node *corev1.Node, podCIDR netip.Prefix) (*Pool, error) {
	objs := s.pools.List()
	if len(objs) == 0 {
		return nil, nil
	}
	var names []string
	var best *Pool
	for _, obj := range objs {
		var ip nexthopv1.IPPool
		if err := fromUnstructured(obj, &ip); err != nil {
			s.warn("ignoring unreadable IPPool", "err", err)
			continue
		}
		cidr, err := netip.ParsePrefix(ip.Spec.CIDR)
		if err != nil || ip.Spec.Disabled {
			continue
		}
		names = append(names, ip.Name+"="+cidr.String())
		if cidr.Bits() > podCIDR.Bits() || !cidr.Contains(podCIDR.Addr()) {
			continue
		}
		if ok, err := selects("", ip.Spec.NodeSelector, node); err != nil || !ok {
			continue
		}
		// The most specific pool wins, as in routing.
		if best == nil || cidr.Bits() > best.CIDR.Bits() {
			best = &Pool{Name: ip.Name, CIDR: cidr.Masked(), IPIPMode: ip.Spec.IPIPMode, VXLANMode: ip.Spec.VXLANMode, NATOutgoing: ip.Spec.NATOutgoing}
		}
	}
	if best == nil {
		slices.Sort(names)
		return nil, fmt.Errorf("refusing pod CIDR %s of node %s: it is outside every enabled IPPool selecting the node (enabled pools: %s)",
			podCIDR, node.Name, strings.Join(names, ", "))
	}
	return best, nil
}

// poolCIDRs lists the CIDRs of every enabled (or every disabled) IPPool,
// sorted.
func (s *Source) poolCIDRs(disabled bool) []netip.Prefix {
	var out []netip.Prefix
	for _, obj := range s.pools.List() {
		var ip nexthopv1.IPPool
		if fromUnstructured(obj, &ip) != nil || ip.Spec.Disabled != disabled {
			continue
		}
		if cidr, err := netip.ParsePrefix(ip.Spec.CIDR); err == nil && cidr.Addr().Is4() {
			out = append(out, cidr.Masked())
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

// peerFrom turns a BGPPeer into a config.Peer, resolving its password.
func (s *Source) peerFrom(bp *nexthopv1.BGPPeer) (config.Peer, error) {
	addr, err := netip.ParseAddr(bp.Spec.PeerIP)
	if err != nil || !addr.Is4() {
		return config.Peer{}, fmt.Errorf("peerIP %q is not IPv4", bp.Spec.PeerIP)
	}
	p := config.Peer{
		Address:     addr,
		AS:          uint32(bp.Spec.ASNumber),
		Description: "BGPPeer " + bp.Name,
		Passive:     bp.Spec.Passive,
	}
	if bp.Spec.Port != nil {
		p.Port = uint16(*bp.Spec.Port)
	}
	if bp.Spec.HoldTime != nil {
		p.HoldTime.Duration = bp.Spec.HoldTime.Duration
	}
	if bp.Spec.KeepaliveTime != nil {
		p.Keepalive.Duration = bp.Spec.KeepaliveTime.Duration
	}
	if pw := bp.Spec.Password; pw != nil {
		ref := pw.SecretKeyRef
		sec, err := s.secrets.Secrets(s.namespace).Get(ref.Name)
		if err != nil {
			return config.Peer{}, fmt.Errorf("password: Secret %s/%s: %w", s.namespace, ref.Name, err)
		}
		v, ok := sec.Data[ref.Key]
		if !ok {
			return config.Peer{}, fmt.Errorf("password: Secret %s/%s has no key %q", s.namespace, ref.Name, ref.Key)
		}
		p.Password = strings.TrimRight(string(v), "\r\n")
	}
	// Unset fields keep config's defaults (graceful restart on for 120 s,
	// 5000 prefixes), which Normalize fills in.
	if g := bp.Spec.GracefulRestart; g != nil {
		p.GracefulRestart.Enabled = &g.Enabled
		if g.RestartTime != nil {
			p.GracefulRestart.RestartTime.Duration = g.RestartTime.Duration
		}
	}
	if bp.Spec.MaxPrefixes != nil {
		p.MaxPrefixes = uint32(min(max(*bp.Spec.MaxPrefixes, 0), int64(^uint32(0))))
	}
	if b := bp.Spec.BFD; b != nil {
		p.BFD.Enabled = b.Enabled
		if b.MinTx != nil {
			p.BFD.MinTx.Duration = b.MinTx.Duration
		}
		if b.MinRx != nil {
			p.BFD.MinRx.Duration = b.MinRx.Duration
		}
		if b.Multiplier != nil {
			p.BFD.Multiplier = int(*b.Multiplier)
		}
	}
	if m := bp.Spec.EBGPMultihop; m != nil {
		p.EBGPMultihop = &config.Multihop{TTL: uint8(min(max(m.TTL, 0), 255))}
	}
	if v := bp.Spec.TTLSecurity; v != nil {
		p.TTLSecurity = uint8(min(max(*v, 0), 255))
	}
	switch sa := bp.Spec.SourceAddress; sa {
	case "", "UseNodeIP":
	default:
		a, err := netip.ParseAddr(sa)
		if err != nil || !a.Is4() {
			return config.Peer{}, fmt.Errorf("sourceAddress %q is neither UseNodeIP nor an IPv4 address", sa)
		}
		if bp.Spec.Node == "" {
			return config.Peer{}, fmt.Errorf("sourceAddress %s needs node: it is one node's address", sa)
		}
		p.SourceAddress = a
	}
	p.KeepOriginalNextHop = bp.Spec.KeepOriginalNextHop
	if v := bp.Spec.NumAllowedLocalASNumbers; v != nil {
		p.NumAllowedLocalASNumbers = uint8(min(max(*v, 0), 255))
	}
	p.AcceptPodBlocks = bp.Spec.AcceptPodBlocks
	if v := bp.Spec.ASPathPrepend; v != nil {
		p.ASPathPrepend = uint8(min(max(*v, 0), 255))
	}
	for _, name := range bp.Spec.Filters {
		f, err := s.filter(name)
		if err != nil {
			return config.Peer{}, err
		}
		p.Filters = append(p.Filters, f)
	}
	return p, nil
}

// filter reads BGPFilter name into config's form. A filter that is missing
// or unreadable is an error: peering without it would pass what it refuses.
func (s *Source) filter(name string) (config.Filter, error) {
	obj, ok, err := s.filters.GetByKey(name)
	if err != nil || !ok {
		return config.Filter{}, fmt.Errorf("filters: BGPFilter %q not found", name)
	}
	var bf nexthopv1.BGPFilter
	if err := fromUnstructured(obj, &bf); err != nil {
		return config.Filter{}, fmt.Errorf("filters: %w", err)
	}
	f := config.Filter{Name: name}
	for _, d := range []struct {
		in  []nexthopv1.BGPFilterRuleV4
		out *[]config.FilterRule
	}{{bf.Spec.ImportV4, &f.ImportV4}, {bf.Spec.ExportV4, &f.ExportV4}} {
		for i, r := range d.in {
			cr := config.FilterRule{Action: string(r.Action), MatchOperator: string(r.MatchOperator)}
			if r.CIDR != "" {
				c, err := netip.ParsePrefix(r.CIDR)
				if err != nil {
					return config.Filter{}, fmt.Errorf("BGPFilter %s rule %d: cidr %q: %w", name, i, r.CIDR, err)
				}
				cr.CIDR = c
			}
			if pl := r.PrefixLength; pl != nil {
				cr.PrefixLength = &config.PrefixLength{}
				if pl.Min != nil {
					cr.PrefixLength.Min = uint8(min(max(*pl.Min, 0), 255))
				}
				if pl.Max != nil {
					cr.PrefixLength.Max = uint8(min(max(*pl.Max, 0), 255))
				}
			}
			*d.out = append(*d.out, cr)
		}
	}
	return f, nil
}

func fromUnstructured(obj any, into runtime.Object) error {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return fmt.Errorf("unexpected object %T in cache", obj)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into); err != nil {
		return fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
	}
	return nil
}

func ptrTo[T any](v T) *T { return &v }
