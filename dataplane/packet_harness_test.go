package dataplane

// Test harness for the eBPF datapath: loads the generated objects with small
// maps, programs services straight into the maps with the generated structs,
// builds packets with gopacket and runs them through BPF_PROG_TEST_RUN.

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Values mirrored from bpf/xlb.h (kept literal here on purpose: a change of
// the C header that is not mirrored in Go must break these tests).
const (
	afInet  = 4
	afInet6 = 6

	natDefault = 0
	natFullNAT = 1
	natOneArm  = 2

	algoRR      = 0
	algoRandom  = 1
	algoMaglev  = 2
	algoPersist = 3
	algoLC      = 4

	svcFAllowList = 1

	beActive   = 1
	beDraining = 2
	beDown     = 3

	dropNoBackend     = 0
	dropSrcDenied     = 1
	dropSNATExhausted = 2
	dropFragment      = 3
	dropMalformed     = 4
	dropNoIfAddr      = 5
	dropMTU           = 6
	dropNoRoute       = 7
	dropCTBudget      = 8

	// xlbMetaToTC is XLB_META_TO_TC: XDP's mark, in the metadata area, on a
	// packet it hands over to its tc companion.
	xlbMetaToTC = 0x786c6274

	ctFReply      = 1 << 0
	ctFRewriteSrc = 1 << 1
	ctFRewriteDst = 1 << 2
	ctFClosing    = 1 << 3
	ctFUnreplied  = 1 << 4

	cfgFNoFIB  = 1 << 0
	cfgFRevNat = 1 << 1

	protoTCP = 6
	protoUDP = 17

	// Program return codes.
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
	// tcNext is TC_ACT_UNSPEC (-1) = TCX_NEXT: the tc entry hands what it
	// does not handle, and translated packets left to the kernel, to the
	// next program of the tcx chain (TC_ACT_OK would end the chain).
	tcNext     = 0xffffffff
	tcActShot  = 2
	tcRedirect = 7
)

// Fixed MACs of crafted frames: with XLB_CFG_F_NO_FIB the datapath never
// touches L2, so expected frames keep them.
var (
	macClient = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	macLB     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
)

// prog is one entry point under test with its verdict codes.
type prog struct {
	name            string
	p               *ebpf.Program
	pass, drop, fwd uint32 // fwd: verdict after a rewrite when routing is left to the kernel
	redirect, tx    uint32
	xdp             bool
}

type harness struct {
	t     *testing.T
	objs  xlbObjects
	spec  *ebpf.CollectionSpec
	nextB uint32 // next backend id
	nextS uint32 // next service id
	inner []*ebpf.Map
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to load eBPF programs")
	}
}

// newHarness loads the datapath with small maps and XLB_CFG_F_NO_FIB set
// (rewritten packets are returned as PASS, so verdicts and bytes do not
// depend on the routes of the machine running the test).
func newHarness(t *testing.T) *harness {
	t.Helper()
	needRoot(t)
	spec, err := loadXlb()
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range spec.Maps {
		switch name {
		case "conntrack", "affinity", "allow_list", "services", "vips":
			m.MaxEntries = 4096
		case "backends", "backend_stats", "backend_active":
			m.MaxEntries = 1024
		case "svc_stats", "rr_cursor", "sel_tables":
			m.MaxEntries = 64
		}
	}
	h := &harness{t: t, spec: spec, nextB: 1, nextS: 1}
	if err := spec.LoadAndAssign(&h.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("load: %+v", ve)
		}
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() {
		for _, m := range h.inner {
			m.Close()
		}
		h.objs.Close()
	})
	h.setConfig(xlbXlbCfg{MaglevSeed: 0x1234, Flags: cfgFNoFIB})
	return h
}

