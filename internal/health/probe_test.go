package health

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/api"
)

// probeOnce runs one probe of p against dst with p's (normalized) timeout.
func probeOnce(t *testing.T, pg *pinger, p api.Probe, dst netip.AddrPort) error {
	t.Helper()
	s, err := normalize(p)
	if err != nil {
		t.Fatalf("normalize %+v: %v", p, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	defer cancel()
	return newProber(s, pg).probe(ctx, dst)
}

// wantProbe checks a probe result: wantErr "" means success, otherwise the
// error must contain it.
func wantProbe(t *testing.T, err error, wantErr string) {
	t.Helper()
	switch {
	case wantErr == "" && err != nil:
		t.Fatalf("probe failed: %v", err)
	case wantErr != "" && err == nil:
		t.Fatalf("probe succeeded, want an error containing %q", wantErr)
	case wantErr != "" && !strings.Contains(err.Error(), wantErr):
		t.Fatalf("probe error %q does not contain %q", err, wantErr)
	}
}

func TestProbeTCP(t *testing.T) {
	n := newTNet(t)
	for _, addr := range []netip.Addr{n.ns4, n.ns6} {
		t.Run(addr.String(), func(t *testing.T) {
			l := n.listenTCP(t, netip.AddrPortFrom(addr, 0).String())
			serveTCP(l)
			dst := netip.MustParseAddrPort(l.Addr().String())
			p := api.Probe{Type: "tcp"}

			wantProbe(t, probeOnce(t, nil, p, dst), "")
			// Listener gone: the kernel answers the SYN with a RST.
			l.Close()
			wantProbe(t, probeOnce(t, nil, p, dst), "connection refused")
		})
	}
	t.Run("dead host", func(t *testing.T) {
		l := n.listenTCP(t, netip.AddrPortFrom(n.ns4, 0).String())
		serveTCP(l)
		dst := netip.MustParseAddrPort(l.Addr().String())
		n.setNSLink(t, false)
		defer n.setNSLink(t, true)
		start := time.Now()
		wantProbe(t, probeOnce(t, nil, api.Probe{Type: "tcp", IntervalMillis: 1000, TimeoutMillis: 300}, dst), "timeout")
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("probe of a dead host took %v, the timeout is 300ms", d)
		}
	})
}

func TestProbeUDP(t *testing.T) {
	n := newTNet(t)
	for _, addr := range []netip.Addr{n.ns4, n.ns6} {
		t.Run(addr.String(), func(t *testing.T) {
			any0 := netip.AddrPortFrom(addr, 0).String()
			echo := n.serveUDP(t, any0, func(b []byte) []byte {
				if string(b) == "ping" {
					return []byte("xx pong xx")
				}
				return []byte("what?")
			})
			silent := n.serveUDP(t, any0, func([]byte) []byte { return nil })
			echoDst := netip.MustParseAddrPort(echo.LocalAddr().String())
			silentDst := netip.MustParseAddrPort(silent.LocalAddr().String())
			fast := func(p api.Probe) api.Probe { p.Type, p.IntervalMillis, p.TimeoutMillis = "udp", 1000, 300; return p }

			wantProbe(t, probeOnce(t, nil, fast(api.Probe{Request: "ping", Response: "pong"}), echoDst), "")
			wantProbe(t, probeOnce(t, nil, fast(api.Probe{Request: "hello", Response: "pong"}), echoDst), "does not contain")
			wantProbe(t, probeOnce(t, nil, fast(api.Probe{Request: "ping", Response: "pong"}), silentDst), "no reply")
			// Without an expected response, silence is success ...
			wantProbe(t, probeOnce(t, nil, fast(api.Probe{Request: "ping"}), silentDst), "")
			// ... and a closed port is an ICMP port unreachable.
			silent.Close()
			wantProbe(t, probeOnce(t, nil, fast(api.Probe{Request: "ping"}), silentDst), "port unreachable")
			echo.Close()
			wantProbe(t, probeOnce(t, nil, fast(api.Probe{Request: "ping", Response: "pong"}), echoDst), "port unreachable")
		})
	}
}

func TestProbeHTTP(t *testing.T) {
	n := newTNet(t)
	var redirected atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "status: all good") })
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "sick", http.StatusServiceUnavailable) })
	mux.HandleFunc("/host", func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "backend.example" || r.Method != http.MethodHead {
			http.Error(w, "wrong host or method", http.StatusBadRequest)
		}
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) })
	mux.HandleFunc("/elsewhere", func(w http.ResponseWriter, r *http.Request) { redirected.Add(1) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		// The marker sits beyond the bounded read.
		w.Write([]byte(strings.Repeat("x", maxBodyRead+10) + "MARKER"))
	})

	for _, addr := range []netip.Addr{n.ns4, n.ns6} {
		t.Run(addr.String(), func(t *testing.T) {
			srv := n.serveHTTP(t, netip.AddrPortFrom(addr, 0).String(), mux, nil)
			dst := srv.addr
			h := func(p api.Probe) api.Probe { p.Type = "http"; return p }
			for _, tc := range []struct {
				name    string
				probe   api.Probe
				wantErr string
			}{
				{"ok", h(api.Probe{Path: "/ok"}), ""},
				{"ok body", h(api.Probe{Path: "/ok", ExpectBody: "all good"}), ""},
				{"wrong body", h(api.Probe{Path: "/ok", ExpectBody: "on fire"}), "does not contain"},
				{"body beyond bound", h(api.Probe{Path: "/big", ExpectBody: "MARKER"}), "does not contain"},
				{"wrong status", h(api.Probe{Path: "/fail"}), "status 503, want 200-399"},
				{"expected status", h(api.Probe{Path: "/fail", ExpectStatus: []int{503}}), ""},
				{"not found", h(api.Probe{Path: "/nope"}), "status 404"},
				{"host and method", h(api.Probe{Path: "/host", Host: "backend.example", Method: "HEAD"}), ""},
				{"redirect not followed", h(api.Probe{Path: "/redirect"}), ""},
				{"redirect status not listed", h(api.Probe{Path: "/redirect", ExpectStatus: []int{200}}), "status 302"},
				{"slow", h(api.Probe{Path: "/slow", IntervalMillis: 1000, TimeoutMillis: 200}), "deadline exceeded"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					wantProbe(t, probeOnce(t, nil, tc.probe, dst), tc.wantErr)
				})
			}
			if got := redirected.Load(); got != 0 {
				t.Errorf("redirect target was fetched %d times; redirects must not be followed", got)
			}
			// Every probe opened its own connection (no keep-alive reuse).
			before := srv.connCount()
			for range 3 {
				wantProbe(t, probeOnce(t, nil, h(api.Probe{Path: "/ok"}), dst), "")
			}
			if got := srv.connCount() - before; got != 3 {
				t.Errorf("3 probes used %d new connections, want 3", got)
			}
			srv.l.Close()
			wantProbe(t, probeOnce(t, nil, h(api.Probe{Path: "/ok"}), dst), "connection refused")
		})
	}
}

