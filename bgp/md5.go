package bgp

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// md5Counters reads the kernel's TCP MD5 counters for this network
// namespace. A wrong password shows nowhere else: the kernel drops the
// segments silently (recent kernels no longer print "MD5 Hash mismatch").
func md5Counters() (map[string]uint64, error) {
	f, err := os.Open("/proc/net/netstat")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		names := strings.Fields(sc.Text())
		if !sc.Scan() {
			break
		}
		values := strings.Fields(sc.Text())
		if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) {
			continue
		}
		out := map[string]uint64{}
		for i, n := range names[1:] {
			if strings.HasPrefix(n, "TCPMD5") {
				v, _ := strconv.ParseUint(values[i+1], 10, 64)
				out[n] = v
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("no TcpExt line in /proc/net/netstat")
}

// watchMD5 says, once per outage, why a peer with a password stays down:
// MD5 failures counted by the kernel point at a password mismatch; none
// point at the peer being away.
func (s *Speaker) watchMD5(ctx context.Context, every time.Duration) {
	downSince := map[netip.Addr]time.Time{}
	told := map[netip.Addr]bool{}
	last, _ := md5Counters()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		keyed := len(md5Keys(s.peers)) > 0
		s.mu.Unlock()
		if !keyed && len(downSince) == 0 {
			last = nil // no peer with a password: nothing to explain
			continue
		}
		now, err := md5Counters()
		if err != nil {
			continue
		}
		if last == nil {
			last = now // counts from before a password peer existed say nothing
		}
		var grew []string
		for k, v := range now {
			if v > last[k] {
				grew = append(grew, fmt.Sprintf("%s +%d", k, v-last[k]))
			}
		}
		last = now
		for _, p := range s.Peers() {
			s.mu.Lock()
			cfg, ok := s.peers[p.Address]
			s.mu.Unlock()
			if !ok || cfg.Password == "" || p.Established {
				delete(downSince, p.Address)
				delete(told, p.Address)
				continue
			}
			if _, ok := downSince[p.Address]; !ok {
				downSince[p.Address] = time.Now()
			}
			if told[p.Address] {
				continue
			}
			switch {
			case len(grew) > 0:
				s.log.Warn("peer with a TCP MD5 password stays down and the kernel counts MD5 failures: check that both ends use the same password",
					"peer", p.Address, "kernel", strings.Join(grew, ", "))
				told[p.Address] = true
			case time.Since(downSince[p.Address]) > 3*every:
				s.log.Warn("peer with a TCP MD5 password stays down; the kernel counts no MD5 failures, so the peer is likely unreachable or not configured for this node",
					"peer", p.Address)
				told[p.Address] = true
			}
		}
	}
}
