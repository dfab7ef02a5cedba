// Package cniplugin is the nexthop CNI plugin: Calico-style routed pod
// wiring (veth; /32 pod address, link-local gateway 169.254.1.1 answered by
// proxy ARP, host /32 route; /128 pod address, gateway fe80::1 held by the
// host veth, host /128 route) with addresses from the node daemon's IPAM
// socket: IPv4, IPv6 or both, as the node's blocks.
package cniplugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nexthop-net/nexthop/ipam"
	"github.com/nexthop-net/nexthop/ipam/ipampb"
)

// Timeout bounds one plugin invocation; runtimes retry on code 11.
var Timeout = 30 * time.Second

// Funcs returns the CNI verbs for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    withCtx(Add),
		Del:    withCtx(Del),
		Check:  withCtx(Check),
		GC:     withCtx(GC),
		Status: withCtx(Status),
	}
}

func withCtx(f func(context.Context, *skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		ctx, cancel := context.WithTimeout(context.Background(), Timeout)
		defer cancel()
		return f(ctx, args)
	}
}

// asCNIError returns err as a *types.Error (skel prints it as the result),
// keeping the code of one it wraps and otherwise using code.
func asCNIError(code uint, err error) *types.Error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	return types.NewError(code, err.Error(), "")
}

// ipamError maps an IPAM call's failure to the CNI code a runtime acts on.
func ipamError(err error) *types.Error {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	case codes.ResourceExhausted:
		return types.NewError(ErrBlockExhausted, err.Error(), "")
	case codes.FailedPrecondition:
		return types.NewError(ErrStaleAllocation, err.Error(), "")
	case codes.InvalidArgument:
		return types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "")
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}

func openNetNS(path string) (ns.NetNS, *types.Error) {
	netns, err := ns.GetNS(path)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("CNI_NETNS: open %q: %v", path, err), "")
	}
	return netns, nil
}

// Add wires the pod: allocate, create the veth pair, configure both ends.
// Anything it created is undone if a later step fails.
func Add(ctx context.Context, args *skel.CmdArgs) error {
	conf, cerr := parseConfig(args.StdinData)
	if cerr != nil {
		return cerr
	}
	result, err := add(ctx, conf, args)
	if err != nil {
		return err
	}
	return types.PrintResult(result, conf.CNIVersion)
}

func add(ctx context.Context, conf *NetConf, args *skel.CmdArgs) (_ *current.Result, retErr error) {
	kargs, cerr := parseArgs(args.Args)
	if cerr != nil {
		return nil, cerr
	}
	log := conf.logger().With("container", args.ContainerID, "ifName", args.IfName)

	podNS, cerr := openNetNS(args.Netns)
	if cerr != nil {
		return nil, cerr
	}
	defer podNS.Close()
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return nil, types.NewError(types.ErrInternal, fmt.Sprintf("open host netns: %v", err), "")
	}
	defer hostNS.Close()
	// Wiring the node's own netns as a pod would give the node a default
	// route via 169.254.1.1 and hold an address: refused before anything.
	if same, err := sameNetNS(podNS, hostNS); err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("CNI_NETNS %q: %v", args.Netns, err), "")
	} else if same {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf(
			"CNI_NETNS %q is the node's own network namespace (the one the plugin runs in), not a pod's: nothing done", args.Netns), "")
	}

	client, err := ipam.NewClient(conf.IPAMSocket)
	if err != nil {
		return nil, types.NewError(types.ErrInternal, err.Error(), "")
	}
	defer client.Close()
	lease, err := client.Allocate(ctx, ipam.Request{
		ContainerID:  args.ContainerID,
		IfName:       args.IfName,
		PodNamespace: string(kargs.K8S_POD_NAMESPACE),
		PodName:      string(kargs.K8S_POD_NAME),
	})
	if err != nil {
		return nil, ipamError(err)
	}
	mtu, mtuSource := conf.podMTU(lease.MTU)
	log = log.With("ip", lease.AddrString(), "mtu", mtu, "mtuFrom", mtuSource)
	defer func() {
		if retErr == nil {
			return
		}
		// A fresh context: ctx may be why we failed.
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := client.Release(rctx, args.ContainerID, args.IfName); err != nil {
			log.Error("roll back allocation after failed ADD", "err", err)
		}
	}()

	w := &wiring{
		hostNS: hostNS,
		podNS:  podNS,
		ifName: args.IfName,
		host:   hostVethFor(args.ContainerID, args.IfName, kargs),
		mtu:    mtu,
		podIP:  lease.IP,
		podIP6: lease.IPv6,
	}
	hostIf, podIf, err := w.setup()
	if err != nil {
		return nil, types.NewError(types.ErrInternal, fmt.Sprintf("wire %s (%s) for %s: %v", args.IfName, lease.AddrString(), args.ContainerID, err), "")
	}
	if w.replaced != "" {
		log.Warn("removed the host veth of an older sandbox of the same pod (re-created under its name before the old sandbox's DEL)",
			"hostVeth", w.host.name, "oldContainer", w.replaced)
	}
	log.Info("pod wired", "hostVeth", w.host.name, "block", lease.Block, "blockV6", lease.BlockV6, "secondary", w.secondary, "table", tableName(w.table))

	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: hostIf.Name, Mac: hostIf.HardwareAddr.String(), Mtu: hostIf.MTU},
			{Name: podIf.Name, Mac: podIf.HardwareAddr.String(), Sandbox: args.Netns, Mtu: podIf.MTU},
		},
	}
	for _, ip := range lease.Addrs() {
		result.IPs = append(result.IPs, &current.IPConfig{
			Address:   *hostPrefix(ip),
			Gateway:   gatewayOf(ip).AsSlice(),
			Interface: current.Int(1),
		})
		// A secondary interface's default route is in its own table, used
		// only for traffic from its address: the pod's default route is not
		// here.
		if !w.secondary {
			dst := *defaultDst
			if ip.Is6() {
				dst = *defaultDstV6
			}
			result.Routes = append(result.Routes, &types.Route{Dst: dst, GW: gatewayOf(ip).AsSlice()})
		}
	}
	return result, nil
}

