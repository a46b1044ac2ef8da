package maglev

import (
	"fmt"
	"math"
	"math/big"
	"testing"
)

func keys(n int) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{Key: fmt.Sprintf("10.%d.%d.%d:8080", i>>16&255, i>>8&255, i&255), Weight: 1}
	}
	return bs
}

func TestMaglevSizesPrime(t *testing.T) {
	for _, s := range Sizes() {
		if !big.NewInt(int64(s)).ProbablyPrime(20) {
			t.Errorf("size %d is not prime", s)
		}
	}
	for _, n := range []int{0, 1, 2, 3, 10, 99, 100, 101, 1000, 1024, 5000, MaxBackends} {
		s, err := TableSize(n)
		if err != nil {
			t.Fatalf("TableSize(%d): %v", n, err)
		}
		if uint64(s) < uint64(max(100*n, 251)) {
			t.Errorf("TableSize(%d) = %d, want ≥ %d", n, s, max(100*n, 251))
		}
		if n <= 1024 {
			if s2, _ := TableSize(n + 1); n+1 <= 1024 && s2 < s {
				t.Errorf("TableSize not monotonic at %d", n)
			}
		}
	}
	if _, err := TableSize(MaxBackends + 1); err == nil {
		t.Errorf("TableSize(%d): want error", MaxBackends+1)
	}
}

func TestMaglevDeterministicAndOrderIndependent(t *testing.T) {
	bs := keys(50)
	a, err := Build(bs, 7)
	if err != nil {
		t.Fatal(err)
	}
	rev := make([]Backend, len(bs))
	for i := range bs {
		rev[len(bs)-1-i] = bs[i]
	}
	b, err := Build(rev, 7)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a {
		if bs[a[i]].Key != rev[b[i]].Key {
			t.Fatalf("slot %d differs between input orders: %s vs %s", i, bs[a[i]].Key, rev[b[i]].Key)
		}
	}
	c, _ := Build(bs, 8)
	same := 0
	for i := range a {
		if a[i] == c[i] {
			same++
		}
	}
	if same == len(a) {
		t.Errorf("different seeds gave identical tables")
	}
}

func TestMaglevRemoveOneBackend(t *testing.T) {
	for _, n := range []int{10, 100, 1024} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			bs := keys(n)
			before, err := Build(bs, 1)
			if err != nil {
				t.Fatal(err)
			}
			for _, removed := range []int{0, n / 3, n - 1} {
				rest := append(append([]Backend(nil), bs[:removed]...), bs[removed+1:]...)
				after, err := Build(rest, 1)
				if err != nil {
					t.Fatal(err)
				}
				if len(before) != len(after) {
					t.Fatalf("table size changed %d → %d", len(before), len(after))
				}
				moved := 0
				for i := range before {
					if before[i] == removed {
						continue // had to move
					}
					if bs[before[i]].Key != rest[after[i]].Key {
						moved++
					}
				}
				limit := len(before) / 100
				if moved > limit {
					t.Errorf("remove #%d: %d slots of surviving backends moved, want ≤ %d (1%% of %d)", removed, moved, limit, len(before))
				}
				t.Logf("n=%d size=%d remove #%d: extra moved=%d (%.3f%%)", n, len(before), removed, moved, 100*float64(moved)/float64(len(before)))
			}
		})
	}
}

func TestMaglevWeights(t *testing.T) {
	bs := []Backend{{"a", 1}, {"b", 2}, {"c", 3}, {"d", 4}, {"e", 0}}
	table, err := Build(bs, 3)
	if err != nil {
		t.Fatal(err)
	}
	count := make([]int, len(bs))
	for _, i := range table {
		count[i]++
	}
	if count[4] != 0 {
		t.Errorf("weight 0 backend got %d slots", count[4])
	}
	total := 10.0
	for i, b := range bs[:4] {
		share := float64(count[i]) / float64(len(table))
		want := float64(b.Weight) / total
		if math.Abs(share-want) > 0.03 {
			t.Errorf("backend %s: share %.3f, want %.3f ± 0.03", b.Key, share, want)
		}
	}
}

func TestMaglevEqualWeightsBalanced(t *testing.T) {
	bs := keys(100)
	table, err := Build(bs, 0)
	if err != nil {
		t.Fatal(err)
	}
	count := make([]int, len(bs))
	for _, i := range table {
		count[i]++
	}
	lo, hi := len(table), 0
	for _, c := range count {
		lo, hi = min(lo, c), max(hi, c)
	}
	if hi-lo > 1 {
		t.Errorf("equal weights: slots per backend range %d..%d, want a spread ≤ 1", lo, hi)
	}
}

func TestMaglevErrors(t *testing.T) {
	if _, err := Build([]Backend{{"a", 0}}, 0); err != ErrNoBackends {
		t.Errorf("all zero weights: got %v, want ErrNoBackends", err)
	}
	if _, err := Build([]Backend{{"a", 1}, {"a", 1}}, 0); err == nil {
		t.Errorf("duplicate keys: want error")
	}
}

func BenchmarkMaglevBuild(b *testing.B) {
	for _, n := range []int{10, 100, 1024} {
		bs := keys(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				if _, err := Build(bs, 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestMaglevTableSizeMin(t *testing.T) {
	if s, _ := TableSize(2); s != DefaultMinSize {
		t.Errorf("TableSize(2) = %d, want the default minimum %d", s, DefaultMinSize)
	}
	cases := []struct {
		n    int
		min  uint32
		want uint32
	}{
		{0, 251, 251}, {1, 251, 251}, {2, 251, 509}, {2, 4093, 4093}, {20, 4093, 4093}, {21, 4093, 8191},
		{81, 16381, 16381}, {82, 16381, 32749}, {100, 16381, 32749}, {1024, 16381, 262139}, {3, 1048573, 1048573},
	}
	for _, c := range cases {
		got, err := TableSizeMin(c.n, c.min)
		if err != nil || got != c.want {
			t.Errorf("TableSizeMin(%d, %d) = %d, %v; want %d", c.n, c.min, got, err, c.want)
		}
	}
	for _, bad := range []uint32{0, 1, 250, 4000, 16383} {
		if ValidMinSize(bad) {
			t.Errorf("ValidMinSize(%d) = true", bad)
		}
		if _, err := TableSizeMin(2, bad); err == nil {
			t.Errorf("TableSizeMin(2, %d): want error", bad)
		}
	}
	for _, s := range Sizes() {
		if !ValidMinSize(s) {
			t.Errorf("ValidMinSize(%d) = false", s)
		}
	}
}
