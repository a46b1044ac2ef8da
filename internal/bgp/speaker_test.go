package bgp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// router is a BIRD 2 instance in its own network namespace, connected to
// the root namespace (where the Speaker under test runs) by a veth pair.
type router struct {
	ns, ctl string
	// addresses on the veth: ours (root side) and the router's.
	our4, rtr4 netip.Addr
	our6, rtr6 netip.Addr
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// startRouter creates the namespace and veth and starts BIRD with one BGP
// session per family towards the root-side addresses. password may be "".
func startRouter(t *testing.T, password string) *router {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, BIRD)")
	}
	if _, err := exec.LookPath("bird"); err != nil {
		t.Skip("bird not installed (make deps)")
	}
	id := randHex(2)
	b := make([]byte, 1)
	_, _ = rand.Read(b)
	r := &router{
		ns:   "xb" + id + "r",
		our4: netip.AddrFrom4([4]byte{100, 65, b[0], 1}),
		rtr4: netip.AddrFrom4([4]byte{100, 65, b[0], 2}),
		our6: netip.MustParseAddr(fmt.Sprintf("fd65:%s::1", id)),
		rtr6: netip.MustParseAddr(fmt.Sprintf("fd65:%s::2", id)),
	}
	ourIf, rtrIf := "xb"+id+"a", "xb"+id+"b"
	run(t, "ip", "netns", "add", r.ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", r.ns).Run() })
	run(t, "ip", "link", "add", ourIf, "type", "veth", "peer", "name", rtrIf)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", ourIf).Run() })
	run(t, "ip", "link", "set", rtrIf, "netns", r.ns)
	run(t, "ip", "addr", "add", r.our4.String()+"/30", "dev", ourIf)
	run(t, "ip", "addr", "add", r.our6.String()+"/64", "dev", ourIf, "nodad")
	run(t, "ip", "link", "set", ourIf, "up")
	run(t, "ip", "-n", r.ns, "addr", "add", r.rtr4.String()+"/30", "dev", rtrIf)
	run(t, "ip", "-n", r.ns, "addr", "add", r.rtr6.String()+"/64", "dev", rtrIf, "nodad")
	run(t, "ip", "-n", r.ns, "link", "set", rtrIf, "up")
	run(t, "ip", "-n", r.ns, "link", "set", "lo", "up")

	dir := t.TempDir()
	r.ctl = filepath.Join(dir, "bird.ctl")
	pw := ""
	if password != "" {
		pw = fmt.Sprintf("password %q;", password)
	}
	conf := fmt.Sprintf(`router id %s;
protocol device {}
protocol kernel k4 { ipv4 { export all; import none; }; merge paths yes; }
protocol kernel k6 { ipv6 { export all; import none; }; merge paths yes; }
protocol bgp xlb4 { local %s as 65000; neighbor %s as 65001; hold time 9; %s ipv4 { import all; export none; }; }
protocol bgp xlb6 { local %s as 65000; neighbor %s as 65001; hold time 9; %s ipv6 { import all; export none; }; }
`, r.rtr4, r.rtr4, r.our4, pw, r.rtr6, r.our6, pw)
	cfg := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(dir, "bird.pid")
	run(t, "ip", "netns", "exec", r.ns, "bird", "-c", cfg, "-s", r.ctl, "-P", pidFile)
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			var pid int
			if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 0 {
				if p, err := os.FindProcess(pid); err == nil {
					_ = p.Kill()
				}
			}
		}
	})
	return r
}

func (r *router) birdc(t *testing.T, args ...string) string {
	t.Helper()
	out, _ := exec.Command("birdc", append([]string{"-s", r.ctl}, args...)...).CombinedOutput()
	return string(out)
}

// hasRoute reports whether the router's kernel table has a route for p.
func (r *router) hasRoute(t *testing.T, p netip.Prefix) bool {
	t.Helper()
	fam := "-4"
	if p.Addr().Is6() {
		fam = "-6"
	}
	out, err := exec.Command("ip", "-n", r.ns, fam, "route", "show", p.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("ip route: %v: %s", err, out)
	}
	return strings.Contains(string(out), p.Addr().String())
}

