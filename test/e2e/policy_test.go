package e2e

// End-to-end tests of the established-flow policies (docs/health.md):
// spec.probe.onDown (keep | reset) for a backend the probe marks down, and
// spec.drainTimeoutSeconds for a backend drained with weight 0. xlbd runs
// as a real process; streams go from the client namespace through the VIP
// to echo servers in the backend namespaces.
//
// Run: go test ./test/e2e/ -run Policy -v   (as root)
//
// Helpers here are prefixed with "policy" so they cannot clash with the
// other e2e helpers of the package.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/lbclient"
	"github.com/xlb-dev/xlb/test/netns"
)

// policyProbePort is where the tcp probes of these tests go: a listener
// separate from the data port (streamPort), so a test can make the probe
// fail while the backend keeps serving its established streams.
const policyProbePort = 9443

// policyListen accepts (and closes) connections on port in the host's
// namespace until the returned close function runs (also at cleanup).
func policyListen(t *testing.T, h *netns.Host, port uint16) (closeFn func()) {
	t.Helper()
	ln, err := h.Listen(context.Background(), "tcp", fmt.Sprintf("[::]:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var once sync.Once
	closeFn = func() { once.Do(func() { ln.Close(); wg.Wait() }) }
	t.Cleanup(closeFn)
	return closeFn
}

// policyStreamTo opens streams through target until one lands on backend
// (bounded); the others are closed. The test's cleanup closes it.
func policyStreamTo(t *testing.T, e *xlbdEnv, target netip.AddrPort, backend string) *netns.Stream {
	t.Helper()
	var found *netns.Stream
	netns.Poll(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := e.topo.Client.OpenStream(ctx, target)
		if err != nil {
			return err
		}
		if s.Hello.Backend != backend {
			s.Close()
			return fmt.Errorf("stream landed on %s, want %s", s.Hello.Backend, backend)
		}
		found = s
		return nil
	})
	t.Cleanup(func() { found.Close() })
	if err := found.RoundTrip(4096, 5*time.Second); err != nil {
		t.Fatalf("new stream to %s via %s: %v", backend, target, err)
	}
	return found
}

// policyIsCut reports whether err is what a client sees when its flow was
// cut: a RST from the backend that now gets the flow (ECONNRESET), or the
// end of the stream. A timeout is not a cut: it would mean the packets
// went nowhere.
func policyIsCut(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.EPIPE)
}

// policyWaitCut round-trips on s until it fails (bounded) and returns
// when; the failure must be a reset, not a timeout.
func policyWaitCut(t *testing.T, s *netns.Stream, what string, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := s.RoundTrip(1024, 2*time.Second)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || !policyIsCut(err) {
				t.Fatalf("%s: the stream failed without a reset (packets lost?): %v", what, err)
			}
			t.Logf("%s: cut after %d bytes: %v", what, s.Bytes, err)
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still flowing after %v (%d bytes echoed)", what, timeout, s.Bytes)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// policyNewStreamOn opens n new streams through target and fails unless
// all land on backend.
func policyNewStreamsOn(t *testing.T, e *xlbdEnv, target netip.AddrPort, backend string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := e.topo.Client.OpenStream(ctx, target)
		cancel()
		if err != nil {
			t.Fatalf("new stream %d via %s: %v", i, target, err)
		}
		got := s.Hello.Backend
		err = s.RoundTrip(1024, 5*time.Second)
		s.Close()
		if err != nil {
			t.Fatalf("new stream %d via %s (on %s): %v", i, target, got, err)
		}
		if got != backend {
			t.Fatalf("new stream %d via %s landed on %s, want %s", i, target, got, backend)
		}
	}
}

