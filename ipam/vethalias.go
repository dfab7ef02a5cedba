package ipam

import (
	"crypto/sha1"
	"encoding/hex"
	"strings"
)

// The CNI plugin marks each host veth it makes with an interface alias
// (IFLA_IFALIAS, `ip link show` prints it) naming the attachment the veth
// belongs to:
//
//	nexthop <containerID>/<ifName>[ pod=<sha1 of "<namespace>.<pod>">]
//
// A host veth named after its pod (PodHostVethName) cannot be traced back to
// its attachment by its name, and a re-created pod of the same name gets the
// same name: the alias says whose the link is, to the plugin (never remove
// a live sandbox's veth) and to the allocator recovering addresses from the
// kernel (recover.go).
const hostVethAliasPrefix = "nexthop "

// maxAlias is the longest alias the kernel keeps (IFALIASZ less the NUL).
const maxAlias = 255

// PodKey is the full hex sha1 of "<namespace>.<pod>"; PodHostVethName is
// "nh" and its first 11 characters.
func PodKey(namespace, pod string) string {
	sum := sha1.Sum([]byte(namespace + "." + pod))
	return hex.EncodeToString(sum[:])
}

// PodHostVethName is the host veth name Calico gives a pod's interface in
// the Kubernetes datastore (libcalico-go's VethNameForWorkload with the
// interface prefix "nh"): Felix finds a pod's interface by this name.
func PodHostVethName(namespace, pod string) string {
	return "nh" + PodKey(namespace, pod)[:11]
}

// HostVethAlias is the alias marking the host veth of attachment k; podKey
// (PodKey) is empty for a veth named after its container
// (HostVethName). ok is false when it would not fit in an alias.
func HostVethAlias(k Attachment, podKey string) (alias string, ok bool) {
	alias = hostVethAliasPrefix + k.ContainerID + "/" + k.IfName
	if podKey != "" {
		alias += " pod=" + podKey
	}
	return alias, len(alias) <= maxAlias && k.ContainerID != "" && k.IfName != ""
}

// ParseHostVethAlias reads an alias HostVethAlias made; ok is false for any
// other (a link that is not the plugin's, or one made before the alias).
func ParseHostVethAlias(alias string) (k Attachment, podKey string, ok bool) {
	rest, ok := strings.CutPrefix(alias, hostVethAliasPrefix)
	if !ok {
		return Attachment{}, "", false
	}
	if i := strings.LastIndex(rest, " pod="); i >= 0 {
		rest, podKey = rest[:i], rest[i+len(" pod="):]
		if len(podKey) != 2*sha1.Size {
			return Attachment{}, "", false
		}
	}
	// An interface name has no "/"; a container ID should not either.
	i := strings.LastIndex(rest, "/")
	if i <= 0 || i == len(rest)-1 {
		return Attachment{}, "", false
	}
	return Attachment{ContainerID: rest[:i], IfName: rest[i+1:]}, podKey, true
}
