package uninstall

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netns"

	"github.com/nexthop-net/nexthop/nat"
	"github.com/nexthop-net/nexthop/tunnel"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true: this test needs root (network namespaces)")
	}
	t.Skip("needs root: creates network namespaces")
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// node makes a network namespace standing in for a node: loopback, and an
// underlay ul0 (a veth: this kernel may lack dummy) with 192.0.2.11/24 and 2001:db8:1::11/64. It returns
// the namespace's name and an ns.NetNS for ns.Do.
func node(t *testing.T) (string, ns.NetNS) {
	t.Helper()
	needRoot(t)
	b := make([]byte, 4)
	rand.Read(b)
	name := "nhu-" + hex.EncodeToString(b)
	sh(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	n, err := ns.GetNS("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	ipn := func(args ...string) { sh(t, append([]string{"ip", "-n", name}, args...)...) }
	ipn("link", "set", "lo", "up")
	ipn("link", "add", "ul0", "type", "veth", "peer", "name", "ul0p")
	ipn("link", "set", "ul0p", "up")
	ipn("addr", "add", "192.0.2.11/24", "dev", "ul0")
	ipn("addr", "add", "2001:db8:1::11/64", "dev", "ul0", "nodad")
	ipn("link", "set", "ul0", "up")
	return name, n
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// hostDirs lays out a node's files under a temporary root and returns the
// options pointing at them.
func hostDirs(t *testing.T) Options {
	t.Helper()
	root := t.TempDir()
	o := Options{
		CNIBinDir:  filepath.Join(root, "opt/cni/bin"),
		CNIConfDir: filepath.Join(root, "etc/cni/net.d"),
		StateDir:   filepath.Join(root, "var/lib/nexthop"),
		RunDir:     filepath.Join(root, "run/nexthop"),
	}
	// Binaries: ours, a portmap the installer created (recorded), a
	// loopback that was there before us (not recorded), someone else's.
	for _, b := range []string{"nexthop", "portmap", "loopback", "bridge"} {
		write(t, filepath.Join(o.CNIBinDir, b), "binary "+b)
	}
	write(t, filepath.Join(o.CNIBinDir, OwnedRecord), "portmap\n")
	write(t, filepath.Join(o.CNIBinDir, ".nexthop.tmp-123"), "half-written")
	write(t, filepath.Join(o.CNIBinDir, "."+OwnedRecord+".tmp-456"), "half-written")
	write(t, filepath.Join(o.CNIBinDir, ".bridge.tmp-789"), "someone else's")
	// Configs: ours under both names, someone else's, one the installer
	// moved aside, and one moved aside whose name was taken since.
	write(t, filepath.Join(o.CNIConfDir, "05-nexthop.conflist"), `{"name":"nexthop"}`)
	write(t, filepath.Join(o.CNIConfDir, "10-nexthop.conflist"), `{"name":"nexthop"}`)
	write(t, filepath.Join(o.CNIConfDir, "20-other.conflist"), `{"name":"other"}`)
	write(t, filepath.Join(o.CNIConfDir, "00-calico.conflist"+BackupSuffix), `{"name":"k8s-pod-network"}`)
	write(t, filepath.Join(o.CNIConfDir, "01-flannel.conflist"+BackupSuffix), `{"name":"old flannel"}`)
	write(t, filepath.Join(o.CNIConfDir, "01-flannel.conflist"), `{"name":"new flannel"}`)
	// State and run: a database, and the socket of a daemon that is gone
	// (a stale socket file refuses connections).
	write(t, filepath.Join(o.StateDir, "ipam.db"), "db")
	l, err := net.Listen("unix", filepath.Join(o.RunDir, "nexthop.sock"))
	if err != nil {
		if err := os.MkdirAll(o.RunDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if l, err = net.Listen("unix", filepath.Join(o.RunDir, "nexthop.sock")); err != nil {
			t.Fatal(err)
		}
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	return o
}

// ensureTunl0 has tm give tunl0 our address 10.244.1.1 and bring it up,
// as the daemon does in ipipMode. A kernel without ipip has no tunl0: a
// bridge of that name stands in (uninstall finds tunl0 by name alone).
func ensureTunl0(t *testing.T, name string, tm *tunnel.Manager) {
	t.Helper()
	err := tm.EnsureIPIP(netip.MustParseAddr("10.244.1.1"), 1480)
	if errors.Is(err, tunnel.ErrNoIPIP) {
		t.Logf("no ipip in this kernel: a bridge stands in for tunl0")
		sh(t, "ip", "-n", name, "link", "add", tunnel.IPIPDevice, "type", "bridge")
		err = tm.EnsureIPIP(netip.MustParseAddr("10.244.1.1"), 1480)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// kernelScene sets up, in namespace name, what nexthopd leaves on a node
// and what others have there.
func kernelScene(t *testing.T, name string) {
	t.Helper()
	ipn := func(args ...string) { sh(t, append([]string{"ip", "-n", name}, args...)...) }
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	// Our VXLAN device, made by the daemon's own code, once under the
	// default name and once under a configured one; and someone else's.
	tm, err := tunnel.New(h, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tm.Close()
	u, err := tm.FindUnderlay(netip.MustParseAddr("192.0.2.11"), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []tunnel.VXLAN{
		{Name: "vxlan.nexthop", VNI: 4096, Port: 4789},
		{Name: "vx-custom", VNI: 7, Port: 4790},
	} {
		v.Local, v.Underlay, v.MTU, v.Addr = netip.MustParseAddr("192.0.2.11"), u.Index, 1450, netip.MustParseAddr("10.244.1.1")
		if v.Name == "vx-custom" {
			v.Addr = netip.MustParseAddr("10.245.1.1")
		}
		if err := tm.EnsureVXLAN(v); err != nil {
			t.Fatal(err)
		}
	}
	ipn("link", "add", "vxlan.other", "type", "vxlan", "id", "42", "dstport", "4791", "local", "192.0.2.11", "dev", "ul0")
	ipn("link", "set", "vxlan.other", "up")

	// Our routes: blackholes and unreachables, gateways, multipath, via
	// the VXLAN device, in main and in table 100, IPv4 and IPv6.
	ipn("route", "add", "blackhole", "10.244.1.0/24", "proto", "201")
	ipn("route", "add", "10.244.2.0/24", "via", "192.0.2.12", "proto", "201")
	ipn("route", "add", "10.244.3.0/24", "proto", "201", "nexthop", "via", "192.0.2.12", "nexthop", "via", "192.0.2.13")
	ipn("route", "add", "10.244.4.0/24", "via", "10.244.4.1", "dev", "vxlan.nexthop", "onlink", "proto", "201")
	ipn("route", "add", "unreachable", "10.244.5.0/24", "proto", "201", "table", "100")
	ipn("route", "add", "10.244.6.0/24", "via", "192.0.2.14", "proto", "201", "table", "100")
	ipn("-6", "route", "add", "blackhole", "2001:db8:244:1::/64", "proto", "201")
	ipn("-6", "route", "add", "2001:db8:244:2::/64", "via", "2001:db8:1::12", "proto", "201", "table", "100")
	// Someone else's: static routes (one for our very prefix, in another
	// table), a boot route, a BIRD route, an IPv6 static blackhole, and
	// the kernel's connected routes.
	ipn("route", "add", "198.51.100.0/24", "via", "192.0.2.1", "proto", "static")
	ipn("route", "add", "blackhole", "10.244.1.0/24", "proto", "static", "table", "200")
	ipn("route", "add", "198.51.101.0/24", "via", "192.0.2.1")
	ipn("route", "add", "203.0.113.0/24", "via", "192.0.2.1", "proto", "bird", "table", "100")
	ipn("-6", "route", "add", "blackhole", "2001:db8:99::/64", "proto", "static")

	// A pod's host end outliving the DaemonSet, with its /32 route; and
	// links that only look like it.
	ipn("link", "add", "nh0123456789a", "type", "veth", "peer", "name", "pod0")
	ipn("link", "set", "nh0123456789a", "up")
	ipn("route", "add", "10.244.1.5/32", "dev", "nh0123456789a", "scope", "link")
	ipn("link", "add", "nhcafe", "type", "veth", "peer", "name", "pod1")
	ipn("link", "add", "nhabcdef01234", "type", "bridge")
	ipn("link", "add", "cali0123456789a", "type", "veth", "peer", "name", "pod2")

	// tunl0 with our address (by the daemon's code) and someone else's.
	ensureTunl0(t, name, tm)
	ipn("addr", "add", "10.99.0.1/32", "dev", tunnel.IPIPDevice)

	// Our NAT table, by the daemon's code, and others' tables.
	nm, err := nat.New(h, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nm.Close()
	if err := nm.Sync(context.Background(), nat.Rules{Enabled: true,
		Sources: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		Exclude: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}); err != nil {
		t.Fatal(err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	c.AddTable(&nftables.Table{Name: "other-nat", Family: nftables.TableFamilyIPv4})
	// Our table's name, but another family: not ours.
	c.AddTable(&nftables.Table{Name: nat.Table, Family: nftables.TableFamilyINet})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}

func nftTables(t *testing.T, name string) []string {
	t.Helper()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, tb := range ts {
		fam := map[nftables.TableFamily]string{nftables.TableFamilyIPv4: "ip", nftables.TableFamilyINet: "inet"}[tb.Family]
		out = append(out, fam+" "+tb.Name)
	}
	slices.Sort(out)
	return out
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

func TestUninstall(t *testing.T) {
	name, n := node(t)
	kernelScene(t, name)
	o := hostDirs(t)

	var res Result
	var out strings.Builder
	err := n.Do(func(ns.NetNS) error {
		var err error
		res, err = Run(o, &out)
		return err
	})
	t.Logf("first run:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}

	// What a user checks: no route of ours anywhere, others' intact.
	for _, fam := range []string{"-4", "-6"} {
		if left := sh(t, "ip", "-n", name, fam, "route", "show", "table", "all", "proto", "201"); strings.TrimSpace(left) != "" {
			t.Errorf("routes of ours left (%s):\n%s", fam, left)
		}
	}
	all := sh(t, "ip", "-n", name, "route", "show", "table", "all") + sh(t, "ip", "-n", name, "-6", "route", "show", "table", "all")
	for _, want := range []string{
		"198.51.100.0/24 via 192.0.2.1 dev ul0 proto static",
		"blackhole 10.244.1.0/24 table 200 proto static",
		"198.51.101.0/24 via 192.0.2.1 dev ul0",
		"203.0.113.0/24 via 192.0.2.1 dev ul0 table 100 proto bird",
		"blackhole 2001:db8:99::/64 dev lo proto static",
		"192.0.2.0/24 dev ul0 proto kernel",
		"2001:db8:1::/64 dev ul0 proto kernel",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("someone else's route %q is gone:\n%s", want, all)
		}
	}
	if strings.Contains(all, "10.244.1.5") {
		t.Errorf("the pod's /32 route outlived its host veth:\n%s", all)
	}

	links := sh(t, "ip", "-n", name, "-o", "link", "show")
	for _, gone := range []string{"vxlan.nexthop", "vx-custom", "nh0123456789a", "pod0"} {
		if strings.Contains(links, " "+gone+":") || strings.Contains(links, " "+gone+"@") {
			t.Errorf("link %s of ours left:\n%s", gone, links)
		}
	}
	for _, kept := range []string{"vxlan.other", "nhcafe", "nhabcdef01234", "cali0123456789a", "ul0"} {
		if !strings.Contains(links, " "+kept+":") && !strings.Contains(links, " "+kept+"@") {
			t.Errorf("someone else's link %s is gone:\n%s", kept, links)
		}
	}
	// tunl0 stays, up, with the other address only.
	tunl := sh(t, "ip", "-n", name, "addr", "show", "dev", tunnel.IPIPDevice)
	if strings.Contains(tunl, "10.244.1.1/32") || !strings.Contains(tunl, "10.99.0.1/32") || !strings.Contains(tunl, ",UP") {
		t.Errorf("tunl0 should stay up with the other address only:\n%s", tunl)
	}

	if got, want := nftTables(t, name), []string{"inet " + nat.Table, "ip other-nat"}; !slices.Equal(got, want) {
		t.Errorf("nftables tables after uninstall: %v, want %v", got, want)
	}

	for _, gone := range []string{
		filepath.Join(o.CNIBinDir, "nexthop"), filepath.Join(o.CNIBinDir, "portmap"),
		filepath.Join(o.CNIBinDir, OwnedRecord), filepath.Join(o.CNIBinDir, ".nexthop.tmp-123"),
		filepath.Join(o.CNIBinDir, "."+OwnedRecord+".tmp-456"),
		filepath.Join(o.CNIConfDir, "05-nexthop.conflist"), filepath.Join(o.CNIConfDir, "10-nexthop.conflist"),
		filepath.Join(o.CNIConfDir, "00-calico.conflist"+BackupSuffix),
		o.StateDir, o.RunDir,
	} {
		if exists(gone) {
			t.Errorf("%s of ours left", gone)
		}
	}
	for _, kept := range []string{
		filepath.Join(o.CNIBinDir, "loopback"), filepath.Join(o.CNIBinDir, "bridge"),
		filepath.Join(o.CNIBinDir, ".bridge.tmp-789"),
		filepath.Join(o.CNIConfDir, "20-other.conflist"),
		filepath.Join(o.CNIConfDir, "01-flannel.conflist"+BackupSuffix),
		filepath.Dir(o.StateDir), filepath.Dir(o.RunDir),
	} {
		if !exists(kept) {
			t.Errorf("%s is gone", kept)
		}
	}
	for file, want := range map[string]string{
		"00-calico.conflist":  `{"name":"k8s-pod-network"}`,
		"01-flannel.conflist": `{"name":"new flannel"}`,
	} {
		if b, err := os.ReadFile(filepath.Join(o.CNIConfDir, file)); err != nil || string(b) != want {
			t.Errorf("%s holds %q (%v), want %q", file, b, err, want)
		}
	}

	// The printout names each thing once, in words a user can match.
	printed := out.String()
	for _, want := range []string{
		"removed route blackhole 10.244.1.0/24 table main\n",
		"removed route 10.244.2.0/24 via 192.0.2.12 dev ul0 table main\n",
		"removed route 10.244.3.0/24 nexthop via 192.0.2.12 dev ul0 nexthop via 192.0.2.13 dev ul0 table main\n",
		"removed route unreachable 10.244.5.0/24 table 100\n",
		"removed route blackhole 2001:db8:244:1::/64 table main\n",
		"removed route 2001:db8:244:2::/64 via 2001:db8:1::12 dev ul0 table 100\n",
		"removed address 10.244.1.1/32 from tunl0\n",
		"removed VXLAN device vxlan.nexthop (VNI 4096)\n",
		"removed VXLAN device vx-custom (VNI 7)\n",
		"removed pod host veth nh0123456789a\n",
		"removed nftables table ip nexthop-nat\n",
		"restored " + filepath.Join(o.CNIConfDir, "00-calico.conflist") + " (from " + filepath.Join(o.CNIConfDir, "00-calico.conflist"+BackupSuffix) + ")\n",
		"kept " + filepath.Join(o.CNIConfDir, "01-flannel.conflist"+BackupSuffix) + ": ",
		"removed " + o.StateDir + "\n",
	} {
		if !strings.Contains(printed, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	wantN := 22
	if len(res.Removed) != wantN || len(res.Restored) != 1 || len(res.Kept) != 1 {
		t.Errorf("removed %d things, restored %d and kept %d, want %d, 1 and 1", len(res.Removed), len(res.Restored), len(res.Kept), wantN)
	}

	// Again: nothing of ours is left to remove.
	out.Reset()
	err = n.Do(func(ns.NetNS) error {
		var err error
		res, err = Run(o, &out)
		return err
	})
	if err != nil || len(res.Removed) != 0 || len(res.Restored) != 0 {
		t.Fatalf("second run: err %v, removed %q, restored %q\n%s", err, res.Removed, res.Restored, out.String())
	}
}

// With our address gone and none other left, tunl0 goes back down, as the
// kernel creates it; the device itself stays.
func TestTunl0BackDown(t *testing.T) {
	name, n := node(t)
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	tm, err := tunnel.New(h, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tm.Close()
	ensureTunl0(t, name, tm)
	sh(t, "ip", "-n", name, "route", "add", "blackhole", "10.244.1.0/24", "proto", "201")

	var out strings.Builder
	if err := n.Do(func(ns.NetNS) error { _, err := Run(hostDirs(t), &out); return err }); err != nil {
		t.Fatal(err)
	}
	tunl := sh(t, "ip", "-n", name, "addr", "show", "dev", tunnel.IPIPDevice)
	if strings.Contains(tunl, "10.244.1.1") || strings.Contains(tunl, ",UP") {
		t.Errorf("tunl0 should be down without addresses:\n%s", tunl)
	}
	for _, want := range []string{"removed address 10.244.1.1/32 from tunl0\n", "restored tunl0 to down, as the kernel creates it\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
