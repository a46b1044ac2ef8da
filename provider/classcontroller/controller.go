// Package classcontroller reconciles Services of type LoadBalancer whose spec.loadBalancerClass
// names xlb ("xlb.dev/xlb").
//
// The upstream service controller of k8s.io/cloud-provider skips every Service with a
// loadBalancerClass, so a cluster that already runs another cloud's CCM (or wants xlb only for
// some Services) needs this controller. It drives the SAME cloudprovider.LoadBalancer
// implementation as the upstream controller and keeps the same contract: the finalizer
// service.kubernetes.io/load-balancer-cleanup is added before anything is created and removed only
// after the load balancer is gone; status.loadBalancer is patched through the status subresource;
// node changes call UpdateLoadBalancer; events carry the upstream reasons.
package classcontroller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/apimachinery/pkg/util/wait"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	cloudprovider "k8s.io/cloud-provider"
	cloudapi "k8s.io/cloud-provider/api"
	servicehelper "k8s.io/cloud-provider/service/helpers"
	"k8s.io/klog/v2"
)

// DefaultClass is the spec.loadBalancerClass this controller serves by default.
const DefaultClass = "xlb.dev/xlb"

// ToBeDeletedTaint is put on nodes by the cluster autoscaler before it removes them; such nodes
// get no new load-balancer traffic (as upstream).
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// Event reasons, identical to the upstream service controller so dashboards and alerts work
// for both.
const (
	ReasonEnsuring         = "EnsuringLoadBalancer"
	ReasonEnsured          = "EnsuredLoadBalancer"
	ReasonSyncFailed       = "SyncLoadBalancerFailed"
	ReasonUpdated          = "UpdatedLoadBalancer"
	ReasonUpdateFailed     = "UpdateLoadBalancerFailed"
	ReasonDeleting         = "DeletingLoadBalancer"
	ReasonDeleted          = "DeletedLoadBalancer"
	ReasonDeleteFailed     = "DeleteLoadBalancerFailed"
	ReasonNoAvailableNodes = "UnAvailableLoadBalancer"
)

// Options configures a Controller.
type Options struct {
	// Class is the loadBalancerClass served (default DefaultClass).
	Class string
	// ClusterName is passed to every LoadBalancer call (the CCM's --cluster-name).
	ClusterName string
	// MinRetryDelay and MaxRetryDelay bound the exponential back-off of failed syncs
	// (defaults 5s and 300s, as upstream).
	MinRetryDelay, MaxRetryDelay time.Duration
	// Recorder overrides the event recorder (tests); by default events go to the apiserver.
	Recorder record.EventRecorder
}

// Controller is the loadBalancerClass controller. Create it with New, then call Run.
type Controller struct {
	client      kubernetes.Interface
	balancer    cloudprovider.LoadBalancer
	class       string
	clusterName string

	services       corelisters.ServiceLister
	nodes          corelisters.NodeLister
	servicesSynced cache.InformerSynced
	nodesSynced    cache.InformerSynced

	queue       workqueue.TypedRateLimitingInterface[string]
	recorder    record.EventRecorder
	broadcaster record.EventBroadcaster

	mu sync.Mutex
	// applied is what was last pushed to the load balancer per Service key. It decides between
	// EnsureLoadBalancer (the Service changed) and UpdateLoadBalancer (only the nodes changed),
	// and keeps the last Service so a deletion that bypassed the finalizer can still be cleaned.
	applied map[string]appliedState
}

type appliedState struct {
	service *corev1.Service
	nodes   []nodeKey
	// synced is false while an EnsureLoadBalancer is in flight or after it failed: the load
	// balancer may exist (so cleanup must know about it) but is not known to match service.
	synced bool
}

// nodeKey holds the node fields that change what a load balancer sends traffic to. Unlike the
// upstream controller (whose clouds address instances by provider ID) xlb sends traffic to node
// addresses, so address changes count too.
type nodeKey struct {
	Name       string
	ProviderID string
	Addresses  string
}

