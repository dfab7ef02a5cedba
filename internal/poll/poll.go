// Package poll waits for a condition with a deadline, the way tests and
// harnesses here wait for the network to converge instead of sleeping.
package poll

import (
	"errors"
	"fmt"
	"time"
)

// Until calls fn every interval until it returns nil or timeout passes,
// and then returns fn's last error. An error wrapped with Permanent ends
// the wait at once: there is no point polling a process that has exited.
func Until(timeout, interval time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		var p permanent
		if errors.As(err, &p) {
			return p.error
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still failing after %s: %w", timeout, err)
		}
		time.Sleep(interval)
	}
}

type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// Permanent marks err as final for Until.
func Permanent(err error) error { return permanent{err} }
