package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/bgp"
	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/internal/syncbuf"
)

// The tests of issue #11, item 1: GoBGP's API is for inspection.

// refusal is what the daemon answers a write through GoBGP's API.
const refusal = "refused: nexthopd serves GoBGP's API read-only"

// nobody is the unprivileged user the CLI runs as.
const nobody = "65534"

// gobgpAsNobody copies the stock gobgp CLI where any user can run it (the
// repository's bin/ need not be traversable) and returns a function that
// runs it as nobody with args, inside network namespace ns ("" for the
// test's own).
func gobgpAsNobody(t *testing.T) func(ns string, args ...string) (string, error) {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(BinDir(), "gobgp"))
	if err != nil {
		t.Fatalf("read gobgp: %v (run make build)", err)
	}
	dir, err := os.MkdirTemp("", "nh-gobgp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "gobgp")
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return func(ns string, args ...string) (string, error) {
		argv := []string{"setpriv", "--reuid=" + nobody, "--regid=" + nobody, "--clear-groups", bin}
		if ns != "" {
			argv = append([]string{"ip", "netns", "exec", ns}, argv...)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, argv[0], append(argv[1:], args...)...).CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("gobgp %s as uid %s: %w: %s", strings.Join(args, " "), nobody, err, strings.TrimSpace(string(out)))
		}
		return string(out), nil
	}
}

// neighborJSON is the part of `gobgp neighbor <addr> -j` that could carry
// the ToR's password.
type neighborJSON struct {
	Conf struct {
		NeighborAddress string `json:"neighbor_address"`
		AuthPassword    string `json:"auth_password"`
	} `json:"conf"`
	State struct {
		AuthPassword string `json:"auth_password"`
		SessionState int    `json:"session_state"`
	} `json:"state"`
}

