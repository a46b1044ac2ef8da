package lbclient_test

import (
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/lbclient"
	"github.com/xlb-dev/xlb/lbclient/lbclienttest"
)

// newClient returns a client of url with fast retries so that retry tests
// take milliseconds.
func newClient(t *testing.T, cfg lbclient.Config) *lbclient.Client {
	t.Helper()
	if cfg.RetryWaitMin == 0 {
		cfg.RetryWaitMin = time.Millisecond
		cfg.RetryWaitMax = 5 * time.Millisecond
	}
	c, err := lbclient.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func webService() api.Service {
	return api.Service{
		Name:   "web",
		Labels: map[string]string{"app": "web", api.LabelCluster: "c1"},
		Spec: api.ServiceSpec{
			VIPs: []string{"192.0.2.10"}, Port: 80, Protocol: "tcp",
			Backends: []api.Backend{{Address: "10.0.0.1", Port: 8080}, {Address: "10.0.0.2", Port: 8080}},
		},
	}
}

func TestServiceLifecycle(t *testing.T) {
	ctx := t.Context()
	fake := lbclienttest.NewFake()
	c := newClient(t, lbclient.Config{Endpoint: fake.Start(t)})

	got, created, err := c.PutService(ctx, webService())
	if err != nil || !created {
		t.Fatalf("first PutService: created=%v err=%v, want created", created, err)
	}
	if got.Name != "web" || got.Status == nil || len(got.Status.Backends) != 2 {
		t.Fatalf("PutService returned %+v", got)
	}
	if _, created, err = c.PutService(ctx, webService()); err != nil || created {
		t.Fatalf("second PutService: created=%v err=%v, want replaced", created, err)
	}

	other := webService()
	other.Name, other.Labels = "dns", map[string]string{"app": "dns"}
	other.Spec.Port, other.Spec.Protocol = 53, "udp"
	if _, _, err := c.PutService(ctx, other); err != nil {
		t.Fatal(err)
	}

	svc, err := c.GetService(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(svc.Spec, webService().Spec) {
		t.Errorf("GetService spec = %+v, want %+v", svc.Spec, webService().Spec)
	}

	all, err := c.ListServices(ctx, nil)
	if err != nil || len(all.Items) != 2 {
		t.Fatalf("ListServices(nil) = %d items, %v; want 2", len(all.Items), err)
	}
	sel, err := c.ListServices(ctx, map[string]string{"app": "web", api.LabelCluster: "c1"})
	if err != nil || len(sel.Items) != 1 || sel.Items[0].Name != "web" {
		t.Fatalf("ListServices(selector) = %+v, %v; want [web]", sel.Items, err)
	}
	reqs := fake.Requests()
	if q := reqs[len(reqs)-1].Query; q != "selector=app%3Dweb%2Cxlb.dev%2Fcluster%3Dc1" {
		t.Errorf("selector query = %q", q)
	}

	if err := c.DeleteService(ctx, "web"); err != nil {
		t.Fatalf("DeleteService: %v", err)
	}
	if err := c.DeleteService(ctx, "web"); !lbclient.IsNotFound(err) {
		t.Errorf("second DeleteService: %v, want not found", err)
	}
	if _, err := c.GetService(ctx, "web"); !lbclient.IsNotFound(err) {
		t.Errorf("GetService after delete: %v, want not found", err)
	}
	if _, err := c.GetService(ctx, ""); err == nil || !strings.Contains(err.Error(), "name is empty") {
		t.Errorf("GetService(\"\") = %v, want a name error", err)
	}
}

func TestBulkReplace(t *testing.T) {
	ctx := t.Context()
	fake := lbclienttest.NewFake()
	c := newClient(t, lbclient.Config{Endpoint: fake.Start(t)})

	stale, keep := webService(), webService()
	stale.Name, keep.Name = "stale", "keep"
	foreign := webService()
	foreign.Name, foreign.Labels = "foreign", map[string]string{api.LabelCluster: "c2"}
	for _, s := range []api.Service{stale, keep, foreign} {
		if _, _, err := c.PutService(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	fresh := webService()
	fresh.Name = "fresh"
	res, err := c.BulkReplace(ctx, api.BulkReplace{
		Selector: map[string]string{api.LabelCluster: "c1"},
		Services: []api.Service{keep, fresh},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := api.BulkResult{Created: []string{"fresh"}, Updated: []string{}, Unchanged: []string{"keep"}, Deleted: []string{"stale"}}
	if !reflect.DeepEqual(res, want) {
		t.Errorf("BulkResult = %+v, want %+v", res, want)
	}
	if got := fake.Names(); !reflect.DeepEqual(got, []string{"foreign", "fresh", "keep"}) {
		t.Errorf("services after bulk = %v", got)
	}
}

func TestReadEndpoints(t *testing.T) {
	ctx := t.Context()
	fake := lbclienttest.NewFake()
	fake.SetStatus(api.Status{Version: "v1.2.3", BootID: "b", Generation: 7,
		Interfaces: []api.InterfaceStatus{{Name: "eth0", Attached: true, Mode: "tcx"}}})
	flows := []api.Flow{
		{Service: "web", Protocol: "tcp", Client: "198.51.100.1:40000", VIP: "192.0.2.10:80", Backend: "10.0.0.1:8080"},
		{Service: "web", Protocol: "tcp", Client: "198.51.100.2:40001", VIP: "192.0.2.10:80", Backend: "10.0.0.2:8080"},
		{Service: "dns", Protocol: "udp", Client: "198.51.100.1:5353", VIP: "192.0.2.11:53", Backend: "10.0.0.3:53"},
	}
	fake.SetFlows(flows)
	c := newClient(t, lbclient.Config{Endpoint: fake.Start(t), UserAgent: "test-agent/1"})

	st, err := c.Status(ctx)
	if err != nil || st.Version != "v1.2.3" || st.Generation != 7 || len(st.Interfaces) != 1 {
		t.Fatalf("Status = %+v, %v", st, err)
	}

	page1, err := c.Conntrack(ctx, lbclient.Filter{VIP: "192.0.2.10", Limit: 1})
	if err != nil || len(page1.Items) != 1 || page1.Next == "" {
		t.Fatalf("Conntrack page 1 = %+v, %v; want 1 item and a cursor", page1, err)
	}
	page2, err := c.Conntrack(ctx, lbclient.Filter{VIP: "192.0.2.10", Limit: 1, After: page1.Next})
	if err != nil || len(page2.Items) != 1 || page2.Items[0] != flows[1] {
		t.Fatalf("Conntrack page 2 = %+v, %v; want flow 2", page2, err)
	}
	byClient, err := c.Conntrack(ctx, lbclient.Filter{Client: "198.51.100.1"})
	if err != nil || len(byClient.Items) != 2 || byClient.Next != "" {
		t.Fatalf("Conntrack by client = %+v, %v; want 2 flows, no cursor", byClient, err)
	}
	if _, err := c.Conntrack(ctx, lbclient.Filter{Limit: -1}); err == nil {
		t.Error("Conntrack with negative limit: no error")
	}

	if err := c.Healthz(ctx); err != nil {
		t.Errorf("Healthz: %v", err)
	}
	if err := c.Readyz(ctx); err != nil {
		t.Errorf("Readyz: %v", err)
	}
	fake.SetReady(false)
	before := len(fake.Requests())
	err = c.Readyz(ctx)
	var ae *lbclient.APIError
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusServiceUnavailable || !strings.Contains(ae.Detail.Message, "datapath not attached") {
		t.Errorf("Readyz when not ready = %v, want 503 with the reason", err)
	}
	if n := len(fake.Requests()) - before; n != 1 {
		t.Errorf("Readyz when not ready sent %d requests, want 1 (a 503 there is an answer, not a transient error)", n)
	}

	doc, err := c.OpenAPI(ctx)
	if err != nil || !strings.Contains(string(doc), `"openapi"`) {
		t.Errorf("OpenAPI = %q, %v", doc, err)
	}
	m, err := c.Metrics(ctx)
	if err != nil || !strings.Contains(string(m), "xlb_services 0") {
		t.Errorf("Metrics = %q, %v", m, err)
	}
	for _, r := range fake.Requests() {
		if r.UserAgent != "test-agent/1" {
			t.Fatalf("User-Agent = %q, want test-agent/1", r.UserAgent)
		}
	}
}

func TestValidationErrorDecodedAndNotRetried(t *testing.T) {
	fake := lbclienttest.NewFake()
	c := newClient(t, lbclient.Config{Endpoint: fake.Start(t)})
	svc := webService()
	svc.Spec.Backends[0].Port = 0

	_, _, err := c.PutService(t.Context(), svc)
	const want = "PUT /v1/services/web: 400 invalid: spec.backends[0].port: 0: backend port is required (allowed: 1-65535)"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant  %s", err, want)
	}
	if !lbclient.IsInvalid(err) || lbclient.IsNotFound(err) || lbclient.IsConflict(err) || lbclient.IsUnauthorized(err) {
		t.Errorf("classification of %v is wrong", err)
	}
	var ae *lbclient.APIError
	if !errors.As(err, &ae) || ae.Detail.Field != "spec.backends[0].port" || ae.Detail.Allowed != "1-65535" {
		t.Errorf("APIError = %+v", ae)
	}
	if n := len(fake.Requests()); n != 1 {
		t.Errorf("sent %d requests, want 1: validation errors must not be retried", n)
	}
	if _, ok := fake.Service("web"); ok {
		t.Error("invalid service was stored")
	}
}

func TestAPIErrorString(t *testing.T) {
	for _, tc := range []struct {
		e    lbclient.APIError
		want string
	}{
		{lbclient.APIError{Method: "PUT", Path: "/v1/services/web", StatusCode: 400,
			Detail: api.Error{Code: "invalid", Field: "spec.protocol", Value: "sctp", Allowed: "tcp, udp", Message: "unsupported protocol"}},
			"PUT /v1/services/web: 400 invalid: spec.protocol: sctp: unsupported protocol (allowed: tcp, udp)"},
		{lbclient.APIError{Method: "GET", Path: "/v1/services/x", StatusCode: 404,
			Detail: api.Error{Code: "not_found", Message: `service "x" not found`}},
			`GET /v1/services/x: 404 not_found: service "x" not found`},
		{lbclient.APIError{Method: "PUT", Path: "/v1/services/a", StatusCode: 409,
			Detail: api.Error{Code: "conflict", Field: "spec.vips[0]", Value: "192.0.2.1", Message: "192.0.2.1:80/tcp is used by service b"}},
			"PUT /v1/services/a: 409 conflict: spec.vips[0]: 192.0.2.1: 192.0.2.1:80/tcp is used by service b"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
}

func TestNonJSONErrorBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "<html><body>\n  upstream   connect error\n</body></html>", http.StatusForbidden)
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, lbclient.Config{Endpoint: srv.URL})
	_, err := c.Status(t.Context())
	if !lbclient.IsUnauthorized(err) {
		t.Errorf("403 not classified unauthorized: %v", err)
	}
	if want := "GET /v1/status: 403 unauthorized: <html><body> upstream connect error </body></html>"; err == nil || err.Error() != want {
		t.Errorf("err = %v\nwant  %s", err, want)
	}
}

func TestRetryTransientThenSucceed(t *testing.T) {
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout, http.StatusTooManyRequests} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			fake := lbclienttest.NewFake()
			c := newClient(t, lbclient.Config{Endpoint: fake.Start(t)})
			fake.FailNext(lbclienttest.Failure{Status: status}, lbclienttest.Failure{Status: status})
			if _, _, err := c.PutService(t.Context(), webService()); err != nil {
				t.Fatalf("PutService: %v", err)
			}
			if n := len(fake.Requests()); n != 3 {
				t.Errorf("attempts = %d, want 3 (2 failures + success)", n)
			}
			if _, ok := fake.Service("web"); !ok {
				t.Error("service not stored after retries")
			}
		})
	}
}

