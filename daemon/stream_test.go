package daemon

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/config"
)

func testConfig() *config.Config {
	c := &config.Config{
		NodeName: "node1",
		Address:  netip.MustParseAddr("192.0.2.11"),
		LocalAS:  64512,
		PodCIDR:  netip.MustParsePrefix("10.244.1.0/24"),
		Peers:    []config.Peer{{Address: netip.MustParseAddr("192.0.2.12"), AS: 64512}},
	}
	c.Normalize()
	return c
}

func TestRestartReason(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*config.Config)
		want   string // substring; "" means live
	}{
		{"nothing", func(*config.Config) {}, ""},
		{"peer added", func(c *config.Config) {
			c.Peers = append(c.Peers, config.Peer{Address: netip.MustParseAddr("192.0.2.254"), AS: 65000})
			c.Normalize()
		}, ""},
		{"peers removed", func(c *config.Config) { c.Peers = nil }, ""},
		{"peer becomes a route-reflector client", func(c *config.Config) { c.Peers[0].RouteReflectorClient = true }, ""},
		{"pod CIDR", func(c *config.Config) { c.PodCIDR = netip.MustParsePrefix("10.244.9.0/24") }, "podCIDR 10.244.1.0/24 -> 10.244.9.0/24"},
		{"address", func(c *config.Config) { c.Address = netip.MustParseAddr("192.0.2.99") }, "address"},
		{"AS", func(c *config.Config) { c.LocalAS = 65010 }, "localAS 64512 -> 65010"},
		{"port", func(c *config.Config) { c.BGPPort = 1179 }, "bgpPort"},
		{"cluster ID", func(c *config.Config) { c.RouteReflectorClusterID = netip.MustParseAddr("224.0.0.1") }, "routeReflectorClusterID"},
		{"encapsulation", func(c *config.Config) { c.IPIPMode = config.Always }, "ipipMode Never -> Always"},
		{"cluster ID shown", func(c *config.Config) { c.RouteReflectorClusterID = netip.MustParseAddr("224.0.0.1") }, "routeReflectorClusterID unset -> 224.0.0.1"},
		{"VXLAN settings", func(c *config.Config) { c.VXLAN.VNI = 7 }, "vxlan"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur, next := testConfig(), testConfig()
			tc.change(next)
			got := restartReason(cur, next)
			if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
				t.Fatalf("restartReason = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestEnsureForwarding(t *testing.T) {
	dir := t.TempDir()
	on := filepath.Join(dir, "on")
	os.WriteFile(on, []byte("1\n"), 0o444)
	// Already on, read-only (an unprivileged container): fine.
	if err := ensureForwarding(on); err != nil {
		t.Fatalf("ip_forward already 1, read-only: %v", err)
	}
	off := filepath.Join(dir, "off")
	os.WriteFile(off, []byte("0\n"), 0o644)
	if err := ensureForwarding(off); err != nil {
		t.Fatalf("ip_forward 0, writable: %v", err)
	}
	if b, _ := os.ReadFile(off); strings.TrimSpace(string(b)) != "1" {
		t.Fatalf("ip_forward not set: %q", b)
	}
	// Off and not writable: the message says who should have set it.
	if err := ensureForwarding(filepath.Join(dir, "missing", "ip_forward")); err == nil || !strings.Contains(err.Error(), "init container") {
		t.Fatalf("ip_forward unwritable: got %v, want an error naming the init container", err)
	}
}

func TestHealth(t *testing.T) {
	h := NewHealth()
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz at start = %d", code)
	}
	h.Waiting("waiting for the node's config")
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for the node's config") ||
		!strings.Contains(body, "initial sync") {
		t.Fatalf("/readyz before start = %d %q", code, body)
	}
	h.Waiting("")
	h.speakerStarted()
	h.routesSynced()
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "IPAM") || strings.Contains(body, "speaker") {
		t.Fatalf("/readyz without IPAM = %d %q", code, body)
	}
	h.ipamServing()
	if code, body := get("/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz when all is up = %d %q", code, body)
	}
	// A loop that stopped turning fails both.
	h.mu.Lock()
	h.beat = time.Now().Add(-2 * h.StallAfter)
	h.mu.Unlock()
	if code, body := get("/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "stalled") {
		t.Fatalf("/healthz of a stalled loop = %d %q", code, body)
	}
	if code, _ := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz of a stalled loop = %d", code)
	}
	// A nil Health is a no-op for the daemon.
	var none *Health
	none.Beat()
	none.speakerStarted()
	none.Waiting("x")
}
