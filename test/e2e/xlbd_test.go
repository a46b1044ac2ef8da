package e2e

// End-to-end tests of xlbd as a real process: built with `go build`, started
// with `ip netns exec` in the LB namespace of a test/netns topology, driven
// only through xlbctl and lbclient, with traffic from the client namespace
// through the VIPs to backends that answer with their own name.
//
// Run: go test ./test/e2e/ -run Xlbd -v   (as root)

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/lbclient"
	"github.com/xlb-dev/xlb/test/netns"
)

const counterPort = 9100 // backends' counter-stream port (VIP port vipStream)

// TestXlbdServiceLifecycle: create, balance, update backends and weights,
// delete, and a bulk re-sync with garbage collection, all through the CLI
// and the client library, with traffic asserting each step.
func TestXlbdServiceLifecycle(t *testing.T) {
	e := newXlbdEnv(t, 3)
	b0, b1, b2 := e.topo.Backends[0], e.topo.Backends[1], e.topo.Backends[2]
	e.start()

	cluster := map[string]string{api.LabelCluster: "e2e"}
	web := httpService("web", netns.VIP4(0), vipHTTP, httpPort, []*netns.Host{b0, b1}, nil, nil)
	other := httpService("other", netns.VIP4(1), vipHTTP, httpPort, []*netns.Host{b2}, nil, cluster)
	keep := httpService("keep", netns.VIP4(2), vipHTTP, httpPort, []*netns.Host{b0}, nil, nil)
	out := e.apply("create", []api.Service{web, other, keep})
	for _, n := range []string{"web", "other", "keep"} {
		if !strings.Contains(out, "service/"+n+" created") {
			t.Fatalf("xlbctl apply: no %q in\n%s", "service/"+n+" created", out)
		}
	}
	table := e.mustXlbctl("get", "services")
	for _, want := range []string{"web", "other", "keep", netns.VIP4(0).String(), "80/tcp"} {
		if !strings.Contains(table, want) {
			t.Fatalf("xlbctl get services: no %q in\n%s", want, table)
		}
	}

	webVIP := netip.AddrPortFrom(netns.VIP4(0), vipHTTP)
	t.Run("conflict refused, nothing changed", func(t *testing.T) {
		clash := httpService("clash", netns.VIP4(0), vipHTTP, httpPort, []*netns.Host{b2}, nil, nil)
		path := filepath.Join(e.dir, "clash.yaml")
		if err := os.WriteFile(path, []byte(servicesYAML([]api.Service{clash})), 0o600); err != nil {
			t.Fatal(err)
		}
		_, errOut, err := e.xlbctl("apply", "-f", path)
		if err == nil || !strings.Contains(errOut, "409") || !strings.Contains(errOut, "web") {
			t.Fatalf("apply of a service on web's VIP:port: err=%v stderr=%s; want a 409 naming web", err, errOut)
		}
		if _, ok := e.servicesByName()["clash"]; ok {
			t.Fatal("the conflicting service was created")
		}
	})
	otherVIP := netip.AddrPortFrom(netns.VIP4(1), vipHTTP)
	keepVIP := netip.AddrPortFrom(netns.VIP4(2), vipHTTP)
	t.Run("balanced", func(t *testing.T) {
		waitBalanced(t, e.topo, webVIP, 24, "b0", "b1")
		waitBalanced(t, e.topo, otherVIP, 4, "b2")
		waitBalanced(t, e.topo, keepVIP, 4, "b0")
	})

	t.Run("update backends", func(t *testing.T) {
		upd := httpService("web", netns.VIP4(0), vipHTTP, httpPort, []*netns.Host{b1, b2}, nil, nil)
		if out := e.apply("update1", []api.Service{upd}); !strings.Contains(out, "service/web configured") {
			t.Fatalf("xlbctl apply: want service/web configured, got\n%s", out)
		}
		waitBalanced(t, e.topo, webVIP, 24, "b1", "b2")
	})

	t.Run("update weights", func(t *testing.T) {
		// b1 drained (weight 0): new flows only to b2.
		upd := httpService("web", netns.VIP4(0), vipHTTP, httpPort, []*netns.Host{b1, b2}, []uint32{0, 1}, nil)
		e.apply("update2", []api.Service{upd})
		waitBalanced(t, e.topo, webVIP, 16, "b2")
		got, err := e.client.GetService(context.Background(), "web")
		if err != nil {
			t.Fatal(err)
		}
		if w := got.Spec.Backends[0].Weight; w == nil || *w != 0 {
			t.Fatalf("web backend 0 weight = %v, want 0: %+v", w, got.Spec.Backends)
		}
	})

	t.Run("delete", func(t *testing.T) {
		if out := e.mustXlbctl("delete", "service", "web"); !strings.Contains(out, "service/web deleted") {
			t.Fatalf("xlbctl delete: %s", out)
		}
		waitSilent(t, e.topo, webVIP)
		if _, err := e.client.GetService(context.Background(), "web"); !lbclient.IsNotFound(err) {
			t.Fatalf("GetService(web) after delete: %v, want not found", err)
		}
		// The other services are untouched.
		waitBalanced(t, e.topo, otherVIP, 4, "b2")
		waitBalanced(t, e.topo, keepVIP, 4, "b0")
		// Deleting again is an error (exit 1) naming the service.
		if _, errOut, err := e.xlbctl("delete", "service", "web"); err == nil || !strings.Contains(errOut, "web") {
			t.Fatalf("second delete: err=%v stderr=%s", err, errOut)
		}
	})

	t.Run("bulk resync with garbage collection", func(t *testing.T) {
		fresh := httpService("fresh", netns.VIP4(3), vipHTTP, httpPort, []*netns.Host{b0, b1}, nil, cluster)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		res, err := e.client.BulkReplace(ctx, api.BulkReplace{Selector: cluster, Services: []api.Service{fresh}})
		if err != nil {
			t.Fatalf("PUT /v1/services: %v", err)
		}
		if fmt.Sprint(res.Created) != "[fresh]" || fmt.Sprint(res.Deleted) != "[other]" || len(res.Updated) != 0 {
			t.Fatalf("bulk result %+v: want created [fresh], deleted [other], nothing updated", res)
		}
		waitSilent(t, e.topo, otherVIP)
		waitBalanced(t, e.topo, netip.AddrPortFrom(netns.VIP4(3), vipHTTP), 24, "b0", "b1")
		// Outside the selector: untouched.
		waitBalanced(t, e.topo, keepVIP, 4, "b0")
		if got := names(e.servicesByName()); got != "fresh,keep" {
			t.Fatalf("services after bulk replace: %s, want fresh,keep", got)
		}

		// The same through xlbctl: apply --prune --selector.
		again := httpService("again", netns.VIP4(4), vipHTTP, httpPort, []*netns.Host{b2}, nil, cluster)
		out := e.apply("prune", []api.Service{again}, "--prune", "--selector", api.LabelCluster+"=e2e")
		if !strings.Contains(out, "service/again created") || !strings.Contains(out, "service/fresh pruned") {
			t.Fatalf("xlbctl apply --prune: %s", out)
		}
		waitSilent(t, e.topo, netip.AddrPortFrom(netns.VIP4(3), vipHTTP))
		waitBalanced(t, e.topo, netip.AddrPortFrom(netns.VIP4(4), vipHTTP), 4, "b2")
		if got := names(e.servicesByName()); got != "again,keep" {
			t.Fatalf("services after prune: %s, want again,keep", got)
		}
	})
}