// New builds a controller. The informers must come from a factory the caller starts.
func New(client kubernetes.Interface, balancer cloudprovider.LoadBalancer,
	serviceInformer coreinformers.ServiceInformer, nodeInformer coreinformers.NodeInformer, opts Options) (*Controller, error) {
	if client == nil || balancer == nil {
		return nil, errors.New("classcontroller: client and balancer are required")
	}
	if opts.Class == "" {
		opts.Class = DefaultClass
	}
	if opts.MinRetryDelay == 0 {
		opts.MinRetryDelay = 5 * time.Second
	}
	if opts.MaxRetryDelay == 0 {
		opts.MaxRetryDelay = 300 * time.Second
	}
	c := &Controller{
		client:         client,
		balancer:       balancer,
		class:          opts.Class,
		clusterName:    opts.ClusterName,
		services:       serviceInformer.Lister(),
		nodes:          nodeInformer.Lister(),
		servicesSynced: serviceInformer.Informer().HasSynced,
		nodesSynced:    nodeInformer.Informer().HasSynced,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](opts.MinRetryDelay, opts.MaxRetryDelay),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "xlb-service-lb-class"},
		),
		recorder: opts.Recorder,
		applied:  map[string]appliedState{},
	}
	if c.recorder == nil {
		c.broadcaster = record.NewBroadcaster()
		c.recorder = c.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "xlb-service-lb-class-controller"})
	}

	_, err := serviceInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if svc, ok := obj.(*corev1.Service); ok && c.relevant(svc) {
				c.enqueue(svc)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			svc, ok := newObj.(*corev1.Service)
			if ok && c.relevant(svc) {
				c.enqueue(svc)
			}
		},
		DeleteFunc: func(obj any) {
			// Normally the finalizer holds the Service until the update path cleaned up;
			// this catches Services whose finalizer was removed by someone else.
			key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
			if err != nil {
				utilruntime.HandleError(fmt.Errorf("service key: %w", err))
				return
			}
			c.mu.Lock()
			_, known := c.applied[key]
			c.mu.Unlock()
			if known {
				c.queue.Add(key)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("add service event handler: %w", err)
	}
	_, err = nodeInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { c.enqueueAllServices() },
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Node)
			n, ok2 := newObj.(*corev1.Node)
			if ok1 && ok2 && (eligible(o) != eligible(n) || keyOf(o) != keyOf(n)) {
				c.enqueueAllServices()
			}
		},
		DeleteFunc: func(any) { c.enqueueAllServices() },
	})
	if err != nil {
		return nil, fmt.Errorf("add node event handler: %w", err)
	}
	return c, nil
}

// Run processes Services with the given number of workers until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrash()
	defer c.queue.ShutDown()
	if c.broadcaster != nil {
		c.broadcaster.StartStructuredLogging(3)
		c.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.client.CoreV1().Events("")})
		defer c.broadcaster.Shutdown()
	}
	klog.InfoS("Starting loadBalancerClass controller", "class", c.class, "workers", workers)
	if !cache.WaitForNamedCacheSync("xlb-service-lb-class", ctx.Done(), c.servicesSynced, c.nodesSynced) {
		return
	}
	if workers < 1 {
		workers = 1
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			wait.UntilWithContext(ctx, func(ctx context.Context) {
				for c.processNext(ctx) {
				}
			}, time.Second)
		})
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	err := c.sync(ctx, key)
	if err == nil {
		c.queue.Forget(key)
		return true
	}
	var re *cloudapi.RetryError
	if errors.As(err, &re) {
		klog.InfoS("Retrying service later", "service", key, "after", re.RetryAfter(), "err", err)
		c.queue.AddAfter(key, re.RetryAfter())
		return true
	}
	utilruntime.HandleError(fmt.Errorf("sync service %s (retrying with back-off): %w", key, err))
	c.queue.AddRateLimited(key)
	return true
}

// wants reports whether svc asks this controller for a load balancer.
func (c *Controller) wants(svc *corev1.Service) bool {
	return svc.Spec.Type == corev1.ServiceTypeLoadBalancer &&
		svc.Spec.LoadBalancerClass != nil && *svc.Spec.LoadBalancerClass == c.class
}

// relevant reports whether an event for svc concerns this controller: it wants a load
// balancer, or it is one we programmed that now needs cleaning up (deleted, or no longer of
// type LoadBalancer — the apiserver clears the class together with the type), or it may be
// such a one from before a restart (cleanup finalizer, no longer a LoadBalancer).
func (c *Controller) relevant(svc *corev1.Service) bool {
	if c.wants(svc) || maybeOrphan(svc) {
		return true
	}
	c.mu.Lock()
	_, known := c.applied[key(svc)]
	c.mu.Unlock()
	return known
}

func (c *Controller) enqueue(svc *corev1.Service) {
	c.queue.Add(key(svc))
}

func (c *Controller) enqueueAllServices() {
	svcs, err := c.services.List(labels.Everything())
	if err != nil {
		utilruntime.HandleError(fmt.Errorf("list services: %w", err))
		return
	}
	for _, svc := range svcs {
		if c.wants(svc) {
			c.enqueue(svc)
		}
	}
}

