package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/netip"
	"os/exec"
	"strconv"
	"time"

	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/internal/vip"
	"github.com/xlb-dev/xlb/test/netns"
)

// groMode is one NAT mode of the gro section; fullnat runs with an SNAT
// address that is not on the LB and with the LB's own backend-facing
// address (the kernel treats packets with a local source as martians).
type groBenchMode struct {
	name string
	set  func(topo *netns.Topology, s *dataplane.Service)
}

var groBenchModes = []groBenchMode{
	{"default", func(_ *netns.Topology, s *dataplane.Service) { s.NATMode = dataplane.NATDefault }},
	{"fullnat", func(_ *netns.Topology, s *dataplane.Service) {
		s.NATMode, s.SNATAddr = dataplane.NATFullNAT, netns.SNAT4(0)
	}},
	{"fullnat, local SNAT", func(topo *netns.Topology, s *dataplane.Service) {
		s.NATMode, s.SNATAddr = dataplane.NATFullNAT, topo.LB.BackendLink.Addr4
	}},
	{"onearm", func(_ *netns.Topology, s *dataplane.Service) { s.NATMode = dataplane.NATOneArm }},
}

// runGRO measures one iperf3 stream in each direction (upload: client →
// backend; download: iperf3 -R) through a VIP with GRO on at both LB ends
// (the test/netns default), for each NAT mode, tcx and XDP, with the VIP
// plumbed on the LB (xlbd --plumb-vips) and without, against plain routing
// on the same topology. The goal of issue 9 is ≥ 0.8× plain routing
// everywhere; a stream that stalls counts as 0.
func runGRO(ctx context.Context, cfg config, rep *report) error {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return fmt.Errorf("iperf3 not installed (scripts/install-deps.sh): %w", err)
	}
	secs := max(int(cfg.sample/time.Second), 1)
	rounds := min(cfg.rounds, 2)
	t := rep.table("gro", "Bulk TCP with GRO on at the load balancer (iperf3, one stream)",
		"hook", "NAT mode", "VIP", "upload Gbit/s", "upload / plain", "download Gbit/s", "download / plain")
	var failures []string
	worst := 0.0
	first := true
	for _, hook := range []dataplane.Hook{dataplane.HookTCX, dataplane.HookXDP} {
		res, errs, err := groHook(ctx, hook, secs, rounds)
		if err != nil {
			return fmt.Errorf("%s: %w", hook, err)
		}
		failures = append(failures, errs...)
		g := func(x float64) string { return fmt.Sprintf("%.2f", x/1e9) }
		plainUp, plainDown := median(res["plain|up"]), median(res["plain|down"])
		t.add(string(hook), "plain routing (no VIP)", "–", g(plainUp), "1.00×", g(plainDown), "1.00×")
		for _, m := range groBenchModes {
			for _, plumbed := range []bool{false, true} {
				k := groKey(m.name, plumbed)
				up, down := median(res[k+"|up"]), median(res[k+"|down"])
				for _, r := range []float64{safeDiv(up, plainUp), safeDiv(down, plainDown)} {
					if first || r < worst {
						worst, first = r, false
					}
				}
				t.add(string(hook), m.name, map[bool]string{false: "routed to the LB", true: "plumbed on the LB"}[plumbed],
					g(up), ratioOrZero(up, plainUp), g(down), ratioOrZero(down, plainDown))
			}
		}
	}
	t.note("Goal (issue 9): every ratio ≥ 0.80× plain routing on the same topology. Lowest ratio in this run: **%.2f×**.", worst)
	t.note("tcx runs with TX checksum offload (TSO) on at the client and the backend; XDP with it off (native XDP_REDIRECT into a veth drops partial checksums), so each hook has its own plain-routing row. %d round(s) of %d s per stream.", rounds, secs)
	for _, f := range failures {
		t.note("stream failed (counted as 0): %s", f)
	}
	return nil
}

func groKey(mode string, plumbed bool) string {
	return mode + map[bool]string{false: "", true: "|plumbed"}[plumbed]
}

func ratioOrZero(a, b float64) string {
	if a == 0 && b > 0 {
		return "0.00×"
	}
	return ratio(a, b)
}

