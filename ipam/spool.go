package ipam

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
)

// Pending releases: a CNI DEL that cannot reach the daemon (upgrade,
// uninstall) still unwires the pod and succeeds, so the pod does not stick in
// Terminating; it leaves one small record per attachment in a spool directory
// under the daemon's state dir, and the daemon releases the address when it is
// back, before it serves the IPAM socket and then periodically.
//
// A record never frees an address a newer ADD of the same attachment uses:
// it carries the time the DEL began, and the allocation is kept if an ADD
// allocated or claimed it (Allocation.Readded) at or after that time.
//
// Records are trusted only in a directory owned by the daemon's user (root)
// and writable by nobody else, and only as regular files of that user named
// from their own content: a local user must not be able to make the daemon
// release someone else's address.

// PendingReleaseDirName is the spool's name in the daemon's state dir.
const PendingReleaseDirName = "pending-release"

// maxRecordSize bounds what the daemon reads from one record.
const maxRecordSize = 4096

// rejectedSuffix marks a record moved aside as unusable; the daemon ignores it.
const rejectedSuffix = ".rejected"

// PendingRelease is one DEL whose release waits for the daemon.
type PendingRelease struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	// Time is when the DEL began: allocations an ADD made or claimed from
	// then on are not released.
	Time time.Time `json:"time"`
}

// PendingReleaseName is the record's file name for the attachment: a hash,
// so no container ID or interface name, however hostile, can name a path.
func PendingReleaseName(containerID, ifName string) string {
	h := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return hex.EncodeToString(h[:]) + ".json"
}

// RecordPendingRelease durably records pr in dir (created 0700 if missing),
// replacing any earlier record for the same attachment, and returns the
// record's path. It refuses a directory the daemon would not trust.
func RecordPendingRelease(dir string, pr PendingRelease) (string, error) {
	if pr.ContainerID == "" || pr.IfName == "" || pr.Time.IsZero() {
		return "", fmt.Errorf("%w: pending release needs a container ID, an interface name and a time", ErrInvalidArgument)
	}
	data, err := json.Marshal(pr)
	if err != nil {
		return "", fmt.Errorf("encode pending release: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create pending-release dir: %w", err)
	}
	root, err := openSpool(dir)
	if err != nil {
		return "", err
	}
	defer root.Close()
	name := PendingReleaseName(pr.ContainerID, pr.IfName)
	// Temp file in the same dir, fsync'ed, renamed over: a crash leaves the
	// old record, the new one, or a dot-file the daemon ignores.
	if err := renameio.WriteFile(name, data, 0o600, renameio.WithRoot(root), renameio.WithStaticPermissions(0o600)); err != nil {
		return "", fmt.Errorf("write pending release %s in %s: %w", name, dir, err)
	}
	// The rename is durable only once the directory is.
	if err := syncDir(dir); err != nil {
		return "", err
	}
	return filepath.Join(dir, name), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s to sync: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// ErrUntrustedSpool means the pending-release directory or a record in it
// could have been written by someone other than the daemon's user.
var ErrUntrustedSpool = errors.New("untrusted pending-release spool")

// checkOwner refuses a file not owned by this process's user (root in
// production) or writable by group or others.
func checkOwner(what string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%w: %s: no owner information", ErrUntrustedSpool, what)
	}
	if int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: %s is owned by uid %d, not %d", ErrUntrustedSpool, what, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%w: %s has mode %v: group or others may write it", ErrUntrustedSpool, what, fi.Mode().Perm())
	}
	return nil
}

// openSpool opens dir, refusing a symlink, and checks the directory it
// opened (not the path, which could be swapped after the check).
func openSpool(dir string) (*os.Root, error) {
	fi, err := os.Lstat(dir)
	if err != nil {
		return nil, fmt.Errorf("pending-release dir: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s is not a directory (mode %v)", ErrUntrustedSpool, dir, fi.Mode())
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open pending-release dir: %w", err)
	}
	if fi, err = root.Stat("."); err == nil {
		err = checkOwner(dir, fi)
	}
	if err != nil {
		root.Close()
		return nil, err
	}
	return root, nil
}

// SpoolResult counts what one pass over the spool did.
type SpoolResult struct {
	Released int // addresses freed
	Free     int // records whose attachment held nothing
	Kept     int // records older than an ADD of the same attachment
	Rejected int // records moved aside unread or unusable
}

