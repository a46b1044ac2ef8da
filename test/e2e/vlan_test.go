package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/test/netns"
)

// frameTap records the frames an interface of a namespace receives or
// sends (AF_PACKET, ETH_P_ALL) until test cleanup.
type frameTap struct {
	mu     sync.Mutex
	frames [][]byte
}

func (ft *frameTap) contains(marker []byte) bool {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	for _, f := range ft.frames {
		if bytes.Contains(f, marker) {
			return true
		}
	}
	return false
}

func tapLink(t *testing.T, n *netns.NS, ifindex int) *frameTap {
	t.Helper()
	var pb [2]byte
	binary.BigEndian.PutUint16(pb[:], unix.ETH_P_ALL)
	proto := int(binary.NativeEndian.Uint16(pb[:])) // htons
	var fd int
	err := n.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifindex})
	})
	if err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	ft := &frameTap{}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n <= 0 {
				continue // timeout: look at stop again
			}
			ft.mu.Lock()
			ft.frames = append(ft.frames, append([]byte(nil), buf[:n]...))
			ft.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		unix.Close(fd)
	})
	return ft
}

// TestVLANTaggedNotTranslated (issue 9, item 5): the LB has no VLAN device;
// a client sends 802.1Q- and QinQ-tagged UDP datagrams to a VIP. xlb does
// not parse VLANs, so they must not be translated and forwarded to the
// backend (on tcx today the kernel moves the tag into skb metadata before
// tc runs, and the datagram is translated and forwarded, still tagged).
// A later untagged datagram to another VIP of the same backend proves the
// path works; once the backend saw it, it must not have seen a tagged one.
func TestVLANTaggedNotTranslated(t *testing.T) {
	netns.RequireRoot(t)
	for _, hook := range hooks() {
		t.Run(string(hook), func(t *testing.T) {
			e := newLBEnv(t, hook, 1, 1)
			be := e.topo.Backends[0]
			serveUDPEcho(t, be, fragPort)
			tagged, plain := netns.VIP4(120), netns.VIP4(121)
			// One Apply: it is declarative, a second call would remove the
			// first VIP's service (and the tagged frames would pass only for
			// lack of a service).
			var svcs []dataplane.Service
			for _, vip := range []netip.Addr{tagged, plain} {
				svcs = append(svcs, e.service(vip.String(), vip, fragVIPPort, dataplane.UDP, dataplane.AlgoRR, fragPort, be))
			}
			e.apply(t, svcs...)
			tap := tapLink(t, be.NS, be.Link.Index)
			// The LB's own egress toward the backends: what xlb forwarded,
			// whatever the bridge and the backend do with a tagged frame.
			lbTap := tapLink(t, e.topo.LB.NS, e.topo.LB.BackendLink.Index)
			for i, c := range []struct {
				name      string
				qinq      bool
				offloaded bool // outer tag in skb metadata (rx-vlan-offload), not in the frame
			}{{"802.1Q", false, false}, {"QinQ", true, false}, {"802.1Q-offloaded", false, true}, {"QinQ-offloaded", true, true}} {
				t.Run(c.name, func(t *testing.T) {
					if hook == dataplane.HookXDP && c.offloaded && !c.qinq {
						// Native XDP on the veth runs on the frame without the
						// tag that stays in skb metadata (as behind a NIC's
						// rx-vlan-offload): xlb cannot see it (only a
						// device-bound program's bpf_xdp_metadata_rx_vlan_tag
						// kfunc can) and translates the frame. A documented
						// limitation (docs/datapath.md, "Malformed input").
						t.Skip("known limitation: XDP does not see a VLAN tag held in skb metadata")
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					marker := []byte(fmt.Sprintf("tagged-%s-%d", hook, i))
					g0, _ := e.dp.GlobalStats(ctx)
					if c.offloaded {
						detach := tagEgress(t, e, c.qinq)
						pc, err := e.topo.Client.ListenPacket(ctx, "udp4", "0.0.0.0:0")
						if err != nil {
							t.Fatal(err)
						}
						for range 5 {
							if _, err := pc.WriteTo(marker, net.UDPAddrFromAddrPort(netip.AddrPortFrom(tagged, fragVIPPort))); err != nil {
								t.Fatalf("send: %v", err)
							}
						}
						pc.Close()
						detach()
					} else {
						sendTagged(t, e, c.qinq, tagged, fragVIPPort, marker, 5)
					}
					g1, _ := e.dp.GlobalStats(ctx)
					t.Logf("global stats across the tagged frames: %+v -> %+v", g0, g1)
					// The untagged sentinel, sent after: once the backend has it,
					// the tagged datagrams would have arrived too.
					sentinel := []byte(fmt.Sprintf("plain-%s-%d", hook, i))
					got, _, err := udpExchange(ctx, e.topo.Client, netip.AddrPortFrom(plain, fragVIPPort), sentinel)
					if err != nil || !bytes.Equal(got, sentinel) {
						t.Fatalf("untagged datagram: %v", err)
					}
					netns.Poll(t, 5*time.Second, func() error {
						// XDP_REDIRECT bypasses the packet taps of the LB's egress link.
						if !tap.contains(sentinel) || (hook == dataplane.HookTCX && !lbTap.contains(sentinel)) {
							return fmt.Errorf("the LB's backend link or the backend has not seen the untagged datagram yet")
						}
						return nil
					})
					if g1.ForwardNAT != g0.ForwardNAT {
						t.Errorf("%s-tagged datagrams were translated: forward NAT %d -> %d", c.name, g0.ForwardNAT, g1.ForwardNAT)
					}
					if lbTap.contains(marker) {
						t.Errorf("a %s-tagged datagram to the VIP left the LB toward the backends (translated and forwarded)", c.name)
					}
					if tap.contains(marker) {
						t.Errorf("a %s-tagged datagram to the VIP reached the backend", c.name)
					}
				})
			}
		})
	}
}

// htons returns v as a __be16 argument of a BPF helper.
func htons(v uint16) int32 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return int32(binary.NativeEndian.Uint16(b[:]))
}

