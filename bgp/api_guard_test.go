package bgp

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/internal/poll"
)

// knownWrites are the GobgpApi methods that change state, classified by
// hand. Together with readOnlyMethods they must cover the whole service:
// a GoBGP upgrade that adds a method fails this test until someone decides
// which it is (until then the guard refuses it).
var knownWrites = []string{
	"StartBgp", "StopBgp", "AddPeer", "DeletePeer", "UpdatePeer", "ResetPeer", "ShutdownPeer",
	"EnablePeer", "DisablePeer", "AddPeerGroup", "DeletePeerGroup", "UpdatePeerGroup",
	"AddDynamicNeighbor", "DeleteDynamicNeighbor", "AddPath", "DeletePath", "AddPathStream",
	"AddVrf", "DeleteVrf", "AddPolicy", "DeletePolicy", "SetPolicies", "AddDefinedSet",
	"DeleteDefinedSet", "AddStatement", "DeleteStatement", "AddPolicyAssignment",
	"DeletePolicyAssignment", "SetPolicyAssignment", "AddRpki", "DeleteRpki", "EnableRpki",
	"DisableRpki", "ResetRpki", "EnableZebra", "EnableMrt", "DisableMrt", "AddBmp", "DeleteBmp",
	"SetLogLevel",
}

func TestAPIEveryMethodClassified(t *testing.T) {
	var all []string
	for _, m := range api.GobgpApi_ServiceDesc.Methods {
		all = append(all, m.MethodName)
	}
	for _, s := range api.GobgpApi_ServiceDesc.Streams {
		all = append(all, s.StreamName)
	}
	g := &apiGuard{log: discardLog()}
	for _, m := range all {
		read, write := readOnlyMethods[m], slices.Contains(knownWrites, m)
		switch {
		case read && write:
			t.Errorf("%s is classified both as a read and a write", m)
		case !read && !write:
			t.Errorf("GobgpApi method %s is not classified: add it to readOnlyMethods or knownWrites", m)
		}
		err := g.check(context.Background(), "/"+apiService+"/"+m)
		if read && err != nil {
			t.Errorf("read %s refused: %v", m, err)
		}
		if !read && status.Code(err) != codes.PermissionDenied {
			t.Errorf("write %s: got %v, want PermissionDenied", m, err)
		}
	}
	for m := range readOnlyMethods {
		if !slices.Contains(all, m) {
			t.Errorf("readOnlyMethods has %s, which GobgpApi does not serve", m)
		}
	}
}

func TestAPIGuardRefusesUnknownMethods(t *testing.T) {
	g := &apiGuard{log: discardLog()}
	for _, m := range []string{
		"/apipb.GobgpApi/RewriteEverything", // a method a newer GoBGP might add
		"/other.Service/ListPeer",           // a read's name in another service
		"/apipb.GobgpApi/listpeer",
		"",
	} {
		err := g.check(context.Background(), m)
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("%q: got %v, want PermissionDenied", m, err)
			continue
		}
		if msg := status.Convert(err).Message(); !strings.Contains(msg, "read-only") || !strings.Contains(msg, "grpcAllowWrites: true") {
			t.Errorf("%q: the refusal does not say how to opt in: %s", m, msg)
		}
	}
	g.allowWrites = true
	if err := g.check(context.Background(), "/apipb.GobgpApi/AddPath"); err != nil {
		t.Errorf("with grpcAllowWrites, AddPath refused: %v", err)
	}
}

