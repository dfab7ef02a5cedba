// Package ipam hands out pod addresses from the node's blocks (one IPv4, one
// IPv6, or both: a dual-stack pod holds one of each). The node daemon
// owns the Allocator and serves it to the CNI plugin over a unix socket; every
// change is committed (fsync'ed) to a bbolt file before anyone is told about
// it, so a daemon killed at any moment neither forgets an address nor hands
// one out twice.
package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
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

// Allocation is the addresses held by one attachment: one per family of the
// node's blocks, recorded together in one record (a crash leaves both or
// neither).
type Allocation struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	// IP is the IPv4 address, zero if none (an IPv6-only node). Records of
	// the IPv4-only build have only this one.
	IP netip.Addr `json:"ip,omitzero"`
	// IPv6 is the IPv6 address, zero if none (an IPv4-only node).
	IPv6         netip.Addr `json:"ipv6,omitzero"`
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
	// OutOfBlock is set (never stored) when the node's blocks changed and
	// an address of it is no longer allocatable in its family's block. Both
	// stay held until released.
	OutOfBlock bool `json:"-"`
}

// Attachment returns the allocation's key.
func (a Allocation) Attachment() Attachment { return Attachment{a.ContainerID, a.IfName} }

// Addrs returns the addresses held, IPv4 first.
func (a Allocation) Addrs() []netip.Addr {
	var out []netip.Addr
	for _, ip := range []netip.Addr{a.IP, a.IPv6} {
		if ip.IsValid() {
			out = append(out, ip)
		}
	}
	return out
}

// Addr returns the address of the family (v6: IPv6), zero if none.
func (a Allocation) Addr(v6 bool) netip.Addr {
	if v6 {
		return a.IPv6
	}
	return a.IP
}

// primary is the address the record is stored under: IPv4 if held, else IPv6.
func (a Allocation) primary() netip.Addr {
	if a.IP.IsValid() {
		return a.IP
	}
	return a.IPv6
}

// AddrString is the addresses for messages: "10.0.0.2", "10.0.0.2+fd00::2".
func (a Allocation) AddrString() string {
	var s string
	for _, ip := range a.Addrs() {
		if s != "" {
			s += "+"
		}
		s += ip.String()
	}
	return s
}

// Request asks for an address. Pod names are recorded for humans and for the
// future pods informer; they are optional.
type Request struct {
	ContainerID  string
	IfName       string
	PodNamespace string
	PodName      string
}

// ExhaustedError means every allocatable address of a block is held.
type ExhaustedError struct {
	Block netip.Prefix
	Size  uint64
}

func (e *ExhaustedError) Error() string {
	return fmt.Sprintf("block %s exhausted: all %d allocatable addresses are in use", e.Block, e.Size)
}

// OutOfBlockError means the attachment holds an address from a previous
// node block. Handing it out again would route nowhere; handing out a new one
// would leak the old. The caller must release it first.
type OutOfBlockError struct {
	Allocation Allocation
	Blocks     []netip.Prefix
}

func (e *OutOfBlockError) Error() string {
	return fmt.Sprintf("%s holds %s, outside the node blocks %v (the blocks changed); release it first",
		e.Allocation.Attachment(), e.Allocation.AddrString(), e.Blocks)
}

// ErrInvalidArgument marks a request missing a required field.
var ErrInvalidArgument = errors.New("invalid argument")

var (
	// The record of an allocation is under its IPv4 address (4 bytes), or
	// its IPv6 address (16 bytes) when it holds no IPv4 one: the IPv4-only
	// build's records read as they are, no migration.
	bucketAllocs = []byte("allocations") // primary IP → JSON Allocation
	bucketMeta   = []byte("meta")
	keyBlock     = []byte("block") // the blocks, comma separated
	keyLast      = []byte("last")  // last IPv4 address handed out, for round robin
	keyLast6     = []byte("last6") // last IPv6 address handed out
	keySchema    = []byte("schema")
)

const schemaVersion = "1"

// family is one address family's block, fixed once Open returns. A block
// may be an IPv6 /64: nothing is sized or scanned by the block's size.
type family struct {
	block netip.Prefix // invalid: the node has no block of this family
	first netip.Addr   // first allocatable address
	last  netip.Addr   // last allocatable address
	size  uint64       // allocatable addresses, saturating at MaxUint64
}

// fam is the index of ip's family in Allocator.fams.
func fam(ip netip.Addr) int {
	if ip.Is4() {
		return 0
	}
	return 1
}

