package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// DefaultStallAfter is how long the node loop may go without a turn before
// /healthz fails. The loop turns every 250 ms; a kernel or GoBGP call stuck
// this long means it is wedged, and a restart is the cure.
const DefaultStallAfter = 30 * time.Second

// Health follows a run for the kubelet's probes:
//
//   - /healthz: the process is alive and its main loop (the node loop, or
//     the wait for the first config before it) keeps turning;
//   - /readyz: the BGP speaker has started, kernel routes have been
//     reconciled once (the initial sync), and the IPAM socket serves.
//
// A nil *Health ignores every call, so the daemon needs no checks.
type Health struct {
	StallAfter time.Duration

	mu      sync.Mutex
	beat    time.Time
	waiting string
	speaker bool
	routes  bool
	ipam    bool
}

// NewHealth returns a Health whose loop counts as turning from now.
func NewHealth() *Health {
	return &Health{StallAfter: DefaultStallAfter, beat: time.Now()}
}

// Beat records a turn of the main loop.
func (h *Health) Beat() {
	if h == nil {
		return
	}
	h.mu.Lock()
	h.beat = time.Now()
	h.mu.Unlock()
}

// Waiting records what the daemon is waiting for before the node starts
// ("" once it has started), for /readyz to say.
func (h *Health) Waiting(what string) {
	if h == nil {
		return
	}
	h.mu.Lock()
	h.waiting = what
	h.mu.Unlock()
}

// mark sets one readiness condition.
func (h *Health) mark(flag func(*Health) *bool) {
	if h == nil {
		return
	}
	h.mu.Lock()
	*flag(h) = true
	h.mu.Unlock()
}

func (h *Health) speakerStarted() { h.mark(func(h *Health) *bool { return &h.speaker }) }
func (h *Health) routesSynced()   { h.mark(func(h *Health) *bool { return &h.routes }) }
func (h *Health) ipamServing()    { h.mark(func(h *Health) *bool { return &h.ipam }) }

func (h *Health) ipamReady() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ipam
}

// Live reports whether the main loop turned recently, and if not, why not.
func (h *Health) Live() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if since := time.Since(h.beat); since > h.StallAfter {
		return fmt.Errorf("main loop stalled: last turn %s ago", since.Round(time.Second))
	}
	return nil
}

// Ready reports whether the node serves, and if not, what is missing.
func (h *Health) Ready() error {
	if err := h.Live(); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var missing []string
	if h.waiting != "" {
		missing = append(missing, h.waiting)
	}
	if !h.speaker {
		missing = append(missing, "BGP speaker not started")
	}
	if !h.routes {
		missing = append(missing, "kernel routes not reconciled yet (initial sync: waiting for peers)")
	}
	if !h.ipam {
		missing = append(missing, "IPAM socket not serving yet")
	}
	if len(missing) > 0 {
		return errors.New(strings.Join(missing, "; "))
	}
	return nil
}

// ServeHTTP answers /healthz and /readyz: 200 "ok", or 503 with the reason.
func (h *Health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var err error
	switch r.URL.Path {
	case "/healthz", "/livez":
		err = h.Live()
	case "/readyz":
		err = h.Ready()
	default:
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, err)
		return
	}
	fmt.Fprintln(w, "ok")
}

// ServeHealth listens on addr now (so a taken port fails the start, with
// the address in the message) and serves h until ctx ends.
func ServeHealth(ctx context.Context, addr string, h *Health, log *slog.Logger) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("health endpoint on %s (--health-listen; \"none\" disables it): %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health endpoint stopped", "addr", addr, "err", err)
		}
	}()
	log.Info("health endpoint serving /healthz and /readyz", "addr", addr)
	return nil
}
