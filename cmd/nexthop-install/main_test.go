package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/nexthop-net/nexthop/uninstall"
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
	write(p("src/05-nexthop.conflist"), `{"name":"nexthop"}`, 0o644)
	write(p("host/proc/ip_forward"), "0\n", 0o644)
	write(p("host/proc/ipv6_forwarding"), "0\n", 0o644)

	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	install := func() {
		t.Helper()
		if err := run(log, p("src/bin"), p("host/bin"), p("src/05-nexthop.conflist"), p("src/override"), p("host/net.d"), p("host/proc/ip_forward"), p("host/proc/ipv6_forwarding")); err != nil {
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
	if read(p("host/bin/nexthop")) != "plugin v1" || read(p("host/net.d/05-nexthop.conflist")) != `{"name":"nexthop"}` {
		t.Fatal("first install did not copy the files")
	}
	if fi, _ := os.Stat(p("host/bin/nexthop")); fi.Mode().Perm() != 0o755 {
		t.Fatalf("plugin mode %v", fi.Mode())
	}
	if read(p("host/proc/ip_forward")) != "1" {
		t.Fatal("IPv4 forwarding not enabled")
	}
	if read(p("host/proc/ipv6_forwarding")) != "1" {
		t.Fatal("IPv6 forwarding not enabled with -ipv6-forward set")
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
	write(p("src/override/05-nexthop.conflist"), `{"name":"nexthop","mtu":1400}`, 0o644)
	install()
	after2, _ := os.Stat(p("host/bin/nexthop"))
	if read(p("host/bin/nexthop")) != "plugin v2" || os.SameFile(after, after2) {
		t.Fatal("changed plugin not replaced by rename")
	}
	if read(p("host/net.d/05-nexthop.conflist")) != `{"name":"nexthop","mtu":1400}` {
		t.Fatal("the ConfigMap's conflist did not win")
	}
	for _, d := range []string{"host/bin", "host/net.d"} {
		es, _ := os.ReadDir(p(d))
		for _, e := range es {
			if e.Name()[0] == '.' && e.Name() != ownedRecord {
				t.Fatalf("temporary file left behind: %s/%s", d, e.Name())
			}
		}
	}
}

// fixture is a source tree (plugins, the conflist, no override) and an
// empty host, as the init container sees them.
type fixture struct {
	root string
	logs bytes.Buffer
}

func newFixture(t *testing.T, plugins ...string) *fixture {
	t.Helper()
	f := &fixture{root: t.TempDir()}
	for _, d := range []string{"src/bin", "src/override", "host/bin", "host/net.d"} {
		if err := os.MkdirAll(f.p(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range plugins {
		f.write(t, "src/bin/"+n, n+" from the image", 0o755)
	}
	f.write(t, "src/05-nexthop.conflist", `{"cniVersion":"1.0.0","name":"nexthop","plugins":[{"type":"nexthop"}]}`, 0o644)
	return f
}

func (f *fixture) p(s string) string { return filepath.Join(f.root, s) }

func (f *fixture) write(t *testing.T, path, s string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(f.p(path), []byte(s), mode); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(f.p(path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (f *fixture) run() error {
	log := slog.New(slog.NewTextHandler(&f.logs, nil))
	return run(log, f.p("src/bin"), f.p("host/bin"), f.p("src/05-nexthop.conflist"), f.p("src/override"), f.p("host/net.d"), "", "")
}

// firstConfig is the network config containerd and CRI-O would use: the
// first file libcni lists.
func firstConfig(t *testing.T, dir string) string {
	t.Helper()
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	if err != nil || len(files) == 0 {
		t.Fatalf("libcni finds no config in %s: %v", dir, err)
	}
	slices.Sort(files)
	return filepath.Base(files[0])
}

func TestEarlierConfigsMovedAside(t *testing.T) {
	f := newFixture(t, "nexthop")
	// What a node may already have: a CNI that sorts first, an old
	// multus-style .conf, a hidden .json (libcni reads those too), the
	// distribution's containerd config and a stale config of ours under
	// the old name, both after ours, and things that are no configs.
	earlier := map[string]string{
		"05-cilium.conflist": `{"name":"cilium"}`,
		"00-old.conf":        `{"name":"old","type":"bridge"}`,
		".hidden.json":       `{"name":"hidden"}`,
	}
	later := map[string]string{
		"10-containerd-net.conflist": `{"name":"containerd-net"}`,
		"10-nexthop.conflist":        `{"name":"nexthop","old":true}`,
		"01-readme.txt":              "not a config",
		"00-x.conflist.nexthop-bak":  "an earlier backup",
	}
	for n, s := range earlier {
		f.write(t, "host/net.d/"+n, s, 0o644)
	}
	for n, s := range later {
		f.write(t, "host/net.d/"+n, s, 0o644)
	}
	if err := os.Mkdir(f.p("host/net.d/02-dir.conf"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := firstConfig(t, f.p("host/net.d")); got != ".hidden.json" {
		t.Fatalf("before install libcni picks %s", got)
	}

	for range 2 { // the second run finds nothing to move
		if err := f.run(); err != nil {
			t.Fatal(err)
		}
		if got := firstConfig(t, f.p("host/net.d")); got != "05-nexthop.conflist" {
			t.Fatalf("after install libcni picks %s, want ours", got)
		}
	}
	for n, s := range earlier {
		if _, err := os.Lstat(f.p("host/net.d/" + n)); err == nil {
			t.Errorf("%s still in place", n)
		}
		if got := f.read(t, "host/net.d/"+n+".nexthop-bak"); got != s {
			t.Errorf("%s.nexthop-bak holds %q, want the original %q", n, got, s)
		}
		if !strings.Contains(f.logs.String(), "moved aside") || !strings.Contains(f.logs.String(), f.p("host/net.d/"+n)) {
			t.Errorf("the move of %s is not logged:\n%s", n, f.logs.String())
		}
	}
	for n, s := range later {
		if got := f.read(t, "host/net.d/"+n); got != s {
			t.Errorf("%s changed to %q", n, got)
		}
	}
	for _, n := range []string{"10-containerd-net.conflist", "10-nexthop.conflist"} {
		if !strings.Contains(f.logs.String(), "shadowed by ours") || !strings.Contains(f.logs.String(), f.p("host/net.d/"+n)) {
			t.Errorf("shadowed %s is not logged:\n%s", n, f.logs.String())
		}
	}
	if fi, err := os.Stat(f.p("host/net.d/02-dir.conf")); err != nil || !fi.IsDir() {
		t.Errorf("directory 02-dir.conf touched: %v", err)
	}
	es, _ := os.ReadDir(f.p("host/net.d"))
	for _, e := range es {
		if strings.HasSuffix(e.Name(), ".nexthop-bak.nexthop-bak") {
			t.Errorf("a backup was moved aside again: %s", e.Name())
		}
	}
}

func TestOwnedRecord(t *testing.T) {
	ownedAfter := func(t *testing.T, f *fixture) string {
		t.Helper()
		if err := f.run(); err != nil {
			t.Fatal(err)
		}
		return f.read(t, "host/bin/.nexthop-owned")
	}

	t.Run("fresh host", func(t *testing.T) {
		f := newFixture(t, "nexthop", "portmap", "loopback")
		// The distribution's loopback was there first.
		f.write(t, "host/bin/loopback", "distro loopback", 0o755)
		if got := ownedAfter(t, f); got != "nexthop\nportmap\n" {
			t.Fatalf("record %q, want the two plugins we created", got)
		}
		before, _ := os.Stat(f.p("host/bin/.nexthop-owned"))
		// Every plugin now exists: a rerun neither drops ours nor adds
		// loopback, and leaves the record alone.
		if got := ownedAfter(t, f); got != "nexthop\nportmap\n" {
			t.Fatalf("record after rerun %q", got)
		}
		after, _ := os.Stat(f.p("host/bin/.nexthop-owned"))
		if !os.SameFile(before, after) {
			t.Fatal("an unchanged record was rewritten")
		}
	})

	t.Run("merged with an earlier record", func(t *testing.T) {
		f := newFixture(t, "nexthop", "portmap")
		// An earlier install recorded bandwidth; one before the record
		// existed left nexthop, which is ours whatever the record says.
		f.write(t, "host/bin/.nexthop-owned", "bandwidth\n", 0o644)
		f.write(t, "host/bin/nexthop", "old plugin", 0o755)
		if got := ownedAfter(t, f); got != "bandwidth\nnexthop\nportmap\n" {
			t.Fatalf("record %q", got)
		}
		es, _ := os.ReadDir(f.p("host/bin"))
		for _, e := range es {
			if strings.HasPrefix(e.Name(), ".") && e.Name() != ".nexthop-owned" {
				t.Fatalf("temporary file left behind: %s", e.Name())
			}
		}
	})

	t.Run("a path in the record is refused", func(t *testing.T) {
		f := newFixture(t, "nexthop")
		f.write(t, "host/bin/.nexthop-owned", "nexthop\n../../etc/passwd\n", 0o644)
		err := f.run()
		if err == nil || !strings.Contains(err.Error(), `"../../etc/passwd" is not a plugin file name`) {
			t.Fatalf("run with a path in the record: %v", err)
		}
		if _, err := os.Lstat(f.p("host/bin/nexthop")); err == nil {
			t.Fatal("plugins installed despite the bad record")
		}
	})
}

// `nexthop uninstall` undoes what this leaves by these names.
func TestNamesMatchUninstall(t *testing.T) {
	if ownedRecord != uninstall.OwnedRecord || backupSuffix != uninstall.BackupSuffix || pluginName != uninstall.PluginBinary {
		t.Fatalf("installer writes %s, %s, %s; uninstall reads %s, %s, %s",
			ownedRecord, backupSuffix, pluginName, uninstall.OwnedRecord, uninstall.BackupSuffix, uninstall.PluginBinary)
	}
	if !slices.Contains(uninstall.ConfNames, confName) {
		t.Fatalf("uninstall does not remove %s (it knows %v)", confName, uninstall.ConfNames)
	}
}
