package ipam

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

const dualBlocks = "10.20.0.0/29,fd00:10:20::/64"

func TestDualStackAllocateHoldsBothAndReleasesBoth(t *testing.T) {
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), dualBlocks)
	ctx := context.Background()
	if a.SizeOf(false) != 5 || a.SizeOf(true) != math.MaxUint64-1 {
		t.Fatalf("SizeOf = %d, %d: want 5 (.2-.6 of a /29) and 2^64-2 (a /64 less ::0 and ::1)", a.SizeOf(false), a.SizeOf(true))
	}
	if a.Block() != netip.MustParsePrefix("10.20.0.0/29") || a.BlockOf(true) != netip.MustParsePrefix("fd00:10:20::/64") {
		t.Fatalf("blocks %v", a.Blocks())
	}
	if got := a.ReservedOf(true); got != netip.MustParseAddr("fd00:10:20::1") {
		t.Fatalf("ReservedOf(v6) = %s, want the block's first address (the VTEP's)", got)
	}
	al, err := a.Allocate(ctx, Request{ContainerID: "c0", IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	// Never ::0 (the subnet-router anycast address) nor ::1 (reserved).
	if al.IP != netip.MustParseAddr("10.20.0.2") || al.IPv6 != netip.MustParseAddr("fd00:10:20::2") {
		t.Fatalf("first allocation %s, want 10.20.0.2+fd00:10:20::2", al.AddrString())
	}
	again, err := a.Allocate(ctx, Request{ContainerID: "c0", IfName: "eth0"})
	if err != nil || again.IP != al.IP || again.IPv6 != al.IPv6 {
		t.Fatalf("retried ADD got %s %v, want the same two addresses", again.AddrString(), err)
	}
	for i := 1; i < 5; i++ {
		alloc(t, a, fmt.Sprint("c", i), "eth0")
	}
	// The IPv4 /29 is full: the sixth pod gets neither address, and no
	// IPv6 address is left held for it.
	_, err = a.Allocate(ctx, Request{ContainerID: "c5", IfName: "eth0"})
	var ex *ExhaustedError
	if !errors.As(err, &ex) || ex.Block != a.Block() {
		t.Fatalf("sixth allocation: %v, want the IPv4 block exhausted", err)
	}
	assertNoLeak(t, a, 5)

	rel, found, err := a.Release(ctx, "c0", "eth0")
	if err != nil || !found || rel.IP != al.IP || rel.IPv6 != al.IPv6 {
		t.Fatalf("Release = %s %v %v, want both addresses", rel.AddrString(), found, err)
	}
	assertNoLeak(t, a, 4)
	// The freed IPv4 address is the only one: reused. The IPv6 address is
	// not reused at once (round robin in a /64).
	next, err := a.Allocate(ctx, Request{ContainerID: "c6", IfName: "eth0"})
	if err != nil || next.IP != al.IP || next.IPv6 == al.IPv6 {
		t.Fatalf("after the release: %s %v, want %s and a fresh IPv6 address", next.AddrString(), err, al.IP)
	}

	// GC frees both halves of what it drops.
	released, err := a.GC(ctx, []Attachment{{"c1", "eth0"}})
	if err != nil || len(released) != 4 {
		t.Fatalf("GC released %v %v, want 4", released, err)
	}
	for _, r := range released {
		if !r.IP.IsValid() || !r.IPv6.IsValid() {
			t.Fatalf("GC released %s: want both families", r.AddrString())
		}
	}
	assertNoLeak(t, a, 1)
}

// In a /64 nothing is sized or scanned by the block: allocating is as quick
// as in a /24, the cursor wraps at the block's end, and a small IPv6 block
// exhausts like an IPv4 one.
func TestIPv6BlockIsSparse(t *testing.T) {
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "fd00:10:21::/64")
	ctx := context.Background()
	t0 := time.Now()
	ips := concurrently(t, 2000, 50, func(i int) (netip.Addr, error) {
		al, err := a.Allocate(ctx, Request{ContainerID: fmt.Sprint("c", i), IfName: "eth0"})
		return al.IPv6, err
	})
	assertDistinct(t, ips, a.Block())
	if took := time.Since(t0); took > 30*time.Second {
		t.Fatalf("2000 allocations in a /64 took %s", took)
	}
	if a.Used() != 2000 || a.UsedOf(false) != 0 || a.Size() != math.MaxInt {
		t.Fatalf("Used %d, UsedOf(v4) %d, Size %d", a.Used(), a.UsedOf(false), a.Size())
	}
	// The cursor at the block's last address: it is handed out, then the
	// search wraps to the first free one.
	a.mu.Lock()
	last := lastAddr(a.BlockOf(true))
	a.next[1] = last
	a.mu.Unlock()
	if al, err := a.Allocate(ctx, Request{ContainerID: "last", IfName: "eth0"}); err != nil || al.IPv6 != last {
		t.Fatalf("allocation at the cursor %s: %s %v", last, al.AddrString(), err)
	}
	if al, err := a.Allocate(ctx, Request{ContainerID: "wrapped", IfName: "eth0"}); err != nil || al.IPv6 != netip.MustParseAddr("fd00:10:21::7d2") {
		t.Fatalf("allocation after the last address: %s %v, want the first free one, fd00:10:21::7d2", al.AddrString(), err)
	}

	small := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "fd00:10:22::/126")
	got := []netip.Addr{alloc6(t, small, "a"), alloc6(t, small, "b")}
	if got[0] != netip.MustParseAddr("fd00:10:22::2") || got[1] != netip.MustParseAddr("fd00:10:22::3") {
		t.Fatalf("a /126 handed out %v, want ::2 and ::3", got)
	}
	if _, err := small.Allocate(ctx, Request{ContainerID: "c", IfName: "eth0"}); !IsExhaustedErr(err) {
		t.Fatalf("third allocation in a /126: %v, want exhausted", err)
	}
	for _, bad := range [][]netip.Prefix{
		{netip.MustParsePrefix("fd00::/127")},
		{netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("fd01::/64")},
		{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("10.1.0.0/24")},
		{netip.MustParsePrefix("::ffff:10.0.0.0/120")},
		nil,
	} {
		if _, err := Open(ctx, filepath.Join(t.TempDir(), "ipam.db"), bad, nil); err == nil {
			t.Errorf("Open(%v) accepted", bad)
		}
	}
}