// Del unwires the pod and releases its address. Everything already gone
// (netns, veth, allocation) is fine: runtimes call DEL more than once. If the
// daemon cannot be reached (an upgrade, an uninstall), DEL still succeeds, so
// the pod does not stick in Terminating: it records the release in
// conf.PendingReleaseDir and the daemon makes it when it is back.
func Del(ctx context.Context, args *skel.CmdArgs) error {
	conf, cerr := parseConfig(args.StdinData)
	if cerr != nil {
		return cerr
	}
	// Taken first: an ADD of this attachment after this moment is newer than
	// this DEL, and a late release must not free its address.
	began := time.Now().UTC()
	log := conf.logger().With("container", args.ContainerID, "ifName", args.IfName)
	// Unparsable CNI_ARGS must not keep a pod from going: without the pod's
	// name only the container-based host veth name is looked for (a pod
	// veth goes with the netns anyway).
	kargs, _ := parseArgs(args.Args)
	att := ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	if err := teardown(args.Netns, args.IfName, att, hostVethNames(args.ContainerID, args.IfName, kargs)); err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("unwire %s of %s: %v", args.IfName, args.ContainerID, err), "")
	}
	client, err := ipam.NewClient(conf.IPAMSocket)
	if err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	defer client.Close()
	ips, err := client.Release(ctx, args.ContainerID, args.IfName)
	if err == nil {
		log.Info("pod unwired", "released", fmt.Sprint(ips))
		return nil
	}
	if !ipam.IsUnavailable(err) {
		return ipamError(err)
	}
	rec, serr := ipam.RecordPendingRelease(conf.PendingReleaseDir,
		ipam.PendingRelease{ContainerID: args.ContainerID, IfName: args.IfName, Time: began})
	if serr != nil {
		// Succeeding now would leak the address: let the runtime retry.
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("%v; recording the release for later failed too: %v", err, serr), "")
	}
	log.Warn("pod unwired; daemon unreachable, its address is released when the daemon is back",
		"pendingRelease", rec, "err", err)
	return nil
}

