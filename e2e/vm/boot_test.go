package vm

import (
	"context"
	"strings"
	"testing"
)

// TestBoot boots the VM with a shell step and a failing step: the harness
// must report the guest's kernel, tunl0 and each step's exit code.
func TestBoot(t *testing.T) {
	if InGuest() {
		t.Skip("host-side test")
	}
	a := Require(t)
	res, err := Run(context.Background(), Options{
		Assets: a, Log: t, KeepGoing: true, Dir: t.TempDir(),
		Commands: []Command{
			Shell("info", "set -e; echo kernel=$(uname -r); ip -V; ip netns add nhv; ip netns exec nhv /bin/sh -c 'echo nhv: $(ls /sys/class/net)'"),
			Shell("fails", "exit 3"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("console:\n%s", res.Tail(30))
	if !strings.Contains(res.Console, "kernel="+a.KernelVersion) {
		t.Errorf("guest did not report kernel %s", a.KernelVersion)
	}
	if len(res.Steps) != 2 || res.Steps[0].ExitCode != 0 || res.Steps[1].ExitCode != 3 || res.ExitCode != 3 {
		t.Errorf("steps %+v exit %d, want info=0 fails=3 exit 3", res.Steps, res.ExitCode)
	}
}
