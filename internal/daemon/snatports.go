package daemon

import (
	"fmt"
	"log/slog"

	"github.com/xlb-dev/xlb/internal/config"
	"github.com/xlb-dev/xlb/internal/localports"
)

// ReserveSNATPorts keeps the host's own connections off the SNAT ports: a
// connection the host opens to a backend from a port that xlb also uses as
// SNAT source port towards that backend gets its replies rewritten towards
// a client (issue 9, item 2). It adds --snat-port-range to
// net.ipv4.ip_local_reserved_ports under dir (merged with the entries there;
// no write when already reserved), so the kernel never picks those ports as
// ephemeral, even if ip_local_port_range is widened later. When the
// reservation fails it is fatal only if the range overlaps the current
// ephemeral range; otherwise xlbd warns and runs. The reservation is kept at
// exit: the pinned datapath keeps translating after xlbd stops.
func ReserveSNATPorts(dir string, cfg config.Config, log *slog.Logger) error {
	snat, err := cfg.SNATPorts()
	if err != nil {
		return err
	}
	eph, err := localports.ReadEphemeral(dir)
	if err != nil {
		return fmt.Errorf("--snat-port-range: reading the ephemeral port range (net.ipv4.ip_local_port_range): %w", err)
	}
	if snat.Covers(eph) {
		return fmt.Errorf("--snat-port-range %s covers the whole ephemeral port range %s (net.ipv4.ip_local_port_range): reserving it would leave the host no source ports; choose a range outside %s",
			snat, eph, eph)
	}
	changed, err := localports.Reserve(dir, snat)
	if err != nil {
		if snat.Overlaps(eph) {
			return fmt.Errorf("--snat-port-range %s overlaps the ephemeral port range %s (net.ipv4.ip_local_port_range) and cannot be reserved in net.ipv4.ip_local_reserved_ports (%v): the host's own connections would collide with SNAT flows; choose a range outside %s",
				snat, eph, err, eph)
		}
		log.Warn("could not reserve the SNAT ports in net.ipv4.ip_local_reserved_ports; they are outside the ephemeral range today, but widening net.ipv4.ip_local_port_range over them would make the host's connections collide with SNAT flows",
			"snat_port_range", snat.String(), "ephemeral_port_range", eph.String(), "error", err)
		return nil
	}
	if changed {
		log.Info("reserved the SNAT ports in net.ipv4.ip_local_reserved_ports", "snat_port_range", snat.String(), "ephemeral_port_range", eph.String())
	}
	return nil
}
