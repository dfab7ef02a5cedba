// Package nat owns the node's outgoing NAT (Calico's natOutgoing): traffic
// from the node's pods to destinations outside the cluster leaves with the
// node's address. It writes one nftables table of its own per family through
// netlink, for IPv4
//
//	table ip nexthop-nat {
//		set pods     { type ipv4_addr; flags interval; elements = { 10.244.1.0/24 } }
//		set excluded { type ipv4_addr; flags interval; elements = { 10.244.0.0/16, ... } }
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			ip saddr @pods ip daddr != @excluded counter masquerade
//		}
//	}
//
// and for IPv6 (NAT66, masquerade66) the same as table ip6 nexthop-nat with
// ipv6_addr sets and `ip6 saddr @pods ip6 daddr != @excluded counter
// masquerade`. A family's table exists only when Rules has sources of it.
//
// Sync compares the kernel's tables with the desired ones and repairs
// whatever differs, changing only set elements when only the addresses
// changed, and rebuilding a table in one atomic transaction when anything
// else was touched. No other table is ever read for changes or written;
// Remove deletes ours alone.
//
// Only the first packet of a connection goes through nat chains: replies
// to connections that nodes open to pods are never translated, whatever the
// rule says.
package nat

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Names of what we own. The table name is the ownership boundary: nothing
// outside tables ip and ip6 nexthop-nat is ever changed.
const (
	Table       = "nexthop-nat"
	Chain       = "postrouting"
	PodsSet     = "pods"
	ExcludedSet = "excluded"
	comment     = "nexthop natOutgoing: managed by nexthopd, changes are reverted"
)

// Rules is the desired outgoing NAT of one node, both families.
type Rules struct {
	// Enabled false means no table at all: Sync removes both.
	Enabled bool
	// Sources are the pod addresses whose outgoing traffic is masqueraded
	// (the node's pod blocks for which NAT is on). A family without
	// sources gets no table.
	Sources []netip.Prefix
	// Exclude are destinations that keep the pod's own address: the pod
	// pools and the other cluster ranges, each going to its family's table.
	Exclude []netip.Prefix
}

// Tables names the tables r keeps ("ip nexthop-nat", "ip6 nexthop-nat"),
// for logs: one per family r has sources of.
func (r Rules) Tables() []string {
	var out []string
	for _, f := range families {
		if r.Enabled && len(f.of(r.Sources)) > 0 {
			out = append(out, f.tableName())
		}
	}
	return out
}

// family is one nftables address family we keep a table in.
type family struct {
	nft  nftables.TableFamily
	name string // as nft spells it: "ip", "ip6"
	key  nftables.SetDatatype
	// saddr and daddr are the offsets of the addresses in the network
	// header, bytes long each.
	saddr, daddr, bytes uint32
	v6                  bool
}

var (
	ipv4 = family{nft: nftables.TableFamilyIPv4, name: "ip", key: nftables.TypeIPAddr, saddr: 12, daddr: 16, bytes: 4}
	ipv6 = family{nft: nftables.TableFamilyIPv6, name: "ip6", key: nftables.TypeIP6Addr, saddr: 8, daddr: 24, bytes: 16, v6: true}
	// families are in the order Sync and Check handle them.
	families = []family{ipv4, ipv6}
)

// tableName is "ip nexthop-nat" or "ip6 nexthop-nat", for logs and errors.
func (f family) tableName() string { return f.name + " " + Table }

func (f family) table() *nftables.Table {
	return &nftables.Table{Name: Table, Family: f.nft}
}

// of returns the prefixes of ps in family f.
func (f family) of(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is6() == f.v6 {
			out = append(out, p)
		}
	}
	return out
}

