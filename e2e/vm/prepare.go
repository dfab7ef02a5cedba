package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// EnvCache overrides the cache directory (default DefaultCacheRoot).
const EnvCache = "NEXTHOP_VM_CACHE"

// DefaultCacheRoot survives between runs on one machine, so only the first
// run downloads (~100 MB of debs) and later ones start in well under a second.
const DefaultCacheRoot = "/var/cache/nexthop/vm"

// kernelMeta is the Debian package whose dependency names the current kernel.
const kernelMeta = "linux-image-amd64"

// cachedModules are extracted from the kernel package: DefaultModules plus
// what callers may ask for. Dependencies are added automatically.
var cachedModules = []string{"tunnel4", "ip_tunnel", "ipip", "veth", "bridge", "stp", "llc", "vxlan", "udp_tunnel", "ip6_udp_tunnel", "dummy"}

// Assets are the host-side parts of a VM run, all inside Dir except IP.
type Assets struct {
	Dir           string            // cache directory of this kernel version
	KernelVersion string            // e.g. 6.1.0-56-amd64
	Kernel        string            // vmlinuz
	Modules       map[string]string // module name (underscores) -> .ko file
	Busybox       string            // static busybox
	QEMU          string            // qemu-system-x86_64
	QEMULibPath   string            // LD_LIBRARY_PATH for QEMU's extracted libraries
	QEMUData      []string          // -L firmware directories
	IP            string            // the host's iproute2 ip, copied in with its libraries
}

// manifest is what a complete cache directory records about itself; paths
// are relative to the directory so a cache can be moved.
type manifest struct {
	KernelVersion string            `json:"kernelVersion"`
	Kernel        string            `json:"kernel"`
	Modules       map[string]string `json:"modules"`
	Created       time.Time         `json:"created"`
}

const manifestName = "manifest.json"

// CacheRoot is where prepared kernel versions live.
func CacheRoot() string {
	if d := os.Getenv(EnvCache); d != "" {
		return d
	}
	return DefaultCacheRoot
}

// Prepare returns the VM's parts, downloading and extracting them on first
// use (printing progress through log) and reusing the cache afterwards. The
// error says what is missing when it cannot.
func Prepare(ctx context.Context, log Logger) (*Assets, error) {
	log = logger(log)
	ip, err := hostIP()
	if err != nil {
		return nil, err
	}
	root := CacheRoot()
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("create VM cache %s (set %s to a writable directory): %w", root, EnvCache, err)
	}
	unlock, err := lockDir(root)
	if err != nil {
		return nil, err
	}
	defer unlock()
	a, err := prepareLocked(ctx, log, root)
	if err != nil {
		return nil, err
	}
	a.IP = ip
	if err := checkQEMU(ctx, a); err != nil {
		return nil, err
	}
	return a, nil
}

func prepareLocked(ctx context.Context, log Logger, root string) (*Assets, error) {
	kpkg, err := resolveKernel(ctx, root)
	if err != nil {
		// No package lists: a cached kernel is as good as any, and needs
		// no network; otherwise the lists must be fetched first.
		if a, cerr := newestCached(root); cerr == nil {
			log.Logf("vm: %v; using cached kernel %s", err, a.KernelVersion)
			return a, nil
		}
		if err := aptUpdate(ctx, log); err != nil {
			return nil, err
		}
		if kpkg, err = kernelPackage(ctx); err != nil {
			return nil, err
		}
	}
	dir := filepath.Join(root, strings.TrimPrefix(kpkg, "linux-image-"))
	if a, err := loadCached(dir); err == nil {
		return a, nil
	}
	start := time.Now()
	log.Logf("vm: preparing %s in %s (first run on this machine; later runs reuse it)", kpkg, dir)
	err = fetch(ctx, log, kpkg, dir)
	if err != nil && !errors.Is(err, context.Canceled) {
		// Stale package lists name files the mirror no longer has.
		log.Logf("vm: %v; refreshing package lists and retrying once", err)
		if uerr := aptUpdate(ctx, log); uerr != nil {
			return nil, errors.Join(err, uerr)
		}
		if kpkg, err = kernelPackage(ctx); err != nil {
			return nil, err
		}
		dir = filepath.Join(root, strings.TrimPrefix(kpkg, "linux-image-"))
		err = fetch(ctx, log, kpkg, dir)
	}
	if err != nil {
		return nil, err
	}
	log.Logf("vm: prepared %s in %s", kpkg, time.Since(start).Round(100*time.Millisecond))
	return loadCached(dir)
}

