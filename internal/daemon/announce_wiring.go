package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/xlb-dev/xlb/internal/bgp"
	"github.com/xlb-dev/xlb/internal/config"
	"github.com/xlb-dev/xlb/internal/l2"
	"github.com/xlb-dev/xlb/internal/state"
	"github.com/xlb-dev/xlb/internal/vip"
)

// newAnnouncement builds the BGP speaker and its controller, the L2
// responder and (with --plumb-vips) the VIP plumber. Without --plumb-vips a
// leftover xlb0 link of an earlier run with it is removed, so that no stale
// VIP stays on the host.
func newAnnouncement(ctx context.Context, cfg config.Config, health BackendHealth, store *state.Store, log *slog.Logger) (*announcer, *BGPController) {
	speaker := bgp.New(log.With("component", "bgp"))
	a := &announcer{speaker: speaker, l2: l2.New(log.With("component", "l2")), health: health, log: log.With("component", "announce")}
	plumber := vip.New(nil, "")
	if cfg.PlumbVIPs {
		a.plumber = plumber
	} else if err := plumber.Remove(ctx); err != nil {
		log.Warn("removing the VIP link of an earlier --plumb-vips run failed", "link", vip.DefaultLink, "error", err)
	}
	return a, NewBGPController(speaker, store, log.With("component", "bgp"))
}

// stopAnnouncing is the clean-exit path: BGP withdraws and closes its
// sessions with a NOTIFICATION, L2 stops answering, plumbed VIPs go.
func (d *Daemon) stopAnnouncing(ctx context.Context) error {
	var errs []error
	if d.bgp != nil {
		if err := d.bgp.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop bgp: %w", err))
		} else {
			d.log.Info("bgp stopped: routes withdrawn, sessions closed")
		}
	}
	if d.ann != nil {
		if err := d.ann.shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop announcing: %w", err))
		}
	}
	return errors.Join(errs...)
}
