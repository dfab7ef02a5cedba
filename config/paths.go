package config

import "path/filepath"

// maxSocketPath is the longest unix socket path the kernel takes
// (sun_path is 108 bytes with its terminating NUL).
const maxSocketPath = 107

// validatePaths refuses relative paths: they would resolve against the
// daemon's working directory, whatever that is at start.
func (c *Config) validatePaths(bad func(field, format string, a ...any)) {
	switch s := c.IPAMSocket; {
	case !filepath.IsAbs(s):
		bad("ipamSocket", "%q is not an absolute path", s)
	case len(s) > maxSocketPath:
		bad("ipamSocket", "%q is %d bytes, longer than a unix socket path may be (%d)", s, len(s), maxSocketPath)
	case filepath.Base(s) == "/" || s[len(s)-1] == '/':
		bad("ipamSocket", "%q names a directory, not a socket file", s)
	}
	switch d := c.StateDir; {
	case !filepath.IsAbs(d):
		bad("stateDir", "%q is not an absolute path", d)
	case filepath.Clean(d) == "/":
		bad("stateDir", "%q: the IPAM store needs a directory of its own", d)
	}
}