// Manager makes the nftables changes for outgoing NAT in one network
// namespace. Its methods are safe for concurrent use.
type Manager struct {
	mu sync.Mutex
	// conn reads; every write batch gets a Conn of its own, so a batch
	// abandoned on an error is never sent with the next one.
	conn *nftables.Conn
	opts []nftables.ConnOption
	ns   netns.NsHandle // ours to close; -1 for the caller's namespace
	log  *slog.Logger
	// writes counts the batches sent to the kernel and last names what
	// the last Sync did ("create", "rebuild", "refill" or "", per family
	// that changed, joined by commas): tests check that a Sync with
	// nothing to do writes nothing.
	writes int
	last   string
}

// New returns a Manager for namespace ns (the caller's when ns <= 0). It
// keeps its own copy of the handle; the caller may close ns.
func New(ns netns.NsHandle, log *slog.Logger) (*Manager, error) {
	if log == nil {
		log = slog.Default()
	}
	m := &Manager{ns: -1, log: log.With("component", "nat")}
	var opts []nftables.ConnOption
	if ns > 0 {
		fd, err := unix.Dup(int(ns))
		if err != nil {
			return nil, fmt.Errorf("duplicate the netns handle: %w", err)
		}
		m.ns = netns.NsHandle(fd)
		opts = append(opts, nftables.WithNetNSFd(fd))
	}
	// A fresh netlink socket per operation: no state of a failed call can
	// leak into the next one in a long-running daemon.
	c, err := nftables.New(opts...)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("open nftables netlink: %w", err)
	}
	m.conn, m.opts = c, opts
	return m, nil
}

// Close releases the namespace handle; the table stays in the kernel.
func (m *Manager) Close() {
	if m.ns > 0 {
		m.ns.Close()
		m.ns = -1
	}
}

// table is the IPv4 table, which tests tamper with.
func table() *nftables.Table { return ipv4.table() }

// Sync brings the kernel in line with r: with r.Enabled off it removes our
// tables, otherwise it creates each family's table that r has sources of
// (removing the other's) or repairs every difference. Calling it again with
// the same r changes nothing.
func (m *Manager) Sync(ctx context.Context, r Rules) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !r.Enabled {
		return m.Remove(ctx)
	}
	wants := map[bool]want{}
	for _, f := range families {
		w, err := desired(f, r)
		if err != nil {
			return err
		}
		wants[f.v6] = w
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var did []string
	var errs []error
	for _, f := range families {
		w := wants[f.v6]
		var what string
		var err error
		if len(w.pods) == 0 {
			what, err = m.removeLocked(f)
		} else {
			what, err = m.syncLocked(f, w)
		}
		if what != "" {
			did = append(did, what)
		}
		errs = append(errs, err)
	}
	m.last = strings.Join(did, ",")
	return errors.Join(errs...)
}

// syncLocked brings f's table in line with w and says what it did.
func (m *Manager) syncLocked(f family, w want) (string, error) {
	st, err := m.read(f)
	if err != nil {
		return "", err
	}
	structural, elems := st.diff(f, w)
	switch {
	case !st.exists:
		m.log.Info("creating the natOutgoing table", "table", f.tableName(), "sources", spanStrings(w.pods), "exclude", spanStrings(w.excluded))
		return "create", m.rebuild(f, false, w)
	case len(structural) > 0:
		m.log.Warn("natOutgoing table changed behind our back; rebuilding it", "table", f.tableName(), "drift", structural)
		return "rebuild", m.rebuild(f, true, w)
	case len(elems) > 0:
		m.log.Info("updating natOutgoing address sets", "table", f.tableName(), "changes", elems)
		return "refill", m.refill(f, w, st)
	}
	return "", nil
}

// Check lists how the kernel differs from r, empty when it matches: what
// Sync would repair.
func (m *Manager) Check(r Rules) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, f := range families {
		st, err := m.read(f)
		if err != nil {
			return nil, err
		}
		w, err := desired(f, r)
		if err != nil {
			return nil, err
		}
		switch {
		case !r.Enabled || len(w.pods) == 0:
			if st.exists {
				out = append(out, "table "+f.tableName()+" present")
			}
		case !st.exists:
			out = append(out, "table "+f.tableName()+" missing")
		default:
			s, e := st.diff(f, w)
			for _, d := range append(s, e...) {
				if f.v6 {
					d = f.tableName() + ": " + d
				}
				out = append(out, d)
			}
		}
	}
	return out, nil
}

