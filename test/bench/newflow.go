package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/test/bench/pktgen"
	"github.com/xlb-dev/xlb/test/netns"
)

// The new-flow comparison sends a bounded number of packets per sample, each
// a new flow, so that no conntrack table (xlb's or the kernel's) fills:
// nftables' table is limited by nf_conntrack_max (host-wide, 262144 by
// default here; a namespace cannot raise it), and a full table measures
// eviction instead of creation.
const (
	newflowWarm    = 8192    // packets of the warm-up run (neighbours)
	newflowPackets = 3 << 16 // packets of one measured run
	// newflowCTFlows is the xlb variants' conntrack capacity in flows:
	// the kernel's default nf_conntrack_max, so both hold the same number.
	newflowCTFlows = 262144
	// newflowMaxRun bounds one measured run in time.
	newflowMaxRun = 5 * time.Second
)

// newflowSrc is the first source address of the generated flows (then
// 2^15 ports per address, addresses counting up): no address of the
// topology, so nothing answers and nothing collides.
var newflowSrc = netip.MustParseAddr("10.64.0.1")

// ctStats is the kernel conntrack state of the LB namespace after a sample.
type ctStats struct {
	count                        uint64
	drop, earlyDrop, insertFails uint64
}

// readCTStats reads nf_conntrack_count and the per-CPU drop counters of
// the calling thread's namespace (/proc/thread-self, not /proc/self: the
// thread, not the process, is in the namespace).
func readCTStats(lb *netns.NS) (ctStats, error) {
	var st ctStats
	err := lb.Do(func() error {
		b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
		if err != nil {
			return err
		}
		st.count, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return err
		}
		b, err = os.ReadFile("/proc/thread-self/net/stat/nf_conntrack")
		if err != nil {
			return err
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) < 2 {
			return errors.New("nf_conntrack stats: no per-CPU rows")
		}
		cols := strings.Fields(lines[0])
		for _, l := range lines[1:] {
			for i, f := range strings.Fields(l) {
				if i >= len(cols) {
					break
				}
				v, err := strconv.ParseUint(f, 16, 64)
				if err != nil {
					return fmt.Errorf("nf_conntrack stats %q: %w", f, err)
				}
				switch cols[i] {
				case "drop":
					st.drop += v
				case "early_drop":
					st.earlyDrop += v
				case "insert_failed":
					st.insertFails += v
				}
			}
		}
		return nil
	})
	return st, err
}

