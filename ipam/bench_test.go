package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkAllocateParallel50 is the IPAM share of 50 parallel CNI ADDs and
// DELs: 50 allocations at once, then their 50 releases at once, on a store
// in the test's temp dir (its fsync is what group commit saves). It reports
// the p50 and p99 latency of one Allocate and one Release over every
// iteration's calls.
//
//	go test -run '^$' -bench AllocateParallel50 -benchtime 20x ./ipam/
func BenchmarkAllocateParallel50(b *testing.B) {
	benchmarkAllocateParallel50(b, netip.MustParsePrefix("10.6.0.0/24"))
}

// BenchmarkAllocateParallel50DualStack is the same on a dual-stack node: an
// IPv4 and an IPv6 (/64) address per allocation, in its one record.
//
//	go test -run '^$' -bench AllocateParallel50DualStack -benchtime 20x ./ipam/
func BenchmarkAllocateParallel50DualStack(b *testing.B) {
	benchmarkAllocateParallel50(b, netip.MustParsePrefix("10.6.0.0/24"), netip.MustParsePrefix("fd00:10:6::/64"))
}

func benchmarkAllocateParallel50(b *testing.B, blocks ...netip.Prefix) {
	const par = 50
	a, err := Open(context.Background(), filepath.Join(b.TempDir(), "ipam.db"), blocks, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	var allocs, releases []time.Duration
	var mu sync.Mutex
	round := func(iter int, op func(id string) error, into *[]time.Duration) {
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range par {
			id := fmt.Sprintf("c-%d-%d", iter, i)
			wg.Go(func() {
				<-start
				t0 := time.Now()
				if err := op(id); err != nil {
					b.Error(err)
				}
				d := time.Since(t0)
				mu.Lock()
				*into = append(*into, d)
				mu.Unlock()
			})
		}
		close(start)
		wg.Wait()
	}
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		round(i, func(id string) error {
			_, err := a.Allocate(ctx, Request{ContainerID: id, IfName: "eth0"})
			return err
		}, &allocs)
		round(i, func(id string) error {
			_, found, err := a.Release(ctx, id, "eth0")
			if err == nil && !found {
				err = fmt.Errorf("release %s: not found", id)
			}
			return err
		}, &releases)
	}
	b.StopTimer()
	for _, m := range []struct {
		name string
		d    []time.Duration
	}{{"allocate", allocs}, {"release", releases}} {
		slices.Sort(m.d)
		for _, q := range []float64{0.50, 0.99} {
			v := float64(m.d[int(q*float64(len(m.d)-1)+0.5)]) / float64(time.Millisecond)
			b.ReportMetric(v, fmt.Sprintf("%s-p%.0f-ms", m.name, q*100))
		}
	}
}