// Remove deletes our tables, if present. Other tables are not touched.
func (m *Manager) Remove(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, f := range families {
		_, err := m.removeLocked(f)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeLocked deletes f's table if present, and says so ("remove").
func (m *Manager) removeLocked(f family) (string, error) {
	exists, _, err := m.tableExists(f)
	if err != nil || !exists {
		return "", err
	}
	b, err := m.batch()
	if err != nil {
		return "", err
	}
	b.DelTable(f.table())
	if err := m.flush(b); err != nil {
		return "", fmt.Errorf("delete table %s: %w", f.tableName(), err)
	}
	m.log.Info("natOutgoing table removed", "table", f.tableName())
	return "remove", nil
}

// want is the desired content of one family's table.
type want struct {
	pods, excluded []span
}

func desired(f family, r Rules) (want, error) {
	var w want
	var err error
	if w.pods, err = spans(f, f.of(r.Sources)); err != nil {
		return w, fmt.Errorf("sources: %w", err)
	}
	if w.excluded, err = spans(f, f.of(r.Exclude)); err != nil {
		return w, fmt.Errorf("exclude: %w", err)
	}
	return w, nil
}

// state is what the kernel holds of our table.
type state struct {
	exists     bool
	tableFlags uint32
	chains     []*nftables.Chain
	sets       []*nftables.Set
	rules      []*nftables.Rule
	elems      map[string][]span // by set name
	// elemErr is why a set's elements could not be read back as intervals.
	elemErr map[string]error
}

func (m *Manager) tableExists(f family) (bool, uint32, error) {
	ts, err := m.conn.ListTablesOfFamily(f.nft)
	if err != nil {
		return false, 0, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range ts {
		if t.Name == Table {
			return true, t.Flags, nil
		}
	}
	return false, 0, nil
}

// read dumps f's table: chains, sets, elements and rules.
func (m *Manager) read(f family) (*state, error) {
	st := &state{elems: map[string][]span{}, elemErr: map[string]error{}}
	var err error
	if st.exists, st.tableFlags, err = m.tableExists(f); err != nil || !st.exists {
		return st, err
	}
	chains, err := m.conn.ListChainsOfTableFamily(f.nft)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	t := f.table()
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == Table {
			st.chains = append(st.chains, c)
		}
	}
	if st.sets, err = m.conn.GetSets(t); err != nil {
		return nil, fmt.Errorf("list sets of table %s: %w", f.tableName(), err)
	}
	for _, s := range st.sets {
		if s.Name != PodsSet && s.Name != ExcludedSet {
			continue
		}
		s.Table = t
		es, err := m.conn.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("list elements of set %s: %w", s.Name, err)
		}
		st.elems[s.Name], st.elemErr[s.Name] = fromElements(f, es)
	}
	for _, c := range st.chains {
		if c.Name != Chain {
			continue
		}
		if st.rules, err = m.conn.GetRules(t, c); err != nil {
			return nil, fmt.Errorf("list rules of chain %s: %w", Chain, err)
		}
	}
	return st, nil
}

// diff returns structural differences (anything but set elements: they
// need a rebuild) and element differences (a refill of the sets).
func (st *state) diff(f family, w want) (structural, elems []string) {
	if !st.exists {
		return []string{"table missing"}, nil
	}
	if st.tableFlags != 0 {
		structural = append(structural, fmt.Sprintf("table flags %#x (dormant?), want none", st.tableFlags))
	}
	var chain *nftables.Chain
	for _, c := range st.chains {
		if c.Name == Chain {
			chain = c
		} else {
			structural = append(structural, "extra chain "+c.Name)
		}
	}
	switch {
	case chain == nil:
		structural = append(structural, "chain "+Chain+" missing")
	default:
		if d := chainDiff(chain); d != "" {
			structural = append(structural, "chain "+Chain+": "+d)
		}
	}
	found := map[string]bool{}
	for _, s := range st.sets {
		switch s.Name {
		case PodsSet, ExcludedSet:
			found[s.Name] = true
			if d := setDiff(f, s); d != "" {
				structural = append(structural, "set "+s.Name+": "+d)
			}
		default:
			structural = append(structural, "extra set "+s.Name)
		}
	}
	for _, name := range []string{PodsSet, ExcludedSet} {
		if !found[name] {
			structural = append(structural, "set "+name+" missing")
		}
	}
	if chain != nil {
		wantRule := canonical(ruleExprs(f, 0, 0))
		switch {
		case len(st.rules) == 0:
			structural = append(structural, "rule missing")
		case len(st.rules) > 1:
			structural = append(structural, fmt.Sprintf("%d rules in chain %s, want 1", len(st.rules), Chain))
		default:
			if got := canonical(st.rules[0].Exprs); got != wantRule {
				structural = append(structural, fmt.Sprintf("rule is %q, want %q", got, wantRule))
			}
			if !bytes.Equal(st.rules[0].UserData, ruleComment()) {
				structural = append(structural, "rule comment changed")
			}
		}
	}
	for _, s := range []struct {
		name string
		want []span
	}{{PodsSet, w.pods}, {ExcludedSet, w.excluded}} {
		if !found[s.name] {
			continue
		}
		if err := st.elemErr[s.name]; err != nil {
			structural = append(structural, "set "+s.name+": "+err.Error())
			continue
		}
		if got := st.elems[s.name]; !slices.Equal(got, s.want) {
			elems = append(elems, fmt.Sprintf("set %s holds %v, want %v", s.name, spanStrings(got), spanStrings(s.want)))
		}
	}
	return structural, elems
}

func chainDiff(c *nftables.Chain) string {
	var d []string
	if c.Type != nftables.ChainTypeNAT {
		d = append(d, fmt.Sprintf("type %q, want nat", c.Type))
	}
	if c.Hooknum == nil || *c.Hooknum != *nftables.ChainHookPostrouting {
		d = append(d, "not hooked at postrouting")
	}
	if c.Priority == nil || *c.Priority != *nftables.ChainPriorityNATSource {
		d = append(d, "priority is not srcnat (100)")
	}
	if c.Policy != nil && *c.Policy != nftables.ChainPolicyAccept {
		d = append(d, "policy is not accept")
	}
	return strings.Join(d, ", ")
}

func setDiff(f family, s *nftables.Set) string {
	var d []string
	if s.KeyType.Name != f.key.Name || s.KeyType.Bytes != f.key.Bytes {
		d = append(d, fmt.Sprintf("key type %s, want %s", s.KeyType.Name, f.key.Name))
	}
	if !s.Interval {
		d = append(d, "not an interval set")
	}
	if s.IsMap || s.Constant || s.Anonymous || s.HasTimeout || s.Concatenation {
		d = append(d, "unexpected flags")
	}
	return strings.Join(d, ", ")
}

// rebuild replaces f's whole table in one transaction: there is no moment
// without NAT, and no moment with a half-built table.
func (m *Manager) rebuild(f family, exists bool, w want) error {
	b, err := m.batch()
	if err != nil {
		return err
	}
	t := f.table()
	if exists {
		b.DelTable(t)
	}
	b.AddTable(t)
	c := b.AddChain(&nftables.Chain{
		Name:     Chain,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
		Policy:   ptr(nftables.ChainPolicyAccept),
	})
	pods := &nftables.Set{Table: t, Name: PodsSet, KeyType: f.key, Interval: true}
	excl := &nftables.Set{Table: t, Name: ExcludedSet, KeyType: f.key, Interval: true}
	if err := b.AddSet(pods, toElements(f, w.pods)); err != nil {
		return fmt.Errorf("set %s: %w", PodsSet, err)
	}
	if err := b.AddSet(excl, toElements(f, w.excluded)); err != nil {
		return fmt.Errorf("set %s: %w", ExcludedSet, err)
	}
	b.AddRule(&nftables.Rule{Table: t, Chain: c, Exprs: ruleExprs(f, pods.ID, excl.ID), UserData: ruleComment()})
	if err := m.flush(b); err != nil {
		return fmt.Errorf("write table %s: %w", f.tableName(), err)
	}
	return nil
}

// refill replaces the elements of f's sets that differ, in one
// transaction, leaving chain and rule alone.
func (m *Manager) refill(f family, w want, st *state) error {
	b, err := m.batch()
	if err != nil {
		return err
	}
	t := f.table()
	for _, s := range []struct {
		name string
		want []span
	}{{PodsSet, w.pods}, {ExcludedSet, w.excluded}} {
		if slices.Equal(st.elems[s.name], s.want) {
			continue
		}
		set := &nftables.Set{Table: t, Name: s.name, KeyType: f.key, Interval: true}
		b.FlushSet(set)
		if len(s.want) == 0 {
			continue
		}
		if err := b.SetAddElements(set, toElements(f, s.want)); err != nil {
			return fmt.Errorf("set %s: %w", s.name, err)
		}
	}
	if err := m.flush(b); err != nil {
		return fmt.Errorf("update sets of table %s: %w", f.tableName(), err)
	}
	return nil
}

// batch returns a Conn to queue one transaction on.
func (m *Manager) batch() (*nftables.Conn, error) {
	b, err := nftables.New(m.opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink: %w", err)
	}
	return b, nil
}

// flush sends b's queue as one transaction: all of it applies, or none.
func (m *Manager) flush(b *nftables.Conn) error {
	m.writes++
	return b.Flush()
}

// ruleExprs is `ip saddr @pods ip daddr != @excluded counter masquerade`,
// or the same with ip6.
func ruleExprs(f family, podsID, exclID uint32) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddr, Len: f.bytes},
		&expr.Lookup{SourceRegister: 1, SetName: PodsSet, SetID: podsID},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: f.bytes},
		&expr.Lookup{SourceRegister: 1, SetName: ExcludedSet, SetID: exclID, Invert: true},
		&expr.Counter{},
		&expr.Masq{},
	}
}

