package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/nexthop-net/nexthop/kubetest"
)

// The Kubernetes control plane of a kubelet cluster: etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler in a namespace of their own
// on the underlay, as a control-plane host would be. Nothing is added to
// the machine's own namespace: the test process and a user's kubectl reach
// the API server through a relay on the host's loopback.
var (
	// ControlPlaneAddress is the API server's address on the underlay.
	ControlPlaneAddress = netip.MustParseAddr("192.0.2.1")
	// ClusterCIDR is kube-controller-manager's --cluster-cidr: each Node
	// gets a /24 of it as spec.podCIDR.
	ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	// ServiceCIDR is where ClusterIP Services get their addresses.
	ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
	// ClusterCIDRV6 and ServiceCIDRV6 are their IPv6 halves on a
	// dual-stack cluster: each Node gets a /64 of ClusterCIDRV6 (the pod
	// pool of the netns tests, PodPoolV6), Services an address of
	// ServiceCIDRV6 (a /112: as many addresses as the IPv4 /16).
	ClusterCIDRV6 = PodPoolV6
	ServiceCIDRV6 = netip.MustParsePrefix("fd00:10:96::/112")
)

// Node block sizes kube-controller-manager carves from the cluster CIDRs:
// a /64 per node, as the netns tests' blocks (the IPAM allocates sparsely,
// so a /64 costs nothing).
const (
	nodeCIDRBitsV4 = 24
	nodeCIDRBitsV6 = 64
)

