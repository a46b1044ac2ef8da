package health

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// aLongTimeAgo is a deadline in the past, used to wake a blocked read.
var aLongTimeAgo = time.Unix(1, 0)

// pinger sends ICMP echo requests for every ping target of one Manager over
// one socket per address family, and hands each reply to the probe waiting
// for its (identifier, sequence, source address).
//
// Why one shared socket: every raw ICMP socket receives a copy of every ICMP
// packet the host gets, so a socket per probe would make N concurrent probes
// cost N² packet copies. One reader per family demultiplexes instead.
//
// Why raw sockets: xlbd runs as root (or with CAP_NET_RAW), and Debian's
// default net.ipv4.ping_group_range ("1 0") forbids the unprivileged ICMP
// datagram sockets to everyone, root included. If opening a raw socket is
// refused, the pinger falls back to a datagram ICMP socket, for which the
// kernel picks the identifier (the socket's "port") and routes replies.
type pinger struct {
	mu     sync.Mutex
	conns  [2]*echoConn // [0] IPv4, [1] IPv6; opened on first use
	closed bool
}

func newPinger() *pinger { return &pinger{} }

// echoConn is one ICMP socket and the probes waiting on it.
type echoConn struct {
	pc   *icmp.PacketConn
	v6   bool
	raw  bool // false: datagram ICMP socket (kernel-assigned identifier)
	id   uint16
	done chan struct{} // closed when the reader stops
	err  error         // why the reader stopped; valid after done

	mu      sync.Mutex
	seq     uint16
	waiting map[uint16]*echoWait
}

type echoWait struct {
	dst   netip.Addr
	reply chan struct{} // closed on a matching reply
}

func (p *pinger) ping(ctx context.Context, dst netip.Addr) error {
	dst = dst.Unmap()
	c, err := p.conn(dst.Is6())
	if err != nil {
		return err
	}
	seq, w, err := c.register(dst)
	if err != nil {
		return err
	}
	defer c.unregister(seq)

	var typ icmp.Type = ipv4.ICMPTypeEcho
	if c.v6 {
		typ = ipv6.ICMPTypeEchoRequest
	}
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: int(c.id), Seq: int(seq), Data: []byte("xlb-health")}}
	// For ICMPv6 the kernel fills in the checksum (it needs the pseudo
	// header), so Marshal without one is right for both families.
	b, err := msg.Marshal(nil)
	if err != nil {
		return fmt.Errorf("ping %s: marshal echo: %w", dst, err)
	}
	var to net.Addr = &net.IPAddr{IP: dst.AsSlice(), Zone: dst.Zone()}
	if !c.raw {
		to = &net.UDPAddr{IP: dst.AsSlice(), Zone: dst.Zone()}
	}
	if _, err := c.pc.WriteTo(b, to); err != nil {
		return fmt.Errorf("ping %s: send echo: %w", dst, err)
	}
	select {
	case <-w.reply:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("ping %s: no echo reply: %w", dst, ctx.Err())
	case <-c.done:
		return fmt.Errorf("ping %s: icmp socket: %w", dst, c.err)
	}
}

// conn returns the socket of the family, opening it on first use.
func (p *pinger) conn(v6 bool) (*echoConn, error) {
	i := 0
	if v6 {
		i = 1
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("ping: manager stopped")
	}
	if c := p.conns[i]; c != nil {
		select {
		case <-c.done: // the reader died (socket error): open a new one
			_ = c.pc.Close()
		default:
			return c, nil
		}
	}
	c, err := openEchoConn(v6, true)
	if err != nil {
		return nil, err
	}
	p.conns[i] = c
	go c.read()
	return c, nil
}

func (p *pinger) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for i, c := range p.conns {
		if c != nil {
			_ = c.pc.Close()
			<-c.done
			p.conns[i] = nil
		}
	}
}

