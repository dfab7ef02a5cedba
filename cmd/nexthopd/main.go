// Command nexthopd is the nexthop node daemon: an embedded BGP speaker that
// announces the node's pod block and programs learned routes into the kernel.
//
// Standalone, it reads one YAML file (--config). In Kubernetes mode
// (--kubernetes, or --kubeconfig) it builds the same config from the API:
// Nodes, BGPConfiguration, BGPPeers, IPPools and a base file with the
// cluster-wide settings (--base-config, the DaemonSet's ConfigMap). With no
// IPPool at all it creates one, so pods have egress NAT from the start
// (--default-ippool-cidr).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/daemon"
	"github.com/nexthop-net/nexthop/kube"
)

// Exit codes: 2 for a bad command line or config (restarting will not
// help), 1 for a failure, 3 when a config change needs a restart (the
// kubelet restarts the container; routes stay in place meanwhile).
const (
	exitFailure = 1
	exitUsage   = 2
	exitRestart = 3
)

// options are the command line.
type options struct {
	config, kubeconfig, nodeName, baseConfig, healthListen string
	kubernetes                                             bool
	defaultPoolCIDR                                        string
	defaultPoolNAT                                         bool
	set                                                    map[string]bool
}

// newFlags defines the command line on fs; the DaemonSet in
// manifests/base/daemonset.yaml passes some of these (main_test.go checks
// it passes nothing else).
func newFlags(fs *flag.FlagSet) *options {
	o := &options{}
	fs.StringVar(&o.config, "config", "/etc/nexthop/node.yaml", "standalone config file (YAML)")
	fs.BoolVar(&o.kubernetes, "kubernetes", false, "take the config from the Kubernetes API (implied by --kubeconfig)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; empty in a pod means the in-cluster service account")
	fs.StringVar(&o.nodeName, "node-name", "", "this node's Node name (default $NODE_NAME, then the hostname)")
	fs.StringVar(&o.baseConfig, "base-config", "", "Kubernetes mode: YAML with the cluster-wide settings (timers, paths, log level); node fields come from the API")
	fs.StringVar(&o.healthListen, "health-listen", "127.0.0.1:9099", `where /healthz and /readyz are served; "none" disables them`)
	fs.StringVar(&o.defaultPoolCIDR, "default-ippool-cidr", "auto",
		`Kubernetes mode: CIDR of the IPPool "default" created when the cluster has no IPPool; "auto" is the cluster's pod CIDR (kubeadm-config, else `+kube.FallbackPoolCIDR+`), "none" creates no pool`)
	fs.BoolVar(&o.defaultPoolNAT, "default-ippool-nat-outgoing", true, `Kubernetes mode: natOutgoing of the IPPool "default" created by --default-ippool-cidr`)
	return o
}

// checkMode refuses flags of the other mode: accepted and ignored, they
// would look like they work.
func (o *options) checkMode(kubeMode bool) error {
	if kubeMode && o.set["config"] {
		return errors.New("--config is the standalone mode; with --kubernetes/--kubeconfig use --base-config for the cluster-wide settings")
	}
	if !kubeMode {
		for _, f := range []string{"base-config", "node-name", "default-ippool-cidr", "default-ippool-nat-outgoing"} {
			if o.set[f] {
				return fmt.Errorf("--%s needs --kubernetes (or --kubeconfig)", f)
			}
		}
	}
	return nil
}

