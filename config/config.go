// Package config holds the node daemon's settings. One type serves both the
// standalone YAML file and (later) the Kubernetes API, so every consumer sees
// the same validated shape whatever the source.
package config

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Defaults applied by Load/Normalize when a field is left empty.
const (
	// DefaultGRPCListen is a unix socket only root can use: on loopback
	// TCP every local user and every hostNetwork pod could reach it.
	DefaultGRPCListen     = "unix:///run/nexthop/gobgp.sock"
	DefaultBGPPort        = 179
	DefaultHoldTime       = 9 * time.Second
	DefaultInitialSync    = 30 * time.Second
	DefaultResyncInterval = 60 * time.Second
	DefaultIPAMSocket     = "/run/nexthop/nexthop.sock"
	DefaultMetricsListen  = "127.0.0.1:9091"
	DefaultStateDir       = "/var/lib/nexthop"
	DefaultRestartTime    = 120 * time.Second
	// DefaultMaxPrefixes leaves room for large clusters: a ToR echoes every
	// node's block back, and GoBGP counts those before dropping them.
	DefaultMaxPrefixes = 20000
	DefaultVXLANVNI    = 4096
	DefaultVXLANPort   = 4789
	DefaultVXLANDevice = "vxlan.nexthop"
	DefaultVXLAN6Dev   = "vxlan6.nexthop"
	MinHoldTime        = 3 * time.Second
	// MaxHoldTime is the most the OPEN message's 16-bit field can carry.
	MaxHoldTime = 65535 * time.Second
	// MinInitialSync keeps the start-up prune behind session re-establishment:
	// GoBGP holds a dropped peer idle for 5 s and refuses it meanwhile, so a
	// restarted node's iBGP sessions take 6-9 s to return. Pruning earlier
	// deletes good routes only to re-add them.
	MinInitialSync = 10 * time.Second
)

// Duration is a time.Duration that reads and writes as "9s" in YAML/JSON.
type Duration struct{ time.Duration }

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		// Accept a bare number as seconds, as BGP people write hold times.
		var n float64
		if err2 := json.Unmarshal(b, &n); err2 != nil {
			return fmt.Errorf("duration: want a string like \"9s\" or seconds, got %s", b)
		}
		d.Duration = time.Duration(n * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	d.Duration = v
	return nil
}

// EncapMode says when traffic to a remote pod block is encapsulated, as
// Calico's ipipMode and vxlanMode do.
type EncapMode string

const (
	// Never routes natively: the underlay must carry pod addresses.
	Never EncapMode = "Never"
	// CrossSubnet encapsulates only towards next hops outside the node's
	// directly connected subnets.
	CrossSubnet EncapMode = "CrossSubnet"
	// Always encapsulates everything towards remote pod blocks.
	Always EncapMode = "Always"
)

// VXLANSettings configure the VXLAN device used when vxlanMode is not Never.
type VXLANSettings struct {
	VNI    int    `json:"vni,omitempty"`
	Port   int    `json:"port,omitempty"`
	Device string `json:"device,omitempty"`
	// DeviceV6 carries IPv6 pod traffic over the IPv6 underlay (a VXLAN
	// device has one underlay family), as Calico's vxlan-v6.calico does.
	DeviceV6 string `json:"deviceV6,omitempty"`
}

