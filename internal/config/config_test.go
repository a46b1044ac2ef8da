package config

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestDefaults(t *testing.T) {
	c, err := Parse([]string{"--interfaces", "eth0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Defaults()
	want.Interfaces = []string{"eth0"}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got %+v\nwant %+v", c, want)
	}
	if want.APIListen != "127.0.0.1:7470" || want.StateDir != "/var/lib/xlbd" || want.BPFFSPath != "/sys/fs/bpf/xlb" || want.ConntrackFlows != 1000000 || want.Hook != "tcx" ||
		want.ConntrackSYNTimeout != 5 || want.ConntrackNewFlowBudget != -1 {
		t.Fatalf("documented defaults changed: %+v", want)
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "xlbd.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFileAndFlagOverride(t *testing.T) {
	p := writeFile(t, `
apiListen: 127.0.0.1:9000
interfaces: [eth0, eth1]
hook: xdp
xdpGeneric: true
conntrackFlows: 2048
snatAddresses: ["192.0.2.1", "2001:db8::1"]
logLevel: debug
logFormat: json
stateDir: /tmp/x
`)
	c, err := Parse([]string{"--config", p, "--log-level", "warn", "--interfaces=veth9"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.APIListen != "127.0.0.1:9000" || c.Hook != "xdp" || !c.XDPGeneric || c.ConntrackFlows != 2048 || c.LogFormat != "json" || c.StateDir != "/tmp/x" {
		t.Fatalf("file values lost: %+v", c)
	}
	if c.LogLevel != "warn" || !reflect.DeepEqual(c.Interfaces, []string{"veth9"}) {
		t.Fatalf("flags did not override the file: %+v", c)
	}
	if !reflect.DeepEqual(c.SNATAddresses, []string{"192.0.2.1", "2001:db8::1"}) {
		t.Fatalf("snat: %v", c.SNATAddresses)
	}
	// Flag order does not matter: --config after other flags.
	c2, err := Parse([]string{"--log-level", "warn", "--interfaces=veth9", "--config", p}, io.Discard)
	if err != nil || !reflect.DeepEqual(c, c2) {
		t.Fatalf("order dependent: %+v %v", c2, err)
	}
}

func TestFileUnknownKey(t *testing.T) {
	p := writeFile(t, "interfaces: [eth0]\napiListn: 127.0.0.1:1\n")
	_, err := Parse([]string{"--config", p}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `unknown key "apiListn"`) {
		t.Fatalf("want unknown key error naming apiListn, got %v", err)
	}
	p = writeFile(t, "interfaces: eth0\n")
	if _, err := Parse([]string{"--config", p}, io.Discard); err == nil || !strings.Contains(err.Error(), "interfaces") {
		t.Fatalf("want type error naming interfaces, got %v", err)
	}
}

func TestValidation(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{}, "--interfaces"},
		{[]string{"--interfaces=e", "--hook=tc"}, "--hook"},
		{[]string{"--interfaces=e,f,e"}, "listed twice"},
		{[]string{"--interfaces=e", "--maglev-seed=x"}, "maglev-seed"},
		{[]string{"--interfaces=e", "--xdp-generic"}, "--xdp-generic"},
		{[]string{"--interfaces=e", "--api-listen=7470"}, "--api-listen"},
		{[]string{"--interfaces=e", "--api-listen=0.0.0.0:7470"}, "refusing"},
		{[]string{"--interfaces=e", "--api-listen=:7470"}, "refusing"},
		{[]string{"--interfaces=e", "--conntrack-flows=0"}, "--conntrack-flows"},
		{[]string{"--interfaces=e", "--conntrack-syn-timeout=0"}, "--conntrack-syn-timeout 0: allowed 1-600"},
		{[]string{"--interfaces=e", "--conntrack-new-flow-budget=-2"}, "--conntrack-new-flow-budget -2: allowed -1"},
		{[]string{"--interfaces=e", "--snat-addresses=1.2.3.4,5.6.7.8"}, "--snat-addresses"},
		{[]string{"--interfaces=e", "--snat-addresses=nope"}, "--snat-addresses"},
		{[]string{"--interfaces=e", "--log-level=trace"}, "--log-level"},
		{[]string{"--interfaces=e", "--log-format=xml"}, "--log-format"},
		{[]string{"--interfaces=e", "--tls-cert-file=c"}, "--tls-key-file"},
		{[]string{"--interfaces=e", "--client-ca-file=ca"}, "--client-ca-file"},
		{[]string{"--interfaces=e", "--no-such-flag"}, "no-such-flag"},
		{[]string{"--interfaces=e", "extra"}, "unexpected"},
	}
	for _, tc := range cases {
		_, err := Parse(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want error containing %q", tc.args, err, tc.want)
		}
	}
	// Non-loopback is fine with auth or --insecure.
	for _, extra := range []string{"--insecure", "--api-token-file=/t", "--client-ca-file=/ca"} {
		args := []string{"--interfaces=e", "--api-listen=0.0.0.0:7470", extra, "--tls-cert-file=c", "--tls-key-file=k"}
		if _, err := Parse(args, io.Discard); err != nil {
			t.Errorf("%v: %v", args, err)
		}
	}
	if _, err := Parse([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}

func TestPlumbVIPs(t *testing.T) {
	c, err := Parse([]string{"--interfaces", "eth0"}, io.Discard)
	if err != nil || c.PlumbVIPs {
		t.Fatalf("plumbVIPs must default to false: %+v %v", c, err)
	}
	p := writeFile(t, "interfaces: [eth0]\nplumbVIPs: true\n")
	if c, err = Parse([]string{"--config", p}, io.Discard); err != nil || !c.PlumbVIPs {
		t.Fatalf("plumbVIPs from the file: %+v %v", c, err)
	}
	if c, err = Parse([]string{"--config", p, "--plumb-vips=false"}, io.Discard); err != nil || c.PlumbVIPs {
		t.Fatalf("--plumb-vips=false must override the file: %+v %v", c, err)
	}
}

func TestSNATPortRange(t *testing.T) {
	c, err := Parse([]string{"--interfaces", "eth0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := c.SNATPorts(); err != nil || r.Min != 10000 || r.Max != 29999 {
		t.Fatalf("default --snat-port-range = %v, %v; want 10000-29999", r, err)
	}
	p := writeFile(t, "interfaces: [eth0]\nsnatPortRange: 20000-20999\n")
	c, err = Parse([]string{"--config", p}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := c.SNATPorts(); r.Min != 20000 || r.Max != 20999 {
		t.Fatalf("file snatPortRange = %v", r)
	}
	c, err = Parse([]string{"--config", p, "--snat-port-range", "1024-65535"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := c.SNATPorts(); r.Min != 1024 || r.Max != 65535 {
		t.Fatalf("flag did not override the file: %v", r)
	}
	for _, bad := range []string{"", "20000", "x-y", "30000-20000", "80-1000", "1023-2000", "10000-65536", "10000-20000-30000"} {
		_, err := Parse([]string{"--interfaces=e", "--snat-port-range=" + bad}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--snat-port-range") || !strings.Contains(err.Error(), "1024 ≤ MIN ≤ MAX ≤ 65535") {
			t.Errorf("--snat-port-range=%q: error %v, want one naming the flag and the allowed values", bad, err)
		}
	}
}