// A local user who is not root, with the stock gobgp CLI against a node's
// daemon (GoBGP's API on loopback TCP in the node's namespace, as with
// grpcListen: 127.0.0.1:50051): every read works and shows no password,
// every write is refused and changes nothing, on the node or at the ToR.
// Then, with grpcAllowWrites, writes work and the resync undoes them.
func TestGobgpAPIReadOnly(t *testing.T) {
	password := secret(t, "tor-md5")
	c := newCluster(t, Options{Nodes: 2, ToR: true})
	requireBinaries(t)
	for _, n := range c.Nodes {
		if err := c.ToR.SetPassword(n.Address, password); err != nil {
			t.Fatal(err)
		}
		torPeer(t, c, n).Password = password
	}
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	n0, n1 := c.Nodes[0], c.Nodes[1]
	tor := c.ToR.Address.String()
	own, other := n0.PodCIDR(), n1.PodCIDR()
	gobgp := gobgpAsNobody(t)

	// The ToR's view: the two blocks, each via its node, nothing else.
	torRIB := func() error {
		rib, err := c.ToR.RIB()
		if err != nil {
			return err
		}
		var got []string
		for _, p := range rib {
			if p.Best {
				got = append(got, fmt.Sprintf("%s via %s", p.Prefix, p.NextHop))
			}
		}
		want := []string{fmt.Sprintf("%s via %s", own, n0.Address), fmt.Sprintf("%s via %s", other, n1.Address)}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			return fmt.Errorf("ToR best paths: got %q, want %q", got, want)
		}
		return nil
	}
	waitFor(t, convergeTimeout, "ToR sessions up and both blocks at the ToR", func() error {
		return errors.Join(establishedExactly(c, n0, n1.Address, c.ToR.Address), torRIB())
	})

	// Every read the CLI offers works for a user who is not root.
	reads := [][]string{
		{"global"}, {"global", "-j"},
		{"global", "rib"}, {"global", "rib", "-j"}, {"global", "rib", own.String()},
		{"neighbor"}, {"neighbor", "-j"},
		{"neighbor", tor}, {"neighbor", tor, "-j"},
		{"neighbor", tor, "adj-in"}, {"neighbor", tor, "adj-in", "-j"},
		{"neighbor", tor, "adj-out"}, {"neighbor", tor, "adj-out", "-j"},
		{"global", "policy"}, {"policy"}, {"policy", "prefix"},
	}
	outputs := map[string]string{}
	for _, args := range reads {
		out, err := gobgp(n0.NS, append([]string{"-p", fmt.Sprint(GRPCPort)}, args...)...)
		if err != nil {
			t.Errorf("read refused: %v", err)
			continue
		}
		outputs[strings.Join(args, " ")] = out
		if strings.Contains(out, password) {
			t.Errorf("`gobgp %s` prints the ToR's MD5 password:\n%s", strings.Join(args, " "), out)
		}
	}
	if out := outputs["global rib"]; !strings.Contains(out, own.String()) {
		t.Errorf("`gobgp global rib` as nobody lacks the node's block %s:\n%s", own, out)
	}
	if out := outputs["neighbor "+tor+" adj-out"]; !strings.Contains(out, own.String()) {
		t.Errorf("`gobgp neighbor %s adj-out` as nobody lacks %s:\n%s", tor, own, out)
	}
	if out := outputs["neighbor"]; !strings.Contains(out, tor) || !strings.Contains(out, "Establ") {
		t.Errorf("`gobgp neighbor` as nobody does not show the ToR established:\n%s", out)
	}
	var nb neighborJSON
	if err := json.Unmarshal([]byte(outputs["neighbor "+tor+" -j"]), &nb); err != nil {
		t.Errorf("parse `gobgp neighbor %s -j`: %v", tor, err)
	} else if nb.Conf.NeighborAddress != tor || nb.Conf.AuthPassword != "" || nb.State.AuthPassword != "" {
		t.Errorf("`gobgp neighbor %s -j`: address %q, auth_password %q / %q; want the ToR and no password",
			tor, nb.Conf.NeighborAddress, nb.Conf.AuthPassword, nb.State.AuthPassword)
	}
	if out := outputs["neighbor -j"]; strings.Contains(out, `"auth_password":"`) {
		t.Errorf("`gobgp neighbor -j` has a non-empty auth_password:\n%s", out)
	}
	t.Logf("`gobgp neighbor` as uid %s:\n%s", nobody, outputs["neighbor"])

	// Every write is refused, with the refusal on the CLI's output.
	writes := [][]string{
		{"global", "rib", "add", "8.8.8.0/24", "nexthop", "192.0.2.66", "-a", "ipv4"},
		{"global", "rib", "add", "0.0.0.0/0", "nexthop", "192.0.2.66", "-a", "ipv4"},
		{"global", "rib", "add", other.String(), "nexthop", "192.0.2.66", "-a", "ipv4"},
		{"global", "rib", "del", own.String(), "-a", "ipv4"},
		{"global", "rib", "del", "all", "-a", "ipv4"},
		{"neighbor", "add", "192.0.2.66", "as", "65066"},
		{"neighbor", "del", tor},
		{"neighbor", tor, "shutdown"},
		{"neighbor", tor, "reset"},
		{"neighbor", tor, "softreset"},
		{"neighbor", tor, "disable"},
		{"policy", "prefix", "add", "evil", "0.0.0.0/0", "0..32"},
		{"policy", "statement", "add", "evil"},
		{"policy", "add", "evil"},
		{"global", "policy", "import", "set", "evil", "default", "accept"},
		{"global", "policy", "import", "del", "all"},
		{"global", "del", "all"},
	}
	for _, args := range writes {
		out, err := gobgp(n0.NS, append([]string{"-p", fmt.Sprint(GRPCPort)}, args...)...)
		if err == nil {
			t.Errorf("`gobgp %s` as nobody succeeded:\n%s", strings.Join(args, " "), out)
		} else if !strings.Contains(out, refusal) || !strings.Contains(out, "grpcAllowWrites: true") {
			t.Errorf("`gobgp %s` as nobody failed without the refusal: %v", strings.Join(args, " "), err)
		}
	}

	// Nothing changed: the ToR's table, the daemon's RIB, peers, policies,
	// and the ToR session was never reset.
	stays(t, 3*time.Second, "nothing changed by the refused writes", func() error {
		var errs []error
		errs = append(errs, torRIB(), establishedExactly(c, n0, n1.Address, c.ToR.Address))
		rib, err := c.GobgpRIB(n0)
		errs = append(errs, err)
		for _, p := range rib {
			if !p.From.IsValid() && p.Prefix != own {
				errs = append(errs, fmt.Errorf("node0 originates %s", p.Prefix))
			}
		}
		if pol, err := c.Gobgp(n0, "policy"); err != nil || strings.Contains(pol, "evil") {
			errs = append(errs, fmt.Errorf("node0's policies: %v\n%s", err, pol))
		}
		return errors.Join(errs...)
	})
	if down, _ := logLines(n0, "peer session down"); len(down) > 0 {
		t.Errorf("a session went down during the refused writes: %q", down)
	}

	// The opt-in: writes go through (logged), and the resync undoes them.
	if err := c.RestartDaemon(n0, func(cfg *config.Config) {
		cfg.GRPCAllowWrites = true
		cfg.ResyncInterval = config.Duration{Duration: 2 * time.Second}
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "node0 back with writes allowed", func() error {
		return errors.Join(establishedExactly(c, n0, n1.Address, c.ToR.Address), torRIB(),
			n0.LogContains("GoBGP API accepts writes (grpcAllowWrites)"))
	})
	for _, args := range [][]string{
		{"global", "rib", "add", "8.8.8.0/24", "nexthop", "192.0.2.66", "-a", "ipv4"},
		{"neighbor", "add", "192.0.2.66", "as", "65066"},
		{"policy", "prefix", "add", "evil", "0.0.0.0/0", "0..32"},
		{"global", "rib", "del", own.String(), "-a", "ipv4"},
	} {
		if out, err := gobgp(n0.NS, append([]string{"-p", fmt.Sprint(GRPCPort)}, args...)...); err != nil {
			t.Errorf("with grpcAllowWrites: %v\n%s", err, out)
		}
	}
	waitFor(t, 20*time.Second, "the resync undoes every write, each logged", func() error {
		var errs []error
		for _, l := range []string{
			"GoBGP API write allowed (grpcAllowWrites)",
			"resync: withdrew a path this node does not originate",
			"resync: removed a peer that is not in the config",
			"resync: removed a defined set that is not the daemon's",
			"resync: re-announced the node's pod block",
		} {
			errs = append(errs, n0.LogContains(l))
		}
		errs = append(errs, torRIB(), establishedExactly(c, n0, n1.Address, c.ToR.Address))
		return errors.Join(errs...)
	})
	// Corrected once, then quiet: the resync finds nothing more to change
	// in the real config (MD5 ToR, iBGP node), and no session is reset.
	before, err := logLines(n0, "resync:")
	if err != nil {
		t.Fatal(err)
	}
	stays(t, 5*time.Second, "no further corrections, sessions stay up", func() error {
		after, err := logLines(n0, "resync:")
		if err != nil {
			return err
		}
		if len(after) != len(before) {
			return fmt.Errorf("more corrections on an untouched daemon: %q", after[len(before):])
		}
		return errors.Join(torRIB(), establishedExactly(c, n0, n1.Address, c.ToR.Address))
	})
}

