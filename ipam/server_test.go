package ipam

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/nexthop-net/nexthop/ipam/ipampb"
)

// serveT serves a fresh allocator on a socket in a temp dir.
func serveT(t *testing.T, block string, opts ...ServeOption) (*Allocator, string) {
	t.Helper()
	dir := t.TempDir()
	a := openT(t, filepath.Join(dir, "ipam.db"), block)
	sock := filepath.Join(dir, "run", "nexthop.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, a, sock, nil, opts...) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	waitSocket(t, sock)
	return a, sock
}

func waitSocket(t *testing.T, sock string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return
		}
	}
	t.Fatalf("socket %s never appeared", sock)
}

func clientT(t *testing.T, sock string) *Client {
	t.Helper()
	c, err := NewClient(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestServeSocketIsRootOnly(t *testing.T) {
	_, sock := serveT(t, "10.5.0.0/24")
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, want socket 0600", fi.Mode())
	}
	di, err := os.Stat(filepath.Dir(sock))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir mode %v, want 0700", di.Mode().Perm())
	}
	// A second server on a live socket must refuse rather than steal it.
	b := openT(t, filepath.Join(t.TempDir(), "other.db"), "10.6.0.0/24")
	err = Serve(context.Background(), b, sock, nil)
	if err == nil || !strings.Contains(err.Error(), "already being served") {
		t.Fatalf("second Serve on a live socket: %v", err)
	}
}

func TestGRPCRoundTrip(t *testing.T) {
	_, sock := serveT(t, "10.7.0.0/30")
	c := clientT(t, sock)
	ctx := context.Background()
	l, err := c.Allocate(ctx, Request{ContainerID: "c1", IfName: "eth0", PodNamespace: "default", PodName: "web"})
	if err != nil {
		t.Fatal(err)
	}
	ip, block, mtu := l.IP, l.Block, l.MTU
	// Served without WithMTU: the daemon does not know the MTU.
	if ip != netip.MustParseAddr("10.7.0.2") || block != netip.MustParsePrefix("10.7.0.0/30") || mtu != 0 {
		t.Fatalf("Allocate = %s %s mtu %d", ip, block, mtu)
	}
	if again, err := c.Allocate(ctx, Request{ContainerID: "c1", IfName: "eth0"}); err != nil || again != l {
		t.Fatalf("retry = %v %v", again, err)
	}
	_, err = c.Allocate(ctx, Request{ContainerID: "c2", IfName: "eth0"})
	if !IsExhausted(err) || !strings.Contains(err.Error(), "10.7.0.0/30") {
		t.Fatalf("exhausted: %v", err)
	}
	if al, found, mtu, err := c.Get(ctx, "c1", "eth0"); err != nil || !found || al.IP != ip || al.PodName != "web" || mtu != 0 {
		t.Fatalf("Get = %v %v mtu %d %v", al, found, mtu, err)
	}
	if _, found, _, err := c.Get(ctx, "c1", "eth9"); err != nil || found {
		t.Fatalf("Get of nothing = %v %v", found, err)
	}
	_, list, err := c.List(ctx)
	if err != nil || len(list) != 1 || list[0].PodName != "web" || list[0].PodNamespace != "default" {
		t.Fatalf("List = %v %v", list, err)
	}
	st, err := c.Status(ctx)
	if err != nil || st.GetUsed() != 1 || st.GetSize() != 1 || st.GetMtu() != 0 {
		t.Fatalf("Status = %v %v", st, err)
	}
	if rel, err := c.Release(ctx, "c1", "eth0"); err != nil || len(rel) != 1 || rel[0] != ip {
		t.Fatalf("Release = %s %v", rel, err)
	}
	if rel, err := c.Release(ctx, "c1", "eth0"); err != nil || len(rel) != 0 {
		t.Fatalf("second Release = %s %v", rel, err)
	}
	gc, err := c.GC(ctx, nil)
	if err != nil || len(gc) != 0 {
		t.Fatalf("GC = %v %v", gc, err)
	}
}

func TestGRPCConcurrentAllocate(t *testing.T) {
	a, sock := serveT(t, "10.8.0.0/24")
	ips := concurrently(t, 200, 50, func(i int) (netip.Addr, error) {
		// One client per job, as each CNI ADD is its own process.
		c, err := NewClient(sock)
		if err != nil {
			return netip.Addr{}, err
		}
		defer c.Close()
		l, err := c.Allocate(context.Background(), Request{ContainerID: fmt.Sprint("c", i), IfName: "eth0"})
		ip := l.IP
		return ip, err
	})
	assertDistinct(t, ips, a.Block())
	if a.Used() != 200 {
		t.Fatalf("Used() = %d, want 200", a.Used())
	}
}

func TestClientDaemonUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nope.sock")
	c := clientT(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Allocate(ctx, Request{ContainerID: "c", IfName: "eth0"})
	if !IsUnavailable(err) || !strings.Contains(err.Error(), sock) {
		t.Fatalf("want Unavailable naming %s, got %v", sock, err)
	}
}

