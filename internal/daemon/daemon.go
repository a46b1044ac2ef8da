// Package daemon wires xlbd together: configuration → datapath → desired
// state (restored from disk) → REST API, and shuts it down cleanly.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/internal/apiserver"
	"github.com/xlb-dev/xlb/internal/config"
	"github.com/xlb-dev/xlb/internal/localports"
	"github.com/xlb-dev/xlb/internal/state"
)

// ManagedDataplane is a Dataplane with a lifecycle.
type ManagedDataplane interface {
	Dataplane
	// Close releases the process's handles and keeps pinned programs,
	// maps and links: traffic keeps flowing while xlbd is down.
	Close() error
	// Destroy detaches every interface and removes the pins.
	Destroy(ctx context.Context) error
}

// OpenDataplaneFunc opens the datapath for a configuration.
type OpenDataplaneFunc func(ctx context.Context, cfg config.Config, log *slog.Logger) (ManagedDataplane, error)

// OpenEBPF opens the real eBPF datapath.
func OpenEBPF(ctx context.Context, cfg config.Config, log *slog.Logger) (ManagedDataplane, error) {
	if err := ensureBPFFS(cfg.BPFFSPath, log); err != nil {
		return nil, err
	}
	// Before any SNAT flow exists: reserve the SNAT ports (or refuse).
	if err := ReserveSNATPorts(localports.ProcDir, cfg, log); err != nil {
		return nil, err
	}
	dp, err := dataplane.New(ctx, dataplane.Config{
		Hook:               dataplane.Hook(cfg.Hook),
		XDPGeneric:         cfg.XDPGeneric,
		Interfaces:         cfg.Interfaces,
		ConntrackFlows:     cfg.ConntrackFlows,
		SYNTimeout:         time.Duration(cfg.ConntrackSYNTimeout) * time.Second,
		NewFlowBudget:      newFlowBudget(cfg),
		PinPath:            cfg.BPFFSPath,
		MaglevSeed:         cfg.MaglevSeed,
		MaglevMinTableSize: cfg.MaglevMinTableSize,
		// Changing --conntrack-flows is a deliberate act; refusing to start
		// until someone deletes pins by hand would be worse than losing the
		// tracked flows (which are re-balanced).
		RecreateIncompatibleMaps: true,
		Logger:                   log.With("component", "dataplane"),
	})
	if err != nil {
		return nil, err
	}
	return dp, nil
}

// newFlowBudget is the configured per-CPU new-flow budget, or with -1 the
// one derived from the table size and SYN lifetime so that a flood fills at
// most about half of the conntrack table.
func newFlowBudget(cfg config.Config) int {
	if cfg.ConntrackNewFlowBudget >= 0 {
		return cfg.ConntrackNewFlowBudget
	}
	return dataplane.DefaultNewFlowBudget(cfg.ConntrackFlows, time.Duration(cfg.ConntrackSYNTimeout)*time.Second, runtime.NumCPU())
}

// Options configure a Daemon.
type Options struct {
	Config  config.Config
	Logger  *slog.Logger
	Version string
	// OpenDataplane defaults to OpenEBPF; tests pass a fake.
	OpenDataplane OpenDataplaneFunc
	// Health is the probe seam (nil: all backends healthy).
	Health BackendHealth
}

// Daemon is a running xlbd.
type Daemon struct {
	cfg     config.Config
	log     *slog.Logger
	dp      ManagedDataplane
	mgr     *Manager
	store   *state.Store
	api     *apiserver.Server
	srv     *http.Server
	ln      net.Listener
	useTLS  bool
	stopped chan struct{}
	prober  *Prober // nil when a test injected its own BackendHealth
	ann     *announcer
	bgp     *BGPController
}

// ShutdownTimeout bounds how long in-flight requests may take at exit.
const ShutdownTimeout = 30 * time.Second

