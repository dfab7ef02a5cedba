package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nexthop-net/nexthop/config"
)

// The scale comparison: N node namespaces on one bridge, each announcing
// its /24, all daemons started at once, timed until every kernel holds
// exactly the N-1 other blocks; once with nexthopd on every node, once
// with BIRD 2 configured as Calico configures it (harness_bird.go),
// alternating on the same namespaces.

// scaleHoldTime is the hold time of every session on both sides
// (nexthop's default; keepalive a third of it), so that idle CPU compares
// like with like. The harness's usual 3 s would triple the keepalives.
const scaleHoldTime = config.DefaultHoldTime

// scaleClusterID is the route-reflector cluster ID both reflectors share
// (a redundant pair), with nexthop and with BIRD.
var scaleClusterID = netip.MustParseAddr("244.0.0.1")

// Which daemon a scale run uses.
const (
	daemonNexthop = "nexthop"
	daemonBIRD    = "bird"
)

// scaleCluster is maxN node namespaces (the largest size any run needs),
// on which runs of nexthop and BIRD take turns, each on the first N nodes.
type scaleCluster struct {
	c    *Cluster
	base []config.Config // each node's config before peers
	hs   []netns.NsHandle
	nl   []*netlink.Handle
	// lastWatch is the current run's, for failure output.
	lastWatch *routeWatch
}

// newScaleCluster builds maxN nodes without pods and pins every underlay
// neighbour: the kernel's ARP table is shared by all namespaces and its
// garbage collector starts evicting at gc_thresh3 (1024 here), which a
// full mesh of 100 (9,900 entries) would overrun; permanent entries are
// not counted against it.
func newScaleCluster(tb testing.TB, maxN int) *scaleCluster {
	tb.Helper()
	c, err := New(Options{Nodes: maxN, NoPods: true, Log: tb})
	if err != nil {
		tb.Fatalf("build %d-node cluster: %v", maxN, err)
	}
	s := &scaleCluster{c: c}
	tb.Cleanup(s.close)
	macs := make([]net.HardwareAddr, maxN)
	links := make([]int, maxN)
	for i, n := range c.Nodes {
		s.base = append(s.base, n.Config)
		s.base[i].Peers = nil
		h, err := netns.GetFromName(n.NS)
		if err != nil {
			tb.Fatalf("open netns %s: %v", n.NS, err)
		}
		s.hs = append(s.hs, h)
		nl, err := netlink.NewHandleAt(h)
		if err != nil {
			tb.Fatalf("netlink in %s: %v", n.NS, err)
		}
		s.nl = append(s.nl, nl)
		l, err := nl.LinkByName(underlayLink)
		if err != nil {
			tb.Fatalf("find %s in %s: %v", underlayLink, n.NS, err)
		}
		macs[i], links[i] = l.Attrs().HardwareAddr, l.Attrs().Index
	}
	for i, n := range c.Nodes {
		for j, m := range c.Nodes {
			if i == j {
				continue
			}
			err := s.nl[i].NeighSet(&netlink.Neigh{
				LinkIndex: links[i], Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
				IP: m.Address.AsSlice(), HardwareAddr: macs[j],
			})
			if err != nil {
				tb.Fatalf("pin neighbour %s in %s: %v", m.Address, n.NS, err)
			}
		}
	}
	tb.Logf("scale cluster %s: %d nodes, %d permanent neighbour entries", c.Prefix, maxN, maxN*(maxN-1))
	return s
}

func (s *scaleCluster) close() {
	for _, h := range s.nl {
		h.Close()
	}
	for _, h := range s.hs {
		h.Close()
	}
	s.c.Close()
}

// scaleSpec is one measurement.
type scaleSpec struct {
	// N is how many nodes take part (the first N of the cluster).
	N int
	// Reflectors, when > 0, makes the first Reflectors nodes route
	// reflectors (one cluster ID) and the rest their clients, without the
	// node-to-node mesh.
	Reflectors int
	// Join starts the last node only once the other N-1 have converged,
	// and times that node joining.
	Join bool
	// Idle is the quiet window after convergence over which idle CPU is
	// measured; 0 skips it.
	Idle time.Duration
	// Timeout bounds the wait for convergence.
	Timeout time.Duration
}

