package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/test/netns"
)

// ctKey and ctEntry mirror struct ct_key / ct_entry of bpf/xlb.h; their
// sizes are checked against the map before use.
type ctKey struct {
	Src, Dst     [4]uint32
	Sport, Dport uint16
	Proto        uint8
	Family       uint8
	Pad          [2]uint8
}

type ctEntry struct {
	LastSeenNs uint64
	LifetimeS  uint32
	SvcID      uint32
	BackendID  uint32
	BackendGen uint32
	NatSrc     [4]uint32
	NatDst     [4]uint32
	NatSport   uint16
	NatDport   uint16
	Flags      uint32
	CreatedNs  uint64
}

// benchServices returns n services (VIPs 198.19.16.1 and up, port 80, rr,
// two backends each).
func benchServices(n int, b0, b1 netip.Addr) []dataplane.Service {
	svcs := make([]dataplane.Service, 0, n)
	for i := range n {
		vip := netip.AddrFrom4([4]byte{198, 19, byte(16 + i/250), byte(1 + i%250)})
		svcs = append(svcs, dataplane.Service{
			Name: fmt.Sprintf("svc-%d", i), VIP: vip, Port: 80, Protocol: dataplane.TCP,
			NATMode: dataplane.NATDefault, Algorithm: dataplane.AlgoRR,
			Backends: []dataplane.Backend{{Addr: b0, Port: 8080, Weight: 1}, {Addr: b1, Port: 8080, Weight: 1}},
		})
	}
	return svcs
}

func tcpFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, syn bool) ([]byte, error) {
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
		SrcIP: net.IP(src.Addr().AsSlice()), DstIP: net.IP(dst.Addr().AsSlice())}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()),
		Seq: 1000, Ack: 2000, Window: 65535, SYN: syn, ACK: !syn}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		return nil, err
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, tcp, gopacket.Payload(make([]byte, 6)))
	return buf.Bytes(), err
}

// newFlowSingles runs prog once per SYN, count times, each SYN from a
// different client address:port (sequence numbers from base on) to one of
// svcs in turn, so each run creates a flow; it returns the last verdict and
// the median single-run time in ns. tc selects the context (__sk_buff or
// xdp_md) with ingress ifindex.
func newFlowSingles(prog *ebpf.Program, tc bool, ifindex, base, count int, svcs []dataplane.Service, cmac, lmac net.HardwareAddr) (uint32, float64, error) {
	var one []float64
	var ret uint32
	for i := range count {
		n := base + i
		// 198.18.0.2-5 and then 198.18.128.0/17: addresses of the client's
		// /24 first (as before the 10M section), the rest never used.
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(2 + n%4)}), uint16(1024+n/4))
		if n >= 4*64000 {
			m := n - 4*64000
			src = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(128 + (m/64000)>>8), byte(m / 64000)}), uint16(1024+m%64000))
		}
		pkt, err := tcpFrame(cmac, lmac, src, netip.AddrPortFrom(svcs[n%len(svcs)].VIP, 80), true)
		if err != nil {
			return 0, 0, err
		}
		c := xdpCtx(len(pkt), ifindex)
		if tc {
			c = skbCtx(ifindex)
		}
		r, d1, err := testRun(prog, pkt, c, 1)
		if err != nil {
			return 0, 0, err
		}
		ret = r
		one = append(one, float64(d1))
	}
	return ret, median(one), nil
}

