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
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		Peers:    []config.Peer{{Address: netip.MustParseAddr("192.0.2.12"), AS: 64512}},
	}
	c.Normalize()
	return c
}

// dualConfig is testConfig's node with an IPv6 address and block too.
func dualConfig() *config.Config {
	c := testConfig()
	c.AddressV6 = netip.MustParseAddr("fd00:192::11")
	c.PodCIDRs = append(c.PodCIDRs, netip.MustParsePrefix("fd00:10:244:1::/64"))
	return c
}

func TestEnsureForwarding(t *testing.T) {
	dir := t.TempDir()
	sysctl := func(file string) forwardingSysctl {
		return forwardingSysctl{"net.ipv6.conf.all.forwarding", filepath.Join(dir, file), ipv6Forwarding.hint}
	}
	on := filepath.Join(dir, "on")
	os.WriteFile(on, []byte("1\n"), 0o444)
	// Already on, read-only (an unprivileged container): fine.
	if turned, err := ensureForwarding(sysctl("on")); err != nil || turned {
		t.Fatalf("forwarding already 1, read-only: turned on %v, %v", turned, err)
	}
	off := filepath.Join(dir, "off")
	os.WriteFile(off, []byte("0\n"), 0o644)
	if turned, err := ensureForwarding(sysctl("off")); err != nil || !turned {
		t.Fatalf("forwarding 0, writable: turned on %v, %v", turned, err)
	}
	if b, _ := os.ReadFile(off); strings.TrimSpace(string(b)) != "1" {
		t.Fatalf("forwarding not set: %q", b)
	}
	// Off and not writable: the message names the sysctl and says who
	// should have set it.
	_, err := ensureForwarding(sysctl(filepath.Join("missing", "forwarding")))
	if err == nil || !strings.Contains(err.Error(), "init container") || !strings.Contains(err.Error(), "-ipv6-forward") || !strings.Contains(err.Error(), "net.ipv6.conf.all.forwarding") {
		t.Fatalf("forwarding unwritable: got %v, want an error naming the sysctl and the init container", err)
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
