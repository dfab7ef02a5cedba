package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRefusedBeforeTheKernel runs nexthopd in a network namespace of its
// own with configs that cannot work: each exits 2 naming the field, and
// leaves the namespace as it found it (no blackhole route, ip_forward
// untouched).
func TestRefusedBeforeTheKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and runs nexthopd in it")
	}
	bin := filepath.Join(t.TempDir(), "nexthopd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build nexthopd: %v\n%s", err, out)
	}
	b := make([]byte, 3)
	rand.Read(b)
	ns := "nhd-" + hex.EncodeToString(b)
	ip := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip("link", "set", "lo", "up")
	// A veth pair inside the namespace: this kernel may lack dummy.
	ip("link", "add", "ul0", "type", "veth", "peer", "name", "ul0p")
	ip("link", "set", "ul0p", "up")
	ip("addr", "add", "192.0.2.11/24", "dev", "ul0")
	ip("link", "set", "ul0", "up")
	forwarding := func() string {
		out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward").Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	fwd := forwarding()

	dir := t.TempDir()
	base := "nodeName: node1\naddress: 192.0.2.11\nlocalAS: 64512\n" +
		"stateDir: " + dir + "/state\nipamSocket: " + dir + "/run/nexthop.sock\n" +
		"peers:\n- address: 192.0.2.254\n  as: 65000\n"
	cases := []struct {
		name, config, want string
		args               []string
	}{
		{"grpcListen port", base + "podCIDR: 10.244.1.0/24\ngrpcListen: 127.0.0.1:70000\n", "grpcListen", nil},
		{"metricsListen port", base + "podCIDR: 10.244.1.0/24\nmetricsListen: 127.0.0.1:0\n", "metricsListen", nil},
		{"holdTime wraps", base + "podCIDR: 10.244.1.0/24\nholdTime: 70000s\n", "holdTime", nil},
		{"podCIDR reserved", base + "podCIDR: 169.254.0.0/16\n", "podCIDR", nil},
		{"health-listen port", base + "podCIDR: 10.244.1.0/24\n", "--health-listen", []string{"--health-listen", "127.0.0.1:99999"}},
		// Only the kernel knows the underlay's subnet: found at start.
		{"podCIDR in the underlay subnet", base + "podCIDR: 192.0.2.128/26\n", "underlay subnet 192.0.2.0/24", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(dir, "node.yaml")
			if err := os.WriteFile(cfg, []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"netns", "exec", ns, bin, "--config", cfg}, tc.args...)
			if tc.args == nil {
				args = append(args, "--health-listen", "none")
			}
			// A daemon that starts anyway is stopped, and fails the test.
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != exitUsage {
				t.Errorf("exit: %v, want code %d; output:\n%s", err, exitUsage, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("output does not name %q:\n%s", tc.want, out)
			}
			if r := ip("route", "show", "table", "all", "type", "blackhole"); strings.TrimSpace(r) != "" {
				t.Errorf("blackhole route installed: %s", r)
			}
			if got := forwarding(); got != fwd {
				t.Errorf("ip_forward changed from %s to %s", fwd, got)
			}
		})
	}
}
