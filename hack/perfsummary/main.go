// Command perfsummary reads `perf script` output (samples with call
// chains, from `perf record -g`) on stdin and says where one command's CPU
// went: a few named groups, then the functions with the largest inclusive
// and self shares. `make profile-scale` pipes a 100-node mesh into it; the
// figures back the "why" of docs/benchmarks.md's missed targets.
//
// perf report can filter by command too, but with call graphs on it
// charged other processes' frames to ours; this counts samples itself.
package main

import (
	"bufio"
	"cmp"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
)

// group is a named share: the samples with a frame containing any of match.
type group struct {
	name  string
	match []string
}

// groups are the costs docs/benchmarks.md talks about. They overlap (GC
// runs inside GoBGP's goroutines as assists): each is a share on its own.
var groups = []group{
	{"GoBGP server loop (BgpServer.Serve, one goroutine)", []string{"(*BgpServer).Serve"}},
	{"  its reflect.Select over every peer's channels, each turn", []string{"reflect.Select"}},
	{"  its ListPeer (path counts, capabilities)", []string{"(*BgpServer).ListPeer"}},
	{"GoBGP per-peer sending (sendMessageloop)", []string{"(*fsmHandler).sendMessageloop"}},
	{"GoBGP per-peer receiving (recvMessageloop)", []string{"(*fsmHandler).recvMessageloop"}},
	{"Go garbage collector (mark workers and assists)", []string{"runtime.gcBgMarkWorker", "runtime.gcAssistAlloc"}},
	{"Go allocation (mallocgc)", []string{"runtime.mallocgc"}},
	{"Go scheduler (schedule, findRunnable)", []string{"runtime.schedule"}},
	{"Go runtime monitor thread (sysmon)", []string{"runtime.sysmon"}},
	{"package init before main", []string{"runtime.doInit"}},
	{"nexthop's daemon loop and route writes", []string{"nexthop/daemon.(*node).loop", "nexthop/routes."}},
	{"kernel: TCP send path", []string{"tcp_sendmsg"}},
	{"kernel: futex (thread wake-ups)", []string{"do_futex"}},
}

var offset = regexp.MustCompile(`\+0x[0-9a-f]+ \(.*$`)

func main() {
	comm := flag.String("comm", "nexthopd", "command name whose samples are counted")
	top := flag.Int("top", 30, "functions listed by inclusive and by self share")
	flag.Parse()
	if err := run(os.Stdin, os.Stdout, *comm, *top); err != nil {
		fmt.Fprintln(os.Stderr, "perfsummary:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer, comm string, top int) error {
	var (
		total, all  int
		incl, self  = map[string]int{}, map[string]int{}
		groupCounts = make([]int, len(groups))
		cur         string
		stack       []string
	)
	flush := func() {
		if cur == "" {
			return
		}
		all++
		if cur != comm || len(stack) == 0 {
			return
		}
		total++
		self[stack[0]]++
		seen := map[string]bool{}
		for _, f := range stack {
			if !seen[f] {
				seen[f] = true
				incl[f]++
			}
		}
		for i, g := range groups {
			if slices.ContainsFunc(stack, func(f string) bool {
				return slices.ContainsFunc(g.match, func(m string) bool { return strings.Contains(f, m) })
			}) {
				groupCounts[i]++
			}
		}
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
		case line[0] != ' ' && line[0] != '\t':
			flush()
			// "nexthopd 11708 [000] 10763.412322: 5025125 cpu-clock:ppp:"
			cur, stack = strings.Fields(line)[0], stack[:0]
		default:
			// "	ffffffff822010c9 _raw_spin_unlock_irqrestore+0x19 ([kernel.kallsyms])"
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			sym := offset.ReplaceAllString(strings.Join(f[1:], " "), "")
			stack = append(stack, sym)
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read perf script output: %w", err)
	}
	if total == 0 {
		return fmt.Errorf("no sample of %q among %d (is this `perf script` output of a `perf record -g`?)", comm, all)
	}
	pct := func(n int) float64 { return 100 * float64(n) / float64(total) }
	fmt.Fprintf(out, "%d samples of %s (%.0f %% of all %d samples)\n\nshare of %s's CPU, by group (groups overlap):\n", total, comm, 100*float64(total)/float64(all), all, comm)
	for i, g := range groups {
		fmt.Fprintf(out, "  %5.1f %%  %s\n", pct(groupCounts[i]), g.name)
	}
	list := func(title string, m map[string]int) {
		type fc struct {
			f string
			c int
		}
		var l []fc
		for f, c := range m {
			l = append(l, fc{f, c})
		}
		slices.SortFunc(l, func(a, b fc) int { return cmp.Or(b.c-a.c, strings.Compare(a.f, b.f)) })
		fmt.Fprintf(out, "\n%s:\n", title)
		for _, x := range l[:min(top, len(l))] {
			fmt.Fprintf(out, "  %5.1f %%  %s\n", pct(x.c), x.f)
		}
	}
	list("functions by inclusive share (with what they call)", incl)
	list("functions by self share", self)
	return nil
}
