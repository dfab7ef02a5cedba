// Package kube is nexthopd's Kubernetes mode: it watches Nodes, Secrets and
// nexthop's CRDs through client-go informers and turns them into the same
// config.Config the standalone YAML file produces, recomputed whenever this
// node's desired state changes. It also writes the node's BGPNodeStatus and
// tells the IPAM which pod addresses are still in use.
package kube

import (
	"cmp"
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
// the pools the node's blocks belong to.
type Desired struct {
	Config config.Config
	// Pool is the enabled IPPool that contains the node's IPv4 pod CIDR;
	// nil when the cluster has no pools or the node no IPv4 block. Its
	// encapsulation modes and NAT are already in Config.
	Pool *Pool
	// PoolV6 is the same for the node's IPv6 pod CIDR.
	PoolV6 *Pool
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
				s.log.Info("desired config changed", "node", s.nodeName, "address", d.Config.Address, "addressV6", d.Config.AddressV6,
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

// nodeInfo is what the mesh needs to know about one node. Index 0 of
// addrs and blocks is IPv4, index 1 IPv6 (see fam); a zero value means the
// node has none of that family.
type nodeInfo struct {
	name   string
	addrs  [2]netip.Addr
	blocks [2]netip.Prefix
	as     uint32
	rr     bool
	// routerID is the nexthop.io/router-id annotation's, if set.
	routerID netip.Addr
}

// fam indexes nodeInfo's per-family arrays.
func fam(v6 bool) int {
	if v6 {
		return 1
	}
	return 0
}

// member reports whether the node routes the family: it has a block of it
// and an address to be the block's next hop.
func (ni nodeInfo) member(v6 bool) bool {
	return ni.blocks[fam(v6)].IsValid() && ni.addrs[fam(v6)].IsValid()
}

// address is the node's config.Config Address: IPv4 when it has an IPv4
// block, IPv6 on an IPv6-only node.
func (ni nodeInfo) address() netip.Addr {
	if ni.blocks[0].IsValid() || !ni.blocks[1].IsValid() {
		return ni.addrs[0]
	}
	return ni.addrs[1]
}

// podCIDRs lists the node's blocks, IPv4 first.
func (ni nodeInfo) podCIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, b := range ni.blocks {
		if b.IsValid() {
			out = append(out, b)
		}
	}
	return out
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
	if err := me.usable(); err != nil {
		return nil, err
	}

	d := &Desired{Config: s.base}
	if b := me.blocks[0]; b.IsValid() {
		if d.Pool, err = s.poolFor(self, b); err != nil {
			return nil, err
		}
	}
	if b := me.blocks[1]; b.IsValid() {
		if d.PoolV6, err = s.poolFor(self, b); err != nil {
			return nil, err
		}
	}
	c := &d.Config
	c.NodeName = me.name
	c.Address = me.address()
	c.AddressV6 = netip.Addr{}
	if me.blocks[1].IsValid() {
		c.AddressV6 = me.addrs[1]
	}
	// Normalize: the IPv4 address, or a hash of the name on an IPv6-only
	// node, unless the annotation chose one.
	c.RouterID = me.routerID
	c.LocalAS = me.as
	c.PodCIDR = netip.Prefix{}
	c.PodCIDRs = me.podCIDRs()
	c.RouteReflectorClusterID = netip.Addr{}
	c.Peers = nil
	if err := applyPools(c, d.Pool, d.PoolV6); err != nil {
		return nil, fmt.Errorf("node %s: %w", me.name, err)
	}
	if pools := s.poolCIDRs(false); len(pools) > 0 {
		// Nodes may announce only these (the import policy).
		c.Pools = pools
	}
	if disabled := s.poolCIDRs(true); len(disabled) > 0 && (c.NATOutgoing || c.NATOutgoingV6) {
		// Pods may still hold addresses of a disabled pool: traffic to
		// them is pod to pod too. (Enabled pools are excluded as Pools.)
		ex := slices.Clone(c.NATOutgoingExclude) // not base's array
		for _, p := range disabled {
			nat := map[bool]bool{false: c.NATOutgoing, true: c.NATOutgoingV6}[p.Addr().Is6()]
			if nat && p.Bits() > 0 && !slices.Contains(ex, p) {
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
		// Unset, each reflector uses its router ID (as BIRD does).
		id := c.RouterID
		if !id.IsValid() {
			id = c.Address
			if !id.Is4() {
				id = config.HashRouterID(c.NodeName)
			}
		}
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
		if err != nil {
			// Not a routing member; its own daemon logs why.
			continue
		}
		// One session per family both nodes route (design: separate
		// IPv6 sessions), each carrying that family's blocks.
		for _, v6 := range []bool{false, true} {
			if !me.member(v6) || !other.member(v6) {
				continue
			}
			addr := other.addrs[fam(v6)]
			if addr == me.addrs[fam(v6)] {
				s.warn("node has the same address as this node; not peering", "other", other.name, "address", addr)
				continue
			}
			if p, ok := s.nodePeer(me, other, addr, mesh); ok {
				peers[addr] = p
			}
		}
	}

	// Explicit BGPPeers selecting this node; they win over a node session to
	// the same address.
	s.explicitPeers(c, self, me, peers)
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

// nodePeer is the session with other at addr, or false when the topology
// (mesh or route reflection) has none between the two.
func (s *Source) nodePeer(me, other nodeInfo, addr netip.Addr, mesh bool) (config.Peer, bool) {
	p := config.Peer{
		Address:     addr,
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
		return config.Peer{}, false
	}
	return p, true
}

// explicitPeers adds the BGPPeers selecting self to peers, replacing a
// node session to the same address.
func (s *Source) explicitPeers(c *config.Config, self *corev1.Node, me nodeInfo, peers map[netip.Addr]config.Peer) {
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
		if p.Address == me.addrs[0] || p.Address == me.addrs[1] {
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
}

// describeNode reads a Node's routing identity: its blocks (none while
// it has no spec.podCIDRs yet) and its underlay address of each family.
// Only a malformed annotation is an error; what is missing is left zero
// (see usable).
func describeNode(n *corev1.Node, clusterAS uint32) (nodeInfo, error) {
	ni := nodeInfo{name: n.Name, as: clusterAS, rr: n.Labels[nexthopv1.LabelRouteReflector] == "true"}
	for _, b := range podCIDRsOf(n) {
		if i := fam(b.Addr().Is6()); !ni.blocks[i].IsValid() {
			ni.blocks[i] = b
		}
	}
	if a, ok := n.Annotations[nexthopv1.AnnotationAddress]; ok {
		// One address, or one of each family: "192.0.2.11,fd00:192::11".
		for _, f := range strings.Split(a, ",") {
			addr, err := netip.ParseAddr(strings.TrimSpace(f))
			if err != nil || addr.Is4In6() || addr.Zone() != "" || ni.addrs[fam(addr.Is6())].IsValid() {
				return ni, fmt.Errorf("node %s: annotation %s=%q is not an address, or an IPv4 and an IPv6 address separated by a comma", n.Name, nexthopv1.AnnotationAddress, a)
			}
			ni.addrs[fam(addr.Is6())] = addr
		}
	}
	// The first InternalIP of each family the annotation leaves open.
	for _, na := range n.Status.Addresses {
		if na.Type != corev1.NodeInternalIP {
			continue
		}
		addr, err := netip.ParseAddr(na.Address)
		if err != nil || addr.Is4In6() || addr.IsLinkLocalUnicast() {
			continue
		}
		if i := fam(addr.Is6()); !ni.addrs[i].IsValid() {
			ni.addrs[i] = addr
		}
	}
	if a, ok := n.Annotations[nexthopv1.AnnotationAS]; ok {
		as, err := strconv.ParseUint(strings.TrimSpace(a), 10, 32)
		if err != nil || as == 0 {
			return ni, fmt.Errorf("node %s: annotation %s=%q is not an AS number", n.Name, nexthopv1.AnnotationAS, a)
		}
		ni.as = uint32(as)
	}
	if a, ok := n.Annotations[nexthopv1.AnnotationRouterID]; ok {
		id, err := netip.ParseAddr(strings.TrimSpace(a))
		if err != nil || !id.Is4() || id.IsUnspecified() {
			return ni, fmt.Errorf("node %s: annotation %s=%q is not a router ID written as an IPv4 address", n.Name, nexthopv1.AnnotationRouterID, a)
		}
		ni.routerID = id
	}
	return ni, nil
}

// usable says what this node lacks to route its pods: a block, and an
// address of each block's family to be its next hop.
func (ni nodeInfo) usable() error {
	if !ni.blocks[0].IsValid() && !ni.blocks[1].IsValid() {
		return fmt.Errorf("node %s has no spec.podCIDRs yet (kube-controller-manager --allocate-node-cidrs assigns them)", ni.name)
	}
	for _, v6 := range []bool{false, true} {
		if b := ni.blocks[fam(v6)]; b.IsValid() && !ni.addrs[fam(v6)].IsValid() {
			family := map[bool]string{false: "IPv4", true: "IPv6"}[v6]
			return fmt.Errorf("node %s has the %s pod CIDR %s but no %s InternalIP in status.addresses to be its next hop (set annotation %s to choose one)",
				ni.name, family, b, family, nexthopv1.AnnotationAddress)
		}
	}
	return nil
}

// podCIDRsOf is the Node's pod CIDRs (spec.podCIDRs, or the older
// spec.podCIDR alone); none while it has none yet.
func podCIDRsOf(n *corev1.Node) []netip.Prefix {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	var out []netip.Prefix
	for _, s := range cidrs {
		if p, err := netip.ParsePrefix(s); err == nil && !p.Addr().Is4In6() {
			out = append(out, p.Masked())
		}
	}
	return out
}

// applyPools sets encapsulation and NAT from the pools of the node's
// blocks (v4 and v6; either may be nil), as Calico's pools decide them.
// Without pools the base config's settings stand.
func applyPools(c *config.Config, v4, v6 *Pool) error {
	if v4 != nil {
		c.IPIPMode, c.VXLANMode = config.EncapMode(v4.IPIPMode), config.EncapMode(v4.VXLANMode)
		c.NATOutgoing = v4.NATOutgoing
	}
	if v6 != nil {
		// The API refuses ipipMode on an IPv6 pool: IP-in-IP carries IPv4.
		if m := v6.IPIPMode; m != "" && m != nexthopv1.EncapNever {
			return fmt.Errorf("IPv6 IPPool %s has ipipMode %s: IP-in-IP carries IPv4 only (use vxlanMode)", v6.Name, m)
		}
		mode := config.EncapMode(cmp.Or(v6.VXLANMode, nexthopv1.EncapNever))
		// One vxlanMode applies to both families of a node: pools that
		// disagree would have one of them ignored, so they are refused.
		if v4 != nil && config.EncapMode(cmp.Or(v4.VXLANMode, nexthopv1.EncapNever)) != mode {
			return fmt.Errorf("the node's IPv4 IPPool %s has vxlanMode %s and its IPv6 IPPool %s vxlanMode %s: a node applies one vxlanMode to both families, set them alike",
				v4.Name, cmp.Or(v4.VXLANMode, nexthopv1.EncapNever), v6.Name, mode)
		}
		c.VXLANMode = mode
		if v4 == nil {
			c.IPIPMode = config.Never
		}
		c.NATOutgoingV6 = v6.NATOutgoing
	}
	return nil
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
// With no pools at all every pod CIDR is accepted; with pools, a block of a
// family no pool has is refused like one outside the pools.
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
		if cidr.Addr().Is6() != podCIDR.Addr().Is6() {
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
		list := strings.Join(names, ", ")
		if list == "" {
			list = "none of this family"
		}
		return nil, fmt.Errorf("refusing pod CIDR %s of node %s: it is outside every enabled IPPool selecting the node (enabled pools: %s)",
			podCIDR, node.Name, list)
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
		if cidr, err := netip.ParsePrefix(ip.Spec.CIDR); err == nil && !cidr.Addr().Is4In6() {
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
	if err != nil || addr.Is4In6() || addr.Zone() != "" {
		return config.Peer{}, fmt.Errorf("peerIP %q is not an IPv4 or IPv6 address", bp.Spec.PeerIP)
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
		if err != nil || a.Is4In6() || a.Zone() != "" {
			return config.Peer{}, fmt.Errorf("sourceAddress %q is neither UseNodeIP nor an address", sa)
		}
		if a.Is6() != addr.Is6() {
			return config.Peer{}, fmt.Errorf("sourceAddress %s is not of peerIP %s's family", a, addr)
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
	if f.ImportV4, err = filterRules(name, "importV4", bf.Spec.ImportV4, ruleV4); err != nil {
		return config.Filter{}, err
	}
	if f.ExportV4, err = filterRules(name, "exportV4", bf.Spec.ExportV4, ruleV4); err != nil {
		return config.Filter{}, err
	}
	if f.ImportV6, err = filterRules(name, "importV6", bf.Spec.ImportV6, ruleV6); err != nil {
		return config.Filter{}, err
	}
	if f.ExportV6, err = filterRules(name, "exportV6", bf.Spec.ExportV6, ruleV6); err != nil {
		return config.Filter{}, err
	}
	return f, nil
}

// filterRule is a BGPFilter rule of either family, flattened.
type filterRule struct {
	action, op, cidr string
	min, max         *int32
	lengths          bool
}

func ruleV4(r nexthopv1.BGPFilterRuleV4) filterRule {
	fr := filterRule{action: string(r.Action), op: string(r.MatchOperator), cidr: r.CIDR}
	if pl := r.PrefixLength; pl != nil {
		fr.lengths, fr.min, fr.max = true, pl.Min, pl.Max
	}
	return fr
}

func ruleV6(r nexthopv1.BGPFilterRuleV6) filterRule {
	fr := filterRule{action: string(r.Action), op: string(r.MatchOperator), cidr: r.CIDR}
	if pl := r.PrefixLength; pl != nil {
		fr.lengths, fr.min, fr.max = true, pl.Min, pl.Max
	}
	return fr
}

// filterRules converts one list (field) of BGPFilter name.
func filterRules[R any](name, field string, in []R, flat func(R) filterRule) ([]config.FilterRule, error) {
	var out []config.FilterRule
	for i, r := range in {
		fr := flat(r)
		cr := config.FilterRule{Action: fr.action, MatchOperator: fr.op}
		if fr.cidr != "" {
			c, err := netip.ParsePrefix(fr.cidr)
			if err != nil {
				return nil, fmt.Errorf("BGPFilter %s %s rule %d: cidr %q: %w", name, field, i, fr.cidr, err)
			}
			cr.CIDR = c
		}
		if fr.lengths {
			cr.PrefixLength = &config.PrefixLength{}
			if fr.min != nil {
				cr.PrefixLength.Min = uint8(min(max(*fr.min, 0), 255))
			}
			if fr.max != nil {
				cr.PrefixLength.Max = uint8(min(max(*fr.max, 0), 255))
			}
		}
		out = append(out, cr)
	}
	return out, nil
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
