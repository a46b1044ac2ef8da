// Package config reads xlbd's configuration from command-line flags and an
// optional YAML file (--config). The file uses the flag names in camelCase;
// flags given on the command line override the file; unknown keys in the
// file are rejected by name.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/internal/localports"
)

// Config is the complete xlbd configuration. The json tags are the YAML keys.
type Config struct {
	APIListen      string   `json:"apiListen"`
	APITokenFile   string   `json:"apiTokenFile"`
	TLSCertFile    string   `json:"tlsCertFile"`
	TLSKeyFile     string   `json:"tlsKeyFile"`
	ClientCAFile   string   `json:"clientCAFile"`
	Insecure       bool     `json:"insecure"`
	StateDir       string   `json:"stateDir"`
	Interfaces     []string `json:"interfaces"`
	Hook           string   `json:"hook"`
	XDPGeneric     bool     `json:"xdpGeneric"`
	BPFFSPath      string   `json:"bpffsPath"`
	ConntrackFlows int      `json:"conntrackFlows"`
	// ConntrackSYNTimeout is the lifetime in seconds of a flow until the
	// backend's first reply (a SYN flood from spoofed sources never gets
	// one).
	ConntrackSYNTimeout int `json:"conntrackSynTimeout"`
	// ConntrackNewFlowBudget bounds conntrack insertions per CPU per
	// second; beyond it new flows are served without conntrack (default
	// mode) or dropped (fullnat/onearm). -1: derived from ConntrackFlows
	// and ConntrackSYNTimeout (NewFlowBudget); 0: unlimited.
	ConntrackNewFlowBudget int      `json:"conntrackNewFlowBudget"`
	SNATAddresses          []string `json:"snatAddresses"`
	// SNATPortRange is "MIN-MAX": the source ports of fullnat and onearm
	// flows. xlbd reserves it in net.ipv4.ip_local_reserved_ports (see
	// docs/xlbd.md) so that the host's own connections never use them.
	SNATPortRange string `json:"snatPortRange"`
	LogLevel      string `json:"logLevel"`
	LogFormat     string `json:"logFormat"`
	DetachOnExit  bool   `json:"detachOnExit"`
	PlumbVIPs     bool   `json:"plumbVIPs"`
	// MaglevSeed and MaglevMinTableSize must be equal on every load
	// balancer that serves the same VIPs (ECMP): then every node maps a
	// flow to the same backend.
	MaglevSeed         uint32 `json:"maglevSeed"`
	MaglevMinTableSize uint32 `json:"maglevMinTableSize"`
}

// Defaults returns the configuration used when nothing is given.
func Defaults() Config {
	return Config{
		APIListen:              "127.0.0.1:7470",
		StateDir:               "/var/lib/xlbd",
		Hook:                   "tcx",
		BPFFSPath:              "/sys/fs/bpf/xlb",
		ConntrackFlows:         1_000_000,
		ConntrackSYNTimeout:    5,
		ConntrackNewFlowBudget: -1,
		SNATPortRange:          DefaultSNATPorts().String(),
		LogLevel:               "info",
		LogFormat:              "text",
	}
}

// listFlag is a comma-separated list flag; each use replaces the value.
type listFlag struct{ p *[]string }

func (l listFlag) String() string {
	if l.p == nil {
		return ""
	}
	return strings.Join(*l.p, ",")
}

func (l listFlag) Set(s string) error {
	*l.p = nil
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l.p = append(*l.p, part)
		}
	}
	return nil
}

