package apiserver

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type apiMetrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// newRegistry builds the per-server registry: API request metrics, the
// datapath collector (read on every scrape) and the Go/process collectors.
func newRegistry(core Core, bgp BGPCore) (*prometheus.Registry, *apiMetrics) {
	reg := prometheus.NewRegistry()
	m := &apiMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xlb_api_requests_total",
			Help: "API requests by method, route and HTTP status code.",
		}, []string{"method", "route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "xlb_api_request_duration_seconds",
			Help:    "API request latency by method, route and HTTP status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method", "route", "code"}),
	}
	reg.MustRegister(m.requests, m.latency, &datapathCollector{core: core},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if bgp != nil {
		reg.MustRegister(&bgpCollector{bgp: bgp})
	}
	return reg, m
}

func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{ErrorLog: nil, ErrorHandling: promhttp.ContinueOnError})
}

var (
	descSvcPackets        = prometheus.NewDesc("xlb_service_packets_total", "Packets forwarded to the service's backends (all VIPs).", []string{"service"}, nil)
	descSvcBytes          = prometheus.NewDesc("xlb_service_bytes_total", "Bytes forwarded to the service's backends.", []string{"service"}, nil)
	descSvcNewFlows       = prometheus.NewDesc("xlb_service_new_flows_total", "New flows (conntrack entries created) of the service.", []string{"service"}, nil)
	descSvcDrops          = prometheus.NewDesc("xlb_service_drops_total", "Packets to the service dropped, by reason.", []string{"service", "reason"}, nil)
	descSvcFlows          = prometheus.NewDesc("xlb_service_flows", "Live conntrack flows of the service.", []string{"service"}, nil)
	descSvcBackends       = prometheus.NewDesc("xlb_service_backends", "Backends of the service by state (active, draining, down).", []string{"service", "state"}, nil)
	descBePackets         = prometheus.NewDesc("xlb_backend_packets_total", "Packets forwarded to the backend.", []string{"service", "backend"}, nil)
	descBeBytes           = prometheus.NewDesc("xlb_backend_bytes_total", "Bytes forwarded to the backend.", []string{"service", "backend"}, nil)
	descBeNewFlows        = prometheus.NewDesc("xlb_backend_new_flows_total", "New flows assigned to the backend.", []string{"service", "backend"}, nil)
	descBeActive          = prometheus.NewDesc("xlb_backend_active_connections", "Active connections of the backend.", []string{"service", "backend"}, nil)
	descBeState           = prometheus.NewDesc("xlb_backend_state", "1 for the backend's current state.", []string{"service", "backend", "state"}, nil)
	descCTEntries         = prometheus.NewDesc("xlb_conntrack_entries", "Entries in the conntrack map (two per flow).", nil, nil)
	descCTCapacity        = prometheus.NewDesc("xlb_conntrack_capacity", "Capacity of the conntrack map in entries.", nil, nil)
	descCTStateless       = prometheus.NewDesc("xlb_conntrack_stateless_total", "New-flow packets served without conntrack because the per-CPU new-flow budget was spent.", nil, nil)
	descCTRebuilt         = prometheus.NewDesc("xlb_conntrack_rebuilt_total", "Missing peer conntrack entries re-created from the remaining entry of their flow.", nil, nil)
	descCTSNATMissDropped = prometheus.NewDesc("xlb_conntrack_snat_miss_dropped_total", "Packets from a fullnat/onearm backend to an SNAT port that missed conntrack, dropped (the host would answer them with a RST).", nil, nil)
	descServices          = prometheus.NewDesc("xlb_services", "Services in the desired state.", nil, nil)
	descGeneration        = prometheus.NewDesc("xlb_desired_generation", "Generation of the desired state.", nil, nil)
	descReady             = prometheus.NewDesc("xlb_ready", "1 when the daemon is ready (state restored, datapath programmed, interfaces attached).", nil, nil)
	descAttached          = prometheus.NewDesc("xlb_interface_attached", "1 when the datapath is attached to the interface (checked against the kernel at each scrape); 0 while the interface is missing or the attach failed.", []string{"interface", "mode"}, nil)
	descL2Ready           = prometheus.NewDesc("xlb_l2_interface_ready", "1 when every VIP owned on the interface is answered (ARP/NDP) on its current ifindex; 0 while the interface is missing, down, or lacks the address the responder sends from.", []string{"interface"}, nil)
	descL2Reopens         = prometheus.NewDesc("xlb_l2_reopens_total", "Times the ARP/NDP responder re-opened its sockets on the interface since xlbd started (re-created or back up), each followed by a gratuitous ARP / unsolicited NA.", []string{"interface"}, nil)
	descReattaches        = prometheus.NewDesc("xlb_interface_reattaches_total", "Times the datapath was re-attached to the interface since xlbd started (deleted and re-created, renamed, or came back).", []string{"interface"}, nil)
)

