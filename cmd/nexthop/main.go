// Command nexthop is the nexthop CNI plugin (type "nexthop").
package main

import (
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
	bv "github.com/containernetworking/plugins/pkg/utils/buildversion"

	cniplugin "github.com/nexthop-net/nexthop/cni-plugin"
)

func init() {
	// Namespace switches apply to one OS thread: keep main on its own.
	runtime.LockOSThread()
}

func main() {
	skel.PluginMainFuncs(cniplugin.Funcs(), version.All, bv.BuildString("nexthop"))
}
