// Package ipam hands out pod addresses from the node's block. The node daemon
// owns the Allocator and serves it to the CNI plugin over a unix socket; every
// change is committed (fsync'ed) to a bbolt file before anyone is told about
// it, so a daemon killed at any moment neither forgets an address nor hands
// one out twice.
package ipam

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Attachment names one pod interface: CNI's (container ID, interface name).
type Attachment struct {
	ContainerID string
	IfName      string
}

func (k Attachment) String() string { return k.ContainerID + "/" + k.IfName }

// Allocation is one address held by one attachment.
type Allocation struct {
	ContainerID  string     `json:"containerID"`
	IfName       string     `json:"ifName"`
	IP           netip.Addr `json:"ip"`
	PodNamespace string     `json:"podNamespace,omitempty"`
	PodName      string     `json:"podName,omitempty"`
	Allocated    time.Time  `json:"allocated"`
	// Readded is the last time an ADD asked again for the address the
	// attachment already held (zero if none did): a DEL recorded before it
	// must not free it (see ReleaseUnclaimedSince).
	Readded time.Time `json:"readded,omitzero"`
	// HostVeth is set, and ContainerID and IfName are empty, when the
	// address was recovered from the kernel (recover.go) through a veth
	// without an alias naming its attachment (one wired before the alias):
	// the attachment is known only by the veth's name, a hash of it.
	HostVeth string `json:"hostVeth,omitempty"`
	// OutOfBlock is set (never stored) when the node's block changed and IP
	// is no longer allocatable in it. It stays held until released.
	OutOfBlock bool `json:"-"`
}

// Attachment returns the allocation's key.
func (a Allocation) Attachment() Attachment { return Attachment{a.ContainerID, a.IfName} }

// Request asks for an address. Pod names are recorded for humans and for the
// future pods informer; they are optional.
type Request struct {
	ContainerID  string
	IfName       string
	PodNamespace string
	PodName      string
}

// ExhaustedError means every allocatable address of the block is held.
type ExhaustedError struct {
	Block netip.Prefix
	Size  int
}

func (e *ExhaustedError) Error() string {
	return fmt.Sprintf("block %s exhausted: all %d allocatable addresses are in use", e.Block, e.Size)
}

// OutOfBlockError means the attachment holds an address from a previous
// node block. Handing it out again would route nowhere; handing out a new one
// would leak the old. The caller must release it first.
type OutOfBlockError struct {
	Allocation Allocation
	Block      netip.Prefix
}

func (e *OutOfBlockError) Error() string {
	return fmt.Sprintf("%s holds %s, outside the node block %s (the block changed); release it first",
		e.Allocation.Attachment(), e.Allocation.IP, e.Block)
}

// ErrInvalidArgument marks a request missing a required field.
var ErrInvalidArgument = errors.New("invalid argument")

var (
	bucketAllocs = []byte("allocations") // IP (4 bytes) → JSON Allocation
	bucketMeta   = []byte("meta")
	keyBlock     = []byte("block")
	keyLast      = []byte("last") // last address handed out, for round robin
	keySchema    = []byte("schema")
)

const schemaVersion = "1"

// Allocator is the durable allocator for one node block. It is safe for
// concurrent use.
type Allocator struct {
	db    *bolt.DB
	block netip.Prefix
	first netip.Addr // first allocatable address
	last  netip.Addr // last allocatable address
	size  int
	log   *slog.Logger

	mu    sync.Mutex
	byKey map[Attachment]*Allocation
	byIP  map[netip.Addr]*Allocation
	// byVeth holds the allocations recovered from the kernel whose
	// attachment is not known yet, by host veth name.
	byVeth map[string]*Allocation
	next   netip.Addr // where the next search starts
	// inflight holds the allocations whose change is queued for the store
	// and not yet settled (commit.go). Only the change's owner touches one:
	// anyone else needing it waits for done.
	inflight map[*Allocation]*inflight

	commits *groupCommit
}

// inflight is a queued change to one or more allocations.
type inflight struct {
	done chan struct{} // closed once the change is settled, in memory too
	// fresh: a new allocation, not in the store until the change commits.
	// It is invisible to List, Used and Reclaim until then.
	fresh bool
}

