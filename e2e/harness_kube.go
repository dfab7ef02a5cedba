package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"
)

// How a node reaches the API server in Kubernetes mode: 127.0.0.1:NodeAPIPort
// of its own namespace, relayed by the harness to the API server on the
// host's loopback (see UseKubernetes). NodeHealthPort is the daemon's
// /healthz and /readyz, also on the node's loopback.
const (
	NodeAPIPort    = 6443
	NodeHealthPort = 9099
)

// UseKubernetes makes n's daemon run in Kubernetes mode from its next
// start: `nexthopd --kubeconfig` with a bearer token, and a base config
// holding the harness's timers and paths; everything node-specific comes
// from the API (the test creates n's Node object).
//
// The API server (kubetest) listens on the host's 127.0.0.1, which a node
// namespace cannot reach. Rather than give the host an address on the
// test underlay (a route in the root namespace, visible to the machine)
// or move the API server into a namespace (every client in the test
// process would then need a dialer into it), the harness relays: a
// listener on 127.0.0.1:NodeAPIPort inside n's namespace, whose socket is
// created there by one OS thread that enters the namespace and leaves
// again (ns.WithNetNSPath), and whose connections the test process
// forwards to apiAddr from the root namespace. Nothing outside the
// cluster's namespaces changes, the daemon uses a plain kubeconfig, and
// Close removes it all.
func (c *Cluster) UseKubernetes(n *Node, apiAddr, token string) error {
	r, err := newRelay(n.NS, "127.0.0.1:"+strconv.Itoa(NodeAPIPort), apiAddr)
	if err != nil {
		return fmt.Errorf("relay to the API server for %s: %w", n.Name, err)
	}
	c.closeLater(r)
	cfg := clientcmdapi.NewConfig()
	// The API server's certificate is self-signed, made at its start.
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:" + strconv.Itoa(NodeAPIPort), InsecureSkipTLSVerify: true}
	cfg.AuthInfos["nexthop"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "nexthop"}
	cfg.CurrentContext = "e2e"
	path := filepath.Join(n.dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig for %s: %w", n.Name, err)
	}
	n.kubeconfig = path
	return nil
}

// daemonArgs writes what the daemon reads at start and returns its flags.
func (n *Node) daemonArgs() ([]string, error) {
	if n.kubeconfig == "" {
		conf, err := n.writeConfig()
		if err != nil {
			return nil, err
		}
		return []string{"--config", conf}, nil
	}
	// The ConfigMap's part: cluster-wide settings only (nexthopd refuses
	// node fields there).
	base := map[string]any{
		"holdTime":    n.Config.HoldTime,
		"initialSync": n.Config.InitialSync,
		"grpcListen":  n.Config.GRPCListen,
		"ipamSocket":  n.Config.IPAMSocket,
		"stateDir":    n.Config.StateDir,
		"logLevel":    n.Config.LogLevel,
	}
	b, err := yaml.Marshal(base)
	if err != nil {
		return nil, fmt.Errorf("marshal base config for %s: %w", n.Name, err)
	}
	path := filepath.Join(n.dir, "base.yaml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return nil, fmt.Errorf("write base config for %s: %w", n.Name, err)
	}
	return []string{"--kubeconfig", n.kubeconfig, "--node-name", n.Name, "--base-config", path,
		"--health-listen", "127.0.0.1:" + strconv.Itoa(NodeHealthPort)}, nil
}

// DaemonExit reports whether n's daemon has exited, and its exit code
// (-1 when killed by a signal).
func (n *Node) DaemonExit() (exited bool, code int) {
	if n.daemon == nil {
		return false, 0
	}
	if done, _ := n.daemon.exited(); !done {
		return false, 0
	}
	return true, n.daemon.cmd.ProcessState.ExitCode()
}

// DaemonPid is the pid of n's current daemon process (0 if never started).
func (n *Node) DaemonPid() int {
	if n.daemon == nil {
		return 0
	}
	return n.daemon.Pid()
}

// NodeHTTPGet fetches url from inside n's namespace (the daemon's health
// endpoint listens on the node's loopback) and returns status and body.
func NodeHTTPGet(n *Node, url string) (int, string, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := ns.WithNetNSPath(NetNSPath(n.NS), func(ns.NetNS) error {
				var err error
				conn, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", fmt.Errorf("GET %s in %s: %w", url, n.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return resp.StatusCode, "", fmt.Errorf("GET %s in %s: read body: %w", url, n.Name, err)
	}
	return resp.StatusCode, string(b), nil
}

// relay forwards TCP connections accepted in one namespace to an address
// reached from another: newRelay listens in a node namespace and dials from
// the root namespace, newRelayInto the other way round.
type relay struct {
	l    net.Listener
	dial func() (net.Conn, error)

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newRelay(nsName, listen, target string) (*relay, error) {
	var l net.Listener
	// A socket belongs to the namespace it was created in, whichever
	// thread later accepts on it.
	err := ns.WithNetNSPath(NetNSPath(nsName), func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", listen)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", listen, nsName, err)
	}
	dial := func() (net.Conn, error) { return net.DialTimeout("tcp", target, 5*time.Second) }
	r := &relay{l: l, dial: dial, conns: map[net.Conn]struct{}{}}
	go r.serve()
	return r, nil
}

// newRelayInto listens on listen in the root namespace and forwards each
// connection to target as dialled from inside namespace nsName: how the
// test process and a user's kubectl reach an API server that lives in a
// namespace of the cluster.
func newRelayInto(nsName, listen, target string) (*relay, error) {
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", listen, err)
	}
	dial := func() (net.Conn, error) {
		var conn net.Conn
		err := ns.WithNetNSPath(NetNSPath(nsName), func(ns.NetNS) error {
			var err error
			conn, err = net.DialTimeout("tcp", target, 5*time.Second)
			return err
		})
		return conn, err
	}
	r := &relay{l: l, dial: dial, conns: map[net.Conn]struct{}{}}
	go r.serve()
	return r, nil
}

// Addr is where the relay listens.
func (r *relay) Addr() string { return r.l.Addr().String() }

func (r *relay) serve() {
	for {
		in, err := r.l.Accept()
		if err != nil {
			return // closed
		}
		go r.pipe(in)
	}
}

func (r *relay) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	for _, c := range cs {
		r.conns[c] = struct{}{}
	}
	return true
}

func (r *relay) pipe(in net.Conn) {
	out, err := r.dial()
	if err != nil {
		in.Close()
		return
	}
	if !r.track(in, out) {
		in.Close()
		out.Close()
		return
	}
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		done <- struct{}{}
	}
	go cp(out, in)
	go cp(in, out)
	// Either side ending ends both: a half-open API connection would
	// only delay the client's reconnect.
	<-done
	in.Close()
	out.Close()
	<-done
	r.mu.Lock()
	delete(r.conns, in)
	delete(r.conns, out)
	r.mu.Unlock()
}

// Close stops accepting and cuts every relayed connection.
func (r *relay) Close() error {
	r.mu.Lock()
	r.closed = true
	conns := r.conns
	r.conns = map[net.Conn]struct{}{}
	r.mu.Unlock()
	err := r.l.Close()
	for c := range conns {
		c.Close()
	}
	return err
}
