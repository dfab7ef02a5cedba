package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/nexthop-net/nexthop/config"
)

// setupForwarding in a network namespace of the test's own, through the
// real sysctls: an IPv6 block turns IPv6 forwarding on, an IPv4-only node
// leaves it as it was.
func TestSetupForwardingPerFamily(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	dual := testConfig()
	dual.AddressV6 = netip.MustParseAddr("fd00:192::11")
	dual.PodCIDRs = append(dual.PodCIDRs, netip.MustParsePrefix("fd00:10:244:1::/64"))
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
			b := make([]byte, 3)
			rand.Read(b)
			ns := "nhf-" + hex.EncodeToString(b)
			if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
				t.Fatalf("ip netns add: %v: %s", err, out)
			}
			t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
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
			errc := make(chan error, 1)
			go func() {
				// /proc/sys/net is the namespace of the thread that opens
				// it: this thread moves and is never given back.
				runtime.LockOSThread()
				h, err := netns.GetFromName(ns)
				if err == nil {
					defer h.Close()
					err = netns.Set(h)
				}
				if err == nil {
					err = setupForwarding(c.cfg(), log)
				}
				errc <- err
			}()
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if got4, got6 := sysctl(ipv4Forwarding.path), sysctl(ipv6Forwarding.path); got4 != c.want4 || got6 != c.want6 {
				t.Errorf("ip_forward %s, ipv6 all.forwarding %s; want %s, %s", got4, got6, c.want4, c.want6)
			}
			if logged := strings.Contains(logBuf.String(), "IPv6 forwarding"); logged != c.wantLogged {
				t.Errorf("IPv6 forwarding logged %v, want %v:\n%s", logged, c.wantLogged, logBuf.String())
			}
		})
	}
}
