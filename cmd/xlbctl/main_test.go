package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/lbclient/lbclienttest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

type result struct {
	stdout, stderr string
	code           int
}

// xlbctl runs the CLI in-process with env as its whole environment.
func xlbctl(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(t.Context(), args, strings.NewReader(stdin), &out, &errOut, func(k string) string { return env[k] })
	return result{stdout: out.String(), stderr: errOut.String(), code: code}
}

func ptr[T any](v T) *T { return &v }

// seededFake is an xlbd fake holding two services with live counters, a
// status and a few flows.
func seededFake(t *testing.T) (*lbclienttest.Fake, map[string]string) {
	t.Helper()
	fake := lbclienttest.NewFake()
	env := map[string]string{envServer: fake.Start(t)}
	web := api.Service{
		Name:   "web",
		Labels: map[string]string{"app": "web", api.LabelCluster: "prod"},
		Spec: api.ServiceSpec{
			VIPs: []string{"192.0.2.10", "2001:db8::10"}, Port: 80, Protocol: "tcp", Algorithm: "maglev",
			IdleTimeoutSeconds: 300,
			Probe:              &api.Probe{Type: "http", Port: 8081, Path: "/healthz", IntervalMillis: 1000, TimeoutMillis: 500, FailureThreshold: 2, SuccessThreshold: 1},
			Backends: []api.Backend{
				{Address: "10.0.0.1", Port: 8080, Name: "node-a"},
				{Address: "10.0.0.2", Port: 8080, Weight: ptr(uint32(2)), Name: "node-b"},
				{Address: "2001:db8::3", Port: 8080, Weight: ptr(uint32(0))},
			},
		},
	}
	dns := api.Service{
		Name:   "dns",
		Labels: map[string]string{"app": "dns"},
		Spec: api.ServiceSpec{
			VIPs: []string{"192.0.2.11"}, Port: 53, Protocol: "udp", NATMode: "fullnat", Algorithm: "rr",
			SNATAddresses: []string{"192.0.2.100"},
			Backends:      []api.Backend{{Address: "10.0.1.1", Port: 5353}},
		},
	}
	res := xlbctl(t, env, mustJSON(t, []api.Service{web, dns}), "apply", "-f", "-")
	if res.code != 0 {
		t.Fatalf("seeding: %+v", res)
	}
	fake.SetServiceStatus("web", &api.ServiceStatus{
		Packets: 3456, Bytes: 1_234_567, NewFlows: 1500, Flows: 12, Drops: map[string]uint64{"no_backend": 3, "source_range": 1200},
		Backends: []api.BackendStatus{
			{Address: "10.0.0.1", Port: 8080, State: "active", Packets: 2000, Bytes: 1_000_000, NewFlows: 1000, Active: 10},
			{Address: "10.0.0.2", Port: 8080, State: "down", Packets: 1456, Bytes: 234_567, NewFlows: 500},
			{Address: "2001:db8::3", Port: 8080, State: "draining", Active: 2},
		},
	})
	fake.SetServiceStatus("dns", &api.ServiceStatus{
		Packets: 7, Bytes: 512, NewFlows: 7, Flows: 1,
		Backends: []api.BackendStatus{{Address: "10.0.1.1", Port: 5353, State: "active", Packets: 7, Bytes: 512, NewFlows: 7, Active: 1}},
	})
	fake.SetStatus(api.Status{
		Version: "v0.1.0", BootID: "3f1e9c2a-8d4b-4e0f-9a51-0c6d2b7e8f10", Generation: 42, Hook: "tcx",
		ConntrackEntries: 120, ConntrackCapacity: 65536,
		SNATPortRange: "10000-29999", EphemeralPortRange: "32768-60999", SNATPortsReserved: true,
		Interfaces: []api.InterfaceStatus{{Name: "eth0", Attached: true, Mode: "tcx"}, {Name: "eth1", Error: "link not found"}},
		L2: []api.L2Status{{Name: "eth0", Ready: true, VIPs: 2, Ifindex: 7, Reopens: 1},
			{Name: "eth2", VIPs: 1, Error: "interface not found; waiting for it to appear"}},
	})
	fake.SetFlows([]api.Flow{
		{Service: "web", Protocol: "tcp", Client: "198.51.100.7:40001", VIP: "192.0.2.10:80", Backend: "10.0.0.1:8080", AgeSeconds: 95.4, IdleSeconds: 1.2},
		{Service: "web", Protocol: "tcp", Client: "[2001:db8:1::7]:40002", VIP: "[2001:db8::10]:80", Backend: "[2001:db8::3]:8080", AgeSeconds: 3600, IdleSeconds: 30, Closing: true},
		{Service: "dns", Protocol: "udp", Client: "198.51.100.8:5000", VIP: "192.0.2.11:53", Backend: "10.0.1.1:5353", SNAT: "192.0.2.100:61000", AgeSeconds: 2, IdleSeconds: 2},
	})
	return fake, env
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	var b bytes.Buffer
	if err := printObject(&b, "json", v); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it)\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func TestGetOutputs(t *testing.T) {
	_, env := seededFake(t)
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"get_services", []string{"get", "services"}},
		{"get_services_selector", []string{"get", "svc", "-l", "app=dns"}},
		{"get_service_web", []string{"get", "service", "web"}},
		{"get_service_dns_yaml", []string{"get", "service", "dns", "-o", "yaml"}},
		{"get_services_json", []string{"get", "services", "-o", "json", "--selector", "app=dns"}},
		{"get_status", []string{"get", "status"}},
		{"get_conntrack", []string{"get", "conntrack"}},
		{"get_conntrack_vip", []string{"get", "conntrack", "--vip", "192.0.2.11"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			res := xlbctl(t, env, "", tc.args...)
			if res.code != 0 || res.stderr != "" {
				t.Fatalf("exit %d, stderr %q", res.code, res.stderr)
			}
			golden(t, tc.golden, res.stdout)
		})
	}
}

