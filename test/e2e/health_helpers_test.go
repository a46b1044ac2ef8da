package e2e

// Helpers of the backend health end-to-end tests (health_test.go): whoami
// backends as real, killable processes in the backend namespaces, a bounded
// request loop that records when every request started and who answered,
// and readers of the probe verdicts (GET /v1/services/{name}, /metrics).
//
// Every helper here is prefixed with "health" so that it cannot clash with
// the other e2e helpers of the package.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/test/netns"
)

// Ports of the whoami processes inside the backend namespaces. They differ
// from the in-process servers that newXlbdEnv starts (httpPort), so a
// killed whoami really leaves its port closed.
const (
	healthWhoamiPort = 8181  // HTTP: "NAME PEER"
	healthHealthPort = 10256 // kube-proxy style /healthz (200/503, SIGUSR1 toggles)
	healthUDPPort    = 5354  // UDP: "NAME PEER"
	healthClosedPort = 9     // nothing listens there: probes against it fail
)

// healthBuildWhoami builds test/cmd/whoami into the test's temp dir (the Go
// build cache makes it quick after the first time).
func healthBuildWhoami(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "whoami")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/xlb-dev/xlb/test/cmd/whoami")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./test/cmd/whoami: %v\n%s", err, b)
	}
	return out
}

// healthWhoami is one whoami process in a backend namespace. It can be
// killed (SIGKILL, by PID), toggled (SIGUSR1) and started again with the
// same arguments.
type healthWhoami struct {
	t    *testing.T
	bin  string
	host *netns.Host
	args []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *syncBuffer
}

// healthStartWhoami starts whoami named after the host's label in the host's
// namespace, serving HTTP on healthWhoamiPort plus the given extra flags,
// and waits until it answers from the LB namespace. The test's cleanup
// kills it (by PID) if it still runs.
func healthStartWhoami(t *testing.T, bin string, topo *netns.Topology, host *netns.Host, extra ...string) *healthWhoami {
	t.Helper()
	w := &healthWhoami{t: t, bin: bin, host: host,
		args: append([]string{"-name", host.Label, "-listen", fmt.Sprintf(":%d", healthWhoamiPort)}, extra...)}
	t.Cleanup(func() { w.kill() })
	w.start(topo)
	return w
}

func (w *healthWhoami) start(topo *netns.Topology) {
	w.t.Helper()
	w.mu.Lock()
	cmd := exec.Command("ip", append([]string{"netns", "exec", w.host.Name, w.bin}, w.args...)...)
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		w.mu.Unlock()
		w.t.Fatalf("start whoami in %s: %v", w.host.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	w.cmd, w.done, w.log = cmd, done, log
	w.mu.Unlock()
	// Ready when it answers directly (not through the VIP) from the LB.
	target := netip.AddrPortFrom(w.host.Link.Addr4, healthWhoamiPort)
	netns.Poll(w.t, 20*time.Second, func() error {
		select {
		case <-done:
			w.t.Fatalf("whoami in %s exited before it was ready:\n%s", w.host.Name, log.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r, err := topo.LB.Get(ctx, netip.Addr{}, target)
		if err != nil {
			return err
		}
		if r.Backend != w.host.Label {
			return fmt.Errorf("%s answered as %q, want %q", target, r.Backend, w.host.Label)
		}
		return nil
	})
}

// kill sends SIGKILL to the process (by its PID) and waits until it is
// reaped, so its ports are closed when kill returns. No-op when stopped.
func (w *healthWhoami) kill() {
	w.mu.Lock()
	cmd, done := w.cmd, w.done
	w.cmd = nil
	w.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		w.t.Errorf("whoami pid %d did not exit within 30s of SIGKILL", cmd.Process.Pid)
	}
}

// toggle sends SIGUSR1: whoami flips its /healthz answer (200 <-> 503).
func (w *healthWhoami) toggle() {
	w.t.Helper()
	w.mu.Lock()
	cmd := w.cmd
	w.mu.Unlock()
	if cmd == nil {
		w.t.Fatalf("whoami in %s is not running", w.host.Name)
	}
	if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		w.t.Fatalf("SIGUSR1 to whoami pid %d: %v", cmd.Process.Pid, err)
	}
}

// healthzCode fetches http://BACKEND:port/healthz from the LB namespace
// (where the probes come from) and returns the status code.
func healthzCode(topo *netns.Topology, host *netns.Host, port uint16) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	target := netns.AddrPort(host.Link.Addr4, port)
	c, err := topo.LB.DialContext(ctx, "tcp", target)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, err
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0, fmt.Errorf("healthz %s: bad status line %q", target, line)
	}
	return strconv.Atoi(f[1])
}

// setHealthz toggles whoami until its /healthz on healthHealthPort answers
// want.
func (w *healthWhoami) setHealthz(topo *netns.Topology, want int) {
	w.t.Helper()
	w.setHealthzOn(topo, healthHealthPort, want)
}

