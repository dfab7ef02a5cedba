package ipam

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// kernelOf is a Kernel showing pods wired for the given attachments
// ("cid/ifName" → address), as the plugin wires them.
func kernelOf(pods map[string]string) Kernel {
	return KernelFunc(func() ([]PodRoute, error) {
		var out []PodRoute
		for k, ip := range pods {
			cid, ifName, _ := strings.Cut(k, "/")
			out = append(out, PodRoute{IP: netip.MustParseAddr(ip), HostVeth: HostVethName(cid, ifName)})
		}
		return out, nil
	})
}

func openK(t *testing.T, path, block string, k Kernel, log *bytes.Buffer) (*Allocator, error) {
	t.Helper()
	var l *slog.Logger
	if log != nil {
		l = slog.New(slog.NewTextHandler(log, nil))
	}
	a, err := Open(context.Background(), path, parseBlocks(block), l, WithKernel(k))
	if err == nil {
		t.Cleanup(func() { a.Close() })
	}
	return a, err
}

// storeWith writes a store holding n allocations c0..c(n-1) and returns
// its path and the addresses.
func storeWith(t testing.TB, n int) (string, []netip.Addr) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ipam.db")
	a, err := Open(context.Background(), path, []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ips []netip.Addr
	for i := range n {
		// Long pod names make the records fill several pages.
		al, err := a.Allocate(context.Background(), Request{ContainerID: fmt.Sprint("c", i), IfName: "eth0",
			PodNamespace: "default", PodName: strings.Repeat("p", 200) + fmt.Sprint(i)})
		if err != nil {
			t.Fatal(err)
		}
		ips = append(ips, al.IP)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	return path, ips
}

// Item 5: a corrupt store is refused with a clear error, never a panic or a
// SIGBUS, and the file is left as it was for the operator.
func TestCorruptStoreRefusedNeverPanics(t *testing.T) {
	path, _ := storeWith(t, 100)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(good) <= 32<<10 {
		t.Fatalf("store is %d bytes; the truncation cases need more than 32 KiB", len(good))
	}
	ps := int(binary.NativeEndian.Uint32(good[pageHeaderSize+8:]))
	rnd := rand.New(rand.NewPCG(1, 2))
	randomize := func(b []byte) {
		for i := range b {
			b[i] = byte(rnd.UintN(256))
		}
	}
	cases := map[string]func([]byte) []byte{
		"truncated to 8 KiB":  func(b []byte) []byte { return b[:8<<10] },
		"truncated to 16 KiB": func(b []byte) []byte { return b[:16<<10] },
		"truncated inside the pages in use": func(b []byte) []byte {
			pgid := max(binary.NativeEndian.Uint64(b[pageHeaderSize+40:]), binary.NativeEndian.Uint64(b[ps+pageHeaderSize+40:]))
			return b[:int(pgid-1)*ps]
		},
		"data pages randomised": func(b []byte) []byte {
			randomize(b[2*ps:])
			return b
		},
		"one data page randomised": func(b []byte) []byte {
			randomize(b[3*ps : 4*ps])
			return b
		},
		"both meta pages zeroed": func(b []byte) []byte {
			clear(b[:2*ps])
			return b
		},
		"random bytes": func(b []byte) []byte {
			randomize(b)
			return b
		},
		"a few bytes": func(b []byte) []byte { return b[:100] },
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "ipam.db")
			bad := damage(bytes.Clone(good))
			if err := os.WriteFile(p, bad, 0o600); err != nil {
				t.Fatal(err)
			}
			a, err := openK(t, p, "10.9.0.0/16", kernelOf(nil), nil)
			var ce *CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("Open = %v, %v; want a *CorruptError", a, err)
			}
			if want := "IPAM store corrupt: " + p + ": "; !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %q does not start with %q", err, want)
			}
			t.Logf("%v", err)
			if after, _ := os.ReadFile(p); !bytes.Equal(after, bad) {
				t.Fatalf("the corrupt file was changed")
			}
		})
	}
}

// metaTxid returns meta page i's transaction ID.
func metaTxid(b []byte, ps, i int) uint64 {
	return binary.NativeEndian.Uint64(b[i*ps+pageHeaderSize+48:])
}