// Every message type of GoBGP's API that can carry a password, at any
// depth, comes out of redacted without it.
func TestRedactClearsEveryPassword(t *testing.T) {
	peer := &api.Peer{
		Conf:  &api.PeerConf{NeighborAddress: "192.0.2.1", AuthPassword: "s3cret"},
		State: &api.PeerState{NeighborAddress: "192.0.2.1", AuthPassword: "s3cret"},
	}
	group := &api.PeerGroup{
		Conf: &api.PeerGroupConf{PeerGroupName: "g", AuthPassword: "s3cret"},
		Info: &api.PeerGroupState{PeerGroupName: "g", AuthPassword: "s3cret"},
	}
	for _, m := range []proto.Message{
		redacted(&api.ListPeerResponse{Peer: peer}),
		redacted(&api.ListPeerGroupResponse{PeerGroup: group}),
		redacted(&api.WatchEventResponse{Event: &api.WatchEventResponse_Peer{Peer: &api.WatchEventResponse_PeerEvent{Peer: peer}}}),
	} {
		if s := prototext.Format(m); strings.Contains(s, "s3cret") {
			t.Errorf("password left in %s", s)
		} else if !strings.Contains(s, "192.0.2.1") && !strings.Contains(s, `"g"`) {
			t.Errorf("redaction lost the rest: %s", s)
		}
	}
	if peer.Conf.AuthPassword != "s3cret" {
		t.Error("redacted changed the original message, which the server may still hold")
	}
	// A type without secrets is passed through as is, uncopied.
	lp := &api.ListPathResponse{Destination: &api.Destination{Prefix: "10.0.0.0/24"}}
	if redacted(lp) != lp {
		t.Error("ListPathResponse copied although it holds no secret")
	}
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// apiSpeaker starts a speaker serving its API on a unix socket in a
// temporary directory, with one peer (never up) that has a password.
func apiSpeaker(t *testing.T, change func(*config.Config)) (*Speaker, api.GobgpApiClient, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "run", "gobgp.sock")
	cfg := &config.Config{
		NodeName:   "n0",
		Address:    netip.MustParseAddr("127.0.0.1"),
		LocalAS:    64512,
		PodCIDR:    netip.MustParsePrefix("10.244.1.0/24"),
		BGPPort:    freePort(t),
		GRPCListen: "unix://" + sock,
		IPAMSocket: filepath.Join(t.TempDir(), "ipam.sock"),
		HoldTime:   config.Duration{Duration: 3 * time.Second},
		Peers: []config.Peer{{Address: netip.MustParseAddr("127.0.0.2"), AS: 65000, Port: uint16(freePort(t)),
			Password: "md5-s3cret-key"}},
	}
	if change != nil {
		change(cfg)
	}
	cfg.Normalize()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	sp := New(optionsOf(cfg), nil)
	ctx, cancel := context.WithCancel(context.Background())
	if err := sp.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); sp.Stop() })
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return sp, api.NewGobgpApiClient(conn), sock
}

func listPeers(t *testing.T, c api.GobgpApiClient) []*api.Peer {
	t.Helper()
	st, err := c.ListPeer(context.Background(), &api.ListPeerRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var out []*api.Peer
	for {
		r, err := st.Recv()
		if err != nil {
			if status.Code(err) != codes.OK && !strings.Contains(err.Error(), "EOF") {
				t.Fatalf("ListPeer: %v", err)
			}
			return out
		}
		out = append(out, r.Peer)
	}
}

func TestAPIReadOnlyAndRedacted(t *testing.T) {
	// Dual-stack: `gobgp global rib -a ipv6` reads the IPv6 table.
	sp, c, sock := apiSpeaker(t, func(c *config.Config) {
		c.AddressV6 = netip.IPv6Loopback()
		c.PodCIDRs = []netip.Prefix{c.PodCIDR, netip.MustParsePrefix("fd00:10:244:1::/64")}
		c.PodCIDR = netip.Prefix{}
	})
	ctx := context.Background()

	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("API socket %s: mode %s, want a socket with 0600", sock, fi.Mode())
	}

	// Reads work and show no password, though GoBGP holds it.
	peers := listPeers(t, c)
	if len(peers) != 1 || peers[0].GetConf().GetNeighborAddress() != "127.0.0.2" {
		t.Fatalf("ListPeer through the API: %v", peers)
	}
	if s := peers[0].String(); strings.Contains(s, "md5-s3cret-key") {
		t.Errorf("ListPeer through the API shows the password: %s", s)
	}
	var inside string
	sp.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) { inside = p.GetConf().GetAuthPassword() })
	if inside != "md5-s3cret-key" {
		t.Fatalf("GoBGP itself should hold the password (else this test proves nothing), has %q", inside)
	}
	// `gobgp global` shows the port the speaker listens on, not GoBGP's
	// own "none" (listen.go).
	if b, err := c.GetBgp(ctx, &api.GetBgpRequest{}); err != nil {
		t.Errorf("GetBgp: %v", err)
	} else if got := b.GetGlobal().GetListenPort(); got != sp.cfg.BGPPort {
		t.Errorf("GetBgp says listen port %d, want %d", got, sp.cfg.BGPPort)
	}

	rib := func(v6 bool) []string {
		st, err := c.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyOf(v6)})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for {
			r, err := st.Recv()
			if err != nil {
				return out
			}
			out = append(out, r.Destination.Prefix)
		}
	}
	waitFor(t, "own blocks in the RIB", func() error {
		if got := rib(false); !slices.Equal(got, []string{"10.244.1.0/24"}) {
			return fmt.Errorf("global IPv4 RIB through the API: %v", got)
		}
		if got := rib(true); !slices.Equal(got, []string{"fd00:10:244:1::/64"}) {
			return fmt.Errorf("global IPv6 RIB through the API: %v", got)
		}
		return nil
	})

	// Writes are refused, naming the method, and change nothing.
	nlri := bgp.NewIPAddrPrefix(24, "8.8.8.0")
	p, err := apiutil.NewPath(nlri, false, []bgp.PathAttributeInterface{
		bgp.NewPathAttributeOrigin(0), bgp.NewPathAttributeNextHop("192.0.2.66")}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: p})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "AddPath refused") {
		t.Errorf("AddPath: got %v, want PermissionDenied naming AddPath", err)
	}
	_, err = c.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{Conf: &api.PeerConf{NeighborAddress: "192.0.2.66", PeerAsn: 65066}}})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("AddPeer: got %v, want PermissionDenied", err)
	}
	_, err = c.ShutdownPeer(ctx, &api.ShutdownPeerRequest{Address: "127.0.0.2"})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("ShutdownPeer: got %v, want PermissionDenied", err)
	}
	// A streaming write is refused too.
	as, err := c.AddPathStream(ctx)
	if err == nil {
		_, err = as.CloseAndRecv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("AddPathStream: got %v, want PermissionDenied", err)
	}
	if got := rib(false); !slices.Equal(got, []string{"10.244.1.0/24"}) {
		t.Errorf("global RIB after refused writes: %v", got)
	}
	if got := listPeers(t, c); len(got) != 1 {
		t.Errorf("peers after refused writes: %v", got)
	}
}

