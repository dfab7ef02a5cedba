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

// encap applies the encapsulation tunnel.Options.Decide chooses: it gathers
// the decision's inputs from the kernel and keeps the tunnel devices and
// the VXLAN entries in line with it.
type encap struct {
	log    *slog.Logger
	o      tunnel.Options
	tm     *tunnel.Manager
	under  tunnel.Underlay
	podMTU int
	// entries are the VXLAN entries the routes need; vxlanPeers is what
	// the device holds now.
	entries    tunnel.VXLANEntries
	vxlanPeers map[netip.Addr]netip.Addr
}

// newEncap finds the underlay, sets up the device o's mode needs and takes
// our address off the one it no longer needs. A kernel without the needed
// feature fails here, once, with the fix in the message.
func newEncap(o tunnel.Options, log *slog.Logger) (*encap, error) {
	tm, err := tunnel.New(0, log)
	if err != nil {
		return nil, err
	}
	e := &encap{log: log, o: o, tm: tm}
	if e.under, err = tm.FindUnderlay(o.Address, o.UnderlayInterface); err != nil {
		tm.Close()
		return nil, fmt.Errorf("find the underlay interface: %w", err)
	}
	ipipMode, vxlanMode := config.Never, config.Never
	switch o.Kind {
	case tunnel.KindIPIP:
		ipipMode = o.Mode
	case tunnel.KindVXLAN:
		vxlanMode = o.Mode
	}
	vtep := tunnel.VTEPAddr(o.Block)
	mtu := e.under.MTU - o.Overhead()
	if o.Kind == tunnel.KindIPIP {
		err = tm.EnsureIPIP(vtep, mtu)
	} else {
		err = tm.RemoveIPIPAddress()
	}
	if err != nil {
		tm.Close()
		return nil, fmt.Errorf("ipipMode %s: %w", ipipMode, err)
	}
	if o.Kind == tunnel.KindVXLAN {
		err = tm.EnsureVXLAN(tunnel.VXLAN{Name: o.VXLAN.Device, VNI: o.VXLAN.VNI, Port: o.VXLAN.Port,
			Local: o.Address, Underlay: e.under.Index, MTU: mtu, Addr: vtep})
	} else {
		err = tm.RemoveVXLAN(o.VXLAN.Device)
	}
	if err != nil {
		tm.Close()
		return nil, fmt.Errorf("vxlanMode %s: %w", vxlanMode, err)
	}
	e.podMTU = o.PodMTU(e.under.MTU)
	log.Info("encapsulation", "ipipMode", ipipMode, "vxlanMode", vxlanMode,
		"underlay", e.under.Name, "underlayMTU", e.under.MTU, "podMTU", e.podMTU)
	return e, nil
}

func (e *encap) close() { e.tm.Close() }

// decide turns best paths into kernel next hops and the VXLAN entries they
// need (see tunnel.Options.Decide), reading the connected subnets once for
// the batch when the mode needs them.
func (e *encap) decide(best map[netip.Prefix][]netip.Addr) (tunnel.Decision, error) {
	var connected []netip.Prefix
	if e.o.NeedsConnected() {
		var err error
		if connected, err = e.tm.ConnectedSubnets(e.o.VXLAN.Device); err != nil {
			return tunnel.Decision{}, err
		}
	}
	return e.o.Decide(best, connected), nil
}

// hops is the loop's hopDecider: the decision's next hops, once the VXLAN
// entries they need are in place (a failure there is logged and the
// routes are written anyway, as the next batch or resync tries again).
func (e *encap) hops(best map[netip.Prefix][]netip.Addr, full bool) (map[netip.Prefix][]routes.Hop, error) {
	d, err := e.decide(best)
	if err != nil {
		return nil, fmt.Errorf("decide encapsulation: %w", err)
	}
	if err := e.syncVXLANPeers(d, full); err != nil {
		e.log.Error("VXLAN forwarding entries", "err", err)
	}
	return d.Hops, nil
}

// syncVXLANPeers keeps the VXLAN device's static entries to the nodes that
// routes go to through it; d is the decision for a batch, or for every
// learned prefix when full.
func (e *encap) syncVXLANPeers(d tunnel.Decision, full bool) error {
	if e.o.Kind != tunnel.KindVXLAN {
		return nil
	}
	want := e.entries.Update(d, full)
	if maps.Equal(want, e.vxlanPeers) {
		return nil
	}
	if err := e.tm.SetVXLANPeers(e.o.VXLAN.Device, want); err != nil {
		return err
	}
	e.vxlanPeers = want
	return nil
}
