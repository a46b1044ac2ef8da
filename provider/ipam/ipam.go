// Package ipam allocates Service VIPs from configured pools.
//
// Rules (documented in docs/cloud-config.md):
//   - one VIP per IP family per Service, shared by all its ports (a
//     multi-port Service never burns one address per port);
//   - pool choice: the pool named by the Service, else the pools whose
//     namespace rules list the Service's namespace, else the default pools;
//   - static VIPs must lie inside a pool the Service may use, so the
//     allocator can never hand them to someone else;
//   - Services with the same sharing key share a VIP when their (port,
//     protocol) sets do not overlap; an overlap is an error;
//   - an address is freed when its last owner releases it;
//   - Rebuild restores state from existing Services' status before any new
//     allocation, so VIPs survive a controller restart.
//
// The Allocator is safe for concurrent use: the service controller runs
// several workers.
package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/xlb-dev/xlb/provider/config"
)

// Family is an IP family.
type Family int

// IP families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// FamilyOf returns the family of an address.
func FamilyOf(ip netip.Addr) Family {
	if ip.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// PortProto is one (port, protocol) a Service exposes on its VIP.
type PortProto struct {
	Port     int32
	Protocol string
}

func (p PortProto) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Protocol) }

// Pool is one address pool.
type Pool struct {
	Name          string
	Ranges        []config.Range
	AvoidBuggyIPs bool
	Namespaces    []string
	Default       bool
}

// PoolsFromConfig converts validated cloud-config pools.
func PoolsFromConfig(c *config.Config) ([]Pool, error) {
	rs, err := c.PoolRanges()
	if err != nil {
		return nil, err
	}
	var out []Pool
	for _, p := range c.Pools {
		out = append(out, Pool{Name: p.Name, Ranges: rs[p.Name], AvoidBuggyIPs: p.AvoidBuggyIPs == nil || *p.AvoidBuggyIPs, Namespaces: p.Namespaces, Default: p.Default})
	}
	return out, nil
}

func (p *Pool) allows(ns string) bool {
	return len(p.Namespaces) == 0 || slices.Contains(p.Namespaces, ns)
}

func (p *Pool) hasFamily(f Family) bool {
	for _, r := range p.Ranges {
		if FamilyOf(r.First) == f {
			return true
		}
	}
	return false
}

// contains reports whether ip is an allocatable address of the pool
// (inside a range and not a network/broadcast address of a CIDR).
func (p *Pool) contains(ip netip.Addr) bool {
	for _, r := range p.Ranges {
		if r.First.BitLen() == ip.BitLen() && r.First.Compare(ip) <= 0 && ip.Compare(r.Last) <= 0 {
			return !networkOrBroadcast(r, ip)
		}
	}
	return false
}

// networkOrBroadcast: the first and last address of an IPv4 CIDR (up to
// /30) and the first address of an IPv6 CIDR (up to /126, the Subnet-Router
// anycast address) are never handed out.
func networkOrBroadcast(r config.Range, ip netip.Addr) bool {
	if !r.Prefix.IsValid() {
		return false
	}
	if ip.Is4() {
		return r.Prefix.Bits() <= 30 && (ip == r.First || ip == r.Last)
	}
	return r.Prefix.Bits() <= 126 && ip == r.First
}

func buggy(ip netip.Addr) bool {
	if !ip.Is4() {
		return false
	}
	last := ip.As4()[3]
	return last == 0 || last == 255
}

// Request asks for the VIPs of one Service.
type Request struct {
	Key       string // namespace/name
	Namespace string
	Pool      string // explicit pool ("" = choose)
	// Families wanted, in order. With RequireAll every family must be
	// allocated (SingleStack, RequireDualStack); without it each family is
	// best effort and at least one must succeed (PreferDualStack).
	Families   []Family
	RequireAll bool
	Static     []netip.Addr // at most one per family
	SharingKey string
	Ports      []PortProto
}

