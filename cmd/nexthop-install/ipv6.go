package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nexthop-net/nexthop/internal/poll"
)

// ipv6ForwardingSysctl is the host's IPv6 forwarding switch.
const ipv6ForwardingSysctl = "/proc/sys/net/ipv6/conf/all/forwarding"

// ipv6Options say where IPv6 forwarding is switched and how to learn
// whether the node needs it.
type ipv6Options struct {
	// Sysctl is net.ipv6.conf.all.forwarding's file; empty skips the step.
	Sysctl string
	// Node is this node's name ($NODE_NAME), for messages.
	Node string
	// PodCIDRs reads the Node's spec.podCIDRs; nil skips the step.
	PodCIDRs func(context.Context) ([]string, error)
	// Wait bounds the wait for the Node's spec.podCIDRs
	// (kube-controller-manager assigns them right after registration).
	Wait time.Duration
}

// enableIPv6Forwarding (-ipv6-forward=auto) turns on IPv6 forwarding when
// the node has an IPv6 pod CIDR: the daemon needs it to route the IPv6 block and, unprivileged,
// cannot write /proc/sys itself. An IPv4-only node is left alone, since a
// forwarding host ignores router advertisements on interfaces with
// accept_ra=1 and could lose a default route learned from them.
//
// It logs, rather than fails on, what keeps it from deciding (no API, no
// pod CIDRs in time): an IPv4-only install must not depend on it, and a
// dual-stack daemon then says which sysctl is off.
func enableIPv6Forwarding(ctx context.Context, log *slog.Logger, o ipv6Options) {
	if o.Sysctl == "" || o.PodCIDRs == nil {
		log.Info("IPv6 forwarding not checked (no sysctl file or no API access)")
		return
	}
	cur, err := os.ReadFile(o.Sysctl)
	if errors.Is(err, fs.ErrNotExist) {
		log.Info("the host has no IPv6: IPv6 forwarding not needed", "file", o.Sysctl)
		return
	}
	if err == nil && strings.TrimSpace(string(cur)) == "1" {
		log.Info("IPv6 forwarding already on", "file", o.Sysctl)
		return
	}
	var cidrs []string
	err = poll.Until(o.Wait, time.Second, func() error {
		var err error
		if cidrs, err = o.PodCIDRs(ctx); err != nil {
			return err
		}
		if len(cidrs) == 0 {
			return fmt.Errorf("node %s has no spec.podCIDRs yet", o.Node)
		}
		return nil
	})
	if err != nil {
		log.Warn("IPv6 forwarding not set: the node's pod CIDRs are unknown; a dual-stack daemon will report net.ipv6.conf.all.forwarding off",
			"node", o.Node, "waited", o.Wait, "err", err)
		return
	}
	v6 := slices.IndexFunc(cidrs, func(c string) bool {
		p, err := netip.ParsePrefix(c)
		return err == nil && p.Addr().Is6()
	})
	if v6 < 0 {
		log.Info("no IPv6 pod CIDR: IPv6 forwarding left as it is", "podCIDRs", cidrs)
		return
	}
	if err := os.WriteFile(o.Sysctl, []byte("1"), 0o644); err != nil {
		log.Error("enable IPv6 forwarding for the node's IPv6 pod CIDR", "file", o.Sysctl, "podCIDR", cidrs[v6], "err", err)
		return
	}
	log.Info(fmt.Sprintf("enabled IPv6 forwarding for the IPv6 pod CIDR %s", cidrs[v6]), "file", o.Sysctl,
		"note", "a forwarding host ignores router advertisements where accept_ra=1: set accept_ra=2 on interfaces that take routes from them")
}

// Where a pod finds its service account (the kubelet mounts it into init
// containers too).
const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// inClusterPodCIDRs reads Node node's spec.podCIDRs from the API server
// the pod's environment names ($KUBERNETES_SERVICE_HOST/PORT), with the
// service account's token: a GET of one object, for which client-go would
// quadruple this binary. It returns nil when the pod has no API access.
func inClusterPodCIDRs(node string) func(context.Context) ([]string, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	token, terr := os.ReadFile(serviceAccountDir + "/token")
	ca, cerr := os.ReadFile(serviceAccountDir + "/ca.crt")
	if node == "" || host == "" || port == "" || terr != nil || cerr != nil {
		return nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
	u := "https://" + net.JoinHostPort(host, port) + "/api/v1/nodes/" + url.PathEscape(node)
	return func(ctx context.Context) ([]string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		req.Header.Set("Accept", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("get node %s: %w", node, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		if err != nil {
			return nil, fmt.Errorf("get node %s: %w", node, err)
		}
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("get node %s: %s: %.200s", node, resp.Status, body)
		}
		var n struct {
			Spec struct {
				PodCIDR  string   `json:"podCIDR"`
				PodCIDRs []string `json:"podCIDRs"`
			} `json:"spec"`
		}
		if err := json.Unmarshal(body, &n); err != nil {
			return nil, fmt.Errorf("node %s: %w", node, err)
		}
		if len(n.Spec.PodCIDRs) == 0 && n.Spec.PodCIDR != "" {
			return []string{n.Spec.PodCIDR}, nil
		}
		return n.Spec.PodCIDRs, nil
	}
}
