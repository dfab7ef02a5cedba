package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Well-known node labels and annotations.
const (
	// AnnotationAddress overrides the node's underlay address (its BGP next
	// hop and session source); otherwise the first InternalIP of the family
	// is used. A dual-stack node may give one address of each family,
	// separated by a comma ("192.0.2.11,fd00:192::11"); a family it leaves
	// out still comes from the InternalIPs.
	AnnotationAddress = "nexthop.io/address"
	// AnnotationRouterID sets the node's BGP router ID, written as an IPv4
	// address. Without it the router ID is the node's IPv4 address, or on
	// an IPv6-only node a hash of its name (Calico's CALICO_ROUTER_ID=hash);
	// set it where two names might hash alike.
	AnnotationRouterID = "nexthop.io/router-id"
	// AnnotationAS overrides the cluster AS number for one node.
	AnnotationAS = "nexthop.io/as"
	// LabelRouteReflector set to "true" makes a node a route reflector.
	LabelRouteReflector = "nexthop.io/route-reflector"
	// DefaultBGPConfigurationName is the name of the singleton BGPConfiguration.
	DefaultBGPConfigurationName = "default"
	// DefaultASNumber is used when neither the node nor the BGPConfiguration
	// sets one (Calico's default too: a private 16-bit AS).
	DefaultASNumber = 64512
)

// ---------------------------------------------------------------------------
// BGPConfiguration

// BGPConfigurationSpec holds cluster-wide BGP settings.
// +kubebuilder:validation:XValidation:rule="!has(self.routeReflectorClusterID) || (isIP(self.routeReflectorClusterID) && ip(self.routeReflectorClusterID).family() == 4)",message="routeReflectorClusterID must be written as an IPv4 address, e.g. 224.0.0.1"
type BGPConfigurationSpec struct {
	// ASNumber is the cluster's default AS; a node's nexthop.io/as
	// annotation overrides it. 64512 when unset.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=4294967294
	// +kubebuilder:validation:XValidation:rule="self != 23456 && self != 65535",message="AS 23456 (AS_TRANS) and 65535 are reserved"
	ASNumber *int64 `json:"asNumber,omitempty"`

	// NodeToNodeMeshEnabled makes every node an iBGP peer of every other
	// node. Turn it off for clusters past ~100 nodes and use route
	// reflectors (nodes labelled nexthop.io/route-reflector=true) instead.
	// +optional
	// +kubebuilder:default=true
	NodeToNodeMeshEnabled *bool `json:"nodeToNodeMeshEnabled,omitempty"`

	// RouteReflectorClusterID is the cluster ID route-reflector nodes put
	// in reflected routes (RFC 4456), written as an IPv4 address. Every
	// reflector of the cluster shares it so they do not loop routes.
	// +optional
	// +kubebuilder:validation:MaxLength=15
	RouteReflectorClusterID string `json:"routeReflectorClusterID,omitempty"`

	// ListenPort is the TCP port every node's speaker listens on. 179 when unset.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	ListenPort *int32 `json:"listenPort,omitempty"`

	// ServiceClusterIPs are CIDRs (normally the service cluster IP range)
	// every node announces to its external peers (BGPPeers that are not
	// nodes: ToRs), never to other nodes, so the ToR spreads traffic to
	// them over the nodes by ECMP. A Service with internalTrafficPolicy
	// Local also gets its cluster IP announced as a /32 by the nodes that
	// run a ready endpoint of it (/128 for an IPv6 one). A /32 or /128
	// entry is announced only for the Services that use it (see
	// manifests/README.md). IPv6 ranges are announced to IPv6 peers.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	ServiceClusterIPs []ServiceIPBlock `json:"serviceClusterIPs,omitempty"`

	// ServiceExternalIPs are CIDRs of Service spec.externalIPs, announced
	// like serviceClusterIPs. A Service with externalTrafficPolicy Local
	// gets its external IPs announced as /32s by the nodes that run a
	// ready endpoint of it. External IPs outside these CIDRs are never
	// announced.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	ServiceExternalIPs []ServiceIPBlock `json:"serviceExternalIPs,omitempty"`

	// ServiceLoadBalancerIPs are CIDRs of LoadBalancer Service ingress
	// addresses (status.loadBalancer.ingress[].ip), announced like
	// serviceExternalIPs, /32s of externalTrafficPolicy Local Services
	// included.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	ServiceLoadBalancerIPs []ServiceIPBlock `json:"serviceLoadBalancerIPs,omitempty"`

	// Communities are added to every route the nodes advertise (their pod
	// blocks and service routes): standard "AS:value" (each part
	// 0-65535) or large "AS:value:value" (each part 0-4294967295).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Communities []Community `json:"communities,omitempty"`

	// PrefixAdvertisements add communities to the routes advertised inside
	// a CIDR (an IPPool's, or a service range), on top of communities, as
	// Calico's prefixAdvertisements do.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	PrefixAdvertisements []PrefixAdvertisement `json:"prefixAdvertisements,omitempty"`
}

