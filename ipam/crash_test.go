package ipam

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Environment that turns the test binary into a bare IPAM daemon, so the
// crash test can SIGKILL a real Open+Serve at any moment.
const (
	envServe = "NHC_IPAM_SERVE_DB"
	envSock  = "NHC_IPAM_SERVE_SOCK"
	envBlock = "NHC_IPAM_SERVE_BLOCK"
	// envSlowCommit makes every transaction take that much longer (a
	// time.Duration), as on a disk with a slow fsync.
	envSlowCommit = "NHC_IPAM_SERVE_SLOW_COMMIT"
)

func TestMain(m *testing.M) {
	if db := os.Getenv(envServe); db != "" {
		os.Exit(serveHelper(db, os.Getenv(envSock), os.Getenv(envBlock)))
	}
	os.Exit(m.Run())
}

func serveHelper(db, sock, block string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	a, err := Open(ctx, db, parseBlocks(block), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer a.Close()
	if d, err := time.ParseDuration(os.Getenv(envSlowCommit)); err == nil {
		a.commits.beforeCommit = func(*bolt.Tx, int) error { time.Sleep(d); return nil }
	}
	if err := Serve(ctx, a, sock, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// crashingDaemon runs the helper daemon and SIGKILLs and restarts it at
// random moments until stopped.
type crashingDaemon struct {
	t              *testing.T
	db, sock       string
	block          string
	kills          atomic.Int64
	stop, finished chan struct{}
	stopOnce       sync.Once
}

func startCrashingDaemon(t *testing.T, db, sock, block string) *crashingDaemon {
	d := &crashingDaemon{t: t, db: db, sock: sock, block: block, stop: make(chan struct{}), finished: make(chan struct{})}
	go d.loop()
	t.Cleanup(d.Stop)
	return d
}

func (d *crashingDaemon) start() *exec.Cmd {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envServe+"="+d.db, envSock+"="+d.sock, envBlock+"="+d.block)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		d.t.Errorf("start daemon: %v", err)
		return nil
	}
	return cmd
}

func (d *crashingDaemon) loop() {
	defer close(d.finished)
	for {
		cmd := d.start()
		if cmd == nil {
			return
		}
		// One kill in five lands during startup (mid-Open, mid-recovery);
		// the rest land while serving, timed from when the daemon answers so
		// a slow (e.g. -race) build still makes progress between kills.
		var lifetime time.Duration
		if rand.IntN(5) == 0 {
			lifetime = time.Duration(rand.IntN(5000)) * time.Microsecond
		} else {
			d.waitServing()
			lifetime = time.Duration(rand.IntN(25000)) * time.Microsecond
		}
		select {
		case <-d.stop:
			cmd.Process.Kill()
			cmd.Wait()
			return
		case <-time.After(lifetime):
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait() // the kernel drops bbolt's flock only once the process is gone
		d.kills.Add(1)
	}
}

// waitServing returns once the socket accepts connections (or after 5 s).
func (d *crashingDaemon) waitServing() {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if c, err := net.Dial("unix", d.sock); err == nil {
			c.Close()
			return
		}
	}
}

// Stop kills the daemon for good; it may be called more than once.
func (d *crashingDaemon) Stop() {
	d.stopOnce.Do(func() { close(d.stop) })
	<-d.finished
}

// retry calls op with a fresh client, as a CNI runtime re-running ADD or DEL
// would, until it succeeds.
func retry[T any](sock string, op func(context.Context, *Client) (T, error)) (T, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c, err := NewClient(sock)
		if err != nil {
			var zero T
			return zero, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		v, err := op(ctx, c)
		cancel()
		c.Close()
		if err == nil {
			return v, nil
		}
		if IsExhausted(err) || errors.Is(err, ErrInvalidArgument) || time.Now().After(deadline) {
			return v, err
		}
		time.Sleep(time.Duration(rand.IntN(10)+1) * time.Millisecond)
	}
}

// TestCrashSafety allocates and releases 200 attachments, 50 at a time,
// while the daemon is SIGKILLed at random moments: every client is told
// what ends up on disk, no address is held twice in either family, and a
// dual-stack attachment's two addresses are held and released together.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	for _, tc := range []struct{ name, block string }{
		{"IPv4", "10.9.0.0/24"},
		{"DualStack", "10.9.0.0/24,fd00:10:9::/64"},
		{"IPv6", "fd00:10:9::/64"},
	} {
		t.Run(tc.name, func(t *testing.T) { crashSafety(t, tc.block) })
	}
}

