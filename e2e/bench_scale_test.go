package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// scalePrefixes is how many external /24s the ToR announces in
// BenchmarkDaemonRSS10k: 10.100.0.0/24 … 10.139.15.0/24, all outside the
// pod pool.
const scalePrefixes = 10000

// quietWindow is how long idle CPU is sampled after convergence.
const quietWindow = 10 * time.Second

// clkTck is USER_HZ, the unit of utime/stime in /proc/<pid>/stat (100 on
// every Linux architecture Go supports here).
const clkTck = 100

// BenchmarkDaemonRSS10k measures node1's nexthopd holding 10,000 learned
// routes from an FRR ToR (2 nodes + ToR):
//
//   - rss-idle-MiB: the daemon's VmRSS with its sessions up and 0 learned
//     routes (baseline); rss-10k-MiB with all 10,000 in its kernel; the ratio;
//   - frr-bgpd-rss-10k-MiB: FRR bgpd's VmRSS originating the same 10,000
//     (a second baseline: another BGP speaker holding the same table);
//   - idle-cpu-%: the daemon's utime+stime over 10 s of quiet after
//     convergence, in % of one core, next to FRR bgpd's over the same 10 s;
//   - announce→kernel-s: from vtysh returning (all 10,000 `network`
//     statements accepted) to all 10,000 in node1's kernel (proto 201), and
//     frr-config-s, how long vtysh took (bgpd may start sending during it).
//     No baseline.
//
// The whole measurement runs once whatever b.N is; use -benchtime 1x.
func BenchmarkDaemonRSS10k(b *testing.B) {
	if err := CheckTools(); err != nil {
		b.Skipf("needs root and system tools: %v", err)
	}
	c, err := New(Options{Nodes: 2, ToR: true, NoPods: true})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	n1 := c.Nodes[0]
	if err := c.StartDaemons(); err != nil {
		b.Fatal(err)
	}
	if err := WaitFor(30*time.Second, 200*time.Millisecond, func() error {
		up, err := c.ToR.Established()
		if err != nil {
			return err
		}
		if len(up) != len(c.Nodes) {
			return fmt.Errorf("FRR has %d established sessions, want %d", len(up), len(c.Nodes))
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	dPid, fPid := n1.daemon.Pid(), c.ToR.proc.Pid()
	for pid, want := range map[int]string{dPid: "nexthopd", fPid: "bgpd"} {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if got := strings.TrimSpace(string(comm)); got != want {
			b.Fatalf("pid %d is %q, want %q", pid, got, want)
		}
	}

	h, err := netns.GetFromName(n1.NS)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		b.Fatal(err)
	}
	defer nl.Close()
	countScale := func() (int, error) {
		rs, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: 201}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return 0, err
		}
		n := 0
		for _, r := range rs {
			if r.Dst != nil && r.Dst.IP[0] == 10 && r.Dst.IP[1] >= 100 && r.Dst.IP[1] < 140 {
				n++
			}
		}
		return n, nil
	}

	// Let the idle daemon settle (initial sync, GC) before the baseline.
	time.Sleep(3 * time.Second)
	idleRSS, err := vmRSS(dPid)
	if err != nil {
		b.Fatal(err)
	}
	frrIdleRSS, _ := vmRSS(fPid)
	if n, err := countScale(); err != nil || n != 0 {
		b.Fatalf("before the announce node1 has %d external routes (%v), want 0", n, err)
	}

	prefixes := make([]netip.Prefix, 0, scalePrefixes)
	for i := 0; i < scalePrefixes; i++ {
		prefixes = append(prefixes, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i/256), byte(i % 256), 0}), 24))
	}
	b.ResetTimer()
	tCfg := time.Now()
	if err := c.ToR.AnnounceBulk(prefixes...); err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	b.Logf("vtysh took %v to configure %d network statements", t0.Sub(tCfg).Round(time.Millisecond), scalePrefixes)
	var tDone time.Time
	last := 0
	if err := WaitFor(5*time.Minute, 100*time.Millisecond, func() error {
		n, err := countScale()
		if err != nil {
			return err
		}
		last = n
		if n < scalePrefixes {
			return fmt.Errorf("node1 has %d of %d external routes in its kernel", n, scalePrefixes)
		}
		tDone = time.Now()
		return nil
	}); err != nil {
		b.Fatalf("%v\n%s", err, c.LogTails(20))
	}
	b.StopTimer()
	b.Logf("all %d in node1's kernel %v after the announce", last, tDone.Sub(t0).Round(time.Millisecond))

	// Let FRR and the daemon finish what follows (node2's table, GC).
	time.Sleep(2 * time.Second)
	d0, err := cpuTicks(dPid)
	if err != nil {
		b.Fatal(err)
	}
	f0, err := cpuTicks(fPid)
	if err != nil {
		b.Fatal(err)
	}
	w0 := time.Now()
	time.Sleep(quietWindow)
	d1, err := cpuTicks(dPid)
	if err != nil {
		b.Fatal(err)
	}
	f1, err := cpuTicks(fPid)
	if err != nil {
		b.Fatal(err)
	}
	wall := time.Since(w0).Seconds()
	rss, err := vmRSS(dPid)
	if err != nil {
		b.Fatal(err)
	}
	frrRSS, err := vmRSS(fPid)
	if err != nil {
		b.Fatal(err)
	}
	if n, _ := countScale(); n < scalePrefixes {
		b.Fatalf("routes lost during the quiet window: %d of %d", n, scalePrefixes)
	}
	b.Logf("FRR bgpd RSS idle (no announcements): %.1f MiB", mib(frrIdleRSS))

	b.ReportMetric(mib(idleRSS), "rss-idle-MiB")
	b.ReportMetric(mib(rss), "rss-10k-MiB")
	b.ReportMetric(float64(rss)/float64(idleRSS), "rss-ratio")
	b.ReportMetric(mib(frrRSS), "frr-bgpd-rss-10k-MiB")
	b.ReportMetric(float64(rss)/float64(frrRSS), "rss-vs-frr-ratio")
	b.ReportMetric(float64(d1-d0)/clkTck/wall*100, "idle-cpu-%")
	b.ReportMetric(float64(f1-f0)/clkTck/wall*100, "frr-idle-cpu-%")
	b.ReportMetric(tDone.Sub(t0).Seconds(), "announce→kernel-s")
	b.ReportMetric(t0.Sub(tCfg).Seconds(), "frr-config-s")
}

func mib(kib uint64) float64 { return float64(kib) / 1024 }

// vmRSS is VmRSS from /proc/<pid>/status, in KiB.
func vmRSS(pid int) (uint64, error) { return statusKiB(pid, "VmRSS") }

// statusKiB is one "Key:  123 kB" line of /proc/<pid>/status (VmRSS,
// RssAnon, ...), in KiB.
func statusKiB(pid int, key string) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, key+":"); ok {
			f := strings.Fields(rest)
			if len(f) < 1 {
				break
			}
			return strconv.ParseUint(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", key, pid)
}

// cpuTicks is utime+stime (fields 14 and 15) from /proc/<pid>/stat.
func cpuTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat utime/stime", pid)
	}
	return u + st, nil
}
