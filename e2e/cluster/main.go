// Command cluster brings up a local Kubernetes cluster in network
// namespaces and installs nexthop on it from manifests/, as a user would:
// a control plane (etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler), 3 nodes each with containerd, runc, kubelet and
// kube-proxy, and an FRR top-of-rack router. It prints the KUBECONFIG to
// use and what to try, then waits for Ctrl-C and removes everything.
//
// With CLUSTER_CHECK=1 it runs non-interactively and exits 0 only when
// pods on different nodes ping each other. CLUSTER_STACK=dual makes the
// cluster dual-stack (every pod an IPv4 and an IPv6 address, pinged at
// both). Run it as root through `make cluster`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nexthop-net/nexthop/e2e"
)

type stdoutLog struct{}

func (stdoutLog) Logf(format string, args ...any) {
	fmt.Printf("%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func main() { os.Exit(run()) }

func run() int {
	check := os.Getenv("CLUSTER_CHECK") == "1"
	stack := e2e.StackIPv4
	switch s := os.Getenv("CLUSTER_STACK"); s {
	case "", "ipv4":
	case "dual":
		stack = e2e.StackDual
	default:
		fmt.Fprintf(os.Stderr, "cluster: CLUSTER_STACK=%q: want ipv4 (the default) or dual\n", s)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := stdoutLog{}
	start := time.Now()

	log.Logf("building a 3-node %s Kubernetes cluster in network namespaces (the Kubernetes binaries are built once per machine: ~12 min the first time)", stack)
	k, err := e2e.NewKubeCluster(ctx, e2e.KubeOptions{Nodes: 3, Log: log, Progress: os.Stdout, Stack: stack})
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster: %v\n", err)
		return 1
	}
	defer func() {
		log.Logf("cleaning up")
		k.Close()
		log.Logf("all namespaces, processes and mounts removed")
	}()
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "cluster: %v\n\n%s\n%s", err, k.NodeLogTails(15), k.LogTails(15))
		return 1
	}
	if err := k.Install(ctx); err != nil {
		return fail(err)
	}
	log.Logf("nexthop installed, every node Ready (%s since start)", time.Since(start).Round(time.Second))
	pods, err := k.DeployWeb(ctx, 6)
	if err != nil {
		return fail(err)
	}
	if _, err := k.Sandboxes(); err != nil { // pins pod neighbours
		return fail(err)
	}
	out, _ := k.Kubectl(ctx, "get", "pods", "-o", "wide")
	fmt.Println(out)
	lines, err := k.CrossNodePings(ctx, pods)
	for _, l := range lines {
		log.Logf("ping %s", l)
	}
	if err != nil {
		if check {
			fmt.Fprintf(os.Stderr, "cluster: CLUSTER_CHECK failed: %v\n", err)
			return fail(err)
		}
		// Interactive: keep the cluster for a look at what is wrong.
		fmt.Fprintf(os.Stderr, "cluster: cross-node ping failed: %v\n", err)
	}
	if check {
		fmt.Printf("\nCLUSTER_CHECK: pods on different nodes ping each other (%s)\n", time.Since(start).Round(time.Second))
		return 0
	}

	n1 := k.KNodes[0]
	fmt.Printf(`
The cluster is up. In another shell, as root:

  export KUBECONFIG=%s
  kubectl get nodes -o wide
  kubectl get pods -o wide
  kubectl exec %s -- ping -c 3 %s
  kubectl -n nexthop-system get pods -o wide
  kubectl get bgpnodestatuses
  kubectl -n nexthop-system exec ds/nexthop -- gobgp --target unix:///run/nexthop/gobgp.sock neighbor
  ip netns exec %s %s --target unix://%s neighbor      # the same, on %s from the host
  ip -n %s route show proto 201
%s
(kubectl: %s)
Ctrl-C removes everything.
`, k.Kubeconfig, pods[0].Name, otherNodeIP(pods, false), n1.NS, filepath.Join(k.Bin, "gobgp"), n1.HostPath("/run/nexthop/gobgp.sock"), n1.Name, n1.NS, dualHints(k, pods), k.KubectlPath())
	<-ctx.Done()
	return 0
}

// otherNodeIP is a pod address (v6: IPv6) on another node than the first
// pod's.
func otherNodeIP(pods []e2e.WorkloadPod, v6 bool) string {
	for _, p := range pods[1:] {
		if p.Node != pods[0].Node {
			return p.IPOf(v6).String()
		}
	}
	return pods[0].IPOf(v6).String()
}

// dualHints are the dual-stack cluster's extra things to try.
func dualHints(k *e2e.KubeCluster, pods []e2e.WorkloadPod) string {
	if k.Stack != e2e.StackDual {
		return ""
	}
	return fmt.Sprintf(`  kubectl get pod %s -o jsonpath='{.status.podIPs}'
  kubectl exec %s -- ping -c 3 %s
  ip -6 -n %s route show proto 201
`, pods[0].Name, pods[0].Name, otherNodeIP(pods, true), k.KNodes[0].NS)
}
