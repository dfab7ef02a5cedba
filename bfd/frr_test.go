package bfd

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const bfddPath = "/usr/lib/frr/bfdd"

// bfdd is FRR's BFD daemon in a namespace, standalone: it needs neither
// zebra nor any other FRR daemon to run sessions; its configuration and
// vtysh go through its own files under dir.
type bfdd struct {
	dir string
}

func startBFDD(t *testing.T, ns, conf string) *bfdd {
	t.Helper()
	if _, err := os.Stat(bfddPath); err != nil && os.Getenv("CI") != "true" {
		t.Skipf("FRR's bfdd is not installed (apt-get install frr): %v", err)
	}
	// bfdd runs as user frr, as packaged: its files are frr's.
	frrUser, err := user.Lookup("frr")
	if err != nil {
		t.Fatalf("FRR's user: %v", err)
	}
	dir, err := os.MkdirTemp("", "nexthop-bfdd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &bfdd{dir: dir}
	if err := os.MkdirAll(filepath.Join(f.dir, "vty"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "bfdd.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(frrUser.Uid)
	gid, _ := strconv.Atoi(frrUser.Gid)
	for _, p := range []string{dir, filepath.Join(dir, "vty"), filepath.Join(dir, "bfdd.conf")} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	log, err := os.Create(filepath.Join(f.dir, "bfdd.log"))
	if err != nil {
		t.Fatal(err)
	}
	// -z: a zebra socket that does not exist; bfdd retries it quietly
	// and runs its sessions without it.
	cmd := exec.Command("ip", "netns", "exec", ns, bfddPath,
		"-f", filepath.Join(f.dir, "bfdd.conf"), "-i", filepath.Join(f.dir, "bfdd.pid"),
		"--vty_socket", filepath.Join(f.dir, "vty"), "--bfdctl", filepath.Join(f.dir, "bfdd.sock"),
		"-z", filepath.Join(f.dir, "zserv.api"), "-A", "127.0.0.1", "-P", "0", "--log", "stdout")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("bfdd log:\n%s", b)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := f.vtysh("show bfd peers json"); err == nil {
			return f
		} else if time.Now().After(deadline) {
			t.Fatalf("bfdd did not answer vtysh: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// vtysh runs commands in one vtysh session; it talks to bfdd over the
// unix socket, so it needs no namespace.
func (f *bfdd) vtysh(cmds ...string) (string, error) {
	args := []string{"--vty_socket", filepath.Join(f.dir, "vty")}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("vtysh", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("vtysh %q: %v: %s", cmds, err, out)
	}
	return string(out), nil
}

// frrPeer is the part of `show bfd peers json` we check. Intervals are in
// milliseconds.
type frrPeer struct {
	Peer           string `json:"peer"`
	ID             uint32 `json:"id"`
	RemoteID       uint32 `json:"remote-id"`
	Status         string `json:"status"`
	Diagnostic     string `json:"diagnostic"`
	RemoteDiag     string `json:"remote-diagnostic"`
	RemoteRx       int    `json:"remote-receive-interval"`
	RemoteTx       int    `json:"remote-transmit-interval"`
	RemoteMult     int    `json:"remote-detect-multiplier"`
	ReceiveInt     int    `json:"receive-interval"`
	TransmitInt    int    `json:"transmit-interval"`
	DetectMultiply int    `json:"detect-multiplier"`
}

func (f *bfdd) peer(t *testing.T, addr netip.Addr) frrPeer {
	t.Helper()
	out, err := f.vtysh("show bfd peers json")
	if err != nil {
		t.Fatal(err)
	}
	var peers []frrPeer
	if err := json.Unmarshal([]byte(out), &peers); err != nil {
		t.Fatalf("parse show bfd peers json: %v: %.300s", err, out)
	}
	for _, p := range peers {
		if p.Peer == addr.String() {
			return p
		}
	}
	t.Fatalf("FRR has no BFD peer %s: %s", addr, out)
	return frrPeer{}
}

// waitFRR polls FRR until ok says the peer is as wanted.
func (f *bfdd) wait(t *testing.T, addr netip.Addr, timeout time.Duration, what string, ok func(frrPeer) bool) frrPeer {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p := f.peer(t, addr)
		if ok(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("FRR peer %s: not %s after %s: %+v", addr, what, timeout, p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFRRInterop(t *testing.T) {
	tn := newTestNet(t, 1)
	us, them := addrA(1), addrB(1)
	frr := startBFDD(t, tn.B, fmt.Sprintf(`bfd
 peer %s local-address %s
  receive-interval 300
  transmit-interval 300
  detect-multiplier 3
 !
!
`, us, them))
	var r recorder
	s := startServer(t, tn.A, &r)
	add(t, s, PeerOptions{Local: us, Peer: them, MinTx: 300 * time.Millisecond, MinRx: 300 * time.Millisecond, Multiplier: 3})

	// Up on both sides, each knowing the other's discriminator.
	st := waitState(t, s, them, Up, 10*time.Second)
	fp := frr.wait(t, us, 5*time.Second, "up", func(p frrPeer) bool { return p.Status == "up" })
	if fp.RemoteID != st.LocalDiscr || st.RemoteDiscr != fp.ID {
		t.Fatalf("discriminators: ours %d, FRR's view %d; FRR's %d, our view %d", st.LocalDiscr, fp.RemoteID, fp.ID, st.RemoteDiscr)
	}
	frr.wait(t, us, 3*time.Second, "at 300 ms", func(p frrPeer) bool {
		return p.RemoteTx == 300 && p.RemoteRx == 300 && p.RemoteMult == 3
	})
	t.Logf("Up: ours %+v", must(s.Session(them)))

	// Our timers change: FRR sees them after the Poll/Final.
	since := time.Now()
	if err := s.SetTimers(t.Context(), PeerOptions{Local: us, Peer: them, MinTx: 200 * time.Millisecond, MinRx: 400 * time.Millisecond, Multiplier: 4}); err != nil {
		t.Fatal(err)
	}
	frr.wait(t, us, 3*time.Second, "showing our new timers", func(p frrPeer) bool {
		return p.Status == "up" && p.RemoteTx == 200 && p.RemoteRx == 400 && p.RemoteMult == 4
	})
	waitPoll(t, s, them)

	// FRR goes faster than us: 100 ms both ways. We send at max(200, 100)
	// and detect in 3 x max(400, 100).
	if _, err := frr.vtysh("configure terminal", "bfd", fmt.Sprintf("peer %s local-address %s", us, them),
		"transmit-interval 100", "receive-interval 100"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		st = must(s.Session(them))
		if st.RemoteTimers == (Timers{MinTx: 100 * time.Millisecond, MinRx: 100 * time.Millisecond, Multiplier: 3}) &&
			st.TxInterval == 200*time.Millisecond && st.DetectTime == 1200*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("FRR's 100 ms timers not seen: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Then we too: 100 ms, x3. Both detect in 300 ms now; it holds.
	if err := s.SetTimers(t.Context(), PeerOptions{Local: us, Peer: them, MinTx: 100 * time.Millisecond, MinRx: 100 * time.Millisecond, Multiplier: 3}); err != nil {
		t.Fatal(err)
	}
	waitPoll(t, s, them)
	time.Sleep(2 * time.Second)
	if c, ok := r.first(them, Down, since); ok {
		t.Fatalf("the session went Down while timers changed: %+v", c)
	}
	fp = frr.wait(t, us, time.Second, "up at 100 ms", func(p frrPeer) bool { return p.Status == "up" && p.RemoteTx == 100 })

	// Back to 300 ms x 3 (FRR too), then cut the link: both Down.
	if _, err := frr.vtysh("configure terminal", "bfd", fmt.Sprintf("peer %s local-address %s", us, them),
		"transmit-interval 300", "receive-interval 300"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetTimers(t.Context(), PeerOptions{Local: us, Peer: them}); err != nil {
		t.Fatal(err)
	}
	waitPoll(t, s, them)
	frr.wait(t, us, 3*time.Second, "at 300 ms again", func(p frrPeer) bool { return p.Status == "up" && p.RemoteTx == 300 })
	cutAt := time.Now()
	tn.cut(t)
	st = waitState(t, s, them, Down, 900*time.Millisecond+300*time.Millisecond)
	if st.Diag != DiagControlDetectExpired {
		t.Errorf("our diag %s", st.Diag)
	}
	c, _ := r.first(them, Down, cutAt)
	fp = frr.wait(t, us, 1200*time.Millisecond, "down", func(p frrPeer) bool { return p.Status == "down" })
	t.Logf("link cut: ours Down after %s; FRR down within %s, diagnostic %q",
		c.At.Sub(cutAt).Round(time.Millisecond), time.Since(cutAt).Round(time.Millisecond), fp.Diagnostic)
	if !strings.Contains(fp.Diagnostic, "control detection time expired") {
		t.Errorf("FRR's diagnostic %q", fp.Diagnostic)
	}

	// The link comes back; so do both. Then Remove: FRR is told.
	tn.restore(t)
	waitState(t, s, them, Up, 10*time.Second)
	frr.wait(t, us, 3*time.Second, "up again", func(p frrPeer) bool { return p.Status == "up" })
	if err := s.Remove(them); err != nil {
		t.Fatal(err)
	}
	fp = frr.wait(t, us, 500*time.Millisecond, "down after our AdminDown", func(p frrPeer) bool { return p.Status == "down" })
	t.Logf("after Remove: FRR diagnostic %q, remote diagnostic %q", fp.Diagnostic, fp.RemoteDiag)
}

func waitPoll(t *testing.T, s *Server, peer netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for must(s.Session(peer)).Polling {
		if time.Now().After(deadline) {
			t.Fatalf("no Final from FRR: %+v", must(s.Session(peer)))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
