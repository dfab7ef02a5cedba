package bgp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/nexthop-net/nexthop/config"
)

// FuzzPeerConversion builds a node config from fuzz inputs (addresses, AS
// numbers, timers, passwords, flags, accept lists, pools), normalizes and
// validates it like the daemon does, and for a valid one runs the real
// conversion into GoBGP against a real GoBGP server in this process: the
// speaker's SetPeers (import policy, apiPeer for every neighbour, export
// policy), then SetPeers(nil). Nothing may panic, and:
//
//   - apiPeer carries what the config says (address, AS, MD5 password,
//     timers within GoBGP's rules, route reflection), and GoBGP accepts
//     every peer, defined set and policy (AddPeer, AddDefinedSet, AddPolicy
//     return no error) and can put the MD5 key on its listener;
//   - the import policy references only sets it defines, never an empty
//     one (under MatchSet ANY an empty set matches everything, under INVERT
//     nothing), names everything with its generation, and decides every
//     probe route (each peer × own block, pools, accept lists, the default
//     route, a fuzzed prefix) as the rules in policy.go say; our own
//     announcement passes;
//   - the export policy, likewise well formed, sends external peers only
//     our own block and nodes nothing learned from external peers;
//   - after SetPeers(nil) GoBGP holds no peer and only the sets and
//     policies of the generations in force: old generations are deleted;
//   - no password reaches the log (the speaker's and GoBGP's, at debug) or
//     an error message.
//
// GoBGP's own conversion functions are unexported, so acceptance is
// checked by calling the server; one server serves every input of a fuzz
// process (a few hundred inputs a second per worker). Peers are deleted
// again within milliseconds, long before GoBGP's first connection attempt
// (1-2 s after AddPeer), so fuzzing dials nobody.
//
// Seeds are in testdata/fuzz/FuzzPeerConversion.
func FuzzPeerConversion(f *testing.F) {
	fz := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, localAS, node, pod uint32, podBits uint8, pools []byte, flags uint8, password string, peers []byte, probe uint32, probeBits uint8) {
		cfg := fuzzConfig(localAS, node, pod, podBits, pools, flags, password, peers)
		cfg.Normalize()
		if cfg.Validate() != nil {
			return
		}
		fz.check(t, cfg, netip.PrefixFrom(addr4(probe), int(probeBits)%33).Masked())
	})
}

// FuzzPeerOptions is FuzzPeerConversion with the fabric options on top
// (opts, decoded by fuzzPeerOptions) and IPv6 (family and v6, decoded by
// fuzzFamilies: a dual-stack or IPv6-only node, IPv6 peers, pools, accept
// lists and importV6/exportV6 rules): the session options reach GoBGP as
// configured, each session in its peer's family, and the import policy
// still refuses everything the safety rules refuse in either family,
// whatever acceptPodBlocks and the filters say.
func FuzzPeerOptions(f *testing.F) {
	fz := newFuzzServer(f)
	opts := []byte{0x17, 2, 1, 2, 203, 0, 113, 10, 0x12,
		0x03, 10, 244, 3, 0, 24, 0, 0, // Reject Equal 10.244.3.0/24
		0x16, 10, 244, 0, 0, 16, 16, 24, // Accept In 10.244.0.0/16, /16-/24
		0x09, 10, 0, 0, 0, 8, 0, 0} // export: Reject NotIn 10.0.0.0/8
	peers := []byte{192, 0, 2, 254, 0, 0, 0xfd, 0xe8}
	f.Add(uint32(64512), uint32(0xc000020b), uint32(0x0af40100), uint8(16), []byte{10, 244, 0, 0, 16}, uint8(0), "",
		peers, opts, uint32(0x0af40300), uint8(24), uint8(0), []byte(nil))
	// Dual-stack: the node fd00:192::11 with fd00:10:244:1::/64 in the
	// pool fd00:10:244::/56, its peer an IPv6 one (fd00:192::fe), with an
	// importV6 rule rejecting fd00:10:244:3::/64.
	v6 := func(source bool) []byte {
		var src []byte
		if source {
			src = netip.MustParseAddr("fd00:192::1:11").AsSlice()
		}
		return slices.Concat(
			netip.MustParseAddr("fd00:192::11").AsSlice(), netip.MustParseAddr("fd00:10:244:1::").AsSlice(), []byte{16},
			netip.MustParseAddr("fd00:10:244::").AsSlice(), []byte{56}, make([]byte, 17), // one pool
			[]byte{1}, netip.MustParseAddr("fd00:192::fe").AsSlice(), src, // peer 0: IPv6
			[]byte{0x01, 0x03}, netip.MustParseAddr("fd00:10:244:3::").AsSlice(), []byte{64, 0, 0}, // importV6: Reject Equal
			netip.MustParseAddr("fd00:10:244:3::").AsSlice(), []byte{64}) // probe
	}
	f.Add(uint32(64512), uint32(0xc000020b), uint32(0x0af40100), uint8(16), []byte{10, 244, 0, 0, 16}, uint8(0), "md5-key",
		[]byte{192, 0, 2, 254, 0, 0, 0xfd, 0xe8, 0, 0, 1}, opts, uint32(0x0af40300), uint8(24), uint8(1), v6(true))
	// IPv6-only, the same without the IPv4 options.
	f.Add(uint32(64512), uint32(0xc000020b), uint32(0x0af40100), uint8(16), []byte{10, 244, 0, 0, 16}, uint8(0), "",
		peers, []byte{}, uint32(0x0af40300), uint8(24), uint8(2), v6(false))
	f.Fuzz(func(t *testing.T, localAS, node, pod uint32, podBits uint8, pools []byte, flags uint8, password string, peers, opts []byte, probe uint32, probeBits uint8, family uint8, v6 []byte) {
		cfg := fuzzConfig(localAS, node, pod, podBits, pools, flags, password, peers)
		fuzzPeerOptions(&cfg, opts)
		probe6 := fuzzFamilies(&cfg, family, v6)
		cfg.Normalize()
		if cfg.Validate() != nil {
			return
		}
		fz.check(t, cfg, netip.PrefixFrom(addr4(probe), int(probeBits)%33).Masked(), probe6)
	})
}

