// Package cniplugin is the nexthop CNI plugin: Calico-style routed pod
// wiring (veth, /32 pod address, link-local gateway answered by proxy ARP,
// host /32 route) with addresses from the node daemon's IPAM socket.
package cniplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
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
	podIP, block, daemonMTU, err := client.Allocate(ctx, ipam.Request{
		ContainerID:  args.ContainerID,
		IfName:       args.IfName,
		PodNamespace: string(kargs.K8S_POD_NAMESPACE),
		PodName:      string(kargs.K8S_POD_NAME),
	})
	if err != nil {
		return nil, ipamError(err)
	}
	mtu, mtuSource := conf.podMTU(daemonMTU)
	log = log.With("ip", podIP, "mtu", mtu, "mtuFrom", mtuSource)
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
		podIP:  podIP,
	}
	hostIf, podIf, err := w.setup()
	if err != nil {
		return nil, types.NewError(types.ErrInternal, fmt.Sprintf("wire %s (%s) for %s: %v", args.IfName, podIP, args.ContainerID, err), "")
	}
	if w.replaced != "" {
		log.Warn("removed the host veth of an older sandbox of the same pod (re-created under its name before the old sandbox's DEL)",
			"hostVeth", w.host.name, "oldContainer", w.replaced)
	}
	log.Info("pod wired", "hostVeth", w.host.name, "block", block, "secondary", w.secondary, "table", tableName(w.table))

	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: hostIf.Name, Mac: hostIf.HardwareAddr.String(), Mtu: hostIf.MTU},
			{Name: podIf.Name, Mac: podIf.HardwareAddr.String(), Sandbox: args.Netns, Mtu: podIf.MTU},
		},
		IPs: []*current.IPConfig{{
			Address:   net.IPNet{IP: podIP.AsSlice(), Mask: net.CIDRMask(32, 32)},
			Gateway:   Gateway.AsSlice(),
			Interface: current.Int(1),
		}},
	}
	// A secondary interface's default route is in its own table, used only
	// for traffic from its address: the pod's default route is not here.
	if !w.secondary {
		result.Routes = []*types.Route{{
			Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			GW:  Gateway.AsSlice(),
		}}
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
	ip, err := client.Release(ctx, args.ContainerID, args.IfName)
	if err == nil {
		log.Info("pod unwired", "released", ip)
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
	podIP := al.IP
	switch {
	case !found:
		problems = append(problems, fmt.Sprintf("ipam: no address allocated to %s/%s", args.ContainerID, args.IfName))
	case al.OutOfBlock:
		problems = append(problems, fmt.Sprintf("ipam: %s is outside the node block (the block changed)", al.IP))
	}
	if conf.PrevResult != nil {
		prev, err := current.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: %v", err), "")
		}
		if prevIP, ok := resultIP(prev, args.Netns); ok {
			if found && prevIP != al.IP {
				problems = append(problems, fmt.Sprintf("ipam holds %s but prevResult says %s", al.IP, prevIP))
			}
			podIP = prevIP
		}
		if m, ok := resultMTU(prev, args.Netns, args.IfName); ok {
			mtu = m
		}
	}
	if podIP.IsValid() {
		// Named after the pod, or after the container if wired before
		// pods were (an upgrade) or the runtime names no pod.
		host := hostVethFor(args.ContainerID, args.IfName, kargs)
		host.name = findHostVeth(host.att, hostVethNames(args.ContainerID, args.IfName, kargs))
		w := &wiring{hostNS: hostNS, podNS: podNS, ifName: args.IfName, host: host, mtu: mtu, podIP: podIP}
		problems = append(problems, w.check()...)
	}
	if len(problems) > 0 {
		return types.NewError(ErrCheckFailed, "check: "+strings.Join(problems, "; "), "")
	}
	return nil
}

// resultIP finds the IPv4 address of the sandbox interface in a result.
func resultIP(r *current.Result, netnsPath string) (netip.Addr, bool) {
	for _, c := range r.IPs {
		// An index outside the interface list (negative, say, from a
		// hand-made prevResult) names no interface: not ours.
		if c.Interface != nil {
			if i := *c.Interface; i < 0 || i >= len(r.Interfaces) || r.Interfaces[i].Sandbox != netnsPath {
				continue
			}
		}
		if a, ok := netip.AddrFromSlice(c.Address.IP); ok && a.Unmap().Is4() {
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
		log.Info("gc released address", "ip", al.IP, "container", al.ContainerID, "ifName", al.IfName)
	}
	return nil
}

// Status reports whether ADD can succeed: the daemon answers and the block
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
	if st.GetUsed() >= st.GetSize() {
		return types.NewError(types.ErrPluginNotAvailable,
			fmt.Sprintf("block %s exhausted: all %d allocatable addresses are in use", st.GetBlock(), st.GetSize()), "")
	}
	return nil
}