// Result of an allocation.
type Result struct {
	IPs []netip.Addr // IPv4 first
	// Skipped explains families of a best-effort request that got no VIP.
	Skipped []error
}

type entry struct {
	pool       string
	sharingKey string
	owners     map[string][]PortProto
}

// Allocator hands out VIPs. The zero value is not usable; use New.
type Allocator struct {
	pools []Pool

	mu   sync.Mutex
	ips  map[netip.Addr]*entry
	keys map[string][]netip.Addr
}

// New returns an allocator over pools (as validated by the config package).
func New(pools []Pool) *Allocator {
	return &Allocator{pools: pools, ips: map[netip.Addr]*entry{}, keys: map[string][]netip.Addr{}}
}

// ExhaustedError reports that no pool had a free address.
type ExhaustedError struct {
	Pools  []string
	Family Family
}

func (e *ExhaustedError) Error() string {
	return fmt.Sprintf("pool %s has no free %s address", strings.Join(e.Pools, ", "), e.Family)
}

// Lookup returns the VIPs currently held by key.
func (a *Allocator) Lookup(key string) []netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.keys[key])
}

// PoolOf returns the pool an address belongs to ("" if none).
func (a *Allocator) PoolOf(ip netip.Addr) string {
	for i := range a.pools {
		if a.pools[i].contains(ip) {
			return a.pools[i].Name
		}
	}
	return ""
}

