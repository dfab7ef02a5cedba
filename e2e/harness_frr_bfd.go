package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"text/template"
	"time"
)

const (
	zebraPath = "/usr/lib/frr/zebra"
	bfddPath  = "/usr/lib/frr/bfdd"
)

// AddBFDToR starts an FRR ToR that runs BFD with every node, named name,
// at addr on the underlay. bgpd acts on BFD only through zebra, so unlike
// the plain ToR this one runs zebra, bfdd and bgpd (-n: nothing goes into
// the ToR's kernel), all on one zserv socket, each with its own config
// file (bgpd refuses a bfd block), as user frr in a dir frr owns (bfdd
// insists). Nodes' peers are not touched: the test configures them.
func (c *Cluster) AddBFDToR(name string, addr netip.Addr) (*ToR, error) {
	// The cluster dir is root's alone: FRR's files live in a dir of
	// their own, the logs (written by the harness) in the cluster's.
	logDir := filepath.Join(c.Dir, name)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s dir: %w", name, err)
	}
	dir, err := os.MkdirTemp("", c.Prefix+name+"-frr-")
	if err != nil {
		return nil, fmt.Errorf("create %s FRR dir: %w", name, err)
	}
	c.closeLater(removeDir(dir))
	t := &ToR{NS: c.Prefix + name, Address: addr, Dir: dir, LogPath: filepath.Join(logDir, "bgpd.log")}
	if err := c.plugToR(t, name); err != nil {
		return nil, err
	}
	conf := func(daemon string) string { return filepath.Join(t.Dir, daemon+".conf") }
	if err := writeTemplate(conf("bgpd"), torConfig, c.torConfigData(t, name, true)); err != nil {
		return nil, err
	}
	for _, d := range []string{"zebra", "bfdd"} {
		if err := os.WriteFile(conf(d), []byte("log stdout informational\n"), 0o644); err != nil {
			return nil, fmt.Errorf("write %s.conf: %w", d, err)
		}
	}
	if err := chownFRR(t.Dir); err != nil {
		return nil, err
	}
	zserv := filepath.Join(t.Dir, "zserv.api")
	common := func(daemon string) []string {
		return []string{"-f", conf(daemon), "-i", filepath.Join(t.Dir, daemon+".pid"), "-z", zserv,
			"--vty_socket", filepath.Join(t.Dir, "vty"), "-A", "127.0.0.1", "-P", "0", "--log", "stdout"}
	}
	for _, d := range []struct {
		name, path string
		args       []string
		ready      func() error
	}{
		{"zebra", zebraPath, nil, func() error { _, err := os.Stat(zserv); return err }},
		{"bfdd", bfddPath, []string{"--bfdctl", filepath.Join(t.Dir, "bfdd.sock")}, func() error {
			_, err := t.Vtysh("show bfd peers json")
			return err
		}},
		{"bgpd", bgpdPath, []string{"-n"}, func() error {
			_, err := t.Vtysh("show bgp summary json")
			return err
		}},
	} {
		logPath := filepath.Join(logDir, d.name+".log")
		argv := append([]string{"ip", "netns", "exec", t.NS, d.path}, append(common(d.name), d.args...)...)
		p, err := startProc(d.name+" "+name, logPath, argv...)
		if err != nil {
			return nil, err
		}
		c.track(p)
		if d.name == "bgpd" {
			t.proc = p
		}
		err = WaitFor(15*time.Second, 100*time.Millisecond, func() error {
			if done, exitErr := p.exited(); done {
				return Permanent(fmt.Errorf("%s exited (%s); log:\n%s", d.name, exitString(exitErr), tail(logPath, 20)))
			}
			return d.ready()
		})
		if err != nil {
			return nil, fmt.Errorf("start %s in %s: %w", d.name, t.NS, err)
		}
	}
	c.log.Logf("cluster %s: FRR ToR %s with BFD at %s", c.Prefix, name, addr)
	return t, nil
}

// removeDir removes a directory tree when closed.
type removeDir string

func (d removeDir) Close() error { return os.RemoveAll(string(d)) }

func writeTemplate(path string, tmpl *template.Template, data any) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	err = tmpl.Execute(f, data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// chownFRR gives dir and everything in it to FRR's user.
func chownFRR(dir string) error {
	u, err := user.Lookup("frr")
	if err != nil {
		return fmt.Errorf("FRR's user (apt-get install frr): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, uid, gid)
	})
}

// BFDPeer is one session in FRR's `show bfd peers json`; intervals in ms.
type BFDPeer struct {
	Peer       string `json:"peer"`
	Status     string `json:"status"` // up, down, init, shutdown
	Diagnostic string `json:"diagnostic"`
	RemoteDiag string `json:"remote-diagnostic"`
	RemoteRx   int    `json:"remote-receive-interval"`
	RemoteTx   int    `json:"remote-transmit-interval"`
	RemoteMult int    `json:"remote-detect-multiplier"`
}

// BFDPeers is FRR's BFD sessions by peer address.
func (t *ToR) BFDPeers() (map[netip.Addr]BFDPeer, error) {
	out, err := t.Vtysh("show bfd peers json")
	if err != nil {
		return nil, err
	}
	var peers []BFDPeer
	if err := json.Unmarshal([]byte(out), &peers); err != nil {
		return nil, fmt.Errorf("parse FRR show bfd peers json: %w: %.300s", err, out)
	}
	m := map[netip.Addr]BFDPeer{}
	for _, p := range peers {
		if a, err := netip.ParseAddr(p.Peer); err == nil {
			m[a] = p
		}
	}
	return m, nil
}