func alloc6(t *testing.T, a *Allocator, id string) netip.Addr {
	t.Helper()
	al, err := a.Allocate(context.Background(), Request{ContainerID: id, IfName: "eth0"})
	if err != nil {
		t.Fatalf("Allocate(%s): %v", id, err)
	}
	return al.IPv6
}

func IsExhaustedErr(err error) bool {
	var ex *ExhaustedError
	return errors.As(err, &ex)
}

// legacyStore writes a store as the IPv4-only build did: records under the
// 4-byte address, JSON without ipv6, the block alone in meta.
func legacyStore(t *testing.T, path string, recs map[string]string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		allocs, _ := tx.CreateBucket(bucketAllocs)
		meta.Put(keySchema, []byte("1"))
		meta.Put(keyBlock, []byte("10.20.0.0/29"))
		for cid, ip := range recs {
			v := fmt.Sprintf(`{"containerID":%q,"ifName":"eth0","ip":%q,"podNamespace":"default","podName":"p","allocated":"2026-01-02T03:04:05Z"}`, cid, ip)
			if err := allocs.Put(ipKey(netip.MustParseAddr(ip)), []byte(v)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A store of the IPv4-only build opens on a node that became dual-stack:
// its pods keep their IPv4 addresses, a re-ADD adds an IPv6 address to the
// same record, new pods get both.
func TestIPv4OnlyStoreOpensDualStack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	legacyStore(t, path, map[string]string{"old0": "10.20.0.2", "old1": "10.20.0.3"})
	ctx := context.Background()
	a := openT(t, path, dualBlocks)
	list := a.List()
	if len(list) != 2 || list[0].IP != netip.MustParseAddr("10.20.0.2") || list[0].IPv6.IsValid() || list[0].OutOfBlock {
		t.Fatalf("legacy records read as %+v", list)
	}
	al, err := a.Allocate(ctx, Request{ContainerID: "old0", IfName: "eth0"})
	if err != nil || al.IP != netip.MustParseAddr("10.20.0.2") || al.IPv6 != netip.MustParseAddr("fd00:10:20::2") {
		t.Fatalf("re-ADD of a legacy pod: %s %v, want its IPv4 address and a new IPv6 one", al.AddrString(), err)
	}
	fresh, err := a.Allocate(ctx, Request{ContainerID: "new", IfName: "eth0"})
	if err != nil || fresh.IP != netip.MustParseAddr("10.20.0.4") || fresh.IPv6 != netip.MustParseAddr("fd00:10:20::3") {
		t.Fatalf("new pod: %s %v", fresh.AddrString(), err)
	}
	a.Close()

	// What was added is on disk, under the IPv4 key, and the store still
	// opens IPv4-only (the IPv6 halves then out of block, held).
	b := openT(t, path, dualBlocks)
	if got, ok := b.Get("old0", "eth0"); !ok || got.IPv6 != al.IPv6 {
		t.Fatalf("after reopening: %+v %v", got, ok)
	}
	b.Close()
	c := openT(t, path, "10.20.0.0/29")
	if got, _ := c.Get("new", "eth0"); !got.OutOfBlock || got.IPv6 != fresh.IPv6 {
		t.Fatalf("on an IPv4-only node again: %+v, want its IPv6 address held, out of block", got)
	}
	var ob *OutOfBlockError
	if _, err := c.Allocate(ctx, Request{ContainerID: "new", IfName: "eth0"}); !errors.As(err, &ob) {
		t.Fatalf("re-ADD with the IPv6 block gone: %v, want OutOfBlockError", err)
	}
	if _, err := c.Allocate(ctx, Request{ContainerID: "old1", IfName: "eth0"}); err != nil {
		t.Fatalf("re-ADD of an IPv4-only pod on the IPv4-only node: %v", err)
	}
	if rel, found, err := c.Release(ctx, "new", "eth0"); err != nil || !found || rel.IPv6 != fresh.IPv6 {
		t.Fatalf("release of the out-of-block pod: %+v %v %v", rel, found, err)
	}
	if c.UsedOf(true) != 1 { // old0's
		t.Fatalf("%d IPv6 addresses held, want old0's only", c.UsedOf(true))
	}
}

// An IPv6-only record is stored under its 16-byte address; gaining an IPv4
// address (the node became dual-stack) moves it under the IPv4 one.
func TestIPv6OnlyRecordMovesUnderIPv4Key(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	a := openT(t, path, "fd00:10:20::/64")
	ip6 := alloc6(t, a, "c")
	a.Close()
	b := openT(t, path, dualBlocks)
	al, err := b.Allocate(context.Background(), Request{ContainerID: "c", IfName: "eth0"})
	if err != nil || al.IPv6 != ip6 || !al.IP.IsValid() {
		t.Fatalf("re-ADD on the dual-stack node: %s %v", al.AddrString(), err)
	}
	keys := map[int]int{}
	b.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAllocs).ForEach(func(k, _ []byte) error { keys[len(k)]++; return nil })
	})
	if keys[4] != 1 || keys[16] != 0 {
		t.Fatalf("store keys by length %v, want one 4-byte key", keys)
	}
	assertNoLeak(t, b, 1)
}

