// Package localports reads and edits the host's local port sysctls:
// net.ipv4.ip_local_port_range (the ephemeral range the kernel picks source
// ports from; it applies to IPv6 too) and net.ipv4.ip_local_reserved_ports
// (ports the kernel never picks as ephemeral, though explicit binds still
// work). Both are per network namespace: /proc/sys/net shows the namespace
// of the process that reads it.
//
// xlbd reserves its SNAT port range there so that a connection the host
// itself opens (a health probe, kubelet, anything) can never use a source
// port that the datapath also uses for SNAT towards the same backend: the
// backend's replies to the host would match an xlb reply entry and be
// rewritten towards a client.
package localports

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ProcDir is where the sysctls live.
const ProcDir = "/proc/sys/net/ipv4"

// File names under ProcDir.
const (
	EphemeralFile = "ip_local_port_range"
	ReservedFile  = "ip_local_reserved_ports"
)

// Range is an inclusive port range, Min ≤ Max.
type Range struct{ Min, Max uint16 }

// String is "MIN-MAX" ("P" when Min == Max).
func (r Range) String() string {
	if r.Min == r.Max {
		return strconv.Itoa(int(r.Min))
	}
	return fmt.Sprintf("%d-%d", r.Min, r.Max)
}

// Overlaps reports whether r and o share a port.
func (r Range) Overlaps(o Range) bool { return r.Min <= o.Max && o.Min <= r.Max }

// Covers reports whether every port of o is in r.
func (r Range) Covers(o Range) bool { return r.Min <= o.Min && o.Max <= r.Max }

// Len is the number of ports in r.
func (r Range) Len() int { return int(r.Max) - int(r.Min) + 1 }

// ParseRange parses "MIN-MAX" (or a single port "P").
func ParseRange(s string) (Range, error) {
	lo, hi, found := strings.Cut(strings.TrimSpace(s), "-")
	if !found {
		hi = lo
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil {
		return Range{}, fmt.Errorf("%q is not a port range MIN-MAX", s)
	}
	if a > b {
		return Range{}, fmt.Errorf("%q: MIN is greater than MAX", s)
	}
	return Range{uint16(a), uint16(b)}, nil
}

// ParseList parses the ip_local_reserved_ports syntax: comma-separated
// ports and ranges, "1,2-5,8080". Empty (or blank) is an empty list. The
// result is sorted and coalesced.
func ParseList(s string) ([]Range, error) {
	var out []Range
	for _, part := range strings.Split(strings.TrimSpace(s), ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		r, err := ParseRange(part)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return normalize(out), nil
}

// FormatList writes a list in the ip_local_reserved_ports syntax.
func FormatList(list []Range) string {
	parts := make([]string, len(list))
	for i, r := range list {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

// Merge returns list ∪ add, sorted and coalesced (adjacent ranges joined).
func Merge(list []Range, add Range) []Range {
	return normalize(append(slices.Clone(list), add))
}

// Covered reports whether every port of r is in list (a normalized list:
// one entry must then cover it all).
func Covered(list []Range, r Range) bool {
	for _, l := range normalize(slices.Clone(list)) {
		if l.Covers(r) {
			return true
		}
	}
	return false
}

func normalize(list []Range) []Range {
	slices.SortFunc(list, func(a, b Range) int { return int(a.Min) - int(b.Min) })
	var out []Range
	for _, r := range list {
		if n := len(out); n > 0 && int(r.Min) <= int(out[n-1].Max)+1 {
			out[n-1].Max = max(out[n-1].Max, r.Max)
			continue
		}
		out = append(out, r)
	}
	return out
}

// ReadEphemeral reads ip_local_port_range under dir ("MIN\tMAX").
func ReadEphemeral(dir string) (Range, error) {
	p := filepath.Join(dir, EphemeralFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return Range{}, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return Range{}, fmt.Errorf("%s: unexpected content %q", p, b)
	}
	r, err := ParseRange(f[0] + "-" + f[1])
	if err != nil {
		return Range{}, fmt.Errorf("%s: %w", p, err)
	}
	return r, nil
}

// ReadReserved reads ip_local_reserved_ports under dir.
func ReadReserved(dir string) ([]Range, error) {
	p := filepath.Join(dir, ReservedFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	list, err := ParseList(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return list, nil
}

// Reserve adds r to ip_local_reserved_ports under dir, keeping the entries
// already there. It writes nothing when r is already reserved (idempotent)
// and reports whether it wrote.
func Reserve(dir string, r Range) (changed bool, err error) {
	list, err := ReadReserved(dir)
	if err != nil {
		return false, err
	}
	if Covered(list, r) {
		return false, nil
	}
	p := filepath.Join(dir, ReservedFile)
	if err := os.WriteFile(p, []byte(FormatList(Merge(list, r))+"\n"), 0o644); err != nil {
		return false, err
	}
	// Read back: a kernel that silently ignored the write must not pass
	// for a reservation.
	list, err = ReadReserved(dir)
	if err != nil {
		return true, err
	}
	if !Covered(list, r) {
		return true, errors.New(p + ": the written reservation did not stick")
	}
	return true, nil
}
