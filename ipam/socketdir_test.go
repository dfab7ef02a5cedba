package ipam

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serveIn serves a fresh allocator on sock and returns Serve's error if it
// refuses, nil once it serves.
func serveIn(t *testing.T, sock string) error {
	t.Helper()
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "10.5.0.0/24")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, a, sock, nil) }()
	t.Cleanup(func() { cancel(); <-done })
	for range 200 {
		select {
		case err := <-done:
			done <- nil // for the cleanup
			return err
		default:
		}
		if _, err := os.Stat(sock); err == nil {
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("Serve on %s neither served nor failed", sock)
	return nil
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode() & (os.ModePerm | os.ModeSticky)
}

// Item 6: with ipamSocket in a shared directory such as /run, the
// directory keeps its mode; only a directory the daemon made is 0700.
func TestSocketInSharedDirLeavesItAlone(t *testing.T) {
	shared := filepath.Join(t.TempDir(), "run") // stands in for /run
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(shared, 0o755)
	sock := filepath.Join(shared, "nexthop.sock")
	if err := serveIn(t, sock); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, shared); m != 0o755 {
		t.Fatalf("shared dir mode %v after Serve, want it left at 0755", m)
	}
	if m := mode(t, sock); m != 0o600 {
		t.Fatalf("socket mode %v, want 0600", m)
	}
}

func TestSocketDirCreatedIsPrivate(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "run")
	sock := filepath.Join(parent, "nexthop", "nexthop.sock")
	if err := serveIn(t, sock); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, filepath.Dir(sock)); m != 0o700 {
		t.Fatalf("created socket dir mode %v, want 0700", m)
	}
	if m := mode(t, parent); m&0o055 != 0o055 {
		t.Fatalf("created parent mode %v: want it traversable (0755), it may hold others' things", m)
	}
}

func TestSocketDirWritableByOthersRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "open")
	os.Mkdir(dir, 0o777)
	os.Chmod(dir, 0o777)
	err := serveIn(t, filepath.Join(dir, "nexthop.sock"))
	if err == nil || !strings.Contains(err.Error(), "writable by other users") {
		t.Fatalf("Serve in a 0777 dir: %v", err)
	}
	if m := mode(t, dir); m != 0o777 {
		t.Fatalf("refused dir's mode changed to %v", m)
	}
	// /tmp-like (sticky): others cannot replace root's socket. Left alone.
	sticky := filepath.Join(t.TempDir(), "tmp")
	os.Mkdir(sticky, 0o777)
	os.Chmod(sticky, 0o777|os.ModeSticky)
	if err := serveIn(t, filepath.Join(sticky, "nexthop.sock")); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, sticky); m != 0o777|os.ModeSticky {
		t.Fatalf("sticky dir mode %v after Serve", m)
	}
}

func TestSocketPathRelativeRefused(t *testing.T) {
	wd := t.TempDir()
	t.Chdir(wd)
	os.Chmod(wd, 0o755)
	a := openT(t, filepath.Join(t.TempDir(), "ipam.db"), "10.5.0.0/24")
	err := Serve(context.Background(), a, "nexthop.sock", nil)
	if err == nil || !strings.Contains(err.Error(), "not absolute") {
		t.Fatalf("Serve on a relative path: %v", err)
	}
	if m := mode(t, wd); m != 0o755 {
		t.Fatalf("working directory mode %v, want 0755", m)
	}
}
