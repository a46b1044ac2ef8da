// Package mapping turns a Kubernetes Service (plus the nodes the service
// controller hands over) into the xlbd services that implement it: one
// api.Service per (port, protocol), each carrying every VIP of the Service
// (IPv4 and IPv6) and one backend per node and family at the NodePort.
//
// It is pure logic, tested with golden files (go test ./provider/mapping -update).
package mapping

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/provider/annotations"
	"github.com/xlb-dev/xlb/provider/config"
)

// Settings are the per-Service dataplane settings after annotations,
// Service fields and cloud-config defaults have been combined.
type Settings struct {
	NATMode                string
	Algorithm              string
	IdleTimeoutSeconds     uint32
	AffinityTimeoutSeconds uint32
	SNATAddresses          []string
	SourceRanges           []string
	// Probe is the template applied to every port (Port 0 = the backend's
	// NodePort). nil = no probing.
	Probe *api.Probe
	BGP   *api.ServiceBGP
	// IPMode written to status.loadBalancer.ingress.
	IPMode v1.LoadBalancerIPMode
}

// Resolve combines parsed annotations, the Service's own fields and the
// cloud-config defaults. Every error names the annotation or field.
func Resolve(svc *v1.Service, o annotations.Options, d config.Defaults) (Settings, error) {
	var errs []error
	local := svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	s := Settings{NATMode: d.NATMode, Algorithm: d.Algorithm, IdleTimeoutSeconds: d.IdleTimeoutSeconds}
	if local {
		// ETP=Local exists to keep the client IP; only DNAT ("default")
		// does. An explicit annotation still wins.
		s.NATMode = annotations.NATDefault
	}
	if o.NATMode != "" {
		s.NATMode = o.NATMode
	}
	if o.Algorithm != "" {
		s.Algorithm = o.Algorithm
	}
	if o.IdleTimeout != nil {
		s.IdleTimeoutSeconds = *o.IdleTimeout
	}
	if o.AffinityTimeout != nil {
		s.AffinityTimeoutSeconds = *o.AffinityTimeout
	}
	if len(o.SNATAddresses) > 0 && s.NATMode != annotations.NATFull {
		errs = append(errs, fmt.Errorf("annotation %s: only valid with %s fullnat (this Service uses %q)", annotations.SNATAddresses, annotations.NATMode, s.NATMode))
	}
	for _, a := range o.SNATAddresses {
		s.SNATAddresses = append(s.SNATAddresses, a.String())
	}
	for _, p := range o.SourceRanges {
		s.SourceRanges = append(s.SourceRanges, p.String())
	}

	// Probe.
	po := o.Probe
	probe := &api.Probe{
		IntervalMillis:   uint32(d.Probe.Interval.Milliseconds()),
		TimeoutMillis:    uint32(d.Probe.Timeout.Milliseconds()),
		FailureThreshold: d.Probe.FailureThreshold,
		SuccessThreshold: d.Probe.SuccessThreshold,
	}
	switch {
	case local:
		for name, set := range map[string]bool{annotations.ProbeType: po.Type != "", annotations.ProbePort: po.Port != nil, annotations.ProbePath: po.Path != ""} {
			if set {
				errs = append(errs, fmt.Errorf("annotation %s: not allowed with externalTrafficPolicy: Local (the probe is HTTP GET /healthz on spec.healthCheckNodePort, which tells the nodes with local endpoints)", name))
			}
		}
		if svc.Spec.HealthCheckNodePort == 0 {
			errs = append(errs, errors.New("spec.healthCheckNodePort: not allocated yet (externalTrafficPolicy: Local needs it)"))
		}
		probe.Type, probe.Path, probe.Port = "http", "/healthz", uint16(svc.Spec.HealthCheckNodePort)
		probe.ExpectStatus = []int{200}
	case po.Type != "":
		probe.Type, probe.Path = po.Type, po.Path
	case d.Probe.Type == config.ProbeKubeProxy:
		probe.Type, probe.Path, probe.Port = "http", "/healthz", d.Probe.KubeProxyHealthzPort
		probe.ExpectStatus = []int{200}
	default:
		probe.Type = d.Probe.Type
	}
	if po.Port != nil && !local {
		probe.Port = *po.Port
	}
	if po.Path != "" && !local {
		probe.Path = po.Path
	}
	ms := func(d *time.Duration) uint32 { return uint32(d.Milliseconds()) }
	if po.Interval != nil {
		probe.IntervalMillis = ms(po.Interval)
	}
	if po.Timeout != nil {
		probe.TimeoutMillis = ms(po.Timeout)
	}
	if probe.TimeoutMillis > probe.IntervalMillis {
		errs = append(errs, fmt.Errorf("annotation %s: timeout %dms longer than the interval %dms (allowed: at most the interval)", annotations.ProbeTimeout, probe.TimeoutMillis, probe.IntervalMillis))
	}
	if po.FailureThreshold != nil {
		probe.FailureThreshold = *po.FailureThreshold
	}
	if po.SuccessThreshold != nil {
		probe.SuccessThreshold = *po.SuccessThreshold
	}
	if len(po.ExpectStatus) > 0 {
		if probe.Type != "http" && probe.Type != "https" {
			errs = append(errs, fmt.Errorf("annotation %s: only valid with an http or https probe (probe type is %q)", annotations.ProbeExpectStatus, probe.Type))
		}
		probe.ExpectStatus = po.ExpectStatus
	}
	if po.OnDown != "" {
		probe.OnDown = po.OnDown
	}
	if probe.Path != "" && probe.Type != "http" && probe.Type != "https" {
		errs = append(errs, fmt.Errorf("annotation %s: only valid with an http or https probe (probe type is %q)", annotations.ProbePath, probe.Type))
	}
	if probe.Type != "none" {
		s.Probe = probe
	}

	if o.BGPAdvertise != nil || len(o.BGPCommunities) > 0 {
		s.BGP = &api.ServiceBGP{Advertise: o.BGPAdvertise, Communities: o.BGPCommunities}
	}

	// ipMode: with DNAT only ("default") the backend answers the client
	// directly with the VIP as source. An in-cluster client sending to the
	// VIP through the load balancer would get replies from the node it
	// never talked to and drop them, so kube-proxy must short-circuit: VIP.
	// fullnat/onearm put the load balancer on both directions, so in-cluster
	// traffic can and should see exactly what outside traffic sees (SNAT
	// address, source ranges, algorithm, affinity): Proxy.
	s.IPMode = v1.LoadBalancerIPModeVIP
	if s.NATMode != annotations.NATDefault {
		s.IPMode = v1.LoadBalancerIPModeProxy
	}
	if o.IPMode != "" {
		s.IPMode = v1.LoadBalancerIPMode(o.IPMode)
	}
	return s, errors.Join(errs...)
}