// fuzzFamilies makes cfg dual-stack (family%3 == 1) or IPv6-only (2) from
// v6, and returns an IPv6 probe prefix (or none): the node's IPv6 address
// (16 bytes), block (16 bytes; length 48 + n%79), up to 2 IPv6 pools (16
// bytes, length % 129), each peer: a flag (bit 0 IPv6, always on an
// IPv6-only node) and for an IPv6 one its address (16 bytes), as many
// IPv6 accept prefixes as its IPv4 list had, a source address (16 bytes)
// if it had one, and importV6/exportV6 rules (counts: low nibble import
// % 4, high export % 4; each: flags as fuzzPeerOptions', prefix, min,
// max); then the probe.
func fuzzFamilies(cfg *config.Config, family uint8, v6 []byte) netip.Prefix {
	b := fuzzBytes(v6)
	mode := family % 3
	if mode == 0 {
		return netip.Prefix{}
	}
	addr := b.addr6()
	block := netip.PrefixFrom(addr6Of(b.bytes16()), 48+int(b.u8())%79).Masked()
	cfg.AddressV6 = addr
	cfg.PodCIDRs = []netip.Prefix{cfg.PodCIDR, block}
	if mode == 2 {
		cfg.Address = addr
		cfg.PodCIDRs = []netip.Prefix{block}
	}
	cfg.PodCIDR = netip.Prefix{}
	for range 2 {
		if p := b.prefix6(); p.Bits() > 0 {
			cfg.Pools = append(cfg.Pools, p)
		}
	}
	for i := range cfg.Peers {
		p := &cfg.Peers[i]
		if b.u8()&1 == 0 && mode == 1 {
			continue
		}
		p.Address = b.addr6()
		for j := range p.Accept {
			p.Accept[j] = b.prefix6()
		}
		if p.SourceAddress.IsValid() {
			p.SourceAddress = b.addr6()
		}
		counts := b.u8()
		var f config.Filter
		if len(p.Filters) > 0 {
			f = p.Filters[0] // its IPv4 rules stay: they must not touch the IPv6 session
		}
		for range counts & 3 {
			f.ImportV6 = append(f.ImportV6, b.filterRule(b.prefix6, 130))
		}
		for range counts >> 4 & 3 {
			f.ExportV6 = append(f.ExportV6, b.filterRule(b.prefix6, 130))
		}
		if len(f.ImportV4)+len(f.ExportV4)+len(f.ImportV6)+len(f.ExportV6) > 0 {
			f.Name = fmt.Sprintf("f%d", i)
			p.Filters = []config.Filter{f}
		}
	}
	return b.prefix6().Masked()
}

func addr6Of(b [16]byte) netip.Addr { return netip.AddrFrom16(b) }

func (b *fuzzBytes) bytes16() [16]byte {
	var a [16]byte
	for i := range a {
		a[i] = b.u8()
	}
	return a
}

func (b *fuzzBytes) addr6() netip.Addr { return addr6Of(b.bytes16()) }

func (b *fuzzBytes) prefix6() netip.Prefix {
	return netip.PrefixFrom(b.addr6(), int(b.u8())%129)
}

// filterOps are the match operators a fuzzed filter rule picks from.
var filterOps = []string{"", config.MatchEqual, config.MatchNotEqual, config.MatchIn, config.MatchNotIn}

// filterRule decodes one filter rule: flags (bit 0 Reject, bits 1-3
// operator, 4 prefixLength); a prefix read by prefix; min and max, each
// % lenMod (a length or two past the family's, to be refused).
func (b *fuzzBytes) filterRule(prefix func() netip.Prefix, lenMod uint8) config.FilterRule {
	rf := b.u8()
	r := config.FilterRule{Action: config.FilterAccept, MatchOperator: filterOps[int(rf>>1&7)%len(filterOps)]}
	if rf&1 != 0 {
		r.Action = config.FilterReject
	}
	if pfx := prefix(); r.MatchOperator != "" {
		r.CIDR = pfx.Masked()
	}
	lo, hi := b.u8()%lenMod, b.u8()%lenMod
	if rf&16 != 0 {
		r.PrefixLength = &config.PrefixLength{Min: lo, Max: hi}
	}
	return r
}

