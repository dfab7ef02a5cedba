package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/status"
)

// runStatus is `nexthopd status`: what the running daemon reports, like
// `calicoctl node status`. It exits 1 when no daemon answers.
func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", config.DefaultMetricsListen, "the daemon's metricsListen address")
	output := fs.String("o", "table", "output format: table or json")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *output != "table" && *output != "json" {
		fmt.Fprintf(stderr, "nexthopd status: -o %q: want table or json\n", *output)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := status.Fetch(ctx, *addr)
	if err != nil {
		fmt.Fprintf(stderr, "nexthopd status: %v\n", err)
		return 1
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return 1
		}
		return 0
	}
	if err := status.Render(stdout, r); err != nil {
		return 1
	}
	return 0
}
