package ociimage_test

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/crane"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/nexthop-net/nexthop/internal/ociimage"
	"github.com/nexthop-net/nexthop/internal/ociimage/containerdtest"
)

// testFiles is a small image: a script, a tree from the host with a
// symlink and a setuid file, an explicitly mode-1777 /tmp.
func testFiles(t *testing.T) []ociimage.File {
	t.Helper()
	host := t.TempDir()
	must(t, os.WriteFile(filepath.Join(host, "hello"), []byte("#!/bin/sh\necho hello\n"), 0o755))
	tree := filepath.Join(host, "tree")
	must(t, os.MkdirAll(filepath.Join(tree, "sub"), 0o750))
	must(t, os.WriteFile(filepath.Join(tree, "sub", "data"), []byte("data\n"), 0o640))
	must(t, os.WriteFile(filepath.Join(tree, "suid"), []byte("x"), 0o755))
	must(t, os.Chmod(filepath.Join(tree, "suid"), 0o755|fs.ModeSetuid))
	must(t, os.Symlink("sub/data", filepath.Join(tree, "link")))
	files, err := ociimage.Tree(tree, "/srv/tree")
	must(t, err)
	return append(files,
		ociimage.Copy(filepath.Join(host, "hello"), "/usr/local/bin/hello", 0o755),
		ociimage.Dir("/tmp", 0o1777),
	)
}

var testConfig = ociimage.Config{
	Entrypoint: []string{"/usr/local/bin/hello"},
	Cmd:        []string{"--flag"},
	User:       "0:0",
	WorkingDir: "/srv",
}

func TestReproducible(t *testing.T) {
	files := testFiles(t)
	dir := t.TempDir()
	d1, err := ociimage.Write(filepath.Join(dir, "a.tar"), "example.com/t/img:v1", files, testConfig)
	must(t, err)
	// New host mtimes must not show: every entry gets the same one.
	later := time.Now().Add(time.Hour)
	for _, f := range files {
		if f.Src != "" {
			must(t, os.Chtimes(f.Src, later, later))
		}
	}
	d2, err := ociimage.Write(filepath.Join(dir, "b.tar"), "example.com/t/img:v1", files, testConfig)
	must(t, err)
	if d1 != d2 {
		t.Fatalf("same inputs, two digests: %s then %s", d1, d2)
	}
	a, err := os.ReadFile(filepath.Join(dir, "a.tar"))
	must(t, err)
	b, err := os.ReadFile(filepath.Join(dir, "b.tar"))
	must(t, err)
	if string(a) != string(b) {
		t.Fatal("same inputs, same digest, but the tars differ")
	}

	// Content does show.
	must(t, os.WriteFile(files[len(files)-2].Src, []byte("#!/bin/sh\necho bye\n"), 0o755))
	d3, err := ociimage.Write(filepath.Join(dir, "c.tar"), "example.com/t/img:v1", files, testConfig)
	must(t, err)
	if d3 == d1 {
		t.Fatalf("changed file, same digest %s", d1)
	}

	// And so does SOURCE_DATE_EPOCH.
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	d4, err := ociimage.Write(filepath.Join(dir, "d.tar"), "example.com/t/img:v1", files, testConfig)
	must(t, err)
	img, err := tarball.ImageFromPath(filepath.Join(dir, "d.tar"), nil)
	must(t, err)
	cf, err := img.ConfigFile()
	must(t, err)
	if d4 == d3 || !cf.Created.Equal(time.Unix(1700000000, 0)) {
		t.Fatalf("SOURCE_DATE_EPOCH=1700000000: digest %s (was %s), created %v", d4, d3, cf.Created)
	}
}

