package ipam

import (
	"errors"
	"slices"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// Group commit. Every change is decided in memory under the allocator's
// mutex and queued there, so the queue holds changes in the order they were
// decided; one goroutine writes the queue to bbolt. A change queued while a
// transaction is being committed (fsync'ed) waits for it and goes with every
// other change queued meanwhile in the next one: 50 parallel ADDs cost a few
// fsyncs, not 50 in a row, and a lone ADD waits for nothing but its own.
// Nobody is answered before the transaction holding their change is
// committed.

// errClosed is returned for a change queued after the allocator was closed.
var errClosed = errors.New("ipam: allocator closed")

// change is one queued write.
type change struct {
	// apply writes the change in tx. It may run more than once, each time
	// in a fresh transaction (the one before it was rolled back), so it must
	// only read and write tx.
	apply func(tx *bolt.Tx) error
	// settle records the outcome in memory; it runs holding the allocator's
	// mutex, before anyone waiting for the change is woken.
	settle func(err error)
	result chan error // buffered: the committer never blocks on a waiter
}

type groupCommit struct {
	db     *bolt.DB
	locker sync.Locker // the allocator's mutex, for settle

	mu      sync.Mutex
	idle    sync.Cond // signalled when the committer goroutine exits
	queue   []*change
	running bool
	closed  bool

	// Test hooks, set before use. beforeCommit runs last in every
	// transaction, told how many changes it holds: an error from it fails the
	// whole transaction, as a failed fsync would. committed is told how many
	// changes each transaction that was committed or failed to commit held.
	beforeCommit func(tx *bolt.Tx, changes int) error
	committed    func(changes int, err error)
}

func newGroupCommit(db *bolt.DB, locker sync.Locker) *groupCommit {
	g := &groupCommit{db: db, locker: locker}
	g.idle.L = &g.mu
	return g
}

// submit queues c. The caller holds the allocator's mutex, which orders the
// queue as the decisions were made.
func (g *groupCommit) submit(c *change) {
	c.result = make(chan error, 1)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		// Settled inline: the caller holds the allocator's mutex already.
		c.settle(errClosed)
		c.result <- errClosed
		return
	}
	g.queue = append(g.queue, c)
	if !g.running {
		g.running = true
		go g.run()
	}
}

// run commits the queue, one transaction per batch, until it is empty.
func (g *groupCommit) run() {
	for {
		g.mu.Lock()
		batch := g.queue
		g.queue = nil
		if len(batch) == 0 {
			g.running = false
			g.idle.Broadcast()
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()

		errs := g.commit(batch)
		g.locker.Lock()
		for i, c := range batch {
			c.settle(errs[i])
		}
		g.locker.Unlock()
		for i, c := range batch {
			c.result <- errs[i]
		}
	}
}

// commit writes batch in one transaction and returns each change's error.
// A change whose apply fails is dropped with its own error and the others
// are written again in a new transaction; a failed commit fails them all.
func (g *groupCommit) commit(batch []*change) []error {
	errs := make([]error, len(batch))
	live := make([]int, len(batch))
	for i := range live {
		live[i] = i
	}
	for len(live) > 0 {
		failed := -1
		err := g.db.Update(func(tx *bolt.Tx) error {
			for _, i := range live {
				if err := batch[i].apply(tx); err != nil {
					failed = i
					return err
				}
			}
			if g.beforeCommit != nil {
				return g.beforeCommit(tx, len(live))
			}
			return nil
		})
		if failed >= 0 {
			errs[failed] = err
			live = slices.DeleteFunc(live, func(i int) bool { return i == failed })
			continue
		}
		for _, i := range live {
			errs[i] = err
		}
		if g.committed != nil {
			g.committed(len(live), err)
		}
		break
	}
	return errs
}

// close refuses new changes and waits until the queued ones are settled.
func (g *groupCommit) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	for g.running {
		g.idle.Wait()
	}
}