func TestProbeHTTPS(t *testing.T) {
	n := newTNet(t)
	cert := selfSigned(t, []netip.Addr{n.ns4, n.ns6}, "backend.example")
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "tls ok") })
	for _, addr := range []netip.Addr{n.ns4, n.ns6} {
		t.Run(addr.String(), func(t *testing.T) {
			srv := n.serveHTTP(t, netip.AddrPortFrom(addr, 0).String(), mux, cert)
			wantProbe(t, probeOnce(t, nil, api.Probe{Type: "https"}, srv.addr), "certificate")
			wantProbe(t, probeOnce(t, nil, api.Probe{Type: "https", Host: "backend.example"}, srv.addr), "certificate")
			wantProbe(t, probeOnce(t, nil, api.Probe{Type: "https", InsecureSkipVerify: true, ExpectBody: "tls ok"}, srv.addr), "")
			// Plain http against a TLS port gets a 400 from Go's server.
			wantProbe(t, probeOnce(t, nil, api.Probe{Type: "http"}, srv.addr), "status 400")
		})
	}
}

func TestProbePing(t *testing.T) {
	n := newTNet(t)
	pg := newPinger()
	t.Cleanup(pg.close)
	p := api.Probe{Type: "ping", IntervalMillis: 1000, TimeoutMillis: 500}
	for _, addr := range []netip.Addr{n.ns4, n.ns6} {
		t.Run("live "+addr.String(), func(t *testing.T) {
			// The very first echo may wait for neighbour resolution; it is
			// still well inside the timeout, so no retry is needed.
			wantProbe(t, probeOnce(t, pg, p, netip.AddrPortFrom(addr, 0)), "")
		})
	}
	// Many concurrent pings over the shared sockets each get their reply.
	t.Run("concurrent", func(t *testing.T) {
		errs := make(chan error, 64)
		for i := range 64 {
			go func() {
				addr := n.ns4
				if i%2 == 1 {
					addr = n.ns6
				}
				errs <- probeOnce(t, pg, p, netip.AddrPortFrom(addr, 0))
			}()
		}
		for range 64 {
			wantProbe(t, <-errs, "")
		}
	})
	n.setNSLink(t, false)
	for _, addr := range []netip.Addr{n.ns4, n.ns6} {
		t.Run("dead "+addr.String(), func(t *testing.T) {
			wantProbe(t, probeOnce(t, pg, p, netip.AddrPortFrom(addr, 0)), "no echo reply")
		})
	}
}

