package uninstall

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// Usage is the command line Main takes, after the binary's name.
const Usage = "uninstall [--cni-bin-dir DIR] [--cni-conf-dir DIR] [--state-dir DIR] [--run-dir DIR] [--force]"

// Main runs `nexthop uninstall` with args (those after "uninstall") and
// returns the exit code: 0 when nothing of nexthop's is left (also when
// there was nothing to do), 1 when something could not be removed, 2 for
// a bad command line.
func Main(args []string, stdout, stderr io.Writer) int {
	o := DefaultOptions()
	fs := flag.NewFlagSet("nexthop uninstall", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: nexthop %s\n\n", Usage)
		fmt.Fprintln(stderr, "Removes everything nexthop put on this node: its routes (protocol 201, in every table), its tunnel devices and its address on tunl0, pods' leftover host veths, the nftables tables ip and ip6 nexthop-nat, the CNI config and the plugin binaries it installed, and its state and run directories; puts back CNI configs it moved aside. Run as root on each node after `kubectl delete -k manifests/`. Safe to run again.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.CNIBinDir, "cni-bin-dir", o.CNIBinDir, "CNI plugin binary directory")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", o.CNIConfDir, "CNI network config directory")
	fs.StringVar(&o.StateDir, "state-dir", o.StateDir, "nexthopd state directory, removed whole")
	fs.StringVar(&o.RunDir, "run-dir", o.RunDir, "nexthopd runtime directory (IPAM socket), removed whole")
	fs.BoolVar(&o.Force, "force", false, `remove --state-dir and --run-dir even when their names lack "nexthop", and even when nexthopd still answers on its socket`)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "nexthop uninstall: unexpected argument %q\nusage: nexthop %s\n", fs.Arg(0), Usage)
		return 2
	}

	res, err := Run(o, stdout)
	done := len(res.Removed) + len(res.Restored)
	if err != nil {
		fmt.Fprintf(stderr, "nexthop uninstall: %v\n", err)
		if done > 0 {
			fmt.Fprintf(stderr, "nexthop uninstall: did the %d things above, but some of nexthop's is left; fix the cause and run it again\n", done)
		}
		return 1
	}
	var summary string
	switch {
	case done == 0:
		summary = "nothing to do: nothing of nexthop's left on this node"
	default:
		summary = fmt.Sprintf("removed %d, restored %d: nothing of nexthop's left on this node", len(res.Removed), len(res.Restored))
	}
	if len(res.Kept) > 0 {
		summary += fmt.Sprintf(" (%d moved-aside configs kept, see above)", len(res.Kept))
	}
	fmt.Fprintln(stdout, summary)
	return 0
}
