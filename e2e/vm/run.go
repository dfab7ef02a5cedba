package vm

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Defaults for Options fields left zero.
const (
	DefaultTimeout  = 5 * time.Minute
	DefaultMemoryMB = 1024 // Go test binaries plus daemons outgrow 256 MB
	DefaultCPUs     = 2
)

// Command is one program the guest runs, in order, after boot.
type Command struct {
	// Name labels the command in result lines; default: base of the path.
	Name string
	// Binary is a host file copied to GuestBinDir; it is then the program
	// run unless Path is set. It must be static (CGO_ENABLED=0): the guest
	// has no C library besides the one ip needs.
	Binary string
	// Path is the program in the guest, e.g. /sbin/ip or /bin/sh.
	Path string
	Args []string
	// Env is added to the guest's base environment (PATH, HOME, TMPDIR).
	Env []string
}

// File is an extra file for the initramfs, from Source (host path) or Data.
type File struct {
	Path   string // absolute guest path
	Source string
	Data   []byte
	Mode   os.FileMode // 0: the source's mode, or 0644 for Data
}

// Options for one VM run.
type Options struct {
	Assets   *Assets
	Commands []Command
	Files    []File
	// Modules to insmod at boot; nil means DefaultModules. Dependencies are
	// added and ordered automatically.
	Modules  []string
	MemoryMB int
	CPUs     int
	Timeout  time.Duration
	// KeepGoing runs later commands after one fails.
	KeepGoing bool
	// Dir receives initramfs.cpio and console.log; empty means a new
	// temporary directory (kept: the console is the evidence).
	Dir string
	Log Logger
	// Echo logs every console line as it arrives ("guest| ...") through
	// Log, so a person sees progress of a long guest test.
	Echo bool
}

// Step is how one Command ended.
type Step struct {
	Name     string
	ExitCode int
}

// Result of a VM run that booted and reached the end of its commands.
type Result struct {
	Steps []Step
	// ExitCode is the first non-zero step exit code (or module load
	// failure), 0 when all passed.
	ExitCode    int
	Console     string // serial console, '\r' removed
	ConsolePath string
	Duration    time.Duration
}

// Tail returns the last n console lines.
func (r *Result) Tail(n int) string { return lastLines(r.Console, n) }

// Run boots the VM with opts and waits for it to power off. The error is
// about the harness (qemu missing, timeout, no result line: the guest
// crashed); how the guest commands went is in Result.ExitCode and Steps.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if opts.Assets == nil {
		return nil, errors.New("vm.Run: Options.Assets is nil (call Prepare)")
	}
	log := logger(opts.Log)
	opts = withDefaults(opts)
	dir := opts.Dir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "nhvm-"); err != nil {
			return nil, fmt.Errorf("create VM run directory: %w", err)
		}
	}
	nonce := newNonce()
	initrd := filepath.Join(dir, "initramfs.cpio")
	if err := buildInitramfs(opts, nonce, initrd); err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	if opts.Dir == "" {
		// Tens of MB per run; only the console is worth keeping.
		defer os.Remove(initrd)
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	res := &Result{ConsolePath: filepath.Join(dir, "console.log")}
	log.Logf("vm: booting kernel %s (TCG, %d MB, %d CPUs, timeout %s); console in %s",
		opts.Assets.KernelVersion, opts.MemoryMB, opts.CPUs, opts.Timeout, res.ConsolePath)
	start := time.Now()
	err := runQEMU(ctx, opts, initrd, res.ConsolePath, log)
	res.Duration = time.Since(start)
	b, rerr := os.ReadFile(res.ConsolePath)
	res.Console = strings.ReplaceAll(string(b), "\r", "")
	if err == nil {
		err = rerr
	}
	if err != nil {
		return res, fmt.Errorf("run VM: %w\nconsole tail:\n%s", err, res.Tail(40))
	}
	if err := parseResult(res, nonce); err != nil {
		return res, fmt.Errorf("%w\nconsole tail:\n%s", err, res.Tail(40))
	}
	log.Logf("vm: guest finished with exit code %d in %s", res.ExitCode, res.Duration.Round(100*time.Millisecond))
	return res, nil
}

