// Command xlbd is the xlb dataplane daemon: an eBPF L4 load balancer driven
// by a REST API. See docs/xlbd.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/xlb-dev/xlb/internal/config"
	"github.com/xlb-dev/xlb/internal/daemon"
	"github.com/xlb-dev/xlb/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg, err := config.Parse(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "xlbd:", err)
		return 2
	}
	log := cfg.NewLogger(os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	log.Info("xlbd starting", "version", version.Version, "interfaces", cfg.Interfaces, "hook", cfg.Hook, "stateDir", cfg.StateDir)
	d, err := daemon.New(ctx, daemon.Options{Config: cfg, Logger: log, Version: version.Version})
	if err != nil {
		log.Error("xlbd failed to start", "error", err)
		return 1
	}
	if err := d.Run(ctx); err != nil {
		log.Error("xlbd stopped with an error", "error", err)
		return 1
	}
	log.Info("xlbd stopped")
	return 0
}
