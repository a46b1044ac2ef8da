package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"strings"
	"time"

	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/test/bench/pktgen"
	"github.com/xlb-dev/xlb/test/netns"
)

const ppsPort = 5353

// variant is one way of getting client traffic to the backends.
type variant struct {
	name  string
	plain bool // send to backend 0's address instead of the VIP
	setup func(ctx context.Context) (teardown func() error, err error)
}

func nftVariant(topo *netns.Topology, vip netip.Addr, port uint16) variant {
	b0, b1 := topo.Backends[0].Link.Addr4, topo.Backends[1].Link.Addr4
	table := "xlbbench" + topo.Prefix
	rules := fmt.Sprintf(`table ip %s {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s meta l4proto { tcp, udp } th dport %d dnat to numgen inc mod 2 map { 0 : %s, 1 : %s }
	}
}
`, table, vip, port, b0, b1)
	return variant{name: "nftables DNAT (numgen)", setup: func(ctx context.Context) (func() error, error) {
		cmd := topo.LB.Command(ctx, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("nft: %w: %s", err, out)
		}
		return func() error {
			_, err := topo.LB.Run(context.Background(), "nft", "delete", "table", "ip", table)
			return err
		}, nil
	}}
}

func xlbVariant(topo *netns.Topology, hook dataplane.Hook, svcs []dataplane.Service) variant {
	return variant{name: "xlb " + string(hook), setup: func(ctx context.Context) (func() error, error) {
		var dp *dataplane.Dataplane
		err := topo.LB.Do(func() error {
			var err error
			dp, err = dataplane.New(ctx, dataplane.Config{Hook: hook, Interfaces: topo.LB.Interfaces(),
				ConntrackFlows: 65536, MaxServices: 64, MaxBackends: 256})
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
	return variant{name: "plain routing (no LB)", plain: true, setup: func(context.Context) (func() error, error) {
		return func() error { return nil }, nil
	}}
}

func runPPS(ctx context.Context, cfg config, rep *report) error {
	topo, err := netns.Build(ctx, netns.Options{Backends: 2})
	if err != nil {
		return err
	}
	defer topo.Close()
	vip := netns.VIP4(0)
	for _, b := range topo.Backends {
		if _, err := topo.LB.Run(ctx, "ping", "-c1", "-W2", b.Link.Addr4.String()); err != nil {
			return err
		}
	}
	sink, err := pktgen.NewSink(ppsPort)
	if err != nil {
		return err
	}
	defer sink.Close()
	for _, b := range topo.Backends {
		if err := b.Do(func() error { return sink.Attach(b.Link.Index) }); err != nil {
			return err
		}
	}
	mkgen := func(dst netip.Addr) (*pktgen.Generator, error) {
		f, err := pktgen.UDPFrame(topo.Client.Link.MAC, topo.LB.ClientLink.MAC,
			netip.AddrPortFrom(topo.Client.Link.Addr4, 10000), netip.AddrPortFrom(dst, ppsPort))
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
	genPlain, err := mkgen(topo.Backends[0].Link.Addr4)
	if err != nil {
		return err
	}
	defer genPlain.Close()

	svc := dataplane.Service{Name: "pps", VIP: vip, Port: ppsPort, Protocol: dataplane.UDP,
		NATMode: dataplane.NATDefault, Algorithm: dataplane.AlgoMaglev}
	for _, b := range topo.Backends {
		svc.Backends = append(svc.Backends, dataplane.Backend{Addr: b.Link.Addr4, Port: ppsPort, Weight: 1})
	}
	variants := []variant{
		plainVariant(),
		nftVariant(topo, vip, ppsPort),
		xlbVariant(topo, dataplane.HookXDP, []dataplane.Service{svc}),
		xlbVariant(topo, dataplane.HookTCX, []dataplane.Service{svc}),
	}
	rx := map[string][]float64{}
	tx := map[string][]float64{}
	for round := range cfg.rounds {
		for _, v := range variants {
			gen := genVIP
			if v.plain {
				gen = genPlain
			}
			recv, sent, err := ppsSample(ctx, topo, sink, gen, v, cfg.sample)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", round+1, v.name, err)
			}
			log.Printf("pps round %d %-24s rx %.3f Mpps (generated %.3f Mpps)", round+1, v.name, recv/1e6, sent/1e6)
			rx[v.name] = append(rx[v.name], recv)
			tx[v.name] = append(tx[v.name], sent)
		}
	}
	t := rep.table("pps", "64-byte UDP packets/s through the LB (live-frames generator, 2 backends)",
		"variant", "received Mpps (median)", "samples", "generated Mpps (median)")
	mpps := func(x float64) string { return fmt.Sprintf("%.3f", x/1e6) }
	for _, v := range variants {
		t.add(v.name, mpps(median(rx[v.name])), fmtSamples(rx[v.name], mpps), mpps(median(tx[v.name])))
	}
	m := func(name string) float64 { return median(rx[name]) }
	t.note("xlb XDP / nftables: **%s** (target ≥ 2.5×).", ratio(m("xlb xdp"), m("nftables DNAT (numgen)")))
	t.note("xlb XDP / plain routing: **%s** (target ≥ 1.8×).", ratio(m("xlb xdp"), m("plain routing (no LB)")))
	t.note("xlb tcx / nftables: **%s** (target ≥ 1.1×).", ratio(m("xlb tcx"), m("nftables DNAT (numgen)")))
	return nil
}

// ppsSample sets a variant up, warms it (neighbours, conntrack), and
// measures packets counted at the backends per second of generation.
func ppsSample(ctx context.Context, topo *netns.Topology, sink *pktgen.Sink, gen *pktgen.Generator, v variant, d time.Duration) (recv, sent float64, err error) {
	teardown, err := v.setup(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer func() { err = errors.Join(err, teardown()) }()
	run := func(d time.Duration) (uint64, time.Duration, error) {
		var n uint64
		var el time.Duration
		err := topo.Client.Do(func() error {
			t0 := time.Now()
			var err error
			n, err = gen.Run(ctx, topo.Client.Link.Index, d, 1<<16)
			el = time.Since(t0)
			return err
		})
		return n, el, err
	}
	if _, _, err := run(300 * time.Millisecond); err != nil {
		return 0, 0, err
	}
	c0, err := sink.Count()
	if err != nil {
		return 0, 0, err
	}
	n, el, err := run(d)
	if err != nil {
		return 0, 0, err
	}
	c1, err := sink.Count()
	if err != nil {
		return 0, 0, err
	}
	if c1 == c0 {
		return 0, 0, fmt.Errorf("no packet reached the backends (%d generated)", n)
	}
	return float64(c1-c0) / el.Seconds(), float64(n) / el.Seconds(), nil
}
