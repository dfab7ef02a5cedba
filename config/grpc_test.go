package config

import (
	"strings"
	"testing"
)

// The GoBGP API's address and its two opt-ins: what is accepted as is,
// and what is refused naming which field and why.
func TestGRPCListenAndOptIns(t *testing.T) {
	ok := []struct {
		extra          string
		remote, socket string
	}{
		{"", "", "/run/nexthop/gobgp.sock"},
		{"grpcListen: unix:///var/run/x/api.sock\ngrpcAllowWrites: true", "", "/var/run/x/api.sock"},
		{"grpcListen: 127.0.0.1:50051", "", ""},
		{"grpcListen: 127.0.0.2:50051\ngrpcAllowWrites: true", "", ""},
		{"grpcListen: localhost:50051", "", ""},
		{"grpcListen: '[::1]:50051'", "", ""},
		{"grpcListen: none", "", ""},
		{"grpcListen: 0.0.0.0:50052\ngrpcAllowRemote: true", "remote", ""},
		{"grpcListen: 192.0.2.11:50052\ngrpcAllowRemote: true\ngrpcAllowWrites: true", "remote", ""},
	}
	for _, c := range ok {
		cfg, err := Parse([]byte(good + "\n" + c.extra + "\n"))
		if err != nil {
			t.Errorf("%q: %v", c.extra, err)
			continue
		}
		if got := cfg.GRPCRemote(); got != (c.remote != "") {
			t.Errorf("%q: GRPCRemote() = %v", c.extra, got)
		}
		if got := cfg.GRPCSocket(); got != c.socket {
			t.Errorf("%q: GRPCSocket() = %q, want %q", c.extra, got, c.socket)
		}
	}

	bad := map[string]string{
		"grpcListen: 0.0.0.0:50052":                           "grpcListen: 0.0.0.0:50052 is not a loopback address",
		"grpcListen: ':50052'":                                "set grpcAllowRemote: true",
		"grpcListen: 192.0.2.11:50052\ngrpcAllowWrites: true": "grpcListen: 192.0.2.11:50052 is not a loopback",
		"grpcListen: 127.0.0.1:50051\ngrpcAllowRemote: true":  "grpcAllowRemote: set, but grpcListen \"127.0.0.1:50051\" is not a remote",
		"grpcAllowRemote: true":                               "grpcAllowRemote: set, but grpcListen \"unix:///run/nexthop/gobgp.sock\"",
		"grpcListen: none\ngrpcAllowWrites: true":             "grpcAllowWrites: set, but grpcListen is \"none\"",
		"grpcListen: unix://run/gobgp.sock":                   "grpcListen: \"unix://run/gobgp.sock\": the socket path must be absolute",
		"grpcListen: unix:///run/../run/gobgp.sock":           "must be absolute and clean",
		"grpcListen: unix:///run/a,b":                         "comma",
		"grpcListen: unix:///run/nexthop/nexthop.sock":        "grpcListen: /run/nexthop/nexthop.sock is also ipamSocket",
		"grpcListen: unix:///" + strings.Repeat("a", 120):     "longer than",
		"grpcListen: 127.0.0.1:70000":                         "grpcListen:",
		"grpcListen: 127.0.0.1":                               "grpcListen:",
		"grpcListen: 127.0.0.1:9091":                          "metricsListen: 127.0.0.1:9091 is also grpcListen",
	}
	for extra, want := range bad {
		_, err := Parse([]byte(good + "\n" + extra + "\n"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: want an error containing %q, got %v", extra, want, err)
		}
	}
}