// fuzzPeerOptions decodes, per peer in order: flags (bit 0 acceptPodBlocks,
// 1 keepOriginalNextHop, 2 ebgpMultihop, 3 ttlSecurity, 4 sourceAddress);
// TTL or hops; allowas-in count; prepend count; 4-byte source address;
// then one filter: rule counts (low nibble import % 4, high export % 4),
// each rule (flags: bit 0 Reject, bits 1-3 operator, 4 prefixLength;
// prefix; min; max).
func fuzzPeerOptions(cfg *config.Config, opts []byte) {
	b := fuzzBytes(opts)
	for i := range cfg.Peers {
		p := &cfg.Peers[i]
		fl, hops := b.u8(), b.u8()
		p.AcceptPodBlocks = fl&1 != 0
		p.KeepOriginalNextHop = fl&2 != 0
		if fl&4 != 0 {
			p.EBGPMultihop = &config.Multihop{TTL: hops}
		}
		if fl&8 != 0 {
			p.TTLSecurity = hops
		}
		p.NumAllowedLocalASNumbers, p.ASPathPrepend = b.u8()%12, b.u8()%12
		if src := addr4(b.u32()); fl&16 != 0 {
			p.SourceAddress = src
		}
		counts := b.u8()
		var f config.Filter
		for range counts & 3 {
			f.ImportV4 = append(f.ImportV4, b.filterRule(b.prefix, 34))
		}
		for range counts >> 4 & 3 {
			f.ExportV4 = append(f.ExportV4, b.filterRule(b.prefix, 34))
		}
		if len(f.ImportV4)+len(f.ExportV4) > 0 {
			f.Name = fmt.Sprintf("f%d", i)
			p.Filters = []config.Filter{f}
		}
	}
}

func addr4(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// fuzzBytes reads fixed-size fields from a fuzz input, zero once it runs out.
type fuzzBytes []byte

func (b *fuzzBytes) u8() uint8 {
	if len(*b) == 0 {
		return 0
	}
	v := (*b)[0]
	*b = (*b)[1:]
	return v
}

func (b *fuzzBytes) u16() uint16 { return uint16(b.u8())<<8 | uint16(b.u8()) }
func (b *fuzzBytes) u32() uint32 { return uint32(b.u16())<<16 | uint32(b.u16()) }
func (b *fuzzBytes) prefix() netip.Prefix {
	return netip.PrefixFrom(addr4(b.u32()), int(b.u8())%33)
}

// fuzzConfig decodes a config. Shapes are biased towards valid configs
// (config's own FuzzParse covers validation):
//
//	flags: bit 0 acceptDefaultRoute, bit 1 routeReflectorClusterID
//	pools: up to 4 × (4-byte address, length)
//	peers: up to 8 × (4-byte address; 4-byte AS, 0 meaning this node's;
//	       hold time (0 unset, else 3 s + (n-1) × 500 ms); keepalive (0
//	       unset, else n × 250 ms); flags (bit 0 password, 1-2 node set/value,
//	       3-4 passive set/value, 5 route reflector client, 6 graceful restart
//	       off, 7 description); accept count % 4 and as many prefixes;
//	       2-byte port; 2-byte max prefixes; restart time (n × 16 s))
func fuzzConfig(localAS, node, pod uint32, podBits uint8, pools []byte, flags uint8, password string, peers []byte) config.Config {
	cfg := config.Config{
		NodeName:           "fuzz",
		Address:            addr4(node),
		LocalAS:            localAS,
		PodCIDR:            netip.PrefixFrom(addr4(pod), 8+int(podBits)%23),
		AcceptDefaultRoute: flags&1 != 0,
		GRPCListen:         "none",
	}
	if flags&2 != 0 {
		cfg.RouteReflectorClusterID = addr4(node ^ pod)
	}
	pb := fuzzBytes(pools)
	for len(pb) > 0 && len(cfg.Pools) < 4 {
		cfg.Pools = append(cfg.Pools, pb.prefix())
	}
	b := fuzzBytes(peers)
	for i := 0; len(b) > 0 && i < 8; i++ {
		p := config.Peer{Address: addr4(b.u32()), AS: b.u32()}
		if p.AS == 0 {
			p.AS = localAS
		}
		if h := b.u8(); h > 0 {
			p.HoldTime.Duration = 3*time.Second + time.Duration(h-1)*500*time.Millisecond
		}
		if k := b.u8(); k > 0 {
			p.Keepalive.Duration = time.Duration(k) * 250 * time.Millisecond
		}
		pf := b.u8()
		if pf&1 != 0 {
			p.Password = password
		}
		if pf&2 != 0 {
			v := pf&4 != 0
			p.Node = &v
		}
		if pf&8 != 0 {
			v := pf&16 != 0
			p.Passive = &v
		}
		p.RouteReflectorClient = pf&32 != 0
		if pf&64 != 0 {
			off := false
			p.GracefulRestart.Enabled = &off
		}
		if pf&128 != 0 {
			p.Description = fmt.Sprintf("peer %d", i)
		}
		for range b.u8() % 4 {
			p.Accept = append(p.Accept, b.prefix())
		}
		p.Port = b.u16()
		p.MaxPrefixes = uint32(b.u16())
		p.GracefulRestart.RestartTime.Duration = time.Duration(b.u8()) * 16 * time.Second
		cfg.Peers = append(cfg.Peers, p)
	}
	return cfg
}

// fuzzServer is one GoBGP server for a fuzz process, with every log line
// (the speaker's and GoBGP's, debug included) captured.
type fuzzServer struct {
	mu  sync.Mutex
	srv *server.BgpServer
	log *captureHandler
	// The import and export policy generations in force on srv.
	importGen, exportGen int
	// md5 says whether this kernel has TCP MD5 (CONFIG_TCP_MD5SIG): only
	// then must GoBGP manage to set every key.
	md5 bool
}

func newFuzzServer(f *testing.F) *fuzzServer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	fz := &fuzzServer{log: &captureHandler{buf: &bytes.Buffer{}, mu: &sync.Mutex{}}, md5: kernelHasMD5(l.(*net.TCPListener))}
	l.Close()
	if !fz.md5 {
		f.Log("this kernel has no TCP MD5 signatures (setsockopt TCP_MD5SIG: ENOPROTOOPT): not checking that GoBGP sets the keys")
	}
	// No GrpcListenAddress: no gRPC server.
	fz.srv = server.NewBgpServer(server.LoggerOption(&gobgpLogger{l: slog.New(fz.log).With("source", "gobgp")}))
	go fz.srv.Serve()
	// Listeners, so GoBGP sets each peer's MD5 key on the one of its
	// family as in the daemon.
	err = fz.srv.StartBgp(context.Background(), &api.StartBgpRequest{Global: &api.Global{
		Asn: 64512, RouterId: "192.0.2.1", ListenPort: int32(port), ListenAddresses: []string{"127.0.0.1", "::1"}, UseMultiplePaths: true,
	}})
	if err != nil {
		f.Fatalf("start GoBGP: %v", err)
	}
	f.Cleanup(fz.srv.Stop)
	return fz
}

