package kube

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/nexthop-net/nexthop/ipam"
)

// DefaultReclaimGrace is how old an allocation must be before its pod's
// absence counts: the CNI ADD runs before this node's informer is sure to
// have seen the pod, and an allocation without a pod name cannot be checked.
const DefaultReclaimGrace = 10 * time.Minute

// PodTracker follows the pods bound to one node (a field-selected informer,
// so each node holds only its own pods).
type PodTracker struct {
	nodeName string
	client   kubernetes.Interface
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
	lister   listersv1.PodLister
	log      *slog.Logger
	now      func() time.Time
	cancel   context.CancelFunc
}

// NewPodTracker prepares a tracker of nodeName's pods; Start runs it.
func NewPodTracker(rc *rest.Config, nodeName string, log *slog.Logger) (*PodTracker, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kube: create client: %w", err)
	}
	f := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
		}))
	inf := f.Core().V1().Pods()
	// Only names matter here: keep the cache small.
	if err := inf.Informer().SetTransform(func(obj any) (any, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			p.ManagedFields = nil
			p.Spec = corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork}
			p.Status = corev1.PodStatus{Phase: p.Status.Phase, PodIPs: p.Status.PodIPs}
		}
		return obj, nil
	}); err != nil {
		return nil, fmt.Errorf("kube: set pod transform: %w", err)
	}
	return &PodTracker{
		nodeName: nodeName, client: client, factory: f,
		informer: inf.Informer(), lister: inf.Lister(), log: log, now: time.Now,
	}, nil
}

// Start runs the informer until ctx ends or Stop is called, and waits for
// its first full list.
func (p *PodTracker) Start(ctx context.Context) error {
	ctx, p.cancel = context.WithCancel(ctx)
	p.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), p.informer.HasSynced) {
		return fmt.Errorf("kube: pods of node %s: cache did not sync: %w", p.nodeName, ctx.Err())
	}
	return nil
}

// Stop ends the informer and waits for its goroutines.
func (p *PodTracker) Stop() {
	if p.cancel != nil {
		p.cancel()
	}
	p.factory.Shutdown()
}

// PodsOnNode lists the pods bound to the node, as last seen.
func (p *PodTracker) PodsOnNode() ([]*corev1.Pod, error) {
	return p.lister.List(labels.Everything())
}

// Keep returns an ipam.Reclaim predicate: it keeps every allocation whose
// pod (namespace/name recorded at CNI ADD) is still bound to this node, every
// allocation younger than grace, and everything while the informer has not
// synced. An allocation is only ever let go when the cache says its pod is
// gone; Reclaim adds a live check against the API before that.
func (p *PodTracker) Keep(grace time.Duration) func(ipam.Allocation) bool {
	synced := p.informer.HasSynced()
	now := p.now()
	return func(al ipam.Allocation) bool {
		if !synced || now.Sub(al.Allocated) < grace {
			return true
		}
		if al.PodName == "" || al.PodNamespace == "" {
			// Nothing to check against: only age can tell.
			return false
		}
		_, err := p.lister.Pods(al.PodNamespace).Get(al.PodName)
		return err == nil
	}
}

// Reclaim releases the allocations of pods that no longer exist on this
// node. A cache can lag (a watch that was down, a pod created a moment
// ago), so every candidate is confirmed with a live GET before release:
// a pod the API still binds to this node keeps its address.
func (p *PodTracker) Reclaim(ctx context.Context, alloc *ipam.Allocator, grace time.Duration) ([]ipam.Allocation, error) {
	if !p.informer.HasSynced() {
		return nil, nil
	}
	keep := p.Keep(grace)
	gone := map[ipam.Attachment]bool{}
	for _, al := range alloc.List() {
		if keep(al) {
			continue
		}
		if al.PodName != "" && al.PodNamespace != "" {
			pod, err := p.client.CoreV1().Pods(al.PodNamespace).Get(ctx, al.PodName, metav1.GetOptions{})
			switch {
			case err == nil && pod.Spec.NodeName == p.nodeName:
				continue // the cache lagged: the pod is here
			case err != nil && !apierrors.IsNotFound(err):
				return nil, fmt.Errorf("check pod %s/%s before releasing %s: %w", al.PodNamespace, al.PodName, al.AddrString(), err)
			}
		}
		gone[al.Attachment()] = true
	}
	if len(gone) == 0 {
		return nil, nil
	}
	// Only the confirmed ones, and only if still unused by the same
	// attachment's pod per the cache (a CNI ADD may have raced us).
	released, err := alloc.Reclaim(ctx, func(al ipam.Allocation) bool {
		return !gone[al.Attachment()] || keep(al)
	})
	if err != nil {
		return nil, fmt.Errorf("reclaim addresses of deleted pods: %w", err)
	}
	for _, al := range released {
		p.log.Info("released address of a pod that no longer exists on this node",
			"ip", al.AddrString(), "pod", al.PodNamespace+"/"+al.PodName, "container", al.ContainerID, "allocated", al.Allocated)
	}
	return released, nil
}