func (sp scaleSpec) String() string {
	switch {
	case sp.Reflectors > 0:
		return fmt.Sprintf("%d reflectors + %d clients", sp.Reflectors, sp.N-sp.Reflectors)
	case sp.Join:
		return fmt.Sprintf("a node joining a mesh of %d", sp.N)
	}
	return fmt.Sprintf("full mesh of %d", sp.N)
}

// scaleResult is what one run of one daemon measured.
type scaleResult struct {
	Daemon string
	// Converge runs from the first daemon's start (for Join: the joining
	// daemon's) to the moment every kernel holds exactly its N-1 blocks.
	Converge time.Duration
	// CPU is the CPU-seconds (utime+stime) all daemons used over that time.
	CPU float64
	// AnonMiB and RSSMiB are RssAnon and VmRSS summed over all daemons,
	// read after the idle window (or at convergence without one).
	AnonMiB, RSSMiB float64
	// IdleCPU is all daemons' CPU over the idle window, % of one core.
	IdleCPU float64
	// Load is the 1-minute load average when the run started.
	Load float64
}

// peersOf says whom node i (0-based, of the first N) peers with, and
// which of them are its reflector clients.
func (sp scaleSpec) peersOf(i int) (peers []int, clients map[int]bool) {
	clients = map[int]bool{}
	for j := 0; j < sp.N; j++ {
		if j == i {
			continue
		}
		switch {
		case sp.Reflectors == 0:
		case i < sp.Reflectors: // a reflector peers with everyone
			if j >= sp.Reflectors {
				clients[j] = true
			}
		case j >= sp.Reflectors: // a client peers with reflectors only
			continue
		}
		peers = append(peers, j)
	}
	return peers, clients
}

