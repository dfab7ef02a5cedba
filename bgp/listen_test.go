package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"

	"github.com/nexthop-net/nexthop/config"
)

// TestDialerFirst starts a full mesh in the worst order for GoBGP's own
// listener: lowest address first, so each node dials every node started
// after it (the higher address is the passive side), and each of those
// takes its time adding its peers after GoBGP has started. A GoBGP that
// listened from StartBgp on would accept those dials with no configuration
// for them and close them ("Can't find configuration for a new passive
// connection"), and the dialer would sit out 5 s of idle hold. Every
// session must come up on its first OPEN: no connection refused for lack of
// configuration, no session dropped before Established.
func TestDialerFirst(t *testing.T) {
	const n = 4
	// Longer than a dialer's first connect retry (1-2 s), so that its
	// first dial lands in the window.
	const peersLate = 2500 * time.Millisecond
	ctx := t.Context()
	var cfgs []*config.Config
	for i := range n {
		cfgs = append(cfgs, &config.Config{
			NodeName:   fmt.Sprintf("n%d", i),
			Address:    netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)}),
			LocalAS:    64512,
			PodCIDR:    netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i+1)),
			BGPPort:    freePort(t),
			GRPCListen: "none",
		})
	}
	for i, c := range cfgs {
		for j, o := range cfgs {
			if i != j {
				c.Peers = append(c.Peers, config.Peer{Address: o.Address, AS: o.LocalAS, Port: uint16(o.BGPPort)})
			}
		}
		c.Normalize()
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
	}

	// Every session state each node goes through, per peer.
	var mu sync.Mutex
	states := map[string][]api.PeerState_SessionState{}
	var sps []*Speaker
	for i, c := range cfgs {
		sp := New(optionsOf(c), nil)
		sp.beforePeers = func() {
			// Before any peer is added: no state of a session is missed.
			err := sp.srv.WatchEvent(ctx, &api.WatchEventRequest{Peer: &api.WatchEventRequest_Peer{}}, func(r *api.WatchEventResponse) {
				ev := r.GetPeer()
				if ev.GetType() != api.WatchEventResponse_PeerEvent_STATE {
					return
				}
				k := c.Address.String() + "→" + ev.GetPeer().GetState().GetNeighborAddress()
				mu.Lock()
				states[k] = append(states[k], ev.GetPeer().GetState().GetSessionState())
				mu.Unlock()
			})
			if err != nil {
				t.Error(err)
			}
			if i > 0 {
				time.Sleep(peersLate)
			}
		}
		if err := sp.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sp.Stop)
		sps = append(sps, sp)
	}

	// A generous bound: what is asserted is the sequence of states.
	waitFor(t, "every session established", func() error {
		for _, sp := range sps {
			for _, p := range sp.Peers() {
				if !p.Established {
					return fmt.Errorf("%s: peer %s is %s", sp.cfg.Address, p.Address, p.State)
				}
			}
		}
		return nil
	})

	for _, sp := range sps {
		if got := sp.UnconfiguredConnections(); got != 0 {
			t.Errorf("%s closed %d connections it had no configuration for", sp.cfg.Address, got)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for k, seq := range states {
		// From the first OpenSent to the first Established, nothing but
		// OpenConfirm. (What happens to a session after is not start-up.)
		i := slices.Index(seq, api.PeerState_OPENSENT)
		j := slices.Index(seq, api.PeerState_ESTABLISHED)
		if i < 0 || j < i || !slices.Equal(seq[i:j+1],
			[]api.PeerState_SessionState{api.PeerState_OPENSENT, api.PeerState_OPENCONFIRM, api.PeerState_ESTABLISHED}) {
			var names []string
			for _, s := range seq {
				names = append(names, sessionStateName(s))
			}
			t.Errorf("session %s went %v: not established on its first OPEN", k, names)
		}
	}
	if len(states) != n*(n-1) {
		t.Errorf("saw the sessions of %d node pairs, want %d: %v", len(states), n*(n-1), states)
	}
}

// TestListenerMD5Keys changes the password of a session live, then removes
// it: the passive side's listener, the speaker's own, must carry each new
// key (and drop the old one) for the session to come back.
func TestListenerMD5Keys(t *testing.T) {
	nodes := speakers(t, []struct {
		as    uint32
		block string
	}{{64512, "10.244.1.0/24"}, {64512, "10.244.2.0/24"}}, [][2]int{{0, 1}},
		func(_ int, c *config.Config) { c.Peers[0].Password = "first-key" })
	md5KeyChanges(t, nodes)
}

// TestListenerMD5KeysV6 is TestListenerMD5Keys between two IPv6-only
// nodes: the keys go on the IPv6 listener, for IPv6 addresses. (A signed
// SYN to a listener without the key is dropped: the session coming up
// shows the key is there.)
func TestListenerMD5KeysV6(t *testing.T) {
	if !inNetns(t, v6Addr(0), v6Addr(1)) {
		return
	}
	nodes := dualSpeakers(t, []dsNode{{64512, "", "fd00:10:244:1::/64", nil}, {64512, "", "fd00:10:244:2::/64", nil}},
		[][2]int{{0, 1}}, func(_ int, c *config.Config) { c.Peers[0].Password = "first-key" })
	md5KeyChanges(t, nodes)
}

// md5KeyChanges changes the password of the session between two nodes,
// whose only peer is each other, then removes it, checking the passive
// side's listener keys and that the session comes back each time.
func md5KeyChanges(t *testing.T, nodes []*node) {
	t.Helper()
	ctx := t.Context()
	// up waits for a session that came up after since.
	up := func(what string, since time.Time) {
		t.Helper()
		waitFor(t, what, func() error {
			for _, n := range nodes {
				a := n.cfg.Peers[0].Address
				if st, at, _, _, _ := n.sp.peerTab.session(a); !at.After(since) {
					return fmt.Errorf("%s: session with %s %s, up since %v", n.cfg.Address, a, sessionStateName(st), at)
				}
			}
			return nil
		})
	}
	up("session with the first password", time.Time{})
	for _, pw := range []string{"second-key", ""} {
		changed := time.Now()
		for _, n := range nodes {
			peers := slices.Clone(n.cfg.Peers)
			peers[0].Password = pw
			if err := n.sp.SetPeers(ctx, peers); err != nil {
				t.Fatal(err)
			}
		}
		nodes[1].sp.mu.Lock()
		keys := fmt.Sprint(nodes[1].sp.listener.keys)
		nodes[1].sp.mu.Unlock()
		want := "map[]"
		if pw != "" {
			want = fmt.Sprintf("map[%s:%s]", nodes[1].cfg.Peers[0].Address, pw)
		}
		if keys != want {
			t.Errorf("passive side's listener keys %s, want %s", keys, want)
		}
		up(fmt.Sprintf("session with password %q", pw), changed)
	}
}
