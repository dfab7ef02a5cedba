package ipam

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// socketDir makes sure the socket's directory exists without loosening or
// tightening anyone else's. A directory the daemon creates is its own and
// made 0700. An existing one may be shared (/run, /var/run, a hostPath
// mount): its mode is left alone, since connecting needs write permission
// on the socket file itself, which is 0600. It is refused only when others
// could replace the socket: writable by group or others without the sticky
// bit.
func socketDir(socketPath string) error {
	if !filepath.IsAbs(socketPath) {
		return fmt.Errorf("ipam: socket path %q is not absolute", socketPath)
	}
	dir := filepath.Dir(socketPath)
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		// Parents the daemon creates are traversable (0755): they may
		// come to hold other things. The last one is the socket's own.
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return fmt.Errorf("ipam: create socket dir: %w", err)
		}
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("ipam: create socket dir: %w", err)
		}
		if fi, err = os.Stat(dir); err != nil {
			return fmt.Errorf("ipam: socket dir: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("ipam: socket dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("ipam: socket dir %s is not a directory", dir)
	}
	if m := fi.Mode(); m.Perm()&0o022 != 0 && m&fs.ModeSticky == 0 {
		return fmt.Errorf("ipam: socket dir %s is writable by other users (mode %v) without the sticky bit: "+
			"anyone could replace the socket; use a directory of root's own, e.g. /run/nexthop/nexthop.sock", dir, m.Perm())
	}
	return nil
}
