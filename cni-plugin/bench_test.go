package cniplugin

import (
	"context"
	"fmt"
	"slices"
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
	requireRoot(b)
	bin := buildPlugins(b)
	host := newTestHost(b, "10.84.0.0/22")
	pod := newNetNS(b, "pod")
	ctx := context.Background()
	cni := libcni.NewCNIConfigWithCacheDir([]string{bin}, b.TempDir(), nil)

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
	type sample struct{ add, del []time.Duration }
	runs := map[string]*sample{"nexthop": {}, "ptp+host-local": {}}
	lists := map[string]*libcni.NetworkConfigList{"nexthop": nexthop, "ptp+host-local": ptp}

	once := func(name string, i int) {
		rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("nhc-bench-%d", i), NetNS: pod.Path(), IfName: "eth0"}
		err := host.ns.Do(func(ns.NetNS) error {
			t0 := time.Now()
			if _, err := cni.AddNetworkList(ctx, lists[name], rt); err != nil {
				return fmt.Errorf("%s ADD: %w", name, err)
			}
			t1 := time.Now()
			if err := cni.DelNetworkList(ctx, lists[name], rt); err != nil {
				return fmt.Errorf("%s DEL: %w", name, err)
			}
			runs[name].add = append(runs[name].add, t1.Sub(t0))
			runs[name].del = append(runs[name].del, time.Since(t1))
			return nil
		})
		if err != nil {
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

	nh, ref := runs["nexthop"], runs["ptp+host-local"]
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
