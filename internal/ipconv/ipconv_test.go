package ipconv

import (
	"net"
	"testing"
)

func TestAddr(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":       "192.0.2.1", // 16-byte form from net.ParseIP
		"fd00:192::11":    "fd00:192::11",
		"::ffff:c000:201": "192.0.2.1", // IPv4-mapped: netlink's IPv4 in 16 bytes
	} {
		got, ok := Addr(net.ParseIP(in))
		if !ok || got.String() != want {
			t.Errorf("Addr(%s) = %s, %v; want %s", in, got, ok, want)
		}
	}
	if got, ok := Addr(net.IPv4(192, 0, 2, 1).To4()); !ok || got.String() != "192.0.2.1" || !got.Is4() {
		t.Errorf("4-byte form: %s %v", got, ok)
	}
	for _, bad := range []net.IP{nil, {1, 2, 3}} {
		if got, ok := Addr(bad); ok {
			t.Errorf("Addr(%v) = %s, want not ok", bad, got)
		}
	}
}
