package cniplugin

import (
	"context"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/nexthop-net/nexthop/ipam"
)

// Felix finds a pod's interface by libcalico-go's VethNameForWorkload: the
// first FELIX_INTERFACEPREFIX entry and 11 hex chars of
// sha1("<namespace>.<pod>"). Calico's own test pins ("namespace",
// "podname") with prefix "eni" to "eni82111e10a96".
func TestPodHostVethNameIsCalicos(t *testing.T) {
	if got := ipam.PodHostVethName("namespace", "podname"); got != "nh82111e10a96" {
		t.Fatalf("PodHostVethName(namespace, podname) = %s, Calico names it nh82111e10a96", got)
	}
	k8s := &k8sArgs{K8S_POD_NAMESPACE: "namespace", K8S_POD_NAME: "podname"}
	for _, c := range []struct {
		cid, ifName string
		args        *k8sArgs
		want        string
	}{
		{"c1", "eth0", k8s, "nh82111e10a96"},
		{"c1", "eth0", nil, HostVethName("c1", "eth0")},
		{"c1", "eth0", &k8sArgs{K8S_POD_NAMESPACE: "namespace"}, HostVethName("c1", "eth0")},
		{"c1", "net1", k8s, HostVethName("c1", "net1")},                                         // Felix manages the primary only
		{strings.Repeat("a", 200), "eth0", k8s, HostVethName(strings.Repeat("a", 200), "eth0")}, // no room for the alias
	} {
		h := hostVethFor(c.cid, c.ifName, c.args)
		if h.name != c.want {
			t.Errorf("hostVethFor(%.10s, %s, %+v) = %s, want %s", c.cid, c.ifName, c.args, h.name, c.want)
		}
		att, podKey, ok := ipam.ParseHostVethAlias(h.alias)
		if h.alias != "" && (!ok || att != h.att || podKey != h.podKey) {
			t.Errorf("alias %q reads back as %v %q %v, want %v %q", h.alias, att, podKey, ok, h.att, h.podKey)
		}
	}
}

// vethPod is one sandbox in a vethnaming test.
type vethPod struct {
	netns ns.NetNS
	args  *skel.CmdArgs
	res   *current.Result
}

func k8sPodArgs(ns, pod string) string {
	return "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=" + pod + ";K8S_POD_UID=u-" + randSuffix()
}

func addPod(t *testing.T, host *testHost, cniArgs string) (*vethPod, error) {
	t.Helper()
	p := &vethPod{netns: newNetNS(t, "pod")}
	p.args = &skel.CmdArgs{
		ContainerID: "nhc-ctr-" + randSuffix(), Netns: p.netns.Path(), IfName: "eth0",
		Args: cniArgs, StdinData: netConf(t, host.sock, nil),
	}
	conf, cerr := parseConfig(p.args.StdinData)
	if cerr != nil {
		t.Fatal(cerr)
	}
	var err error
	p.res, err = in(t, host.ns, func() (*current.Result, error) { return add(context.Background(), conf, p.args) })
	return p, err
}

func mustAddPod(t *testing.T, host *testHost, cniArgs string) *vethPod {
	t.Helper()
	p, err := addPod(t, host, cniArgs)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	return p
}

// checkPod runs CHECK with args (the pod's, or others) and the ADD result.
func checkPod(t *testing.T, host *testHost, p *vethPod, cniArgs string) error {
	t.Helper()
	a := *p.args
	a.Args = cniArgs
	a.StdinData = withPrevResult(t, p.args.StdinData, p.res)
	_, err := in(t, host.ns, func() (any, error) { return nil, Check(context.Background(), &a) })
	return err
}

func delPod(t *testing.T, host *testHost, p *vethPod, netns, cniArgs string) {
	t.Helper()
	a := *p.args
	a.Netns, a.Args = netns, cniArgs
	if _, err := in(t, host.ns, func() (any, error) { return nil, Del(context.Background(), &a) }); err != nil {
		t.Fatalf("DEL %s: %v", p.args.ContainerID, err)
	}
}