func (h *harness) setConfig(c xlbXlbCfg) {
	h.t.Helper()
	if err := h.objs.XlbConfig.Put(uint32(0), c); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) progs() []prog {
	return []prog{
		{name: "tc", p: h.objs.XlbTc, pass: tcNext, drop: tcActShot, fwd: tcNext, redirect: tcRedirect, tx: tcRedirect},
		{name: "xdp", p: h.objs.XlbXdp, pass: xdpPass, drop: xdpDrop, fwd: xdpPass, redirect: xdpRedirect, tx: xdpTX, xdp: true},
	}
}

// ---- address helpers (network byte order in map words) ----

func addrWords(a netip.Addr) [4]uint32 {
	var w [4]uint32
	if a.Is4() {
		b := a.As4()
		w[0] = binary.LittleEndian.Uint32(b[:]) // memory order = network order
		return w
	}
	b := a.As16()
	for i := range 4 {
		w[i] = binary.LittleEndian.Uint32(b[i*4:])
	}
	return w
}

func wordsAddr(w [4]uint32, family uint8) netip.Addr {
	var b [16]byte
	for i := range 4 {
		binary.LittleEndian.PutUint32(b[i*4:], w[i])
	}
	if family == afInet {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

func be16(p uint16) uint16 { // host port -> __be16 as stored by Go on little endian
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.LittleEndian.Uint16(b[:])
}

func fromBe16(p uint16) uint16 {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return afInet
	}
	return afInet6
}

// ---- services ----

type beSpec struct {
	addr   netip.AddrPort
	weight uint32
	state  uint8 // 0 means active
}

type svcSpec struct {
	vip      netip.AddrPort
	proto    uint8
	mode     uint8
	algo     uint8
	backends []beSpec
	// table overrides the selection table (indexes into backends);
	// default: each backend weight times (weight 0 counts as 1), in order.
	table    []int
	snat     netip.Addr
	snatMin  uint16
	snatMax  uint16
	flags    uint32
	idle     uint32
	affinity uint32
	allow    []netip.Prefix
}

type svcHandle struct {
	id  uint32
	bes []uint32 // backend ids, same order as svcSpec.backends
}

func (h *harness) addService(s svcSpec) svcHandle {
	h.t.Helper()
	t := h.t
	hd := svcHandle{id: h.nextS}
	h.nextS++
	for _, b := range s.backends {
		id := h.nextB
		h.nextB++
		st := b.state
		if st == 0 {
			st = beActive
		}
		w := b.weight
		if w == 0 {
			w = 1
		}
		be := xlbBackend{Addr: addrWords(b.addr.Addr()), Port: be16(b.addr.Port()), Family: family(b.addr.Addr()),
			State: st, Weight: w, SvcId: hd.id, Gen: 7}
		if err := h.objs.Backends.Put(id, be); err != nil {
			t.Fatal(err)
		}
		hd.bes = append(hd.bes, id)
	}
	var table []uint32
	if s.table != nil {
		for _, i := range s.table {
			table = append(table, hd.bes[i])
		}
	} else {
		for i, b := range s.backends {
			w := max(b.weight, 1)
			for range w {
				table = append(table, hd.bes[i])
			}
		}
	}
	if len(table) > 0 {
		innerSpec := h.spec.Maps["sel_tables"].InnerMap.Copy()
		innerSpec.MaxEntries = uint32(len(table))
		inner, err := ebpf.NewMap(innerSpec)
		if err != nil {
			t.Fatal(err)
		}
		h.inner = append(h.inner, inner)
		for i, id := range table {
			if err := inner.Put(uint32(i), id); err != nil {
				t.Fatal(err)
			}
		}
		if err := h.objs.SelTables.Put(hd.id, inner); err != nil {
			t.Fatal(err)
		}
	}
	fam := family(s.vip.Addr())
	info := xlbSvcInfo{Id: hd.id, Flags: s.flags, NatMode: s.mode, Algo: s.algo, Family: fam,
		SelLen: uint32(len(table)), IdleTimeoutS: s.idle, AffinityTimeoutS: s.affinity,
		SnatPortMin: s.snatMin, SnatPortMax: s.snatMax, BackendCount: uint32(len(s.backends))}
	if s.snat.IsValid() {
		info.SnatAddr = addrWords(s.snat)
	}
	if s.allow != nil {
		info.Flags |= svcFAllowList
		for _, p := range s.allow {
			h.allow(hd.id, p)
		}
	}
	key := xlbSvcKey{Vip: addrWords(s.vip.Addr()), Port: be16(s.vip.Port()), Proto: s.proto, Family: fam}
	if err := h.objs.Services.Put(key, info); err != nil {
		t.Fatal(err)
	}
	vk := xlbVipKey{Family: fam, Addr: addrWords(s.vip.Addr())}
	if err := h.objs.Vips.Put(vk, uint32(1)); err != nil {
		t.Fatal(err)
	}
	return hd
}

func (h *harness) allow(svcID uint32, p netip.Prefix) {
	h.t.Helper()
	var k xlbAllowKey
	var idb [4]byte
	binary.BigEndian.PutUint32(idb[:], svcID)
	k.SvcId = binary.LittleEndian.Uint32(idb[:])
	if p.Addr().Is4() {
		k.Prefixlen = uint32(32 + 96 + p.Bits())
		k.Addr = addrWords(netip.AddrFrom16(p.Addr().As16())) // ::ffff:a.b.c.d
	} else {
		k.Prefixlen = uint32(32 + p.Bits())
		k.Addr = addrWords(p.Addr())
	}
	if err := h.objs.AllowList.Put(k, uint8(1)); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) setBackendState(id uint32, state uint8) {
	h.t.Helper()
	var b xlbBackend
	if err := h.objs.Backends.Lookup(id, &b); err != nil {
		h.t.Fatal(err)
	}
	b.State = state
	if err := h.objs.Backends.Put(id, b); err != nil {
		h.t.Fatal(err)
	}
}

// ---- counters ----

func (h *harness) svcStats(id uint32) xlbSvcCounters {
	h.t.Helper()
	var per []xlbSvcCounters
	if err := h.objs.SvcStats.Lookup(id, &per); err != nil {
		h.t.Fatal(err)
	}
	var s xlbSvcCounters
	for _, c := range per {
		s.Packets += c.Packets
		s.Bytes += c.Bytes
		s.NewFlows += c.NewFlows
		for i := range s.Drops {
			s.Drops[i] += c.Drops[i]
		}
	}
	return s
}

func (h *harness) beStats(id uint32) xlbBackendCounters {
	h.t.Helper()
	var per []xlbBackendCounters
	if err := h.objs.BackendStats.Lookup(id, &per); err != nil {
		h.t.Fatal(err)
	}
	var s xlbBackendCounters
	for _, c := range per {
		s.Packets += c.Packets
		s.Bytes += c.Bytes
		s.NewFlows += c.NewFlows
	}
	return s
}

func (h *harness) global() xlbGlobalCounters {
	h.t.Helper()
	var per []xlbGlobalCounters
	if err := h.objs.GlobalStats.Lookup(uint32(0), &per); err != nil {
		h.t.Fatal(err)
	}
	var g xlbGlobalCounters
	for _, c := range per {
		g.Rx += c.Rx
		g.Passed += c.Passed
		g.Malformed += c.Malformed
		g.Fragments += c.Fragments
		g.FwdNat += c.FwdNat
		g.RevNat += c.RevNat
		g.IcmpNat += c.IcmpNat
		g.CtCreated += c.CtCreated
		g.FragNat += c.FragNat
		g.FragDropped += c.FragDropped
		g.Stateless += c.Stateless
		g.CtRebuilt += c.CtRebuilt
		g.RevNatMap += c.RevNatMap
		g.FibFragNeeded += c.FibFragNeeded
		g.FibDropped += c.FibDropped
		g.XdpToTc += c.XdpToTc
		g.SnatMissDropped += c.SnatMissDropped
	}
	return g
}

func (h *harness) active(id uint32) int64 {
	h.t.Helper()
	var v int64
	if err := h.objs.BackendActive.Lookup(id, &v); err != nil {
		h.t.Fatal(err)
	}
	return v
}

func (h *harness) ctCount() int {
	h.t.Helper()
	n := 0
	var k xlbCtKey
	var v xlbCtEntry
	it := h.objs.Conntrack.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		h.t.Fatal(err)
	}
	return n
}