// kernelHasMD5 tries to set a TCP MD5 key on l.
func kernelHasMD5(l *net.TCPListener) bool {
	sc, err := l.SyscallConn()
	if err != nil {
		return true
	}
	sig := &unix.TCPMD5Sig{Keylen: 4}
	sig.Addr.Family = unix.AF_INET
	copy(sig.Addr.Data[2:], []byte{127, 0, 0, 2})
	copy(sig.Key[:], "test")
	var serr error
	sc.Control(func(fd uintptr) { serr = unix.SetsockoptTCPMD5Sig(int(fd), unix.IPPROTO_TCP, unix.TCP_MD5SIG, sig) })
	return !errors.Is(serr, unix.ENOPROTOOPT)
}

// check runs cfg's peers through the speaker into GoBGP and back out, then
// checks everything FuzzPeerConversion promises.
func (fz *fuzzServer) check(t *testing.T, cfg config.Config, probes ...netip.Prefix) {
	fz.mu.Lock()
	defer fz.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	peers := map[netip.Addr]config.Peer{}
	for _, p := range cfg.Peers {
		peers[p.Address] = p
	}
	sp := fz.speaker(&cfg)
	for _, p := range cfg.Peers {
		checkAPIPeer(t, &cfg, p, sp.apiPeer(p))
	}
	sets, pol := sp.importPolicy(fz.importGen+1, peers)
	checkImportPolicy(t, &cfg, peers, fz.importGen+1, sets, pol, probes)
	sets, pol = sp.exportPolicy(fz.exportGen+1, peers)
	checkExportPolicy(t, &cfg, peers, fz.exportGen+1, sets, pol)

	logged, errs := fz.run(ctx, t, &cfg)

	for _, p := range cfg.Peers {
		if len(p.Password) < 4 || !appears(logged, p.Password) {
			continue
		}
		// Maybe a coincidence ("peer" in a log message): run again with
		// every password replaced by one of the same length; if the text
		// is still there, it came from elsewhere.
		other := cfg
		other.Peers = slices.Clone(cfg.Peers)
		for i := range other.Peers {
			other.Peers[i].Password = strings.Repeat("\x00", len(other.Peers[i].Password))
		}
		again, _ := fz.run(ctx, t, &other)
		if !appears(again, p.Password) {
			t.Fatalf("password of peer %s (%q) appears in the log:\n%s", p.Address, p.Password, logged)
		}
	}
	if errs != "" {
		for _, p := range cfg.Peers {
			if len(p.Password) >= 4 && appears(errs, p.Password) {
				t.Errorf("password of peer %s appears in an error: %s", p.Address, errs)
			}
		}
		t.Fatalf("GoBGP refused a valid config's conversion: %s\nlog:\n%s", errs, logged)
	}
}

// appears reports whether secret is in text as itself or escaped the way
// Go and protobuf text format quote strings.
func appears(text, secret string) bool {
	q := strconv.Quote(secret)
	return strings.Contains(text, secret) || strings.Contains(text, q[1:len(q)-1])
}

// speaker is a Speaker for cfg on the shared server, its import policy
// generation following the one in force.
func (fz *fuzzServer) speaker(cfg *config.Config) *Speaker {
	sp := New(optionsOf(cfg), slog.New(fz.log))
	sp.srv = fz.srv
	sp.importGen, sp.exportGen = fz.importGen, fz.exportGen
	return sp
}