// setHealthzOn toggles whoami until its /healthz on port answers want
// (SIGUSR1 flips it; the flip is asynchronous, so confirm it from the LB
// namespace).
func (w *healthWhoami) setHealthzOn(topo *netns.Topology, port uint16, want int) {
	w.t.Helper()
	code, err := healthzCode(topo, w.host, port)
	if err != nil {
		w.t.Fatalf("healthz of %s: %v", w.host.Label, err)
	}
	if code == want {
		return
	}
	w.toggle()
	netns.Poll(w.t, 10*time.Second, func() error {
		code, err := healthzCode(topo, w.host, port)
		if err != nil {
			return err
		}
		if code != want {
			return fmt.Errorf("healthz of %s is %d, want %d", w.host.Label, code, want)
		}
		return nil
	})
}

// healthService is a service on vip:vport over the hosts' port with a probe.
func healthService(name string, vip netip.Addr, vport uint16, proto string, port uint16, probe *api.Probe, hosts ...*netns.Host) api.Service {
	s := api.Service{Name: name, Spec: api.ServiceSpec{VIPs: []string{vip.String()}, Port: vport, Protocol: proto, Probe: probe}}
	for _, h := range hosts {
		s.Spec.Backends = append(s.Spec.Backends, api.Backend{Address: h.Link.Addr4.String(), Port: port, Name: h.Label})
	}
	return s
}

// healthPut creates or replaces a service through lbclient.
func healthPut(t *testing.T, e *xlbdEnv, s api.Service) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, _, err := e.client.PutService(ctx, s); err != nil {
		t.Fatalf("PUT /v1/services/%s: %v", s.Name, err)
	}
}

// healthStates returns the backends' states ("active", "draining", "down")
// from GET /v1/services/{name}, keyed by backend address.
func healthStates(e *xlbdEnv, name string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := e.client.GetService(ctx, name)
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

// healthWaitStates polls GET /v1/services/{name} until every given host's
// backend has the wanted state, and returns when that was first seen.
func healthWaitStates(t *testing.T, e *xlbdEnv, name string, timeout time.Duration, want map[*netns.Host]string) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		got, err := healthStates(e, name)
		if err == nil {
			err = healthCompareStates(got, want)
		}
		if err == nil {
			return time.Now()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("service %s: after %v: %v", name, timeout, err)
		case <-tick.C:
		}
	}
}

func healthCompareStates(got map[string]string, want map[*netns.Host]string) error {
	for h, w := range want {
		if g := got[h.Link.Addr4.String()]; g != w {
			return fmt.Errorf("backend %s (%s) is %q, want %q (all: %v)", h.Label, h.Link.Addr4, g, w, got)
		}
	}
	return nil
}

