// Command acme-ccm is the cloud-controller-manager of the toy provider "acme" (package foldin),
// which folds xlb's load balancer into its own cloud provider. It is the upstream
// k8s.io/cloud-provider framework with acme registered instead of xlb: every default controller
// (service, cloud-node, cloud-node-lifecycle, route) is available, and the service controller
// gets xlb's LoadBalancer through acme's LoadBalancer().
//
// Typical flags: --cloud-provider=acme --cloud-config=/etc/acme/cloud-config.yaml
// --cluster-name=NAME --controllers=service,cloud-node,cloud-node-lifecycle
// --leader-elect=true --use-service-account-credentials=false.
//
// The cloud-config is acme's, which in this toy is exactly xlb's cloud-config
// (docs/cloud-config.md).
package main

import (
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
	"k8s.io/klog/v2"

	"github.com/xlb-dev/xlb/examples/foldin"
)

func main() {
	os.Exit(run())
}

func run() int {
	opts, err := options.NewCloudControllerManagerOptions()
	if err != nil {
		fmt.Fprintf(os.Stderr, "acme-ccm: initialize options: %v\n", err)
		return 1
	}
	// Copy: the framework's map is package state shared with anyone else who imports it.
	controllers := maps.Clone(app.DefaultInitFuncConstructors)
	cmd := app.NewCloudControllerManagerCommand(opts, initCloud, controllers, names.CCMControllerAliases(),
		cliflag.NamedFlagSets{}, wait.NeverStop)
	cmd.Use = "acme-ccm"
	return cli.Run(cmd)
}

// initCloud builds acme from --cloud-config. It calls foldin.New directly instead of going
// through cloudprovider.RegisterCloudProvider/InitCloudProvider: the registry is global state,
// and this binary only ever serves one provider. The framework gives the initializer no way to
// return an error, so a bad config ends the process with the parser's message before any
// controller starts. The framework calls Initialize (which builds xlb's LoadBalancer and starts
// its dataplane re-sync loop) before it starts the controllers.
func initCloud(cfg *cloudcontrollerconfig.CompletedConfig) cloudprovider.Interface {
	cp := cfg.ComponentConfig.KubeCloudShared.CloudProvider
	if cp.Name != foldin.ProviderName {
		klog.Fatalf("acme-ccm: --cloud-provider=%q is not supported (allowed: %s)", cp.Name, foldin.ProviderName)
	}
	if cp.CloudConfigFile == "" {
		klog.Fatalf("acme-ccm: --cloud-config is required (acme's config: xlb's dataplanes and pools)")
	}
	f, err := os.Open(cp.CloudConfigFile)
	if err != nil {
		klog.Fatalf("acme-ccm: open --cloud-config: %v", err)
	}
	defer f.Close()
	cloud, err := foldin.New(f)
	if err != nil {
		klog.Fatalf("acme-ccm: %s: %v", cp.CloudConfigFile, err)
	}
	return cloud
}
