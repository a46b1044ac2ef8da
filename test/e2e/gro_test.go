package e2e

// Bulk TCP through a VIP with GRO on at the load balancer (issue 9, item 1).
//
// With GRO on at the LB's ingress (a real NIC's default; on a veth, `ethtool
// -K <if> gro on`, which test/netns does for both LB ends) the tcx program
// sees merged skbs far larger than the MTU. The tests move a bulk stream in
// both directions through the VIP in every NAT mode, on both hooks, with and
// without the VIP plumbed on the LB (xlbd --plumb-vips, here through the
// same internal/vip plumber), and compare every byte received with the
// pattern sent. They assert completion and content, never speed (the ratio
// to plain routing is `make bench`, section gro).

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/internal/vip"
	"github.com/xlb-dev/xlb/test/netns"
)

const (
	groBulkPort = 9100 // backends' bulk server
	groVIPPort  = 9101
	// groBulkSize takes about a second at the rates this machine forwards a
	// single stream (shared notes: 3.6–15 Gbit/s).
	groBulkSize = 256 << 20
	// groStall fails a case that makes no progress for this long;
	// groDeadline bounds a whole case.
	groStall    = 10 * time.Second
	groDeadline = 30 * time.Second
	// groLossNoise: above this many retransmissions without a D-SACK a
	// case logs a note (healthy streams showed 0 to ~150 here).
	groLossNoise = 64
)

// groMode is a NAT mode as the tests name it; fullnat is tried with an SNAT
// address that is not on the LB and with one that is (the LB's own
// backend-facing address), since the kernel treats a packet carrying a local
// source address as a martian.
type groMode struct {
	name string
	svc  func(topo *netns.Topology, s *dataplane.Service)
}

func groModes() []groMode {
	return []groMode{
		{"default", func(_ *netns.Topology, s *dataplane.Service) { s.NATMode = dataplane.NATDefault }},
		{"fullnat", func(_ *netns.Topology, s *dataplane.Service) {
			s.NATMode, s.SNATAddr = dataplane.NATFullNAT, netns.SNAT4(0)
		}},
		{"fullnat-localsnat", func(topo *netns.Topology, s *dataplane.Service) {
			s.NATMode, s.SNATAddr = dataplane.NATFullNAT, topo.LB.BackendLink.Addr4
		}},
		{"onearm", func(_ *netns.Topology, s *dataplane.Service) { s.NATMode = dataplane.NATOneArm }},
	}
}

