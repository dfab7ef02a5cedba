// Package uninstall removes everything nexthop put on a node: its routes
// (protocol 201, blackholes included, in every table), the tunnel devices
// it made and its address on tunl0, leftover host veths of pods, the
// natOutgoing nftables table, the CNI config and the plugin binaries it
// installed, and its state and run directories. It restores the CNI
// configs the installer moved aside.
//
// It works in the caller's network namespace, and changes nothing it
// cannot tell is nexthop's: routes of other protocols, other nftables
// tables, devices and files of others stay. Running it again finds nothing
// to do.
package uninstall

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Files the installer (cmd/nexthop-install) leaves on the host besides the
// binaries and the conflist; the names are the contract between the two.
const (
	// OwnedRecord, in the CNI binary directory, lists the plugin binaries
	// the installer created (one base name per line): only those are
	// removed, a portmap or loopback that was there before stays.
	OwnedRecord = ".nexthop-owned"
	// BackupSuffix marks a CNI config the installer renamed because it
	// would have won over ours; uninstall renames it back.
	BackupSuffix = ".nexthop-bak"
	// PluginBinary is always ours.
	PluginBinary = "nexthop"
)

// ConfNames are the names our conflist has had: 10-nexthop.conflist was
// renamed 05-nexthop.conflist to sort before other configs.
var ConfNames = []string{"05-nexthop.conflist", "10-nexthop.conflist"}

// Options say where nexthop's files are on the node.
type Options struct {
	CNIBinDir  string // plugin binaries
	CNIConfDir string // network configs
	StateDir   string // nexthopd's state (IPAM database), removed whole
	RunDir     string // nexthopd's sockets, removed whole
	// Force drops the safety checks that can be wrong about a node: that
	// the state and run directories' names contain "nexthop", and that no
	// nexthopd still answers on a socket in the run directory. "/" and
	// relative paths are refused even so.
	Force bool
}

// DefaultOptions are the paths the manifests use.
func DefaultOptions() Options {
	return Options{
		CNIBinDir:  "/opt/cni/bin",
		CNIConfDir: "/etc/cni/net.d",
		StateDir:   "/var/lib/nexthop",
		RunDir:     "/run/nexthop",
	}
}

// Result lists what a Run did, one line per thing, as printed.
type Result struct {
	Removed  []string // gone now
	Restored []string // put back as before nexthop: moved-aside configs, tunl0 down
	Kept     []string // moved aside by us but left so, with the reason
}

// Run uninstalls nexthop from the current network namespace and the
// directories in o, printing each removal to out as it happens. It checks
// all options before it changes anything; after that it carries on past
// failures, so one stuck item does not keep the rest, and returns them all
// joined. A second Run finds nothing to do.
func Run(o Options, out io.Writer) (Result, error) {
	if err := o.check(); err != nil {
		return Result{}, err
	}
	r := &reporter{out: out}

	k, err := openKernel()
	if err != nil {
		return r.res, err
	}
	k.removeAll(r)
	k.close()

	removeConf(r, o.CNIConfDir)
	removeBinaries(r, o.CNIBinDir)
	removeDir(r, o.StateDir)
	removeDir(r, o.RunDir)
	return r.res, errors.Join(r.errs...)
}

// reporter prints and records each outcome.
type reporter struct {
	out  io.Writer
	res  Result
	errs []error
}

func (r *reporter) removed(format string, a ...any) {
	s := fmt.Sprintf(format, a...)
	r.res.Removed = append(r.res.Removed, s)
	fmt.Fprintln(r.out, "removed", s)
}

func (r *reporter) restored(format string, a ...any) {
	s := fmt.Sprintf(format, a...)
	r.res.Restored = append(r.res.Restored, s)
	fmt.Fprintln(r.out, "restored", s)
}

func (r *reporter) kept(format string, a ...any) {
	s := fmt.Sprintf(format, a...)
	r.res.Kept = append(r.res.Kept, s)
	fmt.Fprintln(r.out, "kept", s)
}

func (r *reporter) fail(err error) { r.errs = append(r.errs, err) }

// check refuses options that could remove what is not ours, before
// anything is removed.
func (o Options) check() error {
	var errs []error
	for _, d := range []struct{ flag, path string }{
		{"--cni-bin-dir", o.CNIBinDir}, {"--cni-conf-dir", o.CNIConfDir},
		{"--state-dir", o.StateDir}, {"--run-dir", o.RunDir},
	} {
		if err := checkPath(d.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.flag, err))
		}
	}
	// These two are removed whole, so a slip of the finger (--state-dir
	// /var/lib) would take far more than ours with them.
	for _, d := range []struct{ flag, path string }{{"--state-dir", o.StateDir}, {"--run-dir", o.RunDir}} {
		if o.Force || checkPath(d.path) != nil {
			continue
		}
		if !strings.Contains(filepath.Base(filepath.Clean(d.path)), "nexthop") {
			errs = append(errs, fmt.Errorf("%s: refusing to remove %s whole: its name does not contain \"nexthop\", so it may not be ours; pass --force if nexthopd really kept its files there", d.flag, d.path))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if !o.Force {
		if sock := answeringSocket(o.RunDir); sock != "" {
			return fmt.Errorf("nexthopd is still running on this node (%s accepts connections), and would put back what uninstall removes: delete it first (kubectl delete -k manifests/), or pass --force", sock)
		}
	}
	return nil
}

func checkPath(p string) error {
	switch {
	case p == "":
		return errors.New("empty path")
	case !filepath.IsAbs(p):
		return fmt.Errorf("%q is not an absolute path", p)
	case filepath.Clean(p) == "/":
		return errors.New(`refusing "/"`)
	}
	return nil
}

// answeringSocket returns a socket in dir that accepts a connection: a
// live nexthopd (its IPAM socket is there). A socket file left by a
// stopped daemon refuses connections and does not count.
func answeringSocket(dir string) string {
	es, err := os.ReadDir(dir)
	if err != nil {
		return ""
	}
	for _, e := range es {
		if e.Type()&os.ModeSocket == 0 {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if c, err := net.DialTimeout("unix", p, time.Second); err == nil {
			c.Close()
			return p
		}
	}
	return ""
}
