package main

// Section "health" (issue "Backend health"): (a) how long a dead backend
// keeps being selected — a real xlbd, three backends, the default tcp
// probe, one backend's listener closed and reopened over and over, its
// state polled through GET /v1/services/{name}; (b) what the prober costs
// with 10,000 tcp targets: internal/health's Manager run in this process
// against listeners in a child process, CPU from getrusage(RUSAGE_SELF).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/internal/health"
	"github.com/xlb-dev/xlb/test/netns"
)

const (
	healthBackendPort = 8080
	healthPollEvery   = 20 * time.Millisecond
	healthWaitBound   = 15 * time.Second // per transition; the default probe needs ≤ 1.5 s
	costTargets       = 10000
	costWindow        = 5 * time.Second
	costListeners     = 8
	// listenerEnv makes the bench binary a listener helper (see
	// runListenerHelper): the prober's peer must be another process, so
	// that RUSAGE_SELF counts the prober alone.
	listenerEnv = "XLB_BENCH_LISTENER_HELPER"
)

func runHealth(ctx context.Context, cfg config, rep *report) error {
	errDetect := healthDetection(ctx, cfg, rep)
	if errDetect != nil {
		log.Printf("health: detection: %v", errDetect)
	}
	errCost := healthCost(ctx, rep)
	return errors.Join(errDetect, errCost)
}

