package ipam

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func spoolT(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "state", PendingReleaseDirName)
}

func recordT(t *testing.T, dir, id, ifName string, at time.Time) string {
	t.Helper()
	p, err := RecordPendingRelease(dir, PendingRelease{ContainerID: id, IfName: ifName, Time: at})
	if err != nil {
		t.Fatalf("RecordPendingRelease(%s/%s): %v", id, ifName, err)
	}
	return p
}

func spoolFiles(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func releasePendingT(t *testing.T, a *Allocator, dir string, log *slog.Logger) SpoolResult {
	t.Helper()
	res, err := a.ReleasePending(context.Background(), dir, log)
	if err != nil {
		t.Fatalf("ReleasePending: %v", err)
	}
	return res
}

// A DEL recorded while the daemon was down frees the address once, at the
// next start; a start after that frees nothing, and the address goes to
// exactly one new attachment.
func TestPendingReleaseOnce(t *testing.T) {
	db := filepath.Join(t.TempDir(), "ipam.db")
	dir := spoolT(t)
	a := openT(t, db, "10.9.0.0/30") // one allocatable address
	ip := alloc(t, a, "gone", "eth0")
	a.Close()

	// DEL, retried by the runtime: still one record, root-only.
	recordT(t, dir, "gone", "eth0", time.Now())
	p := recordT(t, dir, "gone", "eth0", time.Now())
	if got := spoolFiles(t, dir); len(got) != 1 || got[0] != filepath.Base(p) {
		t.Fatalf("spool after two DELs: %v, want just %s", got, filepath.Base(p))
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("record mode %v, want 0600", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("spool dir mode %v, want 0700", fi.Mode().Perm())
	}

	a = openT(t, db, "10.9.0.0/30")
	var logs bytes.Buffer
	res := releasePendingT(t, a, dir, slog.New(slog.NewTextHandler(&logs, nil)))
	if res != (SpoolResult{Released: 1}) || a.Used() != 0 {
		t.Fatalf("first start: %+v, %d held", res, a.Used())
	}
	if !strings.Contains(logs.String(), "ip="+ip.String()) {
		t.Fatalf("release not logged with its address:\n%s", logs.String())
	}
	if got := spoolFiles(t, dir); len(got) != 0 {
		t.Fatalf("spool after processing: %v", got)
	}
	if got := alloc(t, a, "new", "eth0"); got != ip {
		t.Fatalf("freed address not reused: got %s, want %s", got, ip)
	}
	a.Close()

	a = openT(t, db, "10.9.0.0/30")
	if res := releasePendingT(t, a, dir, nil); res != (SpoolResult{}) {
		t.Fatalf("second start: %+v, want nothing done", res)
	}
	if _, err := a.Allocate(context.Background(), Request{ContainerID: "third", IfName: "eth0"}); !errors.As(err, new(*ExhaustedError)) {
		t.Fatalf("address handed out twice: %v", err)
	}
	if l := a.List(); len(l) != 1 || l[0].ContainerID != "new" || l[0].IP != ip {
		t.Fatalf("List = %+v, want only new holding %s", l, ip)
	}
}

// A record is never older than the DEL, but it may reach the spool after a
// newer ADD of the same attachment: that ADD's address stays held.
func TestPendingReleaseSparesNewerAdd(t *testing.T) {
	db := filepath.Join(t.TempDir(), "ipam.db")
	dir := spoolT(t)
	a := openT(t, db, "10.9.1.0/29")
	ctx := context.Background()

	// Re-ADD of the address the attachment still holds, then the late record.
	ipA := alloc(t, a, "readd", "eth0")
	delA := time.Now()
	if got := alloc(t, a, "readd", "eth0"); got != ipA {
		t.Fatalf("re-ADD got %s, want %s", got, ipA)
	}
	recordT(t, dir, "readd", "eth0", delA)

	// A fresh allocation after the DEL began (the address was freed in
	// between, say by a retried DEL once the daemon was back).
	alloc(t, a, "fresh", "eth0")
	delB := time.Now()
	if _, found, err := a.Release(ctx, "fresh", "eth0"); err != nil || !found {
		t.Fatalf("Release: %v %v", found, err)
	}
	ipB := alloc(t, a, "fresh", "eth0")
	recordT(t, dir, "fresh", "eth0", delB)

	// And one DEL that really is the last word.
	ipC := alloc(t, a, "done", "eth0")
	recordT(t, dir, "done", "eth0", time.Now())

	var logs bytes.Buffer
	res := releasePendingT(t, a, dir, slog.New(slog.NewTextHandler(&logs, nil)))
	if res != (SpoolResult{Released: 1, Kept: 2}) {
		t.Fatalf("ReleasePending = %+v, want 1 released and 2 kept\n%s", res, logs.String())
	}
	if al, ok := a.Get("readd", "eth0"); !ok || al.IP != ipA {
		t.Fatalf("re-added attachment lost %s: %+v %v", ipA, al, ok)
	}
	if al, ok := a.Get("fresh", "eth0"); !ok || al.IP != ipB {
		t.Fatalf("newly allocated attachment lost %s: %+v %v", ipB, al, ok)
	}
	if _, ok := a.Get("done", "eth0"); ok {
		t.Fatalf("deleted attachment still holds %s", ipC)
	}
	if got := spoolFiles(t, dir); len(got) != 0 {
		t.Fatalf("spool after processing: %v", got)
	}
	if !strings.Contains(logs.String(), "added again after its DEL") {
		t.Fatalf("kept records not logged:\n%s", logs.String())
	}

	// The re-ADD's claim is durable: after a restart a record of that DEL
	// still spares the address.
	a.Close()
	a = openT(t, db, "10.9.1.0/29")
	recordT(t, dir, "readd", "eth0", delA)
	if res := releasePendingT(t, a, dir, nil); res != (SpoolResult{Kept: 1}) {
		t.Fatalf("after restart: %+v, want the record kept", res)
	}
	if al, ok := a.Get("readd", "eth0"); !ok || al.IP != ipA || al.Readded.IsZero() {
		t.Fatalf("after restart: %+v %v", al, ok)
	}
}

// The race itself: a re-ADD and the late record of a DEL that began before
// it, against the daemon's periodic pass, in every interleaving the
// scheduler finds. Whatever the order, the re-added attachment keeps its
// address.
func TestPendingReleaseRacingReAdd(t *testing.T) {
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "10.9.2.0/24")
	dir := spoolT(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wait := a.ReleasePendingEvery(ctx, dir, time.Millisecond, nil)
	for i := range 50 {
		id := fmt.Sprint("race-", i)
		ip := alloc(t, a, id, "eth0")
		began := time.Now()
		var wg sync.WaitGroup
		wg.Go(func() {
			if _, err := RecordPendingRelease(dir, PendingRelease{ContainerID: id, IfName: "eth0", Time: began}); err != nil {
				t.Error(err)
			}
		})
		wg.Go(func() {
			if _, err := a.Allocate(ctx, Request{ContainerID: id, IfName: "eth0"}); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
		if _, err := a.ReleasePending(ctx, dir, nil); err != nil {
			t.Fatal(err)
		}
		// The record may be processed before the re-ADD arrives (then the
		// ADD rightly gets a fresh address) or after it (then it must
		// spare the re-ADD's address): either way the attachment ends up
		// holding an address.
		if al, ok := a.Get(id, "eth0"); !ok {
			t.Fatalf("%s: re-added attachment (first %s) lost its address to a DEL that began before the ADD: %+v", id, ip, al)
		}
	}
	cancel()
	wait()
	if got := spoolFiles(t, dir); len(got) != 0 {
		t.Fatalf("spool left: %v", got)
	}
}

// Allocations stored by builds that truncated the time to the second could
// be up to a second newer than they say: a DEL in that second spares them.
func TestClaimedSinceSecondPrecision(t *testing.T) {
	base := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		al   Allocation
		del  time.Time
		want bool
	}{
		{Allocation{Allocated: base}, base.Add(500 * time.Millisecond), true},
		{Allocation{Allocated: base}, base.Add(1500 * time.Millisecond), false},
		{Allocation{Allocated: base.Add(10)}, base.Add(20), false},
		{Allocation{Allocated: base.Add(10)}, base.Add(10), true},
		{Allocation{Allocated: base.Add(10), Readded: base.Add(30)}, base.Add(20), true},
	} {
		if got := tc.al.claimedSince(tc.del); got != tc.want {
			t.Errorf("allocated %v readded %v, DEL at %v: claimedSince = %v, want %v",
				tc.al.Allocated, tc.al.Readded, tc.del, got, tc.want)
		}
	}
}

// Records the daemon did not write (or that are damaged) are refused and
// logged, never acted on, and never stop the good ones.
func TestPendingReleaseHostileRecords(t *testing.T) {
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "10.9.3.0/24")
	dir := spoolT(t)
	victim := alloc(t, a, "victim", "eth0")
	good := alloc(t, a, "good", "eth0")
	recordT(t, dir, "good", "eth0", time.Now())
	valid, _ := json.Marshal(PendingRelease{ContainerID: "victim", IfName: "eth0", Time: time.Now()})
	victimName := PendingReleaseName("victim", "eth0")
	write := func(name string, data []byte, mode os.FileMode) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return name
	}
	outside := filepath.Join(t.TempDir(), "planted.json")
	if err := os.WriteFile(outside, valid, 0o600); err != nil {
		t.Fatal(err)
	}
	// Each is the victim's release, or garbage, in a form the daemon must refuse.
	refused := map[string]string{
		write("..%2F..%2Fetc%2Fpasswd", valid, 0o600):                            "not a record name",
		write("victim.json", valid, 0o600):                                       "not a record name",
		write("."+victimName+"x", valid, 0o600):                                  "not a record name",
		write(PendingReleaseName("other", "eth0"), valid, 0o600):                 "belongs in " + victimName,
		write(PendingReleaseName("garbage", "eth0"), []byte("{not json"), 0o600): "decode",
		write(PendingReleaseName("extra", "eth0"), []byte(`{"containerID":"extra","ifName":"eth0","time":"2025-01-01T00:00:00Z","ip":"10.9.3.9"}`), 0o600): "unknown field",
		write(PendingReleaseName("empty", "eth0"), []byte(`{}`), 0o600):                                                                                    "lacks",
		write(PendingReleaseName("huge", "eth0"), bytes.Repeat([]byte(" "), maxRecordSize+1), 0o600):                                                       "more than a record",
	}
	// The right name, but writable by others, or a link to a file elsewhere.
	refused[write(victimName, valid, 0o666)] = "group or others may write"
	linkName := PendingReleaseName("link", "eth0")
	if err := os.Symlink(outside, filepath.Join(dir, linkName)); err != nil {
		t.Fatal(err)
	}
	refused[linkName] = "not a regular file"
	// Hostile IDs through the writer itself stay inside the spool.
	p := recordT(t, dir, "../../../../tmp/nhc-escape", "../eth0", time.Now())
	if filepath.Dir(p) != dir {
		t.Fatalf("record for a traversal ID written at %s, outside %s", p, dir)
	}

	var logs bytes.Buffer
	res := releasePendingT(t, a, dir, slog.New(slog.NewTextHandler(&logs, nil)))
	if res != (SpoolResult{Released: 1, Free: 1, Rejected: len(refused)}) {
		t.Fatalf("ReleasePending = %+v, want 1 released, 1 free, %d rejected\n%s", res, len(refused), logs.String())
	}
	if al, ok := a.Get("victim", "eth0"); !ok || al.IP != victim {
		t.Fatalf("a refused record released the victim's %s", victim)
	}
	if _, ok := a.Get("good", "eth0"); ok {
		t.Fatalf("the good record beside the bad ones did not release %s", good)
	}
	for name, why := range refused {
		i := slices.IndexFunc(strings.Split(logs.String(), "\n"), func(l string) bool {
			return strings.Contains(l, "record="+name+" ") && strings.Contains(l, why)
		})
		if i < 0 {
			t.Errorf("no log line says record %s was refused for %q:\n%s", name, why, logs.String())
		}
		if _, err := os.Lstat(filepath.Join(dir, name+rejectedSuffix)); err != nil {
			t.Errorf("refused record %s not moved aside: %v", name, err)
		}
	}
	if b, err := os.ReadFile(outside); err != nil || !bytes.Equal(b, valid) {
		t.Errorf("file behind the symlink touched: %q %v", b, err)
	}
	// Moved-aside records are not read again.
	if res := releasePendingT(t, a, dir, nil); res != (SpoolResult{}) {
		t.Fatalf("second pass: %+v", res)
	}
}

// A spool directory others could write to, or that is not what it seems,
// is not trusted at all: by the daemon nor by the plugin writing to it.
func TestPendingReleaseUntrustedDir(t *testing.T) {
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "10.9.4.0/24")
	ip := alloc(t, a, "victim", "eth0")
	for _, tc := range []struct {
		name, why string
		spoil     func(t *testing.T, dir string) string // returns the dir to use
	}{
		{"world-writable", "group or others may write", func(t *testing.T, dir string) string {
			if err := os.Chmod(dir, 0o777); err != nil {
				t.Fatal(err)
			}
			return dir
		}},
		{"group-writable", "group or others may write", func(t *testing.T, dir string) string {
			if err := os.Chmod(dir, 0o770); err != nil {
				t.Fatal(err)
			}
			return dir
		}},
		{"symlink", "not a directory", func(t *testing.T, dir string) string {
			link := dir + "-link"
			if err := os.Symlink(dir, link); err != nil {
				t.Fatal(err)
			}
			return link
		}},
		{"not root's", "owned by uid 65534", func(t *testing.T, dir string) string {
			if os.Geteuid() != 0 {
				t.Skip("chown needs root")
			}
			if err := os.Chown(dir, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			return dir
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := spoolT(t)
			rec := recordT(t, dir, "victim", "eth0", time.Now())
			use := tc.spoil(t, dir)
			var logs bytes.Buffer
			res := releasePendingT(t, a, use, slog.New(slog.NewTextHandler(&logs, nil)))
			if res != (SpoolResult{}) {
				t.Fatalf("untrusted spool processed: %+v", res)
			}
			if al, ok := a.Get("victim", "eth0"); !ok || al.IP != ip {
				t.Fatal("untrusted spool released the victim's address")
			}
			if _, err := os.Stat(rec); err != nil {
				t.Fatalf("record in an untrusted spool touched: %v", err)
			}
			if !strings.Contains(logs.String(), "refused") || !strings.Contains(logs.String(), tc.why) {
				t.Fatalf("log does not say the spool was refused for %q:\n%s", tc.why, logs.String())
			}
			_, err := RecordPendingRelease(use, PendingRelease{ContainerID: "c", IfName: "eth0", Time: time.Now()})
			if !errors.Is(err, ErrUntrustedSpool) || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("writing to an untrusted spool: %v", err)
			}
			if names := spoolFiles(t, dir); !slices.Equal(names, []string{filepath.Base(rec)}) {
				t.Fatalf("untrusted spool now holds %v", names)
			}
		})
	}
}

