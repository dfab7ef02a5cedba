package vm

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// staticEnv builds binaries that run on the bare initramfs (no libc there).
var staticEnv = []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"}

// BuildStatic builds each package's command (e.g. ./cmd/nexthopd, or
// github.com/osrg/gobgp/v3/cmd/gobgp resolved through our go.mod) into
// outDir and returns the binaries' paths in order. Relative package paths
// are relative to the current directory, as for go build.
func BuildStatic(ctx context.Context, outDir string, pkgs ...string) ([]string, error) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", outDir, err)
	}
	var bins []string
	for _, p := range pkgs {
		bin := filepath.Join(outDir, path.Base(strings.TrimSuffix(p, "/")))
		if _, err := run(ctx, "", staticEnv, "go", "build", "-trimpath", "-o", bin, p); err != nil {
			return nil, fmt.Errorf("build %s statically: %w", p, err)
		}
		bins = append(bins, bin)
	}
	return bins, nil
}

// BuildTest compiles pkg's tests into a static binary in outDir (go test
// -c) and returns its path; run it in the guest with -test.v -test.run X.
func BuildTest(ctx context.Context, outDir, pkg string) (string, error) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", outDir, err)
	}
	bin := filepath.Join(outDir, path.Base(strings.TrimSuffix(pkg, "/"))+".test")
	if _, err := run(ctx, "", staticEnv, "go", "test", "-c", "-trimpath", "-o", bin, pkg); err != nil {
		return "", fmt.Errorf("build test binary of %s statically: %w", pkg, err)
	}
	return bin, nil
}
