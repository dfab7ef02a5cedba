package daemon

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/rest"

	"github.com/nexthop-net/nexthop/bfd"
	"github.com/nexthop-net/nexthop/bgp"
	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/ipam"
	"github.com/nexthop-net/nexthop/kube"
)

// KubeOptions configure RunKubernetes.
type KubeOptions struct {
	// Rest reaches the API server (in a pod: rest.InClusterConfig()).
	Rest *rest.Config
	// NodeName is the Node this daemon runs on.
	NodeName string
	// Base holds the cluster-wide settings the API does not carry (timers,
	// paths, log level); its node-specific fields are ignored.
	Base config.Config
	// Health, when set, follows the run (see Health).
	Health *Health
	// ReclaimGrace is how old an address must be before its pod's absence
	// releases it; 0 means kube.DefaultReclaimGrace.
	ReclaimGrace time.Duration
	// Source options (namespace of BGP password Secrets).
	SourceOptions []kube.Option
}

// errSourceStopped marks the end of the config stream while the node runs.
var errSourceStopped = errors.New("kubernetes config source stopped")

// RunKubernetes runs the node with its config from the Kubernetes API: it
// waits for the first complete config (the Node needs spec.podCIDRs and an
// InternalIP of each of their families), starts the node with it, applies later changes live where
// it can (peers, pools, NAT) and returns ErrRestartRequired, after a random
// delay, on a change that needs a restart (live.go). It writes the node's
// BGPNodeStatus and releases the addresses of pods deleted from the node.
func RunKubernetes(ctx context.Context, o KubeOptions, log *slog.Logger) error {
	src, err := kube.NewSource(o.Rest, o.NodeName, o.Base, log, o.SourceOptions...)
	if err != nil {
		return err
	}
	// The Source's end (a cache that never syncs) ends the run. Every
	// goroutine started here is waited for after the cancel.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	// Only the newest config matters: a slow node loop gets the latest,
	// never a backlog.
	updates := make(chan *config.Config, 1)
	wg.Go(func() {
		err := src.Run(ctx, func(c *config.Config) {
			for {
				select {
				case updates <- c:
					return
				default:
				}
				select {
				case <-updates: // drop the stale one
				default:
				}
			}
		})
		if err == nil {
			err = errSourceStopped
		}
		cancel(err)
	})

	first := waitFirstConfig(ctx, updates, o.Health, log)
	if first == nil {
		return sourceFailure(ctx)
	}

	pods, err := kube.NewPodTracker(o.Rest, o.NodeName, log)
	if err != nil {
		return err
	}
	wg.Go(func() {
		// Reclaim does nothing until the pods cache has synced, so the
		// node does not wait for it.
		if err := pods.Start(ctx); err != nil && ctx.Err() == nil {
			log.Error("pods informer", "err", err)
		}
		<-ctx.Done()
		pods.Stop()
	})
	grace := o.ReclaimGrace
	if grace <= 0 {
		grace = kube.DefaultReclaimGrace
	}

	log.Info("starting the node with its config from Kubernetes", "address", first.Address, "addressV6", first.AddressV6, "as", first.LocalAS,
		"podCIDRs", first.PodCIDRs, "peers", len(first.Peers), "routeReflector", first.RouteReflectorClusterID.IsValid())
	err = RunWith(ctx, first, log, Options{
		Updates: updates,
		Health:  o.Health,
		Status: func(ctx context.Context, cfg *config.Config, peers []bgp.PeerState, sessions []bfd.Status) error {
			return src.PublishStatusInfo(ctx, cfg.NodeName, kube.StatusInfoOf(cfg, sessions), peers)
		},
		Reclaim: func(ctx context.Context, alloc *ipam.Allocator) error {
			_, err := pods.Reclaim(ctx, alloc, grace)
			return err
		},
	})
	if err == nil {
		err = sourceFailure(ctx)
	}
	return err
}

// sourceFailure is why ctx ended when the config source ended it; nil
// when the caller stopped the run.
func sourceFailure(ctx context.Context) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return nil
}

// waitFirstConfig blocks until the Source has produced a usable config,
// keeping /healthz green meanwhile: a node without a pod CIDR yet is
// waiting, not wedged, and restarting it would not help. nil means ctx
// ended first.
func waitFirstConfig(ctx context.Context, updates <-chan *config.Config, h *Health, log *slog.Logger) *config.Config {
	h.Waiting("waiting for this node's first usable config from the Kubernetes API (Node spec.podCIDRs and an InternalIP of each family; see the log)")
	defer h.Waiting("")
	beat := time.NewTicker(time.Second)
	defer beat.Stop()
	started := time.Now()
	remind := time.NewTicker(time.Minute)
	defer remind.Stop()
	for {
		h.Beat()
		select {
		case <-ctx.Done():
			return nil
		case c := <-updates:
			return c
		case <-beat.C:
		case <-remind.C:
			log.Warn("still no usable config for this node from the Kubernetes API; see the errors above",
				"waited", time.Since(started).Round(time.Second))
		}
	}
}
