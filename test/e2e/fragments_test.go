package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/test/netns"
)

// Ports of the fragment test's UDP echo service.
const (
	fragPort    = 5454 // backend
	fragVIPPort = 54   // service
	fragSize    = 3000 // > MTU 1500: every datagram is fragmented, both ways
)

// udpEcho is a UDP server in a backend that answers every datagram with
// its own bytes and remembers what it received; a datagram "big:S..."
// is answered with bigReply(S) instead, so the reply direction can be
// fragmented alone.
type udpEcho struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (u *udpEcho) saw(p []byte) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[string(p)]
}

func serveUDPEcho(t *testing.T, h *netns.Host, port uint16) *udpEcho {
	t.Helper()
	pc, err := h.ListenPacket(context.Background(), "udp", fmt.Sprintf("[::]:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	u := &udpEcho{seen: map[string]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, peer, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			u.mu.Lock()
			u.seen[string(buf[:n])] = true
			u.mu.Unlock()
			reply := buf[:n]
			if n >= 5 && string(buf[:4]) == "big:" {
				reply = bigReply(buf[4])
			}
			_, _ = pc.WriteTo(reply, peer)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return u
}

// errWrongSource is returned when a reply comes from another address than
// the one the request was sent to (a backend address leaking through).
var errWrongSource = errors.New("reply from the wrong source")

// udpExchange sends req from an unconnected socket in the client namespace
// (so a reply from any source is seen) to target, resending until ctx ends,
// and returns the first reply and its source.
func udpExchange(ctx context.Context, client *netns.Host, target netip.AddrPort, req []byte) ([]byte, netip.AddrPort, error) {
	network, laddr := "udp4", "0.0.0.0:0"
	if target.Addr().Is6() {
		network, laddr = "udp6", "[::]:0"
	}
	pc, err := client.ListenPacket(ctx, network, laddr)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	defer pc.Close()
	dst := net.UDPAddrFromAddrPort(target)
	buf := make([]byte, 65536)
	var reply []byte
	var from netip.AddrPort
	err = netns.Until(ctx, func() error {
		if _, err := pc.WriteTo(req, dst); err != nil {
			return fmt.Errorf("send %d bytes to %s: %w", len(req), target, err)
		}
		_ = pc.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
		n, src, err := pc.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("no reply to %d bytes from %s: %w", len(req), target, err)
		}
		ua := src.(*net.UDPAddr).AddrPort()
		from = netip.AddrPortFrom(ua.Addr().Unmap(), ua.Port())
		reply = append([]byte(nil), buf[:n]...)
		return nil
	})
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	if from != target {
		return reply, from, fmt.Errorf("%w: %s, want %s", errWrongSource, from, target)
	}
	return reply, from, nil
}

func bigReply(seed byte) []byte { return pattern(fragSize, seed^0x5a) }

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13) ^ seed
	}
	return b
}

// TestFragments (issue 9, item 3): 3,000-byte UDP requests answered by
// 3,000-byte replies, both fragmented at MTU 1500, through every NAT mode,
// IPv4 and IPv6, tcx and XDP. The backend must receive each request intact
// and the client must receive the whole reply, byte for byte, from the
// VIP:port (never from a backend address).
func TestFragments(t *testing.T) {
	netns.RequireRoot(t)
	for _, hook := range hooks() {
		t.Run(string(hook), func(t *testing.T) {
			e := newLBEnv(t, hook, 1, 1)
			be := e.topo.Backends[0]
			echo := serveUDPEcho(t, be, fragPort)
			modes := []struct {
				mode  dataplane.NATMode
				snat4 netip.Addr
				snat6 netip.Addr
			}{
				{dataplane.NATDefault, netip.Addr{}, netip.Addr{}},
				{dataplane.NATFullNAT, netns.SNAT4(0), netns.SNAT6(0)},
				{dataplane.NATOneArm, netip.Addr{}, netip.Addr{}},
			}
			for i, m := range modes {
				for _, v6 := range []bool{false, true} {
					vip, snat, fam := netns.VIP4(100+i), m.snat4, "ipv4"
					if v6 {
						vip, snat, fam = netns.VIP6(100+i), m.snat6, "ipv6"
					}
					t.Run(string(m.mode)+"/"+fam, func(t *testing.T) {
						svc := e.service("frag", vip, fragVIPPort, dataplane.UDP, dataplane.AlgoRR, fragPort, be)
						svc.NATMode, svc.SNATAddr = m.mode, snat
						e.apply(t, svc)
						target := netip.AddrPortFrom(vip, fragVIPPort)
						seed := byte(16*i + 1)
						if v6 {
							seed++
						}

						// Unfragmented first: the service works in this mode.
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						defer cancel()
						small := pattern(200, seed)
						got, _, err := udpExchange(ctx, e.topo.Client, target, small)
						if err != nil {
							t.Fatalf("200-byte request: %v", err)
						}
						if !bytes.Equal(got, small) {
							t.Fatalf("200-byte request: reply differs (%d bytes)", len(got))
						}

						// A small request, a fragmented reply.
						ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
						defer cancel()
						// udpExchange fails on a reply from another source than target.
						got, _, err = udpExchange(ctx, e.topo.Client, target, append([]byte("big:"), seed, 0, 0, 0))
						switch {
						case err != nil:
							t.Errorf("small request, %d-byte reply: %v", fragSize, err)
						case !bytes.Equal(got, bigReply(seed)):
							t.Errorf("small request, %d-byte reply: got %d bytes, differing", fragSize, len(got))
						}

						// Fragmented both ways.
						req := pattern(fragSize, seed+0x80)
						ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
						defer cancel()
						got, from, err := udpExchange(ctx, e.topo.Client, target, req)
						if !echo.saw(req) {
							t.Errorf("the backend never received the %d-byte request intact", fragSize)
						}
						if err != nil {
							t.Fatalf("%d-byte request: %v", fragSize, err)
						}
						if from != target {
							t.Fatalf("%d-byte reply from %s, want %s", fragSize, from, target)
						}
						if !bytes.Equal(got, req) {
							t.Fatalf("%d-byte reply: %d bytes, differs from the request", fragSize, len(got))
						}
					})
				}
			}
		})
	}
}
