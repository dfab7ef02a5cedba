// Command benchreport runs every benchmark of the project, one after
// another, and writes docs/benchmarks.md from template.md with the figures
// of this run: each next to its baseline, the ratio, and the command that
// reproduces it. `make bench` runs it from the repository root (as root:
// the e2e and CNI benchmarks build network namespaces).
//
//	go run ./hack/benchreport [-o docs/benchmarks.md] [-only regexp] [-save docs/benchmarks.json]
//	go run ./hack/benchreport -render docs/benchmarks.json   # the template again, same figures
package main

import (
	"bufio"
	"bytes"
	_ "embed"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"text/template"
	"time"
)

//go:embed template.md
var templateText string

// bench is one `go test -bench` invocation.
type bench struct {
	ID        string // name the template uses
	Pkg       string
	Pattern   string // -bench regexp
	Benchtime string
	Timeout   string
	Target    string // the make target that also runs it, if any
}

var benches = []bench{
	{ID: "routes", Pkg: "./routes/", Pattern: "Program10k", Benchtime: "5x", Timeout: "10m", Target: "bench-routes"},
	{ID: "churn", Pkg: "./routes/", Pattern: "Churn10k", Benchtime: "5x", Timeout: "10m", Target: "bench-routes"},
	{ID: "convergence", Pkg: "./e2e/", Pattern: "Convergence", Benchtime: "100x", Timeout: "30m", Target: "bench-convergence"},
	{ID: "throughput", Pkg: "./e2e/", Pattern: "Throughput", Benchtime: "1x", Timeout: "10m", Target: "bench-convergence"},
	{ID: "scale", Pkg: "./e2e/", Pattern: "DaemonRSS10k", Benchtime: "1x", Timeout: "10m"},
	{ID: "mesh", Pkg: "./e2e/", Pattern: "^BenchmarkScale$", Benchtime: "1x", Timeout: "90m", Target: "bench-scale"},
	{ID: "cni", Pkg: "./cni-plugin/", Pattern: "AddDel$", Benchtime: "100x", Timeout: "10m", Target: "bench-cni"},
	{ID: "cni50", Pkg: "./cni-plugin/", Pattern: "AddDelParallel50", Benchtime: "6x", Timeout: "10m", Target: "bench-cni"},
	{ID: "bfd", Pkg: "./bfd/", Pattern: "Sessions100", Benchtime: "1x", Timeout: "10m"},
	{ID: "ipip", Pkg: "./e2e/vm/", Pattern: "IPIPThroughput", Benchtime: "1x", Timeout: "30m"},
}

func (b bench) args() []string {
	return []string{"test", "-run", "^$", "-bench", b.Pattern, "-benchtime", b.Benchtime, "-count", "1", "-timeout", b.Timeout, b.Pkg}
}

// Command is the line a reader pastes to reproduce the figure.
func (b bench) Command() string {
	t := ""
	if b.Timeout != "10m" { // go test's default
		t = " -timeout " + b.Timeout
	}
	return fmt.Sprintf("go test -run '^$' -bench '%s' -benchtime %s -count 1%s %s", b.Pattern, b.Benchtime, t, b.Pkg)
}

// result is what one invocation produced.
type result struct {
	bench
	// Metrics maps "BenchmarkName[/sub]" to unit to value; Order lists
	// those names as the output gave them.
	Metrics map[string]map[string]float64
	Order   []string
	// Load is the load average (1, 5, 15 min) when the benchmark started.
	Load     string
	Skipped  string // the skip reason, if every benchmark skipped
	Failed   string // why it failed (tail of the output)
	Duration time.Duration
}

var (
	benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)
	skipLine  = regexp.MustCompile(`^\s*--- SKIP: (Benchmark\S+)`)
	logLine   = regexp.MustCompile(`^\s+(\S+\.go:\d+: .*)$`)
)

