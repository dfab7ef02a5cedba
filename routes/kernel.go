package routes

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// kernelAPI is the netlink the reconciler uses: small, so that tests can count
// what a batch costs with a fake.
type kernelAPI interface {
	// linkIndex returns the named link's index; found is false if there is none.
	linkIndex(name string) (index int, found bool, err error)
	linkName(index int) (string, error)
	// addrs lists every IPv4 and IPv6 address of the node with its prefix
	// length.
	addrs() ([]netip.Prefix, error)
	// routes lists the routes of family (netlink.FAMILY_V4 or FAMILY_V6)
	// matching filter under mask.
	routes(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error)
	add(*netlink.Route) error
	replace(*netlink.Route) error
	del(*netlink.Route) error
	// changes reports whether links and addresses may have changed since
	// the last call. It sees every change made before it is called.
	changes() (links, addrs bool)
	close()
}

// netlinkKernel is the kernel through a netlink handle, with a second socket
// subscribed to link and address notifications of both families. The kernel queues a
// notification before the change's own netlink call returns, so draining
// that socket at the start of a batch sees every change made before it:
// a device created just before Apply is never missed, as it could be with a
// goroutine relaying LinkSubscribe events.
type netlinkKernel struct {
	h   netlinksafe.Handle
	sub *nl.NetlinkSocket
	buf []byte
}

func openKernel(ns netns.NsHandle) (*netlinkKernel, error) {
	var h netlinksafe.Handle
	var sub *nl.NetlinkSocket
	var err error
	groups := []uint{unix.RTNLGRP_LINK, unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR}
	if ns > 0 { // fd 0 is never a namespace handle; NsHandle(0).IsOpen() is true
		h, err = netlinksafe.NewHandleAt(ns, unix.NETLINK_ROUTE)
	} else {
		h, err = netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	if ns > 0 {
		sub, err = nl.SubscribeAt(ns, netns.None(), unix.NETLINK_ROUTE, groups...)
	} else {
		sub, err = nl.Subscribe(unix.NETLINK_ROUTE, groups...)
	}
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("subscribe to link and address changes: %w", err)
	}
	return &netlinkKernel{h: h, sub: sub, buf: make([]byte, 64<<10)}, nil
}

func (k *netlinkKernel) close() {
	k.sub.Close()
	k.h.Close()
}

func (k *netlinkKernel) changes() (links, addrs bool) {
	for {
		n, _, err := unix.Recvfrom(k.sub.GetFd(), k.buf, unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return links, addrs
		case errors.Is(err, unix.ENOBUFS):
			// The queue overflowed and notifications were lost: assume all changed.
			links, addrs = true, true
			continue
		case err != nil:
			return true, true
		}
		msgs, err := syscall.ParseNetlinkMessage(k.buf[:n])
		if err != nil {
			links, addrs = true, true
			continue
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.RTM_NEWLINK, unix.RTM_DELLINK:
				links = true
			case unix.RTM_NEWADDR, unix.RTM_DELADDR:
				addrs = true
			}
		}
	}
}

func (k *netlinkKernel) linkIndex(name string) (int, bool, error) {
	l, err := k.h.LinkByName(name)
	if _, ok := err.(netlink.LinkNotFoundError); ok {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return l.Attrs().Index, true, nil
}

func (k *netlinkKernel) linkName(index int) (string, error) {
	l, err := k.h.LinkByIndex(index)
	if err != nil {
		return "", err
	}
	return l.Attrs().Name, nil
}

func (k *netlinkKernel) addrs() ([]netip.Prefix, error) {
	var list []netlink.Addr
	var err error
	// One dump for all links and both families. An interrupted dump means
	// addresses changed while it ran: read again.
	for range 5 {
		if list, err = k.h.AddrList(nil, netlink.FAMILY_ALL); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	out := make([]netip.Prefix, 0, len(list))
	for _, a := range list {
		if a.IPNet == nil {
			continue
		}
		if p, ok := prefixOf(a.IPNet); ok {
			out = append(out, netip.PrefixFrom(p.Addr(), p.Bits()))
		}
	}
	return out, nil
}

func (k *netlinkKernel) routes(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	return k.h.RouteListFiltered(family, filter, mask)
}

func (k *netlinkKernel) add(kr *netlink.Route) error     { return k.h.RouteAdd(kr) }
func (k *netlinkKernel) replace(kr *netlink.Route) error { return k.h.RouteReplace(kr) }
func (k *netlinkKernel) del(kr *netlink.Route) error     { return k.h.RouteDel(kr) }