// run measures one daemon on the spec's nodes, and leaves the namespaces
// as it found them (daemons gone, their routes flushed).
func (s *scaleCluster) run(tb testing.TB, daemon string, sp scaleSpec) (res scaleResult, err error) {
	res.Daemon = daemon
	res.Load = load1()
	nodes := s.c.Nodes[:sp.N]
	proto := netlink.RouteProtocol(RouteProtocol)
	if daemon == daemonBIRD {
		proto = BIRDRouteProtocol
	}
	procs := make([]*proc, sp.N)
	defer func() {
		if cerr := s.cleanup(procs, nodes); err == nil {
			err = cerr
		}
	}()
	if err := s.cleanup(nil, nodes); err != nil {
		return res, err
	}

	// Configurations first, so that the starts are back to back.
	for i, n := range nodes {
		peers, clients := sp.peersOf(i)
		if daemon == daemonBIRD {
			bc := BIRDConfig{Address: n.Address, AS: NodeAS, PodCIDR: n.PodCIDR(), Pool: PodPool, HoldTime: int(scaleHoldTime / time.Second)}
			if len(clients) > 0 {
				bc.ClusterID = scaleClusterID
			}
			for _, j := range peers {
				bc.Peers = append(bc.Peers, BIRDPeer{Address: nodes[j].Address, RRClient: clients[j]})
			}
			if err := s.c.WriteBIRDConfig(n, bc); err != nil {
				return res, err
			}
			continue
		}
		n.Config = s.base[n.Index-1]
		n.Config.HoldTime = config.Duration{Duration: scaleHoldTime}
		if len(clients) > 0 {
			n.Config.RouteReflectorClusterID = scaleClusterID
		}
		for _, j := range peers {
			n.Config.Peers = append(n.Config.Peers, config.Peer{
				Address: nodes[j].Address, AS: NodeAS, Description: nodes[j].Name,
				HoldTime: config.Duration{Duration: scaleHoldTime}, RouteReflectorClient: clients[j],
			})
		}
	}
	if daemon == daemonBIRD {
		if err := CheckBIRDConfig(nodes[0]); err != nil {
			return res, err
		}
	}
	start := func(i int) error {
		n := nodes[i]
		if daemon == daemonBIRD {
			p, err := s.c.StartBIRD(n)
			procs[i] = p
			return err
		}
		p, err := s.startNexthop(n)
		procs[i] = p
		return err
	}
	argsReady := func(i int) error {
		if daemon == daemonBIRD {
			return nil
		}
		bin, err := s.c.binary("nexthopd")
		if err != nil {
			return err
		}
		args, err := nodes[i].daemonArgs() // writes the YAML, validated
		if err != nil {
			return err
		}
		nodeArgs[nodes[i]] = append([]string{bin}, args...)
		return nil
	}
	for i := range nodes {
		if err := argsReady(i); err != nil {
			return res, err
		}
	}

	w, err := s.watch(nodes, proto)
	if err != nil {
		return res, err
	}
	defer w.close()
	first := sp.N
	if sp.Join {
		first = sp.N - 1
		w.want(nodes[:first])
	}
	t0 := time.Now()
	for i := 0; i < first; i++ {
		if err := start(i); err != nil {
			return res, err
		}
	}
	tDone, err := w.wait(sp.Timeout)
	if err != nil {
		return res, fmt.Errorf("%s, %s: %w\n%s", daemon, sp, err, s.logTails(daemon, nodes[:first], procs))
	}
	if sp.Join {
		if err := s.verify(w, nodes[:first]); err != nil {
			return res, err
		}
		// Let the mesh settle before the join is timed.
		time.Sleep(2 * time.Second)
		w.want(nodes)
		cpu0, err := cpuSeconds(procs[:first])
		if err != nil {
			return res, err
		}
		t0 = time.Now()
		if err := start(first); err != nil {
			return res, err
		}
		if tDone, err = w.wait(sp.Timeout); err != nil {
			return res, fmt.Errorf("%s, %s: %w\n%s", daemon, sp, err, s.logTails(daemon, nodes, procs))
		}
		cpu1, err := cpuSeconds(procs)
		if err != nil {
			return res, err
		}
		res.CPU = cpu1 - cpu0
	} else {
		if res.CPU, err = cpuSeconds(procs); err != nil {
			return res, err
		}
	}
	res.Converge = tDone.Sub(t0)
	if err := s.verify(w, nodes); err != nil {
		return res, err
	}
	if sp.Idle > 0 {
		// What follows convergence (End-of-RIB, GC) is not idle yet.
		time.Sleep(2 * time.Second)
		c0, err := cpuSeconds(procs)
		if err != nil {
			return res, err
		}
		w0 := time.Now()
		time.Sleep(sp.Idle)
		c1, err := cpuSeconds(procs)
		if err != nil {
			return res, err
		}
		res.IdleCPU = (c1 - c0) / time.Since(w0).Seconds() * 100
		if err := s.verify(w, nodes); err != nil {
			return res, fmt.Errorf("after the idle window: %w", err)
		}
	}
	for _, p := range procs {
		anon, err := statusKiB(p.Pid(), "RssAnon")
		if err != nil {
			return res, err
		}
		rss, err := statusKiB(p.Pid(), "VmRSS")
		if err != nil {
			return res, err
		}
		res.AnonMiB += mib(anon)
		res.RSSMiB += mib(rss)
	}
	return res, nil
}

// nodeArgs is the command line run for each node's nexthopd, prepared
// before the timed starts. Only the benchmark goroutine touches it.
var nodeArgs = map[*Node][]string{}

// startNexthop runs n's nexthopd without waiting for it to answer (see
// StartBIRD): StartDaemon's readiness check would serialise the starts.
func (s *scaleCluster) startNexthop(n *Node) (*proc, error) {
	argv, ok := nodeArgs[n]
	if !ok {
		return nil, fmt.Errorf("start nexthopd on %s: no command line prepared", n.Name)
	}
	n.logStart = 0
	if fi, err := os.Stat(n.LogPath()); err == nil {
		n.logStart = fi.Size()
	}
	p, err := startProc("nexthopd "+n.Name, n.LogPath(), append([]string{"ip", "netns", "exec", n.NS}, argv...)...)
	if err != nil {
		return nil, fmt.Errorf("start nexthopd on %s: %w", n.Name, err)
	}
	s.c.track(p)
	n.daemon = p
	return p, nil
}

