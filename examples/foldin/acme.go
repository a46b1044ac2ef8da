// Package foldin shows how an existing cloud provider ("acme", which has
// machines and zones but no load balancer for this cluster) folds xlb in:
// it keeps its own Instances/Zones and returns xlb's LoadBalancer from
// LoadBalancer(). Everything xlb-specific is the few lines marked "xlb:".
package foldin

import (
	"context"
	"fmt"
	"io"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	cloudprovider "k8s.io/cloud-provider"
	"k8s.io/klog/v2"

	"github.com/xlb-dev/xlb/provider"
	"github.com/xlb-dev/xlb/provider/config"
)

// ProviderName of the toy provider.
const ProviderName = "acme"

// Cloud is acme's cloud provider.
type Cloud struct {
	xlbConfig *config.Config
	// dataplanes: nil = dial xlbConfig.Dataplanes (tests inject fakes).
	dataplanes []provider.NamedDataplane
	lb         *provider.LoadBalancer
}

var _ cloudprovider.Interface = (*Cloud)(nil)

// New reads acme's config; here it is just xlb's cloud-config section.
func New(xlbConfig io.Reader) (*Cloud, error) {
	cfg, err := config.Parse(xlbConfig) // xlb: parse and validate
	if err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	}
	return &Cloud{xlbConfig: cfg}, nil
}

// Initialize builds xlb's LoadBalancer with acme's kube client and
// starts its dataplane re-sync loop.
func (c *Cloud) Initialize(cb cloudprovider.ControllerClientBuilder, stop <-chan struct{}) {
	kube := cb.ClientOrDie("acme-cloud-provider")
	bc := record.NewBroadcaster()
	bc.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	rec := bc.NewRecorder(scheme.Scheme, v1.EventSource{Component: "acme-ccm"})
	if err := c.init(kube, rec, stop); err != nil {
		klog.Fatalf("acme: %v", err)
	}
}

func (c *Cloud) init(kube kubernetes.Interface, rec record.EventRecorder, stop <-chan struct{}) error {
	// xlb: the whole fold-in.
	lb, err := provider.NewLoadBalancer(c.xlbConfig, provider.Deps{Kube: kube, Dataplanes: c.dataplanes, Recorder: rec})
	if err != nil {
		return err
	}
	c.lb = lb
	lb.Start(stop)
	return nil
}

// LoadBalancer returns xlb's implementation.
func (c *Cloud) LoadBalancer() (cloudprovider.LoadBalancer, bool) {
	if c.lb == nil {
		return nil, false
	}
	return c.lb, true // xlb
}

// InstancesV2 is acme's own (toy) machine inventory.
func (c *Cloud) InstancesV2() (cloudprovider.InstancesV2, bool) { return acmeInstances{}, true }

func (c *Cloud) Instances() (cloudprovider.Instances, bool) { return nil, false }
func (c *Cloud) Zones() (cloudprovider.Zones, bool)         { return nil, false }
func (c *Cloud) Clusters() (cloudprovider.Clusters, bool)   { return nil, false }
func (c *Cloud) Routes() (cloudprovider.Routes, bool)       { return nil, false }
func (c *Cloud) ProviderName() string                       { return ProviderName }
func (c *Cloud) HasClusterID() bool                         { return true }

type acmeInstances struct{}

func (acmeInstances) InstanceExists(context.Context, *v1.Node) (bool, error)   { return true, nil }
func (acmeInstances) InstanceShutdown(context.Context, *v1.Node) (bool, error) { return false, nil }
func (acmeInstances) InstanceMetadata(_ context.Context, n *v1.Node) (*cloudprovider.InstanceMetadata, error) {
	return &cloudprovider.InstanceMetadata{ProviderID: ProviderName + "://" + n.Name, InstanceType: "acme.small"}, nil
}
