package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// IPv6 forwarding goes on for a node with an IPv6 pod CIDR only, and
// nothing the step cannot decide fails the install.
func TestIPv6Forwarding(t *testing.T) {
	for _, tc := range []struct {
		name     string
		start    string // the sysctl's value; "" for a host without IPv6
		cidrs    []string
		err      error
		want     string
		wantLogs string
	}{
		{name: "dual-stack", start: "0", cidrs: []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, want: "1", wantLogs: "enabled IPv6 forwarding for the IPv6 pod CIDR fd00:10:244:1::/64"},
		{name: "IPv6-only", start: "0", cidrs: []string{"fd00:10:244:1::/64"}, want: "1", wantLogs: "enabled IPv6 forwarding"},
		{name: "IPv4-only", start: "0", cidrs: []string{"10.244.1.0/24"}, want: "0", wantLogs: "no IPv6 pod CIDR"},
		{name: "already on", start: "1", want: "1", wantLogs: "already on"},
		{name: "no IPv6 on the host", wantLogs: "the host has no IPv6"},
		{name: "no pod CIDRs in time", start: "0", want: "0", wantLogs: "no spec.podCIDRs yet"},
		{name: "API unreachable", start: "0", err: errors.New("connection refused"), want: "0", wantLogs: "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sysctl := filepath.Join(t.TempDir(), "forwarding")
			if tc.start != "" {
				if err := os.WriteFile(sysctl, []byte(tc.start+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			var logs bytes.Buffer
			enableIPv6Forwarding(context.Background(), slog.New(slog.NewTextHandler(&logs, nil)), ipv6Options{
				Sysctl: sysctl, Node: "node1", Wait: 1500 * time.Millisecond,
				PodCIDRs: func(context.Context) ([]string, error) { return tc.cidrs, tc.err },
			})
			got, err := os.ReadFile(sysctl)
			if tc.start == "" {
				if err == nil {
					t.Fatalf("the step created %s on a host without IPv6", sysctl)
				}
			} else if strings.TrimSpace(string(got)) != tc.want {
				t.Errorf("forwarding %q, want %q", got, tc.want)
			}
			if !strings.Contains(logs.String(), tc.wantLogs) {
				t.Errorf("logs do not say %q:\n%s", tc.wantLogs, logs.String())
			}
		})
	}
}
