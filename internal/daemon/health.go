package daemon

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/internal/health"
)

// Prober connects the active health checks (internal/health) to the
// desired state: it implements BackendHealth for the expansion, keeps the
// probe targets equal to the probed backends of the desired services, and
// re-applies the desired set whenever a backend changes state, so the
// datapath stops selecting a dead backend for new flows within one probe
// round of detection.
type Prober struct {
	hm  *health.Manager
	log *slog.Logger

	// kick coalesces state changes: one Reconcile covers any number of
	// changes that arrived while the previous one ran.
	kick chan struct{}

	// seededDown are backends the pinned datapath had down before a
	// restart; they start down in the prober (see SeedDown).
	seededDown map[string]map[netip.AddrPort]bool

	transitions *prometheus.CounterVec
}

// NewProber returns a Prober; Run starts probing.
func NewProber(log *slog.Logger) *Prober {
	p := &Prober{log: log, kick: make(chan struct{}, 1)}
	p.transitions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "xlb_backend_health_transitions_total",
		Help: "Backend health state changes, by service and new state.",
	}, []string{"service", "state"})
	p.hm = health.New(health.Config{OnChange: p.onChange})
	return p
}

// BackendState implements BackendHealth.
func (p *Prober) BackendState(service string, backend netip.AddrPort) (dataplane.BackendState, bool) {
	st, ok := p.hm.State(service, backend)
	if !ok {
		return "", false
	}
	if st.State == health.StateDown {
		return dataplane.BackendDown, true
	}
	return dataplane.BackendActive, true
}

// SetTargets makes the probe targets equal to the backends of the given
// (defaulted) services that have a probe other than "none".
func (p *Prober) SetTargets(ctx context.Context, services []api.Service) {
	var targets []health.Target
	for _, s := range services {
		if s.Spec.Probe == nil || s.Spec.Probe.Type == "" || s.Spec.Probe.Type == "none" {
			continue
		}
		// onDown is the daemon's policy, not a probing parameter: changing
		// it must not restart the probe's streaks.
		probe := *s.Spec.Probe
		probe.OnDown = ""
		for _, b := range s.Spec.Backends {
			a, err := netip.ParseAddr(b.Address)
			if err != nil {
				continue
			}
			ap := netip.AddrPortFrom(a, b.Port)
			t := health.Target{Service: s.Name, Backend: ap, Probe: probe}
			if p.seededDown[s.Name][ap] {
				t.InitialState = health.StateDown
			}
			targets = append(targets, t)
		}
	}
	// Seeds only matter for the first Set after a restart.
	p.seededDown = nil
	if err := p.hm.Set(ctx, targets); err != nil {
		// Specs were validated by the API layer; a failure here is a bug.
		p.log.Error("setting health probe targets failed", "error", err)
	}
}

// SeedDown records the backends that were down in the datapath before this
// process started (read from the pinned maps). Without it a restarted xlbd
// would start every backend "up" and send new flows to a still-dead one
// until its probes failed again; with it they must pass SuccessThreshold
// probes first. Call before the first SetTargets.
func (p *Prober) SeedDown(down map[string]map[netip.AddrPort]bool) { p.seededDown = down }

// Statuses returns every probe target's live status.
func (p *Prober) Statuses() []health.Status { return p.hm.States() }

func (p *Prober) onChange(c health.Change) {
	p.log.Info("backend health changed", "service", c.Service, "backend", c.Backend.String(),
		"from", string(c.From), "to", string(c.To), "reason", c.Reason)
	p.transitions.WithLabelValues(c.Service, string(c.To)).Inc()
	select {
	case p.kick <- struct{}{}:
	default: // a reconcile is already pending; it will see this change too
	}
}

// Run probes and re-applies the desired state after state changes until
// ctx is done. reconcile is Manager.Reconcile.
func (p *Prober) Run(ctx context.Context, reconcile func(context.Context) error) {
	go func() {
		if err := p.hm.Run(ctx); err != nil && ctx.Err() == nil {
			p.log.Error("health prober stopped", "error", err)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
			if err := reconcile(ctx); err != nil && ctx.Err() == nil {
				p.log.Error("applying backend health to the datapath failed", "error", err)
			}
		}
	}
}

// Collector exposes per-backend health for /metrics.
func (p *Prober) Collector() prometheus.Collector { return &healthCollector{p: p} }

type healthCollector struct{ p *Prober }

var (
	descBackendUp = prometheus.NewDesc("xlb_backend_up",
		"1 when the backend's health probe passes, 0 when it is marked down.", []string{"service", "backend"}, nil)
	descProbes = prometheus.NewDesc("xlb_backend_probes_total",
		"Health probes run against the backend.", []string{"service", "backend"}, nil)
	descProbeFailures = prometheus.NewDesc("xlb_backend_probe_failures_total",
		"Failed health probes against the backend.", []string{"service", "backend"}, nil)
)

func (c *healthCollector) Describe(ch chan<- *prometheus.Desc) {
	c.p.transitions.Describe(ch)
	ch <- descBackendUp
	ch <- descProbes
	ch <- descProbeFailures
}

func (c *healthCollector) Collect(ch chan<- prometheus.Metric) {
	c.p.transitions.Collect(ch)
	for _, s := range c.p.hm.States() {
		up := 0.0
		if s.State == health.StateUp {
			up = 1
		}
		be := s.Backend.String()
		ch <- prometheus.MustNewConstMetric(descBackendUp, prometheus.GaugeValue, up, s.Service, be)
		ch <- prometheus.MustNewConstMetric(descProbes, prometheus.CounterValue, float64(s.Probes), s.Service, be)
		ch <- prometheus.MustNewConstMetric(descProbeFailures, prometheus.CounterValue, float64(s.Failures), s.Service, be)
	}
}
