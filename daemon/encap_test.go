package daemon

import (
	"net/netip"
	"testing"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/tunnel"
)

// The encapsulation gets the tunnel and mode in force and every setting it
// uses from the config, defaults applied.
func TestEncapOptions(t *testing.T) {
	for _, c := range []struct {
		name        string
		ipip, vxlan config.EncapMode
		kind        tunnel.Kind
		mode        config.EncapMode
	}{
		{"native", config.Never, config.Never, tunnel.KindNone, config.Never},
		{"ipip", config.CrossSubnet, config.Never, tunnel.KindIPIP, config.CrossSubnet},
		{"vxlan", config.Never, config.Always, tunnel.KindVXLAN, config.Always},
	} {
		cfg := testConfig()
		cfg.IPIPMode, cfg.VXLANMode = c.ipip, c.vxlan
		cfg.UnderlayInterface, cfg.MTU = "eth1", 1400
		want := tunnel.Options{Kind: c.kind, Mode: c.mode,
			VXLAN:   config.VXLANSettings{Device: config.DefaultVXLANDevice, DeviceV6: config.DefaultVXLAN6Dev, VNI: config.DefaultVXLANVNI, Port: config.DefaultVXLANPort},
			Address: netip.MustParseAddr("192.0.2.11"), Block: netip.MustParsePrefix("10.244.1.0/24"), UnderlayInterface: "eth1", MTU: 1400}
		if got := encapOptions(cfg); got != want {
			t.Errorf("%s: encapOptions = %+v, want %+v", c.name, got, want)
		}
	}
}

// Each family's address and block go to the encapsulation; a family the
// node lacks is zero (an IPv6-only node has no IPv4 address, though its
// config's address is its IPv6 one).
func TestEncapOptionsFamilies(t *testing.T) {
	cfg := dualConfig()
	o := encapOptions(cfg)
	if o.Address.String() != "192.0.2.11" || o.Block.String() != "10.244.1.0/24" ||
		o.AddressV6.String() != "fd00:192::11" || o.BlockV6.String() != "fd00:10:244:1::/64" || !o.Uses(false) || !o.Uses(true) {
		t.Errorf("dual-stack: %+v", o)
	}
	v6only := &config.Config{NodeName: "n6", Address: netip.MustParseAddr("fd00:192::11"), LocalAS: 64512,
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:10:244:1::/64")}}
	v6only.Normalize()
	o = encapOptions(v6only)
	if o.Address.IsValid() || o.Block.IsValid() || o.AddressV6.String() != "fd00:192::11" || o.Uses(false) || !o.Uses(true) {
		t.Errorf("IPv6-only: %+v", o)
	}
}