// groTopology builds a one-backend topology for hook with GRO on at both LB
// ends. tcx keeps TX checksum offload (and so TSO) on the senders, the
// default of a real host; native XDP_REDIRECT into a veth loses the partial
// checksum, so for xdp it is off (shared notes, veth fact 3), which is the
// harness default.
func groTopology(t *testing.T, hook dataplane.Hook) *lbEnv {
	t.Helper()
	topo := netns.New(t, netns.Options{Backends: 1, KeepTxChecksum: hook == dataplane.HookTCX})
	t.Logf("topology %s, hook %s", topo.Prefix, hook)
	topo.DumpOnFailure(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// test/netns turns GRO on at both LB ends already; say it here too,
	// since these tests are about it.
	for _, l := range topo.LB.Interfaces() {
		if _, err := topo.LB.Run(ctx, "ethtool", "-K", l, "gro", "on"); err != nil {
			t.Fatal(err)
		}
	}
	topo.Backends[0].ServeBulk(t, groBulkPort)
	return attachLB(t, topo, hook)
}

// groVIP returns the VIP of mode i, plumbed or not.
func groVIP(i int, plumbed bool) netip.Addr {
	if plumbed {
		return netns.VIP4(10 + i)
	}
	return netns.VIP4(i)
}

// plumbVIPs puts vips on the LB's VIP link, as xlbd --plumb-vips does.
func (e *lbEnv) plumbVIPs(t *testing.T, vips []netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := vip.New(e.topo.LB.Netlink(), vip.DefaultLink).Set(ctx, vips); err != nil {
		t.Fatalf("plumb VIPs in %s: %v", e.topo.LB.Name, err)
	}
}

// warmNeighbours makes the LB resolve the backend and the client (a TCP
// connection each way) so that the GRO cases do not depend on the first
// packet of a flow finding an empty neighbour table (that has its own test).
func (e *lbEnv) warmNeighbours(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b := e.topo.Backends[0]
	c, err := e.topo.LB.DialContext(ctx, "tcp", netns.AddrPort(b.Link.Addr4, groBulkPort))
	if err != nil {
		t.Fatalf("warm-up: LB to backend: %v", err)
	}
	c.Close()
	if _, err := e.topo.Client.Run(ctx, "ip", "neigh", "replace", e.topo.LB.ClientLink.Addr4.String(),
		"lladdr", e.topo.LB.ClientLink.MAC.String(), "dev", e.topo.Client.Link.Name, "nud", "reachable"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.topo.LB.Run(ctx, "ip", "neigh", "replace", e.topo.Client.Link.Addr4.String(),
		"lladdr", e.topo.Client.Link.MAC.String(), "dev", e.topo.LB.ClientLink.Name, "nud", "reachable"); err != nil {
		t.Fatal(err)
	}
}

func TestGRO(t *testing.T) {
	netns.RequireRoot(t)
	for _, hook := range hooks() {
		t.Run(string(hook), func(t *testing.T) {
			e := groTopology(t, hook)
			modes := groModes()
			var svcs []dataplane.Service
			var plumbed []netip.Addr
			for i, m := range modes {
				for _, p := range []bool{false, true} {
					s := e.service(fmt.Sprintf("gro-%s-%v", m.name, p), groVIP(i, p), groVIPPort,
						dataplane.TCP, dataplane.AlgoMaglev, groBulkPort, e.topo.Backends[0])
					m.svc(e.topo, &s)
					svcs = append(svcs, s)
					if p {
						plumbed = append(plumbed, s.VIP)
					}
				}
			}
			e.apply(t, svcs...)
			e.plumbVIPs(t, plumbed)
			e.warmNeighbours(t)
			// Control: the same streams routed by the LB's kernel to the
			// backend's own address, with the datapath attached.
			t.Run("plain", func(t *testing.T) {
				for _, dir := range []netns.BulkDir{netns.BulkUp, netns.BulkDown} {
					t.Run(dir.String(), func(t *testing.T) {
						e.testBulk(t, netip.AddrPortFrom(e.topo.Backends[0].Link.Addr4, groBulkPort), dir, false)
					})
				}
			})
			for i, m := range modes {
				t.Run(m.name, func(t *testing.T) {
					// Siblings, not parent and child, so that each name
					// passes or fails on its own: up, up-plumbed, ...
					for _, dir := range []netns.BulkDir{netns.BulkUp, netns.BulkDown} {
						for _, p := range []bool{false, true} {
							name := dir.String()
							if p {
								name += "-plumbed"
							}
							t.Run(name, func(t *testing.T) {
								e.testBulk(t, netip.AddrPortFrom(groVIP(i, p), groVIPPort), dir, true)
							})
						}
					}
				})
			}
		})
	}
}

// testBulk moves groBulkSize bytes through target in direction dir and
// checks that they all arrived intact, that xlb translated the flow (viaVIP) and
// dropped none of it (retransmissions are logged).
func (e *lbEnv) testBulk(t *testing.T, target netip.AddrPort, dir netns.BulkDir, viaVIP bool) {
	sender := e.topo.Client.NS
	if dir == netns.BulkDown {
		sender = e.topo.Backends[0].NS
	}
	before := e.pathCounters(t, sender)
	ctx, cancel := context.WithTimeout(context.Background(), groDeadline)
	defer cancel()
	res, err := e.topo.Client.Bulk(ctx, target, dir, groBulkSize, groStall)
	after := e.pathCounters(t, sender)
	d := after.sub(before)
	t.Logf("%s %s: %d/%d bytes in %v; sender retransmitted %d segments, %d of them D-SACKed (spurious); link drops %d, xlb drops %d; xlb forward NAT %d, reply NAT %d, passed %d",
		dir, target, res.Done, res.Size, res.Elapsed.Round(time.Millisecond), d.retrans, d.dupes, d.linkDrops, d.xlbDrops, d.fwdNAT, d.revNAT, d.passed)
	if err != nil {
		t.Errorf("%v", err)
	}
	if viaVIP && (d.fwdNAT == 0 || d.revNAT == 0) {
		t.Errorf("xlb translated %d forward and %d reply packets: the stream did not go through the datapath", d.fwdNAT, d.revNAT)
	}
	// A GRO-merged packet judged by its total length (the original bug)
	// is now dropped and counted by xlb (drops[mtu], drops[no_route])
	// instead of being handed to the kernel as a martian: a healthy
	// stream has none. Retransmissions are only logged: the redirect path
	// reorders segments now and then, and the count of retransmissions
	// that were not D-SACKed varied from 0 to ~150 between healthy runs of
	// the same case (plain routing included), so no threshold separates
	// the broken cases reliably; a stall above fails them.
	if d.xlbDrops != 0 {
		t.Errorf("xlb dropped %d packets of a healthy stream (service drop counters)", d.xlbDrops)
	}
	if lost := int64(d.retrans) - int64(d.dupes); lost > groLossNoise && d.linkDrops == 0 {
		t.Logf("note: %d retransmissions not D-SACKed and no link drop counted", lost)
	}
}

// pathCounters is what the tests read to see losses: the sender's TCP
// retransmissions, the drop counters of every link of the topology, and
// xlb's own counters.
type pathCounters struct {
	retrans, dupes         uint64
	linkDrops, xlbDrops    uint64
	fwdNAT, revNAT, passed uint64
}

func (a pathCounters) sub(b pathCounters) pathCounters {
	return pathCounters{a.retrans - b.retrans, a.dupes - b.dupes, a.linkDrops - b.linkDrops,
		a.xlbDrops - b.xlbDrops, a.fwdNAT - b.fwdNAT, a.revNAT - b.revNAT, a.passed - b.passed}
}

func (e *lbEnv) pathCounters(t *testing.T, sender *netns.NS) pathCounters {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var c pathCounters
	var err error
	if c.retrans, err = snmpCounter(ctx, sender, "Tcp", "RetransSegs"); err != nil {
		t.Fatal(err)
	}
	// A retransmission the receiver already had comes back as a D-SACK:
	// it was spurious (veths reorder across CPUs), not a loss.
	if c.dupes, err = snmpCounter(ctx, sender, "TcpExt", "TCPDSACKRecvSegs"); err != nil {
		t.Fatal(err)
	}
	nss := []*netns.NS{e.topo.Client.NS, e.topo.LB.NS, e.topo.Segment}
	for _, b := range e.topo.Backends {
		nss = append(nss, b.NS)
	}
	for _, n := range nss {
		links, err := n.Netlink().LinkList()
		if err != nil {
			t.Fatalf("links of %s: %v", n.Name, err)
		}
		for _, l := range links {
			if s := l.Attrs().Statistics; s != nil {
				c.linkDrops += s.RxDropped + s.TxDropped + s.RxErrors + s.TxErrors
			}
		}
	}
	stats, err := e.dp.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stats {
		for _, v := range s.Drops {
			c.xlbDrops += v
		}
	}
	g, err := e.dp.GlobalStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.fwdNAT, c.revNAT, c.passed = g.ForwardNAT, g.ReplyNAT, g.Passed
	return c
}

// snmpCounter reads counter name of group ("Tcp", "TcpExt") from the
// namespace's /proc/net/snmp and /proc/net/netstat.
func snmpCounter(ctx context.Context, n *netns.NS, group, name string) (uint64, error) {
	out, err := n.Run(ctx, "cat", "/proc/net/snmp", "/proc/net/netstat")
	if err != nil {
		return 0, err
	}
	var names []string
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, group+": ") {
			continue
		}
		f := strings.Fields(l)[1:]
		if names == nil {
			names = f
			continue
		}
		for i, nm := range names {
			if nm == name && i < len(f) {
				return strconv.ParseUint(f[i], 10, 64)
			}
		}
		names = nil
	}
	return 0, fmt.Errorf("%s: no %s %s in /proc/net/snmp or netstat", n.Name, group, name)
}

