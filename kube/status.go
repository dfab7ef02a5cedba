package kube

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/util/retry"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
	"github.com/nexthop-net/nexthop/bfd"
	"github.com/nexthop-net/nexthop/bgp"
	"github.com/nexthop-net/nexthop/config"
)

// StatusInfo is the node-level part of a BGPNodeStatus.
type StatusInfo struct {
	AS       uint32
	RouterID string
	// PodCIDRs are the node's blocks, one per family (config.PodCIDRs).
	PodCIDRs []string
	// BFD is the node's BFD sessions; each shows under its peer.
	BFD []bfd.Status
}

// PublishStatus writes nodeName's BGPNodeStatus: one entry per configured
// session, as the speaker reports it. The object is created on first use,
// owned by the Node so that it is deleted with it.
func (s *Source) PublishStatus(ctx context.Context, nodeName string, peers []bgp.PeerState) error {
	var info StatusInfo
	if d := s.Last(); d != nil && d.Config.NodeName == nodeName {
		info = StatusInfoOf(&d.Config, nil)
	}
	return s.PublishStatusInfo(ctx, nodeName, info, peers)
}

// StatusInfoOf is the node-level part of cfg's BGPNodeStatus, with the
// node's BFD sessions.
func StatusInfoOf(cfg *config.Config, sessions []bfd.Status) StatusInfo {
	info := StatusInfo{AS: cfg.LocalAS, RouterID: cfg.RouterID.String(), BFD: sessions}
	for _, v6 := range []bool{false, true} { // IPv4 first
		if p := cfg.PodCIDROf(v6); p.IsValid() {
			info.PodCIDRs = append(info.PodCIDRs, p.String())
		}
	}
	return info
}

// PublishStatusInfo is PublishStatus with the node-level fields given.
func (s *Source) PublishStatusInfo(ctx context.Context, nodeName string, info StatusInfo, peers []bgp.PeerState) error {
	now := time.Now()
	st := nexthopv1.BGPNodeStatusStatus{
		ASNumber:    int64(info.AS),
		RouterID:    info.RouterID,
		PodCIDRs:    info.PodCIDRs,
		TotalPeers:  int32(len(peers)),
		LastUpdated: metav1.NewTime(now),
	}
	if len(info.PodCIDRs) > 0 {
		// The IPv4 block (IPv6 on an IPv6-only node), as before dual-stack.
		st.PodCIDR = info.PodCIDRs[0]
	}
	for _, p := range peers {
		ps := nexthopv1.BGPPeerStatus{
			Address:          p.Address.String(),
			AS:               int64(p.AS),
			State:            p.State,
			PrefixesReceived: int64(p.Received),
			PrefixesAccepted: int64(p.Accepted),
		}
		for _, b := range info.BFD {
			if b.Peer == p.Address {
				ps.BFD = &nexthopv1.BFDSessionStatus{State: b.State.String(), RemoteState: b.RemoteState.String(),
					Diag: b.Diag.String(), DetectTime: &metav1.Duration{Duration: b.DetectTime}}
			}
		}
		if p.Established {
			st.EstablishedPeers++
			since := metav1.NewTime(now.Add(-p.Uptime).Truncate(time.Second))
			ps.Since = &since
		}
		st.Peers = append(st.Peers, ps)
	}
	status, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&st)
	if err != nil {
		return fmt.Errorf("encode BGPNodeStatus %s: %w", nodeName, err)
	}

	res := s.dyn.Resource(nexthopv1.BGPNodeStatusesResource)
	s.statusMu.Lock()
	defer s.statusMu.Unlock()
	// The object last written is usually current: one request per publish
	// instead of a read and a write. A conflict means someone else touched
	// it; read it again.
	obj := s.statusObj[nodeName]
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if obj == nil {
			var err error
			obj, err = res.Get(ctx, nodeName, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				obj, err = res.Create(ctx, s.newNodeStatus(ctx, nodeName), metav1.CreateOptions{})
			}
			if err != nil {
				return err
			}
		}
		obj.Object["status"] = status
		updated, err := res.UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		if err != nil {
			obj = nil
			if apierrors.IsNotFound(err) {
				// Deleted under us (kubectl delete): recreate on retry.
				return apierrors.NewConflict(nexthopv1.BGPNodeStatusesResource.GroupResource(), nodeName, err)
			}
			return err
		}
		obj = updated
		return nil
	})
	if s.statusObj == nil {
		s.statusObj = map[string]*unstructured.Unstructured{}
	}
	s.statusObj[nodeName] = obj
	if err != nil {
		return fmt.Errorf("write BGPNodeStatus %s: %w", nodeName, err)
	}
	return nil
}

// newNodeStatus is an empty BGPNodeStatus owned by its Node, when the Node
// can be found: the garbage collector then removes it with the Node.
func (s *Source) newNodeStatus(ctx context.Context, nodeName string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(nexthopv1.SchemeGroupVersion.String())
	u.SetKind("BGPNodeStatus")
	u.SetName(nodeName)
	n, err := s.nodes.Get(nodeName)
	if err != nil {
		n, err = s.client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	}
	if err == nil {
		u.SetOwnerReferences([]metav1.OwnerReference{{
			APIVersion: "v1",
			Kind:       "Node",
			Name:       n.Name,
			UID:        n.UID,
		}})
	}
	return u
}
