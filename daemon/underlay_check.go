package daemon

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/tunnel"
)

// ErrConfig marks a config that validates on paper but cannot work on this
// node, found before anything in the kernel changes: restarting will not
// help (nexthopd exits 2, as for an invalid config file).
var ErrConfig = errors.New("config cannot work on this node")

// checkUnderlaySubnet refuses a pod block overlapping the subnet of the
// interface holding the node address of its family: its blackhole route
// would take the place of the connected route and cut the node off from
// its peers. The config carries the addresses only, so the subnets are read
// from the kernel. A node address on no interface is left to the
// encapsulation set-up, which reports it (it may yet appear: restarting can
// help there).
func checkUnderlaySubnet(cfg *config.Config, log *slog.Logger) error {
	tm, err := tunnel.New(0, log)
	if err != nil {
		return err
	}
	defer tm.Close()
	for _, v6 := range []bool{false, true} {
		block, addr := cfg.PodCIDROf(v6), cfg.AddressOf(v6)
		if !block.IsValid() || !addr.IsValid() {
			continue
		}
		// The underlay interface names the interface of Address; the
		// other family's address is found wherever it is.
		name := cfg.UnderlayInterface
		if addr != cfg.Address {
			name = ""
		}
		u, err := tm.FindUnderlay(addr, name)
		if err != nil {
			continue
		}
		if subnet := u.Prefix.Masked(); subnet.Overlaps(block) {
			return fmt.Errorf("%w: podCIDRs: %s overlaps the underlay subnet %s on %s: its blackhole would cut the node off from its peers",
				ErrConfig, block, subnet, u.Name)
		}
	}
	return nil
}