// Open opens (creating if needed) the durable allocator for block at path.
// The network address, the broadcast address and the first usable address
// (kept for the node's own gateway/tunnel use) are never handed out. If the
// stored block differs from block, allocations no longer inside it are logged
// and reported by OutOfBlock, and are never reused.
//
// A file bbolt cannot read safely is refused with a *CorruptError, before
// bbolt touches it. With WithKernel, every pod address the kernel shows
// that the store does not hold is held (recover.go): a missing or emptied
// store is rebuilt from the pods on the node instead of starting afresh.
func Open(ctx context.Context, path string, block netip.Prefix, log *slog.Logger, opts ...OpenOption) (*Allocator, error) {
	o := openOptions{now: time.Now}
	for _, f := range opts {
		f(&o)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !block.IsValid() || !block.Addr().Is4() {
		return nil, fmt.Errorf("ipam: block %v: want an IPv4 prefix", block)
	}
	if block.Bits() > 30 {
		return nil, fmt.Errorf("ipam: block %s: prefix length must be /30 or shorter", block)
	}
	block = block.Masked()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("ipam: create state dir: %w", err)
	}
	now := o.now().UTC() // UTC drops the monotonic reading, as stored
	db, state, _, err := openFile(path, log, now)
	if err != nil {
		return nil, err
	}
	a := &Allocator{
		db:     db,
		block:  block,
		size:   1<<(32-block.Bits()) - 3,
		log:    log.With("block", block.String()),
		byKey:  map[Attachment]*Allocation{},
		byIP:   map[netip.Addr]*Allocation{},
		byVeth: map[string]*Allocation{},

		inflight: map[*Allocation]*inflight{},
	}
	a.commits = newGroupCommit(db, &a.mu)
	a.first = block.Addr().Next().Next()
	a.last = lastAddr(block).Prev()
	a.next = a.first
	if err := safely(path, a.load); err != nil {
		db.Close()
		var ce *CorruptError
		if errors.As(err, &ce) {
			return nil, err
		}
		return nil, fmt.Errorf("ipam: load %s: %w", path, err)
	}
	if o.kernel != nil {
		if err := a.reconcileKernel(o.kernel, state, now); err != nil {
			db.Close()
			return nil, err
		}
	} else if state != storeOK {
		a.log.Warn("ipam: IPAM store "+state.String()+" and no kernel check was asked for: starting from what the file holds", "path", path)
	}
	return a, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	v := binary.BigEndian.Uint32(b[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func (a *Allocator) allocatable(ip netip.Addr) bool {
	return ip.Is4() && a.first.Compare(ip) <= 0 && ip.Compare(a.last) <= 0
}

func (a *Allocator) load() error {
	return a.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		allocs, err := tx.CreateBucketIfNotExists(bucketAllocs)
		if err != nil {
			return err
		}
		if v := meta.Get(keySchema); v != nil && string(v) != schemaVersion {
			return fmt.Errorf("schema version %q, this build reads %q", v, schemaVersion)
		}
		if err := meta.Put(keySchema, []byte(schemaVersion)); err != nil {
			return err
		}
		if v := meta.Get(keyBlock); v != nil && string(v) != a.block.String() {
			a.log.Warn("node block changed since last run; allocations outside the new block stay held until released",
				"previous", string(v))
		}
		if err := meta.Put(keyBlock, []byte(a.block.String())); err != nil {
			return err
		}
		if v := meta.Get(keyLast); len(v) == 4 {
			if ip := netip.AddrFrom4([4]byte(v)); a.allocatable(ip) {
				a.next = a.after(ip)
			}
		}
		return allocs.ForEach(func(k, v []byte) error {
			var al Allocation
			if err := json.Unmarshal(v, &al); err != nil {
				return &CorruptError{Detail: fmt.Sprintf("allocation record %x: %v", k, err)}
			}
			if len(k) != 4 || netip.AddrFrom4([4]byte(k)) != al.IP {
				return &CorruptError{Detail: fmt.Sprintf("allocation record %x holds %s under the wrong key", k, al.IP)}
			}
			if (al.ContainerID == "" || al.IfName == "") && (al.HostVeth == "" || al.ContainerID != "" || al.IfName != "") {
				return &CorruptError{Detail: fmt.Sprintf("allocation record %x for %s names no attachment", k, al.IP)}
			}
			al.OutOfBlock = !a.allocatable(al.IP)
			if al.OutOfBlock {
				a.log.Warn("allocation outside the node block", "ip", al.IP, "container", al.ContainerID,
					"ifName", al.IfName, "pod", al.PodNamespace+"/"+al.PodName)
			}
			p := &al
			a.byIP[al.IP] = p
			if al.ContainerID == "" {
				a.byVeth[al.HostVeth] = p
				return nil
			}
			if prev, dup := a.byKey[al.Attachment()]; dup {
				// Cannot happen through this package; keep both held and say so.
				a.log.Error("attachment holds two addresses", "attachment", al.Attachment(), "ip", al.IP, "other", prev.IP)
				return nil
			}
			a.byKey[al.Attachment()] = p
			return nil
		})
	})
}

// after returns the allocatable address following ip, wrapping around.
func (a *Allocator) after(ip netip.Addr) netip.Addr {
	if n := ip.Next(); a.allocatable(n) {
		return n
	}
	return a.first
}

// Close settles the changes already queued, then closes the store.
func (a *Allocator) Close() error {
	a.commits.close()
	return a.db.Close()
}

// Block is the node block addresses come from.
func (a *Allocator) Block() netip.Prefix { return a.block }

// Reserved is the first usable address of the block, never handed to pods:
// it is kept for the node's own gateway or tunnel address.
func (a *Allocator) Reserved() netip.Addr { return a.block.Addr().Next() }

// Size is how many addresses the block can hand out.
func (a *Allocator) Size() int { return a.size }

func ipKey(ip netip.Addr) []byte { b := ip.As4(); return b[:] }

// Allocate returns the address held by (ContainerID, IfName), allocating and
// durably recording a new one if there is none. Addresses are handed out
// round robin so a just-released address is not reused at once (stale
// conntrack entries and ARP caches elsewhere still point at it).
//
// The address is picked in memory and its record committed with whatever
// other changes are queued (commit.go): the call returns only once that
// transaction is committed, so the record survives a crash before anyone
// learns the address.
func (a *Allocator) Allocate(ctx context.Context, r Request) (Allocation, error) {
	if r.ContainerID == "" || r.IfName == "" {
		return Allocation{}, fmt.Errorf("%w: container ID and interface name are required", ErrInvalidArgument)
	}
	key := Attachment{r.ContainerID, r.IfName}
	for {
		if err := ctx.Err(); err != nil {
			return Allocation{}, err
		}
		a.mu.Lock()
		al, ok := a.byKey[key]
		recovered := false
		if !ok {
			al, recovered = a.byVeth[HostVethName(r.ContainerID, r.IfName)]
		}
		if f := a.inflight[al]; al != nil && f != nil {
			// Another change to it is on its way to the store (a retried
			// ADD, a release, GC naming it): decide once it has landed.
			a.mu.Unlock()
			if err := waitDone(ctx, f.done); err != nil {
				return Allocation{}, err
			}
			continue
		}
		switch {
		case ok:
			if al.OutOfBlock {
				a.mu.Unlock()
				return Allocation{}, &OutOfBlockError{Allocation: *al, Block: a.block}
			}
			// Durably note the claim: a pending release recorded by a DEL
			// that began before this ADD may be processed after it (spool.go).
			upd := *al
			upd.Readded = time.Now().UTC()
			c, err := a.rewriteLocked(al, upd, nil)
			a.mu.Unlock()
			if err == nil {
				err = wait(ctx, c)
			}
			if err != nil {
				return Allocation{}, fmt.Errorf("record re-allocation of %s to %s: %w", upd.IP, key, err)
			}
			return upd, nil
		case recovered:
			// Recovered from the kernel: this is its attachment, now named.
			upd := *al
			upd.ContainerID, upd.IfName, upd.HostVeth = r.ContainerID, r.IfName, ""
			upd.PodNamespace, upd.PodName = r.PodNamespace, r.PodName
			upd.Readded = time.Now().UTC()
			if upd.OutOfBlock {
				a.mu.Unlock()
				return Allocation{}, &OutOfBlockError{Allocation: upd, Block: a.block}
			}
			veth := al.HostVeth
			c, err := a.rewriteLocked(al, upd, func() {
				if a.byVeth[veth] == al {
					delete(a.byVeth, veth)
				}
				a.byKey[key] = al
			})
			a.mu.Unlock()
			if err == nil {
				err = wait(ctx, c)
			}
			if err != nil {
				return Allocation{}, fmt.Errorf("record re-allocation of recovered %s to %s: %w", upd.IP, key, err)
			}
			return upd, nil
		}
		fresh, c, err := a.reserveLocked(r)
		a.mu.Unlock()
		if err != nil {
			return Allocation{}, err
		}
		if err := wait(ctx, c); err != nil {
			return Allocation{}, fmt.Errorf("record allocation of %s to %s: %w", fresh.IP, key, err)
		}
		return fresh, nil
	}
}

// reserveLocked picks a free address for r, holds it in memory and queues
// its record. A failed commit frees it again.
func (a *Allocator) reserveLocked(r Request) (Allocation, *change, error) {
	ip, ok := a.findFree()
	if !ok {
		return Allocation{}, nil, &ExhaustedError{Block: a.block, Size: a.size}
	}
	al := Allocation{
		ContainerID:  r.ContainerID,
		IfName:       r.IfName,
		IP:           ip,
		PodNamespace: r.PodNamespace,
		PodName:      r.PodName,
		// Full precision: ReleaseUnclaimedSince compares it with a DEL's time.
		Allocated: time.Now().UTC(),
	}
	v, err := json.Marshal(al)
	if err != nil {
		return Allocation{}, nil, fmt.Errorf("encode allocation: %w", err)
	}
	p := &al
	key := al.Attachment()
	a.byKey[key] = p
	a.byIP[ip] = p
	a.next = a.after(ip)
	c := a.queueLocked([]*Allocation{p}, true, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAllocs)
		if b.Get(ipKey(ip)) != nil {
			return fmt.Errorf("store already holds %s", ip) // memory and disk disagree: refuse
		}
		if err := b.Put(ipKey(ip), v); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keyLast, ipKey(ip))
	}, func(err error) {
		if err == nil {
			return
		}
		if a.byIP[ip] == p {
			delete(a.byIP, ip)
		}
		if a.byKey[key] == p {
			delete(a.byKey, key)
		}
	})
	return al, c, nil
}