// Peer is one BGP neighbour. A session carries the family of its address:
// IPv4 unicast with an IPv4 peer, IPv6 unicast with an IPv6 one, so a
// dual-stack node lists each neighbour once per family.
type Peer struct {
	Address netip.Addr `json:"address"`
	AS      uint32     `json:"as"`
	// Password enables TCP MD5 (RFC 2385). Never logged.
	Password string `json:"password,omitempty"`
	// HoldTime of 0 means the node default.
	HoldTime Duration `json:"holdTime,omitempty"`
	// Keepalive of 0 means a third of the hold time.
	Keepalive Duration `json:"keepalive,omitempty"`
	// Port to connect to; 0 means 179.
	Port uint16 `json:"port,omitempty"`
	// Description is free text shown in logs.
	Description string `json:"description,omitempty"`
	// GracefulRestart (RFC 4724) is on unless disabled: the peer keeps our
	// routes while we restart, and we keep its routes while it does.
	GracefulRestart GracefulRestart `json:"gracefulRestart,omitempty"`
	// MaxPrefixes is how many prefixes the peer may send before its
	// session is torn down; 0 means DefaultMaxPrefixes.
	MaxPrefixes uint32 `json:"maxPrefixes,omitempty"`
	// Node says the peer is another node of the cluster; unset means "same
	// AS as this node". Nodes may send only pod-pool prefixes; external
	// peers may send anything but pod-pool prefixes, or only Accept.
	Node *bool `json:"node,omitempty"`
	// Accept, for an external peer, lists the only prefixes (and their
	// more-specifics) it may send.
	Accept []netip.Prefix `json:"accept,omitempty"`
	// RouteReflectorClient makes this node a route reflector for the peer;
	// Config.RouteReflectorClusterID must be set.
	RouteReflectorClient bool `json:"routeReflectorClient,omitempty"`
	// Passive makes this node wait for the peer to connect. Unset means
	// automatic: for iBGP peers (other nodes) the node with the higher
	// address is passive, because two GoBGP speakers that both connect can
	// keep rejecting each other in their fixed 5 s idle-hold windows
	// (osrg/gobgp#2336); external peers are always connected to.
	Passive *bool `json:"passive,omitempty"`
	// EBGPMultihop lets an external peer be up to TTL hops away (GoBGP
	// sends eBGP with TTL 1 otherwise). Not with TTLSecurity.
	EBGPMultihop *Multihop `json:"ebgpMultihop,omitempty"`
	// TTLSecurity is GTSM (RFC 5082): packets go out with TTL 255 and
	// only those that crossed at most this many hops are accepted.
	TTLSecurity uint8 `json:"ttlSecurity,omitempty"`
	// SourceAddress is the session's local address (an address of this
	// node, e.g. a loopback); unset means the node's address.
	SourceAddress netip.Addr `json:"sourceAddress,omitempty"`
	// KeepOriginalNextHop sends this node's block to an external peer
	// with the node's address as next hop instead of the session's
	// source address (with SourceAddress; the next hop is the node's
	// address anyway otherwise).
	KeepOriginalNextHop bool `json:"keepOriginalNextHop,omitempty"`
	// NumAllowedLocalASNumbers accepts paths that carry this node's AS up
	// to that many times (allowas-in), for one AS per rack.
	NumAllowedLocalASNumbers uint8 `json:"numAllowedLocalASNumbers,omitempty"`
	// AcceptPodBlocks lets an external peer send prefixes inside the pod
	// pools (other nodes' blocks, relayed by a ToR), which are refused
	// otherwise. Never this node's own block.
	AcceptPodBlocks bool `json:"acceptPodBlocks,omitempty"`
	// ASPathPrepend adds this node's AS that many extra times to what it
	// sends the peer.
	ASPathPrepend uint8 `json:"asPathPrepend,omitempty"`
	// Filters apply, in order, after the built-in safety rules: the first
	// rule matching a prefix decides; a prefix no rule matches passes.
	Filters []Filter `json:"filters,omitempty"`
	// BFD runs a BFD session (RFC 5880, single hop) with the peer: when
	// it goes down the BGP session is reset at once, even under graceful
	// restart. The peer must be directly connected.
	BFD BFD `json:"bfd,omitzero"`
}

// Multihop is how far an eBGP peer may be.
type Multihop struct {
	TTL uint8 `json:"ttl"`
}

// Filter is a named list of import and export rules (Calico's BGPFilter).
// The V4 rules judge IPv4 prefixes and the V6 rules IPv6 ones.
type Filter struct {
	Name     string       `json:"name,omitempty"`
	ImportV4 []FilterRule `json:"importV4,omitempty"`
	ExportV4 []FilterRule `json:"exportV4,omitempty"`
	ImportV6 []FilterRule `json:"importV6,omitempty"`
	ExportV6 []FilterRule `json:"exportV6,omitempty"`
}

// Import is the import rules for prefixes of pfx's family.
func (f Filter) Import(v6 bool) []FilterRule {
	if v6 {
		return f.ImportV6
	}
	return f.ImportV4
}

// Export is the export rules for prefixes of pfx's family.
func (f Filter) Export(v6 bool) []FilterRule {
	if v6 {
		return f.ExportV6
	}
	return f.ExportV4
}

// Filter rule actions and match operators.
const (
	FilterAccept   = "Accept"
	FilterReject   = "Reject"
	MatchEqual     = "Equal"
	MatchNotEqual  = "NotEqual"
	MatchIn        = "In"
	MatchNotIn     = "NotIn"
	maxPathPrepend = 10
)

// FilterRule matches prefixes by CIDR and length. Without a CIDR it
// matches every prefix (of PrefixLength, if set).
type FilterRule struct {
	Action string       `json:"action"`
	CIDR   netip.Prefix `json:"cidr,omitempty"`
	// MatchOperator: Equal (exactly CIDR), NotEqual, In (CIDR or a
	// more-specific, within PrefixLength), NotIn. Required with CIDR.
	MatchOperator string        `json:"matchOperator,omitempty"`
	PrefixLength  *PrefixLength `json:"prefixLength,omitempty"`
}

// PrefixLength bounds the length of matched prefixes; 0 means unbounded.
type PrefixLength struct {
	Min uint8 `json:"min,omitempty"`
	Max uint8 `json:"max,omitempty"`
}