// ReleasePending processes every record in dir: releases the attachment's
// address unless a newer ADD claimed it, then removes the record. A record
// that cannot be trusted or read is logged and moved aside; an untrusted
// directory is logged and left alone. A missing directory is nothing to do.
// Only a failure of the store itself is returned (its records stay for the
// next pass).
func (a *Allocator) ReleasePending(ctx context.Context, dir string, log *slog.Logger) (SpoolResult, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("spool", dir)
	var res SpoolResult
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return res, nil
	}
	root, err := openSpool(dir)
	if err != nil {
		log.Error("ipam: pending releases refused: fix the directory (root-owned, mode 0700) and check its records", "err", err)
		return res, nil
	}
	defer root.Close()
	entries, err := fs.ReadDir(root.FS(), ".")
	if err != nil {
		log.Error("ipam: pending releases: read spool", "err", err)
		return res, nil
	}
	for _, e := range entries {
		name := e.Name()
		// renameio's temp files are records being written; rejected ones were
		// reported when they were moved aside.
		if tempRecordName.MatchString(name) || strings.HasSuffix(name, rejectedSuffix) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		pr, err := readRecord(root, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // processed by a concurrent pass
		}
		if err != nil {
			res.Rejected++
			log.Error("ipam: pending release record refused, moved aside", "record", name, "err", err)
			if err := root.Rename(name, name+rejectedSuffix); err != nil {
				log.Error("ipam: move refused record aside", "record", name, "err", err)
			}
			continue
		}
		rlog := log.With("container", pr.ContainerID, "ifName", pr.IfName, "delAt", pr.Time)
		al, released, kept, err := a.ReleaseUnclaimedSince(ctx, pr.ContainerID, pr.IfName, pr.Time)
		if err != nil {
			return res, fmt.Errorf("pending release of %s/%s: %w", pr.ContainerID, pr.IfName, err)
		}
		switch {
		case released:
			res.Released++
			rlog.Info("ipam: released address of a pod deleted while the daemon was down", "ip", al.AddrString())
		case kept:
			res.Kept++
			rlog.Info("ipam: pending release skipped: the attachment was added again after its DEL", "ip", al.AddrString(),
				"allocated", al.Allocated, "readded", al.Readded)
		default:
			res.Free++
			rlog.Info("ipam: pending release: address already free")
		}
		// Losing this removal to a crash is harmless: the record is read
		// again, and by then the attachment holds nothing or a newer claim.
		if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			rlog.Error("ipam: remove processed pending release", "record", name, "err", err)
		}
	}
	return res, nil
}

var (
	recordName     = regexp.MustCompile(`^[0-9a-f]{64}\.json$`)
	tempRecordName = regexp.MustCompile(`^\.[0-9a-f]{64}\.json[0-9]+$`)
)

// readRecord reads and vets one record; name is a plain entry of root.
func readRecord(root *os.Root, name string) (PendingRelease, error) {
	var pr PendingRelease
	if !recordName.MatchString(name) {
		return pr, fmt.Errorf("%w: %q is not a record name", ErrUntrustedSpool, name)
	}
	fi, err := root.Lstat(name)
	if err != nil {
		return pr, err
	}
	if !fi.Mode().IsRegular() {
		return pr, fmt.Errorf("%w: not a regular file (%v)", ErrUntrustedSpool, fi.Mode().Type())
	}
	if err := checkOwner(name, fi); err != nil {
		return pr, err
	}
	if fi.Size() > maxRecordSize {
		return pr, fmt.Errorf("%d bytes, more than a record's %d", fi.Size(), maxRecordSize)
	}
	data, err := root.ReadFile(name)
	if err != nil {
		return pr, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&pr); err != nil {
		return pr, fmt.Errorf("decode: %w", err)
	}
	if pr.ContainerID == "" || pr.IfName == "" || pr.Time.IsZero() {
		return pr, errors.New("record lacks containerID, ifName or time")
	}
	// Only RecordPendingRelease names files: a record under another name was
	// copied or planted.
	if want := PendingReleaseName(pr.ContainerID, pr.IfName); name != want {
		return pr, fmt.Errorf("%w: names %s/%s, which belongs in %s", ErrUntrustedSpool, pr.ContainerID, pr.IfName, want)
	}
	return pr, nil
}

// ReleasePendingEvery processes dir now (call it before serving the IPAM
// socket: DELs made while the daemon was down free their addresses before
// any ADD can ask for one), then every interval in the background until ctx
// is done, for records written while the daemon was briefly away. The
// returned func waits for the background part to end.
func (a *Allocator) ReleasePendingEvery(ctx context.Context, dir string, interval time.Duration, log *slog.Logger) (wait func()) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pass := func() {
		if _, err := a.ReleasePending(ctx, dir, log); err != nil && ctx.Err() == nil {
			log.Error("ipam: pending releases", "spool", dir, "err", err)
		}
	}
	pass()
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				pass()
			}
		}
	})
	return wg.Wait
}