// Input is everything Build needs.
type Input struct {
	Cluster  string
	Service  *v1.Service
	Nodes    []*v1.Node
	VIPs     []netip.Addr
	Settings Settings
}

// Build returns the xlbd services of one Kubernetes Service, sorted by
// name. Every one is checked with api.ValidateService, so the dataplanes
// never see something they would reject.
func Build(in Input) ([]api.Service, error) {
	svc := in.Service
	if len(in.VIPs) == 0 {
		return nil, errors.New("no VIPs")
	}
	vips := slices.Clone(in.VIPs)
	slices.SortFunc(vips, func(a, b netip.Addr) int { return a.Compare(b) })
	var vipStrs []string
	fams := map[bool]bool{} // is4 -> present
	for _, v := range vips {
		vipStrs = append(vipStrs, v.String())
		fams[v.Is4()] = true
	}
	backendsFor := func(port int32) []api.Backend {
		var out []api.Backend
		nodes := slices.Clone(in.Nodes)
		slices.SortFunc(nodes, func(a, b *v1.Node) int { return strings.Compare(a.Name, b.Name) })
		for _, n := range nodes {
			for _, is4 := range []bool{true, false} {
				if !fams[is4] {
					continue
				}
				if a, ok := NodeAddress(n, is4); ok {
					out = append(out, api.Backend{Address: a.String(), Port: uint16(port), Name: n.Name})
				}
			}
		}
		return out
	}
	var out []api.Service
	var errs []error
	seen := map[string]bool{}
	for i, p := range svc.Spec.Ports {
		proto, err := protocol(p.Protocol)
		if err != nil {
			errs = append(errs, fmt.Errorf("spec.ports[%d] (%s): %w", i, p.Name, err))
			continue
		}
		if p.NodePort == 0 {
			errs = append(errs, fmt.Errorf("spec.ports[%d] (%s): no nodePort (spec.allocateLoadBalancerNodePorts is false); xlb forwards to NodePorts", i, p.Name))
			continue
		}
		name := Name(in.Cluster, svc, p.Port, proto)
		if seen[name] {
			continue
		}
		seen[name] = true
		st := in.Settings
		s := api.Service{
			Name:   name,
			Labels: Labels(in.Cluster, svc),
			Spec: api.ServiceSpec{
				VIPs:                   vipStrs,
				Port:                   uint16(p.Port),
				Protocol:               proto,
				NATMode:                st.NATMode,
				Algorithm:              st.Algorithm,
				SNATAddresses:          st.SNATAddresses,
				IdleTimeoutSeconds:     st.IdleTimeoutSeconds,
				AffinityTimeoutSeconds: st.AffinityTimeoutSeconds,
				SourceRanges:           st.SourceRanges,
				Backends:               backendsFor(p.NodePort),
				BGP:                    st.BGP,
			},
		}
		if s.Spec.Backends == nil {
			s.Spec.Backends = []api.Backend{}
		}
		if st.Probe != nil {
			pr := *st.Probe
			s.Spec.Probe = &pr
		}
		if err := api.ValidateService(&s, api.ValidateOptions{SNATOptional: true}); err != nil {
			errs = append(errs, fmt.Errorf("port %d/%s: %w", p.Port, p.Protocol, err))
			continue
		}
		out = append(out, s)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b api.Service) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func protocol(p v1.Protocol) (string, error) {
	switch p {
	case v1.ProtocolTCP, "":
		return "tcp", nil
	case v1.ProtocolUDP:
		return "udp", nil
	}
	return "", fmt.Errorf("protocol %q not supported (allowed: TCP, UDP)", p)
}

// NodeAddress picks the backend address of a node for one family: the
// first InternalIP of that family, else the first ExternalIP of that family
// (nodes registered with only a public address still work).
func NodeAddress(n *v1.Node, is4 bool) (netip.Addr, bool) {
	for _, t := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type != t {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				continue
			}
			ip = ip.Unmap()
			if ip.Is4() == is4 {
				return ip, true
			}
		}
	}
	return netip.Addr{}, false
}

