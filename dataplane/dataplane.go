package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/xlb-dev/xlb/dataplane/maglev"
)

// Config configures a Dataplane. Zero values take the documented defaults.
type Config struct {
	// Hook is where the program is attached: HookTCX (default) or HookXDP.
	Hook Hook
	// XDPGeneric attaches XDP in generic (skb) mode; native otherwise.
	XDPGeneric bool
	// Interfaces are attached by New. When non-empty, interfaces found
	// attached from pins but absent here are detached by New.
	Interfaces []string
	// ConntrackFlows is the number of tracked flows (default 1,000,000);
	// the conntrack map holds two entries per flow.
	ConntrackFlows int
	// MaxServices bounds the number of services (default 16384; id 0 is
	// reserved, so MaxServices-1 are usable).
	MaxServices int
	// MaxBackends bounds the number of backends over all services
	// (default 65536, id 0 reserved).
	MaxBackends int
	// PinPath is a bpffs directory (e.g. /sys/fs/bpf/xlb) where maps and
	// links are pinned so that a restarted xlbd keeps its conntrack and
	// traffic keeps flowing while it restarts. Empty: nothing is pinned and
	// everything vanishes with the process (tests).
	PinPath string
	// RecreateIncompatibleMaps deletes pinned maps whose layout or capacity
	// no longer matches (e.g. ConntrackFlows changed) and creates them
	// afresh, losing their content (established flows are re-balanced).
	// When false, New fails with an error wrapping ErrMapIncompatible.
	RecreateIncompatibleMaps bool
	// MaglevSeed seeds the Maglev permutations and the datapath's flow
	// hash. Every node of a cluster must use the same seed so that a flow
	// lands on the same backend whichever node receives it.
	MaglevSeed uint32
	// MaglevMinTableSize is the smallest Maglev table, in slots (default
	// 16381, one of maglev.Sizes()). A table has the smallest listed size
	// ≥ max(MaglevMinTableSize, 200 × configured backends). Each slot costs
	// 8 bytes of kernel memory (128 KiB per service at 16381). Smaller
	// tables save memory but removing a backend moves more flows of the
	// surviving ones (docs/datapath.md). Changing it reshuffles the tables
	// of the services it applies to, and every node of a cluster must use
	// the same value (like MaglevSeed).
	MaglevMinTableSize uint32
	// FragmentEntries is the capacity of the fragment table (default
	// 65536): IP datagrams whose later fragments follow their translated
	// first fragment, 160 bytes of kernel memory each (docs/datapath.md,
	// Fragments).
	FragmentEntries int
	// TCPClosingTimeout is the conntrack lifetime after FIN/RST (default 10s).
	TCPClosingTimeout time.Duration
	// SYNTimeout is the conntrack lifetime of a flow until the backend's
	// first reply (default 5s, whole seconds); then the service's idle
	// timeout applies. A flood of SYNs from spoofed sources never gets a
	// reply, so its entries live this long.
	SYNTimeout time.Duration
	// NewFlowBudget bounds conntrack insertions per CPU per second (0:
	// unlimited). Beyond it new flows of default-mode services are served
	// without conntrack (backend by the flow hash, replies through
	// rev_nat); fullnat/onearm ones are dropped (XLB_DROP_CT_BUDGET).
	// DefaultNewFlowBudget derives a value from the table size.
	NewFlowBudget int
	// Logger receives operational messages (default slog.Default()).
	Logger *slog.Logger

	// stubPrograms replaces the datapath programs by ones that pass every
	// packet, so that tests of the control plane (maps, pins, links) do not
	// depend on the C datapath verifying on this kernel.
	stubPrograms bool
}

// Defaults.
const (
	DefaultConntrackFlows  = 1_000_000
	DefaultFragmentEntries = 65536
	DefaultMaxServices     = 16384
	DefaultMaxBackends     = 65536
	DefaultTCPIdleTimeout  = 240 * time.Second
	DefaultUDPIdleTimeout  = 60 * time.Second
	DefaultAffinityTimeout = 10800 * time.Second
	// The SNAT port range: outside Linux's default ephemeral range
	// (32768-60999) and the Kubernetes NodePort range (30000-32767), so that
	// the host's own connections do not collide with SNAT ports (see
	// docs/datapath.md). xlbd makes it configurable and reserves it.
	DefaultSNATPortMin          = 10000
	DefaultSNATPortMax          = 29999
	DefaultTCPClosingTimeout    = 10 * time.Second
	DefaultSYNTimeout           = 5 * time.Second
	defaultActiveRecomputeEvery = time.Minute
)