func TestGetConntrackPaging(t *testing.T) {
	_, env := seededFake(t)
	res := xlbctl(t, env, "", "get", "conntrack", "--limit", "2")
	if res.code != 0 || strings.Count(res.stdout, "\n") != 3 || !strings.Contains(res.stderr, "--after 2") {
		t.Fatalf("page 1: %+v, want 2 flows and a hint to continue --after 2", res)
	}
	res = xlbctl(t, env, "", "get", "conntrack", "--limit", "2", "--after", "2")
	if res.code != 0 || !strings.Contains(res.stdout, "dns") || res.stderr != "" {
		t.Fatalf("page 2: %+v", res)
	}
	res = xlbctl(t, env, "", "get", "conntrack", "--limit", "1", "--all", "-o", "json")
	var all api.FlowList
	if res.code != 0 {
		t.Fatalf("--all: %+v", res)
	}
	if err := json.Unmarshal([]byte(res.stdout), &all); err != nil || len(all.Items) != 3 || all.Next != "" {
		t.Fatalf("--all: %v, %+v", err, all)
	}
}

func TestGetErrors(t *testing.T) {
	_, env := seededFake(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"get", "service", "nope"}, `error: GET /v1/services/nope: 404 not_found: service "nope" not found` + "\n"},
		{[]string{"get", "services", "-o", "xml"}, `error: invalid output format -o "xml" (allowed: table, json, yaml)` + "\n"},
		{[]string{"get", "services", "-l", "app"}, `error: --selector: selector "app": "app" is not key=value` + "\n"},
		{[]string{"get", "conntrack", "--limit", "-1"}, "error: --limit -1: must be 0 (server default) or more\n"},
		{[]string{"get", "flowz"}, `error: xlbctl get: unknown resource "flowz" (allowed: services, conntrack, status, bgp)` + "\n"},
		{[]string{"delete"}, "error: xlbctl delete: name a resource (allowed: service)\n"},
	} {
		res := xlbctl(t, env, "", tc.args...)
		if res.code != 1 {
			t.Errorf("%v: exit %d, want 1", tc.args, res.code)
		}
		if tc.want != "" && res.stderr != tc.want {
			t.Errorf("%v: stderr\n%q\nwant\n%q", tc.args, res.stderr, tc.want)
		}
	}
}

