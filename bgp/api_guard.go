package bgp

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// GoBGP's gRPC API is served for inspection with the stock gobgp CLI. It
// has no authentication of its own, so the daemon guards it:
//
//   - only the methods in readOnlyMethods are served; every other one,
//     including any a newer GoBGP adds, is refused with PermissionDenied
//     unless grpcAllowWrites is set;
//   - every response has its passwords (TCP MD5 keys) cleared;
//   - on a unix socket, the caller must be the daemon's own user (root),
//     whatever the socket file's mode.

// apiService is the gRPC service GoBGP registers.
var apiService = api.GobgpApi_ServiceDesc.ServiceName

// readOnlyMethods are the GobgpApi methods that change nothing: what the
// gobgp CLI's show commands (neighbor, global, global rib, adj-in/out,
// policy, monitor, ...) call.
var readOnlyMethods = map[string]bool{
	"GetBgp":               true,
	"GetTable":             true,
	"ListPeer":             true,
	"ListPeerGroup":        true,
	"ListDynamicNeighbor":  true,
	"ListPath":             true,
	"ListVrf":              true,
	"ListPolicy":           true,
	"ListDefinedSet":       true,
	"ListStatement":        true,
	"ListPolicyAssignment": true,
	"ListRpki":             true,
	"ListRpkiTable":        true,
	"ListBmp":              true,
	"WatchEvent":           true, // gobgp monitor
}

// apiGuard holds the API's interceptors.
type apiGuard struct {
	allowWrites bool
	log         *slog.Logger
	// listenPort is the BGP port the speaker listens on itself: GoBGP,
	// started with none (listen.go), would report -1.
	listenPort int32
}

// check refuses method (a full gRPC method name) unless it is a read, or
// writes are allowed.
func (g *apiGuard) check(ctx context.Context, fullMethod string) error {
	svc, method, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	if svc == apiService && readOnlyMethods[method] {
		return nil
	}
	if g.allowWrites {
		// An audit trail of what was changed behind the config's back.
		g.log.Warn("GoBGP API write allowed (grpcAllowWrites)", "method", fullMethod, "caller", callerOf(ctx))
		return nil
	}
	g.log.Debug("GoBGP API write refused", "method", fullMethod, "caller", callerOf(ctx))
	return status.Errorf(codes.PermissionDenied,
		"%s refused: nexthopd serves GoBGP's API read-only; to allow changes for debugging, set grpcAllowWrites: true in the nexthopd config and restart it",
		method)
}

// callerOf names the API's caller for the log: its TCP address, or its
// uid and pid on the unix socket.
func callerOf(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "unknown"
	}
	if u, ok := p.AuthInfo.(unixCaller); ok {
		return fmt.Sprintf("uid %d pid %d", u.uid, u.pid)
	}
	return p.Addr.String()
}

// unixCaller is who connected to the unix socket.
type unixCaller struct {
	credentials.CommonAuthInfo
	uid, pid int
}

func (unixCaller) AuthType() string { return "unix-peercred" }

func (g *apiGuard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := g.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	resp, err := handler(ctx, req)
	if m, ok := resp.(proto.Message); ok && err == nil {
		resp = redacted(m)
	}
	if b, ok := resp.(*api.GetBgpResponse); ok && b.GetGlobal() != nil && g.listenPort != 0 {
		b = proto.CloneOf(b)
		b.Global.ListenPort = g.listenPort
		resp = b
	}
	return resp, err
}

func (g *apiGuard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := g.check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, redactingStream{ss})
}

// redactingStream clears passwords from every message sent.
type redactingStream struct{ grpc.ServerStream }

func (r redactingStream) SendMsg(m any) error {
	if pm, ok := m.(proto.Message); ok {
		m = redacted(pm)
	}
	return r.ServerStream.SendMsg(m)
}

// isSecret says whether a field holds a password. GoBGP's API has
// auth_password in PeerConf, PeerState, PeerGroupConf and PeerGroupState.
func isSecret(fd protoreflect.FieldDescriptor) bool {
	return fd.Kind() == protoreflect.StringKind && strings.Contains(string(fd.Name()), "password")
}

// secretTypes caches, per message type, whether it can hold a secret.
var secretTypes sync.Map // protoreflect.FullName → bool

// holdsSecret reports whether messages of type md can carry a secret
// field, directly or in nested messages.
func holdsSecret(md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) bool {
	if v, ok := secretTypes.Load(md.FullName()); ok {
		return v.(bool)
	}
	if seen[md.FullName()] {
		return false // a cycle: the outer call decides
	}
	seen[md.FullName()] = true
	found := false
	fields := md.Fields()
	for i := 0; i < fields.Len() && !found; i++ {
		fd := fields.Get(i)
		if fd.IsMap() {
			fd = fd.MapValue()
		}
		switch {
		case isSecret(fd):
			found = true
		case fd.Message() != nil:
			found = holdsSecret(fd.Message(), seen)
		}
	}
	secretTypes.Store(md.FullName(), found)
	return found
}

// redacted returns m, or a copy of it with every password cleared: m
// itself may be shared with the server's own state.
func redacted(m proto.Message) proto.Message {
	if !holdsSecret(m.ProtoReflect().Descriptor(), map[protoreflect.FullName]bool{}) {
		return m
	}
	c := proto.Clone(m)
	clearSecrets(c.ProtoReflect())
	return c
}