// ErrMapIncompatible is wrapped by New when a pinned map does not match the
// map the configuration asks for.
var ErrMapIncompatible = ebpf.ErrMapIncompatible

// Dataplane is the Go handle of the loaded eBPF datapath. All methods are
// safe for concurrent use.
type Dataplane struct {
	cfg       Config
	log       *slog.Logger
	objs      xlbObjects
	innerSpec *ebpf.MapSpec
	pinned    []string // names of the maps pinned under PinPath

	mu       sync.Mutex
	svcs     map[xlbSvcKey]*svcState
	byName   map[string]*svcState
	byID     map[uint32]*svcState
	svcIDs   *idAlloc
	beIDs    *idAlloc
	beGen    []uint32 // last generation written per backend id
	vipCount map[xlbVipKey]uint32
	health   map[beRef]uint8 // SetBackendState overrides (beStateDown, beStateDraining)
	links    map[string]*attachment
	ifAddrs  map[uint32]xlbIfAddr
	revNat   map[xlbBeKey]xlbRevNatVal // what rev_nat holds

	reapMu         sync.Mutex
	lastActiveCalc time.Time
	flowCounts     map[uint32]int // forward entries per service id, from the last walk
	flowCountsAt   time.Time
	ctEntries      int
	// flowCountsMaxAge, when longer than flowCountMaxAge, is how old the
	// counts may be: RunReaper sets it to its pause when walks are long,
	// so that readers of the counts do not walk in between.
	flowCountsMaxAge time.Duration
}

// beRef names one backend of one service.
type beRef struct {
	svc  xlbSvcKey
	addr netip.AddrPort
}

// svcState is what Go believes the maps hold for one service.
type svcState struct {
	name     string
	spec     Service // normalised
	key      xlbSvcKey
	id       uint32
	info     xlbSvcInfo
	backends map[netip.AddrPort]*beState
	tableSum uint64 // tableSum of the installed selection table
	allow    []xlbAllowKey
	// selLenMax is the largest sel_len the services map may hold for this
	// service (a failed Apply may or may not have written the new one);
	// new tables are padded to it.
	selLenMax uint32
	// leaving are backends no longer desired, freed once the table
	// without them is in place.
	leaving []*beState
	// dirty forces a rewrite of everything on the next Apply (set after a
	// failed write left the maps in an unknown state).
	dirty bool
}

type beState struct {
	id  uint32
	val xlbBackend
}