// syncbuf.Buffer is a bytes.Buffer safe for a logger and a reader at once.

// The default API address is a unix socket only root may use: the stock
// CLI reaches it with --target as root, and a user who is not root cannot,
// even when the socket and its directory are opened to everyone (the
// daemon checks the caller's uid).
func TestGobgpAPIUnixSocketRootOnly(t *testing.T) {
	requireHarness(t)
	requireBinaries(t)
	dir, err := os.MkdirTemp("", "nh-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "run", "gobgp.sock")
	cfg := &config.Config{
		NodeName:   "api",
		Address:    netip.MustParseAddr("192.0.2.1"),
		LocalAS:    64512,
		PodCIDR:    netip.MustParsePrefix("10.244.1.0/24"),
		BGPPort:    -1,
		GRPCListen: "unix://" + sock,
		Peers:      []config.Peer{{Address: netip.MustParseAddr("192.0.2.254"), AS: 65000, Password: secret(t, "md5")}},
	}
	cfg.Normalize()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logBuf syncbuf.Buffer
	sp := bgp.New(bgp.Options{Address: cfg.Address, RouterID: cfg.RouterID, LocalAS: cfg.LocalAS, PodCIDRs: cfg.PodCIDRs,
		BGPPort: cfg.BGPPort, Peers: cfg.Peers, GRPCListen: cfg.GRPCListen}, slog.New(slog.NewTextHandler(&logBuf, nil)))
	if err := sp.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer sp.Stop()

	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("API socket: %v, mode %v; want 0600", err, fi.Mode())
	}
	bin := filepath.Join(BinDir(), "gobgp")
	out, err := exec.Command(bin, "--target", "unix://"+sock, "neighbor", "-j").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "192.0.2.254") || strings.Contains(string(out), cfg.Peers[0].Password) {
		t.Errorf("root: gobgp --target unix://%s neighbor -j: %v\n%s", sock, err, out)
	}
	out, err = exec.Command(bin, "--target", "unix://"+sock, "global", "rib", "add", "8.8.8.0/24", "-a", "ipv4").CombinedOutput()
	if err == nil || !strings.Contains(string(out), refusal) {
		t.Errorf("root: a write on the socket: %v\n%s", err, out)
	}

	// As nobody: the socket's mode keeps the caller out...
	gobgp := gobgpAsNobody(t)
	for _, d := range []string{dir, filepath.Dir(sock)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// (The stock CLI reports any failure to connect as "context deadline
	// exceeded".)
	if out, err := gobgp("", "--target", "unix://"+sock, "neighbor"); err == nil || strings.Contains(out, "192.0.2.254") {
		t.Errorf("nobody on the 0600 socket: %v\n%s", err, out)
	}
	if strings.Contains(logBuf.String(), "refused a connection") {
		t.Errorf("nobody reached the 0600 socket (the daemon refused it, not the kernel):\n%s", logBuf.String())
	}
	// ...and with the socket opened to everyone, the daemon's uid check.
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	if out, err := gobgp("", "--target", "unix://"+sock, "neighbor"); err == nil || strings.Contains(out, "192.0.2.254") {
		t.Errorf("nobody on a 0666 socket: %v\n%s", err, out)
	} else {
		t.Logf("nobody on a 0666 socket is refused: %s", strings.TrimSpace(out))
	}
	if l := logBuf.String(); !strings.Contains(l, "GoBGP API: refused a connection from another user") || !strings.Contains(l, "uid=65534") {
		t.Errorf("the daemon did not log refusing uid 65534:\n%s", l)
	}
	// Root still gets through.
	if out, err := exec.Command(bin, "--target", "unix://"+sock, "neighbor").CombinedOutput(); err != nil {
		t.Errorf("root after the refusals: %v\n%s", err, out)
	}
}