func hostLink(t *testing.T, host *testHost, name string) netlink.Link {
	t.Helper()
	l, _ := in(t, host.ns, func() (netlink.Link, error) { return netlink.LinkByName(name) })
	return l
}

// The host end's name as the user sees it (`ip link`): the pod's for a
// Kubernetes pod, the container's otherwise; CHECK and DEL find either,
// pods wired before the upgrade (container name, no alias) included.
func TestHostVethNaming(t *testing.T) {
	requireRoot(t)
	host := newTestHost(t, "10.78.0.0/24")

	t.Run("kubernetes pod", func(t *testing.T) {
		args := k8sPodArgs("shop", "web-0")
		p := mustAddPod(t, host, args)
		name := ipam.PodHostVethName("shop", "web-0")
		l := hostLink(t, host, name)
		if l == nil || p.res.Interfaces[0].Name != name {
			t.Fatalf("host veth %s missing (result names %s)", name, p.res.Interfaces[0].Name)
		}
		if want, _ := ipam.HostVethAlias(ipam.Attachment{ContainerID: p.args.ContainerID, IfName: "eth0"}, ipam.PodKey("shop", "web-0")); l.Attrs().Alias != want {
			t.Errorf("host veth alias %q, want %q", l.Attrs().Alias, want)
		}
		if hostLink(t, host, HostVethName(p.args.ContainerID, "eth0")) != nil {
			t.Error("a container-named host veth exists too")
		}
		if err := checkPod(t, host, p, args); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		// Netns gone with its pod end: the host end goes by its pod name.
		delPod(t, host, p, "", args)
		if hostLink(t, host, name) != nil {
			t.Fatalf("DEL left %s", name)
		}
		if _, ok := host.alloc.Get(p.args.ContainerID, "eth0"); ok {
			t.Fatal("DEL left the allocation")
		}
	})

	t.Run("no pod name", func(t *testing.T) {
		p := mustAddPod(t, host, "")
		name := HostVethName(p.args.ContainerID, "eth0")
		if hostLink(t, host, name) == nil || p.res.Interfaces[0].Name != name {
			t.Fatalf("host veth %s missing (result names %s)", name, p.res.Interfaces[0].Name)
		}
		if err := checkPod(t, host, p, ""); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		delPod(t, host, p, "", "")
		if hostLink(t, host, name) != nil {
			t.Fatalf("DEL left %s", name)
		}
	})

	t.Run("wired before the upgrade", func(t *testing.T) {
		// What the plugin made before: the container's name, no alias.
		p := mustAddPod(t, host, "")
		old := HostVethName(p.args.ContainerID, "eth0")
		if _, err := in(t, host.ns, func() (any, error) {
			l, err := netlink.LinkByName(old)
			if err != nil {
				return nil, err
			}
			return nil, netlink.LinkSetAlias(l, "")
		}); err != nil {
			t.Fatal(err)
		}
		// The runtime now passes the pod's name, as kubelet always did.
		args := k8sPodArgs("shop", "db-0")
		if err := checkPod(t, host, p, args); err != nil {
			t.Fatalf("CHECK of a pod wired under the old name: %v", err)
		}
		delPod(t, host, p, "", args)
		if hostLink(t, host, old) != nil {
			t.Fatalf("DEL left the old-named %s", old)
		}
		if _, ok := host.alloc.Get(p.args.ContainerID, "eth0"); ok {
			t.Fatal("DEL left the allocation")
		}
	})

	t.Run("CHECK sees another's veth", func(t *testing.T) {
		args := k8sPodArgs("shop", "web-1")
		p := mustAddPod(t, host, args)
		defer delPod(t, host, p, p.args.Netns, args)
		name := ipam.PodHostVethName("shop", "web-1")
		// Another attachment's mark on it (a newer sandbox's, say).
		other, _ := ipam.HostVethAlias(ipam.Attachment{ContainerID: "other", IfName: "eth0"}, ipam.PodKey("shop", "web-1"))
		if _, err := in(t, host.ns, func() (any, error) {
			return nil, netlink.LinkSetAlias(hostLink(t, host, name), other)
		}); err != nil {
			t.Fatal(err)
		}
		err := checkPod(t, host, p, args)
		if err == nil || !strings.Contains(err.Error(), "attachment other/eth0") {
			t.Fatalf("CHECK with the host veth marked as another's: %v", err)
		}
	})
}

