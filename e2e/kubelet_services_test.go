package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// The Services a client outside the cluster reaches: two busybox pods on
// two nodes whose httpd answers a CGI with the pod's name and the address
// the connection came from, a ClusterIP Service and a LoadBalancer Service
// with externalTrafficPolicy Local in front of them (outsideManifest).
const outsideCommand = `mkdir -p /www/cgi-bin && printf "#!/bin/sh\necho Content-Type: text/plain\necho\necho \$(hostname) \$REMOTE_ADDR\n" > /www/cgi-bin/who && chmod +x /www/cgi-bin/who && exec httpd -f -p 8080 -h /www`

// outsideManifest adds a LoadBalancer Service with externalTrafficPolicy
// Local to the outside Deployment and its ClusterIP Service.
var outsideManifest = servedDeployment("outside", 2, outsideCommand) + `---
apiVersion: v1
kind: Service
metadata: {name: outside-lb}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: outside}
  ports: [{port: 80, targetPort: 8080}]
`

// outsideLBIP is the load-balancer address the test writes into the
// LoadBalancer Service's status, as MetalLB or a cloud controller would;
// outsideLBRange is the BGPConfiguration's serviceLoadBalancerIPs.
var (
	outsideLBIP    = netip.MustParseAddr("198.51.100.10")
	outsideLBRange = netip.MustParsePrefix("198.51.100.0/24")
	// The IPv6 ones, on a dual-stack cluster (unique-local).
	outsideLBIPV6    = netip.MustParseAddr("fd00:198:51:100::10")
	outsideLBRangeV6 = netip.MustParsePrefix("fd00:198:51:100::/64")
)

// outsideLBOf is the load-balancer address and range of the family.
func outsideLBOf(v6 bool) (netip.Addr, netip.Prefix) {
	if v6 {
		return outsideLBIPV6, outsideLBRangeV6
	}
	return outsideLBIP, outsideLBRange
}