// Community is a BGP community: standard "AS:value" or large
// "AS:value:value".
// +kubebuilder:validation:MaxLength=32
// +kubebuilder:validation:Pattern=`^[0-9]{1,10}:[0-9]{1,10}(:[0-9]{1,10})?$`
// +kubebuilder:validation:XValidation:rule="self.split(':').size() == 3 ? self.split(':').all(p, int(p) <= 4294967295) : self.split(':').all(p, int(p) <= 65535)",message="a standard community is AS:value with each part 0-65535; a large one AS:value:value with each part 0-4294967295"
type Community string

// PrefixAdvertisement adds communities to the routes inside one CIDR.
type PrefixAdvertisement struct {
	// CIDR is IPv4 or IPv6.
	// +kubebuilder:validation:MaxLength=49
	// +kubebuilder:validation:XValidation:rule="isCIDR(self) && cidr(self) == cidr(self).masked()",message="cidr must be an IPv4 or IPv6 network address in CIDR notation, e.g. 10.244.0.0/16 or fd00:10:244::/56"
	CIDR string `json:"cidr"`
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	Communities []Community `json:"communities"`
}

// ServiceIPBlock is one CIDR to advertise, IPv4 or IPv6 (a dual-stack
// cluster lists a range of each family).
type ServiceIPBlock struct {
	// +kubebuilder:validation:MaxLength=49
	// +kubebuilder:validation:XValidation:rule="isCIDR(self) && cidr(self) == cidr(self).masked() && cidr(self).prefixLength() > 0",message="cidr must be an IPv4 or IPv6 network address in CIDR notation other than 0.0.0.0/0 or ::/0, e.g. 10.96.0.0/12 or fd00:10:96::/112"
	CIDR string `json:"cidr"`
}

// BGPConfiguration holds the cluster's BGP settings. There is at most one,
// named "default"; without it every default applies.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=bgpconfig,categories=nexthop
// +kubebuilder:printcolumn:name="AS",type=integer,JSONPath=`.spec.asNumber`
// +kubebuilder:printcolumn:name="Mesh",type=boolean,JSONPath=`.spec.nodeToNodeMeshEnabled`
// +kubebuilder:printcolumn:name="RR Cluster ID",type=string,JSONPath=`.spec.routeReflectorClusterID`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name == 'default'",message="BGPConfiguration is a singleton: its name must be \"default\""
type BGPConfiguration struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Spec BGPConfigurationSpec `json:"spec,omitempty"`
}

// BGPConfigurationList is a list of BGPConfiguration.
// +kubebuilder:object:root=true
type BGPConfigurationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BGPConfiguration `json:"items"`
}

// ---------------------------------------------------------------------------
// BGPPeer

