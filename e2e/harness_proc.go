package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// cmdTimeout bounds every short command the harness runs, so a wedged
// tool fails the test instead of hanging it until go test's own timeout.
const cmdTimeout = 30 * time.Second

// run executes a short command and returns its stdout. On failure the
// error carries the command line and its stderr, which is what one needs
// to see in a test log.
func run(argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	return runCtx(ctx, argv...)
}

// runCtx is run bounded by ctx instead of cmdTimeout, for commands that
// wait on purpose (kubectl wait, rollout status).
func runCtx(ctx context.Context, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, msg)
	}
	return stdout.String(), nil
}

// proc is a long-running child (nexthopd, bgpd, tcpdump) whose output goes
// to a log file and whose exit is observed by one goroutine, so stop/kill
// and "did it die?" checks never race on cmd.Wait.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	logFile *os.File

	done chan struct{}
	mu   sync.Mutex
	err  error // exit status; valid once done is closed
}

// startProc starts argv with stdout and stderr appended to logPath.
func startProc(name, logPath string, argv ...string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log for %s: %w", name, err)
	}
	fmt.Fprintf(f, "=== e2e: %s start %s: %s\n", name, time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = f
	cmd.Stderr = f
	// Own process group so a terminal's Ctrl-C reaches only the harness,
	// which then tears things down in order; Pdeathsig so a harness that
	// dies hard does not leave daemons running (the sweep catches the rest).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, logFile: f, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		fmt.Fprintf(f, "=== e2e: %s exited %s: %v\n", name, time.Now().Format(time.RFC3339Nano), exitString(err))
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func exitString(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// Pid is the child's process id (ip netns exec execs, so it is the
// daemon's own pid).
func (p *proc) Pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended, and how.
func (p *proc) exited() (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// wait waits up to timeout for the process to end and returns its exit
// error (nil for status 0).
func (p *proc) wait(timeout time.Duration) error {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s (pid %d) still running after %s", p.name, p.Pid(), timeout)
	}
}

// signal sends sig unless the process has already ended.
func (p *proc) signal(sig syscall.Signal) error {
	if done, _ := p.exited(); done {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s to %s: %w", sig, p.name, err)
	}
	return nil
}

// kill SIGKILLs the process and reaps it.
func (p *proc) kill() {
	_ = p.signal(syscall.SIGKILL)
	_ = p.wait(10 * time.Second)
}
