package ipam

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nexthop-net/nexthop/ipam/ipampb"
)

// ServeOption configures Serve.
type ServeOption func(*server)

// Bounds of a pod MTU the server reports: the IPv4 minimum and the largest
// value an interface MTU field holds.
const (
	MinMTU = 68
	MaxMTU = 65535
)

// WithMTU makes the server report mtu() as the pod MTU in its Allocate, Get
// and Status responses; without it, or when mtu() returns 0, it reports 0
// ("unknown": the plugin uses its own default). mtu is called on every such
// request, so it may follow runtime changes (an encapsulation switch), and
// must be safe for concurrent use. A value outside MinMTU-MaxMTU is a bug in
// the caller: it is logged and reported as 0.
func WithMTU(mtu func() int) ServeOption {
	return func(s *server) { s.mtuFunc = mtu }
}

// WithObserver calls observe after every request with the RPC's method name
// (e.g. "Allocate"), how long it took and its error (nil on success), for
// metrics. It runs on the request's goroutine and must be quick.
func WithObserver(observe func(method string, took time.Duration, err error)) ServeOption {
	return func(s *server) { s.observe = observe }
}

// Serve serves the IPAM gRPC API on a root-only unix socket until ctx is done.
// The socket is chmod'ed 0600: only root (the container runtime running the
// plugin) may connect and allocate addresses. Its directory is created 0700
// if missing; an existing one is never chmod'ed (see socketDir).
func Serve(ctx context.Context, a *Allocator, socketPath string, log *slog.Logger, opts ...ServeOption) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &server{a: a, log: log}
	for _, o := range opts {
		o(srv)
	}
	l, err := listen(socketPath)
	if err != nil {
		return err
	}
	var gopts []grpc.ServerOption
	if srv.observe != nil {
		gopts = append(gopts, grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			t0 := time.Now()
			resp, err := h(ctx, req)
			srv.observe(info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:], time.Since(t0), err)
			return resp, err
		}))
	}
	s := grpc.NewServer(gopts...)
	ipampb.RegisterIPAMServer(s, srv)
	log.Info("ipam: serving", "socket", socketPath, "blocks", fmt.Sprint(a.Blocks()), "used", a.Used(), "size", a.Size(), "mtu", srv.mtu())

	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	select {
	case err := <-done:
		os.Remove(socketPath)
		return fmt.Errorf("ipam: serve %s: %w", socketPath, err)
	case <-ctx.Done():
	}
	// Let in-flight requests finish (an answered Allocate is already durable;
	// this only spares the plugin a retry), but don't hang shutdown on them.
	stopped := make(chan struct{})
	go func() { s.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		s.Stop()
	}
	<-done
	os.Remove(socketPath)
	return nil
}

func listen(socketPath string) (net.Listener, error) {
	if err := socketDir(socketPath); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(socketPath); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("ipam: %s exists and is not a socket", socketPath)
		}
		// A live socket means another daemon is serving: two allocators on one
		// node would hand out the same addresses.
		if c, err := net.DialTimeout("unix", socketPath, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("ipam: %s is already being served by another process", socketPath)
		}
		if err := os.Remove(socketPath); err != nil {
			return nil, fmt.Errorf("ipam: remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("ipam: listen on %s: %w", socketPath, err)
	}
	if err := os.Chmod(socketPath, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("ipam: restrict socket: %w", err)
	}
	return l, nil
}

type server struct {
	ipampb.UnimplementedIPAMServer
	a       *Allocator
	log     *slog.Logger
	mtuFunc func() int // nil: unknown
	observe func(method string, took time.Duration, err error)
}

// mtu is the pod MTU to report now; 0 when unknown.
func (s *server) mtu() uint32 {
	if s.mtuFunc == nil {
		return 0
	}
	v := s.mtuFunc()
	if v == 0 {
		return 0
	}
	if v < MinMTU || v > MaxMTU {
		s.log.Error("ipam: pod MTU out of range, reporting it as unknown", "mtu", v, "min", MinMTU, "max", MaxMTU)
		return 0
	}
	return uint32(v)
}

// grpcErr maps allocator errors to status codes the client maps back.
func grpcErr(err error) error {
	var ex *ExhaustedError
	var ob *OutOfBlockError
	switch {
	case errors.As(err, &ex):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.As(err, &ob):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrInvalidArgument):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	default:
		return status.Error(codes.Internal, err.Error())
	}
}

// addrPB is an address for the API: "" for none.
func addrPB(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.String()
}