// New validates credentials, opens the datapath, restores the desired state
// into it and binds the API listener. Nothing is served before Run, so no
// request can see a half-restored state.
func New(ctx context.Context, opts Options) (d *Daemon, err error) {
	cfg, log := opts.Config, opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.OpenDataplane == nil {
		opts.OpenDataplane = OpenEBPF
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	defaultSNAT, _ := cfg.DefaultSNAT() // validated above
	snatPorts, _ := cfg.SNATPorts()     // validated above

	var token []byte
	if cfg.APITokenFile != "" {
		if token, err = apiserver.ReadToken(cfg.APITokenFile); err != nil {
			return nil, err
		}
	}
	var tlsCfg *tls.Config
	if cfg.TLSCertFile != "" {
		if tlsCfg, err = apiserver.TLSConfig(cfg.TLSCertFile, cfg.TLSKeyFile, cfg.ClientCAFile); err != nil {
			return nil, err
		}
	}
	host, _, _ := net.SplitHostPort(cfg.APIListen)
	if ip := net.ParseIP(host); (ip == nil || !ip.IsLoopback()) && host != "localhost" {
		if cfg.Insecure && token == nil && cfg.ClientCAFile == "" {
			log.Warn("serving the API on a non-loopback address without authentication (--insecure)", "listen", cfg.APIListen)
		} else if token != nil && tlsCfg == nil {
			log.Warn("the bearer token travels in clear text: give --tls-cert-file/--tls-key-file", "listen", cfg.APIListen)
		}
	}

	store, err := state.Open(cfg.StateDir, log.With("component", "state"))
	if err != nil {
		return nil, err
	}
	dp, err := opts.OpenDataplane(ctx, cfg, log)
	if err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	defer func() {
		if err != nil {
			dp.Close()
		}
	}()
	// Active health checks: the real prober unless a test injected a seam.
	var prober *Prober
	if opts.Health == nil {
		prober = NewProber(log.With("component", "health"))
		opts.Health = prober
	}
	// VIP announcement (docs/announce.md): BGP, L2 and, with --plumb-vips,
	// the VIPs on the host. The manager pushes every change to them.
	ann, bgpCtl := newAnnouncement(ctx, cfg, opts.Health, store, log)
	defer func() {
		if err != nil {
			d := &Daemon{log: log, ann: ann, bgp: bgpCtl}
			d.stopAnnouncing(context.WithoutCancel(ctx))
		}
	}()
	mgr := NewManager(ManagerConfig{
		Dataplane: dp, Store: store, Logger: log.With("component", "manager"),
		DefaultSNAT: defaultSNAT, SNATPorts: snatPorts, PortSysctlDir: localports.ProcDir, Health: opts.Health, Hook: cfg.Hook, Version: opts.Version,
		Announce: ann.Announce, L2Status: ann.l2Status,
	})
	if err := mgr.Restore(ctx); err != nil {
		return nil, err
	}
	if err := bgpCtl.Restore(ctx); err != nil {
		return nil, err
	}
	api := apiserver.New(apiserver.Options{
		Core: mgr, BGP: bgpCtl, Logger: log.With("component", "api"), Token: token, RequireClientCert: cfg.ClientCAFile != "",
	})
	if prober != nil {
		api.Registry().MustRegister(prober.Collector())
	}
	ln, err := net.Listen("tcp", cfg.APIListen)
	if err != nil {
		return nil, fmt.Errorf("--api-listen: %w", err)
	}
	srv := &http.Server{
		Handler:           api.Handler(),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.With("component", "http").Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	return &Daemon{cfg: cfg, log: log, dp: dp, mgr: mgr, store: store, api: api, srv: srv, ln: ln, prober: prober,
		ann: ann, bgp: bgpCtl, useTLS: tlsCfg != nil, stopped: make(chan struct{})}, nil
}

// Addr is the bound API address (useful with port 0).
func (d *Daemon) Addr() net.Addr { return d.ln.Addr() }

// Manager exposes the desired-state manager (for the health prober).
func (d *Daemon) Manager() *Manager { return d.mgr }

// reaper is implemented by the eBPF datapath: conntrack garbage collection.
type reaper interface {
	RunReaper(ctx context.Context, interval time.Duration)
}

// linkWatcher is implemented by the eBPF datapath: it follows netlink link
// and address events and re-attaches interfaces that are re-created; the
// followers (the L2 responder and the --plumb-vips link) are reconciled
// after it on every event.
type linkWatcher interface {
	WatchLinks(ctx context.Context, resync time.Duration, followers ...func(context.Context)) error
}

// ReapInterval is how often idle conntrack entries are collected.
const ReapInterval = 10 * time.Second

// Run serves the API until ctx is done, then shuts down: stop accepting,
// finish in-flight requests (up to ShutdownTimeout), persist the desired
// state, and close the datapath without detaching (pins keep traffic
// flowing) unless --detach-on-exit.
func (d *Daemon) Run(ctx context.Context) error {
	serveErr := make(chan error, 1)
	go func() {
		var err error
		if d.useTLS {
			err = d.srv.ServeTLS(d.ln, "", "")
		} else {
			err = d.srv.Serve(d.ln)
		}
		serveErr <- err
	}()
	bgCtx, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	bgDone := make(chan struct{})
	go func() {
		defer close(bgDone)
		if r, ok := d.dp.(reaper); ok {
			r.RunReaper(bgCtx, ReapInterval)
		}
	}()
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		if w, ok := d.dp.(linkWatcher); ok {
			if err := w.WatchLinks(bgCtx, 0, d.ann.followLinks); err != nil {
				d.log.Error("interface watcher stopped; re-created interfaces will not be re-attached, re-announced or re-plumbed", "error", err)
			}
		}
	}()
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		if d.prober != nil {
			d.prober.Run(bgCtx, d.mgr.Reconcile)
		}
	}()
	ready, reason := d.mgr.Ready()
	d.log.Info("xlbd serving", "listen", d.ln.Addr().String(), "tls", d.useTLS, "ready", ready, "reason", reason)

	var runErr error
	select {
	case <-ctx.Done():
		d.log.Info("shutting down", "cause", context.Cause(ctx))
	case err := <-serveErr:
		runErr = fmt.Errorf("api server: %w", err)
	}
	shCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	defer cancel()
	if err := d.srv.Shutdown(shCtx); err != nil {
		d.log.Warn("in-flight requests did not finish in time", "error", err)
		d.srv.Close()
	}
	stopBG()
	<-bgDone
	<-watchDone
	<-probeDone
	d.mgr.Stop() // no drain-timeout flush once the datapath is closing
	// Withdraw at once (NOTIFICATION: routers converge in about a second
	// instead of a hold time) while the pinned datapath still forwards.
	runErr = errors.Join(runErr, d.stopAnnouncing(shCtx))
	// Every change was persisted when it was made; this final write makes
	// sure the file exists and carries the latest generation.
	if err := d.store.Save(shCtx, d.mgr.Snapshot()); err != nil {
		d.log.Error("persisting the desired state at exit failed", "error", err)
		runErr = errors.Join(runErr, err)
	}
	if d.cfg.DetachOnExit {
		d.log.Info("detaching the datapath and removing pins (--detach-on-exit)")
		if err := d.dp.Destroy(shCtx); err != nil {
			runErr = errors.Join(runErr, fmt.Errorf("detach datapath: %w", err))
		}
	} else {
		d.log.Info("closing the datapath; programs stay attached and pinned, traffic keeps flowing")
		if err := d.dp.Close(); err != nil {
			runErr = errors.Join(runErr, fmt.Errorf("close datapath: %w", err))
		}
	}
	close(d.stopped)
	return runErr
}
