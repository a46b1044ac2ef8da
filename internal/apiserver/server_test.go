package apiserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/internal/apiserver"
	"github.com/xlb-dev/xlb/internal/daemon"
	"github.com/xlb-dev/xlb/internal/daemon/fakedp"
	"github.com/xlb-dev/xlb/internal/state"
)

type env struct {
	t     *testing.T
	srv   *httptest.Server
	dp    *fakedp.Fake
	mgr   *daemon.Manager
	dir   string
	token string
}

func newEnv(t *testing.T, token string) *env {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	store, err := state.Open(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	dp := fakedp.New("eth0")
	mgr := daemon.NewManager(daemon.ManagerConfig{Dataplane: dp, Store: store, Logger: log, Hook: "tcx", Version: "test",
		DefaultSNAT: []netip.Addr{netip.MustParseAddr("192.0.2.250")}})
	if err := mgr.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := apiserver.New(apiserver.Options{Core: mgr, Logger: log, Token: []byte(token)})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return &env{t: t, srv: srv, dp: dp, mgr: mgr, dir: dir, token: token}
}

// do sends a request and decodes a JSON answer into out (if non-nil).
func (e *env) do(method, path string, body any, out any) int {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if e.token != "" {
		req.Header.Set("Authorization", "Bearer "+e.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		// Every non-2xx answer is an api.Error.
		var apiErr api.Error
		if err := api.DecodeStrict(raw, &apiErr); err != nil || apiErr.Code == "" || resp.Header.Get("Content-Type") != "application/json" {
			e.t.Fatalf("%s %s: %d body is not an api.Error: %q", method, path, resp.StatusCode, raw)
		}
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			e.t.Fatalf("%s %s: decode %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

func (e *env) status() api.Status {
	var st api.Status
	if code := e.do("GET", "/v1/status", nil, &st); code != 200 {
		e.t.Fatalf("status: %d", code)
	}
	return st
}

func (e *env) stateFile() string {
	data, _ := os.ReadFile(filepath.Join(e.dir, state.FileName))
	return string(data)
}

func u32(v uint32) *uint32 { return &v }

func webService() api.Service {
	return api.Service{
		Labels: map[string]string{api.LabelCluster: "c1"},
		Spec: api.ServiceSpec{
			VIPs: []string{"192.0.2.10", "2001:db8::10"}, Port: 80, Protocol: "tcp",
			Backends: []api.Backend{
				{Address: "10.0.0.2", Port: 8080},
				{Address: "10.0.0.1", Port: 8080, Weight: u32(0)},
				{Address: "2001:db8:1::1", Port: 8080},
			},
		},
	}
}

func TestPutGetIdempotentDelete(t *testing.T) {
	e := newEnv(t, "")
	gen0 := e.status().Generation
	var created api.Service
	if code := e.do("PUT", "/v1/services/web", webService(), &created); code != http.StatusCreated {
		t.Fatalf("create: %d", code)
	}
	if created.Name != "web" || created.Spec.Algorithm != "maglev" || created.Spec.NATMode != "default" || created.Spec.IdleTimeoutSeconds != 240 ||
		*created.Spec.Backends[0].Weight != 0 || created.Spec.Backends[0].Address != "10.0.0.1" {
		t.Fatalf("create did not return the defaulted spec: %+v", created)
	}
	applied, calls := e.dp.Applied()
	if len(applied) != 2 || applied[0].Name != "web/v4" || len(applied[0].Backends) != 2 || applied[1].Name != "web/v6" || len(applied[1].Backends) != 1 {
		t.Fatalf("datapath got %+v", applied)
	}
	if applied[0].Backends[0].State != dataplane.BackendDraining {
		t.Fatalf("weight 0 should drain: %+v", applied[0].Backends[0])
	}
	gen1 := e.status().Generation
	if gen1 != gen0+1 {
		t.Fatalf("generation %d -> %d, want +1", gen0, gen1)
	}
	file := e.stateFile()
	if !strings.Contains(file, `"name": "web"`) {
		t.Fatalf("not persisted: %s", file)
	}

	// Identical PUT (even in a different order and spelling): 200, no
	// datapath call, no write, same generation.
	same := webService()
	same.Name = "web"
	same.Spec.VIPs = []string{"2001:DB8::10", "192.0.2.10"}
	same.Spec.Backends[0], same.Spec.Backends[2] = same.Spec.Backends[2], same.Spec.Backends[0]
	var got api.Service
	if code := e.do("PUT", "/v1/services/web", same, &got); code != http.StatusOK {
		t.Fatalf("identical put: %d", code)
	}
	if _, calls2 := e.dp.Applied(); calls2 != calls {
		t.Fatalf("identical PUT called Apply (%d -> %d)", calls, calls2)
	}
	if e.status().Generation != gen1 || e.stateFile() != file {
		t.Fatal("identical PUT changed generation or state file")
	}

	// GET carries live status.
	if code := e.do("GET", "/v1/services/web", nil, &got); code != 200 {
		t.Fatalf("get: %d", code)
	}
	st := got.Status
	if st == nil || st.Packets != 2*fakedp.ServicePackets || st.Flows != 2*fakedp.ServiceFlows || st.Drops["src_denied"] != 4 || len(st.Backends) != 3 {
		t.Fatalf("status: %+v", st)
	}
	if st.Backends[0].State != "draining" || st.Backends[1].State != "active" || st.Backends[1].Packets != fakedp.BackendPackets {
		t.Fatalf("backend status: %+v", st.Backends)
	}
	// A GET-modify-PUT round trip (status included) is accepted.
	got.Spec.Port = 81
	var updated api.Service
	if code := e.do("PUT", "/v1/services/web", got, &updated); code != http.StatusOK || updated.Spec.Port != 81 || updated.Status != nil {
		t.Fatalf("update: %d %+v", code, updated)
	}
	if e.status().Generation != gen1+1 {
		t.Fatal("update did not bump the generation")
	}

	if code := e.do("DELETE", "/v1/services/web", nil, nil); code != http.StatusNoContent {
		t.Fatalf("delete: %d", code)
	}
	if applied, _ := e.dp.Applied(); len(applied) != 0 {
		t.Fatalf("datapath still has %+v", applied)
	}
	var apiErr api.Error
	if code := e.do("GET", "/v1/services/web", nil, &apiErr); code != 404 || apiErr.Code != api.CodeNotFound {
		t.Fatalf("get after delete: %d %+v", code, apiErr)
	}
	if code := e.do("DELETE", "/v1/services/web", nil, &apiErr); code != 404 || apiErr.Code != api.CodeNotFound {
		t.Fatalf("second delete: %d %+v", code, apiErr)
	}
}

// TestBadInput: every rejected request names the field, the value and what
// is allowed, and changes nothing (no Apply, same generation, same file).
func TestBadInput(t *testing.T) {
	e := newEnv(t, "")
	if code := e.do("PUT", "/v1/services/keep", webService(), nil); code != 201 {
		t.Fatal(code)
	}
	mut := func(f func(*api.Service)) api.Service { s := webService(); f(&s); return s }
	big := `{"name":"x","spec":{"vips":["10.0.0.1"],"port":1,"protocol":"tcp","backends":[` + strings.Repeat(`{"address":"10.0.0.1","port":1},`, 150000) + `{}]}}`
	cases := []struct {
		name, method, path string
		body               any
		status             int
		code, field, value string
		allowed            string
	}{
		{"backend port", "PUT", "/v1/services/web", mut(func(s *api.Service) { s.Spec.Backends[2].Port = 0 }), 400, "invalid", "spec.backends[2].port", "0", "1-65535"},
		{"protocol", "PUT", "/v1/services/web", mut(func(s *api.Service) { s.Spec.Protocol = "sctp" }), 400, "invalid", "spec.protocol", "sctp", "tcp, udp"},
		{"natMode", "PUT", "/v1/services/web", mut(func(s *api.Service) { s.Spec.NATMode = "dsr" }), 400, "invalid", "spec.natMode", "dsr", "fullnat"},
		{"fullnat v6 without snat", "PUT", "/v1/services/web", mut(func(s *api.Service) { s.Spec.NATMode = "fullnat" }), 400, "invalid", "spec.snatAddresses", "", "--snat-addresses"},
		{"probe status", "PUT", "/v1/services/web", mut(func(s *api.Service) { s.Spec.Probe = &api.Probe{Type: "http", ExpectStatus: []int{99}} }), 400, "invalid", "spec.probe.expectStatus[0]", "99", "100-599"},
		{"label", "PUT", "/v1/services/web", mut(func(s *api.Service) { s.Labels["k"] = "bad value" }), 400, "invalid", "labels[k]", "bad value", "value"},
		{"path name", "PUT", "/v1/services/Web", webService(), 400, "invalid", "name", "Web", "lowercase"},
		{"name mismatch", "PUT", "/v1/services/web", mut(func(s *api.Service) { s.Name = "other" }), 400, "invalid", "name", "other", "empty or web"},
		{"unknown field", "PUT", "/v1/services/web", `{"spec":{"vips":["10.0.0.1"],"port":80,"protocol":"tcp","backend":[]}}`, 400, "invalid", "backend", "backend", "openapi"},
		{"type", "PUT", "/v1/services/web", `{"spec":{"port":"80"}}`, 400, "invalid", "spec.port", "string", "integer 0-65535"},
		{"bad json", "PUT", "/v1/services/web", `{"spec":`, 400, "invalid", "", "", "JSON object"},
		{"trailing", "PUT", "/v1/services/web", `{} {}`, 400, "invalid", "", "", "exactly one"},
		{"too large", "PUT", "/v1/services/web", big, 413, "too_large", "", "", "4194304 bytes"},
		{"conflict", "PUT", "/v1/services/web", webService(), 409, "conflict", "spec.vips[0]", "192.0.2.10:80/tcp", ""},
		{"unknown query", "PUT", "/v1/services/web?dryRun=1", webService(), 400, "invalid", "dryRun", "1", "none"},
		{"bulk empty selector", "PUT", "/v1/services", api.BulkReplace{}, 400, "invalid", "selector", "", "key=value"},
		{"bulk selector mismatch", "PUT", "/v1/services", api.BulkReplace{Selector: map[string]string{api.LabelCluster: "c2"},
			Services: []api.Service{mut(func(s *api.Service) { s.Name = "a"; s.Labels[api.LabelCluster] = "c2" }), mut(func(s *api.Service) { s.Name = "b"; s.Spec.VIPs = []string{"192.0.2.99"}; s.Spec.Backends = nil })}},
			400, "invalid", "services[1].labels", "xlb.dev/cluster=c1", "xlb.dev/cluster=c2"},
		{"bulk invalid service", "PUT", "/v1/services", api.BulkReplace{Selector: map[string]string{"a": "b"},
			Services: []api.Service{{Name: "x", Labels: map[string]string{"a": "b"}, Spec: api.ServiceSpec{VIPs: []string{"10.0.0.1"}, Port: 80, Protocol: "tcp", Algorithm: "wrr"}}}},
			400, "invalid", "services[0].spec.algorithm", "wrr", "maglev"},
		{"list selector", "GET", "/v1/services?selector=a", nil, 400, "invalid", "selector", "a", "key=value"},
		{"conntrack limit", "GET", "/v1/conntrack?limit=0", nil, 400, "invalid", "limit", "0", "1-10000"},
		{"conntrack vip", "GET", "/v1/conntrack?vip=nope", nil, 400, "invalid", "vip", "nope", "IPv4 or IPv6"},
		{"method", "POST", "/v1/services/web", webService(), 405, "method_not_allowed", "", "POST", "DELETE, GET, PUT"},
		{"no route", "GET", "/v2/services", nil, 404, "not_found", "", "", "openapi"},
	}
	_, calls := e.dp.Applied()
	gen := e.status().Generation
	file := e.stateFile()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			var got api.Error
			code := e.do(tc.method, tc.path, tc.body, &got)
			if code != tc.status || got.Code != tc.code || got.Field != tc.field || got.Value != tc.value || !strings.Contains(got.Allowed, tc.allowed) || got.Message == "" {
				t.Fatalf("got %d %+v\nwant %d code=%s field=%q value=%q allowed~%q", code, got, tc.status, tc.code, tc.field, tc.value, tc.allowed)
			}
			if tc.code == "conflict" && !strings.Contains(got.Message, `"keep"`) {
				t.Fatalf("conflict does not name the other service: %q", got.Message)
			}
			if _, calls2 := e.dp.Applied(); calls2 != calls {
				t.Fatal("bad input reached the datapath")
			}
			if e.status().Generation != gen || e.stateFile() != file {
				t.Fatal("bad input changed the desired state")
			}
		})
	}
}

func TestMethodNotAllowedHeader(t *testing.T) {
	e := newEnv(t, "")
	resp, err := http.Post(e.srv.URL+"/v1/status", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET" {
		t.Fatalf("got %d Allow=%q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

func TestDatapathFailureChangesNothing(t *testing.T) {
	e := newEnv(t, "")
	if code := e.do("PUT", "/v1/services/web", webService(), nil); code != 201 {
		t.Fatal(code)
	}
	before, _ := e.dp.Applied()
	gen, file := e.status().Generation, e.stateFile()
	e.dp.FailNextApply(errors.New("map full"))
	s := webService()
	s.Spec.Port = 443
	var apiErr api.Error
	if code := e.do("PUT", "/v1/services/web", s, &apiErr); code != 500 || apiErr.Code != api.CodeInternal || !strings.Contains(apiErr.Message, "map full") {
		t.Fatalf("got %d %+v", code, apiErr)
	}
	after, _ := e.dp.Applied()
	if !reflect.DeepEqual(before, after) {
		t.Fatal("the datapath was not rolled back to the previous set")
	}
	var got api.Service
	e.do("GET", "/v1/services/web", nil, &got)
	if got.Spec.Port != 80 || e.status().Generation != gen || e.stateFile() != file {
		t.Fatal("a failed apply changed the desired state")
	}
}

func TestListAndBulkReplace(t *testing.T) {
	e := newEnv(t, "")
	put := func(name, cluster, vip string) {
		s := webService()
		s.Labels = map[string]string{api.LabelCluster: cluster, "app": name}
		s.Spec.VIPs = []string{vip}
		s.Spec.Backends = s.Spec.Backends[:2]
		if code := e.do("PUT", "/v1/services/"+name, s, nil); code != 201 {
			t.Fatalf("put %s: %d", name, code)
		}
	}
	put("a", "c1", "192.0.2.1")
	put("b", "c1", "192.0.2.2")
	put("x", "c2", "192.0.2.3")

	var list api.ServiceList
	if code := e.do("GET", "/v1/services?selector="+api.LabelCluster+"=c1", nil, &list); code != 200 || len(list.Items) != 2 ||
		list.Items[0].Name != "a" || list.Items[1].Name != "b" || list.Items[0].Status == nil {
		t.Fatalf("list: %d %+v", code, list)
	}
	if code := e.do("GET", "/v1/services", nil, &list); code != 200 || len(list.Items) != 3 {
		t.Fatalf("list all: %d %d", code, len(list.Items))
	}
	if code := e.do("GET", "/v1/services?selector=app=none", nil, &list); code != 200 || list.Items == nil || len(list.Items) != 0 {
		t.Fatalf("empty list must be [] : %+v", list)
	}

	// Bulk for c1: a unchanged, b absent (deleted), c new; x (c2) untouched.
	a := webService()
	a.Name, a.Labels = "a", map[string]string{api.LabelCluster: "c1", "app": "a"}
	a.Spec.VIPs, a.Spec.Backends = []string{"192.0.2.1"}, a.Spec.Backends[:2]
	c := a
	c.Name, c.Labels = "c", map[string]string{api.LabelCluster: "c1"}
	c.Spec.VIPs = []string{"192.0.2.2"} // takes over b's VIP: no conflict since b goes away
	gen := e.status().Generation
	var res api.BulkResult
	req := api.BulkReplace{Selector: map[string]string{api.LabelCluster: "c1"}, Services: []api.Service{c, a}}
	if code := e.do("PUT", "/v1/services", req, &res); code != 200 {
		t.Fatalf("bulk: %d", code)
	}
	want := api.BulkResult{Created: []string{"c"}, Updated: []string{}, Unchanged: []string{"a"}, Deleted: []string{"b"}}
	if !reflect.DeepEqual(res, want) {
		t.Fatalf("bulk result %+v, want %+v", res, want)
	}
	if e.status().Generation != gen+1 {
		t.Fatal("one bulk replace must bump the generation once")
	}
	e.do("GET", "/v1/services", nil, &list)
	var names []string
	for _, s := range list.Items {
		names = append(names, s.Name)
	}
	if !reflect.DeepEqual(names, []string{"a", "c", "x"}) {
		t.Fatalf("after bulk: %v", names)
	}
	// Same bulk again: nothing changes, no datapath call.
	_, calls := e.dp.Applied()
	if code := e.do("PUT", "/v1/services", req, &res); code != 200 || len(res.Unchanged) != 2 || len(res.Created)+len(res.Deleted)+len(res.Updated) != 0 {
		t.Fatalf("repeat bulk: %+v", res)
	}
	if _, calls2 := e.dp.Applied(); calls2 != calls || e.status().Generation != gen+1 {
		t.Fatal("an idempotent bulk replace touched the datapath")
	}
	// Bulk that conflicts with a service outside the selector: 409.
	d := c
	d.Name, d.Spec.VIPs = "d", []string{"192.0.2.3"}
	var apiErr api.Error
	req.Services = append(req.Services, d)
	if code := e.do("PUT", "/v1/services", req, &apiErr); code != 409 || apiErr.Field != "services[2].spec.vips[0]" || !strings.Contains(apiErr.Message, `"x"`) {
		t.Fatalf("bulk conflict: %d %+v", code, apiErr)
	}
	// An empty body with a selector deletes everything it selects.
	if code := e.do("PUT", "/v1/services", api.BulkReplace{Selector: map[string]string{api.LabelCluster: "c1"}}, &res); code != 200 || !reflect.DeepEqual(res.Deleted, []string{"a", "c"}) {
		t.Fatalf("gc all: %d %+v", code, res)
	}
}

func TestStatusConntrackReady(t *testing.T) {
	e := newEnv(t, "")
	st := e.status()
	if st.Version != "test" || len(st.BootID) != 32 || st.Hook != "tcx" || !st.Ready || len(st.Interfaces) != 1 || !st.Interfaces[0].Attached || st.ConntrackCapacity != 2048 {
		t.Fatalf("status: %+v", st)
	}
	e.dp.SetFlows([]dataplane.Flow{
		{Service: "web/v4", Protocol: "tcp", Client: netip.MustParseAddrPort("198.51.100.1:40000"), VIP: netip.MustParseAddrPort("192.0.2.10:80"),
			Backend: netip.MustParseAddrPort("10.0.0.1:8080"), Age: 3 * time.Second, Idle: time.Second},
		{Service: "web/v6", Protocol: "tcp", Client: netip.MustParseAddrPort("[2001:db8:2::1]:40000"), VIP: netip.MustParseAddrPort("[2001:db8::10]:80"),
			Backend: netip.MustParseAddrPort("[2001:db8:1::1]:8080"), SNAT: netip.MustParseAddrPort("[2001:db8::99]:33000")},
	})
	var fl api.FlowList
	if code := e.do("GET", "/v1/conntrack?vip=192.0.2.10&client=198.51.100.1&limit=1&after=abc", nil, &fl); code != 200 {
		t.Fatal(code)
	}
	f := e.dp.LastFilter()
	if f.VIP != netip.MustParseAddr("192.0.2.10") || f.Client != netip.MustParseAddr("198.51.100.1") || f.Limit != 1 || f.After != "abc" {
		t.Fatalf("filter: %+v", f)
	}
	if len(fl.Items) != 1 || fl.Next != "next" || fl.Items[0].Service != "web" || fl.Items[0].Client != "198.51.100.1:40000" || fl.Items[0].AgeSeconds != 3 {
		t.Fatalf("flows: %+v", fl)
	}
	e.do("GET", "/v1/conntrack", nil, &fl)
	if e.dp.LastFilter().Limit != apiserver.DefaultFlowLimit || len(fl.Items) != 2 || fl.Items[1].SNAT != "[2001:db8::99]:33000" {
		t.Fatalf("default flows: %+v", fl)
	}

	resp, err := http.Get(e.srv.URL + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz: %v %v", resp, err)
	}
	resp.Body.Close()
	e.dp.SetAttachments([]dataplane.AttachState{{Name: "eth0", Error: "no such device"}})
	var apiErr api.Error
	if code := e.do("GET", "/readyz", nil, &apiErr); code != 503 || !strings.Contains(apiErr.Message, "eth0") || !strings.Contains(apiErr.Message, "no such device") {
		t.Fatalf("readyz with a detached interface: %d %+v", code, apiErr)
	}
	if e.status().Ready {
		t.Fatal("status says ready")
	}
}

func TestTokenAuth(t *testing.T) {
	e := newEnv(t, "s3cret-token")
	for _, tc := range []struct {
		path, header string
		want         int
	}{
		{"/v1/status", "", 401},
		{"/v1/status", "Bearer wrong", 401},
		{"/v1/status", "Bearer s3cret-token-longer", 401},
		{"/v1/status", "Basic s3cret-token", 401},
		{"/v1/status", "Bearer s3cret-token", 200},
		{"/v1/services/nope", "", 401},
		{"/metrics", "", 401},
		{"/v1/openapi.json", "", 401},
		{"/healthz", "", 200},
		{"/readyz", "", 200},
	} {
		req, _ := http.NewRequest("GET", e.srv.URL+tc.path, nil)
		if tc.header != "" {
			req.Header.Set("Authorization", tc.header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %q: %d, want %d", tc.path, tc.header, resp.StatusCode, tc.want)
		}
		if tc.want == 401 && (!strings.Contains(string(body), `"code":"unauthorized"`) || resp.Header.Get("WWW-Authenticate") == "") {
			t.Errorf("%s: 401 body %q", tc.path, body)
		}
	}
	// A PUT without a token changes nothing.
	e.token = ""
	if code := e.do("PUT", "/v1/services/web", webService(), nil); code != 401 {
		t.Fatal(code)
	}
	if _, calls := e.dp.Applied(); calls != 1 { // the Restore apply only
		t.Fatalf("unauthenticated PUT reached the datapath (%d applies)", calls)
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, "")
	e.do("PUT", "/v1/services/web", webService(), nil)
	e.do("GET", "/v1/services/missing", nil, nil)
	resp, err := http.Get(e.srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`xlb_service_packets_total{service="web"} 200`,
		`xlb_service_bytes_total{service="web"} 12800`,
		`xlb_service_new_flows_total{service="web"} 6`,
		`xlb_service_drops_total{reason="src_denied",service="web"} 4`,
		`xlb_service_flows{service="web"} 6`,
		`xlb_service_backends{service="web",state="draining"} 1`,
		`xlb_backend_packets_total{backend="[2001:db8:1::1]:8080",service="web"} 7`,
		`xlb_backend_state{backend="10.0.0.1:8080",service="web",state="draining"} 1`,
		`xlb_conntrack_entries 12`,
		`xlb_conntrack_capacity 2048`,
		`xlb_services 1`,
		`xlb_ready 1`,
		`xlb_interface_attached{interface="eth0",mode="tcx"} 1`,
		`xlb_interface_reattaches_total{interface="eth0"} 0`,
		`xlb_api_requests_total{code="201",method="PUT",route="/v1/services/{name}"} 1`,
		`xlb_api_requests_total{code="404",method="GET",route="/v1/services/{name}"} 1`,
		`xlb_api_request_duration_seconds_count{code="201",method="PUT",route="/v1/services/{name}"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
