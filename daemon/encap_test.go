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