// Allocator is the durable allocator for the node's blocks (one per
// family). It is safe for concurrent use.
type Allocator struct {
	db   *bolt.DB
	fams [2]family // IPv4, IPv6
	log  *slog.Logger

	mu    sync.Mutex
	byKey map[Attachment]*Allocation
	// byIP holds every held address, both of a dual-stack allocation.
	byIP map[netip.Addr]*Allocation
	// byVeth holds the allocations recovered from the kernel whose
	// attachment is not known yet, by host veth name.
	byVeth map[string]*Allocation
	next   [2]netip.Addr // per family (fams), where the next search starts
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

// Open opens (creating if needed) the durable allocator for blocks (at most
// one per family) at path. The network address (in IPv6 the subnet-router
// anycast address), the IPv4 broadcast address and the first usable address
// (kept for the node's own gateway/tunnel use) are never handed out. Each
// allocation holds one address of each block. If the stored blocks differ,
// allocations no longer inside them are logged and reported by OutOfBlock,
// and are never reused.
//
// A file bbolt cannot read safely is refused with a *CorruptError, before
// bbolt touches it. With WithKernel, every pod address the kernel shows
// that the store does not hold is held (recover.go): a missing or emptied
// store is rebuilt from the pods on the node instead of starting afresh.
func Open(ctx context.Context, path string, blocks []netip.Prefix, log *slog.Logger, opts ...OpenOption) (*Allocator, error) {
	o := openOptions{now: time.Now}
	for _, f := range opts {
		f(&o)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var fams [2]family
	if len(blocks) == 0 {
		return nil, errors.New("ipam: no block: want an IPv4 block, an IPv6 block, or one of each")
	}
	for _, block := range blocks {
		if !block.IsValid() {
			return nil, fmt.Errorf("ipam: block %v: want an IP prefix", block)
		}
		block = block.Masked()
		f := &fams[fam(block.Addr())]
		if f.block.IsValid() {
			return nil, fmt.Errorf("ipam: blocks %s and %s: at most one block per family", f.block, block)
		}
		if block.Addr().Is4In6() {
			return nil, fmt.Errorf("ipam: block %s: an IPv4-mapped prefix, want a plain IPv4 or IPv6 one", block)
		}
		// Room for the network address, the reserved first address, one
		// pod and (IPv4) the broadcast address.
		if max := block.Addr().BitLen() - 2; block.Bits() > max {
			return nil, fmt.Errorf("ipam: block %s: prefix length must be /%d or shorter", block, max)
		}
		f.block = block
		f.first = block.Addr().Next().Next()
		f.last = lastAddr(block)
		if block.Addr().Is4() {
			f.last = f.last.Prev()
		}
		hostBits := block.Addr().BitLen() - block.Bits()
		f.size = math.MaxUint64 // more than a counter holds
		if hostBits <= 64 {
			// Network and reserved addresses; unsigned, so a /64's 2^64
			// wraps to 0 and the result is exact.
			f.size = uint64(1)<<hostBits - 2
			if block.Addr().Is4() {
				f.size-- // broadcast
			}
		}
	}
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
		fams:   fams,
		log:    log.With("blocks", fmt.Sprint(blocksOf(fams))),
		byKey:  map[Attachment]*Allocation{},
		byIP:   map[netip.Addr]*Allocation{},
		byVeth: map[string]*Allocation{},

		inflight: map[*Allocation]*inflight{},
	}
	a.commits = newGroupCommit(db, &a.mu)
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

// lastAddr is the last address of p (any family).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().As16()
	host := p.Addr().BitLen() - p.Bits()
	for i := 15; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		b[i] |= byte(1<<n - 1)
		host -= n
	}
	ip := netip.AddrFrom16(b)
	if p.Addr().Is4() {
		ip = ip.Unmap()
	}
	return ip
}

func blocksOf(fams [2]family) []netip.Prefix {
	var out []netip.Prefix
	for _, f := range fams {
		if f.block.IsValid() {
			out = append(out, f.block)
		}
	}
	return out
}

func (a *Allocator) allocatable(ip netip.Addr) bool {
	if !ip.IsValid() || ip.Is4In6() || ip.Zone() != "" {
		return false
	}
	f := &a.fams[fam(ip)]
	return f.block.IsValid() && f.first.Compare(ip) <= 0 && ip.Compare(f.last) <= 0
}

// outOfBlock reports whether an address al holds is outside its family's
// block.
func (a *Allocator) outOfBlock(al Allocation) bool {
	for _, ip := range al.Addrs() {
		if !a.allocatable(ip) {
			return true
		}
	}
	return false
}

