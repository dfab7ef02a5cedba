package ipam

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpenStore: whatever bytes the store file holds, Open never panics or
// faults. It refuses the file as corrupt, or opens a store that works and
// still holds the pod the kernel shows.
func FuzzOpenStore(f *testing.F) {
	path, _ := storeWith(f, 3)
	good, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:8<<10])
	f.Add(good[:len(good)/2])
	zeroed := append([]byte(nil), good...)
	clear(zeroed[4096:8192])
	f.Add(zeroed)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		live := netip.MustParseAddr("10.9.0.200")
		a := openFuzzed(t, data, []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}, live)
		if a == nil {
			return
		}
		al, err := allocateFuzzed(t, a)
		if err == nil && al.IP == live {
			t.Fatalf("handed out %s, which the kernel shows a live pod using", live)
		}
	})
}

// openFuzzed writes data as the store file and opens it for blocks, with a
// kernel that shows the pod "live" wired to addresses live. It returns nil
// when Open refused the file (logging a refusal other than as corrupt);
// the store is closed when the test ends.
func openFuzzed(t *testing.T, data []byte, blocks []netip.Prefix, live ...netip.Addr) *Allocator {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ipam.db")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	k := KernelFunc(func() ([]PodRoute, error) {
		var rs []PodRoute
		for _, ip := range live {
			rs = append(rs, PodRoute{IP: ip, HostVeth: HostVethName("live", "eth0")})
		}
		return rs, nil
	})
	a, err := Open(context.Background(), p, blocks, nil, WithKernel(k))
	if err != nil {
		var ce *CorruptError
		if !errors.As(err, &ce) {
			t.Logf("not corrupt, still refused: %v", err)
		}
		return nil
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// allocateFuzzed allocates for a new pod in an opened store: it may find
// the store full or out of its blocks, but fail no other way.
func allocateFuzzed(t *testing.T, a *Allocator) (Allocation, error) {
	t.Helper()
	al, err := a.Allocate(context.Background(), Request{ContainerID: "fuzz", IfName: "eth0"})
	var ex *ExhaustedError
	var ob *OutOfBlockError
	if err != nil && !errors.As(err, &ex) && !errors.As(err, &ob) {
		t.Fatalf("Allocate on an opened store: %v", err)
	}
	return al, err
}

// FuzzOpenStoreDualStack: the same for a dual-stack node, seeded with a
// dual-stack store and one of the IPv4-only build: whatever the file holds,
// Open refuses it as corrupt or opens a store in which no address of
// either family is held twice and the kernel's live pod is never handed
// out.
func FuzzOpenStoreDualStack(f *testing.F) {
	blocks := []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24"), netip.MustParsePrefix("fd00:10:9::/64")}
	path := filepath.Join(f.TempDir(), "ipam.db")
	a, err := Open(context.Background(), path, blocks, nil)
	if err != nil {
		f.Fatal(err)
	}
	for i := range 3 {
		if _, err := a.Allocate(context.Background(), Request{ContainerID: string(rune('a' + i)), IfName: "eth0"}); err != nil {
			f.Fatal(err)
		}
	}
	a.Close()
	dual, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	legacy, _ := storeWith(f, 3)
	old, err := os.ReadFile(legacy)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(dual)
	f.Add(old)
	f.Add(dual[:len(dual)/2])
	f.Fuzz(func(t *testing.T, data []byte) {
		live4, live6 := netip.MustParseAddr("10.9.0.200"), netip.MustParseAddr("fd00:10:9::c8")
		a := openFuzzed(t, data, blocks, live4, live6)
		if a == nil {
			return
		}
		al, err := allocateFuzzed(t, a)
		if err == nil && (al.IP == live4 || al.IPv6 == live6) {
			t.Fatalf("handed out %s, which the kernel shows a live pod using", al.AddrString())
		}
		held := map[netip.Addr]bool{}
		for _, al := range a.List() {
			for _, ip := range al.Addrs() {
				if held[ip] {
					t.Fatalf("%s held twice", ip)
				}
				held[ip] = true
			}
		}
		if !held[live4] || !held[live6] {
			t.Fatalf("the live pod's addresses are not held: %v", held)
		}
	})
}
