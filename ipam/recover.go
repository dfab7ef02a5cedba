package ipam

import (
	"bytes"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
	bolt "go.etcd.io/bbolt"
)

// The store never silently forgets: at every start the allocator compares
// itself with the pods wired on this node, whose /32 and /128 routes through
// host veths are in the kernel, and holds every such address it does not
// hold yet: a pod's IPv4 and IPv6 addresses, routed through the same veth,
// become one allocation as ADD made them. A missing or emptied store is so rebuilt from the kernel; a store
// that lost its last transaction (a zeroed newest meta page) gets the
// address back; and no ADD can be given an address a live pod uses.

// PodRoute is a pod's address as the kernel shows it: a /32 (IPv4) or /128
// (IPv6) route through the pod's host veth.
type PodRoute struct {
	IP       netip.Addr
	HostVeth string
	// Attachment is the one the veth's alias names (vethalias.go), zero
	// for a veth without it (wired before the alias): such a veth is
	// named after its attachment (HostVethName).
	Attachment Attachment
}

// owner reports whether the route's veth is attachment k's.
func (r PodRoute) owner(k Attachment) bool {
	if r.Attachment != (Attachment{}) {
		return r.Attachment == k
	}
	return HostVethName(k.ContainerID, k.IfName) == r.HostVeth
}

// Kernel reports the pods wired on this node (KernelPodRoutes in the node's
// network namespace).
type Kernel interface {
	PodRoutes() ([]PodRoute, error)
}

// KernelFunc adapts a function to Kernel.
type KernelFunc func() ([]PodRoute, error)

func (f KernelFunc) PodRoutes() ([]PodRoute, error) { return f() }

// OpenOption configures Open.
type OpenOption func(*openOptions)

type openOptions struct {
	kernel Kernel
	now    func() time.Time
}

// WithKernel makes Open hold every pod address k reports that the store
// does not hold (see the package's recovery rules above). Without it the
// store alone is trusted: for tests and tools, never for the daemon.
func WithKernel(k Kernel) OpenOption { return func(o *openOptions) { o.kernel = k } }

// HostVethName is the pod's host veth name the CNI plugin gives an
// attachment it does not name after its pod (PodHostVethName), and gave
// every attachment before it did: "nh" + 11 hex chars of sha1(containerID),
// or of "containerID/ifName" for interfaces other than eth0. It must stay
// equal to cniplugin.HostVethName (checked by a test): it is how an address
// recovered from the kernel through a veth without an alias (vethalias.go)
// is matched with the attachment that holds it.
func HostVethName(containerID, ifName string) string {
	key := containerID
	if ifName != "eth0" {
		key += "/" + ifName
	}
	sum := sha1.Sum([]byte(key))
	return "nh" + hex.EncodeToString(sum[:])[:11]
}

// heldBy reports whether the allocation belongs to attachment k. An
// allocation recovered from the kernel knows only its host veth, whose name
// is a hash of the attachment.
func (al *Allocation) heldBy(k Attachment) bool {
	if al.ContainerID != "" {
		return al.Attachment() == k
	}
	return al.HostVeth != "" && al.HostVeth == HostVethName(k.ContainerID, k.IfName)
}

// storeState is what Open found before bbolt opened the file.
type storeState int

const (
	storeOK storeState = iota
	storeMissing
	storeEmpty
	storeDamagedMeta
)

// lockTimeout bounds the wait for another process holding the store.
var lockTimeout = 10 * time.Second

