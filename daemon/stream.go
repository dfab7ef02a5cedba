package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/nexthop-net/nexthop/bfd"
	"github.com/nexthop-net/nexthop/bgp"
	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/ipam"
)

// Defaults for Options.
const (
	DefaultStatusInterval  = 30 * time.Second
	DefaultReclaimInterval = time.Minute
	// statusPoll is how often session states are compared with those last
	// published: a session going up or down reaches the status within it.
	statusPoll = time.Second
	// statusRetry spaces out writes while the API refuses them.
	statusRetry = 5 * time.Second
)

// ErrRestartRequired ends RunWith when a later config changes something a
// running node cannot take over live. The process should exit non-zero and
// be restarted (the kubelet does): kernel routes stay in place and peers
// hold ours by graceful restart meanwhile, so traffic keeps flowing.
var ErrRestartRequired = errors.New("config change needs a restart")

// Options are the optional parts of a run. The zero value is the
// standalone daemon: one config, no status, no reclaim.
type Options struct {
	// Updates delivers later configs for the same node, each complete and
	// validated. What can change live applies live (live.go); a change to
	// a field that needs a restart ends the run with ErrRestartRequired
	// after a random delay of up to RestartSpread (0: DefaultRestartSpread).
	Updates       <-chan *config.Config
	RestartSpread time.Duration
	// Health, when set, follows the run for /healthz and /readyz.
	Health *Health
	// Status, when set, is given every session's state (BGP, and BFD by
	// peer address) whenever a session comes up or goes down or a peer is
	// added or removed, and at least every StatusInterval. It runs on its
	// own goroutine.
	Status         func(ctx context.Context, cfg *config.Config, peers []bgp.PeerState, bfd []bfd.Status) error
	StatusInterval time.Duration
	// Reclaim, when set, runs every ReclaimInterval on its own goroutine to
	// release the addresses of pods that no longer exist.
	Reclaim         func(ctx context.Context, alloc *ipam.Allocator) error
	ReclaimInterval time.Duration
}

func (o *Options) defaults() {
	if o.StatusInterval <= 0 {
		o.StatusInterval = DefaultStatusInterval
	}
	if o.ReclaimInterval <= 0 {
		o.ReclaimInterval = DefaultReclaimInterval
	}
	if o.RestartSpread <= 0 {
		o.RestartSpread = DefaultRestartSpread
	}
}

// forwardingSysctl is a switch the node needs on to route a family; hint
// says who sets it in Kubernetes, where the daemon cannot.
type forwardingSysctl struct{ name, path, hint string }

// The sysctls the node needs set; variables for tests. IPv6 forwarding is
// needed only with an IPv6 block: turning it on makes the kernel ignore
// router advertisements (accept_ra=1), which an IPv4-only node has no
// reason to risk.
var (
	ipv4Forwarding = forwardingSysctl{"net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward",
		"the init container sets it"}
	ipv6Forwarding = forwardingSysctl{"net.ipv6.conf.all.forwarding", "/proc/sys/net/ipv6/conf/all/forwarding",
		"the init container sets it with -ipv6-forward=auto, the manifests' setting, when the Node has an IPv6 pod CIDR at its start (see its log; a pod restart runs it again), or always with -ipv6-forward=/proc/sys/net/ipv6/conf/all/forwarding"}
)

// ensureForwarding makes sure the node routes the family of s, and says
// whether it had to turn it on. In Kubernetes the daemon container is
// unprivileged and /proc/sys is read-only there: the init container has
// set the sysctl already, and finding it set is enough.
func ensureForwarding(s forwardingSysctl) (turnedOn bool, err error) {
	b, err := os.ReadFile(s.path)
	if err == nil && string(bytes.TrimSpace(b)) == "1" {
		return false, nil
	}
	if werr := os.WriteFile(s.path, []byte("1"), 0o644); werr != nil {
		state := "0"
		if err != nil {
			state = "unreadable (" + err.Error() + ")"
		}
		return false, fmt.Errorf("%s is %s and cannot be set here (in Kubernetes %s): %w", s.name, state, s.hint, werr)
	}
	return true, nil
}

// setPeers applies the peer list; what fails is tried again at the next
// resync (SetPeers keeps what it could apply).
func (n *node) setPeers(ctx context.Context, peers []config.Peer) {
	if err := n.sp.SetPeers(ctx, peers); err != nil {
		n.peersFailed = true
		n.log.Error("apply peer changes; trying again at the next resync", "err", err)
		return
	}
	n.peersFailed = false
	n.log.Info("peers applied", "peers", len(peers))
}

// syncBFD makes the peers' BFD sessions; what fails is tried again at the
// next resync.
func (n *node) syncBFD(ctx context.Context) {
	if err := n.bfd.sync(ctx, n.cfg.Peers); err != nil {
		n.bfdFailed = true
		n.log.Error("apply BFD sessions; trying again at the next resync", "err", err)
		return
	}
	n.bfdFailed = false
}

// established reports whether the BGP session with addr is up.
func (n *node) established(addr netip.Addr) bool {
	for _, p := range n.sp.Peers() {
		if p.Address == addr {
			return p.Established
		}
	}
	return false
}

// checkIPAMSocket marks the IPAM ready once its socket exists.
func (n *node) checkIPAMSocket() {
	h := n.o.Health
	if h == nil || h.ipamReady() {
		return
	}
	if _, err := os.Stat(n.cfg.IPAMSocket); err == nil {
		h.ipamServing()
	}
}

// startBackground runs the status and reclaim goroutines until ctx ends.
func (n *node) startBackground(ctx context.Context, wg *sync.WaitGroup, alloc *ipam.Allocator) {
	if n.o.Status != nil {
		wg.Go(func() { n.statusLoop(ctx) })
	}
	if n.o.Reclaim != nil {
		wg.Go(func() {
			t := time.NewTicker(n.o.ReclaimInterval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				if err := n.o.Reclaim(ctx, alloc); err != nil && ctx.Err() == nil {
					n.log.Warn("reclaim addresses of deleted pods", "err", err)
				}
			}
		})
	}
}

// statusLoop publishes session states on every change of who is up, and
// every StatusInterval. It reads the speaker's event-fed peer table once a
// second, which costs GoBGP nothing.
func (n *node) statusLoop(ctx context.Context) {
	t := time.NewTicker(statusPoll)
	defer t.Stop()
	var (
		last      map[string]bool
		published time.Time
		failedAt  time.Time
		failing   bool
	)
	for {
		peers := n.sp.Peers()
		sessions := n.bfd.sessions()
		up := make(map[string]bool, len(peers)+len(sessions))
		for _, p := range peers {
			up["bgp "+p.Address.String()] = p.Established
		}
		for _, s := range sessions {
			up["bfd "+s.Peer.String()] = s.State == bfd.Up
		}
		now := time.Now()
		due := !maps.Equal(up, last) || now.Sub(published) >= n.o.StatusInterval
		if failing && now.Sub(failedAt) < statusRetry {
			due = false
		}
		if due {
			if err := n.o.Status(ctx, n.running.Load(), peers, sessions); err != nil {
				if ctx.Err() != nil {
					return
				}
				if !failing {
					n.log.Warn("publish BGP status; retrying", "err", err)
				}
				failing, failedAt = true, now
			} else {
				if failing {
					n.log.Info("BGP status published again")
				}
				failing = false
				last, published = up, now
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