func runBench(b bench) result {
	r := result{bench: b, Metrics: map[string]map[string]float64{}, Load: loadAvg()}
	start := time.Now()
	cmd := exec.Command("go", b.args()...)
	var out bytes.Buffer
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			out.WriteString(line + "\n")
			fmt.Printf("    | %s\n", line)
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Start()
	if err == nil {
		err = cmd.Wait()
	}
	pw.Close()
	<-done
	r.Duration = time.Since(start)

	lines := strings.Split(out.String(), "\n")
	for i, line := range lines {
		if m := benchLine.FindStringSubmatch(line); m != nil {
			f := strings.Fields(m[2])
			ms := map[string]float64{}
			for j := 0; j+1 < len(f); j += 2 {
				if v, err := strconv.ParseFloat(f[j], 64); err == nil {
					ms[f[j+1]] = v
				}
			}
			if _, seen := r.Metrics[m[1]]; !seen {
				r.Order = append(r.Order, m[1])
			}
			r.Metrics[m[1]] = ms
		}
		if skipLine.MatchString(line) && r.Skipped == "" {
			reason := "skipped"
			if i+1 < len(lines) {
				reason = strings.TrimSpace(lines[i+1])
				// Drop the "file.go:NN: " prefix of the t.Skip line.
				if k := strings.Index(reason, ": "); k > 0 && strings.Contains(reason[:k], ".go:") {
					reason = reason[k+2:]
				}
			}
			r.Skipped = reason
		}
	}
	if err != nil {
		r.Failed = fmt.Sprintf("%v; last lines:\n%s", err, lastLines(out.String(), 8))
		// Lead with the benchmark's own complaint (the first file:line
		// message after a --- FAIL), which is what the report shows.
		inFail := false
		for _, line := range lines {
			if strings.Contains(line, "--- FAIL") {
				inFail = true
			} else if m := logLine.FindStringSubmatch(line); inFail && m != nil {
				r.Failed = fmt.Sprintf("%s (%v)\n%s", m[1], err, r.Failed)
				break
			}
		}
	} else if len(r.Metrics) == 0 && r.Skipped == "" {
		r.Failed = "no benchmark result lines in the output"
	}
	return r
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func fileLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func memGiB() string {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if kb, err := strconv.ParseFloat(f[0], 64); err == nil {
				return fmt.Sprintf("%.0f GiB", kb/1024/1024)
			}
		}
	}
	return "?"
}