func prefixPB(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

func toPB(al Allocation) *ipampb.Allocation {
	return &ipampb.Allocation{
		ContainerId:   al.ContainerID,
		IfName:        al.IfName,
		Ip:            addrPB(al.IP),
		Ipv6:          addrPB(al.IPv6),
		PodNamespace:  al.PodNamespace,
		PodName:       al.PodName,
		AllocatedUnix: al.Allocated.Unix(),
		OutOfBlock:    al.OutOfBlock,
	}
}

func (s *server) Allocate(ctx context.Context, r *ipampb.AllocateRequest) (*ipampb.AllocateResponse, error) {
	al, err := s.a.Allocate(ctx, Request{
		ContainerID:  r.GetContainerId(),
		IfName:       r.GetIfName(),
		PodNamespace: r.GetPodNamespace(),
		PodName:      r.GetPodName(),
	})
	if err != nil {
		s.log.Warn("ipam: allocate failed", "container", r.GetContainerId(), "ifName", r.GetIfName(), "err", err)
		return nil, grpcErr(err)
	}
	s.log.Debug("ipam: allocated", "ip", al.AddrString(), "container", al.ContainerID, "ifName", al.IfName)
	return &ipampb.AllocateResponse{
		Ip: addrPB(al.IP), Block: prefixPB(s.a.BlockOf(false)),
		Ipv6: addrPB(al.IPv6), BlockV6: prefixPB(s.a.BlockOf(true)),
		Mtu: s.mtu(),
	}, nil
}

func (s *server) Release(ctx context.Context, r *ipampb.ReleaseRequest) (*ipampb.ReleaseResponse, error) {
	al, found, err := s.a.Release(ctx, r.GetContainerId(), r.GetIfName())
	if err != nil {
		return nil, grpcErr(err)
	}
	if !found {
		return &ipampb.ReleaseResponse{}, nil
	}
	s.log.Debug("ipam: released", "ip", al.AddrString(), "container", al.ContainerID, "ifName", al.IfName)
	return &ipampb.ReleaseResponse{Ip: addrPB(al.IP), Ipv6: addrPB(al.IPv6)}, nil
}

func (s *server) Get(_ context.Context, r *ipampb.GetRequest) (*ipampb.GetResponse, error) {
	if r.GetContainerId() == "" || r.GetIfName() == "" {
		return nil, status.Error(codes.InvalidArgument, "container ID and interface name are required")
	}
	resp := &ipampb.GetResponse{Mtu: s.mtu()}
	if al, ok := s.a.Get(r.GetContainerId(), r.GetIfName()); ok {
		resp.Allocation = toPB(al)
	}
	return resp, nil
}

func (s *server) GC(ctx context.Context, r *ipampb.GCRequest) (*ipampb.GCResponse, error) {
	valid := make([]Attachment, 0, len(r.GetValid()))
	for _, v := range r.GetValid() {
		valid = append(valid, Attachment{ContainerID: v.GetContainerId(), IfName: v.GetIfName()})
	}
	released, err := s.a.GC(ctx, valid)
	if err != nil {
		return nil, grpcErr(err)
	}
	resp := &ipampb.GCResponse{}
	for _, al := range released {
		s.log.Info("ipam: garbage-collected", "ip", al.AddrString(), "container", al.ContainerID, "ifName", al.IfName)
		resp.Released = append(resp.Released, toPB(al))
	}
	return resp, nil
}

func (s *server) List(context.Context, *ipampb.ListRequest) (*ipampb.ListResponse, error) {
	resp := &ipampb.ListResponse{Block: s.a.Block().String()}
	for _, b := range s.a.Blocks() {
		resp.Blocks = append(resp.Blocks, b.String())
	}
	for _, al := range s.a.List() {
		resp.Allocations = append(resp.Allocations, toPB(al))
	}
	return resp, nil
}

func (s *server) Status(context.Context, *ipampb.StatusRequest) (*ipampb.StatusResponse, error) {
	blocks := map[bool]*ipampb.BlockStatus{}
	resp := &ipampb.StatusResponse{Mtu: s.mtu()}
	for _, b := range s.a.Blocks() {
		bs := &ipampb.BlockStatus{Block: b.String(), Size: s.a.SizeOf(b.Addr().Is6())}
		blocks[b.Addr().Is6()] = bs
		resp.Blocks = append(resp.Blocks, bs)
	}
	for _, al := range s.a.List() {
		for _, ip := range al.Addrs() {
			bs := blocks[ip.Is6()]
			if bs == nil {
				continue // a family the node no longer has: counted nowhere
			}
			if s.a.allocatable(ip) {
				bs.Used++
			} else {
				bs.OutOfBlock++
			}
		}
	}
	// The first block's counts, as before IPv6 (old plugins read these).
	first := resp.Blocks[0]
	resp.Block, resp.Size, resp.Used, resp.OutOfBlock = first.Block, uint32(min(first.Size, math.MaxUint32)), first.Used, first.OutOfBlock
	return resp, nil
}
