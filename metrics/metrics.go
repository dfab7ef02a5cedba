// Package metrics exposes the node daemon's state to Prometheus. State that
// already lives elsewhere (sessions, routes, addresses) is read at scrape
// time through Sources, so it can never drift from what the daemon holds;
// only events (programming latency, errors, CNI requests) are recorded here.
package metrics

import (
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Peer is one BGP session as the metrics see it. A session carries the
// routes of its address's family; a dual-stack node has one per family
// with each neighbour.
type Peer struct {
	Address     netip.Addr
	AS          uint32
	Established bool
	Uptime      time.Duration
	Received    uint64
	Accepted    uint64 // received and accepted by the import policy
	Rejected    int    // paths the import policy refused, each counted once
}

// IPAM is one node block's use (a dual-stack node has one per family).
type IPAM struct {
	Block     netip.Prefix
	Size      int
	Allocated int
}

// BFDSession is one BFD session as the metrics see it.
type BFDSession struct {
	Peer       netip.Addr
	Up         bool
	DetectTime time.Duration // how long the peer may be silent before Down
}

// BFDPackets counts the BFD packets received, by fate.
type BFDPackets struct {
	Received, BadTTL, Invalid, Unknown uint64
}

// Sources are read at every scrape. Any of them may be nil. They must be
// cheap: Peers reads the daemon's event-fed peer table, not the speaker.
type Sources struct {
	Peers  func() []Peer
	Routes func() map[string]int // installed routes by kind: native, ipip, vxlan, blackhole
	IPAM   func() []IPAM
	// UnconfiguredConnections counts connections to the BGP port from
	// addresses that are no configured peer.
	UnconfiguredConnections func() uint64
	// BFDSessions and BFDPackets are the BFD sessions and receive
	// counters (none while no peer has BFD).
	BFDSessions func() []BFDSession
	BFDPackets  func() BFDPackets
}

// Metrics is the daemon's registry.
type Metrics struct {
	reg *prometheus.Registry

	// RouteProgramming observes the time from a best-path change to its
	// kernel write.
	RouteProgramming prometheus.Histogram
	// ReconcileErrors counts failed kernel reconciliations.
	ReconcileErrors prometheus.Counter
	// CNIRequests observes IPAM requests from the CNI plugin by verb
	// (ADD, DEL, CHECK, GC, STATUS) and result (ok, error).
	CNIRequests *prometheus.HistogramVec
	// BFDTransitions counts BFD session state changes by peer and the
	// state entered (Up, Down, Init, AdminDown).
	BFDTransitions *prometheus.CounterVec
}

// New registers every metric, reading state from src.
func New(src Sources) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		RouteProgramming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "nexthop_route_programming_seconds",
			Help:    "Time from a best-path change to the kernel route written.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 100 µs .. ~3 s
		}),
		ReconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nexthop_reconcile_errors_total",
			Help: "Kernel route reconciliations that failed.",
		}),
		CNIRequests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "nexthop_cni_request_seconds",
			Help:    "IPAM requests served to the CNI plugin, by CNI verb and result.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms .. ~4 s
		}, []string{"verb", "result"}),
		BFDTransitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nexthop_bfd_session_transitions_total",
			Help: "BFD session state changes, by peer and the state entered.",
		}, []string{"peer", "state"}),
	}
	m.reg.MustRegister(m.RouteProgramming, m.ReconcileErrors, m.CNIRequests, m.BFDTransitions,
		&state{src: src},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Registry is the underlying registry (tests gather from it).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

var (
	descUp = prometheus.NewDesc("nexthop_bgp_session_established",
		"1 when the BGP session with the peer is established.", []string{"peer", "peer_as"}, nil)
	descUptime = prometheus.NewDesc("nexthop_bgp_session_uptime_seconds",
		"How long the BGP session has been established.", []string{"peer"}, nil)
	descReceived = prometheus.NewDesc("nexthop_bgp_prefixes_received",
		"Prefixes received from the peer.", []string{"peer"}, nil)
	descAccepted = prometheus.NewDesc("nexthop_bgp_prefixes_accepted",
		"Prefixes received from the peer and accepted by the import policy.", []string{"peer"}, nil)
	descRejected = prometheus.NewDesc("nexthop_bgp_prefixes_rejected_total",
		"Paths from the peer refused by the import policy, each counted once while it stays announced.", []string{"peer"}, nil)
	descUnconfigured = prometheus.NewDesc("nexthop_bgp_unconfigured_connections_total",
		"Connections to the BGP port from addresses that are no configured peer, closed.", nil, nil)
	descBFDUp = prometheus.NewDesc("nexthop_bfd_session_up",
		"1 when the BFD session with the peer is Up.", []string{"peer"}, nil)
	descBFDDetect = prometheus.NewDesc("nexthop_bfd_detect_time_seconds",
		"How long the BFD peer may be silent before its session goes Down, as negotiated.", []string{"peer"}, nil)
	descBFDPackets = prometheus.NewDesc("nexthop_bfd_packets_received_total",
		"BFD packets received, by fate: received (handed to a session), bad_ttl (not sent from on-link), invalid, unknown (no session).", []string{"result"}, nil)
	descSessions = prometheus.NewDesc("nexthop_bgp_sessions",
		"Configured BGP sessions, by the family of the peer's address (ipv4, ipv6: the routes it carries) and whether they are established.",
		[]string{"family", "established"}, nil)
	descRoutes = prometheus.NewDesc("nexthop_routes_installed",
		"Kernel routes nexthop has installed, by kind.", []string{"kind"}, nil)
	descBlockSize = prometheus.NewDesc("nexthop_ipam_block_size",
		"Addresses the node's block can hand to pods.", []string{"block"}, nil)
	descAllocated = prometheus.NewDesc("nexthop_ipam_allocated",
		"Addresses allocated to pods.", []string{"block"}, nil)
)

// state collects from Sources at scrape time.
type state struct{ src Sources }

func (s *state) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descUptime, descReceived, descAccepted, descRejected, descUnconfigured, descBFDUp, descBFDDetect, descBFDPackets, descSessions, descRoutes, descBlockSize, descAllocated} {
		ch <- d
	}
}