const webYAML = `# the web service
name: web
labels:
  app: web
spec:
  vips: [192.0.2.10]
  port: 80
  protocol: tcp
  backends:
  - address: 10.0.0.1
    port: 8080
  - {address: 10.0.0.2, port: 8080, weight: 3}
`

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestApplyYAMLFile(t *testing.T) {
	fake := lbclienttest.NewFake()
	env := map[string]string{envServer: fake.Start(t)}
	file := writeTemp(t, "web.yaml", webYAML)

	res := xlbctl(t, env, "", "apply", "-f", file)
	if res.code != 0 || res.stdout != "service/web created\n" {
		t.Fatalf("first apply: %+v", res)
	}
	res = xlbctl(t, env, "", "apply", "-f", file)
	if res.code != 0 || res.stdout != "service/web configured\n" {
		t.Fatalf("second apply: %+v", res)
	}
	got, _ := fake.Service("web")
	want := api.Service{Name: "web", Labels: map[string]string{"app": "web"}, Spec: api.ServiceSpec{
		VIPs: []string{"192.0.2.10"}, Port: 80, Protocol: "tcp",
		Backends: []api.Backend{{Address: "10.0.0.1", Port: 8080}, {Address: "10.0.0.2", Port: 8080, Weight: ptr(uint32(3))}},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stored %+v\nwant   %+v", got, want)
	}
}

func TestApplyJSONListAndMultiDocStdin(t *testing.T) {
	fake := lbclienttest.NewFake()
	env := map[string]string{envServer: fake.Start(t)}
	jsonList := `[
 {"name": "a", "spec": {"vips": ["192.0.2.1"], "port": 80, "protocol": "tcp", "backends": []}},
 {"name": "b", "spec": {"vips": ["192.0.2.2"], "port": 443, "protocol": "tcp", "backends": [{"address": "10.0.0.9", "port": 8443}]}}
]`
	res := xlbctl(t, env, "", "apply", "-f", writeTemp(t, "list.json", jsonList))
	if res.code != 0 || res.stdout != "service/a created\nservice/b created\n" {
		t.Fatalf("JSON list: %+v", res)
	}

	multi := "---\n" + webYAML + "--- # second\nname: dns\nspec: {vips: [192.0.2.11], port: 53, protocol: udp, backends: []}\n---\n# empty document\n"
	res = xlbctl(t, env, multi, "apply", "-f", "-")
	if res.code != 0 || res.stdout != "service/web created\nservice/dns created\n" {
		t.Fatalf("multi-document stdin: %+v", res)
	}
	if got := fake.Names(); !reflect.DeepEqual(got, []string{"a", "b", "dns", "web"}) {
		t.Errorf("services = %v", got)
	}
}

func TestApplyRoundTripFromGet(t *testing.T) {
	fake, env := seededFake(t)
	before, _ := fake.Service("web")
	for _, format := range []string{"yaml", "json"} {
		out := xlbctl(t, env, "", "get", "services", "-o", format)
		res := xlbctl(t, env, out.stdout, "apply", "-f", "-")
		if res.code != 0 || res.stdout != "service/web configured\nservice/dns configured\n" && res.stdout != "service/dns configured\nservice/web configured\n" {
			t.Fatalf("%s round trip: %+v", format, res)
		}
	}
	after, _ := fake.Service("web")
	if !reflect.DeepEqual(before, after) {
		t.Errorf("round trip changed the service:\n%+v\n%+v", before, after)
	}
}

func TestApplyRejectsBadFilesBeforeSending(t *testing.T) {
	fake := lbclienttest.NewFake()
	env := map[string]string{envServer: fake.Start(t)}
	for _, tc := range []struct {
		name, content, want string
	}{
		{"misspelt nested field", strings.Replace(webYAML, "- {address: 10.0.0.2", "- {adress: 10.0.0.2", 1),
			`unknown field "spec.backends[1].adress" (did you mean "address"?)`},
		{"unknown top-level field", webYAML + "kind: Service\n",
			`unknown field "kind" (allowed: name, labels, spec, status)`},
		{"wrong type", strings.Replace(webYAML, "port: 80", "port: http", 1),
			`field spec.port: got string, want an integer 0-65535`},
		{"missing name", strings.Replace(webYAML, "name: web", "", 1), `field name: required`},
		{"duplicate key", webYAML + "name: other\n", `already set in map`},
		{"defined twice", webYAML + "---\n" + webYAML, `service "web" is defined twice`},
		{"second document bad", webYAML + "---\nname: x\nspec: {prot: tcp}\n", `document 2: unknown field "spec.prot" (did you mean "port"?)`},
		{"not a service", "- 1\n- 2\n", `want a service object, got a number`},
		{"empty", "# nothing\n", `no services found`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := xlbctl(t, env, tc.content, "apply", "-f", "-")
			if res.code != 1 || !strings.Contains(res.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 and %q", res.code, res.stderr, tc.want)
			}
		})
	}
	if n := len(fake.Requests()); n != 0 {
		t.Errorf("%d requests sent for invalid files, want none", n)
	}
}

