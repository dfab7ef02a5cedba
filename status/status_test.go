package status

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

var sample = Report{
	Node: "node1", Address: "192.0.2.11", AS: 64512, PodCIDR: "10.244.1.0/24",
	IPIPMode: "Never", VXLANMode: "CrossSubnet", PodMTU: 1450, Synced: true,
	Peers: []Peer{
		{Address: "192.0.2.12", AS: 64512, State: "established", UptimeSeconds: 3725, Received: 1, Accepted: 1},
		{Address: "192.0.2.254", AS: 65000, State: "active"},
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
		"192.0.2.12   64512  established  1h2m5s",
		"192.0.2.254  65000  active",
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
