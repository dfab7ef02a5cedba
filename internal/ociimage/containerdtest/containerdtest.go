// Package containerdtest runs a private containerd for tests: the host's
// containerd binary with root, state, sockets and runc root under a test's
// temporary directory, so that importing and running images touches nothing
// of any other containerd on the machine.
package containerdtest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/internal/poll"
)

// Namespace is the containerd namespace kubelet's images live in.
const Namespace = "k8s.io"

// Containerd is a running containerd.
type Containerd struct {
	Dir      string // everything of this containerd lives under Dir
	Address  string // its gRPC socket
	runcRoot string
}

// Start runs containerd until the test ends, then stops it and unmounts
// whatever it left mounted under its directory. It needs root and the
// containerd, ctr and runc binaries (Debian: apt-get install containerd runc).
func Start(t testing.TB) *Containerd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("containerd needs root: run this test as root")
	}
	for _, b := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found (apt-get install -y containerd runc): %v", b, err)
		}
	}
	// Short: the socket path must fit a sockaddr_un (108 bytes).
	dir, err := os.MkdirTemp("", "ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Containerd{
		Dir:      dir,
		Address:  filepath.Join(dir, "c.sock"),
		runcRoot: filepath.Join(dir, "runc"),
	}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
# No CRI: this containerd only imports and runs images through ctr.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.Address,
		c.Address+".ttrpc", filepath.Join(dir, "opt"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("containerd", "--config", cfgPath, "--log-level", "info")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a shim it starts goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting containerd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		logf.Close()
		unmountUnder(t, dir)
		if t.Failed() {
			if b, err := os.ReadFile(logf.Name()); err == nil {
				t.Logf("containerd log:\n%s", tail(b, 60))
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing containerd's directory: %v", err)
		}
	})
	err = poll.Until(30*time.Second, 100*time.Millisecond, func() error {
		select {
		case err := <-exited:
			exited <- err
			return poll.Permanent(fmt.Errorf("containerd exited: %v", err))
		default:
		}
		_, err := c.run("version")
		return err
	})
	if err != nil {
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("containerd did not come up: %v\nlog:\n%s", err, tail(b, 60))
	}
	return c
}

// Ctr runs ctr against this containerd in Namespace and returns its output,
// failing the test on error.
func (c *Containerd) Ctr(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.run(args...)
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (c *Containerd) run(args ...string) (string, error) {
	cmd := exec.Command("ctr", append([]string{"-a", c.Address, "-n", Namespace}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Images is `ctr images ls`: image name to manifest digest.
func (c *Containerd) Images(t testing.TB) map[string]string {
	t.Helper()
	out := c.Ctr(t, "images", "ls")
	imgs := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// REF TYPE DIGEST SIZE PLATFORMS LABELS
		if len(f) >= 3 && f[0] != "REF" {
			imgs[f[0]] = f[2]
		}
	}
	return imgs
}

// Run runs image as a container (removed afterwards) with args replacing
// its entrypoint and command when given, and returns its output; the
// container has its own, empty network namespace.
func (c *Containerd) Run(t testing.TB, image string, args ...string) (string, error) {
	t.Helper()
	id := fmt.Sprintf("ociimage-test-%d", time.Now().UnixNano())
	return c.run(append([]string{"run", "--rm", "--runc-root", c.runcRoot, image, id}, args...)...)
}

// unmountUnder detaches every mount below dir, deepest first: snapshots a
// container or an unpack left behind.
func unmountUnder(t testing.TB, dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Errorf("listing mounts: %v", err)
		return
	}
	var mounts []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mounts = append(mounts, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", m, err)
		}
	}
}

func tail(b []byte, n int) []byte {
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, []byte("\n"))
}