// defaultPool reads the --default-ippool-* flags; nil for "none".
func (o *options) defaultPool() (*kube.DefaultPool, error) {
	p := kube.DefaultPool{NATOutgoing: o.defaultPoolNAT}
	switch o.defaultPoolCIDR {
	case "none":
		if o.set["default-ippool-nat-outgoing"] {
			return nil, errors.New("--default-ippool-nat-outgoing has no pool to apply to with --default-ippool-cidr=none")
		}
		return nil, nil
	case "auto":
	default:
		c, err := netip.ParsePrefix(o.defaultPoolCIDR)
		if err != nil || !c.Addr().Is4() || c.Bits() == 0 || c != c.Masked() {
			return nil, fmt.Errorf(`--default-ippool-cidr=%q: want "auto", "none" or an IPv4 network such as %s`, o.defaultPoolCIDR, kube.FallbackPoolCIDR)
		}
		p.CIDR = c
	}
	return &p, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "status" {
		os.Exit(runStatus(os.Args[2:], os.Stdout, os.Stderr))
	}
	oneProcessor()
	o := newFlags(flag.CommandLine)
	flag.Parse()
	o.set = map[string]bool{}
	flag.Visit(func(f *flag.Flag) { o.set[f.Name] = true })
	kubeMode := o.kubernetes || o.kubeconfig != ""

	usage := func(err error) {
		fmt.Fprintf(os.Stderr, "nexthopd: %v\n", err)
		os.Exit(exitUsage)
	}
	if flag.NArg() > 0 {
		usage(fmt.Errorf("unexpected arguments %q", flag.Args()))
	}
	if err := o.checkMode(kubeMode); err != nil {
		usage(err)
	}
	if err := config.ValidateListen(o.healthListen); err != nil {
		usage(fmt.Errorf("--health-listen: %w", err))
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	var log *slog.Logger
	if kubeMode {
		pool, perr := o.defaultPool()
		if perr != nil {
			usage(perr)
		}
		var opts []kube.Option
		if pool != nil {
			opts = append(opts, kube.WithDefaultPool(*pool))
		}
		log, err = runKubernetes(ctx, o.kubeconfig, o.nodeName, o.baseConfig, o.healthListen, opts, usage)
	} else {
		log, err = runStandalone(ctx, o.config, o.healthListen, usage)
	}
	switch {
	case err == nil:
	case errors.Is(err, daemon.ErrRestartRequired):
		log.Warn("exiting to apply a config change; the kubelet (or your service manager) restarts nexthopd", "err", err)
		os.Exit(exitRestart)
	case errors.Is(err, daemon.ErrConfig):
		log.Error("nexthopd cannot start with this config", "err", err)
		os.Exit(exitUsage)
	default:
		log.Error("nexthopd failed", "err", err)
		os.Exit(exitFailure)
	}
}

func runStandalone(ctx context.Context, path, healthListen string, usage func(error)) (*slog.Logger, error) {
	cfg, err := config.Load(path)
	if err != nil {
		usage(err)
	}
	log := newLogger(cfg.LogLevel).With("node", cfg.NodeName)
	log.Info("starting", "config", path, "address", cfg.Address, "as", cfg.LocalAS, "podCIDRs", cfg.PodCIDRs, "peers", len(cfg.Peers))
	h, err := health(ctx, healthListen, log)
	if err != nil {
		return log, err
	}
	return log, daemon.RunWith(ctx, cfg, log, daemon.Options{Health: h})
}

func runKubernetes(ctx context.Context, kubeconfig, nodeName, basePath, healthListen string, opts []kube.Option, usage func(error)) (*slog.Logger, error) {
	base, err := loadBase(basePath)
	if err != nil {
		usage(err)
	}
	if nodeName == "" {
		nodeName = os.Getenv("NODE_NAME")
	}
	if nodeName == "" {
		if nodeName, err = os.Hostname(); err != nil {
			usage(fmt.Errorf("no --node-name, no $NODE_NAME, and no hostname: %w", err))
		}
	}
	log := newLogger(base.LogLevel).With("node", nodeName)
	// client-go logs through klog: into the same handler, same format.
	klog.SetSlogLogger(log.With("source", "client-go"))

	rc, err := restConfig(kubeconfig)
	if err != nil {
		usage(err)
	}
	rc.UserAgent = "nexthopd/" + nodeName
	log.Info("starting in Kubernetes mode", "apiServer", rc.Host, "baseConfig", basePath)
	h, err := health(ctx, healthListen, log)
	if err != nil {
		return log, err
	}
	return log, daemon.RunKubernetes(ctx, daemon.KubeOptions{Rest: rc, NodeName: nodeName, Base: base, Health: h, SourceOptions: opts}, log)
}

// restConfig is the kubeconfig file when given, else the pod's service
// account.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return rc, nil
	}
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("not in a pod, so --kubeconfig is needed: %w", err)
	}
	return rc, nil
}

// loadBase reads the cluster-wide settings strictly (an unknown field is a
// typo) without validating: they are only complete once the API has filled
// in the node. Node-specific fields are refused rather than silently
// overwritten.
func loadBase(path string) (config.Config, error) {
	var c config.Config
	if path == "" {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("read base config: %w", err)
	}
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return c, fmt.Errorf("base config %s: %w", path, err)
	}
	var fromAPI []string
	for field, isSet := range map[string]bool{
		"nodeName": c.NodeName != "", "address": c.Address.IsValid(), "routerID": c.RouterID.IsValid(),
		"localAS": c.LocalAS != 0, "podCIDR": c.PodCIDR.IsValid(), "podCIDRs": len(c.PodCIDRs) > 0, "addressV6": c.AddressV6.IsValid(), "peers": len(c.Peers) > 0,
		"routeReflectorClusterID": c.RouteReflectorClusterID.IsValid(),
	} {
		if isSet {
			fromAPI = append(fromAPI, field)
		}
	}
	if len(fromAPI) > 0 {
		slices.Sort(fromAPI)
		return c, fmt.Errorf("base config %s sets %s: in Kubernetes mode these come from the API (Node, BGPConfiguration, BGPPeer)",
			path, strings.Join(fromAPI, ", "))
	}
	return c, nil
}

// health serves the probes unless disabled.
func health(ctx context.Context, addr string, log *slog.Logger) (*daemon.Health, error) {
	if addr == "" || addr == "none" {
		return nil, nil
	}
	h := daemon.NewHealth()
	if err := daemon.ServeHealth(ctx, addr, h, log); err != nil {
		return nil, err
	}
	return h, nil
}

func newLogger(level string) *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: parseLevel(level), ReplaceAttr: microseconds}))
}

// microseconds stamps log lines to the µs: convergence is measured in
// milliseconds, and the default millisecond stamps hide it.
func microseconds(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey && len(groups) == 0 {
		a.Value = slog.StringValue(a.Value.Time().UTC().Format("2006-01-02T15:04:05.000000Z07:00"))
	}
	return a
}

func parseLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return slog.LevelInfo
	}
	return l
}

// oneProcessor runs the daemon's Go code on one processor unless
// GOMAXPROCS says otherwise. Its work is sequential: GoBGP's server loop is
// one goroutine and the route loop is the only writer, as BIRD is one
// thread. A second processor only adds wake-ups across threads: on the
// 2-core machine of docs/benchmarks.md, one processor took a converged
// 100-node mesh's idle cost (keepalives) from 73 % to 58 % of a core, and
// its start-up CPU moved within the noise.
func oneProcessor() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
}