// joinPrefixes is prefixes as the Kubernetes flags take them, comma
// separated, IPv4 first.
func joinPrefixes(prefixes []netip.Prefix) string {
	s := make([]string, len(prefixes))
	for i, p := range prefixes {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

const (
	apiServerPort = 6443
	// tlsServerName is in the API server's self-signed certificate, so a
	// client reaching it through the loopback relay can still verify it.
	tlsServerName = "kubernetes.default.svc"
)

// controlPlane is the running control plane.
type controlPlane struct {
	ns  string
	dir string
	bin string
	// tokens maps a user name to its bearer token (token-auth-file).
	tokens map[string]string
	// relay is the host's way in: 127.0.0.1:port → ControlPlaneAddress.
	relay *relay
}

// caFile is the API server's self-signed certificate bundle, which the
// kubeconfigs trust and which the controller-manager hands to pods as
// kube-root-ca.crt.
func (cp *controlPlane) caFile() string { return filepath.Join(cp.dir, "certs", "apiserver.crt") }

// users of the token file: name, groups.
func controlPlaneUsers(nodes []*Node) [][2]string {
	u := [][2]string{
		{"admin", "system:masters"},
		{"system:kube-proxy", ""},
	}
	for _, n := range nodes {
		u = append(u, [2]string{"system:node:" + n.Name, "system:nodes"})
	}
	return u
}

// cpOptions describe the control plane: where its binaries are and the
// families of the cluster (one CIDR of each in both lists, IPv4 first).
type cpOptions struct {
	bin                        string
	clusterCIDRs, serviceCIDRs []netip.Prefix
}

// startControlPlane creates the control-plane namespace on the underlay
// and starts the four servers in it. The API server stays on IPv4 on a
// dual-stack cluster too, as the kubernetes Service (of the first family)
// is.
func (c *Cluster) startControlPlane(o cpOptions) (*controlPlane, error) {
	bin := o.bin
	cp := &controlPlane{ns: c.Prefix + "cp", dir: filepath.Join(c.Dir, "cp"), bin: bin, tokens: map[string]string{}}
	if err := os.MkdirAll(cp.dir, 0o755); err != nil {
		return nil, fmt.Errorf("create control-plane dir: %w", err)
	}
	if err := c.addNS(cp.ns); err != nil {
		return nil, err
	}
	if err := c.plugUnderlay(cp.ns, "cp", ControlPlaneAddress); err != nil {
		return nil, err
	}

	var tokens strings.Builder
	for _, u := range controlPlaneUsers(c.Nodes) {
		tok := randToken()
		cp.tokens[u[0]] = tok
		fmt.Fprintf(&tokens, "%s,%s,%s,%q\n", tok, u[0], u[0], u[1])
	}
	if err := os.WriteFile(filepath.Join(cp.dir, "tokens.csv"), []byte(tokens.String()), 0o600); err != nil {
		return nil, fmt.Errorf("write token file: %w", err)
	}
	saKey, saPub := filepath.Join(cp.dir, "sa.key"), filepath.Join(cp.dir, "sa.pub")
	if err := kubetest.WriteServiceAccountKey(saKey, saPub); err != nil {
		return nil, fmt.Errorf("service account key: %w", err)
	}

	inNS := func(name string, args ...string) error {
		argv := append([]string{"ip", "netns", "exec", cp.ns, filepath.Join(bin, name)}, args...)
		p, err := startProc(name, filepath.Join(cp.dir, name+".log"), argv...)
		if err != nil {
			return err
		}
		c.track(p)
		return nil
	}
	// The namespace is the cluster's own: default ports cannot clash.
	if err := inNS("etcd", "--name=cp", "--data-dir="+filepath.Join(cp.dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=cp=http://127.0.0.1:2380", "--unsafe-no-fsync=true", "--log-level=warn"); err != nil {
		return nil, err
	}
	addr := ControlPlaneAddress.String()
	if err := inNS("kube-apiserver",
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=0.0.0.0", "--advertise-address="+addr, fmt.Sprintf("--secure-port=%d", apiServerPort),
		"--cert-dir="+filepath.Join(cp.dir, "certs"),
		"--token-auth-file="+filepath.Join(cp.dir, "tokens.csv"),
		// Node: each kubelet may read what its pods need (and request
		// their service account tokens); RBAC for everyone else.
		"--authorization-mode=Node,RBAC",
		"--service-account-key-file="+saPub, "--service-account-signing-key-file="+saKey,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-cluster-ip-range="+joinPrefixes(o.serviceCIDRs),
		"--allow-privileged=true",
		// exec and logs dial the node's InternalIP, not its name.
		"--kubelet-preferred-address-types=InternalIP",
		"--enable-priority-and-fairness=false", "--v=0"); err != nil {
		return nil, err
	}
	r, err := newRelayInto(cp.ns, "127.0.0.1:0", fmt.Sprintf("%s:%d", addr, apiServerPort))
	if err != nil {
		return nil, err
	}
	c.closeLater(r)
	cp.relay = r
	if err := cp.waitReady(); err != nil {
		return nil, err
	}
	// The controllers talk to the API server inside the namespace.
	admin := filepath.Join(cp.dir, "admin-internal.kubeconfig")
	if err := cp.writeKubeconfig(admin, fmt.Sprintf("https://%s:%d", addr, apiServerPort), "admin"); err != nil {
		return nil, err
	}
	kcm := []string{"--kubeconfig=" + admin,
		"--leader-elect=false", "--bind-address=127.0.0.1",
		"--allocate-node-cidrs=true", "--cluster-cidr=" + joinPrefixes(o.clusterCIDRs)}
	// A mask size flag per family the cluster has: the controller manager
	// refuses --node-cidr-mask-size-ipv6 on an IPv4 cluster.
	for _, p := range o.clusterCIDRs {
		if p.Addr().Is4() {
			kcm = append(kcm, fmt.Sprintf("--node-cidr-mask-size-ipv4=%d", nodeCIDRBitsV4))
		} else {
			kcm = append(kcm, fmt.Sprintf("--node-cidr-mask-size-ipv6=%d", nodeCIDRBitsV6))
		}
	}
	if err := inNS("kube-controller-manager", append(kcm,
		"--service-cluster-ip-range="+joinPrefixes(o.serviceCIDRs),
		"--use-service-account-credentials=true", "--service-account-private-key-file="+saKey,
		"--root-ca-file="+cp.caFile(),
		// Otherwise it creates /usr/libexec/kubernetes/... on the machine.
		"--flex-volume-plugin-dir="+filepath.Join(cp.dir, "volume-plugins"),
		// A deleted node's pods go quickly; a rebooting one is back well
		// before this.
		"--node-monitor-grace-period=40s", "--v=1")...); err != nil {
		return nil, err
	}
	if err := inNS("kube-scheduler", "--kubeconfig="+admin, "--leader-elect=false", "--bind-address=127.0.0.1", "--v=1"); err != nil {
		return nil, err
	}
	return cp, nil
}

// waitReady polls /readyz through the relay.
func (cp *controlPlane) waitReady() error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	url := "https://" + cp.relay.Addr() + "/readyz"
	return WaitFor(2*time.Minute, 250*time.Millisecond, func() error {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+cp.tokens["admin"])
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("kube-apiserver not ready: %w (log: %s)", err, filepath.Join(cp.dir, "kube-apiserver.log"))
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("kube-apiserver /readyz: %s", resp.Status)
		}
		return nil
	})
}

// writeKubeconfig writes a kubeconfig for user against server, trusting the
// API server's own certificate.
func (cp *controlPlane) writeKubeconfig(path, server, user string) error {
	ca, err := os.ReadFile(cp.caFile())
	if err != nil {
		return fmt.Errorf("read the API server certificate: %w", err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["nexthop-e2e"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca, TLSServerName: tlsServerName}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: cp.tokens[user]}
	cfg.Contexts["nexthop-e2e"] = &clientcmdapi.Context{Cluster: "nexthop-e2e", AuthInfo: user}
	cfg.CurrentContext = "nexthop-e2e"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// kubectl runs the cached kubectl as admin through the relay and returns
// its stdout; the error carries stderr.
func (k *KubeCluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	argv := append([]string{filepath.Join(k.cp.bin, "kubectl"), "--kubeconfig", k.Kubeconfig}, args...)
	return runCtx(ctx, argv...)
}

// KubectlPath is the kubectl the cluster uses (v1.34, built from modules).
func (k *KubeCluster) KubectlPath() string { return filepath.Join(k.cp.bin, "kubectl") }