// queueLocked marks als in flight and queues apply for the store; settle
// (may be nil) then runs with the outcome, holding a.mu, before the marks
// are lifted.
func (a *Allocator) queueLocked(als []*Allocation, fresh bool, apply func(*bolt.Tx) error, settle func(error)) *change {
	f := &inflight{done: make(chan struct{}), fresh: fresh}
	for _, al := range als {
		a.inflight[al] = f
	}
	c := &change{apply: apply, settle: func(err error) {
		if settle != nil {
			settle(err)
		}
		for _, al := range als {
			delete(a.inflight, al)
		}
		close(f.done)
	}}
	a.commits.submit(c)
	return c
}

// rewriteLocked queues the rewrite of al's stored record as upd; once it is
// committed, al becomes upd and then (if set) named runs.
func (a *Allocator) rewriteLocked(al *Allocation, upd Allocation, named func()) (*change, error) {
	v, err := json.Marshal(upd)
	if err != nil {
		return nil, fmt.Errorf("encode allocation: %w", err)
	}
	return a.queueLocked([]*Allocation{al}, false, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAllocs).Put(ipKey(upd.IP), v)
	}, func(err error) {
		if err != nil {
			return
		}
		*al = upd
		if named != nil {
			named()
		}
	}), nil
}

// wait returns c's outcome. A caller that gives up (ctx) leaves the change
// to be committed or undone all the same: its settle keeps memory right.
func wait(ctx context.Context, c *change) error {
	select {
	case err := <-c.result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func waitDone(ctx context.Context, done <-chan struct{}) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *Allocator) findFree() (netip.Addr, bool) {
	ip := a.next
	for range a.size {
		if _, used := a.byIP[ip]; !used {
			return ip, true
		}
		ip = a.after(ip)
	}
	return netip.Addr{}, false
}

// Get returns the allocation held by the attachment, if any. A change to it
// on its way to the store is waited for: what Get shows is stored.
func (a *Allocator) Get(containerID, ifName string) (Allocation, bool) {
	for {
		a.mu.Lock()
		al, ok := a.byKey[Attachment{containerID, ifName}]
		if !ok {
			al, ok = a.byVeth[HostVethName(containerID, ifName)]
		}
		if !ok {
			a.mu.Unlock()
			return Allocation{}, false
		}
		if f := a.inflight[al]; f != nil {
			a.mu.Unlock()
			<-f.done
			continue
		}
		v := *al
		a.mu.Unlock()
		return v, true
	}
}

// claimedSince reports whether an ADD allocated or re-claimed al at or after t.
func (al Allocation) claimedSince(t time.Time) bool {
	last := al.Allocated
	if last.Nanosecond() == 0 {
		// Stored by a build that truncated to the second: it may be up to a
		// second later. Keeping a released address only leaks it until GC;
		// freeing a used one would hand it out twice.
		last = last.Add(time.Second)
	}
	if al.Readded.After(last) {
		last = al.Readded
	}
	return !last.Before(t)
}

// ReleaseUnclaimedSince releases the attachment's address unless an ADD
// allocated or re-claimed it at or after t, the time a DEL began: a DEL
// processed late must not free what a newer ADD of the same attachment uses.
// kept reports an allocation spared for that reason; with neither released
// nor kept the attachment held nothing.
func (a *Allocator) ReleaseUnclaimedSince(ctx context.Context, containerID, ifName string, t time.Time) (al Allocation, released, kept bool, err error) {
	if containerID == "" || ifName == "" {
		return Allocation{}, false, false, fmt.Errorf("%w: container ID and interface name are required", ErrInvalidArgument)
	}
	key := Attachment{containerID, ifName}
	out, err := a.reclaim(ctx, func() func(Allocation) bool {
		al, kept = Allocation{}, false // a new pass: forget what the last one saw
		return func(c Allocation) bool {
			if !c.heldBy(key) {
				return true
			}
			if c.claimedSince(t) {
				al, kept = c, true
				return true
			}
			return false
		}
	})
	if err != nil {
		return Allocation{}, false, false, err
	}
	if len(out) > 0 {
		return out[0], true, false, nil
	}
	return al, false, kept, nil
}

// Release frees the address held by the attachment. Releasing an attachment
// that holds nothing is not an error: found is false.
func (a *Allocator) Release(ctx context.Context, containerID, ifName string) (al Allocation, found bool, err error) {
	if containerID == "" || ifName == "" {
		return Allocation{}, false, fmt.Errorf("%w: container ID and interface name are required", ErrInvalidArgument)
	}
	key := Attachment{containerID, ifName}
	released, err := a.Reclaim(ctx, func(al Allocation) bool { return !al.heldBy(key) })
	if err != nil || len(released) == 0 {
		return Allocation{}, false, err
	}
	return released[0], true, nil
}

// GC releases every allocation whose attachment is not in valid (CNI GC).
func (a *Allocator) GC(ctx context.Context, valid []Attachment) ([]Allocation, error) {
	keep := make(map[Attachment]bool, len(valid))
	keepVeth := make(map[string]bool, len(valid))
	for _, v := range valid {
		keep[v] = true
		keepVeth[HostVethName(v.ContainerID, v.IfName)] = true
	}
	released, err := a.Reclaim(ctx, func(al Allocation) bool {
		if al.ContainerID == "" {
			return keepVeth[al.HostVeth] // recovered: known by its veth only
		}
		return keep[al.Attachment()]
	})
	if err != nil {
		return released, err
	}
	return released, a.nameRecovered(ctx, valid)
}

// nameRecovered gives the allocations recovered from the kernel the
// attachments the runtime just listed as valid, so that they show (and
// match) as any other.
func (a *Allocator) nameRecovered(ctx context.Context, valid []Attachment) error {
	a.mu.Lock()
	type naming struct {
		c    *change
		what string
	}
	var queued []naming
	var errs []error
	for _, v := range valid {
		al, ok := a.byVeth[HostVethName(v.ContainerID, v.IfName)]
		if !ok || v.ContainerID == "" || v.IfName == "" || a.inflight[al] != nil {
			continue // an ADD naming it (or a release) is on its way
		}
		if _, taken := a.byKey[v]; taken {
			continue // cannot be: an attachment has one veth
		}
		upd := *al
		upd.ContainerID, upd.IfName, upd.HostVeth = v.ContainerID, v.IfName, ""
		veth, ip := al.HostVeth, al.IP
		c, err := a.rewriteLocked(al, upd, func() {
			if a.byVeth[veth] == al {
				delete(a.byVeth, veth)
			}
			a.byKey[v] = al
		})
		what := fmt.Sprintf("record the attachment %s of recovered %s", v, ip)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
			continue
		}
		queued = append(queued, naming{c, what})
	}
	a.mu.Unlock()
	for _, q := range queued {
		if err := wait(ctx, q.c); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", q.what, err))
		}
	}
	return errors.Join(errs...)
}