// A pod re-created under its name (a StatefulSet's) on the same node before
// the old sandbox's DEL: the new ADD takes the name from the old sandbox's
// veth, as Calico's plugin does; the old sandbox's late DEL then releases
// its own address and leaves the new veth alone. A link of the name that is
// not an older sandbox of the same pod is never removed.
func TestStaleHostVethOfSamePod(t *testing.T) {
	requireRoot(t)
	host := newTestHost(t, "10.79.0.0/24")
	args := k8sPodArgs("shop", "db-0")
	name := ipam.PodHostVethName("shop", "db-0")
	old := mustAddPod(t, host, args)
	oldIP, _ := host.alloc.Get(old.args.ContainerID, "eth0")

	cur := mustAddPod(t, host, k8sPodArgs("shop", "db-0"))
	l := hostLink(t, host, name)
	if k, _, _ := ipam.ParseHostVethAlias(l.Attrs().Alias); k.ContainerID != cur.args.ContainerID {
		t.Fatalf("host veth %s is %v's, want the new sandbox %s", name, k, cur.args.ContainerID)
	}
	if _, err := in(t, old.netns, func() (netlink.Link, error) { return netlink.LinkByName("eth0") }); err == nil {
		t.Error("the old sandbox's eth0 outlived its host end")
	}
	if err := checkPod(t, host, cur, args); err != nil {
		t.Fatalf("CHECK of the new sandbox: %v", err)
	}

	// The old sandbox's DEL, with and without its netns.
	delPod(t, host, old, old.args.Netns, args)
	delPod(t, host, old, "", args)
	if _, ok := host.alloc.Get(old.args.ContainerID, "eth0"); ok {
		t.Errorf("the old sandbox's DEL left its address %s held", oldIP.IP)
	}
	if err := checkPod(t, host, cur, args); err != nil {
		t.Fatalf("CHECK of the new sandbox after the old one's DEL: %v", err)
	}

	// Links of the name that are not this pod's: never removed.
	delPod(t, host, cur, cur.args.Netns, args)
	for what, alias := range map[string]string{
		"another pod's (a hash collision)": func() string {
			a, _ := ipam.HostVethAlias(ipam.Attachment{ContainerID: "x", IfName: "eth0"}, ipam.PodKey("shop", "other"))
			return a
		}(),
		"unmarked":       "",
		"someone else's": "made by hand",
		"a secondary one's": func() string {
			a, _ := ipam.HostVethAlias(ipam.Attachment{ContainerID: "x", IfName: "net1"}, ipam.PodKey("shop", "db-0"))
			return a
		}(),
	} {
		t.Run(what, func(t *testing.T) {
			if _, err := in(t, host.ns, func() (any, error) {
				v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "nhtpeer0"}
				if err := netlink.LinkAdd(v); err != nil {
					return nil, err
				}
				if alias == "" {
					return nil, nil
				}
				return nil, netlink.LinkSetAlias(v, alias)
			}); err != nil {
				t.Fatal(err)
			}
			defer in(t, host.ns, func() (any, error) { return nil, netlink.LinkDel(hostLink(t, host, name)) })
			p, err := addPod(t, host, args)
			if err == nil || !strings.Contains(err.Error(), "is taken by") {
				t.Fatalf("ADD over %s link %s: %v, want refused", what, name, err)
			}
			if l := hostLink(t, host, name); l == nil || l.Attrs().Alias != alias {
				t.Fatalf("the %s link %s was touched", what, name)
			}
			if _, ok := host.alloc.Get(p.args.ContainerID, "eth0"); ok {
				t.Fatal("the refused ADD kept its address")
			}
		})
	}
}
