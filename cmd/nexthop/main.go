// Command nexthop is the nexthop CNI plugin (type "nexthop"). Run by hand
// as `nexthop uninstall`, it removes nexthop from the node instead: it is
// the one binary of ours already on every node.
package main

import (
	"os"
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
	bv "github.com/containernetworking/plugins/pkg/utils/buildversion"

	cniplugin "github.com/nexthop-net/nexthop/cni-plugin"
	"github.com/nexthop-net/nexthop/uninstall"
)

func init() {
	// Namespace switches apply to one OS thread: keep main on its own.
	runtime.LockOSThread()
}

func main() {
	// A runtime calls a CNI plugin without arguments (CNI_COMMAND is in
	// the environment), so an argument can only come from a person.
	if len(os.Args) > 1 && os.Args[1] == "uninstall" {
		os.Exit(uninstall.Main(os.Args[2:], os.Stdout, os.Stderr))
	}
	if cerr := cniplugin.CapStdin(); cerr != nil {
		_ = cerr.Print()
		os.Exit(1)
	}
	skel.PluginMainFuncs(cniplugin.Funcs(), version.All, bv.BuildString("nexthop"))
}