// datapathCollector reads live counters from the Core on every scrape, so
// that the numbers are never older than the scrape.
type datapathCollector struct{ core Core }

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSvcPackets, descSvcBytes, descSvcNewFlows, descSvcDrops, descSvcFlows, descSvcBackends,
		descBePackets, descBeBytes, descBeNewFlows, descBeActive, descBeState, descCTEntries, descCTCapacity, descCTStateless, descCTRebuilt, descCTSNATMissDropped, descServices,
		descGeneration, descReady, descAttached, descReattaches, descL2Ready, descL2Reopens} {
		ch <- d
	}
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := c.core.Status(ctx)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descCTEntries, float64(st.ConntrackEntries))
	gauge(descCTCapacity, float64(st.ConntrackCapacity))
	counter(descCTStateless, st.ConntrackStateless)
	counter(descCTRebuilt, st.ConntrackRebuilt)
	counter(descCTSNATMissDropped, st.ConntrackSNATMissDropped)
	gauge(descServices, float64(st.Services))
	gauge(descGeneration, float64(st.Generation))
	gauge(descReady, boolFloat(st.Ready))
	for _, i := range st.Interfaces {
		gauge(descAttached, boolFloat(i.Attached), i.Name, i.Mode)
		counter(descReattaches, i.Reattaches, i.Name)
	}
	for _, l := range st.L2 {
		gauge(descL2Ready, boolFloat(l.Ready), l.Name)
		counter(descL2Reopens, l.Reopens, l.Name)
	}
	svcs, err := c.core.ListServices(ctx, nil)
	if err != nil {
		return
	}
	for _, s := range svcs {
		if s.Status == nil {
			continue
		}
		counter(descSvcPackets, s.Status.Packets, s.Name)
		counter(descSvcBytes, s.Status.Bytes, s.Name)
		counter(descSvcNewFlows, s.Status.NewFlows, s.Name)
		gauge(descSvcFlows, float64(s.Status.Flows), s.Name)
		for reason, n := range s.Status.Drops {
			counter(descSvcDrops, n, s.Name, reason)
		}
		byState := map[string]int{"active": 0, "draining": 0, "down": 0}
		for _, b := range s.Status.Backends {
			be := net.JoinHostPort(b.Address, strconv.Itoa(int(b.Port)))
			counter(descBePackets, b.Packets, s.Name, be)
			counter(descBeBytes, b.Bytes, s.Name, be)
			counter(descBeNewFlows, b.NewFlows, s.Name, be)
			gauge(descBeActive, float64(b.Active), s.Name, be)
			gauge(descBeState, 1, s.Name, be, b.State)
			byState[b.State]++
		}
		for state, n := range byState {
			gauge(descSvcBackends, float64(n), s.Name, state)
		}
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

var (
	descBGPSessionUp   = prometheus.NewDesc("xlb_bgp_session_up", "1 when the BGP session with the peer is established.", []string{"peer"}, nil)
	descBGPPeerState   = prometheus.NewDesc("xlb_bgp_session_state", "1 for the BGP session's current state (idle, connect, active, opensent, openconfirm, established).", []string{"peer", "state"}, nil)
	descBGPAdvertised  = prometheus.NewDesc("xlb_bgp_peer_prefixes_advertised", "Prefixes advertised to the peer.", []string{"peer"}, nil)
	descBGPUpdatesSent = prometheus.NewDesc("xlb_bgp_updates_sent_total", "BGP UPDATE messages sent to the peer (since its session was created).", []string{"peer"}, nil)
	descBGPUpdatesRecv = prometheus.NewDesc("xlb_bgp_updates_received_total", "BGP UPDATE messages received from the peer.", []string{"peer"}, nil)
	descBGPAnnounced   = prometheus.NewDesc("xlb_bgp_prefixes_announced", "Host routes (VIPs) currently announced over BGP.", nil, nil)
	descBGPConfigured  = prometheus.NewDesc("xlb_bgp_configured", "1 when the BGP speaker is configured (PUT /v1/bgp).", nil, nil)
)

// bgpCollector reads the BGP state on every scrape.
type bgpCollector struct{ bgp BGPCore }

func (c *bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBGPSessionUp, descBGPPeerState, descBGPAdvertised, descBGPUpdatesSent, descBGPUpdatesRecv, descBGPAnnounced, descBGPConfigured} {
		ch <- d
	}
}

func (c *bgpCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.bgp.GetBGP(ctx)
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descBGPConfigured, prometheus.GaugeValue, boolFloat(st.Global != nil))
	ch <- prometheus.MustNewConstMetric(descBGPAnnounced, prometheus.GaugeValue, float64(len(st.Announced)))
	for _, p := range st.Peers {
		ch <- prometheus.MustNewConstMetric(descBGPSessionUp, prometheus.GaugeValue, boolFloat(p.State == "established"), p.Address)
		ch <- prometheus.MustNewConstMetric(descBGPPeerState, prometheus.GaugeValue, 1, p.Address, p.State)
		ch <- prometheus.MustNewConstMetric(descBGPAdvertised, prometheus.GaugeValue, float64(p.PrefixesAdvertised), p.Address)
		ch <- prometheus.MustNewConstMetric(descBGPUpdatesSent, prometheus.CounterValue, float64(p.UpdatesSent), p.Address)
		ch <- prometheus.MustNewConstMetric(descBGPUpdatesRecv, prometheus.CounterValue, float64(p.UpdatesReceived), p.Address)
	}
}