// groHook measures plain routing and every mode for one hook on a topology
// of its own; it returns samples by "mode[|plumbed]|up|down" and the errors
// of streams that failed.
func groHook(ctx context.Context, hook dataplane.Hook, secs, rounds int) (map[string][]float64, []string, error) {
	topo, err := netns.Build(ctx, netns.Options{Backends: 1, KeepTxChecksum: hook == dataplane.HookTCX})
	if err != nil {
		return nil, nil, err
	}
	defer topo.Close()
	b := topo.Backends[0]
	srv := b.Command(context.Background(), "iperf3", "-s", "-p", "5201")
	if err := srv.Start(); err != nil {
		return nil, nil, fmt.Errorf("start iperf3 server: %w", err)
	}
	defer netns.StopProcess(srv)
	if err := waitTCP(ctx, topo.Client.NS, netip.AddrPortFrom(b.Link.Addr4, 5201)); err != nil {
		return nil, nil, fmt.Errorf("iperf3 server: %w", err)
	}
	var svcs []dataplane.Service
	var plumbed []netip.Addr
	targets := map[string]netip.Addr{"plain": b.Link.Addr4}
	for i, m := range groBenchModes {
		for _, p := range []bool{false, true} {
			v := netns.VIP4(i)
			if p {
				v = netns.VIP4(10 + i)
				plumbed = append(plumbed, v)
			}
			s := dataplane.Service{Name: fmt.Sprintf("gro-%d-%v", i, p), VIP: v, Port: 5201, Protocol: dataplane.TCP,
				Algorithm: dataplane.AlgoMaglev, Backends: []dataplane.Backend{{Addr: b.Link.Addr4, Port: 5201, Weight: 1}}}
			m.set(topo, &s)
			svcs = append(svcs, s)
			targets[groKey(m.name, p)] = v
		}
	}
	// The VIPs stay plumbed for the plain rows too: addresses on a link of
	// their own do not change how the LB routes to the backend.
	if err := vip.New(topo.LB.Netlink(), vip.DefaultLink).Set(ctx, plumbed); err != nil {
		return nil, nil, fmt.Errorf("plumb VIPs: %w", err)
	}
	xlb := xlbVariant(topo, hook, svcs)
	res := map[string][]float64{}
	var failed []string
	measure := func(round int, key string) {
		for _, dir := range []string{"up", "down"} {
			bps, err := iperfDir(ctx, topo.Client.NS, targets[key], secs, dir == "down")
			if err != nil {
				failed = append(failed, fmt.Sprintf("%s %s %s: %v", hook, key, dir, err))
				bps = 0
			}
			log.Printf("gro round %d %s %-28s %-4s %.2f Gbit/s", round+1, hook, key, dir, bps/1e9)
			res[key+"|"+dir] = append(res[key+"|"+dir], bps)
		}
	}
	for round := range rounds {
		// Plain first: its traffic also resolves the LB's neighbours, so
		// the xlb rows measure GRO, not the first packet of a flow.
		measure(round, "plain")
		teardown, err := xlb.setup(ctx)
		if err != nil {
			return nil, nil, err
		}
		for _, m := range groBenchModes {
			for _, p := range []bool{false, true} {
				measure(round, groKey(m.name, p))
			}
		}
		if err := teardown(); err != nil {
			return nil, nil, err
		}
	}
	return res, failed, nil
}

// iperfDir runs one iperf3 stream of secs seconds to target:5201, reversed
// (server → client) when down; a stalled stream ends by iperf3's own
// timeouts or the context's, and is an error.
func iperfDir(ctx context.Context, n *netns.NS, target netip.Addr, secs int, down bool) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs+15)*time.Second)
	defer cancel()
	args := []string{"-c", target.String(), "-p", "5201", "-t", strconv.Itoa(secs), "-J", "--connect-timeout", "3000"}
	if down {
		args = append(args, "-R", "--rcv-timeout", "5000") // iperf3 accepts each only in its direction
	} else {
		args = append(args, "--snd-timeout", "5000")
	}
	out, err := n.Command(ctx, "iperf3", args...).Output()
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		if err != nil {
			return 0, fmt.Errorf("iperf3: %w", err)
		}
		return 0, fmt.Errorf("iperf3 output: %w", jerr)
	}
	if r.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", r.Error)
	}
	if err != nil {
		return 0, fmt.Errorf("iperf3: %w", err)
	}
	return r.End.SumReceived.BitsPerSecond, nil
}

func safeDiv(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