// Records a build of this package never writes are refused as corrupt:
// the store cannot say which pod holds the address.
func TestDualStackCorruptRecordsRefused(t *testing.T) {
	for name, recs := range map[string]map[string]string{
		"v6 in ip":       {string(ipKey(netip.MustParseAddr("fd00::2"))): `{"containerID":"c","ifName":"eth0","ip":"fd00::2"}`},
		"v4 in ipv6":     {string(ipKey(netip.MustParseAddr("10.20.0.2"))): `{"containerID":"c","ifName":"eth0","ip":"10.20.0.2","ipv6":"10.20.0.3"}`},
		"v6 key with v4": {string(ipKey(netip.MustParseAddr("fd00:10:20::2"))): `{"containerID":"c","ifName":"eth0","ip":"10.20.0.2","ipv6":"fd00:10:20::2"}`},
		"no address":     {"\x0a\x14\x00\x02": `{"containerID":"c","ifName":"eth0"}`},
		"ipv6 twice": {
			string(ipKey(netip.MustParseAddr("10.20.0.2"))): `{"containerID":"a","ifName":"eth0","ip":"10.20.0.2","ipv6":"fd00:10:20::2"}`,
			string(ipKey(netip.MustParseAddr("10.20.0.3"))): `{"containerID":"b","ifName":"eth0","ip":"10.20.0.3","ipv6":"fd00:10:20::2"}`,
		},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ipam.db")
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			db.Update(func(tx *bolt.Tx) error {
				b, _ := tx.CreateBucket(bucketAllocs)
				for k, v := range recs {
					b.Put([]byte(k), []byte(v))
				}
				return nil
			})
			db.Close()
			_, err = Open(context.Background(), path, parseBlocks(dualBlocks), nil)
			var ce *CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("Open: %v, want a CorruptError", err)
			}
		})
	}
}

