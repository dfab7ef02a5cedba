package uninstall

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// removeConf removes our conflist under each name it has had, then puts
// back the configs the installer moved aside. Ours goes first: a restored
// config must not find ours still winning.
func removeConf(r *reporter, dir string) {
	for _, n := range ConfNames {
		removeFile(r, filepath.Join(dir, n))
		removeTemps(r, dir, n)
	}
	es, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		r.fail(fmt.Errorf("list CNI configs to restore: %w", err))
		return
	}
	for _, e := range es {
		orig, ok := strings.CutSuffix(e.Name(), BackupSuffix)
		if !ok || orig == "" || !e.Type().IsRegular() {
			continue
		}
		bak, dst := filepath.Join(dir, e.Name()), filepath.Join(dir, orig)
		switch err := renameNoReplace(bak, dst); {
		case err == nil:
			r.restored("%s (from %s)", dst, bak)
		case errors.Is(err, fs.ErrExist):
			// Someone put a new config there since: theirs wins, and the
			// old one stays aside for them to judge.
			r.kept("%s: %s exists, so it was not put back", bak, dst)
		default:
			r.fail(fmt.Errorf("restore %s from %s: %w", dst, bak, err))
		}
	}
}

// renameNoReplace renames unless newpath exists, atomically where the
// filesystem can (RENAME_NOREPLACE): never over a config someone just
// wrote.
func renameNoReplace(oldpath, newpath string) error {
	err := unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// No RENAME_NOREPLACE here: check, then rename.
		if _, err := os.Lstat(newpath); err == nil {
			return fs.ErrExist
		}
		return os.Rename(oldpath, newpath)
	}
	if errors.Is(err, unix.EEXIST) {
		return fs.ErrExist
	}
	return err
}

// removeBinaries removes the nexthop plugin and the binaries the
// installer recorded as created by it, then the record. A binary not
// recorded (a portmap the node had before us) stays.
func removeBinaries(r *reporter, dir string) {
	record := filepath.Join(dir, OwnedRecord)
	names := []string{PluginBinary}
	ok := true
	b, err := os.ReadFile(record)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		r.fail(fmt.Errorf("read the record of our plugin binaries: %w", err))
		ok = false
	default:
		recorded, bad := parseRecord(b)
		for _, l := range bad {
			r.fail(fmt.Errorf("%s: %q is not a file name; not removing anything by it", record, l))
		}
		names = append(names, recorded...)
		ok = len(bad) == 0
	}
	slices.Sort(names)
	names = slices.Compact(names)
	for _, n := range names {
		ok = removeFile(r, filepath.Join(dir, n)) && ok
		removeTemps(r, dir, n)
	}
	// The record goes last, and only once every binary it lists is gone:
	// a rerun must still know them.
	if ok {
		removeFile(r, record)
		removeTemps(r, dir, OwnedRecord)
	}
}

// parseRecord returns the base names in an OwnedRecord, and the lines that
// are not one.
func parseRecord(b []byte) (names, bad []string) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "":
		case l == "." || l == ".." || strings.ContainsRune(l, '/') || l == OwnedRecord:
			bad = append(bad, l)
		default:
			names = append(names, l)
		}
	}
	return names, bad
}

// removeFile removes path if it is a file (or a symlink); reports whether
// it is gone.
func removeFile(r *reporter, path string) bool {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return true
	}
	if err == nil && fi.IsDir() {
		err = errors.New("is a directory, not a file we installed")
	}
	if err == nil {
		if err = os.Remove(path); errors.Is(err, fs.ErrNotExist) {
			return true // gone meanwhile
		}
	}
	if err != nil {
		r.fail(fmt.Errorf("remove %s: %w", path, err))
		return false
	}
	r.removed("%s", path)
	return true
}

// removeTemps removes the hidden temporary files the installer writes
// beside name before renaming them into place (".name.tmp-*"): left only
// when it was killed in between.
func removeTemps(r *reporter, dir, name string) {
	ms, _ := filepath.Glob(filepath.Join(dir, "."+globEscape(name)+".tmp-*"))
	for _, m := range ms {
		removeFile(r, m)
	}
}

func globEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`).Replace(s)
}

// removeDir removes a directory of ours whole.
func removeDir(r *reporter, dir string) {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		r.fail(fmt.Errorf("remove %s: %w", dir, err))
		return
	}
	r.removed("%s", dir)
}
