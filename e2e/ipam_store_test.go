package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestIPAMStoreNeverForgets (issue 11 items 3 and 5): pods wired by the real
// plugin, then the daemon's store removed, emptied, and corrupted between
// restarts. A removed or emptied store is rebuilt from the pods' routes,
// and new ADDs never get a live pod's address. A corrupt store stops the
// daemon with exit 1 and "IPAM store corrupt: <path>", the file untouched;
// moved aside, the next start rebuilds.
func TestIPAMStoreNeverForgets(t *testing.T) {
	c, n, k := startCNINode(t)
	ipamStoreNeverForgets(t, c, n, k)
}

// TestIPAMStoreNeverForgetsDualStack is the same on a dual-stack node
// (issue 14): the store is rebuilt from each pod's /32 and /128 routes,
// one allocation per pod holding both, and no new ADD gets a live pod's
// address of either family.
func TestIPAMStoreNeverForgetsDualStack(t *testing.T) {
	c, n, k := startCNINodeWith(t, func(n *Node) { withIPv6(t, n, NodeBlocks(n)[0], blockV6(n)) })
	ipamStoreNeverForgets(t, c, n, k)
}

func ipamStoreNeverForgets(t *testing.T, c *Cluster, n *Node, k *CNI) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*CNITimeout)
	defer cancel()
	store := filepath.Join(n.Config.StateDir, "ipam.db")

	var live []*cniPod
	addPods := func(tag string, count int) {
		t.Helper()
		pods, err := newCNIPods(c, k, tag, count)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods {
			if err := p.add(ctx, k, false); err != nil {
				t.Fatalf("ADD %s: %v", p.ns, err)
			}
		}
		live = append(live, pods...)
		// checkPods: ADD results, the pods' eth0, the store and the
		// node's routes agree, no address twice.
		if err := checkPods(n, live); err != nil {
			t.Fatal(err)
		}
	}
	// recovered checks the daemon's log and its store after a rebuild, and
	// lets the runtime's GC name the recovered addresses again.
	recovered := func(how string) {
		t.Helper()
		// Counted per address: a dual-stack pod has two.
		want := fmt.Sprintf("IPAM store %s: recovered %d pod addresses from the kernel", how, len(live)*len(NodeBlocks(n)))
		if err := n.LogContains(want); err != nil {
			t.Fatalf("%v\n%s", err, tail(n.LogPath(), 20))
		}
		_, allocs, err := ipamList(n)
		if err != nil {
			t.Fatal(err)
		}
		held := map[netip.Addr]string{}
		for _, al := range allocs {
			for _, ip := range al.Addrs() {
				held[ip] = al.HostVeth + al.ContainerID
			}
		}
		for _, p := range live {
			for _, ip := range []netip.Addr{p.ip, p.ip6} {
				if ip.IsValid() && held[ip] == "" {
					t.Fatalf("after the store %s, IPAM does not hold %s (pod %s)", how, ip, p.ns)
				}
			}
			// Both halves recovered into one allocation, not two.
			if p.ip.IsValid() && p.ip6.IsValid() && held[p.ip] != held[p.ip6] {
				t.Fatalf("after the store %s, pod %s's addresses are held apart: %s by %s, %s by %s", how, p.ns, p.ip, held[p.ip], p.ip6, held[p.ip6])
			}
		}
		if err := k.GC(ctx, attachments(live)); err != nil {
			t.Fatalf("GC: %v", err)
		}
	}

	addPods("ipa", 5)

	// rm ipam.db: the repro served used=0 and handed these out again.
	if err := c.StopDaemon(n); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(store); err != nil {
		t.Fatal(err)
	}
	if err := c.StartDaemon(n); err != nil {
		t.Fatal(err)
	}
	recovered("was missing")
	addPods("ipb", 5)

	// : > ipam.db
	if err := c.StopDaemon(n); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(store, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.StartDaemon(n); err != nil {
		t.Fatal(err)
	}
	recovered("was empty")
	addPods("ipc", 5)

	// A DEL of a recovered pod frees its address as before.
	if err := k.Del(ctx, live[0].rt); err != nil {
		t.Fatal(err)
	}
	live = live[1:]
	if err := checkPods(n, live); err != nil {
		t.Fatal(err)
	}

	// Garbage in the store: refused, exit 1, the file kept as it was.
	if err := c.StopDaemon(n); err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 64<<10)
	rand.Read(junk)
	if err := os.WriteFile(store, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	err := c.StartDaemon(n)
	if err == nil {
		t.Fatal("nexthopd started on a corrupt IPAM store")
	}
	if !strings.Contains(err.Error(), "nexthopd exited (exit status 1)") {
		t.Fatalf("want exit status 1 (a runtime failure), got: %v", err)
	}
	if err := n.LogContains("IPAM store corrupt: " + store + ": "); err != nil {
		t.Fatalf("%v\n%s", err, tail(n.LogPath(), 20))
	}
	if err := n.LogContains("panic"); err == nil {
		t.Fatalf("the daemon panicked:\n%s", tail(n.LogPath(), 40))
	}
	if b, _ := os.ReadFile(store); string(b) != string(junk) {
		t.Fatal("the corrupt store was changed")
	}
	// The way out docs/operations.md gives: move it aside and start again.
	if err := os.Rename(store, store+".bad"); err != nil {
		t.Fatal(err)
	}
	if err := c.StartDaemon(n); err != nil {
		t.Fatal(err)
	}
	recovered("was missing")
	addPods("ipd", 5)
}