// bind registers every flag on fs, writing into c, with c's current values
// as defaults (so that a second parse over file values only overrides what
// the command line names).
func bind(fs *flag.FlagSet, c *Config, configFile *string) {
	fs.StringVar(configFile, "config", *configFile, "YAML configuration file (keys are the flag names in camelCase; flags override it)")
	fs.StringVar(&c.APIListen, "api-listen", c.APIListen, "address:port of the REST API")
	fs.StringVar(&c.APITokenFile, "api-token-file", c.APITokenFile, "file holding the bearer token required on every API request except /healthz and /readyz")
	fs.StringVar(&c.TLSCertFile, "tls-cert-file", c.TLSCertFile, "serve the API over TLS with this certificate (PEM)")
	fs.StringVar(&c.TLSKeyFile, "tls-key-file", c.TLSKeyFile, "private key of --tls-cert-file (PEM)")
	fs.StringVar(&c.ClientCAFile, "client-ca-file", c.ClientCAFile, "require API clients to present a certificate signed by this CA (PEM); needs --tls-cert-file")
	fs.BoolVar(&c.Insecure, "insecure", c.Insecure, "allow listening on a non-loopback address without --api-token-file or --client-ca-file")
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "directory of the persisted desired state (services.json)")
	fs.Var(listFlag{&c.Interfaces}, "interfaces", "comma-separated interfaces to attach the datapath to")
	fs.StringVar(&c.Hook, "hook", c.Hook, "where the datapath is attached: tcx or xdp")
	fs.BoolVar(&c.XDPGeneric, "xdp-generic", c.XDPGeneric, "with --hook xdp, attach in generic (skb) mode")
	fs.StringVar(&c.BPFFSPath, "bpffs-path", c.BPFFSPath, "bpffs directory where maps and links are pinned")
	fs.IntVar(&c.ConntrackFlows, "conntrack-flows", c.ConntrackFlows, "number of tracked flows (two conntrack entries each)")
	fs.IntVar(&c.ConntrackSYNTimeout, "conntrack-syn-timeout", c.ConntrackSYNTimeout, "seconds a flow lives until the backend's first reply (then the service's idle timeout)")
	fs.IntVar(&c.ConntrackNewFlowBudget, "conntrack-new-flow-budget", c.ConntrackNewFlowBudget, "conntrack insertions per CPU per second; beyond it new flows are served without conntrack (default mode) or dropped (fullnat/onearm); -1: derived from --conntrack-flows and --conntrack-syn-timeout, 0: unlimited")
	fs.Var(listFlag{&c.SNATAddresses}, "snat-addresses", "comma-separated default SNAT addresses for fullnat services (at most one per family)")
	fs.StringVar(&c.SNATPortRange, "snat-port-range", c.SNATPortRange, "MIN-MAX source ports for fullnat/onearm flows; reserved in net.ipv4.ip_local_reserved_ports and must not overlap the ephemeral range unless that reservation succeeds")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "text or json")
	fs.BoolVar(&c.DetachOnExit, "detach-on-exit", c.DetachOnExit, "detach the datapath and remove its pins on exit (default: keep forwarding)")
	fs.Func("maglev-seed", "seed of the Maglev permutations and flow hash; the same on every node serving the same VIPs (default 0)", func(v string) error {
		n, err := strconv.ParseUint(v, 0, 32)
		if err != nil {
			return fmt.Errorf("allowed: 0-%d", uint32(1<<32-1))
		}
		c.MaglevSeed = uint32(n)
		return nil
	})
	fs.Func("maglev-min-table-size", "smallest Maglev table in slots, a prime from the list in docs/datapath.md (default 16381); the same on every node", func(v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return fmt.Errorf("allowed: one of the primes in docs/datapath.md")
		}
		c.MaglevMinTableSize = uint32(n)
		return nil
	})
	fs.BoolVar(&c.PlumbVIPs, "plumb-vips", c.PlumbVIPs, "put every VIP on the xlb-owned link xlb0 so that the host answers for it (ICMP echo); removed on clean exit (see docs/announce.md)")
}

// Parse builds the configuration from args (without the program name).
// Output for -h and flag errors goes to out. flag.ErrHelp is returned for -h.
func Parse(args []string, out io.Writer) (Config, error) {
	// First pass: only to learn --config.
	var probe Config
	var file string
	fs := flag.NewFlagSet("xlbd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	bind(fs, &probe, &file)
	if err := fs.Parse(args); err != nil {
		// Report it with the real flag set below (with usage output).
		file = ""
	}

	c := Defaults()
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return Config{}, fmt.Errorf("config file: %w", err)
		}
		if err := yaml.UnmarshalStrict(data, &c); err != nil {
			return Config{}, fmt.Errorf("config file %s: %s", file, cleanYAMLError(err))
		}
	}
	fs = flag.NewFlagSet("xlbd", flag.ContinueOnError)
	fs.SetOutput(out)
	bind(fs, &c, &file)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// cleanYAMLError turns `error unmarshaling JSON: while decoding JSON: json:
// unknown field "x"` into `unknown key "x"`.
func cleanYAMLError(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "json: unknown field "); i >= 0 {
		return "unknown key " + strings.TrimPrefix(msg[i:], "json: unknown field ") +
			" (allowed: the flag names in camelCase, e.g. apiListen, stateDir, interfaces)"
	}
	msg = strings.TrimPrefix(msg, "error unmarshaling JSON: while decoding JSON: ")
	return strings.TrimPrefix(msg, "json: ")
}

