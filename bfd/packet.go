// Package bfd is Bidirectional Forwarding Detection for BGP peers: RFC 5880
// asynchronous mode over single-hop UDP (RFC 5881), without authentication,
// demand mode or the echo function.
//
// The package has three layers: packet.go is the wire codec, session.go the
// state machine (pure: it is driven by packets and the time and never
// touches a socket or a clock), and server.go runs one machine per peer over
// real UDP sockets (udp.go holds every kernel call).
package bfd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// State is a session state (RFC 5880 4.1).
type State uint8

const (
	AdminDown State = 0
	Down      State = 1
	Init      State = 2
	Up        State = 3
)

func (s State) String() string {
	switch s {
	case AdminDown:
		return "AdminDown"
	case Down:
		return "Down"
	case Init:
		return "Init"
	case Up:
		return "Up"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Diag says why a session last left Up (RFC 5880 4.1). Only the first
// few are ever set by this package; the rest can come from a peer.
type Diag uint8

const (
	DiagNone                        Diag = 0
	DiagControlDetectExpired        Diag = 1
	DiagEchoFailed                  Diag = 2
	DiagNeighborDown                Diag = 3
	DiagForwardingPlaneReset        Diag = 4
	DiagPathDown                    Diag = 5
	DiagConcatenatedPathDown        Diag = 6
	DiagAdminDown                   Diag = 7
	DiagReverseConcatenatedDownDiag      = 8
)

var diagNames = [...]string{
	"none", "control detection time expired", "echo function failed",
	"neighbor signaled session down", "forwarding plane reset", "path down",
	"concatenated path down", "administratively down", "reverse concatenated path down",
}

func (d Diag) String() string {
	if int(d) < len(diagNames) {
		return diagNames[d]
	}
	return fmt.Sprintf("diag %d", uint8(d))
}

// PacketLen is the length of a control packet without authentication,
// the only kind this package sends or accepts.
const PacketLen = 24

// Packet is a BFD control packet (RFC 5880 4.1). Intervals travel in
// microseconds; here they are durations, truncated to the microsecond
// when encoded.
type Packet struct {
	Diag  Diag
	State State
	// Poll asks the peer to confirm a parameter change; Final confirms.
	Poll, Final bool
	// ControlPlaneIndependent (the C bit): the sender's BFD keeps running
	// when its control plane restarts, so a Down means forwarding failed.
	ControlPlaneIndependent bool
	// Demand and Multipoint are decoded for completeness: this package
	// never sets them, and Parse rejects Multipoint.
	Demand     bool
	Multipoint bool

	DetectMult        uint8
	MyDiscr           uint32
	YourDiscr         uint32
	DesiredMinTx      time.Duration
	RequiredMinRx     time.Duration
	RequiredMinEchoRx time.Duration
}

const (
	version = 1

	bitPoll       = 0x20
	bitFinal      = 0x10
	bitCPI        = 0x08
	bitAuth       = 0x04
	bitDemand     = 0x02
	bitMultipoint = 0x01
)

// Errors from Parse; each is wrapped with the offending value.
var (
	ErrShort          = errors.New("bfd: packet shorter than 24 bytes")
	ErrVersion        = errors.New("bfd: unsupported version")
	ErrLength         = errors.New("bfd: bad length field")
	ErrAuth           = errors.New("bfd: authentication is not supported (A bit set)")
	ErrDetectMult     = errors.New("bfd: detect multiplier is zero")
	ErrMultipoint     = errors.New("bfd: multipoint (M) bit set")
	ErrMyDiscr        = errors.New("bfd: my discriminator is zero")
	ErrYourDiscr      = errors.New("bfd: your discriminator is zero in a packet whose state is neither Down nor AdminDown")
	ErrPollAndFinal   = errors.New("bfd: both Poll and Final bits set")
	errIntervalTooBig = errors.New("bfd: interval does not fit in 32 bits of microseconds")
)

// Parse decodes and validates a control packet as RFC 5880 6.8.6 says a
// receiver must, up to the checks that need a session. b is the UDP
// payload; bytes after the packet's Length are ignored.
func Parse(b []byte) (Packet, error) {
	if len(b) < PacketLen {
		return Packet{}, fmt.Errorf("%w: %d bytes", ErrShort, len(b))
	}
	if v := b[0] >> 5; v != version {
		return Packet{}, fmt.Errorf("%w %d", ErrVersion, v)
	}
	flags := b[1] & 0x3f
	if flags&bitAuth != 0 {
		return Packet{}, ErrAuth
	}
	// Without authentication a control packet is exactly 24 bytes.
	if l := int(b[3]); l != PacketLen || l > len(b) {
		return Packet{}, fmt.Errorf("%w: %d (payload %d bytes, want 24)", ErrLength, l, len(b))
	}
	p := Packet{
		Diag:                    Diag(b[0] & 0x1f),
		State:                   State(b[1] >> 6),
		Poll:                    flags&bitPoll != 0,
		Final:                   flags&bitFinal != 0,
		ControlPlaneIndependent: flags&bitCPI != 0,
		Demand:                  flags&bitDemand != 0,
		Multipoint:              flags&bitMultipoint != 0,
		DetectMult:              b[2],
		MyDiscr:                 binary.BigEndian.Uint32(b[4:]),
		YourDiscr:               binary.BigEndian.Uint32(b[8:]),
		DesiredMinTx:            usec(b[12:]),
		RequiredMinRx:           usec(b[16:]),
		RequiredMinEchoRx:       usec(b[20:]),
	}
	switch {
	case p.DetectMult == 0:
		return Packet{}, ErrDetectMult
	case p.Multipoint:
		return Packet{}, ErrMultipoint
	case p.MyDiscr == 0:
		return Packet{}, ErrMyDiscr
	case p.YourDiscr == 0 && p.State != Down && p.State != AdminDown:
		return Packet{}, fmt.Errorf("%w (state %s)", ErrYourDiscr, p.State)
	case p.Poll && p.Final:
		// RFC 5880 4.1: a packet MUST NOT have both; a receiver cannot
		// tell whether it starts a sequence or ends one.
		return Packet{}, ErrPollAndFinal
	}
	return p, nil
}

func usec(b []byte) time.Duration {
	return time.Duration(binary.BigEndian.Uint32(b)) * time.Microsecond
}

// Append encodes p onto b. Intervals must lie in [0, 2^32) microseconds.
func (p *Packet) Append(b []byte) ([]byte, error) {
	var flags byte
	for _, f := range []struct {
		set bool
		bit byte
	}{{p.Poll, bitPoll}, {p.Final, bitFinal}, {p.ControlPlaneIndependent, bitCPI}, {p.Demand, bitDemand}, {p.Multipoint, bitMultipoint}} {
		if f.set {
			flags |= f.bit
		}
	}
	b = append(b, version<<5|byte(p.Diag)&0x1f, byte(p.State)<<6|flags, p.DetectMult, PacketLen)
	b = binary.BigEndian.AppendUint32(b, p.MyDiscr)
	b = binary.BigEndian.AppendUint32(b, p.YourDiscr)
	for _, d := range []time.Duration{p.DesiredMinTx, p.RequiredMinRx, p.RequiredMinEchoRx} {
		us := d / time.Microsecond
		if us < 0 || us > 1<<32-1 {
			return b, fmt.Errorf("%w: %s", errIntervalTooBig, d)
		}
		b = binary.BigEndian.AppendUint32(b, uint32(us))
	}
	return b, nil
}