func withDefaults(o Options) Options {
	if o.Modules == nil {
		o.Modules = DefaultModules
	}
	if o.MemoryMB == 0 {
		o.MemoryMB = DefaultMemoryMB
	}
	if o.CPUs == 0 {
		o.CPUs = DefaultCPUs
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	return o
}

// newNonce marks this run's result lines, so a guest program that prints
// something similar (a test of this package, say) cannot fake them.
func newNonce() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func runQEMU(ctx context.Context, o Options, initrd, console string, log Logger) error {
	a := o.Assets
	args := []string{}
	for _, d := range a.QEMUData {
		args = append(args, "-L", d)
	}
	args = append(args,
		// A larger translation cache than the default keeps big Go
		// binaries from being retranslated over and over.
		"-accel", "tcg,tb-size=256",
		// "max" gives the guest RDRAND, so the kernel's RNG (and Go's
		// getrandom at start-up) is ready at once.
		"-cpu", "max",
		"-smp", strconv.Itoa(o.CPUs), "-m", fmt.Sprintf("%dM", o.MemoryMB),
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-no-reboot",
		"-kernel", a.Kernel, "-initrd", initrd,
		// panic=-1 with -no-reboot turns a guest panic into qemu exiting.
		"-append", "console=ttyS0 rdinit=/init panic=-1 quiet random.trust_cpu=on",
	)
	cmd := exec.CommandContext(ctx, a.QEMU, args...)
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+a.QEMULibPath)
	cmd.Stdin = nil
	cmd.WaitDelay = 5 * time.Second
	f, err := os.Create(console)
	if err != nil {
		return fmt.Errorf("create console log: %w", err)
	}
	defer f.Close()
	var w io.Writer = f
	var echo *io.PipeWriter
	done := make(chan struct{})
	if o.Echo {
		var r *io.PipeReader
		r, echo = io.Pipe()
		w = io.MultiWriter(f, echo)
		go func() {
			defer close(done)
			echoLines(r, log)
		}()
	} else {
		close(done)
	}
	cmd.Stdout, cmd.Stderr = w, w
	err = cmd.Run()
	if echo != nil {
		echo.Close()
	}
	<-done
	if ctx.Err() != nil {
		return fmt.Errorf("qemu killed after %s: %w", o.Timeout, ctx.Err())
	}
	if err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	return nil
}

func echoLines(r io.Reader, log Logger) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		log.Logf("guest| %s", strings.TrimRight(sc.Text(), "\r"))
	}
	io.Copy(io.Discard, r)
}

// parseResult reads the init's step and result lines. qemu exits 0 however
// the guest fared, so these lines are the only verdict.
func parseResult(res *Result, nonce string) error {
	stepRE := regexp.MustCompile(`(?m)^NHVM-STEP ` + nonce + ` (\S+) rc=(\d+)$`)
	for _, m := range stepRE.FindAllStringSubmatch(res.Console, -1) {
		rc, _ := strconv.Atoi(m[2])
		res.Steps = append(res.Steps, Step{Name: m[1], ExitCode: rc})
	}
	doneRE := regexp.MustCompile(`(?m)^NHVM-RESULT ` + nonce + ` rc=(\d+)$`)
	m := doneRE.FindStringSubmatch(res.Console)
	if m == nil {
		return errors.New("guest printed no result line (kernel panic, init crash or out of memory?)")
	}
	res.ExitCode, _ = strconv.Atoi(m[1])
	return nil
}

// buildInitramfs writes busybox, ip and its libraries, the modules, the
// extra files, the commands' binaries and the init script.
func buildInitramfs(o Options, nonce, out string) error {
	order, err := loadOrder(o.Assets.Modules, o.Modules)
	if err != nil {
		return err
	}
	libs, err := sharedLibs(o.Assets.IP)
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	c := newCPIO(f)
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/root", "/etc", "/usr/bin", "/usr/sbin", GuestBinDir} {
		c.mkdirAll(d)
	}
	c.symlink("/var/run", "/run") // iproute2 keeps netns mounts in /var/run/netns
	c.file("/bin/busybox", o.Assets.Busybox, 0o755)
	c.file("/sbin/ip", o.Assets.IP, 0o755)
	for _, l := range libs {
		c.file(l, l, 0o755)
	}
	for _, m := range order {
		c.file("/nhvm/modules/"+m+".ko", o.Assets.Modules[m], 0o644)
	}
	cmds := make([]Command, len(o.Commands))
	for i, cmd := range o.Commands {
		if cmd.Binary != "" {
			c.file(path.Join(GuestBinDir, filepath.Base(cmd.Binary)), cmd.Binary, 0o755)
		}
		cmds[i] = resolveCommand(cmd)
	}
	for _, x := range o.Files {
		if err := addFile(c, x); err != nil {
			return err
		}
	}
	c.bytes("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	c.bytes("/etc/hosts", []byte("127.0.0.1 localhost\n"), 0o644)
	c.bytes("/init", []byte(initScript(order, cmds, nonce, o.KeepGoing)), 0o755)
	if err := c.close(); err != nil {
		return err
	}
	return f.Close()
}

