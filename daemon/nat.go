package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/nat"
)

// natRules is the node's outgoing NAT as cfg asks for it: the node's own
// block is masqueraded towards everything outside the pools, the block
// itself and natOutgoingExclude.
func natRules(cfg *config.Config) nat.Rules {
	if !cfg.NATOutgoing {
		return nat.Rules{}
	}
	exclude := append([]netip.Prefix{cfg.PodCIDR}, cfg.Pools...)
	return nat.Rules{
		Enabled: true,
		Sources: []netip.Prefix{cfg.PodCIDR},
		Exclude: append(exclude, cfg.NATOutgoingExclude...),
	}
}

// setupNAT puts the node's outgoing NAT (table ip nexthop-nat) in line
// with cfg before pods get addresses, then re-checks it every
// resyncInterval, repairing whatever was changed behind our back. With
// natOutgoing off it removes the table a former run left. The returned
// stop ends the re-checks and leaves the table in place: a restart keeps
// pods' outgoing connections, and the next start reconciles.
func setupNAT(cfg *config.Config, log *slog.Logger) (stop func(), err error) {
	rules := natRules(cfg)
	m, err := nat.New(0, log)
	if err != nil {
		if !rules.Enabled {
			log.Warn("natOutgoing off; cannot check for a NAT table left by a former run", "err", err)
			return func() {}, nil
		}
		return nil, fmt.Errorf("natOutgoing: %w", err)
	}
	if err := m.Sync(context.Background(), rules); err != nil {
		m.Close()
		if !rules.Enabled {
			// A kernel without nf_tables has no table of ours either.
			log.Warn("natOutgoing off; could not remove a NAT table left by a former run", "table", "ip "+nat.Table, "err", err)
			return func() {}, nil
		}
		return nil, fmt.Errorf("natOutgoing: set up table ip %s (needs nf_tables and nf_nat in the kernel): %w", nat.Table, err)
	}
	if !rules.Enabled {
		m.Close()
		log.Info("natOutgoing off")
		return func() {}, nil
	}
	log.Info("natOutgoing on", "table", "ip "+nat.Table, "sources", rules.Sources, "exclude", rules.Exclude)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(cfg.ResyncInterval.Duration)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				// Sync logs what it repairs.
				if err := m.Sync(ctx, rules); err != nil && ctx.Err() == nil {
					log.Error("natOutgoing: resync", "table", "ip "+nat.Table, "err", err)
				}
			}
		}
	}()
	return func() {
		cancel()
		<-done
		m.Close()
	}, nil
}
