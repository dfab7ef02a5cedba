package ipam

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true: this test needs root (network namespaces)")
	}
	t.Skip("needs root: creates network namespaces, veths and routes")
}

// nodeNS creates a namespace "nhi-<random>" standing for a node, removed
// when the test ends, and returns its name.
func nodeNS(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "nhi-" + hex.EncodeToString(b)
	ipNS(t, "", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	ipNS(t, name, "link", "set", "lo", "up")
	return name
}

func ipNS(t *testing.T, netns string, args ...string) {
	t.Helper()
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// wirePod makes what the CNI plugin leaves for a pod: a veth pair whose host
// end is HostVethName(id, ifName), the pod end in its own namespace, and
// the host route "<ip> dev <host veth> scope link".
func wirePod(t *testing.T, node, id, ifName, ip string) {
	t.Helper()
	pod := nodeNS(t)
	host := HostVethName(id, ifName)
	ipNS(t, node, "link", "add", host, "type", "veth", "peer", "name", ifName, "netns", pod)
	ipNS(t, node, "link", "set", host, "up")
	ipNS(t, pod, "addr", "add", ip+"/32", "dev", ifName)
	ipNS(t, pod, "link", "set", ifName, "up")
	ipNS(t, node, "route", "add", ip+"/32", "dev", host, "scope", "link")
}

// openInNode opens the store at path for blocks in namespace node, as the
// daemon opens it there: recovering from the node's real pod routes.
func openInNode(t *testing.T, node, path string, blocks []netip.Prefix) *Allocator {
	t.Helper()
	nsh, err := ns.GetNS("/run/netns/" + node)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	var a *Allocator
	err = nsh.Do(func(ns.NetNS) error {
		var err error
		a, err = Open(context.Background(), path, blocks, nil, WithKernel(KernelPodRoutes))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Item 3 with the kernel's real objects: pods wired in a node namespace,
// the store removed, then emptied. The allocator opened in that namespace
// (as the daemon opens it) holds the pods' addresses again, and ADDs over
// the socket never get one of them.
func TestStoreRebuiltFromRealPodRoutes(t *testing.T) {
	needRoot(t)
	node := nodeNS(t)
	live := map[string]string{}
	for i := range 4 {
		ip := fmt.Sprintf("10.77.0.%d", 2+i)
		wirePod(t, node, fmt.Sprintf("%064x", i+1), "eth0", ip)
		live[ip] = HostVethName(fmt.Sprintf("%064x", i+1), "eth0")
	}
	// What must not count as a pod: a /32 through another veth, a
	// wider route through a host veth, an "nh" name on a bridge.
	ipNS(t, node, "link", "add", "other0", "type", "veth", "peer", "name", "other1")
	ipNS(t, node, "link", "set", "other0", "up")
	ipNS(t, node, "route", "add", "10.77.0.100/32", "dev", "other0")
	ipNS(t, node, "route", "add", "10.77.5.0/24", "dev", HostVethName(fmt.Sprintf("%064x", 1), "eth0"))
	ipNS(t, node, "link", "add", "nh0123456789a", "type", "bridge")
	ipNS(t, node, "link", "set", "nh0123456789a", "up")
	ipNS(t, node, "route", "add", "10.77.0.101/32", "dev", "nh0123456789a")

	dir := t.TempDir()
	path := filepath.Join(dir, "ipam.db")
	for _, how := range []string{"removed", "emptied"} {
		t.Run(how, func(t *testing.T) {
			if how == "removed" {
				os.Remove(path)
			} else {
				os.WriteFile(path, nil, 0o600)
			}
			a := openInNode(t, node, path, []netip.Prefix{netip.MustParsePrefix("10.77.0.0/24")})
			got := map[string]string{}
			for _, al := range a.List() {
				got[al.IP.String()] = al.HostVeth
			}
			if fmt.Sprint(got) != fmt.Sprint(live) {
				a.Close()
				t.Fatalf("recovered %v, want the wired pods %v", got, live)
			}
			sock := filepath.Join(dir, "run", "nexthop.sock")
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- Serve(ctx, a, sock, nil) }()
			defer func() { cancel(); <-done; a.Close() }()
			waitSocket(t, sock)
			c := clientT(t, sock)
			for i := range 40 {
				l, err := c.Allocate(context.Background(), Request{ContainerID: fmt.Sprint(how, i), IfName: "eth0"})
				ip := l.IP
				if err != nil {
					t.Fatal(err)
				}
				if _, used := live[ip.String()]; used {
					t.Fatalf("ADD %d got %s, a live pod's address", i, ip)
				}
			}
		})
	}
}

// A host veth named after its pod (PodHostVethName) says whose it is by
// its alias only: an address recovered through it is the attachment's, so
// GC listing that attachment keeps it, and a veth wired before the alias
// (container-named) is still matched by its name.
func TestStoreRebuiltFromAliasedPodRoutes(t *testing.T) {
	needRoot(t)
	node := nodeNS(t)
	wirePod(t, node, "old", "eth0", "10.78.0.2") // before the alias
	pod := nodeNS(t)
	host := PodHostVethName("shop", "web-0")
	alias, _ := HostVethAlias(Attachment{"new", "eth0"}, PodKey("shop", "web-0"))
	ipNS(t, node, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", pod)
	ipNS(t, node, "link", "set", host, "alias", alias, "up")
	ipNS(t, node, "route", "add", "10.78.0.3/32", "dev", host, "scope", "link")

	a := openInNode(t, node, filepath.Join(t.TempDir(), "ipam.db"), []netip.Prefix{netip.MustParsePrefix("10.78.0.0/24")})
	defer a.Close()
	if al, ok := a.Get("new", "eth0"); !ok || al.IP.String() != "10.78.0.3" || al.HostVeth != "" {
		t.Fatalf("recovered through the aliased veth: %+v %v, want new/eth0 at 10.78.0.3", al, ok)
	}
	if al, ok := a.Get("old", "eth0"); !ok || al.IP.String() != "10.78.0.2" {
		t.Fatalf("recovered through the container-named veth: %+v %v", al, ok)
	}
	released, err := a.GC(context.Background(), []Attachment{{"new", "eth0"}, {"old", "eth0"}})
	if err != nil || len(released) != 0 {
		t.Fatalf("GC listing both pods released %v (%v)", released, err)
	}
	released, err = a.GC(context.Background(), []Attachment{{"old", "eth0"}})
	if err != nil || len(released) != 1 || released[0].IP.String() != "10.78.0.3" {
		t.Fatalf("GC without new/eth0 released %v (%v), want 10.78.0.3", released, err)
	}
}

// Dual-stack pods wired as the plugin wires them (a /32 and a /128 through
// the host veth, fe80::1/64 on it): a lost store is rebuilt with each pod
// holding both addresses in one allocation; the veth's own fe80::1 and its
// fe80::/64 route are no pod's.
func TestStoreRebuiltFromRealDualStackPodRoutes(t *testing.T) {
	needRoot(t)
	node := nodeNS(t)
	type pod struct{ id, v4, v6 string }
	pods := []pod{{"d1", "10.79.0.2", "fd00:10:79::2"}, {"d2", "10.79.0.3", "fd00:10:79::3"}, {"v6only", "", "fd00:10:79::4"}}
	for _, p := range pods {
		pns := nodeNS(t)
		host := HostVethName(p.id, "eth0")
		ipNS(t, node, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", pns)
		ipNS(t, node, "link", "set", host, "up")
		ipNS(t, node, "addr", "add", "fe80::1/64", "dev", host, "nodad")
		if p.v4 != "" {
			ipNS(t, node, "route", "add", p.v4+"/32", "dev", host, "scope", "link")
		}
		ipNS(t, node, "-6", "route", "add", p.v6+"/128", "dev", host)
	}
	a := openInNode(t, node, filepath.Join(t.TempDir(), "ipam.db"), parseBlocks("10.79.0.0/24,fd00:10:79::/64"))
	defer a.Close()
	var got []string
	for _, al := range a.List() {
		got = append(got, al.HostVeth+"="+al.AddrString())
	}
	var want []string
	for _, p := range pods {
		s := p.v6
		if p.v4 != "" {
			s = p.v4 + "+" + p.v6
		}
		want = append(want, HostVethName(p.id, "eth0")+"="+s)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("recovered %q, want %q", got, want)
	}
	for i := range 10 {
		al, err := a.Allocate(context.Background(), Request{ContainerID: fmt.Sprint("new", i), IfName: "eth0"})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods {
			if al.IP.String() == p.v4 || al.IPv6.String() == p.v6 {
				t.Fatalf("ADD %d got %s, a live pod's address", i, al.AddrString())
			}
		}
	}
}