// run adds cfg's peers and removes them again, returning what was logged
// meanwhile and any error. Afterwards GoBGP must be back where it started.
func (fz *fuzzServer) run(ctx context.Context, t *testing.T, cfg *config.Config) (logged, errs string) {
	fz.log.reset()
	sp := fz.speaker(cfg)
	var msgs []string
	if err := sp.SetPeers(ctx, cfg.Peers); err != nil {
		msgs = append(msgs, "SetPeers: "+err.Error())
	}
	if err := sp.SetPeers(ctx, nil); err != nil {
		msgs = append(msgs, "SetPeers(nil): "+err.Error())
	}
	fz.importGen, fz.exportGen = sp.importGen, sp.exportGen
	if len(msgs) == 0 {
		fz.checkClean(ctx, t)
	}
	logged = fz.log.String()
	if fz.md5 && strings.Contains(logged, "failed to set md5") {
		msgs = append(msgs, "GoBGP could not set an MD5 key Validate accepted")
	}
	return logged, strings.Join(msgs, "; ")
}

// checkClean checks GoBGP holds no peer, and no set or policy but the
// import policy generation in force.
func (fz *fuzzServer) checkClean(ctx context.Context, t *testing.T) {
	keep := []string{fmt.Sprintf("nexthop-import-%d-", fz.importGen), fmt.Sprintf("nexthop-export-%d-", fz.exportGen)}
	kept := func(name string) bool {
		return slices.ContainsFunc(keep, func(p string) bool { return strings.HasPrefix(name, p) })
	}
	var left []string
	fz.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		left = append(left, "peer "+p.GetConf().GetNeighborAddress())
	})
	for _, typ := range []api.DefinedType{api.DefinedType_PREFIX, api.DefinedType_NEIGHBOR} {
		fz.srv.ListDefinedSet(ctx, &api.ListDefinedSetRequest{DefinedType: typ}, func(ds *api.DefinedSet) {
			if !kept(ds.Name) {
				left = append(left, "set "+ds.Name)
			}
		})
	}
	fz.srv.ListPolicy(ctx, &api.ListPolicyRequest{}, func(p *api.Policy) {
		if !kept(p.Name) {
			left = append(left, "policy "+p.Name)
		}
	})
	if len(left) > 0 {
		t.Fatalf("after SetPeers(nil) GoBGP still holds %v (generations in force: import %d, export %d)", left, fz.importGen, fz.exportGen)
	}
}

// checkAPIPeer checks the GoBGP neighbour says what the config says.
func checkAPIPeer(t *testing.T, cfg *config.Config, p config.Peer, a *api.Peer) {
	t.Helper()
	c, tm, tr := a.GetConf(), a.GetTimers().GetConfig(), a.GetTransport()
	switch {
	case c.GetNeighborAddress() != p.Address.String() || c.GetPeerAsn() != p.AS:
		t.Fatalf("apiPeer: neighbour %s AS %d, config says %s AS %d", c.GetNeighborAddress(), c.GetPeerAsn(), p.Address, p.AS)
	case c.GetAuthPassword() != p.Password:
		t.Fatalf("apiPeer for %s: MD5 password %q, config says %q", p.Address, c.GetAuthPassword(), p.Password)
	case tr.GetLocalAddress() != cfg.LocalAddressOf(p).String():
		t.Fatalf("apiPeer for %s: local address %s, want %s", p.Address, tr.GetLocalAddress(), cfg.LocalAddressOf(p))
	case len(a.GetAfiSafis()) != 1 || !proto.Equal(a.GetAfiSafis()[0].GetConfig().GetFamily(), familyOf(p.Address.Is6())) ||
		!proto.Equal(a.GetAfiSafis()[0].GetPrefixLimits().GetFamily(), familyOf(p.Address.Is6())):
		t.Fatalf("apiPeer for %s: families %v, want %s unicast only", p.Address, a.GetAfiSafis(), familyName(p.Address.Is6()))
	case c.GetAllowOwnAsn() != uint32(p.NumAllowedLocalASNumbers):
		t.Fatalf("apiPeer for %s: allow own AS %d, config says %d", p.Address, c.GetAllowOwnAsn(), p.NumAllowedLocalASNumbers)
	case a.GetEbgpMultihop().GetEnabled() != (p.EBGPMultihop != nil) ||
		p.EBGPMultihop != nil && a.GetEbgpMultihop().GetMultihopTtl() != uint32(p.EBGPMultihop.TTL):
		t.Fatalf("apiPeer for %s: eBGP multihop %v, config says %+v", p.Address, a.GetEbgpMultihop(), p.EBGPMultihop)
	case a.GetTtlSecurity().GetEnabled() != (p.TTLSecurity > 0) ||
		p.TTLSecurity > 0 && a.GetTtlSecurity().GetTtlMin() != 256-uint32(p.TTLSecurity):
		// GoBGP wants the lowest TTL accepted: 255 for one hop.
		t.Fatalf("apiPeer for %s: TTL security %v, config says %d hops", p.Address, a.GetTtlSecurity(), p.TTLSecurity)
	case tr.GetPassiveMode() != cfg.PassiveWith(p):
		t.Fatalf("apiPeer for %s: passive %v, config resolves to %v", p.Address, tr.GetPassiveMode(), cfg.PassiveWith(p))
	case tr.GetRemotePort() != uint32(p.Port) || p.Port == 0:
		t.Fatalf("apiPeer for %s: remote port %d, config says %d", p.Address, tr.GetRemotePort(), p.Port)
	}
	// GoBGP takes whole seconds; 0 would mean its own default (90 s hold).
	hold, ka := tm.GetHoldTime(), tm.GetKeepaliveInterval()
	if ka == 0 { // GoBGP's default
		ka = hold / 3
	}
	if hold < 3 || ka < 1 || ka > hold/3 {
		t.Fatalf("apiPeer for %s: hold time %d s, keepalive %d s in effect (config %s, %s): want hold ≥ 3 s, keepalive 1 s..hold/3",
			p.Address, hold, ka, p.HoldTime, p.Keepalive)
	}
	if max := a.GetAfiSafis()[0].GetPrefixLimits().GetMaxPrefixes(); max != p.MaxPrefixes || max == 0 {
		t.Fatalf("apiPeer for %s: max prefixes %d, config says %d", p.Address, max, p.MaxPrefixes)
	}
	if gr := a.GetGracefulRestart(); p.GracefulRestart.On() != gr.GetEnabled() || (gr.GetEnabled() && (gr.GetRestartTime() < 1 || gr.GetRestartTime() > 4095)) {
		t.Fatalf("apiPeer for %s: graceful restart %v (restart time %d s), config says %v (%s)",
			p.Address, gr.GetEnabled(), gr.GetRestartTime(), p.GracefulRestart.On(), p.GracefulRestart.RestartTime)
	}
	if rr := a.GetRouteReflector(); rr.GetRouteReflectorClient() != p.RouteReflectorClient ||
		(p.RouteReflectorClient && rr.GetRouteReflectorClusterId() != cfg.RouteReflectorClusterID.String()) {
		t.Fatalf("apiPeer for %s: route reflector %v, config says client %v cluster %s", p.Address, rr, p.RouteReflectorClient, cfg.RouteReflectorClusterID)
	}
}

