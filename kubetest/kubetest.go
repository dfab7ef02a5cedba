// Package kubetest runs a real etcd and kube-apiserver on loopback for tests:
// the same API server version the project targets, with token
// authentication, RBAC and nexthop's CRDs installed. No kubelet, no
// controller-manager: nothing reconciles Pods or garbage-collects, so tests
// see exactly the objects they write.
//
// The binaries come from hack/kube/build.sh (built from the Go module proxy
// and cached per machine). Start builds them when they are missing and the
// test has time for it, and skips the test otherwise, saying how to build.
package kubetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/nexthop-net/nexthop/manifests"
)

// Versions built by hack/kube/build.sh; keep the two in step.
const (
	KubeVersion = "v1.34.2"
	EtcdVersion = "v3.6.5"
)

// DaemonUser is a second identity every Env accepts (token DaemonToken):
// the nexthop DaemonSet's service account, so a test can check that the
// manifests' RBAC is enough for the daemon and no more.
const DaemonUser = "system:serviceaccount:nexthop-system:nexthop"

// Env is one running API server.
type Env struct {
	// Config is an admin (system:masters) client config.
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file for the same admin.
	Kubeconfig string
	// URL of the API server, https://127.0.0.1:PORT.
	URL string
	// BinDir holds kube-apiserver, etcd and kubectl.
	BinDir string
	// Dir is the temporary directory holding data, certificates and logs.
	Dir string

	daemonToken string
	procs       []proc
}

// DaemonConfig returns a client config authenticated as DaemonUser.
func (e *Env) DaemonConfig() *rest.Config {
	c := rest.CopyConfig(e.Config)
	c.BearerToken = e.daemonToken
	return c
}

// Kubectl returns a command running the cached kubectl against this API
// server as admin.
func (e *Env) Kubectl(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(e.BinDir, "kubectl"), append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+e.Kubeconfig)
	return cmd
}

