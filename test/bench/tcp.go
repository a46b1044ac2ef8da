package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"time"

	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/test/netns"
)

// runTCP compares one iperf3 stream through the VIP (tcx) with plain
// routing to the backend.
func runTCP(ctx context.Context, cfg config, rep *report) error {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return fmt.Errorf("iperf3 not installed (scripts/install-deps.sh): %w", err)
	}
	topo, err := netns.Build(ctx, netns.Options{Backends: 1, KeepTxChecksum: true})
	if err != nil {
		return err
	}
	defer topo.Close()
	b := topo.Backends[0]
	srv := b.Command(context.Background(), "iperf3", "-s", "-p", "5201")
	if err := srv.Start(); err != nil {
		return fmt.Errorf("start iperf3 server: %w", err)
	}
	defer netns.StopProcess(srv)
	if err := waitTCP(ctx, topo.Client.NS, netip.AddrPortFrom(b.Link.Addr4, 5201)); err != nil {
		return fmt.Errorf("iperf3 server: %w", err)
	}
	vip := netns.VIP4(0)
	svc := dataplane.Service{Name: "iperf", VIP: vip, Port: 5201, Protocol: dataplane.TCP,
		NATMode: dataplane.NATDefault, Algorithm: dataplane.AlgoMaglev,
		Backends: []dataplane.Backend{{Addr: b.Link.Addr4, Port: 5201, Weight: 1}}}
	type tv struct {
		v      variant
		target netip.Addr
	}
	variants := []tv{
		{plainVariant(), b.Link.Addr4},
		{xlbVariant(topo, dataplane.HookTCX, []dataplane.Service{svc}), vip},
	}
	res := map[string][]float64{}
	secs := int(cfg.sample / time.Second)
	if secs < 1 {
		secs = 1
	}
	for round := range cfg.rounds {
		for _, x := range variants {
			teardown, err := x.v.setup(ctx)
			if err != nil {
				return err
			}
			bps, err := iperf(ctx, topo.Client.NS, x.target, secs)
			if terr := teardown(); err == nil {
				err = terr
			}
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", round+1, x.v.name, err)
			}
			log.Printf("tcp round %d %-24s %.2f Gbit/s", round+1, x.v.name, bps/1e9)
			res[x.v.name] = append(res[x.v.name], bps)
		}
	}
	t := rep.table("tcp", "Single TCP stream (iperf3)", "variant", "Gbit/s (median)", "samples")
	g := func(x float64) string { return fmt.Sprintf("%.2f", x/1e9) }
	for _, x := range variants {
		t.add(x.v.name, g(median(res[x.v.name])), fmtSamples(res[x.v.name], g))
	}
	t.note("xlb tcx / plain routing: **%s**.", ratio(median(res["xlb tcx"]), median(res["plain routing (no LB)"])))
	return nil
}

func waitTCP(ctx context.Context, n *netns.NS, target netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return netns.Until(ctx, func() error {
		c, err := n.DialContext(ctx, "tcp", target.String())
		if err != nil {
			return err
		}
		return c.Close()
	})
}

func iperf(ctx context.Context, n *netns.NS, target netip.Addr, secs int) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs+20)*time.Second)
	defer cancel()
	out, err := n.Run(ctx, "iperf3", "-c", target.String(), "-p", "5201", "-t", strconv.Itoa(secs), "-J", "--connect-timeout", "3000")
	if err != nil {
		return 0, err
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return 0, fmt.Errorf("iperf3 output: %w", err)
	}
	if r.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", r.Error)
	}
	return r.End.SumReceived.BitsPerSecond, nil
}

var reqPerSec = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

// runHTTP measures HTTP requests/s with wrk: keep-alive and one request per
// connection, plain vs through the VIP.
func runHTTP(ctx context.Context, cfg config, rep *report) error {
	if _, err := exec.LookPath("wrk"); err != nil {
		return fmt.Errorf("wrk not installed (scripts/install-deps.sh): %w", err)
	}
	// TX checksum offload off (the harness default): native XDP_REDIRECT
	// drops the veth's partial checksums otherwise (shared notes, veth fact 3).
	topo, err := netns.Build(ctx, netns.Options{Backends: 2})
	if err != nil {
		return err
	}
	defer topo.Close()
	for _, b := range topo.Backends {
		stop, err := b.StartHTTP(ctx, 8080)
		if err != nil {
			return err
		}
		defer stop()
	}
	vip := netns.VIP4(0)
	svc := dataplane.Service{Name: "http", VIP: vip, Port: 80, Protocol: dataplane.TCP,
		NATMode: dataplane.NATDefault, Algorithm: dataplane.AlgoMaglev}
	for _, b := range topo.Backends {
		svc.Backends = append(svc.Backends, dataplane.Backend{Addr: b.Link.Addr4, Port: 8080, Weight: 1})
	}
	b0 := netip.AddrPortFrom(topo.Backends[0].Link.Addr4, 8080)
	type hv struct {
		v      variant
		target netip.AddrPort
	}
	variants := []hv{
		{plainVariant(), b0},
		{xlbVariant(topo, dataplane.HookTCX, []dataplane.Service{svc}), netip.AddrPortFrom(vip, 80)},
		{xlbVariant(topo, dataplane.HookXDP, []dataplane.Service{svc}), netip.AddrPortFrom(vip, 80)},
	}
	secs := max(int(cfg.sample/time.Second), 1)
	res := map[string][]float64{}
	rounds := min(cfg.rounds, 2)
	for round := range rounds {
		for _, x := range variants {
			for _, ka := range []bool{true, false} {
				teardown, err := x.v.setup(ctx)
				if err != nil {
					return err
				}
				rps, err := wrk(ctx, topo.Client.NS, x.target, secs, ka)
				if terr := teardown(); err == nil {
					err = terr
				}
				if err != nil {
					return fmt.Errorf("round %d, %s: %w", round+1, x.v.name, err)
				}
				key := x.v.name + map[bool]string{true: "|ka", false: "|close"}[ka]
				log.Printf("http round %d %-24s keepalive=%v %.0f req/s", round+1, x.v.name, ka, rps)
				res[key] = append(res[key], rps)
			}
		}
	}
	t := rep.table("http", "HTTP requests/s (wrk, 1 thread, 16 connections)", "variant", "keep-alive req/s", "one request per connection req/s")
	f := func(x float64) string { return fmt.Sprintf("%.0f", x) }
	for _, x := range variants {
		t.add(x.v.name+map[bool]string{true: " (1 backend)", false: " (2 backends)"}[x.v.plain],
			f(median(res[x.v.name+"|ka"]))+" ("+fmtSamples(res[x.v.name+"|ka"], f)+")",
			f(median(res[x.v.name+"|close"]))+" ("+fmtSamples(res[x.v.name+"|close"], f)+")")
	}
	return nil
}

func wrk(ctx context.Context, n *netns.NS, target netip.AddrPort, secs int, keepAlive bool) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs+20)*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort(target.Addr().String(), strconv.Itoa(int(target.Port()))) + "/"
	args := []string{"-t1", "-c16", "-d" + strconv.Itoa(secs) + "s", "--timeout", "2s"}
	if !keepAlive {
		args = append(args, "-H", "Connection: close")
	}
	out, err := n.Run(ctx, "wrk", append(args, url)...)
	if err != nil {
		return 0, err
	}
	m := reqPerSec.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("wrk output has no Requests/sec: %q", out)
	}
	return strconv.ParseFloat(m[1], 64)
}