// openEchoConn opens a raw ICMP socket, or a datagram one if raw sockets
// are refused or tryRaw is false (tests use that to cover the fallback).
func openEchoConn(v6, tryRaw bool) (*echoConn, error) {
	rawNet, rawAddr, dgramNet := "ip4:icmp", "0.0.0.0", "udp4"
	if v6 {
		rawNet, rawAddr, dgramNet = "ip6:ipv6-icmp", "::", "udp6"
	}
	c := &echoConn{v6: v6, raw: true, done: make(chan struct{}), waiting: map[uint16]*echoWait{}}
	var pc *icmp.PacketConn
	err := os.ErrPermission
	if tryRaw {
		pc, err = icmp.ListenPacket(rawNet, rawAddr)
	}
	if errors.Is(err, os.ErrPermission) {
		pc, err = icmp.ListenPacket(dgramNet, rawAddr)
		c.raw = false
	}
	if err != nil {
		return nil, fmt.Errorf("ping: open icmp socket (raw needs CAP_NET_RAW; datagram needs net.ipv4.ping_group_range): %w", err)
	}
	c.pc = pc
	if c.raw {
		// A random identifier tells our echoes from those of ping(8) or
		// another Manager; the sequence and source address do the rest.
		c.id = uint16(rand.N(1 << 16))
		// Only echo replies wake the reader: a raw socket otherwise sees
		// every ICMP packet of the host.
		if v6 {
			var f ipv6.ICMPFilter
			f.SetAll(true)
			f.Accept(ipv6.ICMPTypeEchoReply)
			err = pc.IPv6PacketConn().SetICMPFilter(&f)
		} else {
			var f ipv4.ICMPFilter
			f.SetAll(true)
			f.Accept(ipv4.ICMPTypeEchoReply)
			err = pc.IPv4PacketConn().SetICMPFilter(&f)
		}
		if err != nil {
			_ = pc.Close()
			return nil, fmt.Errorf("ping: set icmp filter: %w", err)
		}
	} else if ua, ok := pc.LocalAddr().(*net.UDPAddr); ok {
		c.id = uint16(ua.Port) // the kernel rewrites the identifier to it
	}
	return c, nil
}

// register reserves a sequence number for an echo to dst.
func (c *echoConn) register(dst netip.Addr) (uint16, *echoWait, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// 65536 sequence numbers are far more than the bounded number of
	// probes in flight; skip any still waiting so replies stay unambiguous.
	for range 1 << 16 {
		c.seq++
		if _, busy := c.waiting[c.seq]; !busy {
			w := &echoWait{dst: dst, reply: make(chan struct{})}
			c.waiting[c.seq] = w
			return c.seq, w, nil
		}
	}
	return 0, nil, errors.New("ping: no free icmp sequence number")
}

func (c *echoConn) unregister(seq uint16) {
	c.mu.Lock()
	delete(c.waiting, seq)
	c.mu.Unlock()
}

func (c *echoConn) read() {
	defer close(c.done)
	proto := 1 // ICMPv4
	if c.v6 {
		proto = 58
	}
	buf := make([]byte, 1500)
	for {
		n, peer, err := c.pc.ReadFrom(buf)
		if err != nil {
			c.err = err
			return
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || (m.Type != ipv4.ICMPTypeEchoReply && m.Type != ipv6.ICMPTypeEchoReply) {
			continue
		}
		echo, ok := m.Body.(*icmp.Echo)
		if !ok || uint16(echo.ID) != c.id {
			continue
		}
		var from netip.Addr
		switch a := peer.(type) {
		case *net.IPAddr:
			from, _ = netip.AddrFromSlice(a.IP)
		case *net.UDPAddr:
			from, _ = netip.AddrFromSlice(a.IP)
		}
		from = from.Unmap()
		c.mu.Lock()
		if w := c.waiting[uint16(echo.Seq)]; w != nil && w.dst.WithZone("") == from.WithZone("") {
			delete(c.waiting, uint16(echo.Seq))
			close(w.reply)
		}
		c.mu.Unlock()
	}
}