// servicesFromOutside: with BGPConfiguration serviceClusterIPs (the API
// server's --service-cluster-ip-range) and serviceLoadBalancerIPs, the
// ToR learns the service range from every node (ECMP) and a Local
// LoadBalancer address from the endpoints' nodes only, and a client behind
// the ToR reaches both Services through those routes: kube-proxy on the
// node the ToR picked answers from a pod. On a dual-stack cluster both
// Services are dual-stack and all of it holds for each family, over the
// ToR's IPv6 sessions.
func (s *kubeletSuite) servicesFromOutside(t *testing.T) {
	k := s.k
	start := time.Now()
	// Service routes go to external peers only: the ToR must be eBGP.
	if err := torIsEBGP(k.ToR, k.Nodes); err != nil {
		t.Fatal(err)
	}
	var clusterRanges, lbRanges []string
	// What the ToR learns, per family: the service range and the
	// LoadBalancer address.
	var torRoutes []netip.Prefix
	var ingress []string
	for _, v6 := range s.families() {
		lbIP, lbRange := outsideLBOf(v6)
		svcRange := k.ServiceCIDRs[slices.IndexFunc(k.ServiceCIDRs, func(p netip.Prefix) bool { return p.Addr().Is6() == v6 })]
		clusterRanges = append(clusterRanges, fmt.Sprintf(`{"cidr":%q}`, svcRange))
		lbRanges = append(lbRanges, fmt.Sprintf(`{"cidr":%q}`, lbRange))
		torRoutes = append(torRoutes, svcRange, netip.PrefixFrom(lbIP, lbIP.BitLen()))
		ingress = append(ingress, fmt.Sprintf(`{"ip":%q}`, lbIP))
	}
	conf := fmt.Sprintf(`{"apiVersion":"nexthop.io/v1","kind":"BGPConfiguration","metadata":{"name":"default"},"spec":{"serviceClusterIPs":[%s],"serviceLoadBalancerIPs":[%s]}}`,
		strings.Join(clusterRanges, ","), strings.Join(lbRanges, ","))
	if err := k.Apply(s.ctx, conf); err != nil {
		t.Fatalf("BGPConfiguration with the service ranges: %v", err)
	}
	if err := k.Apply(s.ctx, outsideManifest); err != nil {
		t.Fatalf("deploy the outside Services: %v", err)
	}
	// What the other steps expect again afterwards: no extra pods, no
	// service routes, a ToR that routes nothing to the cluster.
	defer s.removeOutside(t, torRoutes)
	if k.Stack == StackDual {
		for _, svc := range []string{"outside", "outside-lb"} {
			s.kubectl(t, "patch", "svc", svc, "--type=merge", "-p", `{"spec":{"ipFamilyPolicy":"RequireDualStack","ipFamilies":["IPv4","IPv6"]}}`)
		}
	}
	s.kubectl(t, "patch", "svc", "outside-lb", "--subresource=status", "--type=merge",
		"-p", fmt.Sprintf(`{"status":{"loadBalancer":{"ingress":[%s]}}}`, strings.Join(ingress, ",")))

	var pods []WorkloadPod
	waitFor(t, 2*time.Minute, "2 outside pods Ready on 2 nodes", func() error {
		var err error
		if pods, err = k.Pods(s.ctx, "app=outside", true); err != nil {
			return err
		}
		if len(pods) != 2 || pods[0].Node == pods[1].Node {
			return fmt.Errorf("ready outside pods: %v", pods)
		}
		return nil
	})
	if _, err := k.Sandboxes(); err != nil { // pins the new pods' neighbours
		t.Fatal(err)
	}
	podNode := map[string]string{}
	var endpointNodes []*Node
	for _, p := range pods {
		podNode[p.Name] = p.Node
		for _, n := range k.Nodes {
			if n.Name == p.Node {
				endpointNodes = append(endpointNodes, n)
			}
		}
	}
	waitFor(t, time.Minute, "the ToR has each service range from every node (ECMP), each Local LoadBalancer address from the endpoints' nodes", func() error {
		var errs []error
		for i := 0; i < len(torRoutes); i += 2 {
			errs = append(errs, frrFrom(k.ToR, torRoutes[i], k.Nodes, "", ""), frrFrom(k.ToR, torRoutes[i+1], endpointNodes, "", ""))
		}
		return errors.Join(errs...)
	})
	for i := 0; i < len(torRoutes); i += 2 {
		if out, err := k.ToR.Vtysh(frrShowPrefix(torRoutes[i])); err == nil {
			t.Logf("FRR %s:\n%s", frrShowPrefix(torRoutes[i]), out)
		}
	}

	out := s.kubectl(t, "get", "svc", "outside", "-o", "jsonpath={.spec.clusterIPs[*]}")
	var clusterIPs []netip.Addr
	for _, f := range strings.Fields(out) {
		ip, err := netip.ParseAddr(f)
		if err != nil {
			t.Fatalf("the outside Service's cluster IPs %q: %v", out, err)
		}
		clusterIPs = append(clusterIPs, ip)
	}
	if len(clusterIPs) != len(s.families()) {
		t.Fatalf("the outside Service has cluster IPs %v, want one per family of the cluster", clusterIPs)
	}
	for i, v6 := range s.families() {
		lbIP, _ := outsideLBOf(v6)
		s.outsideThrough(t, clusterIPs[i], lbIP, torRoutes[2*i:2*i+2], podNode)
	}
	t.Logf("step took %s", time.Since(start).Round(100*time.Millisecond))
}

