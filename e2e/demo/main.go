// Command demo starts a 3-node nexthop cluster with an FRR top-of-rack
// router in network namespaces, shows its routing tables and a cross-node
// pod ping, then waits for Ctrl-C and removes everything.
//
// With DEMO_CHECK=1 it runs non-interactively and exits 0 only when the
// cross-node pings work. DEMO_STACK picks the address families: dual (the
// default: every node and pod has an IPv4 and an IPv6 address, one BGP
// session per family), ipv4 or ipv6 (IPv6 only). Run it as root through
// `make demo`.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nexthop-net/nexthop/e2e"
)

const convergeTimeout = 60 * time.Second

type stdoutLog struct{}

func (stdoutLog) Logf(format string, args ...any) {
	fmt.Printf("%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func main() { os.Exit(run()) }

func run() int {
	check := os.Getenv("DEMO_CHECK") == "1"
	if err := e2e.CheckTools(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: cannot run here:\n%v\n", err)
		return 2
	}
	// Catch Ctrl-C from the start, so an interrupt during setup still
	// tears down what was built.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	stack, err := stackFromEnv()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 2
	}
	log := stdoutLog{}
	section(fmt.Sprintf("Building 3 nodes, 3 pods and an FRR ToR (AS 65000), %s; nodes are AS 64512, iBGP full mesh", stack))
	c, err := e2e.New(e2e.Options{Nodes: 3, ToR: true, Stack: stack, Log: log})
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	defer func() {
		section("Cleaning up")
		c.Close()
		fmt.Println("all namespaces and processes removed")
	}()

	if err := c.StartDaemons(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n\n%s", err, c.LogTails(30))
		return 1
	}
	if err := waitSessions(ctx, c, log); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n\n%s", err, c.LogTails(30))
		return 1
	}
	show(c)

	ok := pingAll(c)
	if check {
		if !ok {
			fmt.Fprintf(os.Stderr, "demo: DEMO_CHECK failed: cross-node ping did not work\n\n%s", c.LogTails(30))
			return 1
		}
		fmt.Println("\nDEMO_CHECK: cross-node pod ping works")
		return 0
	}

	section("Cluster is up. Look around, for example:")
	n1 := c.Nodes[0]
	fmt.Printf("  ip netns exec %s %s/gobgp -p %d neighbor\n", n1.NS, c.Bin, e2e.GRPCPort)
	for _, v6 := range stack.Families() {
		fmt.Printf("  ip -n %s %s route show proto %d\n", n1.NS, ipFlag(v6), e2e.RouteProtocol)
		fmt.Printf("  ip netns exec %s ping %s\n", n1.Pod.NS, c.Nodes[1].Pod.IPOf(v6))
		fmt.Printf("  vtysh --vty_socket %s/vty -c 'show bgp %s unicast'\n", c.ToR.Dir, afi(v6))
	}
	fmt.Printf("  logs: %s\n", c.Dir)
	fmt.Println("\nPress Ctrl-C to tear everything down.")
	<-ctx.Done()
	if !ok {
		return 1
	}
	return 0
}

func section(title string) { fmt.Printf("\n=== %s\n", title) }

// stackFromEnv reads DEMO_STACK.
func stackFromEnv() (e2e.Stack, error) {
	switch s := os.Getenv("DEMO_STACK"); s {
	case "", "dual":
		return e2e.StackDual, nil
	case "ipv4":
		return e2e.StackIPv4, nil
	case "ipv6":
		return e2e.StackIPv6, nil
	default:
		return 0, fmt.Errorf("DEMO_STACK=%q: want dual, ipv4 or ipv6", s)
	}
}

// afi is the family's name in FRR and gobgp commands.
func afi(v6 bool) string {
	if v6 {
		return "ipv6"
	}
	return "ipv4"
}

// ipFlag is iproute2's family flag.
func ipFlag(v6 bool) string {
	if v6 {
		return "-6"
	}
	return "-4"
}

