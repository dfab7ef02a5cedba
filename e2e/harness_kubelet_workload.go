package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// webCommand is the test workload's: busybox pods serving their own name
// over HTTP on 8080 (servedDeployment "web").
const webCommand = `hostname > /www/index.html; exec httpd -f -p 8080 -h /www`

// servedDeployment is a Deployment name of busybox pods running command
// (an HTTP server on 8080), spread over the nodes, behind a ClusterIP
// Service name on port 80.
func servedDeployment(name string, replicas int, command string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s, labels: {app: %[1]s}}
spec:
  replicas: %[2]d
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: %[1]s}}}
      containers:
      - name: web
        image: %[3]s
        imagePullPolicy: Never
        command: [sh, -c, '%[4]s']
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: %[1]s}
spec:
  selector: {app: %[1]s}
  ports: [{port: 80, targetPort: 8080}]
`, name, replicas, BusyboxImage, command)
}

// WorkloadPod is one pod of the workload as the API reports it.
type WorkloadPod struct {
	Name, Node string
	// IP is status.podIP (IPv4 on a dual-stack cluster, as the node's
	// first --node-ip), IPs status.podIPs, IPv6 the IPv6 one of them.
	IP   netip.Addr
	IPs  []netip.Addr
	IPv6 netip.Addr
}

// IPOf is the pod's address of the family (v6: IPv6), zero if none.
func (p WorkloadPod) IPOf(v6 bool) netip.Addr {
	if v6 {
		return p.IPv6
	}
	return p.IP
}

// DeployWeb creates (or scales) the web Deployment and Service and waits
// until its pods run.
func (k *KubeCluster) DeployWeb(ctx context.Context, replicas int) ([]WorkloadPod, error) {
	if err := k.Apply(ctx, servedDeployment("web", replicas, webCommand)); err != nil {
		return nil, fmt.Errorf("deploy web: %w", err)
	}
	return k.WaitWeb(ctx, replicas)
}

// WaitWeb waits until replicas web pods are Ready and returns them.
func (k *KubeCluster) WaitWeb(ctx context.Context, replicas int) ([]WorkloadPod, error) {
	var pods []WorkloadPod
	err := WaitFor(3*time.Minute, time.Second, func() error {
		var err error
		pods, err = k.Pods(ctx, "app=web", true)
		if err != nil {
			return err
		}
		if len(pods) != replicas {
			return fmt.Errorf("%d of %d web pods ready", len(pods), replicas)
		}
		return nil
	})
	return pods, err
}

// Pods lists the default namespace's pods matching selector; readyOnly
// keeps only Ready pods that are not being deleted.
func (k *KubeCluster) Pods(ctx context.Context, selector string, readyOnly bool) ([]WorkloadPod, error) {
	out, err := k.Kubectl(ctx, "get", "pods", "-l", selector, "-o", "json")
	if err != nil {
		return nil, err
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name              string  `json:"name"`
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
			Spec struct {
				NodeName string `json:"nodeName"`
			} `json:"spec"`
			Status struct {
				PodIP  string `json:"podIP"`
				PodIPs []struct {
					IP string `json:"ip"`
				} `json:"podIPs"`
				Conditions []struct {
					Type, Status string
				} `json:"conditions"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("parse pods: %w", err)
	}
	var pods []WorkloadPod
	for _, it := range list.Items {
		ready := false
		for _, c := range it.Status.Conditions {
			ready = ready || (c.Type == "Ready" && c.Status == "True")
		}
		if readyOnly && (!ready || it.Metadata.DeletionTimestamp != nil) {
			continue
		}
		p := WorkloadPod{Name: it.Metadata.Name, Node: it.Spec.NodeName}
		p.IP, _ = netip.ParseAddr(it.Status.PodIP)
		for _, a := range it.Status.PodIPs {
			ip, err := netip.ParseAddr(a.IP)
			if err != nil {
				return nil, fmt.Errorf("pod %s: status.podIPs: %w", p.Name, err)
			}
			p.IPs = append(p.IPs, ip)
			if ip.Is6() && !p.IPv6.IsValid() {
				p.IPv6 = ip
			}
		}
		pods = append(pods, p)
	}
	return pods, nil
}

// KubectlPing pings to from pod with kubectl exec (busybox's ping).
func (k *KubeCluster) KubectlPing(ctx context.Context, pod string, to netip.Addr, count int) (string, error) {
	out, err := k.Kubectl(ctx, "exec", pod, "--", "ping", "-c", fmt.Sprint(count), "-W", "2", to.String())
	if err != nil {
		return out, err
	}
	if !strings.Contains(out, fmt.Sprintf("%d packets received", count)) {
		return out, fmt.Errorf("ping %s from %s: not every packet came back:\n%s", to, pod, out)
	}
	return out, nil
}

// CrossNodePings pings, from one pod per node, a pod on every other node,
// at each of its addresses (IPv4 and, on a dual-stack cluster, IPv6), and
// returns one line per ping.
func (k *KubeCluster) CrossNodePings(ctx context.Context, pods []WorkloadPod) ([]string, error) {
	byNode := map[string]WorkloadPod{}
	for _, p := range pods {
		if _, ok := byNode[p.Node]; !ok {
			byNode[p.Node] = p
		}
	}
	if len(byNode) < 2 {
		return nil, fmt.Errorf("pods on %d node(s): nothing to ping across", len(byNode))
	}
	var lines []string
	for _, from := range byNode {
		for _, to := range byNode {
			if from.Node == to.Node {
				continue
			}
			for _, v6 := range []bool{false, true} {
				dst := to.IPOf(v6)
				if !dst.IsValid() {
					continue
				}
				if _, err := k.KubectlPing(ctx, from.Name, dst, 2); err != nil {
					return lines, err
				}
				lines = append(lines, fmt.Sprintf("%s (%s, %s) -> %s (%s, %s): ok", from.Name, from.Node, from.IPOf(v6), to.Name, to.Node, dst))
			}
		}
	}
	return lines, nil
}
