package main

// Section "bgp" (issue "Announcing VIPs"): how fast a VIP reaches a real
// router's forwarding table, and how fast it leaves it when the service's
// last backend dies. Topology (bench only):
//
//	router ns (BIRD 2, kernel export) ──veth── LB ns (xlbd, GoBGP) ──veth── backend ns
//
// Router 10.201.0.1/24 (AS 65000), LB 10.201.0.11/24 (AS 65001) towards it
// and 10.202.0.1/24 towards the backend 10.202.0.21/24. The router's kernel
// table is read over netlink in its namespace every bgpPollEvery.

import (
	"context"
	"errors"
	"fmt"
	"log"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/test/netns"
)

var (
	bgpRtr     = netip.MustParseAddr("10.201.0.1")
	bgpLBUp    = netip.MustParseAddr("10.201.0.11")
	bgpLBBe    = netip.MustParseAddr("10.202.0.1")
	bgpBackend = netip.MustParseAddr("10.202.0.21")
)

const (
	bgpPollEvery = 10 * time.Millisecond
	// healthPollEveryBGP: the API poll alongside the table's (same loop).
	healthPollEveryBGP = bgpPollEvery
	bgpWaitBound       = 15 * time.Second
	bgpLBASN           = 65001
	bgpRtrASN          = 65000
)

// bgpVIP is the i-th VIP of the section (203.0.113.10+i).
func bgpVIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + i)}) }

type bgpTopo struct {
	namespaces []*netns.NS
	router, lb *netns.NS
	backend    *netns.Host
	upIf, beIf string
	bird       *exec.Cmd
	dir        string
	watch      *routeWatch
	pollTimed  int // waits timed by the poll (no matching notification)
}

// routeWatch records, from netlink notifications in the router's
// namespace, when each /32 of the main table was last added or removed:
// exact event times, where polling the table only bounds them.
type routeWatch struct {
	done chan struct{}
	mu   sync.Mutex
	last map[netip.Addr]routeEvent
	errs int
}

type routeEvent struct {
	present bool
	at      time.Time
}

func watchRoutes(ns *netns.NS) (*routeWatch, error) {
	w := &routeWatch{done: make(chan struct{}), last: map[netip.Addr]routeEvent{}}
	ch := make(chan netlink.RouteUpdate, 256)
	h := ns.Handle()
	if err := netlink.RouteSubscribeWithOptions(ch, w.done, netlink.RouteSubscribeOptions{Namespace: &h,
		ErrorCallback: func(error) { w.mu.Lock(); w.errs++; w.mu.Unlock() }}); err != nil {
		return nil, fmt.Errorf("subscribe to routes in %s: %w", ns.Name, err)
	}
	go func() {
		for u := range ch {
			now := time.Now()
			if u.Dst == nil || u.Table != unix.RT_TABLE_MAIN {
				continue
			}
			if ones, bits := u.Dst.Mask.Size(); ones != 32 || bits != 32 {
				continue
			}
			a, ok := netip.AddrFromSlice(u.Dst.IP.To4())
			if !ok {
				continue
			}
			w.mu.Lock()
			w.last[a] = routeEvent{present: u.Type == unix.RTM_NEWROUTE, at: now}
			w.mu.Unlock()
		}
	}()
	return w, nil
}

