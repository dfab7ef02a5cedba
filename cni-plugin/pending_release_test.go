package cniplugin

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/internal/syncbuf"
	"github.com/nexthop-net/nexthop/ipam"
)

// ipamDaemon is the IPAM half of nexthopd with its state in dir, started and
// stopped like the real one: open the store, process the pending releases,
// then serve (daemon.RunWith does the same).
type ipamDaemon struct {
	block netip.Prefix
	db    string
	spool string
	sock  string

	alloc *ipam.Allocator
	logs  *syncbuf.Buffer
	stop  func()
}

func newIPAMDaemon(t *testing.T, block string) *ipamDaemon {
	dir := t.TempDir()
	d := &ipamDaemon{
		block: netip.MustParsePrefix(block),
		db:    filepath.Join(dir, "state", "ipam.db"),
		spool: filepath.Join(dir, "state", ipam.PendingReleaseDirName),
		sock:  filepath.Join(dir, "run", "nexthop.sock"),
	}
	t.Cleanup(func() {
		if d.stop != nil {
			d.stop()
		}
	})
	return d
}

func (d *ipamDaemon) start(t *testing.T) {
	t.Helper()
	if d.stop != nil {
		t.Fatal("ipam daemon already running")
	}
	a, err := ipam.Open(context.Background(), d.db, []netip.Prefix{d.block}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.alloc = a
	d.logs = &syncbuf.Buffer{}
	log := slog.New(slog.NewTextHandler(d.logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		wait := a.ReleasePendingEvery(ctx, d.spool, time.Hour, log)
		done <- ipam.Serve(ctx, a, d.sock, log)
		wait()
	}()
	d.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ipam server: %v", err)
		}
		a.Close()
		d.stop = nil
	}
	// Connect, not stat: the socket file exists a moment before it listens.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if c, err := net.Dial("unix", d.sock); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ipam socket %s never appeared", d.sock)
		}
	}
}

func (d *ipamDaemon) list(t *testing.T) []ipam.Allocation {
	t.Helper()
	c, err := ipam.NewClient(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, l, err := c.List(context.Background())
	if err != nil {
		t.Fatalf("%v\ndaemon log:\n%s", err, d.logs.String())
	}
	return l
}

// hostRoutesTo lists host routes to ip/32 in netns n.
func hostRoutesTo(t *testing.T, n ns.NetNS, ip netip.Addr) []netlink.Route {
	t.Helper()
	rs, err := in(t, n, func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{Dst: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}}, netlink.RT_FILTER_DST)
	})
	if err != nil {
		t.Fatalf("list routes to %s: %v", ip, err)
	}
	return rs
}

// Pods never stick: with the daemon stopped (an upgrade) DEL unwires the pod
// and succeeds, and the address is released once, when the daemon is back.
func TestDelWithDaemonDown(t *testing.T) {
	requireRoot(t)
	host := newTestHost(t, "10.86.0.0/24") // the node's netns; its own IPAM is not used
	d := newIPAMDaemon(t, "10.86.1.0/30")  // one allocatable address
	d.start(t)
	ctx := context.Background()
	conf := netConf(t, d.sock, map[string]any{"pendingReleaseDir": d.spool})
	pod := newNetNS(t, "pod")
	args := &skel.CmdArgs{ContainerID: "nhc-ctr-" + randSuffix(), Netns: pod.Path(), IfName: "eth0", StdinData: conf}
	pc, _ := parseConfig(conf)
	res, err := in(t, host.ns, func() (*current.Result, error) { return add(ctx, pc, args) })
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	podIP := netip.MustParseAddr("10.86.1.2")
	if res.IPs[0].Address.IP.String() != podIP.String() || len(hostRoutesTo(t, host.ns, podIP)) != 1 {
		t.Fatalf("ADD: %v, host routes %v", res.IPs[0].Address, hostRoutesTo(t, host.ns, podIP))
	}
	hostVeth := HostVethName(args.ContainerID, "eth0")

	d.stop()
	if _, err := in(t, host.ns, func() (any, error) { return nil, Del(ctx, args) }); err != nil {
		t.Fatalf("DEL with the daemon down: %v", err)
	}
	if _, err := in(t, host.ns, func() (netlink.Link, error) { return netlink.LinkByName(hostVeth) }); err == nil {
		t.Fatalf("DEL left host veth %s", hostVeth)
	}
	if rs := hostRoutesTo(t, host.ns, podIP); len(rs) != 0 {
		t.Fatalf("DEL left host routes to %s: %v", podIP, rs)
	}
	if _, err := in(t, pod, func() (netlink.Link, error) { return netlink.LinkByName("eth0") }); err == nil {
		t.Fatal("DEL left pod eth0")
	}
	rec := filepath.Join(d.spool, ipam.PendingReleaseName(args.ContainerID, "eth0"))
	b, err := os.ReadFile(rec)
	if err != nil {
		t.Fatalf("DEL left no pending release: %v", err)
	}
	var pr ipam.PendingRelease
	if err := json.Unmarshal(b, &pr); err != nil || pr.ContainerID != args.ContainerID || pr.IfName != "eth0" || pr.Time.IsZero() {
		t.Fatalf("pending release %s: %+v %v", b, pr, err)
	}
	// Retried, and with the pod's netns gone by now: still fine, one record.
	gone := *args
	gone.Netns = "/run/netns/nhc-gone-" + randSuffix()
	if _, err := in(t, host.ns, func() (any, error) { return nil, Del(ctx, &gone) }); err != nil {
		t.Fatalf("DEL with the daemon down and the netns gone: %v", err)
	}
	if es, _ := os.ReadDir(d.spool); len(es) != 1 {
		t.Fatalf("spool after two DELs holds %d entries", len(es))
	}

	// The daemon is back: the address is free before it answers anyone.
	d.start(t)
	if l := d.list(t); len(l) != 0 {
		t.Fatalf("after restart the store still holds %+v", l)
	}
	if !strings.Contains(d.logs.String(), "ip="+podIP.String()) {
		t.Fatalf("release at start not logged:\n%s", d.logs.String())
	}
	if _, err := os.Stat(rec); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("processed record still there: %v", err)
	}
	// It goes to exactly one new pod, and a further restart frees nothing.
	pod2 := newNetNS(t, "pod")
	args2 := &skel.CmdArgs{ContainerID: "nhc-ctr-" + randSuffix(), Netns: pod2.Path(), IfName: "eth0", StdinData: conf}
	t.Cleanup(func() { in(t, host.ns, func() (any, error) { return nil, Del(ctx, args2) }) })
	res2, err := in(t, host.ns, func() (*current.Result, error) { return add(ctx, pc, args2) })
	if err != nil || res2.IPs[0].Address.IP.String() != podIP.String() {
		t.Fatalf("ADD of a new pod: %v %v", res2, err)
	}
	d.stop()
	d.start(t)
	if strings.Contains(d.logs.String(), "released") {
		t.Fatalf("second start released something:\n%s", d.logs.String())
	}
	if l := d.list(t); len(l) != 1 || l[0].ContainerID != args2.ContainerID || l[0].IP != podIP {
		t.Fatalf("after the second start: %+v, want only %s holding %s", l, args2.ContainerID, podIP)
	}
	if _, err := d.alloc.Allocate(ctx, ipam.Request{ContainerID: "nhc-third", IfName: "eth0"}); !errors.As(err, new(*ipam.ExhaustedError)) {
		t.Fatalf("%s handed out twice: %v", podIP, err)
	}
}