// outsideThrough checks the client behind the ToR against the outside
// Services at one family's addresses: the cluster IP answers only once
// the ToR routes the family's service range (torRoutes[0]) to the nodes,
// then from both pods through the node the ToR picked, which the pods see
// the connection from; the Local LoadBalancer address (torRoutes[1])
// keeps the client's own address.
func (s *kubeletSuite) outsideThrough(t *testing.T, clusterIP, lbIP netip.Addr, torRoutes []netip.Prefix, podNode map[string]string) {
	k := s.k
	v6 := clusterIP.Is6()
	client, gateway := InternetServerOf(v6), InternetGatewayOf(v6)
	// The client's only way out is its link to the ToR.
	if out, err := run("ip", "-n", k.Internet, "route", "get", clusterIP.String()); err != nil || !strings.Contains(out, "via "+gateway.String()+" ") {
		t.Fatalf("the client's route to %s is not via the ToR (%s): %v %s", clusterIP, gateway, err, out)
	}
	// Without the ToR's route the Service is out of reach: the answers
	// below come through it.
	out, err := outsideGet(k.Internet, netip.AddrPortFrom(clusterIP, 80))
	if err == nil {
		t.Fatalf("the client reached %s:80 before the ToR had a route to it: %q", clusterIP, out)
	}
	t.Logf("before the ToR has the route: %v", err)
	// The ToR's bgpd runs without zebra: the test installs FRR's multipath
	// set into the ToR's kernel, as zebra would.
	for _, p := range torRoutes {
		if err := installFRRRoute(k.ToR, p); err != nil {
			t.Fatal(err)
		}
	}

	// The node the ToR's ECMP hash picks for this client and address (an
	// IPv6 hash covers the next header too).
	out, err = run("ip", "-n", k.ToR.NS, "route", "get", clusterIP.String(), "from", client.String(), "iif", "inet0", "ipproto", "tcp")
	if err != nil {
		t.Fatalf("the ToR's route for the client's packets to %s: %v", clusterIP, err)
	}
	f := strings.Fields(out)
	i := slices.Index(f, "via")
	if i < 0 || i+1 == len(f) {
		t.Fatalf("the ToR's route for the client's packets to %s has no next hop: %s", clusterIP, out)
	}
	picked := f[i+1]
	t.Logf("the ToR forwards the client's packets: %s", strings.TrimSpace(out))
	// kube-proxy on that node DNATs the ClusterIP to one of the pods, on
	// that node or another, and masquerades the connection (its source is
	// outside the cluster CIDR): the pod sees the picked node's address.
	// Both pods answer in turn.
	answered := map[string]bool{}
	waitFor(t, 30*time.Second, "a client behind the ToR gets answers from both pods through "+netip.AddrPortFrom(clusterIP, 80).String(), func() error {
		out, err := outsideGet(k.Internet, netip.AddrPortFrom(clusterIP, 80))
		if err != nil {
			return err
		}
		pod, from, _ := strings.Cut(out, " ")
		if _, ok := podNode[pod]; !ok {
			return Permanent(fmt.Errorf("answer %q is not from an outside pod (%v)", out, podNode))
		}
		if from != picked {
			return Permanent(fmt.Errorf("%s saw the connection from %s, want the address of the node the ToR sent it to (%s)", pod, from, picked))
		}
		if !answered[pod] {
			t.Logf("client %s -> %s answered by %s on %s, which saw the connection from %s", client, netip.AddrPortFrom(clusterIP, 80), pod, podNode[pod], from)
		}
		answered[pod] = true
		if len(answered) < len(podNode) {
			return fmt.Errorf("only %v answered yet", answered)
		}
		return nil
	})

	// externalTrafficPolicy Local: the ToR sends to an endpoint's node,
	// which keeps the client's address.
	out, err = outsideGet(k.Internet, netip.AddrPortFrom(lbIP, 80))
	if err != nil {
		t.Fatalf("client behind the ToR to the LoadBalancer address %s: %v", netip.AddrPortFrom(lbIP, 80), err)
	}
	pod, from, _ := strings.Cut(out, " ")
	if _, ok := podNode[pod]; !ok {
		t.Fatalf("the LoadBalancer address %s answered %q, not an outside pod", lbIP, out)
	}
	if from != client.String() {
		t.Errorf("pod %s saw the connection to %s from %s, want the client's own address %s (externalTrafficPolicy Local)", pod, lbIP, from, client)
	}
	t.Logf("client %s -> %s (LoadBalancer, Local) answered by %s on %s, which saw %s",
		client, netip.AddrPortFrom(lbIP, 80), pod, podNode[pod], from)
}

