// Command nexthop-install is the DaemonSet's init container: it puts the CNI
// plugin binaries and the network config on the host, each atomically (write
// a temporary file in the target directory, fsync, rename) and only when the
// content changed, so the container runtime never executes a half-written
// plugin or reads a half-written conflist, and restarts do not rewrite
// anything. The conflist is written last: the runtime treats the node's
// network as ready once a config exists, and by then every plugin it names
// is in place.
//
// It also enables IPv4 forwarding on the host, the one thing that needs a
// writable /proc/sys, so that the long-running daemon container can stay
// unprivileged.
package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	binSrc := flag.String("bin-src", "/opt/nexthop/cni/bin", "directory of CNI plugin binaries to install")
	binDst := flag.String("bin-dst", "/host/opt/cni/bin", "host CNI binary directory (mounted)")
	confSrc := flag.String("conf-src", "/opt/nexthop/cni/10-nexthop.conflist", "network config to install; a file of the same name in -conf-override wins")
	confOverride := flag.String("conf-override", "/etc/nexthop/cni", "directory of an optional conflist from the ConfigMap")
	confDst := flag.String("conf-dst", "/host/etc/cni/net.d", "host CNI config directory (mounted)")
	ipForward := flag.String("ip-forward", "/proc/sys/net/ipv4/ip_forward", "sysctl file to set to 1; empty to skip")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	if err := run(log, *binSrc, *binDst, *confSrc, *confOverride, *confDst, *ipForward); err != nil {
		log.Error("install failed", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, binSrc, binDst, confSrc, confOverride, confDst, ipForward string) error {
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
	sort.Strings(names)
	if err := os.MkdirAll(binDst, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", binDst, err)
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

	if ipForward != "" {
		cur, err := os.ReadFile(ipForward)
		if err != nil {
			return fmt.Errorf("read %s: %w", ipForward, err)
		}
		if strings.TrimSpace(string(cur)) != "1" {
			if err := os.WriteFile(ipForward, []byte("1"), 0o644); err != nil {
				return fmt.Errorf("enable IPv4 forwarding (%s): %w", ipForward, err)
			}
			log.Info("enabled IPv4 forwarding", "file", ipForward)
		}
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

	// The temporary file lives beside dst so that rename is atomic, and is
	// hidden (a leading dot) so neither the runtime nor kubelet picks it up.
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return false, fmt.Errorf("create temporary file for %s: %w", dst, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(want); err != nil {
		tmp.Close()
		return false, fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return false, fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	// Renaming over a binary that is being executed is safe: running
	// processes keep the old inode.
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return false, fmt.Errorf("rename into %s: %w", dst, err)
	}
	if d, err := os.Open(filepath.Dir(dst)); err == nil {
		d.Sync() // make the rename durable too
		d.Close()
	}
	return true, nil
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
