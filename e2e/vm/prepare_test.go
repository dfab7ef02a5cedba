package vm

import (
	"testing"
	"time"
)

// TestPrepare fetches (first run) or finds (later runs) the VM's parts and
// checks the default modules, with their dependencies, can be ordered.
func TestPrepare(t *testing.T) {
	if InGuest() {
		t.Skip("host-side test")
	}
	start := time.Now()
	a := Require(t)
	t.Logf("kernel %s, %d modules, ready in %s", a.KernelVersion, len(a.Modules), time.Since(start).Round(10*time.Millisecond))
	order, err := loadOrder(a.Modules, DefaultModules)
	if err != nil {
		t.Fatalf("order default modules: %v", err)
	}
	t.Logf("load order: %v", order)
	// ipip needs ip_tunnel needs tunnel4: insmod in the wrong order fails.
	pos := map[string]int{}
	for i, m := range order {
		pos[m] = i
	}
	for _, dep := range [][2]string{{"tunnel4", "ipip"}, {"ip_tunnel", "ipip"}, {"llc", "stp"}, {"stp", "bridge"}, {"udp_tunnel", "vxlan"}} {
		if _, ok := pos[dep[0]]; !ok || pos[dep[0]] > pos[dep[1]] {
			t.Errorf("%s must be loaded before %s: order %v", dep[0], dep[1], order)
		}
	}
}
