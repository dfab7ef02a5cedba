package daemon

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/config"
)

// TestRestartRule: each field, changed alone, either applies live or
// names itself (old -> new) as the reason for a restart.
func TestRestartRule(t *testing.T) {
	pfx := netip.MustParsePrefix
	for _, tc := range []struct {
		name   string
		change func(*config.Config)
		want   string // substring; "" means live
	}{
		{"nothing", func(*config.Config) {}, ""},
		// Live.
		{"peer added", func(c *config.Config) {
			c.Peers = append(c.Peers, config.Peer{Address: netip.MustParseAddr("192.0.2.254"), AS: 65000})
			c.Normalize()
		}, ""},
		{"peers removed", func(c *config.Config) { c.Peers = nil }, ""},
		{"peer becomes a route-reflector client", func(c *config.Config) { c.Peers[0].RouteReflectorClient = true }, ""},
		{"BFD with a peer", func(c *config.Config) {
			c.Peers[0].BFD = config.BFD{Enabled: true, MinTx: config.Duration{Duration: 100 * time.Millisecond}}
			c.Normalize()
		}, ""},
		{"a second pool", func(c *config.Config) { c.Pools = append(c.Pools, pfx("10.250.0.0/16")) }, ""},
		{"pools gone", func(c *config.Config) { c.Pools = nil }, ""},
		{"acceptDefaultRoute", func(c *config.Config) { c.AcceptDefaultRoute = true }, ""},
		{"natOutgoing", func(c *config.Config) { c.NATOutgoing = true }, ""},
		{"natOutgoingExclude", func(c *config.Config) { c.NATOutgoingExclude = []netip.Prefix{pfx("10.96.0.0/12")} }, ""},
		{"holdTime", func(c *config.Config) { c.HoldTime.Duration = 30 * time.Second }, ""},
		{"initialSync", func(c *config.Config) { c.InitialSync.Duration = time.Minute }, ""},
		{"resyncInterval", func(c *config.Config) { c.ResyncInterval.Duration = time.Minute }, ""},
		// Restart.
		{"node name", func(c *config.Config) { c.NodeName = "other" }, "nodeName node1 -> other"},
		{"address", func(c *config.Config) { c.Address = netip.MustParseAddr("192.0.2.99") }, "address 192.0.2.11 -> 192.0.2.99"},
		{"router ID", func(c *config.Config) { c.RouterID = netip.MustParseAddr("192.0.2.99") }, "routerID 192.0.2.11 -> 192.0.2.99"},
		{"AS", func(c *config.Config) { c.LocalAS = 65010 }, "localAS 64512 -> 65010"},
		{"cluster ID", func(c *config.Config) { c.RouteReflectorClusterID = netip.MustParseAddr("224.0.0.1") }, "routeReflectorClusterID unset -> 224.0.0.1"},
		{"pod CIDR", func(c *config.Config) { c.PodCIDRs = []netip.Prefix{pfx("10.244.9.0/24")} }, "podCIDRs [10.244.1.0/24] -> [10.244.9.0/24]"},
		{"IPv6 block added", func(c *config.Config) { c.PodCIDRs = append(c.PodCIDRs, pfx("fd00:244:1::/64")) }, "podCIDRs [10.244.1.0/24] -> [10.244.1.0/24 fd00:244:1::/64]"},
		{"port", func(c *config.Config) { c.BGPPort = 1179 }, "bgpPort 179 -> 1179"},
		{"gRPC listen", func(c *config.Config) { c.GRPCListen = "none" }, "grpcListen"},
		{"gRPC writes", func(c *config.Config) { c.GRPCAllowWrites = true }, "grpcAllowWrites unset -> true"},
		{"gRPC remote", func(c *config.Config) { c.GRPCAllowRemote = true }, "grpcAllowRemote"},
		{"metrics listen", func(c *config.Config) { c.MetricsListen = "none" }, "metricsListen"},
		{"IPAM socket", func(c *config.Config) { c.IPAMSocket = "/run/x.sock" }, "ipamSocket"},
		{"state dir", func(c *config.Config) { c.StateDir = "/var/lib/x" }, "stateDir"},
		{"IP-in-IP", func(c *config.Config) { c.IPIPMode = config.Always }, "ipipMode Never -> Always"},
		{"VXLAN mode", func(c *config.Config) { c.VXLANMode = config.CrossSubnet }, "vxlanMode Never -> CrossSubnet"},
		{"VXLAN settings", func(c *config.Config) { c.VXLAN.VNI = 7 }, "vxlan"},
		{"MTU", func(c *config.Config) { c.MTU = 1400 }, "mtu unset -> 1400"},
		{"underlay interface", func(c *config.Config) { c.UnderlayInterface = "eth1" }, "underlayInterface unset -> eth1"},
		{"log level", func(c *config.Config) { c.LogLevel = "debug" }, "logLevel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur, next := testConfig(), testConfig()
			cur.Pools = []netip.Prefix{pfx("10.244.0.0/16")}
			next.Pools = slices.Clone(cur.Pools)
			tc.change(next)
			got := restartReason(cur, next)
			if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
				t.Fatalf("restartReason = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestRestartRuleCoversEveryField: a field added to config.Config must be
// put in restartFields or, once the daemon applies it live, in liveFields;
// otherwise a change to it would be neither applied nor restarted for.
func TestRestartRuleCoversEveryField(t *testing.T) {
	classified := map[string]int{}
	for _, f := range restartFields {
		classified[f.name]++
	}
	for _, f := range liveFields {
		classified[f]++
	}
	typ := reflect.TypeFor[config.Config]()
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		switch classified[name] {
		case 0:
			t.Errorf("config field %s is neither in restartFields nor in liveFields", name)
		case 1:
		default:
			t.Errorf("config field %s is listed more than once", name)
		}
		delete(classified, name)
	}
	for name := range classified {
		t.Errorf("%s is listed but is no config field", name)
	}
}

// The restart delay spreads nodes over the window, never past it.
func TestRestartDelay(t *testing.T) {
	lo, hi := time.Hour, time.Duration(0)
	for range 1000 {
		d := restartDelay(DefaultRestartSpread)
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < time.Second || hi > DefaultRestartSpread {
		t.Fatalf("delays in [%v, %v], want within [1s, %v]", lo, hi, DefaultRestartSpread)
	}
	if hi-lo < DefaultRestartSpread/2 {
		t.Fatalf("delays in [%v, %v] over 1000 draws: not spread over the window", lo, hi)
	}
}
