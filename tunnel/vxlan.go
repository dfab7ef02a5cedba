package tunnel

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nexthop-net/nexthop/internal/ipconv"
)

// VXLAN describes one of the node's VXLAN devices: the IPv4 one carries
// IPv4 pods over the IPv4 underlay, the IPv6 one IPv6 pods over the IPv6
// underlay (Local's family is the device's).
//
// Remote VTEPs need no extra BGP attribute: a node's VTEP address is the
// first usable address of its pod block of the family (IPAM keeps it for the
// node) and its VTEP MAC is derived from its underlay address, so both
// follow from a BGP path's prefix and next hop.
type VXLAN struct {
	Name     string
	VNI      int
	Port     int
	Local    netip.Addr // underlay address: outer source, and MAC seed
	Underlay int        // underlay link index
	MTU      int
	Addr     netip.Addr // VTEP address, VTEPAddr(own block)
}

// VTEPAddr is the VTEP address of the node owning block.
func VTEPAddr(block netip.Prefix) netip.Addr { return block.Masked().Addr().Next() }

// VTEPMAC is the VTEP MAC of the node with underlay address a: locally
// administered, unicast. An IPv4 address is spelled out after 0e:68; an
// IPv6 one does not fit, and its FNV-1a hash follows 0e:69 instead (nodes
// in different subnets often share an interface ID, so the low bytes alone
// would collide; a hash collides once in 2^32 pairs).
func VTEPMAC(a netip.Addr) net.HardwareAddr {
	if a.Is4() {
		b := a.As4()
		return net.HardwareAddr{0x0e, 0x68, b[0], b[1], b[2], b[3]}
	}
	h := fnv.New32a()
	b16 := a.As16()
	h.Write(b16[:])
	s := h.Sum32()
	return net.HardwareAddr{0x0e, 0x69, byte(s >> 24), byte(s >> 16), byte(s >> 8), byte(s)}
}

// IsOurVXLAN reports whether l is a VXLAN device EnsureVXLAN made, whatever
// its name (vxlan.device is configurable): EnsureVXLAN always gives it the
// MAC VTEPMAC derives from the device's own local address, which a device
// made by other means does not carry.
func IsOurVXLAN(l netlink.Link) bool {
	v, ok := l.(*netlink.Vxlan)
	if !ok {
		return false
	}
	local, ok := ipconv.Addr(v.SrcAddr)
	return ok && v.HardwareAddr.String() == VTEPMAC(local).String()
}

// EnsureVXLAN creates or repairs the device. One with the same name but
// other parameters is ours from a former configuration: it is recreated.
func (m *Manager) EnsureVXLAN(v VXLAN) error {
	mac := VTEPMAC(v.Local)
	l, err := m.h.LinkByName(v.Name)
	if err == nil {
		cur, ok := l.(*netlink.Vxlan)
		if !ok || cur.VxlanId != v.VNI || cur.Port != v.Port || !cur.SrcAddr.Equal(v.Local.AsSlice()) || cur.VtepDevIndex != v.Underlay {
			m.log.Info("recreating VXLAN device with new parameters", "device", v.Name, "vni", v.VNI, "port", v.Port)
			if err := m.h.LinkDel(l); err != nil {
				return fmt.Errorf("delete old VXLAN device %s: %w", v.Name, err)
			}
			l = nil
		}
	}
	if l == nil || err != nil {
		dev := &netlink.Vxlan{
			LinkAttrs:    netlink.LinkAttrs{Name: v.Name, MTU: v.MTU, HardwareAddr: mac},
			VxlanId:      v.VNI,
			VtepDevIndex: v.Underlay,
			SrcAddr:      v.Local.AsSlice(),
			Port:         v.Port,
			// Forwarding is static: no learning, no flooding to unknowns.
			Learning: false,
		}
		if err := m.h.LinkAdd(dev); err != nil {
			return fmt.Errorf("create VXLAN device %s (VNI %d, port %d): %w", v.Name, v.VNI, v.Port, err)
		}
		if l, err = m.h.LinkByName(v.Name); err != nil {
			return fmt.Errorf("look up new VXLAN device %s: %w", v.Name, err)
		}
	}
	if l.Attrs().HardwareAddr.String() != mac.String() {
		if err := m.h.LinkSetHardwareAddr(l, mac); err != nil {
			return fmt.Errorf("set MAC of %s: %w", v.Name, err)
		}
	}
	if err := m.setup(l, v.Addr, v.MTU); err != nil {
		return fmt.Errorf("set up %s: %w", v.Name, err)
	}
	return nil
}

