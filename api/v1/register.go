package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is the API group of every nexthop resource.
const GroupName = "nexthop.io"

// SchemeGroupVersion is group nexthop.io, version v1.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1"}

// Resources, as used by dynamic clients and RBAC rules.
var (
	BGPConfigurationsResource = SchemeGroupVersion.WithResource("bgpconfigurations")
	BGPPeersResource          = SchemeGroupVersion.WithResource("bgppeers")
	IPPoolsResource           = SchemeGroupVersion.WithResource("ippools")
	BGPNodeStatusesResource   = SchemeGroupVersion.WithResource("bgpnodestatuses")
	BGPFiltersResource        = SchemeGroupVersion.WithResource("bgpfilters")
)

var (
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	AddToScheme   = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion,
		&BGPConfiguration{}, &BGPConfigurationList{},
		&BGPPeer{}, &BGPPeerList{},
		&IPPool{}, &IPPoolList{},
		&BGPNodeStatus{}, &BGPNodeStatusList{},
		&BGPFilter{}, &BGPFilterList{},
	)
	metav1.AddToGroupVersion(s, SchemeGroupVersion)
	return nil
}
