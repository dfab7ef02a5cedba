package vm

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// cpioWriter writes an uncompressed "newc" cpio archive, the format the
// kernel unpacks as initramfs. Uncompressed because decompressing tens of
// megabytes of Go binaries in an emulated CPU costs seconds per boot, while
// the host reads the file instantly.
type cpioWriter struct {
	w    *bufio.Writer
	ino  uint32
	dirs map[string]bool
	// names are the files and links written so far: the first entry for a
	// path wins, so two binaries sharing a library (ip and iperf3 both
	// need libc) ship it once.
	names map[string]bool
	err   error
}

func newCPIO(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriterSize(w, 1<<20), ino: 1, dirs: map[string]bool{".": true, "/": true}, names: map[string]bool{}}
}

// first reports whether name has not been written yet, and records it.
func (c *cpioWriter) first(name string) bool {
	name = path.Clean("/" + name)
	if c.names[name] {
		return false
	}
	c.names[name] = true
	return true
}

const (
	modeDir  = 0o040000
	modeReg  = 0o100000
	modeLink = 0o120000
)

func (c *cpioWriter) header(name string, mode uint32, size int) {
	if c.err != nil {
		return
	}
	c.ino++
	name = strings.TrimPrefix(name, "/")
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize, check
	_, c.err = fmt.Fprintf(c.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	if c.err == nil {
		_, c.err = c.w.WriteString(name + "\x00")
	}
	c.pad(110 + len(name) + 1)
}

// pad aligns to 4 bytes after n bytes written.
func (c *cpioWriter) pad(n int) {
	if c.err == nil && n%4 != 0 {
		_, c.err = c.w.Write(make([]byte, 4-n%4))
	}
}

// mkdirAll emits the directory entries a path needs, parents first (the
// kernel creates nothing implicitly).
func (c *cpioWriter) mkdirAll(dir string) {
	dir = path.Clean("/" + dir)
	if c.dirs[dir] {
		return
	}
	c.mkdirAll(path.Dir(dir))
	c.dirs[dir] = true
	c.header(dir, modeDir|0o755, 0)
}

func (c *cpioWriter) bytes(name string, data []byte, perm os.FileMode) {
	if !c.first(name) {
		return
	}
	c.mkdirAll(path.Dir(name))
	c.header(name, modeReg|uint32(perm.Perm()), len(data))
	if c.err == nil {
		_, c.err = c.w.Write(data)
	}
	c.pad(len(data))
}

func (c *cpioWriter) symlink(name, target string) {
	if !c.first(name) {
		return
	}
	c.mkdirAll(path.Dir(name))
	c.header(name, modeLink|0o777, len(target))
	if c.err == nil {
		_, c.err = c.w.WriteString(target)
	}
	c.pad(len(target))
}

// file copies a host file; perm 0 keeps the host file's permissions.
func (c *cpioWriter) file(name, src string, perm os.FileMode) {
	if c.err != nil || !c.first(name) {
		return
	}
	f, err := os.Open(src)
	if err != nil {
		c.err = fmt.Errorf("initramfs: %w", err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		c.err = err
		return
	}
	if perm == 0 {
		perm = fi.Mode().Perm()
	}
	c.mkdirAll(path.Dir(name))
	c.header(name, modeReg|uint32(perm.Perm()), int(fi.Size()))
	if c.err != nil {
		return
	}
	n, err := io.Copy(c.w, f)
	if err != nil {
		c.err = fmt.Errorf("initramfs: copy %s: %w", src, err)
		return
	}
	c.pad(int(n))
}

func (c *cpioWriter) close() error {
	c.header("TRAILER!!!", 0, 0)
	if c.err != nil {
		return c.err
	}
	return c.w.Flush()
}

// sortedKeys keeps archives reproducible, which makes diffs of two runs'
// initramfs listings meaningful when debugging.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