func key(svc *corev1.Service) string {
	return svc.Namespace + "/" + svc.Name
}

// sync reconciles one Service key.
func (c *Controller) sync(ctx context.Context, k string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(k)
	if err != nil {
		return fmt.Errorf("split key %q: %w", k, err)
	}
	svc, err := c.services.Services(ns).Get(name)
	switch {
	case apierrors.IsNotFound(err):
		return c.syncGone(ctx, k)
	case err != nil:
		return fmt.Errorf("get service %s from cache: %w", k, err)
	}
	// Objects from the informer cache are shared; never modify them.
	svc = svc.DeepCopy()

	c.mu.Lock()
	prev, known := c.applied[k]
	c.mu.Unlock()
	if known && prev.service.UID != svc.UID {
		// Deleted and re-created under the same name before we saw the deletion.
		if err := c.deleteLoadBalancer(ctx, prev.service); err != nil {
			return err
		}
		c.forget(k)
		known = false
	}

	wants := c.wants(svc)
	if !wants && !known {
		if maybeOrphan(svc) {
			return c.cleanupOrphan(ctx, k, svc)
		}
		return nil // not ours
	}
	if servicehelper.HasLBFinalizer(svc) && (svc.DeletionTimestamp != nil || !wants) {
		return c.cleanup(ctx, k, svc)
	}
	if !wants {
		// Ours until now, no longer of type LoadBalancer and no finalizer to hold it.
		if err := c.deleteLoadBalancer(ctx, prev.service); err != nil {
			return err
		}
		c.forget(k)
		return nil
	}
	if svc.DeletionTimestamp != nil {
		// Being deleted without our finalizer: nothing was created for it by us.
		return nil
	}

	nodes, err := c.eligibleNodes()
	if err != nil {
		return err
	}
	nodeKeys := keysOf(nodes)
	switch {
	case !known || !prev.synced || !sameIntent(prev.service, svc) || !servicehelper.HasLBFinalizer(svc):
		return c.ensure(ctx, k, svc, nodes, nodeKeys)
	case !slices.Equal(prev.nodes, nodeKeys):
		return c.update(ctx, k, svc, nodes, nodeKeys)
	}
	return nil
}

// ensure creates or updates the load balancer and publishes its status.
func (c *Controller) ensure(ctx context.Context, k string, svc *corev1.Service, nodes []*corev1.Node, nodeKeys []nodeKey) error {
	c.recorder.Event(svc, corev1.EventTypeNormal, ReasonEnsuring, "Ensuring load balancer")
	// The finalizer goes on before anything exists in the dataplane, so the Service cannot
	// disappear while a load balancer is left behind.
	svc, err := c.addFinalizer(ctx, svc)
	if err != nil {
		c.recorder.Eventf(svc, corev1.EventTypeWarning, ReasonSyncFailed, "Error syncing load balancer: failed to add load balancer cleanup finalizer: %v", err)
		return fmt.Errorf("add finalizer to %s: %w", k, err)
	}
	if len(nodes) == 0 {
		c.recorder.Event(svc, corev1.EventTypeWarning, ReasonNoAvailableNodes, "There are no available nodes for LoadBalancer")
	}
	// Remember the Service before anything is created, so that if it disappears from here
	// on (even without our finalizer) its load balancer is still cleaned up.
	c.remember(k, svc, nodeKeys, false)
	status, err := c.balancer.EnsureLoadBalancer(ctx, c.clusterName, svc, nodes)
	if err != nil {
		if errors.Is(err, cloudprovider.ImplementedElsewhere) {
			return nil
		}
		c.recorder.Eventf(svc, corev1.EventTypeWarning, ReasonSyncFailed, "Error syncing load balancer: %v", err)
		return fmt.Errorf("ensure load balancer for %s: %w", k, err)
	}
	if status == nil {
		err := errors.New("EnsureLoadBalancer returned a nil status")
		c.recorder.Eventf(svc, corev1.EventTypeWarning, ReasonSyncFailed, "Error syncing load balancer: %v", err)
		return fmt.Errorf("ensure load balancer for %s: %w", k, err)
	}
	if err := c.patchStatus(ctx, svc, status); err != nil {
		if apierrors.IsNotFound(err) {
			// Deleted meanwhile; its delete event brings it back here to clean up.
			return nil
		}
		return fmt.Errorf("update load balancer status of %s: %w", k, err)
	}
	c.remember(k, svc, nodeKeys, true)
	c.recorder.Event(svc, corev1.EventTypeNormal, ReasonEnsured, "Ensured load balancer")
	return nil
}

