package cniplugin

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
)

// BenchmarkAddDel compares ADD and DEL latency of nexthop with the reference
// ptp+host-local, both through libcni and real plugin binaries, alternating
// per iteration so both see the same machine. Run with e.g.
//
//	go test -run '^$' -bench AddDel -benchtime 100x ./cni-plugin/
func BenchmarkAddDel(b *testing.B) {
	e := newBenchEnv(b)
	pod := newNetNS(b, "pod")
	once := func(name string, i int) {
		rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("nhc-bench-%d", i), NetNS: pod.Path(), IfName: "eth0"}
		if err := e.addDel(name, rt, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		// Alternate which goes first so neither always pays a cold cache.
		if i%2 == 0 {
			once("nexthop", i)
			once("ptp+host-local", i)
		} else {
			once("ptp+host-local", i)
			once("nexthop", i)
		}
	}
	b.StopTimer()
	e.report(b)
}

// BenchmarkAddDelParallel50 adds 50 pods at once, then deletes them at once,
// for each plugin in turn, every iteration: latency under concurrency, where
// nexthop's IPAM serialises durable writes and host-local takes a file lock.
// Run it -benchtime 6x or more (make bench-cni): 300 samples per plugin,
// so that the p99 is not one unlucky ADD among 100.
func BenchmarkAddDelParallel50(b *testing.B) {
	const pods = 50
	e := newBenchEnv(b)
	netnss := make([]ns.NetNS, pods)
	for i := range netnss {
		netnss[i] = newNetNS(b, fmt.Sprintf("p%d", i))
	}
	round := func(name string, iter int) {
		var wg sync.WaitGroup
		errs := make(chan error, pods)
		start := make(chan struct{})
		for i := range pods {
			rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("nhc-par-%d-%d", iter, i), NetNS: netnss[i].Path(), IfName: "eth0"}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := e.addDel(name, rt, start); err != nil {
					errs <- err
				}
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			round("nexthop", i)
			round("ptp+host-local", i)
		} else {
			round("ptp+host-local", i)
			round("nexthop", i)
		}
	}
	b.StopTimer()
	e.report(b)
}

// benchEnv is both plugin chains over one host namespace, with the latency
// samples taken so far.
type benchEnv struct {
	ctx   context.Context
	cni   *libcni.CNIConfig
	host  *testHost
	lists map[string]*libcni.NetworkConfigList
	mu    sync.Mutex
	runs  map[string]*samples
}

type samples struct{ add, del []time.Duration }

func newBenchEnv(b *testing.B) *benchEnv {
	requireRoot(b)
	bin := buildPlugins(b)
	host := newTestHost(b, "10.84.0.0/22")
	nexthop, err := libcni.ConfListFromBytes(fmt.Appendf(nil,
		`{"cniVersion":"1.1.0","name":"nexthop-bench","plugins":[{"type":"nexthop","ipamSocket":%q}]}`, host.sock))
	if err != nil {
		b.Fatal(err)
	}
	ptp, err := libcni.ConfListFromBytes(fmt.Appendf(nil,
		`{"cniVersion":"1.1.0","name":"ptp-bench","plugins":[{"type":"ptp","ipam":{"type":"host-local","subnet":"10.88.0.0/22","dataDir":%q}}]}`, b.TempDir()))
	if err != nil {
		b.Fatal(err)
	}
	return &benchEnv{
		ctx:   context.Background(),
		cni:   libcni.NewCNIConfigWithCacheDir([]string{bin}, b.TempDir(), nil),
		host:  host,
		lists: map[string]*libcni.NetworkConfigList{"nexthop": nexthop, "ptp+host-local": ptp},
		runs:  map[string]*samples{"nexthop": {}, "ptp+host-local": {}},
	}
}

// addDel times one ADD then one DEL of rt through chain name, run from the
// host namespace; with start set, the ADD waits for it to close.
func (e *benchEnv) addDel(name string, rt *libcni.RuntimeConf, start chan struct{}) error {
	var add, del time.Duration
	err := e.host.ns.Do(func(ns.NetNS) error {
		if start != nil {
			<-start
		}
		t0 := time.Now()
		if _, err := e.cni.AddNetworkList(e.ctx, e.lists[name], rt); err != nil {
			return fmt.Errorf("%s ADD: %w", name, err)
		}
		t1 := time.Now()
		if err := e.cni.DelNetworkList(e.ctx, e.lists[name], rt); err != nil {
			return fmt.Errorf("%s DEL: %w", name, err)
		}
		add, del = t1.Sub(t0), time.Since(t1)
		return nil
	})
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.runs[name].add = append(e.runs[name].add, add)
	e.runs[name].del = append(e.runs[name].del, del)
	return nil
}

func (e *benchEnv) report(b *testing.B) {
	nh, ref := e.runs["nexthop"], e.runs["ptp+host-local"]
	for _, m := range []struct {
		op     string
		nh, pt []time.Duration
	}{{"add", nh.add, ref.add}, {"del", nh.del, ref.del}} {
		for _, q := range []float64{0.50, 0.99} {
			a, p := quantile(m.nh, q), quantile(m.pt, q)
			tag := fmt.Sprintf("%s-p%.0f", m.op, q*100)
			b.ReportMetric(ms(a), "nexthop-"+tag+"-ms")
			b.ReportMetric(ms(p), "ptp-"+tag+"-ms")
			b.ReportMetric(ms(a)/ms(p), tag+"-ratio")
			b.Logf("%s: nexthop %.2f ms, ptp+host-local %.2f ms, ratio %.2f (n=%d)", tag, ms(a), ms(p), ms(a)/ms(p), len(m.nh))
		}
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q*float64(len(s)-1) + 0.5)
	return s[i]
}
