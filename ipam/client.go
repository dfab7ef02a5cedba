package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/nexthop-net/nexthop/ipam/ipampb"
)

// Client talks to the daemon's IPAM socket. Errors keep their gRPC status:
// use IsUnavailable and IsExhausted to tell the cases apart.
type Client struct {
	Socket string
	conn   *grpc.ClientConn
	api    ipampb.IPAMClient
}

// NewClient prepares a client for the socket; nothing is dialled until the
// first call, which fails fast (codes.Unavailable) if no daemon listens.
func NewClient(socketPath string) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+socketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("ipam client for %s: %w", socketPath, err)
	}
	return &Client{Socket: socketPath, conn: conn, api: ipampb.NewIPAMClient(conn)}, nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// IsUnavailable reports whether err means the daemon could not be reached.
func IsUnavailable(err error) bool { return status.Code(err) == codes.Unavailable }

// IsExhausted reports whether err means the block has no free address.
func IsExhausted(err error) bool { return status.Code(err) == codes.ResourceExhausted }

// Allocate returns the address for the attachment, the block it came from
// and the pod MTU the daemon reports (0 when it does not know).
func (c *Client) Allocate(ctx context.Context, r Request) (ip netip.Addr, block netip.Prefix, mtu int, err error) {
	resp, err := c.api.Allocate(ctx, &ipampb.AllocateRequest{
		ContainerId: r.ContainerID, IfName: r.IfName, PodNamespace: r.PodNamespace, PodName: r.PodName,
	})
	if err != nil {
		return netip.Addr{}, netip.Prefix{}, 0, c.wrap("allocate", err)
	}
	ip, err = netip.ParseAddr(resp.GetIp())
	if err != nil {
		return netip.Addr{}, netip.Prefix{}, 0, fmt.Errorf("ipam allocate: daemon sent bad address %q: %w", resp.GetIp(), err)
	}
	block, err = netip.ParsePrefix(resp.GetBlock())
	if err != nil {
		return netip.Addr{}, netip.Prefix{}, 0, fmt.Errorf("ipam allocate: daemon sent bad block %q: %w", resp.GetBlock(), err)
	}
	mtu, err = checkMTU("allocate", resp.GetMtu())
	if err != nil {
		return netip.Addr{}, netip.Prefix{}, 0, err
	}
	return ip, block, mtu, nil
}

// checkMTU vets a pod MTU from the daemon: 0 (unknown) or MinMTU-MaxMTU.
func checkMTU(op string, v uint32) (int, error) {
	if v != 0 && (v < MinMTU || v > MaxMTU) {
		return 0, fmt.Errorf("ipam %s: daemon sent pod MTU %d, outside %d-%d", op, v, MinMTU, MaxMTU)
	}
	return int(v), nil
}

// Release frees the attachment's address; ip is invalid if none was held.
func (c *Client) Release(ctx context.Context, containerID, ifName string) (netip.Addr, error) {
	resp, err := c.api.Release(ctx, &ipampb.ReleaseRequest{ContainerId: containerID, IfName: ifName})
	if err != nil {
		return netip.Addr{}, c.wrap("release", err)
	}
	ip, _ := netip.ParseAddr(resp.GetIp())
	return ip, nil
}

// Get returns the attachment's allocation (found is false if it holds none)
// and the daemon's pod MTU now (0 when it does not know), which is not
// necessarily the MTU the attachment was created with.
func (c *Client) Get(ctx context.Context, containerID, ifName string) (al Allocation, found bool, mtu int, err error) {
	resp, err := c.api.Get(ctx, &ipampb.GetRequest{ContainerId: containerID, IfName: ifName})
	if err != nil {
		return Allocation{}, false, 0, c.wrap("get", err)
	}
	mtu, err = checkMTU("get", resp.GetMtu())
	if err != nil {
		return Allocation{}, false, 0, err
	}
	if resp.GetAllocation() == nil {
		return Allocation{}, false, mtu, nil
	}
	return fromPB([]*ipampb.Allocation{resp.GetAllocation()})[0], true, mtu, nil
}

// GC releases every allocation not in valid and returns what it released.
func (c *Client) GC(ctx context.Context, valid []Attachment) ([]Allocation, error) {
	req := &ipampb.GCRequest{}
	for _, v := range valid {
		req.Valid = append(req.Valid, &ipampb.Attachment{ContainerId: v.ContainerID, IfName: v.IfName})
	}
	resp, err := c.api.GC(ctx, req)
	if err != nil {
		return nil, c.wrap("gc", err)
	}
	return fromPB(resp.GetReleased()), nil
}

// List returns the block and every allocation.
func (c *Client) List(ctx context.Context) (netip.Prefix, []Allocation, error) {
	resp, err := c.api.List(ctx, &ipampb.ListRequest{})
	if err != nil {
		return netip.Prefix{}, nil, c.wrap("list", err)
	}
	block, _ := netip.ParsePrefix(resp.GetBlock())
	return block, fromPB(resp.GetAllocations()), nil
}

// Status returns the daemon's view of the block and its pod MTU (GetMtu, 0
// when it does not know).
func (c *Client) Status(ctx context.Context) (*ipampb.StatusResponse, error) {
	resp, err := c.api.Status(ctx, &ipampb.StatusRequest{})
	if err != nil {
		return nil, c.wrap("status", err)
	}
	return resp, nil
}

// Error is a failed IPAM call. It keeps the gRPC status (status.Code works
// on it) but reads without gRPC's "rpc error: code = ... desc =" noise.
type Error struct {
	Op, Socket string
	st         *status.Status
}

func (e *Error) Error() string {
	if e.st.Code() == codes.Unavailable {
		return fmt.Sprintf("ipam %s: nexthop daemon not reachable at %s (is nexthopd running?): %s", e.Op, e.Socket, e.st.Message())
	}
	return fmt.Sprintf("ipam %s via %s: %s", e.Op, e.Socket, e.st.Message())
}

// GRPCStatus lets status.Code and status.FromError see through Error.
func (e *Error) GRPCStatus() *status.Status { return e.st }

func (c *Client) wrap(op string, err error) error {
	return &Error{Op: op, Socket: c.Socket, st: status.Convert(err)}
}

func fromPB(in []*ipampb.Allocation) []Allocation {
	out := make([]Allocation, 0, len(in))
	for _, p := range in {
		ip, _ := netip.ParseAddr(p.GetIp())
		out = append(out, Allocation{
			ContainerID:  p.GetContainerId(),
			IfName:       p.GetIfName(),
			IP:           ip,
			PodNamespace: p.GetPodNamespace(),
			PodName:      p.GetPodName(),
			Allocated:    time.Unix(p.GetAllocatedUnix(), 0).UTC(),
			OutOfBlock:   p.GetOutOfBlock(),
		})
	}
	return out
}