// RepoRoot is the directory of the repository this package was compiled
// from (hack/kube/build.sh is found from it); under -trimpath, the nearest
// directory above the working directory (a test's package) that has it.
func RepoRoot() string {
	has := func(d string) bool { return fileExists(filepath.Join(d, "hack", "kube", "build.sh")) }
	if _, file, _, ok := runtime.Caller(0); ok && has(filepath.Dir(filepath.Dir(file))) {
		return filepath.Dir(filepath.Dir(file))
	}
	d, _ := os.Getwd()
	for ; d != filepath.Dir(d); d = filepath.Dir(d) {
		if has(d) {
			return d
		}
	}
	return "."
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// BinDir is where hack/kube/build.sh puts (or has put) the binaries:
// $NEXTHOP_KUBE_BIN, else a versioned directory beside the Go build cache.
func BinDir() (string, error) {
	if d := os.Getenv("NEXTHOP_KUBE_BIN"); d != "" {
		return d, nil
	}
	out, err := exec.Command("go", "env", "GOCACHE").Output()
	if err != nil {
		return "", fmt.Errorf("find the Go build cache (go env GOCACHE): %w", err)
	}
	cache := strings.TrimSpace(string(out))
	if cache == "" || cache == "off" {
		return "", errors.New("GOCACHE is off: set NEXTHOP_KUBE_BIN to a directory for the API server binaries")
	}
	return filepath.Join(filepath.Dir(cache), "nexthop-kube", "k8s-"+KubeVersion+"-etcd-"+EtcdVersion), nil
}

func haveBinaries(dir string) bool {
	for _, b := range []string{"kube-apiserver", "etcd", "kubectl"} {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// buildTime is how long a cold build is allowed to take before Start gives
// up on building inside a test run (the first build is ~6-10 min on 2 cores).
const buildTime = 20 * time.Minute

var (
	ensureOnce sync.Once
	ensureDir  string
	ensureErr  error
)

// ensureBinaries finds the binaries, building them once per test process
// when they are missing and the test deadline leaves room for it.
func ensureBinaries(t testing.TB) (string, error) {
	ensureOnce.Do(func() {
		ensureDir, ensureErr = BinDir()
		if ensureErr != nil || haveBinaries(ensureDir) {
			return
		}
		how := "run hack/kube/build.sh once (about 6-10 minutes on 2 cores; cached in " + ensureDir + ")"
		if os.Getenv("NEXTHOP_KUBE_BUILD") == "0" {
			ensureErr = fmt.Errorf("kube-apiserver/etcd/kubectl missing in %s and NEXTHOP_KUBE_BUILD=0: %s", ensureDir, how)
			return
		}
		if tt, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
			if d, ok := tt.Deadline(); ok && time.Until(d) < buildTime {
				ensureErr = fmt.Errorf("kube-apiserver/etcd/kubectl missing in %s and the test timeout leaves less than %s to build them: %s, or run go test with -timeout 30m", ensureDir, buildTime, how)
				return
			}
		}
		t.Logf("kubetest: building kube-apiserver %s, kubectl and etcd %s into %s (first time on this machine; minutes)", KubeVersion, EtcdVersion, ensureDir)
		cmd := exec.Command("bash", filepath.Join(RepoRoot(), "hack", "kube", "build.sh"))
		cmd.Env = append(os.Environ(), "NEXTHOP_KUBE_BIN="+ensureDir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			ensureErr = fmt.Errorf("build failed (%v): %s\n%s", err, how, tail(out, 2000))
			return
		}
		if !haveBinaries(ensureDir) {
			ensureErr = fmt.Errorf("hack/kube/build.sh succeeded but %s lacks the binaries", ensureDir)
		}
	})
	return ensureDir, ensureErr
}

// ClusterBinaries are what a whole cluster runs besides the API server:
// hack/kube/build.sh builds them together with it.
var ClusterBinaries = []string{"etcd", "kube-apiserver", "kubectl", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"}

// EnsureClusterBinaries returns the directory holding ClusterBinaries,
// running hack/kube/build.sh first when one is missing, with its progress
// lines going to progress (a cold build takes about 12 minutes on 2 cores).
func EnsureClusterBinaries(progress io.Writer) (string, error) {
	dir, err := BinDir()
	if err != nil {
		return "", err
	}
	have := func() bool {
		for _, b := range ClusterBinaries {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
				return false
			}
		}
		return true
	}
	if have() {
		return dir, nil
	}
	cmd := exec.Command("bash", filepath.Join(RepoRoot(), "hack", "kube", "build.sh"))
	cmd.Env = append(os.Environ(), "NEXTHOP_KUBE_BIN="+dir)
	cmd.Stderr = progress
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build the Kubernetes binaries (hack/kube/build.sh): %w", err)
	}
	if !have() {
		return "", fmt.Errorf("hack/kube/build.sh succeeded but %s lacks some of %v", dir, ClusterBinaries)
	}
	return dir, nil
}

// Start runs etcd and kube-apiserver for the test, installs nexthop's CRDs
// and returns once the API serves them. Everything is stopped and removed by
// t.Cleanup. One Env takes about 300 MB of memory.
func Start(t testing.TB) *Env {
	t.Helper()
	bin, err := ensureBinaries(t)
	if err != nil {
		t.Skipf("kubetest: no API server to test against: %v", err)
	}
	e := &Env{BinDir: bin, Dir: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := e.start(ctx, t); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	if err := InstallCRDs(ctx, e.Config, manifests.CRDs, manifests.CRDDir); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return e
}

func (e *Env) start(ctx context.Context, t testing.TB) error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]

	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	if err := e.run(t, "etcd",
		"--name=kubetest",
		"--data-dir="+filepath.Join(e.Dir, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		// Throwaway data: durability only costs time.
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	); err != nil {
		return err
	}

	adminToken, daemonToken := randHex(16), randHex(16)
	e.daemonToken = daemonToken
	tokens := fmt.Sprintf("%s,admin,admin,system:masters\n%s,%s,daemon,\"system:serviceaccounts,system:serviceaccounts:nexthop-system\"\n",
		adminToken, daemonToken, DaemonUser)
	if err := os.WriteFile(filepath.Join(e.Dir, "tokens.csv"), []byte(tokens), 0o600); err != nil {
		return err
	}
	keyFile, pubFile := filepath.Join(e.Dir, "sa.key"), filepath.Join(e.Dir, "sa.pub")
	if err := WriteServiceAccountKey(keyFile, pubFile); err != nil {
		return err
	}
	if err := e.run(t, "kube-apiserver",
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(apiPort),
		"--cert-dir="+filepath.Join(e.Dir, "certs"),
		"--token-auth-file="+filepath.Join(e.Dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-key-file="+pubFile,
		"--service-account-signing-key-file="+keyFile,
		"--service-account-issuer=https://kubernetes.default.svc",
		// Dual-stack, so that tests can create dual-stack Services;
		// single-stack ones still get the first (IPv4) family.
		"--service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112",
		// No controller-manager creates namespaces' default service
		// accounts, so the admission plugin would refuse every Pod.
		"--disable-admission-plugins=ServiceAccount",
		"--enable-priority-and-fairness=false",
		// As every real cluster that runs CNI DaemonSets (kubeadm's default).
		"--allow-privileged=true",
		"--v=0",
	); err != nil {
		return err
	}

	e.URL = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	e.Config = &rest.Config{
		Host:        e.URL,
		BearerToken: adminToken,
		// The server's certificate is self-signed and created at start.
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             100,
		Burst:           200,
	}
	if err := e.waitReady(ctx, adminToken); err != nil {
		return err
	}
	return e.writeKubeconfig(adminToken)
}

// run starts one server, logging to a file in Dir, and registers its stop.
func (e *Env) run(t testing.TB, name string, args ...string) error {
	logPath := filepath.Join(e.Dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(e.BinDir, name), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Servers must not outlive a test binary killed by its timeout.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Env = append(os.Environ(), "GOMEMLIMIT=256MiB")
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("kubetest: last lines of %s:\n%s", name, tail(b, 3000))
		}
	})
	e.procs = append(e.procs, proc{name: name, done: done, log: logPath})
	return nil
}