// The daemon's start path: records left while it was down are processed
// before the socket answers, so no client ever sees the stale allocation.
func TestPendingReleaseBeforeServing(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "ipam.db")
	spool := filepath.Join(dir, PendingReleaseDirName)
	a := openT(t, db, "10.9.5.0/24")
	ip := alloc(t, a, "gone", "eth0")
	recordT(t, spool, "gone", "eth0", time.Now())

	sock := filepath.Join(dir, "run", "nexthop.sock")
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		wait := a.ReleasePendingEvery(ctx, spool, time.Hour, nil)
		served <- Serve(ctx, a, sock, nil)
		wait()
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	// Connect, not stat: the socket file exists a moment before it listens.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("socket %s never answered", sock)
		}
	}
	c := clientT(t, sock)
	_, list, err := c.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Fatalf("first List after start shows %+v, want %s released before serving", list, ip)
	}
}

// Every field an allocation is stored with, Readded included, survives a
// reopen, and stores written before Readded existed still load.
func TestReaddedStoredAndOptional(t *testing.T) {
	db := filepath.Join(t.TempDir(), "ipam.db")
	a := openT(t, db, "10.9.6.0/24")
	alloc(t, a, "old", "eth0")
	first, _ := a.Get("old", "eth0")
	if !first.Readded.IsZero() {
		t.Fatalf("first ADD set Readded %v", first.Readded)
	}
	b, _ := json.Marshal(first)
	if strings.Contains(string(b), "readded") {
		t.Fatalf("unset Readded stored: %s", b)
	}
	alloc(t, a, "old", "eth0")
	again, _ := a.Get("old", "eth0")
	if !again.Readded.After(first.Allocated) || again.Allocated != first.Allocated || again.IP != first.IP {
		t.Fatalf("re-ADD: %+v, first %+v", again, first)
	}
	a.Close()
	a = openT(t, db, "10.9.6.0/24")
	if got, _ := a.Get("old", "eth0"); !got.Readded.Equal(again.Readded) || !got.Allocated.Equal(first.Allocated) {
		t.Fatalf("after reopen %+v, want %+v", got, again)
	}
}
