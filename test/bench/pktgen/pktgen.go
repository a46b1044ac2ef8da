package pktgen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// FrameLen is the generated frame length: 64 bytes on the wire with the FCS.
const FrameLen = 60

// flagLiveFrames is BPF_F_TEST_XDP_LIVE_FRAMES.
const flagLiveFrames = 2

// xdpMd mirrors struct xdp_md for BPF_PROG_TEST_RUN's context.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// UDPFrame builds a 60-byte IPv4/UDP frame (zero UDP checksum, valid IP
// checksum) from src to dst.
func UDPFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort) ([]byte, error) {
	if !src.Addr().Is4() || !dst.Addr().Is4() {
		return nil, errors.New("udp frame: IPv4 addresses only")
	}
	f := make([]byte, FrameLen)
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(FrameLen-14))
	ip[6] = 0x40 // don't fragment
	ip[8] = 64   // TTL
	ip[9] = 17   // UDP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := f[34:42]
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(FrameLen-34))
	return f, nil
}

// Generator is the loaded live-frames generator.
type Generator struct {
	prog  *ebpf.Program
	frame []byte
}

// NewGenerator loads the generator with the frame as its template; each
// packet's UDP source port is sportBase + random(sportCount), sportCount a
// power of two.
func NewGenerator(frame []byte, sportBase, sportCount uint16) (*Generator, error) {
	if len(frame) != FrameLen {
		return nil, fmt.Errorf("generator template: %d bytes, want %d", len(frame), FrameLen)
	}
	if sportCount == 0 || sportCount&(sportCount-1) != 0 {
		return nil, fmt.Errorf("generator sportCount=%d: want a power of two", sportCount)
	}
	spec, err := loadPktgen()
	if err != nil {
		return nil, fmt.Errorf("load pktgen spec: %w", err)
	}
	for name, v := range map[string]any{"tmpl": frame, "sport_base": sportBase, "sport_count": sportCount} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	var objs struct {
		Prog *ebpf.Program `ebpf:"xlb_pktgen"`
	}
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("load generator: %w", err)
	}
	return &Generator{prog: objs.Prog, frame: frame}, nil
}

// NewFlowGenerator loads the generator in new-flow mode: every packet gets
// the next source address:port of a sequence that starts at srcBase:1024
// (2^15 ports per address, then the next address), so a load balancer sees
// each packet as a new flow. The sequence carries on across runs of the
// same Generator.
func NewFlowGenerator(frame []byte, srcBase netip.Addr) (*Generator, error) {
	if len(frame) != FrameLen {
		return nil, fmt.Errorf("generator template: %d bytes, want %d", len(frame), FrameLen)
	}
	if !srcBase.Is4() {
		return nil, errors.New("new-flow generator: IPv4 source base only")
	}
	spec, err := loadPktgen()
	if err != nil {
		return nil, fmt.Errorf("load pktgen spec: %w", err)
	}
	b := srcBase.As4()
	for name, v := range map[string]any{"tmpl": frame, "new_flows": uint8(1),
		"nf_src_base": binary.BigEndian.Uint32(b[:]), "sport_count": uint16(1)} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	var objs struct {
		Prog *ebpf.Program `ebpf:"xlb_pktgen"`
	}
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("load generator: %w", err)
	}
	return &Generator{prog: objs.Prog, frame: frame}, nil
}

// Hold attaches the generator in generic (SKB) mode to ifindex, resolved in
// the calling thread's namespace: an interface that never receives a
// packet (a veth left down). Each BPF_PROG_TEST_RUN of an XDP program adds
// it to the kernel's XDP dispatcher before the run and removes it after,
// and each change waits for an RCU grace period (synchronize_rcu in
// bpf_dispatcher_change_prog): two waits per Run batch, with the CPU
// idle. An attached program stays in the dispatcher (it is refcounted), so
// the runs change nothing and never wait. Close the returned link to
// detach.
func (g *Generator) Hold(ifindex int) (io.Closer, error) {
	l, err := link.AttachXDP(link.XDPOptions{Program: g.prog, Interface: ifindex, Flags: link.XDPGenericMode})
	if err != nil {
		return nil, fmt.Errorf("hold generator on ifindex %d: %w", ifindex, err)
	}
	return l, nil
}

// Close unloads the generator.
func (g *Generator) Close() error { return g.prog.Close() }