// BGPPeerSpec is one external (or explicitly configured) BGP neighbour and
// the nodes that peer with it.
// +kubebuilder:validation:XValidation:rule="!has(self.sourceAddress) || self.sourceAddress == 'UseNodeIP' || has(self.node)",message="sourceAddress as an address needs node: it is one node's address"
// +kubebuilder:validation:XValidation:rule="!has(self.sourceAddress) || !isIP(self.sourceAddress) || !isIP(self.peerIP) || ip(self.sourceAddress).family() == ip(self.peerIP).family()",message="sourceAddress must be of the peerIP's family: an IPv6 session speaks from an IPv6 address, an IPv4 one from an IPv4 address"
// +kubebuilder:validation:XValidation:rule="!has(self.keepOriginalNextHop) || !self.keepOriginalNextHop || (has(self.sourceAddress) && self.sourceAddress != 'UseNodeIP')",message="keepOriginalNextHop needs a sourceAddress other than UseNodeIP: the next hop is the node address already"
// +kubebuilder:validation:XValidation:rule="!has(self.ebgpMultihop) || !has(self.ttlSecurity)",message="ebgpMultihop and ttlSecurity are mutually exclusive: ttlSecurity sets the TTL itself"
// +kubebuilder:validation:XValidation:rule="!(has(self.node) && has(self.nodeSelector))",message="node and nodeSelector are mutually exclusive: set one of them, or neither to peer from every node"
// +kubebuilder:validation:XValidation:rule="!has(self.holdTime) || duration(self.holdTime) >= duration('3s')",message="holdTime must be at least 3s"
// +kubebuilder:validation:XValidation:rule="!has(self.keepaliveTime) || duration(self.keepaliveTime) > duration('0s')",message="keepaliveTime must be positive"
// +kubebuilder:validation:XValidation:rule="!has(self.keepaliveTime) || !has(self.holdTime) || duration(self.keepaliveTime).getMilliseconds() * 3 <= duration(self.holdTime).getMilliseconds()",message="keepaliveTime must be at most a third of holdTime"
type BGPPeerSpec struct {
	// PeerIP is the neighbour's IPv4 or IPv6 address. The session carries
	// the routes of that family only (IPv4 unicast with an IPv4 peer, IPv6
	// unicast with an IPv6 one): a dual-stack node that should exchange
	// both families with a router needs a BGPPeer for each of the
	// router's addresses. An IPv6 peer must be a global or unique local
	// address, not a link-local one.
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self)",message="peerIP must be a valid IPv4 or IPv6 address, e.g. 192.0.2.254 or fd00:192::fe"
	// +kubebuilder:validation:XValidation:rule="!isIP(self) || !ip(self).isLinkLocalUnicast()",message="peerIP must not be link-local (169.254.0.0/16, fe80::/10): peer over a global or unique local address"
	PeerIP string `json:"peerIP"`

	// ASNumber is the neighbour's AS. Equal to the node's AS means iBGP.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=4294967294
	ASNumber int64 `json:"asNumber"`

	// Node restricts the peering to the one node of this name.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Node string `json:"node,omitempty"`

	// NodeSelector restricts the peering to the nodes whose labels match,
	// e.g. the nodes of one rack for that rack's top-of-rack router. With
	// neither node nor nodeSelector every node peers.
	// +optional
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`

	// Port is the neighbour's BGP port. 179 when unset.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port *int32 `json:"port,omitempty"`

	// Password enables TCP MD5 (RFC 2385) with a key from a Secret in the
	// daemon's namespace (nexthop-system).
	// +optional
	Password *BGPPassword `json:"password,omitempty"`

	// HoldTime for the session; the node default (9s) when unset. At least 3s.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	HoldTime *metav1.Duration `json:"holdTime,omitempty"`

	// KeepaliveTime defaults to a third of the hold time and may not exceed it.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	KeepaliveTime *metav1.Duration `json:"keepaliveTime,omitempty"`

	// GracefulRestart (RFC 4724) lets the neighbour keep our routes while
	// the daemon restarts.
	// +optional
	GracefulRestart *GracefulRestart `json:"gracefulRestart,omitempty"`

	// MaxPrefixes caps the routes accepted from this neighbour; past it the
	// session is shut down rather than flooding the node's routing table.
	// +optional
	// +kubebuilder:validation:Minimum=1
	MaxPrefixes *int64 `json:"maxPrefixes,omitempty"`

	// Passive makes the nodes wait for the neighbour to connect.
	// +optional
	Passive *bool `json:"passive,omitempty"`

	// EBGPMultihop lets an eBGP neighbour be up to ttl hops away (e.g. a
	// loopback behind a router); eBGP is sent with TTL 1 otherwise.
	// +optional
	EBGPMultihop *EBGPMultihop `json:"ebgpMultihop,omitempty"`

	// TTLSecurity enables GTSM (RFC 5082): packets are sent with TTL 255
	// and only those that crossed at most this many hops are accepted.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=254
	TTLSecurity *int32 `json:"ttlSecurity,omitempty"`

	// SourceAddress is the session's local address: UseNodeIP (the
	// default: the node's address of the peerIP's family), or an address
	// of the one node this BGPPeer names in node, such as a loopback, of
	// the peerIP's family.
	// +optional
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="self == 'UseNodeIP' || isIP(self)",message="sourceAddress must be UseNodeIP or an IPv4 or IPv6 address"
	SourceAddress string `json:"sourceAddress,omitempty"`

	// KeepOriginalNextHop sends the node's block with the node address as
	// next hop rather than the session's source address (eBGP, with a
	// sourceAddress other than UseNodeIP).
	// +optional
	KeepOriginalNextHop bool `json:"keepOriginalNextHop,omitempty"`

	// NumAllowedLocalASNumbers accepts paths carrying the node's own AS up
	// to that many times (allowas-in): with one AS per rack, the nodes of
	// a rack learn each other's blocks back through their ToR.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10
	NumAllowedLocalASNumbers *int32 `json:"numAllowedLocalASNumbers,omitempty"`

	// AcceptPodBlocks lets the neighbour send prefixes inside the enabled
	// IPPools: the blocks of other nodes, relayed by a ToR when the mesh
	// is off. Never the node's own block. Refused otherwise.
	// +optional
	AcceptPodBlocks bool `json:"acceptPodBlocks,omitempty"`

	// ASPathPrepend adds the node's AS that many extra times to the routes
	// sent to this neighbour (eBGP only), to make them less preferred.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10
	ASPathPrepend *int32 `json:"asPathPrepend,omitempty"`

	// Filters names BGPFilters applied in order after the built-in safety
	// rules, which they can narrow but never widen. A missing BGPFilter
	// keeps this BGPPeer out until it exists.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	Filters []string `json:"filters,omitempty"`

	// BFD runs a BFD session (RFC 5880, single hop: the neighbour must be
	// directly connected) alongside the BGP session: when BFD goes down,
	// the BGP session is reset and the neighbour's routes dropped at once,
	// even under graceful restart.
	// +optional
	BFD *BFD `json:"bfd,omitempty"`
}

// EBGPMultihop is how far an eBGP neighbour may be.
type EBGPMultihop struct {
	// TTL is the most hops to the neighbour.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=255
	TTL int32 `json:"ttl"`
}

// BFD settings of one peering: a dead link is detected after multiplier
// missed packets, 900ms with the defaults.
// +kubebuilder:validation:XValidation:rule="!has(self.minTx) || (duration(self.minTx) >= duration('10ms') && duration(self.minTx) <= duration('60s'))",message="bfd.minTx must be between 10ms and 60s"
// +kubebuilder:validation:XValidation:rule="!has(self.minRx) || (duration(self.minRx) >= duration('10ms') && duration(self.minRx) <= duration('60s'))",message="bfd.minRx must be between 10ms and 60s"
type BFD struct {
	Enabled bool `json:"enabled"`
	// MinTx is the desired minimum interval between the node's packets.
	// 300ms when unset.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	MinTx *metav1.Duration `json:"minTx,omitempty"`
	// MinRx is the least interval at which the node wants the neighbour's
	// packets. 300ms when unset.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	MinRx *metav1.Duration `json:"minRx,omitempty"`
	// Multiplier is how many packets may be missed before the session
	// goes down. 3 when unset.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=255
	Multiplier *int32 `json:"multiplier,omitempty"`
}

// BGPPassword names where a session's TCP MD5 key is kept.
type BGPPassword struct {
	SecretKeyRef SecretKeyRef `json:"secretKeyRef"`
}

// SecretKeyRef is one key of a Secret in the daemon's namespace.
type SecretKeyRef struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Key string `json:"key"`
}

// GracefulRestart settings of one peering.
// +kubebuilder:validation:XValidation:rule="!has(self.restartTime) || (duration(self.restartTime) >= duration('1s') && duration(self.restartTime) <= duration('4095s'))",message="gracefulRestart.restartTime must be between 1s and 4095s (a 12-bit field of the BGP capability)"
type GracefulRestart struct {
	Enabled bool `json:"enabled"`
	// RestartTime is how long the neighbour keeps our routes after the
	// session drops. 120s when unset.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	RestartTime *metav1.Duration `json:"restartTime,omitempty"`
}

// BGPPeer is a BGP neighbour of some or all nodes, typically a top-of-rack
// router. Node-to-node peerings come from the mesh or route reflectors and
// need no BGPPeer.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,categories=nexthop
// +kubebuilder:printcolumn:name="Peer IP",type=string,JSONPath=`.spec.peerIP`
// +kubebuilder:printcolumn:name="AS",type=integer,JSONPath=`.spec.asNumber`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.node`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type BGPPeer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec BGPPeerSpec `json:"spec"`
}

