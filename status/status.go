// Package status is the node daemon's status report: what `nexthopd status`
// prints, like `calicoctl node status`, read from the running daemon.
package status

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// Report is the daemon's state at one moment. A dual-stack node has an
// address, a block and an IPAM range of each family, and a session per
// family with each neighbour.
type Report struct {
	Node string `json:"node"`
	// Address is the node's IPv4 address, or its IPv6 one on an
	// IPv6-only node; AddressV6 its IPv6 address (config's meaning).
	Address   string `json:"address"`
	AddressV6 string `json:"addressV6,omitempty"`
	AS        uint32 `json:"as"`
	// PodCIDRs are the node's blocks, one per family; PodCIDR is the
	// first, as before dual-stack.
	PodCIDR   string   `json:"podCIDR"`
	PodCIDRs  []string `json:"podCIDRs,omitempty"`
	IPIPMode  string   `json:"ipipMode"`
	VXLANMode string   `json:"vxlanMode"`
	PodMTU    int      `json:"podMTU"`
	// Synced is true once the start-up sync has run.
	Synced bool           `json:"synced"`
	Peers  []Peer         `json:"peers"`
	Routes map[string]int `json:"routes"` // by kind: native, ipip, vxlan, blackhole
	// IPAM is the use of the block of PodCIDR; IPAMV6 that of the IPv6
	// block of a dual-stack node.
	IPAM   IPAM  `json:"ipam"`
	IPAMV6 *IPAM `json:"ipamV6,omitempty"`
	// BFD lists the BFD sessions, by peer (none while no peer has BFD).
	BFD []BFDSession `json:"bfd,omitempty"`
}

// BFDSession is one BFD session. Intervals are in milliseconds.
type BFDSession struct {
	Peer        string `json:"peer"`
	State       string `json:"state"` // Up, Down, Init, AdminDown
	RemoteState string `json:"remoteState"`
	// Diag says why the session last left Up (ours, then the peer's).
	Diag       string `json:"diag"`
	RemoteDiag string `json:"remoteDiag"`
	// MinTx, MinRx and Multiplier are ours, the Remote ones the peer's.
	MinTxMillis       int64 `json:"minTxMillis"`
	MinRxMillis       int64 `json:"minRxMillis"`
	Multiplier        int   `json:"multiplier"`
	RemoteMinTxMillis int64 `json:"remoteMinTxMillis"`
	RemoteMinRxMillis int64 `json:"remoteMinRxMillis"`
	RemoteMultiplier  int   `json:"remoteMultiplier"`
	// DetectTimeMillis is how long the peer may be silent before Down.
	DetectTimeMillis int64 `json:"detectTimeMillis"`
}

// Peer is one BGP session. It carries the routes of its address's family.
type Peer struct {
	Address string `json:"address"`
	// Family is IPv4 or IPv6.
	Family        string  `json:"family"`
	AS            uint32  `json:"as"`
	State         string  `json:"state"`
	UptimeSeconds float64 `json:"uptimeSeconds"`
	Received      uint64  `json:"received"`
	Accepted      uint64  `json:"accepted"`
	Rejected      int     `json:"rejected"`
}

// FamilyOf names the family of addr for Peer.Family: IPv4 or IPv6.
func FamilyOf(addr netip.Addr) string {
	if addr.Is6() && !addr.Is4In6() {
		return "IPv6"
	}
	return "IPv4"
}

// IPAM is one node block's use.
type IPAM struct {
	Block     string `json:"block"`
	Size      int    `json:"size"`
	Allocated int    `json:"allocated"`
}

// Path is where the daemon serves the report.
const Path = "/status"

// ErrNotRunning says no daemon answered.
var ErrNotRunning = errors.New("nexthopd is not running")

// Fetch reads the report from the daemon listening on addr.
func Fetch(ctx context.Context, addr string) (Report, error) {
	var r Report
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+Path, nil)
	if err != nil {
		return r, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return r, fmt.Errorf("%w (nothing listens on %s)", ErrNotRunning, addr)
		}
		return r, fmt.Errorf("%w? no answer from %s: %v", ErrNotRunning, addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return r, fmt.Errorf("status from %s: %s: %s", addr, resp.Status, strings.TrimSpace(string(b)))
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return r, fmt.Errorf("decode status from %s: %w", addr, err)
	}
	return r, nil
}

// Render prints r for a person.
func Render(w io.Writer, r Report) error {
	addrs := r.Address
	if r.AddressV6 != "" && r.AddressV6 != r.Address {
		addrs += " and " + r.AddressV6
	}
	blocks := r.PodCIDRs
	if len(blocks) == 0 {
		blocks = []string{r.PodCIDR}
	}
	noun := "pod block"
	if len(blocks) > 1 {
		noun = "pod blocks"
	}
	fmt.Fprintf(w, "nexthop node %s: %s, AS %d, %s %s\n", r.Node, addrs, r.AS, noun, strings.Join(blocks, " and "))
	fmt.Fprintf(w, "encapsulation: ipipMode %s, vxlanMode %s; pod MTU %d\n", r.IPIPMode, r.VXLANMode, r.PodMTU)
	sync := "done"
	if !r.Synced {
		sync = "waiting for peers"
	}
	fmt.Fprintf(w, "start-up route sync: %s\n\n", sync)

	fmt.Fprintln(w, "BGP peers:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  PEER\tFAMILY\tAS\tSTATE\tUPTIME\tRECEIVED\tACCEPTED\tREJECTED")
	for _, p := range r.Peers {
		up := "-"
		if p.UptimeSeconds > 0 {
			up = (time.Duration(p.UptimeSeconds) * time.Second).String()
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\t%d\t%d\t%d\n", p.Address, cmp.Or(p.Family, "-"), p.AS, p.State, up, p.Received, p.Accepted, p.Rejected)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.BFD) > 0 {
		fmt.Fprintln(w, "\nBFD sessions:")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  PEER\tSTATE\tREMOTE\tTIMERS (TX/RX x MULT)\tREMOTE TIMERS\tDETECT\tDIAG")
		for _, b := range r.BFD {
			diag := b.Diag
			if b.RemoteDiag != "none" && b.RemoteDiag != "" {
				diag += "; peer: " + b.RemoteDiag
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%dms/%dms x%d\t%dms/%dms x%d\t%dms\t%s\n", b.Peer, b.State, b.RemoteState,
				b.MinTxMillis, b.MinRxMillis, b.Multiplier, b.RemoteMinTxMillis, b.RemoteMinRxMillis, b.RemoteMultiplier,
				b.DetectTimeMillis, diag)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	kinds := make([]string, 0, len(r.Routes))
	for k := range r.Routes {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var parts []string
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%d %s", r.Routes[k], k))
	}
	fmt.Fprintf(w, "\nroutes installed: %s\n", strings.Join(parts, ", "))
	ipam := []string{fmt.Sprintf("%s, %d of %d addresses allocated", r.IPAM.Block, r.IPAM.Allocated, r.IPAM.Size)}
	if v6 := r.IPAMV6; v6 != nil {
		ipam = append(ipam, fmt.Sprintf("%s, %d of %d addresses allocated", v6.Block, v6.Allocated, v6.Size))
	}
	_, err := fmt.Fprintf(w, "IPAM: %s\n", strings.Join(ipam, "; "))
	return err
}