func names(m map[string]api.Service) string {
	var n []string
	for k := range m {
		n = append(n, k)
	}
	sort.Strings(n)
	return strings.Join(n, ",")
}

// TestXlbdRestartKeepsConnections: SIGTERM, then start again with the same
// state dir and bpffs: a streaming TCP connection through the VIP loses,
// duplicates and resets nothing, traffic flows while xlbd is down, and the
// same services are programmed afterwards.
func TestXlbdRestartKeepsConnections(t *testing.T) {
	testRestart(t, syscall.SIGTERM, "tcx")
}

// TestXlbdKill9KeepsConnections: the same with SIGKILL (no clean shutdown).
func TestXlbdKill9KeepsConnections(t *testing.T) {
	testRestart(t, syscall.SIGKILL, "tcx")
}

// TestXlbdRestartXDP: the restart test with the datapath on the XDP hook
// (native XDP on the veths).
func TestXlbdRestartXDP(t *testing.T) {
	testRestart(t, syscall.SIGTERM, "xdp")
}

func testRestart(t *testing.T, sig syscall.Signal, hook string) {
	e := newXlbdEnv(t, 2)
	e.hook = hook
	step := stepper(t)
	serveCounter(t, e.topo, counterPort)
	e.start()
	step("xlbd started")
	stream := httpService("stream", netns.VIP4(0), vipStream, counterPort, e.topo.Backends, nil, nil)
	// Round robin: were the flow's conntrack entry lost in the restart, its
	// next packet would be balanced afresh (to the other backend half of the
	// time) and reset; maglev would hide the loss by hashing it back.
	stream.Spec.Algorithm = "rr"
	web := httpService("web", netns.VIP4(1), vipHTTP, httpPort, e.topo.Backends, nil, map[string]string{"app": "web"})
	gone := httpService("gone", netns.VIP4(2), vipHTTP, httpPort, e.topo.Backends, nil, nil)
	e.apply("svcs", []api.Service{stream, web, gone})
	// A service deleted before the restart must not come back from the pins.
	goneVIP := netip.AddrPortFrom(netns.VIP4(2), vipHTTP)
	waitBalanced(t, e.topo, goneVIP, 4, "b0", "b1")
	e.mustXlbctl("delete", "service", "gone")
	waitSilent(t, e.topo, goneVIP)
	step("gone deleted")
	before := e.servicesByName()
	if len(before) != 2 {
		t.Fatalf("services before restart: %v", names(before))
	}
	webVIP := netip.AddrPortFrom(netns.VIP4(1), vipHTTP)
	waitBalanced(t, e.topo, webVIP, 24, "b0", "b1")
	step("web balanced")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	s, err := openCounter(ctx, e.topo.Client.NS, netip.AddrPortFrom(netns.VIP4(0), vipStream))
	cancel()
	if err != nil {
		t.Fatalf("open stream through the VIP: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	t.Logf("stream served by %s", s.Backend)
	s.waitProgress(t, 256<<10)
	step("stream flowing")

	stoppedAt := time.Now()
	if sig == syscall.SIGTERM {
		e.stop()
	} else {
		e.kill()
	}
	t.Logf("xlbd stopped by %v with the stream at %d bytes", sig, s.Bytes())
	if _, err := os.Stat(filepath.Join(e.stateDir, "services.json")); err != nil {
		t.Fatalf("state file after %v: %v", sig, err)
	}

	// While xlbd is down the pinned datapath keeps forwarding: the stream
	// progresses and new connections are balanced.
	s.waitProgress(t, 256<<10)
	step("stream flowing while down")
	waitBalanced(t, e.topo, webVIP, 24, "b0", "b1")
	step("web balanced while down")

	e.start()
	step("restarted")
	s.waitProgress(t, 512<<10)
	step("stream flowing after restart")
	after := e.servicesByName()
	if names(after) != names(before) {
		t.Fatalf("services after restart: %s, before: %s", names(after), names(before))
	}
	for n, b := range before {
		if specKey(after[n]) != specKey(b) {
			t.Errorf("service %s after restart: %s, before: %s", n, specKey(after[n]), specKey(b))
		}
		if fmt.Sprint(after[n].Labels) != fmt.Sprint(b.Labels) {
			t.Errorf("service %s labels after restart: %v, before %v", n, after[n].Labels, b.Labels)
		}
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	st, err := e.client.Status(ctx)
	cancel()
	if err != nil {
		t.Fatalf("GET /v1/status: %v", err)
	}
	if !st.Ready || st.Services != 2 || st.Hook != hook || len(st.Interfaces) != 2 {
		t.Errorf("status after restart: %+v, want ready, 2 services, hook %s, 2 interfaces", st, hook)
	}
	for _, i := range st.Interfaces {
		if !i.Attached || !strings.HasPrefix(i.Mode, hook) {
			t.Errorf("interface after restart: %+v, want attached in %s mode", i, hook)
		}
	}

	// The stream's flow is the one tracked before the restart, not a new one.
	streamFlow := findFlow(t, e.client, s)
	if min := time.Since(stoppedAt).Seconds(); streamFlow.AgeSeconds < min {
		t.Errorf("stream flow %+v: age %.2fs, want ≥ %.2fs (tracked since before the restart)", streamFlow, streamFlow.AgeSeconds, min)
	}
	if want := netns.AddrPort(s.BackendAddr(e.topo), counterPort); streamFlow.Backend != want {
		t.Errorf("stream flow backend %s, want %s (%s)", streamFlow.Backend, want, s.Backend)
	}

	t.Run("xlbctl get conntrack --client ADDR:PORT", func(t *testing.T) {
		if sig != syscall.SIGTERM || hook != "tcx" {
			t.Skip("checked once, in TestXlbdRestartKeepsConnections")
		}
		// docs/xlbctl.md and lbclient.Filter promise ADDR[:PORT].
		local := s.conn.LocalAddr().String()
		out, errOut, err := e.xlbctl("get", "conntrack", "--client", local)
		if err != nil || !strings.Contains(out, local) {
			t.Errorf("xlbctl get conntrack --client %s: %v\nstdout:\n%s\nstderr:\n%s", local, err, out, errOut)
		}
	})

	waitSilent(t, e.topo, goneVIP)
	step("gone still silent")

	// New connections work after the restart, and the daemon is still
	// driving the datapath: an update takes effect.
	waitBalanced(t, e.topo, webVIP, 24, "b0", "b1")
	e.apply("update", []api.Service{httpService("web", netns.VIP4(1), vipHTTP, httpPort, e.topo.Backends[1:], nil, map[string]string{"app": "web"})})
	waitBalanced(t, e.topo, webVIP, 16, "b1")
	step("update applied")
	// A second stream after the restart also works end to end.
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	s2, err := openCounter(ctx, e.topo.Client.NS, netip.AddrPortFrom(netns.VIP4(0), vipStream))
	cancel()
	if err != nil {
		t.Fatalf("new stream after restart: %v", err)
	}
	s2.waitProgress(t, 256<<10)
	s.waitProgress(t, 256<<10)
	step("second stream flowing")
	if err := s2.Close(); err != nil {
		t.Error(err)
	}
	total := s.Bytes()
	if err := s.Close(); err != nil {
		t.Fatalf("stream across the restart: %v", err)
	}
	t.Logf("stream across the restart: %d bytes verified in order, no reset", total)
}

// TestXlbdCorruptStateFile: garbage in services.json does not keep xlbd
// down: it starts with no services, keeps the bad file aside and says so.
func TestXlbdCorruptStateFile(t *testing.T) {
	e := newXlbdEnv(t, 1)
	if err := os.MkdirAll(e.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	garbage := []byte("{\"formatVersion\": 1, \"services\": [ \x00\xff not json at all\n")
	if err := os.WriteFile(filepath.Join(e.stateDir, "services.json"), garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	p := e.start()
	if got := e.servicesByName(); len(got) != 0 {
		t.Fatalf("services after a corrupt state file: %s, want none", names(got))
	}
	ents, err := os.ReadDir(e.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	var aside []string
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), "services.json.corrupt-") {
			aside = append(aside, ent.Name())
		} else if ent.Name() == "services.json" {
			t.Errorf("the corrupt services.json is still in place")
		}
	}
	if len(aside) != 1 {
		t.Fatalf("state dir %s holds %v, want exactly one services.json.corrupt-*", e.stateDir, dirNames(ents))
	}
	if kept, err := os.ReadFile(filepath.Join(e.stateDir, aside[0])); err != nil || string(kept) != string(garbage) {
		t.Fatalf("kept-aside file %s: %v, content %q, want the original bytes", aside[0], err, kept)
	}
	log := p.log.String()
	if !strings.Contains(log, "corrupt") || !strings.Contains(log, aside[0]) {
		t.Fatalf("xlbd's log does not mention the corrupt file and where it went (%s):\n%s", aside[0], log)
	}
	t.Logf("xlbd said: %s", lineWith(log, "corrupt"))
	// And it works: a service applied now is served and persisted.
	e.apply("svc", []api.Service{httpService("web", netns.VIP4(0), vipHTTP, httpPort, e.topo.Backends, nil, nil)})
	waitBalanced(t, e.topo, netip.AddrPortFrom(netns.VIP4(0), vipHTTP), 4, "b0")
	data, err := os.ReadFile(filepath.Join(e.stateDir, "services.json"))
	if err != nil || !strings.Contains(string(data), `"web"`) {
		t.Fatalf("state file after apply: %v\n%s", err, data)
	}
}

// findFlow returns the conntrack entry of a counter stream, read through the API.
func findFlow(t *testing.T, c *lbclient.Client, s *counterStream) api.Flow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	local := s.conn.LocalAddr().String()
	addr := netip.MustParseAddrPort(local).Addr().String()
	list, err := c.Conntrack(ctx, lbclient.Filter{Client: addr})
	if err != nil {
		t.Fatalf("GET /v1/conntrack?client=%s: %v", addr, err)
	}
	for _, f := range list.Items {
		if f.Client == local && f.VIP == s.conn.RemoteAddr().String() {
			return f
		}
	}
	t.Fatalf("no conntrack entry for the stream %s -> %s: %+v", local, s.conn.RemoteAddr(), list.Items)
	return api.Flow{}
}

// stepper returns a logger of test phases with the time since the start,
// so that a slow or hanging phase is visible in -v output.
func stepper(t *testing.T) func(string) {
	start := time.Now()
	return func(msg string) {
		t.Helper()
		t.Logf("[+%6.2fs] %s", time.Since(start).Seconds(), msg)
	}
}

// lineWith returns the first line of text containing sub.
func lineWith(text, sub string) string {
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

func dirNames(ents []os.DirEntry) []string {
	var n []string
	for _, e := range ents {
		n = append(n, e.Name())
	}
	return n
}

// TestXlbdAuth: requests without or with a wrong token are refused (the
// public probes are not), and xlbd refuses to serve the API on a
// non-loopback address without authentication unless --insecure.
func TestXlbdAuth(t *testing.T) {
	e := newXlbdEnv(t, 1)
	e.start()
	e.apply("svc", []api.Service{httpService("web", netns.VIP4(0), vipHTTP, httpPort, e.topo.Backends, nil, nil)})

	t.Run("no token", func(t *testing.T) {
		out, errOut, err := e.xlbctlWith([]string{"--server", e.endpoint}, "get", "services")
		if err == nil || !strings.Contains(errOut, "401") || !strings.Contains(errOut, "unauthorized") {
			t.Fatalf("xlbctl without a token: err=%v\nstdout=%s\nstderr=%s\nwant exit 1 with 401 unauthorized", err, out, errOut)
		}
		if strings.Contains(out, "web") {
			t.Fatalf("xlbctl without a token printed services:\n%s", out)
		}
		// Nothing changes without a token.
		_, errOut, err = e.xlbctlWith([]string{"--server", e.endpoint}, "delete", "service", "web")
		if err == nil || !strings.Contains(errOut, "unauthorized") {
			t.Fatalf("delete without a token: err=%v stderr=%s", err, errOut)
		}
		if _, ok := e.servicesByName()["web"]; !ok {
			t.Fatal("service web gone after an unauthorized delete")
		}
	})
	t.Run("wrong token", func(t *testing.T) {
		bad := filepath.Join(e.dir, "bad-token")
		if err := os.WriteFile(bad, []byte("not-the-token\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, errOut, err := e.xlbctlWith([]string{"--server", e.endpoint, "--token-file", bad}, "get", "services")
		if err == nil || !strings.Contains(errOut, "unauthorized") {
			t.Fatalf("xlbctl with a wrong token: err=%v stderr=%s", err, errOut)
		}
		c, err := lbclient.New(lbclient.Config{Endpoint: e.endpoint, Token: "not-the-token", Retries: -1})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.ListServices(ctx, nil); !lbclient.IsUnauthorized(err) {
			t.Fatalf("lbclient with a wrong token: %v, want unauthorized", err)
		}
		// The probes stay public.
		if err := c.Readyz(ctx); err != nil {
			t.Fatalf("readyz without a valid token: %v", err)
		}
	})

	// The remaining cases start other xlbd processes on the same datapath.
	e.stop()
	public := netip.AddrPortFrom(e.topo.LB.ClientLink.Addr4, xlbdAPIPort+1)
	noAuth := func(extra ...string) []string {
		var args []string
		d := e.defaultArgs()
		for i := 0; i < len(d); i += 2 {
			switch d[i] {
			case "--api-token-file":
				continue
			case "--api-listen":
				args = append(args, d[i], public.String())
				continue
			}
			args = append(args, d[i], d[i+1])
		}
		return append(args, extra...)
	}
	t.Run("non-loopback without auth refused", func(t *testing.T) {
		p := e.startProc(noAuth()...)
		code, err := p.signal(0) // just wait: it must exit by itself
		if err != nil {
			t.Fatalf("xlbd kept running on %s without authentication: %v\n%s", public, err, p.log.String())
		}
		log := p.log.String()
		if code == 0 || !strings.Contains(log, "--api-listen") || !strings.Contains(log, "without authentication") || !strings.Contains(log, "--insecure") {
			t.Fatalf("xlbd on %s without auth: exit %d, log:\n%s\nwant a non-zero exit naming --api-listen, the missing authentication and --insecure", public, code, log)
		}
		t.Logf("xlbd exited %d: %s", code, lineWith(log, "without authentication"))
	})
	t.Run("non-loopback with --insecure starts", func(t *testing.T) {
		p := e.startProc(noAuth("--insecure")...)
		ep := "http://" + forwardToNS(t, e.topo.LB.NS, public.String())
		c, err := lbclient.New(lbclient.Config{Endpoint: ep, Retries: -1, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		netns.Poll(t, 60*time.Second, func() error {
			if p.exited() {
				t.Fatalf("xlbd --insecure exited: %v\n%s", p.err, p.log.String())
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return c.Readyz(ctx)
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		list, err := c.ListServices(ctx, nil)
		if err != nil || len(list.Items) != 1 || list.Items[0].Name != "web" {
			t.Fatalf("services on the --insecure API: %+v, %v; want web (restored)", list, err)
		}
		if !strings.Contains(p.log.String(), "--insecure") {
			t.Errorf("no warning about --insecure in the log:\n%s", p.log.String())
		}
		if code, err := p.signal(syscall.SIGTERM); err != nil || code != 0 {
			t.Fatalf("stop: exit %d, %v", code, err)
		}
	})
}