// update pushes a changed node set without touching anything else.
func (c *Controller) update(ctx context.Context, k string, svc *corev1.Service, nodes []*corev1.Node, nodeKeys []nodeKey) error {
	err := c.balancer.UpdateLoadBalancer(ctx, c.clusterName, svc, nodes)
	if err != nil && !errors.Is(err, cloudprovider.ImplementedElsewhere) {
		c.recorder.Eventf(svc, corev1.EventTypeWarning, ReasonUpdateFailed,
			"Error updating load balancer with new hosts %v, error: %v", names(nodes), err)
		return fmt.Errorf("update load balancer hosts of %s: %w", k, err)
	}
	c.remember(k, svc, nodeKeys, true)
	if len(nodes) == 0 {
		c.recorder.Event(svc, corev1.EventTypeWarning, ReasonNoAvailableNodes, "There are no available nodes for LoadBalancer")
	} else {
		c.recorder.Event(svc, corev1.EventTypeNormal, ReasonUpdated, "Updated load balancer with new hosts")
	}
	return nil
}

// cleanup deletes the load balancer of a Service that holds our finalizer and is being deleted
// or no longer wants a load balancer, then clears its status and removes the finalizer.
func (c *Controller) cleanup(ctx context.Context, k string, svc *corev1.Service) error {
	if err := c.deleteLoadBalancer(ctx, svc); err != nil {
		return err
	}
	c.forget(k)
	updated, err := c.removeFinalizer(ctx, svc)
	if err != nil {
		return fmt.Errorf("remove load balancer cleanup finalizer from %s: %w", k, err)
	}
	c.recorder.Event(svc, corev1.EventTypeNormal, ReasonDeleted, "Deleted load balancer")
	if updated == nil {
		return nil // the Service is gone with its finalizer
	}
	if err := c.patchStatus(ctx, updated, &corev1.LoadBalancerStatus{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("clear load balancer status of %s: %w", k, err)
	}
	return nil
}

// maybeOrphan: a Service that holds the cleanup finalizer but is no longer a LoadBalancer. If
// it changed type while this controller was down, nothing in it says it was ours (the apiserver
// cleared its class and status), so the load balancer is asked.
func maybeOrphan(svc *corev1.Service) bool {
	return svc.Spec.Type != corev1.ServiceTypeLoadBalancer && servicehelper.HasLBFinalizer(svc)
}

// cleanupOrphan cleans up a maybeOrphan Service only if our load balancer has something for
// it. Otherwise the finalizer belongs to another controller (e.g. another CCM's service
// controller) and is left to it.
func (c *Controller) cleanupOrphan(ctx context.Context, k string, svc *corev1.Service) error {
	_, exists, err := c.balancer.GetLoadBalancer(ctx, c.clusterName, svc)
	if err != nil {
		return fmt.Errorf("check whether %s has a load balancer: %w", k, err)
	}
	if !exists {
		return nil
	}
	return c.cleanup(ctx, k, svc)
}

// syncGone handles a Service that vanished from the cache while we still had state for it.
func (c *Controller) syncGone(ctx context.Context, k string) error {
	c.mu.Lock()
	prev, known := c.applied[k]
	c.mu.Unlock()
	if !known {
		return nil
	}
	if err := c.deleteLoadBalancer(ctx, prev.service); err != nil {
		return err
	}
	c.forget(k)
	return nil
}

func (c *Controller) deleteLoadBalancer(ctx context.Context, svc *corev1.Service) error {
	_, exists, err := c.balancer.GetLoadBalancer(ctx, c.clusterName, svc)
	if err != nil {
		return fmt.Errorf("check whether the load balancer of %s exists before cleanup: %w", key(svc), err)
	}
	if !exists {
		return nil
	}
	c.recorder.Event(svc, corev1.EventTypeNormal, ReasonDeleting, "Deleting load balancer")
	err = c.balancer.EnsureLoadBalancerDeleted(ctx, c.clusterName, svc)
	if err != nil && !errors.Is(err, cloudprovider.ImplementedElsewhere) {
		c.recorder.Eventf(svc, corev1.EventTypeWarning, ReasonDeleteFailed, "Error deleting load balancer: %v", err)
		return fmt.Errorf("delete load balancer of %s: %w", key(svc), err)
	}
	return nil
}

func (c *Controller) remember(k string, svc *corev1.Service, nodes []nodeKey, synced bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.applied[k] = appliedState{service: svc.DeepCopy(), nodes: nodes, synced: synced}
}

func (c *Controller) forget(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.applied, k)
}