func (h *harness) ctFlush() {
	h.t.Helper()
	var keys []xlbCtKey
	var k xlbCtKey
	var v xlbCtEntry
	it := h.objs.Conntrack.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	for _, k := range keys {
		if err := h.objs.Conntrack.Delete(k); err != nil {
			h.t.Fatal(err)
		}
	}
}

func ctKey(src, dst netip.AddrPort, proto uint8) xlbCtKey {
	return xlbCtKey{Src: addrWords(src.Addr()), Dst: addrWords(dst.Addr()), Sport: be16(src.Port()),
		Dport: be16(dst.Port()), Proto: proto, Family: family(src.Addr())}
}

func (h *harness) ct(src, dst netip.AddrPort, proto uint8) (xlbCtEntry, bool) {
	h.t.Helper()
	var e xlbCtEntry
	err := h.objs.Conntrack.Lookup(ctKey(src, dst, proto), &e)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return e, false
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return e, true
}

// ---- running ----

// xdpMd mirrors struct xdp_md for the test-run context.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// skBuff is struct __sk_buff as raw bytes (192 bytes); only ingress_ifindex
// (offset 36) and ifindex (offset 40) are set.
type skBuff [192]byte

// run executes p on a copy of pkt and returns the verdict and output frame.
// ifindex is the ingress interface (0: the netns's loopback).
func run(t *testing.T, p prog, pkt []byte, ifindex uint32) (uint32, []byte) {
	t.Helper()
	ret, out, err := tryRun(p, pkt, ifindex)
	if err != nil {
		t.Fatalf("%s: run: %v", p.name, err)
	}
	return ret, out
}