// checkPolicyShape checks a policy generation's sets and statements are
// all named for it (deletePolicyGen finds them by name), that every set a
// statement references is defined, of the right type and not empty (under
// MatchSet ANY an empty set matches everything, under INVERT nothing), and
// that only conditions and actions evalPolicy models are used. It returns
// the sets by name.
func checkPolicyShape(t *testing.T, kind string, gen int, sets []*api.DefinedSet, pol *api.Policy) map[string]*api.DefinedSet {
	t.Helper()
	prefix := fmt.Sprintf("nexthop-%s-%d-", kind, gen)
	byName := map[string]*api.DefinedSet{}
	for _, ds := range sets {
		if !strings.HasPrefix(ds.Name, prefix) {
			t.Fatalf("set %s is not named for %s generation %d: deletePolicyGen would leave it", ds.Name, kind, gen)
		}
		if byName[ds.Name] != nil {
			t.Fatalf("set %s defined twice", ds.Name)
		}
		byName[ds.Name] = ds
	}
	if !strings.HasPrefix(pol.Name, prefix) {
		t.Fatalf("policy %s is not named for %s generation %d", pol.Name, kind, gen)
	}
	stNames := map[string]bool{}
	ref := func(st string, m *api.MatchSet, typ api.DefinedType) {
		if m == nil {
			return
		}
		ds := byName[m.Name]
		switch {
		case ds == nil:
			t.Fatalf("statement %s references set %s, which the policy does not define", st, m.Name)
		case ds.DefinedType != typ:
			t.Fatalf("statement %s uses %s set %s as a %s set", st, ds.DefinedType, m.Name, typ)
		case len(ds.List) == 0 && len(ds.Prefixes) == 0:
			t.Fatalf("statement %s references empty set %s under %s: matches everything or nothing", st, m.Name, m.Type)
		}
	}
	for _, st := range pol.Statements {
		if stNames[st.Name] || !strings.HasPrefix(st.Name, prefix) {
			t.Fatalf("statement %s: duplicate or not named for %s generation %d", st.Name, kind, gen)
		}
		stNames[st.Name] = true
		ref(st.Name, st.GetConditions().GetPrefixSet(), api.DefinedType_PREFIX)
		ref(st.Name, st.GetConditions().GetNeighborSet(), api.DefinedType_NEIGHBOR)
		c := proto.Clone(st.GetConditions()).(*api.Conditions)
		c.PrefixSet, c.NeighborSet, c.RouteType = nil, nil, api.Conditions_ROUTE_TYPE_NONE
		a := proto.Clone(st.GetActions()).(*api.Actions)
		a.RouteAction = api.RouteAction_NONE
		// Modifications, which never decide a route's fate.
		a.AsPrepend, a.Nexthop = nil, nil
		if !proto.Equal(c, &api.Conditions{}) || !proto.Equal(a, &api.Actions{}) {
			t.Fatalf("statement %s uses conditions or actions this test does not model: %v / %v", st.Name, st.Conditions, st.Actions)
		}
	}
	return byName
}

// routeType is the GoBGP route type of a path learned from p.
func routeType(cfg *config.Config, p config.Peer) api.Conditions_RouteType {
	if p.AS == cfg.LocalAS {
		return api.Conditions_ROUTE_TYPE_INTERNAL
	}
	return api.Conditions_ROUTE_TYPE_EXTERNAL
}

