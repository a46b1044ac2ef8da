package dataplane

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
)

// manyServices returns n rr services with two backends each, on distinct
// VIPs (the shape of test/bench's "apply from empty").
func manyServices(n int, algo Algorithm) []Service {
	svcs := make([]Service, 0, n)
	for i := range n {
		vip := netip.AddrFrom4([4]byte{198, 19, byte(16 + i/250), byte(1 + i%250)})
		svcs = append(svcs, Service{
			Name: fmt.Sprintf("svc-%d", i), VIP: vip, Port: 80, Protocol: TCP, Algorithm: algo,
			Backends: []Backend{
				{Addr: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), Port: 8080, Weight: 1},
				{Addr: netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}), Port: 8080, Weight: 1},
			},
		})
	}
	return svcs
}

// BenchmarkApply10k applies 10,000 rr services (2 backends each) into an
// empty datapath with the default map capacities.
func BenchmarkApply10k(b *testing.B) {
	if testing.Short() {
		b.Skip("short")
	}
	benchmarkApply(b, 10000, AlgoRR)
}

// BenchmarkApply1kMaglev applies 1,000 Maglev services (2 backends each).
func BenchmarkApply1kMaglev(b *testing.B) { benchmarkApply(b, 1000, AlgoMaglev) }

func benchmarkApply(b *testing.B, n int, algo Algorithm) {
	if os.Geteuid() != 0 {
		b.Skip("needs root (loads eBPF)")
	}
	svcs := manyServices(n, algo)
	cfg := Config{ConntrackFlows: 1024, MaglevSeed: 42, stubPrograms: true}
	for b.Loop() {
		b.StopTimer()
		d, err := New(b.Context(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		res, err := d.Apply(b.Context(), svcs)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if len(res.Created) != n {
			b.Fatalf("created %d services, want %d", len(res.Created), n)
		}
		b.ReportMetric(float64(res.Writes)/float64(n), "writes/svc")
		d.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/svc")
}
