package config

import (
	"strings"
	"testing"
)

const dualStack = `
nodeName: node1
address: 192.0.2.11
addressV6: fd00:192::11
localAS: 64512
podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]
pools: [10.244.0.0/16, "fd00:10:244::/56"]
peers:
- {address: 192.0.2.12, as: 64512}
- {address: "fd00:192::12", as: 64512}
`

func TestDualStackConfig(t *testing.T) {
	c, err := Parse([]byte(dualStack))
	if err != nil {
		t.Fatal(err)
	}
	if c.PodCIDROf(false).String() != "10.244.1.0/24" || c.PodCIDROf(true).String() != "fd00:10:244:1::/64" {
		t.Errorf("blocks %v", c.PodCIDRs)
	}
	if c.LocalAddressOf(c.Peers[0]).String() != "192.0.2.11" || c.LocalAddressOf(c.Peers[1]).String() != "fd00:192::11" {
		t.Errorf("session sources %s %s", c.LocalAddressOf(c.Peers[0]), c.LocalAddressOf(c.Peers[1]))
	}
	// The v6 session's passive side is decided between v6 addresses.
	if c.PassiveWith(c.Peers[1]) != c.PassiveWith(c.Peers[0]) {
		t.Errorf("passive differs between families with the same address order")
	}
	if c.RouterID.String() != "192.0.2.11" {
		t.Errorf("router ID %s, want the IPv4 address", c.RouterID)
	}
}

func TestIPv6OnlyConfig(t *testing.T) {
	doc := `
nodeName: node6
address: "fd00:192::11"
localAS: 64512
podCIDR: "fd00:10:244:1::/64"
peers:
- {address: "fd00:192::12", as: 64512}
`
	c, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if c.AddressV6.String() != "fd00:192::11" || c.AddressOf(false).IsValid() || c.PodCIDROf(false).IsValid() {
		t.Errorf("address %s v6 %s v4 %s blocks %v", c.Address, c.AddressV6, c.AddressOf(false), c.PodCIDRs)
	}
	if !c.RouterID.Is4() || c.RouterID != HashRouterID("node6") || HashRouterID("node6") == HashRouterID("node7") {
		t.Errorf("router ID %s: want the name hash", c.RouterID)
	}
}

func TestDualStackRefused(t *testing.T) {
	base := dualStack
	for want, doc := range map[string]string{
		"podCIDRs[1]: 10.244.2.0/24: a second IPv4 block":    strings.Replace(base, `"fd00:10:244:1::/64"`, "10.244.2.0/24", 1),
		"but the node has no IPv6 address":                   strings.Replace(base, "addressV6: fd00:192::11\n", "", 1),
		"this node has no IPv6 address to speak from":        strings.Replace(strings.Replace(base, "addressV6: fd00:192::11\n", "", 1), `, "fd00:10:244:1::/64"]`, "]", 1),
		"pools[2]: ::ffff:10.0.0.0/104 is an IPv4-mapped":    strings.Replace(base, `"fd00:10:244::/56"]`, `"fd00:10:244::/56", "::ffff:10.0.0.0/104"]`, 1),
		"accept[0]: ::ffff:198.18.0.0/111 is an IPv4-mapped": base + "- {address: \"fd00:192::254\", as: 65000, accept: [\"::ffff:198.18.0.0/111\"]}\n",
		"sourceAddress: 192.0.2.99 is not IPv6":              base + "- {address: \"fd00:192::254\", as: 65000, sourceAddress: 192.0.2.99}\n",
		"importV6[0]: cidr 10.0.0.0/8 is not IPv6":           base + "- {address: \"fd00:192::254\", as: 65000, filters: [{importV6: [{action: Reject, cidr: 10.0.0.0/8, matchOperator: In}]}]}\n",
		"prefixLength 0-129: lengths are 0-128":              base + "- {address: \"fd00:192::254\", as: 65000, filters: [{exportV6: [{action: Accept, prefixLength: {max: 129}}]}]}\n",
		"natOutgoingV6: the node has no IPv6 block":          strings.Replace(base, `, "fd00:10:244:1::/64"]`, "]", 1) + "natOutgoingV6: true\n",
		"addressV6: 192.0.2.13 is not IPv6":                  strings.Replace(base, "addressV6: fd00:192::11", "addressV6: 192.0.2.13", 1),
		"peers[1].address: fe80::12 is an IPv6 link-local":   strings.Replace(base, `"fd00:192::12"`, `"fe80::12"`, 1),
		"overlaps the reserved range fe80::/10":              strings.Replace(base, `"fd00:10:244:1::/64"`, `"fe80::/64"`, 1),
		"vxlan.deviceV6":                                     base + "vxlan: {device: vx, deviceV6: vx}\n",
	} {
		_, err := Parse([]byte(doc))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want an error containing %q, got %v", want, err)
		}
	}
}
