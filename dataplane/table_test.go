package dataplane

import (
	"fmt"
	"testing"

	"github.com/xlb-dev/xlb/dataplane/maglev"
)

func TestTableSWRR(t *testing.T) {
	seq := swrr([]uint32{5, 1, 1}, MaxSequenceLen)
	want := []int{0, 0, 1, 0, 2, 0, 0}
	if fmt.Sprint(seq) != fmt.Sprint(want) {
		t.Errorf("swrr(5,1,1) = %v, want %v", seq, want)
	}
	// gcd reduction: 20,10 is 2,1.
	if seq := swrr([]uint32{20, 10, 0}, MaxSequenceLen); fmt.Sprint(seq) != "[0 1 0]" {
		t.Errorf("swrr(20,10,0) = %v, want [0 1 0]", seq)
	}
	if seq := swrr([]uint32{0, 0}, MaxSequenceLen); len(seq) != 0 {
		t.Errorf("all-zero weights: got %v", seq)
	}
}

func TestTableSWRRCap(t *testing.T) {
	// Coprime large weights would need 100003+65537+1 entries.
	ws := []uint32{100003, 65537, 1}
	seq := swrr(ws, 1000)
	if len(seq) > 1000 || len(seq) < 900 {
		t.Fatalf("capped length %d, want 900..1000", len(seq))
	}
	count := make([]int, len(ws))
	for _, i := range seq {
		count[i]++
	}
	if count[2] < 1 {
		t.Errorf("the light backend vanished from the capped sequence")
	}
	share := float64(count[0]) / float64(len(seq))
	if want := 100003.0 / 165541; share < want-0.01 || share > want+0.01 {
		t.Errorf("share of heaviest %.3f, want %.3f", share, want)
	}
}

func TestTableBuildPerAlgorithm(t *testing.T) {
	bs := []tableBackend{{id: 7, key: "10.0.0.1:80", weight: 1}, {id: 9, key: "10.0.0.2:80", weight: 3}}
	lc, _ := buildSelTable(AlgoLC, bs, 2, 0, maglev.DefaultMinSize)
	if fmt.Sprint(lc) != "[7 9]" {
		t.Errorf("lc table %v, want [7 9]", lc)
	}
	rr, _ := buildSelTable(AlgoRR, bs, 2, 0, maglev.DefaultMinSize)
	if fmt.Sprint(rr) != "[9 7 9 9]" {
		t.Errorf("rr table %v, want [9 7 9 9]", rr)
	}
	mg, err := buildSelTable(AlgoMaglev, bs, 2, 0, maglev.DefaultMinSize)
	if err != nil {
		t.Fatal(err)
	}
	n9 := 0
	for _, id := range mg {
		if id == 9 {
			n9++
		} else if id != 7 {
			t.Fatalf("maglev slot holds unknown id %d", id)
		}
	}
	if share := float64(n9) / float64(len(mg)); share < 0.72 || share > 0.78 {
		t.Errorf("maglev share of weight-3 backend %.3f, want ≈ 0.75", share)
	}
	if empty, _ := buildSelTable(AlgoMaglev, nil, 0, 0, maglev.DefaultMinSize); len(empty) != 0 {
		t.Errorf("no backends: want empty table")
	}
}
