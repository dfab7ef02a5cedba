package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/osrg/gobgp/v3/pkg/server"
	"golang.org/x/sys/unix"
)

// The speaker, not GoBGP, listens on the BGP port, and only once every
// configured peer has been added.
//
// GoBGP v3 opens its listener inside StartBgp, before any peer can be added,
// and has no call to listen later. A peer that connects in between gets
// "Can't find configuration for a new passive connection": GoBGP accepts and
// closes, the peer's FSM falls to Idle on read-failed, and sits out GoBGP's
// fixed 5 s idle hold (holdtimeIdle in fsm.go) before it dials again. At
// N=100 that was 1,949 rejected connections in one start.
//
// So GoBGP starts with ListenPort -1 (no listener), the peers are added,
// and only then does the speaker listen, handing each accepted connection
// to the channel GoBGP's own listener would feed (BgpServer.acceptCh). Its
// server loop reads that channel and does with each connection exactly what
// it does with its own listener's (passConnToPeer): a configured peer gets
// it, anyone else is logged and closed. Until then the port is closed, and a
// peer that dials early is refused at once and retries after its connect
// retry (1 s) rather than 5 s of idle hold.
//
// GoBGP exports no way to set that channel, so acceptInto writes the field
// before the server loop starts; it checks the field's name and type, and
// TestDialerFirst fails if a GoBGP upgrade changes them.

// acceptBacklog is the accept channel's buffer, GoBGP's own size.
const acceptBacklog = 32

// acceptInto gives srv an accept channel, as its own listener would, and
// returns it. It must run before srv.Serve: the server loop reads the field
// on every turn, and nothing else writes it while ListenPort is -1.
func acceptInto(srv *server.BgpServer) (chan *net.TCPConn, error) {
	f := reflect.ValueOf(srv).Elem().FieldByName("acceptCh")
	want := reflect.TypeFor[chan *net.TCPConn]()
	if !f.IsValid() || f.Type() != want {
		return nil, errors.New("this GoBGP has no field acceptCh of type chan *net.TCPConn to hand accepted BGP connections to (written against v3.37.0)")
	}
	ch := make(chan *net.TCPConn, acceptBacklog)
	reflect.NewAt(want, unsafe.Pointer(f.UnsafeAddr())).Elem().Set(reflect.ValueOf(ch))
	return ch, nil
}

// bgpListener accepts BGP connections for GoBGP, on the addresses GoBGP
// itself listens on by default (0.0.0.0 and ::, the latter IPv6 only),
// with the TCP MD5 keys of the peers that have a password: an IPv4 peer's
// on the IPv4 socket, an IPv6 peer's on the IPv6 one (a key is per
// address family of the socket).
type bgpListener struct {
	log  *slog.Logger
	ls   []*net.TCPListener
	v6   []bool // whether ls[i] is the IPv6 listener
	done chan struct{}
	stop sync.Once
	wg   sync.WaitGroup

	mu   sync.Mutex
	keys map[netip.Addr]string // MD5 keys set on the listener of each peer's family
}

// listenBGP listens on port and hands connections to ch. keys are the MD5
// passwords by peer; they are set before the socket listens, so no peer's
// first SYN can arrive unsigned-for.
func listenBGP(log *slog.Logger, port int32, ch chan<- *net.TCPConn, keys map[netip.Addr]string) (*bgpListener, error) {
	bl := &bgpListener{log: log, done: make(chan struct{}), keys: map[netip.Addr]string{}}
	for _, network := range []string{"tcp4", "tcp6"} {
		host := "0.0.0.0"
		if network == "tcp6" {
			host = "::"
		}
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var err error
			cerr := c.Control(func(fd uintptr) {
				// As GoBGP: accepted sockets inherit TTL 255, which peers
				// with TTL security (GTSM) require.
				v6 := network == "tcp6"
				if !v6 {
					if e := unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, 255); e != nil {
						log.Debug("cannot set TTL 255 on the BGP listener", "err", e)
					}
				} else if e := unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, 255); e != nil {
					log.Debug("cannot set hop limit 255 on the BGP listener", "err", e)
				}
				for a, pw := range keys {
					if a.Is6() != v6 {
						continue
					}
					if err = setMD5(int(fd), a, pw); err != nil {
						return
					}
				}
			})
			return errors.Join(cerr, err)
		}}
		// MPTCP sockets refuse TCP_MD5SIG (see go.mod's godebug).
		lc.SetMultipathTCP(false)
		addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
		l, err := lc.Listen(context.Background(), network, addr)
		if err != nil {
			bl.Close()
			return nil, fmt.Errorf("listen for BGP on %s: %w", addr, err)
		}
		bl.ls = append(bl.ls, l.(*net.TCPListener))
		bl.v6 = append(bl.v6, network == "tcp6")
	}
	for a, pw := range keys {
		bl.keys[a] = pw
	}
	for _, l := range bl.ls {
		bl.wg.Add(1)
		go bl.accept(l, ch)
	}
	return bl, nil
}