// TestLayout reads the tar back the way crane push (manifest.json) and an
// OCI layout reader (index.json) do.
func TestLayout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img.tar")
	digest, err := ociimage.Write(path, "example.com/t/img:v1", testFiles(t), testConfig)
	must(t, err)

	img, err := tarball.ImageFromPath(path, nil)
	must(t, err)
	got, err := img.Digest()
	must(t, err)
	if got.String() != digest {
		t.Errorf("manifest.json image has digest %s, Write said %s: crane push would push another image", got, digest)
	}
	cf, err := img.ConfigFile()
	must(t, err)
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
	c := cf.Config
	if strings.Join(c.Entrypoint, " ") != "/usr/local/bin/hello" || strings.Join(c.Cmd, " ") != "--flag" ||
		c.User != "0:0" || c.WorkingDir != "/srv" ||
		strings.Join(c.Env, " ") != "PATH="+ociimage.DefaultPath {
		t.Errorf("config %+v", c)
	}
	if !cf.Created.Equal(time.Unix(0, 0)) {
		t.Errorf("created %v, want the epoch", cf.Created)
	}

	want := map[string]string{ // name -> type mode [link]
		"srv/":                "dir 0755",
		"srv/tree/":           "dir 0755", // not the host dir's 0750: Tree lists what it holds
		"srv/tree/link":       "symlink 0777 sub/data",
		"srv/tree/sub/":       "dir 0750",
		"srv/tree/sub/data":   "file 0640",
		"srv/tree/suid":       "file 4755",
		"tmp/":                "dir 1777",
		"usr/":                "dir 0755",
		"usr/local/":          "dir 0755",
		"usr/local/bin/":      "dir 0755",
		"usr/local/bin/hello": "file 0755",
	}
	entries := layerEntries(t, img)
	var names []string
	for _, e := range entries {
		names = append(names, e.name)
		if e.uid != 0 || e.gid != 0 || !e.mtime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: uid %d gid %d mtime %v, want 0 0 epoch", e.name, e.uid, e.gid, e.mtime)
		}
		if w, ok := want[e.name]; ok && e.desc != w {
			t.Errorf("%s: %s, want %s", e.name, e.desc, w)
		}
	}
	if len(entries) != len(want) {
		t.Errorf("layer holds %q, want %d entries", names, len(want))
	}
	for i := 1; i < len(names); i++ {
		if names[i-1] >= names[i] {
			t.Errorf("layer entries not sorted: %q before %q", names[i-1], names[i])
		}
	}

	// The OCI side: what containerd reads.
	dir := t.TempDir()
	untar(t, path, dir)
	idx, err := layout.ImageIndexFromPath(dir)
	must(t, err)
	im, err := idx.IndexManifest()
	must(t, err)
	if len(im.Manifests) != 1 {
		t.Fatalf("index.json lists %d manifests, want 1", len(im.Manifests))
	}
	m := im.Manifests[0]
	if m.Digest.String() != digest ||
		m.Annotations["io.containerd.image.name"] != "example.com/t/img:v1" ||
		m.Annotations["org.opencontainers.image.ref.name"] != "example.com/t/img:v1" {
		t.Errorf("index.json entry %+v, want digest %s named example.com/t/img:v1", m, digest)
	}
	oimg, err := idx.Image(m.Digest)
	must(t, err)
	ocf, err := oimg.RawConfigFile()
	must(t, err)
	tcf, err := img.RawConfigFile()
	must(t, err)
	if string(ocf) != string(tcf) {
		t.Error("the OCI layout and manifest.json carry different configs")
	}
	var mj []struct{ RepoTags []string }
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	must(t, err)
	must(t, json.Unmarshal(b, &mj))
	if len(mj) != 1 || strings.Join(mj[0].RepoTags, ",") != "example.com/t/img:v1" {
		t.Errorf("manifest.json %s, want RepoTags [example.com/t/img:v1]", b)
	}
}

func TestNames(t *testing.T) {
	for ref, want := range map[string][2]string{
		"busybox":                     {"docker.io/library/busybox:latest", "busybox:latest"},
		"nexthop-net/nexthop:dev":     {"docker.io/nexthop-net/nexthop:dev", "nexthop-net/nexthop:dev"},
		"docker.io/library/pause:1":   {"docker.io/library/pause:1", "pause:1"},
		"localhost:5000/nexthop:v1.2": {"localhost:5000/nexthop:v1.2", "localhost:5000/nexthop:v1.2"},
	} {
		full, fam, err := ociimage.Names(ref)
		if err != nil || full != want[0] || fam != want[1] {
			t.Errorf("Names(%q) = %q, %q, %v; want %q, %q", ref, full, fam, err, want[0], want[1])
		}
	}
	if _, _, err := ociimage.Names("Upper/Case:x"); err == nil {
		t.Error("Names accepted an upper-case repository")
	}
}

