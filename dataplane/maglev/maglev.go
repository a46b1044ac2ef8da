// Package maglev builds Maglev lookup tables (Eisenbud et al., "Maglev: A
// Fast and Reliable Software Network Load Balancer", NSDI 2016) with
// weights, the way Katran does: every backend walks its own permutation of
// the table, and a backend takes a turn in proportion to its weight.
//
// The table depends only on the backend keys, their weights and the seed,
// never on the order in which backends are given, so every load balancer
// node that shares the seed builds the same table and a flow lands on the
// same backend whichever node receives it.
package maglev

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// sizes are the table sizes, all prime. A table is the smallest size that
// is at least max(minimum, SlotsPerBackend × backends). Sizes come from a
// fixed list (roughly doubling) rather than "the next prime ≥ 100×N" so that
// adding or removing one backend almost never changes the size: a size
// change reshuffles the whole table, which is exactly what consistent
// hashing must avoid.
var sizes = [...]uint32{251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071, 262139, 524287, 1048573}

// Table sizing. Maglev is not perfectly minimal: removing one backend also
// moves a few slots between surviving backends, and that extra disruption
// shrinks as slots per backend grow, but more slowly for small backend
// counts than the paper's "M ≥ 100 N" rule of thumb suggests. Measured with
// this implementation (worst over seeds 0-3 and over removing the first,
// a middle or the last backend):
//
//	backends   4093    8191    16381   32749   65521   131071
//	10         1.9 %   1.2 %   0.6 %   0.7 %   0.5 %   0.4 %
//	20         2.0 %   1.3 %   1.1 %   0.7 %   0.4 %   0.3 %
//	50                 1.8 %   1.1 %   0.8 %   0.6 %   0.4 %
//	100                        1.4 %   0.9 %   0.6 %   0.4 %
//	200                                1.2 %   0.8 %   0.5 %
//	1024                                               0.6 %
//
// DefaultMinSize (16381) and SlotsPerBackend (200) keep the extra
// disruption at about 1 % or less for any backend count (≤ 1 % for 10, 100
// and 1024 backends is a test, TestMaglevRemoveOneBackend) at 128 KiB of
// kernel memory per Maglev service with up to 81 backends (an array map
// charges 8 bytes per 4-byte slot). A smaller minimum (see ValidMinSize)
// trades disruption for memory.
const (
	// DefaultMinSize is the smallest table unless configured otherwise.
	DefaultMinSize = 16381
	// SlotsPerBackend is the minimum number of slots per backend. 100 (the
	// paper's rule) would put 100 backends in 16381 slots: 1.4 % extra
	// disruption; 200 puts them in 32749 (0.9 %).
	SlotsPerBackend = 200
	// MaxSize is the largest table size.
	MaxSize = 1048573
	// MaxBackends is the largest number of backends a table can hold while
	// keeping SlotsPerBackend slots per backend.
	MaxBackends = MaxSize / SlotsPerBackend
)

// Sizes returns the list of table sizes in increasing order.
func Sizes() []uint32 { return append([]uint32(nil), sizes[:]...) }

// ValidMinSize reports whether min may be used as the minimum table size:
// it must be one of Sizes().
func ValidMinSize(min uint32) bool {
	for _, s := range sizes {
		if s == min {
			return true
		}
	}
	return false
}

// TableSize returns the table size for n backends with the default
// minimum: the smallest listed prime ≥ max(DefaultMinSize,
// SlotsPerBackend × n). It is always ≥ 100 × n.
func TableSize(n int) (uint32, error) { return TableSizeMin(n, DefaultMinSize) }

// TableSizeMin returns the smallest listed prime ≥ max(min,
// SlotsPerBackend × n). The size depends only on n and min, so every
// rebuild (a restart, another node) with the same backend count gives the
// same size; n should be the number of configured backends, not of the
// currently healthy ones, so that a health flap never changes the size.
func TableSizeMin(n int, min uint32) (uint32, error) {
	if n < 0 || n > MaxBackends {
		return 0, fmt.Errorf("maglev: %d backends: allowed 0..%d", n, MaxBackends)
	}
	if !ValidMinSize(min) {
		return 0, fmt.Errorf("maglev: minimum table size %d: allowed %s", min, SizesString())
	}
	want := max(uint64(n)*SlotsPerBackend, uint64(min))
	for _, s := range sizes {
		if uint64(s) >= want {
			return s, nil
		}
	}
	return 0, fmt.Errorf("maglev: no table size for %d backends", n)
}