// Item 5: "a zeroed newest meta page silently loses the last allocation".
// bbolt opens the previous transaction without a word; Open says so, keeps
// a copy of the file, and the pod's address comes back from the kernel.
func TestZeroedNewestMetaPageBackedUpAndRecovered(t *testing.T) {
	path, ips := storeWith(t, 3)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ps := int(binary.NativeEndian.Uint32(b[pageHeaderSize+8:]))
	newest := 0
	if metaTxid(b, ps, 1) > metaTxid(b, ps, 0) {
		newest = 1
	}
	clear(b[newest*ps : (newest+1)*ps])
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}

	// The three pods are wired; c2's allocation was the last transaction.
	pods := map[string]string{"c0/eth0": ips[0].String(), "c1/eth0": ips[1].String(), "c2/eth0": ips[2].String()}
	var log bytes.Buffer
	a, err := openK(t, path, "10.9.0.0/16", kernelOf(pods), &log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "IPAM store damaged: meta page") {
		t.Fatalf("no damage warning in the log:\n%s", log.String())
	}
	backups, _ := filepath.Glob(path + ".corrupt-*")
	if len(backups) != 1 {
		t.Fatalf("backups %v, want one", backups)
	}
	if kept, _ := os.ReadFile(backups[0]); !bytes.Equal(kept, b) {
		t.Fatal("the backup is not the damaged file as found")
	}
	if !strings.Contains(log.String(), backups[0]) {
		t.Fatalf("the log does not name the backup %s:\n%s", backups[0], log.String())
	}
	held := map[netip.Addr]bool{}
	for _, al := range a.List() {
		held[al.IP] = true
	}
	for _, ip := range ips {
		if !held[ip] {
			t.Fatalf("%s (a wired pod's) not held after the damaged open; held %v", ip, a.List())
		}
	}
	// The pod that lost its record keeps its address on a retried ADD,
	// and nobody else gets it.
	if ip := alloc(t, a, "c2", "eth0"); ip != ips[2] {
		t.Fatalf("c2 re-ADD got %s, want its %s", ip, ips[2])
	}
	for i := range 5 {
		if ip := alloc(t, a, fmt.Sprint("new", i), "eth0"); held[ip] {
			t.Fatalf("new pod got %s, a live pod's address", ip)
		}
	}
	a.Close()
	// The first commit rewrote the damaged page: the next start is clean.
	log.Reset()
	if _, err := openK(t, path, "10.9.0.0/16", kernelOf(pods), &log); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(log.String(), "damaged") {
		t.Fatalf("still damaged after a commit:\n%s", log.String())
	}
}