// RemoveVXLAN deletes the device, and with it its routes and entries.
func (m *Manager) RemoveVXLAN(name string) error {
	l, err := m.h.LinkByName(name)
	if err != nil {
		return nil
	}
	if err := m.h.LinkDel(l); err != nil {
		return fmt.Errorf("delete VXLAN device %s: %w", name, err)
	}
	return nil
}

// SetVXLANPeers makes the device's static neighbour (VTEP address → MAC:
// ARP for IPv4, NDP for IPv6) and forwarding (MAC → underlay address)
// entries exactly peers, a map of remote VTEP address to remote underlay
// address, both of the device's family. The device is ours, so every
// permanent entry on it is too.
func (m *Manager) SetVXLANPeers(name string, peers map[netip.Addr]netip.Addr) error {
	l, err := m.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up VXLAN device %s: %w", name, err)
	}
	idx := l.Attrs().Index
	wantNeigh := map[string]string{} // VTEP IP → MAC
	wantFDB := map[string]string{}   // MAC → underlay IP
	for vtep, under := range peers {
		mac := VTEPMAC(under).String()
		wantNeigh[vtep.String()] = mac
		wantFDB[mac] = under.String()
	}
	var errs []error

	var neighs []netlink.Neigh
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := m.h.NeighList(idx, fam)
		if err != nil {
			return fmt.Errorf("list neighbours on %s: %w", name, err)
		}
		neighs = append(neighs, ns...)
	}
	for _, n := range neighs {
		if n.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		if mac, ok := wantNeigh[n.IP.String()]; ok && mac == n.HardwareAddr.String() {
			delete(wantNeigh, n.IP.String())
			continue
		}
		if err := m.h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove neighbour %s on %s: %w", n.IP, name, err))
		}
	}
	for ip, mac := range wantNeigh {
		hw, _ := net.ParseMAC(mac)
		a := netip.MustParseAddr(ip)
		n := &netlink.Neigh{LinkIndex: idx, Family: family(a), State: netlink.NUD_PERMANENT,
			IP: a.AsSlice(), HardwareAddr: hw}
		if err := m.h.NeighSet(n); err != nil {
			errs = append(errs, fmt.Errorf("add neighbour %s lladdr %s on %s: %w", ip, mac, name, err))
		}
	}

	fdb, err := m.h.NeighList(idx, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("list forwarding entries on %s: %w", name, err)
	}
	for _, n := range fdb {
		if n.State&netlink.NUD_PERMANENT == 0 || n.IP == nil {
			continue
		}
		if dst, ok := wantFDB[n.HardwareAddr.String()]; ok && dst == n.IP.String() {
			delete(wantFDB, n.HardwareAddr.String())
			continue
		}
		if err := m.h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove forwarding entry %s on %s: %w", n.HardwareAddr, name, err))
		}
	}
	for mac, dst := range wantFDB {
		hw, _ := net.ParseMAC(mac)
		n := &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: net.ParseIP(dst), HardwareAddr: hw}
		if err := m.h.NeighSet(n); err != nil {
			errs = append(errs, fmt.Errorf("add forwarding entry %s dst %s on %s: %w", mac, dst, name, err))
		}
	}
	return errors.Join(errs...)
}
