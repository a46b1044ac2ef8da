package provider

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	cloudprovider "k8s.io/cloud-provider"
	"k8s.io/klog/v2"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/provider/annotations"
	"github.com/xlb-dev/xlb/provider/config"
	"github.com/xlb-dev/xlb/provider/ipam"
	"github.com/xlb-dev/xlb/provider/mapping"
)

// Config is xlb's cloud-config (see docs/cloud-config.md).
type Config = config.Config

// Deps are the collaborators of a LoadBalancer.
type Deps struct {
	// Kube is required: Services are listed to rebuild IPAM after a restart
	// and for full re-syncs of the dataplanes.
	Kube kubernetes.Interface
	// Dataplanes: nil = dial cfg.Dataplanes with lbclient.
	Dataplanes []NamedDataplane
	// Recorder receives Service events (nil = events are dropped).
	Recorder record.EventRecorder
}

// LoadBalancer implements cloudprovider.LoadBalancer on top of IPAM, the
// Service→dataplane mapping and a fan-out to every xlbd. Its methods are
// the entry points for the upstream service controller, for a CCM that
// folds xlb in, and for the loadBalancerClass controller alike.
type LoadBalancer struct {
	cfg   *config.Config
	kube  kubernetes.Interface
	rec   record.EventRecorder
	alloc *ipam.Allocator
	dps   []*dataplane

	// syncMu orders per-Service changes (read side: many workers at once)
	// against full re-syncs (write side), so a re-sync never builds its
	// snapshot while a Service is half-applied and never wipes a Service
	// that was ensured after its snapshot.
	syncMu sync.RWMutex

	rebuildMu sync.Mutex
	rebuilt   bool

	goodMu   sync.Mutex
	lastGood map[types.UID][]api.Service // last pushed desired state per Service
}

var _ cloudprovider.LoadBalancer = (*LoadBalancer)(nil)

// NewLoadBalancer builds xlb's LoadBalancer for use inside any cloud
// provider: return it from your LoadBalancer() and call Run from your
// Initialize (see examples/foldin). cfg must come from config.Parse (or
// have SetDefaults and Validate applied).
func NewLoadBalancer(cfg *Config, deps Deps) (*LoadBalancer, error) {
	if cfg == nil {
		return nil, errors.New("xlb: nil config")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("xlb: %w", err)
	}
	if deps.Kube == nil {
		return nil, errors.New("xlb: Deps.Kube is required")
	}
	pools, err := ipam.PoolsFromConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("xlb: %w", err)
	}
	dps := deps.Dataplanes
	if dps == nil {
		if dps, err = DialDataplanes(cfg); err != nil {
			return nil, fmt.Errorf("xlb: %w", err)
		}
	}
	if len(dps) == 0 {
		return nil, errors.New("xlb: no dataplanes")
	}
	rec := deps.Recorder
	if rec == nil {
		rec = &record.FakeRecorder{} // nil channel: events are dropped
	}
	lb := &LoadBalancer{cfg: cfg, kube: deps.Kube, rec: rec, alloc: ipam.New(pools), lastGood: map[types.UID][]api.Service{}}
	for _, d := range dps {
		lb.dps = append(lb.dps, &dataplane{name: d.Name, dp: d.Dataplane})
	}
	return lb, nil
}

// Owns reports whether xlb handles svc: type LoadBalancer, and the class
// configured in loadBalancerClass (none = Services without a class, the
// only ones the upstream service controller passes on).
func (lb *LoadBalancer) Owns(svc *v1.Service) bool {
	if svc.Spec.Type != v1.ServiceTypeLoadBalancer {
		return false
	}
	c := svc.Spec.LoadBalancerClass
	if lb.cfg.LoadBalancerClass == "" {
		return c == nil
	}
	return c != nil && *c == lb.cfg.LoadBalancerClass
}

func classOf(svc *v1.Service) string {
	if svc.Spec.LoadBalancerClass == nil {
		return "<none>"
	}
	return *svc.Spec.LoadBalancerClass
}

func key(svc *v1.Service) string { return svc.Namespace + "/" + svc.Name }

// GetLoadBalancerName is unique cluster-wide and stable for the life of the
// Service: the upstream default ("a" + UID without dashes, 32 characters).
func (lb *LoadBalancer) GetLoadBalancerName(_ context.Context, _ string, svc *v1.Service) string {
	return cloudprovider.DefaultLoadBalancerName(svc)
}

