package dataplane

import (
	"fmt"

	"github.com/xlb-dev/xlb/dataplane/maglev"
)

// MaxSequenceLen caps the weighted sequence used by rr, random and persist.
// The exact sequence has sum(weight/gcd) entries; when that is longer, the
// weights are scaled down proportionally (each selectable backend keeps at
// least one entry), so shares are exact to within 1/MaxSequenceLen.
const MaxSequenceLen = 65536

// tableBackend is one selectable backend given to the table builders.
type tableBackend struct {
	id     uint32
	key    string // stable across nodes: "addr:port"
	weight uint32
}

// buildSelTable returns the selection table of one service for its
// algorithm: backend ids, in the layout the datapath expects (see
// struct sel_inner in bpf/xlb_maps.h). An empty result means "no backend".
// A Maglev table's size depends only on configured, the number of backends
// the service is configured with (selectable or not), and the minimum size,
// so that a backend going down or draining never changes the size (which
// would reshuffle every slot).
func buildSelTable(algo Algorithm, bs []tableBackend, configured int, seed, maglevMin uint32) ([]uint32, error) {
	if len(bs) == 0 {
		return nil, nil
	}
	switch algo {
	case AlgoMaglev:
		in := make([]maglev.Backend, len(bs))
		for i, b := range bs {
			in[i] = maglev.Backend{Key: b.key, Weight: b.weight}
		}
		size, err := maglev.TableSizeMin(max(configured, len(bs)), maglevMin)
		if err != nil {
			return nil, fmt.Errorf("build maglev table: %w", err)
		}
		idx, err := maglev.BuildSize(in, seed, size)
		if err != nil {
			return nil, fmt.Errorf("build maglev table: %w", err)
		}
		out := make([]uint32, len(idx))
		for i, j := range idx {
			out[i] = bs[j].id
		}
		return out, nil
	case AlgoLC:
		// Each selectable backend once; the datapath scans for the least
		// active/weight.
		out := make([]uint32, len(bs))
		for i, b := range bs {
			out[i] = b.id
		}
		return out, nil
	default: // rr, random, persist
		ws := make([]uint32, len(bs))
		for i, b := range bs {
			ws[i] = b.weight
		}
		seq := swrr(ws, MaxSequenceLen)
		out := make([]uint32, len(seq))
		for i, j := range seq {
			out[i] = bs[j].id
		}
		return out, nil
	}
}

// swrr returns the smooth weighted round-robin order (nginx's algorithm) of
// indexes into weights: over one period each index appears weight/gcd times
// and heavy backends are spread out rather than bunched (5,1,1 gives
// a a b a c a a, not a a a a a b c). Weights of 0 are skipped. When the
// period would exceed maxLen, weights are scaled down proportionally.
func swrr(weights []uint32, maxLen int) []int {
	w := make([]uint64, len(weights))
	var g, sum uint64
	for i, x := range weights {
		w[i] = uint64(x)
		if x > 0 {
			g = gcd(g, uint64(x))
		}
	}
	if g == 0 {
		return nil
	}
	for i := range w {
		w[i] /= g
		sum += w[i]
	}
	if sum > uint64(maxLen) {
		// Scale down; every positive weight keeps at least 1, so the sum
		// may end slightly above the target: shrink the target until it
		// fits (a handful of iterations at most).
		target := uint64(maxLen)
		for {
			scaled := make([]uint64, len(w))
			var s uint64
			for i := range w {
				if w[i] == 0 {
					continue
				}
				scaled[i] = max(1, w[i]*target/sum)
				s += scaled[i]
			}
			if s <= uint64(maxLen) {
				w, sum = scaled, s
				break
			}
			target -= (s - uint64(maxLen))
		}
		g = 0
		for _, x := range w {
			if x > 0 {
				g = gcd(g, x)
			}
		}
		sum = 0
		for i := range w {
			w[i] /= g
			sum += w[i]
		}
	}
	cur := make([]int64, len(w))
	out := make([]int, 0, sum)
	for range sum {
		best := -1
		for i := range w {
			if w[i] == 0 {
				continue
			}
			cur[i] += int64(w[i])
			if best < 0 || cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= int64(sum)
		out = append(out, best)
	}
	return out
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