// Allocate returns the VIPs for req, keeping the ones the key already holds
// when they still satisfy the request. On error nothing changes.
func (a *Allocator) Allocate(req Request) (Result, error) {
	if len(req.Families) == 0 {
		return Result{}, errors.New("no IP family requested")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	cur := a.keys[req.Key]
	var res Result
	var plan []netip.Addr
	for _, f := range req.Families {
		ip, err := a.pick(req, f, cur)
		if err != nil {
			if req.RequireAll {
				return Result{}, err
			}
			res.Skipped = append(res.Skipped, err)
			continue
		}
		plan = append(plan, ip)
	}
	if len(plan) == 0 {
		return Result{}, errors.Join(res.Skipped...)
	}
	a.release(req.Key)
	for _, ip := range plan {
		e := a.ips[ip]
		if e == nil {
			e = &entry{pool: a.PoolOf(ip), owners: map[string][]PortProto{}}
			a.ips[ip] = e
		}
		e.sharingKey = req.SharingKey
		e.owners[req.Key] = slices.Clone(req.Ports)
	}
	sortIPs(plan)
	a.keys[req.Key] = plan
	res.IPs = slices.Clone(plan)
	return res, nil
}

// Revert undoes an Allocate whose result could not be used (the mapping
// rejected it): the key gets back the addresses it held before, as far as
// no one else took them in between.
func (a *Allocator) Revert(req Request, prev []netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.release(req.Key)
	var kept []netip.Addr
	for _, ip := range prev {
		if a.usable(req, ip) != nil {
			continue
		}
		e := a.ips[ip]
		if e == nil {
			e = &entry{pool: a.PoolOf(ip), sharingKey: req.SharingKey, owners: map[string][]PortProto{}}
			a.ips[ip] = e
		}
		e.owners[req.Key] = slices.Clone(req.Ports)
		kept = append(kept, ip)
	}
	if len(kept) > 0 {
		a.keys[req.Key] = kept
	}
}

// Release frees every VIP of key that no other Service shares.
func (a *Allocator) Release(key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.release(key)
}

func (a *Allocator) release(key string) {
	for _, ip := range a.keys[key] {
		if e := a.ips[ip]; e != nil {
			delete(e.owners, key)
			if len(e.owners) == 0 {
				delete(a.ips, ip)
			}
		}
	}
	delete(a.keys, key)
}

// pick chooses the VIP of family f for req.
func (a *Allocator) pick(req Request, f Family, cur []netip.Addr) (netip.Addr, error) {
	candidates, err := a.candidates(req, f)
	if err != nil {
		return netip.Addr{}, err
	}
	for _, ip := range req.Static {
		if FamilyOf(ip) != f {
			continue
		}
		if !a.mayUse(req, ip) {
			return netip.Addr{}, fmt.Errorf("static IP %s is not inside a pool this Service may use (%s)", ip, a.describeAllowed(req))
		}
		if err := a.usable(req, ip); err != nil {
			return netip.Addr{}, err
		}
		return ip, nil
	}
	// Keep what the key already has: VIPs must not move on a resync.
	for _, ip := range cur {
		if FamilyOf(ip) == f && a.mayUse(req, ip) && a.usable(req, ip) == nil {
			return ip, nil
		}
	}
	if req.SharingKey != "" {
		var clash error
		for _, ip := range a.sortedIPs() {
			e := a.ips[ip]
			if e.sharingKey != req.SharingKey || FamilyOf(ip) != f || !a.mayUse(req, ip) {
				continue
			}
			if err := a.usable(req, ip); err != nil {
				clash = err
				continue
			}
			return ip, nil
		}
		if clash != nil {
			return netip.Addr{}, clash
		}
	}
	for _, p := range candidates {
		if ip, ok := a.firstFree(p, f); ok {
			return ip, nil
		}
	}
	var names []string
	for _, p := range candidates {
		names = append(names, p.Name)
	}
	return netip.Addr{}, &ExhaustedError{Pools: names, Family: f}
}

// candidates are the pools new addresses of family f come from.
func (a *Allocator) candidates(req Request, f Family) ([]*Pool, error) {
	if req.Pool != "" {
		p := a.pool(req.Pool)
		if p == nil {
			return nil, fmt.Errorf("pool %q does not exist (allowed: %s)", req.Pool, strings.Join(a.poolNames(), ", "))
		}
		if !p.allows(req.Namespace) {
			return nil, fmt.Errorf("pool %q may only be used by namespaces %s", p.Name, strings.Join(p.Namespaces, ", "))
		}
		if !p.hasFamily(f) {
			return nil, fmt.Errorf("pool %q has no %s addresses", p.Name, f)
		}
		return []*Pool{p}, nil
	}
	var byNS, defaults []*Pool
	for i := range a.pools {
		p := &a.pools[i]
		if !p.hasFamily(f) {
			continue
		}
		if slices.Contains(p.Namespaces, req.Namespace) {
			byNS = append(byNS, p)
		} else if p.Default && p.allows(req.Namespace) {
			defaults = append(defaults, p)
		}
	}
	if len(byNS) > 0 {
		return byNS, nil
	}
	if len(defaults) > 0 {
		return defaults, nil
	}
	return nil, fmt.Errorf("no %s pool for namespace %q: set annotation xlb.dev/pool or configure a default pool", f, req.Namespace)
}

// mayUse reports whether ip lies in a pool req may take addresses from.
func (a *Allocator) mayUse(req Request, ip netip.Addr) bool {
	for i := range a.pools {
		p := &a.pools[i]
		if !p.contains(ip) {
			continue
		}
		if req.Pool != "" {
			return p.Name == req.Pool && p.allows(req.Namespace)
		}
		return p.allows(req.Namespace)
	}
	return false
}

func (a *Allocator) describeAllowed(req Request) string {
	if req.Pool != "" {
		return "pool " + req.Pool
	}
	var n []string
	for i := range a.pools {
		if a.pools[i].allows(req.Namespace) {
			n = append(n, a.pools[i].Name)
		}
	}
	return "pools " + strings.Join(n, ", ")
}

// usable checks that req may own ip given its other owners.
func (a *Allocator) usable(req Request, ip netip.Addr) error {
	e := a.ips[ip]
	if e == nil {
		return nil
	}
	var others []string
	for k := range e.owners {
		if k != req.Key {
			others = append(others, k)
		}
	}
	if len(others) == 0 {
		return nil
	}
	sort.Strings(others)
	if req.SharingKey == "" || e.sharingKey != req.SharingKey {
		return fmt.Errorf("IP %s is in use by %s (share it by giving both Services the same xlb.dev/allow-shared-ip key)", ip, strings.Join(others, ", "))
	}
	for _, k := range others {
		for _, theirs := range e.owners[k] {
			if slices.Contains(req.Ports, theirs) {
				return fmt.Errorf("sharing key %q: IP %s already serves %s for %s", req.SharingKey, ip, theirs, k)
			}
		}
	}
	return nil
}

func (a *Allocator) firstFree(p *Pool, f Family) (netip.Addr, bool) {
	for _, r := range p.Ranges {
		if FamilyOf(r.First) != f {
			continue
		}
		for ip := r.First; ip.IsValid() && ip.Compare(r.Last) <= 0; ip = ip.Next() {
			if networkOrBroadcast(r, ip) || (p.AvoidBuggyIPs && buggy(ip)) {
				continue
			}
			if _, used := a.ips[ip]; !used {
				return ip, true
			}
		}
	}
	return netip.Addr{}, false
}

func (a *Allocator) pool(name string) *Pool {
	for i := range a.pools {
		if a.pools[i].Name == name {
			return &a.pools[i]
		}
	}
	return nil
}

func (a *Allocator) poolNames() []string {
	var n []string
	for _, p := range a.pools {
		n = append(n, p.Name)
	}
	return n
}

func (a *Allocator) sortedIPs() []netip.Addr {
	ips := make([]netip.Addr, 0, len(a.ips))
	for ip := range a.ips {
		ips = append(ips, ip)
	}
	sortIPs(ips)
	return ips
}

func sortIPs(ips []netip.Addr) {
	slices.SortFunc(ips, func(x, y netip.Addr) int { return x.Compare(y) })
}

// Holding is an allocation found in an existing Service's status.
type Holding struct {
	Key, Namespace string
	IPs            []netip.Addr
	SharingKey     string
	Ports          []PortProto
}

// Rebuild records existing allocations (from status.loadBalancer.ingress)
// before any new allocation, so VIPs survive a restart. Addresses outside
// every pool are still recorded (they are live on the wire); the next
// Ensure of their Service decides whether they may stay. A conflicting
// holding (same IP, incompatible owners) is skipped and reported.
func (a *Allocator) Rebuild(hs []Holding) []error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for _, h := range hs {
		req := Request{Key: h.Key, Namespace: h.Namespace, SharingKey: h.SharingKey, Ports: h.Ports}
		var kept []netip.Addr
		seen := map[Family]bool{}
		for _, ip := range h.IPs {
			ip = ip.Unmap()
			if seen[FamilyOf(ip)] {
				errs = append(errs, fmt.Errorf("rebuild %s: more than one %s VIP in status, ignoring %s", h.Key, FamilyOf(ip), ip))
				continue
			}
			if err := a.usable(req, ip); err != nil {
				errs = append(errs, fmt.Errorf("rebuild %s: %w", h.Key, err))
				continue
			}
			seen[FamilyOf(ip)] = true
			e := a.ips[ip]
			if e == nil {
				e = &entry{pool: a.PoolOf(ip), sharingKey: h.SharingKey, owners: map[string][]PortProto{}}
				a.ips[ip] = e
			}
			e.owners[h.Key] = slices.Clone(h.Ports)
			kept = append(kept, ip)
		}
		if len(kept) > 0 {
			sortIPs(kept)
			a.keys[h.Key] = append(a.keys[h.Key], kept...)
		}
	}
	return errs
}

// Usage returns the number of addresses in use per pool (for status and metrics).
func (a *Allocator) Usage() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	u := map[string]int{}
	for _, e := range a.ips {
		u[e.pool]++
	}
	return u
}