// The datagram-socket fallback, in a namespace whose ping_group_range lets
// root's group use ICMP datagram sockets (the sysctl is per namespace).
func TestProbePingDatagram(t *testing.T) {
	n := newTNet(t)
	run(t, "ip", "netns", "exec", n.name, "sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 0")
	pg := newPinger()
	t.Cleanup(pg.close)
	// Open the sockets inside the namespace; they stay there.
	if err := n.do(func() error {
		for i, v6 := range []bool{false, true} {
			c, err := openEchoConn(v6, false)
			if err != nil {
				return err
			}
			if c.raw {
				return fmt.Errorf("got a raw socket")
			}
			pg.conns[i] = c
			go c.read()
		}
		return nil
	}); err != nil {
		t.Fatalf("open datagram icmp sockets in %s: %v", n.name, err)
	}
	p := api.Probe{Type: "ping", IntervalMillis: 1000, TimeoutMillis: 500}
	for _, addr := range []netip.Addr{n.host4, n.host6} {
		wantProbe(t, probeOnce(t, pg, p, netip.AddrPortFrom(addr, 0)), "")
	}
	// The far end (the test's side) goes away. Depending on the state of
	// the neighbour entry the send itself may fail (ENOBUFS) or the reply
	// never comes; either way the probe fails.
	run(t, "ip", "link", "set", n.hostIf, "down")
	for _, addr := range []netip.Addr{n.host4, n.host6} {
		wantProbe(t, probeOnce(t, pg, p, netip.AddrPortFrom(addr, 0)), "ping "+addr.String())
	}
}

func TestProbeNone(t *testing.T) {
	wantProbe(t, probeOnce(t, nil, api.Probe{Type: "none"}, netip.MustParseAddrPort("192.0.2.1:1")), "")
}

// The listener kills below cover "server gone"; this covers a real server
// process killed by PID.
func TestProbeTCPProcessKilled(t *testing.T) {
	n := newTNet(t)
	cmd, dst := startHelper(t, n.name, "tcp", netip.AddrPortFrom(n.ns4, 0).String())
	p := api.Probe{Type: "tcp"}
	wantProbe(t, probeOnce(t, nil, p, dst), "")
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	wantProbe(t, probeOnce(t, nil, p, dst), "connection refused")
}