// Lengths is the range of prefix lengths r matches (In, NotIn and no CIDR)
// among prefixes of bits bits (32 or 128).
func (r FilterRule) Lengths(bits int) (lo, hi int) {
	lo, hi = 0, bits
	if r.CIDR.IsValid() {
		lo = r.CIDR.Bits()
	}
	if r.PrefixLength != nil {
		if r.PrefixLength.Min > 0 {
			lo = max(lo, int(r.PrefixLength.Min))
		}
		if r.PrefixLength.Max > 0 {
			hi = int(r.PrefixLength.Max)
		}
	}
	return lo, hi
}

// Matches reports whether r applies to pfx.
func (r FilterRule) Matches(pfx netip.Prefix) bool {
	lo, hi := r.Lengths(pfx.Addr().BitLen())
	in := pfx.Addr().Is6() == r.v6(pfx) && pfx.Bits() >= lo && pfx.Bits() <= hi && (!r.CIDR.IsValid() || r.CIDR.Contains(pfx.Addr()))
	switch r.MatchOperator {
	case MatchEqual:
		return pfx.Masked() == r.CIDR
	case MatchNotEqual:
		return pfx.Masked() != r.CIDR
	case MatchNotIn:
		return !in
	}
	return in
}

// v6 is the family r applies to: its CIDR's, or pfx's without one.
func (r FilterRule) v6(pfx netip.Prefix) bool {
	if r.CIDR.IsValid() {
		return r.CIDR.Addr().Is6()
	}
	return pfx.Addr().Is6()
}

// validateRule reports what is wrong with r, a rule for prefixes of bits
// bits (32 or 128), or "".
func validateRule(r FilterRule, bits int) string {
	if r.Action != FilterAccept && r.Action != FilterReject {
		return fmt.Sprintf("action %q is not one of Accept, Reject", r.Action)
	}
	switch r.MatchOperator {
	case "":
		if r.CIDR.IsValid() {
			return "cidr needs a matchOperator (Equal, NotEqual, In, NotIn)"
		}
	case MatchEqual, MatchNotEqual, MatchIn, MatchNotIn:
		if !r.CIDR.IsValid() {
			return fmt.Sprintf("matchOperator %s needs a cidr", r.MatchOperator)
		}
	default:
		return fmt.Sprintf("matchOperator %q is not one of Equal, NotEqual, In, NotIn", r.MatchOperator)
	}
	if why := badPrefix(r.CIDR); r.CIDR.IsValid() && why != "" {
		return why
	}
	if r.CIDR.IsValid() && r.CIDR.Addr().BitLen() != bits {
		return fmt.Sprintf("cidr %s is not %s", r.CIDR, familyName(bits == 128))
	}
	if pl := r.PrefixLength; pl != nil {
		if r.MatchOperator == MatchEqual || r.MatchOperator == MatchNotEqual {
			return "prefixLength applies to In, NotIn or a rule without cidr, not to " + r.MatchOperator
		}
		lo, hi := r.Lengths(bits)
		switch {
		case int(pl.Min) > bits || int(pl.Max) > bits:
			return fmt.Sprintf("prefixLength %d-%d: lengths are 0-%d", pl.Min, pl.Max, bits)
		case r.CIDR.IsValid() && pl.Min > 0 && int(pl.Min) < r.CIDR.Bits():
			return fmt.Sprintf("prefixLength.min %d is shorter than cidr %s", pl.Min, r.CIDR)
		case lo > hi:
			return fmt.Sprintf("prefixLength: min %d is above max %d", lo, hi)
		}
	}
	return ""
}

// BFD configures a peer's BFD session. Intervals default to 300 ms and the
// multiplier to 3 once enabled: a dead link is detected within 900 ms.
type BFD struct {
	Enabled bool `json:"enabled,omitempty"`
	// MinTx is the desired minimum interval between our packets, MinRx the
	// least interval we want the peer's to arrive at.
	MinTx Duration `json:"minTx,omitzero"`
	MinRx Duration `json:"minRx,omitzero"`
	// Multiplier is how many of the peer's packets may be missed before
	// the session goes down.
	Multiplier int `json:"multiplier,omitempty"`
}

// BFD defaults and bounds (the bfd package's, which are FRR's).
const (
	DefaultBFDInterval   = 300 * time.Millisecond
	DefaultBFDMultiplier = 3
	MinBFDInterval       = 10 * time.Millisecond
	MaxBFDInterval       = time.Minute
)

// GracefulRestart configures RFC 4724 graceful restart with one peer.
type GracefulRestart struct {
	// Enabled defaults to true.
	Enabled *bool `json:"enabled,omitempty"`
	// RestartTime is how long the peer should keep our routes while we
	// restart; 0 means DefaultRestartTime.
	RestartTime Duration `json:"restartTime,omitempty"`
}

// On reports whether graceful restart is enabled.
func (g GracefulRestart) On() bool { return g.Enabled == nil || *g.Enabled }

// IsNode resolves Node for this node's AS.
func (p Peer) IsNode(localAS uint32) bool {
	if p.Node != nil {
		return *p.Node
	}
	return p.AS == localAS
}

