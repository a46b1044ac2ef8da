package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"
)

type versionInfo struct {
	Client       string `json:"client"`
	GoVersion    string `json:"goVersion"`
	Server       string `json:"server,omitempty"`
	ServerBootID string `json:"serverBootID,omitempty"`
	Endpoint     string `json:"endpoint,omitempty"`
}

func newVersionCmd(o *globalOptions) *cobra.Command {
	var clientOnly bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print xlbctl's version and, unless --client, xlbd's",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := versionInfo{Client: clientVersion(), GoVersion: runtime.Version()}
			var serverErr error
			if !clientOnly {
				c, err := o.client()
				if err != nil {
					return err
				}
				v.Endpoint = c.Endpoint()
				st, err := c.Status(cmd.Context())
				if err != nil {
					serverErr = fmt.Errorf("server version: %w", err)
				} else {
					v.Server, v.ServerBootID = st.Version, st.BootID
				}
			}
			if o.output != "table" {
				if err := printObject(o.streams.out, o.output, v); err != nil {
					return err
				}
				return serverErr
			}
			fmt.Fprintf(o.streams.out, "Client: xlbctl %s (%s)\n", v.Client, v.GoVersion)
			if v.Server != "" {
				fmt.Fprintf(o.streams.out, "Server: xlbd %s at %s (boot ID %s)\n", v.Server, v.Endpoint, v.ServerBootID)
			}
			// The client version is printed even when xlbd is unreachable;
			// the exit code still says the server part failed.
			return serverErr
		},
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "print only the client version, without contacting xlbd")
	return cmd
}
