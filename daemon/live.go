package daemon

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nexthop-net/nexthop/config"
)

// DefaultRestartSpread is the longest a node waits before it exits for a
// change that needs a restart. A change that needs one usually reaches
// every node at the same moment (an IPPool's encapsulation, the cluster's
// AS); each node waits a random share of this so that they do not all
// restart, and all drop their sessions, at once.
const DefaultRestartSpread = 30 * time.Second

// configField is one config field, for the restart rule.
type configField struct {
	name string // as in the YAML and the logs
	get  func(*config.Config) any
}

// restartFields are the fields a running node cannot take over, with what
// fixes each at start. Every other field applies live (liveFields); a test
// keeps the two lists complete.
var restartFields = []configField{
	// The node's identity: the speaker's session source, next hop and
	// GoBGP global settings, the status object, the tunnel's endpoint.
	{"nodeName", func(c *config.Config) any { return c.NodeName }},
	{"address", func(c *config.Config) any { return c.Address }},
	{"addressV6", func(c *config.Config) any { return c.AddressV6 }},
	{"routerID", func(c *config.Config) any { return c.RouterID }},
	{"localAS", func(c *config.Config) any { return c.LocalAS }},
	{"routeReflectorClusterID", func(c *config.Config) any { return c.RouteReflectorClusterID }},
	// The IPAM store, the blackhole, the announcement and the NAT source.
	{"podCIDRs", func(c *config.Config) any { return fmt.Sprint(c.PodCIDRs) }},
	// Normalize moves podCIDR into podCIDRs: it is always unset here.
	{"podCIDR", func(c *config.Config) any { return c.PodCIDR }},
	// Listeners opened at start.
	{"bgpPort", func(c *config.Config) any { return c.BGPPort }},
	{"grpcListen", func(c *config.Config) any { return c.GRPCListen }},
	{"grpcAllowWrites", func(c *config.Config) any { return c.GRPCAllowWrites }},
	{"grpcAllowRemote", func(c *config.Config) any { return c.GRPCAllowRemote }},
	{"metricsListen", func(c *config.Config) any { return c.MetricsListen }},
	{"ipamSocket", func(c *config.Config) any { return c.IPAMSocket }},
	{"stateDir", func(c *config.Config) any { return c.StateDir }},
	// The tunnel device and the pods' MTU, which every pod's interface
	// was made with.
	{"ipipMode", func(c *config.Config) any { return c.IPIPMode }},
	{"vxlanMode", func(c *config.Config) any { return c.VXLANMode }},
	{"vxlan", func(c *config.Config) any { return c.VXLAN }},
	{"mtu", func(c *config.Config) any { return c.MTU }},
	{"underlayInterface", func(c *config.Config) any { return c.UnderlayInterface }},
	// The logger is made before the daemon starts.
	{"logLevel", func(c *config.Config) any { return c.LogLevel }},
}

// liveFields apply without a restart (see applyLive): peers by SetPeers
// and their BFD sessions by syncBFD (holdTime too: Normalize copies it
// into every peer), the import scope by SetImportScope, service prefixes
// and communities by SetAdvertisement, the NAT by its own sync, and the
// timers are read afresh at each use.
var liveFields = []string{
	"peers", "holdTime",
	"pools", "acceptDefaultRoute",
	"serviceCIDRs", "communities", "prefixAdvertisements",
	"natOutgoing", "natOutgoingV6", "natOutgoingExclude",
	"initialSync", "resyncInterval",
}

// restartReason lists the restart fields that differ between cur and next,
// as "name old -> new"; empty when every change applies live.
func restartReason(cur, next *config.Config) string {
	var diffs []string
	var zero config.Config
	show := func(f configField, v any) string {
		if v == f.get(&zero) {
			return "unset"
		}
		return fmt.Sprint(v)
	}
	for _, f := range restartFields {
		// Every restart field is of a comparable type.
		if a, b := f.get(cur), f.get(next); a != b {
			diffs = append(diffs, fmt.Sprintf("%s %s -> %s", f.name, show(f, a), show(f, b)))
		}
	}
	return strings.Join(diffs, ", ")
}

// pendingRestart is a restart waiting for its turn: the node runs on with
// its current config meanwhile, and the restart applies everything.
type pendingRestart struct {
	timer *time.Timer
	why   string
}