// Validate checks values and combinations, naming the flag at fault.
func (c *Config) Validate() error {
	host, port, err := net.SplitHostPort(c.APIListen)
	if err != nil || port == "" {
		return fmt.Errorf("--api-listen %q: want ADDR:PORT, e.g. 127.0.0.1:7470", c.APIListen)
	}
	if !slices.Contains([]string{"tcx", "xdp"}, c.Hook) {
		return fmt.Errorf("--hook %q: allowed tcx, xdp", c.Hook)
	}
	if c.XDPGeneric && c.Hook != "xdp" {
		return errors.New("--xdp-generic needs --hook xdp")
	}
	if len(c.Interfaces) == 0 {
		return errors.New("--interfaces: at least one interface is required (comma-separated names)")
	}
	seen := map[string]bool{}
	for _, n := range c.Interfaces {
		if len(n) > 15 || strings.ContainsAny(n, "/ ") {
			return fmt.Errorf("--interfaces: %q is not an interface name", n)
		}
		if seen[n] {
			return fmt.Errorf("--interfaces: %q is listed twice (allowed: each interface once)", n)
		}
		seen[n] = true
	}
	if c.ConntrackFlows < 1024 || c.ConntrackFlows > 1<<27 {
		return fmt.Errorf("--conntrack-flows %d: allowed 1024-%d", c.ConntrackFlows, 1<<27)
	}
	if c.ConntrackSYNTimeout < 1 || c.ConntrackSYNTimeout > 600 {
		return fmt.Errorf("--conntrack-syn-timeout %d: allowed 1-600 (seconds)", c.ConntrackSYNTimeout)
	}
	if c.ConntrackNewFlowBudget < -1 || c.ConntrackNewFlowBudget > 1<<30 {
		return fmt.Errorf("--conntrack-new-flow-budget %d: allowed -1 (derived from the table size), 0 (unlimited) or 1-%d (per CPU per second)", c.ConntrackNewFlowBudget, 1<<30)
	}
	if _, err := c.DefaultSNAT(); err != nil {
		return err
	}
	if _, err := c.SNATPorts(); err != nil {
		return err
	}
	if _, err := ParseLogLevel(c.LogLevel); err != nil {
		return err
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("--log-format %q: allowed text, json", c.LogFormat)
	}
	if c.StateDir == "" {
		return errors.New("--state-dir must not be empty")
	}
	if c.BPFFSPath == "" {
		return errors.New("--bpffs-path must not be empty")
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("--tls-cert-file and --tls-key-file go together")
	}
	if c.ClientCAFile != "" && c.TLSCertFile == "" {
		return errors.New("--client-ca-file needs --tls-cert-file and --tls-key-file (client certificates need TLS)")
	}
	if !c.Insecure && c.APITokenFile == "" && c.ClientCAFile == "" && !isLoopback(host) {
		return fmt.Errorf("--api-listen %s is not a loopback address: refusing to serve the API without authentication; give --api-token-file or --client-ca-file, or --insecure", c.APIListen)
	}
	return nil
}

// isLoopback reports whether host binds only loopback addresses. An empty
// host (":7470") binds every address and is not loopback.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// DefaultSNAT parses --snat-addresses.
func (c *Config) DefaultSNAT() ([]netip.Addr, error) {
	var out []netip.Addr
	seen := map[bool]bool{}
	for _, s := range c.SNATAddresses {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" || a.Is4In6() || a.IsUnspecified() || a.IsMulticast() {
			return nil, fmt.Errorf("--snat-addresses: %q is not a unicast IP address", s)
		}
		if seen[a.Is4()] {
			return nil, fmt.Errorf("--snat-addresses: %q: at most one IPv4 and one IPv6 address", s)
		}
		seen[a.Is4()] = true
		out = append(out, a)
	}
	return out, nil
}

// MinSNATPort is the lowest allowed --snat-port-range port: below it are
// the well-known ports of services the host itself may run.
const MinSNATPort = 1024

// DefaultSNATPorts is the default --snat-port-range: below the kernel's
// default ephemeral range (32768-60999) and the Kubernetes NodePort range
// (30000-32767); see docs/xlbd.md for why 20,000 ports are enough.
func DefaultSNATPorts() localports.Range {
	return localports.Range{Min: dataplane.DefaultSNATPortMin, Max: dataplane.DefaultSNATPortMax}
}

// SNATPorts parses --snat-port-range.
func (c *Config) SNATPorts() (localports.Range, error) {
	r, err := localports.ParseRange(c.SNATPortRange)
	if err == nil && r.Min < MinSNATPort {
		err = fmt.Errorf("MIN %d is below %d", r.Min, MinSNATPort)
	}
	if err != nil || !strings.Contains(c.SNATPortRange, "-") {
		return localports.Range{}, fmt.Errorf("--snat-port-range %q: want MIN-MAX with %d ≤ MIN ≤ MAX ≤ 65535, outside net.ipv4.ip_local_port_range (default %s)",
			c.SNATPortRange, MinSNATPort, DefaultSNATPorts())
	}
	return r, nil
}

// ParseLogLevel maps --log-level to a slog level.
func ParseLogLevel(s string) (slog.Level, error) {
	switch s {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("--log-level %q: allowed debug, info, warn, error", s)
}

// NewLogger builds the structured logger the configuration asks for.
func (c *Config) NewLogger(w io.Writer) *slog.Logger {
	level, _ := ParseLogLevel(c.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