func (s *state) Collect(ch chan<- prometheus.Metric) {
	if s.src.Peers != nil {
		// Both families always, so that a family with no session reads 0.
		var sessions [2][2]int // [v6][established]
		for _, p := range s.src.Peers() {
			v6, est := 0, 0
			if p.Address.Is6() && !p.Address.Is4In6() {
				v6 = 1
			}
			if p.Established {
				est = 1
			}
			sessions[v6][est]++
			addr := p.Address.String()
			up := 0.0
			if p.Established {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, addr, strconv.FormatUint(uint64(p.AS), 10))
			ch <- prometheus.MustNewConstMetric(descUptime, prometheus.GaugeValue, p.Uptime.Seconds(), addr)
			ch <- prometheus.MustNewConstMetric(descReceived, prometheus.GaugeValue, float64(p.Received), addr)
			ch <- prometheus.MustNewConstMetric(descAccepted, prometheus.GaugeValue, float64(p.Accepted), addr)
			ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(p.Rejected), addr)
		}
		for v6, family := range []string{"ipv4", "ipv6"} {
			for est, label := range []string{"false", "true"} {
				ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(sessions[v6][est]), family, label)
			}
		}
	}
	if s.src.UnconfiguredConnections != nil {
		ch <- prometheus.MustNewConstMetric(descUnconfigured, prometheus.CounterValue, float64(s.src.UnconfiguredConnections()))
	}
	if s.src.BFDSessions != nil {
		for _, b := range s.src.BFDSessions() {
			up := 0.0
			if b.Up {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descBFDUp, prometheus.GaugeValue, up, b.Peer.String())
			ch <- prometheus.MustNewConstMetric(descBFDDetect, prometheus.GaugeValue, b.DetectTime.Seconds(), b.Peer.String())
		}
	}
	if s.src.BFDPackets != nil {
		st := s.src.BFDPackets()
		for _, c := range []struct {
			result string
			n      uint64
		}{{"received", st.Received}, {"bad_ttl", st.BadTTL}, {"invalid", st.Invalid}, {"unknown", st.Unknown}} {
			ch <- prometheus.MustNewConstMetric(descBFDPackets, prometheus.CounterValue, float64(c.n), c.result)
		}
	}
	if s.src.Routes != nil {
		counts := s.src.Routes()
		for _, kind := range []string{"native", "ipip", "vxlan", "blackhole"} {
			ch <- prometheus.MustNewConstMetric(descRoutes, prometheus.GaugeValue, float64(counts[kind]), kind)
		}
	}
	if s.src.IPAM != nil {
		for _, st := range s.src.IPAM() {
			ch <- prometheus.MustNewConstMetric(descBlockSize, prometheus.GaugeValue, float64(st.Size), st.Block.String())
			ch <- prometheus.MustNewConstMetric(descAllocated, prometheus.GaugeValue, float64(st.Allocated), st.Block.String())
		}
	}
}