func loadAvg() string {
	f := strings.Fields(fileLine("/proc/loadavg"))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// scaleCase names a BenchmarkScale case: mesh100, rr2+98, join30.
func scaleCase(name string) string {
	_, sub, _ := strings.Cut(name, "/")
	switch {
	case strings.HasPrefix(sub, "mesh"):
		return "full mesh, " + strings.TrimPrefix(sub, "mesh") + " nodes"
	case strings.HasPrefix(sub, "rr"):
		r, c, _ := strings.Cut(strings.TrimPrefix(sub, "rr"), "+")
		return r + " reflectors + " + c + " clients"
	case strings.HasPrefix(sub, "join"):
		return "1 node joins a mesh of " + strings.TrimPrefix(sub, "join")
	}
	return sub
}

// fmtNum prints about three significant figures.
func fmtNum(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "n/a"
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

func main() {
	outPath := flag.String("o", "docs/benchmarks.md", "file to write")
	only := flag.String("only", "", "run only the benchmarks whose ID matches this regexp (the others show as not run)")
	savePath := flag.String("save", "docs/benchmarks.json", "file the run's figures are kept in, to render again with -render")
	renderPath := flag.String("render", "", "run nothing: render the template again from the figures a run saved (-save)")
	flag.Parse()
	if *renderPath != "" {
		if err := render(*renderPath, *outPath); err != nil {
			fmt.Fprintln(os.Stderr, "benchreport:", err)
			os.Exit(1)
		}
		return
	}
	var onlyRE *regexp.Regexp
	if *only != "" {
		onlyRE = regexp.MustCompile(*only)
	}
	results := map[string]result{}
	tmpl, err := template.New("benchmarks.md").Funcs(templateFuncs(results)).Parse(templateText)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchreport: template:", err)
		os.Exit(1)
	}

	goVersion := runtime.Version()
	if b, err := exec.Command("go", "env", "GOVERSION").Output(); err == nil {
		goVersion = strings.TrimSpace(string(b))
	}
	start := time.Now()
	data := map[string]any{
		"Date":    start.UTC().Format("2006-01-02 15:04 UTC"),
		"NProc":   runtime.NumCPU(),
		"CPU":     cpuModel(),
		"Mem":     memGiB(),
		"Kernel":  fileLine("/proc/sys/kernel/osrelease"),
		"Go":      goVersion,
		"LoadAvg": loadAvg(),
	}
	fmt.Printf("benchreport: %s, %d cores, kernel %s, %s, load average %s\n", data["Date"], data["NProc"], data["Kernel"], goVersion, data["LoadAvg"])

	for i, b := range benches {
		if onlyRE != nil && !onlyRE.MatchString(b.ID) {
			results[b.ID] = result{bench: b, Metrics: map[string]map[string]float64{}, Failed: "not run (-only)", Load: "n/a"}
			continue
		}
		fmt.Printf("benchreport: [%d/%d] %s: go %s\n", i+1, len(benches), b.ID, strings.Join(b.args(), " "))
		r := runBench(b)
		switch {
		case r.Failed != "":
			fmt.Printf("benchreport: [%d/%d] %s FAILED after %s: %s\n", i+1, len(benches), b.ID, r.Duration.Round(time.Second), r.Failed)
		case r.Skipped != "":
			fmt.Printf("benchreport: [%d/%d] %s skipped after %s: %s\n", i+1, len(benches), b.ID, r.Duration.Round(time.Second), r.Skipped)
		default:
			fmt.Printf("benchreport: [%d/%d] %s done in %s\n", i+1, len(benches), b.ID, r.Duration.Round(time.Second))
		}
		results[b.ID] = r
	}
	data["Total"] = time.Since(start).Round(time.Second).String()
	if *savePath != "" {
		b, err := json.MarshalIndent(saved{Data: data, Results: results}, "", "  ")
		if err == nil {
			err = os.WriteFile(*savePath, append(b, '\n'), 0o644)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchreport: keep the figures:", err)
			os.Exit(1)
		}
	}

	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, data); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport: template:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*outPath, buf.Bytes(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
	fmt.Printf("benchreport: wrote %s (%s in all)\n", *outPath, data["Total"])
	failed := 0
	for _, r := range results {
		if r.Failed != "" && r.Failed != "not run (-only)" {
			failed++
		}
	}
	if failed > 0 {
		fmt.Printf("benchreport: %d benchmark(s) failed; their sections say so\n", failed)
		os.Exit(1)
	}
}

// saved is one run's figures, as -save writes them and -render reads them.
type saved struct {
	Data    map[string]any
	Results map[string]result
}

// render writes out from the template and the figures in path: a template
// edited after a run is rendered with that run's figures, not new ones.
func render(path, out string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var sv saved
	if err := json.Unmarshal(b, &sv); err != nil {
		return fmt.Errorf("read figures from %s: %w", path, err)
	}
	tmpl, err := template.New("benchmarks.md").Funcs(templateFuncs(sv.Results)).Parse(templateText)
	if err != nil {
		return fmt.Errorf("template: %w", err)
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, sv.Data); err != nil {
		return fmt.Errorf("template: %w", err)
	}
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Printf("benchreport: wrote %s from the figures in %s\n", out, path)
	return nil
}

// templateFuncs are the template's functions over the results (filled in
// as the benchmarks run; the template executes after the last one).
func templateFuncs(results map[string]result) template.FuncMap {
	return template.FuncMap{
		// cmd is the reproducing command of a benchmark ID.
		"cmd": func(id string) string { return results[id].Command() },
		// target is its make target ("" if none).
		"target": func(id string) string { return results[id].Target },
		// m is one metric: m "scale" "BenchmarkDaemonRSS10k" "rss-ratio".
		"m": func(id, name, unit string) float64 {
			if v, ok := results[id].Metrics[name][unit]; ok {
				return v
			}
			return math.NaN()
		},
		"f":    fmtNum,
		"x":    func(k, v float64) float64 { return k * v },
		"div":  func(a, b float64) float64 { return a / b },
		"took": func(id string) string { return results[id].Duration.Round(time.Second).String() },
		// load is the load average when the benchmark started.
		"load": func(id string) string { return results[id].Load },
		// subs lists the sub-benchmarks of parent, in output order.
		"subs": func(id, parent string) []string {
			var out []string
			for _, name := range results[id].Order {
				if strings.HasPrefix(name, parent+"/") {
					out = append(out, name)
				}
			}
			return out
		},
		// met says whether a ratio is within its target (v <= limit).
		"met": func(v, limit float64) string {
			switch {
			case math.IsNaN(v):
				return "not measured"
			case v <= limit:
				return "met"
			}
			return "**missed**"
		},
		// scaleCase says in words what a BenchmarkScale sub-benchmark is.
		"scaleCase": scaleCase,
		// missing says why a benchmark has no figures ("" when it has).
		"missing": func(id string) string {
			r := results[id]
			switch {
			case r.Failed != "":
				return "not measured in this run: " + strings.SplitN(r.Failed, "\n", 2)[0]
			case r.Skipped != "":
				return "skipped in this run: " + r.Skipped
			}
			return ""
		},
	}
}