// BGPPeerList is a list of BGPPeer.
// +kubebuilder:object:root=true
type BGPPeerList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BGPPeer `json:"items"`
}

// ---------------------------------------------------------------------------
// IPPool

// EncapMode says when traffic to another node's pods is encapsulated.
// +kubebuilder:validation:Enum=Never;CrossSubnet;Always
type EncapMode string

const (
	EncapNever       EncapMode = "Never"
	EncapCrossSubnet EncapMode = "CrossSubnet"
	EncapAlways      EncapMode = "Always"
)

// IPPoolSpec is a range pod addresses may come from.
// +kubebuilder:validation:XValidation:rule="!has(self.ipipMode) || !has(self.vxlanMode) || self.ipipMode == 'Never' || self.vxlanMode == 'Never'",message="ipipMode and vxlanMode cannot both be enabled: set one of them to Never"
// +kubebuilder:validation:XValidation:rule="!has(self.blockSize) || !isCIDR(self.cidr) || self.blockSize >= cidr(self.cidr).prefixLength()",message="blockSize must not be shorter than the pool's prefix length"
// +kubebuilder:validation:XValidation:rule="!has(self.blockSize) || !isCIDR(self.cidr) || (cidr(self.cidr).ip().family() == 4 ? self.blockSize >= 20 && self.blockSize <= 30 : self.blockSize >= 48 && self.blockSize <= 126)",message="blockSize must be 20-30 in an IPv4 pool and 48-126 in an IPv6 pool"
// +kubebuilder:validation:XValidation:rule="!has(self.ipipMode) || self.ipipMode == 'Never' || !isCIDR(self.cidr) || cidr(self.cidr).ip().family() == 4",message="ipipMode must be Never in an IPv6 pool: IP-in-IP carries IPv4 only (use vxlanMode to encapsulate IPv6 pod traffic)"
type IPPoolSpec struct {
	// CIDR of the pool, IPv4 or IPv6 (a dual-stack cluster has a pool of
	// each family). Immutable: to renumber, add a new pool and disable
	// this one.
	// +kubebuilder:validation:MaxLength=49
	// +kubebuilder:validation:XValidation:rule="isCIDR(self)",message="cidr must be an IPv4 or IPv6 CIDR, e.g. 10.244.0.0/16 or fd00:10:244::/56"
	// +kubebuilder:validation:XValidation:rule="!isCIDR(self) || cidr(self) == cidr(self).masked()",message="cidr must be a network address: no host bits set (e.g. 10.244.0.0/16, not 10.244.1.1/16)"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="cidr is immutable: create a new pool and disable this one"
	CIDR string `json:"cidr"`

	// BlockSize is the prefix length of the per-node blocks carved from the
	// pool by block-based IPAM: 20-30 in an IPv4 pool (26 when unset),
	// 48-126 in an IPv6 one (64 when unset). While nodes take their block
	// from node.spec.podCIDRs it is informational.
	// +optional
	// +kubebuilder:validation:Minimum=20
	// +kubebuilder:validation:Maximum=126
	BlockSize *int32 `json:"blockSize,omitempty"`

	// IPIPMode encapsulates pod traffic in IP-in-IP: Always, or only to
	// nodes in another subnet (CrossSubnet). IPv4 pools only.
	// +optional
	// +kubebuilder:default=Never
	IPIPMode EncapMode `json:"ipipMode,omitempty"`

	// VXLANMode encapsulates pod traffic in VXLAN; exclusive with IPIPMode.
	// An IPv6 pool's traffic goes over the IPv6 underlay (vxlan.deviceV6).
	// +optional
	// +kubebuilder:default=Never
	VXLANMode EncapMode `json:"vxlanMode,omitempty"`

	// NATOutgoing masquerades traffic from these pods to destinations
	// outside every pool (masquerade66 in an IPv6 pool, where it is
	// usually left off: IPv6 pods are routable).
	// +optional
	NATOutgoing bool `json:"natOutgoing,omitempty"`

	// NodeSelector limits the pool to matching nodes; all nodes when unset.
	// +optional
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`

	// Disabled stops new blocks (and node pod CIDRs) from being accepted in
	// the pool; addresses in use stay routed.
	// +optional
	Disabled bool `json:"disabled,omitempty"`
}

// IPPool is a range of pod addresses. While nodes get their block from
// node.spec.podCIDR (the kube-controller-manager's --allocate-node-cidrs), a
// node's block is accepted only if an enabled pool selecting the node
// contains it, and the pool's modes apply to it.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,categories=nexthop
// +kubebuilder:printcolumn:name="CIDR",type=string,JSONPath=`.spec.cidr`
// +kubebuilder:printcolumn:name="Block",type=integer,JSONPath=`.spec.blockSize`
// +kubebuilder:printcolumn:name="IPIP",type=string,JSONPath=`.spec.ipipMode`
// +kubebuilder:printcolumn:name="VXLAN",type=string,JSONPath=`.spec.vxlanMode`
// +kubebuilder:printcolumn:name="NAT",type=boolean,JSONPath=`.spec.natOutgoing`
// +kubebuilder:printcolumn:name="Disabled",type=boolean,JSONPath=`.spec.disabled`
type IPPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec IPPoolSpec `json:"spec"`
}

// IPPoolList is a list of IPPool.
// +kubebuilder:object:root=true
type IPPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []IPPool `json:"items"`
}

// ---------------------------------------------------------------------------
// BGPNodeStatus

// BGPNodeStatusStatus is what one node's speaker reports.
type BGPNodeStatusStatus struct {
	// AS the node speaks as.
	// +optional
	ASNumber int64 `json:"asNumber,omitempty"`
	// RouterID of the node's speaker.
	// +optional
	RouterID string `json:"routerID,omitempty"`
	// PodCIDR is the first of podCIDRs: the node's IPv4 block, or its
	// IPv6 one on an IPv6-only node.
	// +optional
	PodCIDR string `json:"podCIDR,omitempty"`
	// PodCIDRs are the blocks the node announces, one per family, IPv4
	// first.
	// +optional
	// +listType=atomic
	PodCIDRs []string `json:"podCIDRs,omitempty"`
	// EstablishedPeers counts the sessions in state established.
	EstablishedPeers int32 `json:"establishedPeers"`
	// TotalPeers counts every configured session.
	TotalPeers int32 `json:"totalPeers"`
	// Peers lists every configured session; a dual-stack node has one per
	// family with each neighbour, the address telling the family.
	// +optional
	// +listType=map
	// +listMapKey=address
	Peers []BGPPeerStatus `json:"peers,omitempty"`
	// LastUpdated is when the daemon last wrote this status; a stale value
	// means the daemon is not running.
	// +optional
	LastUpdated metav1.Time `json:"lastUpdated,omitempty"`
}

// BGPPeerStatus is one session's state.
type BGPPeerStatus struct {
	Address string `json:"address"`
	AS      int64  `json:"as"`
	// State is the BGP FSM state: idle, connect, active, opensent,
	// openconfirm, established.
	State string `json:"state"`
	// Since is when the session was established (unset while it is not).
	// +optional
	Since *metav1.Time `json:"since,omitempty"`
	// +optional
	PrefixesReceived int64 `json:"prefixesReceived"`
	// +optional
	PrefixesAccepted int64 `json:"prefixesAccepted"`
	// BFD is the peer's BFD session, when it has one.
	// +optional
	BFD *BFDSessionStatus `json:"bfd,omitempty"`
}

// BFDSessionStatus is one BFD session's state.
type BFDSessionStatus struct {
	// State is the node's end: Up, Down, Init or AdminDown; RemoteState
	// the neighbour's, as it last said.
	State string `json:"state"`
	// +optional
	RemoteState string `json:"remoteState,omitempty"`
	// Diag says why the session last left Up.
	// +optional
	Diag string `json:"diag,omitempty"`
	// DetectTime is how long the neighbour may be silent before the
	// session goes down, as negotiated.
	// +optional
	// +kubebuilder:validation:Type=string
	DetectTime *metav1.Duration `json:"detectTime,omitempty"`
}

// BGPNodeStatus reports one node's BGP sessions. It is named after the node
// and written only by that node's daemon (through the status subresource);
// it is owned by the Node object so it goes away with it.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=bgpstatus,categories=nexthop
// +kubebuilder:printcolumn:name="AS",type=integer,JSONPath=`.status.asNumber`
// +kubebuilder:printcolumn:name="Pod CIDRs",type=string,JSONPath=`.status.podCIDRs`
// +kubebuilder:printcolumn:name="Established",type=integer,JSONPath=`.status.establishedPeers`
// +kubebuilder:printcolumn:name="Peers",type=integer,JSONPath=`.status.totalPeers`
// +kubebuilder:printcolumn:name="Updated",type=date,JSONPath=`.status.lastUpdated`
type BGPNodeStatus struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Status BGPNodeStatusStatus `json:"status,omitempty"`
}

// BGPNodeStatusList is a list of BGPNodeStatus.
// +kubebuilder:object:root=true
type BGPNodeStatusList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BGPNodeStatus `json:"items"`
}

// ---------------------------------------------------------------------------
// BGPFilter

// BGPFilterAction is what a matching rule does.
// +kubebuilder:validation:Enum=Accept;Reject
type BGPFilterAction string

// BGPFilterMatchOperator relates a prefix to a rule's cidr.
// +kubebuilder:validation:Enum=Equal;NotEqual;In;NotIn
type BGPFilterMatchOperator string

// BGPFilterRuleV4 matches IPv4 prefixes. Without cidr it matches every
// prefix (within prefixLength, if set).
// +kubebuilder:validation:XValidation:rule="has(self.cidr) == has(self.matchOperator)",message="cidr and matchOperator go together"
// +kubebuilder:validation:XValidation:rule="!has(self.prefixLength) || !has(self.matchOperator) || self.matchOperator == 'In' || self.matchOperator == 'NotIn'",message="prefixLength applies to In, NotIn or a rule without cidr"
type BGPFilterRuleV4 struct {
	Action BGPFilterAction `json:"action"`
	// CIDR the prefix is compared with.
	// +optional
	// +kubebuilder:validation:MaxLength=18
	// +kubebuilder:validation:XValidation:rule="isCIDR(self) && cidr(self).ip().family() == 4",message="cidr must be an IPv4 CIDR, e.g. 10.244.0.0/16"
	CIDR string `json:"cidr,omitempty"`
	// MatchOperator: Equal (exactly cidr), NotEqual, In (cidr or a
	// more-specific of it), NotIn.
	// +optional
	MatchOperator BGPFilterMatchOperator `json:"matchOperator,omitempty"`
	// PrefixLength bounds the matched prefixes' length.
	// +optional
	PrefixLength *BGPFilterPrefixLengthV4 `json:"prefixLength,omitempty"`
}

// BGPFilterPrefixLengthV4 bounds a prefix length.
// +kubebuilder:validation:XValidation:rule="!has(self.min) || !has(self.max) || self.min <= self.max",message="prefixLength.min must not exceed max"
type BGPFilterPrefixLengthV4 struct {
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=32
	Min *int32 `json:"min,omitempty"`
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=32
	Max *int32 `json:"max,omitempty"`
}

// BGPFilterRuleV6 matches IPv6 prefixes. Without cidr it matches every
// prefix (within prefixLength, if set).
// +kubebuilder:validation:XValidation:rule="has(self.cidr) == has(self.matchOperator)",message="cidr and matchOperator go together"
// +kubebuilder:validation:XValidation:rule="!has(self.prefixLength) || !has(self.matchOperator) || self.matchOperator == 'In' || self.matchOperator == 'NotIn'",message="prefixLength applies to In, NotIn or a rule without cidr"
type BGPFilterRuleV6 struct {
	Action BGPFilterAction `json:"action"`
	// CIDR the prefix is compared with.
	// +optional
	// +kubebuilder:validation:MaxLength=49
	// +kubebuilder:validation:XValidation:rule="isCIDR(self) && cidr(self).ip().family() == 6",message="cidr must be an IPv6 CIDR, e.g. fd00:10:244::/56"
	CIDR string `json:"cidr,omitempty"`
	// MatchOperator: Equal (exactly cidr), NotEqual, In (cidr or a
	// more-specific of it), NotIn.
	// +optional
	MatchOperator BGPFilterMatchOperator `json:"matchOperator,omitempty"`
	// PrefixLength bounds the matched prefixes' length.
	// +optional
	PrefixLength *BGPFilterPrefixLengthV6 `json:"prefixLength,omitempty"`
}

// BGPFilterPrefixLengthV6 bounds an IPv6 prefix length.
// +kubebuilder:validation:XValidation:rule="!has(self.min) || !has(self.max) || self.min <= self.max",message="prefixLength.min must not exceed max"
type BGPFilterPrefixLengthV6 struct {
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=128
	Min *int32 `json:"min,omitempty"`
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=128
	Max *int32 `json:"max,omitempty"`
}

// BGPFilterSpec lists rules for routes received from (import) and sent to
// (export) the BGPPeers that name the filter; an IPv6 peer's routes meet
// the V6 lists and an IPv4 peer's the V4 ones. In each list the first
// matching rule decides; a prefix no rule matches passes on.
type BGPFilterSpec struct {
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +listType=atomic
	ImportV4 []BGPFilterRuleV4 `json:"importV4,omitempty"`
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +listType=atomic
	ExportV4 []BGPFilterRuleV4 `json:"exportV4,omitempty"`
	// ImportV6 and ExportV6 judge IPv6 prefixes, as the V4 lists IPv4 ones
	// (Calico's names).
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +listType=atomic
	ImportV6 []BGPFilterRuleV6 `json:"importV6,omitempty"`
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +listType=atomic
	ExportV6 []BGPFilterRuleV6 `json:"exportV6,omitempty"`
}

// BGPFilter is a list of accept/reject rules by prefix, applied to the
// BGPPeers that name it on top of the built-in safety rules.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,categories=nexthop
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type BGPFilter struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec BGPFilterSpec `json:"spec"`
}

// BGPFilterList is a list of BGPFilter.
// +kubebuilder:object:root=true
type BGPFilterList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BGPFilter `json:"items"`
}
