package poll

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	n := 0
	if err := Until(time.Second, time.Millisecond, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || n != 3 {
		t.Errorf("succeeded after %d calls with %v, want 3 and nil", n, err)
	}
	err := Until(20*time.Millisecond, time.Millisecond, func() error { return errors.New("never") })
	if err == nil || !strings.Contains(err.Error(), "still failing after 20ms: never") {
		t.Errorf("timeout error: %v", err)
	}
	calls := 0
	stop := errors.New("exited")
	err = Until(time.Second, time.Millisecond, func() error { calls++; return Permanent(stop) })
	if calls != 1 || !errors.Is(err, stop) {
		t.Errorf("permanent error: %d calls, %v", calls, err)
	}
}