// A spool the daemon would refuse is no place to leave a release: DEL still
// unwires, then fails with 11 so the runtime retries, naming both problems.
func TestDelWithDaemonDownAndUntrustedSpool(t *testing.T) {
	requireRoot(t)
	host := newTestHost(t, "10.86.2.0/24")
	spool := filepath.Join(t.TempDir(), ipam.PendingReleaseDirName)
	if err := os.Mkdir(spool, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(spool, 0o777); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "nexthop.sock") // no daemon
	pod := newNetNS(t, "pod")
	args := &skel.CmdArgs{ContainerID: "nhc-ctr-" + randSuffix(), Netns: pod.Path(), IfName: "eth0",
		StdinData: netConf(t, sock, map[string]any{"pendingReleaseDir": spool})}
	// A pod interface for DEL to remove.
	err := pod.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"})
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = in(t, host.ns, func() (any, error) { return nil, Del(context.Background(), args) })
	if te := cniCode(t, err); te.Code != types.ErrTryAgainLater || !strings.Contains(te.Msg, sock) ||
		!strings.Contains(te.Msg, "group or others may write") {
		t.Fatalf("DEL with an untrusted spool: code %d %q", te.Code, te.Msg)
	}
	if _, err := in(t, pod, func() (netlink.Link, error) { return netlink.LinkByName("eth0") }); err == nil {
		t.Fatal("DEL did not unwire before failing")
	}
	if es, _ := os.ReadDir(spool); len(es) != 0 {
		t.Fatalf("record left in an untrusted spool: %v", es)
	}
}

// With no netns (the runtime lost it) and no daemon, DEL succeeds at once.
func TestDelWithNothingLeft(t *testing.T) {
	spool := filepath.Join(t.TempDir(), ipam.PendingReleaseDirName)
	sock := filepath.Join(t.TempDir(), "nexthop.sock")
	args := &skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: netConf(t, sock, map[string]any{"pendingReleaseDir": spool})}
	if err := Del(context.Background(), args); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if _, err := os.Stat(filepath.Join(spool, ipam.PendingReleaseName("c1", "eth0"))); err != nil {
		t.Fatalf("no pending release: %v", err)
	}
}

// The plugin's default spool is where the daemon looks with its default
// state dir.
func TestDefaultPendingReleaseDirIsDaemons(t *testing.T) {
	if want := filepath.Join(config.DefaultStateDir, ipam.PendingReleaseDirName); DefaultPendingReleaseDir != want {
		t.Fatalf("plugin default %s, daemon default %s", DefaultPendingReleaseDir, want)
	}
	conf, cerr := parseConfig(netConf(t, "/run/x.sock", nil))
	if cerr != nil || conf.PendingReleaseDir != DefaultPendingReleaseDir {
		t.Fatalf("default pendingReleaseDir: %+v %v", conf, cerr)
	}
}
