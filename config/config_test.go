package config

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

const good = `
nodeName: node1
address: 192.0.2.11
localAS: 64512
podCIDR: 10.244.1.7/24
peers:
- address: 192.0.2.12
  as: 64512
- address: 192.0.2.254
  as: 65000
  holdTime: 30s
  keepalive: 10
  password: s3cret
`

func TestParseDefaults(t *testing.T) {
	c, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(c.PodCIDRs) != "[10.244.1.0/24]" || c.PodCIDR.IsValid() {
		t.Errorf("podCIDR not masked and moved into podCIDRs: %s %s", c.PodCIDRs, c.PodCIDR)
	}
	if c.RouterID != c.Address || c.GRPCListen != DefaultGRPCListen || c.BGPPort != 179 {
		t.Errorf("defaults not applied: routerID %s grpc %q port %d", c.RouterID, c.GRPCListen, c.BGPPort)
	}
	p0, p1 := c.Peers[0], c.Peers[1]
	if p0.HoldTime.Duration != DefaultHoldTime || p0.Keepalive.Duration != 3*time.Second {
		t.Errorf("peer 0 timers: hold %s keepalive %s", p0.HoldTime, p0.Keepalive)
	}
	if !p0.GracefulRestart.On() || p0.GracefulRestart.RestartTime.Duration != DefaultRestartTime || p0.MaxPrefixes != DefaultMaxPrefixes {
		t.Errorf("peer 0 graceful restart / max prefixes defaults: %+v %d", p0.GracefulRestart, p0.MaxPrefixes)
	}
	if p1.HoldTime.Duration != 30*time.Second || p1.Keepalive.Duration != 10*time.Second {
		t.Errorf("peer 1 timers: hold %s keepalive %s", p1.HoldTime, p1.Keepalive)
	}
	// iBGP pair: the higher address waits; external peers are always dialled.
	if p0.IsPassive(c.Address, c.LocalAS) || p1.IsPassive(c.Address, c.LocalAS) {
		t.Error("node1 (.11) must actively connect to .12 and to the ToR")
	}
	if !(Peer{Address: c.Address, AS: 64512}).IsPassive(p0.Address, 64512) {
		t.Error("node .12 must be passive towards .11")
	}
}

func TestValidationNamesFields(t *testing.T) {
	cases := map[string]string{
		"nodeName":                      strings.Replace(good, "nodeName: node1", "", 1),
		"address":                       strings.Replace(good, "address: 192.0.2.11", "address: 2001:db8::1", 1),
		"podCIDRs[0]":                   strings.Replace(good, "10.244.1.7/24", "192.0.2.0/24", 1),
		"localAS":                       strings.Replace(good, "localAS: 64512", "localAS: 0", 1),
		"peers[1].holdTime":             strings.Replace(good, "holdTime: 30s", "holdTime: 1s", 1),
		"peers[0].address":              strings.Replace(good, "address: 192.0.2.12", "address: 192.0.2.11", 1),
		"unknown field":                 good + "\nbogus: 1\n",
		"logLevel":                      good + "\nlogLevel: loud\n",
		"initialSync":                   good + "\ninitialSync: 5s\n",
		"ipipMode":                      good + "\nipipMode: Sometimes\n",
		"choose one":                    good + "\nipipMode: Always\nvxlanMode: CrossSubnet\n",
		"vxlan.vni":                     good + "\nvxlan: {vni: 16777216}\n",
		"mtu":                           good + "\nmtu: 100\n",
		"peers[0].routeReflectorClient": strings.Replace(good, "  as: 64512\n", "  as: 64512\n  routeReflectorClient: true\n", 1),
		"peers[1].gracefulRestart":      strings.Replace(good, "  password: s3cret", "  password: s3cret\n  gracefulRestart: {restartTime: 2h}", 1),
		"natOutgoingExclude[1]":         good + "\nnatOutgoingExclude: [10.96.0.0/12, 0.0.0.0/0]\n",
		"natOutgoing: needs pools":      good + "\nnatOutgoing: true\n",
	}
	for want, doc := range cases {
		_, err := Parse([]byte(doc))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want an error naming %q, got %v", want, err)
		}
	}
}

func TestNATOutgoing(t *testing.T) {
	c, err := Parse([]byte(good + "\npools: [10.244.0.0/16]\nnatOutgoing: true\nnatOutgoingExclude: [10.96.0.1/12]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.NATOutgoing || len(c.NATOutgoingExclude) != 1 || c.NATOutgoingExclude[0].String() != "10.96.0.0/12" {
		t.Errorf("natOutgoing %v, natOutgoingExclude %v: want true, [10.96.0.0/12] (masked)", c.NATOutgoing, c.NATOutgoingExclude)
	}
}

// TestBFD: enabled BFD defaults to 300 ms x 3; intervals and the
// multiplier are checked against the protocol's bounds, each error naming
// its field; the YAML a config round-trips to leaves BFD out when unset.
func TestBFD(t *testing.T) {
	withBFD := func(s string) string {
		return strings.Replace(good, "  password: s3cret", "  password: s3cret\n  bfd: "+s, 1)
	}
	c, err := Parse([]byte(withBFD("{enabled: true}")))
	if err != nil {
		t.Fatal(err)
	}
	if b := c.Peers[1].BFD; b.MinTx.Duration != 300*time.Millisecond || b.MinRx.Duration != 300*time.Millisecond || b.Multiplier != 3 {
		t.Errorf("BFD defaults: %+v", b)
	}
	if b := c.Peers[0].BFD; b.Enabled || b.MinTx.Duration != 0 {
		t.Errorf("peer without BFD got %+v", b)
	}
	c, err = Parse([]byte(withBFD("{enabled: true, minTx: 100ms, minRx: 1s, multiplier: 5}")))
	if err != nil {
		t.Fatal(err)
	}
	if b := c.Peers[1].BFD; b.MinTx.Duration != 100*time.Millisecond || b.MinRx.Duration != time.Second || b.Multiplier != 5 {
		t.Errorf("BFD as configured: %+v", b)
	}
	for want, doc := range map[string]string{
		"peers[1].bfd.minTx: 5ms out of range 10ms-1m0s":  withBFD("{enabled: true, minTx: 5ms}"),
		"peers[1].bfd.minRx: 2m0s out of range":           withBFD("{enabled: true, minRx: 2m}"),
		"peers[1].bfd.multiplier: 256 out of range 1-255": withBFD("{enabled: true, multiplier: 256}"),
		"peers[1].bfd.multiplier: -1":                     withBFD("{enabled: true, multiplier: -1}"),
		"unknown field \"interval\"":                      withBFD("{enabled: true, interval: 1s}"),
	} {
		if _, err := Parse([]byte(doc)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want an error containing %q, got %v", want, err)
		}
	}
	b, err := yaml.Marshal(Peer{AS: 1})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "bfd") {
		t.Errorf("unset BFD is marshalled: %s", b)
	}
}