func addFile(c *cpioWriter, x File) error {
	if !path.IsAbs(x.Path) {
		return fmt.Errorf("guest file path %q is not absolute", x.Path)
	}
	if path.Clean(x.Path) == "/init" {
		return fmt.Errorf("guest file /init is the harness's own init script")
	}
	if x.Source != "" {
		c.file(x.Path, x.Source, x.Mode)
		return nil
	}
	mode := x.Mode
	if mode == 0 {
		mode = 0o644
	}
	c.bytes(x.Path, x.Data, mode)
	return nil
}

func resolveCommand(cmd Command) Command {
	if cmd.Path == "" && cmd.Binary != "" {
		cmd.Path = path.Join(GuestBinDir, filepath.Base(cmd.Binary))
	}
	if cmd.Name == "" {
		cmd.Name = path.Base(cmd.Path)
	}
	cmd.Name = strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\n' {
			return '_'
		}
		return r
	}, cmd.Name)
	return cmd
}

// sharedLibs lists the loader and libraries a dynamic host binary needs,
// as ldd resolves them (a static binary needs none).
func sharedLibs(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w: %s", bin, err, out)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				libs = append(libs, f)
			}
		}
	}
	return libs, nil
}

// initScript is the guest's PID 1: mount the API filesystems, load the
// modules, run each command and print its exit code, then the verdict.
// Busybox sh; each step runs in a subshell so a crash cannot end init.
func initScript(mods []string, cmds []Command, nonce string, keepGoing bool) string {
	var b strings.Builder
	b.WriteString(`#!/bin/busybox sh
/bin/busybox --install -s /bin
# busybox's ip applet lacks netns and tunnels: iproute2's is /sbin/ip.
rm -f /bin/ip
export PATH=` + GuestBinDir + `:/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
mkdir -p /run/netns
hostname nhvm
/sbin/ip link set lo up
rc=0
`)
	for _, m := range mods {
		fmt.Fprintf(&b, "insmod /nhvm/modules/%s.ko || { echo 'NHVM: insmod %s failed'; rc=1; }\n", m, m)
	}
	fmt.Fprintf(&b, "echo \"NHVM: kernel $(uname -r), modules loaded: %s\"\n", strings.Join(mods, " "))
	for _, c := range cmds {
		cond := "[ $rc = 0 ] && "
		if keepGoing {
			cond = ""
		}
		fmt.Fprintf(&b, "%s{ echo 'NHVM: running %s'; (cd /tmp && exec env %s %s </dev/null); s=$?; echo \"NHVM-STEP %s %s rc=$s\"; [ $s = 0 ] || [ $rc != 0 ] || rc=$s; }\n",
			cond, c.Name, shellWords(c.Env), shellWords(append([]string{c.Path}, c.Args...)), nonce, c.Name)
	}
	fmt.Fprintf(&b, "echo \"NHVM-RESULT %s rc=$rc\"\nsync\npoweroff -f\n", nonce)
	return b.String()
}

// shellWords single-quotes each word for sh.
func shellWords(ws []string) string {
	q := make([]string, len(ws))
	for i, w := range ws {
		q[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// Shell is a Command running script with busybox sh. Busybox sh runs its
// own applets before searching PATH, so a bare `ip` would be busybox's
// (no netns, no tunnels); the script gets an ip function calling
// iproute2's /sbin/ip instead. Nested shells (ip netns exec NS sh -c ...)
// do not inherit it: write /sbin/ip there.
func Shell(name, script string) Command {
	return Command{Name: name, Path: "/bin/sh", Args: []string{"-c", "ip() { /sbin/ip \"$@\"; }\n" + script}}
}