// TestOneArmEmptyNeighbour: the first connection through an onearm VIP must
// open although the LB has never resolved the backend (its neighbour table is
// flushed first). The rewritten SYN carries the LB's own address as source,
// so a datapath that hands it to the kernel to resolve the neighbour gets it
// dropped as a martian, and so does every retransmitted SYN.
func TestOneArmEmptyNeighbour(t *testing.T) {
	netns.RequireRoot(t)
	for _, hook := range hooks() {
		t.Run(string(hook), func(t *testing.T) {
			e := groTopology(t, hook)
			s := e.service("empty-neigh", netns.VIP4(0), groVIPPort, dataplane.TCP, dataplane.AlgoMaglev,
				groBulkPort, e.topo.Backends[0])
			s.NATMode = dataplane.NATOneArm
			e.apply(t, s)
			ctx, cancel := context.WithTimeout(context.Background(), groDeadline)
			defer cancel()
			if _, err := e.topo.LB.Run(ctx, "ip", "neigh", "flush", "all"); err != nil {
				t.Fatal(err)
			}
			if out, _ := e.topo.LB.Run(ctx, "ip", "neigh", "show", "nud", "all"); strings.Contains(out, e.topo.Backends[0].Link.Addr4.String()+" ") {
				t.Fatalf("LB neighbour table still has the backend after the flush:\n%s", out)
			}
			// groStall covers the SYN retransmissions at 1, 3 and 7 s. One
			// small segment of data: this test is about opening, not GRO.
			res, err := e.topo.Client.Bulk(ctx, netip.AddrPortFrom(s.VIP, groVIPPort), netns.BulkUp, 1000, groStall)
			if err != nil {
				t.Fatalf("first connection through the onearm VIP with an empty neighbour table: %v", err)
			}
			t.Logf("first connection: %d bytes in %v", res.Done, res.Elapsed.Round(time.Millisecond))
			g, err := e.dp.GlobalStats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("xlb: XDP to tc %d, FIB drops %d (MTU) %d (no route)", g.XDPToTC, g.FIBFragNeeded, g.FIBDropped)
			// XDP cannot resolve a neighbour: the first packets must have
			// gone through the tc companion.
			if hook == dataplane.HookXDP && g.XDPToTC == 0 {
				t.Errorf("XDP handed no packet over to its tc companion, yet the neighbour table was empty")
			}
		})
	}
}
