package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func openT(t *testing.T, path, block string) *Allocator {
	t.Helper()
	a, err := Open(context.Background(), path, parseBlocks(block), nil)
	if err != nil {
		t.Fatalf("Open(%s): %v", block, err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// parseBlocks reads "10.0.0.0/24" or "10.0.0.0/24,fd00::/64".
func parseBlocks(s string) []netip.Prefix {
	var out []netip.Prefix
	for _, b := range strings.Split(s, ",") {
		out = append(out, netip.MustParsePrefix(b))
	}
	return out
}

func alloc(t *testing.T, a *Allocator, id, ifName string) netip.Addr {
	t.Helper()
	al, err := a.Allocate(context.Background(), Request{ContainerID: id, IfName: ifName})
	if err != nil {
		t.Fatalf("Allocate(%s/%s): %v", id, ifName, err)
	}
	return al.IP
}

func TestAllocateSkipsNetworkReservedAndBroadcast(t *testing.T) {
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "10.0.0.0/29")
	if a.Size() != 5 {
		t.Fatalf("Size() = %d, want 5 (.2-.6 of a /29)", a.Size())
	}
	if got := a.Reserved(); got != netip.MustParseAddr("10.0.0.1") {
		t.Fatalf("Reserved() = %s", got)
	}
	var got []string
	for i := range 5 {
		got = append(got, alloc(t, a, fmt.Sprint("c", i), "eth0").String())
	}
	want := "10.0.0.2 10.0.0.3 10.0.0.4 10.0.0.5 10.0.0.6"
	if strings.Join(got, " ") != want {
		t.Fatalf("allocated %v, want %s", got, want)
	}
}

func TestExhaustion(t *testing.T) {
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "10.0.0.0/30")
	if ip := alloc(t, a, "only", "eth0"); ip != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("got %s, want the single usable 10.0.0.2", ip)
	}
	_, err := a.Allocate(context.Background(), Request{ContainerID: "more", IfName: "eth0"})
	var ex *ExhaustedError
	if !errors.As(err, &ex) {
		t.Fatalf("want ExhaustedError, got %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "10.0.0.0/30") || !strings.Contains(msg, "1 ") {
		t.Fatalf("error %q should name the block and its size", msg)
	}
	// A retry by the holder still works when the block is full.
	if ip := alloc(t, a, "only", "eth0"); ip != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("retry got %s", ip)
	}
}

func TestIdempotentAndReleaseIdempotent(t *testing.T) {
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "10.1.0.0/24")
	ctx := context.Background()
	ip1 := alloc(t, a, "c1", "eth0")
	if ip := alloc(t, a, "c1", "eth0"); ip != ip1 {
		t.Fatalf("retried allocate got %s, want %s", ip, ip1)
	}
	if ip := alloc(t, a, "c1", "eth1"); ip == ip1 {
		t.Fatalf("second interface got the same address %s", ip)
	}
	al, found, err := a.Release(ctx, "c1", "eth0")
	if err != nil || !found || al.IP != ip1 {
		t.Fatalf("Release = %v %v %v", al, found, err)
	}
	if _, found, err := a.Release(ctx, "c1", "eth0"); err != nil || found {
		t.Fatalf("second Release = %v %v, want nothing found and no error", found, err)
	}
	if _, found, err := a.Release(ctx, "never", "eth0"); err != nil || found {
		t.Fatalf("Release of unknown = %v %v", found, err)
	}
	if _, err := a.Allocate(ctx, Request{IfName: "eth0"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Allocate without container ID: %v", err)
	}
}

func TestRoundRobinDoesNotReuseAtOnce(t *testing.T) {
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "10.1.0.0/24")
	ip1 := alloc(t, a, "c1", "eth0")
	if _, _, err := a.Release(context.Background(), "c1", "eth0"); err != nil {
		t.Fatal(err)
	}
	if ip2 := alloc(t, a, "c2", "eth0"); ip2 == ip1 {
		t.Fatalf("released %s was handed out again at once", ip1)
	}
}

func TestPersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	ctx := context.Background()
	a, err := Open(ctx, path, []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := a.Allocate(ctx, Request{ContainerID: fmt.Sprint("c", i), IfName: "eth0", PodNamespace: "ns", PodName: fmt.Sprint("p", i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 20; i += 3 {
		if _, _, err := a.Release(ctx, fmt.Sprint("c", i), "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	before := a.List()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	b := openT(t, path, "10.2.0.0/24")
	after := b.List()
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("after reopen:\n%v\nwant\n%v", after, before)
	}
	// The round-robin position survives too: the next address is fresh.
	if ip := alloc(t, b, "new", "eth0"); ip != netip.MustParseAddr("10.2.0.22") {
		t.Fatalf("after reopen next address %s, want 10.2.0.22", ip)
	}
	// Retried ADDs after a restart get their old address.
	if ip := alloc(t, b, "c1", "eth0"); ip != before[0].IP {
		t.Fatalf("c1 got %s after reopen, want %s", ip, before[0].IP)
	}
}

func TestBlockChangeReportsAndNeverReuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	ctx := context.Background()
	a, err := Open(ctx, path, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/23")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// c0-c253 get 10.0.0.2-10.0.0.255, c254 10.0.1.0, c255 10.0.1.1 (network
	// and reserved address of the new /24), c256 and c257 10.0.1.2 and .3.
	for i := range 258 {
		if _, err := a.Allocate(ctx, Request{ContainerID: fmt.Sprint("c", i), IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()

	b := openT(t, path, "10.0.1.0/24")
	out := b.OutOfBlock()
	// The lower half is outside; 10.0.1.0 and .1 are now network and
	// reserved; 10.0.1.2 and .3 remain valid.
	if len(out) != 256 {
		t.Fatalf("OutOfBlock: %d allocations, want 256 (list %v)", len(out), b.List())
	}
	_, err = b.Allocate(ctx, Request{ContainerID: "c0", IfName: "eth0"})
	var ob *OutOfBlockError
	if !errors.As(err, &ob) || !strings.Contains(err.Error(), "10.0.1.0/24") {
		t.Fatalf("retry by a holder outside the block: %v", err)
	}
	// c254 holds 10.0.1.0, c255 holds 10.0.1.1: both unusable now.
	for _, id := range []string{"c254", "c255"} {
		if _, err := b.Allocate(ctx, Request{ContainerID: id, IfName: "eth0"}); !errors.As(err, &ob) {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if ip := alloc(t, b, "c256", "eth0"); ip != netip.MustParseAddr("10.0.1.2") {
		t.Fatalf("c256 kept %s, want 10.0.1.2", ip)
	}
	// New allocations come from the new block and never collide with a held one.
	held := map[netip.Addr]bool{}
	for _, al := range b.List() {
		held[al.IP] = true
	}
	for i := range 10 {
		ip := alloc(t, b, fmt.Sprint("new", i), "eth0")
		if !b.Block().Contains(ip) || held[ip] {
			t.Fatalf("new allocation %s outside block or already held", ip)
		}
		held[ip] = true
	}
	// Releasing the stale ones works and frees nothing twice.
	if _, found, err := b.Release(ctx, "c0", "eth0"); err != nil || !found {
		t.Fatalf("release stale: %v %v", found, err)
	}
	if n := len(b.OutOfBlock()); n != 255 {
		t.Fatalf("after release %d out of block, want 255", n)
	}
}

func TestGCAndReclaim(t *testing.T) {
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "10.3.0.0/24")
	ctx := context.Background()
	for i := range 10 {
		alloc(t, a, fmt.Sprint("c", i), "eth0")
	}
	released, err := a.GC(ctx, []Attachment{{"c1", "eth0"}, {"c2", "eth0"}, {"c3", "eth1"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(released) != 8 || a.Used() != 2 {
		t.Fatalf("GC released %d, %d left; want 8 and 2", len(released), a.Used())
	}
	released, err = a.Reclaim(ctx, func(al Allocation) bool { return al.ContainerID != "c1" })
	if err != nil || len(released) != 1 || released[0].ContainerID != "c1" {
		t.Fatalf("Reclaim = %v, %v", released, err)
	}
	if released, err := a.GC(ctx, []Attachment{{"c2", "eth0"}}); err != nil || len(released) != 0 {
		t.Fatalf("idempotent GC = %v, %v", released, err)
	}
}

func TestConcurrentAllocate(t *testing.T) {
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "10.4.0.0/24")
	ips := concurrently(t, 200, 50, func(i int) (netip.Addr, error) {
		al, err := a.Allocate(context.Background(), Request{ContainerID: fmt.Sprint("c", i), IfName: "eth0"})
		return al.IP, err
	})
	assertDistinct(t, ips, a.Block())
}

// concurrently runs n jobs, par at a time, and returns their addresses.
func concurrently(t *testing.T, n, par int, job func(i int) (netip.Addr, error)) []netip.Addr {
	t.Helper()
	return concurrentlyT(t, n, par, job)
}

// concurrentlyT runs n jobs, par at a time, and returns their results.
func concurrentlyT[T any](t *testing.T, n, par int, job func(i int) (T, error)) []T {
	t.Helper()
	out := make([]T, n)
	errs := make([]error, n)
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			out[i], errs[i] = job(i)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return out
}

func assertDistinct(t *testing.T, ips []netip.Addr, block netip.Prefix) {
	t.Helper()
	seen := map[netip.Addr]int{}
	for i, ip := range ips {
		if j, dup := seen[ip]; dup {
			t.Fatalf("%s handed to both job %d and job %d", ip, j, i)
		}
		if !block.Contains(ip) {
			t.Fatalf("%s outside %s", ip, block)
		}
		seen[ip] = i
	}
}
