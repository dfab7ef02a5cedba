// Command nexthop-install is the DaemonSet's init container: it puts the CNI
// plugin binaries and the network config on the host, each atomically (write
// a temporary file in the target directory, fsync, rename) and only when the
// content changed, so the container runtime never executes a half-written
// plugin or reads a half-written conflist, and restarts do not rewrite
// anything. The conflist is written last: the runtime treats the node's
// network as ready once a config exists, and by then every plugin it names
// is in place.
//
// Container runtimes (containerd, CRI-O, libcni) use the lexically first
// network config in the directory, so ours is named 05-… and any other
// config sorting before it (a 10-containerd-net.conflist left by the
// distribution, say) is moved aside to <name>.nexthop-bak, as Cilium does.
// Configs sorting after ours stay and are only logged as shadowed.
//
// The plugin binaries it creates (those the host did not have) are listed
// in <bin-dst>/.nexthop-owned, so an uninstall removes exactly those and
// leaves plugins the host already had, such as a distribution's loopback.
//
// It also enables IPv4 forwarding on the host, the one thing that needs a
// writable /proc/sys, so that the long-running daemon container can stay
// unprivileged; and IPv6 forwarding too when -ipv6-forward names its
// sysctl, or with -ipv6-forward=auto (the manifests' setting) when the
// Node has an IPv6 pod CIDR (a dual-stack or IPv6 cluster: a forwarding
// host ignores router advertisements, which an IPv4-only cluster has no
// reason to risk).
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

const (
	// pluginName is our own CNI plugin: always ours to remove, even when a
	// file of that name was there before (an install without the record).
	pluginName = "nexthop"
	// ownedRecord, in the binary directory, lists the plugins we created.
	ownedRecord = ".nexthop-owned"
	// backupSuffix is appended to a network config moved out of our way.
	backupSuffix = ".nexthop-bak"
	// confName is our network config's file name: "05" sorts before the
	// "10-…" configs distributions and runtimes ship.
	confName = "05-nexthop.conflist"
)

// confExts are the extensions libcni, and so containerd and CRI-O, read as
// network configs (libcni.ConfFiles).
var confExts = []string{".conf", ".conflist", ".json"}

func main() {
	binSrc := flag.String("bin-src", "/opt/nexthop/cni/bin", "directory of CNI plugin binaries to install")
	binDst := flag.String("bin-dst", "/host/opt/cni/bin", "host CNI binary directory (mounted)")
	confSrc := flag.String("conf-src", "/opt/nexthop/cni/"+confName, "network config to install; a file of the same name in -conf-override wins")
	confOverride := flag.String("conf-override", "/etc/nexthop/cni", "directory of an optional conflist from the ConfigMap")
	confDst := flag.String("conf-dst", "/host/etc/cni/net.d", "host CNI config directory (mounted)")
	ipForward := flag.String("ip-forward", "/proc/sys/net/ipv4/ip_forward", "sysctl file to set to 1; empty to skip")
	ipv6Forward := flag.String("ipv6-forward", "", `IPv6 forwarding sysctl file to set to 1 (/proc/sys/net/ipv6/conf/all/forwarding on a node with an IPv6 pod block); "auto": that file when this Node has an IPv6 pod CIDR (read from the API); empty to skip`)
	nodeName := flag.String("node-name", os.Getenv("NODE_NAME"), `this node's name, for -ipv6-forward=auto (default $NODE_NAME)`)
	podCIDRWait := flag.Duration("pod-cidr-wait", 2*time.Minute, "-ipv6-forward=auto: how long to wait for the Node's spec.podCIDRs")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	explicit := *ipv6Forward
	if explicit == "auto" {
		explicit = ""
	}
	if err := run(log, *binSrc, *binDst, *confSrc, *confOverride, *confDst, *ipForward, explicit); err != nil {
		log.Error("install failed", "err", err)
		os.Exit(1)
	}
	if *ipv6Forward == "auto" {
		ctx, cancel := context.WithTimeout(context.Background(), *podCIDRWait+30*time.Second)
		defer cancel()
		enableIPv6Forwarding(ctx, log, ipv6Options{Sysctl: ipv6ForwardingSysctl, Node: *nodeName, Wait: *podCIDRWait, PodCIDRs: inClusterPodCIDRs(*nodeName)})
	}
}