// Reclaim releases, in one durable transaction, every allocation for which
// keep returns false, and returns them. keep is called with the allocator
// locked: it must not call back into the allocator. New allocations not yet
// committed are left alone: they are ordered after this call.
func (a *Allocator) Reclaim(ctx context.Context, keep func(Allocation) bool) ([]Allocation, error) {
	return a.reclaim(ctx, func() func(Allocation) bool { return keep })
}

// reclaim is Reclaim with a keep function per pass over the allocations: a
// pass that would drop an allocation with a change on its way (a re-ADD, a
// release) waits for that change to land, then starts again.
func (a *Allocator) reclaim(ctx context.Context, pass func() func(Allocation) bool) ([]Allocation, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		a.mu.Lock()
		keep := pass()
		var drop []*Allocation
		var out []Allocation
		var busy chan struct{}
		for _, al := range a.byIP {
			f := a.inflight[al]
			if f != nil && f.fresh {
				continue
			}
			if keep(*al) {
				continue
			}
			if f != nil {
				busy = f.done
				break
			}
			drop = append(drop, al)
			out = append(out, *al)
		}
		if busy != nil {
			a.mu.Unlock()
			if err := waitDone(ctx, busy); err != nil {
				return nil, err
			}
			continue
		}
		if len(drop) == 0 {
			a.mu.Unlock()
			return nil, nil
		}
		// Held in memory until the deletion is committed, so that no ADD is
		// given an address whose release may yet fail.
		c := a.queueLocked(drop, false, func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketAllocs)
			for _, al := range drop {
				if err := b.Delete(ipKey(al.IP)); err != nil {
					return err
				}
			}
			return nil
		}, func(err error) {
			if err != nil {
				return
			}
			for _, al := range drop {
				if a.byIP[al.IP] == al {
					delete(a.byIP, al.IP)
				}
				if cur := a.byKey[al.Attachment()]; cur == al {
					delete(a.byKey, al.Attachment())
				}
				if cur := a.byVeth[al.HostVeth]; cur == al {
					delete(a.byVeth, al.HostVeth)
				}
			}
		})
		a.mu.Unlock()
		if err := wait(ctx, c); err != nil {
			return nil, fmt.Errorf("record release of %d allocations: %w", len(drop), err)
		}
		sortByIP(out)
		return out, nil
	}
}

// List returns every stored allocation, ordered by address.
func (a *Allocator) List() []Allocation {
	a.mu.Lock()
	out := make([]Allocation, 0, len(a.byIP))
	for _, al := range a.byIP {
		if f := a.inflight[al]; f == nil || !f.fresh {
			out = append(out, *al)
		}
	}
	a.mu.Unlock()
	sortByIP(out)
	return out
}

// OutOfBlock returns the allocations left outside the block by a block change.
func (a *Allocator) OutOfBlock() []Allocation {
	return slices.DeleteFunc(a.List(), func(al Allocation) bool { return !al.OutOfBlock })
}

// Used is how many addresses are held (stored), including any out of the
// block.
func (a *Allocator) Used() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := len(a.byIP)
	for _, f := range a.inflight {
		if f.fresh {
			n--
		}
	}
	return n
}

func sortByIP(s []Allocation) {
	slices.SortFunc(s, func(x, y Allocation) int { return x.IP.Compare(y.IP) })
}
