package daemon

import (
	"fmt"
	"log/slog"
	"maps"
	"net/netip"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/routes"
	"github.com/nexthop-net/nexthop/tunnel"
)

// encap decides, route by route, between native routing and the tunnel in
// force, and keeps the tunnel devices in line with the configuration.
type encap struct {
	log    *slog.Logger
	cfg    *config.Config
	tm     *tunnel.Manager
	under  tunnel.Underlay
	kind   string // "", "ipip" or "vxlan"
	mode   config.EncapMode
	podMTU int
	// vteps holds, per prefix routed through VXLAN, the entries it needs
	// (remote VTEP address → remote underlay address); kept per prefix so a
	// batch of changes touches only its own prefixes.
	vteps map[netip.Prefix]map[netip.Addr]netip.Addr
	// vxlanPeers is what the VXLAN device's static entries hold now.
	vxlanPeers map[netip.Addr]netip.Addr
}

// newEncap finds the underlay, sets up the device the configured mode needs
// and takes our address off the one it no longer needs. A kernel without
// the needed feature fails here, once, with the fix in the message.
func newEncap(cfg *config.Config, log *slog.Logger) (*encap, error) {
	tm, err := tunnel.New(0, log)
	if err != nil {
		return nil, err
	}
	e := &encap{log: log, cfg: cfg, tm: tm}
	e.kind, e.mode = cfg.Encap()
	if e.under, err = tm.FindUnderlay(cfg.Address, cfg.UnderlayInterface); err != nil {
		tm.Close()
		return nil, fmt.Errorf("find the underlay interface: %w", err)
	}
	overhead := 0
	vtep := tunnel.VTEPAddr(cfg.PodCIDR)
	switch e.kind {
	case "ipip":
		overhead = tunnel.IPIPOverhead
		err = tm.EnsureIPIP(vtep, e.under.MTU-overhead)
	default:
		err = tm.RemoveIPIPAddress()
	}
	if err != nil {
		tm.Close()
		return nil, fmt.Errorf("ipipMode %s: %w", cfg.IPIPMode, err)
	}
	switch e.kind {
	case "vxlan":
		overhead = tunnel.VXLANOverhead
		err = tm.EnsureVXLAN(tunnel.VXLAN{Name: cfg.VXLAN.Device, VNI: cfg.VXLAN.VNI, Port: cfg.VXLAN.Port,
			Local: cfg.Address, Underlay: e.under.Index, MTU: e.under.MTU - overhead, Addr: vtep})
	default:
		err = tm.RemoveVXLAN(cfg.VXLAN.Device)
	}
	if err != nil {
		tm.Close()
		return nil, fmt.Errorf("vxlanMode %s: %w", cfg.VXLANMode, err)
	}
	e.podMTU = cfg.MTU
	if e.podMTU == 0 {
		e.podMTU = e.under.MTU - overhead
	}
	log.Info("encapsulation", "ipipMode", cfg.IPIPMode, "vxlanMode", cfg.VXLANMode,
		"underlay", e.under.Name, "underlayMTU", e.under.MTU, "podMTU", e.podMTU)
	return e, nil
}

func (e *encap) close() { e.tm.Close() }

// hops turns best paths into kernel next hops: native where the mode allows
// (Never, or CrossSubnet with the next hop on a connected subnet), else
// through tunl0 on-link to the remote node, or through the VXLAN device
// on-link to the remote node's VTEP address.
func (e *encap) hops(best map[netip.Prefix][]netip.Addr) (map[netip.Prefix][]routes.Hop, error) {
	out := make(map[netip.Prefix][]routes.Hop, len(best))
	if e.mode == config.Never {
		for p, gws := range best {
			out[p] = routes.Gateways(gws...)
		}
		return out, nil
	}
	var connected []netip.Prefix
	if e.mode == config.CrossSubnet {
		var err error
		if connected, err = e.tm.ConnectedSubnets(e.cfg.VXLAN.Device); err != nil {
			return nil, err
		}
	}
	for p, gws := range best {
		hs := make([]routes.Hop, 0, len(gws))
		for _, gw := range gws {
			switch {
			case e.mode == config.CrossSubnet && inAny(connected, gw):
				hs = append(hs, routes.Hop{Gateway: gw})
			case e.kind == "ipip":
				hs = append(hs, routes.Hop{Gateway: gw, Device: tunnel.IPIPDevice})
			default:
				hs = append(hs, routes.Hop{Gateway: tunnel.VTEPAddr(p), Device: e.cfg.VXLAN.Device})
			}
		}
		out[p] = hs
	}
	return out, nil
}

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// syncVXLANPeers keeps the VXLAN device's static entries to the nodes that
// routes go to through it: remote VTEP address → remote underlay address.
// hops are the kernel next hops of the prefixes in best (a withdrawn prefix
// has none); full says they are every learned prefix, not a batch.
func (e *encap) syncVXLANPeers(hops map[netip.Prefix][]routes.Hop, best map[netip.Prefix][]netip.Addr, full bool) error {
	if e.kind != "vxlan" {
		return nil
	}
	if full || e.vteps == nil {
		e.vteps = map[netip.Prefix]map[netip.Addr]netip.Addr{}
	}
	for p, hs := range hops {
		delete(e.vteps, p)
		for i, h := range hs {
			if h.Device == e.cfg.VXLAN.Device && i < len(best[p]) {
				if e.vteps[p] == nil {
					e.vteps[p] = map[netip.Addr]netip.Addr{}
				}
				e.vteps[p][h.Gateway] = best[p][i]
			}
		}
	}
	want := map[netip.Addr]netip.Addr{}
	for _, m := range e.vteps {
		maps.Copy(want, m)
	}
	if maps.Equal(want, e.vxlanPeers) {
		return nil
	}
	if err := e.tm.SetVXLANPeers(e.cfg.VXLAN.Device, want); err != nil {
		return err
	}
	e.vxlanPeers = want
	return nil
}
