package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serveT serves a fresh allocator on a socket in a temp dir.
func serveT(t *testing.T, block string) (*Allocator, string) {
	t.Helper()
	dir := t.TempDir()
	a := openT(t, filepath.Join(dir, "ipam.db"), block)
	sock := filepath.Join(dir, "run", "nexthop.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, a, sock, nil) }()
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
	ip, block, err := c.Allocate(ctx, Request{ContainerID: "c1", IfName: "eth0", PodNamespace: "default", PodName: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if ip != netip.MustParseAddr("10.7.0.2") || block != netip.MustParsePrefix("10.7.0.0/30") {
		t.Fatalf("Allocate = %s %s", ip, block)
	}
	if again, _, err := c.Allocate(ctx, Request{ContainerID: "c1", IfName: "eth0"}); err != nil || again != ip {
		t.Fatalf("retry = %s %v", again, err)
	}
	_, _, err = c.Allocate(ctx, Request{ContainerID: "c2", IfName: "eth0"})
	if !IsExhausted(err) || !strings.Contains(err.Error(), "10.7.0.0/30") {
		t.Fatalf("exhausted: %v", err)
	}
	if al, found, err := c.Get(ctx, "c1", "eth0"); err != nil || !found || al.IP != ip || al.PodName != "web" {
		t.Fatalf("Get = %v %v %v", al, found, err)
	}
	if _, found, err := c.Get(ctx, "c1", "eth9"); err != nil || found {
		t.Fatalf("Get of nothing = %v %v", found, err)
	}
	_, list, err := c.List(ctx)
	if err != nil || len(list) != 1 || list[0].PodName != "web" || list[0].PodNamespace != "default" {
		t.Fatalf("List = %v %v", list, err)
	}
	st, err := c.Status(ctx)
	if err != nil || st.GetUsed() != 1 || st.GetSize() != 1 {
		t.Fatalf("Status = %v %v", st, err)
	}
	if rel, err := c.Release(ctx, "c1", "eth0"); err != nil || rel != ip {
		t.Fatalf("Release = %s %v", rel, err)
	}
	if rel, err := c.Release(ctx, "c1", "eth0"); err != nil || rel.IsValid() {
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
		ip, _, err := c.Allocate(context.Background(), Request{ContainerID: fmt.Sprint("c", i), IfName: "eth0"})
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
	_, _, err := c.Allocate(ctx, Request{ContainerID: "c", IfName: "eth0"})
	if !IsUnavailable(err) || !strings.Contains(err.Error(), sock) {
		t.Fatalf("want Unavailable naming %s, got %v", sock, err)
	}
}
