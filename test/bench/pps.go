package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/test/bench/pktgen"
	"github.com/xlb-dev/xlb/test/netns"
)

const ppsPort = 5353

// Variant names, shared by the tables and the ratio notes.
const (
	vFloor = "floor: dropped at the LB's ingress (XDP)"
	vFwd   = "floor: fixed XDP redirect to backend 0"
	vPlain = "plain routing (no LB)"
	vNft   = "nftables DNAT (numgen)"
	vXDP   = "xlb xdp"
	vTCX   = "xlb tcx"
)

// variant is one way of getting client traffic to the backends.
type variant struct {
	name  string
	plain bool // send to backend 0's address instead of the VIP
	setup func(ctx context.Context) (teardown func() error, err error)
	// count reads the packets counted where this variant delivers them
	// (nil: the backends' sink).
	count func() (uint64, error)
}

func nftVariantIn(lb *netns.NS, table string, vip netip.Addr, port uint16, b0, b1 netip.Addr) variant {
	rules := fmt.Sprintf(`table ip %s {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s meta l4proto { tcp, udp } th dport %d dnat to numgen inc mod 2 map { 0 : %s, 1 : %s }
	}
}
`, table, vip, port, b0, b1)
	return variant{name: vNft, setup: func(ctx context.Context) (func() error, error) {
		cmd := lb.Command(ctx, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("nft: %w: %s", err, out)
		}
		return func() error {
			_, err := lb.Run(context.Background(), "nft", "delete", "table", "ip", table)
			return err
		}, nil
	}}
}

func xlbVariant(topo *netns.Topology, hook dataplane.Hook, svcs []dataplane.Service) variant {
	return xlbVariantIn(topo.LB.NS, topo.LB.Interfaces(), hook, svcs, ppsConntrackFlows)
}

// ppsConntrackFlows is the conntrack capacity (flows) of the xlb variants of
// the established-flow comparisons: far more than their 256 flows.
const ppsConntrackFlows = 65536