// A failed commit of dual-stack allocations leaves neither half held, in
// memory or on disk; once commits work, the same addresses go out.
func TestFailedCommitDualStackLeavesNeitherHalf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	a := openT(t, path, "10.20.1.0/24,fd00:10:20:1::/64")
	ctx := context.Background()
	injected := errors.New("injected: no space left on device")
	holdFirstCommit(a, 20, func(*bolt.Tx) error { return injected })
	errs := parallel(20, func(i int) error {
		_, err := a.Allocate(ctx, Request{ContainerID: fmt.Sprint("c", i), IfName: "eth0"})
		return err
	})
	for i, err := range errs {
		if !errors.Is(err, injected) {
			t.Fatalf("allocation %d: %v, want the injected failure", i, err)
		}
	}
	assertNoLeak(t, a, 0)
	a.commits.beforeCommit = nil
	for i := range 20 {
		alloc(t, a, fmt.Sprint("c", i), "eth0")
	}
	assertNoLeak(t, a, 20)
	a.Close()
	assertNoLeak(t, openT(t, path, "10.20.1.0/24,fd00:10:20:1::/64"), 20)
}

// A lost store is rebuilt from the kernel: a veth routing a /32 and a /128
// is one pod, holding both; a store record missing the IPv6 half the kernel
// routes to the same veth is completed.
func TestDualStackRecoveredFromKernel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	routes := []PodRoute{
		{IP: netip.MustParseAddr("10.20.0.2"), HostVeth: HostVethName("a", "eth0")},
		{IP: netip.MustParseAddr("fd00:10:20::2"), HostVeth: HostVethName("a", "eth0")},
		{IP: netip.MustParseAddr("fd00:10:20::5"), HostVeth: "nh0123456789a", Attachment: Attachment{"b", "eth0"}},
		{IP: netip.MustParseAddr("10.20.0.5"), HostVeth: "nh0123456789a", Attachment: Attachment{"b", "eth0"}},
		{IP: netip.MustParseAddr("fd00:10:20::9"), HostVeth: HostVethName("c", "eth0")}, // IPv6 only
	}
	k := KernelFunc(func() ([]PodRoute, error) { return routes, nil })
	var log bytes.Buffer
	a, err := openK(t, path, dualBlocks, k, &log)
	if err != nil {
		t.Fatal(err)
	}
	if want := "IPAM store was missing: recovered 5 pod addresses"; !strings.Contains(log.String(), want) {
		t.Fatalf("log lacks %q:\n%s", want, log.String())
	}
	if got, ok := a.Get("a", "eth0"); !ok || got.IP != routes[0].IP || got.IPv6 != routes[1].IP {
		t.Fatalf("pod a recovered as %+v %v, want both addresses in one allocation", got, ok)
	}
	if got, ok := a.Get("b", "eth0"); !ok || got.IP != routes[3].IP || got.IPv6 != routes[2].IP || got.HostVeth != "" {
		t.Fatalf("pod b (aliased veth) recovered as %+v %v", got, ok)
	}
	if got, ok := a.Get("c", "eth0"); !ok || got.IP.IsValid() || got.IPv6 != routes[4].IP {
		t.Fatalf("pod c recovered as %+v %v", got, ok)
	}
	// No recovered address is handed out again, in either family.
	for i := range 3 {
		al, err := a.Allocate(context.Background(), Request{ContainerID: fmt.Sprint("new", i), IfName: "eth0"})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if al.IP == r.IP || al.IPv6 == r.IP {
				t.Fatalf("handed out %s, which the kernel routes to %s", r.IP, r.HostVeth)
			}
		}
	}
	// Releasing a recovered pod frees both halves.
	if rel, found, err := a.Release(context.Background(), "a", "eth0"); err != nil || !found || rel.IPv6 != routes[1].IP {
		t.Fatalf("release of recovered a: %+v %v %v", rel, found, err)
	}
	a.Close()

	// A store holding a pod's IPv4 half only (an IPv4-only build's), the
	// kernel routing its IPv6 address too: completed, not split in two.
	path2 := filepath.Join(t.TempDir(), "ipam.db")
	legacyStore(t, path2, map[string]string{"old": "10.20.0.2"})
	k2 := KernelFunc(func() ([]PodRoute, error) {
		return []PodRoute{
			{IP: netip.MustParseAddr("10.20.0.2"), HostVeth: HostVethName("old", "eth0")},
			{IP: netip.MustParseAddr("fd00:10:20::2"), HostVeth: HostVethName("old", "eth0")},
		}, nil
	})
	b, err := openK(t, path2, dualBlocks, k2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l := b.List(); len(l) != 1 || l[0].IPv6 != netip.MustParseAddr("fd00:10:20::2") || l[0].ContainerID != "old" {
		t.Fatalf("completed store lists %+v, want old holding both", l)
	}
	assertNoLeak(t, b, 1)
}