// maxName is api.MaxNameLength.
const maxName = api.MaxNameLength

// Name is the stable, cluster-wide unique xlbd name of one port of a
// Service: "<cluster>-<namespace>-<name>-<port>-<proto>-<uidhash>". The
// readable head is cut to fit 63 characters; the port, protocol and a hash
// of the Service UID are always kept, so names never collide even when cut,
// and a re-created Service (new UID) never touches its predecessor's entries.
func Name(cluster string, svc *v1.Service, port int32, proto string) string {
	sum := sha256.Sum256([]byte(svc.UID))
	tail := "-" + strconv.Itoa(int(port)) + "-" + proto + "-" + hex.EncodeToString(sum[:])[:8]
	head := sanitize(cluster + "-" + svc.Namespace + "-" + svc.Name)
	if len(head)+len(tail) > maxName {
		head = strings.TrimRight(head[:maxName-len(tail)], "-.")
	}
	return head + tail
}

func sanitize(s string) string {
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			b[i] = '-'
		}
	}
	return strings.Trim(string(b), "-.")
}

// Labels are put on every xlbd service of a Kubernetes Service.
func Labels(cluster string, svc *v1.Service) map[string]string {
	return map[string]string{
		api.LabelCluster:    cluster,
		api.LabelServiceUID: string(svc.UID),
		api.LabelNamespace:  svc.Namespace,
		api.LabelName:       svc.Name,
	}
}

// OwnerSelector selects every xlbd service of one Kubernetes Service.
func OwnerSelector(cluster string, svc *v1.Service) map[string]string {
	return map[string]string{api.LabelCluster: cluster, api.LabelServiceUID: string(svc.UID)}
}

// ClusterSelector selects every xlbd service of a cluster.
func ClusterSelector(cluster string) map[string]string {
	return map[string]string{api.LabelCluster: cluster}
}
