package manifests_test

import (
	"context"
	"log/slog"
	"net/netip"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
	"github.com/nexthop-net/nexthop/bgp"
	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/kube"
	"github.com/nexthop-net/nexthop/kubetest"
)

func manifestsDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

func kubectl(t *testing.T, env *kubetest.Env, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := env.Kubectl(ctx, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The manifests pass the real API server's validation (server-side dry
// run: schemas, RBAC objects, the DaemonSet), then install for real, and the
// daemon's service account can do its whole job with the RBAC they grant,
// and no more.
func TestManifestsApplyAndGrantEnough(t *testing.T) {
	env := kubetest.Start(t)
	dir := manifestsDir()

	// A server-side dry run cannot create the namespace the other objects
	// go into, so it must exist for the dry run (the real apply makes it).
	ctx := context.Background()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: kube.DefaultNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out := kubectl(t, env, "apply", "-k", dir, "--dry-run=server")
	t.Logf("dry run:\n%s", out)
	for _, want := range []string{"daemonset.apps/nexthop", "clusterrole.rbac.authorization.k8s.io/nexthop", "configmap/nexthop-config",
		"customresourcedefinition.apiextensions.k8s.io/bgppeers.nexthop.io", "role.rbac.authorization.k8s.io/nexthop-secrets",
		"role.rbac.authorization.k8s.io/nexthop-kubeadm-config"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %s", want)
		}
	}
	if _, err := cs.AppsV1().DaemonSets(kube.DefaultNamespace).Get(ctx, "nexthop", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("dry run created the DaemonSet (err=%v)", err)
	}

	kubectl(t, env, "apply", "-k", dir)
	ds, err := cs.AppsV1().DaemonSets(kube.DefaultNamespace).Get(ctx, "nexthop", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork || pod.ServiceAccountName != "nexthop" || len(pod.Tolerations) == 0 || pod.Tolerations[0].Operator != corev1.TolerationOpExists {
		t.Fatalf("DaemonSet pod spec: hostNetwork=%v sa=%q tolerations=%v", pod.HostNetwork, pod.ServiceAccountName, pod.Tolerations)
	}
	if c := pod.Containers[0]; c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged {
		t.Fatal("the long-running daemon container is privileged")
	}
	// Without kube-proxy the API server's address comes from Calico's
	// kubernetes-services-endpoint ConfigMap, in every container that
	// talks to it; optional, so that clusters with kube-proxy need none.
	for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
		if !slices.ContainsFunc(c.EnvFrom, func(e corev1.EnvFromSource) bool {
			return e.ConfigMapRef != nil && e.ConfigMapRef.Name == "kubernetes-services-endpoint" && e.ConfigMapRef.Optional != nil && *e.ConfigMapRef.Optional
		}) {
			t.Errorf("container %s does not take the optional ConfigMap kubernetes-services-endpoint as environment: %+v", c.Name, c.EnvFrom)
		}
	}

	// Now act as the daemon's service account.
	asDaemon := env.DaemonConfig()
	dcs := kubernetes.NewForConfigOrDie(asDaemon)
	for _, n := range []struct{ name, ip, cidr string }{{"node1", "192.0.2.11", "10.244.1.0/24"}, {"node2", "192.0.2.12", "10.244.2.0/24"}} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name}, Spec: corev1.NodeSpec{PodCIDR: n.cidr, PodCIDRs: []string{n.cidr}}}
		node, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.ip}}
		if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bgp", Namespace: kube.DefaultNamespace}, StringData: map[string]string{"tor": "pw"}}
	if _, err := cs.CoreV1().Secrets(kube.DefaultNamespace).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dc := dynamic.NewForConfigOrDie(env.Config)
	bp := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "nexthop.io/v1", "kind": "BGPPeer", "metadata": map[string]any{"name": "tor"},
		"spec": map[string]any{"peerIP": "192.0.2.254", "asNumber": int64(65000), "password": map[string]any{"secretKeyRef": map[string]any{"name": "bgp", "key": "tor"}}},
	}}
	if _, err := dc.Resource(nexthopv1.BGPPeersResource).Create(ctx, bp, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// kubeadm's record of the pod CIDR, which the default IPPool takes,
	// and a neighbour the daemon has no business reading.
	for name, data := range map[string]string{"kubeadm-config": "networking:\n  podSubnet: 10.240.0.0/12\n", "kube-proxy": "config.conf: x\n"} {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system"}, Data: map[string]string{"ClusterConfiguration": data}}
		if _, err := cs.CoreV1().ConfigMaps("kube-system").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	src, err := kube.NewSource(asDaemon, "node1", config.Config{GRPCListen: "none"}, slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		kube.WithNamespace(kube.DefaultNamespace), kube.WithDefaultPool(kube.DefaultPool{NATOutgoing: true}))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	got := make(chan *config.Config, 8)
	done := make(chan error, 1)
	go func() { done <- src.Run(runCtx, func(c *config.Config) { got <- c }) }()
	var cfg *config.Config
	for cfg == nil || len(cfg.Peers) != 2 {
		select {
		case cfg = <-got:
		case err := <-done:
			t.Fatalf("Source as the daemon stopped: %v", err)
		case <-runCtx.Done():
			t.Fatalf("no config with the mesh peer and the ToR as the daemon's service account; last %+v", cfg)
		}
	}
	if cfg.Peers[1].Password != "pw" {
		t.Fatalf("ToR password not read from the Secret: %+v", cfg.Peers[1])
	}
	// The default IPPool, created by the daemon from kubeadm-config.
	if !cfg.NATOutgoing || len(cfg.Pools) != 1 || cfg.Pools[0].String() != "10.240.0.0/12" {
		t.Fatalf("natOutgoing %v pools %v: want the default IPPool 10.240.0.0/12 from kubeadm-config with natOutgoing", cfg.NATOutgoing, cfg.Pools)
	}
	if err := src.PublishStatus(ctx, "node1", []bgp.PeerState{{Address: netip.MustParseAddr("192.0.2.12"), AS: 64512, State: "active"}}); err != nil {
		t.Fatalf("PublishStatus as the daemon: %v", err)
	}
	pt, err := kube.NewPodTracker(asDaemon, "node1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pt.Start(runCtx); err != nil {
		t.Fatalf("pods informer as the daemon: %v", err)
	}
	pt.Stop()

	// And nothing beyond its job.
	ddc := dynamic.NewForConfigOrDie(asDaemon)
	for what, err := range map[string]error{
		"read Secrets of kube-system": func() error {
			_, err := dcs.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
			return err
		}(),
		"change a Node": func() error {
			n, err := dcs.CoreV1().Nodes().Get(ctx, "node2", metav1.GetOptions{})
			if err != nil {
				return err
			}
			n.Labels = map[string]string{"x": "y"}
			_, err = dcs.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
			return err
		}(),
		"delete a BGPPeer": ddc.Resource(nexthopv1.BGPPeersResource).Delete(ctx, "tor", metav1.DeleteOptions{}),
		"delete an IPPool": ddc.Resource(nexthopv1.IPPoolsResource).Delete(ctx, kube.DefaultPoolName, metav1.DeleteOptions{}),
		"change an IPPool": func() error {
			_, err := ddc.Resource(nexthopv1.IPPoolsResource).Patch(ctx, kube.DefaultPoolName, "application/merge-patch+json",
				[]byte(`{"spec":{"natOutgoing":false}}`), metav1.PatchOptions{})
			return err
		}(),
		"read another ConfigMap of kube-system": func() error {
			_, err := dcs.CoreV1().ConfigMaps("kube-system").Get(ctx, "kube-proxy", metav1.GetOptions{})
			return err
		}(),
		"delete a BGPNodeStatus": ddc.Resource(nexthopv1.BGPNodeStatusesResource).Delete(ctx, "node1", metav1.DeleteOptions{}),
		"write a BGPNodeStatus spec": func() error {
			u, err := ddc.Resource(nexthopv1.BGPNodeStatusesResource).Get(ctx, "node1", metav1.GetOptions{})
			if err != nil {
				return err
			}
			u.SetLabels(map[string]string{"x": "y"})
			_, err = ddc.Resource(nexthopv1.BGPNodeStatusesResource).Update(ctx, u, metav1.UpdateOptions{})
			return err
		}(),
	} {
		if !apierrors.IsForbidden(err) {
			t.Errorf("the daemon may %s: got %v, want Forbidden", what, err)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// kubectl itself comes from the API server build; make sure the cached one
// is the matching version so the dry run means what it says.
func TestKubectlVersion(t *testing.T) {
	dir, err := kubetest.BinDir()
	if err != nil {
		t.Skip(err)
	}
	out, err := exec.Command(filepath.Join(dir, "kubectl"), "version", "--client").CombinedOutput()
	if err != nil {
		t.Skipf("no kubectl in %s: %v", dir, err)
	}
	if !strings.Contains(string(out), kubetest.KubeVersion) {
		t.Fatalf("kubectl is not %s:\n%s", kubetest.KubeVersion, out)
	}
}