// Check verifies the attachment against prevResult, the IPAM record and the
// kernel, and reports every difference at once.
func Check(ctx context.Context, args *skel.CmdArgs) error {
	conf, cerr := parseConfig(args.StdinData)
	if cerr != nil {
		return cerr
	}
	kargs, cerr := parseArgs(args.Args)
	if cerr != nil {
		return cerr
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("CNI_NETNS: open %q: %v", args.Netns, err), "")
	}
	defer podNS.Close()
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("open host netns: %v", err), "")
	}
	defer hostNS.Close()

	client, err := ipam.NewClient(conf.IPAMSocket)
	if err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	defer client.Close()
	al, found, daemonMTU, err := client.Get(ctx, args.ContainerID, args.IfName)
	if err != nil {
		return ipamError(err)
	}
	// Compare with the MTU the attachment was created with, not the one ADD
	// would choose now: the daemon's MTU can change at runtime (an
	// encapsulation switch) and the conflist can be edited, and neither
	// rewires existing pods or makes them broken. ADD's result records that
	// MTU on the pod interface, so prevResult's wins (below); only without it
	// (no prevResult, or a result from before CNI 1.0, which has no mtu) is
	// the choice ADD would make now the best guess.
	mtu, _ := conf.podMTU(daemonMTU)
	var problems []string
	podIPs := [2]netip.Addr{al.IP, al.IPv6}
	switch {
	case !found:
		problems = append(problems, fmt.Sprintf("ipam: no address allocated to %s/%s", args.ContainerID, args.IfName))
	case al.OutOfBlock:
		problems = append(problems, fmt.Sprintf("ipam: %v is outside the node blocks (the blocks changed)", al.Addrs()))
	}
	if conf.PrevResult != nil {
		prev, err := current.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: %v", err), "")
		}
		// Each family on its own: the result and the record must agree on
		// both addresses.
		for i, v6 := range []bool{false, true} {
			prevIP, ok := resultIP(prev, args.Netns, v6)
			switch {
			case ok && found && prevIP != al.Addr(v6):
				held := "nothing"
				if al.Addr(v6).IsValid() {
					held = al.Addr(v6).String()
				}
				problems = append(problems, fmt.Sprintf("ipam holds %s but prevResult says %s", held, prevIP))
			case !ok && found && al.Addr(v6).IsValid():
				problems = append(problems, fmt.Sprintf("ipam holds %s but prevResult has no %s address", al.Addr(v6), familyName(v6)))
			}
			if ok {
				podIPs[i] = prevIP
			}
		}
		if m, ok := resultMTU(prev, args.Netns, args.IfName); ok {
			mtu = m
		}
	}
	if podIPs[0].IsValid() || podIPs[1].IsValid() {
		// Named after the pod, or after the container if wired before
		// pods were (an upgrade) or the runtime names no pod.
		host := hostVethFor(args.ContainerID, args.IfName, kargs)
		host.name = findHostVeth(host.att, hostVethNames(args.ContainerID, args.IfName, kargs))
		w := &wiring{hostNS: hostNS, podNS: podNS, ifName: args.IfName, host: host, mtu: mtu, podIP: podIPs[0], podIP6: podIPs[1]}
		problems = append(problems, w.check()...)
	}
	if len(problems) > 0 {
		return types.NewError(ErrCheckFailed, "check: "+strings.Join(problems, "; "), "")
	}
	return nil
}

func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// resultIP finds the address of the family (v6: IPv6) of the sandbox
// interface in a result.
func resultIP(r *current.Result, netnsPath string, v6 bool) (netip.Addr, bool) {
	for _, c := range r.IPs {
		// An index outside the interface list (negative, say, from a
		// hand-made prevResult) names no interface: not ours.
		if c.Interface != nil {
			if i := *c.Interface; i < 0 || i >= len(r.Interfaces) || r.Interfaces[i].Sandbox != netnsPath {
				continue
			}
		}
		if a, ok := netip.AddrFromSlice(c.Address.IP); ok && a.Unmap().Is6() == v6 {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// resultMTU finds the MTU a result reports for the sandbox interface ifName.
// Results of CNI versions before 1.0 carry no MTU.
func resultMTU(r *current.Result, netnsPath, ifName string) (int, bool) {
	for _, i := range r.Interfaces {
		if i.Name == ifName && i.Sandbox == netnsPath && i.Mtu >= ipam.MinMTU && i.Mtu <= ipam.MaxMTU {
			return i.Mtu, true
		}
	}
	return 0, false
}

// GC releases every allocation the runtime no longer lists as valid. The
// veths need no collecting: they die with their pod's netns, whichever
// name their host end has. A request
// without a list (missing or null) is refused before the daemon is asked.
func GC(ctx context.Context, args *skel.CmdArgs) error {
	conf, cerr := parseConfig(args.StdinData)
	if cerr != nil {
		return cerr
	}
	valid, cerr := validAttachments(args.StdinData)
	if cerr != nil {
		return cerr
	}
	client, err := ipam.NewClient(conf.IPAMSocket)
	if err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	defer client.Close()
	released, err := client.GC(ctx, valid)
	if err != nil {
		return ipamError(err)
	}
	log := conf.logger()
	for _, al := range released {
		log.Info("gc released address", "ip", al.AddrString(), "container", al.ContainerID, "ifName", al.IfName)
	}
	return nil
}

// Status reports whether ADD can succeed: the daemon answers and each block
// has a free address.
func Status(ctx context.Context, args *skel.CmdArgs) error {
	conf, cerr := parseConfig(args.StdinData)
	if cerr != nil {
		return cerr
	}
	client, err := ipam.NewClient(conf.IPAMSocket)
	if err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	defer client.Close()
	st, err := client.Status(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	blocks := st.GetBlocks()
	if len(blocks) == 0 { // a daemon from before IPv6
		blocks = []*ipampb.BlockStatus{{Block: st.GetBlock(), Size: uint64(st.GetSize()), Used: st.GetUsed()}}
	}
	for _, b := range blocks {
		if uint64(b.GetUsed()) >= b.GetSize() {
			return types.NewError(types.ErrPluginNotAvailable,
				fmt.Sprintf("block %s exhausted: all %d allocatable addresses are in use", b.GetBlock(), b.GetSize()), "")
		}
	}
	return nil
}