func TestApplyValidatesLocally(t *testing.T) {
	fake := lbclienttest.NewFake()
	env := map[string]string{envServer: fake.Start(t)}
	bad := strings.Replace(webYAML, "port: 8080\n", "port: 0\n", 1)
	good := "name: ok\nspec: {vips: [192.0.2.20], port: 80, protocol: tcp, backends: []}\n"
	badProto := "name: udpish\nspec: {vips: [192.0.2.21], port: 80, protocol: sctp, backends: []}\n"
	res := xlbctl(t, env, bad+"---\n"+good+"---\n"+badProto, "apply", "-f", "-")
	wantErr := "error: service/web (<stdin>: document 1): invalid: spec.backends[0].port: 0: backend port is required (allowed: 1-65535)\n"
	if res.code != 1 || !strings.HasPrefix(res.stderr, wantErr) ||
		!strings.Contains(res.stderr, "service/udpish (<stdin>: document 3): invalid: spec.protocol: sctp") ||
		!strings.HasSuffix(res.stderr, "error: 2 of 3 services invalid; nothing applied\n") {
		t.Errorf("exit %d, stderr:\n%s", res.code, res.stderr)
	}
	if n := len(fake.Requests()); n != 0 || res.stdout != "" {
		t.Errorf("%d requests sent, stdout %q: an invalid file must change nothing", n, res.stdout)
	}

	// --validate=false leaves the checking to xlbd, whose error names the
	// field just the same.
	res = xlbctl(t, env, bad+"---\n"+good, "apply", "-f", "-", "--validate=false")
	wantErr = "error: service/web (<stdin>: document 1): PUT /v1/services/web: 400 invalid: spec.backends[0].port: 0: backend port is required (allowed: 1-65535)\n" +
		"error: 1 of 2 services not applied: web\n"
	if res.code != 1 || res.stderr != wantErr {
		t.Errorf("exit %d, stderr\n%s\nwant\n%s", res.code, res.stderr, wantErr)
	}
	if res.stdout != "service/ok created\n" {
		t.Errorf("stdout %q: the valid service must still be applied", res.stdout)
	}
}

func TestApplyServerConflict(t *testing.T) {
	fake := lbclienttest.NewFake()
	env := map[string]string{envServer: fake.Start(t)}
	fake.FailNext(lbclienttest.Failure{Status: 409, Body: api.Error{Code: api.CodeConflict, Field: "spec.vips[0]",
		Value: "192.0.2.10", Message: "192.0.2.10:80/tcp is already used by service shop"}})
	res := xlbctl(t, env, webYAML, "apply", "-f", "-")
	want := "error: service/web (<stdin>): PUT /v1/services/web: 409 conflict: spec.vips[0]: 192.0.2.10: 192.0.2.10:80/tcp is already used by service shop\n" +
		"error: 1 of 1 services not applied: web\n"
	if res.code != 1 || res.stderr != want {
		t.Errorf("exit %d, stderr\n%s\nwant\n%s", res.code, res.stderr, want)
	}
}

func TestApplyPruneAndDryRun(t *testing.T) {
	fake, env := seededFake(t)
	res := xlbctl(t, env, "", "apply", "-f", writeTemp(t, "web.yaml", webYAML), "--dry-run")
	if res.code != 0 || res.stdout != "service/web valid (dry run)\n" {
		t.Fatalf("dry run: %+v", res)
	}
	edge := "name: edge\nlabels: {app: web, xlb.dev/cluster: prod}\nspec: {vips: [192.0.2.30], port: 80, protocol: tcp, backends: []}\n"
	res = xlbctl(t, env, edge, "apply", "-f", "-", "--prune", "-l", "xlb.dev/cluster=prod")
	if res.code != 0 || res.stdout != "service/edge created\nservice/web pruned\n" {
		t.Fatalf("prune: %+v", res)
	}
	if got := fake.Names(); !reflect.DeepEqual(got, []string{"dns", "edge"}) {
		t.Errorf("services after prune = %v, want dns (outside the selector) and edge", got)
	}
	res = xlbctl(t, env, webYAML, "apply", "-f", "-", "--prune", "-l", "xlb.dev/cluster=prod")
	if res.code != 1 || !strings.Contains(res.stderr, "label xlb.dev/cluster=prod required by --selector is missing") {
		t.Errorf("prune with a service outside the selector: %+v", res)
	}
	if res := xlbctl(t, env, webYAML, "apply", "-f", "-", "--prune"); res.code != 1 || !strings.Contains(res.stderr, "--prune needs --selector") {
		t.Errorf("prune without selector: %+v", res)
	}
}

