package e2e

import (
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pinger runs `ping -i 0.05` (20 per second) from a pod until stopped.
type pinger struct {
	cmd *exec.Cmd
	out strings.Builder
}

func startPinger(t *testing.T, from *Pod, to string) *pinger {
	t.Helper()
	p := &pinger{cmd: exec.Command("ip", "netns", "exec", from.NS, "ping", "-n", "-i", "0.05", "-W", "1", to)}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill() })
	return p
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// stop ends the ping and returns packets sent and lost.
func (p *pinger) stop(t *testing.T) (sent, lost int) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGINT)
	p.cmd.Wait()
	m := pingSummary.FindStringSubmatch(p.out.String())
	if m == nil {
		t.Fatalf("no ping summary in:\n%s", p.out.String())
	}
	sent, _ = strconv.Atoi(m[1])
	recv, _ := strconv.Atoi(m[2])
	return sent, sent - recv
}

// torStale reports whether FRR holds prefix only as a stale path.
func torStale(c *Cluster, prefix netip.Prefix) (bool, error) {
	out, err := c.ToR.Vtysh(fmt.Sprintf("show bgp %s unicast %s json", strings.ToLower(family(prefix.Addr().Is6())), prefix))
	if err != nil {
		return false, err
	}
	return strings.Contains(out, `"stale":true`), nil
}

// TestGracefulRestart: pods on node1 and node2 ping each other 20 times a
// second while node2's daemon is SIGKILLed and restarted, then stopped with
// SIGTERM and restarted. Graceful restart keeps node2's block at its peers
// (FRR shows it stale meanwhile) and node2 keeps its own routes: not one
// packet is lost, and afterwards every node holds exactly the expected
// routes, nothing stale at the ToR.
func TestGracefulRestart(t *testing.T) { gracefulRestart(t, StackIPv4) }

// TestGracefulRestartIPv6 is TestGracefulRestart over IPv6 (an IPv6-only
// cluster): IPv6 pings, graceful restart of the IPv6 unicast sessions.
func TestGracefulRestartIPv6(t *testing.T) { gracefulRestart(t, StackIPv6) }

// TestGracefulRestartDualStack: the same with both families at once, one
// pinger each: node2's IPv4 and IPv6 sessions each restart gracefully,
// and FRR holds both of its blocks stale meanwhile.
func TestGracefulRestartDualStack(t *testing.T) { gracefulRestart(t, StackDual) }

func gracefulRestart(t *testing.T, stack Stack) {
	c := startStackCluster(t, stack)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	blocks := n2.PodCIDRs()
	for _, stop := range []struct {
		name string
		do   func(*Node) error
	}{{"SIGKILL", c.KillDaemon}, {"SIGTERM", c.StopDaemon}} {
		t.Run(stop.name, func(t *testing.T) {
			var pingers []*pinger
			for _, v6 := range stack.Families() {
				pingers = append(pingers, startPinger(t, n1.Pod, n2.Pod.IPOf(v6).String()))
			}
			time.Sleep(time.Second) // traffic flowing before the restart
			if err := stop.do(n2); err != nil {
				t.Fatal(err)
			}
			waitFor(t, withdrawTimeout, "FRR holds node2's block as stale", func() error {
				for _, block := range blocks {
					stale, err := torStale(c, block)
					if err != nil {
						return err
					}
					if !stale {
						return fmt.Errorf("FRR's path for %s is not stale", block)
					}
				}
				return nil
			})
			// Past the hold time, the peers still route to node2.
			if err := checkKernel(c, n1, c.Nodes); err != nil {
				t.Errorf("node1 dropped node2's block during the restart: %v", err)
			}
			if err := c.StartDaemon(n2); err != nil {
				t.Fatal(err)
			}
			waitFor(t, restartTimeout, "node2's initial sync after restart", func() error {
				return n2.LogContains("initial sync:")
			})
			waitFor(t, restartTimeout, "routes exact everywhere", func() error { return converged(c, c.Nodes) })
			waitFor(t, restartTimeout, "no stale path left at FRR", func() error {
				for _, block := range blocks {
					stale, err := torStale(c, block)
					if err == nil && stale {
						err = fmt.Errorf("FRR still holds %s as stale", block)
					}
					if err != nil {
						return err
					}
				}
				return nil
			})
			time.Sleep(time.Second) // traffic flowing after the restart
			for i, p := range pingers {
				v6 := stack.Families()[i]
				sent, lost := p.stop(t)
				t.Logf("%s restart: %d pings sent to %s, %d lost", stop.name, sent, n2.Pod.IPOf(v6), lost)
				if sent < 100 {
					t.Errorf("only %d pings sent: the test did not cover the restart", sent)
				}
				if lost != 0 {
					t.Errorf("%d of %d %s pings lost across a %s restart of node2's daemon", lost, sent, family(v6), stop.name)
				}
			}
			if err := n2.LogContains("restarting=true"); err != nil {
				t.Errorf("node2 did not come back as a restarting speaker: %v", err)
			}
		})
	}
}
