package config

import (
	"strings"
	"testing"
)

func TestParseCommunity(t *testing.T) {
	for s, want := range map[string]string{
		"65000:100": "", "0:0": "", "65535:65535": "", "65000:1:2": "", "4294967295:0:4294967295": "",
		"65536:1":        "not a number from 0 to 65535",
		"1:2:4294967296": "not a number from 0 to 4294967295",
		"no-export":      "want AS:value",
		"1:2:3:4":        "want AS:value",
		"1:-2":           "not a number",
	} {
		c, err := ParseCommunity(s)
		switch {
		case want == "" && err != nil:
			t.Errorf("%q: %v", s, err)
		case want == "" && c.String() != s:
			t.Errorf("%q reads back as %q", s, c)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%q: error %v, want one containing %q", s, err, want)
		}
	}
	if c, _ := ParseCommunity("65000:100"); c.Standard() != 65000<<16|100 {
		t.Errorf("65000:100 as a 32-bit value: %d", c.Standard())
	}
}

// The standalone file's service and community fields, as the README shows
// them, and what Validate refuses in them.
func TestAdvertisementFields(t *testing.T) {
	c, err := Parse([]byte(good + `
pools: [10.244.0.0/16]
serviceCIDRs: [10.96.0.0/12, 198.51.100.7/32]
communities: ["64512:100", "64512:1:2"]
prefixAdvertisements:
- {cidr: 10.96.0.0/12, communities: ["64512:300"]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.ServiceCIDRs) != 2 || len(c.Communities) != 2 || c.PrefixAdvertisements[0].CIDR.String() != "10.96.0.0/12" {
		t.Fatalf("parsed %v %v %v", c.ServiceCIDRs, c.Communities, c.PrefixAdvertisements)
	}
	for extra, want := range map[string]string{
		"serviceCIDRs: [0.0.0.0/0]":                                        "serviceCIDRs[0]: 0.0.0.0/0 would announce a default route",
		"serviceCIDRs: [10.244.0.0/20]":                                    "overlaps this node's podCIDR",
		"serviceCIDRs: [10.244.200.0/24]":                                  "overlaps the pod pool 10.244.0.0/16",
		"serviceCIDRs: [169.254.0.0/24]":                                   "reserved range",
		"serviceCIDRs: ['fd00:96::/112']":                                  "no IPv6 address to be its next hop",
		`communities: ["65000:70000"]`:                                     "communities[0]: community \"65000:70000\"",
		"prefixAdvertisements: [{cidr: 10.96.0.0/12}]":                     "prefixAdvertisements[0].communities: required",
		`prefixAdvertisements: [{cidr: 10.96.0.0/12, communities: ["x"]}]`: "prefixAdvertisements[0].communities[0]",
	} {
		_, err := Parse([]byte(good + "pools: [10.244.0.0/16]\n" + extra + "\n"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one containing %q", extra, err, want)
		}
	}
}
