package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/lbclient"
)

func newApplyCmd(o *globalOptions) *cobra.Command {
	var (
		files    []string
		dryRun   bool
		prune    bool
		selector string
		validate bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or replace services from YAML or JSON",
		Long: `Create or replace the services in FILE (YAML or JSON): one service, a list of
services, {"items": [...]} as printed by "get services -o yaml", or several
YAML documents separated by "---". "-f -" reads standard input; a directory
applies its *.yaml, *.yml and *.json files. Every file is parsed and checked
before anything is sent: an unknown field or a missing name changes nothing.

With --prune --selector k=v, the set of services matching the selector is made
equal to the files in one call: services matching the selector that the files
do not name are deleted.`,
		Example: `  xlbctl apply -f web.yaml
  xlbctl get service web -o yaml | sed s/8080/8081/ | xlbctl apply -f -
  xlbctl apply -f services/ --prune --selector team=edge`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return errors.New("-f FILE is required (use -f - for standard input)")
			}
			if prune && selector == "" {
				return errors.New("--prune needs --selector: without it every service on xlbd would be pruned")
			}
			if selector != "" && !prune {
				return errors.New("--selector is only used with --prune")
			}
			items, err := readManifests(files, o.streams.in)
			if err != nil {
				return err
			}
			if validate {
				if err := validateAll(o, items); err != nil {
					return err
				}
			}
			if dryRun {
				for _, it := range items {
					fmt.Fprintf(o.streams.out, "service/%s valid (dry run)\n", it.svc.Name)
				}
				return nil
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			if prune {
				return applyPrune(cmd, o, c, items, selector)
			}
			var failed []string
			for _, it := range items {
				_, created, err := c.PutService(cmd.Context(), it.svc)
				if err != nil {
					// Keep going: the other services are independent, and
					// the operator gets every error in one run.
					fmt.Fprintf(o.streams.errOut, "error: service/%s (%s): %v\n", it.svc.Name, it.source, err)
					failed = append(failed, it.svc.Name)
					continue
				}
				verb := "configured"
				if created {
					verb = "created"
				}
				fmt.Fprintf(o.streams.out, "service/%s %s\n", it.svc.Name, verb)
			}
			if len(failed) > 0 {
				return fmt.Errorf("%d of %d services not applied: %s", len(failed), len(items), strings.Join(failed, ", "))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&files, "filename", "f", nil, "file, directory or - (stdin) to apply; repeatable")
	f.BoolVar(&dryRun, "dry-run", false, "only parse and check the files locally")
	f.BoolVar(&validate, "validate", true, "check every service with the API's validation before sending any "+
		"(turn off only when xlbctl is older than xlbd and rejects a newer field value)")
	f.BoolVar(&prune, "prune", false, "delete services matching --selector that the files do not name")
	f.StringVarP(&selector, "selector", "l", "", "with --prune: the set of services the files define, e.g. team=edge")
	return cmd
}

// validateAll runs the API's own validation on every service, so that one
// bad document stops the whole apply before anything changed, and reports
// every bad service at once.
func validateAll(o *globalOptions, items []manifestService) error {
	bad := 0
	for _, it := range items {
		// SNAT defaults are xlbd's configuration; xlbd enforces that rule.
		if err := api.ValidateService(&it.svc, api.ValidateOptions{SNATOptional: true}); err != nil {
			fmt.Fprintf(o.streams.errOut, "error: service/%s (%s): %v\n", it.svc.Name, it.source, err)
			bad++
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d services invalid; nothing applied", bad, len(items))
	}
	return nil
}

func applyPrune(cmd *cobra.Command, o *globalOptions, c *lbclient.Client, items []manifestService, selector string) error {
	sel, err := lbclient.ParseSelector(selector)
	if err != nil {
		return fmt.Errorf("--selector: %w", err)
	}
	b := api.BulkReplace{Selector: sel, Services: make([]api.Service, 0, len(items))}
	for _, it := range items {
		for k, v := range sel {
			if it.svc.Labels[k] != v {
				return fmt.Errorf("service/%s (%s): label %s=%s required by --selector is missing; it would be pruned at the next apply",
					it.svc.Name, it.source, k, v)
			}
		}
		b.Services = append(b.Services, it.svc)
	}
	res, err := c.BulkReplace(cmd.Context(), b)
	if err != nil {
		return err
	}
	for _, group := range []struct {
		names []string
		verb  string
	}{{res.Created, "created"}, {res.Updated, "configured"}, {res.Unchanged, "unchanged"}, {res.Deleted, "pruned"}} {
		for _, n := range group.names {
			fmt.Fprintf(o.streams.out, "service/%s %s\n", n, group.verb)
		}
	}
	return nil
}

// readManifests reads and parses every -f argument, and rejects a service
// defined twice.
func readManifests(args []string, stdin io.Reader) ([]manifestService, error) {
	var files []string
	for _, a := range args {
		if a == "-" {
			files = append(files, a)
			continue
		}
		fi, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			files = append(files, a)
			continue
		}
		entries, err := os.ReadDir(a)
		if err != nil {
			return nil, err
		}
		n := len(files)
		for _, e := range entries {
			ext := strings.ToLower(filepath.Ext(e.Name()))
			if !e.IsDir() && (ext == ".yaml" || ext == ".yml" || ext == ".json") {
				files = append(files, filepath.Join(a, e.Name()))
			}
		}
		if len(files) == n {
			return nil, fmt.Errorf("%s: no *.yaml, *.yml or *.json files", a)
		}
	}

	var out []manifestService
	seen := map[string]string{}
	stdinRead := false
	for _, f := range files {
		var data []byte
		var err error
		name := f
		if f == "-" {
			if stdinRead {
				return nil, errors.New("-f - given twice")
			}
			stdinRead = true
			name = "<stdin>"
			data, err = io.ReadAll(stdin)
		} else {
			data, err = os.ReadFile(f)
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		items, err := parseManifest(name, data)
		if err != nil {
			return nil, err
		}
		for _, it := range items {
			if prev, dup := seen[it.svc.Name]; dup {
				return nil, fmt.Errorf("service %q is defined twice: %s and %s", it.svc.Name, prev, it.source)
			}
			seen[it.svc.Name] = it.source
		}
		out = append(out, items...)
	}
	return out, nil
}
