package cniplugin

import (
	"fmt"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// sameNetNS reports whether a and b are one network namespace: the same
// nsfs inode on the same device, however each was opened (a bind mount
// under /run/netns, /proc/<pid>/ns/net, ...).
func sameNetNS(a, b ns.NetNS) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Fstat(int(a.Fd()), &sa); err != nil {
		return false, fmt.Errorf("stat netns %s: %w", a.Path(), err)
	}
	if err := unix.Fstat(int(b.Fd()), &sb); err != nil {
		return false, fmt.Errorf("stat netns %s: %w", b.Path(), err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}

// isNodeNetNS reports whether podNS is the netns the plugin runs in (the
// calling thread's: the node's, when a runtime executes the plugin).
func isNodeNetNS(podNS ns.NetNS) (bool, error) {
	cur, err := ns.GetCurrentNS()
	if err != nil {
		return false, fmt.Errorf("open own netns: %w", err)
	}
	defer cur.Close()
	return sameNetNS(podNS, cur)
}