func TestDelete(t *testing.T) {
	fake, env := seededFake(t)
	res := xlbctl(t, env, "", "delete", "service", "web")
	if res.code != 0 || res.stdout != "service/web deleted\n" {
		t.Fatalf("delete: %+v", res)
	}
	res = xlbctl(t, env, "", "delete", "svc", "web", "dns")
	if res.code != 1 || res.stdout != "service/dns deleted\n" || res.stderr != "error: service \"web\" not found\n" {
		t.Errorf("delete missing + existing: %+v", res)
	}
	res = xlbctl(t, env, "", "delete", "service", "web", "--ignore-not-found")
	if res.code != 0 {
		t.Errorf("--ignore-not-found: %+v", res)
	}
	if got := fake.Names(); len(got) != 0 {
		t.Errorf("services left: %v", got)
	}
}

func TestServerAndCredentials(t *testing.T) {
	fake, env := seededFake(t)
	url := env[envServer]
	fake.SetToken("s3cret")

	res := xlbctl(t, env, "", "get", "status")
	if res.code != 1 || !strings.Contains(res.stderr, "401 unauthorized") {
		t.Errorf("without token: %+v", res)
	}
	if res := xlbctl(t, map[string]string{envServer: url, envToken: "s3cret"}, "", "get", "status"); res.code != 0 {
		t.Errorf("token from %s: %+v", envToken, res)
	}
	tokenFile := writeTemp(t, "token", "s3cret\n")
	if res := xlbctl(t, map[string]string{envServer: url, envTokenFile: tokenFile}, "", "get", "status"); res.code != 0 {
		t.Errorf("token file from %s: %+v", envTokenFile, res)
	}
	// Flags win over the environment.
	badEnv := map[string]string{envServer: "http://127.0.0.1:1", envToken: "wrong"}
	if res := xlbctl(t, badEnv, "", "get", "status", "--server", url, "--token-file", tokenFile); res.code != 0 {
		t.Errorf("flags over env: %+v", res)
	}
	if res := xlbctl(t, env, "", "get", "status", "--token", "a", "--token-file", tokenFile); res.code != 1 || !strings.Contains(res.stderr, "exclusive") {
		t.Errorf("both token flags: %+v", res)
	}
	if res := xlbctl(t, map[string]string{envServer: "127.0.0.1:7470"}, "", "get", "status"); res.code != 1 || !strings.Contains(res.stderr, "http:// or https://") {
		t.Errorf("server without scheme: %+v", res)
	}
	for _, r := range fake.Requests() {
		if !strings.HasPrefix(r.UserAgent, "xlbctl/") {
			t.Fatalf("User-Agent %q", r.UserAgent)
		}
	}
}

func TestUnreachableServer(t *testing.T) {
	res := xlbctl(t, map[string]string{envServer: "http://127.0.0.1:1"}, "", "get", "services", "--timeout", "2s")
	if res.code != 1 || !strings.Contains(res.stderr, "connection refused") || !strings.Contains(res.stderr, "hint: is xlbd running") {
		t.Errorf("%+v", res)
	}
}

func TestVersion(t *testing.T) {
	res := xlbctl(t, nil, "", "version", "--client")
	if res.code != 0 || !strings.HasPrefix(res.stdout, "Client: xlbctl dev (go") {
		t.Errorf("version --client: %+v", res)
	}
	_, env := seededFake(t)
	res = xlbctl(t, env, "", "version")
	if res.code != 0 || !strings.Contains(res.stdout, "Server: xlbd v0.1.0 at "+env[envServer]) {
		t.Errorf("version: %+v", res)
	}
}

func TestUnits(t *testing.T) {
	for _, tc := range []struct {
		n            uint64
		bytes, count string
	}{
		{0, "0 B", "0"},
		{999, "999 B", "999"},
		{1000, "1.0 kB", "1.0k"},
		{3456, "3.5 kB", "3.5k"},
		{999_950, "1.0 MB", "1.0M"},
		{1_234_567, "1.2 MB", "1.2M"},
		{5_000_000_000_000, "5.0 TB", "5.0T"},
		{1<<64 - 1, "18.4 EB", "18.4E"},
	} {
		if got := formatBytes(tc.n); got != tc.bytes {
			t.Errorf("formatBytes(%d) = %q, want %q", tc.n, got, tc.bytes)
		}
		if got := formatCount(tc.n); got != tc.count {
			t.Errorf("formatCount(%d) = %q, want %q", tc.n, got, tc.count)
		}
	}
}