// GetLoadBalancer never returns an error for an absent load balancer: the
// service controller calls it before deleting, and an error there would
// block the deletion of the Service forever.
func (lb *LoadBalancer) GetLoadBalancer(ctx context.Context, _ string, svc *v1.Service) (*v1.LoadBalancerStatus, bool, error) {
	if err := lb.ensureRebuilt(ctx); err != nil {
		klog.FromContext(ctx).Error(err, "IPAM rebuild failed; answering from dataplanes", "service", key(svc))
	}
	if ips := lb.alloc.Lookup(key(svc)); len(ips) > 0 {
		return lb.status(svc, ips), true, nil
	}
	if len(svc.Status.LoadBalancer.Ingress) > 0 {
		// Possibly programmed by a previous run whose state was lost;
		// deleting is idempotent, so say yes.
		return svc.Status.LoadBalancer.DeepCopy(), true, nil
	}
	// Ask the dataplanes (a crash between push and status write leaves
	// entries without status). Unreachable dataplanes are cleaned by the
	// full re-sync when they come back.
	sel := mapping.OwnerSelector(lb.cfg.ClusterName, svc)
	for _, d := range lb.dps {
		l, err := d.dp.ListServices(ctx, sel)
		if err == nil && len(l.Items) > 0 {
			return &v1.LoadBalancerStatus{}, true, nil
		}
	}
	return nil, false, nil
}

// EnsureLoadBalancer validates everything first (annotations, IPAM,
// mapping) and only then touches the dataplanes, so bad input leaves the
// existing load balancer exactly as it was.
func (lb *LoadBalancer) EnsureLoadBalancer(ctx context.Context, _ string, svc *v1.Service, nodes []*v1.Node) (*v1.LoadBalancerStatus, error) {
	ips, st, err := lb.ensure(ctx, svc, nodes)
	if err != nil {
		return nil, err
	}
	return lb.statusWith(ips, st.IPMode), nil
}

// UpdateLoadBalancer pushes the new node set (the service controller calls
// it when nodes come and go). It is a full ensure: never a no-op.
func (lb *LoadBalancer) UpdateLoadBalancer(ctx context.Context, _ string, svc *v1.Service, nodes []*v1.Node) error {
	_, _, err := lb.ensure(ctx, svc, nodes)
	return err
}

