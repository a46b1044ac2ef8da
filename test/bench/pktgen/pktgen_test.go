package pktgen

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xlb-dev/xlb/test/netns"
)

// TestGeneratorReachesSink sends live frames from the client straight to a
// backend (routed by the LB namespace) and checks the backend's sink counts
// them.
func TestGeneratorReachesSink(t *testing.T) {
	topo := netns.New(t, netns.Options{Backends: 1})
	b := topo.Backends[0]
	sink, err := NewSink(5353)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	if err := b.Do(func() error { return sink.Attach(b.Link.Index) }); err != nil {
		t.Fatal(err)
	}
	frame, err := UDPFrame(topo.Client.Link.MAC, topo.LB.ClientLink.MAC,
		netip.AddrPortFrom(topo.Client.Link.Addr4, 10000), netip.AddrPortFrom(b.Link.Addr4, 5353))
	if err != nil {
		t.Fatal(err)
	}
	gen, err := NewGenerator(frame, 10000, 16)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gen.Close() })
	// The LB resolves the backend's MAC on the first packet (which it may
	// drop); ping first so the measurement starts on a warm neighbour.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := topo.LB.Run(ctx, "ping", "-c1", "-W2", b.Link.Addr4.String()); err != nil {
		t.Fatal(err)
	}
	var sent uint64
	err = topo.Client.Do(func() error {
		var err error
		sent, err = gen.Run(ctx, topo.Client.Link.Index, 200*time.Millisecond, 1000)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	netns.Poll(t, 5*time.Second, func() error {
		n, err := sink.Count()
		if err != nil {
			return err
		}
		if n == 0 {
			return context.DeadlineExceeded
		}
		t.Logf("sent %d, sink counted %d", sent, n)
		return nil
	})
}

// TestNewFlowGeneratorSequence runs the new-flow generator on a buffer
// (no live frames) and checks that consecutive packets carry consecutive
// source ports, that the address steps after 2^15 ports, and that the IPv4
// header checksum stays valid.
func TestNewFlowGeneratorSequence(t *testing.T) {
	frame, err := UDPFrame(net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2},
		netip.MustParseAddrPort("198.18.0.2:10000"), netip.MustParseAddrPort("198.19.0.1:5353"))
	if err != nil {
		t.Fatal(err)
	}
	gen, err := NewFlowGenerator(frame, netip.MustParseAddr("10.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gen.Close() })
	run := func(repeat uint32) []byte {
		out := make([]byte, FrameLen)
		opts := &ebpf.RunOptions{Data: frame, DataOut: out, Repeat: repeat}
		if _, err := gen.prog.Run(opts); err != nil {
			t.Fatal(err)
		}
		return out
	}
	check := func(pkt []byte, wantSrc string, wantPort uint16) {
		t.Helper()
		src, _ := netip.AddrFromSlice(pkt[26:30])
		if port := binary.BigEndian.Uint16(pkt[34:]); src.String() != wantSrc || port != wantPort {
			t.Fatalf("source %s:%d, want %s:%d", src, port, wantSrc, wantPort)
		}
		var sum uint32
		for i := 14; i < 34; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(pkt[i:]))
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		if sum != 0xffff {
			t.Fatalf("IPv4 header checksum invalid (sum %#x)", sum)
		}
	}
	check(run(1), "10.0.0.1", 1024)
	check(run(1), "10.0.0.1", 1025)
	// A repeated run advances the sequence once per repeat: after 2 + 32766
	// + 1 packets the next is the first port of the next address.
	run(1<<15 - 2)
	check(run(1), "10.0.0.2", 1024)
}
