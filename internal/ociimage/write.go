package ociimage

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/renameio/v2"
)

// Annotations on the manifest's entry in index.json: containerd names the
// image after the first; the second is the OCI layout's own.
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// Names returns the two spellings of an image reference: full, as
// containerd and kubelet name it (docker.io/library/busybox:latest), and
// familiar, as docker save writes RepoTags (busybox:latest). A missing tag
// is "latest"; a digest reference is refused, since a tar names its image
// by tag.
func Names(ref string) (full, familiar string, err error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return "", "", fmt.Errorf("image reference %q: %w", ref, err)
	}
	repo := tag.RepositoryStr()
	reg := tag.RegistryStr()
	if reg != name.DefaultRegistry {
		full = reg + "/" + repo + ":" + tag.TagStr()
		return full, full, nil
	}
	full = "docker.io/" + repo + ":" + tag.TagStr()
	return full, strings.TrimPrefix(repo, "library/") + ":" + tag.TagStr(), nil
}

// Write builds the image from files and cfg and writes it to path (replaced
// atomically) tagged ref. It returns the manifest digest, the one `ctr
// images ls` shows and `crane push` pushes.
func Write(path, ref string, files []File, cfg Config) (digest string, err error) {
	img, err := Build(files, cfg)
	if err != nil {
		return "", err
	}
	created, err := createdTime(cfg.Created)
	if err != nil {
		return "", err
	}
	return WriteImage(path, ref, img, created)
}

// WriteImage writes img to path tagged ref as one tar that is both what
// `docker save` wrote before Docker 25 (manifest.json with RepoTags, read
// by docker load and by go-containerregistry's tarball package, hence crane
// push) and an OCI image layout (oci-layout, index.json, blobs/sha256/),
// which containerd's importer prefers whenever oci-layout is present:
// Docker 25+ `docker save` writes the same pair. Both point at the same
// blobs. The manifest uses Docker media types because go-containerregistry
// rebuilds the manifest of a manifest.json image with those: crane push
// then pushes the very digest ctr imports. mtime stamps the tar's entries.
func WriteImage(path, ref string, img v1.Image, mtime time.Time) (digest string, err error) {
	full, familiar, err := Names(ref)
	if err != nil {
		return "", err
	}
	if mt, err := img.MediaType(); err != nil || mt != types.DockerManifestSchema2 {
		return "", fmt.Errorf("image for %s: manifest media type %q (%v), want %s", ref, mt, err, types.DockerManifestSchema2)
	}
	manifest, err := img.RawManifest()
	if err != nil {
		return "", fmt.Errorf("image for %s: manifest: %w", ref, err)
	}
	mdigest, err := img.Digest()
	if err != nil {
		return "", fmt.Errorf("image for %s: digest: %w", ref, err)
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return "", fmt.Errorf("image for %s: config: %w", ref, err)
	}
	cdigest, err := img.ConfigName()
	if err != nil {
		return "", fmt.Errorf("image for %s: config digest: %w", ref, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return "", fmt.Errorf("image for %s: layers: %w", ref, err)
	}

	blobName := func(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }
	dockerManifest := []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}{{Config: blobName(cdigest), RepoTags: []string{familiar}}}
	// Every file of the tar but the layers, by name; the layers stream.
	small := map[string][]byte{
		"oci-layout":      []byte(`{"imageLayoutVersion":"1.0.0"}`),
		blobName(mdigest): manifest,
		blobName(cdigest): config,
	}
	layerByName := map[string]v1.Layer{}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return "", fmt.Errorf("image for %s: layer digest: %w", ref, err)
		}
		layerByName[blobName(d)] = l
		dockerManifest[0].Layers = append(dockerManifest[0].Layers, blobName(d))
	}
	if small["manifest.json"], err = json.Marshal(dockerManifest); err != nil {
		return "", err
	}
	index := v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: types.DockerManifestSchema2,
			Size:      int64(len(manifest)),
			Digest:    mdigest,
			Annotations: map[string]string{
				annotationContainerdName: full,
				annotationRefName:        full,
			},
		}},
	}
	if small["index.json"], err = json.Marshal(index); err != nil {
		return "", err
	}

	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", fmt.Errorf("writing image %s: %w", path, err)
	}
	out, err := renameio.NewPendingFile(path, renameio.WithPermissions(0o644))
	if err != nil {
		return "", fmt.Errorf("writing image %s: %w", path, err)
	}
	defer out.Cleanup()
	tw := tar.NewWriter(out)
	names := []string{"blobs", "blobs/sha256"}
	for n := range small {
		names = append(names, n)
	}
	for n := range layerByName {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := writeOuter(tw, n, small[n], layerByName[n], mtime); err != nil {
			return "", fmt.Errorf("writing image %s: %s: %w", path, n, err)
		}
	}
	if err := tw.Close(); err != nil {
		return "", fmt.Errorf("writing image %s: %w", path, err)
	}
	if err := out.CloseAtomicallyReplace(); err != nil {
		return "", fmt.Errorf("writing image %s: %w", path, err)
	}
	return mdigest.String(), nil
}

// writeOuter writes one entry of the image tar: a directory when neither
// data nor layer is given.
func writeOuter(tw *tar.Writer, n string, data []byte, layer v1.Layer, mtime time.Time) error {
	hdr := &tar.Header{Name: n, Mode: 0o644, ModTime: mtime, Typeflag: tar.TypeReg}
	switch {
	case layer != nil:
		size, err := layer.Size()
		if err != nil {
			return err
		}
		hdr.Size = size
	case data != nil:
		hdr.Size = int64(len(data))
	default:
		hdr.Name += "/"
		hdr.Mode = 0o755
		hdr.Typeflag = tar.TypeDir
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if layer == nil {
		_, err := tw.Write(data)
		return err
	}
	rc, err := layer.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.CopyN(tw, rc, hdr.Size)
	return err
}
