package config

import (
	"net/netip"
	"strings"
	"testing"
)

// The fabric options parse from YAML, and each misuse is refused naming
// its field.
func TestPeerOptions(t *testing.T) {
	const opts = good + `  sourceAddress: 203.0.113.10
  ebgpMultihop: {ttl: 2}
  keepOriginalNextHop: true
  numAllowedLocalASNumbers: 1
  acceptPodBlocks: true
  asPathPrepend: 2
  filters:
  - name: tor-in
    importV4:
    - {action: Reject, cidr: 10.244.3.7/24, matchOperator: Equal}
    - {action: Accept, cidr: 10.0.0.0/8, matchOperator: In, prefixLength: {max: 24}}
`
	c, err := Parse([]byte(opts))
	if err != nil {
		t.Fatal(err)
	}
	p := c.Peers[1]
	if p.SourceAddress != netip.MustParseAddr("203.0.113.10") || p.EBGPMultihop.TTL != 2 || !p.KeepOriginalNextHop ||
		p.NumAllowedLocalASNumbers != 1 || !p.AcceptPodBlocks || p.ASPathPrepend != 2 || len(p.Filters[0].ImportV4) != 2 {
		t.Fatalf("peer options: %+v", p)
	}
	if got := p.Filters[0].ImportV4[0].CIDR.String(); got != "10.244.3.0/24" {
		t.Errorf("filter cidr not masked: %s", got)
	}
	for field, yaml := range map[string]string{
		"peers[1].ebgpMultihop":                strings.Replace(opts, "  ebgpMultihop: {ttl: 2}", "  ebgpMultihop: {ttl: 2}\n  ttlSecurity: 2", 1),
		"peers[0].ebgpMultihop":                strings.Replace(opts, "  as: 64512\n", "  as: 64512\n  ebgpMultihop: {ttl: 2}\n", 1),
		"peers[1].ttlSecurity":                 strings.Replace(opts, "  ebgpMultihop: {ttl: 2}", "  ttlSecurity: 255", 1),
		"peers[1].sourceAddress":               strings.Replace(opts, "203.0.113.10", "192.0.2.254", 1),
		"peers[1].keepOriginalNextHop":         strings.Replace(opts, "  sourceAddress: 203.0.113.10\n", "", 1),
		"peers[1].numAllowedLocalASNumbers":    strings.Replace(opts, "numAllowedLocalASNumbers: 1", "numAllowedLocalASNumbers: 11", 1),
		"peers[0].acceptPodBlocks":             strings.Replace(opts, "  as: 64512\n", "  as: 64512\n  acceptPodBlocks: true\n", 1),
		"peers[0].asPathPrepend":               strings.Replace(opts, "  as: 64512\n", "  as: 64512\n  asPathPrepend: 1\n", 1),
		"peers[1].filters[0].importV4[0]":      strings.Replace(opts, "action: Reject", "action: Drop", 1),
		"peers[1].filters[0].importV4[1]":      strings.Replace(opts, "prefixLength: {max: 24}", "prefixLength: {min: 4}", 1),
		"peers[1].filters[0].importV4[0] cidr": strings.Replace(opts, ", matchOperator: Equal", "", 1),
	} {
		f := strings.TrimSuffix(field, " cidr")
		_, err := Parse([]byte(yaml))
		if err == nil || !strings.Contains(err.Error(), f+":") {
			t.Errorf("%s: want an error naming it, got %v", field, err)
		}
	}
}

// Filter rules match as their operators say.
func TestFilterRuleMatches(t *testing.T) {
	pfx := netip.MustParsePrefix
	in := FilterRule{Action: FilterAccept, CIDR: pfx("10.0.0.0/8"), MatchOperator: MatchIn, PrefixLength: &PrefixLength{Min: 16, Max: 24}}
	for _, tc := range []struct {
		r    FilterRule
		p    string
		want bool
	}{
		{in, "10.1.0.0/16", true}, {in, "10.1.2.0/24", true}, {in, "10.1.2.0/25", false}, {in, "10.0.0.0/8", false}, {in, "11.0.0.0/16", false},
		{FilterRule{CIDR: pfx("10.0.0.0/8"), MatchOperator: MatchNotIn}, "10.1.0.0/16", false},
		{FilterRule{CIDR: pfx("10.0.0.0/8"), MatchOperator: MatchNotIn}, "192.0.2.0/24", true},
		{FilterRule{CIDR: pfx("10.0.0.0/8"), MatchOperator: MatchEqual}, "10.0.0.0/8", true},
		{FilterRule{CIDR: pfx("10.0.0.0/8"), MatchOperator: MatchEqual}, "10.0.0.0/9", false},
		{FilterRule{CIDR: pfx("10.0.0.0/8"), MatchOperator: MatchNotEqual}, "10.0.0.0/9", true},
		{FilterRule{}, "0.0.0.0/0", true},
		{FilterRule{PrefixLength: &PrefixLength{Min: 32}}, "192.0.2.1/32", true},
		{FilterRule{PrefixLength: &PrefixLength{Min: 32}}, "192.0.2.0/31", false},
	} {
		if got := tc.r.Matches(pfx(tc.p)); got != tc.want {
			t.Errorf("%+v matches %s: %v, want %v", tc.r, tc.p, got, tc.want)
		}
	}
}
