package kubetest_test

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
	"github.com/nexthop-net/nexthop/kubetest"
)

func TestStart(t *testing.T) {
	start := time.Now()
	env := kubetest.Start(t)
	t.Logf("API server with CRDs ready in %s at %s", time.Since(start).Round(time.Millisecond), env.URL)
	ctx := t.Context()

	cs := kubernetes.NewForConfigOrDie(env.Config)
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		t.Fatalf("admin get namespace default: %v", err)
	}
	dc := dynamic.NewForConfigOrDie(env.Config)
	if _, err := dc.Resource(nexthopv1.BGPPeersResource).List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("CRD bgppeers not served: %v", err)
	}

	// The daemon identity has no rights until the manifests grant them.
	_, err := kubernetes.NewForConfigOrDie(env.DaemonConfig()).CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("daemon user listing nodes without RBAC: got %v, want Forbidden", err)
	}

	out, err := env.Kubectl(context.Background(), "get", "bgppeers", "-o", "name").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get bgppeers: %v\n%s", err, out)
	}
}
