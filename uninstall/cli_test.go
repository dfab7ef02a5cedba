package uninstall

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The documented command, as a user runs it: the CNI plugin binary with
// "uninstall", here inside a namespace standing in for the node.
func TestCommand(t *testing.T) {
	name, _ := node(t)
	bin := filepath.Join(t.TempDir(), "nexthop")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/nexthop-net/nexthop/cmd/nexthop").CombinedOutput(); err != nil {
		t.Fatalf("build cmd/nexthop: %v\n%s", err, out)
	}
	sh(t, "ip", "-n", name, "route", "add", "blackhole", "10.244.1.0/24", "proto", "201")
	sh(t, "ip", "-n", name, "route", "add", "198.51.100.0/24", "via", "192.0.2.1", "proto", "static")
	o := hostDirs(t)
	flags := []string{"--cni-bin-dir", o.CNIBinDir, "--cni-conf-dir", o.CNIConfDir, "--state-dir", o.StateDir, "--run-dir", o.RunDir}
	run := func(args ...string) (stdout, stderr string, code int) {
		t.Helper()
		cmd := exec.Command("ip", append([]string{"netns", "exec", name, bin}, args...)...)
		var so, se bytes.Buffer
		cmd.Stdout, cmd.Stderr = &so, &se
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			code = ee.ExitCode()
		case err != nil:
			t.Fatal(err)
		}
		return so.String(), se.String(), code
	}

	// A slip of the finger (--state-dir /var/lib; here the temporary
	// stand-in) is refused before anything goes.
	varLib := filepath.Dir(o.StateDir)
	_, se, code := run(append([]string{"uninstall"}, append(flags, "--state-dir", varLib)...)...)
	if code != 1 || !strings.Contains(se, "refusing to remove "+varLib+" whole") || !exists(o.StateDir) {
		t.Fatalf("--state-dir %s: exit %d, stderr %q", varLib, code, se)
	}
	if _, se, code = run("uninstall", "--no-such-flag"); code != 2 || !strings.Contains(se, "usage: nexthop uninstall") {
		t.Fatalf("bad flag: exit %d, stderr %q", code, se)
	}

	so, se, code := run(append([]string{"uninstall"}, flags...)...)
	t.Logf("nexthop uninstall:\n%s", so)
	if code != 0 {
		t.Fatalf("uninstall: exit %d\nstdout:\n%s\nstderr:\n%s", code, so, se)
	}
	for _, want := range []string{
		"removed route blackhole 10.244.1.0/24 table main\n",
		"removed " + filepath.Join(o.CNIBinDir, "nexthop") + "\n",
		"restored " + filepath.Join(o.CNIConfDir, "00-calico.conflist"),
		"removed " + o.StateDir + "\n",
		"nothing of nexthop's left on this node",
	} {
		if !strings.Contains(so, want) {
			t.Errorf("stdout lacks %q:\n%s", want, so)
		}
	}
	if r := sh(t, "ip", "-n", name, "route", "show", "table", "all"); strings.Contains(r, "10.244.1.0/24") || !strings.Contains(r, "198.51.100.0/24") {
		t.Errorf("routes after uninstall:\n%s", r)
	}

	so, se, code = run(append([]string{"uninstall"}, flags...)...)
	t.Logf("again:\n%s", so)
	if code != 0 || !strings.Contains(so, "nothing to do") || strings.Contains(so, "removed ") {
		t.Errorf("second uninstall: exit %d\nstdout:\n%s\nstderr:\n%s", code, so, se)
	}

	// Without "uninstall" it is still the CNI plugin.
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND=VERSION")
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
	if out, err := cmd.Output(); err != nil || !strings.Contains(string(out), `"supportedVersions"`) {
		t.Errorf("CNI VERSION: %v: %s", err, out)
	}
}
