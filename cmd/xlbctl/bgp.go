package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/xlb-dev/xlb/api"
)

// newBGPCmd groups the BGP configuration commands; `xlbctl get bgp` shows
// the state.
func newBGPCmd(o *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bgp COMMAND",
		Short: "Configure xlbd's BGP speaker and peers (see docs/announce.md)",
		RunE:  unknownResource("set-global, add-peer, delete-peer, stop"),
	}
	cmd.AddCommand(newBGPSetGlobalCmd(o), newBGPAddPeerCmd(o), newBGPDeletePeerCmd(o), newBGPStopCmd(o))
	return cmd
}

func newBGPSetGlobalCmd(o *globalOptions) *cobra.Command {
	var g api.BGPGlobal
	var localPref, med int64
	cmd := &cobra.Command{
		Use:     "set-global",
		Short:   "Configure (or reconfigure) the speaker: ASN, router ID, default attributes",
		Example: `  xlbctl bgp set-global --asn 65001 --router-id 192.0.2.1 --communities 65001:100`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if localPref >= 0 {
				v := uint32(localPref)
				g.LocalPref = &v
			}
			if med >= 0 {
				v := uint32(med)
				g.MED = &v
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			out, err := c.PutBGP(cmd.Context(), g)
			if err != nil {
				return err
			}
			if o.output != "table" {
				return printObject(o.streams.out, o.output, out)
			}
			fmt.Fprintf(o.streams.out, "bgp configured: asn %d, router ID %s\n", out.ASN, out.RouterID)
			return nil
		},
	}
	f := cmd.Flags()
	f.Uint32Var(&g.ASN, "asn", 0, "local AS number (1-4294967294)")
	f.StringVar(&g.RouterID, "router-id", "", "router ID: an IPv4 address")
	f.Uint16Var(&g.ListenPort, "listen-port", 0, "TCP port for incoming sessions (0: dial out only)")
	f.StringSliceVar(&g.Communities, "communities", nil, "default communities (ASN:VALUE or well-known names)")
	f.StringSliceVar(&g.LargeCommunities, "large-communities", nil, "default large communities (GLOBAL:LOCAL1:LOCAL2)")
	f.Int64Var(&localPref, "local-pref", -1, "default LOCAL_PREF (-1: none)")
	f.Int64Var(&med, "med", -1, "default MED (-1: none)")
	_ = cmd.MarkFlagRequired("asn")
	_ = cmd.MarkFlagRequired("router-id")
	return cmd
}

func newBGPAddPeerCmd(o *globalOptions) *cobra.Command {
	var p api.BGPPeer
	var passwordFile string
	var hold, keepalive time.Duration
	cmd := &cobra.Command{
		Use:   "add-peer",
		Short: "Add or replace one peer (the whole peer: omit --password-file for no MD5)",
		Example: `  xlbctl bgp add-peer --address 192.0.2.254 --asn 65000
  xlbctl bgp add-peer --address 2001:db8::fe --asn 65000 --password-file /etc/xlb/bgp-pw --hold-time 9s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if passwordFile != "" {
				pw, err := readPassword(passwordFile, o.streams.in)
				if err != nil {
					return err
				}
				p.Password = pw
			}
			for _, d := range []struct {
				name string
				v    time.Duration
				dst  *uint32
			}{{"--hold-time", hold, &p.HoldTimeSeconds}, {"--keepalive", keepalive, &p.KeepaliveSeconds}} {
				if d.v < 0 || d.v%time.Second != 0 {
					return fmt.Errorf("%s %s: want whole seconds, e.g. 9s", d.name, d.v)
				}
				*d.dst = uint32(d.v / time.Second)
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			out, created, err := c.PutBGPPeer(cmd.Context(), p)
			if err != nil {
				return err
			}
			if o.output != "table" {
				return printObject(o.streams.out, o.output, out)
			}
			verb := "configured"
			if created {
				verb = "created"
			}
			fmt.Fprintf(o.streams.out, "bgp peer/%s %s\n", out.Address, verb)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&p.Address, "address", "", "peer address (IPv4 or IPv6)")
	f.Uint32Var(&p.ASN, "asn", 0, "peer AS number")
	f.Uint16Var(&p.Port, "port", 0, "peer TCP port (0: 179)")
	f.Uint8Var(&p.MultihopTTL, "multihop-ttl", 0, "eBGP multihop TTL (0: directly connected)")
	f.StringVar(&passwordFile, "password-file", "", "file holding the TCP MD5 password ('-' for stdin); never on the command line")
	f.DurationVar(&hold, "hold-time", 0, "hold time (0: 90s)")
	f.DurationVar(&keepalive, "keepalive", 0, "keepalive interval (0: a third of the hold time)")
	f.BoolVar(&p.Passive, "passive", false, "wait for the peer to connect")
	f.StringSliceVar(&p.Families, "families", nil, "ipv4-unicast, ipv6-unicast (default: the family of --address)")
	f.StringVar(&p.LocalAddress, "local-address", "", "source address of the session")
	_ = cmd.MarkFlagRequired("address")
	_ = cmd.MarkFlagRequired("asn")
	return cmd
}

// readPassword reads the first line of a file (or stdin for "-").
func readPassword(path string, stdin io.Reader) (string, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(stdin, 4096))
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return "", fmt.Errorf("--password-file: %w", err)
	}
	pw, _, _ := strings.Cut(string(data), "\n")
	pw = strings.TrimRight(pw, "\r")
	if pw == "" {
		return "", fmt.Errorf("--password-file %s: empty password", path)
	}
	return pw, nil
}

func newBGPDeletePeerCmd(o *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "delete-peer ADDRESS",
		Short: "Remove one peer (its session is closed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			if err := c.DeleteBGPPeer(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(o.streams.out, "bgp peer/%s deleted\n", args[0])
			return nil
		},
	}
}

func newBGPStopCmd(o *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "stop",
		Short: "Stop BGP: withdraw every route and close every session (peers stay configured)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			if err := c.DeleteBGP(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintln(o.streams.out, "bgp stopped")
			return nil
		},
	}
}

func newGetBGPCmd(o *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "bgp",
		Short: "Show the BGP settings, the peers with their session state, and the announced routes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			st, err := c.GetBGP(cmd.Context())
			if err != nil {
				return err
			}
			if o.output != "table" {
				return printObject(o.streams.out, o.output, st)
			}
			return printBGP(o.streams.out, st)
		},
	}
}

func printBGP(w io.Writer, st api.BGPStatus) error {
	if st.Global == nil {
		fmt.Fprintln(w, "BGP: not configured (xlbctl bgp set-global)")
	} else {
		fmt.Fprintf(w, "BGP: asn %d, router ID %s\n", st.Global.ASN, st.Global.RouterID)
	}
	fmt.Fprintf(w, "Announced: %s\n\n", orDash(strings.Join(st.Announced, ", ")))
	tw := newTable(w)
	row(tw, "PEER", "ASN", "STATE", "UPTIME", "SENT", "RECEIVED", "MD5")
	for _, p := range st.Peers {
		up := "-"
		if p.UptimeSeconds > 0 {
			up = (time.Duration(p.UptimeSeconds) * time.Second).String()
		}
		row(tw, p.Address, strconv.FormatUint(uint64(p.ASN), 10), p.State, up,
			strconv.FormatUint(p.PrefixesAdvertised, 10), strconv.FormatUint(p.PrefixesReceived, 10), yesNo(p.PasswordSet))
	}
	return tw.Flush()
}