// New loads the datapath into the kernel (re-using pinned maps when
// Config.PinPath holds them), rebuilds its view of the installed services
// from those maps, re-uses pinned links by swapping in the new program, and
// attaches Config.Interfaces.
func New(ctx context.Context, cfg Config) (*Dataplane, error) {
	cfg = withDefaults(cfg)
	if cfg.Hook != HookTCX && cfg.Hook != HookXDP {
		return nil, fmt.Errorf("config hook %q: allowed tcx, xdp", cfg.Hook)
	}
	if !maglev.ValidMinSize(cfg.MaglevMinTableSize) {
		return nil, fmt.Errorf("config maglevMinTableSize %d: allowed 0 (default %d) or one of %s",
			cfg.MaglevMinTableSize, maglev.DefaultMinSize, maglev.SizesString())
	}
	spec, err := loadXlb()
	if err != nil {
		return nil, fmt.Errorf("load datapath spec: %w", err)
	}
	sizes := map[string]int{
		xlbMapServices: cfg.MaxServices, xlbMapVips: cfg.MaxServices, xlbMapSelTables: cfg.MaxServices,
		xlbMapSvcStats: cfg.MaxServices, xlbMapRrCursor: cfg.MaxServices,
		xlbMapBackends: cfg.MaxBackends, xlbMapBackendStats: cfg.MaxBackends, xlbMapBackendActive: cfg.MaxBackends,
		xlbMapConntrack: 2 * cfg.ConntrackFlows,
		xlbMapXlbFrags:  cfg.FragmentEntries,
	}
	for name, n := range sizes {
		ms, ok := spec.Maps[name]
		if !ok {
			return nil, fmt.Errorf("datapath spec has no map %q", name)
		}
		ms.MaxEntries = uint32(n)
	}
	if cfg.stubPrograms {
		for name, ps := range spec.Programs {
			ret := int64(-1) // TC_ACT_UNSPEC: tcx hands the packet to the next program
			if ps.Type == ebpf.XDP {
				ret = 2 // XDP_PASS
			}
			spec.Programs[name].Instructions = asm.Instructions{asm.Mov.Imm(asm.R0, int32(ret)), asm.Return()}
		}
	}
	innerSpec := spec.Maps[xlbMapSelTables].InnerMap
	if innerSpec == nil {
		return nil, errors.New("datapath spec: sel_tables has no inner map")
	}
	innerSpec = innerSpec.Copy()

	opts := &ebpf.CollectionOptions{}
	var pinned []string
	if cfg.PinPath != "" {
		if err := os.MkdirAll(filepath.Join(cfg.PinPath, "links"), 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory: %w", err)
		}
		for name, ms := range spec.Maps {
			if strings.HasPrefix(name, ".") {
				continue // .rodata/.data: per program load, never shared
			}
			ms.Pinning = ebpf.PinByName
			pinned = append(pinned, name)
		}
		opts.Maps.PinPath = cfg.PinPath
		if err := checkPinnedMaps(spec, cfg); err != nil {
			return nil, err
		}
	}

	d := &Dataplane{
		cfg:       cfg,
		log:       cfg.Logger,
		innerSpec: innerSpec,
		pinned:    pinned,
		svcs:      map[xlbSvcKey]*svcState{},
		byName:    map[string]*svcState{},
		byID:      map[uint32]*svcState{},
		svcIDs:    newIDAlloc(cfg.MaxServices),
		beIDs:     newIDAlloc(cfg.MaxBackends),
		beGen:     make([]uint32, cfg.MaxBackends),
		vipCount:  map[xlbVipKey]uint32{},
		health:    map[beRef]uint8{},
		links:     map[string]*attachment{},
		ifAddrs:   map[uint32]xlbIfAddr{},
		revNat:    map[xlbBeKey]xlbRevNatVal{},
	}
	if err := spec.LoadAndAssign(&d.objs, opts); err != nil {
		return nil, fmt.Errorf("load datapath into the kernel: %w", err)
	}
	// rev_nat first: writeConfig derives the rev_nat flag from it, and a
	// pinned datapath that is serving must not see the flag cleared.
	if err := d.loadRevNat(); err != nil {
		d.objs.Close()
		return nil, err
	}
	if err := d.writeConfig(); err != nil {
		d.objs.Close()
		return nil, err
	}
	if err := d.restore(ctx); err != nil {
		d.objs.Close()
		return nil, fmt.Errorf("rebuild state from pinned maps: %w", err)
	}
	if err := d.adoptLinks(ctx); err != nil {
		d.objs.Close()
		return nil, err
	}
	for _, ifname := range cfg.Interfaces {
		if err := d.Attach(ctx, ifname); err != nil {
			d.log.Error("attach failed", "interface", ifname, "err", err)
		}
	}
	if len(cfg.Interfaces) > 0 {
		d.detachUnlisted(ctx)
	}
	return d, nil
}

func withDefaults(cfg Config) Config {
	if cfg.Hook == "" {
		cfg.Hook = HookTCX
	}
	if cfg.ConntrackFlows <= 0 {
		cfg.ConntrackFlows = DefaultConntrackFlows
	}
	if cfg.FragmentEntries <= 0 {
		cfg.FragmentEntries = DefaultFragmentEntries
	}
	if cfg.MaxServices <= 1 {
		cfg.MaxServices = DefaultMaxServices
	}
	if cfg.MaxBackends <= 1 {
		cfg.MaxBackends = DefaultMaxBackends
	}
	if cfg.MaglevMinTableSize == 0 {
		cfg.MaglevMinTableSize = maglev.DefaultMinSize
	}
	if cfg.TCPClosingTimeout <= 0 {
		cfg.TCPClosingTimeout = DefaultTCPClosingTimeout
	}
	if cfg.SYNTimeout < time.Second {
		cfg.SYNTimeout = DefaultSYNTimeout
	}
	if cfg.NewFlowBudget < 0 {
		cfg.NewFlowBudget = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg
}

// checkPinnedMaps compares every pinned map with the spec before loading, so
// that a capacity change is reported (or handled) for all maps at once
// instead of failing half-way through the load.
func checkPinnedMaps(spec *ebpf.CollectionSpec, cfg Config) error {
	var bad []string
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		path := filepath.Join(cfg.PinPath, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", path, err)
		}
		cerr := ms.Compatible(m)
		m.Close()
		if cerr == nil {
			continue
		}
		if !cfg.RecreateIncompatibleMaps {
			return fmt.Errorf("pinned map %s does not match the configuration (%v); remove %s or set RecreateIncompatibleMaps to re-create it (its content is lost): %w",
				name, cerr, path, ErrMapIncompatible)
		}
		bad = append(bad, name)
	}
	for _, name := range bad {
		path := filepath.Join(cfg.PinPath, name)
		cfg.Logger.Warn("re-creating incompatible pinned map; its content is lost", "map", name, "path", path)
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove incompatible pinned map %s: %w", path, err)
		}
	}
	return nil
}

