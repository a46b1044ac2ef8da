package dataplane

// Established flows through a SYN flood, with real packets through network
// namespaces: a small conntrack table, a long TCP stream and a UDP flow per
// NAT mode, then a bounded flood of spoofed SYNs of more than 100× the table
// size from the client namespace (raw AF_PACKET frames). The established
// flows must keep working byte for byte during and after the flood.

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	xnetns "github.com/xlb-dev/xlb/test/netns"
)

const (
	floodFlows      = 1024                 // ConntrackFlows: 2048 entries
	floodFrames     = 110 * 2 * floodFlows // > 100× the table size in entries
	floodStreamPort = 7001
	floodUDPPort    = 7002
)

func TestFloodEstablishedFlowsSurvive(t *testing.T) {
	xnetns.RequireRoot(t)
	for _, hook := range []Hook{HookTCX, HookXDP} {
		t.Run(string(hook), func(t *testing.T) { testFlood(t, hook) })
	}
}

func testFlood(t *testing.T, hook Hook) {
	topo := xnetns.New(t, xnetns.Options{Backends: 2})
	topo.DumpOnFailure(t)
	topo.ServeAll(t, 0, floodStreamPort, floodUDPPort)
	// The fullnat services get backends of their own (other ports): a
	// backend shared with a fullnat service has no rev_nat entry.
	for _, b := range topo.Backends {
		b.ServeStream(t, floodStreamPort+10)
		b.ServeUDP(t, floodUDPPort+10)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// The spoofed sources are unreachable from the LB (blackhole, as a real
	// LB's default route would send them somewhere): replies to them are
	// translated and then dropped by the kernel.
	if out, err := topo.LB.Run(ctx, "ip", "route", "add", "blackhole", "10.200.0.0/16"); err != nil {
		t.Fatalf("blackhole route: %v %s", err, out)
	}
	budget := DefaultNewFlowBudget(floodFlows, DefaultSYNTimeout, runtime.NumCPU())
	var dp *Dataplane
	err := topo.LB.Do(func() error {
		var err error
		dp, err = New(ctx, Config{Hook: hook, Interfaces: topo.LB.Interfaces(), ConntrackFlows: floodFlows,
			MaxServices: 64, MaxBackends: 64, NewFlowBudget: budget})
		return err
	})
	if err != nil {
		t.Fatalf("dataplane.New in %s: %v", topo.LB.Name, err)
	}
	t.Cleanup(func() { dp.Close() })

	vipD, vipF := xnetns.VIP4(0), xnetns.VIP4(1)
	var bes []Backend
	for _, b := range topo.Backends {
		bes = append(bes, Backend{Addr: b.Link.Addr4, Weight: 1})
	}
	svc := func(name string, vip netip.Addr, port uint16, proto Protocol, mode NATMode, bport uint16) Service {
		s := Service{Name: name, VIP: vip, Port: port, Protocol: proto, NATMode: mode, Algorithm: AlgoMaglev}
		if mode == NATFullNAT {
			s.SNATAddr = xnetns.SNAT4(0)
		}
		for _, b := range bes {
			b.Port = bport
			s.Backends = append(s.Backends, b)
		}
		return s
	}
	svcs := []Service{
		svc("d-tcp", vipD, 80, TCP, NATDefault, floodStreamPort), svc("d-udp", vipD, 53, UDP, NATDefault, floodUDPPort),
		svc("f-tcp", vipF, 80, TCP, NATFullNAT, floodStreamPort+10), svc("f-udp", vipF, 53, UDP, NATFullNAT, floodUDPPort+10),
	}
	if err := topo.LB.Do(func() error { _, err := dp.Apply(ctx, svcs); return err }); err != nil {
		t.Fatal(err)
	}

	// Established flows: one TCP stream and one UDP "connection" per mode.
	type udpFlow struct {
		c     net.Conn
		first string
	}
	var streams []*xnetns.Stream
	var udps []*udpFlow
	for _, vip := range []netip.Addr{vipD, vipF} {
		var st *xnetns.Stream
		xnetns.Poll(t, 10*time.Second, func() error {
			var err error
			st, err = topo.Client.OpenStream(ctx, netip.AddrPortFrom(vip, 80))
			return err
		})
		t.Cleanup(func() { st.Close() })
		streams = append(streams, st)
		c, err := topo.Client.DialContext(ctx, "udp", netip.AddrPortFrom(vip, 53).String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		u := &udpFlow{c: c}
		xnetns.Poll(t, 10*time.Second, func() error {
			r, err := udpRoundTrip(c, 0)
			u.first = r
			return err
		})
		udps = append(udps, u)
	}
	exercise := func(round int) error {
		for i, st := range streams {
			if err := st.RoundTrip(4096, 5*time.Second); err != nil {
				return fmt.Errorf("stream %d round %d: %w", i, round, err)
			}
		}
		for i, u := range udps {
			r, err := udpRoundTrip(u.c, round)
			if err != nil {
				return fmt.Errorf("udp %d round %d: %w", i, round, err)
			}
			if r != u.first {
				return fmt.Errorf("udp %d round %d: reply %q, want %q (same backend, same client address)", i, round, r, u.first)
			}
		}
		return nil
	}
	if err := exercise(0); err != nil {
		t.Fatal(err)
	}

	// The flood, while the established flows keep talking.
	done := make(chan struct{})
	var wg sync.WaitGroup
	var trafficErr error
	rounds := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			rounds++
			if err := exercise(rounds); err != nil {
				trafficErr = err
				return
			}
		}
	}()
	g0, err := dp.GlobalStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Count the SYNs that reached the datapath (the veth drops what its
	// peer cannot take in time): new flows inserted, served statelessly, or
	// dropped for the budget (fullnat).
	syns := func() int {
		g, err := dp.GlobalStats(ctx)
		if err != nil {
			return 0
		}
		n := int(g.Stateless-g0.Stateless) + int(g.ConntrackCreated-g0.ConntrackCreated)/2
		ss, err := dp.Stats(ctx)
		if err != nil {
			return 0
		}
		for _, s := range ss {
			n += int(s.Drops["ct_budget"])
		}
		return n
	}
	sent, ferr := floodSYNs(topo, []netip.Addr{vipD, vipF}, floodFrames, syns, 60*time.Second)
	close(done)
	wg.Wait()
	if ferr != nil {
		t.Fatalf("flood: %v", ferr)
	}
	if trafficErr != nil {
		t.Fatalf("during the flood (%d frames sent): %v", sent, trafficErr)
	}
	// And after it.
	for r := 0; r < 20; r++ {
		if err := exercise(rounds + 1 + r); err != nil {
			t.Fatalf("after the flood: %v", err)
		}
	}
	g, err := dp.GlobalStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := dp.ConntrackUsage(ctx)
	t.Logf("flood: %d SYN frames sent, %d SYNs seen by xlb, %d exercise rounds during it; budget %d/CPU/s; stateless %d, rebuilt %d, rev_nat via map %d, ct_created %d, conntrack %d/%d",
		sent, syns(), rounds, budget, g.Stateless, g.ConntrackRebuilt, g.ReplyNATMap, g.ConntrackCreated, u.Entries, u.Capacity)
	t.Logf("global %+v", g)
	if g.Stateless == 0 {
		t.Errorf("no flow was served statelessly: the budget did not apply")
	}
	if g.ReplyNATMap == 0 {
		t.Errorf("no reply of a stateless flow was translated through rev_nat")
	}
	// A Stats error or a missing f-tcp must fail the test, not skip the
	// fullnat budget check.
	ss, err := dp.Stats(ctx)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	i := slices.IndexFunc(ss, func(s ServiceStats) bool { return s.Name == "f-tcp" })
	if i < 0 {
		t.Fatalf("no stats for service f-tcp in %+v", ss)
	}
	if ss[i].Drops["ct_budget"] == 0 {
		t.Errorf("fullnat flood: no ct_budget drop counted (%v)", ss[i].Drops)
	}
}

// udpRoundTrip sends a datagram on a connected socket (so only replies from
// the VIP are accepted) and returns the reply. UDP may lose a datagram when
// the flood overruns a queue (not a conntrack failure): up to 3 tries of 1 s.
// Every reply of the flow is the same line (backend label and the client
// address it saw), so a late reply is as good as a fresh one.
func udpRoundTrip(c net.Conn, round int) (string, error) {
	buf := make([]byte, 512)
	var err error
	for range 3 {
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err = fmt.Fprintf(c, "ping %d", round); err != nil {
			return "", err
		}
		var n int
		if n, err = c.Read(buf); err == nil {
			return string(buf[:n]), nil
		}
	}
	return "", err
}

// floodSYNs writes TCP SYN frames with random spoofed sources
// (10.200.0.0/16, random ports) to the VIPs' port 80 from the client
// namespace, through an AF_PACKET socket on the client link, until seen()
// (SYNs that reached the datapath) is at least n. Bounded in count (8n
// frames) and time. Paced in bursts of 64 frames so that the receiving
// veth's queue is not simply overrun.
func floodSYNs(topo *xnetns.Topology, vips []netip.Addr, n int, seen func() int, limit time.Duration) (int, error) {
	sent := 0
	err := topo.Client.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return fmt.Errorf("af_packet socket: %w", err)
		}
		defer unix.Close(fd)
		ifi, err := net.InterfaceByName(topo.Client.Link.Name)
		if err != nil {
			return err
		}
		lbMAC := topo.LB.ClientLink.MAC
		sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6, Protocol: htons(unix.ETH_P_IP)}
		copy(sa.Addr[:], lbMAC)
		frame := make([]byte, 14+20+20)
		copy(frame[0:6], lbMAC)
		copy(frame[6:12], ifi.HardwareAddr)
		binary.BigEndian.PutUint16(frame[12:], 0x0800)
		rng := rand.New(rand.NewPCG(1, 2))
		deadline := time.Now().Add(limit)
		reached := 0
		for reached < n && sent < 8*n && time.Now().Before(deadline) {
			if sent%64 == 0 {
				time.Sleep(20 * time.Microsecond) // pacing, not synchronisation
				if sent%4096 == 0 {
					reached = seen()
				}
			}
			src := netip.AddrFrom4([4]byte{10, 200, byte(rng.IntN(256)), byte(1 + rng.IntN(254))})
			synFrame(frame, src, vips[sent%len(vips)], uint16(1024+rng.IntN(60000)), 80, rng.Uint32())
			if err := unix.Sendto(fd, frame, 0, sa); err != nil {
				if err == unix.ENOBUFS || err == unix.EAGAIN {
					continue
				}
				return fmt.Errorf("sendto after %d frames: %w", sent, err)
			}
			sent++
		}
		if reached = seen(); reached < n {
			return fmt.Errorf("flood: %d frames sent, %d reached the datapath in %s, want %d", sent, reached, limit, n)
		}
		return nil
	})
	return sent, err
}

// synFrame fills an Ethernet/IPv4/TCP SYN (MACs already in place) with valid
// checksums.
func synFrame(f []byte, src, dst netip.Addr, sport, dport uint16, seq uint32) {
	ip := f[14:34]
	clear(ip)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 40)
	ip[6] = 0x40
	ip[8] = 64
	ip[9] = 6
	s, d := src.As4(), dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], ^fold32(sum16be(ip, 0)))
	tcp := f[34:54]
	clear(tcp)
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12] = 5 << 4
	tcp[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	ps := sum16be(ip[12:20], 0) + 6 + 20
	binary.BigEndian.PutUint16(tcp[16:], ^fold32(sum16be(tcp, ps)))
}

func sum16be(b []byte, acc uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	return acc
}

func fold32(acc uint32) uint16 {
	for acc > 0xffff {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}