// cleanup kills the run's daemons and flushes what they left in the
// kernels (SIGKILL withdraws nothing): both daemons' routes and
// nexthopd's state directory, so that every run starts from scratch.
func (s *scaleCluster) cleanup(procs []*proc, nodes []*Node) error {
	var wg sync.WaitGroup
	for _, p := range procs {
		if p != nil {
			wg.Add(1)
			go func() { defer wg.Done(); p.kill() }()
		}
	}
	wg.Wait()
	var errs []error
	for _, p := range procs {
		if p != nil {
			if done, _ := p.exited(); !done {
				errs = append(errs, fmt.Errorf("%s (pid %d) still running after SIGKILL", p.name, p.Pid()))
			}
		}
	}
	for _, n := range nodes {
		nl := s.nl[n.Index-1]
		for _, proto := range []netlink.RouteProtocol{RouteProtocol, BIRDRouteProtocol} {
			rs, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: proto, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
			if err != nil {
				errs = append(errs, fmt.Errorf("list routes in %s: %w", n.NS, err))
				continue
			}
			for _, r := range rs {
				if err := nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("flush %s in %s: %w", r.Dst, n.NS, err))
				}
			}
		}
		state := s.base[n.Index-1].StateDir
		if err := os.RemoveAll(state); err != nil {
			errs = append(errs, err)
		}
		if err := os.MkdirAll(state, 0o755); err != nil {
			errs = append(errs, err)
		}
		os.Remove(n.BIRDSocket())
	}
	return errors.Join(errs...)
}

func (s *scaleCluster) logTails(daemon string, nodes []*Node, procs []*proc) string {
	var b strings.Builder
	w := s.lastWatch
	for i, n := range nodes {
		if w != nil {
			if missing := w.missing(i); missing != "" {
				fmt.Fprintf(&b, "%s: %s\n", n.Name, missing)
			}
		}
		if i >= 3 {
			continue
		}
		path := n.LogPath()
		if daemon == daemonBIRD {
			path = n.BIRDLogPath()
		}
		fmt.Fprintf(&b, "----- %s %s log (%s), last 15 lines -----\n%s", n.Name, daemon, path, tail(path, 15))
	}
	for _, p := range procs {
		if p == nil {
			continue
		}
		if done, err := p.exited(); done {
			fmt.Fprintf(&b, "%s exited: %s\n", p.name, exitString(err))
		}
	}
	return b.String()
}

// routeWatch follows, by netlink subscription in each node's namespace,
// the pod blocks a daemon installs (its protocol, main table, unicast),
// and notes the moment every kernel holds exactly the blocks it should.
type routeWatch struct {
	nodes []*Node
	stop  chan struct{}
	wg    sync.WaitGroup

	mu       sync.Mutex
	tables   []*nsTable
	complete int
	doneAt   time.Time
	errs     []error
	changed  chan struct{}
}

type nsTable struct {
	own       netip.Prefix
	have      map[netip.Prefix]bool
	want      map[netip.Prefix]bool
	good, bad int // have∩want, have∖want
}

func (t *nsTable) done() bool { return t.good == len(t.want) && t.bad == 0 }

// watch subscribes to route changes in each node's namespace (existing
// routes listed first) and expects every node to hold every other's block.
func (s *scaleCluster) watch(nodes []*Node, proto netlink.RouteProtocol) (*routeWatch, error) {
	w := &routeWatch{nodes: nodes, stop: make(chan struct{}), changed: make(chan struct{}, 1)}
	for _, n := range nodes {
		w.tables = append(w.tables, &nsTable{own: n.PodCIDR(), have: map[netip.Prefix]bool{}})
	}
	w.want(nodes)
	s.lastWatch = w
	for i, n := range nodes {
		ch := make(chan netlink.RouteUpdate, 1024)
		h := s.hs[n.Index-1]
		err := netlink.RouteSubscribeWithOptions(ch, w.stop, netlink.RouteSubscribeOptions{
			Namespace:    &h,
			ListExisting: true,
			// Every node gets up to N-1 routes in a burst.
			ReceiveBufferSize:      4 << 20,
			ReceiveBufferForceSize: true,
			ErrorCallback: func(err error) {
				w.mu.Lock()
				w.errs = append(w.errs, fmt.Errorf("route subscription in %s: %w", n.NS, err))
				w.mu.Unlock()
				w.signal()
			},
		})
		if err != nil {
			w.close()
			return nil, fmt.Errorf("subscribe to routes in %s: %w", n.NS, err)
		}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for u := range ch {
				if u.Protocol != proto || u.Table != unix.RT_TABLE_MAIN || u.Dst == nil || u.Route.Type != unix.RTN_UNICAST {
					continue
				}
				pfx, ok := toPrefix(u.Dst)
				if !ok {
					continue
				}
				w.update(i, pfx, u.Type == unix.RTM_NEWROUTE)
			}
		}()
	}
	return w, nil
}

func toPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func (w *routeWatch) signal() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// want sets what each node's kernel should hold: the blocks of the given
// nodes other than its own. Nodes of the watch not in the list want
// nothing yet (a node about to join).
func (w *routeWatch) want(members []*Node) {
	w.mu.Lock()
	defer w.mu.Unlock()
	in := map[*Node]bool{}
	for _, m := range members {
		in[m] = true
	}
	w.complete = 0
	for i, t := range w.tables {
		t.want = map[netip.Prefix]bool{}
		if in[w.nodes[i]] {
			for _, m := range members {
				if m != w.nodes[i] {
					t.want[m.PodCIDR()] = true
				}
			}
		}
		t.good, t.bad = 0, 0
		for p := range t.have {
			if t.want[p] {
				t.good++
			} else {
				t.bad++
			}
		}
		if t.done() {
			w.complete++
		}
	}
	w.doneAt = time.Time{}
	if w.complete == len(w.tables) {
		w.doneAt = time.Now()
	}
}

func (w *routeWatch) update(i int, p netip.Prefix, add bool) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.tables[i]
	if t.have[p] == add || p == t.own {
		return
	}
	was := t.done()
	if add {
		t.have[p] = true
	} else {
		delete(t.have, p)
	}
	d := 1
	if !add {
		d = -1
	}
	if t.want[p] {
		t.good += d
	} else {
		t.bad += d
	}
	switch is := t.done(); {
	case is && !was:
		w.complete++
		if w.complete == len(w.tables) {
			w.doneAt = now
			w.signal()
		}
	case was && !is:
		w.complete--
		w.doneAt = time.Time{}
	}
}

// wait returns the moment every kernel first held exactly its blocks.
func (w *routeWatch) wait(timeout time.Duration) (time.Time, error) {
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		done, errs, complete := w.doneAt, errors.Join(w.errs...), w.complete
		w.mu.Unlock()
		if errs != nil {
			return time.Time{}, errs
		}
		if !done.IsZero() {
			return done, nil
		}
		select {
		case <-w.changed:
		case <-deadline:
			return time.Time{}, fmt.Errorf("%d of %d kernels hold exactly their blocks after %s", complete, len(w.tables), timeout)
		}
	}
}

// missing says what node i's kernel lacks or has too much ("" if right).
func (w *routeWatch) missing(i int) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.tables[i]
	var lack, extra []string
	for p := range t.want {
		if !t.have[p] {
			lack = append(lack, p.String())
		}
	}
	for p := range t.have {
		if !t.want[p] {
			extra = append(extra, p.String())
		}
	}
	if len(lack) == 0 && len(extra) == 0 {
		return ""
	}
	slices.Sort(lack)
	slices.Sort(extra)
	if len(lack) > 5 {
		lack = append(lack[:5], fmt.Sprintf("… (%d in all)", len(lack)))
	}
	var out []string
	if len(lack) > 0 {
		out = append(out, "lacks "+strings.Join(lack, " "))
	}
	if len(extra) > 0 {
		out = append(out, "has extra "+strings.Join(extra, " "))
	}
	return strings.Join(out, "; ")
}

func (w *routeWatch) close() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
}

// verify lists each kernel's routes (not the subscription's view) and
// checks it holds exactly the blocks the watch wants.
func (s *scaleCluster) verify(w *routeWatch, nodes []*Node) error {
	var errs []error
	for i, n := range nodes {
		rs, err := s.nl[n.Index-1].RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list routes in %s: %w", n.NS, err)
		}
		got := map[netip.Prefix]bool{}
		for _, r := range rs {
			if r.Dst == nil || r.Type != unix.RTN_UNICAST || (r.Protocol != RouteProtocol && r.Protocol != BIRDRouteProtocol) {
				continue
			}
			if p, ok := toPrefix(r.Dst); ok && PodPool.Contains(p.Addr()) && p != n.PodCIDR() {
				got[p] = true
			}
		}
		w.mu.Lock()
		want := w.tables[i].want
		w.mu.Unlock()
		for p := range want {
			if !got[p] {
				errs = append(errs, fmt.Errorf("%s's kernel lacks %s", n.Name, p))
			}
		}
		for p := range got {
			if !want[p] {
				errs = append(errs, fmt.Errorf("%s's kernel has %s, which it should not", n.Name, p))
			}
		}
		if len(errs) > 10 {
			break
		}
	}
	return errors.Join(errs...)
}