// Item 3: a missing or emptied store with pods on the node is rebuilt from
// their routes, and the next ADDs never get their addresses.
func TestMissingOrEmptyStoreRebuiltFromKernel(t *testing.T) {
	for _, how := range []string{"removed", "emptied"} {
		t.Run(how, func(t *testing.T) {
			path, ips := storeWith(t, 5)
			pods := map[string]string{}
			for i, ip := range ips {
				pods[fmt.Sprint("c", i, "/eth0")] = ip.String()
			}
			// A second interface of a pod (Multus) has its own veth.
			pods["c0/net1"] = "10.9.7.7"
			// A pod left from an earlier block of this node: held, never reused.
			pods["old/eth0"] = "10.8.0.5"
			if how == "removed" {
				os.Remove(path)
			} else {
				os.WriteFile(path, nil, 0o600)
			}
			var log bytes.Buffer
			a, err := openK(t, path, "10.9.0.0/16", kernelOf(pods), &log)
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("IPAM store was %s: recovered 7 pod addresses", map[string]string{"removed": "missing", "emptied": "empty"}[how]); !strings.Contains(log.String(), want) {
				t.Fatalf("log lacks %q:\n%s", want, log.String())
			}
			if a.Used() != 7 {
				t.Fatalf("Used() = %d, want 7: %v", a.Used(), a.List())
			}
			if ob := a.OutOfBlock(); len(ob) != 1 || ob[0].IP.String() != "10.8.0.5" {
				t.Fatalf("OutOfBlock() = %v, want 10.8.0.5", ob)
			}
			live := map[netip.Addr]bool{netip.MustParseAddr("10.9.7.7"): true}
			for _, ip := range ips {
				live[ip] = true
			}
			for i := range 50 {
				if ip := alloc(t, a, fmt.Sprint("new", i), "eth0"); live[ip] {
					t.Fatalf("ADD %d got %s, a live pod's address", i, ip)
				}
			}
			// The attachments are recognised by their veth: a retried ADD keeps
			// its address, Get finds it, DEL and GC release exactly theirs.
			if ip := alloc(t, a, "c1", "eth0"); ip != ips[1] {
				t.Fatalf("c1 re-ADD got %s, want %s", ip, ips[1])
			}
			if al, ok := a.Get("c0", "net1"); !ok || al.IP.String() != "10.9.7.7" {
				t.Fatalf("Get(c0, net1) = %v %v", al, ok)
			}
			if al, found, err := a.Release(context.Background(), "c2", "eth0"); err != nil || !found || al.IP != ips[2] {
				t.Fatalf("Release(c2) = %v %v %v", al, found, err)
			}
			valid := []Attachment{{"c0", "eth0"}, {"c0", "net1"}, {"c1", "eth0"}, {"c3", "eth0"}}
			for i := range 50 {
				valid = append(valid, Attachment{fmt.Sprint("new", i), "eth0"})
			}
			released, err := a.GC(context.Background(), valid)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, al := range released {
				got = append(got, al.IP.String())
			}
			if want := []string{"10.8.0.5", ips[4].String()}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("GC released %v, want %v", got, want)
			}
			// GC named the recovered addresses it kept.
			for _, al := range a.List() {
				if al.ContainerID == "" || al.HostVeth != "" {
					t.Fatalf("after GC, %s is still unnamed: %+v", al.IP, al)
				}
			}
			if al, ok := a.Get("c3", "eth0"); !ok || al.IP != ips[3] {
				t.Fatalf("Get(c3) after GC = %v %v", al, ok)
			}
			// What was recovered is durable without the kernel's help.
			before := fmt.Sprint(a.List())
			a.Close()
			b := openT(t, path, "10.9.0.0/16")
			if after := fmt.Sprint(b.List()); after != before {
				t.Fatalf("after reopen\n%s\nwant\n%s", after, before)
			}
		})
	}
}

func TestNewStoreWithoutPodsIsAFreshStart(t *testing.T) {
	var log bytes.Buffer
	a, err := openK(t, filepath.Join(t.TempDir(), "ipam.db"), "10.9.0.0/24", kernelOf(nil), &log)
	if err != nil {
		t.Fatal(err)
	}
	if a.Used() != 0 || !strings.Contains(log.String(), "no pod routes in the kernel") {
		t.Fatalf("Used %d, log:\n%s", a.Used(), log.String())
	}
}

// Without the kernel's word the store cannot be trusted: refuse to open.
func TestKernelUnreadableRefuses(t *testing.T) {
	_, err := openK(t, filepath.Join(t.TempDir(), "ipam.db"), "10.9.0.0/24",
		KernelFunc(func() ([]PodRoute, error) { return nil, errors.New("netlink: permission denied") }), nil)
	if err == nil || !strings.Contains(err.Error(), "read pod routes from the kernel") {
		t.Fatalf("Open = %v", err)
	}
}

// A held address the kernel routes elsewhere is logged, and the store kept.
func TestKernelDisagreesWithStoreLogged(t *testing.T) {
	path, ips := storeWith(t, 1)
	var log bytes.Buffer
	a, err := openK(t, path, "10.9.0.0/16", kernelOf(map[string]string{"other/eth0": ips[0].String()}), &log)
	if err != nil {
		t.Fatal(err)
	}
	if al, ok := a.Get("c0", "eth0"); !ok || al.IP != ips[0] || !strings.Contains(log.String(), "routes a held address to another pod's veth") {
		t.Fatalf("Get = %v %v; log:\n%s", al, ok, log.String())
	}
}

func TestStoreLockedByAnotherProcessIsNotCorrupt(t *testing.T) {
	defer func(d time.Duration) { lockTimeout = d }(lockTimeout)
	lockTimeout = 300 * time.Millisecond
	path, _ := storeWith(t, 1)
	openT(t, path, "10.9.0.0/16")
	// A second open of the file (flock is per open file) conflicts as
	// another daemon's would.
	_, err := openK(t, path, "10.9.0.0/16", kernelOf(nil), nil)
	var ce *CorruptError
	if err == nil || errors.As(err, &ce) || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("Open of a locked store = %v", err)
	}
}
