package provider

import (
	"context"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	cloudprovider "k8s.io/cloud-provider"
)

// ProvidedNodeIPAnnotation is set by the kubelet (with
// --cloud-provider=external) to the value of its --node-ip flag.
const ProvidedNodeIPAnnotation = "alpha.kubernetes.io/provided-node-ip"

// OutOfServiceTaint is the taint an operator puts on a node that is known
// to be powered off (non-graceful node shutdown).
const OutOfServiceTaint = "node.kubernetes.io/out-of-service"

// InstanceType reported for every node.
const InstanceType = "bare-metal"

// Instances is InstancesV2 for bare metal, where the Node object is the
// only inventory there is.
type Instances struct{}

var _ cloudprovider.InstancesV2 = (*Instances)(nil)

// InstanceExists is always true: there is no machine API to ask, and
// false would make the node lifecycle controller delete the Node object.
// Remove the Node yourself when a machine is decommissioned.
func (i *Instances) InstanceExists(_ context.Context, _ *v1.Node) (bool, error) {
	return true, nil
}

// InstanceShutdown is true only when the operator marked the node with the
// out-of-service taint (the node is known to be off); otherwise a NotReady
// node is treated as unreachable, not shut down.
func (i *Instances) InstanceShutdown(_ context.Context, n *v1.Node) (bool, error) {
	for _, t := range n.Spec.Taints {
		if t.Key == OutOfServiceTaint {
			return true, nil
		}
	}
	return false, nil
}

// InstanceMetadata returns provider ID xlb://<node-name>, type bare-metal,
// and the addresses: the kubelet's --node-ip (provided-node-ip annotation,
// one per family) as InternalIPs when set, else what the node reports,
// plus the hostname.
func (i *Instances) InstanceMetadata(_ context.Context, n *v1.Node) (*cloudprovider.InstanceMetadata, error) {
	md := &cloudprovider.InstanceMetadata{
		ProviderID:   ProviderName + "://" + n.Name,
		InstanceType: InstanceType,
		Zone:         n.Labels[v1.LabelTopologyZone],
		Region:       n.Labels[v1.LabelTopologyRegion],
	}
	var addrs []v1.NodeAddress
	seen := map[v1.NodeAddress]bool{}
	add := func(a v1.NodeAddress) {
		if !seen[a] {
			seen[a] = true
			addrs = append(addrs, a)
		}
	}
	if v := n.Annotations[ProvidedNodeIPAnnotation]; v != "" {
		for _, f := range strings.Split(v, ",") {
			if ip, err := netip.ParseAddr(strings.TrimSpace(f)); err == nil {
				add(v1.NodeAddress{Type: v1.NodeInternalIP, Address: ip.String()})
			}
		}
		for _, a := range n.Status.Addresses {
			if a.Type == v1.NodeExternalIP {
				add(a)
			}
		}
	} else {
		for _, a := range n.Status.Addresses {
			if a.Type != v1.NodeHostName {
				add(a)
			}
		}
	}
	host := n.Name
	for _, a := range n.Status.Addresses {
		if a.Type == v1.NodeHostName {
			host = a.Address
		}
	}
	add(v1.NodeAddress{Type: v1.NodeHostName, Address: host})
	md.NodeAddresses = addrs
	return md, nil
}