func ruleComment() []byte { return userdata.AppendString(nil, userdata.TypeComment, comment) }

// canonical describes expressions by what they do, leaving out what the
// kernel fills in (set IDs, counter values), so a dumped rule compares
// equal to the one we wrote.
func canonical(es []expr.Any) string {
	var parts []string
	for _, e := range es {
		switch e := e.(type) {
		case *expr.Payload:
			parts = append(parts, fmt.Sprintf("payload(op=%d base=%d off=%d len=%d dreg=%d sreg=%d)",
				e.OperationType, e.Base, e.Offset, e.Len, e.DestRegister, e.SourceRegister))
		case *expr.Lookup:
			parts = append(parts, fmt.Sprintf("lookup(set=%s sreg=%d inv=%t dreg=%t)", e.SetName, e.SourceRegister, e.Invert, e.IsDestRegSet))
		case *expr.Counter:
			parts = append(parts, "counter")
		case *expr.Masq:
			parts = append(parts, fmt.Sprintf("masq(%+v)", *e))
		default:
			parts = append(parts, fmt.Sprintf("%T%+v", e, e))
		}
	}
	return strings.Join(parts, " ")
}

func ptr[T any](v T) *T { return &v }

// span is an inclusive address range of one family.
type span struct{ lo, hi netip.Addr }

