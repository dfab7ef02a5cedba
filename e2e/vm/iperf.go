package vm

// iperf3 in the guest: Debian's iperf3 is dynamically linked (libiperf,
// libcrypto, libsctp...), so the host's binary goes in with the libraries
// ldd resolves for it, as /sbin/ip does.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"time"
)

// iperfResult is the part of iperf3's JSON (-J) that Iperf reads.
type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// IperfPath is iperf3 in the guest (see IperfFiles).
const IperfPath = GuestBinDir + "/iperf3"

// IperfFiles finds the host's iperf3 and returns it and its shared
// libraries as initramfs files. Libraries ip already brings (libc) are
// shipped once.
func IperfFiles() ([]File, error) {
	bin, err := exec.LookPath("iperf3")
	if err != nil {
		return nil, errors.New("iperf3 not found on the host (apt-get install iperf3; make deps does)")
	}
	libs, err := sharedLibs(bin)
	if err != nil {
		return nil, err
	}
	files := []File{{Path: IperfPath, Source: bin, Mode: 0o755}}
	for _, l := range libs {
		files = append(files, File{Path: l, Source: l, Mode: 0o755})
	}
	return files, nil
}

// Iperf runs a one-shot iperf3 server in serverNS and a TCP client for
// seconds in clientNS, and returns the bits per second the server
// received. Guest side. The client retries until the server listens.
func Iperf(serverNS, clientNS string, server netip.Addr, seconds int) (float64, error) {
	var srvOut bytes.Buffer
	srv := exec.Command(IPPath, "netns", "exec", serverNS, IperfPath, "-s", "-1", "-p", "5201")
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		return 0, fmt.Errorf("start iperf3 server in %s: %w", serverNS, err)
	}
	// Kill is a no-op once the server has served its one test; after
	// Wait its output may be read.
	stop := func() { srv.Process.Kill(); srv.Wait() }
	var out []byte
	var res iperfResult
	err := Poll(30*time.Second, 300*time.Millisecond, func() error {
		var err error
		out, err = exec.Command(IPPath, "netns", "exec", clientNS, IperfPath, "-c", server.String(), "-p", "5201",
			"-t", strconv.Itoa(seconds), "--connect-timeout", "2000", "-J").Output()
		if err != nil {
			return err
		}
		res = iperfResult{}
		if err := json.Unmarshal(out, &res); err != nil {
			return Permanent(fmt.Errorf("parse iperf3 output: %w", err))
		}
		// With -J, iperf3 3.12 exits 0 even when it could not connect
		// (the server not listening yet): its JSON error says so.
		if res.Error != "" {
			return errors.New(res.Error)
		}
		return nil
	})
	stop()
	if err != nil {
		return 0, fmt.Errorf("iperf3 %s -> %s (%s): %w\n%s\nserver: %s", clientNS, serverNS, server, err, out, srvOut.String())
	}
	if res.End.SumReceived.BitsPerSecond == 0 {
		return 0, fmt.Errorf("iperf3 %s -> %s received nothing:\n%s\nserver: %s", clientNS, serverNS, out, srvOut.String())
	}
	return res.End.SumReceived.BitsPerSecond, nil
}
