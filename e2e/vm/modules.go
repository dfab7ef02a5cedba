package vm

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// modName normalises a module name: file names may use '-' where modinfo
// and insmod use '_'.
func modName(s string) string {
	return strings.ReplaceAll(strings.TrimSuffix(path.Base(s), ".ko"), "-", "_")
}

// extractKernel keeps vmlinuz and the wanted modules from the kernel deb,
// adding dependencies (read from each module's .modinfo) in further passes
// until the set is closed. Busybox insmod has no dependency resolution and
// the initramfs has no modules.dep, so Run needs every file and the order.
func extractKernel(ctx context.Context, log Logger, deb, root string) (*manifest, error) {
	m := &manifest{Modules: map[string]string{}}
	want := map[string]bool{}
	for _, n := range cachedModules {
		want[n] = true
	}
	for pass := 0; pass < 4; pass++ {
		if err := extractKernelPass(ctx, deb, root, want, m); err != nil {
			return nil, err
		}
		missing := missingDeps(root, m)
		if len(missing) == 0 {
			break
		}
		for _, n := range missing {
			want[n] = true
		}
	}
	if m.Kernel == "" {
		return nil, fmt.Errorf("no boot/vmlinuz-* in %s", filepath.Base(deb))
	}
	for n := range want {
		if m.Modules[n] == "" {
			return nil, fmt.Errorf("module %s not in %s (built in, or compressed .ko.xz which is not supported yet)", n, filepath.Base(deb))
		}
	}
	log.Logf("vm: kernel %s with %d modules extracted", m.KernelVersion, len(m.Modules))
	return m, nil
}

// extractKernelPass streams the deb's data tarball once, writing the files
// we want; dpkg-deb -x would write the whole ~400 MB module tree.
func extractKernelPass(ctx context.Context, deb, root string, want map[string]bool, m *manifest) error {
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w", deb, err)
	}
	terr := extractKernelTar(out, root, want, m)
	io.Copy(io.Discard, out) // let dpkg-deb finish writing before Wait
	werr := cmd.Wait()
	if terr != nil {
		return fmt.Errorf("read kernel package: %w", terr)
	}
	if werr != nil {
		return fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w: %s", deb, werr, stderr.String())
	}
	return nil
}

func extractKernelTar(r io.Reader, root string, want map[string]bool, m *manifest) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		name := strings.TrimPrefix(path.Clean(h.Name), "./")
		switch {
		case strings.HasPrefix(name, "boot/vmlinuz-"):
			m.Kernel = name
			m.KernelVersion = strings.TrimPrefix(name, "boot/vmlinuz-")
		case strings.HasSuffix(name, ".ko") && want[modName(name)]:
			m.Modules[modName(name)] = name
		default:
			continue
		}
		if err := writeFile(filepath.Join(root, name), tr, 0o644); err != nil {
			return err
		}
	}
}

func writeFile(p string, r io.Reader, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", p, err)
	}
	return f.Close()
}

// missingDeps lists dependencies of extracted modules not yet extracted.
func missingDeps(root string, m *manifest) []string {
	var missing []string
	for _, rel := range m.Modules {
		deps, err := moduleDeps(filepath.Join(root, rel))
		if err != nil {
			continue // reported when Run orders modules
		}
		for _, d := range deps {
			if m.Modules[d] == "" {
				missing = append(missing, d)
			}
		}
	}
	return missing
}

// moduleDeps reads the depends= field of a module's .modinfo section.
func moduleDeps(ko string) ([]string, error) {
	f, err := elf.Open(ko)
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", ko, err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("module %s has no .modinfo", ko)
	}
	b, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo of %s: %w", ko, err)
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, modName(d))
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}

// loadOrder returns the modules to insmod for names, dependencies first.
func loadOrder(mods map[string]string, names []string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", n)
		case 2:
			return nil
		}
		ko := mods[n]
		if ko == "" {
			return fmt.Errorf("module %s is not in the VM cache (add it to cachedModules and remove the cache to re-fetch)", n)
		}
		state[n] = 1
		deps, err := moduleDeps(ko)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return fmt.Errorf("%s needs %w", n, err)
			}
		}
		state[n] = 2
		order = append(order, n)
		return nil
	}
	for _, n := range names {
		if err := visit(modName(n)); err != nil {
			return nil, err
		}
	}
	return order, nil
}