type proc struct {
	name string
	done chan struct{}
	log  string
}

func (e *Env) waitReady(ctx context.Context, token string) error {
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
	}
	var last string
	for {
		for _, p := range e.procs {
			select {
			case <-p.done:
				b, _ := os.ReadFile(p.log)
				return fmt.Errorf("%s exited during start:\n%s", p.name, tail(b, 3000))
			default:
			}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err == nil {
			b := make([]byte, 512)
			n, _ := resp.Body.Read(b)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, b[:n])
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready at %s (last: %s)", e.URL, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (e *Env) writeKubeconfig(token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: e.URL, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "admin"}
	cfg.CurrentContext = "kubetest"
	e.Kubeconfig = filepath.Join(e.Dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, e.Kubeconfig); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallCRDs creates (or updates) every CRD in the YAML files of dir in
// fsys and waits until the API server serves them.
func InstallCRDs(ctx context.Context, rc *rest.Config, fsys fs.FS, dir string) error {
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		return err
	}
	files, err := fs.Glob(fsys, path.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no CRDs in %s (run hack/kube/generate.sh)", dir)
	}
	var names []string
	for _, f := range files {
		b, err := fs.ReadFile(fsys, f)
		if err != nil {
			return err
		}
		for _, doc := range bytes.Split(b, []byte("\n---")) {
			if len(bytes.TrimSpace(bytes.Trim(doc, "-"))) == 0 {
				continue
			}
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal(doc, &u.Object); err != nil {
				return fmt.Errorf("parse %s: %w", f, err)
			}
			if _, err := dc.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
				if !apierrors.IsAlreadyExists(err) {
					return fmt.Errorf("create CRD from %s: %w", f, err)
				}
				cur, err := dc.Resource(crdGVR).Get(ctx, u.GetName(), metav1.GetOptions{})
				if err != nil {
					return err
				}
				u.SetResourceVersion(cur.GetResourceVersion())
				if _, err := dc.Resource(crdGVR).Update(ctx, u, metav1.UpdateOptions{}); err != nil {
					return fmt.Errorf("update CRD from %s: %w", f, err)
				}
			}
			names = append(names, u.GetName())
		}
	}
	for _, n := range names {
		if err := waitEstablished(ctx, dc, n); err != nil {
			return err
		}
	}
	return nil
}

func waitEstablished(ctx context.Context, dc dynamic.Interface, name string) error {
	for {
		u, err := dc.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRD %s not established: %w", name, errors.Join(ctx.Err(), err))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// WriteServiceAccountKey writes an ECDSA key pair (faster to make than RSA)
// for service account token signing.
func WriteServiceAccountKey(keyFile, pubFile string) error {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return err
	}
	return os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