// IsPassive resolves Passive for this node's address of the peer's family
// and AS.
func (p Peer) IsPassive(local netip.Addr, localAS uint32) bool {
	if p.Passive != nil {
		return *p.Passive
	}
	return p.AS == localAS && p.LocalAddress(local).Compare(p.Address) > 0
}

// Config is everything one node daemon needs.
type Config struct {
	NodeName string `json:"nodeName"`
	// Address is the node's underlay address: BGP next hop and session
	// source. IPv4 on an IPv4 or dual-stack node, IPv6 on an IPv6-only one.
	Address netip.Addr `json:"address"`
	// AddressV6 is a dual-stack node's IPv6 underlay address: the next hop
	// of its IPv6 block and the source of its sessions with IPv6 peers.
	// On an IPv6-only node Normalize sets it to Address.
	AddressV6 netip.Addr `json:"addressV6,omitempty"`
	// RouterID defaults to Address when that is IPv4; an IPv6-only node
	// derives it from a hash of NodeName (Calico's CALICO_ROUTER_ID=hash)
	// unless it is set.
	RouterID netip.Addr `json:"routerID,omitempty"`
	LocalAS  uint32     `json:"localAS"`
	// RouteReflectorClusterID, when set, makes this node a route reflector
	// with that cluster ID for the peers marked routeReflectorClient.
	RouteReflectorClusterID netip.Addr `json:"routeReflectorClusterID,omitempty"`
	// Pools are the cluster's pod address pools: the only prefixes nodes
	// may announce, and ones external peers may not. Empty means no pool
	// restriction (logged as a warning at start).
	Pools []netip.Prefix `json:"pools,omitempty"`
	// AcceptDefaultRoute lets peers install 0.0.0.0/0; refused otherwise.
	AcceptDefaultRoute bool `json:"acceptDefaultRoute,omitempty"`
	// PodCIDRs are the node's blocks, at most one per family (Kubernetes'
	// spec.podCIDRs): announced to peers and blackholed locally.
	PodCIDRs []netip.Prefix `json:"podCIDRs,omitempty"`
	// PodCIDR is the single-family spelling, `podCIDR: X` for
	// `podCIDRs: [X]`; Normalize moves it into PodCIDRs and clears it.
	PodCIDR netip.Prefix `json:"podCIDR,omitempty"`
	// NATOutgoing masquerades traffic from this node's IPv4 pods to
	// destinations outside Pools, PodCIDR and NATOutgoingExclude behind the
	// node's address, as Calico's IPPool natOutgoing does. In Kubernetes
	// the IPPool holding the node's block decides it. Pod-to-pod traffic
	// and connections opened by nodes to pods are never translated.
	NATOutgoing bool `json:"natOutgoing,omitempty"`
	// NATOutgoingV6 does the same for the node's IPv6 block (masquerade66).
	// Off by default, as on Calico's IPv6 pools: IPv6 pods are routable.
	NATOutgoingV6 bool `json:"natOutgoingV6,omitempty"`
	// NATOutgoingExclude lists further destinations that keep the pod's
	// own address: other cluster ranges such as the service CIDR, or the
	// underlay when pods must reach other nodes untranslated.
	NATOutgoingExclude []netip.Prefix `json:"natOutgoingExclude,omitempty"`
	// ServiceCIDRs are announced to external peers (those that are not
	// nodes: ToRs) with this node as next hop, never to other nodes or
	// reflectors, so that the ToR spreads service traffic over the nodes
	// by ECMP, as Calico's serviceClusterIPs do. In Kubernetes they come
	// from BGPConfiguration, per-Service /32s included.
	ServiceCIDRs []netip.Prefix `json:"serviceCIDRs,omitempty"`
	// Communities go on every route the node advertises (its block and
	// ServiceCIDRs): standard "AS:value" or large "AS:value:value".
	Communities []string `json:"communities,omitempty"`
	// PrefixAdvertisements add communities to the advertised routes inside
	// a CIDR, on top of Communities.
	PrefixAdvertisements []PrefixAdvertisement `json:"prefixAdvertisements,omitempty"`
	// BGPPort the speaker listens on; 0 means 179, -1 disables listening.
	BGPPort  int32    `json:"bgpPort,omitempty"`
	HoldTime Duration `json:"holdTime,omitempty"`
	Peers    []Peer   `json:"peers,omitempty"`
	// GRPCListen is where GoBGP's own gRPC API is served (for the gobgp CLI):
	// unix:///path (the default, usable by root only), host:port, or "none".
	// The API is read-only and shows no passwords unless opted in below.
	GRPCListen string `json:"grpcListen,omitempty"`
	// GRPCAllowWrites lets the API change BGP state (add paths and peers,
	// shut sessions down, ...), for debugging. The daemon still undoes, at
	// each resync, whatever departs from its config.
	GRPCAllowWrites bool `json:"grpcAllowWrites,omitempty"`
	// GRPCAllowRemote lets grpcListen be a TCP address other than loopback.
	GRPCAllowRemote bool `json:"grpcAllowRemote,omitempty"`
	// MetricsListen serves Prometheus /metrics and the /status report that
	// `nexthopd status` reads. Loopback by default; "none" disables it.
	MetricsListen string `json:"metricsListen,omitempty"`
	// InitialSync bounds how long the route reconciler waits for peers after
	// start before it deletes its own stale kernel routes.
	InitialSync Duration `json:"initialSync,omitempty"`
	// ResyncInterval is how often kernel routes are re-checked against the
	// desired set (routes vanish on link flaps and network-manager restarts).
	ResyncInterval Duration `json:"resyncInterval,omitempty"`
	// IPIPMode and VXLANMode choose encapsulation; at most one may be
	// other than Never. IP-in-IP needs the kernel's ipip module and an
	// underlay that passes IP protocol 4; VXLAN suits clouds that drop it.
	IPIPMode  EncapMode     `json:"ipipMode,omitempty"`
	VXLANMode EncapMode     `json:"vxlanMode,omitempty"`
	VXLAN     VXLANSettings `json:"vxlan,omitempty"`
	// MTU for pods; 0 means the underlay's MTU less the encapsulation
	// overhead of the mode in force (20 for IP-in-IP, 50 for VXLAN).
	MTU int `json:"mtu,omitempty"`
	// UnderlayInterface names the interface holding Address; found by
	// address when empty.
	UnderlayInterface string `json:"underlayInterface,omitempty"`
	IPAMSocket        string `json:"ipamSocket,omitempty"`
	StateDir          string `json:"stateDir,omitempty"`
	LogLevel          string `json:"logLevel,omitempty"`
}