func poll(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func newSpeaker(t *testing.T, r *router, password string) *Speaker {
	t.Helper()
	ctx := context.Background()
	s := New(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	if err := s.Configure(ctx, Global{ASN: 65001, RouterID: r.our4}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPeers(ctx, []Peer{
		{Address: r.rtr4, ASN: 65000, HoldTime: 9 * time.Second, Password: password},
		{Address: r.rtr6, ASN: 65000, HoldTime: 9 * time.Second, Password: password},
	}); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *Speaker) established(t *testing.T, addr netip.Addr) bool {
	ps, err := s.Peers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.Address == addr {
			return p.State == "established"
		}
	}
	return false
}

func TestAnnounceWithdrawAgainstBIRD(t *testing.T) {
	r := startRouter(t, "")
	s := newSpeaker(t, r, "")
	ctx := context.Background()
	vip4 := netip.MustParsePrefix("203.0.113.10/32")
	vip6 := netip.MustParsePrefix("2001:db8:5::10/128")
	lp := uint32(200)
	if err := s.SetAnnouncements(ctx, []Announcement{
		{Prefix: vip4, Communities: []string{"65001:100"}, LargeCommunities: []string{"65001:1:2"}},
		{Prefix: vip6, LocalPref: &lp},
	}); err != nil {
		t.Fatal(err)
	}
	poll(t, 30*time.Second, "sessions established", func() bool {
		return s.established(t, r.rtr4) && s.established(t, r.rtr6)
	})
	poll(t, 10*time.Second, "v4 route in the router's kernel table", func() bool { return r.hasRoute(t, vip4) })
	poll(t, 10*time.Second, "v6 route in the router's kernel table", func() bool { return r.hasRoute(t, vip6) })

	// Next hop self: the route points at our side of the link.
	out := run(t, "ip", "-n", r.ns, "-4", "route", "show", vip4.String())
	if !strings.Contains(out, "via "+r.our4.String()) {
		t.Errorf("v4 route next hop: got %q, want via %s", out, r.our4)
	}
	out = run(t, "ip", "-n", r.ns, "-6", "route", "show", vip6.String())
	if !strings.Contains(out, "via "+r.our6.String()) && !strings.Contains(out, "via fe80") {
		t.Errorf("v6 route next hop: got %q, want via %s", out, r.our6)
	}
	// Communities reach the router.
	all := r.birdc(t, "show", "route", "all", vip4.String())
	if !strings.Contains(all, "(65001,100)") || !strings.Contains(all, "(65001, 1, 2)") {
		t.Errorf("communities not seen by BIRD:\n%s", all)
	}

	// Adding an unrelated peer must not reset the established sessions.
	before := r.birdc(t, "show", "protocols", "xlb4")
	if err := s.SetPeers(ctx, []Peer{
		{Address: r.rtr4, ASN: 65000, HoldTime: 9 * time.Second},
		{Address: r.rtr6, ASN: 65000, HoldTime: 9 * time.Second},
		{Address: netip.MustParseAddr("100.65.255.254"), ASN: 65099, Passive: true},
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetAnnouncements(ctx, []Announcement{
		{Prefix: vip4, Communities: []string{"65001:100"}, LargeCommunities: []string{"65001:1:2"}},
		{Prefix: vip6, LocalPref: &lp},
	}); err != nil {
		t.Fatal(err)
	}
	after := r.birdc(t, "show", "protocols", "xlb4")
	if before != after {
		t.Errorf("unrelated change touched the session:\nbefore %s\nafter %s", before, after)
	}

	// Withdraw the v4 route only.
	if err := s.SetAnnouncements(ctx, []Announcement{{Prefix: vip6, LocalPref: &lp}}); err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "v4 route withdrawn", func() bool { return !r.hasRoute(t, vip4) })
	if !r.hasRoute(t, vip6) {
		t.Fatal("v6 route disappeared with the v4 withdrawal")
	}

	// A clean stop removes everything quickly (NOTIFICATION, not hold timer).
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	poll(t, 5*time.Second, "v6 route removed after Stop", func() bool { return !r.hasRoute(t, vip6) })
}

func TestMD5Password(t *testing.T) {
	r := startRouter(t, "s3cret")
	good := newSpeaker(t, r, "s3cret")
	poll(t, 30*time.Second, "MD5 session established", func() bool { return good.established(t, r.rtr4) })
	if err := good.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}

	bad := newSpeaker(t, r, "wrong")
	// A wrong password must never establish: watch for a while (BIRD
	// retries every few seconds; 8 s covers several attempts).
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) {
		if bad.established(t, r.rtr4) {
			t.Fatal("session established with a wrong MD5 password")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestValidation(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"asn zero", ValidateGlobal(Global{RouterID: netip.MustParseAddr("1.1.1.1")}), "asn: 0"},
		{"router id v6", ValidateGlobal(Global{ASN: 1, RouterID: netip.MustParseAddr("::1")}), "routerID"},
		{"bad community", ValidateGlobal(Global{ASN: 1, RouterID: netip.MustParseAddr("1.1.1.1"), Communities: []string{"70000:1"}}), "communities"},
		{"bad large", ValidateGlobal(Global{ASN: 1, RouterID: netip.MustParseAddr("1.1.1.1"), LargeCommunities: []string{"1:2"}}), "largeCommunities"},
		{"peer no addr", ValidatePeer(Peer{ASN: 1}), "address"},
		{"peer hold", ValidatePeer(Peer{Address: netip.MustParseAddr("1.1.1.1"), ASN: 1, HoldTime: time.Second}), "holdTime"},
		{"peer family", ValidatePeer(Peer{Address: netip.MustParseAddr("1.1.1.1"), ASN: 1, Families: []string{"l2vpn"}}), "families"},
	}
	for _, c := range cases {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", c.name, c.err, c.want)
		}
	}
	if err := ValidatePeer(Peer{Address: netip.MustParseAddr("fd00::1"), ASN: 65000}); err != nil {
		t.Errorf("valid peer rejected: %v", err)
	}
	got, err := communities([]string{"no-export", "65000:1"})
	if err != nil || len(got) != 2 || got[0] != 0xFFFFFF01 || got[1] != 65000<<16|1 {
		t.Errorf("communities: %v %v", got, err)
	}
}

func FuzzCommunities(f *testing.F) {
	for _, s := range []string{"65000:100", "no-export", "1:2:3", "", ":", "65536:1", "a:b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if v, err := communities([]string{s}); err == nil && len(v) != 1 {
			t.Fatalf("accepted %q but produced %d values", s, len(v))
		}
		_, _ = largeCommunities([]string{s})
	})
}
