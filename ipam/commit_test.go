package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// holdFirstCommit makes a's next transaction wait, before committing, until
// it and the changes queued behind it make n (or 10 s pass), so that the
// test, not the scheduler, decides that they take exactly two transactions.
func holdFirstCommit(a *Allocator, n int, then func(*bolt.Tx) error) {
	var once sync.Once
	a.commits.beforeCommit = func(tx *bolt.Tx, changes int) error {
		once.Do(func() {
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Microsecond) {
				a.commits.mu.Lock()
				queued := len(a.commits.queue)
				a.commits.mu.Unlock()
				if changes+queued >= n {
					return
				}
			}
		})
		if then != nil {
			return then(tx)
		}
		return nil
	}
}

// batches records the size and outcome of every transaction a commits.
type batches struct {
	mu    sync.Mutex
	sizes []int
	errs  []error
}

func countCommits(a *Allocator) *batches {
	b := &batches{}
	a.commits.committed = func(n int, err error) {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.sizes = append(b.sizes, n)
		b.errs = append(b.errs, err)
	}
	return b
}

func sum(s []int) (n int) {
	for _, v := range s {
		n += v
	}
	return n
}

// parallel runs f(0..n-1) at once and returns their errors.
func parallel(n int, f func(i int) error) []error {
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = f(i)
		})
	}
	close(start)
	wg.Wait()
	return errs
}

// assertNoLeak checks the allocator's memory holds exactly the stored
// allocations: nothing reserved and forgotten, nothing left in flight.
func assertNoLeak(t *testing.T, a *Allocator, want int) {
	t.Helper()
	a.mu.Lock()
	byIP, byKey, inflight := len(a.byIP), len(a.byKey)+len(a.byVeth), len(a.inflight)
	a.mu.Unlock()
	// Every allocation holds an address of each block.
	fams := len(a.Blocks())
	if byIP != want*fams || byKey != want || inflight != 0 || a.Used() != want || len(a.List()) != want {
		t.Fatalf("in memory: %d addresses, %d attachments, %d changes in flight, Used %d, List %d; want %d, %d, 0, %d, %d",
			byIP, byKey, inflight, a.Used(), len(a.List()), want*fams, want, want, want)
	}
	for _, b := range a.Blocks() {
		if n := a.UsedOf(b.Addr().Is6()); n != want {
			t.Fatalf("%d addresses of %s held, want %d", n, b, want)
		}
	}
	var stored int
	if err := a.db.View(func(tx *bolt.Tx) error { stored = tx.Bucket(bucketAllocs).Stats().KeyN; return nil }); err != nil {
		t.Fatal(err)
	}
	if stored != want {
		t.Fatalf("store holds %d allocations, memory %d", stored, want)
	}
}

// 50 parallel allocations (or releases) cost at most two transactions, not
// 50: the first commits what was queued when it began, the rest queued
// meanwhile go together.
func TestParallelAllocationsShareCommits(t *testing.T) {
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "10.5.0.0/24")
	b := countCommits(a)
	holdFirstCommit(a, 50, nil)
	ips := make([]netip.Addr, 50)
	errs := parallel(50, func(i int) error {
		al, err := a.Allocate(context.Background(), Request{ContainerID: fmt.Sprint("c", i), IfName: "eth0"})
		ips[i] = al.IP
		return err
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	assertDistinct(t, ips, a.Block())
	if len(b.sizes) > 2 || sum(b.sizes) != 50 {
		t.Fatalf("50 parallel allocations were committed in transactions of %v changes, want at most 2", b.sizes)
	}
	assertNoLeak(t, a, 50)

	// 50 parallel releases likewise.
	b = countCommits(a)
	holdFirstCommit(a, 50, nil)
	errs = parallel(50, func(i int) error {
		al, found, err := a.Release(context.Background(), fmt.Sprint("c", i), "eth0")
		if err == nil && (!found || al.IP != ips[i]) {
			err = fmt.Errorf("release of c%d: %+v %v, want %s released", i, al, found, ips[i])
		}
		return err
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if len(b.sizes) > 2 || sum(b.sizes) != 50 {
		t.Fatalf("50 parallel releases were committed in transactions of %v changes, want at most 2", b.sizes)
	}
	assertNoLeak(t, a, 0)
}

// A transaction that fails to commit fails every change in it, and each
// change's reservation is undone: nothing held in memory that the store
// does not hold. Releases and re-ADDs likewise.
func TestFailedCommitFailsEveryChangeAndLeaksNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	a := openT(t, path, "10.5.1.0/24")
	ctx := context.Background()
	held := map[string]netip.Addr{}
	for _, id := range []string{"kept0", "kept1", "kept2"} {
		held[id] = alloc(t, a, id, "eth0")
	}
	b := countCommits(a)
	injected := errors.New("injected: no space left on device")
	holdFirstCommit(a, 30, func(*bolt.Tx) error { return injected })

	const n = 30
	errs := parallel(n+2, func(i int) error {
		switch i {
		case n: // a re-ADD: its claim is not recorded
			_, err := a.Allocate(ctx, Request{ContainerID: "kept0", IfName: "eth0"})
			return err
		case n + 1: // a DEL: the address stays held
			_, _, err := a.Release(ctx, "kept1", "eth0")
			return err
		}
		_, err := a.Allocate(ctx, Request{ContainerID: fmt.Sprint("c", i), IfName: "eth0"})
		return err
	})
	for i, err := range errs {
		if !errors.Is(err, injected) || !strings.Contains(err.Error(), "record ") {
			t.Errorf("change %d: error %v, want the commit's error saying what was being recorded", i, err)
		}
	}
	if slices.Max(b.sizes) < 2 || slices.ContainsFunc(b.errs, func(err error) bool { return !errors.Is(err, injected) }) {
		t.Fatalf("transactions of %v changes, errors %v: want every one failed, one holding many", b.sizes, b.errs)
	}
	assertNoLeak(t, a, 3)
	if al, _ := a.Get("kept0", "eth0"); !al.Readded.IsZero() {
		t.Fatalf("a failed re-ADD left its claim in memory: %+v", al)
	}
	for id, ip := range held {
		if al, ok := a.Get(id, "eth0"); !ok || al.IP != ip {
			t.Fatalf("%s: %+v %v after failed commits, want %s held", id, al, ok, ip)
		}
	}

	// Once commits work again, so does everything, and the store agrees.
	a.commits.beforeCommit = nil
	for i := range n {
		alloc(t, a, fmt.Sprint("c", i), "eth0")
	}
	if _, found, err := a.Release(ctx, "kept1", "eth0"); err != nil || !found {
		t.Fatalf("release after the failure: %v %v", found, err)
	}
	assertNoLeak(t, a, n+2)
	a.Close()
	b2 := openT(t, path, "10.5.1.0/24")
	assertNoLeak(t, b2, n+2)
}

// A change that cannot be written (the store already holds the address
// memory thought free) fails alone; the rest of its batch commits.
func TestFailedChangeLeavesItsBatchCommitted(t *testing.T) {
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "10.5.2.0/24")
	// Written behind the allocator's back: the store holds .3 (and later .2
	// once the first ADD commits), memory does not know.
	stray := netip.MustParseAddr("10.5.2.3")
	if err := a.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAllocs).Put(ipKey(stray), []byte(`{}`))
	}); err != nil {
		t.Fatal(err)
	}
	b := countCommits(a)
	holdFirstCommit(a, 10, nil)
	errs := parallel(10, func(i int) error {
		_, err := a.Allocate(context.Background(), Request{ContainerID: fmt.Sprint("c", i), IfName: "eth0"})
		return err
	})
	var failed int
	for _, err := range errs {
		if err != nil {
			failed++
			if !strings.Contains(err.Error(), "store already holds 10.5.2.3") {
				t.Errorf("unexpected error: %v", err)
			}
		}
	}
	if failed != 1 || len(b.sizes) > 2 || sum(b.sizes) != 9 {
		t.Fatalf("%d allocations failed, transactions of %v changes; want 1 failed, 9 committed in at most 2", failed, b.sizes)
	}
	if _, held := a.byIP[stray]; held || a.Used() != 9 {
		t.Fatalf("memory holds the refused %s: %v, Used %d", stray, held, a.Used())
	}
}