// SizesString lists the sizes for error messages ("251, 509, …").
func SizesString() string {
	var b strings.Builder
	for i, s := range sizes {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.FormatUint(uint64(s), 10))
	}
	return b.String()
}

// Backend is one entry of the table input.
type Backend struct {
	// Key identifies the backend stably across rebuilds and across nodes,
	// e.g. "10.0.0.1:8080". Keys must be unique.
	Key string
	// Weight is the relative share of slots; 0 means the backend gets none.
	Weight uint32
}

// ErrNoBackends is returned when no backend has a positive weight.
var ErrNoBackends = errors.New("maglev: no backend with a positive weight")

// Build returns a lookup table of TableSize(len(backends)) slots. Each slot
// holds an index into backends. Backends with weight 0 get no slots.
func Build(backends []Backend, seed uint32) ([]int, error) {
	size, err := TableSize(len(backends))
	if err != nil {
		return nil, err
	}
	return BuildSize(backends, seed, size)
}

// BuildSize is Build with an explicit table size, which must be prime (or at
// least coprime with every skip) for every backend to reach every slot.
func BuildSize(backends []Backend, seed uint32, size uint32) ([]int, error) {
	if size < 2 {
		return nil, fmt.Errorf("maglev: table size %d: must be a prime ≥ 2", size)
	}
	// Sort by key so that the input order does not matter.
	order := make([]int, 0, len(backends))
	seen := make(map[string]bool, len(backends))
	var maxWeight uint64
	for i, b := range backends {
		if seen[b.Key] {
			return nil, fmt.Errorf("maglev: duplicate backend key %q", b.Key)
		}
		seen[b.Key] = true
		if b.Weight == 0 {
			continue
		}
		order = append(order, i)
		maxWeight = max(maxWeight, uint64(b.Weight))
	}
	if len(order) == 0 {
		return nil, ErrNoBackends
	}
	sort.Slice(order, func(a, b int) bool { return backends[order[a]].Key < backends[order[b]].Key })

	m := uint64(size)
	offset := make([]uint64, len(order))
	skip := make([]uint64, len(order))
	next := make([]uint64, len(order))
	credit := make([]uint64, len(order))
	for j, i := range order {
		h1 := hash(backends[i].Key, uint64(seed))
		h2 := hash(backends[i].Key, uint64(seed)^0x9e3779b97f4a7c15)
		offset[j] = h1 % m
		skip[j] = h2%(m-1) + 1
	}

	table := make([]int, size)
	for i := range table {
		table[i] = -1
	}
	filled := uint64(0)
	for {
		for j, i := range order {
			// Katran's weighting: a backend earns credit equal to its
			// weight each round and places one slot per maxWeight earned,
			// so slot shares follow weight shares while every backend
			// keeps walking its own permutation (which is what makes the
			// table stable under changes).
			credit[j] += uint64(backends[i].Weight)
			if credit[j] < maxWeight {
				continue
			}
			credit[j] -= maxWeight
			c := (offset[j] + next[j]*skip[j]) % m
			for table[c] >= 0 {
				next[j]++
				c = (offset[j] + next[j]*skip[j]) % m
			}
			table[c] = i
			next[j]++
			filled++
			if filled == m {
				return table, nil
			}
		}
	}
}

// hash is FNV-1a 64 over the key, seeded, followed by the splitmix64
// finaliser so that similar keys ("10.0.0.1:80", "10.0.0.2:80") give
// unrelated offsets and skips. It is fixed forever: changing it would
// reshuffle every table on upgrade.
func hash(key string, seed uint64) uint64 {
	h := uint64(14695981039346656037) ^ seed
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= 1099511628211
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}
