package provider

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/provider/config"
)

// bgpDataplane is what pushing BGP settings needs (*lbclient.Client has it).
type bgpDataplane interface {
	PutBGP(ctx context.Context, g api.BGPGlobal) (api.BGPGlobal, error)
	PutBGPPeers(ctx context.Context, peers []api.BGPPeer) (api.BGPPeerList, error)
}

// pushBGP sends the cloud-config's BGP settings to one dataplane. xlbd
// treats an identical PUT as a no-op and diffs the peer set, so re-pushing
// on every full re-sync never resets a session; a restarted or wiped xlbd
// gets its settings back with the services.
func (lb *LoadBalancer) pushBGP(ctx context.Context, d *dataplane) error {
	if lb.cfg.BGP == nil {
		return nil
	}
	bd, ok := d.dp.(bgpDataplane)
	if !ok {
		return nil // a test fake without BGP
	}
	var dcfg *config.DataplaneBGP
	for i := range lb.cfg.Dataplanes {
		if lb.cfg.Dataplanes[i].Name == d.name {
			dcfg = lb.cfg.Dataplanes[i].BGP
		}
	}
	if dcfg == nil {
		return fmt.Errorf("bgp: dataplane %s has no bgp.routerID in the cloud-config", d.name)
	}
	g := api.BGPGlobal{
		ASN: lb.cfg.BGP.LocalASN, RouterID: dcfg.RouterID,
		Communities: lb.cfg.BGP.Communities, LargeCommunities: lb.cfg.BGP.LargeCommunities,
		LocalPref: lb.cfg.BGP.LocalPref, MED: lb.cfg.BGP.MED,
	}
	if dcfg.LocalASN != 0 {
		g.ASN = dcfg.LocalASN
	}
	peers, err := apiPeers(append(append([]config.BGPPeer(nil), lb.cfg.BGP.Peers...), dcfg.Peers...))
	if err != nil {
		return fmt.Errorf("bgp: dataplane %s: %w", d.name, err)
	}
	if _, err := bd.PutBGP(ctx, g); err != nil {
		return fmt.Errorf("bgp: push global settings to %s: %w", d.name, err)
	}
	if _, err := bd.PutBGPPeers(ctx, peers); err != nil {
		return fmt.Errorf("bgp: push peers to %s: %w", d.name, err)
	}
	return nil
}

func apiPeers(in []config.BGPPeer) ([]api.BGPPeer, error) {
	out := make([]api.BGPPeer, 0, len(in))
	for _, p := range in {
		ap := api.BGPPeer{
			Address: p.Address, ASN: p.ASN, Port: p.Port, MultihopTTL: p.MultihopTTL,
			HoldTimeSeconds:  uint32(p.HoldTime.Duration / time.Second),
			KeepaliveSeconds: uint32(p.Keepalive.Duration / time.Second),
			Passive:          p.Passive, Families: p.Families,
		}
		if p.PasswordFile != "" {
			b, err := os.ReadFile(p.PasswordFile)
			if err != nil {
				return nil, fmt.Errorf("peer %s: passwordFile: %w", p.Address, err)
			}
			ap.Password = strings.TrimRight(string(b), "\r\n")
		}
		out = append(out, ap)
	}
	return out, nil
}
