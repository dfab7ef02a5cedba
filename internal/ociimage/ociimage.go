// Package ociimage builds small single-layer linux/amd64 container images
// from files on the host, without a container engine, and writes them as one
// tar that `ctr images import`, `docker load` and `crane push` all accept.
//
// Builds are reproducible: every entry has the same mtime (SOURCE_DATE_EPOCH,
// else the Unix epoch), uid/gid 0 and no user names, entries are sorted, and
// the layer is gzipped with a fixed header, so the same inputs give the same
// image digest on any machine with the same Go release.
package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// DefaultPath is the PATH an image gets when Config.Env is nil: what
// BuildKit gives a FROM scratch image.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// File is one entry of the image's filesystem.
type File struct {
	// Path is the absolute path in the image, e.g. /usr/local/bin/nexthopd.
	Path string
	// Src is the host file a regular entry's content comes from.
	Src string
	// Mode holds the permission bits, setuid, setgid and sticky as Unix
	// octal (0o4755, 0o1777) or as fs.ModeSetuid..., and fs.ModeDir for a
	// directory or fs.ModeSymlink for a symlink; no type bit means a
	// regular file.
	Mode fs.FileMode
	// Link is a symlink's target.
	Link string
}

// Copy is a regular file copied from the host file src.
func Copy(src, imagePath string, perm fs.FileMode) File {
	return File{Path: imagePath, Src: src, Mode: perm}
}

// Dir is a directory, empty unless other entries go under it. Parents of
// every entry are created 0755 without being listed.
func Dir(imagePath string, perm fs.FileMode) File {
	return File{Path: imagePath, Mode: fs.ModeDir | perm}
}

// Symlink is a symbolic link to target (as written, relative or absolute).
func Symlink(imagePath, target string) File {
	return File{Path: imagePath, Mode: fs.ModeSymlink | 0o777, Link: target}
}

// Tree lists what the directory hostDir holds as entries under imageDir:
// directories, regular files and symlinks with their host modes. imageDir
// itself is not listed (it is made 0755 unless listed apart): a temporary
// directory's 0700 would lock non-root users out. Other file types
// (devices, sockets, fifos) are refused: a test image has no use for them.
func Tree(hostDir, imageDir string) ([]File, error) {
	var files []File
	err := filepath.WalkDir(hostDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(hostDir, p)
		if err != nil {
			return err
		}
		dst := path.Join(imageDir, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch m := info.Mode(); {
		case rel == ".":
			if !m.IsDir() {
				return fmt.Errorf("%s is not a directory", p)
			}
		case m.IsDir():
			files = append(files, Dir(dst, m&modeBits))
		case m.IsRegular():
			files = append(files, Copy(p, dst, m&modeBits))
		case m&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			files = append(files, Symlink(dst, target))
		default:
			return fmt.Errorf("%s: file type %v cannot go into an image", p, m.Type())
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing %s for the image: %w", hostDir, err)
	}
	return files, nil
}

// Config is the image's runtime configuration.
type Config struct {
	Entrypoint []string
	Cmd        []string
	// Env is the environment, KEY=value; nil means PATH=DefaultPath.
	Env []string
	// User is "uid[:gid]" or a name; "" runs as the runtime's default (root).
	User       string
	WorkingDir string
	// Created is the image's creation time and every entry's mtime. Zero
	// means SOURCE_DATE_EPOCH when set, else the Unix epoch.
	Created time.Time
}

// modeBits are the mode bits a tar header carries besides the type.
const modeBits = 0o7777 | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// Build makes the image: one layer holding files, and cfg.
func Build(files []File, cfg Config) (v1.Image, error) {
	created, err := createdTime(cfg.Created)
	if err != nil {
		return nil, err
	}
	entries, err := entries(files)
	if err != nil {
		return nil, err
	}
	var gz bytes.Buffer
	if err := writeLayer(&gz, entries, created); err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gz.Bytes())), nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading back the image layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: fmt.Sprintf("ociimage: %d entries", len(entries)),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("adding the layer to the image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading the image config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = "amd64"
	cf.Created = v1.Time{Time: created}
	env := cfg.Env
	if env == nil {
		env = []string{"PATH=" + DefaultPath}
	}
	cf.Config = v1.Config{
		Entrypoint: cfg.Entrypoint,
		Cmd:        cfg.Cmd,
		Env:        env,
		User:       cfg.User,
		WorkingDir: cfg.WorkingDir,
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("setting the image config: %w", err)
	}
	return img, nil
}

// createdTime resolves Config.Created, whole seconds in UTC so that the tar
// headers fit ustar and the JSON has no fraction.
func createdTime(t time.Time) (time.Time, error) {
	if !t.IsZero() {
		return t.UTC().Truncate(time.Second), nil
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: not a number of seconds: %w", s, err)
		}
		return time.Unix(sec, 0).UTC(), nil
	}
	return time.Unix(0, 0).UTC(), nil
}