// Run transmits frames out of ifindex (resolved in the calling thread's
// network namespace: call it from inside the sender's namespace) in batches
// of batch runs until d has passed or ctx ends. It returns the number of
// runs (frames handed to the driver; some may be dropped downstream).
func (g *Generator) Run(ctx context.Context, ifindex int, d time.Duration, batch uint32) (uint64, error) {
	opts := &ebpf.RunOptions{
		Data:    g.frame,
		Repeat:  batch,
		Flags:   flagLiveFrames,
		Context: xdpMd{DataEnd: uint32(len(g.frame)), IngressIfindex: uint32(ifindex)},
	}
	var sent uint64
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if _, err := g.prog.Run(opts); err != nil {
			return sent, fmt.Errorf("live-frames run: %w", err)
		}
		sent += uint64(batch)
	}
	return sent, ctx.Err()
}

// RunCount transmits batches of batch frames out of ifindex (resolved in
// the calling thread's namespace) until n frames are sent, d has passed or
// ctx ends, whichever comes first; it returns the frames sent.
func (g *Generator) RunCount(ctx context.Context, ifindex int, n uint64, d time.Duration, batch uint32) (uint64, error) {
	var sent uint64
	deadline := time.Now().Add(d)
	for sent < n && time.Now().Before(deadline) && ctx.Err() == nil {
		b := uint32(min(uint64(batch), n-sent))
		opts := &ebpf.RunOptions{
			Data:    g.frame,
			Repeat:  b,
			Flags:   flagLiveFrames,
			Context: xdpMd{DataEnd: uint32(len(g.frame)), IngressIfindex: uint32(ifindex)},
		}
		if _, err := g.prog.Run(opts); err != nil {
			return sent, fmt.Errorf("live-frames run: %w", err)
		}
		sent += uint64(b)
	}
	return sent, ctx.Err()
}

// Sink counts and drops UDP to one port on the interfaces it is attached to.
type Sink struct {
	prog  *ebpf.Program
	count *ebpf.Map
	links []link.Link
}

// NewSink loads the sink program for UDP destination port.
func NewSink(port uint16) (*Sink, error) {
	spec, err := loadPktgen()
	if err != nil {
		return nil, fmt.Errorf("load pktgen spec: %w", err)
	}
	if err := spec.Variables["sink_port"].Set(port); err != nil {
		return nil, fmt.Errorf("set sink_port: %w", err)
	}
	var objs struct {
		Prog  *ebpf.Program `ebpf:"bench_sink"`
		Count *ebpf.Map     `ebpf:"sink_count"`
	}
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("load sink: %w", err)
	}
	return &Sink{prog: objs.Prog, count: objs.Count}, nil
}

// Attach attaches the sink in native XDP mode to ifindex, resolved in the
// calling thread's namespace.
func (s *Sink) Attach(ifindex int) error {
	l, err := link.AttachXDP(link.XDPOptions{Program: s.prog, Interface: ifindex, Flags: link.XDPDriverMode})
	if err != nil {
		return fmt.Errorf("attach sink to ifindex %d: %w", ifindex, err)
	}
	s.links = append(s.links, l)
	return nil
}

// Count returns the packets counted so far, summed over CPUs.
func (s *Sink) Count() (uint64, error) {
	var per []uint64
	if err := s.count.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("read sink counter: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// Close detaches and unloads the sink.
func (s *Sink) Close() error {
	var errs []error
	for _, l := range s.links {
		errs = append(errs, l.Close())
	}
	errs = append(errs, s.prog.Close(), s.count.Close())
	return errors.Join(errs...)
}

// NewForwarder loads bench_fwd attached nowhere yet: UDP to port gets
// dst/src MACs and is redirected to ifindex. Attach it like a Sink; its
// counter stays zero.
func NewForwarder(port uint16, ifindex int, dst, src net.HardwareAddr) (*Sink, error) {
	if len(dst) != 6 || len(src) != 6 {
		return nil, errors.New("forwarder: want 6-byte MAC addresses")
	}
	spec, err := loadPktgen()
	if err != nil {
		return nil, fmt.Errorf("load pktgen spec: %w", err)
	}
	macs := append(append([]byte(nil), dst...), src...)
	for name, v := range map[string]any{"sink_port": port, "fwd_ifindex": uint32(ifindex), "fwd_macs": macs} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	var objs struct {
		Prog  *ebpf.Program `ebpf:"bench_fwd"`
		Count *ebpf.Map     `ebpf:"sink_count"`
	}
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("load forwarder: %w", err)
	}
	return &Sink{prog: objs.Prog, count: objs.Count}, nil
}

// LoadFloor loads bench_floor, the parse-and-pass XDP floor program.
func LoadFloor() (*ebpf.Program, error) {
	spec, err := loadPktgen()
	if err != nil {
		return nil, fmt.Errorf("load pktgen spec: %w", err)
	}
	var objs struct {
		Prog *ebpf.Program `ebpf:"bench_floor"`
	}
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("load floor: %w", err)
	}
	return objs.Prog, nil
}
