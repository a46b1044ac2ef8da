package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/lbclient"
)

func newGetCmd(o *globalOptions) *cobra.Command {
	get := &cobra.Command{
		Use:   "get RESOURCE",
		Short: "Show services, conntrack entries or xlbd's status",
		// Without RunE cobra prints help and exits 0 on a misspelt
		// resource; scripts need the failure.
		RunE: unknownResource("services, conntrack, status, bgp"),
	}
	get.AddCommand(newGetServicesCmd(o), newGetConntrackCmd(o), newGetStatusCmd(o), newGetBGPCmd(o))
	return get
}

func newGetServicesCmd(o *globalOptions) *cobra.Command {
	var selector string
	cmd := &cobra.Command{
		Use:     "services [NAME]",
		Aliases: []string{"service", "svc"},
		Short:   "List services, or show one service with its backends",
		Example: `  xlbctl get services
  xlbctl get services --selector xlb.dev/cluster=prod
  xlbctl get service web
  xlbctl get service web -o yaml`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			if len(args) == 1 {
				if selector != "" {
					return fmt.Errorf("--selector cannot be combined with a service name")
				}
				svc, err := c.GetService(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				if o.output == "table" {
					return printServiceDetail(o.streams.out, svc)
				}
				return printObject(o.streams.out, o.output, svc)
			}
			sel, err := lbclient.ParseSelector(selector)
			if err != nil {
				return fmt.Errorf("--selector: %w", err)
			}
			list, err := c.ListServices(cmd.Context(), sel)
			if err != nil {
				return err
			}
			if o.output != "table" {
				if list.Items == nil {
					list.Items = []api.Service{}
				}
				return printObject(o.streams.out, o.output, list)
			}
			if len(list.Items) == 0 {
				// On stderr, so that scripts reading the table see it empty.
				fmt.Fprintln(o.streams.errOut, "No services found.")
				return nil
			}
			return printServiceTable(o.streams.out, list.Items)
		},
	}
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "only services whose labels match, e.g. app=web,tier=front")
	return cmd
}

func newGetConntrackCmd(o *globalOptions) *cobra.Command {
	var f lbclient.Filter
	var all bool
	cmd := &cobra.Command{
		Use:     "conntrack",
		Aliases: []string{"flows", "ct"},
		Short:   "List conntrack entries (flows) of the datapath",
		Example: `  xlbctl get conntrack --vip 192.0.2.10 --limit 50
  xlbctl get conntrack --client 198.51.100.7
  xlbctl get conntrack --all -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			if f.Limit < 0 {
				return fmt.Errorf("--limit %d: must be 0 (server default) or more", f.Limit)
			}
			out := api.FlowList{Items: []api.Flow{}}
			seen := map[string]bool{}
			for {
				page, err := c.Conntrack(cmd.Context(), f)
				if err != nil {
					return err
				}
				out.Items = append(out.Items, page.Items...)
				out.Next = page.Next
				if !all || page.Next == "" {
					break
				}
				// A server handing back a cursor twice would loop forever.
				if seen[page.Next] {
					return fmt.Errorf("conntrack paging: cursor %q repeated", page.Next)
				}
				seen[page.Next] = true
				f.After = page.Next
			}
			if o.output != "table" {
				return printObject(o.streams.out, o.output, out)
			}
			if len(out.Items) == 0 {
				fmt.Fprintln(o.streams.errOut, "No flows found.")
				return nil
			}
			if err := printFlows(o.streams.out, out.Items); err != nil {
				return err
			}
			if out.Next != "" {
				fmt.Fprintf(o.streams.errOut, "More flows: repeat with --after %s, or use --all.\n", out.Next)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.VIP, "vip", "", "only flows to this VIP (ADDR or ADDR:PORT)")
	fl.StringVar(&f.Client, "client", "", "only flows from this client (ADDR or ADDR:PORT)")
	fl.IntVar(&f.Limit, "limit", 0, "at most this many flows per page (0: server default)")
	fl.StringVar(&f.After, "after", "", "continue after this cursor (printed when there are more flows)")
	fl.BoolVar(&all, "all", false, "follow cursors and print every matching flow")
	return cmd
}

func newGetStatusCmd(o *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show xlbd's version, readiness, generation and interfaces",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			if o.output == "table" {
				return printStatus(o.streams.out, st)
			}
			return printObject(o.streams.out, o.output, st)
		},
	}
}

// unknownResource is the RunE of a command that only groups subcommands.
func unknownResource(allowed string) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return fmt.Errorf("%s: name a resource (allowed: %s)", cmd.CommandPath(), allowed)
		}
		return fmt.Errorf("%s: unknown resource %q (allowed: %s)", cmd.CommandPath(), args[0], allowed)
	}
}