// storedBlocks is how the blocks are kept in the meta bucket.
func (a *Allocator) storedBlocks() string {
	var s string
	for i, p := range blocksOf(a.fams) {
		if i > 0 {
			s += ","
		}
		s += p.String()
	}
	return s
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
		if v := meta.Get(keyBlock); v != nil && string(v) != a.storedBlocks() {
			a.log.Warn("node blocks changed since last run; allocations outside the new blocks stay held until released",
				"previous", string(v))
		}
		if err := meta.Put(keyBlock, []byte(a.storedBlocks())); err != nil {
			return err
		}
		for _, k := range [][]byte{keyLast, keyLast6} {
			if ip, ok := netip.AddrFromSlice(meta.Get(k)); ok && a.allocatable(ip) {
				a.next[fam(ip)] = a.after(ip)
			}
		}
		return allocs.ForEach(func(k, v []byte) error {
			var al Allocation
			if err := json.Unmarshal(v, &al); err != nil {
				return &CorruptError{Detail: fmt.Sprintf("allocation record %x: %v", k, err)}
			}
			if err := checkRecord(k, al); err != nil {
				return err
			}
			if (al.ContainerID == "" || al.IfName == "") && (al.HostVeth == "" || al.ContainerID != "" || al.IfName != "") {
				return &CorruptError{Detail: fmt.Sprintf("allocation record %x for %s names no attachment", k, al.AddrString())}
			}
			for _, ip := range al.Addrs() {
				if other, dup := a.byIP[ip]; dup {
					return &CorruptError{Detail: fmt.Sprintf("allocation records %x and %x both hold %s", ipKey(other.primary()), k, ip)}
				}
			}
			al.OutOfBlock = a.outOfBlock(al)
			if al.OutOfBlock {
				a.log.Warn("allocation outside the node blocks", "ip", al.AddrString(), "container", al.ContainerID,
					"ifName", al.IfName, "pod", al.PodNamespace+"/"+al.PodName)
			}
			p := &al
			for _, ip := range al.Addrs() {
				a.byIP[ip] = p
			}
			if al.ContainerID == "" {
				a.byVeth[al.HostVeth] = p
				return nil
			}
			if prev, dup := a.byKey[al.Attachment()]; dup {
				// Cannot happen through this package; keep both held and say so.
				a.log.Error("attachment holds two records", "attachment", al.Attachment(), "ip", al.AddrString(), "other", prev.AddrString())
				return nil
			}
			a.byKey[al.Attachment()] = p
			return nil
		})
	})
}

// checkRecord checks that a record's addresses are of the right families
// and that its key is its primary address.
func checkRecord(k []byte, al Allocation) error {
	switch {
	case al.IP.IsValid() && !al.IP.Is4():
		return &CorruptError{Detail: fmt.Sprintf("allocation record %x: IPv4 address %s is not IPv4", k, al.IP)}
	case al.IPv6.IsValid() && (!al.IPv6.Is6() || al.IPv6.Is4In6() || al.IPv6.Zone() != ""):
		return &CorruptError{Detail: fmt.Sprintf("allocation record %x: IPv6 address %s is not a plain IPv6 address", k, al.IPv6)}
	case !al.primary().IsValid():
		return &CorruptError{Detail: fmt.Sprintf("allocation record %x holds no address", k)}
	case string(k) != string(ipKey(al.primary())):
		return &CorruptError{Detail: fmt.Sprintf("allocation record %x holds %s under the wrong key", k, al.AddrString())}
	}
	return nil
}

// after returns the allocatable address following ip in its family's
// block, wrapping around.
func (a *Allocator) after(ip netip.Addr) netip.Addr {
	if n := ip.Next(); a.allocatable(n) {
		return n
	}
	return a.fams[fam(ip)].first
}

// Close settles the changes already queued, then closes the store.
func (a *Allocator) Close() error {
	a.commits.close()
	return a.db.Close()
}

// Block is the node's IPv4 block, or its IPv6 block on an IPv6-only node.
func (a *Allocator) Block() netip.Prefix { return blocksOf(a.fams)[0] }

// Blocks is the node's blocks, IPv4 first.
func (a *Allocator) Blocks() []netip.Prefix { return blocksOf(a.fams) }

// BlockOf is the node's block of the family (v6: IPv6), zero if none.
func (a *Allocator) BlockOf(v6 bool) netip.Prefix { return a.fams[famIndex(v6)].block }

func famIndex(v6 bool) int {
	if v6 {
		return 1
	}
	return 0
}

