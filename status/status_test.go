package status

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

var sample = Report{
	Node: "node1", Address: "192.0.2.11", AS: 64512, PodCIDR: "10.244.1.0/24",
	IPIPMode: "Never", VXLANMode: "CrossSubnet", PodMTU: 1450, Synced: true,
	Peers: []Peer{
		{Address: "192.0.2.12", Family: "IPv4", AS: 64512, State: "established", UptimeSeconds: 3725, Received: 1, Accepted: 1},
		{Address: "192.0.2.254", Family: "IPv4", AS: 65000, State: "active"},
	},
	Routes: map[string]int{"native": 1, "vxlan": 1, "blackhole": 1, "ipip": 0},
	IPAM:   IPAM{Block: "10.244.1.0/24", Size: 253, Allocated: 4},
	BFD: []BFDSession{{Peer: "192.0.2.254", State: "Down", RemoteState: "Up", Diag: "control detection time expired", RemoteDiag: "none",
		MinTxMillis: 300, MinRxMillis: 300, Multiplier: 3, RemoteMinTxMillis: 300, RemoteMinRxMillis: 300, RemoteMultiplier: 3, DetectTimeMillis: 900}},
}

func TestFetchAndRender(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != Path {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(sample)
	}))
	defer srv.Close()
	got, err := Fetch(context.Background(), strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := Render(&b, got); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"nexthop node node1: 192.0.2.11, AS 64512, pod block 10.244.1.0/24",
		"vxlanMode CrossSubnet; pod MTU 1450",
		"PEER         FAMILY  AS     STATE",
		"192.0.2.12   IPv4    64512  established  1h2m5s",
		"192.0.2.254  IPv4    65000  active",
		"routes installed: 1 blackhole, 0 ipip, 1 native, 1 vxlan",
		"IPAM: 10.244.1.0/24, 4 of 253 addresses allocated",
		"BFD sessions:",
		"192.0.2.254  Down   Up      300ms/300ms x3",
		"900ms   control detection time expired",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestFetchWithNoDaemon(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	_, err = Fetch(context.Background(), addr)
	if !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), addr) {
		t.Errorf("want ErrNotRunning naming %s, got %v", addr, err)
	}
}

// A dual-stack node shows both addresses, both blocks with their IPAM use,
// and its sessions of each family, each saying its family.
func TestRenderDualStack(t *testing.T) {
	r := Report{
		Node: "node1", Address: "192.0.2.11", AddressV6: "fd00:192::11", AS: 64512,
		PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00:10:244:1::/64"},
		IPIPMode: "Never", VXLANMode: "Never", PodMTU: 1500, Synced: true,
		Peers: []Peer{
			{Address: "192.0.2.12", Family: "IPv4", AS: 64512, State: "established", UptimeSeconds: 60, Received: 1, Accepted: 1},
			{Address: "fd00:192::12", Family: "IPv6", AS: 64512, State: "established", UptimeSeconds: 60, Received: 1, Accepted: 1},
		},
		Routes: map[string]int{"native": 2, "blackhole": 2},
		IPAM:   IPAM{Block: "10.244.1.0/24", Size: 253, Allocated: 4},
		IPAMV6: &IPAM{Block: "fd00:10:244:1::/64", Size: 1 << 20, Allocated: 4},
	}
	// Through JSON, as `nexthopd status` reads it.
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var got Report
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := Render(&out, got); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"nexthop node node1: 192.0.2.11 and fd00:192::11, AS 64512, pod blocks 10.244.1.0/24 and fd00:10:244:1::/64",
		"192.0.2.12    IPv4    64512  established  1m0s",
		"fd00:192::12  IPv6    64512  established  1m0s",
		"IPAM: 10.244.1.0/24, 4 of 253 addresses allocated; fd00:10:244:1::/64, 4 of 1048576 addresses allocated",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}

	// An IPv6-only node: one address, one block.
	v6 := Report{Node: "n6", Address: "fd00:192::14", AddressV6: "fd00:192::14", AS: 64512, PodCIDR: "fd00:10:244:4::/64",
		PodCIDRs: []string{"fd00:10:244:4::/64"}, IPAM: IPAM{Block: "fd00:10:244:4::/64", Size: 1 << 20}}
	out.Reset()
	if err := Render(&out, v6); err != nil {
		t.Fatal(err)
	}
	if want := "nexthop node n6: fd00:192::14, AS 64512, pod block fd00:10:244:4::/64\n"; !strings.HasPrefix(out.String(), want) {
		t.Errorf("IPv6-only header: got\n%s\nwant %q", out.String(), want)
	}
}

func TestFamilyOf(t *testing.T) {
	for in, want := range map[string]string{"192.0.2.1": "IPv4", "fd00::1": "IPv6", "::ffff:192.0.2.1": "IPv4"} {
		if got := FamilyOf(netip.MustParseAddr(in)); got != want {
			t.Errorf("FamilyOf(%s) = %s, want %s", in, got, want)
		}
	}
}