// hostIP finds iproute2's ip: busybox's applet lacks netns and tunnel
// support, so the guest gets the host's real one.
func hostIP() (string, error) {
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", errors.New("iproute2's ip not found on the host (apt-get install iproute2)")
}

// lockDir serialises Prepare across processes (go test runs packages in
// parallel) so two runs never extract into the same place.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open VM cache lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock VM cache: %w", err)
	}
	return func() { f.Close() }, nil
}

// resolveKernel is kernelPackage, memoised in root until apt's package
// lists change: apt-cache re-reads all lists on every call, which takes
// seconds on a busy machine and would dominate a warm start.
func resolveKernel(ctx context.Context, root string) (string, error) {
	memo := filepath.Join(root, "kernel-package")
	stamp := aptListsStamp()
	if b, err := os.ReadFile(memo); err == nil && stamp != "" {
		if f := strings.Fields(string(b)); len(f) == 2 && f[0] == stamp {
			return f[1], nil
		}
	}
	kpkg, err := kernelPackage(ctx)
	if err == nil && stamp != "" {
		os.WriteFile(memo, []byte(stamp+" "+kpkg+"\n"), 0o644) // only a speed-up
	}
	return kpkg, err
}

// aptListsStamp identifies the current package lists by their newest
// modification time; "" when there are none.
func aptListsStamp() string {
	files, _ := filepath.Glob("/var/lib/apt/lists/*_Packages*")
	var newest time.Time
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && fi.ModTime().After(newest) {
			newest = fi.ModTime()
		}
	}
	if newest.IsZero() {
		return ""
	}
	return strconv.FormatInt(newest.UnixNano(), 10)
}

// kernelPackage names the kernel image package linux-image-amd64 points to.
func kernelPackage(ctx context.Context) (string, error) {
	if _, err := exec.LookPath("apt-cache"); err != nil {
		return "", errors.New("apt-cache not found: the VM harness fetches Debian's kernel and qemu with apt (Debian/Ubuntu hosts only)")
	}
	out, err := run(ctx, "", nil, "apt-cache", "depends", kernelMeta)
	if err != nil {
		return "", fmt.Errorf("resolve the kernel package: %w", err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") && f[1] != kernelMeta {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("apt-cache knows no %s (package lists missing?)", kernelMeta)
}

func aptUpdate(ctx context.Context, log Logger) error {
	log.Logf("vm: apt-get update (package lists needed to find the kernel and qemu)")
	if _, err := run(ctx, "", nil, "apt-get", "update", "-qq"); err != nil {
		return fmt.Errorf("refresh package lists (needs root and Debian's archive): %w", err)
	}
	return nil
}

// qemuPackages lists qemu-system-x86 plus the runtime dependencies this host
// lacks. Libraries the host already has are used from the host.
func qemuPackages(ctx context.Context) ([]string, error) {
	out, err := run(ctx, "", []string{"LC_ALL=C"}, "apt-get", "install", "-s", "--no-install-recommends", "qemu-system-x86")
	if err != nil {
		return nil, fmt.Errorf("resolve qemu's dependencies: %w", err)
	}
	pkgs := []string{"qemu-system-x86"}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Inst" && !slices.Contains(pkgs, f[1]) {
			pkgs = append(pkgs, f[1])
		}
	}
	return pkgs, nil
}

// fetch downloads and extracts everything into a scratch directory, then
// renames it to dir, so an interrupted run never leaves a half cache.
func fetch(ctx context.Context, log Logger, kpkg, dir string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".partial-")
	if err != nil {
		return fmt.Errorf("create scratch directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	debs := filepath.Join(tmp, "debs")
	if err := os.Mkdir(debs, 0o755); err != nil {
		return err
	}
	qpkgs, err := qemuPackages(ctx)
	if err != nil {
		return err
	}
	pkgs := append([]string{kpkg, "busybox-static"}, qpkgs...)
	log.Logf("vm: downloading %d packages: %s", len(pkgs), strings.Join(pkgs, " "))
	start := time.Now()
	// The sandbox user _apt could not write to our directory.
	args := append([]string{"download", "-qq", "-o", "APT::Sandbox::User=root"}, pkgs...)
	if _, err := run(ctx, debs, nil, "apt-get", args...); err != nil {
		return fmt.Errorf("download VM packages: %w", err)
	}
	log.Logf("vm: downloaded in %s; extracting", time.Since(start).Round(100*time.Millisecond))
	m, err := extractAll(ctx, log, debs, filepath.Join(tmp, "root"), kpkg)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(debs); err != nil {
		return fmt.Errorf("remove downloaded debs: %w", err)
	}
	if err := writeManifest(tmp, m); err != nil {
		return err
	}
	os.RemoveAll(dir) // an incomplete leftover (no manifest) from an older layout
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("move prepared VM parts into place: %w", err)
	}
	return nil
}