func (lb *LoadBalancer) ensure(ctx context.Context, svc *v1.Service, nodes []*v1.Node) ([]netip.Addr, mapping.Settings, error) {
	log := klog.FromContext(ctx).WithValues("service", key(svc))
	if svc.UID == "" {
		return nil, mapping.Settings{}, fmt.Errorf("ensure %s: service has no UID", key(svc))
	}
	if !lb.Owns(svc) {
		// Programming it would be undone by the next full re-sync, which
		// only keeps the Services this instance owns.
		err := fmt.Errorf("service type %s with loadBalancerClass %s is not handled by this xlb (cloud-config loadBalancerClass %q)", svc.Spec.Type, classOf(svc), lb.cfg.LoadBalancerClass)
		lb.warn(svc, ReasonInvalidConfiguration, err)
		return nil, mapping.Settings{}, fmt.Errorf("ensure %s: %w", key(svc), err)
	}
	if err := lb.ensureRebuilt(ctx); err != nil {
		return nil, mapping.Settings{}, fmt.Errorf("ensure %s: %w", key(svc), err)
	}
	opts, err := annotations.Parse(svc)
	var st mapping.Settings
	if err == nil {
		st, err = mapping.Resolve(svc, opts, lb.cfg.Defaults)
	}
	if err != nil {
		lb.warn(svc, ReasonInvalidConfiguration, err)
		return nil, st, fmt.Errorf("ensure %s: %w", key(svc), err)
	}
	req, err := ipamRequest(svc, opts)
	if err != nil {
		lb.warn(svc, ReasonAllocationFailed, err)
		return nil, st, fmt.Errorf("ensure %s: %w", key(svc), err)
	}

	lb.syncMu.RLock()
	defer lb.syncMu.RUnlock()
	prev := lb.alloc.Lookup(req.Key)
	res, err := lb.alloc.Allocate(req)
	if err != nil {
		lb.warn(svc, ReasonAllocationFailed, err)
		return nil, st, fmt.Errorf("ensure %s: allocate: %w", key(svc), err)
	}
	for _, s := range res.Skipped {
		lb.rec.Eventf(svc, v1.EventTypeWarning, ReasonAllocationFailed, "PreferDualStack: continuing without: %v", s)
	}
	desired, err := mapping.Build(mapping.Input{Cluster: lb.cfg.ClusterName, Service: svc, Nodes: nodes, VIPs: res.IPs, Settings: st})
	if err != nil {
		lb.alloc.Revert(req, prev)
		lb.warn(svc, ReasonInvalidConfiguration, err)
		return nil, st, fmt.Errorf("ensure %s: %w", key(svc), err)
	}
	if !slices.Equal(prev, res.IPs) {
		lb.rec.Eventf(svc, v1.EventTypeNormal, ReasonIPAllocated, "Assigned VIPs %s", joinIPs(res.IPs))
	}
	b := api.BulkReplace{Selector: mapping.OwnerSelector(lb.cfg.ClusterName, svc), Services: desired}
	out := fanOut(ctx, lb.dps, func(ctx context.Context, d *dataplane) error {
		_, err := d.dp.BulkReplace(ctx, b)
		return err
	})
	if len(out.failed) > 0 {
		lb.warn(svc, ReasonProgrammingFailed, fmt.Errorf("%d of %d dataplanes failed (successPolicy %s): %w", len(out.failed), out.total, lb.cfg.SuccessPolicy, out.err()))
	}
	if !out.met(lb.cfg.SuccessPolicy) {
		// Keep the allocation: the retry converges on the same VIPs.
		return nil, st, fmt.Errorf("ensure %s: %w", key(svc), out.err())
	}
	lb.goodMu.Lock()
	lb.lastGood[svc.UID] = desired
	lb.goodMu.Unlock()
	log.V(2).Info("programmed", "vips", joinIPs(res.IPs), "ports", len(desired), "dataplanes", out.total-len(out.failed))
	if len(out.failed) == 0 {
		lb.rec.Eventf(svc, v1.EventTypeNormal, ReasonProgrammed, "Programmed %d port(s) on %s into %d dataplane(s)", len(desired), joinIPs(res.IPs), out.total)
	}
	return res.IPs, st, nil
}

// EnsureLoadBalancerDeleted removes the Service from every dataplane and
// frees its VIPs. Idempotent: an absent load balancer is success.
func (lb *LoadBalancer) EnsureLoadBalancerDeleted(ctx context.Context, _ string, svc *v1.Service) error {
	if err := lb.ensureRebuilt(ctx); err != nil {
		return fmt.Errorf("delete %s: %w", key(svc), err)
	}
	lb.syncMu.RLock()
	defer lb.syncMu.RUnlock()
	if svc.UID != "" {
		b := api.BulkReplace{Selector: mapping.OwnerSelector(lb.cfg.ClusterName, svc), Services: []api.Service{}}
		out := fanOut(ctx, lb.dps, func(ctx context.Context, d *dataplane) error {
			_, err := d.dp.BulkReplace(ctx, b)
			return err
		})
		if len(out.failed) > 0 {
			lb.warn(svc, ReasonDeleteFailed, out.err())
		}
		if !out.met(lb.cfg.SuccessPolicy) {
			// Keep the VIPs reserved until the dataplanes let go of them.
			return fmt.Errorf("delete %s: %w", key(svc), out.err())
		}
	}
	lb.alloc.Release(key(svc))
	lb.goodMu.Lock()
	delete(lb.lastGood, svc.UID)
	lb.goodMu.Unlock()
	return nil
}

func (lb *LoadBalancer) warn(svc *v1.Service, reason string, err error) {
	lb.rec.Event(svc, v1.EventTypeWarning, reason, err.Error())
}

func (lb *LoadBalancer) status(svc *v1.Service, ips []netip.Addr) *v1.LoadBalancerStatus {
	mode := v1.LoadBalancerIPModeVIP
	if o, err := annotations.Parse(svc); err == nil {
		if st, err := mapping.Resolve(svc, o, lb.cfg.Defaults); err == nil {
			mode = st.IPMode
		}
	}
	return lb.statusWith(ips, mode)
}

func (lb *LoadBalancer) statusWith(ips []netip.Addr, mode v1.LoadBalancerIPMode) *v1.LoadBalancerStatus {
	st := &v1.LoadBalancerStatus{}
	for _, ip := range ips {
		m := mode
		st.Ingress = append(st.Ingress, v1.LoadBalancerIngress{IP: ip.String(), IPMode: &m})
	}
	return st
}