func crashSafety(t *testing.T, block string) {
	dir := t.TempDir()
	db, sock := filepath.Join(dir, "ipam.db"), filepath.Join(dir, "run", "ipam.sock")
	blocks := parseBlocks(block)

	// Rounds of allocating 200 and releasing them, until each phase has
	// seen enough kills: with group commit a round takes a few daemon
	// lifetimes only.
	var killsAlloc, killsRelease int64
	for round := 0; round < 40 && (killsAlloc < 20 || killsRelease < 20); round++ {
		d := startCrashingDaemon(t, db, sock, block)
		got := concurrentlyT(t, 200, 50, func(i int) (Lease, error) {
			return retry(sock, func(ctx context.Context, c *Client) (Lease, error) {
				return c.Allocate(ctx, Request{ContainerID: fmt.Sprint("ctr-", round, "-", i), IfName: "eth0"})
			})
		})
		killsAlloc += d.kills.Load()
		for _, b := range blocks {
			fam := make([]netip.Addr, len(got))
			for i, l := range got {
				fam[i] = Allocation{IP: l.IP, IPv6: l.IPv6}.Addr(b.Addr().Is6())
			}
			assertDistinct(t, fam, b)
		}

		// What every client was told must be exactly what is on disk:
		// nothing forgotten, nothing extra, nothing held twice, no
		// attachment holding one family without the other.
		d.Stop()
		a := openT(t, db, block)
		list := a.List()
		if len(list) != 200 {
			t.Fatalf("round %d: store holds %d allocations after crashes, want 200", round, len(list))
		}
		byKey := map[string]Allocation{}
		for _, al := range list {
			byKey[al.ContainerID+"/"+al.IfName] = al
			if len(al.Addrs()) != len(blocks) {
				t.Fatalf("round %d: %s/%s holds %s, want one address of each of %v", round, al.ContainerID, al.IfName, al.AddrString(), blocks)
			}
		}
		for i, l := range got {
			if stored := byKey[fmt.Sprint("ctr-", round, "-", i, "/eth0")]; stored.IP != l.IP || stored.IPv6 != l.IPv6 {
				t.Fatalf("round %d: ctr-%d was told %v but the store holds %s", round, i, l.Addrs(), stored.AddrString())
			}
		}
		a.Close()

		// Release everything under the same crashes: the blocks end up empty.
		d = startCrashingDaemon(t, db, sock, block)
		concurrentlyT(t, 200, 50, func(i int) ([]netip.Addr, error) {
			return retry(sock, func(ctx context.Context, c *Client) ([]netip.Addr, error) {
				return c.Release(ctx, fmt.Sprint("ctr-", round, "-", i), "eth0")
			})
		})
		d.Stop()
		killsRelease += d.kills.Load()
		b := openT(t, db, block)
		if left := b.List(); len(left) != 0 {
			t.Fatalf("round %d: after releasing all, %d allocations remain: %v", round, len(left), left)
		}
		b.Close()
		t.Logf("round %d: daemon SIGKILLed %d times while allocating, %d while releasing so far", round, killsAlloc, killsRelease)
	}
	if killsAlloc < 20 || killsRelease < 20 {
		t.Errorf("only %d kills during allocation, %d during release: the test did not exercise crashes", killsAlloc, killsRelease)
	}
}