// With writes opted in, a write works, and Reconcile undoes every kind of
// change; on an untouched speaker it changes nothing.
func TestReconcileUndoesAPIWrites(t *testing.T) {
	sp, c, _ := apiSpeaker(t, func(c *config.Config) { c.GRPCAllowWrites = true })
	ctx := context.Background()
	if n, err := sp.Reconcile(ctx); n != 0 || err != nil {
		t.Fatalf("Reconcile on an untouched speaker: %d corrections, %v", n, err)
	}

	path := func(pfx string, bits uint8, nh string) *api.Path {
		p, err := apiutil.NewPath(bgp.NewIPAddrPrefix(bits, pfx), false, []bgp.PathAttributeInterface{
			bgp.NewPathAttributeOrigin(0), bgp.NewPathAttributeNextHop(nh)}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s through the API with grpcAllowWrites: %v", what, err)
		}
	}
	_, err := c.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path("8.8.8.0", 24, "192.0.2.66")})
	must("AddPath", err)
	// The own block, hijacked to another next hop.
	_, err = c.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path("10.244.1.0", 24, "192.0.2.66")})
	must("AddPath own block", err)
	_, err = c.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{Conf: &api.PeerConf{NeighborAddress: "127.0.0.66", PeerAsn: 65066}}})
	must("AddPeer", err)
	_, err = c.DisablePeer(ctx, &api.DisablePeerRequest{Address: "127.0.0.2"})
	must("DisablePeer", err)
	_, err = c.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: "evil",
		Prefixes: []*api.Prefix{{IpPrefix: "0.0.0.0/0", MaskLengthMin: 0, MaskLengthMax: 32}}}})
	must("AddDefinedSet", err)
	_, err = c.AddPolicy(ctx, &api.AddPolicyRequest{Policy: &api.Policy{Name: "evil", Statements: []*api.Statement{{Name: "evil-accept",
		Conditions: &api.Conditions{PrefixSet: &api.MatchSet{Name: "evil"}}, Actions: &api.Actions{RouteAction: api.RouteAction_ACCEPT}}}}})
	must("AddPolicy", err)
	_, err = c.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{Name: "global",
		Direction: api.PolicyDirection_IMPORT, Policies: []*api.Policy{{Name: "evil"}}, DefaultAction: api.RouteAction_ACCEPT}})
	must("SetPolicyAssignment", err)

	n, err := sp.Reconcile(ctx)
	if err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	// 8.8.8.0/24, own block, foreign peer, disabled peer, import policy,
	// foreign policy, its set.
	if n != 7 {
		t.Errorf("Reconcile made %d corrections, want 7", n)
	}

	var local []string
	sp.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyIPv4}, func(d *api.Destination) {
		for _, p := range d.Paths {
			if isLocal(p) {
				local = append(local, d.Prefix+" via "+nextHopOf(p))
			}
		}
	})
	if !slices.Equal(local, []string{"10.244.1.0/24 via 127.0.0.1"}) {
		t.Errorf("local paths after Reconcile: %v, want only the own block via 127.0.0.1", local)
	}
	// GoBGP applies an admin-state change asynchronously, queued behind
	// the disable the test made: wait for it to land.
	var peers []*api.Peer
	if err := poll.Until(5*time.Second, 20*time.Millisecond, func() error {
		peers = listPeers(t, c)
		if len(peers) != 1 || peers[0].GetConf().GetNeighborAddress() != "127.0.0.2" || peers[0].GetState().GetAdminState() != api.PeerState_UP {
			return fmt.Errorf("peers after Reconcile: %v", peers)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	var assigned []string
	sp.srv.ListPolicyAssignment(ctx, &api.ListPolicyAssignmentRequest{Name: "global", Direction: api.PolicyDirection_IMPORT}, func(a *api.PolicyAssignment) {
		for _, p := range a.Policies {
			assigned = append(assigned, p.Name)
		}
	})
	if len(assigned) != 1 || !strings.HasPrefix(assigned[0], "nexthop-import-") {
		t.Errorf("import assignment after Reconcile: %v", assigned)
	}
	var foreign []string
	sp.srv.ListPolicy(ctx, &api.ListPolicyRequest{}, func(p *api.Policy) {
		if !strings.HasPrefix(p.Name, "nexthop-") {
			foreign = append(foreign, p.Name)
		}
	})
	sp.srv.ListDefinedSet(ctx, &api.ListDefinedSetRequest{DefinedType: api.DefinedType_PREFIX}, func(ds *api.DefinedSet) {
		if !strings.HasPrefix(ds.Name, "nexthop-") {
			foreign = append(foreign, ds.Name)
		}
	})
	if len(foreign) > 0 {
		t.Errorf("foreign policies and sets left: %v", foreign)
	}
	if n, err := sp.Reconcile(ctx); n != 0 || err != nil {
		t.Errorf("second Reconcile: %d corrections, %v; want none", n, err)
	}
}

// The unix socket admits only the daemon's own user: a connection whose
// peer credentials say otherwise is closed in the handshake.
func TestOwnerOnlyRefusesOtherUIDs(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := net.Dial("unix", filepath.Join(dir, "s"))
		if err == nil {
			defer c.Close()
			time.Sleep(time.Second)
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	creds := ownerOnly{TransportCredentials: insecure.NewCredentials(), uid: os.Geteuid() + 1, log: discardLog()}
	if _, _, err := creds.ServerHandshake(c); err == nil || !strings.Contains(err.Error(), "may not connect") {
		t.Errorf("a caller of another uid: got %v, want refused", err)
	}
	creds.uid = os.Geteuid()
	if _, info, err := creds.ServerHandshake(c); err != nil || info.(unixCaller).uid != os.Geteuid() {
		t.Errorf("the daemon's own uid: got %v %v, want admitted", info, err)
	}
}

// Before GoBGP listens (it exits the process when it cannot): a socket
// left by an earlier run is cleared, anything else at the path is left
// alone and refused, as is a directory others could plant a socket in.
func TestPrepareAPIListen(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "gobgp.sock")
	o := Options{GRPCListen: "unix://" + sock}

	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := prepareAPIListen(o); err == nil || !strings.Contains(err.Error(), "another process is serving it") {
		t.Errorf("a live socket: got %v", err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // as after kill -9: the file stays
	if err := prepareAPIListen(o); err != nil {
		t.Errorf("a stale socket: %v", err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("stale socket not removed: %v", err)
	}

	if err := os.WriteFile(sock, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := prepareAPIListen(o); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Errorf("a regular file at the socket path: got %v", err)
	}
	if b, _ := os.ReadFile(sock); string(b) != "keep me" {
		t.Error("the regular file was touched")
	}
	os.Remove(sock)

	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := prepareAPIListen(o); err == nil || !strings.Contains(err.Error(), "writable by other users") {
		t.Errorf("a world-writable directory: got %v", err)
	}
	if err := os.Chmod(dir, 0o777|fs.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if err := prepareAPIListen(o); err != nil {
		t.Errorf("a sticky directory such as /tmp: %v", err)
	}

	// A missing directory is created, for root only.
	o.GRPCListen = "unix://" + filepath.Join(t.TempDir(), "new", "gobgp.sock")
	if err := prepareAPIListen(o); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Dir(o.GRPCSocket())); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("created directory: %v %v, want 0700", fi.Mode(), err)
	}

	// TCP: a port in use is reported before GoBGP would exit on it.
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	o.GRPCListen = tl.Addr().String()
	if err := prepareAPIListen(o); err == nil || !strings.Contains(err.Error(), "gRPC API address") {
		t.Errorf("a TCP port in use: got %v", err)
	}
}
