package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// AnnounceBulk is Announce for many prefixes (thousands): the commands go
// into one file that vtysh applies in a single session (`vtysh -f`),
// instead of one -c argument per prefix on the command line.
func (t *ToR) AnnounceBulk(prefixes ...netip.Prefix) error {
	var b strings.Builder
	for _, l := range networkLines(true, prefixes) {
		b.WriteString(l + "\n")
	}
	b.WriteString("exit\n")
	f, err := os.CreateTemp(t.Dir, "announce-*.conf")
	if err != nil {
		return fmt.Errorf("announce: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return fmt.Errorf("announce: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("announce: %w", err)
	}
	out, err := run("vtysh", "--vty_socket", filepath.Join(t.Dir, "vty"), "-f", f.Name())
	if err != nil {
		return fmt.Errorf("announce %d prefixes: %w", len(prefixes), err)
	}
	if strings.Contains(out, "% ") {
		return fmt.Errorf("announce %d prefixes: %s", len(prefixes), strings.TrimSpace(out))
	}
	return nil
}