// waitSessions prints BGP session progress until every node has all its
// sessions up and every kernel holds the other nodes' blocks.
func waitSessions(ctx context.Context, c *e2e.Cluster, log e2e.Logger) error {
	section("Waiting for BGP sessions")
	deadline := time.Now().Add(convergeTimeout)
	last := ""
	for {
		status, done := progress(c)
		if status != last {
			log.Logf("%s", status)
			last = status
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not converged after %s: %s", convergeTimeout, status)
		}
		select {
		case <-ctx.Done():
			return errors.New("interrupted")
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// progress summarises sessions and kernel routes, e.g.
// "sessions node1 3/3 node2 2/3 tor 3/3; kernel routes 5/6".
func progress(c *e2e.Cluster) (string, bool) {
	var parts []string
	done := true
	for _, n := range c.Nodes {
		up, err := c.GobgpEstablished(n)
		if err != nil {
			parts = append(parts, n.Name+" ?")
			done = false
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d/%d", n.Name, len(up), len(n.Config.Peers)))
		done = done && len(up) == len(n.Config.Peers)
	}
	fams := c.Stack.Families()
	if up, err := c.ToR.Established(); err == nil {
		parts = append(parts, fmt.Sprintf("tor %d/%d", len(up), len(c.Nodes)*len(fams)))
		done = done && len(up) == len(c.Nodes)*len(fams)
	} else {
		done = false
	}
	have, want := 0, 0
	for _, n := range c.Nodes {
		routes, _ := c.NexthopRoutes(n)
		for _, m := range c.Nodes {
			if m == n {
				continue
			}
			for _, v6 := range fams {
				want++
				if slices.ContainsFunc(routes, func(r e2e.Route) bool {
					return r.Dst == m.PodCIDROf(v6) && slices.Contains(r.Gateways, m.AddressOf(v6))
				}) {
					have++
				}
			}
		}
	}
	done = done && have == want
	return fmt.Sprintf("sessions established: %s; pod routes in kernels %d/%d", strings.Join(parts, ", "), have, want), done
}

// show prints what an operator would look at, per family.
func show(c *e2e.Cluster) {
	for _, n := range c.Nodes {
		for _, v6 := range c.Stack.Families() {
			section(fmt.Sprintf("%s (%s, pod block %s): gobgp -p %d global rib -a %s", n.Name, n.AddressOf(v6), n.PodCIDROf(v6), e2e.GRPCPort, afi(v6)))
			out, err := c.Gobgp(n, "global", "rib", "-a", afi(v6))
			printOut(out, err)
			section(fmt.Sprintf("%s: ip %s route show proto %d", n.Name, ipFlag(v6), e2e.RouteProtocol))
			out, err = e2e.Exec(n.NS, "ip", ipFlag(v6), "route", "show", "proto", fmt.Sprint(e2e.RouteProtocol))
			printOut(out, err)
		}
	}
	for _, v6 := range c.Stack.Families() {
		section("FRR ToR: show bgp " + afi(v6) + " unicast")
		out, err := c.ToR.Vtysh("show bgp " + afi(v6) + " unicast")
		printOut(out, err)
	}
}

func printOut(out string, err error) {
	fmt.Print(out)
	if err != nil {
		fmt.Printf("error: %v\n", err)
	}
}

// pingAll pings from each pod to the pod on the next node, in every
// family.
func pingAll(c *e2e.Cluster) bool {
	ok := true
	for i, from := range c.Nodes {
		to := c.Nodes[(i+1)%len(c.Nodes)]
		for _, v6 := range c.Stack.Families() {
			section(fmt.Sprintf("ping from %s (%s on %s) to %s (%s on %s)", from.Pod.Name, from.Pod.IPOf(v6), from.Name, to.Pod.Name, to.Pod.IPOf(v6), to.Name))
			out, err := ping(from.Pod, to.Pod.IPOf(v6))
			printOut(out, err)
			ok = ok && err == nil
		}
	}
	return ok
}

func ping(p *e2e.Pod, dst netip.Addr) (string, error) {
	return e2e.Exec(p.NS, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", dst.String())
}
