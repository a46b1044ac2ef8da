package dataplane

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
)

// TestManyBackendsPerService programs services with 1,024 and 4,096
// backends through the real Apply and sends new flows through the real
// programs (BPF_PROG_TEST_RUN): every algorithm must reach (nearly) every
// backend and only ever pick configured ones. Users of the closest peer
// hit its 32-endpoint limit; xlb's limit is the selection-table size.
func TestManyBackendsPerService(t *testing.T) {
	requireRoot(t)
	for _, n := range []int{1024, 4096} {
		for _, algo := range []Algorithm{AlgoMaglev, AlgoRR, AlgoRandom, AlgoLC} {
			t.Run(fmt.Sprintf("%d/%s", n, algo), func(t *testing.T) {
				cfg := Config{ConntrackFlows: 1 << 17, MaxServices: 16, MaxBackends: 8192, MaglevSeed: 7}
				d := newDP(t, cfg)
				vip := netip.MustParseAddr("198.19.0.10")
				svc := Service{Name: "big", VIP: vip, Port: 80, Protocol: TCP, NATMode: NATDefault, Algorithm: algo}
				want := map[netip.Addr]bool{}
				for i := 0; i < n; i++ {
					a := netip.AddrFrom4([4]byte{10, 1 + byte(i>>16), byte(i >> 8), byte(i)})
					svc.Backends = append(svc.Backends, Backend{Addr: a, Port: 8080, Weight: 1})
					want[a] = true
				}
				if _, err := d.Apply(t.Context(), []Service{svc}); err != nil {
					t.Fatalf("Apply %d backends: %v", n, err)
				}
				// Route lookups would depend on the host: let the
				// program hand rewritten packets to the kernel.
				if err := d.objs.XlbConfig.Put(uint32(0), xlbXlbCfg{MaglevSeed: 7, Flags: cfgFNoFIB}); err != nil {
					t.Fatal(err)
				}
				seen := map[netip.Addr]int{}
				flows := 8 * n
				for i := 0; i < flows; i++ {
					client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 16), byte(i >> 8)}), uint16(1024+i%50000))
					pkt := build(t, pktSpec{src: client, dst: netip.AddrPortFrom(vip, 80), proto: uint8(layers.IPProtocolTCP), flags: "S"})
					ret, out, err := tryRun(prog{name: "xdp", p: d.objs.XlbXdp, xdp: true}, pkt, 0)
					if err != nil {
						t.Fatal(err)
					}
					if ret != xdpPass {
						t.Fatalf("flow %d: verdict %d, want XDP_PASS after DNAT", i, ret)
					}
					// Destination address of the rewritten IPv4 header.
					dst := netip.AddrFrom4([4]byte(out[30:34]))
					if !want[dst] {
						t.Fatalf("flow %d went to %s, which is not a backend", i, dst)
					}
					if port := binary.BigEndian.Uint16(out[14+ipHdrLen(out)+2:]); port != 8080 {
						t.Fatalf("flow %d: backend port %d, want 8080", i, port)
					}
					seen[dst]++
				}
				if min := n * 95 / 100; len(seen) < min {
					t.Fatalf("%d flows reached %d of %d backends, want at least %d", flows, len(seen), n, min)
				}
				t.Logf("%d flows reached %d of %d backends", flows, len(seen), n)
				if algo == AlgoLC {
					// Least connections with equal weights and no flow
					// ending: every backend holds the same number of flows.
					for a, c := range seen {
						if c != flows/n {
							t.Fatalf("lc: backend %s holds %d flows, want %d", a, c, flows/n)
						}
					}
				}
			})
		}
	}
}
