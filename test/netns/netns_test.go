package netns

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPrefixAndNames(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		p := NewPrefix()
		if len(p) != 6 || p[0] != 'x' {
			t.Fatalf("prefix %q: want x + 5 characters", p)
		}
		if len(p+"b199") > 15 || len(p+"br") > 15 {
			t.Fatalf("link names with prefix %q exceed 15 characters", p)
		}
		seen[p] = true
	}
	if len(seen) < 95 {
		t.Fatalf("prefixes repeat: %d distinct of 100", len(seen))
	}
	if got := VIP4(0).String(); got != "198.19.0.10" {
		t.Fatalf("VIP4(0) = %s", got)
	}
	if got := VIP6(1).String(); got != "fd78:6c62:ff::b" {
		t.Fatalf("VIP6(1) = %s", got)
	}
	if _, err := Cleanup(""); err == nil {
		t.Fatal("Cleanup(\"\") must refuse")
	}
}

func TestParseReply(t *testing.T) {
	r, err := ParseReply("b1 [::ffff:198.18.0.2]:4242\n")
	if err != nil {
		t.Fatal(err)
	}
	if r.Backend != "b1" || r.Peer != netip.MustParseAddrPort("198.18.0.2:4242") {
		t.Fatalf("got %+v", r)
	}
	for _, bad := range []string{"", "b1", "b1 nope", "a b c"} {
		if _, err := ParseReply(bad); err == nil {
			t.Errorf("ParseReply(%q) accepted", bad)
		}
	}
}

// TestTopologyDirect checks the topology without any load balancer: ping,
// HTTP, stream and UDP from the client straight to each backend's address,
// routed by the LB namespace, over IPv4 and IPv6.
func TestTopologyDirect(t *testing.T) {
	topo := New(t, Options{Backends: 2, ClientAddrs: 2})
	t.Logf("prefix %s", topo.Prefix)
	topo.ServeAll(t, 8080, 9000, 5353)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, b := range topo.Backends {
		for _, addr := range []netip.Addr{b.Link.Addr4, b.Link.Addr6} {
			if _, err := topo.Client.Run(ctx, "ping", "-c1", "-W2", addr.String()); err != nil {
				t.Fatalf("ping %s: %v", addr, err)
			}
			r, err := topo.Client.Get(ctx, netip.Addr{}, netip.AddrPortFrom(addr, 8080))
			if err != nil {
				t.Fatalf("http %s: %v", addr, err)
			}
			want := topo.Client.Link.Addr4
			if addr.Is6() {
				want = topo.Client.Link.Addr6
			}
			if r.Backend != b.Label || r.Peer.Addr() != want {
				t.Fatalf("http %s: got %+v, want backend %s peer %s", addr, r, b.Label, want)
			}
			u, err := topo.Client.UDPRequest(ctx, netip.AddrPortFrom(addr, 5353), []byte("hi"))
			if err != nil {
				t.Fatalf("udp %s: %v", addr, err)
			}
			if u.Backend != b.Label || u.Peer.Addr() != want {
				t.Fatalf("udp %s: got %+v", addr, u)
			}
			s, err := topo.Client.OpenStream(ctx, netip.AddrPortFrom(addr, 9000))
			if err != nil {
				t.Fatalf("stream %s: %v", addr, err)
			}
			for range 10 {
				if err := s.RoundTrip(8192, 5*time.Second); err != nil {
					t.Fatalf("stream %s: %v", addr, err)
				}
			}
			s.Close()
		}
	}
	// A second client address is usable as a source.
	r, err := topo.Client.Get(ctx, topo.Client.Addrs4[0], netip.AddrPortFrom(topo.Backends[0].Link.Addr4, 8080))
	if err != nil {
		t.Fatal(err)
	}
	if r.Peer.Addr() != topo.Client.Addrs4[0] {
		t.Fatalf("peer %s, want %s", r.Peer.Addr(), topo.Client.Addrs4[0])
	}
	// The keep-alive client works through DialContext.
	resp, err := topo.Client.HTTPClient(true).Get(fmt.Sprintf("http://%s/", AddrPort(topo.Backends[1].Link.Addr6, 8080)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// Backends reach the client too (default route through the LB).
	if _, err := topo.Backends[0].Run(ctx, "ping", "-c1", "-W2", topo.Client.Link.Addr6.String()); err != nil {
		t.Fatal(err)
	}
}

// TestTopologyCleanup checks that closing a topology leaves no namespace
// behind, and that Cleanup removes stale namespaces by prefix.
func TestTopologyCleanup(t *testing.T) {
	RequireRoot(t)
	ctx := context.Background()
	topo, err := Build(ctx, Options{Backends: 1})
	if err != nil {
		t.Fatal(err)
	}
	names := topo.Namespaces()
	if len(names) != 4 {
		t.Fatalf("namespaces %v: want 4", names)
	}
	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(netnsDir, n)); !os.IsNotExist(err) {
			t.Errorf("namespace %s still exists (%v)", n, err)
		}
	}

	prefix := NewPrefix()
	for _, s := range []string{"-a", "-b"} {
		n, err := CreateNS(prefix + s)
		if err != nil {
			t.Fatal(err)
		}
		n.nl.Close()
		n.handle.Close()
	}
	deleted, err := Cleanup(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(deleted) != 2 {
		t.Fatalf("Cleanup deleted %v, want 2 namespaces", deleted)
	}
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// TestStartProcess runs a process in a namespace and checks it sees the
// namespace's links and is reaped by the cleanup.
func TestStartProcess(t *testing.T) {
	topo := New(t, Options{Backends: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := topo.LB.Run(ctx, "ip", "-br", "link")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range topo.LB.Interfaces() {
		if !strings.Contains(out, l) {
			t.Fatalf("LB links %q lack %s", out, l)
		}
	}
	var pid int
	t.Run("start", func(t *testing.T) {
		cmd := topo.Backends[0].Start(t, nil, "sleep", "60")
		pid = cmd.Process.Pid
		Poll(t, 5*time.Second, func() error {
			_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
			return err
		})
	})
	// The subtest's cleanup has run: the process is gone (reaped).
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !os.IsNotExist(err) {
		t.Fatalf("process %d still exists after cleanup", pid)
	}
}
