// Command nexthopd is the nexthop node daemon: an embedded BGP speaker that
// announces the node's pod block and programs learned routes into the kernel.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/daemon"
)

func main() {
	cfgPath := flag.String("config", "/etc/nexthop/node.yaml", "standalone config file (YAML)")
	flag.Parse()

	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nexthopd: %v\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level(cfg.LogLevel), ReplaceAttr: microseconds}))
	log = log.With("node", cfg.NodeName)
	log.Info("starting", "config", *cfgPath, "address", cfg.Address, "as", cfg.LocalAS, "podCIDR", cfg.PodCIDR, "peers", len(cfg.Peers))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := daemon.Run(ctx, cfg, log); err != nil {
		log.Error("nexthopd failed", "err", err)
		os.Exit(1)
	}
}

// microseconds stamps log lines to the µs: convergence is measured in
// milliseconds, and the default millisecond stamps hide it.
func microseconds(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey && len(groups) == 0 {
		a.Value = slog.StringValue(a.Value.Time().UTC().Format("2006-01-02T15:04:05.000000Z07:00"))
	}
	return a
}

func level(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return slog.LevelInfo
	}
	return l
}