// checkExportPolicy checks the export policy's shape and its decision for
// each peer and each kind of route (our own, learned over iBGP, learned
// over eBGP) against the rules in policy.go: external peers hear only our
// own block; nodes hear no route learned from an external peer.
func checkExportPolicy(t *testing.T, cfg *config.Config, peers map[netip.Addr]config.Peer, gen int, sets []*api.DefinedSet, pol *api.Policy) {
	t.Helper()
	byName := checkPolicyShape(t, "export", gen, sets, pol)
	for _, p := range cfg.Peers {
		// The session carries the peer's family: the node's block of it.
		block := cfg.PodCIDROf(p.Address.Is6())
		if !block.IsValid() {
			continue
		}
		for _, rt := range []api.Conditions_RouteType{api.Conditions_ROUTE_TYPE_LOCAL, api.Conditions_ROUTE_TYPE_INTERNAL, api.Conditions_ROUTE_TYPE_EXTERNAL} {
			want := rt != api.Conditions_ROUTE_TYPE_LOCAL && (!p.IsNode(cfg.LocalAS) || rt == api.Conditions_ROUTE_TYPE_EXTERNAL) ||
				filterRejects(p, block, config.Filter.Export)
			if got := evalPolicy(byName, pol, p.Address, rt, block); got != want {
				t.Fatalf("export of a %s route to peer %s (AS %d, node %v): reject %v, want %v\npolicy: %v",
					rt, p.Address, p.AS, p.IsNode(cfg.LocalAS), got, want, pol)
			}
		}
	}
}