func xlbVariantIn(lb *netns.NS, ifaces []string, hook dataplane.Hook, svcs []dataplane.Service, ctFlows int) variant {
	return variant{name: "xlb " + string(hook), setup: func(ctx context.Context) (func() error, error) {
		var dp *dataplane.Dataplane
		err := lb.Do(func() error {
			var err error
			dp, err = dataplane.New(ctx, dataplane.Config{Hook: hook, Interfaces: ifaces,
				ConntrackFlows: ctFlows, MaxServices: 64, MaxBackends: 256})
			if err != nil {
				return err
			}
			for _, s := range dp.Interfaces() {
				if !s.Attached {
					dp.Close()
					return fmt.Errorf("attach %s: %s", s.Name, s.Error)
				}
			}
			if _, err := dp.Apply(ctx, svcs); err != nil {
				dp.Close()
				return err
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("xlb %s: %w", hook, err)
		}
		return dp.Close, nil
	}}
}

func plainVariant() variant {
	return variant{name: vPlain, plain: true, setup: func(context.Context) (func() error, error) {
		return func() error { return nil }, nil
	}}
}

// floorVariant drops the generator's packets in an XDP program on the LB's
// client-facing veth: the cost of generating a frame and moving it across
// one veth, which every other variant pays too. Its own sink counts them.
func floorVariant(n *ppsNet) variant {
	var cur *pktgen.Sink // set while the variant is set up
	return variant{name: vFloor, plain: true,
		count: func() (uint64, error) {
			if cur == nil {
				return 0, errors.New("floor sink not attached")
			}
			return cur.Count()
		},
		setup: func(context.Context) (func() error, error) {
			l, err := pktgen.NewSink(ppsPort)
			if err != nil {
				return nil, err
			}
			err = n.lb.Do(func() error {
				ifi, err := net.InterfaceByName(n.napiIf)
				if err != nil {
					return err
				}
				return l.Attach(ifi.Index)
			})
			if err != nil {
				return nil, errors.Join(err, l.Close())
			}
			cur = l
			return func() error { cur = nil; return l.Close() }, nil
		}}
}

// fwdVariant forwards the generator's packets (sent to backend 0's address)
// with bench_fwd on the LB's client-facing veth: fixed MACs and an
// XDP_REDIRECT to backend 0's veth, no lookup. It is the cheapest possible
// XDP forwarder on this path, so xlb xdp minus it is xlb's own work.
func fwdVariant(n *ppsNet) variant {
	return variant{name: vFwd, plain: true, setup: func(context.Context) (func() error, error) {
		f, err := pktgen.NewForwarder(ppsPort, n.fwdIndex, n.fwdDst, n.fwdSrc)
		if err != nil {
			return nil, err
		}
		err = n.lb.Do(func() error {
			ifi, err := net.InterfaceByName(n.napiIf)
			if err != nil {
				return err
			}
			return f.Attach(ifi.Index)
		})
		if err != nil {
			return nil, errors.Join(err, f.Close())
		}
		return f.Close, nil
	}}
}

// ppsMinRounds is the least number of interleaved rounds of the packets/s
// comparison on the direct topology: a sample is short, and on 2 shared
// vCPUs single samples spread by ±15 %, so a median needs more than 3.
const ppsMinRounds = 5

// ppsGenCPU is the CPU the generator's thread is pinned to. With veths the
// whole path (generator, the LB's receive processing, forwarding, the
// backends' sinks) runs inline in softirq on the generator's CPU, so the
// pin keeps a sample on one CPU instead of letting the scheduler migrate it
// halfway. (Threaded NAPI on the LB's veth, to put the LB on the other CPU,
// was tried: the generator then overruns the veth's 256-frame ring and the
// cross-CPU wakeups and page recycling cut every variant to 0.2–0.6 Mpps.)
const ppsGenCPU = 0

func runPPS(ctx context.Context, cfg config, rep *report) error {
	direct, err := buildDirect(ctx, 2)
	if err != nil {
		return err
	}
	err = ppsOn(ctx, max(cfg.rounds, ppsMinRounds), cfg.sample, rep, &direct.net, "pps")
	if cerr := direct.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil {
		return err
	}
	// The same comparison on the shared e2e topology (a bridge in a segment
	// namespace between the LB and the backends), as a reference for the
	// earlier reports.
	bridge, err := netns.Build(ctx, netns.Options{Backends: 2})
	if err != nil {
		return err
	}
	defer bridge.Close()
	return ppsOn(ctx, cfg.rounds, cfg.sample, rep, bridgeNet(bridge), "pps-bridge")
}

func ppsOn(ctx context.Context, rounds int, sample time.Duration, rep *report, n *ppsNet, key string) error {
	vip := netns.VIP4(0)
	for _, b := range n.backends {
		if _, err := n.lb.Run(ctx, "ping", "-c1", "-W2", b.addr.String()); err != nil {
			return err
		}
	}
	sink, err := pktgen.NewSink(ppsPort)
	if err != nil {
		return err
	}
	defer sink.Close()
	for _, b := range n.backends {
		if err := b.ns.Do(func() error { return sink.Attach(b.index) }); err != nil {
			return err
		}
	}
	mkgen := func(dst netip.Addr) (*pktgen.Generator, error) {
		f, err := pktgen.UDPFrame(n.clientMAC, n.lbMAC,
			netip.AddrPortFrom(n.clientIP, 10000), netip.AddrPortFrom(dst, ppsPort))
		if err != nil {
			return nil, err
		}
		return pktgen.NewGenerator(f, 10000, 256)
	}
	genVIP, err := mkgen(vip)
	if err != nil {
		return err
	}
	defer genVIP.Close()
	genPlain, err := mkgen(n.backends[0].addr)
	if err != nil {
		return err
	}
	defer genPlain.Close()
	release, err := holdGenerators(n.client, genVIP, genPlain)
	if err != nil {
		return err
	}
	defer release()

	svc := dataplane.Service{Name: "pps", VIP: vip, Port: ppsPort, Protocol: dataplane.UDP,
		NATMode: dataplane.NATDefault, Algorithm: dataplane.AlgoMaglev}
	for _, b := range n.backends {
		svc.Backends = append(svc.Backends, dataplane.Backend{Addr: b.addr, Port: ppsPort, Weight: 1})
	}
	variants := []variant{
		floorVariant(n),
		fwdVariant(n),
		plainVariant(),
		nftVariantIn(n.lb, "xlbbench", vip, ppsPort, n.backends[0].addr, n.backends[1].addr),
		xlbVariantIn(n.lb, n.lbIfaces, dataplane.HookXDP, []dataplane.Service{svc}, ppsConntrackFlows),
		xlbVariantIn(n.lb, n.lbIfaces, dataplane.HookTCX, []dataplane.Service{svc}, ppsConntrackFlows),
	}
	rx := map[string][]float64{}
	tx := map[string][]float64{}
	for round := range rounds {
		for _, v := range variants {
			gen := genVIP
			if v.plain {
				gen = genPlain
			}
			recv, sent, err := ppsSample(ctx, n, sink, gen, v, sample)
			if err != nil {
				return fmt.Errorf("%s topology, round %d, %s: %w", n.name, round+1, v.name, err)
			}
			log.Printf("pps %s round %d %-42s rx %.3f Mpps (generated %.3f Mpps)", n.name, round+1, v.name, recv/1e6, sent/1e6)
			rx[v.name] = append(rx[v.name], recv)
			tx[v.name] = append(tx[v.name], sent)
		}
	}
	t := rep.table(key, fmt.Sprintf("64-byte UDP packets/s through the LB (%s topology, 2 backends, %d rounds)", n.name, rounds),
		"variant", "received Mpps (median)", "samples", "generated Mpps (median)", "ns/packet over floor")
	mpps := func(x float64) string { return fmt.Sprintf("%.3f", x/1e6) }
	m := func(name string) float64 { return median(rx[name]) }
	for _, v := range variants {
		over := "–"
		if v.name != vFloor && m(v.name) > 0 && m(vFloor) > 0 {
			// 1/rate is the CPU time per packet of the whole path (it all runs
			// on one CPU); minus the floor's, it is what this variant adds.
			over = fmt.Sprintf("%.0f", 1e9/m(v.name)-1e9/m(vFloor))
		}
		t.add(v.name, mpps(m(v.name)), fmtSamples(rx[v.name], mpps), mpps(median(tx[v.name])), over)
	}
	if m(vFwd) > 0 && m(vXDP) > 0 {
		t.note("xlb xdp costs **%.0f ns/packet** more than the fixed XDP redirect (its own lookups and rewrite); "+
			"nftables DNAT adds %.0f ns/packet to the path and plain routing %.0f, against %.0f for xlb xdp (all over the drop floor).",
			1e9/m(vXDP)-1e9/m(vFwd), 1e9/m(vNft)-1e9/m(vFloor), 1e9/m(vPlain)-1e9/m(vFloor), 1e9/m(vXDP)-1e9/m(vFloor))
	}
	t.note("xlb XDP / nftables: **%s** (target ≥ 2.5×).", ratio(m(vXDP), m(vNft)))
	t.note("xlb XDP / plain routing: **%s** (target ≥ 1.8×).", ratio(m(vXDP), m(vPlain)))
	t.note("xlb tcx / nftables: **%s** (target ≥ 1.1×).", ratio(m(vTCX), m(vNft)))
	t.note("Ceiling of those ratios in this run — a load balancer that costs nothing (the fixed XDP redirect): "+
		"/ nftables %s, / plain routing %s; the generator and the veth hops cost %.0f ns/packet (1 / drop floor).",
		ratio(m(vFwd), m(vNft)), ratio(m(vFwd), m(vPlain)), 1e9/m(vFloor))
	return nil
}

// ppsSample sets a variant up, warms it (neighbours, conntrack), and
// measures packets counted at the sinks per second of generation.
func ppsSample(ctx context.Context, n *ppsNet, sink *pktgen.Sink, gen *pktgen.Generator, v variant, d time.Duration) (recv, sent float64, err error) {
	teardown, err := v.setup(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer func() { err = errors.Join(err, teardown()) }()
	count := sink.Count
	if v.count != nil {
		count = v.count
	}
	var busy time.Duration // the generator thread's CPU time in the last run
	run := func(d time.Duration) (uint64, time.Duration, error) {
		var cnt uint64
		b, el, err := onGenCPU(n.client, func() error {
			var err error
			cnt, err = gen.Run(ctx, n.clientIf, d, 1<<16)
			return err
		})
		busy = b
		return cnt, el, err
	}
	if _, _, err := run(300 * time.Millisecond); err != nil {
		return 0, 0, err
	}
	c0, err := count()
	if err != nil {
		return 0, 0, err
	}
	cnt, el, err := run(d)
	if err != nil {
		return 0, 0, err
	}
	c1, err := count()
	if err != nil {
		return 0, 0, err
	}
	if c1 == c0 {
		return 0, 0, fmt.Errorf("no packet reached the sink (%d generated)", cnt)
	}
	log.Printf("pps %s: generator CPU %.0f%% of the sample, %.0f ns CPU/packet", v.name,
		100*busy.Seconds()/el.Seconds(), float64(busy.Nanoseconds())/float64(c1-c0))
	return float64(c1-c0) / el.Seconds(), float64(cnt) / el.Seconds(), nil
}

// onGenCPU runs fn (which drives a generator) in ns on a thread pinned to
// ppsGenCPU and returns the CPU time of that thread plus that of the CPU's
// ksoftirqd (softirq work the kernel deferred from the thread), and the
// wall time of fn.
func onGenCPU(ns *netns.NS, fn func() error) (busy, wall time.Duration, err error) {
	soft0, serr := ksoftirqdTime(ppsGenCPU)
	err = ns.Do(func() error {
		// This thread is locked and dies with its goroutine (NS.Do),
		// so the affinity cannot leak into other goroutines.
		var set unix.CPUSet
		set.Set(ppsGenCPU)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return fmt.Errorf("pin generator to CPU %d: %w", ppsGenCPU, err)
		}
		var ru0, ru1 unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru0); err != nil {
			return fmt.Errorf("getrusage: %w", err)
		}
		t0 := time.Now()
		err := fn()
		wall = time.Since(t0)
		if rerr := unix.Getrusage(unix.RUSAGE_THREAD, &ru1); rerr != nil {
			return errors.Join(err, fmt.Errorf("getrusage: %w", rerr))
		}
		// The whole path runs in softirq on the generator's thread (no IRQ
		// time accounting here), so its CPU time is the path's. Far below
		// the wall time means the generator waited (another task on its
		// CPU, or a regression of holdGenerators): the rate then measures
		// the waits, not the path.
		busy = time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
		return err
	})
	if soft1, err1 := ksoftirqdTime(ppsGenCPU); serr == nil && err1 == nil {
		busy += soft1 - soft0
	}
	return busy, wall, err
}

// ksoftirqdTime returns the CPU time (user + system, clock-tick resolution)
// of ksoftirqd/cpu.
func ksoftirqdTime(cpu int) (time.Duration, error) {
	ksoftirqdOnce.Do(func() {
		dirs, _ := os.ReadDir("/proc")
		want := fmt.Sprintf("ksoftirqd/%d", cpu)
		for _, d := range dirs {
			if b, err := os.ReadFile("/proc/" + d.Name() + "/comm"); err == nil && strings.TrimSpace(string(b)) == want {
				ksoftirqdStat = "/proc/" + d.Name() + "/stat"
				return
			}
		}
	})
	if ksoftirqdStat == "" {
		return 0, fmt.Errorf("ksoftirqd/%d not found", cpu)
	}
	b, err := os.ReadFile(ksoftirqdStat)
	if err != nil {
		return 0, err
	}
	// Fields after the ")" that closes comm: state is field 3, utime 14, stime 15.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b)[i+1:])
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("%s: unexpected format", ksoftirqdStat)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("%s: %w", ksoftirqdStat, err)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on Linux).
const clockTicks = 100

var (
	ksoftirqdOnce sync.Once
	ksoftirqdStat string
)

// holdGenerators keeps the generators' programs in the kernel's XDP
// dispatcher for the whole comparison (see pktgen.Generator.Hold), attached
// in generic mode to the two ends of a veth pair left down in the client
// namespace, so they never see a packet. Without it every 65536-frame run
// waited for two RCU grace periods with the generator's CPU idle: about
// half of each sample's wall time, a cost per packet the same for every
// variant, which compressed every ratio towards 1 and made samples noisy.
func holdGenerators(ns *netns.NS, gens ...*pktgen.Generator) (release func(), err error) {
	const a, b = "xlbhold0", "xlbhold1"
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b}
	if err := ns.Netlink().LinkAdd(v); err != nil {
		return nil, fmt.Errorf("netns %s: add veth %s: %w", ns.Name, a, err)
	}
	var held []io.Closer
	release = func() {
		for _, c := range held {
			if err := c.Close(); err != nil {
				log.Printf("release generator: %v", err)
			}
		}
		if l, err := ns.Netlink().LinkByName(a); err == nil {
			if err := ns.Netlink().LinkDel(l); err != nil {
				log.Printf("netns %s: delete %s: %v", ns.Name, a, err)
			}
		}
	}
	err = ns.Do(func() error {
		if len(gens) > 2 {
			return fmt.Errorf("hold %d generators: at most 2", len(gens))
		}
		for i, g := range gens {
			ifi, err := net.InterfaceByName([]string{a, b}[i])
			if err != nil {
				return err
			}
			c, err := g.Hold(ifi.Index)
			if err != nil {
				return err
			}
			held = append(held, c)
		}
		return nil
	})
	if err != nil {
		release()
		return nil, err
	}
	return release, nil
}