func runNewflow(ctx context.Context, cfg config, rep *report) error {
	direct, err := buildDirect(ctx, 2)
	if err != nil {
		return err
	}
	defer direct.Close()
	n := &direct.net
	rounds := max(cfg.rounds, ppsMinRounds)
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
			netip.AddrPortFrom(newflowSrc, 1024), netip.AddrPortFrom(dst, ppsPort))
		if err != nil {
			return nil, err
		}
		return pktgen.NewFlowGenerator(f, newflowSrc)
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

	svc := dataplane.Service{Name: "newflow", VIP: vip, Port: ppsPort, Protocol: dataplane.UDP,
		NATMode: dataplane.NATDefault, Algorithm: dataplane.AlgoMaglev}
	for _, b := range n.backends {
		svc.Backends = append(svc.Backends, dataplane.Backend{Addr: b.addr, Port: ppsPort, Weight: 1})
	}
	variants := []variant{
		floorVariant(n),
		plainVariant(),
		nftVariantIn(n.lb, "xlbnewflow", vip, ppsPort, n.backends[0].addr, n.backends[1].addr),
		xlbVariantIn(n.lb, n.lbIfaces, dataplane.HookXDP, []dataplane.Service{svc}, newflowCTFlows),
		xlbVariantIn(n.lb, n.lbIfaces, dataplane.HookTCX, []dataplane.Service{svc}, newflowCTFlows),
	}
	rx := map[string][]float64{}
	cpu := map[string][]float64{} // CPU ns per delivered packet
	var nftMax, nftCount uint64
	var nftDrops []string
	for round := range rounds {
		for _, v := range variants {
			gen := genVIP
			if v.plain {
				gen = genPlain
			}
			recv, cpuNs, sent, err := newflowSample(ctx, n, sink, gen, v)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", round+1, v.name, err)
			}
			log.Printf("newflow round %d %-42s rx %.3f Mpps (%d packets sent)", round+1, v.name, recv/1e6, sent)
			rx[v.name] = append(rx[v.name], recv)
			cpu[v.name] = append(cpu[v.name], cpuNs)
			if v.name == vNft {
				st, err := readCTStats(n.lb)
				if err != nil {
					return fmt.Errorf("nftables conntrack stats: %w", err)
				}
				nftCount = max(nftCount, st.count)
				if st.drop+st.earlyDrop+st.insertFails > 0 {
					nftDrops = append(nftDrops, fmt.Sprintf("round %d: drop %d, early_drop %d, insert_failed %d",
						round+1, st.drop, st.earlyDrop, st.insertFails))
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max"); err == nil {
		nftMax, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	t := rep.table("newflow", fmt.Sprintf("64-byte UDP packets/s when every packet is a new flow (direct topology, 2 backends, %d rounds)", rounds),
		"variant", "received Mpps (median)", "samples", "CPU ns/packet (median)", "samples", "CPU ns/packet over floor")
	mpps := func(x float64) string { return fmt.Sprintf("%.3f", x/1e6) }
	ns := func(x float64) string { return fmt.Sprintf("%.0f", x) }
	m := func(name string) float64 { return median(rx[name]) }
	c := func(name string) float64 { return median(cpu[name]) }
	for _, v := range variants {
		over := "–"
		if v.name != vFloor {
			over = ns(c(v.name) - c(vFloor))
		}
		t.add(v.name, mpps(m(v.name)), fmtSamples(rx[v.name], mpps), ns(c(v.name)), fmtSamples(cpu[v.name], ns), over)
	}
	for _, v := range []string{vXDP, vTCX} {
		t.note("%s / nftables, every packet a new flow: **%s** by CPU cost per packet (nftables' CPU ns / xlb's; goal ≥ 3×: %s), %s by received rate.",
			v, ratio(c(vNft), c(v)), metOrNot(c(vNft)/c(v) >= 3), ratio(m(v), m(vNft)))
	}
	t.note("A new flow through xlb xdp costs %s the CPU per packet of plain routing (no conntrack, no NAT); the floor (generation and one veth hop) is %s of xlb xdp's.",
		ratio(c(vXDP), c(vPlain)), ratio(c(vFloor), c(vXDP)))
	t.note("CPU ns/packet is the CPU time of the generator's pinned thread plus its CPU's ksoftirqd (the whole path runs there, see packets/s) per packet delivered; " +
		"unlike the received rate, it does not count the time other tasks of a shared machine take on that CPU, so it is the figure the goal is judged on.")
	t.note("Per sample: conntrack flushed, %d warm-up packets, then %d measured packets (bounded to %v), each from a new source address:port: "+
		"%d new flows, below both tables' capacity (xlb: %d flows = %d entries; nftables: nf_conntrack_max %d, largest count after a sample %d).",
		newflowWarm, newflowPackets, newflowMaxRun, newflowWarm+newflowPackets, newflowCTFlows, 2*newflowCTFlows, nftMax, nftCount)
	if len(nftDrops) > 0 {
		t.note("nftables conntrack drops (the table filled or an insert raced): %s.", strings.Join(nftDrops, "; "))
	} else {
		t.note("nftables conntrack: no drop, early_drop or insert_failed in any sample.")
	}
	return nil
}

// newflowSample sets a variant up on an empty kernel conntrack table, warms
// it, and measures packets counted at the sinks per second of generation
// over newflowPackets new flows.
func newflowSample(ctx context.Context, n *ppsNet, sink *pktgen.Sink, gen *pktgen.Generator, v variant) (recv, cpuNs float64, sent uint64, err error) {
	teardown, err := v.setup(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	defer func() { err = errors.Join(err, teardown()) }()
	// Entries of earlier nftables samples would live 30 s (unreplied UDP)
	// and fill the table; xlb variants start with a new, empty map.
	if err := n.lb.Netlink().ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		return 0, 0, 0, fmt.Errorf("flush conntrack: %w", err)
	}
	count := sink.Count
	if v.count != nil {
		count = v.count
	}
	if _, _, err := onGenCPU(n.client, func() error {
		_, err := gen.RunCount(ctx, n.clientIf, newflowWarm, time.Second, newflowWarm)
		return err
	}); err != nil {
		return 0, 0, 0, err
	}
	c0, err := count()
	if err != nil {
		return 0, 0, 0, err
	}
	busy, el, err := onGenCPU(n.client, func() error {
		var err error
		sent, err = gen.RunCount(ctx, n.clientIf, newflowPackets, newflowMaxRun, 1<<16)
		return err
	})
	if err != nil {
		return 0, 0, 0, err
	}
	c1, err := count()
	if err != nil {
		return 0, 0, 0, err
	}
	if c1 == c0 {
		return 0, 0, 0, fmt.Errorf("no packet reached the sink (%d generated)", sent)
	}
	log.Printf("newflow %s: path CPU %.0f%% of the run, %.0f ns CPU/packet, %d of %d delivered", v.name,
		100*busy.Seconds()/el.Seconds(), float64(busy.Nanoseconds())/float64(c1-c0), c1-c0, sent)
	return float64(c1-c0) / el.Seconds(), float64(busy.Nanoseconds()) / float64(c1-c0), sent, nil
}