func TestRetriesExhausted(t *testing.T) {
	fake := lbclienttest.NewFake()
	c := newClient(t, lbclient.Config{Endpoint: fake.Start(t), Retries: 2})
	for range 5 {
		fake.FailNext(lbclienttest.Failure{Status: 503, Body: api.Error{Code: "internal", Message: "datapath reloading"}})
	}
	_, err := c.Status(t.Context())
	var ae *lbclient.APIError
	if !errors.As(err, &ae) || ae.StatusCode != 503 || !strings.Contains(err.Error(), "after 3 attempts") {
		t.Fatalf("err = %v, want the 503 after 3 attempts", err)
	}
	if n := len(fake.Requests()); n != 3 {
		t.Errorf("attempts = %d, want 3", n)
	}

	noRetry := newClient(t, lbclient.Config{Endpoint: c.Endpoint(), Retries: -1})
	before := len(fake.Requests())
	if _, err := noRetry.Status(t.Context()); err == nil {
		t.Fatal("want an error")
	}
	if n := len(fake.Requests()) - before; n != 1 {
		t.Errorf("Retries=-1 made %d attempts, want 1", n)
	}
}

func TestRetryAfterBeyondDeadlineReturnsAtOnce(t *testing.T) {
	fake := lbclienttest.NewFake()
	c := newClient(t, lbclient.Config{Endpoint: fake.Start(t)})
	fake.FailNext(lbclienttest.Failure{Status: 429, RetryAfter: "3600", Body: api.Error{Code: "too_many_requests", Message: "slow down"}})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, err := c.Status(ctx)
	// The server asked for (a capped) minute of waiting, more than the
	// caller's 30 s: the client must give the 429 back now, not sleep.
	if err == nil || !strings.Contains(err.Error(), "429") || !strings.Contains(err.Error(), "no time left") {
		t.Fatalf("err = %v, want the 429 with 'no time left'", err)
	}
	if ctx.Err() != nil {
		t.Error("call outlived its context: Retry-After was slept instead of reported")
	}
}