// entry is a File with its tar name: relative, cleaned, no trailing slash.
type entry struct {
	name string
	File
}

// entries validates files, adds the parent directories nobody listed and
// sorts the lot; a parent's name is a prefix of its children's, so sorting
// by name puts every directory before what it holds.
func entries(files []File) ([]entry, error) {
	byName := make(map[string]entry, len(files))
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("image path %q: want an absolute, clean path other than /", f.Path)
		}
		switch f.Mode.Type() {
		case 0:
			if f.Src == "" {
				return nil, fmt.Errorf("image file %s: no host file to copy", f.Path)
			}
		case fs.ModeDir:
		case fs.ModeSymlink:
			if f.Link == "" {
				return nil, fmt.Errorf("image symlink %s: no target", f.Path)
			}
		default:
			return nil, fmt.Errorf("image file %s: type %v is not a file, directory or symlink", f.Path, f.Mode.Type())
		}
		name := f.Path[1:]
		if _, dup := byName[name]; dup {
			return nil, fmt.Errorf("image path %s listed twice", f.Path)
		}
		byName[name] = entry{name, f}
	}
	for name := range byName {
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			e, ok := byName[d]
			if !ok {
				byName[d] = entry{d, Dir("/"+d, 0o755)}
				continue
			}
			if !e.Mode.IsDir() {
				return nil, fmt.Errorf("image path /%s is under /%s, which is not a directory", name, d)
			}
		}
	}
	out := make([]entry, 0, len(byName))
	for _, e := range byName {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// writeLayer writes the gzipped layer tar of entries.
func writeLayer(w io.Writer, entries []entry, mtime time.Time) error {
	// The gzip header is left at its zero Name and ModTime: nothing in it
	// varies between builds.
	zw, err := gzip.NewWriterLevel(w, gzip.DefaultCompression)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		if err := writeEntry(tw, e, mtime); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("closing the layer tar: %w", err)
	}
	return zw.Close()
}

func writeEntry(tw *tar.Writer, e entry, mtime time.Time) error {
	hdr := &tar.Header{
		Name:    e.name,
		Mode:    tarMode(e.Mode),
		ModTime: mtime,
	}
	var src *os.File
	switch e.Mode.Type() {
	case fs.ModeDir:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	case fs.ModeSymlink:
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = e.Link
	default:
		f, err := os.Open(e.Src)
		if err != nil {
			return fmt.Errorf("image file %s: %w", e.Path, err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("image file %s: %w", e.Path, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("image file %s: host file %s is not a regular file", e.Path, e.Src)
		}
		hdr.Typeflag = tar.TypeReg
		hdr.Size = st.Size()
		src = f
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("image entry %s: %w", e.Path, err)
	}
	if src != nil {
		// CopyN: a file growing while we read cannot overrun its header.
		if _, err := io.CopyN(tw, src, hdr.Size); err != nil {
			return fmt.Errorf("copying %s to image file %s: %w", e.Src, e.Path, err)
		}
	}
	return nil
}

// tarMode is the tar header's mode field: permissions and the
// setuid/setgid/sticky bits in their Unix places, whether given as Go's
// fs.ModeSetuid... or as Unix octal (0o1777).
func tarMode(m fs.FileMode) int64 {
	mode := int64(m & 0o7777)
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

// Busybox lists a static busybox (Debian's busybox-static: /bin/busybox)
// as /bin/busybox plus a /bin symlink for each applet it lists, so that an
// image of these entries has sh, ls, ping... on PATH.
func Busybox(hostBusybox string) ([]File, error) {
	out, err := exec.Command(hostBusybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("listing the applets of %s: %w", hostBusybox, err)
	}
	files := []File{Copy(hostBusybox, "/bin/busybox", 0o755)}
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" {
			files = append(files, Symlink("/bin/"+applet, "busybox"))
		}
	}
	return files, nil
}