// Reserved is the first usable address of Block, never handed to pods: it
// is kept for the node's own gateway or tunnel address (ReservedOf for a
// family's).
func (a *Allocator) Reserved() netip.Addr { return a.Block().Addr().Next() }

// ReservedOf is Reserved of the family's block, zero if none.
func (a *Allocator) ReservedOf(v6 bool) netip.Addr {
	if b := a.BlockOf(v6); b.IsValid() {
		return b.Addr().Next()
	}
	return netip.Addr{}
}

// Size is how many addresses Block can hand out, at most MaxInt (an IPv6
// /64 holds more).
func (a *Allocator) Size() int { return int(min(a.SizeOf(fam(a.Block().Addr()) == 1), math.MaxInt)) }

// SizeOf is how many addresses the family's block can hand out, saturating
// at MaxUint64; 0 without a block of that family.
func (a *Allocator) SizeOf(v6 bool) uint64 { return a.fams[famIndex(v6)].size }

// ipKey is the store key of an address: 4 bytes for IPv4, 16 for IPv6.
func ipKey(ip netip.Addr) []byte { return ip.AsSlice() }

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
				return Allocation{}, &OutOfBlockError{Allocation: *al, Blocks: a.Blocks()}
			}
			// Durably note the claim: a pending release recorded by a DEL
			// that began before this ADD may be processed after it (spool.go).
			upd := *al
			upd.Readded = time.Now().UTC()
			// A family whose block the node gained since (IPv4 to
			// dual-stack) is added to the same record.
			added, err := a.completeLocked(&upd)
			if err != nil {
				a.mu.Unlock()
				return Allocation{}, err
			}
			c, err := a.rewriteLocked(al, upd, added, nil)
			a.mu.Unlock()
			if err == nil {
				err = wait(ctx, c)
			}
			if err != nil {
				return Allocation{}, fmt.Errorf("record re-allocation of %s to %s: %w", upd.AddrString(), key, err)
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
				return Allocation{}, &OutOfBlockError{Allocation: upd, Blocks: a.Blocks()}
			}
			added, err := a.completeLocked(&upd)
			if err != nil {
				a.mu.Unlock()
				return Allocation{}, err
			}
			veth := al.HostVeth
			c, err := a.rewriteLocked(al, upd, added, func() {
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
				return Allocation{}, fmt.Errorf("record re-allocation of recovered %s to %s: %w", upd.AddrString(), key, err)
			}
			return upd, nil
		}
		fresh, c, err := a.reserveLocked(r)
		a.mu.Unlock()
		if err != nil {
			return Allocation{}, err
		}
		if err := wait(ctx, c); err != nil {
			return Allocation{}, fmt.Errorf("record allocation of %s to %s: %w", fresh.AddrString(), key, err)
		}
		return fresh, nil
	}
}

// completeLocked picks, for every family the node has a block of and al
// holds no address of, a free address into al, and returns the picks. They
// are held in memory only once the caller queues al's record
// (rewriteLocked).
func (a *Allocator) completeLocked(al *Allocation) ([]netip.Addr, error) {
	var added []netip.Addr
	for i := range a.fams {
		v6 := i == 1
		if !a.fams[i].block.IsValid() || al.Addr(v6).IsValid() {
			continue
		}
		ip, ok := a.findFree(i, added)
		if !ok {
			return nil, &ExhaustedError{Block: a.fams[i].block, Size: a.fams[i].size}
		}
		if v6 {
			al.IPv6 = ip
		} else {
			al.IP = ip
		}
		added = append(added, ip)
	}
	return added, nil
}

// reserveLocked picks a free address of each family for r, holds them in
// memory and queues their record: one record, so a crash leaves both or
// neither. A failed commit frees them again.
func (a *Allocator) reserveLocked(r Request) (Allocation, *change, error) {
	al := Allocation{
		ContainerID:  r.ContainerID,
		IfName:       r.IfName,
		PodNamespace: r.PodNamespace,
		PodName:      r.PodName,
		// Full precision: ReleaseUnclaimedSince compares it with a DEL's time.
		Allocated: time.Now().UTC(),
	}
	ips, err := a.completeLocked(&al)
	if err != nil {
		return Allocation{}, nil, err
	}
	v, err := json.Marshal(al)
	if err != nil {
		return Allocation{}, nil, fmt.Errorf("encode allocation: %w", err)
	}
	p := &al
	key := al.Attachment()
	a.byKey[key] = p
	for _, ip := range ips {
		a.byIP[ip] = p
		a.next[fam(ip)] = a.after(ip)
	}
	rec := ipKey(al.primary())
	c := a.queueLocked([]*Allocation{p}, true, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAllocs)
		if b.Get(rec) != nil {
			return fmt.Errorf("store already holds %s", al.primary()) // memory and disk disagree: refuse
		}
		if err := b.Put(rec, v); err != nil {
			return err
		}
		return putLast(tx, ips)
	}, func(err error) {
		if err == nil {
			return
		}
		for _, ip := range ips {
			if a.byIP[ip] == p {
				delete(a.byIP, ip)
			}
		}
		if a.byKey[key] == p {
			delete(a.byKey, key)
		}
	})
	return al, c, nil
}