func (d *Dataplane) writeConfig() error {
	want := xlbXlbCfg{MaglevSeed: d.cfg.MaglevSeed, TcpClosingTimeoutS: uint32(d.cfg.TCPClosingTimeout / time.Second),
		SynTimeoutS: uint32(d.cfg.SYNTimeout / time.Second), NewFlowBudget: uint32(min(d.cfg.NewFlowBudget, 1<<31))}
	if len(d.revNat) > 0 {
		// Spares the fast path a rev_nat lookup per passed packet when
		// there is nothing to find.
		want.Flags |= cfgFlagRevNat
	}
	var cur xlbXlbCfg
	if err := d.objs.XlbConfig.Lookup(uint32(0), &cur); err == nil && cur == want {
		return nil
	}
	if err := d.objs.XlbConfig.Update(uint32(0), want, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write xlb_config: %w", err)
	}
	return nil
}

// Close releases the file descriptors. Pinned maps and links stay, so the
// datapath keeps forwarding and a new process can take over; without
// PinPath everything is released by the kernel.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, a := range d.links {
		if a.link != nil {
			a.link.Close()
		}
	}
	d.links = map[string]*attachment{}
	return d.objs.Close()
}

// Destroy detaches every interface this Dataplane attached, removes all pins
// (maps and links) and releases everything. Traffic to the VIPs stops being
// load balanced.
func (d *Dataplane) Destroy(ctx context.Context) error {
	var errs []error
	d.mu.Lock()
	names := make([]string, 0, len(d.links))
	for name := range d.links {
		names = append(names, name)
	}
	d.mu.Unlock()
	for _, name := range names {
		if err := d.Detach(ctx, name); err != nil {
			errs = append(errs, err)
		}
	}
	if d.cfg.PinPath != "" {
		for _, name := range d.pinned {
			errs = append(errs, os.Remove(filepath.Join(d.cfg.PinPath, name)))
		}
		linkDir := filepath.Join(d.cfg.PinPath, "links")
		if entries, err := os.ReadDir(linkDir); err == nil {
			for _, e := range entries {
				errs = append(errs, os.Remove(filepath.Join(linkDir, e.Name())))
			}
		}
		errs = append(errs, os.Remove(linkDir), os.Remove(d.cfg.PinPath))
	}
	errs = append(errs, d.Close())
	var kept []error
	for _, err := range errs {
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			kept = append(kept, err)
		}
	}
	return errors.Join(kept...)
}

// idAlloc hands out the lowest free id ≥ 1 (0 is reserved so that a zeroed
// map value never names a live service or backend).
type idAlloc struct {
	used []bool
	free int
}

func newIDAlloc(n int) *idAlloc {
	a := &idAlloc{used: make([]bool, n), free: n - 1}
	a.used[0] = true
	return a
}

// peek returns the n lowest free ids without taking them.
func (a *idAlloc) peek(n int) ([]uint32, bool) {
	if n > a.free {
		return nil, false
	}
	out := make([]uint32, 0, n)
	for i := 1; i < len(a.used) && len(out) < n; i++ {
		if !a.used[i] {
			out = append(out, uint32(i))
		}
	}
	return out, true
}

func (a *idAlloc) take(id uint32) {
	if !a.used[id] {
		a.used[id] = true
		a.free--
	}
}

func (a *idAlloc) release(id uint32) {
	if id != 0 && a.used[id] {
		a.used[id] = false
		a.free++
	}
}
