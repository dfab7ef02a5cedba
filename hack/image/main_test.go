package main

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/nexthop-net/nexthop/internal/ociimage/containerdtest"
)

// TestImage builds the real image twice, checks it holds what
// manifests/Dockerfile puts in it, and imports and runs it in containerd.
func TestImage(t *testing.T) {
	dir := t.TempDir()
	var log strings.Builder
	ref, digest, err := build(filepath.Join(dir, "a.tar"), "nexthop-net/nexthop:test", &log)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	t.Logf("first build:\n%s", log.String())
	if ref != "nexthop-net/nexthop:test" {
		t.Errorf("ref %q, want the -tag given", ref)
	}

	// Reproducible: a second build (go's cache makes it quick) gives the
	// same digest.
	_, digest2, err := build(filepath.Join(dir, "b.tar"), "nexthop-net/nexthop:test", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if digest2 != digest {
		t.Fatalf("two builds of the same tree: %s then %s (or a source file changed in between)", digest, digest2)
	}

	img, err := tarball.ImageFromPath(filepath.Join(dir, "a.tar"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := img.Digest(); d.String() != digest {
		t.Errorf("manifest.json image is %s, build said %s", d, digest)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" ||
		strings.Join(cf.Config.Entrypoint, " ") != "/usr/local/bin/nexthopd" || cf.Config.User != "0:0" {
		t.Errorf("config: %s/%s entrypoint %q user %q; want linux/amd64, /usr/local/bin/nexthopd, 0:0",
			cf.OS, cf.Architecture, cf.Config.Entrypoint, cf.Config.User)
	}

	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = fmt.Sprintf("%c %04o", h.Typeflag, h.Mode)
	}
	conflists, _ := filepath.Glob("../../cni-plugin/*.conflist")
	want := map[string]string{
		"opt/":                          "5 0755",
		"opt/nexthop/":                  "5 0755",
		"opt/nexthop/cni/":              "5 0755",
		"opt/nexthop/cni/bin/":          "5 0755",
		"opt/nexthop/cni/bin/loopback":  "0 0755",
		"opt/nexthop/cni/bin/nexthop":   "0 0755",
		"opt/nexthop/cni/bin/portmap":   "0 0755",
		"run/":                          "5 0755",
		"run/nexthop/":                  "5 0755",
		"tmp/":                          "5 0755",
		"usr/":                          "5 0755",
		"usr/local/":                    "5 0755",
		"usr/local/bin/":                "5 0755",
		"usr/local/bin/gobgp":           "0 0755",
		"usr/local/bin/nexthop-install": "0 0755",
		"usr/local/bin/nexthopd":        "0 0755",
		"var/":                          "5 0755",
		"var/lib/":                      "5 0755",
		"var/lib/nexthop/":              "5 0755",
	}
	for _, c := range conflists {
		want["opt/nexthop/cni/"+filepath.Base(c)] = "0 0644"
	}
	if len(conflists) == 0 {
		t.Error("no cni-plugin/*.conflist to compare with")
	}
	if fmt.Sprint(sorted(got)) != fmt.Sprint(sorted(want)) {
		t.Errorf("image files:\n%s\nwant:\n%s", strings.Join(sorted(got), "\n"), strings.Join(sorted(want), "\n"))
	}

	// What a node does with it: import into containerd's k8s.io namespace
	// (kubelet's), find it by the name the DaemonSet uses, run the
	// entrypoint: static binaries need nothing from the empty base.
	c := containerdtest.Start(t)
	c.Ctr(t, "images", "import", filepath.Join(dir, "a.tar"))
	const full = "docker.io/nexthop-net/nexthop:test"
	if imgs := c.Images(t); imgs[full] != digest {
		t.Fatalf("ctr images ls: %v; want %s at %s", imgs, full, digest)
	}
	for _, run := range []struct{ args, want string }{
		{"/usr/local/bin/nexthopd -h", "-base-config"},
		{"gobgp --version", "gobgp version"}, // through the image's PATH
	} {
		out, err := c.Run(t, full, strings.Fields(run.args)...)
		if err != nil || !strings.Contains(out, run.want) {
			t.Errorf("%s in the container: %v\n%s", run.args, err, out)
		}
	}
}

func sorted(m map[string]string) []string {
	var s []string
	for k, v := range m {
		s = append(s, k+" "+v)
	}
	sort.Strings(s)
	return s
}
