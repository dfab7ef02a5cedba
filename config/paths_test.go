package config

import (
	"strings"
	"testing"
)

// Item 6: a relative socket or state path would resolve against the
// daemon's working directory; refused, naming the field.
func TestPathsMustBeAbsolute(t *testing.T) {
	cases := map[string]struct{ yaml, want string }{
		"relative socket":  {"ipamSocket: nexthop.sock", "ipamSocket: \"nexthop.sock\" is not an absolute path"},
		"dot socket":       {"ipamSocket: ./run/nexthop.sock", "ipamSocket: \"./run/nexthop.sock\" is not an absolute path"},
		"relative state":   {"stateDir: state", "stateDir: \"state\" is not an absolute path"},
		"root state":       {"stateDir: /", "stateDir: \"/\": the IPAM store needs a directory of its own"},
		"socket too long":  {"ipamSocket: /" + strings.Repeat("x", 110), "longer than a unix socket path may be"},
		"socket directory": {"ipamSocket: /run/nexthop/", "names a directory"},
	}
	for name, c := range cases {
		_, err := Parse([]byte(good + c.yaml + "\n"))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Parse = %v, want %q", name, err, c.want)
		}
	}
	c, err := Parse([]byte(good + "ipamSocket: /run/nexthop.sock\nstateDir: /var/lib/nexthop\n"))
	if err != nil {
		t.Fatalf("absolute paths refused: %v", err)
	}
	if c.IPAMSocket != "/run/nexthop.sock" {
		t.Fatalf("ipamSocket %q", c.IPAMSocket)
	}
}