func TestRefusals(t *testing.T) {
	out := filepath.Join(t.TempDir(), "x.tar")
	for what, files := range map[string][]ociimage.File{
		"relative path":   {ociimage.Dir("tmp", 0o755)},
		"unclean path":    {ociimage.Dir("/a/../tmp", 0o755)},
		"duplicate":       {ociimage.Dir("/tmp", 0o755), ociimage.Dir("/tmp", 0o1777)},
		"under a file":    {ociimage.Copy("/bin/busybox", "/bin", 0o755), ociimage.Symlink("/bin/sh", "busybox")},
		"missing host":    {ociimage.Copy("/nonexistent/file", "/x", 0o644)},
		"symlink no link": {{Path: "/x", Mode: fs.ModeSymlink}},
	} {
		if _, err := ociimage.Write(out, "t:1", files, ociimage.Config{}); err == nil {
			t.Errorf("%s: Write accepted %+v", what, files)
		}
	}
}

// TestCranePush does what `crane push img.tar REF` does (crane.Load, then
// crane.Push) against a registry on loopback: the registry then serves the
// digest Write returned.
func TestCranePush(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img.tar")
	digest, err := ociimage.Write(path, "example.com/t/img:v1", testFiles(t), testConfig)
	must(t, err)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/nexthop:v1"
	img, err := crane.Load(path)
	must(t, err)
	must(t, crane.Push(img, ref))
	got, err := crane.Digest(ref)
	must(t, err)
	if got != digest {
		t.Fatalf("registry serves %s at %s, Write said %s", got, ref, digest)
	}
}

// TestContainerd imports a busybox image into a real containerd, finds it
// under its full name with the digest Write returned, and runs it.
func TestContainerd(t *testing.T) {
	files, err := ociimage.Busybox("/bin/busybox")
	if err != nil {
		t.Fatalf("%v (Debian: apt-get install busybox-static)", err)
	}
	data := t.TempDir()
	must(t, os.WriteFile(filepath.Join(data, "motd"), []byte("from the image\n"), 0o644))
	tree, err := ociimage.Tree(data, "/etc")
	must(t, err)
	files = append(files, tree...)
	path := filepath.Join(t.TempDir(), "busybox.tar")
	digest, err := ociimage.Write(path, "nexthop-test/busybox:ociimage", files, ociimage.Config{
		// sh found through PATH: the config's Env reaches the process.
		Entrypoint: []string{"sh", "-c"},
		Cmd:        []string{`echo "$(cat /etc/motd) as $(id -u):$(id -g) in $(pwd)"`},
		User:       "0:0",
		WorkingDir: "/etc",
	})
	must(t, err)

	c := containerdtest.Start(t)
	c.Ctr(t, "images", "import", path)
	const full = "docker.io/nexthop-test/busybox:ociimage"
	imgs := c.Images(t)
	if imgs[full] != digest {
		t.Fatalf("ctr images ls: %v; want %s at %s", imgs, full, digest)
	}
	out, err := c.Run(t, full)
	if err != nil {
		t.Fatalf("ctr run %s: %v\n%s", full, err, out)
	}
	t.Logf("ctr images ls: %s at %s; ctr run: %q", full, imgs[full], out)
	if got := strings.TrimSpace(out); got != "from the image as 0:0 in /etc" {
		t.Fatalf("container said %q", got)
	}
}

type layerEntry struct {
	name, desc string
	uid, gid   int
	mtime      time.Time
}

func layerEntries(t *testing.T, img v1.Image) []layerEntry {
	t.Helper()
	layers, err := img.Layers()
	must(t, err)
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	must(t, err)
	defer rc.Close()
	var out []layerEntry
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		must(t, err)
		var desc string
		switch h.Typeflag {
		case tar.TypeDir:
			desc = "dir"
		case tar.TypeSymlink:
			desc = "symlink"
		case tar.TypeReg:
			desc = "file"
		default:
			desc = string(h.Typeflag)
		}
		desc += fmt.Sprintf(" %04o", h.Mode)
		if h.Linkname != "" {
			desc += " " + h.Linkname
		}
		out = append(out, layerEntry{h.Name, desc, h.Uid, h.Gid, h.ModTime})
	}
	return out
}

func untar(t *testing.T, tarPath, dir string) {
	t.Helper()
	if out, err := exec.Command("tar", "-xf", tarPath, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("tar -xf %s: %v\n%s", tarPath, err, out)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