// Load reads, defaults and validates a standalone YAML config file.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML (or JSON), rejecting unknown fields, then defaults and
// validates the result.
func Parse(b []byte) (*Config, error) {
	// YAML to JSON without coercing into the target's types: sigs.k8s.io/
	// yaml would turn an unquoted `password: 0123` (YAML 1.1 octal) into
	// the string "83". A number where a string belongs is refused instead.
	j, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("parse: %w (quote values that look like numbers)", err)
	}
	c.Normalize()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Normalize fills defaults in place.
func (c *Config) Normalize() {
	if c.Address.Is6() && !c.AddressV6.IsValid() {
		c.AddressV6 = c.Address
	}
	if c.PodCIDR.IsValid() && len(c.PodCIDRs) == 0 {
		c.PodCIDRs = []netip.Prefix{c.PodCIDR}
		c.PodCIDR = netip.Prefix{}
	}
	for i := range c.PodCIDRs {
		c.PodCIDRs[i] = c.PodCIDRs[i].Masked()
	}
	if !c.RouterID.IsValid() {
		c.RouterID = c.Address
		if !c.Address.Is4() && c.NodeName != "" {
			c.RouterID = HashRouterID(c.NodeName)
		}
	}
	c.BGPPort = cmp.Or(c.BGPPort, DefaultBGPPort)
	c.HoldTime.Duration = cmp.Or(c.HoldTime.Duration, DefaultHoldTime)
	c.GRPCListen = cmp.Or(c.GRPCListen, DefaultGRPCListen)
	c.MetricsListen = cmp.Or(c.MetricsListen, DefaultMetricsListen)
	c.InitialSync.Duration = cmp.Or(c.InitialSync.Duration, DefaultInitialSync)
	c.ResyncInterval.Duration = cmp.Or(c.ResyncInterval.Duration, DefaultResyncInterval)
	c.IPAMSocket = cmp.Or(c.IPAMSocket, DefaultIPAMSocket)
	c.StateDir = cmp.Or(c.StateDir, DefaultStateDir)
	c.LogLevel = cmp.Or(c.LogLevel, "info")
	c.IPIPMode = cmp.Or(c.IPIPMode, Never)
	c.VXLANMode = cmp.Or(c.VXLANMode, Never)
	c.VXLAN.VNI = cmp.Or(c.VXLAN.VNI, DefaultVXLANVNI)
	c.VXLAN.Port = cmp.Or(c.VXLAN.Port, DefaultVXLANPort)
	c.VXLAN.Device = cmp.Or(c.VXLAN.Device, DefaultVXLANDevice)
	c.VXLAN.DeviceV6 = cmp.Or(c.VXLAN.DeviceV6, DefaultVXLAN6Dev)
	for i := range c.Pools {
		c.Pools[i] = c.Pools[i].Masked()
	}
	for i := range c.NATOutgoingExclude {
		c.NATOutgoingExclude[i] = c.NATOutgoingExclude[i].Masked()
	}
	for i := range c.ServiceCIDRs {
		c.ServiceCIDRs[i] = c.ServiceCIDRs[i].Masked()
	}
	for i := range c.PrefixAdvertisements {
		c.PrefixAdvertisements[i].CIDR = c.PrefixAdvertisements[i].CIDR.Masked()
	}
	for i := range c.Peers {
		p := &c.Peers[i]
		if p.HoldTime.Duration == 0 {
			p.HoldTime = c.HoldTime
		}
		if p.Keepalive.Duration == 0 {
			p.Keepalive.Duration = p.HoldTime.Duration / 3
		}
		p.Port = cmp.Or(p.Port, DefaultBGPPort)
		p.GracefulRestart.RestartTime.Duration = cmp.Or(p.GracefulRestart.RestartTime.Duration, DefaultRestartTime)
		p.MaxPrefixes = cmp.Or(p.MaxPrefixes, DefaultMaxPrefixes)
		if p.BFD.Enabled {
			p.BFD.MinTx.Duration = cmp.Or(p.BFD.MinTx.Duration, DefaultBFDInterval)
			p.BFD.MinRx.Duration = cmp.Or(p.BFD.MinRx.Duration, DefaultBFDInterval)
			p.BFD.Multiplier = cmp.Or(p.BFD.Multiplier, DefaultBFDMultiplier)
		}
		for j := range p.Accept {
			p.Accept[j] = p.Accept[j].Masked()
		}
		for j := range p.Filters {
			f := &p.Filters[j]
			for _, rs := range [][]FilterRule{f.ImportV4, f.ExportV4, f.ImportV6, f.ExportV6} {
				for k := range rs {
					rs[k].CIDR = rs[k].CIDR.Masked()
				}
			}
		}
	}
}