// The API returns every address: Allocate, Get, List, Release and Status.
func TestGRPCDualStack(t *testing.T) {
	_, sock := serveT(t, "10.20.2.0/30,fd00:10:20:2::/64")
	c := clientT(t, sock)
	ctx := context.Background()
	l, err := c.Allocate(ctx, Request{ContainerID: "c1", IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	if l.IP != netip.MustParseAddr("10.20.2.2") || l.IPv6 != netip.MustParseAddr("fd00:10:20:2::2") ||
		l.Block != netip.MustParsePrefix("10.20.2.0/30") || l.BlockV6 != netip.MustParsePrefix("fd00:10:20:2::/64") {
		t.Fatalf("Allocate = %+v", l)
	}
	if al, found, _, err := c.Get(ctx, "c1", "eth0"); err != nil || !found || al.IP != l.IP || al.IPv6 != l.IPv6 {
		t.Fatalf("Get = %+v %v %v", al, found, err)
	}
	if _, list, err := c.List(ctx); err != nil || len(list) != 1 || list[0].IPv6 != l.IPv6 {
		t.Fatalf("List = %+v %v", list, err)
	}
	st, err := c.Status(ctx)
	if err != nil || len(st.GetBlocks()) != 2 || st.GetBlock() != "10.20.2.0/30" || st.GetUsed() != 1 || st.GetSize() != 1 {
		t.Fatalf("Status = %v %v", st, err)
	}
	if v6 := st.GetBlocks()[1]; v6.GetBlock() != "fd00:10:20:2::/64" || v6.GetUsed() != 1 || v6.GetSize() != math.MaxUint64-1 {
		t.Fatalf("Status of the IPv6 block = %v", v6)
	}
	rel, err := c.Release(ctx, "c1", "eth0")
	if err != nil || len(rel) != 2 || rel[0] != l.IP || rel[1] != l.IPv6 {
		t.Fatalf("Release = %v %v, want both addresses", rel, err)
	}

	_, sock6 := serveT(t, "fd00:10:20:3::/64")
	c6 := clientT(t, sock6)
	l6, err := c6.Allocate(ctx, Request{ContainerID: "c1", IfName: "eth0"})
	if err != nil || l6.IP.IsValid() || l6.IPv6 != netip.MustParseAddr("fd00:10:20:3::2") || l6.Block.IsValid() {
		t.Fatalf("IPv6-only Allocate = %+v %v", l6, err)
	}
	if st, err := c6.Status(ctx); err != nil || st.GetBlock() != "fd00:10:20:3::/64" || st.GetSize() != math.MaxUint32 {
		t.Fatalf("IPv6-only Status = %v %v, want the /64 with its size saturated", st, err)
	}
}

// The JSON of a dual-stack record, as stored: both addresses, the IPv4
// one under the field the IPv4-only build used.
func TestDualStackRecordJSON(t *testing.T) {
	b, _ := json.Marshal(Allocation{ContainerID: "c", IfName: "eth0", IP: netip.MustParseAddr("10.0.0.2"), IPv6: netip.MustParseAddr("fd00::2")})
	if !strings.Contains(string(b), `"ip":"10.0.0.2","ipv6":"fd00::2"`) {
		t.Fatalf("record %s", b)
	}
	b, _ = json.Marshal(Allocation{ContainerID: "c", IfName: "eth0", IP: netip.MustParseAddr("10.0.0.2")})
	if strings.Contains(string(b), "ipv6") {
		t.Fatalf("IPv4-only record %s names ipv6", b)
	}
}