func tryRun(p prog, pkt []byte, ifindex uint32) (uint32, []byte, error) {
	in := append([]byte(nil), pkt...)
	opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, len(pkt)+512)}
	if p.xdp {
		if ifindex != 0 {
			opts.Context = xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: ifindex}
		}
	} else if ifindex != 0 {
		var sk skBuff
		binary.NativeEndian.PutUint32(sk[36:], ifindex)
		binary.NativeEndian.PutUint32(sk[40:], ifindex)
		opts.Context = sk
	}
	ret, err := p.p.Run(opts)
	return ret, opts.DataOut, err
}

// ---- packets ----

type pktSpec struct {
	src, dst netip.AddrPort
	proto    uint8
	flags    string // TCP flags: any of "SAFRP"
	payload  []byte
	ipOpts   []layers.IPv4Option
	ttl      uint8
	// zeroUDPCsum sends UDP/IPv4 without a checksum.
	zeroUDPCsum bool
}

func tcpLayer(ps pktSpec) *layers.TCP {
	tcp := &layers.TCP{SrcPort: layers.TCPPort(ps.src.Port()), DstPort: layers.TCPPort(ps.dst.Port()),
		Seq: 1000, Ack: 2000, Window: 512, DataOffset: 5}
	for _, f := range ps.flags {
		switch f {
		case 'S':
			tcp.SYN = true
		case 'A':
			tcp.ACK = true
		case 'F':
			tcp.FIN = true
		case 'R':
			tcp.RST = true
		case 'P':
			tcp.PSH = true
		}
	}
	return tcp
}

