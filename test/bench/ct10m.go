package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/test/netns"
)

// ct10mFlows is the large conntrack configuration the ct10m section checks
// (xlbd --conntrack-flows 10000000: a map of 20M entries).
const ct10mFlows = 10_000_000

// ctConfig is one conntrack size of the ct10m section and the fills (in
// entries, cumulative) at which the new-flow cost is measured.
type ctConfig struct {
	name  string
	flows int
	fills []int
}

// runCT10M loads the datapath with the default and with a 10M-flow
// conntrack map in turn (same topology, same services), reports each map's
// kernel memory and load time, and measures the new-flow cost (single
// BPF_PROG_TEST_RUN runs, as in the micro section) against the floor at
// several fill levels.
func runCT10M(ctx context.Context, cfg config, rep *report) error {
	topo, err := netns.Build(ctx, netns.Options{Backends: 2})
	if err != nil {
		return err
	}
	defer topo.Close()
	lb := topo.LB
	b0, b1 := topo.Backends[0].Link.Addr4, topo.Backends[1].Link.Addr4
	for _, b := range []string{b0.String(), b1.String()} {
		if _, err := lb.Run(ctx, "ping", "-c1", "-W2", b); err != nil {
			return err
		}
	}
	svcs := benchServices(cfg.services, b0, b1)
	configs := []ctConfig{
		{fmt.Sprintf("default (%d flows)", dataplane.DefaultConntrackFlows), dataplane.DefaultConntrackFlows, []int{1_000_000}},
		{fmt.Sprintf("%d flows", ct10mFlows), ct10mFlows, []int{1_000_000, 10_000_000}},
	}
	t := rep.table("ct10m", fmt.Sprintf("Conntrack at 10M flows: memory and new-flow cost (BPF_PROG_TEST_RUN single runs, %d services)", cfg.services),
		"conntrack map", "entries", "memlock", "load + attach", "pre-filled entries", "fill time", "floor (single)",
		"xlb_xdp new flow", "× floor", "xlb_tc new flow", "× floor", "one walk of the map (wall / CPU)")
	type point struct{ xdp, tc float64 }
	var ref point // default map at its first fill
	seq := 0      // new-flow sequence, so no SYN repeats across measurements
	for ci, c := range configs {
		var dp *dataplane.Dataplane
		t0 := time.Now()
		err := lb.Do(func() error {
			var err error
			dp, err = dataplane.New(ctx, dataplane.Config{Hook: dataplane.HookXDP,
				Interfaces: []string{lb.ClientLink.Name}, ConntrackFlows: c.flows})
			return err
		})
		if err != nil {
			return fmt.Errorf("dataplane.New with %d conntrack flows: %w", c.flows, err)
		}
		loadDur := time.Since(t0)
		err = func() error {
			defer dp.Close()
			if err := lb.Do(func() error { _, err := dp.Apply(ctx, svcs); return err }); err != nil {
				return fmt.Errorf("apply %d services: %w", len(svcs), err)
			}
			h, err := findDatapath(lb)
			if err != nil {
				return err
			}
			defer h.Close()
			ct := h.maps["conntrack"]
			fi, err := fdinfo(ct.FD())
			if err != nil {
				return fmt.Errorf("fdinfo of conntrack: %w", err)
			}
			memlock, _ := strconv.ParseUint(fi["memlock"], 10, 64)
			if h.floor == nil {
				return errors.New("no xlb_floor program loaded by the datapath")
			}
			filled := 0
			for _, fill := range c.fills {
				t0 := time.Now()
				if err := fillConntrackFrom(ct, filled, fill); err != nil {
					return err
				}
				fillDur := time.Since(t0)
				filled = fill
				var floor, xdp, tc float64
				var vx, vt uint32
				const singles = 10000
				err := lb.Do(func() error {
					ack, err := tcpFrame(topo.Client.Link.MAC, lb.ClientLink.MAC,
						netip.AddrPortFrom(topo.Client.Link.Addr4, 40000), netip.AddrPortFrom(svcs[0].VIP, 80), false)
					if err != nil {
						return err
					}
					var one []float64
					for range singles / 4 {
						_, d, err := testRun(h.floor, ack, xdpCtx(len(ack), lb.ClientLink.Index), 1)
						if err != nil {
							return fmt.Errorf("floor: %w", err)
						}
						one = append(one, float64(d))
					}
					floor = median(one)
					vx, xdp, err = newFlowSingles(h.xdp, false, lb.ClientLink.Index, seq, singles, svcs, topo.Client.Link.MAC, lb.ClientLink.MAC)
					if err != nil {
						return fmt.Errorf("xlb_xdp: %w", err)
					}
					seq += singles
					vt, tc, err = newFlowSingles(h.tc, true, lb.ClientLink.Index, seq, singles, svcs, topo.Client.Link.MAC, lb.ClientLink.MAC)
					seq += singles
					if err != nil {
						return fmt.Errorf("xlb_tc: %w", err)
					}
					return nil
				})
				if err != nil {
					return err
				}
				// The reaper (every 10 s in xlbd) and the flow counts walk the
				// whole map: ConntrackUsage is that walk, counting only.
				var ru0, ru1 unix.Rusage
				_ = unix.Getrusage(unix.RUSAGE_SELF, &ru0)
				t1 := time.Now()
				u, err := dp.ConntrackUsage(ctx)
				if err != nil {
					return fmt.Errorf("walk conntrack: %w", err)
				}
				walk := time.Since(t1)
				_ = unix.Getrusage(unix.RUSAGE_SELF, &ru1)
				walkCPU := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
				if u.Entries < fill {
					log.Printf("ct10m %s: walk saw %d entries, %d filled", c.name, u.Entries, fill)
				}
				log.Printf("ct10m %s filled %d: floor %.0f ns, xdp new flow %.0f ns (%s), tc %.0f ns (%s)",
					c.name, fill, floor, xdp, xdpVerdicts[vx], tc, tcVerdicts[vt])
				t.add(c.name, strconv.Itoa(2*c.flows), fmtBytes(memlock), loadDur.Round(time.Millisecond).String(),
					strconv.Itoa(fill), fillDur.Round(time.Millisecond).String(), fmt.Sprintf("%.0f ns", floor),
					fmt.Sprintf("%.0f ns (%s)", xdp, xdpVerdicts[vx]), ratio(xdp, floor),
					fmt.Sprintf("%.0f ns (%s)", tc, tcVerdicts[vt]), ratio(tc, floor),
					fmt.Sprintf("%v / %v", walk.Round(time.Millisecond), walkCPU.Round(time.Millisecond)))
				p := point{xdp / floor, tc / floor}
				if ci == 0 && ref == (point{}) {
					ref = p
				} else if ref != (point{}) {
					t.note("%s, %d entries pre-filled: new flow (× floor) is %.2f× the default map's at %d (xdp), %.2f× (tc).",
						c.name, fill, p.xdp/ref.xdp, configs[0].fills[0], p.tc/ref.tc)
				}
			}
			if c.flows == ct10mFlows {
				t.note("%d flows: the conntrack map (%d entries) is charged **%s** of kernel memory (%.0f B per entry, %.0f B per flow); "+
					"it is preallocated when the datapath loads (which took %v), so this is the cost from the start, whatever the number of flows. "+
					"It is charged to the memory cgroup of the process that creates the map (xlbd's pod: give it a memory limit above this).",
					c.flows, 2*c.flows, fmtBytes(memlock), float64(memlock)/float64(2*c.flows), 2*float64(memlock)/float64(2*c.flows), loadDur.Round(time.Second))
			}
			return nil
		}()
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
	}
	return nil
}