// extractAll unpacks every deb fully except the kernel, of which only the
// image and the modules we load are kept (the full tree is ~400 MB).
func extractAll(ctx context.Context, log Logger, debs, root, kpkg string) (*manifest, error) {
	files, err := filepath.Glob(filepath.Join(debs, "*.deb"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no debs downloaded into %s", debs)
	}
	var kdeb string
	for _, f := range files {
		if strings.HasPrefix(filepath.Base(f), kpkg+"_") {
			kdeb = f
			continue
		}
		if _, err := run(ctx, "", nil, "dpkg-deb", "-x", f, root); err != nil {
			return nil, fmt.Errorf("extract %s: %w", filepath.Base(f), err)
		}
	}
	if kdeb == "" {
		return nil, fmt.Errorf("kernel package %s was not downloaded", kpkg)
	}
	return extractKernel(ctx, log, kdeb, root)
}

func writeManifest(dir string, m *manifest) error {
	m.Created = time.Now().UTC()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, manifestName), b, 0o644); err != nil {
		return fmt.Errorf("write VM cache manifest: %w", err)
	}
	return nil
}

// loadCached reads a complete cache directory (one with a manifest).
func loadCached(dir string) (*Assets, error) {
	b, err := os.ReadFile(filepath.Join(dir, manifestName))
	if err != nil {
		return nil, fmt.Errorf("no prepared VM in %s: %w", dir, err)
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, manifestName), err)
	}
	r := filepath.Join(dir, "root")
	a := &Assets{
		Dir:           dir,
		KernelVersion: m.KernelVersion,
		Kernel:        filepath.Join(r, m.Kernel),
		Modules:       map[string]string{},
		Busybox:       filepath.Join(r, "bin/busybox"),
		QEMU:          filepath.Join(r, "usr/bin/qemu-system-x86_64"),
		QEMULibPath:   filepath.Join(r, "usr/lib/x86_64-linux-gnu") + ":" + filepath.Join(r, "lib/x86_64-linux-gnu"),
		QEMUData:      []string{filepath.Join(r, "usr/share/qemu"), filepath.Join(r, "usr/share/seabios")},
	}
	for name, rel := range m.Modules {
		a.Modules[name] = filepath.Join(r, rel)
	}
	for _, p := range []string{a.Kernel, a.Busybox, a.QEMU} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("VM cache %s is damaged (remove it to re-fetch): %w", dir, err)
		}
	}
	return a, nil
}

// newestCached is the most recently prepared kernel, for hosts that have
// no package lists (yet) but a warm cache.
func newestCached(root string) (*Assets, error) {
	ms, _ := filepath.Glob(filepath.Join(root, "*", manifestName))
	sort.Slice(ms, func(i, j int) bool {
		fi, _ := os.Stat(ms[i])
		fj, _ := os.Stat(ms[j])
		return fi != nil && fj != nil && fi.ModTime().After(fj.ModTime())
	})
	for _, m := range ms {
		if a, err := loadCached(filepath.Dir(m)); err == nil {
			return a, nil
		}
	}
	return nil, fmt.Errorf("no prepared VM under %s", root)
}

// checkQEMU runs qemu --version with the extracted libraries: a host whose
// libraries changed since the cache was filled fails here, clearly.
func checkQEMU(ctx context.Context, a *Assets) error {
	out, err := run(ctx, "", []string{"LD_LIBRARY_PATH=" + a.QEMULibPath}, a.QEMU, "--version")
	if err != nil {
		return fmt.Errorf("qemu from %s does not start (remove that directory to re-fetch): %w", a.Dir, err)
	}
	if !strings.Contains(out, "QEMU emulator") {
		return fmt.Errorf("unexpected qemu --version output: %q", out)
	}
	return nil
}
