package uninstall

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

func TestCheckRefusesDangerousPaths(t *testing.T) {
	// check only reads; the run directory is a temporary one so that no
	// live daemon's socket on this machine gets in the way.
	ok := Options{CNIBinDir: "/opt/cni/bin", CNIConfDir: "/etc/cni/net.d", StateDir: "/var/lib/nexthop", RunDir: t.TempDir() + "/nexthop"}
	for _, c := range []struct {
		name   string
		edit   func(*Options)
		errHas string // "" for accepted
	}{
		{"defaults", func(*Options) {}, ""},
		{"empty", func(o *Options) { o.CNIConfDir = "" }, "--cni-conf-dir: empty path"},
		{"relative", func(o *Options) { o.StateDir = "var/lib/nexthop" }, `--state-dir: "var/lib/nexthop" is not an absolute path`},
		{"root", func(o *Options) { o.StateDir = "/" }, `--state-dir: refusing "/"`},
		{"root spelled otherwise", func(o *Options) { o.RunDir = "/run/.." }, `--run-dir: refusing "/"`},
		{"root even forced", func(o *Options) { o.StateDir, o.Force = "//", true }, `refusing "/"`},
		{"not ours by name", func(o *Options) { o.StateDir = "/var/lib" }, `--state-dir: refusing to remove /var/lib whole`},
		{"not ours by name, forced", func(o *Options) { o.StateDir, o.Force = "/var/lib/nh-state", true }, ""},
		{"ours with a suffix", func(o *Options) { o.StateDir = "/var/lib/nexthop-test/" }, ""},
	} {
		o := ok
		c.edit(&o)
		err := o.check()
		switch {
		case c.errHas == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.errHas != "" && (err == nil || !strings.Contains(err.Error(), c.errHas)):
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.errHas)
		}
	}
}

// A nexthopd still running would put everything back: Run refuses, and
// removes nothing, until it is stopped (or --force).
func TestRefusesWhileDaemonRuns(t *testing.T) {
	name, n := node(t)
	sh(t, "ip", "-n", name, "route", "add", "blackhole", "10.244.1.0/24", "proto", "201")
	o := hostDirs(t)
	if err := os.Remove(filepath.Join(o.RunDir, "nexthop.sock")); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(o.RunDir, "nexthop.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	var out strings.Builder
	err = n.Do(func(ns.NetNS) error { _, err := Run(o, &out); return err })
	if err == nil || !strings.Contains(err.Error(), "nexthopd is still running") || !strings.Contains(err.Error(), "kubectl delete") {
		t.Fatalf("want a refusal naming the running daemon, got %v", err)
	}
	if out.Len() != 0 || !exists(filepath.Join(o.CNIBinDir, "nexthop")) || !exists(o.StateDir) {
		t.Fatalf("removed something while refusing:\n%s", out.String())
	}
	if r := sh(t, "ip", "-n", name, "route", "show", "proto", "201"); !strings.Contains(r, "10.244.1.0/24") {
		t.Fatalf("route removed while refusing: %q", r)
	}

	o.Force = true
	out.Reset()
	if err := n.Do(func(ns.NetNS) error { _, err := Run(o, &out); return err }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "removed route blackhole 10.244.1.0/24 table main\n") || exists(o.StateDir) {
		t.Fatalf("--force did not uninstall:\n%s", out.String())
	}
}