// due fires when the node should exit; nil (never) when none is pending.
func (r *pendingRestart) due() <-chan time.Time {
	if r.timer == nil {
		return nil
	}
	return r.timer.C
}

// restartDelay is a random wait of up to spread (at least a second, which
// also lets a burst of API changes settle into the config restarted with).
func restartDelay(spread time.Duration) time.Duration {
	if spread <= time.Second {
		return spread
	}
	return wait.Jitter(time.Second, float64(spread)/float64(time.Second)-1)
}

// update takes over a later config: what can change live applies now;
// a change that needs a restart schedules one after a random delay.
func (n *node) update(ctx context.Context, next *config.Config) {
	if next == nil {
		return
	}
	if why := restartReason(n.cfg, next); why != "" {
		if n.restart.timer == nil {
			d := restartDelay(n.o.RestartSpread)
			n.log.Warn("config changed in a way a running node cannot apply; exiting to be restarted after a random delay, so that nodes do not all restart at once (routes stay, peers hold ours by graceful restart)",
				"changes", why, "delay", d.Round(time.Millisecond))
			n.restart.timer = time.NewTimer(d)
		} else if why != n.restart.why {
			n.log.Info("config changed again while a restart is pending; the restart will apply it", "changes", why)
		}
		n.restart.why = why
		return
	}
	if n.restart.timer != nil {
		n.restart.timer.Stop()
		n.restart = pendingRestart{}
		n.log.Info("the change that needed a restart was undone; not restarting")
	}
	n.applyLive(ctx, next)
}

// restartNow ends the run for the pending restart.
func (n *node) restartNow() error {
	n.log.Warn("exiting to be restarted for a config change (routes stay, peers hold ours by graceful restart)", "changes", n.restart.why)
	return fmt.Errorf("%w: %s", ErrRestartRequired, n.restart.why)
}

// applyLive takes over next, which differs from the running config in
// live fields only.
func (n *node) applyLive(ctx context.Context, next *config.Config) {
	cur := n.cfg
	n.cfg = next
	n.running.Store(next)
	// Before the peers: new peers come in under the new scope.
	if !slices.Equal(cur.Pools, next.Pools) || cur.AcceptDefaultRoute != next.AcceptDefaultRoute || n.scopeFailed {
		n.setImportScope(ctx)
	}
	n.nat.set(natOptions(next))
	n.setPeers(ctx, next.Peers)
	// After the peers: a new peer's export policy is in place before the
	// new prefixes go out (the policy keeps them from nodes either way).
	if !reflect.DeepEqual(advertisement(cur), advertisement(next)) || n.advFailed {
		n.setAdvertisement(ctx)
	}
	n.syncBFD(ctx)
}

// setAdvertisement applies the service prefixes and communities; what
// fails is tried again at the next resync.
func (n *node) setAdvertisement(ctx context.Context) {
	a := advertisement(n.cfg)
	if err := n.sp.SetAdvertisement(ctx, a); err != nil {
		n.advFailed = true
		n.log.Error("apply the service prefixes and communities; trying again at the next resync", "err", err)
		return
	}
	n.advFailed = false
	n.log.Debug("service prefixes and communities applied live", "services", len(a.Services), "communities", len(a.Communities))
}

// setImportScope applies the pools and acceptDefaultRoute to the import
// policy; what fails is tried again at the next resync.
func (n *node) setImportScope(ctx context.Context) {
	sc := importScope(n.cfg)
	if err := n.sp.SetImportScope(ctx, sc); err != nil {
		n.scopeFailed = true
		n.log.Error("apply the import scope (pools, acceptDefaultRoute); trying again at the next resync", "err", err)
		return
	}
	n.scopeFailed = false
	n.log.Info("import scope applied live", "pools", sc.Pools, "acceptDefaultRoute", sc.AcceptDefaultRoute)
}

// retryLive applies again, at a resync, the live changes that failed.
func (n *node) retryLive(ctx context.Context) {
	if n.scopeFailed {
		n.setImportScope(ctx)
	}
	if n.peersFailed {
		n.setPeers(ctx, n.cfg.Peers)
	}
	if n.advFailed {
		n.setAdvertisement(ctx)
	}
	if n.bfdFailed {
		n.syncBFD(ctx)
	}
}