func (s span) String() string {
	if p, ok := s.prefix(); ok {
		return p.String()
	}
	return s.lo.String() + "-" + s.hi.String()
}

// prefix returns s as a prefix when it is exactly one.
func (s span) prefix() (netip.Prefix, bool) {
	for bits := 0; bits <= s.lo.BitLen(); bits++ {
		p := netip.PrefixFrom(s.lo, bits)
		if p.Masked().Addr() == s.lo && last(p) == s.hi {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

func spanStrings(ss []span) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.String()
	}
	return out
}

// maxAddr is the family's highest address, 255.255.255.255 or ffff:...:ffff.
func (f family) maxAddr() netip.Addr {
	if f.v6 {
		return netip.AddrFrom16([16]byte{0: 0xff, 1: 0xff, 2: 0xff, 3: 0xff, 4: 0xff, 5: 0xff, 6: 0xff, 7: 0xff,
			8: 0xff, 9: 0xff, 10: 0xff, 11: 0xff, 12: 0xff, 13: 0xff, 14: 0xff, 15: 0xff})
	}
	return netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// zero is the family's lowest address, 0.0.0.0 or ::.
func (f family) zero() netip.Addr {
	if f.v6 {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// last is the highest address of p: its host bits all set.
func last(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// spans turns prefixes of family f into sorted, merged ranges: an interval
// set refuses overlapping elements, and touching ones would share a
// boundary key.
func spans(f family, ps []netip.Prefix) ([]span, error) {
	var in []span
	for _, p := range ps {
		if !p.IsValid() || p.Addr().Is6() != f.v6 || p.Addr().Is4In6() {
			return nil, fmt.Errorf("%s is not an %s prefix", p, map[bool]string{false: "IPv4", true: "IPv6"}[f.v6])
		}
		p = p.Masked()
		in = append(in, span{p.Addr(), last(p)})
	}
	slices.SortFunc(in, func(a, b span) int { return a.lo.Compare(b.lo) })
	maxA := f.maxAddr()
	var out []span
	for _, s := range in {
		if n := len(out); n > 0 {
			prev := &out[n-1]
			if prev.hi == maxA || s.lo.Compare(prev.hi.Next()) <= 0 {
				if s.hi.Compare(prev.hi) > 0 {
					prev.hi = s.hi
				}
				continue
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// toElements encodes ranges the way nft does: a start key, and an
// interval-end key one past the range (left out when the range runs to
// the family's highest address).
func toElements(f family, ss []span) []nftables.SetElement {
	var out []nftables.SetElement
	maxA := f.maxAddr()
	for _, s := range ss {
		out = append(out, nftables.SetElement{Key: s.lo.AsSlice()})
		if s.hi != maxA {
			out = append(out, nftables.SetElement{Key: s.hi.Next().AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

// fromElements decodes what the kernel dumps (in any order) back into
// ranges of family f. Elements that do not pair up are an error: someone
// wrote the set by other means, and a rebuild is the way out.
func fromElements(f family, es []nftables.SetElement) ([]span, error) {
	type point struct {
		a   netip.Addr
		end bool
	}
	pts := make([]point, 0, len(es))
	for _, e := range es {
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok || len(e.Key) != int(f.bytes) {
			return nil, fmt.Errorf("element key %x is not an %s address", e.Key, map[bool]string{false: "IPv4", true: "IPv6"}[f.v6])
		}
		pts = append(pts, point{a, e.IntervalEnd})
	}
	slices.SortFunc(pts, func(x, y point) int { return x.a.Compare(y.a) })
	var out []span
	var open *netip.Addr
	for _, p := range pts {
		switch {
		case p.end && open == nil:
			// nft writes a leading 0.0.0.0 (::) end marker on old
			// kernels; anything else is not ours.
			if p.a != f.zero() || len(out) > 0 {
				return nil, errors.New("interval end without a start")
			}
		case p.end:
			out = append(out, span{*open, p.a.Prev()})
			open = nil
		case open != nil:
			return nil, fmt.Errorf("interval starting at %s has no end", *open)
		default:
			a := p.a
			open = &a
		}
	}
	if open != nil {
		out = append(out, span{*open, f.maxAddr()})
	}
	return out, nil
}