// eventAt is when vip last became present (or absent), if that was
// notified after since.
func (w *routeWatch) eventAt(vip netip.Addr, present bool, since time.Time) (time.Time, bool) {
	if w == nil {
		return time.Time{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.last[vip]
	if !ok || e.present != present || e.at.Before(since) {
		return time.Time{}, false
	}
	return e.at, true
}

func (w *routeWatch) stop() { close(w.done) }

func (tp *bgpTopo) close() error {
	var errs []error
	if tp.watch != nil {
		tp.watch.stop()
	}
	if tp.bird != nil {
		netns.StopProcess(tp.bird) // by PID
	}
	for i := len(tp.namespaces) - 1; i >= 0; i-- {
		if err := tp.namespaces[i].Delete(); err != nil {
			errs = append(errs, err)
		}
	}
	if tp.dir != "" {
		os.RemoveAll(tp.dir)
	}
	return errors.Join(errs...)
}

func runCmd(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func buildBGPTopo(ctx context.Context) (_ *bgpTopo, err error) {
	if _, err := exec.LookPath("bird"); err != nil {
		return nil, fmt.Errorf("bird not installed (scripts/install-deps.sh installs bird2): %w", err)
	}
	tp := &bgpTopo{}
	defer func() {
		if err != nil {
			err = errors.Join(err, tp.close())
		}
	}()
	p := netns.NewPrefix()
	if tp.dir, err = os.MkdirTemp("", "xlb-bench-bird-"); err != nil {
		return tp, err
	}
	mk := func(suffix string) (*netns.NS, error) {
		n, err := netns.CreateNS(p + "-" + suffix)
		if err != nil {
			return nil, err
		}
		tp.namespaces = append(tp.namespaces, n)
		for _, kv := range [][2]string{{"net.ipv4.conf.all.rp_filter", "0"}, {"net.ipv4.conf.default.rp_filter", "0"}} {
			if err := n.Sysctl(kv[0], kv[1]); err != nil {
				return nil, err
			}
		}
		return n, nil
	}
	if tp.router, err = mk("rtr"); err != nil {
		return tp, err
	}
	if tp.lb, err = mk("lb"); err != nil {
		return tp, err
	}
	bns, err := mk("b0")
	if err != nil {
		return tp, err
	}
	tp.backend = &netns.Host{NS: bns, Label: "b0"}
	if err := tp.lb.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return tp, err
	}
	tp.upIf, tp.beIf = p+"u", p+"b"
	rIf, hIf := p+"r", p+"h"
	steps := [][]string{
		{"ip", "-n", tp.lb.Name, "link", "add", tp.upIf, "type", "veth", "peer", "name", rIf, "netns", tp.router.Name},
		{"ip", "-n", tp.lb.Name, "link", "add", tp.beIf, "type", "veth", "peer", "name", hIf, "netns", bns.Name},
		{"ip", "-n", tp.lb.Name, "addr", "add", bgpLBUp.String() + "/24", "dev", tp.upIf},
		{"ip", "-n", tp.lb.Name, "addr", "add", bgpLBBe.String() + "/24", "dev", tp.beIf},
		{"ip", "-n", tp.router.Name, "addr", "add", bgpRtr.String() + "/24", "dev", rIf},
		{"ip", "-n", bns.Name, "addr", "add", bgpBackend.String() + "/24", "dev", hIf},
		{"ip", "-n", tp.lb.Name, "link", "set", tp.upIf, "up"},
		{"ip", "-n", tp.lb.Name, "link", "set", tp.beIf, "up"},
		{"ip", "-n", tp.router.Name, "link", "set", rIf, "up"},
		{"ip", "-n", bns.Name, "link", "set", hIf, "up"},
		{"ip", "-n", tp.lb.Name, "route", "add", "default", "via", bgpRtr.String()},
		{"ip", "-n", bns.Name, "route", "add", "default", "via", bgpLBBe.String()},
	}
	for _, s := range steps {
		if err := runCmd(ctx, s...); err != nil {
			return tp, err
		}
	}
	// BIRD in the foreground (-f), so the PID we hold is BIRD's; it
	// exports what it learns into the router namespace's kernel table.
	conf := fmt.Sprintf(`router id %s;
protocol device {}
protocol kernel k4 { ipv4 { export all; import none; }; }
protocol bgp lb0 { local %s as %d; neighbor %s as %d; hold time 9; ipv4 { import all; export none; }; }
`, bgpRtr, bgpRtr, bgpRtrASN, bgpLBUp, bgpLBASN)
	cfgPath := filepath.Join(tp.dir, "bird.conf")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
		return tp, err
	}
	if tp.watch, err = watchRoutes(tp.router); err != nil {
		return tp, err
	}
	tp.bird = exec.Command("ip", "netns", "exec", tp.router.Name, "bird", "-f", "-c", cfgPath, "-s", filepath.Join(tp.dir, "bird.ctl"))
	if err := tp.bird.Start(); err != nil {
		tp.bird = nil
		return tp, fmt.Errorf("start bird: %w", err)
	}
	return tp, nil
}

// hasRoute reports whether the router's kernel main table has vip/32.
func (tp *bgpTopo) hasRoute(vip netip.Addr) (bool, error) {
	dst := &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}
	rs, err := tp.router.Netlink().RouteListFiltered(unix.AF_INET, &netlink.Route{Dst: dst, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return false, err
	}
	return len(rs) > 0, nil
}

// waitRoute polls until the router has (want) or lacks (!want) vip/32 and
// returns when that happened: the time of the route notification received
// after since, or else of the poll that saw it. also, when set, is polled alongside
// (before the route) and its first success time is returned too.
func (tp *bgpTopo) waitRoute(ctx context.Context, vip netip.Addr, want bool, since time.Time, also func() bool) (seen, alsoAt time.Time, err error) {
	err = pollFor(ctx, bgpWaitBound, bgpPollEvery, func() (bool, error) {
		if also != nil && alsoAt.IsZero() && also() {
			alsoAt = time.Now()
		}
		ok, err := tp.hasRoute(vip)
		if err != nil {
			return false, err
		}
		if ok == want {
			seen = time.Now()
			// The dump can see the change before the notification has
			// been read: give the watcher up to 100 ms to catch up.
			for range 100 {
				if at, ok := tp.watch.eventAt(vip, want, since); ok {
					seen = at // the notification, not the poll that confirmed it
					return true, nil
				}
				time.Sleep(time.Millisecond)
			}
			tp.pollTimed++
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		verb := "appear"
		if !want {
			verb = "disappear"
		}
		err = fmt.Errorf("route %s/32 did not %s in the router's table: %w", vip, verb, err)
	}
	return seen, alsoAt, err
}

func runBGP(ctx context.Context, cfg config, rep *report) (err error) {
	dir, err := os.MkdirTemp("", "xlb-bench-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := buildXlbd(ctx, dir)
	if err != nil {
		return err
	}
	tp, err := buildBGPTopo(ctx)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, tp.close()) }()
	stop, err := tp.backend.StartHTTP(ctx, healthBackendPort)
	if err != nil {
		return err
	}
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	x, err := startXlbd(ctx, bin, tp.lb, []string{tp.upIf, tp.beIf})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, x.close()) }()
	call := func(f func(context.Context) error) error {
		c, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return f(c)
	}
	if err := call(func(c context.Context) error {
		if _, err := x.client.PutBGP(c, api.BGPGlobal{ASN: bgpLBASN, RouterID: bgpLBUp.String()}); err != nil {
			return err
		}
		_, err := x.client.PutBGPPeers(c, []api.BGPPeer{{Address: bgpRtr.String(), ASN: bgpRtrASN, HoldTimeSeconds: 9}})
		return err
	}); err != nil {
		return fmt.Errorf("configure BGP: %w", err)
	}
	var peerState string
	if err := pollFor(ctx, 60*time.Second, 100*time.Millisecond, func() (bool, error) {
		var st api.BGPStatus
		if err := call(func(c context.Context) (err error) { st, err = x.client.GetBGP(c); return }); err != nil {
			return false, nil
		}
		if len(st.Peers) == 1 {
			peerState = st.Peers[0].State
		}
		return peerState == "established", nil
	}); err != nil {
		return fmt.Errorf("BGP session to BIRD (state %q): %w\n%s", peerState, err, x.log.tail(20))
	}
	backend := []api.Backend{{Address: bgpBackend.String(), Port: healthBackendPort, Name: "b0"}}

	// (a) PUT of a new service → /32 in the router's kernel table.
	var announce, putRet []time.Duration
	for i := range cfg.bgpServices {
		// A random pause so that the PUTs do not fall in phase with any
		// periodic work of the speaker or the router.
		if err := sleepCtx(ctx, 50*time.Millisecond+rand.N(200*time.Millisecond)); err != nil {
			return err
		}
		vip := bgpVIP(i)
		svc := api.Service{Name: fmt.Sprintf("ann%02d", i), Spec: api.ServiceSpec{VIPs: []string{vip.String()}, Port: 80, Protocol: "tcp", Backends: backend}}
		// The router's table is polled while the PUT is in flight: the
		// announcement may well arrive before the API answers.
		t0 := time.Now()
		putDone := make(chan error, 1)
		go func() {
			err := call(func(c context.Context) error { _, _, err := x.client.PutService(c, svc); return err })
			putRet = append(putRet, time.Since(t0))
			putDone <- err
		}()
		at, _, err := tp.waitRoute(ctx, vip, true, t0, nil)
		if perr := <-putDone; perr != nil {
			return fmt.Errorf("PUT %s: %w", svc.Name, perr)
		}
		if err != nil {
			return fmt.Errorf("service %d: %w\n%s", i+1, err, x.log.tail(10))
		}
		announce = append(announce, at.Sub(t0))
		log.Printf("bgp service %2d %s: PUT returned after %v, route after %v", i+1, vip, ms(putRet[i]), ms(announce[i]))
	}

	// (b) last healthy backend dies → /32 withdrawn; back → re-announced.
	wdVIP := bgpVIP(100)
	const wd = "withdraw"
	svc := api.Service{Name: wd, Spec: api.ServiceSpec{VIPs: []string{wdVIP.String()}, Port: 80, Protocol: "tcp",
		Backends: backend, Probe: &api.Probe{Type: "tcp"}}}
	tw := time.Now()
	if err := call(func(c context.Context) error { _, _, err := x.client.PutService(c, svc); return err }); err != nil {
		return fmt.Errorf("PUT %s: %w", wd, err)
	}
	if _, _, err := tp.waitRoute(ctx, wdVIP, true, tw, nil); err != nil {
		return err
	}
	isDown := func() bool {
		var s api.Service
		if err := call(func(c context.Context) (err error) { s, err = x.client.GetService(c, wd); return }); err != nil || s.Status == nil {
			return false
		}
		return len(s.Status.Backends) == 1 && s.Status.Backends[0].State == "down"
	}
	var withdraw, apiDown, rest, reannounce []time.Duration
	for i := range cfg.bgpKills {
		if err := sleepCtx(ctx, 100*time.Millisecond+rand.N(400*time.Millisecond)); err != nil {
			return err
		}
		t0 := time.Now()
		stop()
		stop = nil
		at, downAt, err := tp.waitRoute(ctx, wdVIP, false, t0, isDown)
		if err != nil {
			return fmt.Errorf("kill %d: %w", i+1, err)
		}
		withdraw = append(withdraw, at.Sub(t0))
		if !downAt.IsZero() {
			apiDown = append(apiDown, downAt.Sub(t0))
			rest = append(rest, at.Sub(downAt))
		}
		if err := sleepCtx(ctx, 100*time.Millisecond+rand.N(400*time.Millisecond)); err != nil {
			return err
		}
		t1 := time.Now()
		if stop, err = tp.backend.StartHTTP(ctx, healthBackendPort); err != nil {
			return fmt.Errorf("kill %d: restart backend: %w", i+1, err)
		}
		at, _, err = tp.waitRoute(ctx, wdVIP, true, t1, nil)
		if err != nil {
			return fmt.Errorf("kill %d: %w", i+1, err)
		}
		reannounce = append(reannounce, at.Sub(t1))
		log.Printf("bgp kill %2d: route withdrawn after %v, back after %v", i+1, ms(withdraw[i]), ms(reannounce[i]))
	}

	t := rep.table("bgp", "BGP: VIP announcement and withdrawal at a BIRD router (xlbd → GoBGP → BIRD 2 → router's kernel table)",
		"measure", "n", "p50", "p99", "min – max", "samples (ms)")
	t.add(append([]string{"PUT of a new service → its /32 in the router's kernel table"}, statRow(announce)...)...)
	t.add(append([]string{"PUT of a new service → the API answers (for reference)"}, statRow(putRet)...)...)
	t.add(append([]string{"last backend's listener closed → `down` in the API"}, statRow(apiDown)...)...)
	t.add(append([]string{"last backend's listener closed → /32 withdrawn from the router"}, statRow(withdraw)...)...)
	t.add(append([]string{"backend back → /32 in the router again"}, statRow(reannounce)...)...)
	sa, sw, sd, sr := stats(announce), stats(withdraw), stats(apiDown), stats(rest)
	t.note("One eBGP session (hold 9 s), BIRD 2 `protocol kernel` exporting into the router namespace's main table. Times are those of the netlink route notifications (RTM_NEWROUTE / RTM_DELROUTE) in the router's namespace; the table itself is polled every %s to confirm (%d of %d waits had no notification and took the poll's time). Services: one backend each, no probe for the announcement, the default tcp probe (500 ms, 3 failures, 2 successes) for the withdrawal; a random pause before every PUT, kill and restart. p99 of 10–20 samples is the largest (nearest rank).", ms(bgpPollEvery), tp.pollTimed, len(announce)+len(withdraw)+len(reannounce)+1)
	early := 0
	for _, r := range rest {
		if r <= 0 {
			early++
		}
	}
	t.note("Announcement p50 %s (the router's table is watched while the PUT is in flight: the route arrives about when the API answers). Withdrawal after the backend's death p50 %s, health detection (API `down`, polled every %s) p50 %s: the route was gone by the first API answer showing `down` in %d of %d kills, and at most %s after it — the withdrawal adds nothing measurable to detection at this resolution.",
		ms(sa.p50), ms(sw.p50), ms(healthPollEveryBGP), ms(sd.p50), early, sr.n, ms(max(sr.max, 0)))
	t.note("The withdrawal applies the policy of docs/announce.md: a VIP without a usable backend is withdrawn, so that routers send its traffic to load balancers whose backends are healthy.")
	return nil
}
