package localports

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestParseList(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []Range
	}{
		{"", nil},
		{"\n", nil},
		{"8080", []Range{{8080, 8080}}},
		{"1,2-5", []Range{{1, 5}}}, // adjacent: coalesced
		{"1,3-5\n", []Range{{1, 1}, {3, 5}}},
		{"30000-32767,10000-29999", []Range{{10000, 32767}}},
		{"100-200,150-160,199-300,65535", []Range{{100, 300}, {65535, 65535}}},
		{" 7 , 9-9 ", []Range{{7, 7}, {9, 9}}},
	} {
		got, err := ParseList(c.in)
		if err != nil {
			t.Errorf("ParseList(%q): %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseList(%q) = %v, want %v", c.in, got, c.want)
		}
	}
	for _, bad := range []string{"x", "5-1", "1,,2-", "65536", "-3", "1-2-3"} {
		if _, err := ParseList(bad); err == nil {
			t.Errorf("ParseList(%q) accepted it", bad)
		}
	}
}

func TestFormatMergeCovered(t *testing.T) {
	list, _ := ParseList("1,3-5,8080")
	if s := FormatList(list); s != "1,3-5,8080" {
		t.Errorf("FormatList = %q", s)
	}
	if s := FormatList(Merge(list, Range{2, 2})); s != "1-5,8080" {
		t.Errorf("Merge 2 = %q", s)
	}
	if s := FormatList(Merge(list, Range{10000, 29999})); s != "1,3-5,8080,10000-29999" {
		t.Errorf("Merge 10000-29999 = %q", s)
	}
	if s := FormatList(Merge(nil, Range{10000, 29999})); s != "10000-29999" {
		t.Errorf("Merge into empty = %q", s)
	}
	if !Covered(list, Range{3, 5}) || !Covered(list, Range{4, 4}) || Covered(list, Range{1, 3}) || Covered(nil, Range{1, 1}) {
		t.Error("Covered is wrong")
	}
	// Covered on an unnormalized list still sees the union.
	if !Covered([]Range{{3, 5}, {1, 2}}, Range{1, 5}) {
		t.Error("Covered must coalesce")
	}
}

func TestRange(t *testing.T) {
	r, err := ParseRange("10000-29999")
	if err != nil || r != (Range{10000, 29999}) || r.String() != "10000-29999" || r.Len() != 20000 {
		t.Fatalf("ParseRange = %v, %v", r, err)
	}
	eph := Range{32768, 60999}
	if r.Overlaps(eph) || !(Range{30000, 40000}).Overlaps(eph) || !(Range{60999, 65535}).Overlaps(eph) {
		t.Error("Overlaps is wrong")
	}
}

func writeSysctls(t *testing.T, eph, reserved string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, EphemeralFile), []byte(eph), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ReservedFile), []byte(reserved), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestReserveMergesAndIsIdempotent(t *testing.T) {
	dir := writeSysctls(t, "32768\t60999\n", "1,2-5,8080\n")
	eph, err := ReadEphemeral(dir)
	if err != nil || eph != (Range{32768, 60999}) {
		t.Fatalf("ReadEphemeral = %v, %v", eph, err)
	}
	r := Range{10000, 29999}
	changed, err := Reserve(dir, r)
	if err != nil || !changed {
		t.Fatalf("Reserve = %v, %v", changed, err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, ReservedFile))
	if string(b) != "1-5,8080,10000-29999\n" {
		t.Errorf("reserved ports now %q", b)
	}
	// A second start changes nothing.
	if changed, err := Reserve(dir, r); err != nil || changed {
		t.Errorf("second Reserve = %v, %v; want no change", changed, err)
	}
}

func TestReadEphemeralRejectsGarbage(t *testing.T) {
	dir := writeSysctls(t, "32768\n", "")
	if _, err := ReadEphemeral(dir); err == nil {
		t.Error("accepted a one-number ip_local_port_range")
	}
}