// tagEgress attaches to the client's link, at tcx egress, a program that
// pushes an 802.1Q VID 100 tag (then an 802.1ad VID 200 one when qinq) with
// bpf_skb_vlan_push. The outer tag stays in skb metadata and crosses the
// veth as such, as a NIC with rx-vlan-offload delivers it: the LB's tc
// program then sees the frame without its outer tag. (The kernel here has
// no 8021q module and no act_vlan, so a VLAN device cannot do this.)
// The returned func detaches it.
func tagEgress(t *testing.T, e *lbEnv, qinq bool) func() {
	t.Helper()
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, htons(0x8100)),
		asm.Mov.Imm(asm.R3, 100),
		asm.FnSkbVlanPush.Call(),
	}
	if qinq {
		insns = append(insns,
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Imm(asm.R2, htons(0x88a8)),
			asm.Mov.Imm(asm.R3, 200),
			asm.FnSkbVlanPush.Call())
	}
	insns = append(insns, asm.Mov.Imm(asm.R0, 0), asm.Return()) // TC_ACT_OK
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, Instructions: insns, License: "GPL"})
	if err != nil {
		t.Fatalf("vlan push program: %v", err)
	}
	var l link.Link
	err = e.topo.Client.Do(func() error {
		var err error
		l, err = link.AttachTCX(link.TCXOptions{Interface: e.topo.Client.Link.Index, Program: prog, Attach: ebpf.AttachTCXEgress})
		return err
	})
	if err != nil {
		prog.Close()
		t.Fatalf("attach vlan push program: %v", err)
	}
	var once sync.Once
	detach := func() {
		once.Do(func() {
			l.Close()
			prog.Close()
		})
	}
	t.Cleanup(detach)
	return detach
}

// sendTagged injects, from the client namespace (AF_PACKET on its link:
// no VLAN device or module needed), count copies of a UDP datagram from the
// client to vip:port carrying payload, tagged 802.1Q VID 100 (inside an
// 802.1ad VID 200 tag when qinq), addressed to the LB's MAC.
func sendTagged(t *testing.T, e *lbEnv, qinq bool, vip netip.Addr, port uint16, payload []byte, count int) {
	t.Helper()
	cl := e.topo.Client.Link
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: cl.Addr4.AsSlice(), DstIP: vip.AsSlice()}
	udp := &layers.UDP{SrcPort: 40999, DstPort: layers.UDPPort(port)}
	_ = udp.SetNetworkLayerForChecksum(ip)
	ls := []gopacket.SerializableLayer{}
	eth := &layers.Ethernet{SrcMAC: cl.MAC, DstMAC: e.topo.LB.ClientLink.MAC, EthernetType: layers.EthernetTypeDot1Q}
	if qinq {
		eth.EthernetType = layers.EthernetTypeQinQ
		ls = append(ls, eth, &layers.Dot1Q{VLANIdentifier: 200, Type: layers.EthernetTypeDot1Q})
	} else {
		ls = append(ls, eth)
	}
	ls = append(ls, &layers.Dot1Q{VLANIdentifier: 100, Type: layers.EthernetTypeIPv4}, ip, udp, gopacket.Payload(payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, ls...); err != nil {
		t.Fatal(err)
	}
	err := e.topo.Client.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: cl.Index, Halen: 6}
		copy(sa.Addr[:], e.topo.LB.ClientLink.MAC)
		for range count {
			if err := unix.Sendto(fd, buf.Bytes(), 0, sa); err != nil {
				return fmt.Errorf("send tagged frame: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