// ipLayer returns the network layer for src -> dst.
func ipLayer(src, dst netip.Addr, next uint8, ttl uint8, opts []layers.IPv4Option) (gopacket.SerializableLayer, gopacket.NetworkLayer, layers.EthernetType) {
	if ttl == 0 {
		ttl = 64
	}
	if src.Is4() {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: ttl, Id: 0x4242, Flags: layers.IPv4DontFragment,
			Protocol: layers.IPProtocol(next), SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Options: opts}
		return ip, ip, layers.EthernetTypeIPv4
	}
	ip := &layers.IPv6{Version: 6, HopLimit: ttl, NextHeader: layers.IPProtocol(next), SrcIP: src.AsSlice(),
		DstIP: dst.AsSlice(), FlowLabel: 0x12345}
	return ip, ip, layers.EthernetTypeIPv6
}

func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// build crafts an Ethernet frame with valid checksums computed by gopacket.
func build(t *testing.T, ps pktSpec) []byte {
	t.Helper()
	if ps.payload == nil {
		ps.payload = []byte("hello, load balancer")
	}
	ipl, nl, et := ipLayer(ps.src.Addr(), ps.dst.Addr(), ps.proto, ps.ttl, ps.ipOpts)
	eth := &layers.Ethernet{SrcMAC: macClient, DstMAC: macLB, EthernetType: et}
	var l4 gopacket.SerializableLayer
	switch ps.proto {
	case protoTCP:
		tcp := tcpLayer(ps)
		tcp.SetNetworkLayerForChecksum(nl)
		l4 = tcp
	case protoUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(ps.src.Port()), DstPort: layers.UDPPort(ps.dst.Port())}
		udp.SetNetworkLayerForChecksum(nl)
		l4 = udp
	default:
		t.Fatalf("proto %d", ps.proto)
	}
	b := serialize(t, eth, ipl, l4, gopacket.Payload(ps.payload))
	if ps.zeroUDPCsum {
		off := 14 + 20 + 4*len(ps.ipOpts) + 6 // options are 4 bytes each in these tests
		if ps.ipOpts != nil {
			off = 14 + ipHdrLen(b) + 6
		}
		b[off], b[off+1] = 0, 0
	}
	return b
}

func ipHdrLen(frame []byte) int { return int(frame[14]&0xf) * 4 }

// ---- independent checksum verification (RFC 1071 over the output bytes) ----

func sum16(b []byte, acc uint32) uint32 {
	for len(b) >= 2 {
		acc += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	return acc
}

func fold(acc uint32) uint16 {
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}

// checkChecksums verifies the IPv4 header checksum and the TCP/UDP/ICMP
// checksum of a frame from scratch.
func checkChecksums(t *testing.T, frame []byte) {
	t.Helper()
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	var src, dst []byte
	var l4 []byte
	var proto uint8
	if ip4, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		hl := int(ip4.IHL) * 4
		if fold(sum16(frame[14:14+hl], 0)) != 0xffff {
			t.Errorf("bad IPv4 header checksum in %s", hex.EncodeToString(frame))
		}
		src, dst, proto = ip4.SrcIP.To4(), ip4.DstIP.To4(), uint8(ip4.Protocol)
		l4 = frame[14+hl : 14+int(ip4.Length)]
	} else if ip6, ok := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
		src, dst, proto = ip6.SrcIP, ip6.DstIP, uint8(ip6.NextHeader)
		l4 = frame[54 : 54+int(ip6.Length)]
	} else {
		t.Fatalf("no IP layer in %x", frame)
	}
	var acc uint32
	if proto != 1 { // ICMPv4 has no pseudo-header
		acc = sum16(src, acc)
		acc = sum16(dst, acc)
		acc += uint32(proto) + uint32(len(l4))
	}
	if proto == protoUDP && len(src) == 4 && l4[6] == 0 && l4[7] == 0 {
		return // no checksum
	}
	if fold(sum16(l4, acc)) != 0xffff {
		t.Errorf("bad L4 (proto %d) checksum in %s", proto, hex.EncodeToString(frame))
	}
}

func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s: bytes differ\n got  %s\n want %s", what, hex.EncodeToString(got), hex.EncodeToString(want))
	}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
