package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/status"
)

// httpGetIn fetches url from inside namespace nsName (each connection's
// socket is made there, so 127.0.0.1 is the node's own loopback).
func httpGetIn(nsName, url string) (string, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := ns.WithNetNSPath(NetNSPath(nsName), func(ns.NetNS) error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
		DisableKeepAlives: true,
	}}
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// metric returns the value of the first sample line starting with series.
func metric(body, series string) (float64, bool) {
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, series+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(l, series)), 64)
			return v, err == nil
		}
	}
	return 0, false
}

var establishedLine = regexp.MustCompile(`(?m)^nexthop_bgp_session_established\{peer="([^"]+)",peer_as="\d+"\} 1$`)

// TestMetricsAndStatus: on a cluster of three nodes with an FRR ToR and a
// pod on each node made by the real CNI plugin, every daemon's /metrics
// agrees with reality (established sessions = what gobgp shows, installed
// routes = the kernel's proto 201 routes, allocated addresses = pods) and
// `nexthopd status` lists every node and the ToR as established.
func TestMetricsAndStatus(t *testing.T) {
	requireHarness(t)
	requireBinaries(t)
	c := newCluster(t, Options{Nodes: 3, ToR: true, AttachPod: CNIPod})
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "routes converged", func() error { return converged(c, c.Nodes) })
	url := "http://" + config.DefaultMetricsListen + "/metrics"
	for _, n := range c.Nodes {
		waitFor(t, convergeTimeout, n.Name+"'s metrics match reality", func() error {
			body, err := httpGetIn(n.NS, url)
			if err != nil {
				return err
			}
			up, err := c.GobgpEstablished(n)
			if err != nil {
				return err
			}
			var exported []string
			for _, m := range establishedLine.FindAllStringSubmatch(body, -1) {
				exported = append(exported, m[1])
			}
			if len(up) != 3 || len(exported) != len(up) {
				return fmt.Errorf("established per metrics %v, per gobgp %v (want 3: two nodes and the ToR)", exported, up)
			}
			kernel, err := c.NexthopRoutes(n)
			if err != nil {
				return err
			}
			native, _ := metric(body, `nexthop_routes_installed{kind="native"}`)
			blackhole, _ := metric(body, `nexthop_routes_installed{kind="blackhole"}`)
			if int(native+blackhole) != len(kernel) || blackhole != 1 {
				return fmt.Errorf("metrics say %v native + %v blackhole routes, the kernel has %d proto 201 routes", native, blackhole, len(kernel))
			}
			allocated, ok := metric(body, fmt.Sprintf(`nexthop_ipam_allocated{block=%q}`, n.PodCIDR().String()))
			if !ok || allocated != 1 {
				return fmt.Errorf("nexthop_ipam_allocated = %v (found %v), want 1: one pod on this node", allocated, ok)
			}
			if adds, _ := metric(body, `nexthop_cni_request_seconds_count{result="ok",verb="ADD"}`); adds < 1 {
				return fmt.Errorf("no successful CNI ADD counted")
			}
			if prog, _ := metric(body, `nexthop_route_programming_seconds_count`); prog < 1 {
				return fmt.Errorf("no route programming observed")
			}
			return nil
		})
	}

	bin := filepath.Join(BinDir(), "nexthopd")
	n := c.Nodes[0]
	out, err := Exec(n.NS, bin, "status")
	if err != nil {
		t.Fatalf("nexthopd status: %v\n%s", err, out)
	}
	t.Logf("nexthopd status on %s:\n%s", n.Name, out)
	for _, peer := range []string{c.Nodes[1].Address.String(), c.Nodes[2].Address.String(), c.ToR.Address.String()} {
		if !regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(peer) + `\s+IPv4\s+\d+\s+established\s`).MatchString(out) {
			t.Errorf("status does not list %s as established", peer)
		}
	}
	var r status.Report
	waitFor(t, restartTimeout, "status -o json parses and reports the initial sync done", func() error {
		var err error
		if r, err = statusJSON(n); err != nil {
			return err
		}
		if !r.Synced {
			return fmt.Errorf("not synced yet")
		}
		return nil
	})
	if r.Node != n.Name || len(r.Peers) != 3 || !r.Synced || r.IPAM.Allocated != 1 {
		t.Errorf("status JSON: node %q, %d peers, synced %v, %d allocated", r.Node, len(r.Peers), r.Synced, r.IPAM.Allocated)
	}
	for _, p := range r.Peers {
		if p.State != "established" {
			t.Errorf("status JSON: peer %s is %s", p.Address, p.State)
		}
	}

	// With no daemon, status says so and fails.
	if err := c.StopDaemon(n); err != nil {
		t.Fatal(err)
	}
	if out, err := Exec(n.NS, bin, "status"); err == nil || !strings.Contains(out+err.Error(), "not running") {
		t.Errorf("status with the daemon stopped: err %v, output %q; want a failure saying it is not running", err, out)
	}
}

// statusJSON is n's report as `nexthopd status -o json` prints it there;
// output that does not parse is a Permanent error.
func statusJSON(n *Node) (status.Report, error) {
	var r status.Report
	js, err := Exec(n.NS, filepath.Join(BinDir(), "nexthopd"), "status", "-o", "json")
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		return r, Permanent(fmt.Errorf("status -o json does not parse: %v\n%s", err, js))
	}
	return r, nil
}