func clearSecrets(m protoreflect.Message) {
	var clear []protoreflect.FieldDescriptor
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case isSecret(fd):
			clear = append(clear, fd)
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				clearSecrets(l.Get(i).Message())
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				clearSecrets(mv.Message())
				return true
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			clearSecrets(v.Message())
		}
		return true
	})
	for _, fd := range clear {
		m.Clear(fd)
	}
}

// ownerOnly admits, on a unix socket, only callers running as the
// daemon's own user. It exchanges no bytes, so plain-text clients (the
// gobgp CLI) connect as before; TCP connections pass as they are.
type ownerOnly struct {
	credentials.TransportCredentials
	uid int
	log *slog.Logger
}

func (o ownerOnly) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if uc, ok := c.(*net.UnixConn); ok {
		uid, pid, err := peerCred(uc)
		if err != nil {
			return nil, nil, fmt.Errorf("GoBGP API: read the caller's credentials: %w", err)
		}
		if uid != o.uid {
			o.log.Warn("GoBGP API: refused a connection from another user", "uid", uid, "pid", pid, "allowed", o.uid)
			return nil, nil, fmt.Errorf("GoBGP API: uid %d may not connect (only uid %d)", uid, o.uid)
		}
		return c, unixCaller{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, uid: uid, pid: pid}, nil
	}
	return o.TransportCredentials.ServerHandshake(c)
}

func (o ownerOnly) Clone() credentials.TransportCredentials {
	return ownerOnly{TransportCredentials: o.TransportCredentials.Clone(), uid: o.uid, log: o.log}
}

func peerCred(c *net.UnixConn) (uid, pid int, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, err
	}
	if cerr != nil {
		return 0, 0, cerr
	}
	return int(cred.Uid), int(cred.Pid), nil
}

// apiServerOptions are the gRPC server options for GoBGP's API.
func (s *Speaker) apiServerOptions() []grpc.ServerOption {
	g := &apiGuard{allowWrites: s.cfg.GRPCAllowWrites, log: s.log.With("api", "gobgp"), listenPort: s.cfg.BGPPort}
	return []grpc.ServerOption{
		grpc.Creds(ownerOnly{TransportCredentials: insecure.NewCredentials(), uid: os.Geteuid(), log: g.log}),
		grpc.ChainUnaryInterceptor(g.unary),
		grpc.ChainStreamInterceptor(g.stream),
	}
}

// prepareAPIListen checks that GoBGP will be able to listen where the
// config says (GoBGP exits the process when it cannot), and clears a
// socket file left behind by an earlier run.
func prepareAPIListen(o Options) error {
	path := o.GRPCSocket()
	if path == "" {
		l, err := net.Listen("tcp", o.GRPCListen)
		if err != nil {
			return fmt.Errorf("gRPC API address %s: %w", o.GRPCListen, err)
		}
		return l.Close()
	}
	dir := filepath.Dir(path)
	di, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		// A directory of our own; an existing one's mode is left alone.
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("gRPC API socket %s: create its directory: %w", path, err)
		}
		di, err = os.Stat(dir)
	}
	if err != nil {
		return fmt.Errorf("gRPC API socket %s: its directory: %w", path, err)
	}
	if m := di.Mode(); m.Perm()&0o022 != 0 && m&fs.ModeSticky == 0 {
		// Anyone could put their own socket there for root's CLI to trust.
		return fmt.Errorf("gRPC API socket %s: directory %s is writable by other users (mode %v) without the sticky bit; use a directory of root's own, e.g. /run/nexthop",
			path, dir, m.Perm())
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("gRPC API socket %s: %w", path, err)
	case fi.Mode().Type() != fs.ModeSocket:
		return fmt.Errorf("gRPC API socket %s: exists and is not a socket (%s); not removing it", path, fi.Mode().Type())
	default:
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return fmt.Errorf("gRPC API socket %s: another process is serving it", path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("gRPC API socket %s: remove the one left by an earlier run: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("gRPC API socket %s: %w", path, err)
	}
	return l.Close() // removes the file
}

// restrictSocket makes the API's socket file owner-only once GoBGP has
// created it. ownerOnly refuses other users meanwhile; the mode makes
// their connect fail with a plain "permission denied".
func restrictSocket(path string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := os.Chmod(path, 0o600)
		if err == nil || !errors.Is(err, fs.ErrNotExist) || time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("gRPC API socket %s: restrict to its owner: %w", path, err)
			}
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// warnAPIExposure restricts the API's socket and says loudly when the
// config opened the API wider than read-only and local.
func (s *Speaker) warnAPIExposure() error {
	if path := s.cfg.GRPCSocket(); path != "" {
		if err := restrictSocket(path, 5*time.Second); err != nil {
			return err
		}
	}
	if s.cfg.GRPCAllowWrites {
		s.log.Warn("GoBGP API accepts writes (grpcAllowWrites): whoever can reach it can add paths and peers or shut sessions down; "+
			"the daemon undoes such changes only at its next resync", "grpc", s.cfg.GRPCListen, "resyncInterval", s.cfg.ResyncInterval)
	}
	if s.cfg.GRPCRemote() {
		s.log.Warn("GoBGP API listens beyond loopback (grpcAllowRemote): other hosts can reach it, without authentication", "grpc", s.cfg.GRPCListen)
	}
	return nil
}