// openFile opens (creating) and locks the store file, checks its bytes and
// opens it with bbolt. It returns the store's state for the log and, for a
// damaged file it still opens, the backup it made first.
func openFile(path string, log *slog.Logger, now time.Time) (db *bolt.DB, state storeState, backup string, err error) {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		state = storeMissing
	} else if err != nil {
		return nil, 0, "", fmt.Errorf("ipam: stat %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, 0, "", fmt.Errorf("ipam: open %s: %w", path, err)
	}
	handed := false
	defer func() {
		if !handed {
			f.Close()
		}
	}()
	// A second daemon on the same file would break every guarantee. The
	// lock comes before reading: a file being written is not corrupt.
	if err := lockFile(f, lockTimeout); err != nil {
		return nil, 0, "", fmt.Errorf("ipam: lock %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, "", fmt.Errorf("ipam: stat %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, "", fmt.Errorf("ipam: %s is not a regular file", path)
	}
	if fi.Size() == 0 && state != storeMissing {
		state = storeEmpty
	}
	if fi.Size() > 0 {
		data, err := io.ReadAll(io.NewSectionReader(f, 0, fi.Size()))
		if err != nil {
			return nil, 0, "", fmt.Errorf("ipam: read %s: %w", path, err)
		}
		sc, err := verifyStore(data)
		if err != nil {
			var ce *CorruptError
			if errors.As(err, &ce) {
				ce.Path = path
			}
			return nil, 0, "", err
		}
		if sc.damagedMeta != "" {
			// bbolt would open the older state without a word, and the next
			// commit overwrites the damaged page: keep the file as it was.
			state = storeDamagedMeta
			backup = fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405.000000000Z"))
			if err := renameio.WriteFile(backup, data, 0o600); err != nil {
				return nil, 0, "", fmt.Errorf("ipam: back up damaged store %s to %s: %w", path, backup, err)
			}
			log.Warn("ipam: IPAM store damaged: "+sc.damagedMeta+"; the last change may be lost, pod addresses are recovered from the kernel",
				"path", path, "backup", backup)
			if err := repairMeta(f, data, sc); err != nil {
				return nil, 0, "", fmt.Errorf("ipam: repair meta page %d of %s (the damaged file is kept as %s): %w", sc.damagedSlot, path, backup, err)
			}
		}
	}
	err = safely(path, func() error {
		var oerr error
		db, oerr = bolt.Open(path, 0o600, &bolt.Options{
			Timeout: lockTimeout,
			// bbolt locks the descriptor already locked here: no window
			// between the check above and the open.
			OpenFile: func(string, int, os.FileMode) (*os.File, error) { handed = true; return f, nil },
		})
		return oerr
	})
	if err != nil {
		if db == nil && handed {
			// bbolt closes the file on its errors; after a panic it could not.
			f.Close()
		}
		return nil, 0, "", corruptOr(path, err)
	}
	if err := safely(path, func() error { return checkDB(db) }); err != nil {
		db.Close()
		return nil, 0, "", corruptOr(path, err)
	}
	return db, state, backup, nil
}

// repairMeta overwrites the damaged meta page with the valid one, so both
// name the state bbolt opens (bbolt asserts a meta page's header and would
// panic on a zeroed page 1). The next commit writes a new meta as usual.
func repairMeta(f *os.File, data []byte, sc storeCheck) error {
	ps, good := sc.pageSize, 1-sc.damagedSlot
	page := bytes.Clone(data[good*ps : (good+1)*ps])
	binary.NativeEndian.PutUint64(page, uint64(sc.damagedSlot))
	if _, err := f.WriteAt(page, int64(sc.damagedSlot*ps)); err != nil {
		return err
	}
	return f.Sync()
}

// checkDB runs bbolt's own consistency check.
func checkDB(db *bolt.DB) error {
	return db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
}

// corruptOr names bbolt's complaints about the file as corruption, and
// leaves errors of the system (permissions, I/O, a lock held) as they are.
func corruptOr(path string, err error) error {
	var ce *CorruptError
	switch {
	case errors.As(err, &ce):
		if ce.Path == "" {
			ce.Path = path
		}
		return err
	case errors.Is(err, bolt.ErrInvalid), errors.Is(err, bolt.ErrChecksum), errors.Is(err, bolt.ErrVersionMismatch):
		return &CorruptError{Path: path, Detail: err.Error()}
	case errors.Is(err, bolt.ErrTimeout):
		return fmt.Errorf("ipam: %s is locked by another process (another nexthopd?): %w", path, err)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("ipam: open %s: %w", path, err)
	}
	return &CorruptError{Path: path, Detail: err.Error()}
}

// safely runs f, turning a panic or a memory fault (a SIGBUS in bbolt's
// mmap) into a *CorruptError. verifyStore should leave nothing for this to
// catch; it is the second line.
func safely(path string, f func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = &CorruptError{Path: path, Detail: fmt.Sprintf("reading it failed: %v", r)}
		}
	}()
	return f()
}