// healthMetric reads one sample of /metrics whose labels include every
// given pair; ok=false when there is none.
func healthMetric(e *xlbdEnv, name string, labels map[string]string) (float64, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	body, err := e.client.Metrics(ctx)
	if err != nil {
		return 0, false, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		end := strings.LastIndex(line, "}")
		if end < 0 {
			continue
		}
		match := true
		for k, v := range labels {
			if !strings.Contains(line[:end], k+"="+strconv.Quote(v)) {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(line[end+1:]), 64)
		if err != nil {
			return 0, false, fmt.Errorf("metric line %q: %w", line, err)
		}
		return f, true, nil
	}
	return 0, false, nil
}

// healthMustMetric is healthMetric that fails the test on error; a missing
// sample reads as 0.
func healthMustMetric(t *testing.T, e *xlbdEnv, name string, labels map[string]string) float64 {
	t.Helper()
	v, _, err := healthMetric(e, name, labels)
	if err != nil {
		t.Fatalf("metric %s%v: %v", name, labels, err)
	}
	return v
}

// healthResult is one request of a healthLoad.
type healthResult struct {
	Start, End time.Time
	Backend    string // "" on error
	Peer       netip.AddrPort
	Err        error
}

// healthLoad sends one short request per tick (a new connection each, so
// a new flow for the load balancer) from the client namespace to a target,
// until stopped, at most max requests or for at most maxDur.
type healthLoad struct {
	mu      sync.Mutex
	results []healthResult
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

// healthStartLoad starts the loop; send does one request. The test's
// cleanup stops it.
func healthStartLoad(t *testing.T, every time.Duration, max int, maxDur time.Duration, send func(ctx context.Context) (netns.Reply, error)) *healthLoad {
	l := &healthLoad{stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(l.Stop)
	go func() {
		defer close(l.done)
		end := time.Now().Add(maxDur)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; i < max && time.Now().Before(end); i++ {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			r := healthResult{Start: time.Now()}
			rep, err := send(ctx)
			cancel()
			r.End, r.Err = time.Now(), err
			if err == nil {
				r.Backend, r.Peer = rep.Backend, rep.Peer
			}
			l.mu.Lock()
			l.results = append(l.results, r)
			l.mu.Unlock()
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return l
}

// Stop ends the loop and waits for the request in flight.
func (l *healthLoad) Stop() {
	l.once.Do(func() { close(l.stop) })
	<-l.done
}

// Results returns a copy of what was recorded so far.
func (l *healthLoad) Results() []healthResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]healthResult(nil), l.results...)
}

// waitStartedAfter polls until n requests that started after at have ended.
// It fails when the loop ended before.
func (l *healthLoad) waitStartedAfter(t *testing.T, at time.Time, n int, timeout time.Duration) {
	t.Helper()
	netns.Poll(t, timeout, func() error {
		c := 0
		for _, r := range l.Results() {
			if r.Start.After(at) {
				c++
			}
		}
		if c >= n {
			return nil
		}
		select {
		case <-l.done:
			t.Fatalf("the request loop ended with %d requests started after %s, want %d", c, at.Format("15:04:05.000"), n)
		default:
		}
		return fmt.Errorf("%d requests started after %s, want %d", c, at.Format("15:04:05.000"), n)
	})
}

// healthSummary counts answers per backend ("" = failed).
func healthSummary(rs []healthResult) map[string]int {
	m := map[string]int{}
	for _, r := range rs {
		m[r.Backend]++
	}
	return m
}

// healthHits sends n one-connection HTTP requests through target and
// counts the answering backends ("" = failed).
func healthHits(topo *netns.Topology, target netip.AddrPort, n int) map[string]int {
	return hits(topo, target, n)
}

// healthUDPHits sends n UDP requests (a new socket, so a new flow, each)
// through target and counts the answering backends ("" = failed).
func healthUDPHits(topo *netns.Topology, target netip.AddrPort, n int) map[string]int {
	got := map[string]int{}
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		r, err := topo.Client.UDPRequest(ctx, target, []byte("hello"))
		cancel()
		if err != nil {
			got[""]++
			continue
		}
		got[r.Backend]++
	}
	return got
}

// healthWaitOnly polls until n consecutive requests (made by count) are all
// answered, only by the backends in want, and by every one of them.
func healthWaitOnly(t *testing.T, what string, n int, count func(n int) map[string]int, want ...string) map[string]int {
	t.Helper()
	allowed := map[string]bool{}
	for _, w := range want {
		allowed[w] = true
	}
	var last map[string]int
	netns.Poll(t, 30*time.Second, func() error {
		got := count(n)
		last = got
		for b, c := range got {
			if !allowed[b] {
				return fmt.Errorf("%s: %d answers from %q (want only %v): %v", what, c, b, want, got)
			}
		}
		for _, w := range want {
			if got[w] == 0 {
				return fmt.Errorf("%s: no answer from %s in %d requests: %v", what, w, n, got)
			}
		}
		return nil
	})
	return last
}

// healthConn is one keep-alive HTTP connection from the client namespace
// through the VIP: every request on it belongs to the same flow.
type healthConn struct {
	c      net.Conn
	r      *bufio.Reader
	target netip.AddrPort
}

func healthDialKeepAlive(ns *netns.NS, target netip.AddrPort) (*healthConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", target.String())
	if err != nil {
		return nil, err
	}
	return &healthConn{c: c, r: bufio.NewReader(c), target: target}, nil
}

// get sends one GET on the connection and parses the "NAME PEER" answer.
func (h *healthConn) get() (netns.Reply, error) {
	_ = h.c.SetDeadline(time.Now().Add(2 * time.Second))
	defer func() { _ = h.c.SetDeadline(time.Time{}) }()
	if _, err := fmt.Fprintf(h.c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", h.target); err != nil {
		return netns.Reply{}, fmt.Errorf("keep-alive %s: write: %w", h.target, err)
	}
	resp, err := http.ReadResponse(h.r, nil)
	if err != nil {
		return netns.Reply{}, fmt.Errorf("keep-alive %s: read: %w", h.target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return netns.Reply{}, fmt.Errorf("keep-alive %s: body: %w", h.target, err)
	}
	if resp.StatusCode != http.StatusOK {
		return netns.Reply{}, fmt.Errorf("keep-alive %s: status %d", h.target, resp.StatusCode)
	}
	return netns.ParseReply(string(body))
}

func (h *healthConn) Close() error { return h.c.Close() }

// healthKeepAliveTo opens keep-alive connections through target until one
// is answered by backend (bounded by a deadline); the others are closed.
func healthKeepAliveTo(t *testing.T, ns *netns.NS, target netip.AddrPort, backend string) *healthConn {
	t.Helper()
	var found *healthConn
	netns.Poll(t, 30*time.Second, func() error {
		h, err := healthDialKeepAlive(ns, target)
		if err != nil {
			return err
		}
		r, err := h.get()
		if err != nil {
			h.Close()
			return err
		}
		if r.Backend != backend {
			h.Close()
			return fmt.Errorf("connection landed on %s, want %s", r.Backend, backend)
		}
		found = h
		return nil
	})
	t.Cleanup(func() { found.Close() })
	return found
}
