package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestScrapeReadsSources(t *testing.T) {
	m := New(Sources{
		Peers: func() []Peer {
			return []Peer{
				{Address: netip.MustParseAddr("192.0.2.12"), AS: 64512, Established: true, Uptime: 90 * time.Second, Received: 3, Accepted: 3, Rejected: 2},
				{Address: netip.MustParseAddr("192.0.2.254"), AS: 65000},
			}
		},
		Routes: func() map[string]int { return map[string]int{"native": 2, "blackhole": 1} },
		IPAM: func() []IPAM {
			return []IPAM{{Block: netip.MustParsePrefix("10.244.1.0/24"), Size: 253, Allocated: 7}}
		},
		UnconfiguredConnections: func() uint64 { return 5 },
		BFDSessions: func() []BFDSession {
			return []BFDSession{{Peer: netip.MustParseAddr("192.0.2.254"), Up: true, DetectTime: 900 * time.Millisecond}}
		},
		BFDPackets: func() BFDPackets { return BFDPackets{Received: 40, BadTTL: 1} },
	})
	m.BFDTransitions.WithLabelValues("192.0.2.254", "Up").Inc()
	m.RouteProgramming.Observe(0.002)
	m.CNIRequests.WithLabelValues("ADD", "ok").Observe(0.01)

	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	body := scrape(t, srv.URL)
	for _, want := range []string{
		`nexthop_bgp_session_established{peer="192.0.2.12",peer_as="64512"} 1`,
		`nexthop_bgp_session_established{peer="192.0.2.254",peer_as="65000"} 0`,
		`nexthop_bgp_session_uptime_seconds{peer="192.0.2.12"} 90`,
		`nexthop_bgp_prefixes_rejected_total{peer="192.0.2.12"} 2`,
		`nexthop_bgp_unconfigured_connections_total 5`,
		`nexthop_routes_installed{kind="native"} 2`,
		`nexthop_bgp_sessions{established="true",family="ipv4"} 1`,
		`nexthop_bgp_sessions{established="false",family="ipv4"} 1`,
		`nexthop_bgp_sessions{established="true",family="ipv6"} 0`,
		`nexthop_routes_installed{kind="vxlan"} 0`,
		`nexthop_ipam_allocated{block="10.244.1.0/24"} 7`,
		`nexthop_ipam_block_size{block="10.244.1.0/24"} 253`,
		`nexthop_route_programming_seconds_count 1`,
		`nexthop_cni_request_seconds_count{result="ok",verb="ADD"} 1`,
		`nexthop_bfd_session_up{peer="192.0.2.254"} 1`,
		`nexthop_bfd_detect_time_seconds{peer="192.0.2.254"} 0.9`,
		`nexthop_bfd_packets_received_total{result="received"} 40`,
		`nexthop_bfd_packets_received_total{result="bad_ttl"} 1`,
		`nexthop_bfd_session_transitions_total{peer="192.0.2.254",state="Up"} 1`,
		`process_resident_memory_bytes`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	if n, err := testutil.GatherAndCount(m.Registry(), "nexthop_bgp_session_established"); err != nil || n != 2 {
		t.Errorf("established series: %d, %v", n, err)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	r, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return string(b)
}

// A dual-stack node: sessions of both families, counted by family, and
// both blocks' use.
func TestScrapeDualStack(t *testing.T) {
	m := New(Sources{
		Peers: func() []Peer {
			return []Peer{
				{Address: netip.MustParseAddr("192.0.2.12"), AS: 64512, Established: true, Uptime: time.Minute, Received: 1, Accepted: 1},
				{Address: netip.MustParseAddr("fd00:192::12"), AS: 64512, Established: true, Uptime: time.Minute, Received: 2, Accepted: 2},
				{Address: netip.MustParseAddr("fd00:192::fe"), AS: 65000},
			}
		},
		IPAM: func() []IPAM {
			return []IPAM{
				{Block: netip.MustParsePrefix("10.244.1.0/24"), Size: 253, Allocated: 3},
				{Block: netip.MustParsePrefix("fd00:10:244:1::/64"), Size: 1 << 20, Allocated: 3},
			}
		},
	})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	body := scrape(t, srv.URL)
	for _, want := range []string{
		`nexthop_bgp_session_established{peer="fd00:192::12",peer_as="64512"} 1`,
		`nexthop_bgp_session_established{peer="fd00:192::fe",peer_as="65000"} 0`,
		`nexthop_bgp_prefixes_accepted{peer="fd00:192::12"} 2`,
		`nexthop_bgp_sessions{established="true",family="ipv4"} 1`,
		`nexthop_bgp_sessions{established="false",family="ipv4"} 0`,
		`nexthop_bgp_sessions{established="true",family="ipv6"} 1`,
		`nexthop_bgp_sessions{established="false",family="ipv6"} 1`,
		`nexthop_ipam_allocated{block="10.244.1.0/24"} 3`,
		`nexthop_ipam_allocated{block="fd00:10:244:1::/64"} 3`,
		`nexthop_ipam_block_size{block="fd00:10:244:1::/64"} 1.048576e+06`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s\n%s", want, body)
		}
	}
}
