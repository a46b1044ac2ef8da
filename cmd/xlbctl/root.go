package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/xlb-dev/xlb/lbclient"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

func clientVersion() string {
	if version != "dev" {
		return version
	}
	// `go install ...@vX` records the module version; local builds say (devel).
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

// Environment variables read when the matching flag is not given.
const (
	envServer    = "XLB_SERVER"
	envToken     = "XLB_TOKEN"
	envTokenFile = "XLB_TOKEN_FILE"
	envCAFile    = "XLB_CA_FILE"
	envCertFile  = "XLB_CERT_FILE"
	envKeyFile   = "XLB_KEY_FILE"
)

type streams struct {
	in     io.Reader
	out    io.Writer
	errOut io.Writer
}

// globalOptions are the flags every command shares.
type globalOptions struct {
	streams *streams
	getenv  func(string) string

	server     string
	token      string
	tokenFile  string
	caFile     string
	certFile   string
	keyFile    string
	serverName string
	insecure   bool
	timeout    time.Duration
	output     string
	verbose    bool
}

var outputFormats = []string{"table", "json", "yaml"}

func newRootCmd(s *streams, getenv func(string) string) *cobra.Command {
	o := &globalOptions{streams: s, getenv: getenv}
	root := &cobra.Command{
		Use:   "xlbctl",
		Short: "Operate xlbd, the xlb load balancer daemon",
		Long: `xlbctl talks to xlbd's REST API: list, inspect, apply and delete
load-balanced services, and look at the datapath (status, conntrack).`,
		SilenceUsage:  true, // an API error is not a usage error
		SilenceErrors: true, // run prints "error: ..." itself
		PersistentPreRunE: func(*cobra.Command, []string) error {
			for _, f := range outputFormats {
				if o.output == f {
					return nil
				}
			}
			return fmt.Errorf("invalid output format -o %q (allowed: %s)", o.output, strings.Join(outputFormats, ", "))
		},
	}
	root.SetIn(s.in)
	root.SetOut(s.out)
	root.SetErr(s.errOut)

	f := root.PersistentFlags()
	f.StringVar(&o.server, "server", "", "xlbd address, http://HOST:PORT or https://HOST:PORT (env "+envServer+", default "+lbclient.DefaultEndpoint+")")
	f.StringVar(&o.token, "token", "", "bearer token (env "+envToken+")")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the bearer token, re-read when it changes (env "+envTokenFile+")")
	f.StringVar(&o.caFile, "ca-file", "", "PEM CA bundle to verify xlbd's certificate (env "+envCAFile+")")
	f.StringVar(&o.certFile, "cert-file", "", "PEM client certificate for mTLS (env "+envCertFile+")")
	f.StringVar(&o.keyFile, "key-file", "", "PEM client key for mTLS (env "+envKeyFile+")")
	f.StringVar(&o.serverName, "tls-server-name", "", "name to verify in xlbd's certificate (default: the host of --server)")
	f.BoolVar(&o.insecure, "insecure-skip-tls-verify", false, "do not verify xlbd's certificate (testing only)")
	f.DurationVar(&o.timeout, "timeout", lbclient.DefaultTimeout, "timeout of each request to xlbd")
	f.StringVarP(&o.output, "output", "o", "table", "output format: "+strings.Join(outputFormats, "|"))
	f.BoolVarP(&o.verbose, "verbose", "v", false, "log retries to stderr")

	root.AddCommand(newGetCmd(o), newApplyCmd(o), newDeleteCmd(o), newBGPCmd(o), newVersionCmd(o))
	return root
}

// orEnv returns the flag value, else the environment variable.
func (o *globalOptions) orEnv(flagValue, env string) string {
	if flagValue != "" {
		return flagValue
	}
	return o.getenv(env)
}

// client builds the lbclient from flags and environment. Flags win over
// the environment; the token flags win over both token variables.
func (o *globalOptions) client() (*lbclient.Client, error) {
	server := o.orEnv(o.server, envServer)
	if server == "" {
		server = lbclient.DefaultEndpoint
	}
	token, tokenFile := o.token, o.tokenFile
	if token != "" && tokenFile != "" {
		return nil, errors.New("--token and --token-file are exclusive")
	}
	if token == "" && tokenFile == "" {
		token, tokenFile = o.getenv(envToken), o.getenv(envTokenFile)
		if token != "" && tokenFile != "" {
			return nil, fmt.Errorf("%s and %s are both set; unset one", envToken, envTokenFile)
		}
	}
	cfg := lbclient.Config{
		Endpoint:  server,
		Token:     token,
		TokenFile: tokenFile,
		TLS: lbclient.TLSConfig{
			CAFile:             o.orEnv(o.caFile, envCAFile),
			CertFile:           o.orEnv(o.certFile, envCertFile),
			KeyFile:            o.orEnv(o.keyFile, envKeyFile),
			ServerName:         o.serverName,
			InsecureSkipVerify: o.insecure,
		},
		Timeout:   o.timeout,
		UserAgent: "xlbctl/" + clientVersion(),
	}
	if o.verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(o.streams.errOut, nil))
	}
	return lbclient.New(cfg)
}