// cpuSeconds sums utime+stime of the given daemons; one that has exited
// fails the run (its CPU would be lost, and it should not have exited).
func cpuSeconds(procs []*proc) (float64, error) {
	var ticks uint64
	for _, p := range procs {
		if p == nil {
			continue
		}
		if done, err := p.exited(); done {
			return 0, fmt.Errorf("%s exited during the run: %s", p.name, exitString(err))
		}
		t, err := cpuTicks(p.Pid())
		if err != nil {
			return 0, err
		}
		ticks += t
	}
	return float64(ticks) / clkTck, nil
}

// load1 is the 1-minute load average.
func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// requireBIRD is requireHarness for BIRD: a skip outside CI, a failure
// in it (make deps installs bird2).
func requireBIRD(tb testing.TB) {
	tb.Helper()
	if err := CheckBIRD(); err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("needs BIRD (CI=true, so not skipping): %v", err)
		}
		tb.Skipf("needs BIRD: %v", err)
	}
}

// TestScaleMeshVsBIRD is the short version of BenchmarkScale: a full mesh
// of 30 nodes, nexthop then BIRD on the same namespaces. Both must
// converge (every kernel holds exactly the 29 other blocks), and nexthop
// within 3× BIRD's time in the same run: the one ratio this suite asserts.
func TestScaleMeshVsBIRD(t *testing.T) {
	requireHarness(t)
	requireBIRD(t)
	requireBinaries(t)
	const n = 30
	s := newScaleCluster(t, n)
	sp := scaleSpec{N: n, Timeout: 60 * time.Second}
	nh, err := s.run(t, daemonNexthop, sp)
	if err != nil {
		t.Fatal(err)
	}
	bird, err := s.run(t, daemonBIRD, sp)
	if err != nil {
		t.Fatal(err)
	}
	ratio := nh.Converge.Seconds() / bird.Converge.Seconds()
	t.Logf("full mesh of %d: nexthop %v (%.2f CPU-s, %.0f MiB anon), BIRD %v (%.2f CPU-s, %.0f MiB anon), time ratio %.2f, load %.2f",
		n, nh.Converge.Round(time.Millisecond), nh.CPU, nh.AnonMiB, bird.Converge.Round(time.Millisecond), bird.CPU, bird.AnonMiB, ratio, load1())
	if ratio > 3 {
		t.Errorf("nexthop took %v to converge a full mesh of %d, %.1f× BIRD's %v in the same run (at most 3× allowed)",
			nh.Converge.Round(time.Millisecond), n, ratio, bird.Converge.Round(time.Millisecond))
	}
}

// scaleSizes is NEXTHOP_SCALE_N ("10,30,60,100" by default): the mesh
// sizes BenchmarkScale measures. The largest is also the size of the
// route-reflector run and of the second join.
func scaleSizes() ([]int, error) {
	v := os.Getenv("NEXTHOP_SCALE_N")
	if v == "" {
		v = "10,30,60,100"
	}
	var sizes []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 3 || n > 200 {
			return nil, fmt.Errorf("NEXTHOP_SCALE_N=%q: want sizes 3..200 separated by commas", v)
		}
		sizes = append(sizes, n)
	}
	slices.Sort(sizes)
	return slices.Compact(sizes), nil
}

// envInt is an integer environment knob with a default.
func envInt(name string, def int) (int, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%s=%q: want a positive integer", name, v)
	}
	return n, nil
}