// LocalAddress is the session's source address: SourceAddress, or the
// node's address of the peer's family (see Config.AddressOf).
func (p Peer) LocalAddress(node netip.Addr) netip.Addr {
	if p.SourceAddress.IsValid() {
		return p.SourceAddress
	}
	return node
}

// Encap returns the encapsulation in force and its mode: "" and Never when
// routing is native only.
func (c *Config) Encap() (string, EncapMode) {
	switch {
	case c.IPIPMode != Never:
		return "ipip", c.IPIPMode
	case c.VXLANMode != Never:
		return "vxlan", c.VXLANMode
	}
	return "", Never
}

// validateBFD checks a peer's BFD settings; unset values count as defaults.
func validateBFD(f string, b BFD, bad func(field, format string, a ...any)) {
	for _, t := range []struct {
		name string
		d    time.Duration
	}{{"minTx", b.MinTx.Duration}, {"minRx", b.MinRx.Duration}} {
		if t.d != 0 && (t.d < MinBFDInterval || t.d > MaxBFDInterval) {
			bad(f+"."+t.name, "%s out of range %s-%s", t.d, MinBFDInterval, MaxBFDInterval)
		}
	}
	if b.Multiplier < 0 || b.Multiplier > 255 {
		bad(f+".multiplier", "%d out of range 1-255", b.Multiplier)
	}
}

