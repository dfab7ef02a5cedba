package bgp

import (
	"net/netip"
	"testing"
	"time"
)

// TestTableTrackerWaiting: a peer's initial table is in at its End-of-RIB,
// or, without one, once its first UPDATEs have settled; never merely
// because the session is up and nothing has arrived yet.
func TestTableTrackerWaiting(t *testing.T) {
	a := netip.MustParseAddr("192.0.2.254")
	t0 := time.Now()
	var tr tableTracker
	if w := tr.waiting(a, true, t0); w != "session coming up" {
		t.Errorf("before the session: %q", w)
	}
	tr.session(a, true, t0)
	for _, c := range []struct {
		name     string
		sendsEoR bool
		at       time.Duration
		want     string
	}{
		{"GR peer, just up", true, 0, "End-of-RIB"},
		{"GR peer, long quiet: still its End-of-RIB", true, time.Minute, "End-of-RIB"},
		{"no GR, just up, nothing sent yet", false, 500 * time.Millisecond, "first updates to settle"},
		{"no GR, silent past FirstUpdateWait", false, FirstUpdateWait, ""},
	} {
		if w := tr.waiting(a, c.sendsEoR, t0.Add(c.at)); w != c.want {
			t.Errorf("%s: waiting %q, want %q", c.name, w, c.want)
		}
	}
	tr.update(a, t0.Add(1200*time.Millisecond))
	if w := tr.waiting(a, false, t0.Add(1500*time.Millisecond)); w == "" {
		t.Error("no GR: in 300ms after an UPDATE, want still settling")
	}
	if w := tr.waiting(a, false, t0.Add(1200*time.Millisecond+UpdatesSettled)); w != "" {
		t.Errorf("no GR: settled after an UPDATE burst: %q", w)
	}
	tr.endOfRIB(a)
	if w := tr.waiting(a, true, t0.Add(2*time.Second)); w != "" {
		t.Errorf("after End-of-RIB: %q", w)
	}
	// A new session starts over: the old End-of-RIB does not count.
	tr.session(a, false, t0.Add(3*time.Second))
	tr.session(a, true, t0.Add(4*time.Second))
	if w := tr.waiting(a, true, t0.Add(5*time.Second)); w != "End-of-RIB" {
		t.Errorf("new session: %q, want End-of-RIB again", w)
	}
}