// putLast records the addresses just handed out, for round robin.
func putLast(tx *bolt.Tx, ips []netip.Addr) error {
	meta := tx.Bucket(bucketMeta)
	for _, ip := range ips {
		k := keyLast
		if !ip.Is4() {
			k = keyLast6
		}
		if err := meta.Put(k, ipKey(ip)); err != nil {
			return err
		}
	}
	return nil
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

// rewriteLocked queues the rewrite of al's stored record as upd, which may
// hold added, addresses al does not (held in memory from now, freed again if
// the commit fails); once it is committed, al becomes upd and then (if set)
// named runs.
func (a *Allocator) rewriteLocked(al *Allocation, upd Allocation, added []netip.Addr, named func()) (*change, error) {
	v, err := json.Marshal(upd)
	if err != nil {
		return nil, fmt.Errorf("encode allocation: %w", err)
	}
	for _, ip := range added {
		a.byIP[ip] = al
		a.next[fam(ip)] = a.after(ip)
	}
	oldKey, newKey := ipKey(al.primary()), ipKey(upd.primary())
	return a.queueLocked([]*Allocation{al}, false, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAllocs)
		if string(oldKey) != string(newKey) {
			// An IPv6-only record gaining an IPv4 address moves under it.
			if b.Get(newKey) != nil {
				return fmt.Errorf("store already holds %s", upd.primary())
			}
			if err := b.Delete(oldKey); err != nil {
				return err
			}
		}
		if err := b.Put(newKey, v); err != nil {
			return err
		}
		return putLast(tx, added)
	}, func(err error) {
		if err != nil {
			for _, ip := range added {
				if a.byIP[ip] == al {
					delete(a.byIP, ip)
				}
			}
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

// findFree returns the first address of family i's block from its cursor on
// that is neither held nor in also. Every address it steps over is held, so
// it looks at no more addresses than are held plus one, whatever the
// block's size (an IPv6 /64).
func (a *Allocator) findFree(i int, also []netip.Addr) (netip.Addr, bool) {
	f := &a.fams[i]
	ip := a.next[i]
	if !a.allocatable(ip) {
		ip = f.first
	}
	steps := min(f.size, uint64(len(a.byIP)+len(also))+1)
	for range steps {
		if _, used := a.byIP[ip]; !used && !slices.Contains(also, ip) {
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
		veth, ip := al.HostVeth, al.AddrString()
		c, err := a.rewriteLocked(al, upd, nil, func() {
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
		for ip, al := range a.byIP {
			if ip != al.primary() {
				continue // the IPv6 address of a dual-stack allocation: seen once
			}
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
				// One record holds both families: freed together.
				if err := b.Delete(ipKey(al.primary())); err != nil {
					return err
				}
			}
			return nil
		}, func(err error) {
			if err != nil {
				return
			}
			for _, al := range drop {
				for _, ip := range al.Addrs() {
					if a.byIP[ip] == al {
						delete(a.byIP, ip)
					}
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

// List returns every stored allocation, ordered by address (IPv4 first).
func (a *Allocator) List() []Allocation {
	a.mu.Lock()
	out := make([]Allocation, 0, len(a.byIP))
	for ip, al := range a.byIP {
		if ip != al.primary() {
			continue
		}
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

// Used is how many addresses of Block's family are held (stored),
// including any out of the block.
func (a *Allocator) Used() int { return a.UsedOf(fam(a.Block().Addr()) == 1) }

// UsedOf is how many addresses of the family are held (stored), including
// any out of the block.
func (a *Allocator) UsedOf(v6 bool) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for ip, al := range a.byIP {
		if ip.Is4() == v6 {
			continue
		}
		if f := a.inflight[al]; f == nil || !f.fresh {
			n++
		}
	}
	return n
}

func sortByIP(s []Allocation) {
	slices.SortFunc(s, func(x, y Allocation) int { return x.primary().Compare(y.primary()) })
}