func lockFile(f *os.File, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("held by another process for %s (another nexthopd?)", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// reconcileKernel holds every pod address the kernel shows that the store
// does not. Called from Open before anyone is served.
func (a *Allocator) reconcileKernel(k Kernel, state storeState, now time.Time) error {
	routes, err := k.PodRoutes()
	if err != nil {
		return fmt.Errorf("ipam: read pod routes from the kernel (needed to check the store against the pods on this node): %w", err)
	}
	// The addresses the store does not hold, by host veth, in the order the
	// kernel listed them.
	type vethRoutes struct {
		att      Attachment
		v4, v6   []netip.Addr
		hostVeth string
	}
	var order []string
	unheld := map[string]*vethRoutes{}
	for _, r := range routes {
		if !r.IP.IsValid() || r.IP.Is4In6() {
			continue
		}
		if have, ok := a.byIP[r.IP]; ok {
			if have.ContainerID != "" && !r.owner(have.Attachment()) {
				a.log.Warn("ipam: the kernel routes a held address to another pod's veth; keeping the store's record",
					"ip", r.IP, "hostVeth", r.HostVeth, "container", have.ContainerID, "ifName", have.IfName)
			}
			continue
		}
		g := unheld[r.HostVeth]
		if g == nil {
			g = &vethRoutes{att: r.Attachment, hostVeth: r.HostVeth}
			unheld[r.HostVeth] = g
			order = append(order, r.HostVeth)
		}
		if r.IP.Is4() {
			g.v4 = append(g.v4, r.IP)
		} else {
			g.v6 = append(g.v6, r.IP)
		}
	}
	// An allocation the store holds for a veth's attachment that lacks a
	// family the kernel routes there (a store that lost its last
	// transaction cannot do that; one from a build without IPv6 can):
	// completed rather than split.
	byVeth := map[string]*Allocation{}
	for ip, al := range a.byIP {
		if ip != al.primary() {
			continue
		}
		if al.ContainerID == "" {
			byVeth[al.HostVeth] = al
		} else {
			byVeth[HostVethName(al.ContainerID, al.IfName)] = al
		}
	}
	type rewrite struct {
		al  *Allocation
		upd Allocation
	}
	var completed []rewrite
	var add []Allocation
	named := map[Attachment]bool{}
	for _, veth := range order {
		g := unheld[veth]
		have := byVeth[veth]
		if h := a.byKey[g.att]; g.att != (Attachment{}) && h != nil {
			have = h
		}
		if have != nil {
			upd := *have
			if !upd.IP.IsValid() && len(g.v4) > 0 {
				upd.IP, g.v4 = g.v4[0], g.v4[1:]
			}
			if !upd.IPv6.IsValid() && len(g.v6) > 0 {
				upd.IPv6, g.v6 = g.v6[0], g.v6[1:]
			}
			if upd != *have {
				upd.OutOfBlock = a.outOfBlock(upd)
				completed = append(completed, rewrite{have, upd})
			}
		}
		// A pod's addresses of both families, paired as ADD made them;
		// anything more (which no ADD makes) is held on its own.
		for i := range max(len(g.v4), len(g.v6)) {
			al := Allocation{HostVeth: veth, Allocated: now}
			if i < len(g.v4) {
				al.IP = g.v4[i]
			}
			if i < len(g.v6) {
				al.IPv6 = g.v6[i]
			}
			al.OutOfBlock = a.outOfBlock(al)
			if k := g.att; k != (Attachment{}) && !named[k] {
				// The alias names the attachment: recovered whole, as stored.
				if _, held := a.byKey[k]; !held {
					al.ContainerID, al.IfName, al.HostVeth = k.ContainerID, k.IfName, ""
					named[k] = true
				}
			}
			add = append(add, al)
		}
	}
	switch {
	case len(add)+len(completed) == 0 && (state == storeMissing || state == storeEmpty):
		a.log.Info("ipam: new IPAM store: no pod routes in the kernel, nothing to recover", "state", state.String())
		return nil
	case len(add)+len(completed) == 0:
		return nil
	}
	sortByIP(add)
	err = a.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAllocs)
		for _, c := range completed {
			if old, now := ipKey(c.al.primary()), ipKey(c.upd.primary()); string(old) != string(now) {
				if err := b.Delete(old); err != nil {
					return err
				}
			}
			v, err := json.Marshal(c.upd)
			if err != nil {
				return err
			}
			if err := b.Put(ipKey(c.upd.primary()), v); err != nil {
				return err
			}
		}
		for _, al := range add {
			v, err := json.Marshal(al)
			if err != nil {
				return err
			}
			if err := b.Put(ipKey(al.primary()), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ipam: record %d pod allocations recovered from the kernel: %w", len(add)+len(completed), err)
	}
	for _, c := range completed {
		*c.al = c.upd
		for _, ip := range c.al.Addrs() {
			a.byIP[ip] = c.al
		}
		a.log.Warn("ipam: completing a pod's allocation with an address found in the kernel but not in the store",
			"ip", c.al.AddrString(), "container", c.al.ContainerID, "ifName", c.al.IfName, "hostVeth", c.al.HostVeth, "outOfBlock", c.al.OutOfBlock)
	}
	for i := range add {
		p := &add[i]
		for _, ip := range p.Addrs() {
			a.byIP[ip] = p
		}
		if p.ContainerID != "" {
			a.byKey[p.Attachment()] = p
		} else {
			a.byVeth[p.HostVeth] = p
		}
		a.log.Warn("ipam: holding a pod address found in the kernel but not in the store",
			"ip", p.AddrString(), "hostVeth", p.HostVeth, "container", p.ContainerID, "ifName", p.IfName, "outOfBlock", p.OutOfBlock)
	}
	n := 0 // addresses recovered
	for _, al := range add {
		n += len(al.Addrs())
	}
	n += len(completed)
	a.log.Warn(fmt.Sprintf("ipam: IPAM store %s: recovered %d pod addresses from the kernel's pod routes", state, n),
		"recovered", n, "allocations", len(add), "completed", len(completed), "held", len(a.byIP))
	return nil
}

func (s storeState) String() string {
	switch s {
	case storeMissing:
		return "was missing"
	case storeEmpty:
		return "was empty"
	case storeDamagedMeta:
		return "had a damaged meta page"
	}
	return "was intact but incomplete"
}
