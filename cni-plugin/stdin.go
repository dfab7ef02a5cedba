package cniplugin

import (
	"fmt"
	"io"
	"os"

	"github.com/containernetworking/cni/pkg/types"
)

// CapStdin bounds what skel reads: skel reads all of stdin into memory, so
// the plugin's main calls this first. For a command that reads stdin (all
// but VERSION, and none when CNI_COMMAND is unset: skel then prints its
// about text), it reads at most MaxStdin+1 bytes, refuses more with
// ErrInvalidNetworkConfig, and otherwise puts what it read back as
// os.Stdin for skel.
func CapStdin() *types.Error {
	if cmd := os.Getenv("CNI_COMMAND"); cmd == "" || cmd == "VERSION" {
		return nil
	}
	data, cerr := readCapped(os.Stdin, MaxStdin)
	if cerr != nil {
		return cerr
	}
	r, w, err := os.Pipe()
	if err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("read stdin: pipe: %v", err), "")
	}
	go func() {
		// skel reads to EOF; if it fails before reading (a missing
		// variable), the process exits with this write still blocked.
		_, _ = w.Write(data)
		_ = w.Close()
	}()
	os.Stdin = r
	return nil
}

// readCapped reads r to EOF, but no more than max+1 bytes: more than max is
// an error, reported before anything is parsed.
func readCapped(r io.Reader, max int) ([]byte, *types.Error) {
	data, err := io.ReadAll(io.LimitReader(r, int64(max)+1))
	if err != nil {
		return nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("read stdin: %v", err), "")
	}
	if len(data) > max {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("network config on stdin is larger than %d bytes (%d MiB): refused unparsed", max, max>>20), "")
	}
	return data, nil
}
