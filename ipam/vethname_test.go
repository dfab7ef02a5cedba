package ipam_test

import (
	"fmt"
	"testing"

	cniplugin "github.com/nexthop-net/nexthop/cni-plugin"
	"github.com/nexthop-net/nexthop/ipam"
)

// Addresses recovered from the kernel are matched with their attachments
// by host veth name: the two namings must never drift apart.
func TestHostVethNameIsThePlugins(t *testing.T) {
	for i := range 50 {
		for _, ifName := range []string{"eth0", "net1", "eth1"} {
			id := fmt.Sprintf("%064x", i*7919)
			if got, want := ipam.HostVethName(id, ifName), cniplugin.HostVethName(id, ifName); got != want {
				t.Fatalf("ipam.HostVethName(%s, %s) = %s, the plugin names it %s", id, ifName, got, want)
			}
		}
	}
}