func TestGRPCReportsMTU(t *testing.T) {
	// The daemon's MTU can change while it runs (an encapsulation switch):
	// every response reports the value of the moment.
	var cur atomic.Int64
	cur.Store(1430)
	_, sock := serveT(t, "10.10.0.0/24", WithMTU(func() int { return int(cur.Load()) }))
	c := clientT(t, sock)
	ctx := context.Background()

	l, err := c.Allocate(ctx, Request{ContainerID: "c1", IfName: "eth0"})
	ip, mtu := l.IP, l.MTU
	if err != nil || mtu != 1430 {
		t.Fatalf("Allocate = %s mtu %d %v, want mtu 1430", ip, mtu, err)
	}
	if _, found, mtu, err := c.Get(ctx, "c1", "eth0"); err != nil || !found || mtu != 1430 {
		t.Fatalf("Get = %v mtu %d %v, want mtu 1430", found, mtu, err)
	}
	if st, err := c.Status(ctx); err != nil || st.GetMtu() != 1430 {
		t.Fatalf("Status = %v %v, want mtu 1430", st, err)
	}

	cur.Store(1450) // IP-in-IP → VXLAN on a 1500 underlay
	if l, err := c.Allocate(ctx, Request{ContainerID: "c2", IfName: "eth0"}); err != nil || l.MTU != 1450 {
		t.Fatalf("Allocate after the switch: mtu %d %v, want 1450", mtu, err)
	}
	// Get says the MTU now, even for an attachment made before the switch and
	// for one that holds nothing.
	if _, found, mtu, err := c.Get(ctx, "c1", "eth0"); err != nil || !found || mtu != 1450 {
		t.Fatalf("Get after the switch = %v mtu %d %v, want 1450", found, mtu, err)
	}
	if _, found, mtu, err := c.Get(ctx, "nobody", "eth0"); err != nil || found || mtu != 1450 {
		t.Fatalf("Get of nothing = %v mtu %d %v, want 1450", found, mtu, err)
	}

	// Unknown again, and nonsense from the daemon's side, are both reported
	// as 0: the plugin falls back to its default rather than using them.
	for _, v := range []int64{0, 10, 70000, -1} {
		cur.Store(v)
		if l, err := c.Allocate(ctx, Request{ContainerID: "c1", IfName: "eth0"}); err != nil || l.MTU != 0 {
			t.Fatalf("mtu() = %d: Allocate reported %d %v, want 0", v, mtu, err)
		}
	}
}

func TestWithMTUNilIsUnknown(t *testing.T) {
	_, sock := serveT(t, "10.11.0.0/24", WithMTU(nil))
	if st, err := clientT(t, sock).Status(context.Background()); err != nil || st.GetMtu() != 0 {
		t.Fatalf("Status = %v %v, want mtu 0", st, err)
	}
}

// badMTUServer answers like a daemon with a broken MTU source that skipped
// the server's range check (another version, say).
type badMTUServer struct{ ipampb.UnimplementedIPAMServer }

func (badMTUServer) Allocate(context.Context, *ipampb.AllocateRequest) (*ipampb.AllocateResponse, error) {
	return &ipampb.AllocateResponse{Ip: "10.12.0.2", Block: "10.12.0.0/24", Mtu: 70000}, nil
}

func (badMTUServer) Get(context.Context, *ipampb.GetRequest) (*ipampb.GetResponse, error) {
	return &ipampb.GetResponse{Mtu: 20}, nil
}

func TestClientRejectsBadMTU(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "bad.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	ipampb.RegisterIPAMServer(s, badMTUServer{})
	go s.Serve(l)
	t.Cleanup(s.Stop)
	c := clientT(t, sock)
	if _, err := c.Allocate(context.Background(), Request{ContainerID: "c", IfName: "eth0"}); err == nil || !strings.Contains(err.Error(), "MTU 70000") {
		t.Fatalf("Allocate with MTU 70000: %v", err)
	}
	if _, _, _, err := c.Get(context.Background(), "c", "eth0"); err == nil || !strings.Contains(err.Error(), "MTU 20") {
		t.Fatalf("Get with MTU 20: %v", err)
	}
}

func TestObserverSeesEveryRequest(t *testing.T) {
	ctx := context.Background()
	a, err := Open(ctx, filepath.Join(t.TempDir(), "ipam.db"), []netip.Prefix{netip.MustParsePrefix("10.84.0.0/29")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	sock := filepath.Join(t.TempDir(), "ipam.sock")
	var mu sync.Mutex
	seen := map[string]int{}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Serve(sctx, a, sock, nil, WithObserver(func(m string, _ time.Duration, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				m += "/error"
			}
			seen[m]++
		}))
	}()
	defer func() { cancel(); <-done }()
	waitSocket(t, sock)
	c, err := NewClient(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 7; i++ { // the /29 has 5 addresses to give: 2 fail
		c.Allocate(ctx, Request{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"})
	}
	c.Release(ctx, "c0", "eth0")
	mu.Lock()
	defer mu.Unlock()
	if seen["Allocate"] != 5 || seen["Allocate/error"] != 2 || seen["Release"] != 1 {
		t.Errorf("observed %v, want 5 Allocate, 2 Allocate/error, 1 Release", seen)
	}
}
