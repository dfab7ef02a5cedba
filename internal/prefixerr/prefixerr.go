// Package prefixerr formats the errors of a batch that failed for some
// prefixes only (bgp.PrefixErrors, routes.PrefixErrors).
package prefixerr

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// shown bounds the message: a batch of thousands failing for one reason
// should not make a log line of thousands.
const shown = 3

// Message is lead followed by the first few errors, in prefix order, and
// how many more there are.
func Message(lead string, errs map[netip.Prefix]error) string {
	ps := slices.SortedFunc(maps.Keys(errs), netip.Prefix.Compare)
	parts := make([]string, 0, shown+1)
	for i, p := range ps {
		if i == shown {
			parts = append(parts, fmt.Sprintf("and %d more", len(ps)-i))
			break
		}
		parts = append(parts, errs[p].Error())
	}
	return lead + ": " + strings.Join(parts, "; ")
}

// Unwrap is every error, for errors.Is and errors.As.
func Unwrap(errs map[netip.Prefix]error) []error { return slices.Collect(maps.Values(errs)) }
