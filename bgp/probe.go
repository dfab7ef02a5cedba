package bgp

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// ProbeWindow bounds the liveness probe of a graceful-restart peer whose
// session dropped: a host that answers no probe within it is taken for
// dead and its routes are dropped. A dead node therefore leaves every
// peer's table within its hold time plus ProbeWindow.
const ProbeWindow = 3 * time.Second

// probeEvery spaces the probes: each is a new connection with its own SYN,
// so one lost SYN, or one lost reset, costs this much and not the verdict.
const probeEvery = 200 * time.Millisecond

// probeResult is what a liveness probe found.
type probeResult struct {
	Alive  bool
	Probes int
	// Answer says how the host answered ("accepted" or "refused"), or, for
	// a dead host, the last probe's error.
	Answer string
}

// probeAlive dials remote's port from local every `every`, until one dial
// gets an answer from the host or window has passed. Any answer counts:
// a restarting daemon's host accepts (the new daemon listens) or refuses
// with a reset (nobody listens yet). Only silence — every SYN unanswered,
// or the network saying the host is unreachable — for the whole window
// means the host is gone.
func probeAlive(ctx context.Context, local netip.Addr, remote netip.AddrPort, window, every time.Duration) probeResult {
	ctx, cancel := context.WithTimeout(ctx, window)
	defer cancel()
	type answer struct {
		ok  bool
		how string
	}
	results := make(chan answer)
	var laddr *net.TCPAddr
	if local.IsValid() {
		laddr = &net.TCPAddr{IP: local.AsSlice()}
	}
	dial := func() {
		d := net.Dialer{LocalAddr: laddr}
		conn, err := d.DialContext(ctx, "tcp", remote.String())
		var a answer
		switch {
		case err == nil:
			conn.Close()
			a = answer{true, "accepted"}
		case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
			a = answer{true, "refused"}
		default:
			a = answer{false, err.Error()}
		}
		select {
		case results <- a:
		case <-ctx.Done():
		}
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	go dial()
	res := probeResult{Probes: 1}
	for {
		select {
		case a := <-results:
			if a.ok {
				return probeResult{Alive: true, Probes: res.Probes, Answer: a.how}
			}
			res.Answer = a.how
		case <-tick.C:
			res.Probes++
			go dial()
		case <-ctx.Done():
			if res.Answer == "" {
				res.Answer = "no answer"
			}
			return res
		}
	}
}