func run(log *slog.Logger, binSrc, binDst, confSrc, confOverride, confDst, ipForward, ipv6Forward string) error {
	entries, err := os.ReadDir(binSrc)
	if err != nil {
		return fmt.Errorf("read plugin directory: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return fmt.Errorf("no plugin binaries in %s", binSrc)
	}
	slices.Sort(names)
	if err := os.MkdirAll(binDst, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", binDst, err)
	}
	if err := recordOwned(log, binDst, names); err != nil {
		return err
	}
	for _, n := range names {
		changed, err := installFile(filepath.Join(binSrc, n), filepath.Join(binDst, n), 0o755)
		if err != nil {
			return err
		}
		logResult(log, filepath.Join(binDst, n), changed)
	}

	src := confSrc
	if confOverride != "" {
		if o := filepath.Join(confOverride, filepath.Base(confSrc)); fileExists(o) {
			src = o
		}
	}
	if err := os.MkdirAll(confDst, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", confDst, err)
	}
	dst := filepath.Join(confDst, filepath.Base(confSrc))
	changed, err := installFile(src, dst, 0o644)
	if err != nil {
		return err
	}
	logResult(log, dst, changed)
	if err := moveAsideEarlier(log, confDst, filepath.Base(dst)); err != nil {
		return err
	}

	if err := enableForwarding(log, "IPv4", ipForward); err != nil {
		return err
	}
	return enableForwarding(log, "IPv6", ipv6Forward)
}

// enableForwarding sets the family's forwarding sysctl file to 1, if a
// file is named.
func enableForwarding(log *slog.Logger, family, file string) error {
	if file == "" {
		return nil
	}
	cur, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	if strings.TrimSpace(string(cur)) != "1" {
		if err := os.WriteFile(file, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable %s forwarding (%s): %w", family, file, err)
		}
		log.Info("enabled "+family+" forwarding", "file", file)
	}
	return nil
}

func logResult(log *slog.Logger, path string, changed bool) {
	if changed {
		log.Info("installed", "file", path)
	} else {
		log.Info("unchanged", "file", path)
	}
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// installFile copies src to dst unless dst already has the same content and
// mode. It reports whether it wrote.
func installFile(src, dst string, mode fs.FileMode) (bool, error) {
	want, err := os.ReadFile(src)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", src, err)
	}
	if fi, err := os.Stat(dst); err == nil && fi.Mode().Perm() == mode {
		if same, err := sameContent(dst, want); err != nil {
			return false, err
		} else if same {
			return false, nil
		}
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("stat %s: %w", dst, err)
	}

	if err := writeAtomic(dst, want, mode); err != nil {
		return false, err
	}
	return true, nil
}

// writeAtomic replaces dst with data: a temporary file beside it, fsync,
// rename, so a reader sees the old or the new file, never part of one.
func writeAtomic(dst string, data []byte, mode fs.FileMode) error {
	// The temporary file lives beside dst so that rename is atomic, and is
	// hidden (a leading dot) so neither the runtime nor kubelet picks it up.
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return fmt.Errorf("create temporary file for %s: %w", dst, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	// Renaming over a binary that is being executed is safe: running
	// processes keep the old inode.
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("rename into %s: %w", dst, err)
	}
	syncDir(filepath.Dir(dst))
	return nil
}

// syncDir makes renames in dir durable; best effort, as a crash before it
// only loses a change the next run makes again.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// recordOwned adds to binDst/.nexthop-owned the plugins about to be created
// (no file of that name there yet), and our own plugin always. It runs
// before the copies: were a binary created first and the installer killed
// before recording it, the next run would take it for the host's own and
// it would never be removed.
func recordOwned(log *slog.Logger, binDst string, names []string) error {
	path := filepath.Join(binDst, ownedRecord)
	owned, err := readOwned(path)
	if err != nil {
		return err
	}
	var added []string
	for _, n := range names {
		if slices.Contains(owned, n) {
			continue
		}
		if n != pluginName {
			if _, err := os.Lstat(filepath.Join(binDst, n)); err == nil {
				continue // the host's: never ours to remove
			} else if !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("check whether plugin %s exists before installing: %w", n, err)
			}
		}
		added = append(added, n)
	}
	if len(added) == 0 {
		return nil
	}
	owned = append(owned, added...)
	slices.Sort(owned)
	if err := writeAtomic(path, []byte(strings.Join(owned, "\n")+"\n"), 0o644); err != nil {
		return fmt.Errorf("record the plugins we install: %w", err)
	}
	log.Info("recorded plugins as ours", "file", path, "added", added)
	return nil
}

// readOwned parses the record: one plugin file name per line. A line that
// is not a bare file name is an error, as an uninstall would remove files
// by these names.
func readOwned(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("read the record of our plugins: %w", err)
	}
	var owned []string
	for i, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		if l != filepath.Base(l) || l == "." || l == ".." {
			return nil, fmt.Errorf("%s line %d: %q is not a plugin file name", path, i+1, l)
		}
		if !slices.Contains(owned, l) {
			owned = append(owned, l)
		}
	}
	return owned, nil
}

// moveAsideEarlier renames every other network config in dir that sorts
// before ours to <name>.nexthop-bak, since the runtime would use it instead,
// and logs the configs after ours, which stay but are shadowed. It runs once
// ours is in place, so the runtime never meets a directory whose first
// config is a later leftover, or that has none.
func moveAsideEarlier(log *slog.Logger, dir, ours string) error {
	entries, err := os.ReadDir(dir) // sorted by name, as libcni sorts
	if err != nil {
		return fmt.Errorf("list network configs in %s: %w", dir, err)
	}
	moved := false
	for _, e := range entries {
		n := e.Name()
		if n == ours || e.IsDir() || !slices.Contains(confExts, filepath.Ext(n)) {
			continue
		}
		p := filepath.Join(dir, n)
		if n > ours {
			log.Info("network config left in place, shadowed by ours", "file", p, "ours", ours)
			continue
		}
		if err := os.Rename(p, p+backupSuffix); err != nil {
			return fmt.Errorf("move aside %s, which the runtime would use instead of %s: %w", p, ours, err)
		}
		log.Info("moved aside a network config that sorted before ours", "file", p, "to", p+backupSuffix)
		moved = true
	}
	if moved {
		syncDir(dir)
	}
	return nil
}

func sameContent(path string, want []byte) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	w := sha256.Sum256(want)
	return bytes.Equal(h.Sum(nil), w[:]), nil
}