func (bl *bgpListener) accept(l *net.TCPListener, ch chan<- *net.TCPConn) {
	defer bl.wg.Done()
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: GoBGP's own listener
			// would stop for good; keep accepting once it passes.
			bl.log.Warn("accept BGP connection", "address", l.Addr(), "err", err)
			select {
			case <-bl.done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		select {
		case ch <- c:
		case <-bl.done:
			c.Close()
			return
		}
	}
}

// setKeys makes the listeners' MD5 keys exactly keys, each on the
// listener of its peer's family.
func (bl *bgpListener) setKeys(keys map[netip.Addr]string) error {
	if bl == nil || len(bl.ls) == 0 {
		return nil
	}
	bl.mu.Lock()
	defer bl.mu.Unlock()
	var errs []error
	for i, l := range bl.ls {
		errs = append(errs, bl.setKeysOn(l, bl.v6[i], keys))
	}
	return errors.Join(errs...)
}

// setKeysOn makes the MD5 keys of the family's peers on l exactly those of
// keys. bl.mu is held.
func (bl *bgpListener) setKeysOn(l *net.TCPListener, v6 bool, keys map[netip.Addr]string) error {
	sc, err := l.SyscallConn()
	if err != nil {
		return fmt.Errorf("set TCP MD5 keys on the %s BGP listener: %w", familyName(v6), err)
	}
	var errs []error
	cerr := sc.Control(func(fd uintptr) {
		for a, old := range bl.keys {
			if a.Is6() != v6 {
				continue
			}
			if pw, ok := keys[a]; ok && pw == old {
				continue
			}
			if err := setMD5(int(fd), a, ""); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(bl.keys, a)
		}
		for a, pw := range keys {
			if _, ok := bl.keys[a]; ok || a.Is6() != v6 {
				continue
			}
			if err := setMD5(int(fd), a, pw); err != nil {
				errs = append(errs, err)
				continue
			}
			bl.keys[a] = pw
		}
	})
	return errors.Join(cerr, errors.Join(errs...))
}

// setMD5 sets (or, with an empty password, removes) the TCP MD5 key for
// connections from a on socket fd (RFC 2385), a socket of a's family.
func setMD5(fd int, a netip.Addr, password string) error {
	var sig unix.TCPMD5Sig
	// The key's address is a sockaddr_in or sockaddr_in6 (port, then
	// sin_addr; or port, flow info, then sin6_addr).
	if a.Is6() {
		sig.Addr.Family = unix.AF_INET6
		b := a.As16()
		copy(sig.Addr.Data[6:], b[:])
	} else {
		sig.Addr.Family = unix.AF_INET
		b := a.As4()
		copy(sig.Addr.Data[2:], b[:])
	}
	sig.Keylen = uint16(copy(sig.Key[:], password))
	if err := unix.SetsockoptTCPMD5Sig(fd, unix.IPPROTO_TCP, unix.TCP_MD5SIG, &sig); err != nil {
		if password == "" {
			return fmt.Errorf("remove TCP MD5 key for peer %s from the BGP listener: %w", a, err)
		}
		return fmt.Errorf("set TCP MD5 key for peer %s on the BGP listener: %w", a, err)
	}
	return nil
}

// Close stops accepting; connections already handed over stay GoBGP's.
func (bl *bgpListener) Close() {
	if bl == nil {
		return
	}
	bl.stop.Do(func() {
		close(bl.done)
		for _, l := range bl.ls {
			l.Close()
		}
	})
	bl.wg.Wait()
}
