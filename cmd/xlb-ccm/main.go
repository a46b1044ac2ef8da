// Command xlb-ccm is xlb's cloud-controller-manager: the upstream k8s.io/cloud-provider
// framework with the "xlb" provider, plus xlb's loadBalancerClass controller.
//
// Which Services xlb serves is decided by one setting, loadBalancerClass in the cloud-config:
//   - empty: Services of type LoadBalancer without a class, through the upstream service
//     controller ("service"). xlb is the cluster's load-balancer CCM.
//   - set (e.g. xlb.dev/xlb): only Services with that spec.loadBalancerClass, through the
//     controller "service-lb-class" (the upstream service controller skips every Service with a
//     class). The upstream service controller is then not started, so xlb never touches
//     Services it does not own, and another CCM can serve the classless ones.
//
// Both controllers are in the default --controllers=* set; each starts only in its mode.
//
// Typical flags: --cloud-provider=xlb --cloud-config=/etc/xlb/cloud-config.yaml
// --cluster-name=NAME --leader-elect=true --use-service-account-credentials=false.
package main

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"

	"k8s.io/apimachinery/pkg/util/wait"
	cloudprovider "k8s.io/cloud-provider"
	"k8s.io/cloud-provider/app"
	cloudcontrollerconfig "k8s.io/cloud-provider/app/config"
	"k8s.io/cloud-provider/names"
	"k8s.io/cloud-provider/options"
	"k8s.io/component-base/cli"
	cliflag "k8s.io/component-base/cli/flag"
	_ "k8s.io/component-base/logs/json/register"          // optional JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	genericcontrollermanager "k8s.io/controller-manager/app"
	"k8s.io/controller-manager/controller"
	"k8s.io/klog/v2"

	"github.com/xlb-dev/xlb/provider"
	"github.com/xlb-dev/xlb/provider/classcontroller"
	"github.com/xlb-dev/xlb/provider/config"
)

// Controller names for --controllers.
const (
	ClassControllerName  = "service-lb-class-controller"
	ClassControllerAlias = "service-lb-class"
	classClientName      = "xlb-service-lb-class-controller"
)

func main() {
	os.Exit(run())
}

func run() int {
	opts, err := options.NewCloudControllerManagerOptions()
	if err != nil {
		fmt.Fprintf(os.Stderr, "xlb-ccm: initialize options: %v\n", err)
		return 1
	}
	aliases := names.CCMControllerAliases()
	aliases[ClassControllerAlias] = ClassControllerName
	cmd := app.NewCloudControllerManagerCommand(opts, initCloud, controllerInitializers(), aliases,
		cliflag.NamedFlagSets{}, wait.NeverStop)
	cmd.Use = "xlb-ccm"
	return cli.Run(cmd)
}

// xlbCloud carries the serving mode next to the provider, so the controller constructors
// (which receive only the cloudprovider.Interface) can see it without global state.
type xlbCloud struct {
	*provider.Cloud
	class string
}

// initCloud builds the xlb provider from --cloud-config. The framework gives it no way to
// return an error, so a bad config ends the process with the parser's message (which names the
// offending key) before any controller starts.
func initCloud(cfg *cloudcontrollerconfig.CompletedConfig) cloudprovider.Interface {
	cp := cfg.ComponentConfig.KubeCloudShared.CloudProvider
	if cp.Name != provider.ProviderName {
		klog.Fatalf("xlb-ccm: --cloud-provider=%q is not supported (allowed: %s)", cp.Name, provider.ProviderName)
	}
	if cp.CloudConfigFile == "" {
		klog.Fatalf("xlb-ccm: --cloud-config is required (the xlb cloud-config file: dataplanes and pools)")
	}
	data, err := os.ReadFile(cp.CloudConfigFile)
	if err != nil {
		klog.Fatalf("xlb-ccm: read --cloud-config: %v", err)
	}
	parsed, err := config.Parse(bytes.NewReader(data))
	if err != nil {
		klog.Fatalf("xlb-ccm: %s: %v", cp.CloudConfigFile, err)
	}
	cloud, err := provider.NewCloud(bytes.NewReader(data))
	if err != nil {
		klog.Fatalf("xlb-ccm: %s: %v", cp.CloudConfigFile, err)
	}
	if parsed.LoadBalancerClass != "" {
		klog.InfoS("Serving Services of one loadBalancerClass; the upstream service controller stays off",
			"loadBalancerClass", parsed.LoadBalancerClass)
	} else {
		klog.InfoS("Serving Services of type LoadBalancer without a loadBalancerClass")
	}
	return &xlbCloud{Cloud: cloud, class: parsed.LoadBalancerClass}
}

func controllerInitializers() map[string]app.ControllerInitFuncConstructor {
	// Copy: the framework's map is package state shared with anyone else who imports it.
	m := maps.Clone(app.DefaultInitFuncConstructors)
	if svc, ok := m[names.ServiceLBController]; ok {
		upstream := svc.Constructor
		svc.Constructor = func(ic app.ControllerInitContext, cc *cloudcontrollerconfig.CompletedConfig, cloud cloudprovider.Interface) app.InitFunc {
			start := upstream(ic, cc, cloud)
			return func(ctx context.Context, cctx genericcontrollermanager.ControllerContext) (controller.Interface, bool, error) {
				if c, ok := cloud.(*xlbCloud); ok && c.class != "" {
					klog.InfoS("Not starting the upstream service controller: cloud-config sets loadBalancerClass",
						"loadBalancerClass", c.class, "controller", ClassControllerName)
					return nil, false, nil
				}
				return start(ctx, cctx)
			}
		}
		m[names.ServiceLBController] = svc
	}
	m[ClassControllerName] = app.ControllerInitFuncConstructor{
		InitContext: app.ControllerInitContext{ClientName: classClientName},
		Constructor: startClassController,
	}
	return m
}

func startClassController(ic app.ControllerInitContext, cc *cloudcontrollerconfig.CompletedConfig, cloud cloudprovider.Interface) app.InitFunc {
	return func(ctx context.Context, _ genericcontrollermanager.ControllerContext) (controller.Interface, bool, error) {
		c, ok := cloud.(*xlbCloud)
		if !ok || c.class == "" {
			klog.InfoS("Not starting the loadBalancerClass controller: cloud-config sets no loadBalancerClass",
				"controller", ClassControllerName)
			return nil, false, nil
		}
		// LoadBalancer is available once the framework has called Initialize, which it does
		// before starting controllers.
		lb, ok := c.LoadBalancer()
		if !ok {
			return nil, false, fmt.Errorf("%s: the xlb provider has no LoadBalancer (not initialized)", ClassControllerName)
		}
		client, err := cc.ClientBuilder.Client(ic.ClientName)
		if err != nil {
			return nil, false, fmt.Errorf("%s: build client: %w", ClassControllerName, err)
		}
		ctrl, err := classcontroller.New(client, lb,
			cc.SharedInformers.Core().V1().Services(), cc.SharedInformers.Core().V1().Nodes(),
			classcontroller.Options{Class: c.class, ClusterName: cc.ComponentConfig.KubeCloudShared.ClusterName})
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w", ClassControllerName, err)
		}
		go ctrl.Run(ctx, int(cc.ComponentConfig.ServiceController.ConcurrentServiceSyncs))
		return nil, true, nil
	}
}