func metOrNot(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

// datapathHandles are the programs and maps of one loaded Dataplane, found
// through the kernel (the dataplane package does not export them): the XDP
// program attached to the LB's interface, its maps, and the tc and floor
// programs that share its conntrack map.
type datapathHandles struct {
	xdp, tc, floor *ebpf.Program
	maps           map[string]*ebpf.Map
}

func (h *datapathHandles) Close() {
	for _, p := range []*ebpf.Program{h.xdp, h.tc, h.floor} {
		if p != nil {
			p.Close()
		}
	}
	for _, m := range h.maps {
		m.Close()
	}
}

func findDatapath(lb *netns.LB) (*datapathHandles, error) {
	l, err := lb.Netlink().LinkByName(lb.ClientLink.Name)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", lb.ClientLink.Name, err)
	}
	if l.Attrs().Xdp == nil || l.Attrs().Xdp.ProgId == 0 {
		return nil, fmt.Errorf("%s has no XDP program", lb.ClientLink.Name)
	}
	h := &datapathHandles{maps: map[string]*ebpf.Map{}}
	h.xdp, err = ebpf.NewProgramFromID(ebpf.ProgramID(l.Attrs().Xdp.ProgId))
	if err != nil {
		return nil, fmt.Errorf("open xdp program: %w", err)
	}
	info, err := h.xdp.Info()
	if err != nil {
		h.Close()
		return nil, err
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("open map %d: %w", id, err)
		}
		mi, err := m.Info()
		if err != nil {
			m.Close()
			h.Close()
			return nil, err
		}
		h.maps[mi.Name] = m
	}
	ct := h.maps["conntrack"]
	if ct == nil {
		h.Close()
		return nil, errors.New("xdp program has no conntrack map")
	}
	ctInfo, _ := ct.Info()
	ctID, _ := ctInfo.ID()
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			break
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		pi, err := p.Info()
		if err != nil {
			p.Close()
			continue
		}
		pids, _ := pi.MapIDs()
		shares := false
		for _, m := range pids {
			shares = shares || m == ctID
		}
		switch {
		case pi.Name == "xlb_tc" && shares && h.tc == nil:
			h.tc = p
		case pi.Name == "xlb_floor" && h.floor == nil:
			h.floor = p // identical code in every object: any instance will do
		default:
			p.Close()
		}
	}
	if h.tc == nil {
		h.Close()
		return nil, errors.New("xlb_tc sharing the conntrack map not found")
	}
	return h, nil
}

// fillConntrack inserts n entries that no benchmark packet matches.
func fillConntrack(m *ebpf.Map, n int) error { return fillConntrackFrom(m, 0, n) }

// fillConntrackFrom inserts entries from..n-1 of the same sequence, so a
// table can be filled in steps.
func fillConntrackFrom(m *ebpf.Map, from, n int) error {
	var k ctKey
	var v ctEntry
	if int(m.KeySize()) != binary.Size(k) || int(m.ValueSize()) != binary.Size(v) {
		return fmt.Errorf("conntrack key/value %d/%d bytes, bench mirrors %d/%d: update ctKey/ctEntry",
			m.KeySize(), m.ValueSize(), binary.Size(k), binary.Size(v))
	}
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	now := uint64(ts.Nano())
	const chunk = 50000
	keys := make([]ctKey, 0, chunk)
	vals := make([]ctEntry, 0, chunk)
	for i := from; i < n; i++ {
		// 10.0.0.0/8 clients to 203.0.113.1:80: never a bench packet.
		src := htonl(0x0a000000 | uint32(i>>4))
		keys = append(keys, ctKey{Src: [4]uint32{src}, Dst: [4]uint32{htonl(0xcb007101)},
			Sport: htons(uint16(1024 + i&15)), Dport: htons(80), Proto: unix.IPPROTO_TCP, Family: 4})
		vals = append(vals, ctEntry{LastSeenNs: now, LifetimeS: 3600, SvcID: 1, BackendID: 1,
			NatDst: [4]uint32{htonl(0xc6120a0a)}, NatDport: htons(8080), Flags: 1 << 2, CreatedNs: now})
		if len(keys) == chunk || i == n-1 {
			if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
				return fmt.Errorf("conntrack batch update at %d: %w", i, err)
			}
			keys, vals = keys[:0], vals[:0]
		}
	}
	return nil
}

func htonl(v uint32) uint32 { return v>>24 | (v>>8)&0xff00 | (v<<8)&0xff0000 | v<<24 }
func htons(v uint16) uint16 { return v>>8 | v<<8 }

var xdpVerdicts = map[uint32]string{0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}
var tcVerdicts = map[uint32]string{0: "OK", 1: "RECLASSIFY", 2: "SHOT", 3: "PIPE", 7: "REDIRECT", 0xffffffff: "UNSPEC"}