// Validate reports every problem at once, each naming its field.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}
	if c.NodeName == "" {
		bad("nodeName", "required")
	}
	c.validateFamilies(bad)
	if c.LocalAS == 0 || c.LocalAS == 23456 || c.LocalAS == 65535 || c.LocalAS == 4294967295 {
		bad("localAS", "%d is not a usable AS number", c.LocalAS)
	}
	if c.NATOutgoing && len(c.Pools) == 0 {
		bad("natOutgoing", "needs pools: without them the other nodes' pods count as outside the cluster and would be translated")
	}
	if c.NATOutgoingV6 && len(c.Pools) == 0 {
		bad("natOutgoingV6", "needs pools: without them the other nodes' pods count as outside the cluster and would be translated")
	}
	if c.NATOutgoingV6 && !c.PodCIDROf(true).IsValid() {
		bad("natOutgoingV6", "the node has no IPv6 block to translate")
	}
	for i, p := range c.NATOutgoingExclude {
		f := fmt.Sprintf("natOutgoingExclude[%d]", i)
		switch {
		case badPrefix(p) != "":
			bad(f, "%s", badPrefix(p))
		case p.Bits() == 0:
			bad(f, "%s excludes every destination: set natOutgoing: false instead", p)
		}
	}
	c.validateAdvertisement(bad)
	if c.RouteReflectorClusterID.IsValid() && !c.RouteReflectorClusterID.Is4() {
		bad("routeReflectorClusterID", "%s is not an IPv4-style cluster ID", c.RouteReflectorClusterID)
	}
	if c.BGPPort < -1 || c.BGPPort > 65535 {
		bad("bgpPort", "%d out of range (-1 disables listening)", c.BGPPort)
	}
	if why := holdTimeProblem(c.HoldTime.Duration); why != "" {
		bad("holdTime", "%s %s", c.HoldTime, why)
	}
	for _, m := range []struct {
		field string
		mode  EncapMode
	}{{"ipipMode", c.IPIPMode}, {"vxlanMode", c.VXLANMode}} {
		switch m.mode {
		case Never, CrossSubnet, Always:
		default:
			bad(m.field, "%q is not one of Never, CrossSubnet, Always", m.mode)
		}
	}
	if c.IPIPMode != Never && c.VXLANMode != Never {
		bad("vxlanMode", "%s together with ipipMode %s: choose one encapsulation", c.VXLANMode, c.IPIPMode)
	}
	if c.VXLAN.VNI < 1 || c.VXLAN.VNI > 1<<24-1 {
		bad("vxlan.vni", "%d out of range 1-16777215", c.VXLAN.VNI)
	}
	if c.VXLAN.Port < 1 || c.VXLAN.Port > 65535 {
		bad("vxlan.port", "%d out of range 1-65535", c.VXLAN.Port)
	}
	for f, d := range map[string]string{"vxlan.device": c.VXLAN.Device, "vxlan.deviceV6": c.VXLAN.DeviceV6} {
		if len(d) > 15 || strings.ContainsAny(d, " /") {
			bad(f, "%q is not a valid interface name (at most 15 characters, no spaces or slashes)", d)
		}
	}
	if c.VXLAN.Device == c.VXLAN.DeviceV6 {
		bad("vxlan.deviceV6", "%q is also vxlan.device: each family's underlay needs its own device", c.VXLAN.DeviceV6)
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535) {
		bad("mtu", "%d out of range 576-65535 (0 detects it)", c.MTU)
	}
	if c.InitialSync.Duration < MinInitialSync {
		bad("initialSync", "%s is below the minimum %s (sessions take that long to return after a restart)", c.InitialSync, MinInitialSync)
	}
	if c.ResyncInterval.Duration < time.Second {
		bad("resyncInterval", "%s is below the minimum 1s", c.ResyncInterval)
	}
	// Listen addresses are checked here: a bad one found at start would
	// fail only after the kernel has been changed.
	if err := ValidateListen(c.MetricsListen); err != nil {
		bad("metricsListen", "%v", err)
	} else if c.MetricsListen != "none" && c.MetricsListen == c.GRPCListen {
		bad("metricsListen", "%s is also grpcListen", c.MetricsListen)
	}
	c.validateGRPC(bad)
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		bad("logLevel", "%q is not one of debug, info, warn, error", c.LogLevel)
	}
	c.validatePaths(bad)
	seen := map[netip.Addr]bool{}
	for i, p := range c.Peers {
		f := fmt.Sprintf("peers[%d]", i)
		if seen[p.Address] {
			bad(f+".address", "%s listed twice", p.Address)
		}
		seen[p.Address] = true
		c.validatePeer(f, p, bad)
	}
	return errors.Join(errs...)
}

// PeerProblems checks one peer against this node's config as Validate
// would, defaults filled in: a source of peers (kube) can leave out a bad
// one instead of refusing the whole config.
func (c *Config) PeerProblems(p Peer) error {
	cc := Config{HoldTime: c.HoldTime, Peers: []Peer{p}}
	cc.HoldTime.Duration = cmp.Or(cc.HoldTime.Duration, DefaultHoldTime)
	cc.Normalize()
	var errs []error
	c.validatePeer("", cc.Peers[0], func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", strings.TrimPrefix(field, "."), fmt.Sprintf(format, a...)))
	})
	return errors.Join(errs...)
}

// validatePeer checks peer p (field path f) of this node.
func (c *Config) validatePeer(f string, p Peer, bad func(field, format string, a ...any)) {
	own := c.AddressOf(p.Address.Is6())
	switch block, inBlock := c.inPodCIDRs(p.Address); {
	case !p.Address.IsValid():
		bad(f+".address", "required")
	case p.Address == c.Address || p.Address == c.AddressV6:
		bad(f+".address", "%s is this node's own address", p.Address)
	case !own.IsValid() && !p.SourceAddress.IsValid():
		bad(f+".address", "%s is %s but this node has no %s address to speak from", p.Address, familyName(p.Address.Is6()), familyName(p.Address.Is6()))
	case peerProblem(p.Address, own) != "":
		bad(f+".address", "%s is %s", p.Address, peerProblem(p.Address, own))
	case inBlock:
		bad(f+".address", "%s is inside podCIDR %s, whose blackhole route would cut the session off", p.Address, block)
	}
	if p.AS == 0 {
		bad(f+".as", "required")
	}
	if why := holdTimeProblem(p.HoldTime.Duration); why != "" {
		bad(f+".holdTime", "%s %s", p.HoldTime, why)
	}
	if p.Keepalive.Duration <= 0 || p.Keepalive.Duration > p.HoldTime.Duration/3 {
		bad(f+".keepalive", "%s must be positive and at most a third of the hold time %s", p.Keepalive, p.HoldTime)
	}
	if rt := p.GracefulRestart.RestartTime.Duration; rt < time.Second || rt > 4095*time.Second {
		bad(f+".gracefulRestart.restartTime", "%s out of range 1s-4095s", p.GracefulRestart.RestartTime)
	}
	if p.RouteReflectorClient {
		if !c.RouteReflectorClusterID.IsValid() {
			bad(f+".routeReflectorClient", "needs routeReflectorClusterID set on this node")
		}
		if p.AS != c.LocalAS {
			bad(f+".routeReflectorClient", "a route reflector client must be in this node's AS %d, not %d", c.LocalAS, p.AS)
		}
	}
	for j, a := range p.Accept {
		if why := badPrefix(a); why != "" {
			bad(fmt.Sprintf("%s.accept[%d]", f, j), "%s", why)
		}
	}
	if len(p.Accept) > 0 && p.IsNode(c.LocalAS) {
		bad(f+".accept", "only for external peers: nodes may send pod-pool prefixes only")
	}
	if len(p.Password) > 80 {
		bad(f+".password", "longer than 80 bytes (TCP MD5 key limit)")
	}
	c.validatePeerOptions(f, p, bad)
	validateBFD(f+".bfd", p.BFD, bad)
	if p.BFD.Enabled && p.EBGPMultihop != nil {
		// Our BFD is single-hop (RFC 5881): it would never come up.
		bad(f+".bfd", "single-hop BFD does not work with ebgpMultihop")
	}
}