// checkImportPolicy checks the import policy's shape and, on probe routes
// from every peer, its decisions against the rules in policy.go.
func checkImportPolicy(t *testing.T, cfg *config.Config, peers map[netip.Addr]config.Peer, gen int, sets []*api.DefinedSet, pol *api.Policy, extra []netip.Prefix) {
	t.Helper()
	byName := checkPolicyShape(t, "import", gen, sets, pol)

	// Our own announcements pass the import policy too.
	for _, b := range cfg.PodCIDRs {
		if evalPolicy(byName, pol, netip.Addr{}, api.Conditions_ROUTE_TYPE_LOCAL, b) {
			t.Fatalf("the import policy rejects this node's own announcement of %s", b)
		}
	}
	var probes []netip.Prefix
	around := func(p netip.Prefix) {
		if !p.IsValid() {
			return
		}
		probes = append(probes, p)
		if bits := p.Addr().BitLen(); p.Bits() < bits {
			probes = append(probes, netip.PrefixFrom(p.Addr(), p.Bits()+1), netip.PrefixFrom(lastAddr(p), bits))
		}
		if p.Bits() > 0 {
			probes = append(probes, netip.PrefixFrom(p.Addr(), p.Bits()-1).Masked())
		}
	}
	for _, b := range cfg.PodCIDRs {
		around(b)
	}
	probes = append(probes, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("0.0.0.0/1"),
		netip.MustParsePrefix("::/0"), netip.MustParsePrefix("::/1"))
	for _, p := range extra {
		around(p)
	}
	// Every martian and documentation range, and around them: the
	// safety rules hold whatever else the config says.
	for _, m := range append(slices.Clone(config.Martians), config.Documentation...) {
		around(m)
	}
	for _, p := range cfg.Pools {
		around(p)
	}
	for _, p := range peers {
		for _, a := range p.Accept {
			around(a)
		}
		for _, f := range p.Filters {
			for _, r := range slices.Concat(f.ImportV4, f.ExportV4, f.ImportV6, f.ExportV6) {
				if r.CIDR.IsValid() {
					around(r.CIDR)
				}
				if lo, hi := r.Lengths(r.CIDR.Addr().BitLen()); r.CIDR.IsValid() {
					probes = append(probes, netip.PrefixFrom(r.CIDR.Addr(), lo), netip.PrefixFrom(r.CIDR.Addr(), hi).Masked())
				}
			}
		}
	}
	for _, p := range cfg.Peers {
		rt := routeType(cfg, p)
		for _, x := range probes {
			// A session carries its peer's family only. An IPv4-mapped
			// prefix no GoBGP prefix set can match: the speaker refuses
			// those itself (mappedMartian, TestDualStack).
			if !x.IsValid() || x.Addr().Is6() != p.Address.Is6() || x.Addr().Is4In6() {
				continue
			}
			want := wantReject(cfg, p, x)
			if got := evalPolicy(byName, pol, p.Address, rt, x); got != want {
				t.Fatalf("import of %s from peer %s (AS %d, node %v, accept %v, acceptPodBlocks %v, filters %+v; pools %v, own %s, acceptDefaultRoute %v): reject %v, want %v\npolicy: %v",
					x, p.Address, p.AS, p.IsNode(cfg.LocalAS), p.Accept, p.AcceptPodBlocks, p.Filters, cfg.Pools, cfg.PodCIDRs, cfg.AcceptDefaultRoute, got, want, pol)
			}
		}
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// within reports whether x is p or a more-specific of it.
func within(x, p netip.Prefix) bool { return p.Bits() <= x.Bits() && p.Contains(x.Addr()) }

// wantReject is the import rule of policy.go, written out plainly, for a
// prefix x of p's family. IPv4-mapped entries of pools and accept lists
// match nothing (GoBGP's prefix sets cannot hold them; see prefixSet).
func wantReject(cfg *config.Config, p config.Peer, x netip.Prefix) bool {
	inAny := func(ps []netip.Prefix) bool {
		return slices.ContainsFunc(ps, func(q netip.Prefix) bool { return !q.Addr().Is4In6() && within(x, q) })
	}
	switch {
	case within(x, cfg.PodCIDROf(x.Addr().Is6())):
		return true
	case inAny(config.MartiansFor(cfg.Pools)):
		return true
	case x.Bits() == 0 && !cfg.AcceptDefaultRoute:
		return true
	case p.IsNode(cfg.LocalAS):
		if len(cfg.Pools) > 0 && !inAny(cfg.Pools) {
			return true
		}
	case len(p.Accept) > 0:
		if !inAny(p.Accept) && !(p.AcceptPodBlocks && inAny(cfg.Pools)) {
			return true
		}
	case !p.AcceptPodBlocks && len(cfg.Pools) > 0 && inAny(cfg.Pools):
		return true
	}
	return filterRejects(p, x, config.Filter.Import)
}

// filterRejects is the peer's filters, written out plainly: the first rule
// of the peer's family matching x decides; none matching passes x. Rules
// with an IPv4-mapped CIDR are left out (see prefixSet).
func filterRejects(p config.Peer, x netip.Prefix, rules func(config.Filter, bool) []config.FilterRule) bool {
	for _, f := range p.Filters {
		for _, r := range rules(f, p.Address.Is6()) {
			if r.CIDR.Addr().Is4In6() {
				continue
			}
			if r.Matches(x) {
				return r.Action == config.FilterReject
			}
		}
	}
	return false
}

// evalPolicy decides a route as GoBGP evaluates a policy: statements in
// order, all conditions of one must match, the first with a route action
// decides; no match means the assignment's default, accept. neighbor is
// the peer the route came from (import) or goes to (export).
func evalPolicy(sets map[string]*api.DefinedSet, pol *api.Policy, neighbor netip.Addr, rt api.Conditions_RouteType, x netip.Prefix) (reject bool) {
	for _, st := range pol.Statements {
		c := st.GetConditions()
		// GoBGP's prefix condition matches no path of another family
		// than its set's, not even under INVERT.
		if ps := c.GetPrefixSet(); ps != nil && setIs6(sets[ps.Name]) != x.Addr().Is6() {
			continue
		}
		if !matchSet(c.GetPrefixSet(), func() bool { return inPrefixSet(sets[c.PrefixSet.Name], x) }) ||
			!matchSet(c.GetNeighborSet(), func() bool { return neighbor.IsValid() && inNeighborSet(sets[c.NeighborSet.Name], neighbor) }) {
			continue
		}
		if c.GetRouteType() != api.Conditions_ROUTE_TYPE_NONE && c.GetRouteType() != rt {
			continue
		}
		switch st.GetActions().GetRouteAction() {
		case api.RouteAction_REJECT:
			return true
		case api.RouteAction_ACCEPT:
			return false
		}
	}
	return false
}

func matchSet(m *api.MatchSet, in func() bool) bool {
	switch {
	case m == nil:
		return true
	case m.Type == api.MatchSet_INVERT:
		return !in()
	default: // ANY; ALL is the same for a single prefix or neighbour
		return in()
	}
}

// setIs6 is a prefix set's family as GoBGP takes it (table.NewPrefix):
// IPv6 when its first prefix is written with a colon.
func setIs6(ds *api.DefinedSet) bool {
	return len(ds.GetPrefixes()) > 0 && strings.Contains(ds.GetPrefixes()[0].IpPrefix, ":")
}

func inPrefixSet(ds *api.DefinedSet, x netip.Prefix) bool {
	for _, e := range ds.GetPrefixes() {
		p, err := netip.ParsePrefix(e.IpPrefix)
		if err == nil && p.Contains(x.Addr()) && p.Bits() <= x.Bits() &&
			uint32(x.Bits()) >= e.MaskLengthMin && uint32(x.Bits()) <= e.MaskLengthMax {
			return true
		}
	}
	return false
}

func inNeighborSet(ds *api.DefinedSet, a netip.Addr) bool {
	for _, e := range ds.GetList() {
		if p, err := netip.ParsePrefix(e); err == nil && p.Contains(a) {
			return true
		}
	}
	return false
}

// captureHandler is a slog handler writing every record, at every level,
// with attribute values as fmt's %+v gives them (no quoting or escaping,
// so a secret shows as itself), into one buffer.
type captureHandler struct {
	mu    *sync.Mutex
	buf   *bytes.Buffer
	attrs []slog.Attr
}

func (h *captureHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	for _, a := range h.attrs {
		writeAttr(&b, a)
	}
	r.Attrs(func(a slog.Attr) bool { writeAttr(&b, a); return true })
	b.WriteByte('\n')
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf.WriteString(b.String())
	return nil
}

func writeAttr(b *strings.Builder, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		for _, g := range v.Group() {
			writeAttr(b, g)
		}
		return
	}
	fmt.Fprintf(b, " %s=%+v", a.Key, v.Any())
}

func (h *captureHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &captureHandler{mu: h.mu, buf: h.buf, attrs: append(slices.Clip(h.attrs), as...)}
}

func (h *captureHandler) WithGroup(string) slog.Handler { return h }

func (h *captureHandler) reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf.Reset()
}

func (h *captureHandler) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.buf.String()
}
