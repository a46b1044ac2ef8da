package provider

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/provider/annotations"
	"github.com/xlb-dev/xlb/provider/mapping"
)

// toBeDeletedTaint is the cluster autoscaler's taint; the upstream service
// controller leaves such nodes out, and so does the re-sync.
const toBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// Run polls every dataplane's status and re-syncs until ctx ends:
//   - a dataplane seen for the first time, restarted (new bootID), back
//     from an outage, or that missed a change gets a full re-sync: ONE
//     BulkReplace with selector {xlb.dev/cluster: <name>} holding every
//     current LoadBalancer Service, which also deletes leftovers;
//   - every resyncPeriod all dataplanes get a full re-sync, which garbage
//     collects services whose owner no longer exists.
func (lb *LoadBalancer) Run(ctx context.Context) {
	poll := time.NewTicker(lb.cfg.StatusPollPeriod.Duration)
	defer poll.Stop()
	resync := time.NewTicker(lb.cfg.ResyncPeriod.Duration)
	defer resync.Stop()
	lb.PollOnce(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
			lb.PollOnce(ctx)
		case <-resync.C:
			if err := lb.FullSync(ctx, nil); err != nil {
				klog.FromContext(ctx).Error(err, "periodic re-sync")
			}
		}
	}
}

// Start runs Run until stop is closed (the cloudprovider Initialize style).
func (lb *LoadBalancer) Start(stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-stop
		cancel()
	}()
	go lb.Run(ctx)
}

// PollOnce reads each dataplane's status and fully re-syncs the ones that
// need it. Exported for tests and for callers that drive their own loop.
func (lb *LoadBalancer) PollOnce(ctx context.Context) {
	log := klog.FromContext(ctx)
	var need []*dataplane
	var mu sync.Mutex
	fanOut(ctx, lb.dps, func(ctx context.Context, d *dataplane) error {
		st, err := d.dp.Status(ctx)
		d.mu.Lock()
		defer d.mu.Unlock()
		if err != nil {
			if d.healthy {
				log.Error(err, "dataplane unreachable", "dataplane", d.name)
			}
			d.healthy = false
			return nil // not a change failure: don't mark dirty twice
		}
		if !d.healthy || d.dirty || d.bootID != st.BootID {
			log.Info("dataplane needs a full re-sync", "dataplane", d.name, "bootID", st.BootID,
				"previousBootID", d.bootID, "recovered", !d.healthy, "dirty", d.dirty)
			mu.Lock()
			need = append(need, d)
			mu.Unlock()
		}
		d.healthy = true
		// Remember the boot we are about to sync; a failed sync sets dirty.
		d.bootID = st.BootID
		return nil
	})
	if len(need) > 0 {
		if err := lb.FullSync(ctx, need); err != nil {
			log.Error(err, "full re-sync")
		}
	}
}

// FullSync replaces everything of this cluster on the given dataplanes (nil
// = all) with the desired state built from the API. If the API cannot be
// listed nothing is sent: an empty list would wipe every service.
func (lb *LoadBalancer) FullSync(ctx context.Context, dps []*dataplane) error {
	if dps == nil {
		dps = lb.dps
	}
	if err := lb.ensureRebuilt(ctx); err != nil {
		for _, d := range dps {
			d.markDirty()
		}
		return err
	}
	lb.syncMu.Lock()
	defer lb.syncMu.Unlock()
	desired, carry, err := lb.desiredAll(ctx)
	if err != nil {
		for _, d := range dps {
			d.markDirty()
		}
		return fmt.Errorf("full re-sync: %w", err)
	}
	sel := mapping.ClusterSelector(lb.cfg.ClusterName)
	out := fanOut(ctx, dps, func(ctx context.Context, d *dataplane) error {
		services := desired
		if len(carry) > 0 {
			// Services whose current spec is invalid and whose last good
			// state is unknown (fresh process): keep what the dataplane has.
			l, err := d.dp.ListServices(ctx, sel)
			if err != nil {
				return fmt.Errorf("list for carry-over: %w", err)
			}
			services = append([]api.Service(nil), desired...)
			for _, s := range l.Items {
				if carry[types.UID(s.Labels[api.LabelServiceUID])] {
					s.Status = nil
					services = append(services, s)
				}
			}
		}
		res, err := d.dp.BulkReplace(ctx, api.BulkReplace{Selector: sel, Services: services})
		if err != nil {
			return err
		}
		if err := lb.pushBGP(ctx, d); err != nil {
			return err
		}
		d.mu.Lock()
		d.dirty = false
		d.mu.Unlock()
		klog.FromContext(ctx).Info("full re-sync done", "dataplane", d.name, "created", len(res.Created),
			"updated", len(res.Updated), "unchanged", len(res.Unchanged), "deleted", len(res.Deleted))
		return nil
	})
	return out.err()
}

// desiredAll builds the desired services of every LoadBalancer Service that
// holds VIPs. carry lists Services whose spec does not build and that have
// no last-good state in memory.
func (lb *LoadBalancer) desiredAll(ctx context.Context) ([]api.Service, map[types.UID]bool, error) {
	svcs, err := lb.kube.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("list services: %w", err)
	}
	nodeList, err := lb.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("list nodes: %w", err)
	}
	var nodes []*v1.Node
	for i := range nodeList.Items {
		if n := &nodeList.Items[i]; eligibleNode(n) {
			nodes = append(nodes, n)
		}
	}
	var desired []api.Service
	carry := map[types.UID]bool{}
	lb.goodMu.Lock()
	defer lb.goodMu.Unlock()
	for i := range svcs.Items {
		svc := &svcs.Items[i]
		if !lb.Owns(svc) || svc.DeletionTimestamp != nil || svc.UID == "" {
			continue
		}
		ips := lb.alloc.Lookup(key(svc))
		if len(ips) == 0 {
			continue // never ensured (or failed): the service controller owns it
		}
		out, err := buildFor(lb.cfg.ClusterName, lb.cfg, svc, nodes, ips)
		if err != nil {
			if good, ok := lb.lastGood[svc.UID]; ok {
				desired = append(desired, good...)
			} else {
				carry[svc.UID] = true
			}
			continue
		}
		desired = append(desired, out...)
	}
	return desired, carry, nil
}

func buildFor(cluster string, cfg *Config, svc *v1.Service, nodes []*v1.Node, ips []netip.Addr) ([]api.Service, error) {
	o, err := annotations.Parse(svc)
	if err != nil {
		return nil, err
	}
	st, err := mapping.Resolve(svc, o, cfg.Defaults)
	if err != nil {
		return nil, err
	}
	return mapping.Build(mapping.Input{Cluster: cluster, Service: svc, Nodes: nodes, VIPs: ips, Settings: st})
}

// eligibleNode mirrors the upstream service controller's stable node set:
// not being deleted, not excluded by label, not tainted for deletion.
func eligibleNode(n *v1.Node) bool {
	if !n.DeletionTimestamp.IsZero() {
		return false
	}
	if v, ok := n.Labels[v1.LabelNodeExcludeBalancers]; ok {
		if b, err := strconv.ParseBool(v); err != nil || b {
			return false
		}
	}
	for _, t := range n.Spec.Taints {
		if t.Key == toBeDeletedTaint {
			return false
		}
	}
	return true
}