// validatePeerOptions checks the session and policy options of peer p
// (field path f).
func (c *Config) validatePeerOptions(f string, p Peer, bad func(field, format string, a ...any)) {
	ebgp := p.AS != c.LocalAS
	if m := p.EBGPMultihop; m != nil {
		switch {
		case !ebgp:
			bad(f+".ebgpMultihop", "only for eBGP peers: iBGP sessions are not limited to one hop")
		case m.TTL < 1:
			bad(f+".ebgpMultihop.ttl", "%d out of range 1-255", m.TTL)
		case p.TTLSecurity > 0:
			bad(f+".ebgpMultihop", "not together with ttlSecurity, which sends TTL 255 and sets the hop count itself")
		}
	}
	if p.TTLSecurity > 254 {
		bad(f+".ttlSecurity", "%d out of range 1-254 hops", p.TTLSecurity)
	}
	if a := p.SourceAddress; a.IsValid() {
		switch {
		case a.Is6() != p.Address.Is6():
			bad(f+".sourceAddress", "%s is not %s like the peer's address", a, familyName(p.Address.Is6()))
		case a == p.Address:
			bad(f+".sourceAddress", "%s is the peer's own address", a)
		case unusableHost(a) != "" && !a.IsLoopback():
			bad(f+".sourceAddress", "%s is %s", a, unusableHost(a))
		case c.PodCIDROf(a.Is6()).Contains(a):
			bad(f+".sourceAddress", "%s is inside podCIDR %s", a, c.PodCIDROf(a.Is6()))
		}
	}
	switch {
	case p.KeepOriginalNextHop && !ebgp:
		bad(f+".keepOriginalNextHop", "only for eBGP peers: iBGP keeps the next hop already")
	case p.KeepOriginalNextHop && !p.SourceAddress.IsValid():
		bad(f+".keepOriginalNextHop", "only with sourceAddress: without it the next hop is the node address already")
	}
	if p.NumAllowedLocalASNumbers > 10 {
		bad(f+".numAllowedLocalASNumbers", "%d out of range 0-10", p.NumAllowedLocalASNumbers)
	}
	if p.AcceptPodBlocks && p.IsNode(c.LocalAS) {
		bad(f+".acceptPodBlocks", "only for external peers: nodes send pod blocks already")
	}
	if p.ASPathPrepend > 0 && !ebgp {
		bad(f+".asPathPrepend", "only for eBGP peers: an iBGP peer would refuse a path with its own AS")
	}
	if p.ASPathPrepend > maxPathPrepend {
		bad(f+".asPathPrepend", "%d out of range 0-%d", p.ASPathPrepend, maxPathPrepend)
	}
	for i, fl := range p.Filters {
		ff := fmt.Sprintf("%s.filters[%d]", f, i)
		if len(fl.ImportV4)+len(fl.ExportV4)+len(fl.ImportV6)+len(fl.ExportV6) == 0 {
			bad(ff, "has no rules")
		}
		for _, d := range []struct {
			name  string
			rules []FilterRule
			bits  int
		}{{"importV4", fl.ImportV4, 32}, {"exportV4", fl.ExportV4, 32}, {"importV6", fl.ImportV6, 128}, {"exportV6", fl.ExportV6, 128}} {
			for j, r := range d.rules {
				if why := validateRule(r, d.bits); why != "" {
					bad(fmt.Sprintf("%s.%s[%d]", ff, d.name, j), "%s", why)
				}
			}
		}
	}
}