// healthDetection is part (a).
func healthDetection(ctx context.Context, cfg config, rep *report) (err error) {
	dir, err := os.MkdirTemp("", "xlb-bench-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := buildXlbd(ctx, dir)
	if err != nil {
		return err
	}
	topo, err := netns.Build(ctx, netns.Options{Backends: 3})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, topo.Close()) }()
	stops := make([]func(), len(topo.Backends))
	defer func() {
		for _, s := range stops {
			if s != nil {
				s()
			}
		}
	}()
	for i, b := range topo.Backends {
		if stops[i], err = b.StartHTTP(ctx, healthBackendPort); err != nil {
			return err
		}
	}
	x, err := startXlbd(ctx, bin, topo.LB.NS, topo.LB.Interfaces())
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, x.close()) }()

	const name = "hbench"
	svc := api.Service{Name: name, Spec: api.ServiceSpec{VIPs: []string{netns.VIP4(0).String()}, Port: 80,
		Protocol: "tcp", Probe: &api.Probe{Type: "tcp"}}}
	for _, b := range topo.Backends {
		svc.Spec.Backends = append(svc.Spec.Backends, api.Backend{Address: b.Link.Addr4.String(), Port: healthBackendPort, Name: b.Label})
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, _, err = x.client.PutService(pctx, svc)
	cancel()
	if err != nil {
		return fmt.Errorf("PUT /v1/services/%s: %w", name, err)
	}
	states := func() (map[string]string, error) {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		s, err := x.client.GetService(c, name)
		if err != nil {
			return nil, err
		}
		if s.Status == nil {
			return nil, fmt.Errorf("service %s has no status", name)
		}
		m := map[string]string{}
		for _, b := range s.Status.Backends {
			m[b.Address] = b.State
		}
		return m, nil
	}
	// waitState polls every healthPollEvery until backend addr has state
	// want and returns when that answer arrived; others counts answers in
	// which another backend was not active (must stay 0).
	others := 0
	waitState := func(addr, want string) (time.Time, error) {
		var seen time.Time
		var last map[string]string
		err := pollFor(ctx, healthWaitBound, healthPollEvery, func() (bool, error) {
			m, err := states()
			if err != nil {
				return false, nil // transient (xlbd busy); the deadline bounds it
			}
			last = m
			for a, s := range m {
				if a != addr && s != "active" {
					others++
				}
			}
			if m[addr] == want {
				seen = time.Now()
				return true, nil
			}
			return false, nil
		})
		if err != nil {
			return seen, fmt.Errorf("backend %s never became %s (last states %v): %w", addr, want, last, err)
		}
		return seen, nil
	}
	for _, b := range topo.Backends {
		if _, err := waitState(b.Link.Addr4.String(), "active"); err != nil {
			return err
		}
	}
	others = 0
	var down, up []time.Duration
	// Each kill comes at a random point of the probe interval (500 ms):
	// without the pause it would always land just after the probe that
	// the previous wait observed, and measure one phase only.
	phase := func() time.Duration { return 100*time.Millisecond + rand.N(500*time.Millisecond) }
	for i := range cfg.healthKills {
		b := topo.Backends[i%len(topo.Backends)]
		addr := b.Link.Addr4.String()
		if err := sleepCtx(ctx, phase()); err != nil {
			return err
		}
		t0 := time.Now()
		stops[i%len(stops)]()
		stops[i%len(stops)] = nil
		at, err := waitState(addr, "down")
		if err != nil {
			return fmt.Errorf("kill %d: %w", i+1, err)
		}
		down = append(down, at.Sub(t0))
		if err := sleepCtx(ctx, phase()); err != nil {
			return err
		}
		t1 := time.Now()
		if stops[i%len(stops)], err = b.StartHTTP(ctx, healthBackendPort); err != nil {
			return fmt.Errorf("kill %d: restart %s: %w", i+1, b.Label, err)
		}
		at, err = waitState(addr, "active")
		if err != nil {
			return fmt.Errorf("kill %d: %w", i+1, err)
		}
		up = append(up, at.Sub(t1))
		log.Printf("health kill %2d %s: down after %v, active again after %v", i+1, b.Label, ms(down[i]), ms(up[i]))
	}

	t := rep.table("health", "Backend health: dead backend out of selection (xlbd, 3 backends, default tcp probe)",
		"measure", "n", "p50", "p99", "min – max", "samples (ms)")
	t.add(append([]string{"listener closed → `GET /v1/services` shows it `down`"}, statRow(down)...)...)
	t.add(append([]string{"listener back → shows it `active` again"}, statRow(up)...)...)
	sd := stats(down)
	t.note("Default probe: interval 500 ms, timeout 400 ms, 3 failures to go down, 2 successes to come back: expected 1.0–1.5 s down (refused port: (F−1)·I + U(0, I)) and 0.5–1.0 s back ((S−1)·I + U(0, I)), plus up to %s of polling. With %d samples, p99 is the largest (nearest rank).",
		ms(healthPollEvery), len(down))
	t.note("Every kill lands at a random point of the probe interval (a random 0.1–0.6 s pause before each kill and each restart); backends b0, b1, b2 in turn. Answers in which another backend was not `active`: %d.", others)
	t.note("`down` in the API is the prober's verdict; the datapath is reprogrammed by the same state change (one Reconcile, milliseconds). `active` is shown once the datapath has the backend active again.")

	p := rep.table("health-peers", "Backend health: detection compared with peers' defaults",
		"implementation (default probe)", "time to take a dead backend out", "× xlb measured p50")
	p50 := sd.p50.Seconds()
	rel := func(lo, hi float64) string {
		if hi/p50 < 10 {
			return fmt.Sprintf("%.1f–%.1f×", lo/p50, hi/p50)
		}
		return fmt.Sprintf("%.0f–%.0f×", lo/p50, hi/p50)
	}
	p.add("**xlb** (500 ms, 3 failures) — measured", fmt.Sprintf("p50 %s, p99 %s", ms(sd.p50), ms(sd.p99)), "1×")
	p.add("cloud-provider-kind (2 s, 2 failures)", "2–4 s", rel(2, 4))
	p.add("closest peer, loxilb (60 s, 2 retries)", "60–120 s", rel(60, 120))
	p.note("Peers' figures are from their defaults ((F−1)·I + U(0, I), refused port), not measured here; see docs/health.md.")
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// healthCost is part (b): 10,000 tcp targets with the default probe
// (20,000 probes/s) for costWindow, after the first jittered round.
func healthCost(ctx context.Context, rep *report) error {
	helper, stdin, addrs, err := startListenerHelper(ctx)
	if err != nil {
		return err
	}
	defer func() {
		stdin.Close()
		_ = helper.Process.Kill() // by PID: our own child
		_ = helper.Wait()
	}()
	targets := make([]health.Target, costTargets)
	for i := range targets {
		targets[i] = health.Target{Service: fmt.Sprintf("s%05d", i), Backend: addrs[i%len(addrs)], Probe: api.Probe{Type: "tcp"}}
	}
	runtime.GC() // do not bill earlier sections' garbage to the window
	m := health.New(health.Config{})
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(mctx) }()
	defer func() { cancel(); <-done }()
	if err := m.Set(mctx, targets); err != nil {
		return err
	}
	sum := func() (probes, failures uint64, maxLag time.Duration) {
		for _, s := range m.States() {
			probes += s.Probes
			failures += s.Failures
			maxLag = max(maxLag, s.Lag)
		}
		return
	}
	if err := pollFor(ctx, 30*time.Second, 50*time.Millisecond, func() (bool, error) {
		p, _, _ := sum()
		return p >= costTargets, nil
	}); err != nil {
		return fmt.Errorf("first round of %d probes: %w", costTargets, err)
	}
	p0, f0, _ := sum()
	c0, w0 := selfCPU(), time.Now()
	l0 := procCPU(helper.Process.Pid)
	if err := sleepCtx(ctx, costWindow); err != nil { // the measurement window
		return err
	}
	p1, f1, lag := sum()
	c1, w1 := selfCPU(), time.Now()
	l1 := procCPU(helper.Process.Pid)
	errs := map[string]int{}
	for _, st := range m.States() {
		if st.LastError != "" && st.LastProbe.After(w0) {
			errs[st.LastError]++
		}
	}
	probes, cpu, wall := p1-p0, c1-c0, w1.Sub(w0)
	if probes == 0 {
		return errors.New("no probes in the window")
	}
	perProbe := float64(cpu.Nanoseconds()) / 1e3 / float64(probes)
	log.Printf("health cost: %d probes in %v, CPU %v = %.1f µs/probe, %.0f%% of a core, failures %d, max lag %v",
		probes, wall.Round(time.Millisecond), cpu.Round(time.Millisecond), perProbe, 100*cpu.Seconds()/wall.Seconds(), f1-f0, lag)
	t := rep.table("health-cost", "Backend health: prober CPU with 10,000 tcp targets (internal/health Manager, default probe)",
		"targets", "window", "probes/s (ideal)", "failed probes", "prober CPU", "CPU per probe", "% of one core", "max schedule lag", "listeners' CPU per probe")
	lst := "n/a"
	if l0 >= 0 && l1 >= 0 {
		lst = fmt.Sprintf("%.1f µs", float64((l1-l0).Nanoseconds())/1e3/float64(probes))
	}
	t.add(strconv.Itoa(costTargets), wall.Round(time.Millisecond).String(),
		fmt.Sprintf("%.0f (%.0f)", float64(probes)/wall.Seconds(), float64(costTargets)/health.DefaultInterval.Seconds()),
		strconv.FormatUint(f1-f0, 10), cpu.Round(time.Millisecond).String(),
		fmt.Sprintf("**%.1f µs**", perProbe), fmt.Sprintf("%.0f %%", 100*cpu.Seconds()/wall.Seconds()),
		lag.Round(time.Millisecond).String(), lst)
	t.note("The Manager runs in the bench process (getrusage RUSAGE_SELF delta over the window, so it includes the Go runtime's share); the targets are %d listeners on 127.0.0.1 in a child process (its CPU, from /proc, is the last column) — 10,000 services × 1 backend, spread over them.", costListeners)
	t.note("The window starts once every target has been probed once (the first, jittered round). Earlier figure in docs/health.md: 32–36 µs CPU per probe, 53–67 %% of one core, on the same kind of machine.")
	if len(errs) > 0 {
		var parts []string
		for e, n := range errs {
			if len(parts) == 3 {
				break
			}
			parts = append(parts, fmt.Sprintf("%d× %s", n, e))
		}
		t.note("Failed probes' errors (sample): %s.", strings.Join(parts, "; "))
	}
	return nil
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is utime+stime of a process from /proc/PID/stat (clock ticks of
// 10 ms), or -1.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:])
	// After the command: state(0) ... utime is field 14 of the line, i.e.
	// index 11 here, stime index 12.
	if len(f) < 13 {
		return -1
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// startListenerHelper re-executes this binary as the listener helper and
// returns it with its listening addresses. The helper exits when its stdin
// closes (this process died) and is killed by PID by the caller.
func startListenerHelper(ctx context.Context) (*exec.Cmd, io.WriteCloser, []netip.AddrPort, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", listenerEnv, costListeners))
	cmd.Stderr = os.Stderr
	// The helper reads stdin until EOF: if this process dies, the pipe
	// closes and the helper exits by itself.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, nil, fmt.Errorf("start listener helper: %w", err)
	}
	fail := func(err error) (*exec.Cmd, io.WriteCloser, []netip.AddrPort, error) {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, nil, nil, err
	}
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
	}()
	select {
	case l, ok := <-line:
		rest, found := strings.CutPrefix(l, "ready ")
		if !ok || !found {
			return fail(fmt.Errorf("listener helper: unexpected output %q", l))
		}
		var addrs []netip.AddrPort
		for _, a := range strings.Split(rest, ",") {
			ap, err := netip.ParseAddrPort(a)
			if err != nil {
				return fail(fmt.Errorf("listener helper: %q: %w", a, err))
			}
			addrs = append(addrs, ap)
		}
		return cmd, stdin, addrs, nil
	case <-time.After(10 * time.Second):
		return fail(errors.New("listener helper: not ready within 10s"))
	case <-ctx.Done():
		return fail(ctx.Err())
	}
}

// runListenerHelper is the child side: when listenerEnv is set it listens
// on that many 127.0.0.1 ports, prints "ready ADDR,ADDR,...", accepts and
// closes connections until stdin reaches EOF, and reports true.
func runListenerHelper() bool {
	v := os.Getenv(listenerEnv)
	if v == "" {
		return false
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 64 {
		log.Fatalf("%s=%q: allowed 1..64", listenerEnv, v)
	}
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						continue
					}
					if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
						time.Sleep(10 * time.Millisecond)
						continue
					}
					return
				}
				c.Close()
			}
		}()
	}
	fmt.Printf("ready %s\n", strings.Join(addrs, ","))
	buf := make([]byte, 1)
	for {
		if _, err := os.Stdin.Read(buf); err != nil {
			return true
		}
	}
}