// BenchmarkScale runs nexthop and BIRD 2 side by side on the same
// namespaces, alternating (nexthop, BIRD, nexthop, BIRD…),
// NEXTHOP_SCALE_PAIRS pairs (3 by default) for each of:
//
//   - mesh<N>: a full iBGP mesh of N nodes for each N of NEXTHOP_SCALE_N,
//     all daemons started at once;
//   - rr2+<N-2>: 2 route reflectors and N-2 clients (N the largest size),
//     all started at once;
//   - join<N>: one node joining a converged mesh of N-1 (N = 30 and the
//     largest size), timed from its start.
//
// Each reports, medians over the pairs: time to converge (every kernel
// holds exactly its N-1 blocks), the daemons' CPU-seconds to get there,
// their summed anonymous memory (RssAnon) and RSS, their summed idle CPU
// over 10 s after convergence (% of one core), the ratios nexthop / BIRD,
// and load1, the load average when the sub-benchmark started. Use
// -benchtime 1x: the pairs are the repetitions.
func BenchmarkScale(b *testing.B) {
	if err := CheckTools(); err != nil {
		b.Skipf("needs root and system tools: %v", err)
	}
	requireBIRD(b)
	sizes, err := scaleSizes()
	if err != nil {
		b.Fatal(err)
	}
	pairs, err := envInt("NEXTHOP_SCALE_PAIRS", 3)
	if err != nil {
		b.Fatal(err)
	}
	maxN := sizes[len(sizes)-1]
	s := newScaleCluster(b, maxN)
	timeout := func(n int) time.Duration { return 30*time.Second + time.Duration(n)*time.Second }
	type named struct {
		name string
		sp   scaleSpec
	}
	var specs []named
	for _, n := range sizes {
		specs = append(specs, named{fmt.Sprintf("mesh%d", n), scaleSpec{N: n, Idle: quietWindow, Timeout: timeout(n)}})
	}
	if maxN >= 4 {
		specs = append(specs, named{fmt.Sprintf("rr2+%d", maxN-2), scaleSpec{N: maxN, Reflectors: 2, Idle: quietWindow, Timeout: timeout(maxN)}})
	}
	for _, n := range slices.Compact([]int{min(30, maxN), maxN}) {
		specs = append(specs, named{fmt.Sprintf("join%d", n), scaleSpec{N: n, Join: true, Timeout: timeout(n)}})
	}
	for _, ns := range specs {
		b.Run(ns.name, func(b *testing.B) {
			l := load1()
			var nh, bird []scaleResult
			for i := 0; i < pairs; i++ {
				for _, d := range []string{daemonNexthop, daemonBIRD} {
					r, err := s.run(b, d, ns.sp)
					if err != nil {
						b.Fatal(err)
					}
					b.Logf("%s, pair %d, %s: converged in %v, %.2f CPU-s, %.0f MiB anon, %.0f MiB RSS, idle %.1f %% of a core, load %.2f",
						ns.sp, i+1, d, r.Converge.Round(time.Millisecond), r.CPU, r.AnonMiB, r.RSSMiB, r.IdleCPU, r.Load)
					if d == daemonNexthop {
						nh = append(nh, r)
					} else {
						bird = append(bird, r)
					}
				}
			}
			report := func(unit string, get func(scaleResult) float64) {
				a, c := median(nh, get), median(bird, get)
				b.ReportMetric(a, "nexthop-"+unit)
				b.ReportMetric(c, "bird-"+unit)
				if c > 0 {
					b.ReportMetric(a/c, unit+"-ratio")
				}
			}
			report("s", func(r scaleResult) float64 { return r.Converge.Seconds() })
			report("cpu-s", func(r scaleResult) float64 { return r.CPU })
			report("anon-MiB", func(r scaleResult) float64 { return r.AnonMiB })
			report("rss-MiB", func(r scaleResult) float64 { return r.RSSMiB })
			if ns.sp.Idle > 0 {
				report("idle-cpu-%", func(r scaleResult) float64 { return r.IdleCPU })
			}
			b.ReportMetric(float64(ns.sp.N), "nodes")
			b.ReportMetric(float64(pairs), "pairs")
			b.ReportMetric(l, "load1")
		})
	}
}

// median of one figure over runs.
func median(rs []scaleResult, get func(scaleResult) float64) float64 {
	v := make([]float64, 0, len(rs))
	for _, r := range rs {
		v = append(v, get(r))
	}
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}
