package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/xlb-dev/xlb/api"
)

// printObject prints v as JSON or YAML (the API objects as xlbd sent them).
func printObject(w io.Writer, format string, v any) error {
	switch format {
	case "json":
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return fmt.Errorf("encode JSON: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode YAML: %w", err)
		}
		_, err = w.Write(b)
		return err
	}
	return fmt.Errorf("output format %q cannot print this object", format)
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// row writes tab-separated cells.
func row(w io.Writer, cells ...string) {
	fmt.Fprintln(w, strings.Join(cells, "\t"))
}

// siUnits renders n with a decimal (SI) prefix and one decimal place, the
// way traffic counters are read: 999, 1.2k, 3.4M.
func siUnits(n uint64, sep string, units []string) string {
	if n < 1000 {
		return strconv.FormatUint(n, 10)
	}
	f := float64(n)
	i := 0
	for f >= 999.95 && i < len(units)-1 {
		f /= 1000
		i++
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + sep + units[i]
}

// formatBytes: 512 B, 1.2 kB, 3.4 MB.
func formatBytes(n uint64) string {
	if n < 1000 {
		return strconv.FormatUint(n, 10) + " B"
	}
	return siUnits(n, " ", []string{"B", "kB", "MB", "GB", "TB", "PB", "EB"})
}

// formatCount: 999, 3.4k, 1.2M (packets, flows).
func formatCount(n uint64) string {
	return siUnits(n, "", []string{"", "k", "M", "G", "T", "P", "E"})
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func portProto(s api.ServiceSpec) string {
	return fmt.Sprintf("%d/%s", s.Port, orDash(s.Protocol))
}

// backendsUp counts backends that are not down: draining ones are healthy,
// just not taking new flows.
func backendsUp(s api.Service) string {
	total := len(s.Spec.Backends)
	if s.Status == nil {
		return fmt.Sprintf("-/%d", total)
	}
	up := 0
	for _, b := range s.Status.Backends {
		if b.State != "down" {
			up++
		}
	}
	return fmt.Sprintf("%d/%d", up, total)
}

func printServiceTable(w io.Writer, items []api.Service) error {
	tw := newTable(w)
	row(tw, "NAME", "VIPS", "PORT", "MODE", "ALGORITHM", "BACKENDS", "FLOWS", "PACKETS", "BYTES")
	for _, s := range items {
		flows, pkts, bytes := "-", "-", "-"
		if st := s.Status; st != nil {
			flows = strconv.Itoa(st.Flows)
			pkts = formatCount(st.Packets)
			bytes = formatBytes(st.Bytes)
		}
		row(tw, s.Name, orDash(strings.Join(s.Spec.VIPs, ",")), portProto(s.Spec),
			orDefault(s.Spec.NATMode, "default"), orDefault(s.Spec.Algorithm, "maglev"),
			backendsUp(s), flows, pkts, bytes)
	}
	return tw.Flush()
}

func formatLabels(l map[string]string) string {
	if len(l) == 0 {
		return "<none>"
	}
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return strings.Join(parts, ",")
}

func formatSeconds(s uint32, def string) string {
	if s == 0 {
		return def
	}
	return (time.Duration(s) * time.Second).String()
}

func formatProbe(p *api.Probe) string {
	if p == nil || p.Type == "" || p.Type == "none" {
		return "none"
	}
	parts := []string{p.Type}
	if p.Port != 0 {
		parts = append(parts, "port "+strconv.Itoa(int(p.Port)))
	}
	if p.Path != "" {
		parts = append(parts, "path "+p.Path)
	}
	if p.IntervalMillis != 0 {
		parts = append(parts, "every "+(time.Duration(p.IntervalMillis)*time.Millisecond).String())
	}
	if p.TimeoutMillis != 0 {
		parts = append(parts, "timeout "+(time.Duration(p.TimeoutMillis)*time.Millisecond).String())
	}
	if p.FailureThreshold != 0 || p.SuccessThreshold != 0 {
		parts = append(parts, fmt.Sprintf("down after %d, up after %d", p.FailureThreshold, p.SuccessThreshold))
	}
	return strings.Join(parts, ", ")
}

func formatBGP(b *api.ServiceBGP) string {
	if b == nil {
		return "global defaults"
	}
	var parts []string
	if b.Advertise != nil && !*b.Advertise {
		parts = append(parts, "not advertised")
	} else {
		parts = append(parts, "advertised")
	}
	if len(b.Communities) > 0 {
		parts = append(parts, "communities "+strings.Join(b.Communities, " "))
	}
	if len(b.LargeCommunities) > 0 {
		parts = append(parts, "large communities "+strings.Join(b.LargeCommunities, " "))
	}
	if b.LocalPref != nil {
		parts = append(parts, fmt.Sprintf("local-pref %d", *b.LocalPref))
	}
	if b.MED != nil {
		parts = append(parts, fmt.Sprintf("MED %d", *b.MED))
	}
	return strings.Join(parts, ", ")
}

func hostPort(addr string, port uint16) string {
	return net.JoinHostPort(addr, strconv.Itoa(int(port)))
}

// printServiceDetail is `get service NAME`: the spec, the counters and one
// row per backend (spec merged with live status).
func printServiceDetail(w io.Writer, s api.Service) error {
	tw := newTable(w)
	kv := func(k, v string) { row(tw, k+":", v) }
	kv("Name", s.Name)
	kv("Labels", formatLabels(s.Labels))
	kv("VIPs", orDash(strings.Join(s.Spec.VIPs, ", ")))
	kv("Port", portProto(s.Spec))
	kv("NAT mode", orDefault(s.Spec.NATMode, "default"))
	kv("Algorithm", orDefault(s.Spec.Algorithm, "maglev"))
	if len(s.Spec.SNATAddresses) > 0 {
		kv("SNAT addresses", strings.Join(s.Spec.SNATAddresses, ", "))
	}
	kv("Idle timeout", formatSeconds(s.Spec.IdleTimeoutSeconds, "default"))
	if s.Spec.Algorithm == "persist" {
		kv("Affinity timeout", formatSeconds(s.Spec.AffinityTimeoutSeconds, "default"))
	}
	kv("Source ranges", orDefault(strings.Join(s.Spec.SourceRanges, ", "), "all"))
	kv("Probe", formatProbe(s.Spec.Probe))
	kv("BGP", formatBGP(s.Spec.BGP))
	st := s.Status
	if st != nil {
		kv("Flows", fmt.Sprintf("%d active, %s new", st.Flows, formatCount(st.NewFlows)))
		kv("Traffic", fmt.Sprintf("%s packets, %s", formatCount(st.Packets), formatBytes(st.Bytes)))
		if len(st.Drops) > 0 {
			reasons := make([]string, 0, len(st.Drops))
			for r := range st.Drops {
				reasons = append(reasons, r)
			}
			slices.Sort(reasons)
			parts := make([]string, len(reasons))
			for i, r := range reasons {
				parts[i] = r + "=" + formatCount(st.Drops[r])
			}
			kv("Drops", strings.Join(parts, ", "))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)

	live := map[string]api.BackendStatus{}
	if st != nil {
		for _, b := range st.Backends {
			live[hostPort(b.Address, b.Port)] = b
		}
	}
	tw = newTable(w)
	row(tw, "BACKEND", "NAME", "WEIGHT", "STATE", "PACKETS", "BYTES", "NEW FLOWS", "ACTIVE")
	seen := map[string]bool{}
	for _, b := range s.Spec.Backends {
		addr := hostPort(b.Address, b.Port)
		seen[addr] = true
		weight := uint32(1)
		if b.Weight != nil {
			weight = *b.Weight
		}
		cells := []string{addr, orDash(b.Name), strconv.FormatUint(uint64(weight), 10)}
		if ls, ok := live[addr]; ok {
			cells = append(cells, orDash(ls.State), formatCount(ls.Packets), formatBytes(ls.Bytes),
				formatCount(ls.NewFlows), strconv.FormatInt(ls.Active, 10))
		} else {
			cells = append(cells, "unknown", "-", "-", "-", "-")
		}
		row(tw, cells...)
	}
	// Backends the datapath still holds but the spec no longer names (e.g.
	// draining after removal) are shown too: they still carry flows.
	if st != nil {
		for _, b := range st.Backends {
			addr := hostPort(b.Address, b.Port)
			if seen[addr] {
				continue
			}
			row(tw, addr, "-", "-", orDash(b.State), formatCount(b.Packets), formatBytes(b.Bytes),
				formatCount(b.NewFlows), strconv.FormatInt(b.Active, 10))
		}
	}
	return tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func printStatus(w io.Writer, st api.Status) error {
	tw := newTable(w)
	kv := func(k, v string) { row(tw, k+":", v) }
	kv("Version", orDash(st.Version))
	kv("Boot ID", orDash(st.BootID))
	kv("Generation", strconv.FormatUint(st.Generation, 10))
	kv("Ready", yesNo(st.Ready))
	kv("Hook", orDash(st.Hook))
	kv("Services", strconv.Itoa(st.Services))
	ct := strconv.Itoa(st.ConntrackEntries)
	if st.ConntrackCapacity > 0 {
		ct = fmt.Sprintf("%d / %d entries (%.1f%%)", st.ConntrackEntries, st.ConntrackCapacity,
			100*float64(st.ConntrackEntries)/float64(st.ConntrackCapacity))
	}
	kv("Conntrack", ct)
	if st.SNATPortRange != "" {
		snat := st.SNATPortRange
		if st.SNATPortsReserved {
			snat += " (reserved)"
		} else {
			snat += " (not reserved)"
		}
		if st.EphemeralPortRange != "" {
			snat += ", host ephemeral ports " + st.EphemeralPortRange
		}
		kv("SNAT ports", snat)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = newTable(w)
	row(tw, "INTERFACE", "ATTACHED", "MODE", "IFINDEX", "REATTACHES", "ERROR")
	for _, i := range st.Interfaces {
		idx := "-"
		if i.Ifindex != 0 {
			idx = strconv.Itoa(i.Ifindex)
		}
		row(tw, i.Name, yesNo(i.Attached), orDash(i.Mode), idx, strconv.FormatUint(i.Reattaches, 10), orDash(i.Error))
	}
	if err := tw.Flush(); err != nil || len(st.L2) == 0 {
		return err
	}
	fmt.Fprintln(w)
	tw = newTable(w)
	row(tw, "L2 INTERFACE", "READY", "VIPS", "IFINDEX", "REOPENS", "ERROR")
	for _, l := range st.L2 {
		idx := "-"
		if l.Ifindex != 0 {
			idx = strconv.Itoa(l.Ifindex)
		}
		row(tw, l.Name, yesNo(l.Ready), strconv.Itoa(l.VIPs), idx, strconv.FormatUint(l.Reopens, 10), orDash(l.Error))
	}
	return tw.Flush()
}

func formatAge(sec float64) string {
	return (time.Duration(sec * float64(time.Second))).Round(time.Second).String()
}

func printFlows(w io.Writer, flows []api.Flow) error {
	tw := newTable(w)
	row(tw, "SERVICE", "PROTO", "CLIENT", "VIP", "BACKEND", "SNAT", "AGE", "IDLE", "STATE")
	for _, f := range flows {
		state := "open"
		if f.Closing {
			state = "closing"
		}
		row(tw, f.Service, f.Protocol, f.Client, f.VIP, f.Backend, orDash(f.SNAT),
			formatAge(f.AgeSeconds), formatAge(f.IdleSeconds), state)
	}
	return tw.Flush()
}