// sameIntent reports whether nothing that can change the load balancer changed. Spec and
// annotations are compared whole: an unneeded EnsureLoadBalancer is idempotent, a missed one
// is a bug.
func sameIntent(a, b *corev1.Service) bool {
	return a.UID == b.UID &&
		apiequality.Semantic.DeepEqual(a.Spec, b.Spec) &&
		reflect.DeepEqual(a.Annotations, b.Annotations)
}

func (c *Controller) eligibleNodes() ([]*corev1.Node, error) {
	all, err := c.nodes.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var out []*corev1.Node
	for _, n := range all {
		if eligible(n) {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b *corev1.Node) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out, nil
}

// eligible applies the upstream service controller's stable node-set predicates: not being
// deleted, not labelled node.kubernetes.io/exclude-from-external-load-balancers (any value that
// does not parse as false excludes, as upstream), not tainted for removal by the autoscaler.
// Readiness is deliberately not required (upstream dropped it too): health is the
// dataplane's probes' job, and flapping node readiness must not churn every load balancer.
func eligible(n *corev1.Node) bool {
	if n.DeletionTimestamp != nil {
		return false
	}
	if v, ok := n.Labels[corev1.LabelNodeExcludeBalancers]; ok {
		exclude, err := strconv.ParseBool(v)
		if err != nil || exclude {
			return false
		}
	}
	for _, t := range n.Spec.Taints {
		if t.Key == ToBeDeletedTaint {
			return false
		}
	}
	return true
}

func keyOf(n *corev1.Node) nodeKey {
	var addrs string
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
			addrs += string(a.Type) + "=" + a.Address + ";"
		}
	}
	return nodeKey{Name: n.Name, ProviderID: n.Spec.ProviderID, Addresses: addrs}
}

func keysOf(nodes []*corev1.Node) []nodeKey {
	out := make([]nodeKey, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, keyOf(n))
	}
	return out
}

func names(nodes []*corev1.Node) []string {
	out := make([]string, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n.Name)
	}
	return out
}

func (c *Controller) addFinalizer(ctx context.Context, svc *corev1.Service) (*corev1.Service, error) {
	if servicehelper.HasLBFinalizer(svc) {
		return svc, nil
	}
	updated := svc.DeepCopy()
	updated.Finalizers = append(updated.Finalizers, servicehelper.LoadBalancerCleanupFinalizer)
	return c.patch(ctx, svc, updated)
}

// removeFinalizer returns the patched Service, or nil when the Service no longer exists.
func (c *Controller) removeFinalizer(ctx context.Context, svc *corev1.Service) (*corev1.Service, error) {
	if !servicehelper.HasLBFinalizer(svc) {
		return svc, nil
	}
	updated := svc.DeepCopy()
	updated.Finalizers = slices.DeleteFunc(updated.Finalizers, func(f string) bool {
		return f == servicehelper.LoadBalancerCleanupFinalizer
	})
	out, err := c.patch(ctx, svc, updated)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return out, err
}

func (c *Controller) patchStatus(ctx context.Context, svc *corev1.Service, status *corev1.LoadBalancerStatus) error {
	if servicehelper.LoadBalancerStatusEqual(&svc.Status.LoadBalancer, status) {
		return nil
	}
	updated := svc.DeepCopy()
	updated.Status.LoadBalancer = *status
	_, err := c.patch(ctx, svc, updated)
	return err
}

// patch sends a strategic-merge patch of metadata and status through the status subresource,
// like the upstream controller, so it needs only services/status patch permission and can
// never change the spec.
func (c *Controller) patch(ctx context.Context, oldSvc, newSvc *corev1.Service) (*corev1.Service, error) {
	newSvc = newSvc.DeepCopy()
	newSvc.Spec = oldSvc.Spec
	oldData, err := json.Marshal(oldSvc)
	if err != nil {
		return nil, fmt.Errorf("marshal service: %w", err)
	}
	newData, err := json.Marshal(newSvc)
	if err != nil {
		return nil, fmt.Errorf("marshal service: %w", err)
	}
	p, err := strategicpatch.CreateTwoWayMergePatch(oldData, newData, corev1.Service{})
	if err != nil {
		return nil, fmt.Errorf("create patch: %w", err)
	}
	return c.client.CoreV1().Services(oldSvc.Namespace).Patch(ctx, oldSvc.Name,
		types.StrategicMergePatchType, p, metav1.PatchOptions{}, "status")
}