// Parallel allocations answered over the socket are all on disk when the
// daemon is SIGKILLed right after, and were written in far fewer
// transactions than allocations (bbolt's transaction ID counts them). Each
// commit is made to take 2 ms longer, as an fsync on a plain SSD does: on
// tmpfs fsync costs nothing, commits rarely overlap and there is little to
// coalesce.
func TestParallelAllocationsDurableAfterKill(t *testing.T) {
	t.Run("IPv4", func(t *testing.T) { parallelAllocationsDurableAfterKill(t, "10.9.3.0/24") })
	// Both families of each allocation in its one record: still one
	// record per ADD, still coalesced.
	t.Run("DualStack", func(t *testing.T) { parallelAllocationsDurableAfterKill(t, "10.9.3.0/24,fd00:10:9:3::/64") })
}

func parallelAllocationsDurableAfterKill(t *testing.T, block string) {
	dir := t.TempDir()
	db, sock := filepath.Join(dir, "ipam.db"), filepath.Join(dir, "run", "ipam.sock")
	txid := func() int {
		a := openT(t, db, block) // Open commits one transaction itself
		defer a.Close()
		var id int
		if err := a.db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil }); err != nil {
			t.Fatal(err)
		}
		return id
	}
	before := txid()

	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envServe+"="+db, envSock+"="+sock, envBlock+"="+block, envSlowCommit+"=2ms")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &crashingDaemon{sock: sock}
	d.waitServing()
	clients := make([]*Client, 50)
	for i := range clients {
		c, err := NewClient(sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients[i] = c
	}
	var told [50]string
	errs := parallel(50, func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		l, err := clients[i].Allocate(ctx, Request{ContainerID: fmt.Sprint("ctr-", i), IfName: "eth0"})
		told[i] = Allocation{IP: l.IP, IPv6: l.IPv6}.AddrString()
		return err
	})
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}

	after := txid()
	commits := after - before - 2 // the daemon's Open and ours
	a := openT(t, db, block)
	byKey := map[string]string{}
	for _, al := range a.List() {
		byKey[al.Attachment().String()] = al.AddrString()
	}
	for i, ip := range told {
		if stored := byKey[fmt.Sprint("ctr-", i, "/eth0")]; stored != ip || len(strings.Split(ip, "+")) != len(a.Blocks()) {
			t.Fatalf("ctr-%d was told %s but after SIGKILL the store holds %q (blocks %v)", i, ip, stored, a.Blocks())
		}
	}
	if len(byKey) != 50 {
		t.Fatalf("store holds %d allocations, want 50", len(byKey))
	}
	t.Logf("50 parallel allocations over the socket: %d write transactions", commits)
	if commits > 25 {
		t.Fatalf("50 parallel allocations took %d write transactions, want at most half as many", commits)
	}
}
