// Package vm runs the project's static Go binaries inside a throwaway Debian
// kernel under qemu (TCG software emulation, so no KVM is needed).
//
// Why: the e2e suite runs in network namespaces of the host kernel, and a
// host kernel may lack modules nexthop relies on (this project's build boxes
// have no ipip). A stock Debian kernel has them all. The VM is a busybox
// initramfs: no disk image, no network, no guest distribution, just the
// kernel, a handful of modules, busybox, iproute2's ip and the binaries under
// test. A run boots, runs the given commands, prints a result line on the
// serial console and powers off; the host parses that line.
//
// Host side: Prepare fetches and caches the parts (apt-get download, so only
// Debian's archive is needed), BuildStatic/BuildTest build CGO-free
// binaries, Run boots them. Guest side (IN_VM=1): guest.go builds
// router/node/pod namespaces with ip commands, guest_nexthopd.go runs a
// nexthopd mesh on them (and restarts a daemon with another config), and
// iperf.go measures throughput with the host's iperf3, copied in with its
// libraries (BenchmarkIPIPThroughputInVM:
// `go test -run '^$' -bench IPIPThroughput ./e2e/vm/`).
//
// Run the suite with `go test -count=1 -v ./e2e/vm/` (root for the default
// cache in /var/cache/nexthop/vm; set NEXTHOP_VM_CACHE elsewhere otherwise).
// Each host-side test (TestXxxInVM) builds this package's test binary
// statically, boots it and runs the matching guest test (TestGuestXxx,
// skipped outside the VM) with IN_VM=1. The guest test prints
// "NHVM-GUEST <name>: PASS" last; the host test asserts on that line and
// the exit code, and shows the console tail when either is wrong.
//
// Pitfalls handled here: busybox sh runs its own ip applet before PATH, so
// guest code calls /sbin/ip (see Shell, IPPath); tunl0 exists in every
// namespace once ipip is loaded (bring it up, never create it); qemu exits
// 0 whatever the guest did, so only the result line counts.
package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Logger is the part of testing.TB the package needs; *testing.T fits.
type Logger interface {
	Logf(format string, args ...any)
}

type discard struct{}

func (discard) Logf(string, ...any) {}

func logger(l Logger) Logger {
	if l == nil {
		return discard{}
	}
	return l
}

// EnvInVM is set to "1" in the environment of guest commands by convention
// (callers pass it in Command.Env); guest-only tests skip without it.
const EnvInVM = "IN_VM"

// InGuest reports whether this process runs inside the VM.
func InGuest() bool { return os.Getenv(EnvInVM) == "1" }

// GuestBinDir is where Run puts Command.Binary and is first on the guest's
// PATH, so guest code finds e.g. nexthopd by name.
const GuestBinDir = "/nhvm/bin"

// DefaultModules are loaded when Options.Modules is nil: IP-in-IP (tunl0,
// ipip links), veth for namespaces, bridge for shared subnets, vxlan for
// later overlay work. Their dependencies are added and ordered by Run.
var DefaultModules = []string{"ipip", "veth", "bridge", "vxlan"}

// Require returns prepared assets or ends the test: it skips with what is
// missing, except under CI=true, where a skip would hide a missing install
// step behind a green run, so it fails. It mirrors e2e's requireHarness.
func Require(t testing.TB) *Assets {
	t.Helper()
	a, err := Prepare(context.Background(), t)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("VM harness unavailable (CI=true, so not skipping): %v", err)
		}
		t.Skipf("VM harness unavailable: %v", err)
	}
	return a
}

// run executes a host command and returns its stdout, wrapping any error
// with the command line and its stderr so a failure says what was tried.
func run(ctx context.Context, dir string, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(lastLines(stderr.String(), 20)))
	}
	return string(out), nil
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
