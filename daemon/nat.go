package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nexthop-net/nexthop/nat"
)

func sameRules(a, b nat.Rules) bool {
	return a.Enabled == b.Enabled && slices.Equal(a.Sources, b.Sources) && slices.Equal(a.Exclude, b.Exclude)
}

// natWant is the NAT's options: what its goroutine keeps in force, and how
// often it checks (natOptions builds them from the config).
type natWant struct {
	rules nat.Rules
	every time.Duration
}

// natOutgoing keeps the node's outgoing NAT (tables ip and ip6
// nexthop-nat, one per family with NAT on) in line with the config: set at
// start, re-checked every resyncInterval (repairing whatever was changed
// behind our back), and changed live when the pools, natOutgoing,
// natOutgoingV6 or natOutgoingExclude change.
type natOutgoing struct {
	log *slog.Logger
	// want delivers new settings to the goroutine; only the latest counts.
	want   chan natWant
	cancel context.CancelFunc
	done   chan struct{}
}

// setupNAT puts the NAT in line with o before pods get addresses and
// starts the goroutine that keeps it so. With natOutgoing off it removes
// the table a former run left. stop ends the goroutine and leaves the table
// in place: a restart keeps pods' outgoing connections, and the next start
// reconciles.
func setupNAT(o natWant, log *slog.Logger) (*natOutgoing, error) {
	rules := o.rules
	m, err := nat.New(0, log)
	if err != nil {
		if rules.Enabled {
			return nil, fmt.Errorf("natOutgoing: %w", err)
		}
		log.Warn("natOutgoing off; cannot check for a NAT table left by a former run", "err", err)
		m = nil
	} else if err := m.Sync(context.Background(), rules); err != nil {
		m.Close()
		if rules.Enabled {
			return nil, fmt.Errorf("natOutgoing: set up tables %v (needs nf_tables and nf_nat in the kernel): %w", rules.Tables(), err)
		}
		// A kernel without nf_tables has no table of ours either.
		log.Warn("natOutgoing off; could not remove a NAT table left by a former run", "table", nat.Table, "err", err)
		m = nil
	}
	if rules.Enabled {
		log.Info("natOutgoing on", "tables", rules.Tables(), "sources", rules.Sources, "exclude", rules.Exclude)
	} else {
		log.Info("natOutgoing off")
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &natOutgoing{log: log, want: make(chan natWant, 1), cancel: cancel, done: make(chan struct{})}
	go n.run(ctx, m, o)
	return n, nil
}

// set has the goroutine apply w; it does not block.
func (o *natOutgoing) set(w natWant) {
	for {
		select {
		case o.want <- w:
			return
		default:
		}
		select {
		case <-o.want: // superseded
		default:
		}
	}
}

func (o *natOutgoing) stop() {
	o.cancel()
	<-o.done
}

func (o *natOutgoing) run(ctx context.Context, m *nat.Manager, cur natWant) {
	defer close(o.done)
	defer func() {
		if m != nil {
			m.Close()
		}
	}()
	t := time.NewTicker(cur.every)
	defer t.Stop()
	// failed: the last sync did not apply; the next tick tries again.
	failed := false
	sync := func() {
		if m == nil {
			var err error
			if m, err = nat.New(0, o.log); err != nil {
				o.log.Error("natOutgoing: open nftables; trying again every resyncInterval", "err", err)
				failed = true
				return
			}
		}
		// Sync logs what it repairs.
		if err := m.Sync(ctx, cur.rules); err != nil {
			if ctx.Err() == nil {
				o.log.Error("natOutgoing: sync; trying again every resyncInterval", "tables", cur.rules.Tables(), "err", err)
			}
			failed = true
			return
		}
		failed = false
	}
	for {
		select {
		case <-ctx.Done():
			return
		case w := <-o.want:
			if w.every != cur.every {
				t.Reset(w.every)
			}
			changed := !sameRules(w.rules, cur.rules)
			cur = w
			if !changed {
				continue
			}
			sync()
			if failed {
				continue
			}
			if cur.rules.Enabled {
				o.log.Info("natOutgoing on (applied live)", "tables", cur.rules.Tables(), "sources", cur.rules.Sources, "exclude", cur.rules.Exclude)
			} else {
				o.log.Info("natOutgoing off (applied live)")
			}
		case <-t.C:
			// Off, nothing is left to repair once the table is gone.
			if cur.rules.Enabled || failed {
				sync()
			}
		}
	}
}