func runMicro(ctx context.Context, cfg config, rep *report) error {
	topo, err := netns.Build(ctx, netns.Options{Backends: 2})
	if err != nil {
		return err
	}
	defer topo.Close()
	lb := topo.LB
	b0, b1 := topo.Backends[0].Link.Addr4, topo.Backends[1].Link.Addr4
	hitVIP := netns.VIP4(0)
	// The established-flow service maps the VIP to itself; route it to b0
	// so the datapath's FIB lookup succeeds, and resolve the neighbours.
	for _, args := range [][]string{
		{"ip", "route", "add", hitVIP.String() + "/32", "via", b0.String()},
		{"ping", "-c1", "-W2", b0.String()},
		{"ping", "-c1", "-W2", b1.String()},
	} {
		if _, err := lb.Run(ctx, args[0], args[1:]...); err != nil {
			return err
		}
	}
	var dp *dataplane.Dataplane
	err = lb.Do(func() error {
		var err error
		dp, err = dataplane.New(ctx, dataplane.Config{
			Hook: dataplane.HookXDP, Interfaces: []string{lb.ClientLink.Name},
			ConntrackFlows: dataplane.DefaultConntrackFlows,
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("dataplane.New: %w", err)
	}
	defer dp.Close()

	svcs := benchServices(cfg.services, b0, b1)
	var applyDur time.Duration
	err = lb.Do(func() error {
		t0 := time.Now()
		_, err := dp.Apply(ctx, svcs)
		applyDur = time.Since(t0)
		return err
	})
	if err != nil {
		return fmt.Errorf("apply %d services: %w", len(svcs), err)
	}
	hitSvc := dataplane.Service{Name: "hit", VIP: hitVIP, Port: 80, Protocol: dataplane.TCP,
		NATMode: dataplane.NATDefault, Algorithm: dataplane.AlgoRR,
		Backends: []dataplane.Backend{{Addr: hitVIP, Port: 80, Weight: 1}}}
	svcs = append(svcs, hitSvc)
	if err := lb.Do(func() error { _, err := dp.Apply(ctx, svcs); return err }); err != nil {
		return fmt.Errorf("apply hit service: %w", err)
	}

	h, err := findDatapath(lb)
	if err != nil {
		return err
	}
	defer h.Close()
	floorName := "xlb_floor"
	if h.floor == nil {
		return errors.New("no xlb_floor program loaded by the datapath")
	}
	t0 := time.Now()
	if err := fillConntrack(h.maps["conntrack"], cfg.ctFlows); err != nil {
		return err
	}
	fillDur := time.Since(t0)

	client := netip.AddrPortFrom(topo.Client.Link.Addr4, 40000)
	cmac, lmac := topo.Client.Link.MAC, lb.ClientLink.MAC
	syn, err := tcpFrame(cmac, lmac, client, netip.AddrPortFrom(hitVIP, 80), true)
	if err != nil {
		return err
	}
	ack, err := tcpFrame(cmac, lmac, client, netip.AddrPortFrom(hitVIP, 80), false)
	if err != nil {
		return err
	}
	xctx := xdpCtx(len(ack), lb.ClientLink.Index)
	sctx := skbCtx(lb.ClientLink.Index)
	const repeat = 1_000_000
	const singles = 20000
	type res struct {
		name, verdict   string
		mean, single    float64
		hasMean, hasOne bool
	}
	var results []res
	err = lb.Do(func() error {
		if _, _, err := testRun(h.xdp, syn, xdpCtx(len(syn), lb.ClientLink.Index), 1); err != nil {
			return err
		}
		measure := func(name string, p *ebpf.Program, pkt, c []byte, verdicts map[uint32]string) error {
			ret, d, err := testRun(p, pkt, c, repeat)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			var one []float64
			for range singles / 4 {
				_, d1, err := testRun(p, pkt, c, 1)
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				one = append(one, float64(d1))
			}
			results = append(results, res{name: name, verdict: verdicts[ret], mean: float64(d), single: median(one), hasMean: true, hasOne: true})
			return nil
		}
		if err := measure(floorName, h.floor, ack, xctx, xdpVerdicts); err != nil {
			return err
		}
		if err := measure("xlb_xdp established", h.xdp, ack, xctx, xdpVerdicts); err != nil {
			return err
		}
		if err := measure("xlb_tc established", h.tc, ack, sctx, tcVerdicts); err != nil {
			return err
		}
		// New flows: one SYN per run to a real service, each from a
		// different client address:port.
		for i, prog := range []struct {
			name     string
			p        *ebpf.Program
			tc       bool
			verdicts map[uint32]string
		}{{"xlb_xdp new flow", h.xdp, false, xdpVerdicts}, {"xlb_tc new flow", h.tc, true, tcVerdicts}} {
			ret, one, err := newFlowSingles(prog.p, prog.tc, lb.ClientLink.Index, i*singles, singles, svcs[:cfg.services], cmac, lmac)
			if err != nil {
				return fmt.Errorf("%s: %w", prog.name, err)
			}
			results = append(results, res{name: prog.name, verdict: prog.verdicts[ret], single: one, hasOne: true})
		}
		return nil
	})
	if err != nil {
		return err
	}
	var floorMean, floorOne float64
	for _, r := range results {
		if r.name == floorName {
			floorMean, floorOne = r.mean, r.single
		}
	}
	t := rep.table("micro", fmt.Sprintf("ns/packet (BPF_PROG_TEST_RUN, %d services, %d conntrack entries pre-filled)", cfg.services+1, cfg.ctFlows),
		"program / case", "verdict", "mean of 1M repeats", "× floor", "median single run", "× floor (single)")
	for _, r := range results {
		mean, rm := "–", "–"
		if r.hasMean {
			mean, rm = fmt.Sprintf("%.0f ns", r.mean), ratio(r.mean, floorMean)
		}
		t.add(r.name, r.verdict, mean, rm, fmt.Sprintf("%.0f ns", r.single), ratio(r.single, floorOne))
	}
	for _, r := range results {
		switch r.name {
		case "xlb_xdp established":
			t.note("Established XDP / floor: **%s** (target ≤ 3.5×).", ratio(r.mean, floorMean))
		case "xlb_xdp new flow", "xlb_tc new flow":
			t.note("%s / floor, single runs: **%s** (goal ≤ 25×: %s).", strings.TrimSuffix(r.name, " new flow")+" new flow",
				ratio(r.single, floorOne), metOrNot(r.single <= 25*floorOne))
		}
	}
	t.note("Pre-filling %d conntrack entries took %v.", cfg.ctFlows, fillDur.Round(time.Millisecond))

	a := rep.table("apply", "Control plane", "operation", "result")
	a.add(fmt.Sprintf("Apply %d services (2 backends each, rr) into an empty datapath", cfg.services), applyDur.Round(time.Millisecond).String())
	a.add("per service", fmt.Sprintf("%.1f µs", float64(applyDur.Microseconds())/float64(cfg.services)))

	return memoryTable(h, rep)
}

// fdinfo returns the fields of /proc/self/fdinfo/FD.
func fdinfo(fd int) (map[string]string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok {
			out[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out, sc.Err()
}

func memoryTable(h *datapathHandles, rep *report) error {
	type mm struct {
		name    string
		memlock uint64
		entries uint64
		typ     string
	}
	var ms []mm
	for name, m := range h.maps {
		fi, err := fdinfo(m.FD())
		if err != nil {
			return fmt.Errorf("fdinfo of %s: %w", name, err)
		}
		ml, _ := strconv.ParseUint(fi["memlock"], 10, 64)
		me, _ := strconv.ParseUint(fi["max_entries"], 10, 64)
		ms = append(ms, mm{name, ml, me, m.Type().String()})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].memlock > ms[j].memlock })
	t := rep.table("memory", "Memory (kernel memlock charge of the datapath maps)", "map", "type", "capacity", "memlock", "per entry")
	var total uint64
	per := map[uint64]float64{}
	for _, m := range ms {
		total += m.memlock
		pe := 0.0
		if m.entries > 0 {
			pe = float64(m.memlock) / float64(m.entries)
			per[m.entries] += pe
		}
		t.add(m.name, m.typ, strconv.FormatUint(m.entries, 10), fmtBytes(m.memlock), fmt.Sprintf("%.0f B", pe))
	}
	t.add("**total**", "", "", fmtBytes(total), "")
	for _, m := range ms {
		if m.name == "conntrack" && m.entries > 0 {
			e := float64(m.memlock) / float64(m.entries)
			t.note("Per conntrack entry: **%.0f B**; per flow (forward + reply entry): **%.0f B**.", e, 2*e)
		}
		if m.name == "services" && m.entries > 0 {
			t.note("Per service slot (all maps sized by MaxServices=%d): **%.0f B**, plus its selection table (the kernel charges 8 B per 4-byte slot: a Maglev table has ≥ 16381 slots by default ≈ 128 KiB; rr/random/persist tables have sum(weights/gcd) slots).", m.entries, per[m.entries])
		}
		if m.name == "backends" && m.entries > 0 {
			t.note("Per backend slot (all maps sized by MaxBackends=%d): **%.0f B**.", m.entries, per[m.entries])
		}
	}
	return nil
}

func fmtBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