// TestPolicyOnDown: two services over the same two backends, one with
// onDown keep and one with reset. Their tcp probe goes to a separate port;
// closing it on b0 marks b0 down in both services while b0's data port
// keeps serving. With keep, a stream established to b0 keeps working; with
// reset, it is cut (the client gets a RST from b1, which the flow's next
// packet was re-balanced to) soon after detection, and new connections go
// to b1.
func TestPolicyOnDown(t *testing.T) {
	e := newXlbdEnv(t, 2)
	b0, b1 := e.topo.Backends[0], e.topo.Backends[1]
	for _, b := range e.topo.Backends {
		b.ServeStream(t, streamPort)
	}
	closeProbe0 := policyListen(t, b0, policyProbePort)
	policyListen(t, b1, policyProbePort)
	e.start()

	probe := func(onDown string) *api.Probe {
		return &api.Probe{Type: "tcp", Port: policyProbePort, OnDown: onDown}
	}
	keepT := netip.AddrPortFrom(netns.VIP4(1), vipStream)
	resetT := netip.AddrPortFrom(netns.VIP4(2), vipStream)
	healthPut(t, e, healthService("pkeep", keepT.Addr(), vipStream, "tcp", streamPort, probe(""), b0, b1))
	healthPut(t, e, healthService("preset", resetT.Addr(), vipStream, "tcp", streamPort, probe("reset"), b0, b1))
	if s, err := e.client.GetService(context.Background(), "pkeep"); err != nil || s.Spec.Probe == nil || s.Spec.Probe.OnDown != "keep" {
		t.Fatalf("GET pkeep: onDown not defaulted to keep: %+v, %v", s.Spec.Probe, err)
	}
	for _, n := range []string{"pkeep", "preset"} {
		healthWaitStates(t, e, n, 10*time.Second, map[*netns.Host]string{b0: "active", b1: "active"})
	}
	keep := policyStreamTo(t, e, keepT, "b0")
	reset := policyStreamTo(t, e, resetT, "b0")

	at := time.Now()
	closeProbe0()
	for _, n := range []string{"pkeep", "preset"} {
		healthWaitStates(t, e, n, 15*time.Second, map[*netns.Host]string{b0: "down", b1: "active"})
	}
	downAt := time.Now()
	t.Logf("b0's probe port closed: both services show it down after %v", downAt.Sub(at).Round(time.Millisecond))

	cutAt := policyWaitCut(t, reset, "onDown reset, stream to b0", 10*time.Second)
	t.Logf("reset: the stream to b0 was cut %v after the API showed b0 down", cutAt.Sub(downAt).Round(time.Millisecond))
	policyNewStreamsOn(t, e, resetT, "b1", 5)

	// keep: the established stream to b0 still works, after the reset
	// service's stream was cut, and new streams avoid b0.
	for i := 0; i < 5; i++ {
		if err := keep.RoundTrip(4096, 5*time.Second); err != nil {
			t.Fatalf("onDown keep: the stream to b0 broke after b0 went down (round trip %d): %v", i, err)
		}
	}
	policyNewStreamsOn(t, e, keepT, "b1", 5)
	t.Logf("keep: the stream to b0 echoed %d bytes, still flowing", keep.Bytes)

	// A bad value is rejected with the allowed ones, and changes nothing.
	bad := healthService("preset", resetT.Addr(), vipStream, "tcp", streamPort, probe("drop"), b0, b1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := e.client.PutService(ctx, bad)
	var ae *lbclient.APIError
	if !errors.As(err, &ae) || ae.StatusCode != 400 || ae.Detail.Field != "spec.probe.onDown" || !strings.Contains(ae.Detail.Allowed, "keep, reset") {
		t.Fatalf("PUT with onDown drop: %v, want 400 naming spec.probe.onDown and the allowed values", err)
	}
	t.Logf("onDown drop rejected: %s (allowed: %s)", ae.Detail.Message, ae.Detail.Allowed)
	if s, err := e.client.GetService(ctx, "preset"); err != nil || s.Spec.Probe.OnDown != "reset" {
		t.Errorf("after the rejected PUT: onDown %q, %v; want reset unchanged", s.Spec.Probe.OnDown, err)
	}
}

// TestPolicyDrainTimeout: two services over the same two backends, one
// with drainTimeoutSeconds 3 and one without. b0 is drained (weight 0) in
// both. The stream to b0 of the first is cut once the timeout has passed
// (and not before); the other's keeps flowing; new streams go to b1.
func TestPolicyDrainTimeout(t *testing.T) {
	e := newXlbdEnv(t, 2)
	b0, b1 := e.topo.Backends[0], e.topo.Backends[1]
	for _, b := range e.topo.Backends {
		b.ServeStream(t, streamPort)
	}
	e.start()

	const timeout = 3 * time.Second
	timedT := netip.AddrPortFrom(netns.VIP4(1), vipStream)
	openT := netip.AddrPortFrom(netns.VIP4(2), vipStream)
	timed := healthService("pdrainto", timedT.Addr(), vipStream, "tcp", streamPort, nil, b0, b1)
	timed.Spec.DrainTimeoutSeconds = uint32(timeout / time.Second)
	open := healthService("pdrain", openT.Addr(), vipStream, "tcp", streamPort, nil, b0, b1)
	healthPut(t, e, timed)
	healthPut(t, e, open)
	timedS := policyStreamTo(t, e, timedT, "b0")
	openS := policyStreamTo(t, e, openT, "b0")

	zero := uint32(0)
	timed.Spec.Backends[0].Weight = &zero
	open.Spec.Backends[0].Weight = &zero
	drainAt := time.Now()
	healthPut(t, e, timed)
	healthPut(t, e, open)
	for _, n := range []string{"pdrainto", "pdrain"} {
		healthWaitStates(t, e, n, 10*time.Second, map[*netns.Host]string{b0: "draining", b1: "active"})
	}

	// Until the timeout the drained stream must keep flowing; a failure
	// is only acceptable once the timeout has passed.
	var cutAt time.Time
	deadline := drainAt.Add(timeout + 15*time.Second)
	for cutAt.IsZero() {
		err := timedS.RoundTrip(1024, 2*time.Second)
		end := time.Now()
		switch {
		case err == nil:
			if time.Now().After(deadline) {
				t.Fatalf("drainTimeoutSeconds %v: the stream to b0 still flows %v after the drain", timeout, time.Since(drainAt).Round(time.Millisecond))
			}
			time.Sleep(50 * time.Millisecond)
		case end.Sub(drainAt) < timeout:
			// The drain PUT was sent after drainAt, so the daemon armed
			// the timer after it too: no cut can come before this.
			t.Fatalf("the draining stream broke %v after the drain, before the %v timeout: %v", end.Sub(drainAt).Round(time.Millisecond), timeout, err)
		case !policyIsCut(err):
			t.Fatalf("the draining stream failed without a reset after the timeout: %v", err)
		default:
			cutAt = end
			t.Logf("drainTimeoutSeconds %v: the stream to b0 was cut %v after the drain (%d bytes echoed): %v",
				timeout, cutAt.Sub(drainAt).Round(time.Millisecond), timedS.Bytes, err)
		}
	}
	policyNewStreamsOn(t, e, timedT, "b1", 3)

	// Without a timeout the drained stream continues.
	for i := 0; i < 5; i++ {
		if err := openS.RoundTrip(4096, 5*time.Second); err != nil {
			t.Fatalf("drainTimeoutSeconds 0: the stream to b0 broke (round trip %d, %v after the drain): %v", i, time.Since(drainAt).Round(time.Millisecond), err)
		}
	}
	policyNewStreamsOn(t, e, openT, "b1", 3)
	t.Logf("no drain timeout: the stream to b0 echoed %d bytes, still flowing %v after the drain", openS.Bytes, time.Since(drainAt).Round(time.Millisecond))
}
