package daemon

import (
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/nexthop-net/nexthop/config"
)

// setupForwarding in a network namespace of the test's own, through the
// real sysctls: an IPv6 block turns IPv6 forwarding on, an IPv4-only node
// leaves it as it was.
func TestSetupForwardingPerFamily(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	dual := dualConfig()
	for _, c := range []struct {
		name       string
		cfg        func() *config.Config
		want4      string
		want6      string
		wantLogged bool
	}{
		{"IPv4 only", testConfig, "1", "0", false},
		{"dual-stack", func() *config.Config { return dual }, "1", "1", true},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			ns := tempNS(t, "nhf-")
			sysctl := func(path string) string {
				out, err := exec.Command("ip", "netns", "exec", ns, "cat", path).Output()
				if err != nil {
					t.Fatal(err)
				}
				return strings.TrimSpace(string(out))
			}
			if sysctl(ipv6Forwarding.path) != "0" || sysctl(ipv4Forwarding.path) != "0" {
				t.Fatal("a new namespace forwards already")
			}
			var logBuf strings.Builder
			log := slog.New(slog.NewTextHandler(&logBuf, nil))
			// /proc/sys/net is the namespace of the thread that opens it.
			inNS(t, ns, func() error { return setupForwarding(c.cfg(), log) })
			if got4, got6 := sysctl(ipv4Forwarding.path), sysctl(ipv6Forwarding.path); got4 != c.want4 || got6 != c.want6 {
				t.Errorf("ip_forward %s, ipv6 all.forwarding %s; want %s, %s", got4, got6, c.want4, c.want6)
			}
			if logged := strings.Contains(logBuf.String(), "IPv6 forwarding"); logged != c.wantLogged {
				t.Errorf("IPv6 forwarding logged %v, want %v:\n%s", logged, c.wantLogged, logBuf.String())
			}
		})
	}
}
