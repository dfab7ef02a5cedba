// Command image builds the DaemonSet's image without a container engine:
// the same files as manifests/Dockerfile, as a tar that `ctr images import`,
// `docker load` and `crane push` accept. Run from anywhere in the module:
//
//	go run ./hack/image -o bin/nexthop-image.tar
//
// Progress goes to stderr; the image reference is stdout's last line, so
// that ref=$(go run ./hack/image) captures it.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/nexthop-net/nexthop/internal/ociimage"
)

// Repository is the image's name without tag, as the manifests reference it.
const Repository = "nexthop-net/nexthop"

// binaries are what go build makes, by the image path each lands at; every
// package's last element is its binary's name.
var binaries = []struct{ pkg, dir string }{
	{"./cmd/nexthopd", "/usr/local/bin"},
	{"./cmd/nexthop-install", "/usr/local/bin"},
	{"github.com/osrg/gobgp/v3/cmd/gobgp", "/usr/local/bin"},
	{"./cmd/nexthop", "/opt/nexthop/cni/bin"},
	{"github.com/containernetworking/plugins/plugins/meta/portmap", "/opt/nexthop/cni/bin"},
	{"github.com/containernetworking/plugins/plugins/main/loopback", "/opt/nexthop/cni/bin"},
}

func main() {
	out := flag.String("o", "bin/nexthop-image.tar", "the image tar to write")
	tag := flag.String("tag", "", "image reference (default "+Repository+":<git describe --tags --always --dirty>, or :dev outside git)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "image: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	ref, _, err := build(*out, *tag, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
	fmt.Println(ref)
}

// build writes the image to out, tagged tag (default: from git), and
// returns its reference and manifest digest, logging progress to log.
func build(out, tag string, log io.Writer) (ref, digest string, err error) {
	start := time.Now()
	root, err := moduleRoot()
	if err != nil {
		return "", "", err
	}
	ref = tag
	if ref == "" {
		ref = Repository + ":" + version(root)
	}
	if _, _, err := ociimage.Names(ref); err != nil {
		return "", "", err
	}
	tmp, err := os.MkdirTemp("", "nexthop-image-")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(tmp)

	args := []string{"build", "-trimpath", "-ldflags", "-s -w", "-o", tmp + "/"}
	var files []ociimage.File
	for _, b := range binaries {
		name := filepath.Base(b.pkg)
		fmt.Fprintf(log, "building %s -> %s/%s\n", b.pkg, b.dir, name)
		args = append(args, b.pkg)
		files = append(files, ociimage.Copy(filepath.Join(tmp, name), b.dir+"/"+name, 0o755))
	}
	// One go build for all: it compiles the packages in parallel.
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return "", "", fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	fmt.Fprintf(log, "built in %v\n", time.Since(start).Round(100*time.Millisecond))

	// Whatever the CNI config is called today (its name orders it among
	// the node's other configs).
	conflists, err := filepath.Glob(filepath.Join(root, "cni-plugin", "*.conflist"))
	if err != nil || len(conflists) == 0 {
		return "", "", fmt.Errorf("no cni-plugin/*.conflist under %s (%v)", root, err)
	}
	for _, c := range conflists {
		fmt.Fprintf(log, "adding %s -> /opt/nexthop/cni/%s\n", filepath.Base(c), filepath.Base(c))
		files = append(files, ociimage.Copy(c, "/opt/nexthop/cni/"+filepath.Base(c), 0o644))
	}
	// The directories the Dockerfile makes with mkdir -p (umask 022).
	files = append(files,
		ociimage.Dir("/tmp", 0o755),
		ociimage.Dir("/run/nexthop", 0o755),
		ociimage.Dir("/var/lib/nexthop", 0o755),
	)

	fmt.Fprintf(log, "writing %s\n", out)
	digest, err = ociimage.Write(out, ref, files, ociimage.Config{
		Entrypoint: []string{"/usr/local/bin/nexthopd"},
		// Root inside the container: the capabilities the DaemonSet adds
		// apply to root's effective set without file capabilities.
		User: "0:0",
	})
	if err != nil {
		return "", "", err
	}
	full, _, _ := ociimage.Names(ref)
	fmt.Fprintf(log, "wrote %s in %v: %s %s\n", out, time.Since(start).Round(100*time.Millisecond), full, digest)
	return ref, digest, nil
}

// moduleRoot is the directory of the main module's go.mod.
func moduleRoot() (string, error) {
	b, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(b))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the nexthop module (go env GOMOD is %q)", gomod)
	}
	return filepath.Dir(gomod), nil
}

// version is `git describe --tags --always --dirty` of root, "dev" when
// that fails (a source tarball, no git).
func version(root string) string {
	cmd := exec.Command("git", "describe", "--tags", "--always", "--dirty")
	cmd.Dir = root
	b, err := cmd.Output()
	if v := strings.TrimSpace(string(b)); err == nil && v != "" {
		return v
	}
	return "dev"
}
