package bfd

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// frrPacket is the first packet FRR's bfdd 8.4 sent a new peer
// (tcpdump): diag 0, state Down, detect mult 3, your discr 0, 1 s desired
// TX and required RX while Down, 50 ms required echo RX.
var frrPacket = []byte{
	0x20, 0x40, 0x03, 0x18, 0x6b, 0x2f, 0xcb, 0xa4, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x0f, 0x42, 0x40, 0x00, 0x0f, 0x42, 0x40, 0x00, 0x00, 0xc3, 0x50,
}

func TestParseFRRPacket(t *testing.T) {
	p, err := Parse(frrPacket)
	if err != nil {
		t.Fatal(err)
	}
	want := Packet{State: Down, DetectMult: 3, MyDiscr: 0x6b2fcba4, DesiredMinTx: time.Second,
		RequiredMinRx: time.Second, RequiredMinEchoRx: 50 * time.Millisecond}
	if p != want {
		t.Fatalf("Parse = %+v, want %+v", p, want)
	}
}

func TestPacketRoundTrip(t *testing.T) {
	for _, p := range []Packet{
		{Diag: DiagControlDetectExpired, State: Down, DetectMult: 3, MyDiscr: 1, DesiredMinTx: time.Second, RequiredMinRx: 300 * time.Millisecond},
		{State: Up, Poll: true, ControlPlaneIndependent: true, DetectMult: 1, MyDiscr: 0xffffffff, YourDiscr: 7, DesiredMinTx: 10 * time.Millisecond, RequiredMinRx: 20 * time.Millisecond, RequiredMinEchoRx: 3 * time.Microsecond},
		{State: Init, Final: true, Demand: true, DetectMult: 255, MyDiscr: 2, YourDiscr: 3, DesiredMinTx: (1<<32 - 1) * time.Microsecond},
		{Diag: DiagAdminDown, State: AdminDown, DetectMult: 3, MyDiscr: 9},
	} {
		b, err := p.Append(nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != PacketLen {
			t.Fatalf("encoded %d bytes", len(b))
		}
		got, err := Parse(b)
		if err != nil {
			t.Fatalf("Parse(Append(%+v)): %v", p, err)
		}
		if got != p {
			t.Errorf("round trip: got %+v, want %+v", got, p)
		}
	}
}

func TestAppendRejectsIntervalOutOfRange(t *testing.T) {
	for _, d := range []time.Duration{-time.Microsecond, 1 << 32 * time.Microsecond} {
		p := Packet{DetectMult: 1, MyDiscr: 1, RequiredMinRx: d}
		if _, err := p.Append(nil); !errors.Is(err, errIntervalTooBig) {
			t.Errorf("Append with interval %s: error %v", d, err)
		}
	}
}

func TestParseRejects(t *testing.T) {
	edit := func(f func(b []byte) []byte) []byte {
		return f(bytes.Clone(frrPacket))
	}
	for _, c := range []struct {
		name string
		b    []byte
		want error
	}{
		{"short", frrPacket[:23], ErrShort},
		{"version 0", edit(func(b []byte) []byte { b[0] &^= 0xe0; return b }), ErrVersion},
		{"version 2", edit(func(b []byte) []byte { b[0] = b[0]&0x1f | 2<<5; return b }), ErrVersion},
		{"auth bit", edit(func(b []byte) []byte { b[1] |= bitAuth; b[3] = 26; return append(b, 1, 2) }), ErrAuth},
		{"length 23", edit(func(b []byte) []byte { b[3] = 23; return b }), ErrLength},
		{"length beyond payload", edit(func(b []byte) []byte { b[3] = 28; return b }), ErrLength},
		{"length 28 without auth", edit(func(b []byte) []byte { b[3] = 28; return append(b, 0, 0, 0, 0) }), ErrLength},
		{"detect mult 0", edit(func(b []byte) []byte { b[2] = 0; return b }), ErrDetectMult},
		{"multipoint", edit(func(b []byte) []byte { b[1] |= bitMultipoint; return b }), ErrMultipoint},
		{"my discr 0", edit(func(b []byte) []byte { copy(b[4:8], []byte{0, 0, 0, 0}); return b }), ErrMyDiscr},
		{"your discr 0 in Init", edit(func(b []byte) []byte { b[1] = byte(Init) << 6; return b }), ErrYourDiscr},
		{"your discr 0 in Up", edit(func(b []byte) []byte { b[1] = byte(Up) << 6; return b }), ErrYourDiscr},
		{"poll and final", edit(func(b []byte) []byte { b[1] |= bitPoll | bitFinal; return b }), ErrPollAndFinal},
	} {
		if _, err := Parse(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: Parse error %v, want %v", c.name, err, c.want)
		}
	}
	// Your discriminator 0 is fine in Down and AdminDown, and bytes after
	// the packet are not part of it.
	for _, st := range []State{Down, AdminDown} {
		b := edit(func(b []byte) []byte { b[1] = byte(st) << 6; return append(b, 0xff) })
		if _, err := Parse(b); err != nil {
			t.Errorf("state %s, your discr 0, trailing byte: %v", st, err)
		}
	}
}

// FuzzParse: Parse never panics, and what it accepts encodes back to the
// same 24 bytes.
func FuzzParse(f *testing.F) {
	f.Add(frrPacket)
	for _, p := range []Packet{
		{State: Up, Poll: true, ControlPlaneIndependent: true, DetectMult: 3, MyDiscr: 1, YourDiscr: 2, DesiredMinTx: 300 * time.Millisecond, RequiredMinRx: 300 * time.Millisecond},
		{Diag: DiagAdminDown, State: AdminDown, Final: true, DetectMult: 1, MyDiscr: 5},
	} {
		b, _ := p.Append(nil)
		f.Add(b)
	}
	f.Add([]byte{0x20, 0x44, 3, 26})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		out, err := p.Append(nil)
		if err != nil {
			t.Fatalf("Append of a parsed packet %+v: %v", p, err)
		}
		if !bytes.Equal(out, b[:PacketLen]) {
			t.Fatalf("round trip:\n in %x\nout %x", b[:PacketLen], out)
		}
	})
}