func joinIPs(ips []netip.Addr) string {
	var s []string
	for _, ip := range ips {
		s = append(s, ip.String())
	}
	return strings.Join(s, ",")
}

// ipamRequest derives the allocation request from the Service.
func ipamRequest(svc *v1.Service, o annotations.Options) (ipam.Request, error) {
	req := ipam.Request{Key: key(svc), Namespace: svc.Namespace, Pool: o.Pool, Static: o.StaticIPs, SharingKey: o.SharingKey, Ports: portSet(svc)}
	fams := familiesOf(svc)
	policy := v1.IPFamilyPolicySingleStack
	if svc.Spec.IPFamilyPolicy != nil {
		policy = *svc.Spec.IPFamilyPolicy
	}
	switch policy {
	case v1.IPFamilyPolicyRequireDualStack:
		req.Families, req.RequireAll = []ipam.Family{ipam.IPv4, ipam.IPv6}, true
	case v1.IPFamilyPolicyPreferDualStack:
		other := ipam.IPv6
		if fams[0] == ipam.IPv6 {
			other = ipam.IPv4
		}
		req.Families = []ipam.Family{fams[0], other}
	default:
		req.Families, req.RequireAll = fams[:1], true
	}
	for _, ip := range o.StaticIPs {
		if !slices.Contains(req.Families, ipam.FamilyOf(ip)) {
			return req, fmt.Errorf("static IP %s: the Service has no %s family (spec.ipFamilies %v, spec.ipFamilyPolicy %s)", ip, ipam.FamilyOf(ip), svc.Spec.IPFamilies, policy)
		}
	}
	return req, nil
}

// familiesOf returns spec.ipFamilies (defaulted from the ClusterIP, else IPv4).
func familiesOf(svc *v1.Service) []ipam.Family {
	var out []ipam.Family
	for _, f := range svc.Spec.IPFamilies {
		if f == v1.IPv6Protocol {
			out = append(out, ipam.IPv6)
		} else {
			out = append(out, ipam.IPv4)
		}
	}
	if len(out) == 0 {
		out = []ipam.Family{ipam.IPv4}
		if ip, err := netip.ParseAddr(svc.Spec.ClusterIP); err == nil && ip.Is6() && !ip.Is4In6() {
			out[0] = ipam.IPv6
		}
	}
	return out
}

func portSet(svc *v1.Service) []ipam.PortProto {
	var out []ipam.PortProto
	for _, p := range svc.Spec.Ports {
		proto := string(p.Protocol)
		if proto == "" {
			proto = string(v1.ProtocolTCP)
		}
		out = append(out, ipam.PortProto{Port: p.Port, Protocol: proto})
	}
	return out
}

// ensureRebuilt restores IPAM from the status of existing Services, once,
// before the first allocation: VIPs survive a controller restart and are
// never handed out twice. A failed rebuild is retried by the next call.
func (lb *LoadBalancer) ensureRebuilt(ctx context.Context) error {
	lb.rebuildMu.Lock()
	defer lb.rebuildMu.Unlock()
	if lb.rebuilt {
		return nil
	}
	list, err := lb.kube.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("rebuild IPAM: list services: %w", err)
	}
	var hs []ipam.Holding
	byKey := map[string]*v1.Service{}
	for i := range list.Items {
		svc := &list.Items[i]
		if !lb.Owns(svc) {
			continue
		}
		h := ipam.Holding{Key: key(svc), Namespace: svc.Namespace, Ports: portSet(svc), SharingKey: svc.Annotations[annotations.AllowSharedIP]}
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if ip, err := netip.ParseAddr(in.IP); err == nil {
				h.IPs = append(h.IPs, ip.Unmap())
			}
		}
		if len(h.IPs) > 0 {
			hs = append(hs, h)
			byKey[h.Key] = svc
		}
	}
	for _, err := range lb.alloc.Rebuild(hs) {
		klog.FromContext(ctx).Error(err, "IPAM rebuild conflict")
		for k, svc := range byKey {
			if strings.Contains(err.Error(), "rebuild "+k+":") {
				lb.warn(svc, ReasonRebuildConflict, err)
			}
		}
	}
	lb.rebuilt = true
	klog.FromContext(ctx).Info("IPAM rebuilt from Service status", "services", len(hs))
	return nil
}
