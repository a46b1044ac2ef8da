package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/xlb-dev/xlb/lbclient"
)

func newDeleteCmd(o *globalOptions) *cobra.Command {
	del := &cobra.Command{
		Use:   "delete RESOURCE",
		Short: "Delete services",
		RunE:  unknownResource("service"),
	}
	var ignoreNotFound bool
	svc := &cobra.Command{
		Use:     "service NAME [NAME...]",
		Aliases: []string{"services", "svc"},
		Short:   "Delete services by name",
		Example: `  xlbctl delete service web
  xlbctl delete service web dns --ignore-not-found`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			var errs []error
			for _, name := range args {
				err := c.DeleteService(cmd.Context(), name)
				switch {
				case err == nil:
					fmt.Fprintf(o.streams.out, "service/%s deleted\n", name)
				case lbclient.IsNotFound(err) && ignoreNotFound:
				case lbclient.IsNotFound(err):
					errs = append(errs, fmt.Errorf("service %q not found", name))
				default:
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		},
	}
	svc.Flags().BoolVar(&ignoreNotFound, "ignore-not-found", false, "succeed when a service does not exist")
	del.AddCommand(svc)
	return del
}