// removeOutside undoes servicesFromOutside: the ToR's kernel routes, the
// workload and the BGPConfiguration go, and the ToR loses the routes.
func (s *kubeletSuite) removeOutside(t *testing.T, torRoutes []netip.Prefix) {
	k := s.k
	for _, p := range torRoutes {
		run("ip", "-n", k.ToR.NS, "route", "del", p.String()) // absent if the step failed before
	}
	for _, args := range [][]string{
		{"delete", "deployment", "outside", "--ignore-not-found", "--wait=true", "--timeout=60s"},
		{"delete", "svc", "outside", "outside-lb", "--ignore-not-found", "--wait=true", "--timeout=60s"},
		{"wait", "--for=delete", "pod", "-l", "app=outside", "--timeout=90s"},
		{"delete", "bgpconfiguration", "default", "--ignore-not-found"},
	} {
		if out, err := k.Kubectl(s.ctx, args...); err != nil {
			t.Errorf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	err := WaitFor(time.Minute, 200*time.Millisecond, func() error {
		var errs []error
		for _, p := range torRoutes {
			errs = append(errs, frrFrom(k.ToR, p, nil, "", ""))
		}
		return errors.Join(errs...)
	})
	if err != nil {
		t.Errorf("the service routes withdrawn from the ToR: %v", err)
	}
}

// torIsEBGP checks that every node's session with the ToR is eBGP: FRR's
// own AS differs from each node's.
func torIsEBGP(tor *ToR, nodes []*Node) error {
	out, err := tor.Vtysh("show bgp ipv4 unicast summary json")
	if err != nil {
		return err
	}
	var sum struct {
		AS    uint32 `json:"as"`
		Peers map[string]struct {
			RemoteAS uint32 `json:"remoteAs"`
		} `json:"peers"`
	}
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		return fmt.Errorf("parse FRR summary json: %w: %.200s", err, out)
	}
	for _, n := range nodes {
		p, ok := sum.Peers[n.Address.String()]
		if !ok {
			return fmt.Errorf("the ToR has no neighbour %s (%s)", n.Address, n.Name)
		}
		if p.RemoteAS == sum.AS {
			return fmt.Errorf("the ToR (AS %d) peers with %s over iBGP: service routes go to external peers only", sum.AS, n.Name)
		}
	}
	return nil
}

// installFRRRoute puts pfx into the ToR's kernel over the next hops of
// FRR's best and multipath paths (zebra's job; the ToR's bgpd runs
// without it).
func installFRRRoute(tor *ToR, pfx netip.Prefix) error {
	out, err := tor.Vtysh(frrShowPrefix(pfx) + " json")
	if err != nil {
		return err
	}
	var r struct {
		Paths []struct {
			Multipath bool `json:"multipath"`
			Bestpath  *struct {
				Overall bool `json:"overall"`
			} `json:"bestpath"`
			Nexthops []struct {
				IP string `json:"ip"`
			} `json:"nexthops"`
		} `json:"paths"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return fmt.Errorf("parse FRR %s json: %w: %.300s", frrShowPrefix(pfx), err, out)
	}
	var hops []string
	for _, p := range r.Paths {
		if (p.Multipath || p.Bestpath != nil && p.Bestpath.Overall) && len(p.Nexthops) > 0 && !slices.Contains(hops, p.Nexthops[0].IP) {
			hops = append(hops, p.Nexthops[0].IP)
		}
	}
	if len(hops) == 0 {
		return fmt.Errorf("FRR has no usable path for %s: %.300s", pfx, out)
	}
	argv := []string{"route", "replace", pfx.String(), "proto", "bgp"}
	for _, h := range hops {
		argv = append(argv, "nexthop", "via", h, "dev", underlayLink)
	}
	return ipn(tor.NS, "install FRR's route to "+pfx.String(), argv...)
}

// outsideGet asks the Service at addr for /cgi-bin/who from inside
// namespace nsName and returns the answer's body: "<pod name> <address
// the pod saw the connection from>".
func outsideGet(nsName string, addr netip.AddrPort) (string, error) {
	var conn net.Conn
	err := ns.WithNetNSPath(NetNSPath(nsName), func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout("tcp", addr.String(), 2*time.Second)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("connect to %s from %s: %w", addr, nsName, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(conn, "GET /cgi-bin/who HTTP/1.0\r\n\r\n"); err != nil {
		return "", fmt.Errorf("request to %s: %w", addr, err)
	}
	b, err := io.ReadAll(conn)
	if err != nil {
		return "", fmt.Errorf("answer from %s: %w", addr, err)
	}
	_, body, ok := strings.Cut(string(b), "\r\n\r\n")
	if !ok {
		_, body, ok = strings.Cut(string(b), "\n\n")
	}
	if !strings.HasPrefix(string(b), "HTTP/1.") || !ok {
		return "", fmt.Errorf("answer from %s is not HTTP: %q", addr, b)
	}
	// busybox httpd listens on IPv6 too: an IPv4 client shows as [::ffff:a.b.c.d].
	f := strings.Fields(body)
	if len(f) != 2 {
		return "", fmt.Errorf("answer from %s: body %q, want <pod> <client address>", addr, body)
	}
	from := strings.TrimPrefix(strings.Trim(f[1], "[]"), "::ffff:")
	return f[0] + " " + from, nil
}
