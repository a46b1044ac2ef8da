// Package provider is xlb's cloud provider: cloudprovider.Interface with a
// LoadBalancer (IPAM, annotations, Service→dataplane mapping, fan-out to
// every xlbd and re-sync) and InstancesV2 for bare-metal nodes.
//
// Three ways to use it (docs/ccm.md): as the cluster's only CCM
// (--cloud-provider=xlb, see Register), folded into another provider's CCM
// (NewLoadBalancer, see examples/foldin), or behind the loadBalancerClass
// controller (provider/classcontroller) which calls the same LoadBalancer.
package provider

import (
	"context"
	"fmt"
	"io"
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	cloudprovider "k8s.io/cloud-provider"
	"k8s.io/klog/v2"

	"github.com/xlb-dev/xlb/provider/config"
)

// ProviderName is the --cloud-provider name.
const ProviderName = "xlb"

// registerOnce guards the framework's process-wide registry, which fails
// hard on a duplicate name.
var registerOnce sync.Once

// Register adds "xlb" to the cloud-provider registry. Call it from main
// before building the CCM command; it is safe to call more than once.
func Register() {
	registerOnce.Do(func() {
		cloudprovider.RegisterCloudProvider(ProviderName, func(r io.Reader) (cloudprovider.Interface, error) {
			return NewCloud(r)
		})
	})
}

// Cloud is xlb's cloudprovider.Interface.
type Cloud struct {
	cfg        *config.Config
	dataplanes []NamedDataplane

	mu        sync.Mutex
	lb        *LoadBalancer
	instances *Instances
}

var _ cloudprovider.Interface = (*Cloud)(nil)

// NewCloud parses the cloud-config and connects (lazily) to the dataplanes.
// Errors here stop the CCM at startup with a message naming the bad key.
func NewCloud(r io.Reader) (*Cloud, error) {
	cfg, err := config.Parse(r)
	if err != nil {
		return nil, err
	}
	dps, err := DialDataplanes(cfg)
	if err != nil {
		return nil, err
	}
	return &Cloud{cfg: cfg, dataplanes: dps}, nil
}

// NewCloudWith builds a Cloud from an already parsed config and dataplanes
// (tests, embedding).
func NewCloudWith(cfg *config.Config, dps []NamedDataplane) *Cloud {
	return &Cloud{cfg: cfg, dataplanes: dps}
}

// Initialize gets the kube client, builds the event recorder and the
// LoadBalancer, and starts the dataplane re-sync loop until stop closes.
func (c *Cloud) Initialize(cb cloudprovider.ControllerClientBuilder, stop <-chan struct{}) {
	kube := cb.ClientOrDie("xlb-cloud-provider")
	bc := record.NewBroadcaster()
	bc.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	rec := bc.NewRecorder(scheme.Scheme, v1.EventSource{Component: "xlb-ccm"})
	go func() {
		<-stop
		bc.Shutdown()
	}()
	if err := c.initialize(Deps{Kube: kube, Dataplanes: c.dataplanes, Recorder: rec}, stop); err != nil {
		// Initialize has no error return; the config was validated in
		// NewCloud, so this is a programming error.
		klog.Fatalf("xlb: initialize: %v", err)
	}
}

func (c *Cloud) initialize(deps Deps, stop <-chan struct{}) error {
	lb, err := NewLoadBalancer(c.cfg, deps)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.lb, c.instances = lb, &Instances{}
	c.mu.Unlock()
	lb.Start(stop)
	return nil
}

// InitializeWith is Initialize for callers that already have their
// dependencies (tests, the fold-in example).
func (c *Cloud) InitializeWith(ctx context.Context, deps Deps) error {
	if deps.Dataplanes == nil {
		deps.Dataplanes = c.dataplanes
	}
	return c.initialize(deps, ctx.Done())
}

// LoadBalancer returns xlb's load balancer (false before Initialize).
func (c *Cloud) LoadBalancer() (cloudprovider.LoadBalancer, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lb == nil {
		return nil, false
	}
	return c.lb, true
}

// InstancesV2 lets xlb be the only CCM of a bare-metal cluster: it
// initializes nodes (provider ID, addresses) so the uninitialized taint goes.
func (c *Cloud) InstancesV2() (cloudprovider.InstancesV2, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.instances == nil {
		return &Instances{}, true
	}
	return c.instances, true
}

// Instances (v1) is superseded by InstancesV2.
func (c *Cloud) Instances() (cloudprovider.Instances, bool) { return nil, false }

// Zones: bare metal has no zone API; use topology labels on nodes.
func (c *Cloud) Zones() (cloudprovider.Zones, bool) { return nil, false }

// Clusters is not supported.
func (c *Cloud) Clusters() (cloudprovider.Clusters, bool) { return nil, false }

// Routes: pod networking is the CNI's job.
func (c *Cloud) Routes() (cloudprovider.Routes, bool) { return nil, false }

// ProviderName returns "xlb".
func (c *Cloud) ProviderName() string { return ProviderName }

// HasClusterID is true: clusterName is mandatory in the cloud-config and
// labels everything xlb creates.
func (c *Cloud) HasClusterID() bool { return true }

// String helps logs.
func (c *Cloud) String() string {
	return fmt.Sprintf("xlb(cluster=%s, dataplanes=%d)", c.cfg.ClusterName, len(c.dataplanes))
}
