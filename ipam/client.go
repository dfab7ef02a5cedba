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

// Lease is what Allocate hands an attachment: an address per family of the
// node's blocks (zero for a family the node has no block of), the blocks
// they came from and the pod MTU the daemon reports (0 when it does not
// know).
type Lease struct {
	IP      netip.Addr // IPv4
	Block   netip.Prefix
	IPv6    netip.Addr
	BlockV6 netip.Prefix
	MTU     int
}

// Addrs returns the leased addresses, IPv4 first.
func (l Lease) Addrs() []netip.Addr { return Allocation{IP: l.IP, IPv6: l.IPv6}.Addrs() }

// AddrString is the addresses for messages, as Allocation's.
func (l Lease) AddrString() string { return Allocation{IP: l.IP, IPv6: l.IPv6}.AddrString() }

// Allocate returns the addresses for the attachment.
func (c *Client) Allocate(ctx context.Context, r Request) (Lease, error) {
	resp, err := c.api.Allocate(ctx, &ipampb.AllocateRequest{
		ContainerId: r.ContainerID, IfName: r.IfName, PodNamespace: r.PodNamespace, PodName: r.PodName,
	})
	if err != nil {
		return Lease{}, c.wrap("allocate", err)
	}
	var l Lease
	for _, f := range []struct {
		v6         bool
		ip, block  string
		addr       *netip.Addr
		blockField *netip.Prefix
	}{{false, resp.GetIp(), resp.GetBlock(), &l.IP, &l.Block}, {true, resp.GetIpv6(), resp.GetBlockV6(), &l.IPv6, &l.BlockV6}} {
		if f.ip == "" {
			continue
		}
		ip, err := netip.ParseAddr(f.ip)
		if err != nil || ip.Is6() != f.v6 || ip.Zone() != "" {
			return Lease{}, fmt.Errorf("ipam allocate: daemon sent bad address %q", f.ip)
		}
		block, err := netip.ParsePrefix(f.block)
		if err != nil || block.Addr().Is6() != f.v6 {
			return Lease{}, fmt.Errorf("ipam allocate: daemon sent bad block %q for %s", f.block, ip)
		}
		*f.addr, *f.blockField = ip, block
	}
	if !l.IP.IsValid() && !l.IPv6.IsValid() {
		return Lease{}, fmt.Errorf("ipam allocate: daemon sent no address")
	}
	if l.MTU, err = checkMTU("allocate", resp.GetMtu()); err != nil {
		return Lease{}, err
	}
	return l, nil
}

// checkMTU vets a pod MTU from the daemon: 0 (unknown) or MinMTU-MaxMTU.
func checkMTU(op string, v uint32) (int, error) {
	if v != 0 && (v < MinMTU || v > MaxMTU) {
		return 0, fmt.Errorf("ipam %s: daemon sent pod MTU %d, outside %d-%d", op, v, MinMTU, MaxMTU)
	}
	return int(v), nil
}

// Release frees the attachment's addresses, both families together, and
// returns them; none if none was held.
func (c *Client) Release(ctx context.Context, containerID, ifName string) ([]netip.Addr, error) {
	resp, err := c.api.Release(ctx, &ipampb.ReleaseRequest{ContainerId: containerID, IfName: ifName})
	if err != nil {
		return nil, c.wrap("release", err)
	}
	var out []netip.Addr
	for _, s := range []string{resp.GetIp(), resp.GetIpv6()} {
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, ip)
		}
	}
	return out, nil
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
		ip6, _ := netip.ParseAddr(p.GetIpv6())
		out = append(out, Allocation{
			ContainerID:  p.GetContainerId(),
			IfName:       p.GetIfName(),
			IP:           ip,
			IPv6:         ip6,
			PodNamespace: p.GetPodNamespace(),
			PodName:      p.GetPodName(),
			Allocated:    time.Unix(p.GetAllocatedUnix(), 0).UTC(),
			OutOfBlock:   p.GetOutOfBlock(),
		})
	}
	return out
}
