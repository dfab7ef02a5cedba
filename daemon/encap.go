package daemon

import (
	"errors"
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
	log *slog.Logger
	o   tunnel.Options
	tm  *tunnel.Manager
	// under and underV6 are the underlays of the families the node uses
	// (zero for the other).
	under, underV6 tunnel.Underlay
	podMTU         int
	// entries are the VXLAN entries the routes need, both families;
	// vxlanPeers and vxlanPeersV6 are what each device holds now.
	entries                  tunnel.VXLANEntries
	vxlanPeers, vxlanPeersV6 map[netip.Addr]netip.Addr
}

// newEncap finds the underlays, sets up the devices o's mode needs and
// takes our address off those it no longer needs. A kernel without the
// needed feature fails here, once, with the fix in the message.
func newEncap(o tunnel.Options, log *slog.Logger) (*encap, error) {
	tm, err := tunnel.New(0, log)
	if err != nil {
		return nil, err
	}
	e := &encap{log: log, o: o, tm: tm}
	if err := e.setup(); err != nil {
		tm.Close()
		return nil, err
	}
	return e, nil
}

func (e *encap) setup() error {
	o, tm := e.o, e.tm
	var err error
	// The underlay interface setting names the interface of the node's
	// main address: the IPv4 one, or the IPv6 one on an IPv6-only node.
	if o.Uses(false) {
		if e.under, err = tm.FindUnderlay(o.Address, o.UnderlayInterface); err != nil {
			return fmt.Errorf("find the underlay interface: %w", err)
		}
	}
	if o.Uses(true) {
		name := o.UnderlayInterface
		if o.Uses(false) {
			name = ""
		}
		if e.underV6, err = tm.FindUnderlay(o.AddressV6, name); err != nil {
			return fmt.Errorf("find the IPv6 underlay interface: %w", err)
		}
	}
	ipipMode, vxlanMode := config.Never, config.Never
	switch o.Kind {
	case tunnel.KindIPIP:
		ipipMode = o.Mode
	case tunnel.KindVXLAN:
		vxlanMode = o.Mode
	}
	if o.Kind == tunnel.KindIPIP && o.Uses(false) {
		err = tm.EnsureIPIP(tunnel.VTEPAddr(o.Block), e.under.MTU-o.Overhead(false))
	} else {
		err = tm.RemoveIPIPAddress()
	}
	if err != nil {
		return fmt.Errorf("ipipMode %s: %w", ipipMode, err)
	}
	if o.Kind == tunnel.KindIPIP && o.Uses(true) {
		e.log.Info("ipipMode carries IPv4 only: IPv6 routes stay native", "ipipMode", ipipMode, "blockV6", o.BlockV6)
	}
	for _, f := range []struct {
		v6     bool
		device string
		local  netip.Addr
		block  netip.Prefix
		under  tunnel.Underlay
	}{{false, o.VXLAN.Device, o.Address, o.Block, e.under}, {true, o.VXLAN.DeviceV6, o.AddressV6, o.BlockV6, e.underV6}} {
		if o.Kind == tunnel.KindVXLAN && o.Uses(f.v6) {
			err = tm.EnsureVXLAN(tunnel.VXLAN{Name: f.device, VNI: o.VXLAN.VNI, Port: o.VXLAN.Port,
				Local: f.local, Underlay: f.under.Index, MTU: f.under.MTU - o.Overhead(f.v6), Addr: tunnel.VTEPAddr(f.block)})
		} else {
			err = tm.RemoveVXLAN(f.device)
		}
		if err != nil {
			return fmt.Errorf("vxlanMode %s (device %s): %w", vxlanMode, f.device, err)
		}
	}
	e.podMTU = o.PodMTU(e.under.MTU, e.underV6.MTU)
	attrs := []any{"ipipMode", ipipMode, "vxlanMode", vxlanMode}
	if o.Uses(false) {
		attrs = append(attrs, "underlay", e.under.Name, "underlayMTU", e.under.MTU)
	}
	if o.Uses(true) {
		attrs = append(attrs, "underlayV6", e.underV6.Name, "underlayMTUV6", e.underV6.MTU)
	}
	e.log.Info("encapsulation", append(attrs, "podMTU", e.podMTU)...)
	return nil
}

func (e *encap) close() { e.tm.Close() }

// decide turns best paths into kernel next hops and the VXLAN entries they
// need (see tunnel.Options.Decide), reading the connected subnets once for
// the batch when the mode needs them.
func (e *encap) decide(best map[netip.Prefix][]netip.Addr) (tunnel.Decision, error) {
	var connected []netip.Prefix
	if e.o.NeedsConnected() {
		var err error
		if connected, err = e.tm.ConnectedSubnets(e.o.VXLAN.Device, e.o.VXLAN.DeviceV6); err != nil {
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

// syncVXLANPeers keeps each VXLAN device's static entries to the nodes
// that routes of its family go to through it; d is the decision for a
// batch, or for every learned prefix when full.
func (e *encap) syncVXLANPeers(d tunnel.Decision, full bool) error {
	if e.o.Kind != tunnel.KindVXLAN {
		return nil
	}
	want4, want6 := tunnel.Split(e.entries.Update(d, full))
	var errs []error
	for _, f := range []struct {
		v6     bool
		device string
		want   map[netip.Addr]netip.Addr
		have   *map[netip.Addr]netip.Addr
	}{{false, e.o.VXLAN.Device, want4, &e.vxlanPeers}, {true, e.o.VXLAN.DeviceV6, want6, &e.vxlanPeersV6}} {
		if !e.o.Uses(f.v6) || maps.Equal(f.want, *f.have) {
			continue
		}
		if err := e.tm.SetVXLANPeers(f.device, f.want); err != nil {
			errs = append(errs, err)
			continue
		}
		*f.have = f.want
	}
	return errors.Join(errs...)
}
