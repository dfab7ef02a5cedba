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
		p := filepath.Join(t.TempDir(), "ipam.db")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		live := netip.MustParseAddr("10.9.0.200")
		k := KernelFunc(func() ([]PodRoute, error) {
			return []PodRoute{{IP: live, HostVeth: HostVethName("live", "eth0")}}, nil
		})
		a, err := Open(context.Background(), p, []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}, nil, WithKernel(k))
		if err != nil {
			var ce *CorruptError
			if !errors.As(err, &ce) {
				t.Logf("not corrupt, still refused: %v", err)
			}
			return
		}
		defer a.Close()
		al, err := a.Allocate(context.Background(), Request{ContainerID: "fuzz", IfName: "eth0"})
		var ex *ExhaustedError
		if err != nil && !errors.As(err, &ex) {
			var ob *OutOfBlockError
			if !errors.As(err, &ob) {
				t.Fatalf("Allocate on an opened store: %v", err)
			}
		}
		if err == nil && al.IP == live {
			t.Fatalf("handed out %s, which the kernel shows a live pod using", live)
		}
	})
}
