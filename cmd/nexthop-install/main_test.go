package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestInstallOnlyWhenChanged(t *testing.T) {
	root := t.TempDir()
	p := func(s ...string) string { return filepath.Join(append([]string{root}, s...)...) }
	for _, d := range []string{"src/bin", "src/override", "host/proc"} {
		if err := os.MkdirAll(p(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(path, s string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(p("src/bin/nexthop"), "plugin v1", 0o755)
	write(p("src/bin/portmap"), "portmap", 0o755)
	write(p("src/10-nexthop.conflist"), `{"name":"nexthop"}`, 0o644)
	write(p("host/proc/ip_forward"), "0\n", 0o644)

	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	install := func() {
		t.Helper()
		if err := run(log, p("src/bin"), p("host/bin"), p("src/10-nexthop.conflist"), p("src/override"), p("host/net.d"), p("host/proc/ip_forward")); err != nil {
			t.Fatal(err)
		}
	}
	read := func(path string) string {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	install()
	if read(p("host/bin/nexthop")) != "plugin v1" || read(p("host/net.d/10-nexthop.conflist")) != `{"name":"nexthop"}` {
		t.Fatal("first install did not copy the files")
	}
	if fi, _ := os.Stat(p("host/bin/nexthop")); fi.Mode().Perm() != 0o755 {
		t.Fatalf("plugin mode %v", fi.Mode())
	}
	if read(p("host/proc/ip_forward")) != "1" {
		t.Fatal("IPv4 forwarding not enabled")
	}

	// Unchanged content: nothing is rewritten (same inode, same mtime).
	before, _ := os.Stat(p("host/bin/nexthop"))
	time.Sleep(10 * time.Millisecond)
	install()
	after, _ := os.Stat(p("host/bin/nexthop"))
	if !os.SameFile(before, after) || !before.ModTime().Equal(after.ModTime()) {
		t.Fatal("an unchanged plugin was rewritten")
	}

	// A new plugin version replaces the file (a new inode: rename, never
	// an in-place write a running plugin could see half-done).
	write(p("src/bin/nexthop"), "plugin v2", 0o755)
	write(p("src/override/10-nexthop.conflist"), `{"name":"nexthop","mtu":1400}`, 0o644)
	install()
	after2, _ := os.Stat(p("host/bin/nexthop"))
	if read(p("host/bin/nexthop")) != "plugin v2" || os.SameFile(after, after2) {
		t.Fatal("changed plugin not replaced by rename")
	}
	if read(p("host/net.d/10-nexthop.conflist")) != `{"name":"nexthop","mtu":1400}` {
		t.Fatal("the ConfigMap's conflist did not win")
	}
	for _, d := range []string{"host/bin", "host/net.d"} {
		es, _ := os.ReadDir(p(d))
		for _, e := range es {
			if e.Name()[0] == '.' {
				t.Fatalf("temporary file left behind: %s/%s", d, e.Name())
			}
		}
	}
}