// cancelOnLog cancels a context when the client logs, which it does right
// before sleeping between attempts.
type cancelOnLog struct {
	slog.Handler
	cancel context.CancelFunc
}

func (h cancelOnLog) Enabled(context.Context, slog.Level) bool { return true }
func (h cancelOnLog) Handle(context.Context, slog.Record) error {
	h.cancel()
	return nil
}

func TestCancelStopsRetries(t *testing.T) {
	fake := lbclienttest.NewFake()
	ctx, cancel := context.WithCancel(t.Context())
	// A backoff of an hour: only cancellation can end the call.
	c := newClient(t, lbclient.Config{Endpoint: fake.Start(t), RetryWaitMin: time.Hour, RetryWaitMax: time.Hour,
		Logger: slog.New(cancelOnLog{Handler: slog.DiscardHandler, cancel: cancel})})
	fake.FailNext(lbclienttest.Failure{Status: 503})
	_, err := c.Status(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	var ae *lbclient.APIError
	if !errors.As(err, &ae) || ae.StatusCode != 503 {
		t.Errorf("err = %v should still carry the last failure (503)", err)
	}
	if n := len(fake.Requests()); n != 1 {
		t.Errorf("attempts = %d, want 1", n)
	}
}

func TestConnectionErrorRetried(t *testing.T) {
	fake := lbclienttest.NewFake()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			// Drop the connection without an answer, like an xlbd crash.
			panic(http.ErrAbortHandler)
		}
		fake.ServeHTTP(w, r)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the aborted handler is on purpose
	t.Cleanup(srv.Close)
	c := newClient(t, lbclient.Config{Endpoint: srv.URL})
	if err := c.Healthz(t.Context()); err != nil {
		t.Fatalf("Healthz: %v", err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("attempts = %d, want 2", n)
	}

	// Nothing listening at all: every attempt fails and the error says so.
	srv.Close()
	err := c.Healthz(t.Context())
	if err == nil || !strings.Contains(err.Error(), "after 4 attempts") || !strings.Contains(err.Error(), srv.URL) {
		t.Errorf("err = %v, want a connection error after 4 attempts naming %s", err, srv.URL)
	}
}

func TestBearerToken(t *testing.T) {
	fake := lbclienttest.NewFake()
	fake.SetToken("s3cret")
	url := fake.Start(t)

	c := newClient(t, lbclient.Config{Endpoint: url, Token: "s3cret"})
	if _, err := c.Status(t.Context()); err != nil {
		t.Fatalf("with token: %v", err)
	}
	anon := newClient(t, lbclient.Config{Endpoint: url})
	before := len(fake.Requests())
	if _, err := anon.Status(t.Context()); !lbclient.IsUnauthorized(err) {
		t.Errorf("without token: %v, want unauthorized", err)
	}
	if n := len(fake.Requests()) - before; n != 1 {
		t.Errorf("401 was retried: %d attempts", n)
	}
}

func TestTokenFileRotation(t *testing.T) {
	fake := lbclienttest.NewFake()
	fake.SetToken("one")
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte("one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, lbclient.Config{Endpoint: fake.Start(t), TokenFile: path})
	if _, err := c.Status(t.Context()); err != nil {
		t.Fatalf("first token: %v", err)
	}

	fake.SetToken("two")
	if err := os.WriteFile(path, []byte("two\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Make the change visible even on filesystems with coarse timestamps.
	future := time.Now().Add(time.Minute)
	if err := os.Chtimes(path, future, future); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Status(t.Context()); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	reqs := fake.Requests()
	if got := reqs[len(reqs)-1].Authorization; got != "Bearer two" {
		t.Errorf("Authorization after rotation = %q, want Bearer two", got)
	}

	if _, err := lbclient.New(lbclient.Config{Endpoint: "http://127.0.0.1:1", TokenFile: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Error("New with a missing token file: no error")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  lbclient.Config
		want string
	}{
		{"empty endpoint", lbclient.Config{}, "Endpoint is empty"},
		{"bad scheme", lbclient.Config{Endpoint: "unix:///run/xlbd.sock"}, "scheme must be http:// or https://"},
		{"no host", lbclient.Config{Endpoint: "http://"}, "no host"},
		{"token and file", lbclient.Config{Endpoint: "http://h:1", Token: "a", TokenFile: "/x"}, "not both"},
		{"tls on http", lbclient.Config{Endpoint: "http://h:1", TLS: lbclient.TLSConfig{CAFile: "/x"}}, "not https://"},
		{"cert without key", lbclient.Config{Endpoint: "https://h:1", TLS: lbclient.TLSConfig{CertFile: "/x"}}, "given together"},
		{"missing CA", lbclient.Config{Endpoint: "https://h:1", TLS: lbclient.TLSConfig{CAFile: "/nonexistent/ca.pem"}}, "CA file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := lbclient.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestSelector(t *testing.T) {
	s, err := lbclient.FormatSelector(map[string]string{"b": "2", "a": "1"})
	if err != nil || s != "a=1,b=2" {
		t.Errorf("FormatSelector = %q, %v", s, err)
	}
	if _, err := lbclient.FormatSelector(map[string]string{"a": "x,y"}); err == nil {
		t.Error("FormatSelector accepted a comma in a value")
	}
	m, err := lbclient.ParseSelector("app=web, tier=front")
	if err != nil || !reflect.DeepEqual(m, map[string]string{"app": "web", "tier": "front"}) {
		t.Errorf("ParseSelector = %v, %v", m, err)
	}
	for _, bad := range []string{"app", "=x", "a=1,a=2", "a=b=c"} {
		if _, err := lbclient.ParseSelector(bad); err == nil {
			t.Errorf("ParseSelector(%q) accepted", bad)
		}
	}
}
